"""The HTTP/1.1 layer (h11): one request at a time on a keep-alive connection.

:class:`HTTPChannel` owns an ``h11.Connection`` in the client role.  It turns a
request into bytes, the server's bytes back into one complete
:class:`HTTPResponse` (or a :class:`SwitchedProtocol` for a WebSocket upgrade),
and tells whether the connection can carry the next request.  h11's errors
come out as our :class:`~plabs_proto.errors.RemoteProtocolError`.

A body sent with ``Content-Encoding: gzip`` or ``deflate`` (zlib-wrapped, or
raw deflate as browsers also take it) is inflated here as it arrives, by
:class:`BodyDecoder`: the response carries the decoded body.  Inflating never
goes past the channel's ``max_body``, so a small compressed body that would
inflate to gigabytes (a decompression bomb) is refused after ``max_body``
bytes, and the compressed bytes count against it too.  Any other coding
(``br``, ``zstd``: we never offer them) is refused by name.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import h11

from plabs_proto.errors import LocalProtocolError, RemoteProtocolError
from plabs_proto.messages import HeaderLookup, HTTPResponse, looks_like_cloudflare
from plabs_proto.wire.inflate import inflate_within

__all__ = [
    "ACCEPT_ENCODING", "RESPONSE_END", "BodyDecoder", "HTTPChannel", "HTTPResponse", "Piece", "ResponseEnd",
    "ResponseHead", "SwitchedProtocol", "looks_like_cloudflare",
]

#: What the client offers in ``Accept-Encoding``: exactly the codings :class:`BodyDecoder` inflates.
ACCEPT_ENCODING = "gzip, deflate"

Headers = Sequence[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class SwitchedProtocol(HeaderLookup):
    """The server accepted an upgrade (101); ``trailing_data`` already belongs to the new protocol."""

    headers: tuple[tuple[str, str], ...]
    trailing_data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class ResponseHead(HeaderLookup):
    """A response's status line and headers (lower-case names), its body to follow in pieces."""

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]


