"""Byte traces of the ask service (``service="perplexity"``): recorded, redacted, replayed.

Live sessions run the asyncio backend against the Perplexity emulator with a
:class:`TraceRecorder`; the replay through :class:`PerplexityClient` must give
the same events and write the same bytes (after redaction).  A signed-in
session's token and cookies never reach the trace.  Every trace found under
``tests/data/real/`` (a user's recording of the real site, see the README) is
replayed too; there are none in the repository, so that test skips.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from plabs_proto.backends import asyncio as asyncio_backend

from plabs_proto.events import AnswerFinished, Closed, Connected, Event, TextDelta
from plabs_proto.perplexity.request import SESSION_COOKIE
from plabs_proto.wire.trace import (
    REDACTED,
    TraceError,
    TraceRecord,
    TraceRecorder,
    config_header,
    make_header,
    parse_header,
    read_trace,
    replay,
)

DATA = Path(__file__).resolve().parent / "data"
#: Where a user puts traces of the real site (``plabs ask --service perplexity --trace``) for the suite to replay.
REAL = DATA / "real"
COMMITTED = DATA / "perplexity_emulator_trace.jsonl"
ANSWER = "Traces of the ask service repeat: café, 🌍."
PROMPT = "Does an ask trace repeat?"
TOKEN = "SECRET-SESSION-TOKEN-1234"
COOKIES_TXT = (
    "# Netscape HTTP Cookie File\n"
    ".perplexity.ai\tTRUE\t/\tTRUE\t0\tpplx.visitor-id\tSECRET-VISITOR-5678\n"
    "www.perplexity.ai\tFALSE\t/\tTRUE\t0\tcf_clearance\tSECRET-CLEARANCE-9012\n"
)
SECRETS = ("SECRET-SESSION-TOKEN-1234", "SECRET-VISITOR-5678", "SECRET-CLEARANCE-9012")


def out_bytes(records: Iterable[TraceRecord]) -> dict[int, bytes]:
    """Every "out" byte per stream, concatenated."""
    out: dict[int, bytes] = {}
    for record in records:
        if record.direction == "out":
            out[record.stream] = out.get(record.stream, b"") + record.data
    return out


def in_bytes(records: Iterable[TraceRecord]) -> bytes:
    return b"".join(record.data for record in records if record.direction == "in")


def live_session(server: str, seed: int | None = None, **options: Any) -> tuple[TraceRecorder, list[Event]]:
    """One ask through the asyncio backend's session, traced: every event, Connected and Closed included."""
    recorder = TraceRecorder({})

    async def main() -> list[Event]:
        session = asyncio_backend.connect(server=server, service="perplexity", tracer=recorder, seed=seed, **options)
        recorder.header.update(config_header(session.client.config, model="turbo", messages=PROMPT, seed=seed))
        async with session, contextlib.aclosing(session.query(PROMPT)) as answer:
            return [event async for event in answer]

    events = asyncio.run(main())
    return recorder, events


def check_replay(lines: list[str], live: list[Event]) -> list[Event]:
    """Replay ``lines``: the same answer events as ``live``, the same bytes written; the replayed events."""
    replayed_recorder = TraceRecorder({})
    replayed = list(replay(lines, tracer=replayed_recorder))
    assert isinstance(replayed[0], Connected) and replayed[0].transport == "sse"
    assert isinstance(replayed[-1], Closed)
    assert [event for event in replayed if not isinstance(event, Connected | Closed)] == live
    recorded_out = out_bytes(read_trace(lines)[1])
    assert recorded_out and out_bytes(replayed_recorder.redacted_records()) == recorded_out
    return replayed


@pytest.mark.parametrize("shape", ["steps", "blocks", "workflow"])
def test_replay_repeats_a_live_ask(shape: str, perplexity_emulator_factory: Any) -> None:
    emulator = perplexity_emulator_factory(answer=ANSWER, shape=shape, require_cookie=True)
    recorder, live = live_session(emulator.url)
    assert isinstance(live[-1], AnswerFinished) and live[-1].text == ANSWER
    lines = recorder.lines()
    header = json.loads(lines[0])
    assert header["service"] == "perplexity" and isinstance(header["seed"], int)  # the backend drew it
    # The warm-up's cookie (which the ask needs) is redacted where it is set and where it is sent.
    raw = b"".join(record.data for record in read_trace(lines)[1])
    assert b"Set-Cookie: __cf_bm=[redacted]" in raw and b"Cookie: __cf_bm=[redacted]" in raw
    check_replay(lines, live)


