"""Models and modes of the ask service (issue 17): the ask's ``mode`` as an option of every backend
and of ``plabs ask``, and the service's own catalog (``GET /rest/models/config/v2``) asked through the
session: sans-IO first, then end to end against both servers of the endpoint."""

from __future__ import annotations

import asyncio
import base64
import json
import random
from collections.abc import Callable
from typing import Any

import pytest
import trio
from plabs_proto.backends import asyncio as pasyncio
from plabs_proto.backends import sync as psync
from plabs_proto.backends import trio as ptrio
from plabs_proto.backends._config import parse_options
from plabs_proto.backends.programs.cli import main
from plabs_proto.backends.programs.emulator_perplexity import CATALOG

from plabs_proto.config import SessionConfig
from plabs_proto.errors import (
    ChallengeError,
    LocalProtocolError,
    NetworkError,
    RemoteProtocolError,
    SignInError,
)
from plabs_proto.events import Connected, HTTPRequest
from plabs_proto.jsondepth import MAX_DEPTH
from plabs_proto.perplexity.request import MODELS, Model, parse_catalog
from plabs_proto.perplexity.session import Catalog, PerplexitySession
from plabs_proto.state import SessionState
from plabs_proto.wire.trace import replay

SERVER = "https://pplx.test"
CATALOG_REQUEST = HTTPRequest(
    request_id=2, method="GET", url=f"{SERVER}/rest/models/config/v2",
    headers=(("Accept", "application/json"), ("Referer", f"{SERVER}/")), body=b"", lane=0, incremental=False,
)
JSON_HEAD = [("Content-Type", "application/json")]
#: The ids of the emulator's catalog, as `plabs models --live` prints them (the anonymous one first).
EMULATOR_IDS = ["turbo", "pplx_pro", "experimental", "pplx_reasoning", "gpt5", "claude45sonnet"]
NODE_IDS = ["turbo", "pplx_pro", "gpt5", "pplx_reasoning"]
Serve = Callable[..., str]


def ready(**config: Any) -> PerplexitySession:
    s = PerplexitySession(SessionConfig(server=SERVER, service="perplexity", **config), rng=random.Random(0))
    s.connect(0.0)
    (warmup,) = s.transmit()
    assert isinstance(warmup, HTTPRequest)
    s.receive_http_response(warmup.request_id, 200, JSON_HEAD, b"{}", 0.5)
    assert s.events() == [Connected(engine_sid="", socket_sid="", transport="sse")]
    return s


def catalog_asked(**config: Any) -> PerplexitySession:
    s = ready(**config)
    s.request_catalog(now=1.0)
    assert s.transmit() == [CATALOG_REQUEST]
    return s


# -- the session: the catalog ------------------------------------------------------------------------


def test_the_catalog_request_and_its_event() -> None:
    s = catalog_asked()
    assert s.state is SessionState.READY and s.get_timer() is None
    body = json.dumps(CATALOG).encode()
    s.receive_http_response(2, 200, JSON_HEAD, body, 1.5)
    assert s.events() == [Catalog(models=parse_catalog(CATALOG))]
    assert s.state is SessionState.READY and s.transmit() == []
    s.receive_http_response(2, 200, JSON_HEAD, body, 1.6)  # late news of a request answered: nothing
    assert s.events() == []
    s.query("Hello", now=2.0)  # the session goes on: the ask is request 3
    (ask,) = s.transmit()
    assert isinstance(ask, HTTPRequest) and ask.request_id == 3 and ask.url.endswith("/rest/sse/perplexity_ask")


def test_the_catalog_goes_with_the_session_token() -> None:
    s = ready(session_token="tok")
    s.request_catalog(now=1.0)
    (request,) = s.transmit()
    assert isinstance(request, HTTPRequest)
    assert request.headers[-1] == ("Cookie", "__Secure-next-auth.session-token=tok")


