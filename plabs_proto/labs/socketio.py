"""Socket.IO v5 packet codec (sans-IO), carried inside Engine.IO ``message`` packets.

Wire form: ``<type>[<attachments>-][<namespace>,][<ack id>][<JSON>]``, for example ``2["hello",1]``,
``212["foo"]``, ``2/admin,13["bar"]``, ``0/admin,{"token":"x"}``, ``44{"message":"Not authorized"}``.

Binary data travels as a ``BINARY_EVENT``/``BINARY_ACK`` text packet whose JSON holds placeholders
``{"_placeholder":true,"num":N}``, followed by N binary Engine.IO messages, one per attachment
(``51-["up",{"_placeholder":true,"num":0}]`` then ``<bytes>``).  :func:`encode_binary_packet` builds that;
:class:`PacketDecoder` puts it back together.

Decoding follows the reference ``socket.io-parser`` (``Decoder.decodeString``) including its rejections,
with three deliberate tightenings: ack ids are capped at 15 digits (larger ones lose precision as JS
numbers), JSON ``NaN``/``Infinity`` are refused (``JSON.parse`` refuses them), and an attachment count
must be 1 or more (socket.io-parser 4.2.7).  Every rejection raises
:class:`~plabs_proto.errors.RemoteProtocolError`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, NoReturn

from plabs_proto.errors import LocalProtocolError, RemoteProtocolError
from plabs_proto.jsondepth import check_depth

__all__ = [
    "RESERVED_EVENTS",
    "Packet",
    "PacketDecoder",
    "PacketType",
    "decode_packet",
    "encode_binary_packet",
    "encode_packet",
]

RESERVED_EVENTS = frozenset(
    {"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"}
)
"""Event names that cannot be the first element of an EVENT's data."""

MAX_ID_DIGITS = 15
"""Longest ack id accepted (and produced): 15 digits stay exact as a JS number."""


class PacketType(IntEnum):
    """Socket.IO packet types (the first digit of a packet)."""

    CONNECT = 0
    DISCONNECT = 1
    EVENT = 2
    ACK = 3
    CONNECT_ERROR = 4
    BINARY_EVENT = 5
    BINARY_ACK = 6


@dataclass(frozen=True, slots=True)
class Packet:
    """One Socket.IO packet.

    ``data`` is the decoded JSON (``None`` when the packet has none); ``id`` the ack id; ``attachments``
    the number of binary frames that follow a ``BINARY_*`` packet (0 otherwise).
    """

    type: PacketType
    namespace: str = "/"
    data: Any = None
    id: int | None = None
    attachments: int = 0


_TYPE_BY_CHAR: dict[str, PacketType] = {str(t.value): t for t in PacketType}
_DIGITS = "0123456789"
_JSON_SPACE = " \t\n\r"
_BINARY_TYPES = (bytes, bytearray, memoryview)


def _show(value: str) -> str:
    """A short ``repr`` of what arrived, for error messages."""
    if len(value) <= 60:
        return repr(value)
    return f"{value[:60]!r}... ({len(value)} chars)"


# --------------------------------------------------------------------------------------------------------
# JSON


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


_decoder = json.JSONDecoder(parse_constant=_refuse_constant)
_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_ascii_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _dumps(data: Any) -> str:
    """Compact ``JSON.stringify``-like text; lone surrogates come out escaped, as in JS."""
    out = _encoder.encode(data)
    if not out.isascii() and _has_surrogate(out):
        out = _ascii_encoder.encode(data)
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _event_data_ok(data: Any) -> bool:
    if not isinstance(data, (list, tuple)) or not data:
        return False
    first = data[0]
    if isinstance(first, str):
        return first not in RESERVED_EVENTS
    return _is_number(first)


def _payload_ok(ptype: PacketType, data: Any) -> bool:
    """The reference ``isPayloadValid`` for decoded data (``data`` is never None here)."""
    if ptype == PacketType.EVENT or ptype == PacketType.BINARY_EVENT:
        return _event_data_ok(data)
    if ptype == PacketType.ACK or ptype == PacketType.BINARY_ACK:
        return isinstance(data, list)
    if ptype == PacketType.CONNECT:
        return isinstance(data, dict)
    if ptype == PacketType.CONNECT_ERROR:
        return isinstance(data, (dict, str))
    return False  # DISCONNECT carries no data


