"""Tests written for the mutants that outlived the suite (issue 19), by module.

Each test says what a user or a peer would see; the mutants they kill are listed in
benchmarks/RESULTS.md §5 with those read as equivalent.  Limits and length encodings at their
edges are in test_edges_wire.py.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import random
import re
import ssl
import zlib
from pathlib import Path

import pytest
from conftest import TLSFiles
from peer import KEY, Harness, MemoryTLSServer, ws_frame
from wsproto.frame_protocol import CloseReason, FrameProtocol, Opcode

from plabs_proto.config import ClientConfig
from plabs_proto.errors import (
    ChallengeError,
    HandshakeError,
    LabsTimeout,
    LocalProtocolError,
    ProxyError,
    RateLimitedError,
    RedirectError,
    RemoteProtocolError,
    TLSError,
    UnexpectedPageError,
)
from plabs_proto.events import AnswerFinished
from plabs_proto.perplexity.session import SESSION_COOKIE, signed_in_cookie
from plabs_proto.refusal import is_page, page_title, refusal, unexpected_page
from plabs_proto.wire.browser import CHROME, CHROME_131, PROFILES, fetch_site
from plabs_proto.wire.client import LabsClient, PerplexityClient
from plabs_proto.wire.headers import CookieJar, RequestHeaders
from plabs_proto.wire.http import (
    BodyDecoder,
    HTTPChannel,
    HTTPResponse,
    SwitchedProtocol,
    looks_like_cloudflare,
)
from plabs_proto.wire.proxy import HTTPConnectTunnel, ProxyConfig, SOCKS5Tunnel, parse_proxy_url
from plabs_proto.wire.stack import StreamStack
from plabs_proto.wire.tls import TLSLayer, make_ssl_context
from plabs_proto.wire.trace import (
    TraceError,
    TraceRecord,
    TraceRecorder,
    config_header,
    make_header,
    parse_header,
    read_trace,
    redact_header_value,
    redact_records,
    replay,
)
from plabs_proto.wire.websocket import (
    DeflateParameters,
    Utf8Text,
    WebSocketChannel,
    make_key,
    negotiate_deflate,
)

# -- websocket.py: negotiating permessage-deflate -------------------------------------------------------------


@pytest.mark.parametrize("bits", range(8, 16))
def test_every_window_size_from_8_to_15_is_agreed(bits: int) -> None:
    for name in ("server_max_window_bits", "client_max_window_bits"):
        for value in (str(bits), f'"{bits}"'):
            agreed = negotiate_deflate([f"permessage-deflate; {name}={value}"], offered=True)
            assert agreed == DeflateParameters(**{name: bits})  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["7", "16", "", '""', "08"])
def test_window_sizes_outside_8_to_15_are_refused_with_the_whole_message(value: str) -> None:
    header = f"permessage-deflate; client_max_window_bits={value}"
    with pytest.raises(RemoteProtocolError) as caught:
        negotiate_deflate([header], offered=True)
    assert str(caught.value) == (
        "expected permessage-deflate parameters among server_no_context_takeover, "
        "client_no_context_takeover (without a value), server_max_window_bits=8..15 and "
        f"client_max_window_bits=8..15, got {'client_max_window_bits=' + value!r} in {header!r}"
    )


def test_the_header_values_are_read_as_one_list_and_shown_whole_up_to_200_characters() -> None:
    values = ["permessage-deflate", "x-other"]
    with pytest.raises(RemoteProtocolError) as caught:
        negotiate_deflate(values, offered=True)
    assert str(caught.value) == (
        "expected at most one WebSocket extension (we offered permessage-deflate), "
        "got 'permessage-deflate, x-other'"
    )
    for size, shown in ((200, "a" * 200), (201, "a" * 200 + "...")):
        header = "a" * size
        with pytest.raises(RemoteProtocolError) as caught:
            negotiate_deflate([header], offered=False)
        assert str(caught.value) == (
            f"expected no Sec-WebSocket-Extensions in the 101 response (we offered none), got {shown!r}"
        )


def test_the_key_is_16_bytes_of_the_generator() -> None:
    drawn = random.Random(0)
    drawn.getrandbits(32)  # the client's first draw is its cache buster
    assert make_key(drawn) == KEY  # the key of the byte-exact transcripts
    for seed in range(20):
        assert len(base64.b64decode(make_key(random.Random(seed)))) == 16


# -- websocket.py: what we send -------------------------------------------------------------------------------


def test_close_without_a_reason_sends_the_code_alone_and_only_once() -> None:
    ws = WebSocketChannel(random.Random(1), max_message_size=10)
    wire = ws.close()
    assert wire[:2] == b"\x88\x82"  # a masked close frame of two bytes: the code
    server = FrameProtocol(client=False, extensions=[])
    server.receive_bytes(wire)
    [frame] = server.received_frames()
    assert frame.payload == (CloseReason.NORMAL_CLOSURE, "")
    assert ws.close() == b""
    assert ws.closed
    with pytest.raises(LocalProtocolError) as caught:
        ws.send_text("late")
    assert str(caught.value) == "cannot send a WebSocket message after our close frame was sent"


def test_no_pong_after_our_close_frame() -> None:
    ws = WebSocketChannel(random.Random(1), max_message_size=100)
    ws.close()
    assert ws.receive_data(ws_frame(b"p", opcode=Opcode.PING)) == []
    assert ws.data_to_send() == b""


@pytest.mark.parametrize(("sent", "echoed"), [
    (CloseReason.NORMAL_CLOSURE, CloseReason.NORMAL_CLOSURE),
    (CloseReason.GOING_AWAY, CloseReason.GOING_AWAY),
    (4000, 4000),
    (None, CloseReason.NORMAL_CLOSURE),  # a close frame without a code: we answer 1000, never 1005
])
def test_a_server_close_is_answered_with_its_own_code(sent: int | None, echoed: int) -> None:
    ws = WebSocketChannel(random.Random(1), max_message_size=100)
    payload = b"" if sent is None else sent.to_bytes(2, "big") + b"bye"
    assert ws.receive_data(ws_frame(payload, opcode=Opcode.CLOSE)) == []
    assert ws.close_reason == ((1005, "") if sent is None else (sent, "bye"))
    server = FrameProtocol(client=False, extensions=[])
    server.receive_bytes(ws.data_to_send())
    [frame] = server.received_frames()
    assert frame.opcode is Opcode.CLOSE and frame.payload == (echoed, "")


# -- websocket.py: what we receive ----------------------------------------------------------------------------


def test_bytes_that_came_with_the_101_are_read_first() -> None:
    wire = ws_frame("one") + ws_frame("two")
    ws = WebSocketChannel(random.Random(1), max_message_size=100, trailing_data=wire[:4])
    assert ws.receive_data(wire[4:]) == ["one", "two"]
    assert ws.receive_data(ws_frame("three")) == ["three"]  # the trailing bytes are read once
    ws = WebSocketChannel(random.Random(1), max_message_size=100, trailing_data=ws_frame("alone"))
    assert ws.receive_data(b"") == ["alone"]


@pytest.mark.parametrize("n", [126, 65536])
def test_a_frame_cut_in_its_extended_length_after_another_frame_waits(n: int) -> None:
    second = ws_frame("s" * n)
    head = 4 if n < 65536 else 10
    for cut in range(1, head + 1):
        ws = WebSocketChannel(random.Random(1), max_message_size=n)
        assert ws.receive_data(ws_frame("first") + second[:cut]) == ["first"]
        assert ws.receive_data(second[cut:]) == ["s" * n]


def test_a_frame_past_the_limit_is_refused_by_its_extended_length_alone() -> None:
    for n, head in ((300, 4), (70_000, 10)):
        ws = WebSocketChannel(random.Random(1), max_message_size=n - 1)
        with pytest.raises(RemoteProtocolError, match=f"at most {n - 1} bytes .*, got one of at least {n} bytes"):
            ws.receive_data(ws_frame("z" * n)[:head])


def test_a_64_bit_length_with_only_its_top_byte_set_is_refused() -> None:
    ws = WebSocketChannel(random.Random(1), max_message_size=1000)
    head = b"\x82\x7f" + (1 << 56).to_bytes(8, "big")
    with pytest.raises(RemoteProtocolError) as caught:
        ws.receive_data(head)
    assert str(caught.value).endswith(f"got one of at least {1 << 56} bytes")


def test_a_masked_server_frame_is_refused() -> None:
    masked = b"\x81\x85" + b"\x01\x02\x03\x04" + bytes(b ^ k for b, k in zip(b"hello", b"\x01\x02\x03\x04\x01", strict=True))
    ws = WebSocketChannel(random.Random(1), max_message_size=1000)
    with pytest.raises(RemoteProtocolError, match="expected a valid WebSocket frame from the server"):
        ws.receive_data(masked)


def test_a_continuation_past_the_limit_is_refused_by_its_head() -> None:
    ws = WebSocketChannel(random.Random(1), max_message_size=10)
    assert ws.receive_data(ws_frame("123456", fin=False)) == []
    with pytest.raises(RemoteProtocolError) as caught:
        ws.receive_data(ws_frame("78901", opcode=Opcode.CONTINUATION)[:2])  # its head alone
    assert str(caught.value).endswith("got one of at least 11 bytes")


def test_a_fragmented_text_message_is_counted_in_bytes_not_characters() -> None:
    def message(first: str, rest: str) -> bytes:
        return ws_frame(first, fin=False) + ws_frame(rest, opcode=Opcode.CONTINUATION)

    ws = WebSocketChannel(random.Random(1), max_message_size=10)
    assert ws.receive_data(message("éé", "ééé")) == ["ééééé"]  # 10 bytes
    ws = WebSocketChannel(random.Random(1), max_message_size=10)
    with pytest.raises(RemoteProtocolError, match="at most 10 bytes"):
        ws.receive_data(message("éééé", "ééé"))  # 14 bytes in 7 characters


def test_each_fragmented_message_starts_its_counts_afresh() -> None:
    # Two fragmented messages of exactly the limit, then two at the fragment count's edge.
    ws = WebSocketChannel(random.Random(1), max_message_size=8)
    at_limit = ws_frame(b"1234", fin=False) + ws_frame(b"5678", opcode=Opcode.CONTINUATION)
    assert ws.receive_data(at_limit + at_limit) == [b"12345678", b"12345678"]
    many = (
        ws_frame(b"", fin=False)
        + ws_frame(b"", opcode=Opcode.CONTINUATION, fin=False) * 1022
        + ws_frame(b"", opcode=Opcode.CONTINUATION)
    )  # 1024 fragments
    ws = WebSocketChannel(random.Random(1), max_message_size=8)
    assert ws.receive_data(many + many + ws_frame("plain")) == [b"", b"", "plain"]


# -- websocket.py: permessage-deflate as the peer sees it -----------------------------------------------------


def compressed(*messages: bytes, wbits: int = -15, shared: bool = True) -> list[bytes]:
    """Each message as a sender compresses it (the 00 00 ff ff tail stripped), with one compressor or one each."""
    packer = zlib.compressobj(9, zlib.DEFLATED, wbits)
    out = []
    for message in messages:
        if not shared:
            packer = zlib.compressobj(9, zlib.DEFLATED, wbits)
        data = packer.compress(message) + packer.flush(zlib.Z_SYNC_FLUSH)
        assert data.endswith(b"\x00\x00\xff\xff")
        out.append(data[:-4])
    return out


def inflate_in_steps(data: bytes, bits: int) -> bytes:
    """``data`` inflated as a server with a window of ``bits`` does: 64 bytes at a time.

    (zlib follows a distance back into the output of the same call whatever the window; in
    small steps, what it keeps of the past is the window.)
    """
    inflater = zlib.decompressobj(-bits)
    out = b""
    while data:
        out += inflater.decompress(data, 64)
        data = inflater.unconsumed_tail
    return out


def test_our_messages_fit_the_window_the_server_allowed() -> None:
    # 600 random characters twice: a window of 10 bits or more points 600 bytes back, which a
    # server inflating with 9 bits (512 bytes) cannot follow; zlib's 9-bit window never does.
    block = random.Random(3).randbytes(300).hex()
    for bits in (9, 10, 15):
        ws = WebSocketChannel(random.Random(1), max_message_size=10, deflate=DeflateParameters(client_max_window_bits=bits))
        wire = ws.send_text(block + block)
        assert wire[0] == 0xC1  # compressed: RSV1
        start = 2 if wire[1] & 0x7F < 126 else 4  # (a 7- or 16-bit length)
        key = wire[start : start + 4]
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(wire[start + 4 :]))
        assert inflate_in_steps(payload + b"\x00\x00\xff\xff", bits).decode() == block + block
    ws = WebSocketChannel(random.Random(1), max_message_size=10, deflate=DeflateParameters(client_max_window_bits=8))
    assert ws.send_text("plain")[0] == 0x81  # zlib cannot compress with 8 bits: sent as it is


def test_a_server_that_promised_no_context_takeover_and_kept_its_context_is_refused() -> None:
    first, second = compressed(b"the same words again " * 3, b"the same words again " * 3)
    assert len(second) < len(first)  # the second points back into the first
    kept = WebSocketChannel(random.Random(1), max_message_size=1000, deflate=DeflateParameters())
    assert kept.receive_data(ws_frame(first, rsv1=True) + ws_frame(second, rsv1=True)) == [
        b"the same words again " * 3
    ] * 2
    fresh = WebSocketChannel(
        random.Random(1), max_message_size=1000, deflate=DeflateParameters(server_no_context_takeover=True)
    )
    assert fresh.receive_data(ws_frame(first, rsv1=True)) == [b"the same words again " * 3]
    with pytest.raises(RemoteProtocolError, match="expected a permessage-deflate message zlib can inflate"):
        fresh.receive_data(ws_frame(second, rsv1=True))


def test_compressed_messages_of_exactly_the_limit_one_after_another() -> None:
    texts = [b"a" * 500, b"b" * 500, b"c" * 500]
    for fragments in (False, True):
        ws = WebSocketChannel(random.Random(1), max_message_size=500, deflate=DeflateParameters())
        wire = b""
        for data in compressed(*texts):
            if fragments:
                wire += ws_frame(data[:3], fin=False, rsv1=True) + ws_frame(data[3:], opcode=Opcode.CONTINUATION)
            else:
                wire += ws_frame(data, rsv1=True)
        assert ws.receive_data(wire) == texts


def test_a_compressed_message_in_three_fragments_is_bounded_as_a_whole() -> None:
    thirds = compressed(b"x" * 1500, b"y" * 1500, b"z" * 1500)  # one stream, each third inflating to 1500
    thirds = [thirds[0] + b"\x00\x00\xff\xff", thirds[1] + b"\x00\x00\xff\xff", thirds[2]]
    wire = (
        ws_frame(thirds[0], fin=False, rsv1=True)
        + ws_frame(thirds[1], opcode=Opcode.CONTINUATION, fin=False)
        + ws_frame(thirds[2], opcode=Opcode.CONTINUATION)
    )
    assert WebSocketChannel(random.Random(1), max_message_size=4500, deflate=DeflateParameters()).receive_data(
        wire
    ) == [b"x" * 1500 + b"y" * 1500 + b"z" * 1500]
    ws = WebSocketChannel(random.Random(1), max_message_size=4499, deflate=DeflateParameters())
    with pytest.raises(RemoteProtocolError) as caught:
        ws.receive_data(wire)
    assert str(caught.value) == (
        "expected a WebSocket message of at most 4499 bytes (max_message_size) once inflated, "
        "got a compressed one that inflates to more"
    )


def test_a_message_whose_deflate_stream_ends_in_its_last_fragment_is_read() -> None:
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = packer.compress(b"final " * 50) + packer.flush()  # a final block (BFINAL), no 00 00 ff ff
    for cut in (2, len(data) // 2):
        ws = WebSocketChannel(random.Random(1), max_message_size=1000, deflate=DeflateParameters())
        wire = ws_frame(data[:cut], fin=False, rsv1=True) + ws_frame(data[cut:], opcode=Opcode.CONTINUATION)
        assert ws.receive_data(wire) == [b"final " * 50]


def test_bytes_after_the_final_deflate_block_are_refused_even_in_a_fragment() -> None:
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = packer.compress(b"done") + packer.flush() + b"\x00\x00\xff\xff"
    ws = WebSocketChannel(random.Random(1), max_message_size=1000, deflate=DeflateParameters())
    with pytest.raises(RemoteProtocolError) as caught:
        ws.receive_data(ws_frame(data, fin=False, rsv1=True))
    assert str(caught.value) == (
        "expected nothing after the final deflate block of a WebSocket message, got 4 more bytes"
    )


def test_the_agreed_parameters_are_kept_on_the_channel() -> None:
    agreed = DeflateParameters(server_no_context_takeover=True, client_max_window_bits=12)
    assert WebSocketChannel(random.Random(1), max_message_size=10, deflate=agreed).deflate is agreed
    assert WebSocketChannel(random.Random(1), max_message_size=10).deflate is None


# -- websocket.py: raw text and the end of the stream ---------------------------------------------------------


def test_raw_text_hands_out_messages_of_three_bytes_or_more_undecoded() -> None:
    ws = WebSocketChannel(random.Random(1), max_message_size=100, raw_text=True)
    wire = ws_frame("ab") + ws_frame("abc") + ws_frame("é")
    assert ws.receive_data(wire) == ["ab", Utf8Text(b"abc"), "é"]  # "é" is two bytes
    # Whole or from a frame cut in two (then held in a buffer), the bytes are bytes: hashable, immutable.
    for cut in (0, 3):
        ws = WebSocketChannel(random.Random(1), max_message_size=100, raw_text=True)
        wire = ws_frame("hello")
        [message] = ws.receive_data(wire[:cut]) + ws.receive_data(wire[cut:])
        assert isinstance(message, Utf8Text) and type(message.data) is bytes
        assert hash(message) == hash(Utf8Text(b"hello")) and message.decode() == "hello"


def test_bytes_after_the_server_close_frame_in_the_same_read_are_refused() -> None:
    ws = WebSocketChannel(random.Random(1), max_message_size=100)
    wire = ws_frame("last") + ws_frame(b"\x03\xe8", opcode=Opcode.CLOSE) + b"trailing"
    with pytest.raises(RemoteProtocolError) as caught:
        ws.receive_data(wire)
    assert str(caught.value) == "expected nothing after the server's WebSocket close frame, got 8 more bytes"
    with pytest.raises(RemoteProtocolError) as caught:
        ws.receive_data(b"xy")
    assert str(caught.value) == "expected nothing after the server's WebSocket close frame, got 2 more bytes"


# -- http.py ---------------------------------------------------------------------------------------------------


def page(body: bytes, headers: tuple[tuple[str, str], ...] = ()) -> HTTPResponse:
    return HTTPResponse(status=403, reason="Forbidden", headers=headers, body=body)


def test_cloudflare_is_told_by_its_header_or_by_its_words_in_the_first_64_kib() -> None:
    assert looks_like_cloudflare(page(b"", (("cf-mitigated", "challenge"),)))
    assert not looks_like_cloudflare(page(b"", (("cf-ray", "1"),)))
    assert looks_like_cloudflare(page(b"<title>Just a Moment...</title>"))  # any case
    assert looks_like_cloudflare(page(b"\xff\xfe not UTF-8, then: Cloudflare Ray ID: 1"))
    marker = b"cf-chl-"
    assert looks_like_cloudflare(page(b"." * (65536 - len(marker)) + marker))  # ends at byte 65536
    assert not looks_like_cloudflare(page(b"." * (65537 - len(marker)) + marker))  # one byte later
    assert not looks_like_cloudflare(page(b"<title>Forbidden</title>"))


def test_response_text_replaces_what_is_not_utf8() -> None:
    assert page(b"caf\xc3\xa9 \xff").text() == "café \ufffd"


def deflate_stored(data: bytes, first: int) -> bytes:
    """Raw deflate: one stored block whose header byte is ``first`` (its padding bits are free), then an end."""
    assert first & 0x07 == 0 and len(data) < 256
    return bytes([first]) + len(data).to_bytes(2, "little") + (~len(data) & 0xFFFF).to_bytes(2, "little") + data + b"\x03\x00"


@pytest.mark.parametrize("first", [0x08, 0x88])
def test_raw_deflate_that_looks_half_like_a_zlib_header_is_read_as_raw(first: int) -> None:
    # 0x08: method 8 and a window of 2**8, but the two bytes are no multiple of 31;
    # 0x88 followed by 28: a multiple of 31 with method 8, but a window (2**16) zlib never writes.
    data = b"s" * 28
    assert (((first << 8) | len(data)) % 31 == 0) == (first == 0x88)
    body = deflate_stored(data, first)
    decoder = BodyDecoder("deflate", limit=100)
    assert decoder.feed(body) == data
    decoder.end()


def test_a_deflate_body_of_two_bytes_is_an_empty_stream() -> None:
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = packer.compress(b"") + packer.flush()
    assert body == b"\x03\x00"
    decoder = BodyDecoder("deflate", limit=0)
    assert decoder.feed(body) == b""
    decoder.end()
    head = b"HTTP/1.1 200 OK\r\nContent-Encoding: deflate\r\nContent-Length: 2\r\n\r\n"
    http = HTTPChannel(max_body=10)
    http.request("GET", "/", [("Host", "x")])
    response = http.receive_data(head + body)
    assert isinstance(response, HTTPResponse) and response.body == b""


def test_a_cut_stream_names_every_compressed_byte_taken() -> None:
    body = gzip.compress(b"z" * 1000)
    decoder = BodyDecoder("gzip", limit=2000)
    for i in range(0, 12, 3):
        decoder.feed(body[i : i + 3])
    with pytest.raises(RemoteProtocolError) as caught:
        decoder.end()
    assert str(caught.value) == "expected a complete gzip stream in the HTTP body, got one cut short (after 12 compressed bytes)"


def test_a_response_that_closes_the_connection_leaves_the_channel_closed() -> None:
    http = HTTPChannel(max_body=10)
    http.request("GET", "/", [("Host", "x")])
    response = http.receive_data(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
    assert isinstance(response, HTTPResponse) and response.body == b"ok"
    assert http.closed is True and not http.reusable and not http.busy
    with pytest.raises(LocalProtocolError, match="closed or not reusable"):
        http.request("GET", "/", [("Host", "x")])


def test_bytes_while_no_request_is_out_are_refused_and_an_eof_closes() -> None:
    http = HTTPChannel(max_body=10)
    with pytest.raises(RemoteProtocolError) as caught:
        http.receive_data(b"x" * 61)
    assert str(caught.value) == f"expected no bytes while no HTTP request is outstanding, got {b'x' * 60!r}"
    assert http.receive_data(b"") is None
    assert http.closed is True and not http.reusable


def test_an_eof_before_the_response_head_is_complete_closes_the_channel() -> None:
    for before in (b"", b"HTTP/1.1 200 OK\r\nContent-"):
        http = HTTPChannel(max_body=10)
        http.request("GET", "/", [("Host", "x")])
        if before:
            assert http.receive_data(before) is None
        with pytest.raises(RemoteProtocolError) as caught:
            http.receive_data(b"")
        assert str(caught.value) == "expected an HTTP response, got end of stream before a complete response head"
        assert http.closed is True


def test_a_coding_we_never_offered_closes_the_channel() -> None:
    http = HTTPChannel(max_body=10)
    http.request("GET", "/", [("Host", "x")])
    with pytest.raises(RemoteProtocolError) as caught:
        http.receive_data(b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 2\r\n\r\nxx")
    assert str(caught.value) == (
        "expected a response body as it is or in one Content-Encoding we offer (gzip, deflate), "
        "got Content-Encoding 'br' (HTTP 200)"
    )
    assert http.closed is True


def channel_with_request(*headers: tuple[str, str]) -> HTTPChannel:
    http = HTTPChannel(max_body=100)
    http.request("GET", "/", [("Host", "x"), *headers])
    return http


def test_a_request_while_busy_or_closed_is_refused_by_name() -> None:
    http = channel_with_request()
    with pytest.raises(LocalProtocolError) as caught:
        http.request("GET", "/two", [("Host", "x")])
    assert str(caught.value) == "cannot send GET /two: this HTTP connection is waiting for a response"
    http.receive_data(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
    with pytest.raises(LocalProtocolError) as caught:
        http.request("POST", "/three", [("Host", "x")])
    assert str(caught.value) == "cannot send POST /three: this HTTP connection is closed or not reusable"


def test_a_post_always_says_its_length() -> None:
    assert HTTPChannel(max_body=1).request("POST", "/p", [("Host", "x")]) == (
        b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    )
    assert HTTPChannel(max_body=1).request("POST", "/p", [("Host", "x")], b"abc") == (
        b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
    )
    assert HTTPChannel(max_body=1).request("GET", "/g", [("Host", "x")]) == b"GET /g HTTP/1.1\r\nHost: x\r\n\r\n"


def test_informational_responses_before_the_answer_are_passed_over() -> None:
    http = channel_with_request()
    response = http.receive_data(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert isinstance(response, HTTPResponse) and response.body == b"ok"
    assert http.reusable
    http = channel_with_request(("Upgrade", "websocket"), ("Connection", "Upgrade"))
    switched = http.receive_data(
        b"HTTP/1.1 100 Continue\r\nX-Not: this\r\n\r\n"
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nrest"
    )
    assert isinstance(switched, SwitchedProtocol)
    assert switched.headers == (("upgrade", "websocket"), ("connection", "Upgrade"))
    assert switched.trailing_data == b"rest"
    assert http.busy is False and http.closed is True and not http.reusable


def test_an_eof_inside_the_body_and_a_garbled_head_name_what_came() -> None:
    http = channel_with_request()
    assert http.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345") is None
    with pytest.raises(RemoteProtocolError) as caught:
        http.receive_data(b"")
    assert str(caught.value) == (
        "expected the rest of the HTTP response, got end of stream (peer closed connection without sending "
        "complete message body (received 5 bytes, expected 10))"
    )
    assert http.closed is True
    http = channel_with_request()
    with pytest.raises(RemoteProtocolError) as caught:
        http.receive_data(b"garbage\r\n\r\n")
    assert str(caught.value) == (
        "expected a valid HTTP/1.1 response, got one h11 refuses: illegal status line: bytearray(b'garbage')"
    )
    assert http.closed is True


def test_an_eof_delimited_body_ends_at_the_eof() -> None:
    http = channel_with_request()
    assert http.receive_data(b"HTTP/1.0 200 OK\r\n\r\n12345") is None
    response = http.receive_data(b"")
    assert isinstance(response, HTTPResponse) and response.body == b"12345"
    assert http.closed is True


def test_a_coded_body_is_bounded_across_its_pieces() -> None:
    pieces = gzipped_pieces(b"a" * 400, b"b" * 400, b"c" * 400)
    decoder = BodyDecoder("gzip", limit=1200)
    assert b"".join(decoder.feed(piece) for piece in pieces) == b"a" * 400 + b"b" * 400 + b"c" * 400
    decoder.end()
    decoder = BodyDecoder("gzip", limit=1199)
    assert decoder.feed(pieces[0]) + decoder.feed(pieces[1]) == b"a" * 400 + b"b" * 400
    with pytest.raises(RemoteProtocolError, match="at most 1199 bytes"):
        decoder.feed(pieces[2])


def test_a_fresh_channel_is_idle_and_a_request_h11_refuses_is_ours() -> None:
    http = HTTPChannel(max_body=10)
    assert http.busy is False and http.closed is False and http.reusable is True
    with pytest.raises(LocalProtocolError) as caught:
        http.request("GET", "/", [("Host", "x"), ("X-Bad", "a\r\nInjected: yes")])
    assert str(caught.value).startswith("cannot send GET /: ")


def test_requests_with_the_same_headers_are_written_alike_and_a_refused_header_stays_refused() -> None:
    # h11's check of each header runs once per set of headers; a second request, on another
    # connection too, is written byte for byte as the first, and one h11 refuses is refused every time.
    headers = [("Host", "x.test"), ("Origin", "https://o.test"), ("Accept", "*/*")]
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    first, second = HTTPChannel(max_body=10), HTTPChannel(max_body=10)
    written = first.request("POST", "/a?sid=1", headers, b"40")
    assert written == (b"POST /a?sid=1 HTTP/1.1\r\nHost: x.test\r\nOrigin: https://o.test\r\nAccept: */*\r\n"
                       b"Content-Length: 2\r\n\r\n40")
    assert second.request("POST", "/a?sid=1", list(headers), b"40") == written
    assert first.receive_data(ok) is not None and first.request("POST", "/b", headers, b"41") == written.replace(
        b"/a?sid=1", b"/b").replace(b"\r\n\r\n40", b"\r\n\r\n41")
    assert HTTPChannel(max_body=10).request("GET", "/", headers) == (
        b"GET / HTTP/1.1\r\nHost: x.test\r\nOrigin: https://o.test\r\nAccept: */*\r\n\r\n")
    for _ in range(2):
        with pytest.raises(LocalProtocolError, match=r"^cannot send GET /: "):
            HTTPChannel(max_body=10).request("GET", "/", [*headers, ("X-Bad", "a\r\nInjected: yes")])
    with pytest.raises(LocalProtocolError, match=r"^cannot send GET /bad target: "):  # the target is checked each time
        HTTPChannel(max_body=10).request("GET", "/bad target", headers)


def test_bytes_after_the_gzip_stream_are_counted_whether_they_come_with_it_or_later() -> None:
    body = gzip.compress(b"data")
    for pieces, count in (([body + b"xyz"], 3), ([body, b"wxyz"], 4)):
        decoder = BodyDecoder("gzip", limit=100)
        with pytest.raises(RemoteProtocolError) as caught:
            for piece in pieces:
                decoder.feed(piece)
        assert str(caught.value) == (
            f"expected nothing after the end of the gzip stream in the HTTP body, got {count} more bytes"
        )
    decoder = BodyDecoder("gzip", limit=100)
    assert decoder.feed(body) == b"data"
    assert decoder.feed(b"") == b""


def test_gzip_means_gzip() -> None:
    with pytest.raises(RemoteProtocolError, match="expected a gzip-encoded HTTP body"):
        BodyDecoder("gzip", limit=100).feed(zlib.compress(b"zlib, not gzip"))
    with pytest.raises(LocalProtocolError) as caught:
        BodyDecoder("br", limit=100)
    assert str(caught.value) == "expected gzip, x-gzip or deflate as a body coding, got 'br'"


def gzipped_pieces(*parts: bytes) -> list[bytes]:
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    pieces = [packer.compress(part) + packer.flush(zlib.Z_SYNC_FLUSH) for part in parts]
    pieces[-1] += packer.flush()
    return pieces


# -- proxy.py --------------------------------------------------------------------------------------------------


def test_proxy_ports_from_1_to_65535() -> None:
    assert ProxyConfig("http", "p", 65535).port == 65535
    assert parse_proxy_url("http://p:65535").port == 65535
    assert parse_proxy_url("socks5://p:1").port == 1
    for port in (0, 65536, True):
        with pytest.raises(LocalProtocolError) as caught:
            ProxyConfig("http", "p", port)
        assert str(caught.value) == f"expected a proxy port between 1 and 65535, got {port!r}"
    for text in ("0", "65536", "065535", "99999"):
        with pytest.raises(LocalProtocolError) as caught:
            parse_proxy_url(f"http://p:{text}")
        assert str(caught.value) == f"expected a proxy port between 1 and 65535, got 'http://p:{text}'"
    with pytest.raises(LocalProtocolError) as caught:
        ProxyConfig("http", "", 1)
    assert str(caught.value) == "expected a proxy host, got an empty one"


def test_proxy_url_shapes_refused_by_name() -> None:
    cases = {
        "http": "expected a proxy URL starting with http://, socks5:// or socks5h://, got 'http'",
        "socks5": "expected a proxy URL starting with http://, socks5:// or socks5h://, got 'socks5'",
        "http://a:b:c": "expected an IPv6 proxy host written inside '[...]', got 'http://a:b:c'",
        "http://[::1]]:80": "expected ':port' after the IPv6 proxy host, got 'http://[::1]]:80'",
        "http://%ff:pw@host": "expected percent-encoded UTF-8 user name and password in the proxy URL, "
        "got 'http://%ff:***@host'",
        "http://u:%ff@host": "expected percent-encoded UTF-8 user name and password in the proxy URL, "
        "got 'http://u:***@host'",
    }
    for url, message in cases.items():
        with pytest.raises(LocalProtocolError) as caught:
            parse_proxy_url(url)
        assert str(caught.value) == message
    with pytest.raises(LocalProtocolError) as caught:
        parse_proxy_url(b"http://p:1")  # type: ignore[arg-type]
    assert str(caught.value) == "expected the proxy URL as a str, got bytes"
    long = "ftp://" + "h" * 300
    with pytest.raises(LocalProtocolError) as caught:
        parse_proxy_url(long)
    assert str(caught.value).endswith(f"got {long[:200]!r}")


def test_proxy_urls_with_odd_but_valid_parts() -> None:
    config = parse_proxy_url("http://u:a://b@Xproxy:1")
    assert (config.username, config.password, config.host, config.port) == ("u", "a://b", "Xproxy", 1)
    assert repr(parse_proxy_url("http://u@p:1")) == (
        "ProxyConfig(scheme='http', host='p', port=1, username='u', password=None)"
    )


def test_a_password_full_of_separators_is_redacted_whole() -> None:
    with pytest.raises(LocalProtocolError) as caught:
        parse_proxy_url("http://user:p:w@x://y@host/path")
    assert str(caught.value) == "expected a proxy URL without a path, query or fragment, got 'http://user:***@host/path'"


def connect_refused(head: bytes) -> str:
    tunnel = HTTPConnectTunnel("example.com", 443)
    tunnel.start()
    with pytest.raises(ProxyError) as caught:
        tunnel.receive_data(head)
    return str(caught.value)


def test_the_proxy_refusal_shows_60_characters_of_its_reason() -> None:
    assert connect_refused(b"HTTP/1.1 403 Verboten\xff\r\n\r\n") == (
        "HTTP proxy refused the tunnel to example.com:443: 403 Verboten\ufffd"
    )
    reason = b"r" * 61
    assert connect_refused(b"HTTP/1.1 403 " + reason + b"\r\n\r\n") == (
        "HTTP proxy refused the tunnel to example.com:443: 403 " + "r" * 60
    )


def socks_after_greeting(credentials: bool = False) -> SOCKS5Tunnel:
    tunnel = SOCKS5Tunnel("example.com", 443, **({"username": "u", "password": "p"} if credentials else {}))
    tunnel.start()
    tunnel.data_to_send()
    return tunnel


def test_socks5_replies_are_judged_as_soon_as_their_bytes_tell() -> None:
    tunnel = socks_after_greeting()
    tunnel.receive_data(b"\x05\x00")
    with pytest.raises(ProxyError, match=r"general SOCKS server failure \(reply 0x01\)"):
        tunnel.receive_data(b"\x05\x01")  # two bytes say it
    tunnel = socks_after_greeting()
    tunnel.receive_data(b"\x05\x00")
    with pytest.raises(ProxyError, match="expected address type 0x01, 0x03 or 0x04, got 0x09"):
        tunnel.receive_data(b"\x05\x00\x00\x09")  # four bytes say it


def test_socks5_errors_show_60_bytes_of_what_came() -> None:
    tunnel = socks_after_greeting()
    tunnel.receive_data(b"\x05\x00")
    sent = b"\x04" + b"v" * 70
    with pytest.raises(ProxyError) as caught:
        tunnel.receive_data(sent)
    assert str(caught.value).endswith(f"expected version 0x05, got {sent[:60]!r}")
    tunnel = socks_after_greeting()
    tunnel.receive_data(b"\x05\x00")
    sent = b"\x05\x00\x00\x09" + b"a" * 70
    with pytest.raises(ProxyError) as caught:
        tunnel.receive_data(sent)
    assert str(caught.value).endswith(f"got 0x09 in {sent[:60]!r}")
    tunnel = socks_after_greeting()
    tunnel.receive_data(b"\x05\x00")
    partial = b"\x05\x00\x00\x03\xff" + b"d" * 100
    assert tunnel.receive_data(partial) == b""
    with pytest.raises(ProxyError) as caught:
        tunnel.receive_data(b"")
    assert str(caught.value) == (
        "SOCKS5 proxy closed the connection before its connect reply for the connection to example.com:443: "
        f"expected 0x05, reply code, 0x00, address type, address, port, got {partial[:60]!r}"
    )


def test_socks5_eof_after_the_login_waits_for_the_connect_reply() -> None:
    tunnel = socks_after_greeting(credentials=True)
    tunnel.receive_data(b"\x05\x02")
    tunnel.receive_data(b"\x01\x00")
    with pytest.raises(ProxyError) as caught:
        tunnel.receive_data(b"")
    assert str(caught.value).startswith("SOCKS5 proxy closed the connection before its connect reply ")


def test_tunnel_targets_from_port_1_and_names_idna_cannot_encode() -> None:
    tunnel = SOCKS5Tunnel("Xample.test", 1)
    tunnel.start()
    tunnel.data_to_send()
    tunnel.receive_data(b"\x05\x00")
    assert tunnel.data_to_send() == b"\x05\x01\x00\x03\x0bXample.test\x00\x01"
    for port in (0, 65536):
        with pytest.raises(LocalProtocolError) as caught:
            HTTPConnectTunnel("example.com", port)
        assert str(caught.value) == f"expected a target port between 1 and 65535, got {port}"
    with pytest.raises(LocalProtocolError) as caught:
        SOCKS5Tunnel("ü" * 64, 443)
    assert str(caught.value) == f"expected a target host name that IDNA can encode, got {'ü' * 64!r}"


def test_proxy_credentials_refused_by_name() -> None:
    cases = [
        (lambda: SOCKS5Tunnel("h", 1, password="p"), "a proxy password was given without a user name"),
        (lambda: SOCKS5Tunnel("h", 1, username="", password="p"), "expected a non-empty SOCKS5 user name"),
        (lambda: HTTPConnectTunnel("h", 1, username="a:b", password="p"),
         "an HTTP proxy user name cannot contain ':' (Basic authentication)"),
    ]
    for make, message in cases:
        with pytest.raises(LocalProtocolError) as caught:
            make()
        assert str(caught.value) == message


def test_the_connect_answer_must_be_2xx_and_garbage_is_shown_to_60_bytes() -> None:
    tunnel = HTTPConnectTunnel("example.com", 443)
    assert tunnel.response is None
    assert connect_refused(b"HTTP/1.1 300 Multiple Choices\r\n\r\n").endswith(": 300 Multiple Choices")
    garbage = b"G" * 61 + b"\r\n\r\n"
    message = connect_refused(garbage)
    assert message.endswith(f"expected an HTTP response, got {garbage[:60]!r}")


def test_bytes_after_the_tunnels_eof_are_refused_with_60_of_them() -> None:
    tunnel = HTTPConnectTunnel("example.com", 443)
    assert tunnel.eof is False and tunnel.established is False
    tunnel.start()
    assert tunnel.receive_data(b"HTTP/1.1 200 OK\r\n\r\n") == b""
    assert tunnel.eof is False and tunnel.established is True
    assert tunnel.receive_data(b"") == b"" and tunnel.eof is True
    late = bytes(range(61))
    with pytest.raises(LocalProtocolError) as caught:
        tunnel.receive_data(late)
    assert str(caught.value) == f"cannot receive data after EOF, got {late[:60]!r}"


# -- stack.py --------------------------------------------------------------------------------------------------


class Recorder:
    """A pass-through Layer that records what comes up and says ``<eof>`` when the stream below ends.

    ``ends_on``: bytes after which this layer's own stream has ended (as TLS after a close_notify),
    though the one below goes on; what follows them is dropped.
    """

    def __init__(self, ends_on: bytes | None = None) -> None:
        self.got: list[bytes] = []
        self.ends_on = ends_on
        self._eof = False
        self._out: list[bytes] = []

    def start(self) -> None:
        pass

    def receive_data(self, data: bytes) -> bytes:
        self.got.append(data)
        if self._eof:
            return b""
        if not data:
            self._eof = True
            return b"<eof>"
        if self.ends_on is not None and data.endswith(self.ends_on):
            self._eof = True
        return data

    def send(self, data: bytes) -> None:
        self._out.append(data)

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    @property
    def established(self) -> bool:
        return True

    @property
    def eof(self) -> bool:
        return self._eof


def test_the_end_of_a_layers_stream_goes_up_once_through_every_layer() -> None:
    bottom, middle, top = Recorder(ends_on=b"END"), Recorder(), Recorder()
    stack = StreamStack([bottom, middle, top])
    assert stack.receive_data(b"abc") == b"abc"
    # The bottom layer's stream ends (TCP goes on): the layers above get its last bytes, then one EOF,
    # and each says <eof> once.
    assert stack.receive_data(b"xEND") == b"xEND<eof><eof>"  # the middle says <eof>, then the top
    assert stack.receive_data(b"more") == b""
    assert stack.receive_data(b"") == b""
    assert bottom.got == [b"abc", b"xEND", b"more", b""]
    assert middle.got == [b"abc", b"xEND", b""]
    assert top.got == [b"abc", b"xEND", b"<eof>", b""]
    assert stack.eof
    # The middle layer's stream ends: the top one gets its EOF once, whatever comes below after it.
    bottom, middle, top = Recorder(), Recorder(ends_on=b"END"), Recorder()
    stack = StreamStack([bottom, middle, top])
    assert stack.receive_data(b"xEND") == b"xEND<eof>"
    assert stack.receive_data(b"more") == b""
    assert top.got == [b"xEND", b""]
    assert stack.eof


def test_a_plain_stack_ends_at_tcp_eof_and_refuses_bytes_after_it() -> None:
    stack = StreamStack()
    assert stack.eof is False
    assert stack.receive_data(b"") == b"" and stack.eof is True
    late = bytes(range(61))
    with pytest.raises(LocalProtocolError) as caught:
        stack.receive_data(late)
    assert str(caught.value) == f"cannot receive data after TCP EOF: expected nothing more, got {late[:60]!r}"


# -- tls.py: plaintext of several records, and what a failed connection says ----------------------------------


def tls_connected(tls_files: TLSFiles) -> tuple[TLSLayer, MemoryTLSServer]:
    """A TLSLayer to "localhost" and an in-memory server, their handshake done."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls_files.certfile, tls_files.keyfile)
    client, server = TLSLayer(make_ssl_context(tls_files.cafile), "localhost"), MemoryTLSServer(context)
    client.start()
    while not (client.established and server.handshake_done):
        server.receive_data(client.data_to_send())
        if reply := server.data_to_send():
            client.receive_data(reply)
    return client, server


