"""Compression at the byte level: HTTP bodies (gzip, deflate) and WebSocket permessage-deflate (RFC 7692).

Byte-exact: the compressed bytes are made here with the stdlib (``gzip.compress``, ``zlib``), fed to
the channel or the client, and what comes out is compared with what went in.  Hostile forms (a
decompression bomb, corrupt or cut streams, codings we never offered) must meet a
:class:`RemoteProtocolError` naming what arrived, in bounded memory and time; hypothesis mutates
compressed streams to hold the channels to "only LabsError escapes".
"""

from __future__ import annotations

import gzip
import random
import time
import tracemalloc
import zlib
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from peer import (
    KEY,
    Harness,
    T,
    chrome_request,
    http_response,
    open_packet,
    progress,
    switching_protocols,
    ws_frame,
)
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import FrameProtocol

from plabs_proto.config import ClientConfig
from plabs_proto.errors import LabsError, LocalProtocolError, RemoteProtocolError
from plabs_proto.events import AnswerFinished, Connected, TextDelta
from plabs_proto.wire.client import ClientState, LabsClient
from plabs_proto.wire.http import HTTPChannel, HTTPResponse
from plabs_proto.wire.websocket import DeflateParameters, Utf8Text, WebSocketChannel, negotiate_deflate

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BODY = ('42["sonar_query_progress",{"output":"' + "Paris is the capital of France. " * 60 + '"}]').encode()
MiB = 1024 * 1024


# -- HTTP bodies --------------------------------------------------------------------------------------


def channel(max_body: int = MiB) -> HTTPChannel:
    http = HTTPChannel(max_body=max_body, limit_name="max_message_size + 64 KiB")
    http.request("GET", "/socket.io/?EIO=4", [("Host", "labs.test")])
    return http


