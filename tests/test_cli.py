"""The ``plabs`` command line, run as a subprocess (the installed script, and ``python -m plabs_proto``).

``--emulator`` makes ``ask`` start the emulator in-process, so most tests need
no server of their own; the emulator's default answer is built from the prompt
(:func:`default_answer`), which makes stdout exact.
"""

from __future__ import annotations

import io
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import EmulatorFactory, TLSFiles
from plabs_proto.backends.cli import EventPrinter
from plabs_proto.backends.emulator import SONAR_CITATIONS, default_answer, default_reasoning

from plabs_proto.errors import ResponseError
from plabs_proto.events import (
    AnswerFinished,
    AnswerRevised,
    Citations,
    QueryFailed,
    ReasoningDelta,
    TextDelta,
)
from plabs_proto.labs import DEFAULT_MODEL, MODELS

DATA = Path(__file__).resolve().parent / "data"
SCRIPT = Path(sys.executable).with_name("plabs")
PLABS = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "plabs_proto"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1", "PYTHONWARNINGS": "error"}
TIMEOUT = 30


def plabs(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run ``plabs args...`` to completion."""
    return subprocess.run(
        [*PLABS, *args], input=stdin, capture_output=True, text=True, timeout=TIMEOUT, env=ENV, encoding="utf-8"
    )


def expected_text(prompt: str, model: str = DEFAULT_MODEL) -> str:
    return str(default_answer(model, prompt)) + "\n"


def json_lines(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines()]


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Popen objects a test started; each is interrupted, then killed, at the end."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(5)
            for pipe in (process.stdin, process.stdout, process.stderr):
                if pipe is not None:
                    pipe.close()


def read_until(process: subprocess.Popen[bytes], pattern: bytes, timeout: float = 10.0) -> bytes:
    """Read ``process.stdout`` until ``pattern`` (a regex) matches what was read."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    got = b""
    deadline = time.monotonic() + timeout
    while not re.search(pattern, got):
        left = deadline - time.monotonic()
        assert left > 0, f"expected {pattern!r} on stdout within {timeout} s, got {got!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            assert chunk, f"stdout ended before {pattern!r}: {got!r}"
            got += chunk
    return got


# -- ask ---------------------------------------------------------------------------------------------


def test_ask_streams_answer_to_stdout_and_reasoning_to_stderr() -> None:
    result = plabs("ask", "--emulator", "What is a trace?")
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected_text("What is a trace?")
    assert result.stderr == default_reasoning(DEFAULT_MODEL, "What is a trace?") + "\n"  # no tty: no ANSI


def test_ask_no_reasoning_and_citations() -> None:
    result = plabs("ask", "--emulator", "--model", "sonar-reasoning", "--no-reasoning", "Cite", "something")
    assert result.returncode == 0, result.stderr
    citations = "".join(f"[{n}] {url}\n" for n, url in enumerate(SONAR_CITATIONS, 1))
    assert result.stdout == expected_text("Cite something", "sonar-reasoning") + "\nCitations:\n" + citations
    assert result.stderr == ""


def test_ask_json_prints_one_object_per_event() -> None:
    result = plabs("ask", "--emulator", "--json", "--model", "sonar", "JSON please")
    assert result.returncode == 0, result.stderr
    events = json_lines(result.stdout)
    answer = default_answer("sonar", "JSON please")
    assert {event["event"] for event in events[:-2]} == {"text"}
    assert "".join(str(event["text"]) for event in events[:-2]) == answer
    assert events[-2] == {"event": "citations", "citations": list(SONAR_CITATIONS)}
    finished = events[-1]
    assert finished["event"] == "finished" and finished["text"] == answer and finished["reasoning"] == ""
    assert set(finished) == {"event", "model", "text", "reasoning", "citations", "elapsed_time", "tokens_streamed"}


@pytest.mark.parametrize(
    ("backend", "transport"), [("trio", "upgrade"), ("sync", "upgrade"), ("asyncio", "websocket"), ("sync", "polling")]
)
def test_ask_backends_and_transports(backend: str, transport: str) -> None:
    prompt = f"{backend} over {transport}"
    result = plabs("ask", "--emulator", "--backend", backend, "--transport", transport, "--no-reasoning", prompt)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected_text(prompt)
    assert result.stderr == ""


def test_ask_reads_the_prompt_from_stdin() -> None:
    prompt = "A prompt\nover two lines"
    result = plabs("ask", "--emulator", "--no-reasoning", "-", stdin=prompt + "\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected_text(prompt)


def test_python_dash_m_runs_the_same_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "plabs_proto", "ask", "--emulator", "--no-reasoning", "via -m"],
        capture_output=True, text=True, timeout=TIMEOUT, env=ENV, encoding="utf-8",
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, expected_text("via -m"), "")


