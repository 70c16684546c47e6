"""Tests for the Socket.IO v5 codec (plabs_proto.labs.socketio)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import socketio.packet as reference_packet  # python-socketio, the emulator's server side
from hypothesis import given, settings
from hypothesis import strategies as st
from peer import large_progress_event

from plabs_proto.errors import LocalProtocolError, RemoteProtocolError
from plabs_proto.labs import engineio
from plabs_proto.labs.socketio import (
    RESERVED_EVENTS,
    Packet,
    PacketDecoder,
    PacketType,
    decode_packet,
    encode_binary_packet,
    encode_packet,
)

PH0 = {"_placeholder": True, "num": 0}
PH1 = {"_placeholder": True, "num": 1}

# --------------------------------------------------------------------------------------------------------
# Golden tables: packet <-> wire (the Socket.IO text inside an Engine.IO message), both ways

GOLDEN = [
    (Packet(PacketType.CONNECT), "0"),
    (Packet(PacketType.CONNECT, data={"token": "123"}), '0{"token":"123"}'),
    (Packet(PacketType.CONNECT, "/custom"), "0/custom,"),
    (Packet(PacketType.CONNECT, "/custom", {"token": "abc"}), '0/custom,{"token":"abc"}'),
    (Packet(PacketType.CONNECT, data={"sid": "x"}), '0{"sid":"x"}'),
    (Packet(PacketType.CONNECT, "/ns", {"sid": "x", "pid": "y"}), '0/ns,{"sid":"x","pid":"y"}'),
    (Packet(PacketType.DISCONNECT), "1"),
    (Packet(PacketType.DISCONNECT, "/admin"), "1/admin,"),
    (Packet(PacketType.EVENT, data=["hello", 1]), '2["hello",1]'),
    (Packet(PacketType.EVENT, data=["foo"], id=12), '212["foo"]'),
    (Packet(PacketType.EVENT, "/admin", ["bar"], 13), '2/admin,13["bar"]'),
    (Packet(PacketType.EVENT, data=["foo"], id=0), '20["foo"]'),
    (Packet(PacketType.EVENT, data=[1, "x"]), '2[1,"x"]'),
    (Packet(PacketType.EVENT, data=[2.5]), "2[2.5]"),
    (Packet(PacketType.EVENT, data=["é😀", {"a": [1, None, True, False], "z": {}}]),
     '2["é😀",{"a":[1,null,true,false],"z":{}}]'),
    (Packet(PacketType.EVENT, data=["a\x1eb\n\"\\"]), '2["a\\u001eb\\n\\"\\\\"]'),
    (Packet(PacketType.EVENT, data=["perplexity_labs", {"messages": [{"role": "user", "content": "hi"}]}]),
     '2["perplexity_labs",{"messages":[{"role":"user","content":"hi"}]}]'),
    (Packet(PacketType.EVENT, data=["x"], id=999999999999999), '2999999999999999["x"]'),
    (Packet(PacketType.ACK, data=["bar"], id=13), '313["bar"]'),
    (Packet(PacketType.ACK, "/admin", [], 13), "3/admin,13[]"),
    (Packet(PacketType.CONNECT_ERROR, data={"message": "Not authorized"}), '4{"message":"Not authorized"}'),
    (Packet(PacketType.CONNECT_ERROR, "/random", {"message": "Invalid namespace"}),
     '4/random,{"message":"Invalid namespace"}'),
    (Packet(PacketType.CONNECT_ERROR, data={"message": "m", "data": {"x": 1}}),
     '4{"message":"m","data":{"x":1}}'),
    (Packet(PacketType.CONNECT_ERROR, data="legacy"), '4"legacy"'),
]


@pytest.mark.parametrize(("packet", "wire"), GOLDEN)
def test_encodes(packet: Packet, wire: str) -> None:
    assert encode_packet(packet) == wire


@pytest.mark.parametrize(("packet", "wire"), GOLDEN)
def test_decodes(packet: Packet, wire: str) -> None:
    decoded = decode_packet(wire)
    assert decoded == packet
    assert type(decoded.type) is PacketType
    assert PacketDecoder().feed(wire) == packet


@pytest.mark.parametrize(
    ("wire", "packet"),
    [
        ("0/random", Packet(PacketType.CONNECT, "/random")),  # the namespace may run to the end
        ("1/custom", Packet(PacketType.DISCONNECT, "/custom")),
        ("2", Packet(PacketType.EVENT)),  # accepted by the reference parser: no arguments
        ("2/admin13", Packet(PacketType.EVENT, "/admin13")),
        ('2["a"] \n', Packet(PacketType.EVENT, data=["a"])),  # trailing JSON whitespace
        ('2 ["a"]', Packet(PacketType.EVENT, data=["a"])),  # leading JSON whitespace
        ("2[1e400]", Packet(PacketType.EVENT, data=[float("inf")])),
        ('2["\\ud800"]', Packet(PacketType.EVENT, data=["\ud800"])),
        ('2["x",{"_placeholder":true,"num":0}]', Packet(PacketType.EVENT, data=["x", PH0])),  # left alone
        ('3007[]', Packet(PacketType.ACK, data=[], id=7)),
        ('3[]', Packet(PacketType.ACK, data=[])),
        ('51-["up",{"_placeholder":true,"num":0}]', Packet(PacketType.BINARY_EVENT, data=["up", PH0], attachments=1)),
        ('52-/admin,["baz",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]',
         Packet(PacketType.BINARY_EVENT, "/admin", ["baz", PH0, PH1], attachments=2)),
        ('61-7[{"_placeholder":true,"num":0}]', Packet(PacketType.BINARY_ACK, data=[PH0], id=7, attachments=1)),
        ("510-/a,", Packet(PacketType.BINARY_EVENT, "/a", attachments=10)),
        ("501-[1]", Packet(PacketType.BINARY_EVENT, data=[1], attachments=1)),
    ],
)
def test_decodes_reference_forms(wire: str, packet: Packet) -> None:
    assert decode_packet(wire) == packet


@pytest.mark.parametrize(
    ("eio_wire", "packet"),
    [
        ('40{"sid":"x"}', Packet(PacketType.CONNECT, data={"sid": "x"})),
        ('44{"message":"Not authorized"}', Packet(PacketType.CONNECT_ERROR, data={"message": "Not authorized"})),
        ('42["hello",1]', Packet(PacketType.EVENT, data=["hello", 1])),
        ("41", Packet(PacketType.DISCONNECT)),
        ("40/custom,", Packet(PacketType.CONNECT, "/custom")),
    ],
)
def test_decodes_inside_engineio_messages(eio_wire: str, packet: Packet) -> None:
    message = engineio.decode_packet(eio_wire)
    assert message.type is engineio.PacketType.MESSAGE
    assert isinstance(message.data, str)
    assert decode_packet(message.data) == packet
    assert engineio.encode_packet(engineio.Packet(engineio.PacketType.MESSAGE, encode_packet(packet))) == eio_wire


def test_lone_surrogates_are_escaped_like_json_stringify() -> None:
    assert encode_packet(Packet(PacketType.EVENT, data=["é\ud800"])) == '2["\\u00e9\\ud800"]'
    assert decode_packet('2["\\u00e9\\ud800"]').data == ["é\ud800"]


def test_tuples_encode_as_arrays() -> None:
    assert encode_packet(Packet(PacketType.EVENT, data=("a", (1, 2)))) == '2["a",[1,2]]'
    assert encode_packet(Packet(PacketType.ACK, data=(), id=1)) == "31[]"


# --------------------------------------------------------------------------------------------------------
# Binary packets

BINARY_GOLDEN = [
    (Packet(PacketType.EVENT, "/admin", ["baz", b"\x01\x02", b"\x03\x04"]),
     '52-/admin,["baz",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]', [b"\x01\x02", b"\x03\x04"]),
    (Packet(PacketType.EVENT, data=["baz", b"\x01\x02\x03\x04"]),
     '51-["baz",{"_placeholder":true,"num":0}]', [b"\x01\x02\x03\x04"]),
    (Packet(PacketType.ACK, data=[b"\x01"], id=7), '61-7[{"_placeholder":true,"num":0}]', [b"\x01"]),
    (Packet(PacketType.EVENT, data=["x", {"a": b"1", "b": [b"2", {"c": b"3"}]}, b"4"], id=3),
     '54-3["x",{"a":{"_placeholder":true,"num":0},"b":[{"_placeholder":true,"num":1},'
     '{"c":{"_placeholder":true,"num":2}}]},{"_placeholder":true,"num":3}]', [b"1", b"2", b"3", b"4"]),
    (Packet(PacketType.EVENT, data=["empty", b""]), '51-["empty",{"_placeholder":true,"num":0}]', [b""]),
]


@pytest.mark.parametrize(("packet", "text", "buffers"), BINARY_GOLDEN)
def test_binary_encodes(packet: Packet, text: str, buffers: list[bytes]) -> None:
    assert encode_binary_packet(packet) == (text, buffers)


@pytest.mark.parametrize(("packet", "text", "buffers"), BINARY_GOLDEN)
def test_binary_reassembles(packet: Packet, text: str, buffers: list[bytes]) -> None:
    decoder = PacketDecoder()
    assert decoder.feed(text) is None
    for index, buffer in enumerate(buffers):
        assert decoder.awaiting_attachments == len(buffers) - index
        result = decoder.feed(buffer)
        assert (result is None) == (index < len(buffers) - 1)
    assert result == packet
    assert decoder.awaiting_attachments == 0


def test_binary_packet_type_and_counted_attachments() -> None:
    packet = Packet(PacketType.BINARY_EVENT, data=["a", bytearray(b"\x09")], attachments=5)
    assert encode_binary_packet(packet) == ('51-["a",{"_placeholder":true,"num":0}]', [b"\x09"])
    ack = Packet(PacketType.BINARY_ACK, "/n", [memoryview(b"\x08")], 1)
    assert encode_binary_packet(ack) == ('61-/n,1[{"_placeholder":true,"num":0}]', [b"\x08"])


def test_binary_encoder_without_bytes_gives_plain_packet() -> None:
    assert encode_binary_packet(Packet(PacketType.EVENT, data=["x", 1])) == ('2["x",1]', [])
    assert encode_binary_packet(Packet(PacketType.BINARY_ACK, data=[], id=2)) == ("32[]", [])


def test_binary_over_websocket_and_polling() -> None:
    text, buffers = encode_binary_packet(Packet(PacketType.EVENT, data=["baz", b"\x01\x02\x03\x04"]))
    frames = [engineio.encode_packet(engineio.Packet(engineio.PacketType.MESSAGE, text))]
    frames += [engineio.encode_packet(engineio.Packet(engineio.PacketType.MESSAGE, b)) for b in buffers]
    assert frames == ['451-["baz",{"_placeholder":true,"num":0}]', b"\x01\x02\x03\x04"]
    body = engineio.encode_payload(
        [engineio.Packet(engineio.PacketType.MESSAGE, text)]
        + [engineio.Packet(engineio.PacketType.MESSAGE, b) for b in buffers]
    )
    assert body == '451-["baz",{"_placeholder":true,"num":0}]\x1ebAQIDBA=='
    decoder = PacketDecoder()
    results = [decoder.feed(p.data) for p in engineio.decode_payload(body)]  # type: ignore[arg-type]
    assert results == [None, Packet(PacketType.EVENT, data=["baz", b"\x01\x02\x03\x04"])]


def test_decoder_reassembles_ack_and_integral_float_num() -> None:
    decoder = PacketDecoder()
    assert decoder.feed('61-/n,4[{"x":{"_placeholder":true,"num":0.0}}]') is None
    assert decoder.feed(b"\xff") == Packet(PacketType.ACK, "/n", [{"x": b"\xff"}], 4)


def test_decoder_unused_attachment_is_ignored() -> None:
    decoder = PacketDecoder()
    assert decoder.feed('52-["a",{"_placeholder":true,"num":1}]') is None
    assert decoder.feed(b"zero") is None
    assert decoder.feed(b"one") == Packet(PacketType.EVENT, data=["a", b"one"])


def test_decoder_reset_drops_pending_packet() -> None:
    decoder = PacketDecoder()
    assert decoder.feed('51-["a",{"_placeholder":true,"num":0}]') is None
    decoder.reset()
    assert decoder.awaiting_attachments == 0
    assert decoder.feed('2["b"]') == Packet(PacketType.EVENT, data=["b"])
    with pytest.raises(RemoteProtocolError, match="got binary data when not reconstructing a packet"):
        decoder.feed(b"\x01")


def test_decoder_max_attachments() -> None:
    assert PacketDecoder(max_attachments=2).feed('52-["a"]') is None
    with pytest.raises(RemoteProtocolError, match="too many attachments: expected at most 2"):
        PacketDecoder(max_attachments=2).feed('53-["a"]')
    with pytest.raises(RemoteProtocolError, match="too many attachments: expected at most 10"):
        decode_packet('511-["a"]')
    assert decode_packet('511-["a"]', max_attachments=11).attachments == 11


# §3.3 step 7 / §3.5: out-of-sequence frames and bad placeholders.
def test_decoder_text_while_waiting() -> None:
    decoder = PacketDecoder()
    decoder.feed('52-["a",{"_placeholder":true,"num":0}]')
    decoder.feed(b"\x01")
    with pytest.raises(RemoteProtocolError) as info:
        decoder.feed('2["b"]')
    assert str(info.value) == (
        "got plaintext data when reconstructing a packet: expected binary attachment 2 of 2, got '2[\"b\"]'"
    )
    # the failed packet is dropped; the decoder is idle again
    assert decoder.awaiting_attachments == 0
    assert decoder.feed('2["c"]') == Packet(PacketType.EVENT, data=["c"])


def test_decoder_binary_while_idle() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        PacketDecoder().feed(b"\x01\x02")
    assert str(info.value) == (
        "got binary data when not reconstructing a packet: expected a text frame, got 2 bytes \"b'\\\\x01\\\\x02'\""
    )


@pytest.mark.parametrize(
    ("placeholder", "shown"),
    [
        ('{"_placeholder":true,"num":1}', "got '1'"),
        ('{"_placeholder":true,"num":-1}', "got '-1'"),
        ('{"_placeholder":true,"num":"0"}', "got \"'0'\""),
        ('{"_placeholder":true,"num":true}', "got 'True'"),
        ('{"_placeholder":true,"num":0.5}', "got '0.5'"),
        ('{"_placeholder":true}', "got 'None'"),
        ('{"_placeholder":true,"num":null}', "got 'None'"),
    ],
)
def test_decoder_rejects_bad_placeholder(placeholder: str, shown: str) -> None:
    decoder = PacketDecoder()
    assert decoder.feed(f'51-["a",{placeholder}]') is None
    with pytest.raises(RemoteProtocolError) as info:
        decoder.feed(b"\x01")
    assert "illegal attachments: expected a placeholder num in 0..0" in str(info.value)
    assert shown in str(info.value)
    assert decoder.awaiting_attachments == 0


def test_placeholder_flag_must_be_true() -> None:
    decoder = PacketDecoder()
    decoder.feed('51-["a",{"_placeholder":1,"num":9}]')
    assert decoder.feed(b"x") == Packet(PacketType.EVENT, data=["a", {"_placeholder": 1, "num": 9}])


def test_feed_rejects_other_types_as_caller_error() -> None:
    with pytest.raises(LocalProtocolError):
        PacketDecoder().feed(5)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        decode_packet(b"2[1]")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------------
# §3.3 / §3.5 rejections; each message names what arrived.

REJECTIONS = [
    # unknown type
    ("", "unknown packet type: expected a digit 0-6 first, got ''"),
    ("999", "unknown packet type: expected a digit 0-6 first, got '999'"),
    ("abc", "unknown packet type: expected a digit 0-6 first, got 'abc'"),
    ("7[1]", "unknown packet type"),
    (" 2[1]", "unknown packet type"),
    # attachments
    ("5", "Illegal attachments: expected '<count>-' after type 5, got '5'"),
    ("51", "Illegal attachments: expected '<count>-' after type 5, got '51'"),
    ("5a-", "Illegal attachments: expected '<count>-' after type 5, got '5a-'"),
    ("51.23-", "Illegal attachments: expected '<count>-' after type 5, got '51.23-'"),
    ("5-[1]", "Illegal attachments: expected '<count>-' after type 5, got '5-[1]'"),
    ("6 1-[1]", "Illegal attachments: expected '<count>-' after type 6"),
    ("5\u0661-[1]", "Illegal attachments"),  # a non-ASCII digit
    ("50-[1]", "Illegal attachments: expected a count of at least 1, got '50-[1]'"),
    ("511-[1]", "too many attachments: expected at most 10, got '511-[1]'"),
    ("6" + "9" * 5000 + "-[]", "too many attachments: expected at most 10, got '6999"),
    # invalid JSON
    ('442["some","data"', "invalid payload: expected a JSON object or string for CONNECT_ERROR, "
                          "got '442[\"some\",\"data\"'"),
    ("2[NaN]", "invalid payload"),
    ("2[Infinity]", "invalid payload"),
    ("2[-Infinity]", "invalid payload"),
    ('2["a"]x', "invalid payload"),
    ('2["a"]]', "invalid payload"),
    ("2[" * 50000, "expected the JSON data of a Socket.IO packet nested at most 100 deep"),
    ("3" + "[" * 50000, "nested at most 100 deep"),
    ("0" + '{"a":' * 100_000, "nested at most 100 deep"),
    ("2" + '["a",' * 101 + "1" + "]" * 101, "nested at most 100 deep"),
    ('2/x,["a",' + '{"b":' * 101 + "1" + "}" * 101 + "]", "nested at most 100 deep"),
    ('2["a\x01"]', "invalid payload"),
    # payload of the wrong kind
    ("2{}", "invalid payload: expected a non-empty JSON array starting with an event name (not reserved) "
            "or a number for EVENT, got '2{}'"),
    ("2abc[1]", "invalid payload"),
    ("2[]", "invalid payload"),
    ('2[["a"]]', "invalid payload"),
    ("2[null]", "invalid payload"),
    ("2[true]", "invalid payload"),
    ("2[{}]", "invalid payload"),
    ('2"x"', "invalid payload"),
    ("0[]", "invalid payload: expected a JSON object for CONNECT, got '0[]'"),
    ('0"x"', "invalid payload"),
    ("0null", "invalid payload"),
    ("1/admin,{}", "invalid payload: expected no data for DISCONNECT, got '1/admin,{}'"),
    ("1null", "invalid payload"),
    ("3{}", "invalid payload: expected a JSON array for ACK, got '3{}'"),
    ('3"x"', "invalid payload"),
    ("4[]", "invalid payload: expected a JSON object or string for CONNECT_ERROR"),
    ("4null", "invalid payload"),
    ('51-{"a":1}', "invalid payload: expected a non-empty JSON array"),
    ('61-{"a":1}', "invalid payload: expected a JSON array for BINARY_ACK"),
    # reserved event names
    *[(f'2["{name}"]', "invalid payload") for name in sorted(RESERVED_EVENTS)],
    ('2/admin,1["disconnect",1]', "invalid payload"),
    ('51-["connect",{"_placeholder":true,"num":0}]', "invalid payload"),
    # ack ids over 15 digits
    ('21234567890123456["x"]', "expected an ack id of at most 15 digits, got more in '21234567890123456"),
    ("3" + "1" * 5000 + "[]", "expected an ack id of at most 15 digits, got more in '3111"),
]


@pytest.mark.parametrize(("wire", "message"), REJECTIONS)
def test_decode_rejects(wire: str, message: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_packet(wire)
    assert message in str(info.value)
    shown = repr(wire[:60])[:-1]  # the excerpt of what arrived is in the message
    assert shown in str(info.value)
    with pytest.raises(RemoteProtocolError):
        PacketDecoder().feed(wire)


def test_long_input_is_shown_as_an_excerpt() -> None:
    wire = '2["connect",' + "1," * 100 + "1]"
    with pytest.raises(RemoteProtocolError) as info:
        decode_packet(wire)
    assert str(info.value).endswith(f"got {wire[:60]!r}... ({len(wire)} chars)")


# --------------------------------------------------------------------------------------------------------
# Encoder misuse -> LocalProtocolError


@pytest.mark.parametrize(
    ("packet", "message"),
    [
        (Packet(PacketType.CONNECT, data=["x"]), "expected None or a dict as CONNECT data, got ['x']"),
        (Packet(PacketType.CONNECT, data="x"), "as CONNECT data"),
        (Packet(PacketType.DISCONNECT, data={}), "expected None as DISCONNECT data, got {}"),
        (Packet(PacketType.EVENT), "as EVENT data, got None"),
        (Packet(PacketType.EVENT, data=[]), "as EVENT data, got []"),
        (Packet(PacketType.EVENT, data={"a": 1}), "as EVENT data"),
        (Packet(PacketType.EVENT, data=["connect"]), "as EVENT data, got ['connect']"),
        (Packet(PacketType.EVENT, data=[None]), "as EVENT data"),
        (Packet(PacketType.EVENT, data=[True]), "as EVENT data"),
        (Packet(PacketType.EVENT, data="x"), "as EVENT data"),
        (Packet(PacketType.ACK, data={}), "expected a list as ACK data, got {}"),
        (Packet(PacketType.ACK), "expected a list as ACK data, got None"),
        (Packet(PacketType.CONNECT_ERROR, data=5), "expected a dict or a str as CONNECT_ERROR data, got 5"),
        (Packet(PacketType.CONNECT_ERROR), "as CONNECT_ERROR data"),
        (Packet(PacketType.BINARY_EVENT, data=["x"], attachments=1), "binary packets are built by"),
        (Packet(PacketType.BINARY_ACK, data=[]), "binary packets are built by"),
        (Packet(7), "expected a Socket.IO PacketType, got 7"),  # type: ignore[arg-type]
        (Packet(True, data={}), "expected a Socket.IO PacketType, got True"),  # type: ignore[arg-type]
        (Packet(PacketType.EVENT, "admin", ["x"]), "starting with '/' and without ',', got 'admin'"),
        (Packet(PacketType.EVENT, "/a,b", ["x"]), "got '/a,b'"),
        (Packet(PacketType.EVENT, "", ["x"]), "got ''"),
        (Packet(PacketType.EVENT, 5, ["x"]), "got 5"),  # type: ignore[arg-type]
        (Packet(PacketType.EVENT, data=["x"], id=-1), "ack id in 0..999999999999999, got -1"),
        (Packet(PacketType.EVENT, data=["x"], id=10**15), "got 1000000000000000"),
        (Packet(PacketType.EVENT, data=["x"], id=1.0), "got 1.0"),  # type: ignore[arg-type]
        (Packet(PacketType.EVENT, data=["x"], id=True), "got True"),
        (Packet(PacketType.EVENT, data=["x", b"\x01"]), "send binary data with encode_binary_packet"),
        (Packet(PacketType.ACK, data=[{"a": [bytearray(b"")]}]), "send binary data with encode_binary_packet"),
        (Packet(PacketType.CONNECT, data={"a": b""}), "got data containing bytes"),
        (Packet(PacketType.EVENT, data=["x", float("nan")]), "expected JSON-serialisable packet data"),
        (Packet(PacketType.EVENT, data=["x", float("inf")]), "expected JSON-serialisable packet data"),
        (Packet(PacketType.EVENT, data=["x", object()]), "expected JSON-serialisable packet data"),
        (Packet(PacketType.EVENT, data=["x", {(1, 2): 3}]), "expected JSON-serialisable packet data"),
    ],
)
def test_encode_rejects(packet: Packet, message: str) -> None:
    with pytest.raises(LocalProtocolError) as info:
        encode_packet(packet)
    assert message in str(info.value)


def test_encode_rejects_circular_data() -> None:
    data: list[Any] = ["x"]
    data.append(data)
    with pytest.raises(LocalProtocolError, match="JSON-serialisable"):
        encode_packet(Packet(PacketType.EVENT, data=data))


@pytest.mark.parametrize(
    ("packet", "message"),
    [
        (Packet(PacketType.CONNECT, data={"a": b""}), "expected EVENT, ACK, BINARY_EVENT or BINARY_ACK"),
        (Packet(PacketType.CONNECT_ERROR, data="x"), "got CONNECT_ERROR"),
        (Packet(PacketType.EVENT, data=[b"\x01", "x"]), "as EVENT data, got [{'_placeholder': True"),
        (Packet(PacketType.EVENT, data=["connect", b"\x01"]), "as EVENT data"),
        (Packet(PacketType.ACK, data={"a": b"\x01"}), "expected a list as ACK data"),
        (Packet(PacketType.EVENT, "x", ["a", b""]), "got 'x'"),
        (Packet(PacketType.ACK, data=[b""], id=-5), "got -5"),
        (Packet(PacketType.EVENT, data=["a", b"", object()]), "expected JSON-serialisable packet data"),
    ],
)
def test_encode_binary_rejects(packet: Packet, message: str) -> None:
    with pytest.raises(LocalProtocolError) as info:
        encode_binary_packet(packet)
    assert message in str(info.value)


def test_encode_binary_rejects_deep_nesting() -> None:
    data: Any = b"x"
    for _ in range(100000):
        data = [data]
    with pytest.raises(LocalProtocolError, match="deep"):
        encode_binary_packet(Packet(PacketType.ACK, data=data))


# --------------------------------------------------------------------------------------------------------
# Interop with python-socketio (the emulator's server side): its encodings decode here and ours there.


def test_python_socketio_encodings_decode_here() -> None:
    ref = reference_packet.Packet(reference_packet.EVENT, ["ev", {"é": [1, b"\x01"]}, b"\x02"], "/admin", 5)
    frames = ref.encode()
    decoder = PacketDecoder()
    results = [decoder.feed(frame) for frame in frames]
    assert results == [None, None, Packet(PacketType.EVENT, "/admin", ["ev", {"é": [1, b"\x01"]}, b"\x02"], 5)]
    ack = reference_packet.Packet(reference_packet.ACK, ["ok"], "/", 0).encode()
    assert decode_packet(ack) == Packet(PacketType.ACK, data=["ok"], id=0)


def test_our_encodings_decode_in_python_socketio() -> None:
    text, buffers = encode_binary_packet(Packet(PacketType.EVENT, "/admin", ["ev", b"\x01", {"k": "é"}], 9))
    ref = reference_packet.Packet(encoded_packet=text)
    assert ref.attachment_count == 1
    assert ref.add_attachment(buffers[0]) is True
    assert (ref.packet_type, ref.namespace, ref.id, ref.data) == (
        reference_packet.BINARY_EVENT, "/admin", 9, ["ev", b"\x01", {"k": "é"}]
    )


# --------------------------------------------------------------------------------------------------------
# Properties

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=10),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=4)),
    max_leaves=12,
)
event_names = st.one_of(
    st.text(max_size=12).filter(lambda s: s not in RESERVED_EVENTS),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False),
)
namespaces = st.one_of(st.just("/"), st.text(max_size=8).filter(lambda s: "," not in s).map(lambda s: "/" + s))
ack_ids = st.one_of(st.none(), st.integers(0, 10**15 - 1))


@st.composite
def text_packets(draw: st.DrawFn) -> Packet:
    ptype = draw(st.sampled_from([0, 1, 2, 3, 4]))
    if ptype == 0:
        data = draw(st.one_of(st.none(), st.dictionaries(st.text(max_size=5), json_values, max_size=4)))
    elif ptype == 1:
        data = None
    elif ptype == 2:
        data = [draw(event_names), *draw(st.lists(json_values, max_size=3))]
    elif ptype == 3:
        data = draw(st.lists(json_values, max_size=3))
    else:
        data = draw(st.one_of(st.text(max_size=10), st.dictionaries(st.text(max_size=5), json_values, max_size=3)))
    return Packet(PacketType(ptype), draw(namespaces), data, draw(ack_ids))


with_bytes = st.recursive(
    st.one_of(json_scalars, st.binary(max_size=8)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        # keys that cannot make a user dict look like a placeholder
        st.dictionaries(st.text(max_size=5).filter(lambda k: k != "_placeholder"), inner, max_size=4),
    ),
    max_leaves=12,
)


@st.composite
def binary_packets(draw: st.DrawFn) -> Packet:
    if draw(st.booleans()):
        data = [draw(event_names), *draw(st.lists(with_bytes, max_size=4))]
        ptype = PacketType.EVENT
    else:
        data = draw(st.lists(with_bytes, max_size=4))
        ptype = PacketType.ACK
    return Packet(ptype, draw(namespaces), data, draw(ack_ids))


@settings(max_examples=300, deadline=None)
@given(text_packets())
def test_round_trip(packet: Packet) -> None:
    wire = encode_packet(packet)
    assert decode_packet(wire) == packet
    assert json.loads(json.dumps(packet.data)) == packet.data  # sanity: generated data is JSON data


@settings(max_examples=200, deadline=None)
@given(binary_packets())
def test_binary_round_trip(packet: Packet) -> None:
    text, buffers = encode_binary_packet(packet)
    decoder = PacketDecoder(max_attachments=1000)
    frames: list[str | bytes] = [text, *buffers]
    results = [decoder.feed(frame) for frame in frames]
    assert results[:-1] == [None] * len(buffers)
    assert results[-1] == packet
    if buffers:
        assert re.match(r"[56][0-9]+-", text)
        assert decode_packet(text, max_attachments=1000).attachments == len(buffers)


wire_text = st.one_of(
    st.text(),
    st.text(alphabet='0123456789-/,[]{}"_:acdelnhoprtu .\\', max_size=40),
    st.lists(
        st.sampled_from(["0", "2", "3", "5", "6", "1-", "2-", "/a,", "12", '["x"', ",", "]", "{}", "[", '"connect"',
                         '{"_placeholder":true,"num":0}', "null", "1.5", "-1"]),
        max_size=8,
    ).map("".join),
)


@settings(max_examples=500, deadline=None)
@given(wire_text)
def test_decode_never_raises_anything_else(text: str) -> None:
    try:
        packet = decode_packet(text)
    except RemoteProtocolError:
        return
    assert isinstance(packet, Packet)
    assert isinstance(packet.type, PacketType)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(wire_text, st.binary(max_size=4)), max_size=8))
def test_feed_never_raises_anything_else(frames: list[str | bytes]) -> None:
    decoder = PacketDecoder()
    for frame in frames:
        try:
            result = decoder.feed(frame)
        except RemoteProtocolError:
            continue
        assert result is None or isinstance(result, Packet)
        if result is not None:
            assert result.type not in (PacketType.BINARY_EVENT, PacketType.BINARY_ACK)


# --------------------------------------------------------------------------------------------------------
# The server's event stream: a large progress event decodes whole. (Its cost against a bare
# ``json.loads`` is a number, so it is measured in benchmarks/core.py, not timed here.)


def test_a_large_progress_event_decodes() -> None:
    event = large_progress_event()
    payload = json.dumps(["sonar_query_progress", event], separators=(",", ":"), ensure_ascii=False)
    wire = "2" + payload
    assert 1900 <= len(wire) <= 2300
    assert decode_packet(wire) == Packet(PacketType.EVENT, data=["sonar_query_progress", event])