def coded(body: bytes, coding: str, *, status: int = 200) -> bytes:
    return (
        f"HTTP/1.1 {status} OK\r\nContent-Encoding: {coding}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


def chunked(body: bytes, coding: str, size: int) -> bytes:
    out = f"HTTP/1.1 200 OK\r\nContent-Encoding: {coding}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    for at in range(0, len(body), size):
        piece = body[at : at + size]
        out += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    return out + b"0\r\n\r\n"


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize(
    ("coding", "compress"),
    [
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("GZIP", gzip.compress),
        ("deflate", zlib.compress),  # zlib-wrapped, as RFC 9110 says
        ("deflate", raw_deflate),  # raw, as some servers send it and browsers take it
        ("identity, gzip", gzip.compress),
    ],
)
def test_a_compressed_body_is_inflated(coding: str, compress: object) -> None:
    assert callable(compress)
    wire = compress(BODY)
    assert len(wire) < len(BODY) // 10
    response = channel().receive_data(coded(wire, coding))
    assert isinstance(response, HTTPResponse)
    assert response.body == BODY
    assert response.header("content-encoding") == coding  # the head stays as it came


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_a_compressed_body_in_chunks_fed_byte_by_byte(coding: str) -> None:
    wire = chunked(gzip.compress(BODY) if coding == "gzip" else raw_deflate(BODY), coding, 7)
    http = channel()
    results = [http.receive_data(wire[i : i + 1]) for i in range(len(wire))]
    assert all(result is None for result in results[:-1])
    last = results[-1]
    assert isinstance(last, HTTPResponse) and last.body == BODY


def test_an_empty_body_may_say_gzip() -> None:
    response = channel().receive_data(coded(b"", "gzip"))
    assert isinstance(response, HTTPResponse) and response.body == b""


def test_a_plain_body_is_left_alone() -> None:
    response = channel().receive_data(http_response(200, BODY))
    assert isinstance(response, HTTPResponse) and response.body == BODY


def test_a_gzip_bomb_stops_at_the_limit_in_bounded_memory() -> None:
    bomb = gzip.compress(b"\0" * (10 * MiB), 9)
    assert len(bomb) < 11_000
    http = channel(max_body=MiB)
    tracemalloc.start()
    started = time.thread_time()  # CPU, not wall time: the machine may be loaded
    try:
        with pytest.raises(RemoteProtocolError) as caught:
            http.receive_data(coded(bomb, "gzip"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.thread_time() - started < 2.0
    assert peak < 4 * MiB  # never the 10 MiB it would inflate to
    assert str(caught.value) == (
        f"expected an HTTP response body of at most {MiB} bytes (max_message_size + 64 KiB) once inflated, "
        "got a gzip body that inflates to more than that"
    )


def test_a_body_exactly_at_the_limit_inflates() -> None:
    data = b"x" * 5000
    response = channel(max_body=5000).receive_data(coded(gzip.compress(data), "gzip"))
    assert isinstance(response, HTTPResponse) and response.body == data
    with pytest.raises(RemoteProtocolError, match="at most 4999 bytes"):
        channel(max_body=4999).receive_data(coded(gzip.compress(data), "gzip"))


def test_compressed_bytes_count_against_the_limit_too() -> None:
    # Empty stored blocks inflate to nothing: the compressed size alone must be bounded.
    endless = b"\x00\x00\x00\xff\xff" * 400
    with pytest.raises(RemoteProtocolError, match=r"at most 1000 bytes \(max_message_size \+ 64 KiB\), got at least 2000 bytes"):
        channel(max_body=1000).receive_data(coded(endless, "deflate"))


@pytest.mark.parametrize(
    ("coding", "named"),
    [("br", "'br'"), ("zstd", "'zstd'"), ("compress", "'compress'"), ("gzip, br", "'gzip, br'"),
     ("gzip, gzip", "'gzip, gzip'")],
)
def test_a_coding_we_did_not_offer_is_refused_by_name(coding: str, named: str) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        channel().receive_data(coded(b"\x1b\x2a\x00", coding))
    assert str(caught.value) == (
        "expected a response body as it is or in one Content-Encoding we offer (gzip, deflate), "
        f"got Content-Encoding {named} (HTTP 200)"
    )


@pytest.mark.parametrize(
    ("wire", "coding", "message"),
    [
        (b"this is not gzip at all", "gzip", "got bytes zlib cannot inflate: Error -3"),
        (gzip.compress(BODY, mtime=0)[:-20], "gzip", "got one cut short"),
        (gzip.compress(BODY, mtime=0) + b"junk", "gzip", "expected nothing after the end of the gzip stream"),
        (gzip.compress(BODY, mtime=0)[:-1] + b"\x01", "gzip", "cannot inflate"),  # the length in the trailer
        (b"\xff" * 40, "deflate", "cannot inflate"),
        (b"x", "deflate", "got a body of one byte"),
        (zlib.compress(BODY)[:-1] + b"\x00", "deflate", "cannot inflate"),  # the Adler-32
    ],
)
def test_corrupt_compressed_bodies_are_clear_errors(wire: bytes, coding: str, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        channel().receive_data(coded(wire, coding))


@FUZZ
@given(
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255), st.sampled_from(["set", "insert", "cut"])),
                   max_size=4),
    coding=st.sampled_from(["gzip", "deflate"]),
    size=st.integers(1, 4096),
    chunk=st.integers(1, 2000),
)
def test_fuzz_compressed_bodies_meet_only_labs_errors(
    edits: list[tuple[int, int, str]], coding: str, size: int, chunk: int
) -> None:
    data = bytearray(gzip.compress(BODY[:size]) if coding == "gzip" else zlib.compress(BODY[:size]))
    for at, value, kind in edits:
        at %= len(data) + 1
        if kind == "set" and at < len(data):
            data[at] = value
        elif kind == "insert":
            data[at:at] = bytes([value])
        else:
            del data[at:]
    wire = chunked(bytes(data), coding, chunk) if chunk % 2 else coded(bytes(data), coding)
    http = channel(max_body=2 * len(BODY))
    try:
        result = None
        for at in range(0, len(wire), 997):
            result = http.receive_data(wire[at : at + 997])
        if result is not None:
            assert isinstance(result, HTTPResponse)
            assert len(result.body) <= 2 * len(BODY)
    except LabsError:
        pass


# -- the client: Accept-Encoding offered, compressed polling bodies decoded ----------------------------


POLL_SID = "/socket.io/?EIO=4&transport=polling&sid=SID1"


def make(transport: str = "polling", **kw: object) -> Harness:
    config = ClientConfig(server="http://labs.test", transport=transport, **kw)  # type: ignore[arg-type]
    return Harness(LabsClient(config, rng=random.Random(0)))


def gzipped(text: str) -> bytes:
    body = gzip.compress(text.encode("utf-8"))
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=UTF-8\r\nContent-Encoding: gzip\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


def test_polling_offers_gzip_and_reads_gzipped_bodies() -> None:
    h = make()
    h.client.connect(0.0)
    h.client.query("hi", model="sonar", now=0.0)
    request = h.take(1)
    assert request == chrome_request("GET", f"/socket.io/?EIO=4&transport=polling&t={T}")
    assert b"\r\nAccept-Encoding: gzip, deflate\r\n" in request
    h.reply(1, gzipped(open_packet()))
    assert b"Accept-Encoding: gzip, deflate\r\n" in h.take(2)  # the CONNECT POST offers it too
    h.reply(2, http_response(200, "ok"))
    h.reply(1, gzipped('40{"sid":"S1"}'))
    h.take(2)
    h.reply(2, http_response(200, "ok"))
    answer = "Paris is the capital of France. " * 50
    h.reply(1, gzipped(progress("sonar", {"output": answer, "final": True, "citations": []})))
    assert h.events() == [
        Connected(engine_sid="SID1", socket_sid="S1", transport="polling"),
        TextDelta(text=answer),
        AnswerFinished(model="sonar", text=answer, reasoning="", citations=()),
    ]


def test_accept_encoding_can_be_turned_off() -> None:
    h = make(accept_encoding=False)
    h.client.connect(0.0)
    request = h.take(1)
    assert b"Accept-Encoding" not in request
    assert request == chrome_request("GET", f"/socket.io/?EIO=4&transport=polling&t={T}").replace(b"Accept-Encoding: gzip, deflate\r\n", b"")
    # A server that compresses anyway is still understood.
    h.reply(1, gzipped(open_packet()))
    assert h.client.session.engine_sid == "SID1"


def test_the_callers_accept_encoding_replaces_ours() -> None:
    h = make(headers=(("Accept-Encoding", "identity"),))
    h.client.connect(0.0)
    request = h.take(1)
    assert request.count(b"Accept-Encoding") == 1 and b"Accept-Encoding: identity\r\n" in request


def test_a_gzip_bomb_on_a_poll_fails_the_session_naming_the_limit() -> None:
    h = make(max_message_size=MiB)
    h.client.connect(0.0)
    h.take(1)
    bomb = gzip.compress(b"4" * (50 * MiB), 9)
    with pytest.raises(RemoteProtocolError) as caught:
        h.reply(1, b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n" + f"Content-Length: {len(bomb)}\r\n\r\n".encode()
                + bomb)
    assert "at most 1114112 bytes (max_message_size + 64 KiB) once inflated" in str(caught.value)
    assert h.client.state is ClientState.ERROR
    h.pump()
    assert sorted(h.closed) == [1, 2]


def test_compression_switches_must_be_bools() -> None:
    for name in ("accept_encoding", "permessage_deflate"):
        with pytest.raises(LocalProtocolError, match=f"expected {name} as True or False, got 'yes'"):
            LabsClient(ClientConfig(**{name: "yes"}), rng=random.Random(0))  # type: ignore[arg-type]


# -- permessage-deflate: negotiation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "agreed"),
    [
        ([], None),
        (["permessage-deflate"], DeflateParameters()),
        (["permessage-deflate; client_max_window_bits=12; server_no_context_takeover"],
         DeflateParameters(client_max_window_bits=12, server_no_context_takeover=True)),
        (['Permessage-Deflate;server_max_window_bits="10";client_no_context_takeover'],
         DeflateParameters(server_max_window_bits=10, client_no_context_takeover=True)),
        (["permessage-deflate; client_max_window_bits=8"], DeflateParameters(client_max_window_bits=8)),
    ],
)
def test_negotiation_takes_what_rfc_7692_lets_a_server_answer(
    answer: list[str], agreed: DeflateParameters | None
) -> None:
    assert negotiate_deflate(answer, offered=True) == agreed


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (["x-webkit-deflate-frame"], r"expected the WebSocket extension we offered \(permessage-deflate\), got "
                                     "'x-webkit-deflate-frame'"),
        (["permessage-deflate, permessage-deflate"], "expected at most one WebSocket extension"),
        (["permessage-deflate", "foo"], "expected at most one WebSocket extension"),
        (["permessage-deflate; client_max_window_bits"], "got 'client_max_window_bits'"),  # a value is required
        (["permessage-deflate; server_max_window_bits=16"], "got 'server_max_window_bits=16'"),
        (["permessage-deflate; server_max_window_bits=7"], "got 'server_max_window_bits=7'"),
        (["permessage-deflate; client_max_window_bits=015"], "got 'client_max_window_bits=015'"),
        (["permessage-deflate; server_no_context_takeover=1"], "got 'server_no_context_takeover=1'"),
        (["permessage-deflate; mystery"], "got 'mystery'"),
        (["permessage-deflate; server_no_context_takeover; server_no_context_takeover"], "twice"),
    ],
)
def test_negotiation_refuses_what_we_did_not_offer_or_cannot_parse(answer: list[str], message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        negotiate_deflate(answer, offered=True)


def test_an_extension_answer_without_an_offer_is_refused() -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        negotiate_deflate(["permessage-deflate"], offered=False)
    assert str(caught.value) == (
        "expected no Sec-WebSocket-Extensions in the 101 response (we offered none), got 'permessage-deflate'"
    )


# -- permessage-deflate: frames ---------------------------------------------------------------------------


def server_compress(messages: list[bytes], *, takeover: bool = True, bits: int = 15) -> list[bytes]:
    """Each message as a server compresses it (RFC 7692 §7.2.1): raw deflate, sync flush, tail stripped."""
    out = []
    compressor = zlib.compressobj(6, zlib.DEFLATED, -bits)
    for message in messages:
        if not takeover:
            compressor = zlib.compressobj(6, zlib.DEFLATED, -bits)
        data = compressor.compress(message) + compressor.flush(zlib.Z_SYNC_FLUSH)
        assert data.endswith(b"\x00\x00\xff\xff")
        out.append(data[:-4])
    return out


def frame(payload: bytes, *, opcode: int = 0x1, rsv1: bool = True, fin: bool = True) -> bytes:
    """An unmasked server frame, compressed (``rsv1``) unless told otherwise."""
    return ws_frame(payload, opcode=opcode, rsv1=rsv1, fin=fin)


AGREED = DeflateParameters()


def ws(agreed: DeflateParameters | None = AGREED, *, limit: int = MiB) -> WebSocketChannel:
    return WebSocketChannel(random.Random(0), max_message_size=limit, deflate=agreed)


def test_a_compressed_message_from_the_server_is_inflated() -> None:
    text = '42["sonar_query_progress",{"output":"' + "Bonjour! " * 100 + '"}]'
    (payload,) = server_compress([text.encode()])
    wire = frame(payload)
    assert wire[0] == 0xC1 and len(wire) < 100
    assert ws().receive_data(wire) == [text]
    # Byte by byte, and beside a plain frame (RSV1 clear: a message the server chose not to compress).
    channel_ = ws()
    got: list[object] = []
    for byte in wire + frame(b"2", rsv1=False):
        got += channel_.receive_data(bytes([byte]))
    assert got == [text, "2"]


def test_context_takeover_carries_the_window_across_messages() -> None:
    texts = [('42["p",{"output":"' + "Paris is lovely. " * k + '"}]').encode() for k in (20, 21, 22)]
    payloads = server_compress(texts)
    assert len(payloads[2]) < 20  # it refers back to the earlier messages
    channel_ = ws()
    assert [channel_.receive_data(frame(p)) for p in payloads] == [[t.decode()] for t in texts]
    # Without the earlier messages' window the third cannot be read: the channel really keeps it.
    with pytest.raises(RemoteProtocolError, match=r"zlib can inflate, got one it cannot: .* too far back"):
        ws().receive_data(frame(payloads[2]))


def test_server_no_context_takeover_starts_each_message_afresh() -> None:
    texts = [b"hello hello hello hello", b"hello hello hello hello"]
    payloads = server_compress(texts, takeover=False)
    assert payloads[0] == payloads[1]
    channel_ = ws(DeflateParameters(server_no_context_takeover=True))
    assert channel_.receive_data(frame(payloads[0]) + frame(payloads[1])) == ["hello hello hello hello"] * 2


def test_a_fragmented_compressed_message_with_a_ping_between() -> None:
    text = ("fragmented " * 200).encode()
    (payload,) = server_compress([text])
    third = len(payload) // 3
    wire = (
        frame(payload[:third], fin=False)
        + frame(b"hi", opcode=0x9, rsv1=False)  # a ping between the fragments
        + frame(payload[third : 2 * third], opcode=0x0, rsv1=False, fin=False)
        + frame(payload[2 * third :], opcode=0x0, rsv1=False)
    )
    channel_ = ws()
    assert channel_.receive_data(wire) == [text.decode()]
    assert channel_.data_to_send()[:2] == b"\x8a\x82"  # the pong, masked, uncompressed


def test_the_window_carries_across_fragmented_and_whole_compressed_messages() -> None:
    # A fragmented message goes through wsproto, a whole one through the channel's fast path:
    # both must read and feed the one inflater.
    texts = [("Paris, the capital of France, " * k).encode() for k in (30, 31, 32, 33)]
    payloads = server_compress(texts)
    half = len(payloads[1]) // 2
    wire = (
        frame(payloads[0])
        + frame(payloads[1][:half], fin=False)
        + frame(payloads[1][half:], opcode=0x0, rsv1=False)
        + frame(payloads[2])
        + frame(b"3", rsv1=False)  # an uncompressed message between: not part of the window
        + frame(payloads[3])
    )
    for size in (len(wire), 1):
        channel_ = ws()
        got: list[object] = []
        for at in range(0, len(wire), size):
            got += channel_.receive_data(wire[at : at + size])
        assert got == [texts[0].decode(), texts[1].decode(), texts[2].decode(), "3", texts[3].decode()]


def test_compressed_text_comes_raw_when_asked() -> None:
    channel_ = WebSocketChannel(random.Random(0), max_message_size=MiB, deflate=AGREED, raw_text=True)
    (payload,) = server_compress(["é and more".encode()])
    (message,) = channel_.receive_data(frame(payload))
    assert isinstance(message, Utf8Text) and message.decode() == "é and more"
    (bad,) = server_compress([b"\xff\xfe not UTF-8"])
    (message,) = channel_.receive_data(frame(bad))
    assert isinstance(message, Utf8Text)
    with pytest.raises(RemoteProtocolError, match="expected UTF-8 in a WebSocket text frame"):
        message.decode()


def test_our_messages_are_compressed_and_a_server_reads_them() -> None:
    channel_ = ws()
    server = PerMessageDeflate()
    server.finalize("permessage-deflate")
    decoder = FrameProtocol(client=False, extensions=[server])
    texts = ['42["perplexity_labs",{"messages":[{"role":"user","content":"' + "hi " * 100 + '"}]}]', "3", "3"]
    wires = [channel_.send_text(t) for t in texts]
    assert all(w[0] == 0xC1 for w in wires)  # FIN, RSV1, text
    assert wires[0][1] & 0x80  # masked
    assert len(wires[0]) < 100 < len(texts[0])
    decoder.receive_bytes(b"".join(wires))
    assert [f.payload for f in decoder.received_frames()] == texts
    # Byte-exact: the first frame is the rng's mask over zlib's sync-flushed raw deflate, tail stripped.
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
    body = (compressor.compress(texts[0].encode()) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]
    key = random.Random(0).getrandbits(32).to_bytes(4, "big")
    assert wires[0] == bytes([0xC1, 0x80 | len(body)]) + key + bytes(b ^ key[i % 4] for i, b in enumerate(body))


def test_client_no_context_takeover_and_a_small_window_are_honoured() -> None:
    channel_ = ws(DeflateParameters(client_no_context_takeover=True, client_max_window_bits=9))
    server = PerMessageDeflate(client_no_context_takeover=True)
    server.finalize("permessage-deflate; client_max_window_bits=9")
    decoder = FrameProtocol(client=False, extensions=[server])
    wires = [channel_.send_text("same words, same words") for _ in range(2)]
    decoder.receive_bytes(b"".join(wires))
    assert [f.payload for f in decoder.received_frames()] == ["same words, same words"] * 2
    unmasked = [bytes(b ^ w[2 + i % 4] for i, b in enumerate(w[6:])) for w in wires]
    assert unmasked[0] == unmasked[1]  # each message compressed afresh


def test_a_window_of_8_bits_sends_uncompressed() -> None:
    wire = ws(DeflateParameters(client_max_window_bits=8)).send_text("hello")
    assert wire[0] == 0x81  # RSV1 clear: allowed for any message


def retained(run: Callable[[], object]) -> tuple[int, int]:
    """``(bytes still allocated, peak bytes)`` while ``run()`` ran, what it returned dropped."""
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        run()
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return after - before, peak - before


def test_a_server_that_agrees_but_sends_plain_messages_costs_no_inflater() -> None:
    # Node's ws compresses only messages of 1 KiB and more: the extension is negotiated, yet a
    # Labs session may never see a compressed message.  zlib's inflate state alone is 7 KiB.
    plain = b"".join(frame(b'42["p",{"output":"' + b"x" * k + b'"}]', rsv1=False) for k in range(50))
    channel_ = ws()
    channel_.receive_data(plain)  # warm: the channel's own buffers exist
    kept, peak = retained(lambda: channel_.receive_data(plain))
    assert kept < 1024 and peak < 8 * 1024
    # The first compressed message is what makes an inflater: the same measure sees it.
    (payload,) = server_compress([b"hello " * 10])
    _, peak = retained(lambda: channel_.receive_data(frame(payload)))
    assert peak > 7 * 1024


@pytest.mark.parametrize("fragmented", [False, True])
def test_between_compressed_messages_only_their_text_is_kept(fragmented: bool) -> None:
    # Context takeover: the next message may refer back into this one.  What is kept is the
    # inflated text (1.2 KiB here), not an inflater (7 KiB of state and a 32 KiB window).
    texts = [('42["p",{"output":"' + "Paris is lovely. " * k + '"}]').encode() for k in (30, 31, 32, 33)]
    payloads = server_compress(texts)
    wires = [frame(p) for p in payloads]
    if fragmented:  # through wsproto's path, which must keep the same history
        wires[1:3] = [frame(p[:5], fin=False) + frame(p[5:], opcode=0x0, rsv1=False) for p in payloads[1:3]]
    channel_ = ws()
    got: list[object] = []
    kept, _ = retained(lambda: got.extend(channel_.receive_data(b"".join(wires[:3]))))
    assert got == [t.decode() for t in texts[:3]]
    # What stays: the messages returned and the history; an inflater alone is 39 KiB.
    assert sum(len(t) for t in texts[:3]) < kept < 8 * 1024
    assert channel_.receive_data(wires[3]) == [texts[3].decode()]  # it refers back: the history held
    # Without context takeover nothing is kept at all.
    payloads = server_compress(texts, takeover=False)
    channel_ = ws(DeflateParameters(server_no_context_takeover=True))
    channel_.receive_data(frame(payloads[0]))
    got = []
    kept, _ = retained(lambda: got.extend(channel_.receive_data(frame(payloads[1]))))
    assert got == [texts[1].decode()] and kept < len(texts[1]) + 512  # the message returned, no history


def test_the_history_reaches_back_a_whole_window() -> None:
    # The server may refer back 32 KiB (zlib's compressor: up to 32,506 bytes), across messages.
    rng = random.Random(3)
    first = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(40_000)).encode()
    second = first[-32_400:][:600]  # 32,400 bytes back from the end of the first message
    payloads = server_compress([first, b"3", second])
    assert len(payloads[2]) < 40  # a back-reference, not the text
    for chunk in (None, 7):
        channel_ = ws()
        wire = b"".join(frame(p) for p in payloads)
        got: list[object] = []
        for at in range(0, len(wire), chunk or len(wire)):
            got += channel_.receive_data(wire[at : at + (chunk or len(wire))])
        assert got == [first.decode(), "3", second.decode()]


