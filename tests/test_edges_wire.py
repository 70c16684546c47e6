"""Every limit and length encoding of the byte level, pinned at its edge (issue 19).

For each limit: the value at the limit is taken, one past it is refused, and the error names both.
For each length encoding (WebSocket 7/16/64-bit payload lengths, HTTP chunk sizes, SOCKS5 lengths):
both sides of every boundary, in both directions, checked against an independent implementation of
the peer (wsproto's server side, socksio's wire format as RFC 1928/1929 spell it) or byte for byte.
"""

from __future__ import annotations

import json
import random
import struct
import tracemalloc
import zlib
from typing import Any

import pytest
from peer import ClientFrames, ws_frame
from wsproto.frame_protocol import CloseReason, FrameProtocol, Opcode

from plabs_proto.errors import (
    HandshakeError,
    LocalProtocolError,
    ProxyError,
    RateLimitedError,
    RedirectError,
    RemoteProtocolError,
    TLSError,
    UnexpectedPageError,
)
from plabs_proto.jsondepth import MAX_DEPTH, check_depth, too_deep
from plabs_proto.refusal import SCAN, clean, is_page, page_title, refusal, retry_after_seconds
from plabs_proto.wire.headers import CookieJar
from plabs_proto.wire.http import BodyDecoder, HTTPChannel, HTTPResponse
from plabs_proto.wire.proxy import HTTPConnectTunnel, SOCKS5Tunnel
from plabs_proto.wire.tls import TLSLayer, make_ssl_context
from plabs_proto.wire.trace import TraceError, TraceRecorder, make_header, read_trace
from plabs_proto.wire.websocket import DeflateParameters, WebSocketChannel

MiB = 1 << 20


def deflated(*parts: bytes, wbits: int = -15) -> list[bytes]:
    """``parts`` compressed as one stream, cut after each part (a sync flush: each piece inflates whole)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, wbits)
    return [packer.compress(part) + packer.flush(zlib.Z_SYNC_FLUSH) for part in parts]


def gzipped(*parts: bytes) -> list[bytes]:
    """``parts`` as one gzip member, cut after each part; the last piece ends the member."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    pieces = [packer.compress(part) + packer.flush(zlib.Z_SYNC_FLUSH) for part in parts]
    pieces[-1] += packer.flush()
    return pieces


def peak_of(call: object) -> int:
    """The peak of memory traced while ``call()`` runs (it must raise RemoteProtocolError)."""
    assert callable(call)
    tracemalloc.start()
    try:
        with pytest.raises(RemoteProtocolError):
            call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak


# -- inflating: a body or message that fills its limit exactly --------------------------------------------------


def test_a_gzip_body_that_fills_the_limit_exactly_does_not_let_the_next_piece_inflate_whole() -> None:
    # zlib reads a max_length of 0 as "no limit": once the room left is 0 the next piece must
    # still be asked for one byte at most, not inflated whole (a 32 KiB piece holds 32 MiB).
    first, bomb = gzipped(b"x" * 1000, b"\0" * (32 * MiB))
    assert len(bomb) < 40_000
    decoder = BodyDecoder("gzip", limit=1000)
    assert decoder.feed(first) == b"x" * 1000  # exactly the limit: taken
    assert peak_of(lambda: decoder.feed(bomb)) < MiB
    again = BodyDecoder("gzip", limit=1000)
    again.feed(first)
    with pytest.raises(RemoteProtocolError) as caught:
        again.feed(bomb)
    assert str(caught.value) == (
        "expected an HTTP response body of at most 1000 bytes (max_body) once inflated, "
        "got a gzip body that inflates to more than that"
    )


def test_a_deflate_body_at_the_limit_then_one_byte_more() -> None:
    for wbits in (zlib.MAX_WBITS, -zlib.MAX_WBITS):  # zlib-wrapped and raw deflate
        packer = zlib.compressobj(9, zlib.DEFLATED, wbits)
        body = packer.compress(b"y" * 500) + packer.flush()
        assert BodyDecoder("deflate", limit=500).feed(body) == b"y" * 500
        with pytest.raises(RemoteProtocolError, match=r"at most 499 bytes \(max_body\) once inflated"):
            BodyDecoder("deflate", limit=499).feed(body)


def test_a_compressed_websocket_fragment_is_inflated_only_up_to_the_room_left() -> None:
    # Half the limit in the first fragment, then 32 KiB that inflate to 32 MiB: stopped at the limit.
    first, bomb = deflated(b"x" * 50_000, b"\0" * (32 * MiB))
    ws = WebSocketChannel(random.Random(1), max_message_size=100_000, deflate=DeflateParameters())
    assert ws.receive_data(ws_frame(first, opcode=Opcode.TEXT, fin=False, rsv1=True)) == []
    last = ws_frame(bomb, opcode=Opcode.CONTINUATION)
    assert peak_of(lambda: ws.receive_data(last)) < 2 * MiB