@pytest.mark.parametrize("size", [16384, 16385, 20000, 40000])
def test_several_records_in_one_read_give_all_their_plaintext(tls_files: TLSFiles, size: int) -> None:
    client, server = tls_connected(tls_files)
    sent = bytes(random.Random(size).getrandbits(8) for _ in range(size))
    server.send(sent)  # records of at most 16 KiB: one, two, two and three of them
    assert client.receive_data(server.data_to_send()) == sent


def test_a_failed_handshake_names_openssls_reason_and_words(tls_files: TLSFiles) -> None:
    client = TLSLayer(make_ssl_context(tls_files.cafile), "localhost")
    client.start()
    client.data_to_send()
    with pytest.raises(TLSError) as caught:
        client.receive_data(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    cause = caught.value.__cause__
    assert isinstance(cause, ssl.SSLError) and cause.reason
    assert str(caught.value) == (
        f"TLS handshake with 'localhost' failed: {cause.reason} ({cause}); "
        "expected a TLS server's reply, got b'HTTP/1.1 400 Bad Request\\r\\n\\r\\n'"
    )


def test_after_a_broken_record_sending_and_closing_raise_tls_errors(tls_files: TLSFiles) -> None:
    client, server = tls_connected(tls_files)
    server.send(b"secret payload")
    record = bytearray(server.data_to_send())
    record[-1] ^= 0xFF  # the authentication tag broken
    with pytest.raises(TLSError):
        client.receive_data(bytes(record))
    with pytest.raises(TLSError) as caught:
        client.send(b"more")
    cause = caught.value.__cause__
    assert isinstance(cause, ssl.SSLError)
    # An error without OpenSSL's reason (here, an EOF error) is shown in its own words only.
    detail = f"{cause.reason} ({cause})" if cause.reason else str(cause)
    assert str(caught.value) == f"TLS connection with 'localhost' failed: {detail}"
    with pytest.raises(TLSError, match=r"^TLS connection with 'localhost' failed: "):
        client.close()


def test_a_tls_layer_starts_neither_established_nor_at_eof(tls_files: TLSFiles) -> None:
    client = TLSLayer(make_ssl_context(tls_files.cafile), "localhost")
    assert client.established is False and client.eof is False


@pytest.mark.parametrize(("host", "why"), [
    (".example.com", "encoding with 'idna' codec failed (UnicodeError: label empty or too long)"),
    ("a\x00b.example", "argument must be encoded string without null bytes, not str"),
])
def test_a_host_name_tls_cannot_send_is_a_local_error_naming_it(host: str, why: str) -> None:
    with pytest.raises(LocalProtocolError) as caught:
        TLSLayer(make_ssl_context(), host)
    assert str(caught.value) == f"cannot start TLS to {host!r}: {why}"


def test_each_refused_ssl_context_is_named_in_its_own_words(tls_files: TLSFiles) -> None:
    def refusal_of(context: object, host: str = "localhost") -> str:
        with pytest.raises(LocalProtocolError) as caught:
            TLSLayer(context, host)  # type: ignore[arg-type]
        return str(caught.value)

    assert refusal_of("a context") == "expected an ssl.SSLContext, got str"
    assert refusal_of(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)) == (
        "expected a client-side ssl.SSLContext (for example from make_ssl_context()), "
        "got one made with PROTOCOL_TLS_SERVER"
    )
    unverified = make_ssl_context(tls_files.cafile)
    unverified.check_hostname = False
    assert refusal_of(unverified) == (
        "the ssl.SSLContext has check_hostname == False: host name checking cannot be turned off; "
        "to trust a private CA pass its certificate as make_ssl_context(cafile=...)"
    )
    unverified.verify_mode = ssl.CERT_NONE
    assert refusal_of(unverified) == (
        "the ssl.SSLContext has verify_mode == CERT_NONE: certificate verification cannot be "
        "turned off; to trust a private CA pass its certificate as make_ssl_context(cafile=...)"
    )
    assert refusal_of(make_ssl_context(tls_files.cafile), "") == (
        "expected a server host name for TLS (SNI), got an empty one"
    )


