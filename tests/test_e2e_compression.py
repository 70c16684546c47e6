"""End to end: compression against real servers over loopback, through the backends.

* Polling bodies: Node's engine.io and python-engineio both gzip a polling answer of 1 KiB or more
  when the request says ``Accept-Encoding: gzip`` (``httpCompression`` / ``http_compression``, on
  by default).  The trace (the bytes above TLS) shows the body really came gzipped; the answer
  must come out exact.
* permessage-deflate: the emulator's aiohttp ``WebSocketResponse`` accepts it by default; Node's
  socket.io does with ``perMessageDeflate`` (server.js ``--per-message-deflate``).  The trace shows
  the server's ``Sec-WebSocket-Extensions`` answer and compressed frames (RSV1) both ways.
"""

from __future__ import annotations

import json
import re

import pytest
from conftest import EmulatorFactory, NodeFactory
from test_e2e_matrix import run_ask

from plabs_proto.events import TextDelta
from plabs_proto.wire.trace import TraceError, TraceRecorder, make_header, parse_header, replay
from plabs_proto.wire.websocket import negotiate_deflate

ANSWER = "Compression works end to end: ünïcödé, 漢字 and emoji 🌍. " * 60  # about 3.6 KiB


class Wire:
    """A tracer that keeps the bytes of each stream, each way."""

    def __init__(self) -> None:
        self.data: dict[tuple[int, str], bytearray] = {}

    def __call__(self, now: float, stream_id: int, direction: str, data: bytes) -> None:
        if direction in ("in", "out"):
            self.data.setdefault((stream_id, direction), bytearray()).extend(data)

    def joined(self, direction: str) -> bytes:
        return b"".join(bytes(v) for (_, d), v in sorted(self.data.items()) if d == direction)


def emulator_url(emulator_factory: EmulatorFactory) -> str:
    return emulator_factory(answer=ANSWER, no_reasoning=True, chunk_size=1500, frame_delay=0.001).url


def node_url(node_factory: NodeFactory, *extra_args: str) -> str:
    return node_factory(
        answer=ANSWER, no_reasoning=True, chunk_size=1500, frame_delay=0.001, extra_args=extra_args
    ).url


def server_url(kind: str, emulator_factory: EmulatorFactory, node_factory: NodeFactory, *extra_args: str) -> str:
    return emulator_url(emulator_factory) if kind == "emulator" else node_url(node_factory, *extra_args)


def gzip_bodies(received: bytes) -> int:
    """How many HTTP responses in ``received`` say ``Content-Encoding: gzip``."""
    return len(re.findall(rb"\r\n[Cc]ontent-[Ee]ncoding: gzip\r\n", received))


@pytest.mark.parametrize("kind", ["node", "emulator"])
@pytest.mark.parametrize("backend", ["sync", "asyncio", "trio"])
def test_polling_bodies_come_gzipped_and_decode_exactly(
    kind: str, backend: str, emulator_factory: EmulatorFactory, node_factory: NodeFactory
) -> None:
    url = server_url(kind, emulator_factory, node_factory)
    wire = Wire()
    assert run_ask(backend, "hello", server=url, transport="polling", tracer=wire, model="sonar-pro") == ANSWER
    assert b"\r\nAccept-Encoding: gzip, deflate\r\n" in wire.joined("out")
    assert gzip_bodies(wire.joined("in")) >= 1
    assert ANSWER[:40].encode() not in wire.joined("in")  # the answer never crossed the wire as it is


@pytest.mark.parametrize("kind", ["node", "emulator"])
def test_without_accept_encoding_the_bodies_come_plain(
    kind: str, emulator_factory: EmulatorFactory, node_factory: NodeFactory
) -> None:
    url = server_url(kind, emulator_factory, node_factory)
    wire = Wire()
    answer = run_ask("sync", "hello", server=url, transport="polling", tracer=wire, accept_encoding=False)
    assert answer == ANSWER
    assert b"Accept-Encoding" not in wire.joined("out")
    assert gzip_bodies(wire.joined("in")) == 0


def switching(received: bytes) -> bytes:
    head = received[received.index(b"HTTP/1.1 101") :]
    return head[: head.index(b"\r\n\r\n") + 4]


def first_frame_byte(sent: bytes) -> int:
    """The first byte of our first frame: what follows the upgrade request's head."""
    return sent[sent.index(b"\r\n\r\n", sent.index(b"Upgrade: websocket")) + 4]