def test_a_signed_in_ask_leaves_no_token_and_no_cookie_in_its_trace(perplexity_emulator_factory: Any) -> None:
    emulator = perplexity_emulator_factory(answer=ANSWER, session_token=TOKEN, require_cookie=True)
    recorder, live = live_session(emulator.url, seed=5, session_token=TOKEN, cookies_txt=COOKIES_TXT)
    assert isinstance(live[-1], AnswerFinished) and live[-1].text == ANSWER
    sent = b"".join(record.data for record in recorder.records if record.direction == "out")
    assert all(secret.encode() in sent for secret in SECRETS)  # the live session did send them
    lines = recorder.lines()
    text = "\n".join(lines)
    decoded = b"".join(record.data for record in read_trace(lines)[1])
    for secret in SECRETS:
        assert secret not in text and secret.encode() not in decoded
    header = json.loads(lines[0])
    assert header["cookies"] == ["pplx.visitor-id", "cf_clearance", SESSION_COOKIE]
    assert f"{SESSION_COOKIE}={REDACTED}".encode() in decoded
    # The replay sends the same cookie names with redacted values: the same bytes as the trace.
    check_replay(lines, live)


def test_the_header_says_the_service() -> None:
    labs = parse_header(json.dumps(make_header(messages="hi", seed=1)))
    assert labs.service == "labs" and labs.client_config().service == "labs"
    ask = parse_header(json.dumps(make_header(messages="hi", seed=1, service="perplexity", cookies=["a", "b"])))
    config = ask.client_config()
    assert (ask.service, ask.cookies, config.service) == ("perplexity", ("a", "b"), "perplexity")
    assert config.cookies_txt is not None and config.cookies_txt.count(REDACTED) == 2
    old = make_header(messages="hi", seed=1)
    del old["service"]
    assert parse_header(json.dumps(old)).service == "labs"  # a trace from before the ask service


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"service": "labs2"}, "expected a service among labs, perplexity, got 'labs2'"),
        ({"service": 1}, "expected a service among labs, perplexity, got 1"),
        ({"service": "perplexity", "cookies": "a"}, "expected a list of cookie names in 'cookies', got 'a'"),
        ({"service": "perplexity", "cookies": ["a=b"]}, "expected cookie names in 'cookies', got 'a=b'"),
        ({"service": "perplexity", "cookies": [""]}, "expected cookie names in 'cookies', got ''"),
        ({"service": "labs", "cookies": ["a"]}, "expected no 'cookies' on a labs trace, got 1"),
    ],
)
def test_a_bad_service_or_cookie_list_is_named(change: dict[str, Any], expected: str) -> None:
    header = make_header(messages="hi", seed=1)
    header.update(change)
    with pytest.raises(TraceError) as info:
        parse_header(json.dumps(header))
    assert str(info.value) == f"trace line 1: {expected}"


def test_a_trace_cut_before_the_end_of_the_answer_says_so(perplexity_emulator_factory: Any) -> None:
    emulator = perplexity_emulator_factory(answer=ANSWER)
    recorder, _ = live_session(emulator.url, seed=9)
    lines = recorder.lines()
    last_in = max(i for i, line in enumerate(lines) if '"dir":"in"' in line and '"b64":""' not in line)
    with pytest.raises(TraceError, match="the trace ends before the answer finished"):
        list(replay(lines[:last_in]))


def test_committed_emulator_trace_replays() -> None:
    """tests/data/perplexity_emulator_trace.jsonl: `plabs ask --service perplexity --trace` against its emulator."""
    lines = COMMITTED.read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0])["service"] == "perplexity"
    replayed_recorder = TraceRecorder({})
    events = list(replay(lines, tracer=replayed_recorder))
    finished = [event for event in events if isinstance(event, AnswerFinished)]
    assert len(finished) == 1 and finished[0].text.startswith("This is the Perplexity emulator's answer to: ")
    assert "".join(event.text for event in events if isinstance(event, TextDelta)) == finished[0].text
    assert out_bytes(replayed_recorder.redacted_records()) == out_bytes(read_trace(lines)[1])


def _real_traces() -> list[Any]:
    found = sorted(REAL.glob("*.jsonl")) if REAL.is_dir() else []
    if not found:
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"no trace of the real site in {REAL}"), id="none")]
    return [pytest.param(path, id=path.name) for path in found]


@pytest.mark.parametrize("path", _real_traces())
def test_every_real_trace_replays(path: Path) -> None:
    """A trace a user recorded of the real site: its replay answers in full and writes the bytes it recorded."""
    lines = path.read_text(encoding="utf-8").splitlines()
    replayed_recorder = TraceRecorder({})
    events = list(replay(lines, tracer=replayed_recorder))
    finished = [event for event in events if isinstance(event, AnswerFinished)]
    assert len(finished) == 1, f"expected one answer, got {len(finished)}"
    assert "".join(event.text for event in events if isinstance(event, TextDelta)) == finished[0].text
    assert out_bytes(replayed_recorder.redacted_records()) == out_bytes(read_trace(lines)[1])