def test_a_ca_file_that_cannot_be_loaded_is_named_with_the_reason(tmp_path: Path) -> None:
    missing, garbage = tmp_path / "nope.pem", tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(LocalProtocolError) as caught:
        make_ssl_context(missing)
    assert str(caught.value) == (
        f"expected a readable PEM CA file at {str(missing)!r}, could not load it: No such file or directory"
    )
    with pytest.raises(LocalProtocolError) as caught:
        make_ssl_context(garbage)
    cause = caught.value.__cause__
    assert isinstance(cause, ssl.SSLError)
    assert str(caught.value) == f"expected a readable PEM CA file at {str(garbage)!r}, could not load it: {cause}"


# -- refusal.py: reading a page --------------------------------------------------------------------------------


def test_the_first_title_of_a_page_is_its_title_wherever_it_starts() -> None:
    assert page_title(b"<title>Login</title>") == "Login"  # at the very first byte
    assert page_title(b"<title>Login</title><svg><title>icon</title></svg>") == "Login"
    assert page_title(b"<p>a stray </title> here</p><title>Login</title>") == "Login"


def test_a_page_is_told_from_engineio_by_its_first_byte_and_its_content_type() -> None:
    def page(body: bytes, content_type: str | None = None) -> bool:
        headers = () if content_type is None else (("content-type", content_type),)
        return is_page(HTTPResponse(200, "OK", headers, body))

    assert not page(b'0{"sid":"S1"}', "text/html")  # Engine.IO, whatever its type says
    assert not page(b"X<html>")  # a page starts with "<" (after blanks and a byte order mark)
    assert page(b"\xef\xbb\xbf\r\n\t <html>")
    assert page(b"Welcome", "text/html; charset=UTF-8; profile=x")
    assert not page(b"Welcome", "text/plain; charset=UTF-8")


