"""Byte traces: recording (with redaction) and replay through the core.

Live sessions run the asyncio backend against the emulator with a
:class:`TraceRecorder` as tracer; the replay must give the same events and
write the same bytes (after redaction).  A scripted session (tests/peer.py)
covers cookies, which the emulator never sets.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import random
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import PROXY_PASSWORD, PROXY_USER, EmulatorFactory, ProxyFactory
from hypothesis import given, settings
from hypothesis import strategies as st
from peer import http_response, open_packet, progress, switching_protocols, ws_frame
from plabs_proto.backends import asyncio as asyncio_backend

from plabs_proto.config import ClientConfig
from plabs_proto.errors import LocalProtocolError, RemoteProtocolError
from plabs_proto.events import (
    AnswerFinished,
    Citations,
    Closed,
    Connected,
    Event,
    ReasoningDelta,
    TextDelta,
)
from plabs_proto.wire.client import LabsClient
from plabs_proto.wire.trace import (
    TraceError,
    TraceRecord,
    TraceRecorder,
    config_header,
    make_header,
    read_trace,
    redact_records,
    replay,
)

DATA = Path(__file__).resolve().parent / "data"
ANSWER = "Traces repeat: café, 🌍."
REASONING = "Short thinking."
EMULATOR = {"answer": ANSWER, "reasoning": REASONING, "frame_delay": 0.001}
PROMPT = "Does a trace repeat?"


def query_events(events: Sequence[Event]) -> list[Event]:
    """The events a Session.query yields (without Connected/Closed)."""
    return [event for event in events if not isinstance(event, Connected | Closed)]


def out_bytes(records: Iterable[TraceRecord]) -> dict[int, bytes]:
    """Every "out" byte per stream, concatenated."""
    out: dict[int, bytes] = {}
    for record in records:
        if record.direction == "out":
            out[record.stream] = out.get(record.stream, b"") + record.data
    return out


def live_session(
    server: str, *, transport: str, model: str, seed: int | None = None, **options: Any
) -> tuple[TraceRecorder, Connected | None, list[Event]]:
    """One query through the asyncio backend's Session, traced."""
    recorder = TraceRecorder({})

    async def main() -> tuple[Connected | None, list[Event]]:
        session = asyncio_backend.connect(
            server=server, transport=transport, tracer=recorder, seed=seed, **options
        )
        recorder.header.update(config_header(session.client.config, model=model, messages=PROMPT, seed=seed))
        async with session, contextlib.aclosing(session.query(PROMPT, model=model)) as answer:
            return session.connected, [event async for event in answer]

    connected, events = asyncio.run(main())
    return recorder, connected, events


# -- live sessions, replayed ---------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["upgrade", "websocket", "polling"])
def test_replay_repeats_a_live_session(transport: str, emulator_factory: EmulatorFactory) -> None:
    emulator = emulator_factory(**EMULATOR)
    recorder, connected, live = live_session(emulator.url, transport=transport, model="sonar-reasoning")
    assert isinstance(live[-1], AnswerFinished)
    assert (live[-1].text, live[-1].reasoning) == (ANSWER, REASONING)
    assert any(isinstance(event, Citations) for event in live)
    lines = recorder.lines()
    assert isinstance(json.loads(lines[0])["seed"], int)  # announced by the backend, which drew it

    replayed_recorder = TraceRecorder({})
    replayed = list(replay(lines, tracer=replayed_recorder))

    assert replayed[0] == connected
    assert isinstance(replayed[-1], Closed)
    assert query_events(replayed) == live
    # Byte-exact: the replayed client writes what the live one wrote (same seed, same inputs).
    recorded_out = out_bytes(read_trace(lines)[1])
    assert recorded_out and out_bytes(replayed_recorder.redacted_records()) == recorded_out


def test_replay_of_ask_which_queries_while_connecting(emulator_factory: EmulatorFactory) -> None:
    emulator = emulator_factory(**EMULATOR)
    recorder = TraceRecorder(make_header(server=emulator.url, model="r1-1776", messages=PROMPT, seed=7))

    async def main() -> str:
        answer = asyncio_backend.ask(PROMPT, server=emulator.url, tracer=recorder, seed=7)
        async with contextlib.aclosing(answer):
            return "".join([text async for text in answer])

    assert asyncio.run(main()) == ANSWER
    replayed_recorder = TraceRecorder({})
    events = list(replay(recorder.lines(), tracer=replayed_recorder))
    assert "".join(event.text for event in events if isinstance(event, TextDelta)) == ANSWER
    assert "".join(event.text for event in events if isinstance(event, ReasoningDelta)) == REASONING
    assert out_bytes(replayed_recorder.redacted_records()) == out_bytes(read_trace(recorder.lines())[1])


