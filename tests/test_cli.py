"""The ``plabs`` command line, run as a subprocess (the installed script, and ``python -m plabs_proto``).

``--emulator`` makes ``ask`` start the emulator in-process, so most tests need
no server of their own; the emulator's default answer is built from the prompt
(:func:`default_answer`), which makes stdout exact.
"""

from __future__ import annotations

import gc
import importlib
import io
import json
import os
import pty
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
from plabs_proto.backends.programs.cli import EventPrinter
from plabs_proto.backends.programs.emulator import SONAR_CITATIONS, default_answer, default_reasoning
from servers import read_until

from plabs_proto.errors import LabsError, ResponseError
from plabs_proto.events import (
    AnswerFinished,
    AnswerRevised,
    Citations,
    QueryFailed,
    ReasoningDelta,
    TextDelta,
)
from plabs_proto.labs.answer import DEFAULT_MODEL, MODELS

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
    ("backend", "transport"),
    [("trio", "upgrade"), ("sync", "upgrade"), ("asyncio", "websocket"), ("sync", "polling"), ("curl", "upgrade")],
)
def test_ask_backends_and_transports(backend: str, transport: str) -> None:
    prompt = f"{backend} over {transport}"
    result = plabs("ask", "--emulator", "--backend", backend, "--transport", transport, "--no-reasoning", prompt)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected_text(prompt)
    assert result.stderr == ""


def test_ask_through_curl_as_another_browser() -> None:
    pytest.importorskip("curl_cffi")
    prompt = "curl as safari"
    result = plabs("ask", "--emulator", "--backend", "curl", "--impersonate", "safari", "--transport", "polling",
                   "--no-reasoning", prompt)
    assert (result.returncode, result.stdout, result.stderr) == (0, expected_text(prompt), "")


def test_impersonate_needs_the_curl_backend() -> None:
    result = plabs("ask", "--backend", "asyncio", "--impersonate", "chrome", "hello")
    assert result.returncode == 1
    assert result.stderr == "plabs: error: --impersonate needs --backend curl (only curl speaks as a browser)\n"


def test_ask_reads_the_prompt_from_stdin() -> None:
    prompt = "A prompt\nover two lines"
    result = plabs("ask", "--emulator", "--no-reasoning", "-", stdin=prompt + "\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected_text(prompt)


def test_ask_without_a_prompt_reads_stdin_when_it_is_not_a_terminal() -> None:
    result = plabs("ask", "--emulator", "--no-reasoning", stdin="piped question\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected_text("piped question")


def test_dash_with_more_words_is_a_usage_error() -> None:
    result = plabs("ask", "--emulator", "-", "extra", "words", stdin="from stdin")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines()[-1] == (
        'plabs ask: error: "-" reads the prompt from standard input and takes no other words, '
        "got 2 more: 'extra words'"
    )


def run_bytes(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*PLABS, *args], input=stdin, capture_output=True, timeout=TIMEOUT, env=ENV)


def test_stdin_that_is_not_utf8_is_refused_in_one_line() -> None:
    result = run_bytes("ask", "--emulator", "-", stdin=b"caf\xe9 au lait")
    assert (result.returncode, result.stdout) == (2, b"")
    assert result.stderr == (
        b"plabs ask: error: expected UTF-8 text on standard input, got the byte 0xe9 at offset 3 "
        b"(convert the text to UTF-8 first, e.g. with iconv)\n"
    )
    piped = run_bytes("ask", "--emulator", stdin=b"\xff")  # no "-": the same reading
    assert (piped.returncode, piped.stderr.count(b"\n")) == (2, 1)


def test_arguments_that_are_not_utf8_are_refused_in_one_line() -> None:
    # os.fsdecode gives the lone surrogates Python makes of such argv bytes; subprocess passes the bytes back.
    result = plabs("ask", "--emulator", "caf" + os.fsdecode(b"\xe9"))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "plabs ask: error: expected UTF-8 text in the prompt, got the byte 0xe9 at offset 3 "
        "(convert the text to UTF-8 first, e.g. with iconv)\n"
    )
    model = plabs("ask", "--emulator", "--model", os.fsdecode(b"son\xffar"), "hi")
    assert (model.returncode, model.stderr.count("\n")) == (2, 1)
    assert "expected UTF-8 text in --model, got the byte 0xff" in model.stderr
    for option, url in [("--server", b"http://caf\xe9:1"), ("--proxy", b"http://user:p\xe9ss@127.0.0.1:1")]:
        result = plabs("ask", option, os.fsdecode(url), "hi")
        assert (result.returncode, result.stderr.count("\n")) == (2, 1), result.stderr
        assert f"expected UTF-8 text in {option}, got the byte 0xe9" in result.stderr


def test_help_says_what_happens_to_bytes_that_are_not_utf8() -> None:
    result = plabs("ask", "--help")
    assert result.returncode == 0
    assert "It must be UTF-8: other bytes are refused (exit 2), not replaced" in " ".join(result.stdout.split())


def test_unknown_model_is_sent_after_one_warning() -> None:
    result = plabs("ask", "--emulator", "--no-reasoning", "--model", "sonar-next", "new model")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(expected_text("new model", "sonar-next"))  # the emulator answered as sonar-next
    assert result.stderr == (
        f"plabs: warning: 'sonar-next' is not a known model ({', '.join(MODELS)}); sending it anyway\n"
    )
    known = plabs("ask", "--emulator", "--no-reasoning", "--model", "sonar", "old model")
    assert (known.returncode, known.stderr) == (0, "")