def test_a_compressed_websocket_message_at_the_limit_then_one_byte_more() -> None:
    for size, fragments in ((4000, 1), (4000, 2)):
        pieces = deflated(*([b"m" * (size // fragments)] * fragments))
        pieces[-1] = pieces[-1][:-4]  # the 00 00 ff ff a sender strips
        frames = [
            ws_frame(piece, opcode=Opcode.TEXT if i == 0 else Opcode.CONTINUATION, fin=i == len(pieces) - 1,
                     rsv1=i == 0)
            for i, piece in enumerate(pieces)
        ]
        ws = WebSocketChannel(random.Random(1), max_message_size=size, deflate=DeflateParameters())
        assert ws.receive_data(b"".join(frames)) == ["m" * size]
        ws = WebSocketChannel(random.Random(1), max_message_size=size - 1, deflate=DeflateParameters())
        with pytest.raises(RemoteProtocolError) as caught:
            ws.receive_data(b"".join(frames))
        assert str(caught.value) == (
            f"expected a WebSocket message of at most {size - 1} bytes (max_message_size) once inflated, "
            "got a compressed one that inflates to more"
        )


# -- WebSocket: max_message_size ------------------------------------------------------------------------------


def too_big(limit: int, size: int) -> str:
    return (
        f"expected a WebSocket message of at most {limit} bytes (max_message_size), "
        f"got one of at least {size} bytes"
    )


@pytest.mark.parametrize("limit", [0, 1, 125, 126, 65535, 65536])
def test_a_message_of_exactly_max_message_size_is_taken_and_one_byte_more_refused(limit: int) -> None:
    for kind in (b"b", "t"):
        payload = kind * limit
        ws = WebSocketChannel(random.Random(1), max_message_size=limit)
        assert ws.receive_data(ws_frame(payload)) == [payload]
        ws = WebSocketChannel(random.Random(1), max_message_size=limit)
        with pytest.raises(RemoteProtocolError) as caught:
            ws.receive_data(ws_frame(payload + kind))
        assert str(caught.value) == too_big(limit, limit + 1)


def test_the_limit_is_checked_on_the_frame_head_before_its_payload_arrives() -> None:
    ws = WebSocketChannel(random.Random(1), max_message_size=70_000)
    with pytest.raises(RemoteProtocolError) as caught:
        ws.receive_data(ws_frame(b"z" * 70_001)[:10])  # the 64-bit length alone
    assert str(caught.value) == too_big(70_000, 70_001)
    ws = WebSocketChannel(random.Random(1), max_message_size=70_000)
    assert ws.receive_data(ws_frame(b"z" * 70_000)[:10]) == []  # at the limit: waits for the rest


@pytest.mark.parametrize("split", [1, 2, 63])
def test_a_fragmented_message_of_exactly_max_message_size_is_taken_and_one_byte_more_refused(split: int) -> None:
    limit = 126

    def frames(size: int) -> bytes:
        cut = min(split, size)
        return (
            ws_frame("a" * cut, fin=False)
            + ws_frame(b"ping", opcode=Opcode.PING)  # a control frame between fragments counts for nothing
            + ws_frame("a" * (size - cut), opcode=Opcode.CONTINUATION)
        )

    ws = WebSocketChannel(random.Random(1), max_message_size=limit)
    assert ws.receive_data(frames(limit)) == ["a" * limit]
    ws = WebSocketChannel(random.Random(1), max_message_size=limit)
    with pytest.raises(RemoteProtocolError) as caught:
        ws.receive_data(frames(limit + 1))
    assert str(caught.value) == too_big(limit, limit + 1)
    # Byte by byte, the same: the size is known from the continuation frame's head.
    ws = WebSocketChannel(random.Random(1), max_message_size=limit)
    wire = frames(limit)
    assert [m for i in range(len(wire)) for m in ws.receive_data(wire[i : i + 1])] == ["a" * limit]


def test_the_fragment_count_is_bounded_at_its_edge() -> None:
    # 1024 fragments come free; past them, one more per 64 bytes of message.
    def message(count: int, size: int) -> bytes:
        frames = [ws_frame(b"q" * size, fin=False)]
        frames += [ws_frame(b"", opcode=Opcode.CONTINUATION, fin=False)] * (count - 2)
        frames.append(ws_frame(b"", opcode=Opcode.CONTINUATION))
        return b"".join(frames)

    for count, size in ((1024, 0), (1025, 64), (1026, 128)):
        ws = WebSocketChannel(random.Random(1), max_message_size=1000)
        assert ws.receive_data(message(count, size)) == [b"q" * size]
        ws = WebSocketChannel(random.Random(1), max_message_size=1000)
        with pytest.raises(RemoteProtocolError) as caught:
            ws.receive_data(message(count + 1, size))
        assert str(caught.value) == (
            f"expected a fragmented WebSocket message in fragments of 64 bytes on average, "
            f"got {count + 1} fragments for {size} bytes"
        )


# -- WebSocket: the payload length's three encodings, both directions -----------------------------------------

LENGTHS = [0, 1, 125, 126, 127, 65535, 65536]


def length_field(n: int) -> bytes:
    """The second byte and extended length of a frame of ``n`` bytes (RFC 6455 §5.2), without the mask bit."""
    if n < 126:
        return bytes([n])
    if n < 65536:
        return bytes([126]) + struct.pack("!H", n)
    return bytes([127]) + struct.pack("!Q", n)


@pytest.mark.parametrize("n", LENGTHS)
def test_our_frames_use_the_shortest_length_encoding_at_each_boundary(n: int) -> None:
    text = "k" * n
    wire = WebSocketChannel(random.Random(1), max_message_size=10).send_text(text)
    field = length_field(n)
    assert wire[0] == 0x81
    assert wire[1] == 0x80 | field[0]  # masked
    assert wire[2 : 1 + len(field)] == field[1:]
    assert len(wire) == 1 + len(field) + 4 + n  # the mask key, then the payload
    assert ClientFrames().feed(wire) == [text]  # what wsproto's server side reads


@pytest.mark.parametrize("n", [0, 1, 124, 125])
def test_pongs_and_close_frames_at_the_control_frame_limit(n: int) -> None:
    ws = WebSocketChannel(random.Random(1), max_message_size=1000)
    assert ws.receive_data(ws_frame(b"p" * n, opcode=Opcode.PING)) == []
    pong = ws.data_to_send()
    assert pong[:2] == bytes([0x8A, 0x80 | n])
    server = FrameProtocol(client=False, extensions=[])
    server.receive_bytes(pong)
    [frame] = server.received_frames()
    assert frame.opcode is Opcode.PONG and frame.payload == b"p" * n


def test_a_ping_one_byte_past_the_control_frame_limit_is_refused() -> None:
    ws = WebSocketChannel(random.Random(1), max_message_size=1000)
    with pytest.raises(RemoteProtocolError, match="expected a valid WebSocket frame"):
        ws.receive_data(ws_frame(b"p" * 126, opcode=Opcode.PING))


@pytest.mark.parametrize(("reason", "sent"), [
    ("r" * 123, "r" * 123),
    ("r" * 124, "r" * 123),
    ("é" * 61, "é" * 61),  # 122 bytes
    ("é" * 62, "é" * 61),  # 124 bytes: cut before the character that would pass 123
    ("x" + "é" * 61, "x" + "é" * 61),  # 123 bytes
])
def test_our_close_reason_is_cut_to_123_bytes_of_whole_characters(reason: str, sent: str) -> None:
    wire = WebSocketChannel(random.Random(1), max_message_size=10).close(CloseReason.GOING_AWAY, reason)
    server = FrameProtocol(client=False, extensions=[])
    server.receive_bytes(wire)
    [frame] = server.received_frames()  # a reason cut inside a character would fail here
    assert frame.opcode is Opcode.CLOSE
    assert frame.payload == (CloseReason.GOING_AWAY, sent)


@pytest.mark.parametrize("n", LENGTHS)
def test_server_frames_at_each_length_boundary_whole_and_with_the_head_cut_anywhere(n: int) -> None:
    payload = bytes(range(256)) * (n // 256) + bytes(range(n % 256))
    wire = ws_frame(payload)
    assert wire[1:2 + len(length_field(n)) - 1] == length_field(n)
    assert WebSocketChannel(random.Random(1), max_message_size=n).receive_data(wire) == [payload]
    head = 1 + len(length_field(n))
    for cut in range(head + 1):  # every cut inside the head, and right after it
        ws = WebSocketChannel(random.Random(1), max_message_size=n)
        got = ws.receive_data(wire[:cut]) + ws.receive_data(wire[cut:])
        assert got == [payload]
    # The same length through wsproto: the first fragment of a message, then an empty last one.
    ws = WebSocketChannel(random.Random(1), max_message_size=n)
    fragmented = ws_frame(payload, fin=False) + ws_frame(b"", opcode=Opcode.CONTINUATION)
    assert ws.receive_data(fragmented[:head]) == []
    assert ws.receive_data(fragmented[head:]) == [payload]


def test_two_frames_in_one_read_each_at_a_boundary() -> None:
    frames = [ws_frame("a" * 125), ws_frame("b" * 126), ws_frame("c" * 65535), ws_frame("d" * 65536)]
    ws = WebSocketChannel(random.Random(1), max_message_size=65536)
    assert ws.receive_data(b"".join(frames)) == ["a" * 125, "b" * 126, "c" * 65535, "d" * 65536]


# -- HTTP: the body limit, chunk sizes, pieces and the head ---------------------------------------------------


def chunked(*chunks: bytes, size_text: str | None = None) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    body = b"".join(
        (size_text or f"{len(c):x}").encode("ascii") + b"\r\n" + c + b"\r\n" for c in chunks
    )
    return head + body + b"0\r\n\r\n"


def sized(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body


def got(http: HTTPChannel, data: bytes) -> HTTPResponse:
    result = http.receive_data(data)
    assert isinstance(result, HTTPResponse)
    return result


def fresh(max_body: int) -> HTTPChannel:
    http = HTTPChannel(max_body=max_body)
    http.request("GET", "/", [("Host", "x")])
    return http


@pytest.mark.parametrize("max_body", [0, 1, 100, 65536])
def test_a_body_of_exactly_max_body_is_taken_and_one_byte_more_refused(max_body: int) -> None:
    for frame in (sized, lambda body: chunked(body) if body else chunked()):
        body = b"b" * max_body
        assert got(fresh(max_body), frame(body)).body == body
        with pytest.raises(RemoteProtocolError) as caught:
            fresh(max_body).receive_data(frame(body + b"b"))
        assert str(caught.value) == (
            f"expected an HTTP response body of at most {max_body} bytes (max_body), "
            f"got at least {max_body + 1} bytes"
        )


def test_the_body_limit_counts_every_chunk() -> None:
    assert got(fresh(10), chunked(b"12345", b"67890")).body == b"1234567890"
    with pytest.raises(RemoteProtocolError, match=r"at most 10 bytes \(max_body\), got at least 11 bytes"):
        fresh(10).receive_data(chunked(b"12345", b"678901"))


def test_the_body_limit_counts_compressed_bytes_too() -> None:
    # A gzip body's compressed bytes count against max_body as well as what they inflate to.
    [body] = gzipped(bytes(random.Random(2).randbytes(300)))  # incompressible: longer than it inflates to
    head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(body)
    assert len(body) > 300
    assert len(got(fresh(len(body)), head + body).body) == 300
    with pytest.raises(RemoteProtocolError, match=rf"at most {len(body) - 1} bytes \(max_body\), got at least"):
        fresh(len(body) - 1).receive_data(head + body)


def test_a_chunk_size_of_20_hex_digits_is_read_and_21_refused() -> None:
    assert got(fresh(100), chunked(b"0123456789", size_text="0" * 19 + "a")).body == b"0123456789"
    assert got(fresh(100), chunked(b"0123456789", size_text="0" * 18 + "0A")).body == b"0123456789"
    with pytest.raises(RemoteProtocolError, match=r"expected a valid HTTP/1\.1 response, got one h11 refuses"):
        fresh(100).receive_data(chunked(b"0123456789", size_text="0" * 20 + "a"))


def test_a_chunk_announcing_more_than_max_body_is_refused_by_its_bytes() -> None:
    http = fresh(16)
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\n"
    assert http.receive_data(head + b"x" * 16) is None  # announced huge; 16 bytes came: within the limit
    with pytest.raises(RemoteProtocolError, match=r"at most 16 bytes \(max_body\), got at least 17 bytes"):
        http.receive_data(b"x")


@pytest.mark.parametrize(("count", "refused"), [(1040, False), (1041, True)])
def test_the_piece_count_is_bounded_at_its_edge(count: int, refused: bool) -> None:
    # 1024 pieces come free, then one more per 64 bytes: 1040 one-byte chunks are 1024 + 1040 // 64.
    wire = chunked(*([b"c"] * count))
    if not refused:
        assert got(fresh(10_000), wire).body == b"c" * count
        return
    with pytest.raises(RemoteProtocolError) as caught:
        fresh(10_000).receive_data(wire)
    assert str(caught.value) == (
        "expected an HTTP response body in pieces of 64 bytes on average, got 1041 pieces for 1041 bytes"
    )


def test_an_unfinished_response_head_of_64_kib_waits_and_one_byte_more_is_refused() -> None:
    start = b"HTTP/1.1 200 OK\r\nX-Long: "
    unfinished = start + b"h" * (65536 - len(start))
    assert len(unfinished) == 65536
    http = fresh(100)
    assert http.receive_data(unfinished) is None
    with pytest.raises(RemoteProtocolError) as caught:
        http.receive_data(b"h")
    assert str(caught.value) == (
        "expected an HTTP response head of at most 65536 bytes, got 65537 bytes without its end"
    )
    # At the limit the head completes and is read.
    http = fresh(100)
    assert http.receive_data(unfinished) is None
    response = got(http, b"\r\nContent-Length: 2\r\n\r\nok")
    assert response.header("x-long") == "h" * (65536 - len(start)) and response.body == b"ok"


# -- SOCKS5: user name, password and domain name lengths ------------------------------------------------------


def socks5_auth_request(user: bytes, password: bytes) -> bytes:
    """RFC 1929's request: version 1, ULEN, UNAME, PLEN, PASSWD."""
    return b"\x01" + bytes([len(user)]) + user + bytes([len(password)]) + password


def open_socks(host: str, user: str, password: str) -> tuple[SOCKS5Tunnel, bytes]:
    """A tunnel through the greeting and the method reply; returns it and its username/password request."""
    tunnel = SOCKS5Tunnel(host, 443, username=user, password=password)
    tunnel.start()
    assert tunnel.data_to_send() == b"\x05\x02\x00\x02"
    tunnel.receive_data(b"\x05\x02")
    return tunnel, tunnel.data_to_send()


@pytest.mark.parametrize(("user", "password"), [
    ("u" * 255, "p"),
    ("u", "p" * 255),
    ("u" * 255, "p" * 255),
    ("é" * 127 + "u", "é" * 127 + "p"),  # 255 bytes of UTF-8 each
    ("u", ""),
])
def test_socks5_user_names_and_passwords_of_up_to_255_bytes_go_out_whole(user: str, password: str) -> None:
    tunnel, request = open_socks("example.com", user, password)
    assert request == socks5_auth_request(user.encode(), password.encode())
    tunnel.receive_data(b"\x01\x00")
    assert tunnel.data_to_send() == b"\x05\x01\x00\x03\x0bexample.com\x01\xbb"


@pytest.mark.parametrize(("user", "password", "which"), [
    ("u" * 256, "p", "user name"),
    ("u", "p" * 256, "password"),
    ("é" * 128, "p", "user name"),  # 128 characters, 256 bytes
    ("u", "é" * 127 + "pp", "password"),
])
def test_socks5_user_names_and_passwords_of_256_bytes_are_refused(user: str, password: str, which: str) -> None:
    with pytest.raises(LocalProtocolError) as caught:
        SOCKS5Tunnel("example.com", 443, username=user, password=password)
    assert str(caught.value) == f"expected a SOCKS5 {which} of at most 255 bytes (UTF-8), got 256 bytes"


def long_name(size: int) -> str:
    """A host name of ``size`` bytes (204 to 267) in labels of at most 63."""
    return ".".join(["a" * 50] * 4) + "." + "b" * (size - 204)


@pytest.mark.parametrize("size", [1, 254, 255])
def test_socks5_target_names_of_up_to_255_bytes_go_out_whole(size: int) -> None:
    host = "h" * size if size < 64 else long_name(size)  # a name of one label of 254 bytes is sent as well
    assert len(host) == size
    tunnel = SOCKS5Tunnel(host, 8443)
    tunnel.start()
    tunnel.data_to_send()
    tunnel.receive_data(b"\x05\x00")
    assert tunnel.data_to_send() == b"\x05\x01\x00\x03" + bytes([size]) + host.encode() + b"\x20\xfb"


def test_a_socks5_target_name_of_256_bytes_is_refused() -> None:
    for host in ("h" * 256, long_name(256)):
        assert len(host) == 256
        with pytest.raises(LocalProtocolError) as caught:
            SOCKS5Tunnel(host, 443)
        assert str(caught.value) == "expected a target host name of at most 255 bytes, got 256 bytes"


@pytest.mark.parametrize("size", [0, 1, 255])
def test_a_socks5_connect_reply_with_a_domain_of_any_length_is_read_to_its_last_byte(size: int) -> None:
    tunnel = SOCKS5Tunnel("example.com", 443)
    tunnel.start()
    tunnel.data_to_send()
    tunnel.receive_data(b"\x05\x00")
    reply = b"\x05\x00\x00\x03" + bytes([size]) + b"d" * size + b"\x01\xbb"
    assert tunnel.receive_data(reply[:-1]) == b""  # one byte short: waits
    assert not tunnel.established
    assert tunnel.receive_data(reply[-1:] + b"after") == b"after"
    assert tunnel.established


# -- HTTP CONNECT: the proxy's response head ------------------------------------------------------------------


def started_connect() -> HTTPConnectTunnel:
    tunnel = HTTPConnectTunnel("example.com", 443)
    tunnel.start()
    tunnel.data_to_send()
    return tunnel


def head_too_long(size: int) -> str:
    return (
        "HTTP proxy's answer to the CONNECT to example.com:443 is longer than 16384 bytes without ending: "
        f"expected an HTTP response head of at most 16384 bytes, got {size} bytes"
    )


def test_an_unfinished_proxy_answer_of_16_kib_waits_and_one_byte_more_is_refused() -> None:
    start = b"HTTP/1.1 200 Connection established\r\nX-Long: "
    unfinished = start + b"h" * (16384 - len(start))
    tunnel = started_connect()
    assert tunnel.receive_data(unfinished) == b""
    assert tunnel.receive_data(b"\r\n\r\nafter") == b"after"
    assert tunnel.established
    tunnel = started_connect()
    assert tunnel.receive_data(unfinished) == b""
    with pytest.raises(ProxyError) as caught:
        tunnel.receive_data(b"h")
    assert str(caught.value).startswith(head_too_long(16385))


def test_informational_answers_count_toward_the_proxy_head_limit() -> None:
    continues = b"HTTP/1.1 100 Continue\r\n\r\n" * 655  # 16375 bytes
    rest = b"HTTP/1.1 200 OK\r"
    assert len(continues) + len(rest) == 16391
    tunnel = started_connect()
    with pytest.raises(ProxyError) as caught:
        tunnel.receive_data(continues + rest)
    assert str(caught.value).startswith(head_too_long(16391))
    tunnel = started_connect()
    assert tunnel.receive_data(continues + rest[:9]) == b""  # 16384 bytes: waits
    with pytest.raises(ProxyError) as caught:
        tunnel.receive_data(rest[9:10])
    assert str(caught.value).startswith(head_too_long(16385))


# -- TLS: what a failed handshake shows of the peer's bytes ---------------------------------------------------


@pytest.mark.parametrize("size", [59, 60, 61, 200])
def test_a_failed_tls_handshake_shows_the_first_60_bytes_that_came(size: int) -> None:
    answer = (b"HTTP/1.1 400 Bad Request\r\nX-Pad: " + b"p" * 200)[:size]
    client = TLSLayer(make_ssl_context(), "example.com")
    client.start()
    client.data_to_send()
    with pytest.raises(TLSError) as caught:
        client.receive_data(answer)
    assert str(caught.value).endswith(f"; expected a TLS server's reply, got {answer[:60]!r}")


@pytest.mark.parametrize("first", [1, 30, 59, 60])
def test_the_60_bytes_shown_are_the_first_that_came_whatever_pieces_they_came_in(first: int) -> None:
    # A handshake record head announcing 80 bytes: the client waits for them, then fails on their content.
    answer = b"\x16\x03\x03\x00\x50" + bytes(range(65, 65 + 80))
    client = TLSLayer(make_ssl_context(), "example.com")
    client.start()
    client.data_to_send()
    assert client.receive_data(answer[:first]) == b""
    with pytest.raises(TLSError) as caught:
        client.receive_data(answer[first:])
    assert str(caught.value).endswith(f"; expected a TLS server's reply, got {answer[:60]!r}")


# -- JSON depth: MAX_DEPTH counted exactly, whatever else the text holds ------------------------------------


def test_the_depth_is_counted_where_the_json_starts_and_brackets_count_only_while_open() -> None:
    at_limit = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert not too_deep(at_limit + ",[]")  # more than MAX_DEPTH brackets in all, never more open at once
    assert not too_deep("[" * 5 + at_limit, 5)  # what precedes start is not the JSON's
    assert too_deep("[" * 5 + at_limit, 4)
    check_depth("42" + "[" * 5 + at_limit, "a packet", 7)  # taken: from its start it is at the limit
    # Closing one level takes one level off: 3 open, 1 closed, 99 more open is 101.
    assert too_deep("[[[]" + "[" * 99 + "]" * 101)
    assert not too_deep("[[[]" + "[" * 98 + "]" * 100)
    with pytest.raises(RemoteProtocolError) as caught:
        check_depth("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "a reply")
    text = "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)
    assert str(caught.value) == (
        f"expected a reply nested at most {MAX_DEPTH} deep, got deeper nesting in {text[:60]!r}... (202 chars)"
    )


# -- refusal: what is kept of a refusing server's words, at each bound ------------------------------------------


def answered(status: int, headers: list[tuple[str, str]] | None = None, body: bytes = b"", reason: str = "") -> Any:
    """The error :func:`refusal` makes of this answer to the Engine.IO handshake (expected: 200)."""
    lowered = tuple((name.lower(), value) for name, value in headers or [])
    return refusal(HTTPResponse(status, reason, lowered, body), "the handshake", 200)


@pytest.mark.parametrize("limit", [3, 4, 20, 100, 200, 2048])
def test_a_cleaned_text_of_exactly_its_limit_is_kept_whole_and_one_more_character_cut(limit: int) -> None:
    assert clean("a" * limit, limit) == "a" * limit
    assert clean("a" * (limit + 1), limit) == "a" * (limit - 3) + "..."
    # Only the first 4 * limit + 64 characters are read: dropped characters count toward them.
    assert clean("\x00" * (4 * limit + 63) + "b", limit) == "b"
    assert clean("\x00" * (4 * limit + 64) + "b", limit) == ""


def test_a_location_of_2048_characters_is_kept_whole_and_2049_cut() -> None:
    for size, kept in ((2048, "p" * 2048), (2049, "p" * 2045 + "...")):
        error = answered(302, [("Location", "p" * size)])
        assert isinstance(error, RedirectError) and error.location == kept
        # the message shows 200 characters of it
        assert f"redirecting to {'p' * 197 + '...'!r}: the service moved" in str(error)
    error = answered(302, [("Location", "p" * 200)])
    assert f"redirecting to {'p' * 200!r}: the service moved" in str(error)


def test_a_retry_after_of_100_characters_is_shown_whole_and_101_cut() -> None:
    for size, kept in ((100, "9" * 100), (101, "9" * 97 + "...")):
        error = answered(429, [("Retry-After", "9" * size)])
        assert isinstance(error, RateLimitedError)
        assert (error.retry_after_header, error.retry_after) == (kept, None)
        assert str(error).endswith(f"rate limited; Retry-After {kept!r} (not a delay we can read)")


def test_a_reason_phrase_of_100_characters_is_shown_whole_and_101_cut() -> None:
    for size, kept in ((100, "R" * 100), (101, "R" * 97 + "...")):
        error = answered(404, reason="R" * size)
        assert str(error) == f"the server refused the handshake: expected HTTP 200, got HTTP 404 {kept}: ''"


def test_a_body_excerpt_of_200_characters_is_kept_whole_and_201_cut() -> None:
    for size, kept in ((200, "b" * 200), (201, "b" * 197 + "...")):
        error = answered(404, body=b"b" * size)
        assert error.body_excerpt == kept
        assert str(error) == f"the server refused the handshake: expected HTTP 200, got HTTP 404: {kept!r}"
    # Only the first 4 * 200 + 64 bytes are read for it.
    assert answered(404, body=b"\x00" * 863 + b"b").body_excerpt == "b"
    assert answered(404, body=b"\x00" * 864 + b"b").body_excerpt == ""
    # 864 bytes, not characters: three-byte characters that cleaning drops (U+200B) fill them sooner.
    assert answered(404, body="\u200b".encode() * 287 + b"\x00\x00b").body_excerpt == "b"
    assert answered(404, body="\u200b".encode() * 288 + b"b").body_excerpt == ""


def test_a_title_of_200_characters_is_kept_whole_and_201_cut() -> None:
    for size, kept in ((200, "t" * 200), (201, "t" * 197 + "...")):
        error = answered(200, body=b"<html><title>" + b"t" * size + b"</title>")
        assert isinstance(error, UnexpectedPageError) and error.title == kept
        assert f"titled {kept!r}: a login or web page" in str(error)
    # A title's first 800 bytes are read, whatever cleaning drops of them.
    assert page_title(b"<title>" + b" " * 799 + b"x</title>") == "x"
    assert page_title(b"<title>" + b" " * 800 + b"x</title>") is None
    assert page_title(b"<title>" + b" " * 799 + b"x") == "x"  # (no end tag: the same 800 bytes)
    assert page_title(b"<title>" + b" " * 800 + b"x") is None


def test_a_page_is_searched_in_its_first_64_kib() -> None:
    assert SCAN == 65536
    assert page_title(b" " * (SCAN - 8) + b"<title>x") == "x"
    assert page_title(b" " * (SCAN - 7) + b"<title>x") is None
    marker = b"error code: 1015"
    limited = answered(403, body=b" " * (SCAN - len(marker)) + marker)
    assert isinstance(limited, RateLimitedError) and "rate limited by Cloudflare (error 1015)" in str(limited)
    plain = answered(403, body=b" " * (SCAN - len(marker) + 1) + marker)
    assert type(plain) is HandshakeError


def test_a_page_is_known_by_a_bracket_within_its_first_1024_bytes() -> None:
    assert is_page(HTTPResponse(200, "", (), b"\n" * 1023 + b"<html>"))
    assert not is_page(HTTPResponse(200, "", (), b"\n" * 1024 + b"<html>"))
    assert isinstance(answered(200, body=b"\n" * 1023 + b"<html>"), UnexpectedPageError)
    assert type(answered(200, body=b"\n" * 1024 + b"<html>")) is HandshakeError


def test_an_engineio_error_code_of_20_characters_is_shown_whole_and_21_cut() -> None:
    for code, shown in ((10**19, str(10**19)), (10**20, "1" + "0" * 16 + "...")):
        error = answered(400, body=b'{"code":%d,"message":"Bad request"}' % code)
        assert f"(Engine.IO error {shown}: Bad request)" in str(error)
    for size, kept in ((200, "m" * 200), (201, "m" * 197 + "...")):
        error = answered(400, body=b'{"code":3,"message":"%s"}' % (b"m" * size))
        assert f"(Engine.IO error 3: {kept})" in str(error)


def test_a_delay_of_15_digits_is_read_and_16_are_not() -> None:
    assert retry_after_seconds("9" * 15, None) == 999_999_999_999_999.0
    assert retry_after_seconds("0" * 15, None) == 0.0
    assert retry_after_seconds("9" * 16, None) is None
    assert retry_after_seconds("0" * 16, None) is None
    assert retry_after_seconds("1" * 14 + "x", None) is None  # 15 characters, not all digits


def test_an_http_date_of_64_characters_is_read_and_65_are_not() -> None:
    now = "Sun, 06 Nov 1994 08:49:37 GMT"
    for size, seconds in ((64, 90.0), (65, None)):
        later = "Sun, 06 Nov 1994 08:51:07" + " " * (size - 28) + "GMT"
        assert len(later) == size
        assert retry_after_seconds(later, now) == seconds  # the Retry-After date
        padded_now = "Sun, 06 Nov 1994 08:49:37" + " " * (size - 28) + "GMT"
        assert retry_after_seconds("Sun, 06 Nov 1994 08:51:07 GMT", padded_now) == seconds  # the Date


# -- cookies: RFC 6265's minimums, at their edges -----------------------------------------------------------


def test_a_cookie_of_4096_characters_is_kept_and_one_of_4097_ignored() -> None:
    jar = CookieJar()
    jar.remember([
        ("set-cookie", "big=" + "x" * 4093 + "; Path=/; Secure"),  # name and value: 4096 characters
        ("set-cookie", "bigger=" + "y" * 4091),  # 4097
        ("set-cookie", "e=" + "z" * 4094 + "; Path=/"),  # 4096 again, on a name of one letter
    ])
    assert jar.as_dict() == {"big": "x" * 4093, "e": "z" * 4094}
    assert jar.header() == "big=" + "x" * 4093 + "; e=" + "z" * 4094


def test_fifty_cookies_are_kept_and_a_fifty_first_name_ignored_while_known_names_still_change() -> None:
    jar = CookieJar()
    jar.remember([("set-cookie", f"c{i}={i}") for i in range(49)])
    jar.remember([("set-cookie", "c49=49")])  # the fiftieth: kept
    assert len(jar.as_dict()) == 50 and jar.as_dict()["c49"] == "49"
    jar.remember([("set-cookie", "c50=50"), ("set-cookie", "c0=new"), ("set-cookie", "c49=last")])
    assert "c50" not in jar.as_dict()
    assert jar.header() == "c0=new; " + "; ".join(f"c{i}={i}" for i in range(1, 49)) + "; c49=last"


# -- traces: what a bad line shows of itself (60 characters) ------------------------------------------------

TRACE_HEADER = json.dumps({"plabs_trace": 1, "server": "http://labs.test", "transport": "polling",
                           "model": "sonar", "messages": [{"role": "user", "content": "hi"}], "seed": 1})


@pytest.mark.parametrize("size", [59, 60, 61])
def test_a_trace_line_that_is_no_json_is_shown_up_to_60_characters(size: int) -> None:
    line = "x" * size
    with pytest.raises(TraceError) as caught:
        read_trace([line])
    assert str(caught.value) == f"trace line 1: expected a JSON object, got {line[:60]!r}"
    _, records = read_trace([TRACE_HEADER, "  " + line + "  "])
    with pytest.raises(TraceError) as caught:
        next(records)
    assert str(caught.value) == f"trace line 2: expected a JSON object, got {line[:60]!r}"


@pytest.mark.parametrize("size", [57, 58, 59])
def test_a_value_of_the_wrong_kind_is_shown_in_at_most_60_characters_of_its_repr(size: int) -> None:
    seed = "1" * size  # its repr: size + 2 characters
    with pytest.raises(TraceError) as caught:
        read_trace([TRACE_HEADER.replace('"seed": 1', json.dumps({"seed": seed})[1:-1])])
    assert str(caught.value) == f"trace line 1: expected an integer seed in 'seed', got {repr(seed)[:60]}"


@pytest.mark.parametrize("size", [59, 60, 61])
def test_bad_base64_and_a_bad_seed_are_shown_up_to_60_characters(size: int) -> None:
    b64 = "!" * size
    line = json.dumps({"t": 0, "stream": 1, "dir": "in", "b64": b64})
    with pytest.raises(TraceError) as caught:
        next(read_trace([TRACE_HEADER, line])[1])
    assert str(caught.value) == f"trace line 2: expected base64 data in 'b64', got {b64[:60]!r}"
    recorder = TraceRecorder(make_header(messages="hi"))
    with pytest.raises(LocalProtocolError) as caught_seed:
        recorder(0.0, 0, "seed", b"s" * size)
    assert str(caught_seed.value) == f"expected a decimal seed, got {b's' * min(size, 60)!r}"