_PAYLOAD_RULES = {
    PacketType.CONNECT: "a JSON object",
    PacketType.DISCONNECT: "no data",
    PacketType.EVENT: "a non-empty JSON array starting with an event name (not reserved) or a number",
    PacketType.ACK: "a JSON array",
    PacketType.CONNECT_ERROR: "a JSON object or string",
    PacketType.BINARY_EVENT: "a non-empty JSON array starting with an event name (not reserved) or a number",
    PacketType.BINARY_ACK: "a JSON array",
}


# --------------------------------------------------------------------------------------------------------
# Encoding


def _contains_binary(data: Any) -> bool:
    """Whether bytes appear anywhere in lists, tuples and dict values (safe on circular data)."""
    stack = [data]
    seen: set[int] = set()
    while stack:
        item = stack.pop()
        if isinstance(item, _BINARY_TYPES):
            return True
        if isinstance(item, (list, tuple, dict)):
            if id(item) in seen:
                continue
            seen.add(id(item))
            stack.extend(item.values() if isinstance(item, dict) else item)
    return False


def _check_header(packet: Packet) -> str:
    """Validate namespace and id; return the ``<nsp>,<id>`` part of the header."""
    nsp = packet.namespace
    if not isinstance(nsp, str) or not nsp.startswith("/") or "," in nsp:
        raise LocalProtocolError(
            f"expected a namespace string starting with '/' and without ',', got {nsp!r}"
        )
    ack_id = packet.id
    if ack_id is not None and (
        not isinstance(ack_id, int) or isinstance(ack_id, bool) or not 0 <= ack_id < 10**MAX_ID_DIGITS
    ):
        raise LocalProtocolError(
            f"expected None or an integer ack id in 0..{10**MAX_ID_DIGITS - 1}, got {ack_id!r}"
        )
    head = "" if nsp == "/" else nsp + ","
    return head if ack_id is None else head + str(ack_id)


def _data_json(data: Any) -> str:
    """The JSON text of packet data that holds no bytes (both encoders take the bytes out first)."""
    try:
        return _dumps(data)
    except (TypeError, ValueError, RecursionError) as exc:
        raise LocalProtocolError(f"expected JSON-serialisable packet data, got: {exc}") from None


def _check_data(ptype: PacketType, data: Any) -> None:
    """The reference ``isPacketValid`` data rules for the sender."""
    if ptype == PacketType.CONNECT:
        ok = data is None or isinstance(data, dict)
        rule = "None or a dict"
    elif ptype == PacketType.DISCONNECT:
        ok = data is None
        rule = "None"
    elif ptype == PacketType.EVENT:
        ok = _event_data_ok(data)
        rule = "a non-empty list whose first element is an event name (not reserved) or a number"
    elif ptype == PacketType.ACK:
        ok = isinstance(data, (list, tuple))
        rule = "a list"
    elif ptype == PacketType.CONNECT_ERROR:
        ok = isinstance(data, (dict, str))
        rule = "a dict or a str"
    else:
        raise LocalProtocolError(
            f"expected CONNECT, DISCONNECT, EVENT, ACK or CONNECT_ERROR for encode_packet, got "
            f"{ptype.name} (binary packets are built by encode_binary_packet)"
        )
    if not ok:
        shown = repr(data)
        raise LocalProtocolError(
            f"expected {rule} as {ptype.name} data, got {shown[:60]}{'...' if len(shown) > 60 else ''}"
        )


def _packet_type(value: Any) -> PacketType:
    if isinstance(value, bool):
        raise LocalProtocolError(f"expected a Socket.IO PacketType, got {value!r}")
    try:
        return PacketType(value)
    except ValueError:
        raise LocalProtocolError(f"expected a Socket.IO PacketType, got {value!r}") from None


def encode_packet(packet: Packet) -> str:
    """Encode a packet without binary data as one text frame.

    Validates like the reference ``isPacketValid``: CONNECT data is None or a dict, DISCONNECT has no
    data, EVENT data is a non-empty list starting with a non-reserved name or a number, ACK data is a
    list, CONNECT_ERROR data is a dict or str.  Binary types and data holding bytes raise
    LocalProtocolError (use :func:`encode_binary_packet`).
    """
    ptype = _packet_type(packet.type)
    header = _check_header(packet)
    data = packet.data
    if _contains_binary(data):
        raise LocalProtocolError(
            f"expected {ptype.name} data without bytes, got data containing bytes "
            "(send binary data with encode_binary_packet, as an EVENT or ACK)"
        )
    _check_data(ptype, data)
    digit = str(int(ptype))
    if data is None:
        return digit + header
    return digit + header + _data_json(data)


