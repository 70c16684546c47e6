"""What a carrier hands a session: the records of the message level, shared by every layer.

:class:`HTTPResponse` is a whole response (its headers read by name with :class:`HeaderLookup`),
:class:`Utf8Text` a WebSocket text message not decoded yet; :func:`looks_like_cloudflare` tells a
Cloudflare page.  The byte level makes them (``wire.http``, ``wire.websocket``), the sessions
take them: both import them from here, so the message level needs nothing of the byte level.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from plabs_proto.errors import RemoteProtocolError

__all__ = ["HTTPResponse", "HeaderLookup", "Utf8Text", "looks_like_cloudflare"]


class HeaderLookup:
    """Reading ``headers``, a tuple of (lower-case name, value) pairs, by name."""

    __slots__ = ()
    headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (lower case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def header_values(self, name: str) -> list[str]:
        """Every value of header ``name`` (lower case)."""
        return [value for key, value in self.headers if key == name]


@dataclass(frozen=True, slots=True)
class HTTPResponse(HeaderLookup):
    """A complete response: status, reason, headers (lower-case names) and body."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes = field(repr=False)

    def text(self) -> str:
        """The body as text (UTF-8, undecodable bytes replaced)."""
        return self.body.decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class Utf8Text:
    """A text frame's payload, not decoded yet (``WebSocketChannel(raw_text=True)``).

    The caller may read what it knows of it as bytes and decode only the rest;
    :meth:`decode` gives the whole text, or the error for bytes that are not UTF-8.
    """

    data: bytes

    def decode(self) -> str:
        try:
            return self.data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RemoteProtocolError(
                f"expected UTF-8 in a WebSocket text frame, got bytes that are not: {exc}"
            ) from None


_CLOUDFLARE_MARKERS = (
    "just a moment...",
    "cf-please-wait",
    "attention required! | cloudflare",
    "cf-browser-verification",
    "challenges.cloudflare.com",
    "cf-chl-",
    "cloudflare ray id",
)


def looks_like_cloudflare(response: HTTPResponse) -> bool:
    """True when the response is a Cloudflare challenge or block page."""
    if response.header("cf-mitigated") is not None:
        return True
    text = response.body[:65536].decode("utf-8", "replace").lower()
    return any(marker in text for marker in _CLOUDFLARE_MARKERS)
