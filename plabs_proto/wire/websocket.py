"""The WebSocket layer: frames on a connection that HTTP/1.1 (h11) has upgraded.

Parsing of the server's frames is wsproto's ``FrameProtocol`` (UTF-8 validation,
fragmentation, control frames, close codes).  Our own frames are masked with
keys drawn from the random generator the client was handed, so a test can
reproduce every byte we send (wsproto would draw masks from ``os.urandom``).

Compression (RFC 7692, permessage-deflate): the client offers
:data:`DEFLATE_OFFER`; :func:`negotiate_deflate` checks the server's answer
(only the extension we offered, only parameters RFC 7692 defines, window
sizes 8 to 15) and gives the :class:`DeflateParameters` it agreed to.  The
channel then hands compressed frames (RSV1 set) to wsproto's
``PerMessageDeflate`` through a subclass that inflates with a bound: a message
that inflates past ``max_message_size`` is refused as soon as it does, however
small its compressed form (a decompression bomb).  Our own messages are
compressed each by a compressor of its own (the ``00 00 ff ff`` tail
stripped), then put into a frame masked from our ``rng``; with
``client_max_window_bits=8``, which zlib cannot compress with, they go
uncompressed (RSV1 clear), as RFC 7692 allows for any message.  The extension
costs memory only while a message is being compressed or inflated (a
thousand sessions may share a process): see ``_BoundedDeflate``.
"""

from __future__ import annotations

import base64
import hashlib
import random
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import (
    CloseReason,
    FrameDecoder,
    FrameProtocol,
    Opcode,
    ParseFailed,
    RsvBits,
    XorMaskerSimple,
)

from plabs_proto.errors import LocalProtocolError, RemoteProtocolError
from plabs_proto.messages import Utf8Text
from plabs_proto.wire.inflate import inflate_within

__all__ = [
    "DEFLATE_OFFER",
    "DeflateParameters",
    "Utf8Text",
    "WebSocketChannel",
    "accept_token",
    "make_key",
    "negotiate_deflate",
]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

#: Our ``Sec-WebSocket-Extensions`` offer, as Chrome words it: permessage-deflate, and the
#: server may bound the window we compress with (``client_max_window_bits`` without a value).
DEFLATE_OFFER = "permessage-deflate; client_max_window_bits"
_TAIL = b"\x00\x00\xff\xff"  # what a sender strips from the end of each compressed message
#: The inflated history is kept as the messages came (a bytes object each); past this many, the
#: next message's dictionary (joined from them anyway) replaces them.  8: 4 left more holes in the
#: C heap at 1,000 sessions, 16 kept more small objects (see ``_BoundedDeflate``).
_CHUNKS = 8
#: Bytes the history may hold beyond the window before its first chunk is cut to what the window reaches.
_SLACK = 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class DeflateParameters:
    """What the server agreed to for permessage-deflate (RFC 7692 §7.1).

    ``server_no_context_takeover``: the server starts each message with an empty
    window (we then inflate each message afresh).  ``client_no_context_takeover``:
    so must we.  ``*_max_window_bits``: the largest LZ77 window (as a power of
    two) each side compresses with; 15 when the server named none.
    """

    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    server_max_window_bits: int = 15
    client_max_window_bits: int = 15


_FLAGS = ("server_no_context_takeover", "client_no_context_takeover")
_BITS = ("server_max_window_bits", "client_max_window_bits")