def test_the_history_of_many_messages_reaches_back_a_whole_window() -> None:
    # Many messages (the history is kept as they came and joined every few): each one repeats
    # text from 32,400 bytes back, across dozens of earlier messages, and reads back the same.
    rng = random.Random(4)
    stream = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(100 * 700)).encode()
    texts = [stream[i * 700 : (i + 1) * 700] for i in range(50)]
    sent = b"".join(texts)
    for i in range(50):  # 300 bytes from 32,400 back (none of them repeated nearer), then filler
        texts.append(sent[-32_400:][:300] + bytes([97 + i % 26]) * 400)
        sent += texts[-1]
    payloads = server_compress(texts)
    assert all(len(p) < 100 for p in payloads[50:])  # back-references, not the text
    channel_ = ws()
    got: list[object] = []
    for p in payloads:
        got += channel_.receive_data(frame(p))
    assert got == [t.decode() for t in texts]


def test_empty_compressed_messages_before_any_text_keep_the_history_empty() -> None:
    # A server may compress empty messages (a deflate block with nothing in it) before any text:
    # no history yet, then text, then text that reaches back into it.
    texts = [b"", b"", b"hello, world", b"", b"hello, world"]
    payloads = server_compress(texts)
    channel_ = ws()
    got: list[object] = []
    for p in payloads:
        got += channel_.receive_data(frame(p))
    assert got == [t.decode() for t in texts]


