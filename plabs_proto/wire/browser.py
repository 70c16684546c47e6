"""Looking like a browser: the request headers desktop Chrome sends, in Chrome's order.

Labs is a web page (``https://labs.perplexity.ai``) whose script talks to
``https://www.perplexity.ai/socket.io/``: Engine.IO polling is ``XMLHttpRequest``
(a cross-origin, same-site CORS request) and the upgrade is a ``WebSocket``.  A
client that sends a library's headers is easy to refuse (protocol.md §9), so the
byte level (:class:`~plabs_proto.wire.client.LabsClient`) sends, by default, the
headers of :data:`CHROME`: Chrome 152 on Windows, the version and platform of
curl_cffi 0.17's newest target (``chrome152``, its ``chrome``), so the pure-Python path and
the curl backend (whose default is that target) tell the same story.

One profile, three request kinds:

polling GET and POST (Chrome over HTTP/1.1, ``fetch``/XHR from another origin)::

    Host, Connection: keep-alive, Content-Length (POST), sec-ch-ua-platform, User-Agent,
    sec-ch-ua, Content-Type (POST), sec-ch-ua-mobile, Accept: */*, Origin,
    Sec-Fetch-Site, Sec-Fetch-Mode: cors, Sec-Fetch-Dest: empty, Referer,
    Accept-Encoding, Accept-Language, Cookie

WebSocket upgrade GET::

    Host, Connection: Upgrade, Pragma: no-cache, Cache-Control: no-cache, User-Agent,
    Upgrade: websocket, Origin, Sec-WebSocket-Version: 13, Accept-Encoding,
    Accept-Language, Cookie, Sec-WebSocket-Key, Sec-WebSocket-Extensions

What the order rests on (public captures of Chrome's own requests, read for this
module; none is copied):

* HTTP/1.1 subresource requests of Chrome 130 (Windows), 134 (Windows), 141 and
  148 (macOS) in test fixtures of public repositories: ``Host``, ``Connection``,
  ``sec-ch-ua-platform`` (lower case, first of the hints since Chrome 130),
  ``User-Agent``, ``sec-ch-ua``, ``sec-ch-ua-mobile``, ``Accept``, ``Sec-Fetch-Site``,
  ``-Mode``, ``-Dest``, ``Referer``, ``Accept-Encoding``, ``Accept-Language``, ``Cookie``.
* A Chrome 86 ``fetch`` POST of ``text/plain;charset=UTF-8`` to another origin of the
  same site: ``Content-Length`` right after ``Connection``, ``Content-Type`` after
  ``User-Agent``, ``Origin`` after ``Accept``, then ``Sec-Fetch-Site: same-site``,
  ``Sec-Fetch-Mode: cors``, ``Sec-Fetch-Dest: empty``; and a header-order recorder's
  fixture of a current Chrome POST that puts ``Content-Type`` between ``sec-ch-ua``
  and ``sec-ch-ua-mobile``.
* WebSocket handshakes of Chrome 69, 103 and 130 (the 130 one from a DevTools
  ``requestHeadersText``): the order above, no client hints, no ``Sec-Fetch-*`` and no
  ``Referer`` (so the session's Referer is not sent on the upgrade), ``Cookie`` between
  ``Accept-Language`` and ``Sec-WebSocket-Key``.  (An older Chrome 65 handshake in
  gdut17/websocket's README.md has User-Agent after Sec-WebSocket-Version; every later one
  has it after Cache-Control.)
* The ``sec-ch-ua`` value (with its GREASE brand ``"Not?A_Brand";v="24"``), the
  User-Agent, the platform and ``Accept-Language`` are those curl_cffi 0.17's
  ``chrome152`` target sends (captured on loopback).

Where we knowingly differ from Chrome:

* ``Accept-Encoding``: Chrome says ``gzip, deflate, br, zstd``.  We announce only
  the codings the HTTP layer decodes (``gzip, deflate``: ``plabs_proto.wire.http.ACCEPT_ENCODING``),
  or none when the client's ``accept_encoding`` is off: announcing a coding we cannot decode
  would break the session the first time a server used it.
* ``Sec-WebSocket-Extensions`` is sent only when the WebSocket layer offers
  permessage-deflate (``ClientConfig.permessage_deflate``).
* ``Sec-Fetch-Site`` is worked out from the Origin and the server (see
  :func:`fetch_site`) with a simple rule for "same site": the same scheme and the
  same last two host labels.  Right for ``labs.perplexity.ai`` to
  ``www.perplexity.ai`` (``same-site``); a public suffix of two labels (``co.uk``)
  would need the Public Suffix List, which we do not carry.
* No ``Priority`` header: Chrome sends one on HTTP/2 and HTTP/3 only, and we speak
  HTTP/1.1.

Headers are only part of what a server can see: see the README ("Looking like a
browser") for the TLS ClientHello, which Python's ``ssl`` cannot make Chrome's.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["CHROME", "CHROME_131", "PROFILES", "BrowserProfile", "fetch_site", "merge_headers"]

Headers = list[tuple[str, str]]

#: Header names in the order Chrome sends them on a polling request (see the module docstring).
FETCH_ORDER = (
    "Host",
    "Connection",
    "Content-Length",
    "sec-ch-ua-platform",
    "User-Agent",
    "sec-ch-ua",
    "Content-Type",
    "sec-ch-ua-mobile",
    "Accept",
    "Origin",
    "Sec-Fetch-Site",
    "Sec-Fetch-Mode",
    "Sec-Fetch-Dest",
    "Referer",
    "Accept-Encoding",
    "Accept-Language",
    "Cookie",
)

#: Header names in the order Chrome sends them on a WebSocket handshake.
WEBSOCKET_ORDER = (
    "Host",
    "Connection",
    "Pragma",
    "Cache-Control",
    "User-Agent",
    "Upgrade",
    "Origin",
    "Sec-WebSocket-Version",
    "Accept-Encoding",
    "Accept-Language",
    "Cookie",
    "Sec-WebSocket-Key",
    "Sec-WebSocket-Extensions",
)

#: Headers the session may ask for that Chrome does not send on a WebSocket handshake.
_NOT_ON_WEBSOCKET = frozenset({"referer"})


@dataclass(frozen=True, slots=True, kw_only=True)
class BrowserProfile:
    """The headers one browser sends: its identity and the fixed values of each request kind.

    ``sec_ch_ua``, ``sec_ch_ua_mobile`` and ``sec_ch_ua_platform`` are the User-Agent
    client hints, sent (as Chrome does) only with the profile's own ``user_agent``: a
    caller who sets another User-Agent gets no hints, since hints naming Chrome 152
    beside a User-Agent that does not would contradict it (Firefox and Safari send
    none).  ``name`` is how a trace records the profile (see :data:`PROFILES`).
    """

    name: str
    user_agent: str
    sec_ch_ua: str
    sec_ch_ua_mobile: str
    sec_ch_ua_platform: str
    accept_language: str

    def fetch_headers(
        self,
        *,
        host: str,
        origin: str,
        server: str,
        session_headers: Sequence[tuple[str, str]],
        content_length: int | None = None,
        user_agent: str | None = None,
        accept_encoding: str | None = None,
        cookie: str | None = None,
    ) -> Headers:
        """The headers of a polling GET (``content_length`` None) or POST, in Chrome's order.

        ``session_headers`` are the message level's (Origin, Referer, a POST's
        Content-Type): they fill their slots.  ``user_agent`` replaces the profile's
        (and then the client hints are left out); ``accept_encoding`` and ``cookie`` of
        None leave those headers out.
        """
        agent = user_agent or self.user_agent
        hints = agent == self.user_agent
        fixed: dict[str, str | None] = {
            "Host": host,
            "Connection": "keep-alive",
            "Content-Length": None if content_length is None else str(content_length),
            "sec-ch-ua-platform": self.sec_ch_ua_platform if hints else None,
            "User-Agent": agent,
            "sec-ch-ua": self.sec_ch_ua if hints else None,
            "sec-ch-ua-mobile": self.sec_ch_ua_mobile if hints else None,
            "Accept": "*/*",
            "Sec-Fetch-Site": fetch_site(origin, server),
            "Sec-Fetch-Mode": "cors",
            "Sec-Fetch-Dest": "empty",
            "Accept-Encoding": accept_encoding,
            "Accept-Language": self.accept_language,
            "Cookie": cookie,
        }
        return _arrange(FETCH_ORDER, fixed, session_headers)

    def websocket_headers(
        self,
        *,
        host: str,
        key: str,
        session_headers: Sequence[tuple[str, str]],
        user_agent: str | None = None,
        accept_encoding: str | None = None,
        cookie: str | None = None,
        extensions: str | None = None,
    ) -> Headers:
        """The headers of a WebSocket upgrade GET, in Chrome's order.

        The session's Origin fills its slot; its Referer is left out, as Chrome sends
        none on a WebSocket handshake.  ``extensions`` is the ``Sec-WebSocket-Extensions``
        offer (None: the WebSocket layer offers none, and the header is left out).
        """
        fixed: dict[str, str | None] = {
            "Host": host,
            "Connection": "Upgrade",
            "Pragma": "no-cache",
            "Cache-Control": "no-cache",
            "User-Agent": user_agent or self.user_agent,
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Accept-Encoding": accept_encoding,
            "Accept-Language": self.accept_language,
            "Cookie": cookie,
            "Sec-WebSocket-Key": key,
            "Sec-WebSocket-Extensions": extensions,
        }
        given = [(name, value) for name, value in session_headers if name.lower() not in _NOT_ON_WEBSOCKET]
        return _arrange(WEBSOCKET_ORDER, fixed, given)


def _arrange(
    order: Sequence[str], fixed: dict[str, str | None], given: Sequence[tuple[str, str]]
) -> Headers:
    """``fixed`` and ``given`` (which wins) in ``order``; a None value is not sent.

    A given header the order does not name goes after the others (none does today:
    the session asks only for headers the profile places).
    """
    values: dict[str, tuple[str, str | None]] = {name.lower(): (name, value) for name, value in fixed.items()}
    extra: Headers = []
    slots = {name.lower() for name in order}
    for name, value in given:
        if name.lower() in slots:
            values[name.lower()] = (name, value)
        else:
            extra.append((name, value))
    out: Headers = []
    for slot in order:
        sent, text = values.get(slot.lower(), (slot, None))
        if text is not None:
            out.append((sent, text))
    return out + extra


def merge_headers(base: Sequence[tuple[str, str]], caller: Sequence[tuple[str, str]]) -> Headers:
    """``base`` with the caller's headers: one of the same name (any case) takes its place.

    Every base header the caller names is replaced, where the first of that name
    stood, by the caller's header(s) of that name; the caller's other headers go
    at the end, in the caller's order.
    """
    if not caller:
        return list(base)
    by_name: dict[str, Headers] = {}
    for name, value in caller:
        by_name.setdefault(name.lower(), []).append((name, value))
    out: Headers = []
    placed: set[str] = set()
    for name, value in base:
        key = name.lower()
        if key not in by_name:
            out.append((name, value))
        elif key not in placed:
            placed.add(key)
            out.extend(by_name[key])
    out.extend(item for item in caller if item[0].lower() not in placed)
    return out


def _site(url: str) -> tuple[str, str] | None:
    """The scheme and "site" of ``url``: the last two labels of its host (an IP address whole)."""
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
    except ValueError:
        return None
    host = (hostname or "").rstrip(".")
    if not host:
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        host = ".".join(host.split(".")[-2:])
    return parts.scheme, host


def fetch_site(origin: str, server: str) -> str:
    """``Sec-Fetch-Site`` of a request from a page at ``origin`` to ``server``.

    ``same-origin`` for the same scheme, host and port; ``same-site`` for the same
    scheme and the same last two host labels (``labs.perplexity.ai`` and
    ``www.perplexity.ai``); else ``cross-site``.
    """

    def origin_of(url: str) -> tuple[str, str | None, int | None] | None:
        try:
            parts = urlsplit(url)
            default = {"http": 80, "https": 443}.get(parts.scheme)
            return parts.scheme, parts.hostname, parts.port or default
        except ValueError:
            return None

    first, second = origin_of(origin), origin_of(server)
    if first is not None and first == second:
        return "same-origin"
    site = _site(origin)
    if site is not None and site == _site(server):
        return "same-site"
    return "cross-site"


#: Chrome 152 on Windows: curl_cffi 0.17's ``chrome152`` target, its ``chrome`` (the curl backend's default), with
#: its User-Agent, client hints and language as it sends them (captured on loopback), so that both paths name the
#: same Chrome.
CHROME = BrowserProfile(
    name="chrome152",
    user_agent=(
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/152.0.0.0 Safari/537.36"
    ),
    sec_ch_ua='"Chromium";v="152", "Not?A_Brand";v="24", "Google Chrome";v="152"',
    sec_ch_ua_mobile="?0",
    sec_ch_ua_platform='"Windows"',
    accept_language="en-US,en;q=0.9",
)

#: Chrome 131 on macOS (curl_cffi's ``chrome131``): the profile before 0.2, kept so that its traces replay.
CHROME_131 = BrowserProfile(
    name="chrome131-macos",
    user_agent=(
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
    ),
    sec_ch_ua='"Google Chrome";v="131", "Chromium";v="131", "Not_A Brand";v="24"',
    sec_ch_ua_mobile="?0",
    sec_ch_ua_platform='"macOS"',
    accept_language="en-US,en;q=0.9",
)

#: The profiles a trace can name, by :attr:`BrowserProfile.name`.
PROFILES: dict[str, BrowserProfile] = {CHROME.name: CHROME, CHROME_131.name: CHROME_131}