def test_an_unexpected_page_keeps_an_excerpt_of_its_body() -> None:
    body = b"<html><title>Sign in</title>\n<body>Please\tlog in</body></html>"
    error = unexpected_page(HTTPResponse(200, "OK", (), body), "the handshake", "HTTP 200")
    assert isinstance(error, UnexpectedPageError)
    assert error.body_excerpt == "<html><title>Sign in</title> <body>Please log in</body></html>"


def test_a_title_that_is_not_utf8_is_read_with_replacement_characters() -> None:
    assert page_title(b"<title>Caf\xe9 \xff</title>") == "Caf\ufffd \ufffd"


@pytest.mark.parametrize(("status", "redirect"), [
    (299, False), (300, True), (301, True), (304, False), (305, True), (399, True), (400, False),
])
def test_every_3xx_but_304_is_a_redirect(status: int, redirect: bool) -> None:
    response = HTTPResponse(status, "", (("location", "/elsewhere/"),), b"<p>Moved</p>")
    error = refusal(response, "the handshake", 200)
    assert isinstance(error, RedirectError) is redirect
    assert error.body_excerpt == "<p>Moved</p>"
    if redirect:
        assert str(error) == (
            f"expected HTTP 200 for the handshake, got HTTP {status} redirecting to '/elsewhere/': the service "
            "moved; redirects are not followed (point server= at the new address if you trust it)"
        )