def test_proxy_credentials_never_reach_the_trace(
    emulator_factory: EmulatorFactory, proxy_factory: ProxyFactory
) -> None:
    emulator = emulator_factory(**EMULATOR)
    proxy = proxy_factory("http")
    recorder, _, live = live_session(emulator.url, transport="upgrade", model="sonar", proxy=proxy.url(), seed=3)
    assert isinstance(live[-1], AnswerFinished) and live[-1].text == ANSWER
    raw = b"".join(record.data for record in recorder.records)
    assert b"CONNECT " not in raw and b"proxy-authorization" not in raw.lower()
    text = "\n".join(recorder.lines())
    assert PROXY_PASSWORD not in text and PROXY_USER not in text
    decoded = b"".join(record.data for record in read_trace(recorder.lines())[1])
    assert PROXY_PASSWORD.encode() not in decoded
    assert query_events(list(replay(recorder.lines()))) == live


def test_committed_emulator_trace_replays() -> None:
    """tests/data/emulator_trace.jsonl: `plabs ask --trace` against `plabs emulator` (upgrade transport)."""
    with (DATA / "emulator_trace.jsonl").open(encoding="utf-8") as handle:
        events = list(replay(handle))
    finished = [event for event in events if isinstance(event, AnswerFinished)]
    assert finished == [
        AnswerFinished(
            model="sonar-reasoning",
            text="Paris is the capital of France.",
            reasoning="The user wants a capital.",
            citations=(
                "https://example.com/labs-emulator/source-1",
                "https://example.org/labs-emulator/source-2",
            ),
            elapsed_time=finished[0].elapsed_time,
            tokens_streamed=10,
        )
    ]
    assert "".join(event.text for event in events if isinstance(event, TextDelta)) == finished[0].text
    assert isinstance(events[0], Connected) and events[0].transport == "upgrade"
    assert isinstance(events[-1], Closed)


def test_committed_trace_replays_byte_exact() -> None:
    lines = (DATA / "emulator_trace.jsonl").read_text(encoding="utf-8").splitlines()
    recorder = TraceRecorder({})
    list(replay(lines, tracer=recorder))
    assert out_bytes(recorder.redacted_records()) == out_bytes(read_trace(lines)[1])


# -- a scripted session with cookies and an Authorization header ------------------------------------


def scripted_session(client: LabsClient) -> list[Event]:
    """Play the server of an upgrade session that sets a cookie (plain HTTP, in memory)."""
    sent: dict[int, bytes] = {}

    def take(stream_id: int) -> bytes:
        for instruction in client.transmit():
            data = getattr(instruction, "data", b"")
            sent[instruction.stream_id] = sent.get(instruction.stream_id, b"") + data
        return sent.pop(stream_id, b"")

    cookie = {"Set-Cookie": "__cf_bm=SECRET-COOKIE-VALUE; path=/; HttpOnly"}
    client.connect(0.0)
    client.query(PROMPT, model="sonar", now=0.0)
    assert take(1).startswith(b"GET /socket.io/?EIO=4&transport=polling")
    client.receive_data(1, http_response(200, open_packet("SID1"), headers=cookie), 0.1)
    assert b"Cookie: __cf_bm=SECRET-COOKIE-VALUE\r\n" in take(1)  # the CONNECT POST
    upgrade = take(2)  # the WebSocket upgrade, on the second connection
    key = re.search(rb"Sec-WebSocket-Key: (\S+)", upgrade)
    assert key is not None and b"Cookie: __cf_bm=SECRET-COOKIE-VALUE\r\n" in upgrade
    # The "ok" arrives in two pieces, split inside the Set-Cookie value.
    reply = http_response(200, "ok", headers={"Set-Cookie": "other=SECRET-TWO"})
    cut = reply.index(b"SECRET-TWO") + 3
    client.receive_data(1, reply[:cut], 0.2)
    client.receive_data(1, reply[cut:], 0.25)
    client.receive_data(2, switching_protocols(key.group(1).decode()), 0.4)
    take(2)
    frames = [
        "3probe",
        '40{"sid":"SOCK1"}',
        "6",
        progress("sonar", {"output": "Cookies: ", "final": False}),
        progress("sonar", {"output": "Cookies: Set-Cookie: x=1", "final": True, "status": "completed"}),
    ]
    client.receive_data(2, b"".join(ws_frame(frame) for frame in frames), 0.5)
    client.close(0.6)
    take(2)
    return client.events()