def test_our_messages_keep_no_compressor() -> None:
    # Each message is compressed by a compressor made for it (zlib's deflate state is 256 KiB at
    # the largest window): once sent, nothing of it is left.
    channel_ = ws()
    kept, peak = retained(lambda: [channel_.send_text("3") for _ in range(10)])
    assert kept < 512 and peak < 64 * 1024  # zlib's deflate state at the largest window alone: 256 KiB
    server = PerMessageDeflate()
    server.finalize("permessage-deflate")
    decoder = FrameProtocol(client=False, extensions=[server])
    rng = random.Random(5)
    texts = ["".join(rng.choice("ab c") for _ in range(n)) for n in (0, 1, 250, 251, 70_000)] + ["3"] * 2
    for text in texts:  # the window and hash table sized to each message, read by a server with takeover
        decoder.receive_bytes(channel_.send_text(text))
    assert [f.payload for f in decoder.received_frames()] == texts


def test_a_compressed_bomb_frame_stops_at_max_message_size() -> None:
    (payload,) = server_compress([b"a" * (20 * MiB)])
    assert len(payload) < 30_000
    tracemalloc.start()
    started = time.thread_time()  # CPU, not wall time: the machine may be loaded
    try:
        with pytest.raises(RemoteProtocolError) as caught:
            ws(limit=MiB).receive_data(frame(payload))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.thread_time() - started < 2.0
    assert peak < 4 * MiB
    assert str(caught.value) == (
        f"expected a WebSocket message of at most {MiB} bytes (max_message_size) once inflated, "
        "got a compressed one that inflates to more"
    )


