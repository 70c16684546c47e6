"""A fuzz suite of whole sessions: valid transcripts of the three transports, mutated at every stage.

The transcripts (``transcripts.py``) are what a good server sends, through no proxy, an HTTP or a
SOCKS5 proxy, with or without TLS.  The fuzzer flips bits, inserts, deletes, splices one
transcript into another, injects hostile packets and close packets, cuts the session short with
an EOF, and feeds the result in any chunking.  ``transcripts.run`` checks the invariants after
every call: only ``LabsError`` escapes; after an error ``state`` is ``ERROR`` and every opened
stream has a ``CloseStream``; ``partial_text`` is the text the events delivered; no call takes
more than ``CALL_LIMIT`` seconds of CPU.

Profiles: the default runs few examples (CI); ``PLABS_FUZZ_EXAMPLES=N`` runs N examples per
property test, by hand::

    PLABS_FUZZ_EXAMPLES=200000 python -m pytest tests/test_fuzz_sessions.py -q --timeout 0

(five property tests, so 200000 each is a million examples; see benchmarks/RESULTS.md for the
time it takes).
"""

from __future__ import annotations

import itertools
import os
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, assume, event, given, settings, target
from hypothesis import strategies as st
from peer import http_response, open_packet, ws_frame
from transcripts import (
    PROXIES,
    TRANSPORTS,
    Outcome,
    Step,
    Transcript,
    Unit,
    build,
    inject,
    make_client,
    mutate_bytes,
    run,
)

from plabs_proto.errors import LabsError, LocalProtocolError
from plabs_proto.events import AnswerFinished, Citations, Connected, TextDelta
from plabs_proto.wire.client import ClientState

LONG = int(os.environ.get("PLABS_FUZZ_EXAMPLES", "0"))


def profile(ci: int) -> settings:
    """``ci`` examples by default, ``PLABS_FUZZ_EXAMPLES`` when it is set."""
    # No example database (``derandomize`` implies none for CI; for the long profile, a database
    # makes Hypothesis keep a Pareto front of every example, which costs more CPU than the examples
    # themselves). A failure prints the blob that reproduces it (``@reproduce_failure``) instead.
    return settings(max_examples=LONG or ci, deadline=None, derandomize=not LONG, database=None,
                    print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- strategies ------------------------------------------------------------------------------------------

texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30)


@st.composite
def transcripts(draw: st.DrawFn, tls: bool | None = None) -> Transcript:
    parts = draw(st.lists(texts, min_size=1, max_size=5))
    outputs = list(itertools.accumulate(parts))
    # The answer is the whole output only without reasoning tags (their split is test_labs.py's).
    assume("<think>" not in outputs[-1] and "</think>" not in outputs[-1])
    return build(
        draw(st.sampled_from(TRANSPORTS)),
        outputs,
        proxy=draw(st.sampled_from(PROXIES)),
        tls=draw(st.booleans()) if tls is None else tls,
        ascii_escapes=draw(st.booleans()),
        pings=draw(st.integers(0, 2)),
    )


def splitter(cuts: list[int]) -> Callable[[bytes], list[bytes]]:
    """Split every step at the drawn offsets (taken modulo its length); [-1] means byte by byte."""

    def split(data: bytes) -> list[bytes]:
        if cuts == [-1]:
            return [data[i : i + 1] for i in range(len(data))]
        points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
        return [data[a:b] for a, b in itertools.pairwise(points)]

    return split


splits = st.one_of(st.just([]), st.just([-1]), st.lists(st.integers(0, 5000), max_size=12))

# Engine.IO packets a hostile server may send mid-session.
packets = st.one_of(
    st.sampled_from([
        "1", "41", "6", "2", "3", "5", "4", "40", '40{"sid":"X"}', "44", '44{"message":"no"}', "42[]",
        '42["sonar_query_progress"]', '42["sonar_query_progress",{"output":1}]', "43[]", "45-[]",
        '451-["x",{"_placeholder":true,"num":0}]', '42["query_failed",{"message":"bad"}]',
        '42["sonar_query_progress",{"output":"x","final":true,"status":"failed"}]', "b" + "QUJD",
        '42["sonar_query_progress",{"output":"\\ud83d"}]', "0" + open_packet(sid="S2")[1:],
    ]),
    st.text(max_size=40).map(lambda s: "4" + s),
    st.text(max_size=40),
)


