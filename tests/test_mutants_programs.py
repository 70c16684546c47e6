"""Tests that notice (issue 19): what the programs (the gateway, ``plabs serve``, the ``plabs``
command) do at the places mutation testing found no test looking, each as a client or a user sees
it (status, body, headers, output).  benchmarks/mutation-programs.md records the runs.

The gateway's tests here run in process (httpx's ASGITransport, no lifespan, no ASGI server), in
front of a listening socket that never answers (a refused request opens no connection to it).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from conftest import EmulatorFactory
from plabs_proto.backends.programs.emulator import SONAR_CITATIONS, default_answer, default_reasoning
from plabs_proto.backends.programs.gateway import MAX_BODY, create_app
from servers import Silent, reserved_port
from test_gateway import assert_openai_error

from plabs_proto.labs.answer import DEFAULT_MODEL, MODELS

KEY = "sk-mutant-0123456789"
USER = [{"role": "user", "content": "hi"}]


def call(app: Any, method: str, path: str, content: Any = None, headers: dict[str, str] | None = None) -> httpx.Response:
    """One request to ``app`` in process."""

    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            return await client.request(method, path, content=content, headers=headers)

    return asyncio.run(main())


# -- the two gateway bugs issue 19 names -----------------------------------------------------------------


@pytest.mark.parametrize("header", [f"Bearer {KEY}", f"bearer {KEY}", f"BEARER {KEY}", f"Bearer  {KEY} "])
def test_the_api_key_is_taken_as_a_bearer_token(silent: Silent, header: str) -> None:
    app = create_app(server=silent.url, api_key=KEY)
    response = call(app, "GET", "/v1/models", headers={"Authorization": header})
    assert response.status_code == 200 and response.json()["object"] == "list"


@pytest.mark.parametrize(
    "header",
    [f"Basic {KEY}", f"Token {KEY}", KEY, f"Bearer{KEY}", f"Bearer {KEY[:-1]}", f"Bearer {KEY}0", f"{KEY} Bearer",
     "Bearer", "Bearer "],
)
@pytest.mark.parametrize("path", ["/v1/models", "/v1/models/sonar", "/v1/chat/completions", "/v1/responses"])
def test_the_api_key_under_another_scheme_or_changed_is_refused(silent: Silent, header: str, path: str) -> None:
    app = create_app(server=silent.url, api_key=KEY)
    method = "GET" if "models" in path else "POST"
    body = b'{"model": "sonar", "messages": [{"role": "user", "content": "hi"}], "input": "hi"}'
    response = call(app, method, path, content=body if method == "POST" else None, headers={"Authorization": header})
    message = assert_openai_error(response, 401, "invalid_api_key", None)
    assert message == "the API key is not valid: send 'Authorization: Bearer <key>' with the gateway's key"
    assert response.headers["www-authenticate"] == "Bearer"
    assert KEY not in response.text
    assert silent.connections() == 0


def test_no_api_key_is_refused_with_its_own_message(silent: Silent) -> None:
    app = create_app(server=silent.url, api_key=KEY)
    message = assert_openai_error(call(app, "GET", "/v1/models"), 401, "invalid_api_key", None)
    assert message == "no API key was given: send 'Authorization: Bearer <key>' with the gateway's key"


def _padded(size: int) -> bytes:
    """A JSON request of exactly ``size`` bytes (spaces after the object), whose messages are missing."""
    head = b'{"model": "sonar"}'
    return head + b" " * (size - len(head))


async def _pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


@pytest.mark.parametrize("pieces", [1, 2, 3])
def test_the_body_limit_at_its_edge(silent: Silent, pieces: int) -> None:
    """A body of MAX_BODY bytes is read (whole or in pieces); one byte more is 413, the message
    naming the limit and what came."""
    app = create_app(server=silent.url)
    at = _padded(MAX_BODY)
    content: Any = at if pieces == 1 else _pieces(at, -(-len(at) // pieces))
    message = assert_openai_error(call(app, "POST", "/v1/chat/completions", content), 400, None, "messages")
    assert message.startswith("expected 'messages' as a non-empty list")
    over = _padded(MAX_BODY + 1)
    content = over if pieces == 1 else _pieces(over, -(-len(over) // pieces))
    for path in ("/v1/chat/completions", "/v1/responses"):
        response = call(app, "POST", path, content)
        message = assert_openai_error(response, 413, "request_too_large", None)
        assert message == f"expected a request body of at most {MAX_BODY} bytes, got {MAX_BODY + 1} or more"
        content = over if pieces == 1 else _pieces(over, -(-len(over) // pieces))
    assert silent.connections() == 0


# -- the arguments of the plabs commands (arguments.py), through the parser a user types into ----------------


def parsed(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    """The options ``plabs ARGV`` parses to, or the one usage-error line (exit status 2) as a str."""
    from plabs_proto.backends.programs.cli import build_parser

    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:
        assert exc.code == 2
        return capsys.readouterr().err.splitlines()[-1]


@pytest.mark.parametrize(("argv", "name", "value"), [
    (["serve", "--port", "65535"], "port", 65535),
    (["serve", "--port", "0"], "port", 0),
    (["serve", "--max-sessions", "0"], "max_sessions", 0),
    (["serve", "--warm", "3"], "warm", 3),
    (["serve", "--max-threads", "0"], "max_threads", 0),
    (["serve", "--timeout", "5e-324"], "timeout", 5e-324),
    (["serve", "--thread-age", "1.5"], "thread_age", 1.5),
    (["serve", "--timeout", "1.7976931348623157e308"], "timeout", 1.7976931348623157e308),
    (["emulator", "--frame-delay", "0"], "frame_delay", 0.0),
    (["emulator", "--frame-delay", "-0"], "frame_delay", 0.0),
    (["serve", "--proxy", "socks5://127.0.0.1:1080"], "proxy", "socks5://127.0.0.1:1080"),
])
def test_the_arguments_at_their_edges_are_taken(capsys: pytest.CaptureFixture[str], argv: list[str], name: str,
                                                 value: Any) -> None:
    assert getattr(parsed(capsys, *argv), name) == value


@pytest.mark.parametrize(("argv", "line"), [
    (["serve", "--port", "65536"], "argument --port: expected a port from 0 to 65535, got '65536'"),
    (["serve", "--port", "-1"], "argument --port: expected a whole number >= 0, got '-1'"),
    (["serve", "--port", "http"], "argument --port: expected a whole number, got 'http'"),
    (["serve", "--max-sessions", "-1"], "argument --max-sessions: expected a whole number >= 0, got '-1'"),
    (["serve", "--warm", "1.5"], "argument --warm: expected a whole number, got '1.5'"),
    (["serve", "--timeout", "0"], "argument --timeout: expected a number of seconds > 0, got '0'"),
    (["serve", "--timeout=-5e-324"], "argument --timeout: expected a number of seconds > 0, got '-5e-324'"),
    (["serve", "--timeout", "inf"], "argument --timeout: expected a number of seconds > 0, got 'inf'"),
    (["serve", "--thread-age", "nan"], "argument --thread-age: expected a number of seconds > 0, got 'nan'"),
    (["serve", "--thread-age", "soon"], "argument --thread-age: expected a number of seconds, got 'soon'"),
    (["emulator", "--frame-delay=-5e-324"],
     "argument --frame-delay: expected a number of seconds >= 0, got '-5e-324'"),
    (["emulator", "--frame-delay", "inf"], "argument --frame-delay: expected a number of seconds >= 0, got 'inf'"),
    (["serve", "--proxy", "ftp://127.0.0.1:21"], "argument --proxy: "),
])
def test_the_arguments_past_their_edges_are_refused(capsys: pytest.CaptureFixture[str], argv: list[str],
                                                     line: str) -> None:
    shown = parsed(capsys, *argv)
    assert isinstance(shown, str) and shown.startswith(f"plabs {argv[0]}: error: {line}"), shown
    if argv[1:2] == ["--proxy"]:
        assert "ftp" in shown
    else:
        assert shown == f"plabs {argv[0]}: error: {line}"


# -- the gateway's other limits ----------------------------------------------------------------------------


def test_max_sessions_at_its_edge(emulator_factory: EmulatorFactory) -> None:
    """With --max-sessions 2, two requests at once are answered and a third is 429 (Retry-After: 1, the
    message naming the limit); once they are done, the next is answered again."""
    emulator = emulator_factory(answer="slow " * 20, chunk_size=5, frame_delay=0.02)
    app = create_app(server=emulator.url, max_sessions=2)
    body = b'{"model": "sonar", "messages": [{"role": "user", "content": "hi"}]}'

    async def main() -> tuple[list[httpx.Response], httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=30) as client:
            at_once = await asyncio.gather(*(client.post("/v1/chat/completions", content=body) for _ in range(3)))
            after = await client.post("/v1/chat/completions", content=body)
            assert (await client.get("/health")).json()["active"] == 0  # every request left its slot
            return list(at_once), after

    at_once, after = asyncio.run(main())
    assert sorted(response.status_code for response in at_once) == [200, 200, 429]
    busy = next(response for response in at_once if response.status_code == 429)
    message = assert_openai_error(busy, 429, "rate_limit_exceeded", None)
    assert message == "all 2 Perplexity Labs sessions of this gateway are busy; try again shortly"
    assert busy.headers["retry-after"] == "1" and busy.json()["error"]["type"] == "rate_limit_error"
    assert after.status_code == 200 and after.json()["choices"][0]["message"]["content"] == "slow " * 20


@pytest.mark.parametrize(("model", "shown"), [
    ("m" * 38, '"' + "m" * 38 + '"'),  # 40 characters of JSON: shown whole
    ("m" * 39, '"' + "m" * 36 + "..."),  # 41: cut to 37 and "..."
])
def test_an_unknown_model_is_shown_in_at_most_40_characters(silent: Silent, model: str, shown: str) -> None:
    app = create_app(server=silent.url)
    body = json.dumps({"model": model, "messages": USER}).encode()
    message = assert_openai_error(call(app, "POST", "/v1/chat/completions", body), 404, "model_not_found", "model")
    assert message == (f"The model {shown} does not exist: expected one of r1-1776, sonar-pro, sonar, sonar-reasoning, "
                       "sonar-reasoning-pro (GET /v1/models)")


# -- plabs, in process (cli.py): what a user sees on stdout, stderr and in the exit status ---------------------


def plabs(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``plabs ARGV`` run in this process: its exit status, stdout and stderr."""
    from plabs_proto.backends.programs.cli import main

    try:
        status: Any = main(list(argv))
    except SystemExit as exc:
        status = exc.code
    out, err = capsys.readouterr()
    return int(status), out, err