def test_a_rate_limit_keeps_an_excerpt_of_its_body() -> None:
    error = refusal(HTTPResponse(429, "", (), b"Slow down,\r\n  please"), "the handshake", 200)
    assert isinstance(error, RateLimitedError) and error.body_excerpt == "Slow down, please"


def test_a_retry_after_date_in_another_zone_counts_its_offset() -> None:
    error = refusal(HTTPResponse(429, "", (("retry-after", "Sun, 06 Nov 1994 09:51:07 +0100"),
                                           ("date", "Sun, 06 Nov 1994 08:49:37 GMT")), b""), "the handshake", 200)
    assert isinstance(error, RateLimitedError) and error.retry_after == 90.0


def test_a_cloudflare_page_without_a_title_is_a_challenge_named_without_one() -> None:
    body = b"<html><body>Checking your browser before accessing. Cloudflare Ray ID: 1</body></html>"
    error = refusal(HTTPResponse(403, "Forbidden", (("cf-mitigated", "challenge"),), body), "the handshake", 200)
    assert isinstance(error, ChallengeError)
    assert (error.title, error.body_excerpt) == (None, body.decode())
    assert str(error) == (
        "Cloudflare blocked the handshake: expected HTTP 200, got HTTP 403 Forbidden with a Cloudflare challenge "
        "page; only a browser-like client gets through (try the curl backend)"
    )