def _deconstruct(data: Any, buffers: list[bytes]) -> Any:
    """Replace each bytes value, depth-first in list and key order, by a numbered placeholder."""
    if isinstance(data, _BINARY_TYPES):
        buffers.append(bytes(data))
        return {"_placeholder": True, "num": len(buffers) - 1}
    if isinstance(data, (list, tuple)):
        return [_deconstruct(item, buffers) for item in data]
    if isinstance(data, dict):
        return {key: _deconstruct(value, buffers) for key, value in data.items()}
    return data


def encode_binary_packet(packet: Packet) -> tuple[str, list[bytes]]:
    """Encode an EVENT or ACK (or BINARY_EVENT/BINARY_ACK) whose data may hold bytes.

    Returns the text frame and the binary frames to send after it, in order.  Each bytes value is
    replaced, depth-first, by ``{"_placeholder":true,"num":N}``; the type becomes BINARY_EVENT/BINARY_ACK
    and the header carries ``<n>-``.  ``packet.attachments`` is ignored (it is counted).  When the data
    holds no bytes the result is the plain EVENT/ACK text and no binary frames.
    """
    ptype = _packet_type(packet.type)
    if ptype in (PacketType.EVENT, PacketType.BINARY_EVENT):
        plain, binary = PacketType.EVENT, PacketType.BINARY_EVENT
    elif ptype in (PacketType.ACK, PacketType.BINARY_ACK):
        plain, binary = PacketType.ACK, PacketType.BINARY_ACK
    else:
        raise LocalProtocolError(
            f"expected EVENT, ACK, BINARY_EVENT or BINARY_ACK for encode_binary_packet, got {ptype.name}"
        )
    header = _check_header(packet)
    buffers: list[bytes] = []
    try:
        data = _deconstruct(packet.data, buffers)
    except RecursionError:
        raise LocalProtocolError("expected packet data of reasonable depth, got too deep nesting") from None
    _check_data(plain, data)
    if not buffers:
        return str(int(plain)) + header + _data_json(data), []
    return f"{int(binary)}{len(buffers)}-{header}{_data_json(data)}", buffers


# --------------------------------------------------------------------------------------------------------
# Decoding


def _invalid_payload(ptype: PacketType, text: str) -> RemoteProtocolError:
    return RemoteProtocolError(
        f"invalid payload: expected {_PAYLOAD_RULES[ptype]} for {ptype.name}, got {_show(text)}"
    )


def decode_packet(text: str, *, max_attachments: int = 10) -> Packet:
    """Decode one Socket.IO text packet (the reference ``decodeString``).

    For BINARY_EVENT/BINARY_ACK the packet comes back as is: placeholders still in ``data`` and
    ``attachments`` set; :class:`PacketDecoder` does the reassembly.  An EVENT with no data at all (``2``)
    is accepted, as the reference parser does; it has ``data=None``.
    """
    if not isinstance(text, str):
        raise LocalProtocolError(f"expected str to decode, got {type(text).__name__}")

    # Fast path: ``2[...]``, an EVENT on "/" without ack id - the stream of server events.
    if text[:2] == "2[":
        check_depth(text, "the JSON data of a Socket.IO packet", 1)
        try:
            data, end = _decoder.raw_decode(text, 1)
        except (ValueError, RecursionError):
            raise _invalid_payload(PacketType.EVENT, text) from None
        if (end == len(text) or not text[end:].strip(_JSON_SPACE)) and type(data) is list and data:
            first = data[0]
            first_type = type(first)
            if (first_type is str and first not in RESERVED_EVENTS) or first_type in (int, float):
                return Packet(PacketType.EVENT, "/", data)
        raise _invalid_payload(PacketType.EVENT, text)

    ptype = _TYPE_BY_CHAR.get(text[:1])
    if ptype is None:
        raise RemoteProtocolError(f"unknown packet type: expected a digit 0-6 first, got {_show(text)}")
    size = len(text)
    i = 1

    attachments = 0
    if ptype == PacketType.BINARY_EVENT or ptype == PacketType.BINARY_ACK:
        dash = text.find("-", 1)
        count = text[1:dash] if dash > 0 else ""
        if dash < 0 or not count.isascii() or not count.isdigit():
            raise RemoteProtocolError(
                f"Illegal attachments: expected '<count>-' after type {ptype.value}, got {_show(text)}"
            )
        count = count.lstrip("0")
        if len(count) > 15 or int(count or "0") > max_attachments:
            raise RemoteProtocolError(
                f"too many attachments: expected at most {max_attachments}, got {_show(text)}"
            )
        attachments = int(count or "0")
        if attachments < 1:
            raise RemoteProtocolError(
                f"Illegal attachments: expected a count of at least 1, got {_show(text)}"
            )
        i = dash + 1

    namespace = "/"
    if text.startswith("/", i):
        comma = text.find(",", i)
        if comma < 0:
            namespace, i = text[i:], size
        else:
            namespace, i = text[i:comma], comma + 1

    ack_id = None
    j = i
    limit = min(size, i + MAX_ID_DIGITS + 1)
    while j < limit and text[j] in _DIGITS:
        j += 1
    if j > i:
        if j - i > MAX_ID_DIGITS:
            raise RemoteProtocolError(
                f"expected an ack id of at most {MAX_ID_DIGITS} digits, got more in {_show(text)}"
            )
        ack_id = int(text[i:j])
        i = j

    data = None
    if i < size:
        check_depth(text, "the JSON data of a Socket.IO packet", i)
        try:
            data = _decoder.decode(text[i:])
        except (ValueError, RecursionError):
            raise _invalid_payload(ptype, text) from None
        if not _payload_ok(ptype, data):
            raise _invalid_payload(ptype, text)
    return Packet(ptype, namespace, data, ack_id, attachments)


