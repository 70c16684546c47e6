"""A response asked for incrementally: its head, body pieces and end, as they arrive (HTTPChannel.receive_pieces).

What a Server-Sent Events stream needs of the byte level: no wait for the whole body, no bound on
the whole (a stream may run long), each piece bounded, and the same checks as a whole body.
"""

from __future__ import annotations

import gzip
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plabs_proto.errors import LocalProtocolError, RemoteProtocolError
from plabs_proto.wire.http import RESPONSE_END, HTTPChannel, ResponseHead

SSE = b"event: message\r\ndata: {\"status\":\"PENDING\"}\r\n\r\nevent: end_of_stream\r\ndata: {}\r\n\r\n"


def asking(max_body: int = 1024) -> HTTPChannel:
    http = HTTPChannel(max_body=max_body)
    http.request("POST", "/rest/sse/perplexity_ask", [("Host", "x.test")], b"{}", incremental=True)
    return http


def head(extra: str = "", length: int | None = None) -> bytes:
    framing = f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n"
    return f"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n{extra}{framing}\r\n".encode()


def chunked(body: bytes, size: int) -> bytes:
    out = b""
    for at in range(0, len(body), size):
        out += f"{len(body[at : at + size]):x}\r\n".encode() + body[at : at + size] + b"\r\n"
    return out + b"0\r\n\r\n"


def test_the_head_comes_before_the_body_and_the_end_after_it() -> None:
    http = asking()
    got = http.receive_pieces(head(length=len(SSE)) + SSE[:10])
    assert got == [ResponseHead(200, "OK", (("content-type", "text/event-stream"), ("content-length", str(len(SSE))))),
                   SSE[:10]]
    assert http.busy
    assert http.receive_pieces(SSE[10:]) == [SSE[10:], RESPONSE_END]
    assert not http.busy and http.reusable  # kept alive for the next request


@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=60))
def test_any_split_gives_the_body_in_order(cuts: list[int]) -> None:
    wire = head() + chunked(SSE, 7)
    http = asking()
    pieces: list[object] = []
    at = 0
    for size in [*cuts, len(wire)]:
        pieces += http.receive_pieces(wire[at : at + size])
        at += size
        if at >= len(wire):
            break
    assert isinstance(pieces[0], ResponseHead) and pieces[-1] is RESPONSE_END
    assert b"".join(piece for piece in pieces if type(piece) is bytes) == SSE


def test_one_byte_reads_are_taken_however_many_there_are() -> None:
    """A whole body in pieces averaging under 64 bytes is refused (each costs h11 an event); a stream
    read incrementally is not: each piece is handed on, nothing is kept."""
    body = SSE * 40
    http = asking()
    wire = head(length=len(body)) + body
    got = [piece for at in range(len(wire)) for piece in http.receive_pieces(wire[at : at + 1])]
    assert b"".join(piece for piece in got if type(piece) is bytes) == body
    assert got[-1] is RESPONSE_END


def test_the_whole_body_is_not_bounded_but_each_inflated_piece_is() -> None:
    http = asking(max_body=100)
    body = SSE * 20  # 1,640 bytes: more than max_body in all, a few bytes a piece
    pieces = http.receive_pieces(head(length=len(body)) + body)
    assert b"".join(piece for piece in pieces if type(piece) is bytes) == body
    # gzip, flushed per frame as servers stream it: each piece inflates within max_body ...
    http = asking(max_body=100)
    compressor = zlib.compressobj(wbits=31)
    wire = head("Content-Encoding: gzip\r\n")
    for _ in range(20):
        piece = compressor.compress(SSE) + compressor.flush(zlib.Z_SYNC_FLUSH)
        wire += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    last = compressor.flush()
    wire += f"{len(last):x}\r\n".encode() + last + b"\r\n0\r\n\r\n"
    pieces = http.receive_pieces(wire)
    assert b"".join(piece for piece in pieces if type(piece) is bytes) == SSE * 20
    assert pieces[-1] is RESPONSE_END
    # ... and a piece that inflates past it is refused, naming the limit.
    http = asking(max_body=100)
    bomb = gzip.compress(b"x" * 10_000)
    with pytest.raises(RemoteProtocolError, match=r"at most 100 bytes \(max_body\) once inflated per piece"):
        http.receive_pieces(head("Content-Encoding: gzip\r\n") + chunked(bomb, len(bomb)))


def test_an_inflated_piece_at_the_limit_is_taken() -> None:
    http = asking(max_body=100)
    wire = head("Content-Encoding: gzip\r\n") + chunked(gzip.compress(b"y" * 100), 10_000)
    assert b"".join(piece for piece in http.receive_pieces(wire) if type(piece) is bytes) == b"y" * 100


def test_a_stream_cut_short_is_an_error_after_what_came() -> None:
    http = asking()
    came = http.receive_pieces(head() + chunked(SSE, 7)[:30])
    body = b"".join(piece for piece in came if type(piece) is bytes)
    assert body and SSE.startswith(body)  # the pieces so far were handed on
    with pytest.raises(RemoteProtocolError, match="expected the rest of the HTTP response, got end of stream"):
        http.receive_pieces(b"")


def test_the_two_readings_are_not_mixed() -> None:
    with pytest.raises(LocalProtocolError, match="expected receive_pieces for a response asked for incrementally"):
        asking().receive_data(b"HTTP/1.1 200 OK\r\n")
    whole = HTTPChannel(max_body=1024)
    whole.request("GET", "/", [("Host", "x.test")])
    with pytest.raises(LocalProtocolError, match="expected receive_data for a response asked for whole"):
        whole.receive_pieces(b"HTTP/1.1 200 OK\r\n")