# -- traces ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("backend", "transport"), [("asyncio", "upgrade"), ("sync", "polling")])
def test_trace_then_replay_prints_the_same(tmp_path: Path, backend: str, transport: str) -> None:
    trace = tmp_path / "session.jsonl"
    live = plabs(
        "ask", "--emulator", "--json", "--backend", backend, "--transport", transport, "--trace", str(trace), "Trace me"
    )
    assert live.returncode == 0, live.stderr
    header = json.loads(trace.read_text(encoding="utf-8").splitlines()[0])
    assert header["plabs_trace"] == 1 and header["transport"] == transport and isinstance(header["seed"], int)
    assert header["messages"] == [{"role": "user", "content": "Trace me"}]
    replayed = plabs("replay", "--json", str(trace))
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout == live.stdout
    as_text = plabs("replay", "--no-reasoning", str(trace))
    assert (as_text.returncode, as_text.stdout, as_text.stderr) == (0, expected_text("Trace me"), "")


def test_replay_of_the_committed_trace() -> None:
    trace = str(DATA / "emulator_trace.jsonl")
    result = plabs("replay", trace)
    citations = "".join(f"[{n}] {url}\n" for n, url in enumerate(SONAR_CITATIONS, 1))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Paris is the capital of France.\n\nCitations:\n" + citations
    assert result.stderr == "The user wants a capital.\n"
    events = json_lines(plabs("replay", "--json", trace).stdout)
    assert [event["event"] for event in events] == ["reasoning"] * 4 + ["text"] * 5 + ["citations", "finished"]
    from_stdin = plabs("replay", "-", stdin=(DATA / "emulator_trace.jsonl").read_text(encoding="utf-8"))
    assert (from_stdin.returncode, from_stdin.stdout, from_stdin.stderr) == (0, result.stdout, result.stderr)


def test_replay_of_a_bad_trace_is_one_error_line(tmp_path: Path) -> None:
    trace = tmp_path / "bad.jsonl"
    lines = (DATA / "emulator_trace.jsonl").read_text(encoding="utf-8").splitlines()
    trace.write_text("\n".join([*lines[:3], "{oops", *lines[3:]]) + "\n", encoding="utf-8")
    result = plabs("replay", str(trace))
    assert result.returncode == 1
    assert result.stderr == "plabs: error: trace line 4: expected a JSON object, got '{oops'\n"


# -- errors, usage, interrupts -------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio", "sync"])
def test_refused_connection_is_one_error_line(backend: str) -> None:
    result = plabs("ask", "--backend", backend, "--server", "http://127.0.0.1:1", "hello")
    assert result.returncode == 1
    assert result.stdout == ""
    assert re.fullmatch(r"plabs: error: expected to connect to the server at 127\.0\.0\.1:1, [^\n]+\n", result.stderr)


def test_error_in_json_mode_is_also_an_event() -> None:
    result = plabs("ask", "--json", "--server", "http://127.0.0.1:1", "hello")
    assert result.returncode == 1
    [event] = json_lines(result.stdout)
    assert event["event"] == "error" and event["error"] == "NetworkError"
    assert result.stderr == f"plabs: error: {event['message']}\n"