def test_a_plain_refusal_keeps_its_status() -> None:
    error = refusal(HTTPResponse(503, "Service Unavailable", (), b"down"), "the handshake", 200)
    assert type(error) is HandshakeError and (error.status, error.body_excerpt) == (503, "down")


# -- browser.py: Sec-Fetch-Site, and a header the order does not name -------------------------------------------


@pytest.mark.parametrize(("origin", "server", "site"), [
    ("http://labs.test", "http://www.labs.test", "same-site"),
    ("http://labs.test:80", "http://labs.test/", "same-origin"),  # http's default port
    ("https://labs.perplexity.ai", "http://labs.test", "cross-site"),
])
def test_a_polling_request_says_how_its_origin_and_server_are_related(origin: str, server: str, site: str) -> None:
    client = LabsClient(ClientConfig(server=server, origin=origin, transport="polling"), rng=random.Random(0))
    harness = Harness(client)
    client.connect(0.0)
    assert f"\r\nSec-Fetch-Site: {site}\r\n".encode() in harness.take(1)


@pytest.mark.parametrize(("origin", "server", "site"), [
    ("https://labs.perplexity.ai.", "https://www.perplexity.ai", "same-site"),  # a fully qualified name
    ("https://labs.perplexity.ai", "https://www.other.ai", "cross-site"),  # the last label alone is no site
    ("https://perplexity.ai", "https://www.perplexity.ai", "same-site"),
    ("http://:3000/", "http://:8000/", "cross-site"),  # no host: no site
])
def test_the_site_is_the_last_two_labels_of_a_host(origin: str, server: str, site: str) -> None:
    assert fetch_site(origin, server) == site


def test_a_header_the_order_does_not_name_goes_last() -> None:
    headers = CHROME.fetch_headers(host="labs.test", origin="http://labs.test", server="http://labs.test",
                                   session_headers=[("X-Trace", "1"), ("Origin", "http://labs.test")])
    assert headers[-1] == ("X-Trace", "1")
    assert ("Origin", "http://labs.test") in headers[:-1]


# -- trace.py: the header says how the session was started, and redaction leaks no value --------------------


def test_a_trace_header_gives_back_every_option_it_was_made_from() -> None:
    config = ClientConfig(
        server="http://labs.test", transport="polling", origin="http://page.test", jwt="jwt-1", version="9.9",
        path="/sio/", user_agent="Agent/1", browser=CHROME_131, connect_timeout=3.0, first_text_timeout=None,
        query_timeout=7.5, headers=(("X-Trace", "1"), ("Authorization", "Bearer secret")),
        accept_encoding=False, permessage_deflate=False,
    )
    header = config_header(config, model="sonar", messages=[{"role": "user", "content": "café"}], seed=5)
    line = TraceRecorder(header).lines()[0]
    assert '"messages":[{"role":"user","content":"café"}]' in line  # compact, and not ASCII-escaped
    again = parse_header(line).client_config()
    for name in ("server", "transport", "origin", "jwt", "version", "path", "user_agent", "browser",
                 "connect_timeout", "first_text_timeout", "query_timeout", "accept_encoding", "permessage_deflate"):
        assert getattr(again, name) == getattr(config, name), name
    assert again.headers == (("X-Trace", "1"), ("Authorization", "[redacted]"))
    plain = config_header(ClientConfig(server="http://labs.test", browser=None), messages="hi", seed=5)
    assert plain["browser"] is None and parse_header(json.dumps(plain)).client_config().browser is None


def test_a_signed_in_ask_trace_names_its_cookies_and_mode_but_no_value() -> None:
    config = ClientConfig(service="perplexity", server="http://ask.test", session_token="tok=en", mode="copilot",
                          cookies_txt=".perplexity.ai\tTRUE\t/\tTRUE\t0\tcf\tv=1=2\n")
    header = config_header(config, messages="hi", seed=1)
    assert (header["cookies"], header["mode"]) == (["cf", SESSION_COOKIE], "copilot")
    assert "tok=en" not in json.dumps(header) and "v=1=2" not in json.dumps(header)
    again = parse_header(json.dumps(header)).client_config()
    assert again.mode == "copilot"
    assert signed_in_cookie(again) == f"cf=[redacted]; {SESSION_COOKIE}=[redacted]"
    labs = config_header(ClientConfig(server="http://labs.test", session_token="tok"), messages="hi", seed=1)
    assert "cookies" not in labs and "mode" not in labs


@pytest.mark.parametrize(("name", "value", "redacted"), [
    ("Cookie", "session=abc=def; theme=dark;  bare", "session=[redacted]; theme=[redacted];  [redacted]"),
    ("Set-Cookie", "id=a=b; Path=/; HttpOnly", "id=[redacted]; Path=/; HttpOnly"),
    ("Set-Cookie", "opaque; Path=/", "[redacted]; Path=/"),
    ("Authorization", "Basic dXNlcjpwYXNz", "[redacted]"),
    ("cookie", "a=\u2603", "a=[redacted]"),  # not Latin-1: read with a replacement, still redacted
    ("X-Api", "v", "v"),
    ("X-\u2603", "v", "v"),
    ("Cookie", "", ""),
])
def test_a_sensitive_header_keeps_names_and_attributes_and_loses_every_value(
    name: str, value: str, redacted: str
) -> None:
    assert redact_header_value(name, value) == redacted


