"""Tests for the Engine.IO v4 codec (plabs_proto.labs.engineio)."""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plabs_proto.errors import LocalProtocolError, RemoteProtocolError
from plabs_proto.labs import engineio
from plabs_proto.labs.engineio import (
    OpenPacket,
    Packet,
    PacketType,
    decode_packet,
    decode_payload,
    encode_packet,
    encode_payload,
    parse_open_packet,
)

OPEN_JSON = '{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":5000}'

# --------------------------------------------------------------------------------------------------------
# Golden tables: packet <-> wire, both ways

TEXT_PACKETS = [
    (Packet(PacketType.OPEN, '{"sid":"abc","upgrades":[]}'), '0{"sid":"abc","upgrades":[]}'),
    (Packet(PacketType.CLOSE), "1"),
    (Packet(PacketType.PING), "2"),
    (Packet(PacketType.PING, "probe"), "2probe"),
    (Packet(PacketType.PONG), "3"),
    (Packet(PacketType.PONG, "probe"), "3probe"),
    (Packet(PacketType.MESSAGE, "hello"), "4hello"),
    (Packet(PacketType.MESSAGE, "4"), "44"),
    (Packet(PacketType.MESSAGE, '2["x",{"a":1}]'), '42["x",{"a":1}]'),
    (Packet(PacketType.MESSAGE, "€ 😀 \x00"), "4€ 😀 \x00"),
    (Packet(PacketType.MESSAGE), "4"),
    (Packet(PacketType.UPGRADE), "5"),
    (Packet(PacketType.NOOP), "6"),
]

BINARY_PACKETS = [
    # (packet, WebSocket binary frame, polling base64 form)
    (Packet(PacketType.MESSAGE, b"\x01\x02\x03\x04"), b"\x01\x02\x03\x04", "bAQIDBA=="),
    (Packet(PacketType.MESSAGE, b""), b"", "b"),
    (Packet(PacketType.MESSAGE, b"\x04\x01\x02"), b"\x04\x01\x02", "bBAEC"),  # a leading 0x04 is data in v4
    (Packet(PacketType.MESSAGE, b"\xff\xfe"), b"\xff\xfe", "b//4="),
]


@pytest.mark.parametrize(("packet", "wire"), TEXT_PACKETS)
def test_text_packet_encodes(packet: Packet, wire: str) -> None:
    assert encode_packet(packet) == wire
    assert encode_packet(packet, b64=True) == wire


@pytest.mark.parametrize(("packet", "wire"), TEXT_PACKETS)
def test_text_packet_decodes(packet: Packet, wire: str) -> None:
    decoded = decode_packet(wire)
    assert decoded == packet
    assert type(decoded.type) is PacketType


@pytest.mark.parametrize(("packet", "frame", "b64"), BINARY_PACKETS)
def test_binary_packet_encodes(packet: Packet, frame: bytes, b64: str) -> None:
    encoded = encode_packet(packet)
    assert isinstance(encoded, bytes)
    assert encoded == frame
    assert encode_packet(packet, b64=True) == b64


@pytest.mark.parametrize(("packet", "frame", "b64"), BINARY_PACKETS)
def test_binary_packet_decodes(packet: Packet, frame: bytes, b64: str) -> None:
    assert decode_packet(frame) == packet
    assert decode_packet(b64) == packet
    assert decode_packet(bytearray(frame)) == packet  # type: ignore[arg-type]
    assert isinstance(decode_packet(bytearray(frame)).data, bytes)  # type: ignore[arg-type]


def test_empty_text_data_encodes_to_the_bare_digit() -> None:
    assert encode_packet(Packet(PacketType.MESSAGE, "")) == "4"
    assert decode_packet("4") == Packet(PacketType.MESSAGE, None)


def test_positional_construction_and_frozen() -> None:
    packet = Packet(PacketType.MESSAGE, "hi")
    assert packet.type is PacketType.MESSAGE
    assert packet.data == "hi"
    with pytest.raises(AttributeError):
        packet.data = "other"  # type: ignore[misc]


def test_bytearray_and_memoryview_data_encode() -> None:
    assert encode_packet(Packet(PacketType.MESSAGE, bytearray(b"\x01\x02"))) == b"\x01\x02"  # type: ignore[arg-type]
    assert encode_packet(Packet(PacketType.MESSAGE, memoryview(b"\x01\x02")), b64=True) == "bAQI="  # type: ignore[arg-type]