def negotiate_deflate(values: Sequence[str], *, offered: bool) -> DeflateParameters | None:
    """The permessage-deflate parameters the server's ``Sec-WebSocket-Extensions`` values agree to.

    ``values`` are the header's values in the 101 response (none: no
    extension, ``None``); ``offered`` tells whether we sent :data:`DEFLATE_OFFER`.
    An extension we did not offer, one named twice, an unknown or repeated
    parameter, a flag with a value or a window size outside 8..15 is a
    :class:`RemoteProtocolError` (RFC 7692 §7.1: the client must fail the
    connection), naming what arrived.
    """
    text = ", ".join(values)
    extensions = [item.strip() for item in text.split(",") if item.strip()]
    if not extensions:
        return None
    shown = text if len(text) <= 200 else text[:200] + "..."
    if not offered:
        raise RemoteProtocolError(
            f"expected no Sec-WebSocket-Extensions in the 101 response (we offered none), got {shown!r}"
        )
    if len(extensions) > 1:
        raise RemoteProtocolError(
            f"expected at most one WebSocket extension (we offered permessage-deflate), got {shown!r}"
        )
    name, *params = [part.strip() for part in extensions[0].split(";")]
    if name.lower() != "permessage-deflate":
        raise RemoteProtocolError(
            f"expected the WebSocket extension we offered (permessage-deflate), got {name!r:.80}"
        )
    agreed: dict[str, bool | int] = {}
    for param in params:
        key, sep, value = (part.strip() for part in param.partition("="))
        key = key.lower()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        if key in agreed:
            raise RemoteProtocolError(f"expected each permessage-deflate parameter once, got {key!r} twice in {shown!r}")
        if key in _FLAGS and not sep:
            agreed[key] = True
        elif key in _BITS and value in ("8", "9", "10", "11", "12", "13", "14", "15"):
            agreed[key] = int(value)
        else:
            raise RemoteProtocolError(
                "expected permessage-deflate parameters among server_no_context_takeover, "
                "client_no_context_takeover (without a value), server_max_window_bits=8..15 and "
                f"client_max_window_bits=8..15, got {param!r:.80} in {shown!r}"
            )
    return DeflateParameters(**agreed)  # type: ignore[arg-type]