def test_redaction_reads_past_a_chunked_body_with_extensions_and_trailers() -> None:
    body = b"20;a=1;b=2\r\n" + b"x" * 32 + b"\r\n0\r\nX-Trailer: 1\r\n\r\n"  # (hex: 32 bytes)
    first = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body
    second = b"HTTP/1.1 200 OK\r\nSet-Cookie: s=secret\r\nContent-Length: 0\r\n\r\n"
    (record,) = redact_records([TraceRecord(0.0, 1, "in", first + second)])
    assert record.data == first + second.replace(b"secret", b"[redacted]")
    bare = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"  # no trailers
    (record,) = redact_records([TraceRecord(0.0, 1, "in", bare + second)])
    assert record.data == bare + second.replace(b"secret", b"[redacted]")


def test_a_redaction_lands_in_the_record_where_the_value_starts() -> None:
    head = b"GET / HTTP/1.1\r\nCookie: a=1\r\nAuthorization: x\r\nProxy-Authorization: y\r\n\r\n"
    cut = head.index(b"a=1")  # the second record starts with the first value
    records = [TraceRecord(0.0, 1, "out", head[:cut]), TraceRecord(0.1, 1, "out", head[cut:])]
    redacted = redact_records(records)
    assert [r.data for r in redacted] == [
        head[:cut],
        b"a=[redacted]\r\nAuthorization: [redacted]\r\nProxy-Authorization: [redacted]\r\n\r\n",
    ]


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("dir", 1, "'in' or 'out' in 'dir', got 1"),
    ("b64", 5, "base64 data in 'b64', got 5"),
    ("t", "0", "a time in seconds in 't', got '0'"),
])
def test_a_record_field_of_the_wrong_kind_is_named_with_its_line(field: str, value: object, expected: str) -> None:
    record = {"t": 0, "stream": 1, "dir": "in", "b64": ""} | {field: value}
    header = json.dumps({"plabs_trace": 1, "server": "http://labs.test", "transport": "polling",
                         "model": "sonar", "messages": [], "seed": 1})
    with pytest.raises(TraceError) as caught:
        next(read_trace([header, "", json.dumps(record)])[1])
    assert str(caught.value) == f"trace line 3: expected {expected}"


def test_record_times_are_kept_to_the_microsecond_from_the_first_chunk() -> None:
    recorder = TraceRecorder(make_header(messages="hi"))
    recorder(1.0, 1, "out", b"a")
    recorder(1.12345678, 1, "in", b"b")
    assert [record.t for record in recorder.records] == [0.0, 0.123457]


# -- trace.py: a replay starts at t = 0 with the trace's model, and fires each deadline when it passes ---------

DATA = Path(__file__).resolve().parent / "data"
ASK_ANSWER_FRAME = {
    "backend_uuid": "b-1", "read_write_token": "rw-1", "thread_url_slug": "s-1", "status": "COMPLETED",
    "final": True, "display_model": "pplx_pro",
    "blocks": [{"intended_usage": "ask_text", "markdown_block": {"chunks": ["Yes."], "chunk_starting_offset": 0}}],
}


def out_bytes(records: list[TraceRecord]) -> dict[int, bytes]:
    sent: dict[int, bytes] = {}
    for record in records:
        if record.direction == "out":
            sent[record.stream] = sent.get(record.stream, b"") + record.data
    return sent