@pytest.mark.parametrize("kind", ["node", "emulator"])
@pytest.mark.parametrize("transport", ["websocket", "upgrade"])
@pytest.mark.parametrize("backend", ["sync", "asyncio", "trio"])
def test_permessage_deflate_is_negotiated_and_works_both_ways(
    kind: str, transport: str, backend: str, emulator_factory: EmulatorFactory, node_factory: NodeFactory
) -> None:
    url = server_url(kind, emulator_factory, node_factory, "--per-message-deflate")
    wire = Wire()
    assert run_ask(backend, "hello", server=url, transport=transport, tracer=wire, model="sonar-pro") == ANSWER
    ws_stream = 1 if transport == "websocket" else 2
    sent = bytes(wire.data[(ws_stream, "out")])
    received = bytes(wire.data[(ws_stream, "in")])
    assert b"\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" in sent
    head = switching(received)
    answered = re.findall(rb"\r\n[Ss]ec-[Ww]eb[Ss]ocket-[Ee]xtensions: ([^\r]*)\r\n", head)
    assert negotiate_deflate([v.decode() for v in answered], offered=True) is not None
    frames = received[len(head) :]
    assert frames[0] & 0x40  # the server's first message came compressed (RSV1)
    assert first_frame_byte(sent) == 0xC1  # and so did ours
    assert ANSWER[:40].encode() not in received


def test_node_without_per_message_deflate_declines_and_frames_stay_plain(node_factory: NodeFactory) -> None:
    wire = Wire()
    assert run_ask("sync", "hello", server=node_url(node_factory), transport="websocket", tracer=wire) == ANSWER
    sent = bytes(wire.data[(1, "out")])
    assert b"\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" in sent
    received = bytes(wire.data[(1, "in")])
    head = switching(received)
    assert b"xtensions" not in head
    assert received[len(head)] == 0x81 and first_frame_byte(sent) == 0x81  # plain both ways


def test_permessage_deflate_off_offers_nothing(emulator_factory: EmulatorFactory) -> None:
    url = emulator_url(emulator_factory)
    wire = Wire()
    answer = run_ask("sync", "hello", server=url, transport="websocket", tracer=wire, permessage_deflate=False)
    assert answer == ANSWER
    sent = bytes(wire.data[(1, "out")])
    assert b"Sec-WebSocket-Extensions" not in sent
    received = bytes(wire.data[(1, "in")])
    head = switching(received)
    assert b"xtensions" not in head
    assert received[len(head)] == 0x81  # plain frames


@pytest.mark.parametrize("transport", ["polling", "websocket"])
def test_a_compressed_session_replays_byte_exact_from_its_trace(
    transport: str, emulator_factory: EmulatorFactory
) -> None:
    url = emulator_url(emulator_factory)
    recorder = TraceRecorder(make_header(server=url, transport=transport, model="sonar-pro", messages="hello"))
    assert run_ask("sync", "hello", server=url, transport=transport, tracer=recorder, model="sonar-pro") == ANSWER
    lines = recorder.lines()
    header = json.loads(lines[0])
    assert header["accept_encoding"] is True and header["permessage_deflate"] is True
    received = b"".join(r.data for r in recorder.records if r.direction == "in")
    assert gzip_bodies(received) if transport == "polling" else b"permessage-deflate" in received
    replayed = TraceRecorder({})
    events = list(replay(lines, tracer=replayed))
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == ANSWER
    sent = [r for r in recorder.redacted_records() if r.direction == "out"]
    assert [r.data for r in replayed.redacted_records() if r.direction == "out"] == [r.data for r in sent]


def test_trace_headers_carry_the_compression_switches() -> None:
    old = {"plabs_trace": 1, "server": "http://x", "transport": "upgrade", "model": "sonar", "messages": [],
           "seed": 1}
    assert parse_header(json.dumps(old)).client_config().permessage_deflate is False  # made before it existed
    assert parse_header(json.dumps(old)).client_config().accept_encoding is False
    new = parse_header(json.dumps({**old, "accept_encoding": True, "permessage_deflate": False}))
    assert new.client_config().accept_encoding is True and new.client_config().permessage_deflate is False
    with pytest.raises(TraceError, match="expected true or false in 'permessage_deflate', got 1"):
        parse_header(json.dumps({**old, "permessage_deflate": 1}))
