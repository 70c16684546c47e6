"""Engine.IO v4 packet and payload codec (sans-IO, no state).

Wire forms (Engine.IO protocol 4):

* A **text packet** is one type digit followed by optional UTF-8 text: ``4hello``, ``2probe``, ``6``.
  Absent data and empty data both encode to the bare digit; decoding the bare digit gives ``data=None``.
* A **binary packet** is always a ``message``.  Over WebSocket it is a binary frame holding the raw bytes
  (no type byte); over HTTP long-polling it is ``b`` followed by base64: ``bAQIDBA==``.
* A **polling payload** joins encoded packets with the record separator ``\\x1e``:
  ``4hello\\x1e2\\x1e4world``.

:func:`decode_payload` also reads the legacy Engine.IO v3 length-prefixed form (``96:0{...}2:40``); see its
docstring for the exact rule.

Every problem with bytes that came from the peer raises :class:`~plabs_proto.errors.RemoteProtocolError`;
misuse by the caller raises :class:`~plabs_proto.errors.LocalProtocolError`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, cast

from .errors import LocalProtocolError, RemoteProtocolError
from .jsondepth import check_depth

__all__ = [
    "OpenPacket",
    "Packet",
    "PacketType",
    "decode_packet",
    "decode_payload",
    "encode_packet",
    "encode_payload",
    "parse_open_packet",
]

SEPARATOR = "\x1e"
"""The record separator that joins packets in a v4 polling payload."""


class PacketType(IntEnum):
    """Engine.IO packet types (the digit that starts a text packet)."""

    OPEN = 0
    CLOSE = 1
    PING = 2
    PONG = 3
    MESSAGE = 4
    UPGRADE = 5
    NOOP = 6


@dataclass(frozen=True, slots=True)
class Packet:
    """One Engine.IO packet.

    ``data`` is text, ``None`` (no data), or bytes; bytes are only valid for ``MESSAGE``
    (checked when the packet is encoded).
    """

    type: PacketType
    data: str | bytes | None = None


@dataclass(frozen=True, slots=True)
class OpenPacket:
    """The parsed JSON of the server's ``open`` packet (times in milliseconds, sizes in bytes)."""

    sid: str
    upgrades: tuple[str, ...]
    ping_interval: int
    ping_timeout: int
    max_payload: int


# Type digit <-> packet type.  A dict keyed by the first character is one hash lookup on the hot path.
_TYPE_BY_CHAR: dict[str, PacketType] = {str(t.value): t for t in PacketType}
_CHAR_BY_TYPE: dict[int, str] = {t: str(t.value) for t in PacketType}
_DIGITS = frozenset("0123456789")
_BINARY_TYPES = (bytes, bytearray, memoryview)


def _show(value: str | bytes) -> str:
    """A short ``repr`` of what arrived, for error messages."""
    if len(value) <= 60:
        return repr(value)
    return f"{value[:60]!r}... ({len(value)} {'chars' if isinstance(value, str) else 'bytes'})"