def on_a_terminal(*args: str, stdin_too: bool = False) -> tuple[int, bytes]:
    """Run ``plabs args...`` with stdout and stderr (and stdin if ``stdin_too``) on one
    pseudo-terminal; its exit status and everything the terminal showed, in order."""
    master, slave = pty.openpty()
    try:
        stdin = slave if stdin_too else subprocess.DEVNULL
        process = subprocess.Popen([*PLABS, *args], stdin=stdin, stdout=slave, stderr=slave, env=ENV)
    finally:
        os.close(slave)
    shown = b""
    try:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], deadline - time.monotonic())
            if not ready:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not chunk:
                break
            shown += chunk
        returncode = process.wait(10)
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
            process.wait(5)
    return returncode, shown


def test_no_prompt_with_stdin_on_a_terminal_is_a_usage_error() -> None:
    returncode, shown = on_a_terminal("ask", "--emulator", stdin_too=True)  # does not wait for typing
    assert returncode == 2
    assert shown.endswith(b'plabs ask: error: expected a PROMPT (or a prompt on standard input, or "-")\r\n'), shown


WAITING = b"waiting for the answer...\r\x1b[K"  # the indicator, then carriage return and erase line


def test_terminal_shows_a_waiting_indicator_until_the_first_text() -> None:
    returncode, shown = on_a_terminal("ask", "--emulator", "--no-reasoning", "wait for it")
    assert returncode == 0, shown
    assert shown == WAITING + expected_text("wait for it").encode().replace(b"\n", b"\r\n")


def test_waiting_indicator_is_erased_before_an_error() -> None:
    returncode, shown = on_a_terminal("ask", "--server", "http://127.0.0.1:1", "hello")
    assert returncode == 1
    assert shown.startswith(WAITING + b"plabs: error: expected to connect") and shown.count(b"\n") == 1, shown


def test_no_waiting_indicator_in_json_mode_or_when_stderr_is_piped() -> None:
    returncode, shown = on_a_terminal("ask", "--emulator", "--json", "--model", "sonar", "json")
    assert returncode == 0, shown
    assert shown.startswith(b'{"event": "text"') and b"waiting" not in shown
    piped = plabs("ask", "--emulator", "--model", "sonar", "piped")
    assert (piped.returncode, piped.stderr) == (0, "")


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


@pytest.mark.parametrize("backend", ["asyncio", "trio", "sync"])
@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--server", "ftp://127.0.0.1:1", "expected an http:// or https:// server URL"),
        ("--cafile", __file__, "expected a readable PEM CA file"),
    ],
)
def test_bad_option_for_the_session_is_one_error_line(backend: str, option: str, value: str, message: str) -> None:
    # The session refused its configuration while being built; collecting that half-built
    # object must not print "Exception ignored in ... __del__" after the error line.
    result = plabs("ask", "--backend", backend, option, value, "hello")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"plabs: error: {message}") and result.stderr.count("\n") == 1, result.stderr


@pytest.mark.parametrize("backend", ["asyncio", "trio", "sync"])
def test_connect_that_refuses_its_config_leaves_nothing_for_del(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The same through the library: the half-built Session's __del__ must not raise.
    module = importlib.import_module(f"plabs_proto.backends.{backend}")
    unraisable: list[object] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    with pytest.raises(LabsError, match="expected a proxy URL"):
        module.connect(proxy="bogus://127.0.0.1:1")
    gc.collect()
    assert unraisable == []


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
    line = read_until(process, rb"\n")
    assert re.fullmatch(rb"https://127\.0\.0\.1:\d+\n", line), line  # the URL on a line of its own
    url = line.decode().strip()

    asked = plabs("ask", "--server", url, "--cafile", tls_files.cafile, "--model", "sonar", "hi")
    assert asked.returncode == 0, asked.stderr
    assert asked.stdout.startswith("Served from a subprocess.\n")
    untrusted = plabs("ask", "--server", url, "--model", "sonar", "hi")  # the system CAs do not know it
    assert untrusted.returncode == 1
    assert untrusted.stderr.startswith("plabs: error: ") and untrusted.stderr.count("\n") == 1

    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=10)
    assert process.returncode == 0, err
    assert err.decode() == (
        f'plabs: the Labs emulator serves {url} until Ctrl-C: `plabs ask --server {url} "..."`, '
        f'or server="{url}" in Python\n'
    )


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


def test_printer_a_revision_of_the_reasoning_alone_does_not_reprint_the_answer() -> None:
    """r1-1776 without </think>: the answer streams as reasoning, then the final frame takes the
    reasoning back (the answer printed so far, none, stands) and the answer follows as a TextDelta."""
    out, err = io.StringIO(), io.StringIO()
    printer = EventPrinter(json_lines=False, reasoning=True, stdout=out, stderr=err)
    for event in [
        ReasoningDelta(text="Hello"),
        AnswerRevised(text="", reasoning=""),
        TextDelta(text="Hello"),
        AnswerFinished(model="r1-1776", text="Hello", reasoning=""),
    ]:
        printer.event(event)
    assert out.getvalue() == "Hello\n"
    assert err.getvalue() == "Hello\n[the server revised its reasoning; the answer follows]\n"
    out, err = io.StringIO(), io.StringIO()
    printer = EventPrinter(json_lines=False, reasoning=False, stdout=out, stderr=err)
    for event in [TextDelta(text="Hel"), AnswerRevised(text="Hel", reasoning="x"), TextDelta(text="lo")]:
        printer.event(event)
    assert (out.getvalue(), err.getvalue()) == ("Hello", "")


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