def test_a_message_exactly_at_the_limit_inflates() -> None:
    text = "b" * 4000
    (payload,) = server_compress([text.encode()])
    assert ws(limit=4000).receive_data(frame(payload)) == [text]
    with pytest.raises(RemoteProtocolError, match="at most 3999 bytes"):
        ws(limit=3999).receive_data(frame(payload))


def test_a_bomb_split_in_fragments_is_counted_whole() -> None:
    (payload,) = server_compress([b"a" * (4 * MiB)])
    half = len(payload) // 2
    wire = frame(payload[:half], fin=False) + frame(payload[half:], opcode=0x0, rsv1=False)
    with pytest.raises(RemoteProtocolError, match="once inflated"):
        ws(limit=MiB).receive_data(wire)


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (frame(b"\xff\xff\xff\xff"), "expected a permessage-deflate message zlib can inflate"),
        (frame(b"\x03\x00", opcode=0x9), "close code 1002"),  # RSV1 on a control frame
        (frame(b"x", fin=False) + frame(b"y", opcode=0x0), "close code 1002"),  # RSV1 on a continuation
        (frame(raw_deflate(b"done") + b"more"), "expected nothing after the final deflate block"),
    ],
)
def test_bad_compressed_frames_are_clear_errors(wire: bytes, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        ws().receive_data(wire)


def test_a_message_ending_with_a_final_block_is_read_and_the_next_starts_afresh() -> None:
    assert ws().receive_data(frame(raw_deflate(b"one")) + frame(raw_deflate(b"two"))) == ["one", "two"]


def test_rsv1_without_negotiation_is_refused() -> None:
    (payload,) = server_compress([b"hello"])
    with pytest.raises(RemoteProtocolError, match="Reserved bit set unexpectedly"):
        ws(None).receive_data(frame(payload))


@FUZZ
@given(
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4),
    cut=st.integers(0, 10**6),
    chunk=st.integers(1, 300),
    takeover=st.booleans(),
    sizes=st.lists(st.sampled_from([-1, 0, 5, 200, 7]), min_size=1, max_size=4),
)
def test_fuzz_compressed_frames_meet_only_labs_errors(
    edits: list[tuple[int, int]], cut: int, chunk: int, takeover: bool, sizes: list[int]
) -> None:
    # (-1: an empty message, which a server may compress too)
    texts = [('42["p",{"output":"' + "Paris! " * k + '"}]').encode() if k >= 0 else b"" for k in sizes]
    data = bytearray(b"".join(frame(p) for p in server_compress(texts, takeover=takeover)))
    for at, value in edits:
        if data:
            data[at % len(data)] = value
    data = data[: len(data) - cut % 8]
    channel_ = ws(DeflateParameters(server_no_context_takeover=not takeover), limit=4096)
    try:
        for at in range(0, len(data), chunk):
            for message in channel_.receive_data(bytes(data[at : at + chunk])):
                assert isinstance(message, str | bytes)  # not raw_text: no Utf8Text
                assert len(message.encode() if isinstance(message, str) else message) <= 4096
    except LabsError:
        pass