def test_server_failure_keeps_the_partial_answer(emulator_factory: EmulatorFactory) -> None:
    emulator = emulator_factory(answer="Half an answer.", fail="Error in processing query", fail_after=1,
                                frame_delay=0.001)
    result = plabs("ask", "--server", emulator.url, "--model", "sonar", "fail please")
    assert result.returncode == 1
    assert result.stdout == "Half an \n"
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("plabs: error: ")
    assert "Error in processing query" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["ask"],
        ["ask", "--transport", "carrier-pigeon", "hi"],
        ["ask", "--timeout", "-1", "hi"],
        ["ask", "--emulator", "--server", "http://127.0.0.1:1", "hi"],
        ["nonsense"],
        [],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = plabs(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "usage: plabs" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("plabs")  # "plabs: error:" or "plabs ask: error:"


def test_empty_stdin_prompt_is_a_usage_error() -> None:
    result = plabs("ask", "--emulator", "-", stdin="  \n")
    assert result.returncode == 2
    assert result.stderr.endswith("plabs ask: error: expected a prompt on standard input, got nothing\n")


def test_models_lists_the_default_first() -> None:
    result = plabs("models")
    assert result.returncode == 0
    names = result.stdout.splitlines()
    assert names[0] == DEFAULT_MODEL and sorted(names) == sorted(MODELS)


@pytest.mark.parametrize("backend", ["asyncio", "trio", "sync"])
def test_ctrl_c_exits_130_quietly(
    backend: str, emulator_factory: EmulatorFactory, processes: list[subprocess.Popen[bytes]]
) -> None:
    emulator = emulator_factory(answer="Slowly, one piece at a time.", frame_delay=0.5)
    process = subprocess.Popen(
        [*PLABS, "ask", "--server", emulator.url, "--backend", backend, "--model", "sonar", "slow"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV,
    )
    processes.append(process)
    first = read_until(process, rb".")  # the first piece of the answer
    process.send_signal(signal.SIGINT)
    rest, err = process.communicate(timeout=10)
    assert process.returncode == 130
    assert err in (b"", b"\n")
    out = first + rest
    assert out.endswith(b"\n") and b"Slowly, one piece at a time.".startswith(out.strip())


# -- the emulator command -----------------------------------------------------------------------------


def test_emulator_command_serves_tls_until_interrupted(
    tls_files: TLSFiles, processes: list[subprocess.Popen[bytes]]
) -> None:
    process = subprocess.Popen(
        [*PLABS, "emulator", "--port", "0", "--certfile", tls_files.certfile, "--keyfile", tls_files.keyfile,
         "--answer", "Served from a subprocess.", "--frame-delay", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV,
    )
    processes.append(process)
    line = read_until(process, rb"https://127\.0\.0\.1:\d+")
    match = re.search(rb"https://127\.0\.0\.1:\d+", line)
    assert match is not None
    url = match.group().decode()

    asked = plabs("ask", "--server", url, "--cafile", tls_files.cafile, "--model", "sonar", "hi")
    assert asked.returncode == 0, asked.stderr
    assert asked.stdout.startswith("Served from a subprocess.\n")
    untrusted = plabs("ask", "--server", url, "--model", "sonar", "hi")  # the system CAs do not know it
    assert untrusted.returncode == 1
    assert untrusted.stderr.startswith("plabs: error: ") and untrusted.stderr.count("\n") == 1

    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=10)
    assert process.returncode == 0, err


def test_emulator_command_rejects_bad_options() -> None:
    result = plabs("emulator", "--frame-delay", "-1")
    assert result.returncode == 2 and "expected a number of seconds >= 0" in result.stderr
    result = plabs("emulator", "--keyfile", "key.pem")
    assert result.returncode == 2 and "--keyfile needs --certfile" in result.stderr


# -- the printer, in process ---------------------------------------------------------------------------


def test_printer_text_mode_revision_dim_reasoning_and_citation_objects() -> None:
    out, err = io.StringIO(), io.StringIO()
    printer = EventPrinter(json_lines=False, reasoning=True, stdout=out, stderr=err, dim=True)
    for event in [
        ReasoningDelta(text="Hmm"),
        TextDelta(text="Hello wrold"),
        AnswerRevised(text="Hello world", reasoning="Hmm"),
        TextDelta(text="!"),
        AnswerFinished(
            model="sonar",
            text="Hello world!",
            reasoning="Hmm",
            citations=({"url": "https://a.example", "title": "A"}, {"url": "https://b.example"}, {"id": 3}),
        ),
    ]:
        printer.event(event)
    assert out.getvalue() == (
        'Hello wrold\nHello world!\n\nCitations:\n[1] A <https://a.example>\n[2] https://b.example\n[3] {"id": 3}\n'
    )
    assert err.getvalue() == "\x1b[2mHmm\x1b[22m\n\x1b[2m[the server revised the answer; it follows in full]\x1b[22m\n"


def test_printer_json_mode_shapes_and_failures() -> None:
    out, err = io.StringIO(), io.StringIO()
    printer = EventPrinter(json_lines=True, reasoning=False, stdout=out, stderr=err)
    printer.event(ReasoningDelta(text="hidden"))
    printer.event(AnswerRevised(text="a", reasoning="b"))
    printer.event(Citations(citations=("https://c.example",)))
    with pytest.raises(ResponseError, match="Error in processing query") as info:
        printer.event(QueryFailed(model="sonar", message="Error in processing query", partial_text="a"))
    printer.error(info.value, str(info.value))
    lines = json_lines(out.getvalue())
    assert lines[:2] == [
        {"event": "revised", "text": "a", "reasoning": "b"},
        {"event": "citations", "citations": ["https://c.example"]},
    ]
    assert lines[2] == {"event": "error", "error": "ResponseError", "message": str(info.value)}
    assert err.getvalue() == f"plabs: error: {info.value}\n"