class ResponseEnd:
    """The end of a response whose body came in pieces (:data:`RESPONSE_END`, the one instance)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "RESPONSE_END"


RESPONSE_END = ResponseEnd()

#: What :meth:`HTTPChannel.receive_pieces` hands out: the head, body pieces, the end.
Piece = ResponseHead | bytes | ResponseEnd

def _codings(raw: list[tuple[bytes, bytes]]) -> list[str]:
    """The content codings of a response head, in the order applied, ``identity`` left out."""
    codings: list[str] = []
    for name, value in raw:
        if name.lower() == b"content-encoding":
            for item in value.decode("latin-1").split(","):
                coding = item.strip().lower()
                if coding and coding != "identity":
                    codings.append(coding)
    return codings


class BodyDecoder:
    """Inflates one ``gzip`` or ``deflate`` response body piece by piece, within ``limit`` bytes.

    :meth:`feed` takes the compressed bytes as they come and returns what they
    inflate to; :meth:`end` checks that the compressed stream was complete.
    Each call to zlib is told the most it may produce (``max_length``), so the
    memory and time a body costs are bounded by ``limit`` whatever it holds.

    ``deflate`` is meant to be zlib-wrapped (RFC 9110 §8.4.1.2); some servers
    send raw deflate instead, which browsers take, and so do we: the first two
    bytes tell which (a zlib header is a multiple of 31 with method 8).  ``gzip``
    (and its old name ``x-gzip``) is one gzip member; bytes after its end, or a
    stream cut short, are errors.  An empty body is an empty body whatever its
    coding says (servers send ``Content-Encoding: gzip`` on empty answers).
    """

    __slots__ = ("_fed", "_head", "_inflater", "_size", "coding", "limit", "limit_name", "per_piece")

    def __init__(self, coding: str, *, limit: int, limit_name: str = "max_body", per_piece: bool = False) -> None:
        if coding not in ("gzip", "x-gzip", "deflate"):
            raise LocalProtocolError(f"expected gzip, x-gzip or deflate as a body coding, got {coding!r}")
        self.coding = coding
        self.limit = limit
        #: How the limit is called in error messages (the setting it comes from).
        self.limit_name = limit_name
        #: ``limit`` bounds what each piece inflates to, not the whole body (a stream without end).
        self.per_piece = per_piece
        self._inflater: zlib._Decompress | None = (
            zlib.decompressobj(16 + zlib.MAX_WBITS) if coding != "deflate" else None
        )
        self._head = b""  # deflate: the first byte, until the second tells zlib from raw
        self._size = 0  # bytes produced so far
        self._fed = 0  # compressed bytes taken so far

    def feed(self, data: bytes) -> bytes:
        """The bytes ``data`` inflates to; :class:`RemoteProtocolError` past the limit or on bad data."""
        self._fed += len(data)
        inflater = self._inflater
        if inflater is None:
            data = self._head + data
            if len(data) < 2:
                self._head = data
                return b""
            self._head = b""
            zlib_wrapped = data[0] & 0x0F == 8 and data[0] >> 4 <= 7 and (data[0] << 8 | data[1]) % 31 == 0
            inflater = self._inflater = zlib.decompressobj(zlib.MAX_WBITS if zlib_wrapped else -zlib.MAX_WBITS)
        if inflater.eof:
            if data:
                self._trailing(len(data))
            return b""
        out = inflate_within(
            inflater, data, self.limit if self.per_piece else self.limit - self._size,
            unreadable=f"expected a {self.coding}-encoded HTTP body (Content-Encoding: {self.coding}), "
            "got bytes zlib cannot inflate",
            too_big=f"expected an HTTP response body of at most {self.limit} bytes ({self.limit_name}) once "
            f"inflated{' per piece' if self.per_piece else ''}, got a {self.coding} body that inflates to more than that",
        )
        self._size += len(out)
        if inflater.unused_data:
            self._trailing(len(inflater.unused_data))
        return out

    def end(self) -> None:
        """Check the body held a whole compressed stream (or nothing at all)."""
        if not self._fed:
            return
        if self._head:
            raise RemoteProtocolError(
                f"expected a {self.coding}-encoded HTTP body, got a body of one byte {self._head!r}"
            )
        if self._inflater is not None and not self._inflater.eof:
            raise RemoteProtocolError(
                f"expected a complete {self.coding} stream in the HTTP body, got one cut short "
                f"(after {self._fed} compressed bytes)"
            )

    def _trailing(self, count: int) -> None:
        raise RemoteProtocolError(
            f"expected nothing after the end of the {self.coding} stream in the HTTP body, got {count} more bytes"
        )


#: A body may come in any number of pieces (HTTP chunks, or reads) as long as, past the first
#: ``_FREE_PIECES``, they average at least ``_MIN_PIECE`` bytes: every piece costs h11 an event,
#: so a body in 2-byte chunks is refused early instead of costing seconds per megabyte.
_FREE_PIECES = 1024
_MIN_PIECE = 64

#: The longest unfinished response head (or chunk size line) h11 holds before refusing it.
_MAX_HEAD = 65536


#: Requests made before, by their headers: each gives its headers, as h11 checked them, to the
#: next request with the same ones.  h11 checks every name and value of a request with a regular
#: expression (about half of what sending a request costs), and a client sends the same headers
#: request after request (the browser's, the session's), as do the sessions of one process.  A
#: WebSocket upgrade's (a fresh key each) are not kept; at most ``_MAX_CHECKED`` are (then none).
_checked: dict[tuple[tuple[str, str], ...], h11.Request] = {}
_MAX_CHECKED = 64


def _request(method: str, target: str, headers: list[tuple[str, str]], upgrading: bool) -> h11.Request:
    """h11's request, its headers checked once per distinct set (see :data:`_checked`)."""
    if upgrading:
        return h11.Request(method=method, target=target, headers=headers)
    key = tuple(headers)
    known = _checked.get(key)
    if known is not None:
        return h11.Request(method=method, target=target, headers=known.headers)
    request = h11.Request(method=method, target=target, headers=headers)  # raises for a header h11 refuses
    if len(_checked) >= _MAX_CHECKED:
        _checked.clear()
    _checked[key] = request
    return request