@st.composite
def mutated(draw: st.DrawFn, t: Transcript, others: list[Transcript]) -> list[Step]:
    """``t``'s steps with 1-4 mutations."""
    steps = list(t.steps)
    for _ in range(draw(st.integers(1, 4))):
        if not steps:
            break
        i = draw(st.integers(0, len(steps) - 1))
        data = steps[i].render()
        kind = draw(st.sampled_from(["flip", "insert", "delete", "splice", "inject", "eof", "drop", "swap"]))
        event(f"mutation: {kind}")
        at = draw(st.integers(0, len(data)))
        if kind == "flip" and data:
            at %= len(data)
            bit = 1 << draw(st.integers(0, 7))
            steps[i] = mutate_bytes(steps[i], data[:at] + bytes([data[at] ^ bit]) + data[at + 1 :])
        elif kind == "insert":
            extra = draw(st.one_of(st.binary(min_size=1, max_size=20),
                                   st.sampled_from([b"\r\n", b"\x1e", b"\x00", b"\xff", b"\x81\x01", b"\x88\x00"])))
            steps[i] = mutate_bytes(steps[i], data[:at] + extra + data[at:])
        elif kind == "delete":
            n = draw(st.integers(1, 20))
            steps[i] = mutate_bytes(steps[i], data[:at] + data[at + n :])
        elif kind == "splice" and others:
            other = draw(st.sampled_from(others))
            j = draw(st.integers(0, len(other.steps) - 1))
            theirs = other.steps[j].render()
            k = draw(st.integers(0, len(theirs)))
            steps[i] = mutate_bytes(steps[i], data[:at] + theirs[k:])
        elif kind == "inject":
            steps[i] = inject(steps[i], draw(st.integers(0, 5)), draw(packets))
        elif kind == "eof":  # the server closes the connection here, maybe mid-message
            steps[i] = replace(mutate_bytes(steps[i], data[:at]), eof=True)
            del steps[i + 1 :]
        elif kind == "drop":
            del steps[i]
        elif kind == "swap" and i + 1 < len(steps):
            steps[i], steps[i + 1] = steps[i + 1], steps[i]
    return steps


def label(out: Outcome) -> None:
    event(f"outcome: {type(out.error).__name__ if out.error else out.state.name}")


# -- valid transcripts --------------------------------------------------------------------------------------


@profile(ci=40)
@given(t=transcripts(), cuts=splits)
def test_valid_transcripts_give_the_answer_in_any_chunking(t: Transcript, cuts: list[int]) -> None:
    whole = run(t, close=True)
    assert whole.error is None, whole.error
    assert whole.state is ClientState.CLOSED
    kinds = [type(e) for e in whole.events]
    assert kinds[0] is Connected
    assert Citations in kinds
    finished = [e for e in whole.events if isinstance(e, AnswerFinished)]
    assert len(finished) == 1 and finished[0].text == t.text and finished[0].citations == t.citations
    assert "".join(e.text for e in whole.events if isinstance(e, TextDelta)) == t.text
    assert whole.partial_text == ""  # the answer finished: no query is streaming
    assert run(t, split=splitter(cuts), close=True).events == whole.events


# -- mutated transcripts ------------------------------------------------------------------------------------

OTHERS = [build(tr, ["one", "one two"], proxy=None) for tr in TRANSPORTS]


@profile(ci=120)
@given(data=st.data(), t=transcripts(tls=False), cuts=splits)
def test_mutated_transcripts_keep_the_invariants(data: st.DataObject, t: Transcript, cuts: list[int]) -> None:
    steps = data.draw(mutated(t, OTHERS))
    out = run(t, steps, splitter(cuts), close=data.draw(st.booleans()))
    label(out)
    target(float(len(out.events)), label="events delivered")


@profile(ci=25)
@given(data=st.data(), t=transcripts(tls=True), cuts=splits)
def test_mutated_transcripts_over_tls_keep_the_invariants(data: st.DataObject, t: Transcript,
                                                          cuts: list[int]) -> None:
    """The plaintext is mutated and then encrypted: the layers above TLS meet it."""
    steps = data.draw(mutated(t, OTHERS))
    label(run(t, steps, splitter(cuts)))


@profile(ci=60)
@given(t=transcripts(tls=False), stage=st.integers(0, 40), cut=st.integers(0, 10_000), cuts=splits)
def test_the_server_closing_at_any_byte(t: Transcript, stage: int, cut: int, cuts: list[int]) -> None:
    """EOF after any prefix of any step: an error that keeps the text so far, or a clean end."""
    stage %= len(t.steps)
    steps = list(t.steps[: stage + 1])
    data = steps[stage].render()
    steps[stage] = replace(mutate_bytes(steps[stage], data[: cut % (len(data) + 1)]), eof=True)
    out = run(t, steps, splitter(cuts))
    label(out)
    if out.error is None:
        event("ended without an error")