def _show_value(value: object) -> str:
    """A short ``repr`` of a decoded JSON value, for error messages."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:60]}... ({len(text)} chars)"


def _b64decode(text: str, original: str) -> bytes:
    """Strict base64 (padding may be omitted, as Node's decoder allows)."""
    try:
        raw = text.encode("ascii")
        if len(raw) % 4:
            raw += b"=" * (-len(raw) % 4)
        return base64.b64decode(raw, validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError) as exc:
        raise RemoteProtocolError(
            f"expected base64 after 'b' in an Engine.IO binary packet, got {_show(original)} ({exc})"
        ) from None


def encode_packet(packet: Packet, *, b64: bool = False) -> str | bytes:
    """Encode one packet.

    Text data gives ``"<digit><data>"``.  Binary data (``MESSAGE`` only) gives the raw bytes for a
    WebSocket binary frame, or ``"b" + base64`` when ``b64`` is true (the polling form).
    """
    digit = _CHAR_BY_TYPE.get(packet.type)
    if digit is None or isinstance(packet.type, bool):
        raise LocalProtocolError(f"expected an Engine.IO PacketType, got {packet.type!r}")
    data = packet.data
    if data is None:
        return digit
    if isinstance(data, str):
        return digit + data
    if isinstance(data, _BINARY_TYPES):
        if packet.type != PacketType.MESSAGE:
            raise LocalProtocolError(
                f"expected str or None data for a {PacketType(packet.type).name} packet "
                f"(binary data is only valid for MESSAGE), got {type(data).__name__}"
            )
        if b64:
            return "b" + binascii.b2a_base64(data, newline=False).decode("ascii")
        return bytes(data)
    raise LocalProtocolError(
        f"expected str, bytes or None as Engine.IO packet data, got {type(data).__name__}"
    )


def decode_packet(data: str | bytes) -> Packet:
    """Decode one packet: a text frame/segment (``str``) or a binary frame (``bytes``).

    Bytes are always a binary ``MESSAGE``.  Text is ``b<base64>`` (binary ``MESSAGE``) or a type digit
    ``0``..``6`` followed by optional text data.
    """
    if isinstance(data, str):
        # Hot path: one dict lookup and one slice.
        ptype = _TYPE_BY_CHAR.get(data[:1])
        if ptype is not None:
            return Packet(ptype, data[1:] or None)
        if data[:1] == "b":
            return Packet(PacketType.MESSAGE, _b64decode(data[1:], data))
        if not data:
            raise RemoteProtocolError("expected an Engine.IO packet (type digit 0-6 or 'b'), got ''")
        raise RemoteProtocolError(
            f"expected an Engine.IO packet starting with a type digit 0-6 or 'b', got {_show(data)}"
        )
    if isinstance(data, _BINARY_TYPES):
        return Packet(PacketType.MESSAGE, bytes(data))
    raise LocalProtocolError(f"expected str or bytes to decode, got {type(data).__name__}")


def encode_payload(packets: Iterable[Packet]) -> str:
    """Encode packets as a v4 polling payload: binary as ``b<base64>``, joined with ``\\x1e``.

    Raises LocalProtocolError for no packets at all, or for text data containing ``\\x1e`` (it could not
    be read back).
    """
    parts: list[str] = []
    for packet in packets:
        encoded = cast(str, encode_packet(packet, b64=True))  # b64=True always gives text
        if SEPARATOR in encoded:
            raise LocalProtocolError(
                f"expected packet data without the record separator '\\x1e' in a polling payload, "
                f"got {_show(encoded)}"
            )
        parts.append(encoded)
    if not parts:
        raise LocalProtocolError("expected at least one packet in a polling payload, got none")
    return SEPARATOR.join(parts)


def decode_payload(body: str) -> list[Packet]:
    """Decode a polling response body into packets.

    Rule: if the body starts with ``<digits>:`` **and** the whole body parses exactly as a valid Engine.IO
    v3 length-prefixed payload (``<len>:<packet>`` repeated, ``len`` in UTF-16 code units, binary as
    ``b4<base64>``), it is read that way; ``0:`` (the v3 empty payload) gives ``[]``.  Otherwise the body
    is read as v4: split on ``\\x1e``, every segment a packet.  In v4 an empty body, an empty segment and
    a trailing separator are errors, and one bad packet rejects the whole payload.

    The rule is unambiguous in practice: a v4 body that happens to be a complete valid v3 payload (for
    example ``2:42``, "ping with data ``:42``") would need a ping/close/... packet whose data starts with
    ``:``, which no server sends.
    """
    if not isinstance(body, str):
        raise LocalProtocolError(f"expected the payload as str, got {type(body).__name__}")
    if not body:
        raise RemoteProtocolError("expected an Engine.IO payload of at least one packet, got ''")
    if body[0] in _DIGITS:
        k = 1
        limit = min(len(body), 18)
        while k < limit and body[k] in _DIGITS:
            k += 1
        if k < len(body) and body[k] == ":":
            try:
                return _decode_legacy_payload(body)
            except RemoteProtocolError:
                pass  # not a valid v3 payload: read it as v4
    segments = body.split(SEPARATOR)
    packets: list[Packet] = []
    count = len(segments)
    for index, segment in enumerate(segments):
        if not segment:
            where = "a trailing" if index == count - 1 else "an empty"
            raise RemoteProtocolError(
                f"expected a packet between record separators, got {where} segment "
                f"(#{index + 1} of {count}) in {_show(body)}"
            )
        try:
            packets.append(decode_packet(segment))
        except RemoteProtocolError as exc:
            raise RemoteProtocolError(f"bad packet #{index + 1} of {count} in payload: {exc}") from None
    return packets


def _decode_legacy_payload(body: str) -> list[Packet]:
    """Strictly decode an Engine.IO v3 length-prefixed text payload (raises RemoteProtocolError)."""
    if not body:
        raise RemoteProtocolError("expected an Engine.IO v3 payload, got ''")
    # Lengths count UTF-16 code units, so work on the UTF-16 form: unit k is units[2k:2k+2].
    units = body.encode("utf-16-le", "surrogatepass")
    total = len(units) // 2
    packets: list[Packet] = []
    pos = 0
    while pos < total:
        start = pos
        while pos < total and units[2 * pos + 1] == 0 and 48 <= units[2 * pos] <= 57:
            pos += 1
        if pos == start or pos - start > 16:
            raise RemoteProtocolError(
                f"expected a decimal length at code unit {start} of a v3 payload, got {_show(body)}"
            )
        if pos >= total or units[2 * pos] != 58 or units[2 * pos + 1] != 0:
            raise RemoteProtocolError(
                f"expected ':' after the length at code unit {pos} of a v3 payload, got {_show(body)}"
            )
        length = int(units[2 * start : 2 * pos : 2])
        pos += 1
        end = pos + length
        if end > total:
            raise RemoteProtocolError(
                f"expected {length} code units after the length in a v3 payload, "
                f"got {total - pos} in {_show(body)}"
            )
        if length:
            text = units[2 * pos : 2 * end].decode("utf-16-le", "surrogatepass")
            if text[0] == "b":
                if text[1:2] != "4":
                    raise RemoteProtocolError(
                        f"expected 'b4<base64>' for a v3 binary packet, got {_show(text)}"
                    )
                packets.append(Packet(PacketType.MESSAGE, _b64decode(text[2:], text)))
            else:
                packets.append(decode_packet(text))
        pos = end
    return packets


_OPEN_DEFAULTS: dict[str, int] = {"pingInterval": 25000, "pingTimeout": 20000, "maxPayload": 1000000}

MAX_PING_MS = 2**31 - 1
"""Largest ``pingInterval``/``pingTimeout`` accepted (ms, about 24.8 days): the longest delay a
JavaScript timer takes (a browser client fires a longer one at once)."""

MAX_PAYLOAD = 2**53 - 1
"""Largest ``maxPayload`` accepted: the largest integer a JavaScript number holds exactly."""

MAX_SID_LENGTH = 256
"""Longest ``sid`` accepted (Engine.IO servers make 20-character ones)."""

_OPEN_LIMITS: dict[str, int] = {"pingInterval": MAX_PING_MS, "pingTimeout": MAX_PING_MS, "maxPayload": MAX_PAYLOAD}


def _open_int(fields: dict[str, Any], key: str, data: str) -> int:
    value = fields.get(key, _OPEN_DEFAULTS[key])
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    limit = _OPEN_LIMITS[key]
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= limit:
        raise RemoteProtocolError(
            f"expected an integer {key!r} in 1..{limit} in the Engine.IO open packet, "
            f"got {_show_value(value)}"
        )
    return value


def _check_sid(sid: object, data: str) -> str:
    """The open packet's ``sid`` if the client can send it back (printable, not too long)."""
    if not isinstance(sid, str) or not sid:
        raise RemoteProtocolError(
            f"expected a non-empty string 'sid' in the Engine.IO open packet, got {sid!r:.60} in {_show(data)}"
        )
    if len(sid) > MAX_SID_LENGTH:
        raise RemoteProtocolError(
            f"expected a 'sid' of at most {MAX_SID_LENGTH} characters in the Engine.IO open packet, "
            f"got one of {len(sid)}: {_show(sid)}"
        )
    if not sid.isprintable():
        bad = next(char for char in sid if not char.isprintable())
        raise RemoteProtocolError(
            "expected a 'sid' of printable characters in the Engine.IO open packet (it goes back in "
            f"every request), got {bad!r} at position {sid.index(bad)} of {_show(sid)}"
        )
    return sid


def parse_open_packet(data: str | None) -> OpenPacket:
    """Parse the JSON of an ``open`` packet (``0{"sid":...}`` without the ``0``).

    ``sid`` is required: a non-empty string of at most :data:`MAX_SID_LENGTH` printable characters
    (no control characters, no lone surrogates).  Missing optional fields take the Engine.IO defaults
    (pingInterval 25000, pingTimeout 20000, maxPayload 1000000, upgrades ``("websocket",)``).  Integral
    floats are accepted for the numbers; the ping times are bounded by :data:`MAX_PING_MS` and maxPayload
    by :data:`MAX_PAYLOAD`.  Anything else raises RemoteProtocolError.
    """
    if data is None:
        raise RemoteProtocolError("expected JSON data in the Engine.IO open packet, got none")
    if not isinstance(data, str):
        raise RemoteProtocolError(
            f"expected JSON text in the Engine.IO open packet, got {type(data).__name__}"
        )
    check_depth(data, "the JSON of the Engine.IO open packet")
    try:
        fields = json.loads(data)
    except (ValueError, RecursionError):
        raise RemoteProtocolError(
            f"expected a JSON object in the Engine.IO open packet, got {_show(data)}"
        ) from None
    if not isinstance(fields, dict):
        raise RemoteProtocolError(f"expected a JSON object in the Engine.IO open packet, got {_show(data)}")
    sid = _check_sid(fields.get("sid"), data)
    upgrades = fields.get("upgrades", ["websocket"])
    if not isinstance(upgrades, list) or not all(isinstance(u, str) for u in upgrades):
        raise RemoteProtocolError(
            f"expected a list of strings 'upgrades' in the Engine.IO open packet, got {upgrades!r:.60}"
        )
    return OpenPacket(
        sid=sid,
        upgrades=tuple(upgrades),
        ping_interval=_open_int(fields, "pingInterval", data),
        ping_timeout=_open_int(fields, "pingTimeout", data),
        max_payload=_open_int(fields, "maxPayload", data),
    )