class _BoundedDeflate(PerMessageDeflate):
    """wsproto's permessage-deflate, inflating each message within ``limit`` bytes.

    wsproto's own inbound path inflates a frame whole (no ``max_length``), so a
    frame of a few kilobytes could become gigabytes; here every call to zlib
    is told the most the message may still grow by, and going past it raises
    :class:`RemoteProtocolError` at once.  A control frame between the
    fragments of a compressed message leaves the message's state alone.

    Memory is spent only on what the server uses, since a thousand sessions may
    share a process.  Nothing is allocated at negotiation: a server that agrees
    to the extension but sends its messages plain (Node's ``ws`` compresses only
    messages of 1 KiB and more) costs nothing.  An inflater (zlib's state, about
    7 KiB, and a window of up to 32 KiB) lives only while a compressed message
    comes in; between messages we keep, for context takeover, just the end of
    what the server sent (as much of it as its window reaches, ``_history``) and
    hand it to the next message's inflater as its dictionary: zlib then reads the
    back-references exactly as with the inflater kept, for a few microseconds
    per message.  The history is a list of the messages as they were inflated
    (the very bytes objects handed up), not one bytes object remade for each
    message: a thousand sessions each allocating a history a few hundred bytes
    larger than the one it frees, every message, left 4-8 KiB per session of
    free but unusable holes in the C heap (glibc, 1,000 sessions streaming
    21 KB of compressed messages each).  The next message's dictionary is
    joined from it anyway; once it holds more than :data:`_CHUNKS` messages,
    that joined dictionary becomes its one chunk, so the large allocation is
    made every few messages, not every message, and no new copy for it.
    Our own messages: see :meth:`compress`.
    """

    def __init__(self, agreed: DeflateParameters, *, limit: int) -> None:
        super().__init__(
            client_no_context_takeover=agreed.client_no_context_takeover,
            server_no_context_takeover=agreed.server_no_context_takeover,
            # zlib cannot compress with a window of 8 bits: then we do not compress (see the module).
            client_max_window_bits=max(9, agreed.client_max_window_bits),
        )
        # Inflating with the largest window reads any smaller one, 8 bits included.
        self.server_max_window_bits = 15
        self.compress_outgoing = agreed.client_max_window_bits >= 9
        self._client_bits = agreed.client_max_window_bits
        self._limit = limit
        self._inflated = 0  # bytes the compressed message under way has inflated to
        self._history: list[bytes] = []  # the end of what the server's compressed messages inflated to
        self._kept = 0  # its length
        self._message: list[bytes] = []  # what the compressed message under way inflated to so far
        self.finalize(self.name)  # enabled: the parameters are already set

    def frame_inbound_header(
        self, proto: FrameDecoder | FrameProtocol, opcode: Opcode, rsv: RsvBits, payload_length: int
    ) -> CloseReason | RsvBits:
        if rsv.rsv1 and self._inbound_compressed is None and opcode in (Opcode.TEXT, Opcode.BINARY):
            self._start()  # before wsproto would make an inflater of its own, without the history
        return super().frame_inbound_header(proto, opcode, rsv, payload_length)

    def frame_inbound_payload_data(self, proto: FrameDecoder | FrameProtocol, data: bytes) -> bytes | CloseReason:
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return data
        return self._inflate(data, last=False)

    def frame_inbound_complete(self, proto: FrameDecoder | FrameProtocol, fin: bool) -> bytes | CloseReason | None:
        if not fin or not self._inbound_is_compressible:
            return None  # a fragment, or a control frame (perhaps between fragments)
        if not self._inbound_compressed:
            self._inbound_compressed = None
            return None
        data = self._inflate(_TAIL, last=True)
        self._inbound_compressed = None
        self._end_message()
        return data

    def compress(self, data: bytes) -> bytes:
        """``data`` as the payload of one compressed message (RFC 7692 §7.2.1), tail stripped.

        Each message gets a compressor of its own, sized to it and dropped at once, instead of
        wsproto's one compressor kept for the session: zlib's deflate state is 256 KiB at the
        largest window (a window, hash chains, a pending buffer), of which each session kept
        about 120 KiB resident, to compress a few messages of a few dozen bytes (the connect
        packet, the query, pongs).  RFC 7692 lets us: context takeover permits the server to
        keep our window, it does not oblige us to refer to it (§7.2.1, "MAY"), so a message
        compressed afresh reads the same on the server's side.  We still compress, as Chrome
        does, rather than send everything plain (§6.1 allows that too): a server sees the
        frames a browser sends.  The window and hash table are sized to the message (a window
        reaches across the whole message once it is 262 bytes larger, zlib's lookahead; a
        block holds the whole message): for a message of a few hundred bytes that makes the
        stream the largest ones make, at a tenth of the cost (zlib clears its hash table).
        """
        n = len(data)
        bits = min(self._client_bits, max(9, (n + 262).bit_length()))
        level = min(8, max(1, n.bit_length() - 6))  # zlib's memLevel: a block of 2 ** (level + 6) symbols
        compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -bits, level)
        return (compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]

    def inflate_message(self, payload: bytes) -> bytes:
        """A whole compressed message that came in one frame, inflated within the limit.

        The channel's fast path, beside wsproto's (which it must not be in the middle
        of a compressed message): the same history, so the window carries over.
        """
        self._start()
        data = self._inflate(payload + _TAIL, last=True)
        self._end_message()
        return data

    def _start(self) -> None:
        """The inflater of a compressed message, its window primed with the earlier messages."""
        bits = -self.server_max_window_bits
        history = self._history
        if not history:
            self._decompressor = zlib.decompressobj(bits)
            return
        if len(history) == 1:
            dictionary = history[0]
        else:
            dictionary = b"".join(history)  # zlib reads only its last window's worth
            if len(history) > _CHUNKS:  # the joined history becomes its one chunk (the inflater holds it anyway)
                history[:] = [dictionary]
        self._decompressor = zlib.decompressobj(bits, zdict=dictionary)

    def _end_message(self) -> None:
        inflater = self._decompressor
        if self.server_no_context_takeover or (inflater is not None and inflater.eof):
            self._history = []  # the next message starts with an empty window
            self._kept = 0
        else:  # what the window reaches: whole chunks, the first one cut when it reaches far back
            history = self._history
            history += self._message
            kept = self._kept + self._inflated
            window = 1 << self.server_max_window_bits
            while history and kept - len(history[0]) >= window:  # (none yet: every message was empty)
                kept -= len(history.pop(0))
            if kept > window + _SLACK:
                history[0] = history[0][kept - window :]
                kept = window
            self._kept = kept
        self._decompressor = None
        self._message = []
        self._inflated = 0

    def _inflate(self, data: bytes, *, last: bool) -> bytes:
        inflater = self._decompressor
        if inflater is None:  # pragma: no cover - frame_inbound_header makes one for a compressed message
            raise RemoteProtocolError("expected a compressed WebSocket message to have begun, got a fragment")
        out = inflate_within(
            inflater, data, self._limit - self._inflated,
            unreadable="expected a permessage-deflate message zlib can inflate, got one it cannot",
            too_big=f"expected a WebSocket message of at most {self._limit} bytes (max_message_size) once inflated, "
            "got a compressed one that inflates to more",
        )
        self._inflated += len(out)
        if inflater.eof and inflater.unused_data and not (last and inflater.unused_data == _TAIL):
            raise RemoteProtocolError(
                "expected nothing after the final deflate block of a WebSocket message, "
                f"got {len(inflater.unused_data)} more bytes"
            )
        if out and not self.server_no_context_takeover:
            self._message.append(out)
        return out