def _headers(raw: list[tuple[bytes, bytes]]) -> tuple[tuple[str, str], ...]:
    """h11's headers as str, names in lower case (from ``raw_items()``: a list, read at C speed,
    where iterating h11's headers calls two Python functions per header)."""
    return tuple((k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in raw)


class HTTPChannel:
    """One HTTP/1.1 client connection, one request in flight at a time.

    ``max_body`` bounds the response body, as sent and once decoded (and h11
    bounds the head), so a server that never stops sending gets an error, not
    our memory; ``limit_name`` is how errors call that limit.  Bodies sent with
    ``Content-Encoding: gzip`` or ``deflate`` are decoded (see :class:`BodyDecoder`).
    """

    def __init__(self, *, max_body: int, limit_name: str = "max_body") -> None:
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_HEAD)
        self.max_body = max_body
        self.limit_name = limit_name
        self._decoder: BodyDecoder | None = None
        self._raw = 0  # body bytes as sent (compressed ones, for a coded body)
        self._busy = False
        self._upgrading = False
        self._incremental = False
        self._response: h11.Response | h11.InformationalResponse | None = None
        self._body = bytearray()
        self._pieces = 0
        self._head = 0  # bytes received while no response head was complete
        self._closed = False

    @property
    def busy(self) -> bool:
        """True while a request waits for its response."""
        return self._busy

    @property
    def reusable(self) -> bool:
        """True when the connection can carry another request (keep-alive, not closed)."""
        return not self._busy and not self._closed and self._conn.our_state is h11.IDLE

    @property
    def closed(self) -> bool:
        """True once the server closed the connection or said it would."""
        return self._closed

    def request(
        self, method: str, target: str, headers: Headers, body: bytes = b"", *, incremental: bool = False
    ) -> bytes:
        """The bytes of a request; the channel then waits for its response.

        ``incremental``: the response is read with :meth:`receive_pieces` (its
        body handed over as it arrives, without a bound on the whole: each piece
        is bounded, and what reads them bounds the rest), not :meth:`receive_data`.
        """
        if not self.reusable:
            raise LocalProtocolError(
                f"cannot send {method} {target}: this HTTP connection is "
                + ("waiting for a response" if self._busy else "closed or not reusable")
            )
        all_headers = list(headers)
        if method == "POST" or body:
            all_headers.append(("Content-Length", str(len(body))))
        upgrading = any(k.lower() == "upgrade" for k, _ in headers)
        try:
            out = self._conn.send(_request(method, target, all_headers, upgrading))
            if body:
                out += self._conn.send(h11.Data(data=body))
            out += self._conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:
            raise LocalProtocolError(f"cannot send {method} {target}: {exc}") from exc
        self._busy = True
        self._incremental = incremental
        self._upgrading = upgrading
        self._response = None
        self._body = bytearray()
        self._pieces = 0
        self._head = 0
        self._decoder = None
        self._raw = 0
        return out

    def receive_data(self, data: bytes) -> HTTPResponse | SwitchedProtocol | None:
        """Feed bytes (``b""`` = EOF); returns the response once complete, else None."""
        if self._incremental:
            raise LocalProtocolError("expected receive_pieces for a response asked for incrementally, got receive_data")
        for item in self._read(data):
            if type(item) is bytes:
                self._body += item
            elif item is RESPONSE_END:
                return self._finish()
            elif isinstance(item, SwitchedProtocol):
                return item
        return None

    def receive_pieces(self, data: bytes) -> list[Piece]:
        """Feed bytes (``b""`` = EOF) of a response asked for incrementally: its head, body pieces and end, as they come."""
        if not self._incremental:
            raise LocalProtocolError("expected receive_data for a response asked for whole, got receive_pieces")
        out: list[Piece] = []
        for item in self._read(data):
            if isinstance(item, SwitchedProtocol):  # pragma: no cover - an upgrade is never incremental
                raise RemoteProtocolError("expected an HTTP response, got a protocol switch")
            if item is RESPONSE_END:
                self._next_cycle()
            out.append(item)
        return out

    def _read(self, data: bytes) -> Iterator[ResponseHead | bytes | ResponseEnd | SwitchedProtocol]:
        """h11's events for ``data`` as the two modes read them, with the checks both share."""
        if not self._busy:
            if data:
                raise RemoteProtocolError(
                    f"expected no bytes while no HTTP request is outstanding, got {data[:60]!r}"
                )
            self._closed = True
            return
        if not data and self._response is None:
            self._closed = True
            raise RemoteProtocolError(
                "expected an HTTP response, got end of stream before a complete response head"
            )
        if self._response is None:
            self._head += len(data)
        try:
            self._conn.receive_data(data)
            while True:
                event = self._conn.next_event()
                if event is h11.NEED_DATA:
                    if not data:
                        raise RemoteProtocolError(
                            "expected the rest of the HTTP response, got end of stream"
                        )
                    return
                if isinstance(event, h11.InformationalResponse):
                    if event.status_code == 101 and self._upgrading:
                        self._busy = False
                        self._closed = True  # the connection now belongs to another protocol
                        trailing, _ = self._conn.trailing_data
                        yield SwitchedProtocol(_headers(event.headers.raw_items()), bytes(trailing))
                        return
                    continue  # 100 Continue and friends
                if isinstance(event, h11.Response):
                    self._response = event
                    self._decoder = self._body_decoder(event)
                    if self._incremental:
                        yield ResponseHead(
                            event.status_code, event.reason.decode("latin-1"), _headers(event.headers.raw_items())
                        )
                elif isinstance(event, h11.Data):
                    self._raw += len(event.data)
                    if not self._incremental:
                        if self._raw > self.max_body:
                            raise RemoteProtocolError(
                                f"expected an HTTP response body of at most {self.max_body} bytes "
                                f"({self.limit_name}), got at least {self._raw} bytes"
                            )
                        self._pieces += 1
                        if self._pieces > _FREE_PIECES + self._raw // _MIN_PIECE:
                            raise RemoteProtocolError(
                                f"expected an HTTP response body in pieces of {_MIN_PIECE} bytes on average, "
                                f"got {self._pieces} pieces for {self._raw} bytes"
                            )
                    yield bytes(event.data) if self._decoder is None else self._decoder.feed(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    if self._decoder is not None:
                        self._decoder.end()
                    yield RESPONSE_END
                    return
                elif isinstance(event, h11.ConnectionClosed):
                    raise RemoteProtocolError("expected an HTTP response, got end of stream")
                elif event is h11.PAUSED:  # pragma: no cover - only after a switched protocol
                    return
        except h11.RemoteProtocolError as exc:
            self._closed = True
            if exc.error_status_hint == 431 and self._response is None:  # h11's bound on an unfinished head
                raise RemoteProtocolError(
                    f"expected an HTTP response head of at most {_MAX_HEAD} bytes, "
                    f"got {self._head} bytes without its end"
                ) from exc
            if not data:
                raise RemoteProtocolError(
                    f"expected the rest of the HTTP response, got end of stream ({exc})"
                ) from exc
            raise RemoteProtocolError(f"expected a valid HTTP/1.1 response, got one h11 refuses: {exc}") from exc

    def _body_decoder(self, response: h11.Response) -> BodyDecoder | None:
        """The decoder for the body ``response`` announces (None: the body comes as it is)."""
        codings = _codings(response.headers.raw_items())
        if not codings:
            return None
        if len(codings) > 1 or codings[0] not in ("gzip", "x-gzip", "deflate"):
            self._closed = True
            raise RemoteProtocolError(
                f"expected a response body as it is or in one Content-Encoding we offer ({ACCEPT_ENCODING}), "
                f"got Content-Encoding {', '.join(codings)!r} (HTTP {response.status_code})"
            )
        return BodyDecoder(codings[0], limit=self.max_body, limit_name=self.limit_name, per_piece=self._incremental)

    def _finish(self) -> HTTPResponse:
        response = self._response
        if response is None:  # pragma: no cover - h11 always sends Response before EndOfMessage
            raise RemoteProtocolError("expected an HTTP response head before its end")
        result = HTTPResponse(
            status=response.status_code,
            reason=response.reason.decode("latin-1"),
            headers=_headers(response.headers.raw_items()),
            body=bytes(self._body),
        )
        self._body = bytearray()
        self._next_cycle()
        return result

    def _next_cycle(self) -> None:
        """The response is complete: the connection takes the next request, or is done."""
        self._busy = False
        if self._conn.our_state is h11.DONE and self._conn.their_state is h11.DONE:
            self._conn.start_next_cycle()
        else:
            self._closed = True