def test_the_catalog_only_when_ready_and_one_at_a_time() -> None:
    s = PerplexitySession(SessionConfig(server=SERVER, service="perplexity"), rng=random.Random(0))
    with pytest.raises(LocalProtocolError, match=r"expected a ready session .* but it is idle"):
        s.request_catalog(now=0.0)
    s.connect(0.0)
    with pytest.raises(LocalProtocolError, match="but it is connecting"):
        s.request_catalog(now=0.0)
    s = catalog_asked()
    with pytest.raises(LocalProtocolError, match="but the catalog is being fetched already"):
        s.request_catalog(now=1.0)
    with pytest.raises(LocalProtocolError, match="cannot start a query while the model catalog is being fetched"):
        s.query("Hello", now=1.0)
    assert s.transmit() == [] and s.state is SessionState.READY
    s = ready()
    s.query("Hello", now=1.0)
    with pytest.raises(LocalProtocolError, match="but it is querying"):
        s.request_catalog(now=1.0)


@pytest.mark.parametrize(
    ("status", "headers", "body", "error", "words"),
    [
        (403, [("Content-Type", "text/html"), ("cf-mitigated", "challenge")],
         b"<html><head><title>Just a moment...</title></head></html>", ChallengeError, "Just a moment"),
        (401, JSON_HEAD, b'{"detail": "no"}', SignInError, "the model catalog .* sign-in needed"),
        (500, JSON_HEAD, b"{}", RemoteProtocolError, "the model catalog"),
        (200, JSON_HEAD, b"<html>", RemoteProtocolError, "expected the model catalog .* as JSON, got '<html>'"),
        (200, JSON_HEAD, b"\xff{}", RemoteProtocolError, "as UTF-8 JSON, got a byte that is not UTF-8 at 0"),
        (200, JSON_HEAD, b'{"models": NaN}', RemoteProtocolError, "NaN is not JSON"),
        (200, JSON_HEAD, b'{"models": 3}', RemoteProtocolError, "expected 'models' to be an object or a list"),
        (200, JSON_HEAD, b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), RemoteProtocolError,
         f"expected the model catalog nested at most {MAX_DEPTH} deep"),
    ],
    ids=["cloudflare", "sign-in", "500", "not-json", "not-utf8", "nan", "models-not-a-list", "too-deep"],
)
def test_a_refused_or_malformed_catalog_fails_the_session(
    status: int, headers: list[tuple[str, str]], body: bytes, error: type[Exception], words: str
) -> None:
    s = catalog_asked()
    with pytest.raises(error, match=words):
        s.receive_http_response(2, status, headers, body, 1.5)
    assert s.state is SessionState.ERROR and s.events() == []


def test_a_catalog_nested_to_the_limit_is_read() -> None:
    deep: Any = "x"
    for _ in range(MAX_DEPTH - 3):  # {"models": {"turbo": {"label": [[...]]}}}: MAX_DEPTH levels in all
        deep = [deep]
    s = catalog_asked()
    body = json.dumps({"models": {"turbo": {"label": deep}}}).encode()
    s.receive_http_response(2, 200, JSON_HEAD, body, 1.5)
    assert s.events() == [Catalog(models=(Model(id="turbo", signed_in=False),))]


def test_a_transport_error_of_the_catalog_is_a_network_error() -> None:
    s = catalog_asked()
    with pytest.raises(NetworkError, match=r"expected a response from pplx.test:443"):
        s.receive_transport_error(2, "connection reset", 1.5)
    assert s.state is SessionState.ERROR


def test_close_drops_the_catalog_in_flight() -> None:
    s = catalog_asked()
    s.close(1.2)
    s.receive_http_response(2, 200, JSON_HEAD, json.dumps(CATALOG).encode(), 1.5)
    assert [type(e).__name__ for e in s.events()] == ["Closed"]


# -- the mode option -----------------------------------------------------------------------------------