def make_key(rng: random.Random) -> str:
    """A ``Sec-WebSocket-Key``: 16 bytes from ``rng``, base64-encoded."""
    return base64.b64encode(rng.getrandbits(128).to_bytes(16, "big")).decode("ascii")


def accept_token(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` value a server must answer to ``key`` (RFC 6455 §4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest()).decode("ascii")


def _frame(opcode: int, payload: bytes, rng: random.Random, *, rsv1: bool = False) -> bytes:
    """One final, masked client frame (``rsv1``: a compressed message)."""
    n = len(payload)
    first = 0xC0 | opcode if rsv1 else 0x80 | opcode
    if n < 126:
        header = struct.pack("!BB", first, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", first, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, n)
    key = rng.getrandbits(32).to_bytes(4, "big")
    return header + key + bytes(XorMaskerSimple(key).process(bytearray(payload)))


#: A fragmented message may have any number of fragments as long as, past the first
#: ``_FREE_FRAGMENTS``, they average at least ``_MIN_FRAGMENT`` bytes: each one costs wsproto a
#: frame, so a message in 2-byte continuation frames is refused early.
_FREE_FRAGMENTS = 1024
_MIN_FRAGMENT = 64


class WebSocketChannel:
    """Client side of an open WebSocket connection.

    ``receive_data`` takes bytes from the server and returns the complete
    messages (``str`` for text, ``bytes`` for binary).  Server pings are
    answered and a server close is acknowledged on their own: the replies wait
    in ``data_to_send()``.  A message longer than ``max_message_size`` bytes is
    refused with :class:`RemoteProtocolError` before it is buffered whole.
    ``deflate``: the permessage-deflate parameters the server agreed to (see
    :func:`negotiate_deflate`); compressed messages are then inflated within
    ``max_message_size`` and ours are compressed.
    """

    def __init__(
        self,
        rng: random.Random,
        *,
        max_message_size: int,
        trailing_data: bytes = b"",
        raw_text: bool = False,
        deflate: DeflateParameters | None = None,
    ) -> None:
        self._rng = rng
        #: Hand whole single-frame text messages out as :class:`Utf8Text`, undecoded (but for
        #: those of one or two bytes: as ``str`` they cost nothing, as ``Utf8Text`` 40 times their size).
        self.raw_text = raw_text
        #: The parameters of permessage-deflate, when the server agreed to it.
        self.deflate = deflate
        self._deflate = _BoundedDeflate(deflate, limit=max_message_size) if deflate is not None else None
        #: wsproto's parser, made for the first frame off the fast path (see :meth:`receive_data`): most
        #: sessions see one, the close, so it is not held (about 0.7 KiB) by every session streaming.
        self._proto: FrameProtocol | None = None
        self._outgoing = bytearray()
        self._parts: list[str | bytes] = []
        self._size = 0
        self._fragments = 0  # in the message under way
        self.max_message_size = max_message_size
        #: ``(code, reason)`` once the server sent a close frame.
        self.close_reason: tuple[int, str] | None = None
        self._close_sent = False
        self._pending = trailing_data
        self._buffer = bytearray()  # the start of a frame not complete yet
        self._fragmented = False  # a fragmented message is under way (wsproto reassembles it)

    @property
    def closed(self) -> bool:
        """True once the server's close frame arrived or ours was sent."""
        return self.close_reason is not None or self._close_sent

    def send_text(self, text: str) -> bytes:
        """The bytes of one masked text frame carrying ``text``."""
        if self._close_sent:
            raise LocalProtocolError("cannot send a WebSocket message after our close frame was sent")
        data = text.encode("utf-8")
        deflate = self._deflate
        if deflate is not None and deflate.compress_outgoing:
            return _frame(Opcode.TEXT, deflate.compress(data), self._rng, rsv1=True)
        return _frame(Opcode.TEXT, data, self._rng)

    def close(self, code: int = CloseReason.NORMAL_CLOSURE, reason: str = "") -> bytes:
        """The bytes of our close frame (empty if it was already sent)."""
        if self._close_sent:
            return b""
        self._close_sent = True
        # At most 123 bytes of reason (a control frame holds 125), cut between characters: the peer checks UTF-8.
        said = reason.encode("utf-8")[:123].decode("utf-8", "ignore").encode("utf-8")
        return _frame(Opcode.CLOSE, struct.pack("!H", code) + said, self._rng)

    def data_to_send(self) -> bytes:
        """Pongs and close replies produced while receiving."""
        out = bytes(self._outgoing)
        self._outgoing.clear()
        return out

    def receive_data(self, data: bytes) -> list[str | bytes | Utf8Text]:
        """Feed bytes from the server; returns the messages they complete.

        Frames are cut at their boundaries here.  The frame servers send
        almost always (final, unmasked, text or binary, no extension bits or
        just RSV1 of a negotiated permessage-deflate, no fragmented message
        under way) is decoded directly; every other frame
        (control frames, fragments, anything odd) is handed whole to wsproto,
        which validates it, so wsproto never holds half a frame.
        """
        if self._pending:
            data = self._pending + data
            self._pending = b""
        if self.close_reason is not None:
            if data:
                raise RemoteProtocolError(
                    f"expected nothing after the server's WebSocket close frame, got {len(data)} more bytes"
                )
            return []
        buf: bytes | bytearray
        if self._buffer:
            self._buffer += data
            buf = self._buffer
        else:
            buf = data  # the usual case: nothing left over, work on the bytes as they came
        messages: list[str | bytes | Utf8Text] = []
        pos = 0
        size = len(buf)
        limit = self.max_message_size
        deflate = self._deflate
        while size - pos >= 2:
            first = buf[pos]
            second = buf[pos + 1]
            length = second & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            if second & 0x80:
                head += 4  # a masked frame: wsproto refuses it below
            if length > limit or (self._fragmented and self._size + length > limit):
                self._too_big(length + (self._size if self._fragmented else 0))
            end = pos + head + length
            if end > size:
                break
            if (
                (first == 0x81 or first == 0x82 or (deflate is not None and (first == 0xC1 or first == 0xC2)))
                and not second & 0x80
                and not self._fragmented
            ):
                payload = buf[pos + head : end]
                if first & 0x40 and deflate is not None:  # compressed: inflated within the limit
                    payload = deflate.inflate_message(bytes(payload))
                    length = len(payload)
                    first &= 0xBF
                if first == 0x81 and self.raw_text and length > 2:
                    messages.append(Utf8Text(payload if type(payload) is bytes else bytes(payload)))
                elif first == 0x81:
                    try:
                        messages.append(str(payload, "utf-8"))
                    except UnicodeDecodeError as exc:
                        raise RemoteProtocolError(
                            f"expected UTF-8 in a WebSocket text frame, got bytes that are not: {exc}"
                        ) from None
                else:
                    messages.append(bytes(payload))
            else:
                proto = self._proto
                if proto is None:
                    proto = self._proto = FrameProtocol(client=True, extensions=[deflate] if deflate is not None else [])
                proto.receive_bytes(bytes(buf[pos:end]))
                self._wsproto_frames(proto, messages)
                if self.close_reason is not None:
                    pos = end
                    if pos < size:
                        raise RemoteProtocolError(
                            "expected nothing after the server's WebSocket close frame, "
                            f"got {size - pos} more bytes"
                        )
                    break
            pos = end
        # Keep the start of an incomplete frame (its size was checked against the limit above).
        if buf is self._buffer:
            del self._buffer[:pos]
        elif pos < size:
            self._buffer = bytearray(buf[pos:])
        return messages

    def _wsproto_frames(self, proto: FrameProtocol, messages: list[str | bytes | Utf8Text]) -> None:
        """Collect what wsproto (``proto``) makes of the whole frames it was handed."""
        try:
            for frame in proto.received_frames():
                opcode = frame.opcode
                payload = frame.payload
                if opcode is Opcode.TEXT or opcode is Opcode.BINARY or opcode is Opcode.CONTINUATION:
                    if isinstance(payload, tuple):  # only CLOSE frames carry a tuple
                        continue
                    self._size += len(payload) if not isinstance(payload, str) else len(payload.encode("utf-8"))
                    if self._size > self.max_message_size:
                        self._too_big(self._size)
                    self._fragments += 1
                    if self._fragments > _FREE_FRAGMENTS + self._size // _MIN_FRAGMENT:
                        raise RemoteProtocolError(
                            f"expected a fragmented WebSocket message in fragments of {_MIN_FRAGMENT} bytes "
                            f"on average, got {self._fragments} fragments for {self._size} bytes"
                        )
                    self._parts.append(payload if isinstance(payload, str) else bytes(payload))
                    self._fragmented = not frame.message_finished
                    if frame.message_finished:
                        first = self._parts[0]
                        if isinstance(first, str):
                            messages.append("".join(p for p in self._parts if isinstance(p, str)))
                        else:
                            messages.append(b"".join(p for p in self._parts if isinstance(p, bytes)))
                        self._parts = []
                        self._size = 0
                        self._fragments = 0
                elif opcode is Opcode.PING:
                    if isinstance(payload, (bytes, bytearray)) and not self._close_sent:
                        self._outgoing += _frame(Opcode.PONG, bytes(payload), self._rng)
                elif opcode is Opcode.CLOSE:
                    code, reason = payload if isinstance(payload, tuple) else (1005, "")
                    self.close_reason = (int(code), str(reason))
                    if not self._close_sent:
                        reply = code if code not in (CloseReason.NO_STATUS_RCVD,) else CloseReason.NORMAL_CLOSURE
                        self._outgoing += self.close(int(reply))
                    break
                # PONG frames: we send no pings, so they carry nothing for us.
        except ParseFailed as exc:
            raise RemoteProtocolError(
                f"expected a valid WebSocket frame from the server, got one that fails: {exc} "
                f"(close code {int(exc.code)})"
            ) from exc

    def _too_big(self, size: int) -> None:
        raise RemoteProtocolError(
            f"expected a WebSocket message of at most {self.max_message_size} bytes (max_message_size), "
            f"got one of at least {size} bytes"
        )