def test_redaction_of_cookies_and_authorization_keeps_replay_byte_exact() -> None:
    config = ClientConfig(
        server="https://labs.example", tls=False, headers=(("Authorization", "Bearer SECRET-TOKEN"),)
    )
    recorder = TraceRecorder(config_header(config, model="sonar", messages=PROMPT, seed=11))
    live = scripted_session(LabsClient(config, rng=random.Random(11), tracer=recorder))
    assert isinstance(live[-2], AnswerFinished) and live[-2].text == "Cookies: Set-Cookie: x=1"

    lines = recorder.lines()
    assert "SECRET" not in "\n".join(lines)
    header, records = read_trace(lines)
    assert header.headers == (("Authorization", "[redacted]"),)
    decoded = list(records)
    everything = b"".join(record.data for record in decoded)
    assert b"SECRET" not in everything
    assert b"Set-Cookie: __cf_bm=[redacted]; path=/; HttpOnly\r\n" in everything
    assert b"Set-Cookie: other=[redacted]\r\n" in everything
    assert b"Cookie: __cf_bm=[redacted]\r\n" in everything
    assert b"Authorization: [redacted]\r\n" in everything
    assert b"Cookies: Set-Cookie: x=1" in everything  # answer text that looks like a header is untouched

    replayed_recorder = TraceRecorder({})
    replayed = list(replay(lines, tracer=replayed_recorder))
    assert replayed == live
    replayed_out = out_bytes(replayed_recorder.records)  # the replayed client only knows redacted values
    assert b"Cookie: __cf_bm=[redacted]\r\n" in replayed_out[2]
    assert replayed_out == out_bytes(decoded)


# -- redaction, unit level ------------------------------------------------------------------------------

REQUEST = (
    b"POST /x HTTP/1.1\r\nHost: h\r\nCookie: a=1; b=two\r\nAuthorization: Basic Zm9vOmJhcg==\r\n"
    b"Content-Length: 25\r\n\r\nCookie: in-the-body=keep\n"
    b"GET /upgrade HTTP/1.1\r\nCookie: c=3\r\nUpgrade: websocket\r\n\r\n"
    b"\x81\x8eCookie: frame!"
)
REQUEST_REDACTED = (
    b"POST /x HTTP/1.1\r\nHost: h\r\nCookie: a=[redacted]; b=[redacted]\r\nAuthorization: [redacted]\r\n"
    b"Content-Length: 25\r\n\r\nCookie: in-the-body=keep\n"
    b"GET /upgrade HTTP/1.1\r\nCookie: c=[redacted]\r\nUpgrade: websocket\r\n\r\n"
    b"\x81\x8eCookie: frame!"
)
RESPONSES = (
    b"HTTP/1.1 200 OK\r\nSet-Cookie: s=secret; Path=/\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"15\r\nSet-Cookie: body=keep\r\n0\r\n\r\n"
    b"HTTP/1.1 204 No Content\r\nset-cookie:  t=x \r\n\r\n"
    b"HTTP/1.1 101 Switching Protocols\r\nSet-Cookie: u=y\r\n\r\n"
    b"Set-Cookie: websocket-bytes\r\n\r\n"
)
RESPONSES_REDACTED = (
    b"HTTP/1.1 200 OK\r\nSet-Cookie: s=[redacted]; Path=/\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"15\r\nSet-Cookie: body=keep\r\n0\r\n\r\n"
    b"HTTP/1.1 204 No Content\r\nset-cookie:  t=[redacted] \r\n\r\n"
    b"HTTP/1.1 101 Switching Protocols\r\nSet-Cookie: u=[redacted]\r\n\r\n"
    b"Set-Cookie: websocket-bytes\r\n\r\n"
)


def split(data: bytes, cuts: Sequence[int], stream: int, direction: str) -> list[TraceRecord]:
    points = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
    return [TraceRecord(float(i), stream, direction, data[a:b]) for i, (a, b) in enumerate(itertools.pairwise(points))]


def test_redaction_of_whole_chunks() -> None:
    records = split(REQUEST, [], 1, "out") + split(RESPONSES, [], 1, "in") + [TraceRecord(9.0, 1, "in", b"")]
    redacted = redact_records(records)
    assert [record.data for record in redacted] == [REQUEST_REDACTED, RESPONSES_REDACTED, b""]
    assert [(r.t, r.stream, r.direction) for r in redacted] == [(r.t, r.stream, r.direction) for r in records]
    assert redact_records(redacted) == redacted  # idempotent


@settings(max_examples=60, deadline=None)
@given(
    out_cuts=st.lists(st.integers(min_value=0, max_value=len(REQUEST)), max_size=8),
    in_cuts=st.lists(st.integers(min_value=0, max_value=len(RESPONSES)), max_size=8),
)
def test_redaction_does_not_depend_on_how_bytes_were_chunked(out_cuts: list[int], in_cuts: list[int]) -> None:
    records = split(REQUEST, out_cuts, 1, "out") + split(RESPONSES, in_cuts, 2, "in")
    redacted = redact_records(records)
    assert all(record.data for record in redacted)  # no empty chunk: that would read as end of file
    assert b"".join(r.data for r in redacted if r.direction == "out") == REQUEST_REDACTED
    assert b"".join(r.data for r in redacted if r.direction == "in") == RESPONSES_REDACTED
    # Each redacted chunk keeps the time, stream and place of the chunk it came from.
    keys = iter([(r.t, r.stream, r.direction) for r in records])
    assert all(any(key == (r.t, r.stream, r.direction) for key in keys) for r in redacted)