def test_missing_base64_padding_is_tolerated() -> None:
    assert decode_packet("bAQIDBA") == Packet(PacketType.MESSAGE, b"\x01\x02\x03\x04")


@pytest.mark.parametrize(
    ("packet", "message"),
    [
        (Packet(PacketType.PING, b"\x01"), "binary data is only valid for MESSAGE"),
        (Packet(PacketType.OPEN, b""), "binary data is only valid for MESSAGE"),
        (Packet(PacketType.MESSAGE, 5), "expected str, bytes or None"),  # type: ignore[arg-type]
        (Packet(9, "x"), "expected an Engine.IO PacketType, got 9"),  # type: ignore[arg-type]
    ],
)
def test_encode_rejects_misuse(packet: Packet, message: str) -> None:
    with pytest.raises(LocalProtocolError, match=re.escape(message)):
        encode_packet(packet)
    with pytest.raises(LocalProtocolError, match=re.escape(message)):
        encode_packet(packet, b64=True)


# §1.3: a type char outside 0..6 (and '' / bad base64) is rejected; the message shows what arrived.
@pytest.mark.parametrize(
    ("wire", "shown"),
    [
        ("", "''"),
        ("a123", "'a123'"),
        ("7", "'7'"),
        ("x", "'x'"),
        ("9hello", "'9hello'"),
        (" 4hello", "' 4hello'"),
        ("\x1e", "'\\x1e'"),
        ("b!!!!", "'b!!!!'"),
        ("bA", "'bA'"),
        ("bAQIDBA==x", "'bAQIDBA==x'"),
        ("b€€€€", "'b€€€€'"),
        ("bAQ ID", "'bAQ ID'"),
        ("z" * 100, repr("z" * 60) + "... (100 chars)"),
    ],
)
def test_decode_packet_rejects(wire: str, shown: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_packet(wire)
    assert "expected" in str(info.value)
    assert shown in str(info.value)


def test_decode_packet_rejects_other_types_as_caller_error() -> None:
    with pytest.raises(LocalProtocolError):
        decode_packet(42)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------------
# Payloads (v4)

PAYLOADS = [
    ([Packet(PacketType.MESSAGE, "hello"), Packet(PacketType.PING), Packet(PacketType.MESSAGE, "world")],
     "4hello\x1e2\x1e4world"),
    ([Packet(PacketType.MESSAGE, "hello"), Packet(PacketType.MESSAGE, b"\x01\x02\x03\x04")], "4hello\x1ebAQIDBA=="),
    ([Packet(PacketType.OPEN, OPEN_JSON)], "0" + OPEN_JSON),
    ([Packet(PacketType.OPEN, '{"sid":"a"}'), Packet(PacketType.MESSAGE, '0{"sid":"b"}')],
     '0{"sid":"a"}\x1e40{"sid":"b"}'),
    ([Packet(PacketType.NOOP)], "6"),
    ([Packet(PacketType.MESSAGE, '1'), Packet(PacketType.CLOSE)], "41\x1e1"),
    ([Packet(PacketType.MESSAGE, b"")], "b"),
]


@pytest.mark.parametrize(("packets", "body"), PAYLOADS)
def test_payload_encodes(packets: list[Packet], body: str) -> None:
    assert encode_payload(packets) == body
    assert encode_payload(iter(packets)) == body


@pytest.mark.parametrize(("packets", "body"), PAYLOADS)
def test_payload_decodes(packets: list[Packet], body: str) -> None:
    assert decode_payload(body) == packets


def test_encode_payload_rejects_no_packets() -> None:
    with pytest.raises(LocalProtocolError, match="at least one packet"):
        encode_payload([])


def test_encode_payload_rejects_record_separator_in_data() -> None:
    with pytest.raises(LocalProtocolError, match="record separator"):
        encode_payload([Packet(PacketType.MESSAGE, "a\x1eb")])
    # A WebSocket frame may carry it.
    assert encode_packet(Packet(PacketType.MESSAGE, "a\x1eb")) == "4a\x1eb"


# §1.4: empty body, empty segment, trailing separator, and any bad packet reject the whole payload.
@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("", "got ''"),
        ("4hello\x1e", "got a trailing segment (#2 of 2) in '4hello\\x1e'"),
        ("\x1e4hello", "got an empty segment (#1 of 2)"),
        ("4a\x1e\x1e4b", "got an empty segment (#2 of 3)"),
        ("\x1e", "got an empty segment (#1 of 2)"),
        ("{", "bad packet #1 of 1 in payload: expected an Engine.IO packet starting with a type digit 0-6 "
              "or 'b', got '{'"),
        ("{}", "got '{}'"),
        ('["a123", "a456"]', "got '[\"a123\", \"a456\"]'"),
        ("4hello\x1ex", "bad packet #2 of 2 in payload: expected an Engine.IO packet starting with a type "
                        "digit 0-6 or 'b', got 'x'"),
        ("4hello\x1eb!", "bad packet #2 of 2"),
        ("4hello\x1e7", "got '7'"),
        ("))", "got '))'"),
    ],
)
def test_decode_payload_rejects(body: str, message: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_payload(body)
    assert message in str(info.value)


def test_decode_payload_rejects_non_str_as_caller_error() -> None:
    with pytest.raises(LocalProtocolError):
        decode_payload(b"4hello")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------------
# Legacy Engine.IO v3 length-prefixed payloads

LEGACY = [
    (f"96:0{OPEN_JSON}2:40", [Packet(PacketType.OPEN, OPEN_JSON), Packet(PacketType.MESSAGE, "0")]),
    ("6:4hello2:4€", [Packet(PacketType.MESSAGE, "hello"), Packet(PacketType.MESSAGE, "€")]),
    ("3:4😀", [Packet(PacketType.MESSAGE, "😀")]),  # the emoji counts 2 UTF-16 code units
    ("5:4😀😀1:2", [Packet(PacketType.MESSAGE, "😀😀"), Packet(PacketType.PING)]),
    ("10:b4AQIDBA==", [Packet(PacketType.MESSAGE, b"\x01\x02\x03\x04")]),
    ("2:b41:6", [Packet(PacketType.MESSAGE, b""), Packet(PacketType.NOOP)]),
    ("0:", []),  # the v3 empty payload
    ("1:60:1:3", [Packet(PacketType.NOOP), Packet(PacketType.PONG)]),  # an empty entry is skipped
    ("11:4a\x1eb\x1ec\x1ed\x1ee6", [Packet(PacketType.MESSAGE, "a\x1eb\x1ec\x1ed\x1ee6")]),  # no \x1e split
    ("012:4hello world", [Packet(PacketType.MESSAGE, "hello world")]),
]


@pytest.mark.parametrize(("body", "packets"), LEGACY)
def test_legacy_payload_decodes(body: str, packets: list[Packet]) -> None:
    assert decode_payload(body) == packets


# §2 / §3.5: the strict v3 reader rejects these; the v3 parser's own test cases come first.
LEGACY_INVALID = ["1!", "", "))", "1:", "3:99:", "1:aa", "1:a2:b", "2:4😀", "10:b3AQIDBA==", "4:bX!!",
                  "5:4hello", "7:4hello", "2:4a:", "2:4a1", "1:", "99999999999999999:4", "2:b4A"]


@pytest.mark.parametrize("body", LEGACY_INVALID)
def test_strict_legacy_reader_rejects(body: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        engineio._decode_legacy_payload(body)
    assert "expected" in str(info.value)


# The documented rule: a body that is not a valid v3 payload is read as v4 (and may well be valid there).
@pytest.mark.parametrize(
    ("body", "packets"),
    [
        ("1!", [Packet(PacketType.CLOSE, "!")]),
        ("1:", [Packet(PacketType.CLOSE, ":")]),
        ("3:99:", [Packet(PacketType.PONG, ":99:")]),
        ("1:aa", [Packet(PacketType.CLOSE, ":aa")]),
        ("1:a2:b", [Packet(PacketType.CLOSE, ":a2:b")]),
        ("2:4😀", [Packet(PacketType.PING, ":4😀")]),
        ("42:foo", [Packet(PacketType.MESSAGE, "2:foo")]),
        ("6:4hello\x1e2", [Packet(PacketType.NOOP, ":4hello"), Packet(PacketType.PING)]),
    ],
)
def test_invalid_legacy_body_is_read_as_v4(body: str, packets: list[Packet]) -> None:
    assert decode_payload(body) == packets


@pytest.mark.parametrize("body", ["))", "7:4hello", "9:4hello\x1e"])
def test_invalid_legacy_body_invalid_as_v4_too(body: str) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_payload(body)


def _legacy_encode(packets: list[Packet]) -> str:
    """An Engine.IO v3 (engine.io-parser 2.x) text payload encoder, lengths in UTF-16 code units."""
    if not packets:
        return "0:"
    out = []
    for packet in packets:
        if isinstance(packet.data, bytes):
            text = "b4" + base64.b64encode(packet.data).decode("ascii")
        else:
            text = str(int(packet.type)) + (packet.data or "")
        out.append(f"{len(text.encode('utf-16-le', 'surrogatepass')) // 2}:{text}")
    return "".join(out)


# --------------------------------------------------------------------------------------------------------
# The open packet


def test_parse_open_packet_full() -> None:
    assert parse_open_packet(
        '{"sid":"abc","upgrades":["websocket"],"pingInterval":300,"pingTimeout":200,"maxPayload":1e6,"x":1}'
    ) == OpenPacket(sid="abc", upgrades=("websocket",), ping_interval=300, ping_timeout=200, max_payload=1000000)


def test_parse_open_packet_defaults() -> None:
    assert parse_open_packet('{"sid":"abc"}') == OpenPacket(
        sid="abc", upgrades=("websocket",), ping_interval=25000, ping_timeout=20000, max_payload=1000000
    )


def test_parse_open_packet_v3_without_max_payload() -> None:
    assert parse_open_packet(OPEN_JSON) == OpenPacket(
        sid="lv_VI97HAXpY6yYWAAAC", upgrades=("websocket",), ping_interval=25000, ping_timeout=5000,
        max_payload=1000000,
    )


def test_parse_open_packet_websocket_only_session() -> None:
    assert parse_open_packet('{"sid":"s","upgrades":[]}').upgrades == ()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (None, "got none"),
        ("", "got ''"),
        ("{", "got '{'"),
        ('["sid"]', "expected a JSON object"),
        ("{}", "expected a non-empty string 'sid'"),
        ('{"sid":""}', "got '' in"),
        ('{"sid":5}', "got 5 in"),
        ('{"sid":"s","upgrades":"websocket"}', "'upgrades'"),
        ('{"sid":"s","upgrades":[1]}', "got [1]"),
        ('{"sid":"s","pingInterval":"25000"}', "'pingInterval'"),
        ('{"sid":"s","pingInterval":true}', "got True"),
        ('{"sid":"s","pingTimeout":null}', "'pingTimeout'"),
        ('{"sid":"s","pingTimeout":-1}', "got -1"),
        ('{"sid":"s","maxPayload":0}', "'maxPayload'"),
        ('{"sid":"s","maxPayload":1.5}', "got 1.5"),
        ("[" * 100000, "expected the JSON of the Engine.IO open packet nested at most 100 deep"),
        ('{"sid":"s","x":' + "[" * 100000, "nested at most 100 deep"),
        # numbers a client cannot use: beyond a JavaScript timer, beyond a JavaScript integer
        ('{"sid":"s","pingInterval":1e308}', "expected an integer 'pingInterval' in 1..2147483647"),
        ('{"sid":"s","pingTimeout":2147483648}', "got 2147483648"),
        ('{"sid":"s","pingTimeout":1' + "0" * 400 + "}", "'pingTimeout' in 1..2147483647"),
        ('{"sid":"s","maxPayload":9007199254740992}', "'maxPayload' in 1..9007199254740991"),
        # a sid that cannot go back in a request: control characters, lone surrogates, too long
        ('{"sid":"a\\r\\nb"}', "got '\\r' at position 1"),
        ('{"sid":"a\\u0000"}', "got '\\x00' at position 1"),
        ('{"sid":"\\udce9"}', "got '\\udce9' at position 0"),
        ('{"sid":"a\\u2028"}', "printable characters"),
        ('{"sid":"' + "s" * 257 + '"}', "at most 256 characters"),
    ],
)
def test_parse_open_packet_rejects(data: str | None, message: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_open_packet(data)
    assert message in str(info.value)


# --------------------------------------------------------------------------------------------------------
# Properties

text_types = st.sampled_from(list(PacketType))
text_data = st.one_of(st.none(), st.text(min_size=1))
text_packets = st.builds(Packet, text_types, text_data)
binary_packets = st.builds(Packet, st.just(PacketType.MESSAGE), st.binary())
packets = st.one_of(text_packets, binary_packets)
payload_packets = st.one_of(
    st.builds(Packet, text_types, st.one_of(st.none(), st.text(min_size=1).filter(lambda s: "\x1e" not in s))),
    binary_packets,
)
# Text biased towards the characters that matter to the decoders.
wire_text = st.one_of(
    st.text(),
    st.text(alphabet="0123456789b:\x1e€😀AQID=/+x", max_size=30),
)


@settings(max_examples=300, deadline=None)
@given(packets, st.booleans())
def test_packet_round_trip(packet: Packet, b64: bool) -> None:
    assert decode_packet(encode_packet(packet, b64=b64)) == packet


@settings(max_examples=200, deadline=None)
@given(st.lists(payload_packets, min_size=1, max_size=6))
def test_payload_round_trip(packets: list[Packet]) -> None:
    body = encode_payload(packets)
    decoded = decode_payload(body)
    if decoded != packets:
        # The documented ambiguity: a v4 body that is also a complete valid v3 payload reads as v3.
        assert re.match(r"[0-9]+:", body)
        assert decoded == engineio._decode_legacy_payload(body)


@settings(max_examples=200, deadline=None)
@given(st.lists(packets, max_size=6))
def test_legacy_payload_round_trip(packets: list[Packet]) -> None:
    assert decode_payload(_legacy_encode(packets)) == packets


@settings(max_examples=500, deadline=None)
@given(st.one_of(wire_text, st.binary()))
def test_decode_packet_never_raises_anything_else(data: str | bytes) -> None:
    try:
        packet = decode_packet(data)
    except RemoteProtocolError:
        return
    assert isinstance(packet, Packet)
    assert isinstance(packet.type, PacketType)


@settings(max_examples=500, deadline=None)
@given(wire_text)
def test_decode_payload_never_raises_anything_else(body: str) -> None:
    try:
        decoded = decode_payload(body)
    except RemoteProtocolError:
        return
    assert isinstance(decoded, list)
    assert all(isinstance(p, Packet) for p in decoded)


@settings(max_examples=300, deadline=None)
@given(wire_text)
def test_parse_open_packet_never_raises_anything_else(data: str) -> None:
    try:
        parse_open_packet(data)
    except RemoteProtocolError:
        pass


def _reference_legacy(body: str) -> list[Packet]:
    """The v3 reader as first written, one UTF-16 code unit at a time: the rules, slowly."""
    units = body.encode("utf-16-le", "surrogatepass")
    total = len(units) // 2
    out: list[Packet] = []
    pos = 0
    while pos < total:
        start = pos
        while pos < total and units[2 * pos + 1] == 0 and 48 <= units[2 * pos] <= 57:
            pos += 1
        if pos == start or pos - start > 16 or pos >= total or units[2 * pos : 2 * pos + 2] != b":\x00":
            raise RemoteProtocolError("expected a length and ':'")
        length = int(units[2 * start : 2 * pos : 2])
        pos += 1
        end = pos + length
        if end > total:
            raise RemoteProtocolError("expected more code units")
        if length:
            text = units[2 * pos : 2 * end].decode("utf-16-le", "surrogatepass")
            if text[0] == "b":
                if text[1:2] != "4":
                    raise RemoteProtocolError("expected b4")
                out.append(Packet(PacketType.MESSAGE, engineio._b64decode(text[2:], text)))
            else:
                out.append(decode_packet(text))
        pos = end
    return out


legacy_pieces = st.one_of(
    st.text(alphabet="0123456789:b4\x1e", max_size=4),
    st.text(max_size=4),  # any characters, surrogates and characters beyond the BMP included
    st.builds(lambda n: f"{n}:", st.integers(0, 12)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(legacy_pieces, min_size=1, max_size=8))
def test_legacy_reader_agrees_with_the_code_unit_reference(pieces: list[str]) -> None:
    """The fast v3 reader (str slices, surrogate pairs expanded) and the slow one agree on every body."""
    body = "".join(pieces)
    try:
        expected: list[Packet] | None = _reference_legacy(body)
    except RemoteProtocolError:
        expected = None
    try:
        got: list[Packet] | None = engineio._decode_legacy_payload(body) if body else None
    except RemoteProtocolError:
        got = None
    assert got == expected or (not body and got is None)


def test_iter_payload_checks_the_whole_body_before_the_first_packet() -> None:
    with pytest.raises(RemoteProtocolError, match="bad packet #3 of 3"):
        engineio.iter_payload("4a\x1e6\x1ex")
    packets = engineio.iter_payload("6\x1e4a\x1e6")
    assert next(packets) is next(engineio.iter_payload("6"))  # data-less packets are shared
    assert list(packets) == [Packet(PacketType.MESSAGE, "a"), Packet(PacketType.NOOP)]