CLOSES = {
    "engine.io close": Unit("ws", "1"),
    "socket.io disconnect": Unit("ws", "41"),
    "websocket close": Unit("raw", ws_frame(b"\x03\xe8bye", opcode=0x8)),
}


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("how", sorted(CLOSES))
def test_close_packets_at_every_stage(transport: str, how: str) -> None:
    """A close packet after each step of the session: a clean Closed before the answer's end is an error."""
    t = build(transport, ["a", "ab", "abc"])
    for stage in range(len(t.steps)):
        steps = list(t.steps[: stage + 1])
        step = steps[stage]
        if any(u.kind == "ws" for u in step.units):
            steps[stage] = replace(step, units=(*step.units, CLOSES[how]))
        elif how == "websocket close":
            continue  # no WebSocket on this stream yet
        else:  # a polling response: the packet joins its payload
            steps[stage] = inject(step, 0, CLOSES[how].body if isinstance(CLOSES[how].body, str) else "1")
        out = run(t, steps)
        answered = any(isinstance(e, AnswerFinished) for e in out.events)
        assert out.state in (ClientState.CLOSED, ClientState.ERROR), (stage, out)
        if out.state is ClientState.CLOSED:
            assert out.error is None
        if out.error is not None and not answered:
            assert out.error.partial_text == out.partial_text


# -- hostile shapes, one by one -----------------------------------------------------------------------------

DEEP = 100_000


def _with_open(t: Transcript, **kw: object) -> list[Step]:
    """The transcript with the open packet replaced."""
    steps = list(t.steps)
    for i, step in enumerate(steps):
        for j, unit in enumerate(step.units):
            if isinstance(unit.body, str) and unit.body.startswith("0{"):
                units = list(step.units)
                units[j] = replace(unit, body=open_packet(**kw) if "upgrades" in kw or t.transport != "websocket"
                                   else open_packet(upgrades=(), **kw))  # type: ignore[arg-type]
                steps[i] = replace(step, units=tuple(units))
    return steps


def _first_progress_index(t: Transcript) -> int:
    return next(i for i, s in enumerate(t.steps) if any(isinstance(u.body, str) and u.body.startswith("42[")
                                                        for u in s.units))


def _inject_at_progress(t: Transcript, payload: str) -> list[Step]:
    steps = list(t.steps)
    i = _first_progress_index(t)
    steps[i] = inject(steps[i], 0, payload)
    return steps


def _replace_string(t: Transcript, old: str, new: str) -> list[Step]:
    steps = []
    for step in t.steps:
        units = tuple(replace(u, body=u.body.replace(old, new)) if isinstance(u.body, str) else u
                      for u in step.units)
        steps.append(replace(step, units=units))
    return steps


def _with_headers(t: Transcript, headers: dict[str, str]) -> list[Step]:
    """Every HTTP response of the transcript with extra headers (latin-1, as on the wire)."""
    steps = []
    for step in t.steps:
        if step.units and step.units[0].kind == "http" and not step.tunnel:
            data = b"".join(
                http_response(u.status, u.body, headers=headers) if u.kind == "http" else u.render()
                for u in step.units
            )
            steps.append(mutate_bytes(step, data))
        else:
            steps.append(step)
    return steps