# -- permessage-deflate: the client -------------------------------------------------------------------------


def switching_with(extensions: str) -> bytes:
    return switching_protocols(KEY)[:-2] + f"Sec-WebSocket-Extensions: {extensions}\r\n\r\n".encode()


def websocket_client(**kw: object) -> Harness:
    h = make("websocket", **kw)
    h.client.connect(0.0)
    h.client.query("hi", model="sonar", now=0.0)
    return h


def test_the_upgrade_offers_permessage_deflate_and_the_session_uses_it() -> None:
    h = websocket_client()
    request = h.take(1)
    assert request.endswith(
        f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
        .encode()
    )
    h.reply(1, switching_with("permessage-deflate; client_max_window_bits=15"))
    texts = [open_packet(upgrades=()), '40{"sid":"S1"}']
    answer = "Compressed both ways. " * 30
    texts.append(progress("sonar", {"output": answer, "final": True, "citations": []}))
    h.reply(1, b"".join(frame(p) for p in server_compress([t.encode() for t in texts])))
    server = PerMessageDeflate()
    server.finalize("permessage-deflate; client_max_window_bits=15")
    decoder = FrameProtocol(client=False, extensions=[server])
    wire = h.take(1)
    decoder.receive_bytes(wire)
    sent = [f.payload for f in decoder.received_frames()]
    assert sent[0] == '40{"jwt":"anonymous-ask-user"}' and isinstance(sent[1], str)
    assert sent[1].startswith('42["perplexity_labs"')
    assert wire[0] == 0xC1  # compressed
    assert h.events() == [
        Connected(engine_sid="SID1", socket_sid="S1", transport="websocket"),
        TextDelta(text=answer),
        AnswerFinished(model="sonar", text=answer, reasoning="", citations=()),
    ]


def test_without_permessage_deflate_nothing_is_offered_and_an_answer_with_it_is_refused() -> None:
    h = websocket_client(permessage_deflate=False)
    assert b"Sec-WebSocket-Extensions" not in h.take(1)
    with pytest.raises(RemoteProtocolError, match="we offered none"):
        h.reply(1, switching_with("permessage-deflate"))
    assert h.client.state is ClientState.ERROR


def test_a_malformed_extension_answer_fails_the_client() -> None:
    h = websocket_client()
    h.take(1)
    with pytest.raises(RemoteProtocolError, match="got 'client_max_window_bits=99'"):
        h.reply(1, switching_with("permessage-deflate; client_max_window_bits=99"))
    assert h.client.state is ClientState.ERROR
    h.pump()
    assert h.closed == [1]