def test_the_mode_is_checked_for_the_service() -> None:
    assert parse_options({"service": "perplexity", "mode": "concise"}, with_model=True).config.mode == "concise"
    assert parse_options({"service": "perplexity"}, with_model=False).config.mode is None
    assert parse_options({"service": "perplexity", "mode": None}, with_model=False).config.mode is None
    with pytest.raises(LocalProtocolError, match="expected no mode on service 'labs'"):
        SessionConfig(mode="copilot")
    with pytest.raises(LocalProtocolError, match=r"expected no mode on service 'labs' .* got mode='concise'"):
        parse_options({"mode": "concise"}, with_model=True)
    with pytest.raises(LocalProtocolError, match="expected the mode to be one of copilot, concise, got 'fast'"):
        parse_options({"service": "perplexity", "mode": "fast"}, with_model=False)
    with pytest.raises(LocalProtocolError, match="expected the mode to be one of copilot, concise, got 3"):
        parse_options({"service": "perplexity", "mode": 3}, with_model=False)


@pytest.mark.parametrize("backend", ["asyncio", "trio", "sync", "curl"])
def test_every_backend_takes_the_mode_and_refuses_it_on_labs(backend: str) -> None:
    module: Any = {"asyncio": pasyncio, "trio": ptrio, "sync": psync}.get(backend)
    if module is None:
        module = pytest.importorskip("plabs_proto.backends.curl")
    for call in (lambda **o: module.ask("Hi", **o), module.connect):
        with pytest.raises(LocalProtocolError, match="expected no mode on service 'labs'"):
            call(mode="copilot")
        with pytest.raises(LocalProtocolError, match="expected the mode to be one of copilot, concise"):
            call(service="perplexity", mode="deep")
    connection = module.connect(service="perplexity", mode="concise")
    assert connection.client.config.mode == "concise"
    assert module.connect(service="perplexity").client.config.mode is None
    with pytest.raises(LocalProtocolError, match="expected no mode on service 'labs'"):
        module.connect().query("Hi", mode="concise")
    with pytest.raises(LocalProtocolError, match="expected service=\"perplexity\" to ask for the model catalog"):
        if backend == "sync":
            module.connect().catalog()
        else:
            asyncio.run(module.connect().catalog())


def test_the_mode_reaches_the_emulator(perplexity_emulator_factory: Any) -> None:
    """The emulator echoes ``params.mode`` in every frame: what it received, seen in the bytes that came back."""
    url = perplexity_emulator_factory(answer="Yes.").url

    def echoed(**extra: Any) -> set[str]:
        received: list[bytes] = []
        sent: list[bytes] = []

        def tracer(now: float, stream: int, direction: str, data: bytes) -> None:
            (received if direction == "in" else sent).append(data)

        text = "".join(psync.ask("Hi", server=url, service="perplexity", timeout=20, tracer=tracer, **extra))
        assert text == "Yes."
        asked = b"".join(sent)
        assert asked.count(b'"mode":"') == 1
        modes = {mode for mode in ("copilot", "concise") if f'"mode": "{mode}"'.encode() in b"".join(received)}
        assert {mode for mode in ("copilot", "concise") if f'"mode":"{mode}"'.encode() in asked} == modes
        return modes

    assert echoed() == {"copilot"}  # the session's default
    assert echoed(mode="concise") == {"concise"}


def test_a_connection_mode_and_a_query_mode(perplexity_emulator_factory: Any) -> None:
    url = perplexity_emulator_factory(answer="Yes.").url
    sent: list[bytes] = []

    def tracer(now: float, stream: int, direction: str, data: bytes) -> None:
        if direction == "out" and b"perplexity_ask" in data:
            sent.append(data)

    with psync.connect(server=url, service="perplexity", timeout=20, tracer=tracer, mode="concise") as session:
        list(session.query("One"))
        list(session.query("Two", mode="copilot"))
    assert [b'"mode":"concise"' in data for data in sent] == [True, False]
    assert b'"mode":"copilot"' in sent[1]


# -- the catalog end to end ----------------------------------------------------------------------------


def ids(models: tuple[Model, ...]) -> list[str]:
    return [m.id for m in models]