SHAPES: dict[str, Callable[[Transcript], list[Step]]] = {
    "deep nesting in a progress frame": lambda t: _inject_at_progress(
        t, '42["sonar_query_progress",' + "[" * DEEP + "]" * DEEP + "]"),
    "deep nesting in an object": lambda t: _inject_at_progress(
        t, '42["sonar_query_progress",{"output":"a","x":' + '{"a":' * DEEP + "1" + "}" * DEEP + "}]"),
    "a huge integer": lambda t: _inject_at_progress(
        t, '42["sonar_query_progress",{"output":"a","tokens_streamed":1' + "0" * 5000 + "}]"),
    "a huge float": lambda t: _inject_at_progress(
        t, '42["sonar_query_progress",{"output":"a","elapsed_time":1e999999}]'),
    "a huge integer in the open packet": lambda t: _replace_string(
        t, '"pingInterval":25000', '"pingInterval":1' + "0" * 5000),
    "an infinite pingInterval": lambda t: _replace_string(t, '"pingInterval":25000', '"pingInterval":1e999'),
    "control characters in the sid": lambda t: _with_open(t, sid="S\x00\r\n\x7f\u00e9/?&#"),
    "non-ASCII in the sid": lambda t: _with_open(t, sid="S\u00e9\u4e2d\U0001f600"),
    "control characters in the socket sid": lambda t: _replace_string(
        t, '40{"sid":"S', '40{"sid":"\\u0000\\n\u00e9S'),
    "control characters in the event name": lambda t: _inject_at_progress(t, '42["\\u0000\\r\\n\u00e9",{}]'),
    "odd citations": lambda t: _replace_string(
        t, '"citations":["https://a.example"]', '"citations":["\\u0000",{"a":[1,null]},1e308,"\\ud800"]'),
    "lone surrogate escapes in the output": lambda t: _inject_at_progress(
        t, '42["sonar_query_progress",{"output":"\\udc00\\ud800"}]'),
    "non-ASCII cookies": lambda t: _with_headers(t, {"Set-Cookie": "n\u00e9=v\u00e9\u00ff; Path=/"}),
    "control characters in cookies": lambda t: _with_headers(t, {"Set-Cookie": "a=\x01\x7f"}),
    "a flood of pings": lambda t: _inject_at_progress(t, "2\x1e" * 20_000 + "2"),
    "a flood of noops": lambda t: _inject_at_progress(t, "6\x1e" * 20_000 + "6"),
    "a flood of message packets": lambda t: _inject_at_progress(t, "4x\x1e" * 20_000 + "4x"),
}

def _shape_params() -> list[object]:
    params: list[object] = []
    for name in sorted(SHAPES):
        for transport in TRANSPORTS:
            params.append(pytest.param(name, transport, id=f"{name}-{transport}"))
    return params


@pytest.mark.parametrize(("shape", "transport"), _shape_params())
def test_hostile_shapes(shape: str, transport: str) -> None:
    t = build(transport, ["Hello", "Hello, world"])
    out = run(t, SHAPES[shape](t), close=True)
    assert out.state in (ClientState.CLOSED, ClientState.ERROR)


# -- bounded memory -----------------------------------------------------------------------------------------

MB = 1 << 20


def _feed_until_error(steps: list[Step], t: Transcript, stream: int, head: bytes, body: bytes,
                      total: int, *, trace: bool = True,
                      max_message_size: int | None = None) -> tuple[int, int, float]:
    """Run ``steps``, then feed ``head`` and ``body`` again and again on ``stream`` until an error or
    ``total`` bytes; the bytes fed, the peak of traced memory (0 without ``trace``: tracemalloc makes
    every allocation several times slower, so time is best measured without it), the slowest call."""
    client, h = make_client(t, max_message_size=max_message_size)
    client.connect(0.0)
    client.query("hi", model="sonar", now=0.0)
    h.pump()
    for step in steps:
        h.take_raw(step.stream)
        client.receive_data(step.stream, step.render(), 0.0)
        h.pump()
    assert client.state is ClientState.QUERYING or not steps
    fed, slowest, chunk, peak = 0, 0.0, head, 0
    if trace:
        tracemalloc.start()
    try:
        while fed < total:
            start = time.thread_time()
            try:
                client.receive_data(stream, chunk, 0.0)
            except LabsError as exc:
                assert not isinstance(exc, LocalProtocolError)
                assert client.state is ClientState.ERROR
                break
            finally:
                slowest = max(slowest, time.thread_time() - start)
            h.pump()
            h.raw[stream].clear()  # the client's answers (pongs) go out: the test drops them
            client.events()
            fed += len(chunk)
            chunk = body
        if trace:
            _, peak = tracemalloc.get_traced_memory()
    finally:
        if trace:
            tracemalloc.stop()
    return fed, peak, slowest


def _websocket_after(t: Transcript, **open_kw: object) -> list[Step]:
    return _with_open(t, **open_kw)[:2] if open_kw else t.steps[:2]