def test_a_replayed_ask_writes_the_model_of_its_trace() -> None:
    """An ask traced with a model that is not the default replays the same request bytes."""
    config = ClientConfig(server="http://pplx.test", service="perplexity", browser=None)
    recorder = TraceRecorder(config_header(config, model="pplx_pro", messages="Hello", seed=4))
    live = PerplexityClient(config, rng=random.Random(4), tracer=recorder)
    live.connect(0.0)
    live.query("Hello", model="pplx_pro", now=0.0)
    live.transmit()
    live.receive_data(1, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", 0.1)
    live.transmit()
    body = f"event: message\r\ndata: {json.dumps(ASK_ANSWER_FRAME)}\r\n\r\nevent: end_of_stream\r\ndata: {{}}\r\n\r\n"
    live.receive_data(
        1, b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n%s"
        % (len(body), body.encode()), 0.2,
    )
    live.close(0.3)
    live.transmit()
    lines = recorder.lines()
    assert b'"model_preference":"pplx_pro"' in out_bytes(recorder.records)[1]
    replayed = TraceRecorder({})
    events = list(replay(lines, tracer=replayed))
    assert [event.text for event in events if isinstance(event, AnswerFinished)] == ["Yes."]
    assert out_bytes(replayed.records) == out_bytes(list(read_trace(lines)[1]))


def with_timeout(lines: list[str], name: str, seconds: float) -> list[str]:
    header = json.loads(lines[0])
    header["timeouts"] = {**header["timeouts"], name: seconds}
    return [json.dumps(header), *lines[1:]]


def first_in(lines: list[str]) -> float:
    return min(record.t for record in read_trace(lines)[1] if record.direction == "in")


@pytest.mark.parametrize("trace", ["emulator_trace.jsonl", "perplexity_emulator_trace.jsonl"])
@pytest.mark.parametrize("name", ["connect", "first_text"])
def test_a_deadline_that_passes_at_the_first_bytes_fires_before_they_are_read(trace: str, name: str) -> None:
    """The client connects and queries at t = 0: a deadline equal to the first reply's time fires first."""
    lines = (DATA / trace).read_text(encoding="utf-8").splitlines()
    at = first_in(lines)
    assert 0 < at < 1  # within the first second, so t = 1 for t = 0 would show
    before = sum(len(r.data) for r in read_trace(lines)[1] if r.direction == "out" and r.t < at)
    written = TraceRecorder({})
    with pytest.raises(LabsTimeout, match=rf"within {re.escape(str(at))} s"):
        list(replay(with_timeout(lines, name, at), tracer=written))
    assert sum(len(r.data) for r in written.records if r.direction == "out") == before  # the reply was never read
    # One microsecond later the deadline has not passed at the reply: it is read and answered (a later
    # reply may still come too late).
    written = TraceRecorder({})
    with contextlib.suppress(LabsTimeout):
        list(replay(with_timeout(lines, name, at + 1e-6), tracer=written))
    assert sum(len(r.data) for r in written.records if r.direction == "out") > before


# -- trace.py: what a bad header says, with the line it is on ------------------------------------------------

GOOD_HEADER = {"plabs_trace": 1, "server": "http://labs.test", "transport": "polling", "model": "sonar",
               "messages": [], "seed": 1}


@pytest.mark.parametrize(("change", "expected"), [
    ({"server": 5}, "expected the server URL in 'server', got 5"),
    ({"transport": 5}, "expected the transport in 'transport', got 5"),
    ({"model": None}, "expected the model in 'model', got None"),
    ({"messages": {}}, "expected a list of messages in 'messages', got {}"),
    ({"origin": 1}, "expected a string in 'origin', got 1"),
    ({"browser": 7}, f"expected a browser profile among {', '.join(sorted(PROFILES))} or null in 'browser', got 7"),
    ({"browser": "lynx"},
     f"expected a browser profile among {', '.join(sorted(PROFILES))} or null in 'browser', got 'lynx'"),
    ({"accept_encoding": "yes"}, "expected true or false in 'accept_encoding', got 'yes'"),
    ({"headers": "X-A: 1"}, "expected a list of [name, value] pairs in 'headers', got 'X-A: 1'"),
    ({"headers": [["X-A"]]}, "expected [name, value] pairs in 'headers', got ['X-A']"),
    ({"headers": [("X-A", 1)]}, "expected [name, value] pairs in 'headers', got ['X-A', 1]"),
    ({"timeouts": []}, "expected an object of timeouts in 'timeouts', got []"),
    ({"timeouts": {"read": 1}}, "expected timeouts among connect, first_text, query, got 'read'"),
    ({"timeouts": {"connect": True}}, "expected timeout 'connect' in seconds or null, got True"),
    ({"plabs_trace": 2}, "expected trace format version 1, got 2"),
])
def test_a_bad_header_field_is_named_with_its_line(change: dict[str, object], expected: str) -> None:
    """The header is the first line that is not blank: its number is the one named."""
    with pytest.raises(TraceError) as caught:
        read_trace(["", "  ", json.dumps(GOOD_HEADER | change)])
    assert str(caught.value) == f"trace line 3: {expected}"


def test_a_header_that_is_not_one_shows_60_characters_of_itself() -> None:
    listed = json.dumps(list(range(40)))  # JSON, but no object
    unmarked = json.dumps({"server": "http://labs.test/" + "x" * 60})  # an object, but no trace header
    with pytest.raises(TraceError) as caught:
        read_trace([listed])
    assert str(caught.value) == f"trace line 1: expected a JSON object, got {listed[:60]!r}"
    with pytest.raises(TraceError) as caught:
        read_trace([unmarked])
    assert str(caught.value) == (
        f"trace line 1: expected a plabs trace header (a 'plabs_trace' key), got {unmarked[:60]!r}"
    )
    with pytest.raises(TraceError) as caught:
        read_trace(["", " "])
    assert str(caught.value) == "trace line 1: expected a plabs trace header, got an empty trace"


def test_a_cookie_name_may_use_every_character_a_cookie_name_may_hold() -> None:
    allowed = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"(),/:;<=>?@[\\]{}')
    header = GOOD_HEADER | {"service": "perplexity", "transport": "upgrade", "cookies": [allowed]}
    assert read_trace([json.dumps(header)])[0].cookies == (allowed,)
    with pytest.raises(TraceError, match=r"expected cookie names in 'cookies', got 'a;b'"):
        read_trace([json.dumps(header | {"cookies": ["a;b"]})])


# -- trace.py: redaction reads heads where HTTP has them, and nowhere else --------------------------------------

LOOKALIKE = b"x 200 OK\r\nSet-Cookie: s=body\r\nCookie: c=body\r\n\r\n"  # frame or body bytes shaped like a head


@pytest.mark.parametrize(("direction", "data", "redacted"), [
    # after an upgrade request or a 101, the bytes are WebSocket frames
    ("out", b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nCookie: a=1\r\n\r\n\x81\x1d" + LOOKALIKE,
     b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nCookie: a=[redacted]\r\n\r\n\x81\x1d" + LOOKALIKE),
    ("in", b"HTTP/1.1 101 Switching Protocols\r\nSet-Cookie: a=1\r\n\r\n\x81\x1d" + LOOKALIKE,
     b"HTTP/1.1 101 Switching Protocols\r\nSet-Cookie: a=[redacted]\r\n\r\n\x81\x1d" + LOOKALIKE),
    # a 304 has no body: the next response's head follows at once
    ("in", b"HTTP/1.1 304 Not Modified\r\n\r\nHTTP/1.1 200 OK\r\nSet-Cookie: b=2\r\nContent-Length: 0\r\n\r\n",
     b"HTTP/1.1 304 Not Modified\r\n\r\nHTTP/1.1 200 OK\r\nSet-Cookie: b=[redacted]\r\nContent-Length: 0\r\n\r\n"),
    # two requests on one connection, the first with a body that looks like a head
    ("out", b"POST /a HTTP/1.1\r\nContent-Length: 48\r\n\r\n" + LOOKALIKE + b"POST /b HTTP/1.1\r\nCookie: c=3\r\n\r\n",
     b"POST /a HTTP/1.1\r\nContent-Length: 48\r\n\r\n" + LOOKALIKE + b"POST /b HTTP/1.1\r\nCookie: c=[redacted]\r\n\r\n"),
    # values without a space after the colon, or starting and ending in other letters, go whole
    ("out", b"GET / HTTP/1.1\r\nAuthorization:Basic abc\r\nAuthorization: Xtok X\r\n\r\n",
     b"GET / HTTP/1.1\r\nAuthorization:[redacted]\r\nAuthorization: [redacted]\r\n\r\n"),
    # a value holding a colon; a body that runs to end of file; a status line without a reason; no HTTP at all
    ("out", b"GET / HTTP/1.1\r\nCookie: u=http://x\r\n\r\n", b"GET / HTTP/1.1\r\nCookie: u=[redacted]\r\n\r\n"),
    ("in", b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + LOOKALIKE,
     b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + LOOKALIKE),
    ("in", b"HTTP/1.1 204\r\n\r\nHTTP/1.1 200 OK\r\nSet-Cookie: b=2\r\nContent-Length: 0\r\n\r\n",
     b"HTTP/1.1 204\r\n\r\nHTTP/1.1 200 OK\r\nSet-Cookie: b=[redacted]\r\nContent-Length: 0\r\n\r\n"),
    ("in", b"NONSENSE\r\nSet-Cookie: a=1\r\n\r\n" + LOOKALIKE, b"NONSENSE\r\nSet-Cookie: a=[redacted]\r\n\r\n" + LOOKALIKE),
    # a head cut short at an empty value (a trace that ends mid-request)
    ("out", b"GET / HTTP/1.1\r\nCookie: a=1\r\nCookie:", b"GET / HTTP/1.1\r\nCookie: a=[redacted]\r\nCookie:"),
])
def test_redaction_touches_header_values_and_never_bytes_that_only_look_like_them(
    direction: str, data: bytes, redacted: bytes
) -> None:
    assert len(LOOKALIKE) == 48
    [record] = redact_records([TraceRecord(0.0, 1, direction, data)])
    assert record.data == redacted


# -- headers.py: the Cookie header, the page a request comes from, the plain header set ----------------------

PPLX = "https://www.perplexity.ai"


def test_the_sessions_cookies_come_first_and_the_servers_replace_those_of_the_same_name() -> None:
    jar = CookieJar()
    jar.remember([("set-cookie", "b=server; Path=/"), ("set-cookie", "c=x=y; Secure")])
    assert jar.as_dict() == {"b": "server", "c": "x=y"}  # a value may hold "="
    assert jar.header("a=1;b=mine ; d==q; ") == "a=1; b=server; d==q; c=x=y"
    jar.remember([("set-cookie", "d=server")])
    assert jar.header("d==q") == "d=server; b=server; c=x=y"  # the name ends at the first "="
    assert CookieJar().header("") is None and CookieJar().header(" ; ") is None
    assert CookieJar().header("a=1") == "a=1"


def sec_fetch_site(session_headers: tuple[tuple[str, str], ...]) -> str:
    """The Sec-Fetch-Site of a Chrome request to www.perplexity.ai from a client whose ``origin`` is Labs's."""
    headers = RequestHeaders(ClientConfig(server=PPLX), "www.perplexity.ai", CookieJar()).request(session_headers)
    return dict(headers)["Sec-Fetch-Site"]


@pytest.mark.parametrize(("session_headers", "site"), [
    ((("Origin", PPLX),), "same-origin"),
    ((("Referer", PPLX + "/search/x"),), "same-origin"),
    ((("Referer", "https://evil.test/"), ("Origin", PPLX)), "same-origin"),  # the Origin wins
    ((("Referer", "https:search/x"),), "same-site"),  # no host: the client's origin (labs.perplexity.ai)
    ((), "same-site"),
])
def test_the_page_a_request_comes_from_is_the_sessions_origin_else_its_referers(
    session_headers: tuple[tuple[str, str], ...], site: str
) -> None:
    assert sec_fetch_site(session_headers) == site


def test_a_profiles_headers_follow_each_input_from_request_to_request() -> None:
    # The profile's headers are made once per set of inputs and remembered: each input still shows.
    jar = CookieJar()
    one = RequestHeaders(ClientConfig(server=PPLX), "www.perplexity.ai", jar)
    origin = (("Origin", PPLX),)
    before = one.request(origin)
    assert "cookie" not in {name.lower() for name, _ in before}
    assert one.request(origin) == before
    jar.remember([("set-cookie", "a=1")])
    assert [value for name, value in one.request(origin) if name == "Cookie"] == ["a=1"]
    jar.remember([("set-cookie", "a=2")])
    assert [value for name, value in one.request(origin) if name == "Cookie"] == ["a=2"]
    assert ("Content-Length", "7") in one.request(origin, 7) and ("Content-Length", "8") in one.request(origin, 8)
    other = RequestHeaders(ClientConfig(server=PPLX, headers=(("X-A", "1"),)), "other.test", CookieJar())
    assert ("Host", "other.test") in other.request(origin) and ("X-A", "1") in other.request(origin)
    assert ("Host", "www.perplexity.ai") in one.request(origin) and ("X-A", "1") not in one.request(origin)
    sent = one.request(origin)
    sent.append(("X-Mine", "changed"))  # a caller's change to the list it got is its own
    assert ("X-Mine", "changed") not in one.request(origin)


@pytest.mark.parametrize("browser", [None, CHROME])
def test_the_sessions_cookies_and_the_jars_go_out_in_one_cookie_header(browser: object) -> None:
    jar = CookieJar()
    jar.remember([("set-cookie", "a=1")])
    headers = RequestHeaders(ClientConfig(server=PPLX, browser=browser), "www.perplexity.ai", jar)  # type: ignore[arg-type]
    for session_headers in (
        (("Cookie", "t=T"), ("Cookie", "u=U")),
        (("Origin", PPLX), ("cookie", "t=T; u=U")),
    ):
        sent = headers.request(session_headers)
        assert [value for name, value in sent if name.lower() == "cookie"] == ["t=T; u=U; a=1"]
        assert ("Origin", PPLX) in sent or session_headers[0][0] != "Origin"  # the session's other headers stay


def test_the_plain_headers_of_a_request_and_of_an_upgrade() -> None:
    jar = CookieJar()
    jar.remember([("set-cookie", "a=1")])
    headers = RequestHeaders(ClientConfig(browser=None, user_agent="ua", headers=(("X-A", "1"),)), "h.test", jar)
    assert headers.request((("accept", "text/event-stream"), ("Content-Type", "application/json"))) == [
        ("Host", "h.test"), ("User-Agent", "ua"), ("accept", "text/event-stream"),
        ("Accept-Encoding", "gzip, deflate"), ("Cookie", "a=1"), ("X-A", "1"), ("Content-Type", "application/json"),
    ]
    assert headers.upgrade((("Origin", "https://o.test"),), "KEY") == [
        ("Host", "h.test"), ("User-Agent", "ua"), ("Accept", "*/*"), ("Origin", "https://o.test"),
        ("Accept-Encoding", "gzip, deflate"), ("Cookie", "a=1"), ("X-A", "1"), ("Connection", "Upgrade"),
        ("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13"), ("Sec-WebSocket-Key", "KEY"),
        ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"),
    ]


def test_a_profile_without_compression_offers_none_and_keeps_the_callers_headers() -> None:
    config = ClientConfig(server=PPLX, accept_encoding=False, headers=(("X-A", "1"),))
    headers = RequestHeaders(config, "www.perplexity.ai", CookieJar())
    for sent in (headers.request((("Origin", PPLX),)), headers.upgrade((("Origin", PPLX),), "KEY")):
        assert "Accept-Encoding" not in dict(sent)
        assert sent[-1] == ("X-A", "1")
