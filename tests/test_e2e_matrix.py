"""End to end: the asyncio, trio and blocking backends against the emulator and the Node.js server.

Every test runs the real backends over loopback sockets (through pproxy for the proxy
tests, over TLS with a trustme CA for the TLS tests) and checks the whole answer or
the exact error.  The async backends run under ``asyncio.run``/``trio.run`` so one
test body covers all three.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import json
import socket
import ssl
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import trio
from conftest import PROXY_PASSWORD, EmulatorFactory, NodeFactory, ProxyFactory, TLSFiles
from plabs_proto.backends import asyncio as asyncio_backend
from plabs_proto.backends import sync as sync_backend
from plabs_proto.backends import trio as trio_backend
from plabs_proto.backends.programs.emulator import default_answer, default_reasoning
from servers import reserved_port

from plabs_proto.errors import (
    AnswerRewrittenError,
    HandshakeError,
    LabsError,
    LabsTimeout,
    LocalProtocolError,
    NetworkError,
    ProxyError,
    RemoteProtocolError,
    ResponseError,
    TLSError,
)
from plabs_proto.events import AnswerFinished, Citations, Connected, Event, ReasoningDelta, TextDelta
from plabs_proto.labs.answer import DEFAULT_MODEL, DEFAULT_VERSION, REQUEST_EVENT, build_request

BACKENDS = ["asyncio", "trio", "sync"]
SERVERS = ["emulator", "node"]
TRANSPORTS = ["upgrade", "websocket", "polling"]
FAST = {"frame_delay": 0.001}
MULTIBYTE = (
    "Emoji 🌍🎉👩\u200d👩\u200d👧 and flags 🇫🇷🇯🇵; CJK 漢字かなカナ한국어; "
    "combining e\u0301 a\u0308\u0304 n\u0303; RTL שלום مرحبا; math \U0001d518\U0001d52b\U0001d526 and ∑∫√."
)


def run_ask(backend: str, prompt: Any, **options: Any) -> str:
    """The whole answer of ``ask`` on ``backend``."""
    if backend == "sync":
        with contextlib.closing(sync_backend.ask(prompt, **options)) as answer:
            return "".join(answer)

    async def main() -> str:
        module: Any = asyncio_backend if backend == "asyncio" else trio_backend
        async with contextlib.aclosing(module.ask(prompt, **options)) as answer:
            return "".join([str(text) async for text in answer])

    return asyncio.run(main()) if backend == "asyncio" else trio.run(main)


def run_session(
    backend: str, queries: list[tuple[str, str]], *, idle: float = 0.0, **options: Any
) -> list[list[Event]]:
    """The events of each ``(prompt, model)`` query, run one after another on one session
    (``idle`` seconds of idling after each)."""
    if backend == "sync":
        results: list[list[Event]] = []
        with sync_backend.connect(**options) as session:
            for prompt, model in queries:
                results.append(list(session.query(prompt, model=model)))
                time.sleep(idle)
        return results

    async def main() -> list[list[Event]]:
        module: Any = asyncio_backend if backend == "asyncio" else trio_backend
        results: list[list[Event]] = []
        async with module.connect(**options) as session:
            for prompt, model in queries:
                results.append([event async for event in session.query(prompt, model=model)])
                await (asyncio.sleep(idle) if backend == "asyncio" else trio.sleep(idle))
        return results

    return asyncio.run(main()) if backend == "asyncio" else trio.run(main)


def raises(backend: str, error: type[LabsError], prompt: Any = "hello", **options: Any) -> LabsError:
    """The error ``ask`` raises (checked to be exactly of type ``error`` or a subclass)."""
    with pytest.raises(error) as caught:
        run_ask(backend, prompt, **options)
    return caught.value


def start_server(kind: str, emulator_factory: EmulatorFactory, node_factory: NodeFactory, **options: Any) -> str:
    """The URL of an emulator or Node server with these options (EmulatorConfig names)."""
    if kind == "emulator":
        return emulator_factory(**options).url
    return node_factory(**options).url


@pytest.fixture(params=SERVERS)
def server_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def start(
    server_kind: str, emulator_factory: EmulatorFactory, node_factory: NodeFactory
) -> Callable[..., str]:
    def start(**options: Any) -> str:
        return start_server(server_kind, emulator_factory, node_factory, **options)

    return start


# -- every transport against both servers ------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_answer_on_every_transport(backend: str, transport: str, start: Callable[..., str]) -> None:
    url = start(**FAST)
    prompt = f"What is {transport} on {backend}?"
    assert run_ask(backend, prompt, server=url, transport=transport, model="sonar", timeout=10) == (
        default_answer("sonar", prompt)
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_messages_and_default_model(backend: str, start: Callable[..., str]) -> None:
    url = start(**FAST)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "second question"},
    ]
    # r1-1776 (the default) streams its reasoning first: ask yields the answer text only.
    assert run_ask(backend, messages, server=url, timeout=10) == default_answer("r1-1776", "second question")


@pytest.mark.parametrize("transport", ["upgrade", "polling"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_session_runs_queries_one_after_another(backend: str, transport: str, start: Callable[..., str]) -> None:
    url = start(**FAST)
    queries = [("one", "sonar-reasoning"), ("two", "sonar"), ("three", "r1-1776")]
    results = run_session(backend, queries, server=url, transport=transport, timeout=10)
    assert len(results) == 3
    for (prompt, model), events in zip(queries, results, strict=True):
        answer = default_answer(model, prompt)
        reasoning = default_reasoning(model, prompt) if model != "sonar" else ""
        assert "".join(e.text for e in events if isinstance(e, TextDelta)) == answer
        assert "".join(e.text for e in events if isinstance(e, ReasoningDelta)) == reasoning
        finished = events[-1]
        assert isinstance(finished, AnswerFinished)
        assert (finished.model, finished.text, finished.reasoning) == (model, answer, reasoning)
        assert not any(isinstance(e, AnswerFinished) for e in events[:-1])
        if model == "sonar":
            citations = [e for e in events if isinstance(e, Citations)]
            assert citations and citations[-1].citations == finished.citations != ()


# -- open(wait=False): the first query right behind the handshake --------------------------------------


def run_opened(
    backend: str, prompts: list[str], *, wait: bool = False, keep_alive: bool = False, **options: Any
) -> tuple[Connected | None, list[str]]:
    """The ``connected`` event and each prompt's answer text, the session opened with ``open(wait=...)``
    (on trio inside ``keep_alive()`` when asked); the first query is made before anything is awaited."""
    if backend == "sync":
        session = sync_backend.connect(**options)
        try:
            session.open(wait=wait)
            assert wait or session.connected is None
            answers = ["".join(e.text for e in session.query(p) if type(e) is TextDelta) for p in prompts]
            return session.connected, answers
        finally:
            session.close()

    async def main() -> tuple[Connected | None, list[str]]:
        module: Any = asyncio_backend if backend == "asyncio" else trio_backend
        session = module.connect(**options)
        alive = session.keep_alive() if keep_alive else contextlib.nullcontext()
        async with alive:
            try:
                await session.open(wait=wait)
                assert wait or session.connected is None
                answers = []
                for prompt in prompts:
                    async with session.query(prompt) as query:
                        answers.append("".join([e.text async for e in query if type(e) is TextDelta]))
                return session.connected, answers
            finally:
                await session.aclose()

    return asyncio.run(main()) if backend == "asyncio" else trio.run(main)


OPENINGS = [("asyncio", False), ("trio", False), ("trio", True), ("sync", False)]


@pytest.mark.parametrize(("backend", "keep_alive"), OPENINGS)
def test_query_after_open_without_waiting(backend: str, keep_alive: bool, start: Callable[..., str]) -> None:
    # The first query is made before the connect ack; a second one follows on the same session.
    url = start(**FAST)
    connected, answers = run_opened(backend, ["first", "second"], keep_alive=keep_alive, server=url, timeout=10)
    assert isinstance(connected, Connected) and connected.socket_sid
    assert answers == [default_answer(DEFAULT_MODEL, "first"), default_answer(DEFAULT_MODEL, "second")]


@pytest.mark.parametrize(("backend", "keep_alive"), OPENINGS)
def test_refused_connection_raises_from_the_first_query(
    backend: str, keep_alive: bool, start: Callable[..., str]
) -> None:
    # The server refuses the Socket.IO CONNECT (wrong jwt): the query raises what open() raises.
    url = start(**FAST)
    with pytest.raises(ResponseError) as waited:
        run_opened(backend, ["hello"], wait=True, server=url, jwt="not-the-one", timeout=10)
    with pytest.raises(ResponseError) as pipelined:
        run_opened(backend, ["hello"], keep_alive=keep_alive, server=url, jwt="not-the-one", timeout=10)
    assert "refused the Socket.IO connection: not authorized" in str(pipelined.value)
    assert str(pipelined.value) == str(waited.value)


@pytest.mark.parametrize("transport", ["upgrade", "websocket"])
@pytest.mark.parametrize(("backend", "keep_alive"), OPENINGS)
def test_cloudflare_page_raises_from_the_first_query(
    backend: str, keep_alive: bool, transport: str, emulator_factory: EmulatorFactory
) -> None:
    url = emulator_factory(cloudflare="upgrade", **FAST).url
    with pytest.raises(HandshakeError) as waited:
        run_opened(backend, ["hello"], wait=True, server=url, transport=transport, timeout=10)
    with pytest.raises(HandshakeError) as pipelined:
        run_opened(backend, ["hello"], keep_alive=keep_alive, server=url, transport=transport, timeout=10)
    assert (pipelined.value.status, pipelined.value.cloudflare) == (403, True)
    assert str(pipelined.value) == str(waited.value)


@pytest.mark.parametrize(("backend", "keep_alive"), OPENINGS)
def test_query_goes_out_without_waiting_for_the_consumer(
    backend: str, keep_alive: bool, emulator_factory: EmulatorFactory
) -> None:
    # In the byte trace, the query (the one long write: the prompt is long) goes out no later
    # than the input step that brings the server's connect ack ('40{"sid":...'): before it, or
    # written by that very step (the same clock reading: the core sends a query it holds the
    # moment the ack arrives).  After a plain open() the consumer sees Connected first and
    # queries only then: a later step.
    url = emulator_factory(**FAST).url
    prompt = "pipelined " * 40

    def trace(wait: bool) -> list[tuple[float, str, bytes]]:
        records: list[tuple[float, str, bytes]] = []

        def tracer(now: float, stream_id: int, direction: str, data: bytes) -> None:
            records.append((now, direction, data))

        run_opened(  # no permessage-deflate: the trace must show the ack and the query as they are
            backend, [prompt], wait=wait, keep_alive=keep_alive, server=url, transport="websocket",
            tracer=tracer, timeout=10, permessage_deflate=False,
        )
        return records

    def ack_and_query(records: list[tuple[float, str, bytes]]) -> tuple[int, int]:
        ack = next(i for i, (_, way, data) in enumerate(records) if way == "in" and b'40{"sid"' in data)
        query = next(  # the masked frame, longer than the prompt (the upgrade request's head may be too)
            i for i, (_, way, data) in enumerate(records)
            if way == "out" and len(data) > len(prompt) and not data.startswith(b"GET ")
        )
        return ack, query

    records = trace(wait=False)
    ack, query = ack_and_query(records)
    if backend != "sync":
        assert query < ack or records[query][0] == records[ack][0]
    # (sync: the helper thread runs the handshake while the caller goes on, so on a loaded machine it
    # may read the ack before the caller's first next(); the query then goes out at that next(), a
    # step later but no round trip later: the order is a race, not a property.)
    records = trace(wait=True)
    ack, query = ack_and_query(records)
    assert query > ack and records[query][0] > records[ack][0]


# -- TLS ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_tls_with_a_private_ca(
    backend: str, transport: str, emulator_factory: EmulatorFactory, tls_files: TLSFiles
) -> None:
    emulator = emulator_factory(certfile=tls_files.certfile, keyfile=tls_files.keyfile, **FAST)
    assert emulator.url.startswith("https://127.0.0.1:")
    # cafile as a Path here (os.PathLike), as a str in the tests below
    answer = run_ask(backend, "secure?", server=emulator.url, cafile=Path(tls_files.cafile), transport=transport,
                     model="sonar", timeout=10)
    assert answer == default_answer("sonar", "secure?")


@pytest.mark.parametrize("backend", BACKENDS)
def test_tls_to_node_with_an_ssl_context(backend: str, node_factory: NodeFactory, tls_files: TLSFiles) -> None:
    server = node_factory(certfile=tls_files.certfile, keyfile=tls_files.keyfile, **FAST)
    context = ssl.create_default_context(cafile=tls_files.cafile)
    answer = run_ask(backend, "node tls", server=server.url, ssl_context=context, model="sonar", timeout=10)
    assert answer == default_answer("sonar", "node tls")


@pytest.mark.parametrize("backend", BACKENDS)
def test_tls_untrusted_certificate_is_refused(
    backend: str, emulator_factory: EmulatorFactory, tls_files: TLSFiles
) -> None:
    emulator = emulator_factory(certfile=tls_files.certfile, keyfile=tls_files.keyfile, **FAST)
    error = raises(backend, TLSError, server=emulator.url, cafile=tls_files.other_cafile, timeout=10)
    assert "certificate" in str(error)
    assert "issuer" in str(error) or "verify" in str(error)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tls_wrong_host_is_refused(backend: str, emulator_factory: EmulatorFactory, tls_files: TLSFiles) -> None:
    emulator = emulator_factory(certfile=tls_files.wrong_host_certfile, keyfile=tls_files.wrong_host_keyfile, **FAST)
    error = raises(backend, TLSError, server=emulator.url, cafile=tls_files.cafile, timeout=10)
    assert "127.0.0.1" in str(error)
    assert "mismatch" in str(error) or "not valid" in str(error)


# -- proxies --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
@pytest.mark.parametrize("scheme", ["http", "socks5"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_through_a_proxy_with_auth(
    backend: str,
    scheme: str,
    tls: bool,
    proxy_factory: ProxyFactory,
    emulator_factory: EmulatorFactory,
    tls_files: TLSFiles,
) -> None:
    proxy = proxy_factory(scheme)
    files = {"certfile": tls_files.certfile, "keyfile": tls_files.keyfile} if tls else {}
    emulator = emulator_factory(**files, **FAST)
    answer = run_ask(backend, f"via {scheme}", server=emulator.url, proxy=proxy.url(),
                     cafile=tls_files.cafile if tls else None, model="sonar", timeout=10)
    assert answer == default_answer("sonar", f"via {scheme}")


@pytest.mark.parametrize("transport", ["websocket", "polling"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_proxy_to_node(backend: str, transport: str, proxy_factory: ProxyFactory, node_factory: NodeFactory) -> None:
    proxy = proxy_factory("socks5")
    server = node_factory(**FAST)
    answer = run_ask(backend, "socks to node", server=server.url, proxy=proxy.url(), transport=transport,
                     model="sonar", timeout=10)
    assert answer == default_answer("sonar", "socks to node")


@pytest.mark.parametrize("scheme", ["http", "socks5"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_proxy_wrong_password_is_refused(
    backend: str, scheme: str, fresh_proxy: ProxyFactory, emulator_factory: EmulatorFactory
) -> None:
    proxy = fresh_proxy(scheme)
    emulator = emulator_factory(**FAST)
    wrong = "wr0ng-Pa55w0rd"
    error = raises(backend, ProxyError, server=emulator.url, proxy=proxy.url(password=wrong), timeout=10)
    for text in (str(error), repr(error), repr(error.args)):
        assert wrong not in text
        assert PROXY_PASSWORD not in text
    assert "127.0.0.1" in str(error)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unreachable_proxy_names_no_credentials(backend: str) -> None:
    port = reserved_port()  # below the ephemeral range: no other test's server gets it meanwhile
    error = raises(backend, NetworkError, server="http://127.0.0.1:9", proxy=f"http://alice:{PROXY_PASSWORD}@127.0.0.1:{port}", timeout=5)
    assert type(error) is NetworkError and (error.host, error.port) == ("127.0.0.1", port)
    assert f"the proxy at 127.0.0.1:{port}" in str(error)
    assert PROXY_PASSWORD not in str(error) and "alice" not in str(error)


@pytest.mark.parametrize("backend", BACKENDS)
def test_idle_session_answers_pings(backend: str, start: Callable[..., str]) -> None:
    # The server gives up pingInterval + pingTimeout = 0.4 s after a ping without a pong; idling
    # three ping intervals (0.6 s) between queries works only if the session answers pings while idle.
    url = start(ping_interval=0.2, ping_timeout=0.2, **FAST)
    prompts = ["before the gap", "after the gap", "after another"]
    results = run_session(backend, [(prompt, "sonar") for prompt in prompts], idle=0.6, server=url, timeout=10)
    assert ["".join(e.text for e in events if type(e) is TextDelta) for events in results] == [
        default_answer("sonar", prompt) for prompt in prompts
    ]


def test_trio_keep_alive_answers_pings_for_queries_in_other_tasks(start: Callable[..., str]) -> None:
    # A session opened without a nursery, kept alive by one task while others query it (the
    # gateway's pool): it idles three ping intervals before and between the queries.
    url = start(ping_interval=0.2, ping_timeout=0.2, **FAST)
    answers: list[str] = []

    async def ask_in_a_task(session: trio_backend.Session, prompt: str) -> None:
        async with session.query(prompt) as query:
            answers.append("".join([e.text async for e in query if type(e) is TextDelta]))

    async def main() -> None:
        session = trio_backend.connect(server=url, timeout=10)
        await session.open()
        try:
            async with session.keep_alive(), trio.open_nursery() as nursery:
                for prompt in ("one", "two"):
                    await trio.sleep(0.6)
                    nursery.start_soon(ask_in_a_task, session, prompt)
                    await trio.sleep(0)
        finally:
            await session.aclose()

    trio.run(main)
    assert answers == [default_answer(DEFAULT_MODEL, "one"), default_answer(DEFAULT_MODEL, "two")]


def test_trio_keep_alive_is_refused_twice_at_once_and_can_be_entered_again(start: Callable[..., str]) -> None:
    url = start(ping_interval=0.2, ping_timeout=0.2, **FAST)

    async def main() -> str:
        async with trio_backend.connect(server=url, timeout=10) as session:  # keeps itself alive
            with pytest.raises(LocalProtocolError, match="twice at once"):
                async with session.keep_alive():
                    pass
        session = trio_backend.connect(server=url, timeout=10)
        await session.open()
        try:
            for _ in range(2):  # pings answered in each of two keep_alive blocks, one after the other
                async with session.keep_alive():
                    await trio.sleep(0.6)
            async with session.query("still there?") as query:
                return "".join([e.text async for e in query if type(e) is TextDelta])
        finally:
            await session.aclose()

    assert trio.run(main) == default_answer(DEFAULT_MODEL, "still there?")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_server_that_never_reads_meets_the_deadline_while_we_write(backend: str) -> None:
    # A listener that never accepts: the kernel takes the connection and buffers what fits, then
    # the 32 MB request head stalls the write (sync, trio) or the wait for the answer (asyncio's
    # transport buffers it): either way the connect deadline ends it, not a hang.
    with socket.create_server(("127.0.0.1", 0)) as listener:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        started = time.monotonic()
        with pytest.raises(LabsTimeout):
            run_ask(backend, "hi", server=url, connect_timeout=0.5, headers={"X-Big": "a" * 32_000_000})
        assert time.monotonic() - started < 5


def test_asyncio_drops_a_connection_stuck_writing_when_the_answer_fails(sockets_to: Callable[[int], int]) -> None:
    # The 32 MB request head waits in the transport's buffer for a peer that never reads; when
    # the deadline fails the answer, the connection goes at once (aborted), not when the
    # answer is collected or the loop ends (a graceful close would wait for the buffer forever).
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        async def main() -> int:
            answer = asyncio_backend.ask("hi", server=f"http://127.0.0.1:{port}", connect_timeout=0.5,
                                         headers={"X-Big": "a" * 32_000_000})
            with pytest.raises(LabsTimeout):
                async for _ in answer:
                    pass
            await asyncio.sleep(0.05)  # the abort's connection_lost runs on the next turns of the loop
            return sockets_to(port)

        assert asyncio.run(main()) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_connection_refused(backend: str) -> None:
    port = reserved_port()  # below the ephemeral range: no other test's server gets it meanwhile
    error = raises(backend, NetworkError, server=f"http://127.0.0.1:{port}", timeout=5)
    assert type(error) is NetworkError
    assert f"connect to the server at 127.0.0.1:{port}" in str(error)
    assert "refused" in str(error).lower()
    assert error.partial_text == ""
    # The socket's own error is kept: chained as the cause, and its errno named.
    assert isinstance(error.__cause__, ConnectionRefusedError)
    assert (error.host, error.port, error.errno) == ("127.0.0.1", port, errno.ECONNREFUSED)
    assert f"[Errno {errno.ECONNREFUSED}]" in str(error)


# -- heartbeats during a long answer -------------------------------------------------------------------


def _count_pings() -> tuple[Callable[[float, int, str, bytes], None], list[bytes]]:
    inbound: list[bytes] = []

    def tracer(now: float, stream_id: int, direction: str, data: bytes) -> None:
        if direction == "in":
            inbound.append(data)

    return tracer, inbound


@pytest.mark.parametrize("backend", BACKENDS)
def test_pings_every_200ms_during_a_long_answer(backend: str, start: Callable[..., str]) -> None:
    # ~40 frames 50 ms apart: the answer takes about 2 s; the server pings every 0.2 s and
    # gives up 0.2 s later without a pong, so the answer only completes if every ping is answered.
    url = start(frame_delay=0.05, ping_interval=0.2, ping_timeout=0.2)
    tracer, inbound = _count_pings()
    started = time.monotonic()
    answer = run_ask(backend, "long", server=url, model="sonar-reasoning", transport="websocket", timeout=10,
                     tracer=tracer, permessage_deflate=False)  # plain frames: the pings are counted in the trace
    elapsed = time.monotonic() - started
    assert answer == default_answer("sonar-reasoning", "long")
    assert elapsed > 1.5
    # A server WebSocket text frame holding just "2" (Engine.IO ping): 0x81 0x01 '2'.
    pings = b"".join(inbound).count(b"\x81\x012")
    assert pings >= 5


@pytest.mark.parametrize("backend", BACKENDS)
def test_pings_on_polling(backend: str, emulator_factory: EmulatorFactory) -> None:
    url = emulator_factory(frame_delay=0.03, ping_interval=0.2, ping_timeout=0.2).url
    tracer, inbound = _count_pings()
    answer = run_ask(backend, "polled", server=url, model="sonar", transport="polling", timeout=10, tracer=tracer)
    assert answer == default_answer("sonar", "polled")
    # Pings arrive in long-polling GET bodies: a lone "2", or "2" between record separators.
    bodies = b"".join(inbound)
    assert bodies.count(b"\r\n\r\n2") + bodies.count(b"\x1e2\x1e") + bodies.count(b"\x1e2\r") >= 1


# -- answers that must not vanish -------------------------------------------------------------------------

SHORT = "Hi! How can I help?"


@pytest.mark.parametrize("answer", [SHORT, "Hi."])
@pytest.mark.parametrize("backend", BACKENDS)
def test_default_model_answer_without_reasoning_reaches_ask(backend: str, answer: str, start: Callable[..., str]) -> None:
    # r1-1776 (the default) streams untagged output as reasoning until it knows better;
    # with no "</think>" at all the final frame shows it was the answer.  ask() yields
    # text only, and it must not end with "" for it.
    url = start(answer=answer, no_reasoning=True, chunk_size=8, **FAST)
    assert run_ask(backend, "hello", server=url, timeout=10) == answer


@pytest.mark.parametrize("backend", BACKENDS)
def test_default_model_answer_without_reasoning_reaches_a_text_delta_reader(
    backend: str, start: Callable[..., str]
) -> None:
    url = start(answer=SHORT, no_reasoning=True, chunk_size=8, **FAST)
    events = run_session(backend, [("hello", "r1-1776")], server=url, timeout=10)[0]
    finished = events[-1]
    assert isinstance(finished, AnswerFinished) and (finished.text, finished.reasoning) == (SHORT, "")
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == SHORT


@pytest.mark.parametrize("backend", BACKENDS)
def test_rewritten_answer_raises_after_reading_to_the_end(backend: str, start: Callable[..., str]) -> None:
    # The server streams one answer, then its final frame says another: the text
    # already yielded cannot be taken back, so ask() does not end quietly with it.
    url = start(answer="Paris is the capital.", final_output="Lyon, actually.", chunk_size=8, **FAST)
    error = raises(backend, AnswerRewrittenError, "capital?", server=url, model="sonar", timeout=10)
    assert type(error) is AnswerRewrittenError
    assert (error.text, error.reasoning, error.yielded) == ("Lyon, actually.", "", "Paris is the capital.")
    assert error.partial_text == "Lyon, actually."
    assert str(error) == (
        "expected the final answer to begin with the 21 characters already yielded, but the server "
        "rewrote the answer after they were yielded: its final text (15 characters) differs from "
        "them at character 0; the final answer is in the error's text"
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_final_answer_longer_than_the_stream_is_yielded_whole(backend: str, start: Callable[..., str]) -> None:
    url = start(answer="Paris", final_output="Paris is the capital.", chunk_size=2, **FAST)
    assert run_ask(backend, "capital?", server=url, model="sonar", timeout=10) == "Paris is the capital."


# -- failures ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_server_failure_frame(backend: str, start: Callable[..., str]) -> None:
    url = start(fail="Error in processing query", fail_after=3, chunk_size=8, **FAST)
    error = raises(backend, ResponseError, "will fail", server=url, model="sonar", timeout=10)
    assert type(error) is ResponseError
    assert error.server_text == "Error in processing query"
    assert "Error in processing query" in str(error)
    assert error.partial_text == default_answer("sonar", "will fail")[:24]


@pytest.mark.parametrize("transport", ["upgrade", "polling"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_connection_dropped_mid_answer(backend: str, transport: str, start: Callable[..., str]) -> None:
    url = start(drop_after=5, chunk_size=8, **FAST)
    # A close the peer made is a protocol error (the answer ended too early); a reset, a network one.
    error = raises(backend, LabsError, "drop me", server=url, model="sonar", transport=transport, timeout=10)
    assert isinstance(error, RemoteProtocolError | NetworkError)
    full = default_answer("sonar", "drop me")
    assert error.partial_text
    assert full.startswith(error.partial_text)
    assert len(error.partial_text) <= 40
    assert not isinstance(error, HandshakeError | ProxyError | TLSError)


@pytest.mark.parametrize("backend", BACKENDS)
def test_silence_hits_the_first_text_deadline(backend: str, start: Callable[..., str]) -> None:
    url = start(silent=True, **FAST)
    started = time.monotonic()
    error = raises(backend, LabsTimeout, server=url, first_text_timeout=0.5, timeout=10)
    elapsed = time.monotonic() - started
    assert isinstance(error, LabsTimeout) and error.deadline == "first_text"
    assert 0.5 <= elapsed < 2.0
    assert "0.5 s" in str(error)


@pytest.mark.parametrize("backend", BACKENDS)
def test_timeout_is_the_overall_deadline(backend: str, emulator_factory: EmulatorFactory) -> None:
    url = emulator_factory(silent=True, **FAST).url
    started = time.monotonic()
    error = raises(backend, LabsTimeout, server=url, timeout=0.6)
    elapsed = time.monotonic() - started
    assert isinstance(error, LabsTimeout) and error.deadline == "query"
    assert 0.6 <= elapsed < 2.0


@pytest.mark.parametrize(
    ("mode", "transport"), [("polling", "upgrade"), ("polling", "polling"), ("upgrade", "upgrade"),
                            ("upgrade", "websocket")]
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_cloudflare_page_is_a_handshake_error(
    backend: str, mode: str, transport: str, emulator_factory: EmulatorFactory
) -> None:
    url = emulator_factory(cloudflare=mode, **FAST).url
    error = raises(backend, HandshakeError, server=url, transport=transport, timeout=10)
    assert isinstance(error, HandshakeError)
    assert error.cloudflare is True
    assert error.status == 403
    assert "Cloudflare" in str(error)


# -- content ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["websocket", "polling"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_multibyte_text_split_across_frames(backend: str, transport: str, start: Callable[..., str]) -> None:
    url = start(answer=MULTIBYTE, reasoning="思考 🤔 e\u0301", chunk_size=1, frame_delay=0)
    events = run_session(backend, [("unicode", "sonar-reasoning")], server=url, transport=transport, timeout=20)[0]
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == MULTIBYTE
    assert "".join(e.text for e in events if isinstance(e, ReasoningDelta)) == "思考 🤔 e\u0301"
    assert len([e for e in events if isinstance(e, TextDelta)]) > 50  # really split


def _big_text(size: int) -> str:
    # Varied, position-dependent content so a lost, doubled or reordered piece shows.
    pieces = []
    total = 0
    index = 0
    while total < size:
        piece = f"[{index:07d}:é漢🙂] "
        pieces.append(piece)
        total += len(piece)
        index += 1
    return "".join(pieces)[:size]


BIG = _big_text(1_000_000)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_one_megabyte_answer(backend: str, transport: str, start: Callable[..., str]) -> None:
    # 1,000,000 characters (about 1.6 MB of UTF-8) in 4 cumulative frames of up to ~1.6 MB each,
    # from servers with their default maxPayload (1,000,000 bytes): that limit is for what the
    # client sends, so the client's defaults take the long answer.
    url = start(answer=BIG, chunk_size=250_000, frame_delay=0)
    answer = run_ask(backend, "big", server=url, model="sonar", transport=transport, timeout=30)
    assert len(answer) == len(BIG)
    assert answer == BIG


SMALL_PAYLOAD = 2000  # the servers' maxPayload (maxHttpBufferSize, max_http_buffer_size) below


def prompt_of(request_size: int) -> str:
    """A prompt whose request frame (model "sonar") is ``request_size`` bytes of UTF-8."""
    def size(prompt: str) -> int:
        request = build_request(prompt, model="sonar", version=DEFAULT_VERSION)
        return len(("42" + json.dumps([REQUEST_EVENT, request], separators=(",", ":"), ensure_ascii=False)).encode())

    prompt = "é" * ((request_size - size("x")) // 2)  # half the bytes multibyte: they count as two each
    return prompt + "x" * (request_size - size(prompt))


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_prompt_size_against_max_payload(
    backend: str, transport: str, start: Callable[..., str], sockets_to: Callable[[int], int]
) -> None:
    # ask() queries before the server's open packet: its maxPayload is checked when that arrives.
    url = start(max_payload=SMALL_PAYLOAD, **FAST)
    options: dict[str, Any] = {"server": url, "model": "sonar", "transport": transport, "timeout": 10}
    fits = prompt_of(SMALL_PAYLOAD - 1)
    assert run_ask(backend, fits, **options) == default_answer("sonar", fits)
    error = raises(backend, LocalProtocolError, prompt_of(SMALL_PAYLOAD), **options)
    assert str(error).startswith(
        f"cannot send the query: its request is {SMALL_PAYLOAD} bytes, but the server's maxPayload "
        f"(in its Engine.IO open packet) is {SMALL_PAYLOAD} bytes and a request must be smaller"
    )
    assert sockets_to(urlsplit(url).port or 0) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_session_refuses_a_prompt_over_max_payload_and_goes_on(backend: str, start: Callable[..., str]) -> None:
    # Once connected the limit is known: the query is refused at once and the session stays usable.
    url = start(max_payload=SMALL_PAYLOAD, **FAST)
    too_big, fits = prompt_of(SMALL_PAYLOAD + 500), prompt_of(SMALL_PAYLOAD - 1)
    message = f"its request is {SMALL_PAYLOAD + 500} bytes, but the server's maxPayload"
    if backend == "sync":
        with sync_backend.connect(server=url, timeout=10) as session:
            with pytest.raises(LocalProtocolError, match=message):
                list(session.query(too_big, model="sonar"))
            events = list(session.query(fits, model="sonar"))
    else:
        async def main() -> list[Event]:
            module: Any = asyncio_backend if backend == "asyncio" else trio_backend
            async with module.connect(server=url, timeout=10) as session:
                with pytest.raises(LocalProtocolError, match=message):
                    [event async for event in session.query(too_big, model="sonar")]
                return [event async for event in session.query(fits, model="sonar")]

        events = asyncio.run(main()) if backend == "asyncio" else trio.run(main)
    final = events[-1]
    assert isinstance(final, AnswerFinished) and final.text == default_answer("sonar", fits)


def test_trio_answer_collected_after_the_run(node_factory: NodeFactory, sockets_to: Callable[[int], int]) -> None:
    server = node_factory(frame_delay=0.02)
    held = [trio_backend.ask("kept past the run", server=server.url, model="sonar", timeout=10)]

    async def first() -> str:
        return str(await held[0].__anext__())

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert trio.run(first)
        assert sockets_to(server.port) == 1
        held.clear()  # the answer is collected outside any trio run
        gc.collect()
    assert sockets_to(server.port) == 0
    assert [str(w.message) for w in caught] == []
