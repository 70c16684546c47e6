"""What the byte level sends beside the session's own headers: the browser's, and the cookies.

:class:`CookieJar` keeps the cookies of ``Set-Cookie`` headers (as a browser does, within
RFC 6265's minimums) and sends them back; :class:`RequestHeaders` makes each request's and each
WebSocket upgrade's headers from the browser profile (see :mod:`plabs_proto.wire.browser`), the
session's, the cookies and the caller's.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from urllib.parse import urlsplit

from plabs_proto.config import ClientConfig
from plabs_proto.wire.browser import BrowserProfile, merge_headers
from plabs_proto.wire.http import ACCEPT_ENCODING
from plabs_proto.wire.websocket import DEFLATE_OFFER

__all__ = ["CookieJar", "RequestHeaders"]

#: Set-Cookie values kept and sent back: visible ASCII names, printable ASCII values, at most
#: this many cookies of at most this many characters each (RFC 6265's minimums for a browser).
_COOKIE_NAME = re.compile(r"[!-~]+")
_COOKIE_VALUE = re.compile(r"[ -~]*")
_MAX_COOKIES = 50
_MAX_COOKIE_SIZE = 4096


class CookieJar:
    """The cookies kept from the server's ``Set-Cookie`` headers, sent back on every request."""

    __slots__ = ("_kept",)

    def __init__(self) -> None:
        self._kept: dict[str, str] = {}

    def as_dict(self) -> dict[str, str]:
        """The cookies kept (name: value), a copy."""
        return dict(self._kept)

    def header(self, given: str | None = None) -> str | None:
        """The ``Cookie`` value of every cookie kept so far (None when there is none).

        ``given`` is a ``Cookie`` value of the session's own (a signed-in session's
        token): its cookies come first, and one the server set since under the same
        name is sent with the server's value instead, so one header carries them all.
        """
        if given is None:
            return "; ".join(f"{k}={v}" for k, v in self._kept.items()) if self._kept else None
        pairs: dict[str, str] = {}
        for pair in given.split(";"):
            name, _, value = pair.strip().partition("=")
            if name:
                pairs[name] = value
        pairs.update(self._kept)
        return "; ".join(f"{k}={v}" for k, v in pairs.items()) if pairs else None

    def remember(self, headers: Sequence[tuple[str, str]]) -> None:
        """Keep the ``name=value`` of each Set-Cookie, to send back in a Cookie header.

        A cookie that could not be sent back as it came is ignored, as a browser
        ignores a cookie it cannot parse: one whose name is not visible ASCII or
        whose value holds anything but printable ASCII (a control character, a
        non-ASCII byte).  So is one of more than :data:`_MAX_COOKIE_SIZE`
        characters, and a new name once :data:`_MAX_COOKIES` are kept.
        """
        for key, value in headers:
            if key != "set-cookie":
                continue
            pair = value.split(";", 1)[0]
            name, sep, val = pair.partition("=")
            name, val = name.strip(), val.strip()
            if (
                sep
                and _COOKIE_NAME.fullmatch(name)
                and _COOKIE_VALUE.fullmatch(val)
                and len(name) + len(val) <= _MAX_COOKIE_SIZE
                and (name in self._kept or len(self._kept) < _MAX_COOKIES)
            ):
                self._kept[name] = val


def _page(session_headers: Sequence[tuple[str, str]]) -> str | None:
    """The origin of the page a request comes from: the session's Origin, else its Referer's."""
    referer = None
    for name, value in session_headers:
        key = name.lower()
        if key == "origin":
            return value
        if key == "referer":
            referer = value
    if referer is None:
        return None
    parts = urlsplit(referer)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else None


@functools.lru_cache(maxsize=64)
def _fetch_headers(
    profile: BrowserProfile, host: str, origin: str, server: str, session_headers: tuple[tuple[str, str], ...],
    content_length: int | None, user_agent: str | None, accept_encoding: str | None, cookie: str | None,
    caller: tuple[tuple[str, str], ...],
) -> tuple[tuple[str, str], ...]:
    """A polling request's headers from a browser profile and the caller's: made once for each set of
    inputs and then remembered (a client asks for the same ones request after request, as do the
    sessions of one process: making them costs some 190,000 instructions, remembering them 15,000)."""
    headers = profile.fetch_headers(
        host=host, origin=origin, server=server, session_headers=session_headers, content_length=content_length,
        user_agent=user_agent, accept_encoding=accept_encoding, cookie=cookie,
    )
    return tuple(merge_headers(headers, caller))