def _reconstruct(data: Any, buffers: list[bytes]) -> Any:
    """Replace placeholders by their buffers (in place for lists and dicts)."""
    if isinstance(data, dict):
        if data.get("_placeholder") is True:
            num = data.get("num")
            if isinstance(num, float) and num.is_integer():
                num = int(num)
            if not isinstance(num, int) or isinstance(num, bool) or not 0 <= num < len(buffers):
                raise RemoteProtocolError(
                    f"illegal attachments: expected a placeholder num in 0..{len(buffers) - 1}, "
                    f"got {_show(repr(num))}"
                )
            return buffers[num]
        for key, value in data.items():
            data[key] = _reconstruct(value, buffers)
    elif isinstance(data, list):
        for index, value in enumerate(data):
            data[index] = _reconstruct(value, buffers)
    return data


class PacketDecoder:
    """Stateful decoder for the frames of one Engine.IO connection.

    ``feed(frame)`` takes the data of each Engine.IO ``message`` in order: ``str`` for text, ``bytes`` for
    binary.  It returns the next complete packet, or ``None`` while a binary packet still waits for
    attachments.  Reassembled binary packets come back as EVENT/ACK with the bytes in place and
    ``attachments=0``.  After a RemoteProtocolError the pending packet (if any) is dropped; the caller is
    expected to close the connection ("parse error").
    """

    __slots__ = ("_buffers", "_pending", "max_attachments")

    def __init__(self, max_attachments: int = 10) -> None:
        self.max_attachments = max_attachments
        self._pending: Packet | None = None
        self._buffers: list[bytes] = []

    @property
    def awaiting_attachments(self) -> int:
        """How many binary frames the pending packet still needs (0 when nothing is pending)."""
        if self._pending is None:
            return 0
        return self._pending.attachments - len(self._buffers)

    def reset(self) -> None:
        """Drop a pending binary packet and its buffers."""
        self._pending = None
        self._buffers = []

    def feed(self, frame: str | bytes) -> Packet | None:
        """Decode one frame; return a complete packet or ``None`` (waiting for binary frames)."""
        if isinstance(frame, str):
            if self._pending is not None:
                expected = f"binary attachment {len(self._buffers) + 1} of {self._pending.attachments}"
                self.reset()
                raise RemoteProtocolError(
                    f"got plaintext data when reconstructing a packet: expected {expected}, "
                    f"got {_show(frame)}"
                )
            packet = decode_packet(frame, max_attachments=self.max_attachments)
            if packet.type == PacketType.BINARY_EVENT or packet.type == PacketType.BINARY_ACK:
                self._pending = packet
                return None
            return packet
        if isinstance(frame, _BINARY_TYPES):
            pending = self._pending
            if pending is None:
                raise RemoteProtocolError(
                    f"got binary data when not reconstructing a packet: expected a text frame, "
                    f"got {len(frame)} bytes {_show(repr(bytes(frame[:20])))}"
                )
            self._buffers.append(bytes(frame))
            if len(self._buffers) < pending.attachments:
                return None
            buffers = self._buffers
            self.reset()
            try:
                data = _reconstruct(pending.data, buffers)
            except RecursionError:
                raise RemoteProtocolError(
                    "expected packet data of reasonable depth, got too deep nesting"
                ) from None
            plain = PacketType.EVENT if pending.type == PacketType.BINARY_EVENT else PacketType.ACK
            return Packet(plain, pending.namespace, data, pending.id)
        raise LocalProtocolError(f"expected str or bytes to feed, got {type(frame).__name__}")
