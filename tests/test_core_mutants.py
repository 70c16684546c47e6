"""Cases a mutation tester showed no test pinned down (mutmut over engineio.py, socketio.py, labs.py).

Each test names the behaviour it guards; benchmarks/RESULTS.md has the counts before and after.
"""

from __future__ import annotations

import json

import pytest

from plabs_proto import engineio, socketio
from plabs_proto.errors import LocalProtocolError, RemoteProtocolError
from plabs_proto.labs import CumulativeFrameReader, normalize_messages

# -- engineio -------------------------------------------------------------------------------------------


def test_encode_payload_of_nothing_says_so() -> None:
    with pytest.raises(LocalProtocolError, match=r"^expected at least one packet in a polling payload, got none$"):
        engineio.encode_payload([])


def test_open_packet_messages_say_what_arrived() -> None:
    with pytest.raises(RemoteProtocolError, match=r"^expected JSON data in the Engine\.IO open packet, got none$"):
        engineio.parse_open_packet(None)
    with pytest.raises(RemoteProtocolError, match=r"^expected JSON text in the Engine\.IO open packet, got bytes$"):
        engineio.parse_open_packet(b'{"sid":"x"}')  # type: ignore[arg-type]


def test_open_packet_takes_the_smallest_positive_interval() -> None:
    info = engineio.parse_open_packet('{"sid":"x","pingInterval":1,"pingTimeout":1,"maxPayload":1}')
    assert (info.ping_interval, info.ping_timeout, info.max_payload) == (1, 1, 1)
    with pytest.raises(RemoteProtocolError, match=r"expected an integer 'pingInterval' in 1\.\.2147483647"):
        engineio.parse_open_packet('{"sid":"x","pingInterval":0}')


def test_legacy_payload_with_a_lone_surrogate_is_read_not_a_unicode_error() -> None:
    """v3 lengths count UTF-16 code units; a lone surrogate is one unit and must not raise."""
    assert engineio.decode_payload("2:4\ud800") == [engineio.Packet(engineio.PacketType.MESSAGE, "\ud800")]
    assert engineio.decode_payload("3:4\U0001f600") == [engineio.Packet(engineio.PacketType.MESSAGE, "\U0001f600")]


# -- socketio -------------------------------------------------------------------------------------------


def test_error_excerpts_show_sixty_characters_whole() -> None:
    sixty = "9" + "x" * 59
    with pytest.raises(RemoteProtocolError) as info:
        socketio.decode_packet(sixty)
    assert str(info.value).endswith(repr(sixty))
    with pytest.raises(RemoteProtocolError) as info:
        socketio.decode_packet(sixty + "y")
    assert str(info.value).endswith(f"{sixty!r}... (61 chars)")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_json_constants_are_refused(constant: str) -> None:
    with pytest.raises(RemoteProtocolError, match="invalid payload"):
        socketio.decode_packet(f'2["x",{constant}]')
    with pytest.raises(ValueError, match=f"^{constant} is not JSON$"):
        socketio._decoder.decode(constant)


def test_too_deep_binary_data_is_a_local_error_with_a_message() -> None:
    data: object = [b"x"]
    for _ in range(100_000):
        data = [data]
    packet = socketio.Packet(socketio.PacketType.EVENT, data=["x", data])
    with pytest.raises(LocalProtocolError, match=r"^expected packet data of reasonable depth, got too deep nesting$"):
        socketio.encode_binary_packet(packet)


def test_decoder_reset_drops_buffers_and_decodes_again() -> None:
    decoder = socketio.PacketDecoder()
    assert decoder.feed('51-["x",{"_placeholder":true,"num":0}]') is None
    decoder.reset()
    assert decoder.awaiting_attachments == 0
    assert decoder.feed('51-["y",{"_placeholder":true,"num":0}]') is None
    packet = decoder.feed(b"\x01\x02")
    assert packet is not None and packet.data == ["y", b"\x01\x02"]


# -- labs -----------------------------------------------------------------------------------------------


def test_a_text_part_with_a_wrong_text_says_what_it_got() -> None:
    with pytest.raises(LocalProtocolError, match=r"expected 'text' to be a str in a text part, got int: 5$"):
        normalize_messages([{"role": "user", "content": [{"type": "text", "text": 5}]}])


def frame(output: str, tail: str = "}]") -> str:
    return '42["x",{"output":' + json.dumps(output) + tail


@pytest.mark.parametrize("tail", [
    ',"b":1}]X',  # junk after the array: not JSON
    ',"b":1}X]',  # junk between the object and the bracket
    ',"b":1}\x0c]',  # a form feed is not JSON white space
    ',"b":1} {"c":2}]',  # two objects
])
def test_tails_that_are_not_json_step_aside(tail: str) -> None:
    reader = CumulativeFrameReader()
    reader.read(frame("a"), 1)
    text = frame("ab", tail)
    assert reader.read(text, 1) is None
    assert reader.read_bytes(text.encode(), 1) is None


@pytest.mark.parametrize("tail", ['}]\n ', ',"b":1}\n]', ',"b":1} \t]\r\n'])
def test_json_white_space_around_the_tail_takes_the_prefix_path(tail: str) -> None:
    reader = CumulativeFrameReader()
    reader.read(frame("a"), 1)
    text = frame("ab", tail)
    expected = ("x", json.loads(text[2:])[1])
    assert reader.read(text, 1) == expected
    assert reader.read_bytes(frame("abc", tail).encode(), 1) == ("x", json.loads(frame("abc", tail)[2:])[1])


def test_bytes_path_needs_the_whole_previous_prefix() -> None:
    """A frame as long as the previous one but with another output is not an extension."""
    reader = CumulativeFrameReader()
    reader.read(frame("abc"), 1)
    changed = frame("abd" + "ef")
    assert reader.read_bytes(changed.encode(), 1) is None
    assert reader.read(changed, 1) == ("x", {"output": "abdef"})


@pytest.mark.parametrize("pair", ["\ud800\udc00", "\udbff\udfff", "\ud83d\ude00"])
def test_split_pair_at_the_ends_of_the_low_surrogate_range(pair: str) -> None:
    """U+10000 and U+10FFFF: the low halves \\udc00 and \\udfff are the edges of the guard's range."""
    high_only = '42["x",{"output":' + json.dumps("a" + pair[0]) + "}]"
    both = '42["x",{"output":' + json.dumps("a" + pair) + "}]"
    reader = CumulativeFrameReader()
    reader.read(high_only, 1)
    assert reader.read(both, 1) is None
    reader = CumulativeFrameReader()
    reader.read('42["x",{"output":"a"}]', 1)
    reader.read_bytes(high_only.encode(), 1)
    assert reader.read_bytes(both.encode(), 1) is None


def test_bytes_path_after_a_text_with_a_raw_lone_surrogate_does_not_raise() -> None:
    """The text path may see a lone surrogate as a character (not an escape); the bytes path then
    compares UTF-8 bytes against it and must step aside, not raise UnicodeEncodeError."""
    reader = CumulativeFrameReader()
    assert reader.read('42["x",{"output":"a\ud800"}]', 1) == ("x", {"output": "a\ud800"})
    assert reader.read_bytes(b'42["x",{"output":"ab"}]', 1) is None
