"""The one configuration: every option, its default and its check, defined once.

:class:`SessionConfig` holds what the message level needs (where, which
transport, who, how long to wait, how much to take); :class:`ClientConfig`
extends it with what the byte level adds beneath (proxy, TLS, headers, the
browser profile, compression).  A field is defined, defaulted and checked in
exactly one of the two; a session is made from either (a ``ClientConfig`` is a
``SessionConfig``).  The backends' options are these fields by name, plus the
few that only a backend has (``timeout``, ``tracer``, ``seed``): see
``plabs_proto.backends._config``.

Both check every field when made (``__post_init__``): a wrong value raises
:class:`~plabs_proto.errors.LocalProtocolError` there, before any session exists.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field, fields
from urllib.parse import urlsplit

from plabs_proto.errors import LocalProtocolError
from plabs_proto.labs.answer import DEFAULT_VERSION
from plabs_proto.perplexity.request import MODES, read_cookies_txt
from plabs_proto.wire.browser import CHROME, BrowserProfile
from plabs_proto.wire.proxy import ProxyConfig, parse_proxy_url
from plabs_proto.wire.tls import check_ssl_context

__all__ = [
    "DEFAULT_JWT",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_ORIGIN",
    "DEFAULT_SERVER",
    "SERVICES",
    "TRANSPORTS",
    "ClientConfig",
    "SessionConfig",
    "check_header_text",
    "check_mode",
    "check_seconds",
    "split_server",
]

TRANSPORTS = ("upgrade", "websocket", "polling")
#: The services a session speaks: Perplexity Labs (Socket.IO, retired in 2025) and the ask endpoint (SSE).
SERVICES = ("labs", "perplexity")
DEFAULT_SERVER = "https://www.perplexity.ai"
DEFAULT_ORIGIN = "https://labs.perplexity.ai"
DEFAULT_JWT = "anonymous-ask-user"
#: Our receive limit by default: 64 MiB, so that a long answer's last cumulative frame fits.
DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024


def split_server(server: str, path: str) -> tuple[str, str, int | None, str]:
    """The scheme, host, port (``None`` when the URL names none) and request path of a server URL.

    The request path is the URL's own path and the Socket.IO ``path``, one slash between
    and one at the end (``https://x.test/base`` and ``socket.io`` give ``/base/socket.io/``).
    Anything but an ``http://`` or ``https://`` URL with a host and a valid port raises
    :class:`LocalProtocolError`.
    """
    try:
        url = urlsplit(server) if isinstance(server, str) else None
    except ValueError:  # an unclosed "[" of an IPv6 address, say
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.hostname:
        raise LocalProtocolError(f"expected an http:// or https:// server URL, got {server!r:.80}")
    try:
        port = url.port
    except ValueError:
        raise LocalProtocolError(f"expected a valid port in the server URL, got {server!r:.80}") from None
    return url.scheme, url.hostname, port, url.path.rstrip("/") + "/" + path.strip("/") + "/"


def check_header_text(what: str, text: object) -> None:
    """Refuse what cannot go in a request head: HTTP/1.1 header text is ASCII without CR or LF."""
    if not isinstance(text, str) or not text.isascii() or "\r" in text or "\n" in text:
        raise LocalProtocolError(
            f"expected {what} as ASCII text without CR or LF (HTTP/1.1 header text; "
            f"punycode a host name, percent-encode a path), got {text!r:.80}"
        )


def check_seconds(name: str, value: object) -> None:
    """Refuse a deadline that is not ``None`` or a number of seconds > 0."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or not value > 0):
        raise LocalProtocolError(f"expected {name} as a number of seconds > 0 or None, got {value!r:.60}")


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise LocalProtocolError(f"expected {name} as True or False, got {value!r:.60}")


def check_mode(service: str, mode: object) -> None:
    """Refuse an ask mode that ``service`` cannot send: None (the session's default) is always
    taken; otherwise one of :data:`~plabs_proto.perplexity.request.MODES`, on ``"perplexity"`` only."""
    if mode is None:
        return
    if service != "perplexity":
        raise LocalProtocolError(
            f"expected no mode on service {service!r:.60} (modes are the ask service's: service=\"perplexity\"), "
            f"got mode={mode!r:.60}"
        )
    if not isinstance(mode, str) or mode not in MODES:
        raise LocalProtocolError(f"expected the mode to be one of {', '.join(MODES)}, got {mode!r:.60}")


#: Characters of a cookie value sent as it is (RFC 6265's cookie-octet).
_COOKIE_OCTETS = frozenset(chr(c) for c in range(0x21, 0x7F)) - set('",;\\')


def _check_cookies(token: object, cookies_txt: object) -> None:
    """Refuse a session token or a cookies.txt text that cannot be sent in a Cookie header (never showing it)."""
    if token is not None and (not isinstance(token, str) or not token or not set(token) <= _COOKIE_OCTETS):
        raise LocalProtocolError(
            "expected session_token as a cookie value (visible ASCII without spaces, quotes, commas, "
            f"semicolons or backslashes), got {type(token).__name__} of {len(token) if isinstance(token, str) else 0}"
            " characters (not shown)"
        )
    if cookies_txt is None:
        return
    if not isinstance(cookies_txt, str):
        raise LocalProtocolError(f"expected cookies_txt as the text of a cookies.txt export, got {type(cookies_txt).__name__}")
    for cookie in read_cookies_txt(cookies_txt):
        if not cookie.name or not set(cookie.name) <= _COOKIE_OCTETS - {"="} or not set(cookie.value) <= _COOKIE_OCTETS:
            raise LocalProtocolError(
                f"expected the cookies of cookies_txt to be sendable in a Cookie header, got cookie {cookie.name[:60]!r} "
                "whose name or value holds a space, a quote, a comma, a semicolon, a backslash or a non-ASCII "
                "character (value not shown)"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionConfig:
    """What the message level needs: where, how, who, and how long to wait.

    Timeouts are in seconds (``None`` = no deadline).  ``first_text_timeout``
    runs from the query to its first answer or reasoning text.
    ``max_message_size`` is our receive limit, in bytes: the largest WebSocket
    message or Engine.IO packet taken from the server (a polling body may carry
    one such packet and 64 KiB of small ones besides).  The default, 64 MiB,
    fits a long answer's last cumulative frame.  The server's ``maxPayload``
    (from its open packet) is something else: the most the server accepts from
    *us*.  It never changes our receive limit; a query whose request is not
    smaller is refused with :class:`LocalProtocolError` before it is sent.

    ``service`` picks the session: ``"labs"`` (the Labs Socket.IO session, the
    default; the endpoint was retired in 2025) or ``"perplexity"`` (the ask
    endpoint that answers today, ``POST /rest/sse/perplexity_ask``; ``path``,
    ``transport``, ``origin``, ``jwt`` and ``version`` are Labs's and unused there).
    Signed-in use of ``"perplexity"``: ``session_token`` (the value of the cookie
    ``__Secure-next-auth.session-token``) and/or ``cookies_txt`` (the text of a
    browser's cookies.txt export; its perplexity.ai cookies are sent, expired or
    not).  Both go in the ``Cookie`` header of every request; neither is ever
    shown (not in a repr, not in an error).  ``mode`` is the ask's ``params.mode``
    (``"perplexity"`` only: one of :data:`~plabs_proto.perplexity.request.MODES`)
    for a query that names none; ``None``, the session's default (``"copilot"``).
    """

    server: str = DEFAULT_SERVER
    path: str = "/socket.io/"
    transport: str = "upgrade"
    origin: str = DEFAULT_ORIGIN
    jwt: str = DEFAULT_JWT
    version: str = DEFAULT_VERSION
    connect_timeout: float | None = 30.0
    first_text_timeout: float | None = 60.0
    query_timeout: float | None = None
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    service: str = "labs"
    session_token: str | None = field(default=None, repr=False)
    cookies_txt: str | None = field(default=None, repr=False)
    mode: str | None = None

    def __post_init__(self) -> None:
        """Refuse a field of the wrong kind now, with :class:`LocalProtocolError`, not with a TypeError later."""
        if self.service not in SERVICES:
            raise LocalProtocolError(f"expected a service among {', '.join(SERVICES)}, got {self.service!r:.60}")
        _check_cookies(self.session_token, self.cookies_txt)
        check_mode(self.service, self.mode)
        if self.transport not in TRANSPORTS:
            raise LocalProtocolError(
                f"expected a transport among {', '.join(TRANSPORTS)}, got {self.transport!r:.60}"
            )
        size = self.max_message_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise LocalProtocolError(f"expected max_message_size as an int >= 1 (bytes), got {size!r:.60}")
        if not isinstance(self.path, str):
            raise LocalProtocolError(f"expected the path as a str, got {self.path!r:.60}")
        check_header_text("the server path", split_server(self.server, self.path)[3])
        for name in ("origin", "jwt", "version"):
            if not isinstance(getattr(self, name), str):
                raise LocalProtocolError(f"expected {name} as a str, got {getattr(self, name)!r:.60}")
        check_header_text("origin", self.origin)
        for name in ("connect_timeout", "first_text_timeout", "query_timeout"):
            check_seconds(name, getattr(self, name))

    def session_config(self) -> SessionConfig:
        """The message-level part alone (a plain :class:`SessionConfig`, for a carrier of its own)."""
        if type(self) is SessionConfig:
            return self
        return SessionConfig(**{f.name: getattr(self, f.name) for f in fields(SessionConfig)})


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientConfig(SessionConfig):
    """A :class:`SessionConfig` and what the byte level adds beneath it.

    A frame or body announcing more than ``max_message_size`` is refused from
    its header, before it is buffered.  ``tls`` is taken from the URL scheme
    when ``None``; ``False`` speaks plain HTTP even to an ``https://`` server,
    for a caller whose transport does TLS itself (and for replaying a trace,
    which holds the bytes above TLS).

    ``browser`` is the header profile of every request (:data:`~plabs_proto.wire.browser.CHROME`:
    a desktop Chrome's headers, in Chrome's order; see :mod:`plabs_proto.wire.browser`).
    ``None`` sends only Host, User-Agent (when ``user_agent`` is set), ``Accept: */*``,
    the session's headers and cookies: the headers of plabs-proto before profiles, which
    replaying an old trace needs.  ``user_agent`` replaces the profile's User-Agent; the
    client hints (``sec-ch-ua*``) are then left out, as they would contradict it.
    ``headers`` are the caller's: with a profile each replaces the header of the same name
    (any case) where it stands, the others go at the end (without one, as before: all at the end).

    Compression, both on by default as in a browser: ``accept_encoding`` sends
    ``Accept-Encoding: gzip, deflate`` on every HTTP request (Node's engine.io
    and python-engineio then gzip polling bodies of 1 KiB and more); a body the
    server compressed is inflated whatever we offered, never past the receive
    limit.  ``permessage_deflate`` offers the WebSocket extension of RFC 7692
    (``Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits``);
    when the server accepts it, its compressed messages are inflated (within
    ``max_message_size``) and ours are compressed with the parameters it chose.
    Turned off, nothing is offered, and a server that answers with an
    extension all the same is refused.  Neither changes the message level:
    compression is the carrier's.
    """

    proxy: str | ProxyConfig | None = field(default=None, repr=False)
    ssl_context: ssl.SSLContext | None = None
    cafile: str | os.PathLike[str] | None = None
    tls: bool | None = None
    headers: tuple[tuple[str, str], ...] = ()
    browser: BrowserProfile | None = CHROME
    user_agent: str | None = None
    accept_encoding: bool = True
    permessage_deflate: bool = True

    def __post_init__(self) -> None:
        """The message-level fields are checked by :class:`SessionConfig`, the byte-level ones here."""
        SessionConfig.__post_init__(self)
        host = split_server(self.server, self.path)[1]
        if self.proxy is not None and not isinstance(self.proxy, ProxyConfig):
            if not isinstance(self.proxy, str):
                raise LocalProtocolError(
                    f"expected the proxy as a URL str or a ProxyConfig, got {type(self.proxy).__name__}"
                )
            parse_proxy_url(self.proxy)
        if self.ssl_context is not None:
            check_ssl_context(self.ssl_context)
        if self.cafile is not None and not isinstance(self.cafile, str | os.PathLike):
            raise LocalProtocolError(f"expected cafile as a path (str or os.PathLike) or None, got {self.cafile!r:.60}")
        if self.tls is not None and not isinstance(self.tls, bool):
            raise LocalProtocolError(f"expected tls as True, False or None, got {self.tls!r:.60}")
        if self.browser is not None and not isinstance(self.browser, BrowserProfile):
            raise LocalProtocolError(f"expected browser as a BrowserProfile or None, got {self.browser!r:.80}")
        _check_bool("accept_encoding", self.accept_encoding)
        _check_bool("permessage_deflate", self.permessage_deflate)
        texts = [("the server host", host)]
        if self.user_agent is not None:
            if not isinstance(self.user_agent, str):
                raise LocalProtocolError(f"expected user_agent as a str, got {self.user_agent!r:.60}")
            texts.append(("user_agent", self.user_agent))
        if not isinstance(self.headers, (tuple, list)):
            raise LocalProtocolError(f"expected headers as a tuple of (name, value) tuples, got {self.headers!r:.80}")
        for item in self.headers:
            if not isinstance(item, tuple) or len(item) != 2:
                raise LocalProtocolError(f"expected each of headers as a (name, value) tuple, got {item!r:.80}")
            texts += [("a header name", item[0]), (f"the {item[0]!r} header", item[1])]
        for what, text in texts:
            check_header_text(what, text)