HUGE: dict[str, tuple[str, int, bytes, bytes, dict[str, object]]] = {
    # transport, steps run before, the first bytes, the bytes repeated, open packet fields
    "endless HTTP headers": ("polling", 0, b"HTTP/1.1 200 OK\r\n", b"X-A: " + b"a" * 1000 + b"\r\n", {}),
    "an endless status line": ("polling", 0, b"HTTP/1.1 200 ", b"a" * 4096, {}),
    "a 100 MB polling body": ("polling", 4, b"HTTP/1.1 200 OK\r\nContent-Length: 104857600\r\n\r\n",
                              b"4" + b"x" * 4095, {}),
    "a chunked body without end": ("polling", 4, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                                   b"1000\r\n" + b"x" * 4096 + b"\r\n", {}),
    "a 100 MB WebSocket frame": ("websocket", 2, b"\x81\x7f" + (100 * MB).to_bytes(8, "big"), b"x" * 4096, {}),
    "endless continuation frames": ("websocket", 2, b"\x01\x01x", b"\x00\x7e\x10\x00" + b"x" * 4096, {}),
    "a 100 MB WebSocket frame after a huge maxPayload": (
        "websocket", 2, b"\x81\x7f" + (100 * MB).to_bytes(8, "big"), b"x" * 4096, {"max_payload": 10**12}),
    "a 100 MB polling body after a huge maxPayload": (
        "polling", 4, b"HTTP/1.1 200 OK\r\nContent-Length: 104857600\r\n\r\n", b"4" + b"x" * 4095,
        {"max_payload": 10**12}),
}

#: The receive limit (max_message_size) of these clients: what one message or body may hold.  (The
#: default, 64 MiB, holds a long answer; a smaller one keeps the test quick, the bound is the same.)
LIMIT = 8 * MB


@pytest.mark.parametrize("shape", sorted(HUGE))
def test_memory_stays_bounded_under_100_mb_of_hostile_input(shape: str) -> None:
    """100 MB of one hostile shape, in 64 KB chunks: refused long before its end, in memory bounded by the
    client's receive limit (whatever maxPayload the server announces)."""
    transport, before, head, body, open_kw = HUGE[shape]
    t = build(transport, ["a"])
    steps = (_with_open(t, **open_kw) if open_kw else list(t.steps))[:before]
    fed, peak, slowest = _feed_until_error(steps, t, t.steps[-1].stream, head, body * (65536 // len(body)),
                                           100 * MB, max_message_size=LIMIT)
    assert peak < 2 * LIMIT, f"{peak / MB:.1f} MB traced after {fed / MB:.1f} MB of input"
    assert fed < 100 * MB, "100 MB of hostile input accepted"
    assert slowest < 2.0


@pytest.mark.parametrize("transport", ["websocket", "polling"])
@pytest.mark.parametrize("packet", [
    pytest.param("2", id="pings"),
    pytest.param("6", id="noops"),
])
def test_a_flood_of_pings_or_noops_in_bounded_time_and_memory(transport: str, packet: str) -> None:
    """64 KB of pings (or noops) in one read: each call stays quick, memory small."""
    t = build(transport, ["a"])
    before = 2 if transport == "websocket" else 4
    if transport == "websocket":
        unit = ws_frame(packet)
        body = unit * (65536 // len(unit))
        head = body
    else:
        payload = "\x1e".join([packet] * 8000)
        head = http_response(200, payload)
        body = b""  # one payload per poll: the next poll is not asked for here
    total = 64 * 1024 if body else len(head)
    _, _, slowest = _feed_until_error(list(t.steps[:before]), t, t.steps[-1].stream, head, body, total,
                                      trace=False)
    assert slowest < 2.0, f"one call took {slowest:.2f} s"
    fed, peak, _ = _feed_until_error(list(t.steps[:before]), t, t.steps[-1].stream, head, body, total)
    assert peak < 40 * MB, f"{peak / MB:.1f} MB traced after {fed / MB:.1f} MB of pings"


# -- EOF-delimited bodies -------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", [
    pytest.param(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n", id="HTTP/1.0"),
    pytest.param(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", id="HTTP/1.1 close"),
])
@pytest.mark.parametrize("transport", ["upgrade", "polling"])
def test_an_eof_delimited_handshake_body(transport: str, head: bytes) -> None:
    """The open packet in a body that ends at EOF: the session goes on, on a new connection."""
    t = build(transport, ["a"])
    steps = [
        replace(mutate_bytes(t.steps[0], head + open_packet().encode()), eof=True),
    ]
    out = run(t, steps)
    assert out.error is None, out.error
    assert out.state is ClientState.CONNECTING
    client, h = make_client(t)
    client.connect(0.0)
    h.take_raw(1)
    for chunk in (head, open_packet().encode(), b""):
        client.receive_data(1, chunk, 0.0)
    h.pump()
    assert 1 in h.closed
    assert client.session.engine_sid == "SID1"
    sent = b"".join(h.take_raw(s) for s in h.raw if s not in h.closed)
    assert b"sid=SID1" in sent  # the CONNECT POST (and the upgrade) went out