def test_redaction_leaves_unframed_bytes_alone() -> None:
    garbage = b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\nSet-Cookie: z=1\r\n\r\n"
    [record] = redact_records([TraceRecord(0.0, 1, "in", garbage)])
    assert record.data == garbage
    body_to_eof = b"HTTP/1.0 200 OK\r\nSet-Cookie: k=v\r\n\r\nSet-Cookie: body=1\r\n\r\n"
    [record] = redact_records([TraceRecord(0.0, 1, "in", body_to_eof)])
    assert record.data == b"HTTP/1.0 200 OK\r\nSet-Cookie: k=[redacted]\r\n\r\nSet-Cookie: body=1\r\n\r\n"


# -- bad traces -------------------------------------------------------------------------------------------

HEADER = json.dumps(make_header(server="http://127.0.0.1:9", messages="hi", seed=1), separators=(",", ":"))


def record(t: float = 0.0, stream: int = 1, direction: str = "in", data: bytes = b"x") -> str:
    return json.dumps({"t": t, "stream": stream, "dir": direction, "b64": base64.b64encode(data).decode()})


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([], "trace line 1: expected a plabs trace header, got an empty trace"),
        (["not json"], "trace line 1: expected a JSON object, got 'not json'"),
        (['{"plabs_trace": 2}'], "trace line 1: expected trace format version 1, got 2"),
        (['{"server": "x"}'], "trace line 1: expected a plabs trace header"),
        ([HEADER.replace('"seed":1', '"seed":"1"')], "trace line 1: expected an integer seed in 'seed', got '1'"),
        ([HEADER.replace('"upgrade"', '"pigeon"')], "expected a transport among upgrade, websocket, polling"),
        ([HEADER.replace('"messages":[{', '"messages":[[{').replace('}],', '}]],')], "every message"),
        ([HEADER, "", "[1]"], "trace line 3: expected a JSON object, got '[1]'"),
        ([HEADER, record(), '{"t": 1}'], "trace line 3: expected a stream id in 'stream', got no 'stream' key"),
        ([HEADER, record(direction="sideways")], "trace line 2: expected 'in' or 'out' in 'dir', got 'sideways'"),
        ([HEADER, record().replace('"eA=="', '"e!=="')], "trace line 2: expected base64 data in 'b64', got 'e!=='"),
        ([HEADER, record(t=-1.0)], "trace line 2: expected a time >= 0 in 't', got -1.0"),
        ([HEADER, record(t=True)], "trace line 2: expected a time in seconds in 't', got True"),
        ([HEADER, record(t=2.0), record(t=1.0)], "trace line 3: expected times in order, got t=1.0 after t=2.0"),
        ([HEADER.replace('"hi"', '""')], "trace line 1: the header does not start a session"),
        ([HEADER.replace('"seed":1', '"seed":1,"timeouts":{"connect":0}')],
         "trace line 1: the header does not start a session: expected connect_timeout as a number of seconds > 0"),
    ],
)
def test_bad_trace_lines_name_the_line(lines: list[str], message: str) -> None:
    with pytest.raises(TraceError) as info:
        list(replay(lines))
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_peer_errors_in_a_trace_are_raised_again() -> None:
    lines = [HEADER, record(0.1, 1, "in", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")]
    with pytest.raises(RemoteProtocolError, match=r"expected the Engine\.IO open packet"):
        list(replay(lines))


def test_a_trace_that_stops_mid_answer_says_so() -> None:
    lines = (DATA / "emulator_trace.jsonl").read_text(encoding="utf-8").splitlines()
    last_text = max(i for i, line in enumerate(lines) if b"Paris" in base64.b64decode(json.loads(line).get("b64", "")))
    events: list[Event] = []
    with pytest.raises(TraceError, match=r"the trace ends before the answer finished \(\d+ characters"):
        for event in replay(lines[:last_text]):
            events.append(event)
    assert isinstance(events[0], Connected)


def test_recorder_takes_the_announced_seed_and_rejects_unknown_directions() -> None:
    recorder = TraceRecorder(make_header(messages="hi"))
    assert recorder.header["seed"] is None
    recorder(5.0, 0, "seed", b"123456789012345678901234567890")
    recorder(5.5, 1, "out", b"GET")
    assert recorder.header["seed"] == 123456789012345678901234567890
    assert recorder.records == [TraceRecord(0.0, 1, "out", b"GET")]  # t counts from the first chunk
    with pytest.raises(LocalProtocolError, match="'in', 'out' or 'seed'"):
        recorder(6.0, 1, "up", b"x")