class RequestHeaders:
    """The headers of each request and WebSocket upgrade of one client (see the module docstring)."""

    __slots__ = ("_config", "_cookies", "_host")

    def __init__(self, config: ClientConfig, host: str, cookies: CookieJar) -> None:
        self._config = config
        self._host = host  # the Host header's value
        self._cookies = cookies

    def _caller_user_agent(self) -> str | None:
        """The User-Agent the caller chose (``headers`` first, then ``user_agent``), or None."""
        for name, value in self._config.headers:
            if name.lower() == "user-agent":
                return value
        return self._config.user_agent

    def request(
        self, session_headers: tuple[tuple[str, str], ...], content_length: int | None = None
    ) -> list[tuple[str, str]]:
        """A polling request's headers: the browser profile's, or (without one) the plain set.

        Plain (as before profiles): Host, User-Agent, Accept, the session's (Origin, Referer),
        cookies, the caller's (replacing ours of the same name), and a POST's Content-Type last.  ``content_length`` (a POST's) takes
        Chrome's place in a profile's order; h11 keeps that one and adds no second.

        A ``Cookie`` among the session's headers (a signed-in session's) and the cookies
        kept go out as one ``Cookie`` header (see :meth:`CookieJar.header`).  The
        ``Sec-Fetch-Site`` of a profile is worked out from the session's Origin (else
        its Referer, else ``origin``): the page the request comes from.
        """
        given = None
        if any(name.lower() == "cookie" for name, _ in session_headers):
            given = "; ".join(value for name, value in session_headers if name.lower() == "cookie")
            session_headers = tuple(item for item in session_headers if item[0].lower() != "cookie")
        cookie = self._cookies.header(given)
        config = self._config
        profile = config.browser
        if profile is not None:
            return list(_fetch_headers(
                profile, self._host, _page(session_headers) or config.origin, config.server, session_headers,
                content_length, self._caller_user_agent(), ACCEPT_ENCODING if config.accept_encoding else None,
                cookie, config.headers,
            ))
        headers = [("Host", self._host)]
        if self._config.user_agent is not None:
            headers.append(("User-Agent", self._config.user_agent))
        if not any(name.lower() == "accept" for name, _ in session_headers):  # (the session's takes its place)
            headers.append(("Accept", "*/*"))
        last: list[tuple[str, str]] = []
        for name, value in session_headers:
            (last if name == "Content-Type" else headers).append((name, value))
        if self._config.accept_encoding:
            headers.append(("Accept-Encoding", ACCEPT_ENCODING))
        if cookie is not None:
            headers.append(("Cookie", cookie))
        if self._config.headers:
            # As before profiles (old traces replay byte for byte): the caller's replace ours at the end.
            own = {name.lower() for name, _ in self._config.headers}
            headers = [(name, value) for name, value in headers if name.lower() not in own]
            headers.extend(self._config.headers)
        return headers + last

    def upgrade(self, session_headers: tuple[tuple[str, str], ...], key: str) -> list[tuple[str, str]]:
        """The WebSocket upgrade's headers: the browser profile's, or the plain set and the upgrade's own."""
        profile = self._config.browser
        if profile is not None:
            headers = profile.websocket_headers(
                host=self._host,
                key=key,
                session_headers=session_headers,
                user_agent=self._caller_user_agent(),
                accept_encoding=ACCEPT_ENCODING if self._config.accept_encoding else None,
                cookie=self._cookies.header(),
                extensions=DEFLATE_OFFER if self._config.permessage_deflate else None,
            )
            return merge_headers(headers, self._config.headers)
        return [
            *self.request(session_headers),
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", key),
            *([("Sec-WebSocket-Extensions", DEFLATE_OFFER)] if self._config.permessage_deflate else []),
        ]
