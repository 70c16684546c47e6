"""Hostile input shapes cost bounded memory and work: floods, tiny chunks, tiny fragments."""

from __future__ import annotations

import contextlib
import random
import tracemalloc
from collections.abc import Callable

import pytest
from peer import ClientFrames, Harness, http_response, open_packet, switching_protocols, ws_frame
from test_client import KEY, POLL, POLL_SID, get, make, post
from wsproto.frame_protocol import Opcode

from plabs_proto.config import ClientConfig
from plabs_proto.errors import LabsError, RemoteProtocolError
from plabs_proto.events import Connected
from plabs_proto.wire.client import ClientState, LabsClient


def _polling() -> Harness:
    h = Harness(LabsClient(ClientConfig(server="http://labs.test", transport="polling"), rng=random.Random(0)))
    h.client.connect(0.0)
    h.take(1)
    h.reply(1, http_response(200, open_packet(upgrades=())))
    return h


def test_pings_while_the_post_is_stalled_queue_one_pong() -> None:
    """A flood of pings while a POST waits for its answer leaves one pong to send, not one per ping."""
    h = _polling()
    assert h.take(2) == post(POLL_SID, b'40{"jwt":"anonymous-ask-user"}')  # its answer does not come yet
    for _ in range(3):
        h.take(1)
        h.reply(1, http_response(200, "\x1e".join(["2"] * 5000)))
    assert h.take(2) == b""  # one POST at a time
    h.reply(2, http_response(200, "ok"))
    assert h.take(2) == post(POLL_SID, b"3")
    h.reply(1, http_response(200, "2"))  # a ping after that pong left gets its own
    h.reply(2, http_response(200, "ok"))
    assert h.take(2) == post(POLL_SID, b"3")


def _peak(fn: Callable[[], object]) -> int:
    """tracemalloc's peak while ``fn`` runs, above what was allocated before."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        with contextlib.suppress(LabsError):
            fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    "body",
    [
        "\x1e".join(["6"] * 150_000),  # v4 noops: no object per packet
        "\x1e".join(["2"] * 150_000),  # v4 pings (the POST is stalled)
        "1:6" * 100_000,  # v3 noops: no UTF-16 copy, no object per packet
        '7:42["x"]' * 30_000,  # v3 small messages (events nobody waits for): built one at a time
        "\x1e".join(['42["x"]'] * 30_000),  # v4 small messages
    ],
    ids=["noops", "pings", "legacy-noops", "legacy-messages", "messages"],
)
def test_a_polling_body_of_tiny_packets_costs_little_memory(body: str) -> None:
    """Every packet of a body used to become an object at once (30 times the body in memory)."""
    h = _polling()
    h.take(1)
    data = http_response(200, body)
    peak = _peak(lambda: h.client.receive_data(1, data, 1.0))
    assert peak < 8 * len(data), f"{peak / len(data):.1f} times the input"
    assert h.client.state is ClientState.CONNECTING


def _chunked(body: bytes, piece: int) -> bytes:
    out = bytearray(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n")
    for start in range(0, len(body), piece):
        part = body[start : start + piece]
        out += f"{len(part):x}\r\n".encode() + part + b"\r\n"
    return bytes(out + b"0\r\n\r\n")


def test_a_body_in_tiny_http_chunks_is_refused_early() -> None:
    h = _polling()
    h.take(1)
    data = _chunked(("\x1e".join(["6"] * 100_000)).encode(), 2)
    with pytest.raises(RemoteProtocolError, match=r"pieces of 64 bytes on average, got \d+ pieces for \d+ bytes"):
        h.client.receive_data(1, data, 1.0)
    assert h.client.state is ClientState.ERROR


def test_a_body_in_chunks_of_reasonable_size_is_read() -> None:
    h = _polling()
    h.take(1)
    body = "\x1e".join(["6"] * 50_000) + "\x1e" + '40{"sid":"S1"}'
    data = _chunked(body.encode(), 64)
    peak = _peak(lambda: h.client.receive_data(1, data, 1.0))
    assert peak < 8 * len(data)
    assert h.events() == [Connected(engine_sid="SID1", socket_sid="S1", transport="polling")]


def _websocket() -> Harness:
    h = Harness(LabsClient(ClientConfig(server="http://labs.test", transport="websocket"), rng=random.Random(0)))
    h.client.connect(0.0)
    h.take(1)
    h.reply(1, switching_protocols(KEY) + ws_frame(open_packet(upgrades=())))
    h.take(1)
    return h


def _fragmented(text: str, piece: int) -> bytes:
    parts = [text[i : i + piece] for i in range(0, len(text), piece)]
    frames = [ws_frame(parts[0], opcode=Opcode.TEXT, fin=False)]
    frames += [ws_frame(p, opcode=Opcode.CONTINUATION, fin=False) for p in parts[1:-1]]
    frames.append(ws_frame(parts[-1], opcode=Opcode.CONTINUATION))
    return b"".join(frames)


def test_a_message_in_tiny_websocket_fragments_is_refused_early() -> None:
    h = _websocket()
    data = _fragmented("6" * 200_000, 2)
    with pytest.raises(RemoteProtocolError, match=r"fragments of 64 bytes on average, got \d+ fragments"):
        h.client.receive_data(1, data, 1.0)


def test_a_message_in_fragments_of_reasonable_size_is_read() -> None:
    h = _websocket()
    data = _fragmented('40{"sid":"S1","pad":"' + "x" * 200_000 + '"}', 64)
    peak = _peak(lambda: h.client.receive_data(1, data, 1.0))
    assert peak < 8 * len(data)
    assert h.events() == [Connected(engine_sid="SID1", socket_sid="S1", transport="websocket")]


def test_a_response_that_ends_at_end_of_file_completes() -> None:
    """HTTP/1.0 without Content-Length: the body ends when the server closes the connection."""
    h = make("polling")
    h.client.connect(0.0)
    assert h.take(1) == get(POLL)
    h.reply(1, b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" + open_packet(upgrades=()).encode())
    assert h.take(1) == b""  # the body may go on
    h.reply(1, b"")
    assert h.closed == [1]
    assert h.take(2) == post(POLL_SID, b'40{"jwt":"anonymous-ask-user"}')
    assert h.take(3) == get(POLL_SID)  # the next poll on a new connection
    assert h.client.state is ClientState.CONNECTING and h.client.session.engine_sid == "SID1"


def test_an_empty_legacy_handshake_body_is_a_remote_protocol_error() -> None:
    """``0:`` is the v3 empty payload: no open packet at all."""
    h = make("polling")
    h.client.connect(0.0)
    h.take(1)
    with pytest.raises(RemoteProtocolError, match=r"expected the Engine\.IO open packet first .* got '0:'"):
        h.client.receive_data(1, http_response(200, "0:"), 0.0)
    assert h.client.state is ClientState.ERROR


def test_a_flood_of_websocket_pings_gets_one_pong_per_transmit() -> None:
    """Every ping used to cost a masked pong frame and a SendBytes (50 times the input in memory)."""
    h = _websocket()
    frames = ClientFrames()
    data = ws_frame("2") * 30_000
    peak = _peak(lambda: h.client.receive_data(1, data, 1.0))
    assert peak < 8 * len(data), f"{peak / len(data):.1f} times the input"
    assert frames.feed(h.take(1)) == ["3"]
    h.reply(1, ws_frame("2"))  # a ping after that pong was handed out gets its own
    assert frames.feed(h.take(1)) == ["3"]
    h.reply(1, ws_frame("2") + ws_frame("2"))
    assert frames.feed(h.take(1)) == ["3"]
