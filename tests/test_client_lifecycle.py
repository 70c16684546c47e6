"""Stream lifecycle properties: once a session has ended, it opens nothing and leaves nothing open.

A scripted server runs a session on each transport; hypothesis picks the step at
which it ends the session (an Engine.IO close, a Socket.IO disconnect, a
WebSocket close, a bad packet, end of file) and what follows in the same body.
Whatever the ending, after ``Closed`` or an error the client never opens a
stream or writes a byte again, and every stream it opened gets its
``CloseStream``.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from peer import KEY, http_response, open_packet, progress, switching_protocols, ws_frame
from wsproto.frame_protocol import Opcode

from plabs_proto.config import ClientConfig
from plabs_proto.errors import LabsError
from plabs_proto.events import CloseStream, Instruction, OpenStream, SendBytes
from plabs_proto.wire.client import ClientState, LabsClient

ACK = '40{"sid":"S1"}'
PARTIAL = progress("sonar", {"output": "Hel", "final": False})
TERMINAL = (ClientState.CLOSED, ClientState.ERROR)


@dataclass(frozen=True)
class Step:
    """One server reply: ``kind`` is "http" (a polling body), "ws" (frames) or "raw"; ``packets`` its content."""

    stream: int
    kind: str
    packets: tuple[str, ...]
    head: bytes = b""  # raw bytes before the frames (the 101 response)


SCRIPTS = {
    "upgrade": [
        Step(1, "http", (open_packet(),)),
        Step(2, "raw", (), switching_protocols(KEY)),
        Step(1, "http", ("ok",)),
        Step(2, "ws", ("3probe", ACK)),
        Step(2, "ws", (PARTIAL, "2")),
    ],
    "polling": [
        Step(1, "http", (open_packet(upgrades=()),)),
        Step(2, "http", ("ok",)),
        Step(1, "http", (ACK, "2")),
        Step(2, "http", ("ok",)),
        Step(1, "http", (PARTIAL,)),
    ],
    "websocket": [
        Step(1, "ws", (open_packet(upgrades=()),), switching_protocols(KEY)),
        Step(1, "ws", (ACK,)),
        Step(1, "ws", (PARTIAL, "2")),
    ],
}

ENDINGS = ["1", "41", "x", "ws-close", "eof"]
AFTER = ["2", "6", "1", ACK, PARTIAL, "3"]


def _reply(step: Step, extra: list[str]) -> bytes:
    packets = list(step.packets) + [p for p in extra if p != "ws-close"]
    if step.kind == "http":
        return step.head + http_response(200, "\x1e".join(packets))
    if step.kind == "ws":
        frames = b"".join(ws_frame(p) for p in packets)
        if "ws-close" in extra:
            frames += ws_frame(struct.pack("!H", 1000), opcode=Opcode.CLOSE)
        return step.head + frames
    return step.head


class Recorder:
    """Collects the client's instructions in order, and whether the session had ended before each batch."""

    def __init__(self, client: LabsClient) -> None:
        self.client = client
        self.batches: list[tuple[bool, list[Instruction]]] = []
        self.ended = False

    def call(self, fn: object, *args: object) -> None:
        try:
            fn(*args)  # type: ignore[operator]
        except LabsError:
            pass
        self.batches.append((self.ended, self.client.transmit()))
        self.ended = self.client.state in TERMINAL


def _check(rec: Recorder) -> None:
    opened: set[int] = set()
    closed: set[int] = set()
    for ended_before, batch in rec.batches:
        if ended_before:
            assert batch == [], f"instructions after the session ended: {batch}"
        for instruction in batch:
            sid = instruction.stream_id
            if isinstance(instruction, OpenStream):
                assert sid not in opened
                opened.add(sid)
            elif isinstance(instruction, SendBytes):
                assert sid in opened and sid not in closed, f"bytes for stream {sid} when it is not open"
            elif isinstance(instruction, CloseStream):
                assert sid in opened and sid not in closed
                closed.add(sid)
    assert rec.client.state in TERMINAL
    assert opened == closed, f"streams left open after the session ended: {sorted(opened - closed)}"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    transport=st.sampled_from(sorted(SCRIPTS)),
    at=st.integers(0, 4),
    ending=st.sampled_from(ENDINGS),
    after=st.lists(st.sampled_from(AFTER), max_size=4),
    query=st.booleans(),
)
def test_after_the_end_no_stream_opens_and_every_stream_closes(
    transport: str, at: int, ending: str, after: list[str], query: bool
) -> None:
    client = LabsClient(ClientConfig(server="http://labs.test", transport=transport), rng=random.Random(0))
    rec = Recorder(client)
    rec.call(client.connect, 0.0)
    if query:
        rec.call(lambda: client.query("hi", model="sonar", now=0.0))
    script = SCRIPTS[transport]
    at = min(at, len(script) - 1)
    for index, step in enumerate(script):
        extra: list[str] = []
        if index == at and ending != "eof":
            extra = [ending, *after]
        rec.call(client.receive_data, step.stream, _reply(step, extra), 1.0)
        if index == at and ending == "eof":
            rec.call(client.receive_data, step.stream, b"", 1.0)
    # Whatever comes afterwards, nothing opens again.
    rec.call(client.handle_timer, 1e9)
    rec.call(client.close, 2.0)
    _check(rec)


def test_server_close_in_the_handshake_body_opens_nothing() -> None:
    """The open packet, then ``1``: the session is closed; the CONNECT and the upgrade never go out."""
    for transport in ("upgrade", "polling"):
        client = LabsClient(ClientConfig(server="http://labs.test", transport=transport), rng=random.Random(0))
        client.connect(0.0)
        client.transmit()
        client.receive_data(1, http_response(200, open_packet() + "\x1e1\x1e" + ACK), 0.0)
        assert client.transmit() == [CloseStream(stream_id=1), CloseStream(stream_id=2)]
        assert client.state is ClientState.CLOSED
        assert [type(e).__name__ for e in client.events()] == ["Closed"]
