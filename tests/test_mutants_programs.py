"""Tests that notice (issue 19): what the programs (the gateway, ``plabs serve``, the ``plabs``
command) do at the places mutation testing found no test looking, each as a client or a user sees
it (status, body, headers, output).  benchmarks/mutation-programs.md records the runs.

The gateway's tests here run in process (httpx's ASGITransport, no lifespan, no ASGI server), in
front of a listening socket that never answers (a refused request opens no connection to it).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from test_gateway import assert_openai_error

from plabs_proto.backends.programs.gateway import MAX_BODY, create_app

KEY = "sk-mutant-0123456789"
USER = [{"role": "user", "content": "hi"}]


class Silent:
    """A server that never answers; ``connections()`` counts (and closes) what came since last asked."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def connections(self) -> int:
        count = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return count
            conn.close()
            count += 1


@pytest.fixture(scope="module")
def silent() -> Iterator[Silent]:
    server = Silent()
    yield server
    server.sock.close()


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