def stdin(monkeypatch: pytest.MonkeyPatch, data: bytes | None) -> None:
    """Standard input holding ``data`` (not a terminal); None: no standard input at all."""
    monkeypatch.setattr(sys, "stdin", None if data is None else io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


@pytest.fixture(scope="module")
def labs_url(emulator_factory: EmulatorFactory) -> str:
    return emulator_factory(frame_delay=0).url


def test_plabs_in_process_ask_answer_reasoning_and_citations(capsys: pytest.CaptureFixture[str],
                                                              labs_url: str) -> None:
    prompt = "What is a trace?"
    assert plabs(capsys, "ask", "--server", labs_url, "--backend", "sync", prompt) == (
        0, default_answer(DEFAULT_MODEL, prompt) + "\n", default_reasoning(DEFAULT_MODEL, prompt) + "\n")
    citations = "".join(f"[{n}] {url}\n" for n, url in enumerate(SONAR_CITATIONS, 1))
    assert plabs(capsys, "ask", "--server", labs_url, "--model", "sonar-reasoning", "--no-reasoning", "Cite",
                 " it ") == (0, default_answer("sonar-reasoning", "Cite  it") + "\n\nCitations:\n" + citations, "")


def test_plabs_in_process_ask_json(capsys: pytest.CaptureFixture[str], labs_url: str) -> None:
    status, out, err = plabs(capsys, "ask", "--server", labs_url, "--json", "--model", "sonar-reasoning", "Hi")
    events = [json.loads(line) for line in out.splitlines()]
    assert (status, err) == (0, "")
    kinds = [event["event"] for event in events]
    assert kinds[-2:] == ["citations", "finished"] and set(kinds[:-2]) == {"reasoning", "text"}
    finished = events[-1]
    assert finished["text"] == default_answer("sonar-reasoning", "Hi") == "".join(
        e["text"] for e in events if e["event"] == "text")
    assert finished["reasoning"] == "".join(e["text"] for e in events if e["event"] == "reasoning")
    assert set(finished) == {"event", "model", "text", "reasoning", "citations", "elapsed_time", "tokens_streamed"}
    assert finished["tokens_streamed"] > 0 and finished["model"] == "sonar-reasoning"
    assert events[-2] == {"event": "citations", "citations": list(SONAR_CITATIONS)}
    quiet = plabs(capsys, "ask", "--server", labs_url, "--json", "--no-reasoning", "--model", "sonar-reasoning", "Hi")
    assert "reasoning" not in {json.loads(line)["event"] for line in quiet[1].splitlines()}


def test_plabs_in_process_prompt_from_stdin(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                            labs_url: str) -> None:
    ask = ("ask", "--server", labs_url, "--no-reasoning")
    stdin(monkeypatch, b"  A prompt\nover two lines \n")
    assert plabs(capsys, *ask, "-") == (0, default_answer(DEFAULT_MODEL, "A prompt\nover two lines") + "\n", "")
    stdin(monkeypatch, b"piped\n")
    assert plabs(capsys, *ask) == (0, default_answer(DEFAULT_MODEL, "piped") + "\n", "")


@pytest.mark.parametrize(("argv", "data", "line"), [
    (["-"], b" \n\t", "plabs ask: error: expected a prompt on standard input, got nothing"),
    (["-"], b"ok\xffno",
     "plabs ask: error: expected UTF-8 text on standard input, got the byte 0xff at offset 2 (convert the text to "
     "UTF-8 first, e.g. with iconv)"),
    (["-", "extra", "words"], b"x",
     "plabs ask: error: \"-\" reads the prompt from standard input and takes no other words, got 2 more: "
     "'extra words'"),
    (["-", "extra"], b"x",
     "plabs ask: error: \"-\" reads the prompt from standard input and takes no other words, got 1 more: 'extra'"),
    ([], None, "plabs ask: error: expected a PROMPT (or a prompt on standard input, or \"-\")"),
    (["-"], None, "plabs ask: error: expected a prompt on standard input, but there is no standard input"),
    (["  "], b"", "plabs ask: error: expected a prompt, got an empty one"),
    (["ok", "\udcffbad"], b"",
     "plabs ask: error: expected UTF-8 text in the prompt, got the byte 0xff at offset 3 (convert the text to UTF-8 "
     "first, e.g. with iconv)"),
    (["--model", "m\udcfe", "hi"], b"",
     "plabs ask: error: expected UTF-8 text in --model, got the byte 0xfe at offset 1 (convert the text to UTF-8 "
     "first, e.g. with iconv)"),
    (["--mode", "copilot", "hi"], b"", "plabs ask: error: --mode needs --service perplexity (Labs has no modes)"),
    (["--emulator", "--server", "http://127.0.0.1:1", "hi"], b"",
     "plabs ask: error: --emulator and --server cannot be used together"),
])
def test_plabs_in_process_ask_usage_errors(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                           argv: list[str], data: bytes | None, line: str) -> None:
    stdin(monkeypatch, data)
    status, out, err = plabs(capsys, "ask", "--server", "http://127.0.0.1:1", *argv) if "--emulator" not in argv \
        else plabs(capsys, "ask", *argv)
    assert (status, out, err.splitlines()[-1]) == (2, "", line)
    usage = err.startswith("usage: plabs ask")
    assert usage == (line.endswith("got nothing") is False and "UTF-8" not in line and "empty one" not in line)


def test_plabs_in_process_unknown_model_is_sent_after_one_warning(capsys: pytest.CaptureFixture[str],
                                                                   labs_url: str) -> None:
    status, out, err = plabs(capsys, "ask", "--server", labs_url, "--no-reasoning", "--model", "sonar-next", "new")
    assert status == 0 and out.startswith(default_answer("sonar-next", "new") + "\n")
    assert err == f"plabs: warning: 'sonar-next' is not a known model ({', '.join(MODELS)}); sending it anyway\n"


@pytest.mark.parametrize(("argv", "status", "line"), [
    (["ask", "--server", "http://127.0.0.1:1", "--cafile", "/nonexistent/ca.pem", "hi"], 1,
     "plabs: error: cannot read the CA file '/nonexistent/ca.pem': No such file or directory"),
    (["ask", "--server", "http://127.0.0.1:1", "--trace", "/nonexistent/t.jsonl", "hi"], 1,
     "plabs: error: cannot write the trace to '/nonexistent/t.jsonl': No such file or directory"),
    (["ask", "--backend", "asyncio", "--impersonate", "chrome", "--server", "http://127.0.0.1:1", "hi"], 1,
     "plabs: error: --impersonate needs --backend curl (only curl speaks as a browser)"),
    (["ask", "--backend", "curl", "--trace", "TRACE", "--server", "http://127.0.0.1:1", "hi"], 1,
     "plabs: error: --trace records our own bytes; with --backend curl, curl keeps them (drop --trace)"),
    (["ask", "--impersonate", "chrome", "--trace", "TRACE", "--server", "http://127.0.0.1:1", "hi"], 1,
     "plabs: error: --trace records our own bytes; with --backend curl, curl keeps them (drop --trace)"),
    (["replay", "/nonexistent/t.jsonl"], 1,
     "plabs: error: cannot read the trace '/nonexistent/t.jsonl': No such file or directory"),
    (["models", "--server", "http://127.0.0.1:1"], 2,
     "plabs models: error: --server needs --live (without it the built-in list is printed)"),
    (["models", "--timeout", "3"], 2,
     "plabs models: error: --timeout needs --live (without it the built-in list is printed)"),
    (["models", "--live"], 2,
     "plabs models: error: --live needs --service perplexity (Labs has no catalog to ask for)"),
    (["emulator", "--keyfile", "key.pem"], 2, "plabs emulator: error: --keyfile needs --certfile"),
    (["emulator", "--shape", "steps"], 2, "plabs emulator: error: --shape is not an option of the labs emulator"),
    (["emulator", "--service", "perplexity", "--ping-interval", "3"], 2,
     "plabs emulator: error: --ping-interval is not an option of the perplexity emulator"),
    (["emulator", "--service", "perplexity", "--rate-limit", "poll"], 2,
     "plabs emulator: error: --rate-limit of the perplexity emulator takes one of session, ask, catalog, all, got 'poll'"),
    (["emulator", "--redirect-to", "http://x/\nLocation: y"], 2,
     "plabs emulator: error: redirect_to must be one header line, got 'http://x/\\nLocation: y'"),
    (["emulator", "--redirect", "ask"], 2,
     "plabs emulator: error: --redirect of the labs emulator takes one of polling, post, poll, upgrade, all, "
     "got 'ask'"),
])
def test_plabs_in_process_one_error_line(capsys: pytest.CaptureFixture[str], tmp_path: Any, argv: list[str],
                                         status: int, line: str) -> None:
    """(A trace refused with the curl backend leaves the file as it was: an old trace there is not emptied.)"""
    trace = tmp_path / "old.jsonl"
    trace.write_text("an old trace\n")
    got, out, err = plabs(capsys, *(str(trace) if arg == "TRACE" else arg for arg in argv))
    assert (got, out, err.splitlines()[-1]) == (status, "", line)
    assert (err.count("\n") == 1) == (status == 1)
    assert trace.read_text() == "an old trace\n"


@pytest.mark.parametrize(("guard", "status", "fields"), [
    ({"redirect": "polling", "redirect_to": "http://127.0.0.1:9/moved/"}, 3,
     {"error": "RedirectError", "status": 302, "location": "http://127.0.0.1:9/moved/"}),
    ({"rate_limit": "polling", "retry_after": "7"}, 4, {"error": "RateLimitedError", "status": 429, "retry_after": 7.0}),
    ({"cloudflare": "polling"}, 5, {"error": "ChallengeError", "status": 403, "title": "Just a moment..."}),
    ({"login_page": "polling"}, 6, {"error": "UnexpectedPageError", "status": 200, "title": "Sign in - Perplexity"}),
])
def test_plabs_in_process_refusals_exit_with_their_status(capsys: pytest.CaptureFixture[str],
                                                          emulator_factory: EmulatorFactory, guard: dict[str, Any],
                                                          status: int, fields: dict[str, Any]) -> None:
    url = emulator_factory(**guard).url
    got, out, err = plabs(capsys, "ask", "--server", url, "--transport", "polling", "hi")
    assert (got, out) == (status, "") and err.startswith("plabs: error: ") and err.count("\n") == 1
    got, out, err = plabs(capsys, "ask", "--server", url, "--transport", "polling", "--json", "hi")
    [event] = [json.loads(line) for line in out.splitlines()]
    assert got == status and event == {"event": "error", "message": err[len("plabs: error: "):-1], **fields}
    assert ("Perplexity Labs was retired in 2025" in err) == (status == 3)


def test_plabs_in_process_a_refused_connection_and_a_failure_midway(capsys: pytest.CaptureFixture[str],
                                                                    emulator_factory: EmulatorFactory) -> None:
    status, out, err = plabs(capsys, "ask", "--json", "--server", "http://127.0.0.1:1", "hi")
    [event] = [json.loads(line) for line in out.splitlines()]
    assert (status, event["event"], event["error"]) == (1, "error", "NetworkError") and set(event) == {
        "event", "error", "message"}
    assert err == f"plabs: error: {event['message']}\n"
    url = emulator_factory(answer="Half an answer.", fail="Error in processing query", fail_after=1,
                           frame_delay=0.001).url
    status, out, err = plabs(capsys, "ask", "--server", url, "--model", "sonar", "fail please")
    assert (status, out) == (1, "Half an \n")
    assert err.startswith("plabs: error: ") and "Error in processing query" in err and err.count("\n") == 1


def test_plabs_in_process_trace_then_replay(capsys: pytest.CaptureFixture[str], labs_url: str, tmp_path: Any,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    trace = str(tmp_path / "t.jsonl")
    asked = plabs(capsys, "ask", "--server", labs_url, "--backend", "asyncio", "--trace", trace, "Trace me")
    assert asked[0] == 0 and asked[1] == default_answer(DEFAULT_MODEL, "Trace me") + "\n"
    assert plabs(capsys, "replay", trace) == asked
    with open(trace, encoding="utf-8") as handle:
        lines = handle.read()
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    assert plabs(capsys, "replay", "-") == asked
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\xff\n")
    assert plabs(capsys, "replay", str(bad))[0] == 1


def test_plabs_in_process_models(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = plabs(capsys, "models")
    assert (status, err) == (0, "") and out == "".join(
        f"{name}\n" for name in (DEFAULT_MODEL, *(n for n in MODELS if n != DEFAULT_MODEL)))


# -- plabs serve, in process (serve.py): the command run in this process's main thread, asked from another ------


@pytest.fixture
def access_log() -> Iterator[None]:
    """The access logger as it was: each in-process ``plabs serve`` adds its handler (on that test's stderr)."""
    logger = logging.getLogger("plabs_proto.gateway.access")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


def in_process(capsys: pytest.CaptureFixture[str], argv: list[str], host: str, port: int, ask: Any,
               stop: bool = True) -> tuple[int, str, str, Any]:
    """``plabs ARGV`` (a server listening on HOST:PORT) in this process until ``ask(url)`` is done in a
    thread (run once the port accepts connections; url is ``http://HOST:PORT``), then Ctrl-C (unless
    ``stop`` is False: ask sends its own signal): exit status, stdout, stderr, what ask returned."""
    shown = f"[{host}]" if ":" in host else host
    got: dict[str, Any] = {}
    done = threading.Event()

    def client() -> None:
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    socket.create_connection((host, port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
            got["value"] = ask(f"http://{shown}:{port}")
        except BaseException as exc:
            got["error"] = exc
        finally:
            if stop and not done.is_set():  # (a server that stopped by itself is not interrupted)
                os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=client)
    thread.start()
    try:
        status, out, err = plabs(capsys, *argv)
    finally:
        done.set()
        while thread.is_alive():
            with contextlib.suppress(KeyboardInterrupt):  # a Ctrl-C sent as the server stopped by itself
                thread.join(30)
    if "error" in got:
        raise got["error"]
    return status, out, err, got["value"]


def serving(capsys: pytest.CaptureFixture[str], argv: list[str], ask: Any, host: str = "127.0.0.1",
            stop: bool = True) -> tuple[int, str, str, Any]:
    """``plabs serve --port P ARGV`` in this process until ``ask(base)`` is done (see :func:`in_process`);
    its first line on stdout is its base URL alone."""
    if ":" in host:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
    else:
        port = reserved_port(host)
    status, out, err, value = in_process(capsys, ["serve", "--port", str(port), "--host", host, *argv], host, port,
                                         ask, stop)
    shown = f"[{host}]" if ":" in host else host
    assert out == f"http://{shown}:{port}/v1\n"
    return status, out, err, value


CHAT = {"model": "sonar", "messages": [{"role": "user", "content": "hi"}]}


def test_serve_in_process_key_and_access_log(capsys: pytest.CaptureFixture[str], labs_url: str,
                                             access_log: None) -> None:
    def ask(base: str) -> list[httpx.Response]:
        key = {"Authorization": f"Bearer {KEY}"}
        return [httpx.get(base + "/v1/models"), httpx.get(base + "/v1/models", headers=key),
                httpx.post(base + "/v1/chat/completions", json=CHAT, headers=key, timeout=30)]

    status, _, err, (refused, listed, answered) = serving(capsys, ["--server", labs_url, "--api-key", KEY], ask)
    assert status == 0 and (refused.status_code, listed.status_code, answered.status_code) == (401, 200, 200)
    assert answered.json()["choices"][0]["message"]["content"] == default_answer("sonar", "hi")
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
    lines = err.splitlines()
    assert len(lines) == 3 and KEY not in err, lines
    assert re.fullmatch(stamp + r" GET /v1/models 401 \d+\.\d{3}s", lines[0]), lines
    assert re.fullmatch(stamp + r" GET /v1/models 200 \d+\.\d{3}s", lines[1]), lines
    assert re.fullmatch(stamp + r" POST /v1/chat/completions 200 \d+\.\d{3}s model=sonar", lines[2]), lines


def test_serve_in_process_key_from_the_environment_and_quiet(capsys: pytest.CaptureFixture[str], labs_url: str,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              access_log: None) -> None:
    monkeypatch.setenv("PLABS_API_KEY", KEY)

    def ask(base: str) -> tuple[int, int]:
        return (httpx.get(base + "/v1/models").status_code,
                httpx.get(base + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code)

    assert serving(capsys, ["--server", labs_url, "--quiet"], ask)[::2] == (0, "")
    assert serving(capsys, ["--server", labs_url, "--quiet"], ask)[3] == (401, 200)
    monkeypatch.setenv("PLABS_API_KEY", "")  # empty: no key
    assert serving(capsys, ["--server", labs_url, "--quiet"], ask)[3] == (200, 200)


def test_serve_in_process_the_settings_reach_the_gateway(capsys: pytest.CaptureFixture[str],
                                                         emulator_factory: EmulatorFactory,
                                                         perplexity_emulator_factory: Any, access_log: None) -> None:
    """--max-sessions, --timeout, --max-threads, --warm and --service as a client sees them."""
    slow = emulator_factory(answer="slow " * 20, chunk_size=5, frame_delay=0.05).url

    def timed_out(base: str) -> httpx.Response:
        return httpx.post(base + "/v1/chat/completions", json=CHAT, timeout=30)

    response = serving(capsys, ["--server", slow, "--timeout", "0.3", "--quiet"], timed_out)[3]
    assert assert_openai_error(response, 504, "labs_timeout", None).startswith("Perplexity Labs timed out: ")

    def busy(base: str) -> list[int]:
        async def main() -> list[int]:
            async with httpx.AsyncClient(timeout=30) as client:
                posts = [client.post(base + "/v1/chat/completions", json=CHAT) for _ in range(2)]
                return sorted(response.status_code for response in await asyncio.gather(*posts))

        return asyncio.run(main())

    assert serving(capsys, ["--server", slow, "--max-sessions", "1", "--quiet"], busy)[3] == [200, 429]

    def warm(base: str) -> int:
        deadline = time.monotonic() + 20
        while (count := int(httpx.get(base + "/health").json()["warm"])) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        return count

    assert serving(capsys, ["--server", slow, "--warm", "2", "--quiet"], warm)[3] == 2
    ask_url = perplexity_emulator_factory(frame_delay=0).url

    def threads(base: str) -> tuple[str, int]:
        answered = httpx.post(base + "/v1/chat/completions", json=CHAT, timeout=30).json()
        return answered["model"], int(httpx.get(base + "/health").json()["threads"])

    perplexity = ["--service", "perplexity", "--server", ask_url, "--quiet"]
    assert serving(capsys, [*perplexity, "--any-model"], threads)[3] == ("sonar", 1)

    def second_turn(base: str) -> str:
        first = [{"role": "user", "content": "q"}]
        answer = httpx.post(base + "/v1/chat/completions", json={"model": "turbo", "messages": first}, timeout=30)
        second = [*first, {"role": "assistant", "content": answer.json()["choices"][0]["message"]["content"]},
                  {"role": "user", "content": "Why?"}]
        followed = httpx.post(base + "/v1/chat/completions", json={"model": "turbo", "messages": second}, timeout=30)
        return str(followed.json()["choices"][0]["message"]["content"])

    from plabs_proto.backends.programs.emulator_perplexity import default_answer as ask_answer

    assert serving(capsys, perplexity, second_turn)[3] == ask_answer("Why?")  # the thread continued
    expired = serving(capsys, [*perplexity, "--thread-age", "1e-9"], second_turn)[3]
    assert expired != ask_answer("Why?") and expired.startswith(ask_answer("user: q")[:40])  # too old: a new thread
    assert serving(capsys, [*perplexity, "--any-model", "--max-threads", "0"], threads)[3] == ("sonar", 0)
    unknown = serving(capsys, perplexity, lambda base: httpx.post(base + "/v1/chat/completions", json=CHAT))[3]
    assert assert_openai_error(unknown, 404, "model_not_found", "model").startswith('The model "sonar" does not exist')


def test_serve_in_process_the_emulator_trio_and_ipv6(capsys: pytest.CaptureFixture[str], access_log: None) -> None:
    def chat(base: str) -> str:
        response = httpx.post(base + "/v1/chat/completions", json=CHAT, timeout=30)
        return str(response.json()["choices"][0]["message"]["content"])

    assert serving(capsys, ["--emulator", "--quiet"], chat)[3] == default_answer("sonar", "hi")
    assert serving(capsys, ["--emulator", "--quiet", "--backend", "trio"], chat)[3] == default_answer("sonar", "hi")
    assert serving(capsys, ["--emulator", "--quiet"], chat, host="::1")[3] == default_answer("sonar", "hi")
    pplx = {**CHAT, "model": "turbo"}
    answer = serving(capsys, ["--emulator", "--quiet", "--service", "perplexity"],
                     lambda base: httpx.post(base + "/v1/chat/completions", json=pplx, timeout=30).json())[3]
    assert answer["choices"][0]["message"]["content"].startswith("This is the Perplexity emulator's answer to: hi")


def test_serve_in_process_errors_are_one_line(capsys: pytest.CaptureFixture[str], access_log: None) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert plabs(capsys, "serve", "--port", str(port), "--server", "http://127.0.0.1:1") == (
            1, "", f"plabs: error: cannot listen on 127.0.0.1:{port}: Address already in use\n")
    status, out, err = plabs(capsys, "serve", "--server", "ftp://127.0.0.1:1")
    assert (status, out) == (1, "") and err.startswith("plabs: error: expected an http:// or https:// server URL")
    assert err.count("\n") == 1
    status, out, err = plabs(capsys, "serve", "--emulator", "--server", "http://127.0.0.1:1")
    assert (status, out, err.splitlines()[-1]) == (
        2, "", "plabs serve: error: --emulator and --server cannot be used together")


# -- the gateway's answers, in process: the bytes a client reads -------------------------------------------------

PROMPT = "Say something about sans-IO"


def asgi(app: Any, *requests: tuple[str, str, Any], lifespan: bool = False) -> list[httpx.Response]:
    """Each (method, path, JSON body) request to ``app`` in turn, in process (inside the app's lifespan when
    ``lifespan``: what it keeps, the ask service's threads, is closed at its end)."""

    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with contextlib.AsyncExitStack() as stack:
            if lifespan:
                await stack.enter_async_context(app.router.lifespan_context(app))
            client = await stack.enter_async_context(
                httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=30))
            return [await client.request(method, path, json=body) for method, path, body in requests]
        raise AssertionError("unreachable")

    return asyncio.run(main())


def sse(text: str) -> list[Any]:
    """The JSON objects of a stream's ``data:`` lines (not ``[DONE]``)."""
    return [json.loads(line[6:]) for line in text.split("\n") if line.startswith("data: {")]


def test_in_process_chat_whole_and_streamed(emulator_factory: EmulatorFactory) -> None:
    from plabs_proto.backends.programs.gateway import estimate_tokens

    model = "sonar-reasoning"
    app = create_app(server=emulator_factory(frame_delay=0).url)
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}]}
    whole, streamed = asgi(app, ("POST", "/v1/chat/completions", body),
                           ("POST", "/v1/chat/completions", {**body, "stream": True,
                                                             "stream_options": {"include_usage": True}}))
    answer, reasoning = default_answer(model, PROMPT), default_reasoning(model, PROMPT)
    assert whole.headers["content-type"] == "application/json"
    assert int(whole.headers["content-length"]) == len(whole.content)
    got = whole.json()
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{24}", got.pop("id")) and abs(got.pop("created") - time.time()) < 60
    usage = got.pop("usage")
    assert got == {"object": "chat.completion", "model": model, "citations": list(SONAR_CITATIONS), "choices": [
        {"index": 0, "finish_reason": "stop",
         "message": {"role": "assistant", "content": answer, "reasoning_content": reasoning}}]}
    assert usage["prompt_tokens"] == estimate_tokens(PROMPT) and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert streamed.status_code == 200 and streamed.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert (streamed.headers["cache-control"], streamed.headers["x-accel-buffering"]) == ("no-cache", "no")
    assert streamed.text.endswith("\n\ndata: [DONE]\n\n")
    chunks = sse(streamed.text)
    *deltas, final, last = chunks
    assert len({(c["id"], c["created"], c["model"], c["object"]) for c in chunks}) == 1
    assert chunks[0]["id"].startswith("chatcmpl-") and chunks[0]["object"] == "chat.completion.chunk"
    assert deltas[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all("role" not in c["choices"][0]["delta"] for c in deltas[1:])
    assert all(c["choices"][0]["finish_reason"] is None and c["choices"][0]["index"] == 0 for c in deltas)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in deltas) == answer
    assert "".join(c["choices"][0]["delta"].get("reasoning_content", "") for c in deltas) == reasoning
    assert final["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert final["citations"] == list(SONAR_CITATIONS) and "reasoning_revised" not in final
    assert last["choices"] == [] and last["usage"] == usage and set(last) == {"id", "object", "created", "model",
                                                                              "choices", "usage"}
    plain = asgi(app, ("POST", "/v1/chat/completions", {**body, "stream": True}))[0]
    assert "usage" not in sse(plain.text)[-1] and sse(plain.text)[-1]["choices"][0]["finish_reason"] == "stop"


def test_in_process_an_empty_answer_still_streams_its_role_and_end(emulator_factory: EmulatorFactory) -> None:
    app = create_app(server=emulator_factory(frame_delay=0, answer="", no_reasoning=True).url)
    streamed = asgi(app, ("POST", "/v1/chat/completions", {**CHAT, "stream": True}))[0]
    first, final = sse(streamed.text)
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert final["choices"][0]["finish_reason"] == "stop" and streamed.text.endswith("data: [DONE]\n\n")


def test_in_process_responses_whole_and_streamed(emulator_factory: EmulatorFactory) -> None:
    from plabs_proto.backends.programs.gateway import estimate_tokens

    model = "sonar-reasoning"
    app = create_app(server=emulator_factory(frame_delay=0).url)
    body = {"model": model, "input": PROMPT, "instructions": "Be brief."}
    whole, streamed = asgi(app, ("POST", "/v1/responses", body), ("POST", "/v1/responses", {**body, "stream": True}))
    answer, reasoning = default_answer(model, PROMPT), default_reasoning(model, PROMPT)
    got = whole.json()
    assert re.fullmatch(r"resp_[0-9a-f]{24}", got.pop("id")) and abs(got.pop("created_at") - time.time()) < 60
    [item] = got.pop("output")
    assert re.fullmatch(r"msg_[0-9a-f]{24}", item.pop("id"))
    assert item == {"type": "message", "status": "completed", "role": "assistant",
                    "content": [{"type": "output_text", "text": answer, "annotations": []}]}
    usage = got.pop("usage")
    prompt = estimate_tokens("Be brief.\n\n" + PROMPT)
    assert usage["input_tokens"] == prompt and usage["input_tokens_details"] == {"cached_tokens": 0}
    assert usage["output_tokens_details"] == {"reasoning_tokens": estimate_tokens(reasoning)}
    assert usage["total_tokens"] == prompt + usage["output_tokens"] and usage["output_tokens"] > 0
    assert got == {"object": "response", "status": "completed", "model": model, "error": None,
                   "incomplete_details": None, "instructions": None, "parallel_tool_calls": False,
                   "tool_choice": "none", "tools": [], "text": {"format": {"type": "text"}}}
    assert streamed.headers["content-type"] == "text/event-stream; charset=utf-8"
    kinds = re.findall(r"^event: (\S+)$", streamed.text, re.MULTILINE)
    events = sse(streamed.text)
    assert [event["type"] for event in events] == kinds
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    assert "".join(event["delta"] for event in events[4:-4]) == answer
    for opening in (events[0], events[1]):
        assert opening["response"]["status"] == "in_progress" and opening["response"]["output"] == []
        assert opening["response"]["usage"] is None and opening["response"]["id"] == events[-1]["response"]["id"]
    assert events[2]["item"]["status"] == "in_progress" and events[2]["item"]["content"] == []
    assert events[2]["output_index"] == events[-2]["output_index"] == 0
    text_kinds = {"response.content_part.added", "response.output_text.delta", "response.output_text.done",
                  "response.content_part.done"}
    for event in events:
        if event["type"] in text_kinds:
            assert (event["item_id"], event["output_index"], event["content_index"]) == (events[2]["item"]["id"], 0, 0)
    assert (streamed.headers["cache-control"], streamed.headers["x-accel-buffering"]) == ("no-cache", "no")
    assert whole.headers["content-type"] == "application/json"
    assert int(whole.headers["content-length"]) == len(whole.content)
    assert events[3]["part"] == {"type": "output_text", "text": "", "annotations": []}
    assert events[-4]["text"] == answer and events[-3]["part"]["text"] == answer
    assert events[-2]["item"]["content"][0]["text"] == answer and events[-2]["item"]["status"] == "completed"
    completed = events[-1]["response"]
    assert completed["status"] == "completed" and completed["output"][0]["content"][0]["text"] == answer
    assert completed["usage"] == usage and completed["id"] == events[0]["response"]["id"]


def test_in_process_failures_before_and_after_the_first_chunk(emulator_factory: EmulatorFactory) -> None:
    failing = create_app(server=emulator_factory(fail="Error in processing query").url)
    for stream in (False, True):
        for path, body in (("/v1/chat/completions", CHAT), ("/v1/responses", {"model": "sonar", "input": "hi"})):
            response = asgi(failing, ("POST", path, {**body, "stream": stream}))[0]
            message = assert_openai_error(response, 502, "labs_error", None)
            assert message == "Perplexity Labs reported a failure: Error in processing query"
            assert response.json()["error"]["type"] == "api_error"
            assert response.json()["error"]["labs_text"] == "Error in processing query"
    midway = create_app(server=emulator_factory(fail="Error in processing query", fail_after=3, frame_delay=0).url)
    chat, responses = asgi(midway, ("POST", "/v1/chat/completions", {**CHAT, "stream": True}),
                           ("POST", "/v1/responses", {"model": "sonar", "input": "hi", "stream": True}))
    *chunks, failure = sse(chat.text)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == default_answer("sonar", "hi")[:24]
    assert failure["error"]["code"] == "labs_error" and "[DONE]" not in chat.text
    last = sse(responses.text)[-1]
    assert last["type"] == "response.failed" and last["response"]["status"] == "failed"
    assert last["response"]["error"] == {"code": "labs_error",
                                         "message": "Perplexity Labs reported a failure: Error in processing query"}


def test_in_process_a_rewritten_answer(emulator_factory: EmulatorFactory, caplog: pytest.LogCaptureFixture) -> None:
    """The client gets the final text in the error; the operator a warning naming the 502."""
    app = create_app(server=emulator_factory(answer="The first version of the answer.", frame_delay=0,
                                             final_output="Another text entirely.", no_reasoning=True).url)
    chat, responses, whole = asgi(app, ("POST", "/v1/chat/completions", {**CHAT, "stream": True}),
                                  ("POST", "/v1/responses", {"model": "sonar", "input": "hi", "stream": True}),
                                  ("POST", "/v1/chat/completions", CHAT))
    *chunks, failure = sse(chat.text)
    sent = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert sent and "The first version of the answer.".startswith(sent)
    assert failure["error"]["code"] == "answer_rewritten" and failure["error"]["final_text"] == "Another text entirely."
    assert failure["error"]["message"].startswith(f"Perplexity Labs rewrote the answer after {len(sent)} characters")
    last = sse(responses.text)[-1]
    assert last["type"] == "response.failed" and last["response"]["error"]["code"] == "answer_rewritten"
    assert whole.json()["choices"][0]["message"]["content"] == "Another text entirely."
    warnings = [r.getMessage() for r in caplog.records if r.name == "plabs_proto.gateway" and r.levelname == "WARNING"]
    assert len(warnings) == 2 and all(w.startswith("chat completion failed (502): Perplexity Labs rewrote the answer")
                                      for w in warnings)


def test_in_process_what_the_service_did_has_its_status(emulator_factory: EmulatorFactory) -> None:
    limited = create_app(server=emulator_factory(rate_limit="polling", retry_after="7").url, transport="polling")
    for stream in (False, True):
        response = asgi(limited, ("POST", "/v1/chat/completions", {**CHAT, "stream": stream}))[0]
        message = assert_openai_error(response, 429, "labs_rate_limited", None)
        assert message.startswith("Perplexity Labs is rate limiting this gateway: ")
        assert response.json()["error"]["type"] == "rate_limit_error"
        assert response.headers["retry-after"] == "7" and response.json()["error"]["retry_after"] == 7
    slow = create_app(server=emulator_factory(silent=True).url, timeout=0.3)
    response = asgi(slow, ("POST", "/v1/chat/completions", CHAT))[0]
    message = assert_openai_error(response, 504, "labs_timeout", None)
    assert message.startswith("Perplexity Labs timed out: ") and response.json()["error"]["type"] == "api_error"
    assert response.json()["error"]["deadline"] == "query"
    closed = create_app(server="http://127.0.0.1:1")
    response = asgi(closed, ("POST", "/v1/chat/completions", CHAT))[0]
    message = assert_openai_error(response, 502, "labs_unavailable", None)
    assert response.json()["error"]["type"] == "api_error" and message.startswith("the Perplexity Labs session failed: expected to connect to the server at 127.0.0.1:1")


def test_in_process_models_and_health(silent: Silent) -> None:
    from plabs_proto.backends.programs.gateway import LABS_MODELS

    app = create_app(server=silent.url)
    listed, one, unknown, health = asgi(app, ("GET", "/v1/models", None), ("GET", "/models/r1-1776", None),
                                        ("GET", "/v1/models/gpt-4o", None), ("GET", "/health", None))
    assert listed.json() == {"object": "list", "data": [
        {"id": card.id, "object": "model", "created": card.created, "owned_by": "perplexity"} for card in LABS_MODELS]}
    assert [card["id"] for card in listed.json()["data"]] == ["r1-1776", "sonar-pro", "sonar", "sonar-reasoning",
                                                               "sonar-reasoning-pro"]
    assert one.json() == {"id": "r1-1776", "object": "model", "created": 1740096000, "owned_by": "perplexity"}
    message = assert_openai_error(unknown, 404, "model_not_found", "model")
    assert message == ('The model "gpt-4o" does not exist: expected one of r1-1776, sonar-pro, sonar, sonar-reasoning, '
                       "sonar-reasoning-pro")
    assert health.json() == {"status": "ok", "active": 0, "warm": 0}
    threads = create_app(server=silent.url, service="perplexity")
    assert asgi(threads, ("GET", "/health", None))[0].json() == {"status": "ok", "active": 0, "warm": 0, "threads": 0}


def test_fold_history_of_a_conversation_that_begins_with_the_user() -> None:
    from plabs_proto.backends.programs.gateway import fold_history

    assert fold_history([{"role": "system", "content": "Be brief."}]) == "Be brief."  # a lone message: itself
    assert fold_history([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                         {"role": "user", "content": "q2"}]) == "user: q\n\nassistant: a\n\nq2"


def test_a_thread_key_takes_any_text_an_answer_may_hold() -> None:
    """An answer decoded from the service's JSON may hold a lone surrogate ("\\ud800"): its thread is still kept."""
    from plabs_proto.backends.programs.gateway import thread_key

    key = thread_key("Bearer k", [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a\ud800"}])
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    assert key != thread_key("Bearer k", [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a\udc00"}])


@pytest.mark.parametrize("broken", ["closed", "failing"])
def test_serve_in_process_an_error_with_stderr_gone_is_still_status_1(monkeypatch: pytest.MonkeyPatch,
                                                                       broken: str, access_log: None) -> None:
    """(A closed stderr raises ValueError, a failing one OSError: either way the status tells.)"""
    from plabs_proto.backends.programs.cli import main

    class Failing(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError(5, "Input/output error")

    stream = io.StringIO() if broken == "closed" else Failing()
    if broken == "closed":
        stream.close()
    monkeypatch.setattr(sys, "stderr", stream)
    assert main(["serve", "--server", "ftp://127.0.0.1:1"]) == 1


def test_in_process_the_ask_services_query_limit_at_its_edge(perplexity_emulator_factory: Any) -> None:
    """The ask endpoint takes a query of at most 100000 characters (fewer than MAX_PROMPT's bytes): one more is a
    400 that names both, before anything is asked."""
    app = create_app(server=perplexity_emulator_factory(frame_delay=0, answer="Taken.").url, service="perplexity")
    at, over = ({"model": "turbo", "messages": [{"role": "user", "content": "x" * size}]} for size in (100_000, 100_001))
    taken, refused = asgi(app, ("POST", "/v1/chat/completions", at), ("POST", "/v1/chat/completions", over),
                           lifespan=True)  # (the lifespan closes the thread kept)
    assert taken.status_code == 200 and taken.json()["choices"][0]["message"]["content"] == "Taken."
    message = assert_openai_error(refused, 400, "invalid_value", None)
    assert message == ("the request cannot be sent to Perplexity: expected a query of at most 100000 characters, "
                       "got 100001")


def test_the_configuration_from_the_environment() -> None:
    from plabs_proto.backends.programs.gateway import GatewayConfig, GatewayError

    config = GatewayConfig.from_env({"PLABS_WARM": "2", "PLABS_MAX_SESSIONS": "3", "PLABS_TIMEOUT": "2.5",
                                     "PLABS_MODELS": "sonar", "PLABS_OPTIONS": "x", "PLABS_ANY_MODEL": "1"})
    assert (config.warm, config.max_sessions, config.timeout, config.models, config.options, config.any_model) == (
        2, 3, 2.5, None, {}, True)
    with pytest.raises(GatewayError) as caught:
        GatewayConfig.from_env({"PLABS_TIMEOUT": "soon"})
    assert str(caught.value) == "expected PLABS_TIMEOUT as a number of seconds, got 'soon'"
    with pytest.raises(GatewayError) as caught:
        GatewayConfig.from_env({"PLABS_WARM": "2.0"})
    assert str(caught.value) == "expected PLABS_WARM as a whole number, got '2.0'"
    with pytest.raises(GatewayError) as caught:
        GatewayConfig.from_env({"PLABS_ANY_MODEL": "yes"})
    assert str(caught.value) == "expected PLABS_ANY_MODEL as 0 or 1, got 'yes'"


@pytest.mark.parametrize(("backend", "sig"), [("asyncio", signal.SIGINT), ("asyncio", signal.SIGTERM),
                                               ("trio", signal.SIGINT), ("trio", signal.SIGTERM)])
def test_serve_in_process_ctrl_c_or_sigterm_ends_open_streams(capsys: pytest.CaptureFixture[str],
                                                               emulator_factory: EmulatorFactory, backend: str,
                                                               sig: signal.Signals, access_log: None) -> None:
    """A stream open when the signal comes ends at once with a shutting_down error event; the exit status is 0."""
    slow = emulator_factory(answer="slow " * 200, chunk_size=5, frame_delay=0.05).url

    def ask(base: str) -> str:
        with httpx.stream("POST", base + "/v1/chat/completions", json={**CHAT, "stream": True}, timeout=30) as response:
            lines = response.iter_lines()
            got = [next(lines)]
            os.kill(os.getpid(), sig)
            got += list(lines)
        return "\n".join(got)

    started = time.monotonic()
    status, _, err, text = serving(capsys, ["--server", slow, "--backend", backend, "--quiet"], ask, stop=False)
    assert (status, err) == (0, "") and time.monotonic() - started < 8
    *_, last = sse(text)
    assert last["error"]["code"] == "shutting_down" and "[DONE]" not in text


def test_in_process_r1_without_think_streams_all_as_content(emulator_factory: EmulatorFactory) -> None:
    """r1-1776 without </think>: streamed as reasoning, revised to the answer at the end; the content sent is exact,
    the final chunk says the reasoning was taken back, and the Responses API sends the whole answer as deltas."""
    app = create_app(server=emulator_factory(no_reasoning=True, answer="Short and plain.", frame_delay=0).url)
    body = {"model": "r1-1776", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    chat, responses = asgi(app, ("POST", "/v1/chat/completions", body),
                           ("POST", "/v1/responses", {"model": "r1-1776", "input": "hi", "stream": True}))
    *chunks, final = sse(chat.text)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "Short and plain."
    assert final["reasoning_revised"] is True and final["reasoning_content_final"] == ""
    events = sse(responses.text)
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == "Short and plain."
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == "Short and plain."


def test_in_process_an_answer_keeps_its_thread(perplexity_emulator_factory: Any) -> None:
    """Every clean answer, on both APIs, whole or streamed, keeps its session for the conversation's next turn."""
    app = create_app(server=perplexity_emulator_factory(frame_delay=0).url, service="perplexity")
    requests: list[tuple[str, str, Any]] = []
    for path in ("/v1/responses", "/v1/chat/completions"):
        for stream in (False, True):
            body = {"model": "turbo", "input": f"{path} {stream}", "stream": stream,
                    "messages": [{"role": "user", "content": f"{path} {stream}"}]}
            requests += [("POST", path, body), ("GET", "/health", None)]
    responses = asgi(app, *requests, lifespan=True)
    assert all(answered.status_code == 200 for answered in responses[::2])
    assert [health.json()["threads"] for health in responses[1::2]] == [1, 2, 3, 4]


def test_in_process_usage_counts_what_the_service_counted(emulator_factory: EmulatorFactory,
                                                          perplexity_emulator_factory: Any) -> None:
    """Labs counts its answer (tokens_streamed: here 5 frames of 8 characters); the ask service does not, so
    the completion is estimated (a token per 4 bytes, reasoning included)."""
    from plabs_proto.backends.programs.gateway import estimate_tokens

    labs = create_app(server=emulator_factory(answer="x" * 40, no_reasoning=True, chunk_size=8, frame_delay=0).url)
    chat, responses = asgi(labs, ("POST", "/v1/chat/completions", CHAT),
                           ("POST", "/v1/responses", {"model": "sonar", "input": "hi"}))
    assert chat.json()["usage"] == {"prompt_tokens": 1, "completion_tokens": 5, "total_tokens": 6}
    usage = responses.json()["usage"]
    assert (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]) == (1, 5, 6)
    assert usage["output_tokens_details"] == {"reasoning_tokens": 0}
    ask = create_app(server=perplexity_emulator_factory(answer="y" * 40, frame_delay=0).url, service="perplexity")
    answered = asgi(ask, ("POST", "/v1/chat/completions", {**CHAT, "model": "turbo"}), lifespan=True)[0].json()
    message = answered["choices"][0]["message"]
    estimated = estimate_tokens(message["content"]) + estimate_tokens(message.get("reasoning_content", ""))
    assert answered["usage"]["completion_tokens"] == estimated >= 10


def test_in_process_a_backend_that_needs_another_event_loop(silent: Silent, caplog: pytest.LogCaptureFixture) -> None:
    """--backend trio under an asyncio server: the request gets OpenAI's 500, the log says why."""
    app = create_app(server=silent.url, backend="trio")
    response = asgi(app, ("POST", "/v1/chat/completions", CHAT))[0]
    message = assert_openai_error(response, 500, "internal_error", None)
    assert message == "internal error of the gateway: GatewayError"
    [record] = [r for r in caplog.records if r.name == "plabs_proto.gateway"]
    assert record.exc_info is not None
    assert str(record.exc_info[1]) == "the trio backend needs an ASGI server running trio, but it runs asyncio"
    assert silent.connections() == 0


def test_in_process_a_conversation_continues_its_thread_per_caller(perplexity_emulator_factory: Any) -> None:
    """A later turn whose history this gateway answered, for the same Authorization, is a follow-up (only its
    question goes out, and the emulator answers that); any other history is folded into a new thread."""
    from plabs_proto.backends.programs.emulator_perplexity import default_answer as ask_answer
    from plabs_proto.backends.programs.gateway import fold_history

    app = create_app(server=perplexity_emulator_factory(frame_delay=0).url, service="perplexity")

    first = [{"role": "user", "content": "What is sans-IO?"}]
    second = [*first, {"role": "assistant", "content": ask_answer(first[0]["content"])},
              {"role": "user", "content": "Why?"}]
    other = [*first, {"role": "assistant", "content": "Not ours."}, {"role": "user", "content": "Why?"}]

    async def main() -> list[str]:
        transport = httpx.ASGITransport(app=app)
        async with app.router.lifespan_context(app), httpx.AsyncClient(
                transport=transport, base_url="http://gateway", timeout=30) as client:
            answers = []
            for messages, caller in ((first, "Bearer one"), (second, "Bearer two"), (other, "Bearer one"),
                                     (second, "Bearer one"), (second, "Bearer one")):
                response = await client.post("/v1/chat/completions", json={"model": "turbo", "messages": messages},
                                             headers={"Authorization": caller})
                answers.append(response.json()["choices"][0]["message"]["content"])
            return answers

    answered, by_another, not_ours, follow_up, again = asyncio.run(main())
    assert answered == second[1]["content"]
    assert by_another == ask_answer(fold_history(second))  # another caller: a new thread
    assert not_ours == ask_answer(fold_history(other))
    assert follow_up == ask_answer("Why?")  # the follow-up, in the thread of the first answer
    assert again == ask_answer(fold_history(second))  # taken: a thread continues once


def test_plabs_in_process_citations_of_every_shape_and_a_text_stdin(capsys: pytest.CaptureFixture[str],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from plabs_proto.backends.programs.cli import EventPrinter

    from plabs_proto.events import AnswerFinished, Citations

    out, err = io.StringIO(), io.StringIO()
    printer = EventPrinter(json_lines=False, reasoning=False, stdout=out, stderr=err)
    printer.event(Citations(citations=({"name": "N", "url": "https://n"}, {"title": "T", "link": "https://t"},
                                       {"title": "", "url": "https://u"}, "https://s", {"x": "é"})))
    printer.event(AnswerFinished(model="m", text="", reasoning="", citations=()))
    assert out.getvalue() == ("\nCitations:\n[1] N <https://n>\n[2] T <https://t>\n[3] https://u\n[4] https://s\n"
                              '[5] {"x": "é"}\n')
    monkeypatch.setattr(sys, "stdin", io.StringIO("ok\udcff"))  # a text stream, no bytes beneath
    status, _, err_text = plabs(capsys, "ask", "--server", "http://127.0.0.1:1", "-")
    assert (status, err_text.splitlines()[-1]) == (2, "plabs ask: error: expected UTF-8 text in standard input, "
                                                      "got the byte 0xff at offset 2 (convert the text to UTF-8 "
                                                      "first, e.g. with iconv)")


def test_plabs_in_process_a_warning_on_a_failing_stderr_does_not_stop_the_answer(
        labs_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from plabs_proto.backends.programs.cli import main

    class Failing(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(sys, "stderr", Failing())
    assert main(["ask", "--server", labs_url, "--no-reasoning", "--model", "sonar-next", "hi"]) == 0
    assert capsys.readouterr().out.startswith(default_answer("sonar-next", "hi"))


def test_plabs_in_process_trio_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """(trio raises them inside exception groups.)"""
    status, out, err = plabs(capsys, "ask", "--backend", "trio", "--server", "http://127.0.0.1:1", "hi")
    assert (status, out) == (1, "") and err.count("\n") == 1
    assert err.startswith("plabs: error: expected to connect to the server at 127.0.0.1:1, ")


def test_plabs_in_process_models_live(capsys: pytest.CaptureFixture[str], perplexity_emulator_factory: Any) -> None:
    url = perplexity_emulator_factory().url
    status, out, err = plabs(capsys, "models", "--service", "perplexity", "--live", "--server", url,
                             "--backend", "asyncio")
    assert (status, err) == (0, "") and out.splitlines()[0] == "turbo" and len(out.splitlines()) > 1


def emulating(capsys: pytest.CaptureFixture[str], argv: list[str], ask: Any) -> tuple[int, str, str, Any]:
    """``plabs emulator --port P ARGV`` in this process until ``ask(url)`` is done in a thread, then Ctrl-C."""
    port = reserved_port()
    return in_process(capsys, ["emulator", "--host", "127.0.0.1", "--port", str(port), *argv], "127.0.0.1", port, ask)


# In process, a connection the emulator served may still be closing when Ctrl-C ends its loop: seen once in CI
# (an "unclosed transport" of the emulator's side, collected later). run_server now lets the loop run the
# closing callbacks first; a warning left despite that is the test's process, not the product's (the plabs
# emulator command exits, which closes every socket), so it does not fail this test of what is served.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_plabs_in_process_emulator_serves_what_it_is_told(capsys: pytest.CaptureFixture[str]) -> None:
    from plabs_proto.backends import sync

    from plabs_proto.errors import ChallengeError, RateLimitedError

    def answer(url: str, **options: Any) -> Any:
        try:
            with sync.connect(server=url, **options) as session:
                events = list(session.query("hi", model="sonar-reasoning" if "service" not in options else "turbo"))
            finished = events[-1]
            return finished.text, finished.reasoning
        except (ChallengeError, RateLimitedError) as exc:
            return type(exc).__name__, getattr(exc, "retry_after", None)

    status, out, err, got = emulating(capsys, ["--answer", "Served.", "--reasoning", "Thought.", "--frame-delay", "0"],
                                      answer)
    url = out.strip()
    assert (status, got) == (0, ("Served.", "Thought.")) and url.startswith("http://127.0.0.1:")
    assert err == (f'plabs: the Labs emulator serves {url} until Ctrl-C: `plabs ask --server {url} "..."`, '
                   f'or server="{url}" in Python\n')
    assert emulating(capsys, ["--cloudflare", "polling", "--rate-limit-page", "cloudflare"], answer)[3] == (
        "ChallengeError", None)
    status, out, err, got = emulating(capsys, ["--service", "perplexity", "--rate-limit", "ask", "--retry-after", "9"],
                                      lambda url: answer(url, service="perplexity"))
    url = out.strip()
    assert (status, got) == (0, ("RateLimitedError", 9.0))
    assert err == (f"plabs: the Perplexity emulator serves {url} until Ctrl-C: `plabs ask --service perplexity "
                   f'--server {url} "..."`, or server="{url}" in Python\n')
    served = emulating(capsys, ["--service", "perplexity", "--answer", "Half and half.", "--early-final",
                                "--frame-delay", "0.001"], lambda url: answer(url, service="perplexity"))[3]
    assert served[0] == "Half and half."


def test_plabs_in_process_a_closed_stderr_is_no_terminal(labs_url: str, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """(No waiting indicator is written to it: the answer still comes.)"""
    from plabs_proto.backends.programs.cli import main

    closed = io.StringIO()
    closed.close()
    monkeypatch.setattr(sys, "stderr", closed)
    assert main(["ask", "--server", labs_url, "--no-reasoning", "--model", "sonar", "hi"]) == 0
    assert capsys.readouterr().out.startswith(default_answer("sonar", "hi") + "\n\nCitations:\n")


def test_in_process_a_shutdown_ends_open_streams(emulator_factory: EmulatorFactory) -> None:
    """begin_shutdown (what plabs serve calls on Ctrl-C) once the first chunk is out: the stream ends at once
    with a shutting_down event; a new request is a 503.  (Driven through ASGI by hand: httpx's ASGITransport
    hands over a response only once it is complete.)"""
    from plabs_proto.backends.programs.gateway import begin_shutdown

    app = create_app(server=emulator_factory(answer="slow " * 200, chunk_size=5, frame_delay=0.05).url)
    sent: list[Any] = []
    asked: list[bool] = []

    async def receive() -> dict[str, Any]:
        if not asked:
            asked.append(True)
            return {"type": "http.request", "body": json.dumps({**CHAT, "stream": True}).encode(), "more_body": False}
        await asyncio.Event().wait()  # the client stays
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and len(sent) == 2:
            begin_shutdown(app)

    async def main() -> httpx.Response:
        scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "root_path": "",
                 "headers": [(b"content-type", b"application/json")], "query_string": b"", "http_version": "1.1",
                 "scheme": "http", "server": ("gateway", 80), "client": ("test", 1)}
        async with app.router.lifespan_context(app):
            await app(scope, receive, send)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=30) as client:
                return await client.post("/v1/chat/completions", json=CHAT)

    started = time.monotonic()
    after = asyncio.run(main())
    assert time.monotonic() - started < 5
    assert sent[0]["status"] == 200 and [m["more_body"] for m in sent[1:]] == [True, False]
    text = b"".join(m["body"] for m in sent[1:]).decode()
    *_, last = sse(text)
    assert last == {"error": {"message": "the gateway is shutting down", "type": "api_error", "param": None,
                              "code": "shutting_down"}}
    assert "[DONE]" not in text
    message = assert_openai_error(after, 503, "shutting_down", None)
    assert message == "the gateway is shutting down" and after.json()["error"]["type"] == "api_error"


@pytest.mark.parametrize(("path", "body", "status", "code", "param", "message"), [
    ("/v1/chat/completions", {"model": 3, "messages": USER}, 400, None, "model", "expected 'model' as a string, got 3"),
    ("/v1/chat/completions", {"model": "sonar", "messages": USER, "stream": "yes"}, 400, None, "stream",
     "expected 'stream' as true or false, got \"yes\""),
    ("/v1/chat/completions", {"model": "sonar", "messages": USER, "tools": [{"type": "function"}]}, 400,
     "unsupported_parameter", "tools", "Perplexity Labs cannot call tools: 'tools' is not supported"),
    ("/v1/chat/completions", {"model": "sonar", "messages": USER, "function_call": "auto"}, 400,
     "unsupported_parameter", "function_call", "Perplexity Labs cannot call tools: 'function_call' is not supported"),
    ("/v1/chat/completions", {"model": "sonar", "messages": [{"role": "user", "content": [3]}]}, 400, None,
     "messages", "messages[0].content[0]: expected an object, got 3"),
    ("/v1/chat/completions", {"model": "sonar", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://i"}}]}]}, 400, "unsupported_content", "messages",
     "messages[0].content[0]: expected a part of type 'text', got \"image_url\": Perplexity Labs takes text only"),
    ("/v1/chat/completions", {"model": "sonar", "messages": "hi"}, 400, None, "messages",
     "expected 'messages' as a non-empty list of messages, got \"hi\""),
    ("/v1/chat/completions", {"model": "sonar", "messages": []}, 400, None, "messages",
     "expected 'messages' as a non-empty list of messages, got []"),
    ("/v1/chat/completions", {"model": "sonar", "messages": [*USER, 3]}, 400, None, "messages",
     "messages[1]: expected an object, got 3"),
    ("/v1/responses", {"model": "sonar", "input": [{"type": "function_call", "role": "user"}]}, 400,
     "unsupported_content", "input",
     "input[0]: expected an item of type 'message', got \"function_call\": Perplexity Labs takes messages only"),
    ("/v1/chat/completions", {"model": "sonar", "messages": [{"role": "tool", "content": "x"}]}, 400, None,
     "messages", "messages[0]: expected 'role' to be one of 'system', 'developer', 'user', 'assistant', got \"tool\""),
    ("/v1/chat/completions", {"model": "sonar", "messages": [{"role": 3, "content": "x"}]}, 400, None,
     "messages", "messages[0]: expected 'role' to be one of 'system', 'developer', 'user', 'assistant', got 3"),
    ("/v1/chat/completions", {"model": "sonar", "messages": [{"content": "x"}]}, 400, None,
     "messages", "messages[0]: expected 'role' to be one of 'system', 'developer', 'user', 'assistant', got no 'role'"),
    ("/v1/chat/completions", b'{"model": "sonar\xff"}', 400, "invalid_json", None,
     "expected a JSON request body in UTF-8, got the byte 0xff at offset 16"),
    ("/v1/chat/completions", {"model": "sonar", "messages": USER, "n": 2}, 400, "unsupported_parameter", "n",
     "Perplexity Labs gives one answer per request: 'n' must be 1, got 2"),
    ("/v1/chat/completions", {"model": "sonar", "messages": USER, "n": 0}, 400, None, "n",
     "expected 'n' as a whole number >= 1, got 0"),
    ("/v1/chat/completions", {"model": "sonar", "messages": USER, "n": True}, 400, None, "n",
     "expected 'n' as a whole number >= 1, got true"),
    ("/v1/chat/completions", {"model": "sonar", "messages": USER, "n": 1.0}, 400, None, "n",
     "expected 'n' as a whole number >= 1, got 1.0"),
    ("/v1/chat/completions", {"model": "sonar", "messages": USER, "stream_options": []}, 400, None, "stream_options",
     "expected 'stream_options' as an object, got []"),
    ("/v1/responses", {"model": "sonar", "input": "hi", "instructions": 3}, 400, None, "instructions",
     "expected 'instructions' as a string, got 3"),
    ("/v1/responses", {"model": "sonar", "input": "hi", "previous_response_id": "resp_1"}, 400,
     "unsupported_parameter", "previous_response_id",
     "this gateway keeps no responses: send the whole conversation in 'input' instead of 'previous_response_id'"),
])
def test_the_refusals_say_what_was_expected_and_what_came(silent: Silent, path: str, body: Any, status: int,
                                                          code: str | None, param: str | None, message: str) -> None:
    app = create_app(server=silent.url)
    response = call(app, "POST", path, body if isinstance(body, bytes) else json.dumps(body).encode())
    assert assert_openai_error(response, status, code, param) == message
    assert "www-authenticate" not in response.headers  # only a 401 names the scheme
    assert silent.connections() == 0


def test_text_parts_are_joined_and_a_model_id_must_be_utf8(silent: Silent) -> None:
    from plabs_proto.backends.programs.gateway import (
        GatewayConfig,
        parse_chat_request,
        parse_responses_request,
    )

    parts = [{"type": "text", "text": "hi"}, {"type": "text", "text": ""}, {"type": "text", "text": "there"}]
    assert parse_chat_request({"model": "sonar", "messages": [{"role": "user", "content": parts}]}).messages == [
        {"role": "user", "content": "hi\nthere"}]
    items = [{"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert parse_responses_request({"model": "sonar", "input": items}).messages == [{"role": "user", "content": "a\nb"}]
    app = create_app(server=silent.url, any_model=True)
    body = b'{"model": "\\udfff", "messages": [{"role": "user", "content": "hi"}]}'
    message = assert_openai_error(call(app, "POST", "/v1/chat/completions", body), 400, None, "model")
    assert message == 'expected \'model\' as text that can be sent as UTF-8, got "\\udfff"'
    assert GatewayConfig().any_model is False


def test_n_at_its_edge_and_include_usage_only_when_true() -> None:
    """``n`` 1 (or absent, or null) is taken, 2 refused (above); ``include_usage`` counts only when true."""
    from plabs_proto.backends.programs.gateway import GatewayConfig, parse_chat_request

    for extra in ({}, {"n": 1}, {"n": None}):
        assert parse_chat_request({"model": "sonar", "messages": USER, **extra}).messages == USER
    usage = [parse_chat_request({"model": "sonar", "messages": USER, "stream_options": options}).include_usage
             for options in (None, {}, {"include_usage": 1}, {"include_usage": "true"}, {"include_usage": True})]
    assert usage == [False, False, False, False, True]
    two = [{"role": "system", "content": "a" * 4}, {"role": "user", "content": "b" * 4}]
    request = parse_chat_request({"model": "sonar", "messages": two, "stream": True})
    assert (request.prompt_tokens, request.stream, request.mode) == (3, True, None)  # 10 bytes: "a" * 4, "\n\n", "b" * 4
    ask = GatewayConfig(service="perplexity")
    request = parse_chat_request({"model": ask.cards[0].id, "messages": USER, "mode": "concise"}, ask)
    assert (request.mode, request.stream, request.model) == ("concise", False, ask.cards[0].id)


@pytest.mark.parametrize(("settings", "message"), [
    ({"backend": "uvloop"}, "expected the backend to be one of auto, asyncio, trio, curl, got 'uvloop'"),
    ({"api_key": ""}, "expected a non-empty api key (or none)"),
])
def test_bad_gateway_settings_are_refused_at_startup(settings: dict[str, Any], message: str) -> None:
    from plabs_proto.backends.programs.gateway import GatewayConfig, GatewayError

    with pytest.raises(GatewayError) as caught:
        create_app(**settings)
    assert str(caught.value) == message
    with pytest.raises(GatewayError) as caught:
        create_app(GatewayConfig(), server="http://127.0.0.1:1")  # type: ignore[call-arg]
    assert str(caught.value) == "give either a GatewayConfig or keyword settings, not both"


def test_plabs_in_process_version_backend_choices_mode_and_impersonate(
        capsys: pytest.CaptureFixture[str], labs_url: str, perplexity_emulator_factory: Any) -> None:
    from importlib.metadata import version

    status, out, _ = plabs(capsys, "--version")
    assert (status, out) == (0, f"plabs {version('plabs-proto')}\n")
    status, _, err = plabs(capsys, "ask", "--backend", "nosuch", "hi")
    assert status == 2 and "argument --backend: invalid choice: 'nosuch'" in err.splitlines()[-1]
    ask_url = perplexity_emulator_factory(answer="In a mode.").url
    status, out, err = plabs(capsys, "ask", "--service", "perplexity", "--server", ask_url, "--mode", "copilot", "hi")
    assert (status, err) == (0, "") and out.startswith("In a mode.\n\nCitations:\n")
    pytest.importorskip("curl_cffi")
    status, out, err = plabs(capsys, "ask", "--server", labs_url, "--impersonate", "chrome", "--no-reasoning",
                             "--model", "sonar", "hi")  # --impersonate alone picks curl
    assert (status, err) == (0, "") and out.startswith(default_answer("sonar", "hi"))
    status, out, err = plabs(capsys, "models", "--service", "perplexity", "--live", "--server", ask_url,
                             "--backend", "curl")
    assert (status, err) == (0, "") and out.splitlines()[0] == "turbo"
