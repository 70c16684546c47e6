"""The WebSocket layer: the direct path for plain frames and wsproto for everything else agree."""

from __future__ import annotations

import itertools
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from peer import ClientFrames, ws_frame

from plabs_proto.errors import LocalProtocolError, RemoteProtocolError
from plabs_proto.wire.websocket import WebSocketChannel, accept_token, make_key


def channel(limit: int = 1 << 20) -> WebSocketChannel:
    return WebSocketChannel(random.Random(1), max_message_size=limit)


def test_accept_token_rfc6455_example() -> None:
    assert accept_token("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert make_key(random.Random(0)) == make_key(random.Random(0))


def test_plain_frames_text_and_binary_and_sizes() -> None:
    ws = channel()
    big = "é" * 70000  # a 64-bit length
    medium = "x" * 300  # a 16-bit length
    data = ws_frame("hi") + ws_frame(b"\x00\x01") + ws_frame(medium) + ws_frame(big)
    assert ws.receive_data(data) == ["hi", b"\x00\x01", medium, big]


def test_fragments_and_control_frames_go_through_wsproto() -> None:
    ws = channel()
    data = (
        ws_frame("Hel", fin=False)
        + ws_frame(b"p1", opcode=0x9)  # a ping in the middle of a fragmented message
        + ws_frame("lo", opcode=0x0, fin=False)
        + ws_frame("!", opcode=0x0)
        + ws_frame("next")
    )
    assert ws.receive_data(data) == ["Hello!", "next"]
    assert ClientFrames().feed(ws.data_to_send()) == [b"p1"]  # the pong carries the ping's payload


def test_server_close_is_answered_once() -> None:
    ws = channel()
    assert ws.receive_data(ws_frame(struct.pack("!H", 1001) + b"going away", opcode=0x8)) == []
    assert ws.close_reason == (1001, "going away")
    assert ClientFrames().feed(ws.data_to_send()) == [b"<close>"]
    assert ws.closed
    with pytest.raises(LocalProtocolError):
        ws.send_text("too late")
    with pytest.raises(RemoteProtocolError, match="after the server's WebSocket close"):
        ws.receive_data(b"\x81\x00")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\x81\x82abcdxy", "valid WebSocket frame"),  # masked by the server
        (b"\x81\x02\xff\xfe", "UTF-8"),
        (b"\xc1\x01x", "valid WebSocket frame"),  # RSV1 without an extension
        (b"\x83\x00", "valid WebSocket frame"),  # reserved opcode
        (b"\x80\x00", "valid WebSocket frame"),  # a continuation with nothing to continue
        (b"\x88\x01x", "valid WebSocket frame"),  # a close with a 1-byte payload
    ],
)
def test_bad_frames(data: bytes, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        channel().receive_data(data)


def test_oversized_fragmented_message() -> None:
    ws = channel(limit=10)
    ws.receive_data(ws_frame("12345678", fin=False))
    with pytest.raises(RemoteProtocolError, match="at most 10 bytes"):
        ws.receive_data(ws_frame("abcdef", opcode=0x0))


def test_client_frames_are_masked_with_the_given_rng() -> None:
    one = WebSocketChannel(random.Random(5), max_message_size=100).send_text("42[]")
    two = WebSocketChannel(random.Random(5), max_message_size=100).send_text("42[]")
    assert one == two and one[1] & 0x80
    assert ClientFrames().feed(one) == ["42[]"]


frames = st.lists(
    st.one_of(
        st.text(max_size=300).map(ws_frame),
        st.binary(max_size=70).map(lambda b: ws_frame(b, opcode=0x9)),
        st.text(max_size=20).map(lambda t: ws_frame(t, fin=False) + ws_frame("|", opcode=0x0)),
    ),
    max_size=8,
)


@settings(max_examples=150, deadline=None)
@given(parts=frames, cuts=st.lists(st.integers(0, 5000), max_size=10))
def test_any_chunking_gives_the_same_messages(parts: list[bytes], cuts: list[int]) -> None:
    data = b"".join(parts)
    whole = channel().receive_data(data)
    ws = channel()
    got: list[str | bytes] = []
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for a, b in itertools.pairwise(points):
        got += ws.receive_data(data[a:b])
    assert got == whole


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200))
def test_any_bytes_give_messages_or_remote_protocol_error(data: bytes) -> None:
    try:
        channel(limit=100).receive_data(data)
    except RemoteProtocolError:
        pass


def test_raw_text_mode_hands_out_undecoded_text() -> None:
    from plabs_proto.wire.websocket import Utf8Text

    ws = WebSocketChannel(random.Random(1), max_message_size=1000, raw_text=True)
    got = ws.receive_data(ws_frame("héllo") + ws_frame("a", fin=False) + ws_frame("b", opcode=0x0) + ws_frame(b"\x01"))
    assert got == [Utf8Text("héllo".encode()), "ab", b"\x01"]  # a fragmented message comes decoded, by wsproto
    first = got[0]
    assert isinstance(first, Utf8Text) and first.decode() == "héllo"
    with pytest.raises(RemoteProtocolError, match="UTF-8"):
        Utf8Text(b"\xff").decode()
