"""The WebSocket layer: frames on a connection that HTTP/1.1 (h11) has upgraded.

Parsing of the server's frames is wsproto's ``FrameProtocol`` (UTF-8 validation,
fragmentation, control frames, close codes).  Our own frames are masked with
keys drawn from the random generator the client was handed, so a test can
reproduce every byte we send (wsproto would draw masks from ``os.urandom``).
"""

from __future__ import annotations

import base64
import hashlib
import random
import struct
from dataclasses import dataclass

from wsproto.frame_protocol import (
    CloseReason,
    FrameProtocol,
    Opcode,
    ParseFailed,
    XorMaskerSimple,
)

from .errors import LocalProtocolError, RemoteProtocolError

__all__ = ["Utf8Text", "WebSocketChannel", "accept_token", "make_key"]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def make_key(rng: random.Random) -> str:
    """A ``Sec-WebSocket-Key``: 16 bytes from ``rng``, base64-encoded."""
    return base64.b64encode(rng.getrandbits(128).to_bytes(16, "big")).decode("ascii")


def accept_token(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` value a server must answer to ``key`` (RFC 6455 §4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest()).decode("ascii")


def _frame(opcode: int, payload: bytes, rng: random.Random) -> bytes:
    """One final, masked client frame."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    key = rng.getrandbits(32).to_bytes(4, "big")
    return header + key + bytes(XorMaskerSimple(key).process(bytearray(payload)))


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
    """

    def __init__(
        self, rng: random.Random, *, max_message_size: int, trailing_data: bytes = b"", raw_text: bool = False
    ) -> None:
        self._rng = rng
        #: Hand whole single-frame text messages out as :class:`Utf8Text`, undecoded (but for
        #: those of one or two bytes: as ``str`` they cost nothing, as ``Utf8Text`` 40 times their size).
        self.raw_text = raw_text
        self._proto = FrameProtocol(client=True, extensions=[])
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
        return _frame(Opcode.TEXT, text.encode("utf-8"), self._rng)

    def close(self, code: int = CloseReason.NORMAL_CLOSURE, reason: str = "") -> bytes:
        """The bytes of our close frame (empty if it was already sent)."""
        if self._close_sent:
            return b""
        self._close_sent = True
        return _frame(Opcode.CLOSE, struct.pack("!H", code) + reason.encode("utf-8")[:123], self._rng)

    def data_to_send(self) -> bytes:
        """Pongs and close replies produced while receiving."""
        out = bytes(self._outgoing)
        self._outgoing.clear()
        return out

    def receive_data(self, data: bytes) -> list[str | bytes | Utf8Text]:
        """Feed bytes from the server; returns the messages they complete.

        Frames are cut at their boundaries here.  The frame servers send
        almost always (final, unmasked, no extension bits, text or binary, no
        fragmented message under way) is decoded directly; every other frame
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
            if (first == 0x81 or first == 0x82) and not second & 0x80 and not self._fragmented:
                payload = buf[pos + head : end]
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
                self._proto.receive_bytes(bytes(buf[pos:end]))
                self._wsproto_frames(messages)
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

    def _wsproto_frames(self, messages: list[str | bytes | Utf8Text]) -> None:
        """Collect what wsproto makes of the whole frames it was handed."""
        try:
            for frame in self._proto.received_frames():
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