def test_the_catalog_on_asyncio_trio_and_sync(perplexity_server: Serve) -> None:
    url = perplexity_server(answer="Yes.")
    options = {"server": url, "service": "perplexity", "timeout": 20}

    async def on_asyncio() -> tuple[Model, ...]:
        async with pasyncio.connect(**options) as session:
            models = await session.catalog()
            assert "".join([e.text async for e in session.query("Hi") if type(e).__name__ == "TextDelta"]) == "Yes."
            return models

    async def on_trio() -> tuple[Model, ...]:
        async with ptrio.connect(**options) as session:
            return await session.catalog()

    with psync.connect(**options) as session:
        by_sync = session.catalog()
    by_asyncio = asyncio.run(on_asyncio())
    assert by_asyncio == by_sync == trio.run(on_trio)
    assert set(ids(by_sync)) in (set(EMULATOR_IDS), set(NODE_IDS))
    assert [m.id for m in by_sync if not m.signed_in] == ["turbo"]
    assert next(m for m in by_sync if m.id == "gpt5").label == "GPT-5"


def test_the_catalog_over_curl(perplexity_emulator_factory: Any) -> None:
    pcurl = pytest.importorskip("plabs_proto.backends.curl")
    url = perplexity_emulator_factory(answer="Yes.").url

    async def main() -> tuple[Model, ...]:
        async with pcurl.connect(server=url, service="perplexity", timeout=20) as session:
            return await session.catalog()

    assert asyncio.run(main()) == parse_catalog(CATALOG)


# -- the CLI -------------------------------------------------------------------------------------------


def test_models_live_prints_the_servers_catalog(perplexity_server: Serve, capsys: pytest.CaptureFixture[str]) -> None:
    url = perplexity_server()
    assert main(["models", "--service", "perplexity", "--live", "--server", url, "--backend", "sync"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out in (EMULATOR_IDS, NODE_IDS) and out != [m.id for m in MODELS]


def test_models_live_on_asyncio(perplexity_emulator_factory: Any, capsys: pytest.CaptureFixture[str]) -> None:
    url = perplexity_emulator_factory().url
    assert main(["models", "--service", "perplexity", "--live", "--server", url, "--timeout", "20"]) == 0
    assert capsys.readouterr().out.splitlines() == EMULATOR_IDS


def test_models_live_refused_is_one_error_line(perplexity_emulator_factory: Any,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    url = perplexity_emulator_factory(cloudflare="session").url
    assert main(["models", "--service", "perplexity", "--live", "--server", url, "--backend", "sync"]) == 5
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith("plabs: error:") and "Just a moment" in out.err


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["models", "--live"], "--live needs --service perplexity"),
        (["models", "--service", "perplexity", "--server", "http://x.test"], "--server needs --live"),
        (["ask", "--mode", "concise", "Hi"], "--mode needs --service perplexity"),
        (["ask", "--service", "perplexity", "--mode", "fast", "Hi"], "invalid choice: 'fast'"),
    ],
)
def test_usage_errors(argv: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and words in capsys.readouterr().err


def test_ask_mode_reaches_the_emulator(perplexity_emulator_factory: Any, capsys: pytest.CaptureFixture[str],
                                       tmp_path: Any) -> None:
    url = perplexity_emulator_factory(answer="Yes.").url
    trace = tmp_path / "trace.jsonl"
    argv = ["ask", "--service", "perplexity", "--server", url, "--backend", "asyncio", "--trace", str(trace)]
    assert main([*argv, "--mode", "concise", "Hi"]) == 0
    assert capsys.readouterr().out.startswith("Yes.\n\nCitations:\n")
    lines = [json.loads(line) for line in trace.read_text().splitlines()[1:]]
    sent = b"".join(base64.b64decode(line["b64"]) for line in lines if line["dir"] == "out")
    received = b"".join(base64.b64decode(line["b64"]) for line in lines if line["dir"] == "in")
    assert b'"mode":"concise"' in sent and b'"mode": "concise"' in received and b'"mode": "copilot"' not in received
    header = json.loads(trace.read_text().splitlines()[0])
    assert header["mode"] == "concise"
    replayed: list[bytes] = []
    events = list(replay(trace.read_text().splitlines(), tracer=lambda t, s, d, b: replayed.append(b if d == "out" else b"")))
    assert type(events[-1]).__name__ == "Closed" and b"".join(replayed) == sent  # the same bytes again
