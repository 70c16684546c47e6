"""Tests written for the survivors of mutation testing of the backends (issue 19).

The driver, the network seam, the answer, query and connection every backend shares, and the
asyncio backend (benchmarks/mutation-backends.md says which mutants each test kills).  They run
the client in this process: the servers are in memory (``tests/memory_network.py``, a fake
clock), threads of it (the emulators) or plain sockets.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import random
import socket
import struct
import sys
import threading
import time
from typing import Any

import pytest
from conftest import EmulatorFactory, PerplexityEmulatorFactory
from memory_network import MemoryNetwork, MemoryStream
from peer import progress, ws_frame
from plabs_proto.backends import asyncio as asyncio_backend
from plabs_proto.backends import sync as sync_backend
from plabs_proto.backends._async_api import AsyncAnswer, AsyncConnection
from plabs_proto.backends._config import to_messages
from plabs_proto.backends._driver import IDLE_WAIT, Driver
from plabs_proto.backends._seam import READ_SIZE, read_buffer, run_blocking
from servers import Silent, free_port, stalled_listener
from test_driver import WebSocketServer
from test_perplexity_client import ANSWER, WARMUP_RESPONSE, sse_body, sse_response

from plabs_proto.config import ClientConfig
from plabs_proto.errors import (
    LabsTimeout,
    LocalProtocolError,
    NetworkError,
    RemoteProtocolError,
    ResponseError,
)
from plabs_proto.events import AnswerFinished, Connected, Event, ReasoningDelta, TextDelta
from plabs_proto.wire.client import Client, ClientState, LabsClient, PerplexityClient, Tracer

# -- the driver ------------------------------------------------------------------------------------


class AskServer:
    """The ask endpoint in memory, ending the connection after each response (``Connection: close``),
    as a server does that lets an idle keep-alive go."""

    def __init__(self, stream: MemoryStream) -> None:
        self.stream = stream
        self.requests: list[bytes] = []

    def received(self, data: bytes) -> None:
        self.requests.append(data)
        if data.startswith(b"GET /api/auth/session "):
            self.stream.push(WARMUP_RESPONSE.replace(b"Content-Length", b"Connection: close\r\nContent-Length"))
        elif data.startswith(b"POST /rest/sse/perplexity_ask "):
            self.stream.push(sse_response(sse_body(), framing="close"))
        else:
            return
        self.stream.push(b"")


def test_an_idle_ask_session_without_a_connection_waits_for_the_next_query() -> None:
    # The ask service's session has no deadline between queries (no heartbeat).  Once the server let
    # the warm-up's connection go, the idling waits (IDLE_WAIT at a time, until woken) instead of
    # failing for want of a connection, and the next query opens a new connection.
    servers: list[AskServer] = []

    def serve(stream: MemoryStream) -> AskServer:
        servers.append(AskServer(stream))
        return servers[-1]

    network = MemoryNetwork(serve)
    config = ClientConfig(server="http://pplx.test", service="perplexity", browser=None)
    client = PerplexityClient(config, rng=random.Random(0))
    driver = Driver(client, network)
    driver.command(client.connect)
    assert type(run_blocking(driver.next_event())) is Connected
    driver.start_idling()
    network.idle(until=200.0)
    run_blocking(driver.stop_idling())
    assert IDLE_WAIT == 60.0
    assert network.sleeps == [60.0, 120.0, 180.0, 240.0]  # the last one woken at 200
    assert driver.error is None and network.clock == 200.0 and servers[0].stream.closed
    driver.command(client.query, "Hello")
    events: list[Event] = []
    while not events or type(events[-1]) is not AnswerFinished:
        events.append(run_blocking(driver.next_event()))
    assert "".join(event.text for event in events if type(event) is TextDelta) == ANSWER
    assert len(servers) == 2 and servers[1].requests[0].startswith(b"POST /rest/sse/perplexity_ask ")
    run_blocking(driver.aclose())


# -- the network seam ------------------------------------------------------------------------------


def test_the_read_buffer_is_one_per_thread() -> None:
    # Every connection of a thread reads into one buffer of READ_SIZE bytes; another thread has its own.
    mine = read_buffer()
    assert READ_SIZE == 126 * 1024 and len(mine) == READ_SIZE and not mine.readonly
    assert read_buffer() is mine
    theirs: list[memoryview] = []
    thread = threading.Thread(target=lambda: theirs.extend([read_buffer(), read_buffer()]))
    thread.start()
    thread.join()
    assert theirs[0] is theirs[1] and theirs[0] is not mine and len(theirs[0]) == READ_SIZE


def test_run_blocking_refuses_a_coroutine_that_suspends_and_closes_it() -> None:
    ended: list[str] = []

    async def suspends() -> int:
        try:
            await asyncio.sleep(0)  # a bare yield to the loop: no blocking network does this
        finally:
            ended.append("closed")
        return 1

    async def returns() -> int:
        return 7

    assert run_blocking(returns()) == 7
    with pytest.raises(RuntimeError) as caught:
        run_blocking(suspends())
    assert str(caught.value) == (
        "expected a blocking network's coroutine to finish without suspending, but it suspended"
    )
    assert ended == ["closed"]


# -- the answer, query and connection every backend shares ----------------------------------------


class LabsServer(WebSocketServer):
    """test_driver's Labs server on the WebSocket transport, answering every query with ``script``."""

    def __init__(self, stream: MemoryStream, script: list[str], pings: tuple[float, ...] = ()) -> None:
        super().__init__(stream, pings)
        self.script = script
        self.queries = 0

    def received(self, data: bytes) -> None:
        before = len(self.seen)
        super().received(data)
        for frame in self.seen[before:]:
            if isinstance(frame, str) and frame.startswith("42"):
                self.queries += 1
                for payload in self.script:
                    self.stream.push(ws_frame(payload))


class MemoryConnection(AsyncConnection[Client]):
    """The shared connection over the in-memory network (it never suspends: stepped by run_blocking)."""

    def __init__(self, network: MemoryNetwork, tracer: Tracer | None = None) -> None:
        config = ClientConfig(server="http://labs.test", transport="websocket", connect_timeout=10.0)
        super().__init__(config, seed=0, tracer=tracer)
        self.network = network

    def _new_driver(self) -> Driver:
        return Driver(self.client, self.network)


class RefusingServer(WebSocketServer):
    """test_driver's Labs server, refusing the Socket.IO connect (a wrong jwt)."""

    def received(self, data: bytes) -> None:
        if not self.upgraded:
            super().received(data)
            return
        for frame in self.frames.feed(data):
            if isinstance(frame, str) and frame.startswith("40"):
                self.stream.push(ws_frame('44{"message":"not authorized"}'))


def memory_session(
    script: list[str], pings: tuple[float, ...] = (), *, wait: bool = True, refuse: bool = False
) -> tuple[MemoryNetwork, MemoryConnection, list[Any]]:
    servers: list[Any] = []

    def serve(stream: MemoryStream) -> WebSocketServer:
        servers.append(RefusingServer(stream) if refuse else LabsServer(stream, script, pings))
        return servers[-1]

    network = MemoryNetwork(serve)
    connection = MemoryConnection(network)
    run_blocking(connection.open(wait=wait))
    assert (connection.connected is not None) == wait
    return network, connection, servers


def read_query(connection: MemoryConnection, prompt: str, model: str) -> list[Event]:
    query = connection.query(prompt, model=model)
    events: list[Event] = []
    while not query.done:
        events.append(run_blocking(query.__anext__()))
    return events


def test_between_queries_the_session_answers_pings_in_the_background() -> None:
    # Once an answer is finished, the session idles in the background (answering the server's
    # pings) until the next query, which runs on the same connection.
    script = [progress("sonar", {"output": "Hello", "final": False}),
              progress("sonar", {"output": "Hello!", "final": True, "citations": []})]
    network, connection, [server] = memory_session(script, pings=(25.0, 50.0))
    first = read_query(connection, "one", "sonar")
    assert first[-1] == AnswerFinished(model="sonar", text="Hello!", reasoning="", citations=())
    network.idle(until=60.0)  # the consumer is elsewhere
    assert server.pongs == [25.0, 50.0]
    second = read_query(connection, "two", "sonar")
    assert [event for event in second if type(event) is TextDelta] == [TextDelta(text="Hello"), TextDelta(text="!")]
    assert server.queries == 2 and len(network.streams) == 1 and connection.client.state is ClientState.READY
    run_blocking(connection.aclose())


def test_a_connection_opens_once() -> None:
    network, connection, [server] = memory_session([])
    with pytest.raises(LocalProtocolError) as caught:
        run_blocking(connection.open())
    assert str(caught.value) == "cannot open this connection: it was opened already"
    assert len(network.streams) == 1 and not server.stream.closed
    run_blocking(connection.aclose())


def test_a_query_left_unfinished_and_collected_closes_the_connection() -> None:
    script = [progress("sonar", {"output": "Hel", "final": False})]
    _, connection, [server] = memory_session(script)
    query = connection.query("hi", model="sonar")
    assert run_blocking(query.__anext__()) == TextDelta(text="Hel")
    del query
    gc.collect()
    assert server.stream.closed
    with pytest.raises(LocalProtocolError) as caught:
        run_blocking(connection.query("again", model="sonar").__anext__())
    assert str(caught.value) == "cannot use this session: it is closed"


def test_an_answer_collected_after_its_loop_ended_is_released_quietly(emulator_factory: EmulatorFactory) -> None:
    # Its connection can no longer be closed through the loop (it is closed): collecting it raises
    # nothing.  (Its socket is left to the garbage collector, which warns: a ResourceWarning.)
    url = emulator_factory(chunk_size=8, frame_delay=0.02).url

    async def first_text() -> Any:
        answer = asyncio_backend.ask("hi", server=url, model="sonar", timeout=10)
        assert await answer.__anext__()
        return answer

    raised = reported_when_collected([asyncio.run(first_text())])
    assert [exc for exc in raised if not isinstance(exc, ResourceWarning)] == []


def reported_when_collected(held: list[Any]) -> list[BaseException | None]:
    """What the collector reports (``sys.unraisablehook``) while it frees what ``held`` holds (the
    only reference: the list is emptied here)."""
    unraisable: list[Any] = []
    hook, sys.unraisablehook = sys.unraisablehook, unraisable.append
    try:
        held.clear()
        gc.collect()
    finally:
        sys.unraisablehook = hook
    return [seen.exc_value for seen in unraisable]


SCRIPT = [progress("sonar", {"output": "Hello", "final": False}),
          progress("sonar", {"output": "Hello!", "final": True, "citations": []})]


def test_after_open_without_waiting_the_first_query_takes_the_connect_ack() -> None:
    # The handshake ends while the session idles (its Connected event waits in the client): the
    # first query takes it on its way (connection.connected), then yields only the answer's events.
    network, connection, servers = memory_session(SCRIPT, wait=False)
    network.idle(until=1.0)
    assert connection.connected is None and len(servers) == 1
    events = read_query(connection, "one", "sonar")
    assert connection.connected == Connected(engine_sid="SID1", socket_sid="S9", transport="websocket")
    assert events == [TextDelta(text="Hello"), TextDelta(text="!"),
                      AnswerFinished(model="sonar", text="Hello!", reasoning="", citations=())]
    run_blocking(connection.aclose())


def test_after_open_without_waiting_a_refused_handshake_is_raised_by_the_first_query() -> None:
    network, connection, _ = memory_session([], wait=False, refuse=True)
    network.idle(until=1.0)
    with pytest.raises(ResponseError) as caught:
        run_blocking(connection.query("one", model="sonar").__anext__())
    assert str(caught.value) == "the server refused the Socket.IO connection: not authorized"
    assert connection.connected is None


def test_opening_announces_the_seed_to_the_tracer_at_the_time_it_opens() -> None:
    traced: list[tuple[float, int, str, bytes]] = []
    network = MemoryNetwork(lambda stream: LabsServer(stream, []))
    network.clock = 3.5
    connection = MemoryConnection(network, tracer=lambda *record: traced.append(record))
    run_blocking(connection.open())
    assert traced[0] == (3.5, 0, "seed", b"0")
    run_blocking(connection.aclose())


def test_the_catalog_is_refused_on_labs_before_opening_and_while_busy(
    perplexity_emulator_factory: PerplexityEmulatorFactory,
) -> None:
    labs = sync_backend.connect(server="http://127.0.0.1:9")
    with pytest.raises(LocalProtocolError) as caught:
        labs.catalog()
    assert str(caught.value) == (
        "expected service=\"perplexity\" to ask for the model catalog, got 'labs' "
        "(the Labs models are plabs_proto.labs.answer.MODELS)"
    )
    url = perplexity_emulator_factory(answer="Yes.").url
    not_open = "cannot ask for the catalog: the connection is not open (open it and wait)"
    unopened = sync_backend.connect(server=url, service="perplexity", timeout=10)
    with pytest.raises(LocalProtocolError) as caught:
        unopened.catalog()
    assert str(caught.value) == not_open

    async def main() -> None:
        connection = asyncio_backend.connect(server=url, service="perplexity", timeout=10)
        await connection.open(wait=False)
        with pytest.raises(LocalProtocolError) as caught:
            await connection.catalog()
        assert str(caught.value) == not_open
        await connection.aclose()
        async with asyncio_backend.connect(server=url, service="perplexity", timeout=10) as connection:
            asking = asyncio.ensure_future(connection.catalog())
            await asyncio.sleep(0)  # the catalog is asked for; its answer is awaited
            with pytest.raises(LocalProtocolError, match="another one is still streaming"):
                connection.query("Hi")
            with pytest.raises(LocalProtocolError) as caught:
                await connection.catalog()
            assert str(caught.value) == "cannot ask for the catalog while a query is still streaming on this session"
            assert "turbo" in [model.id for model in await asking]
            query = connection.query("Hi")  # free again
            with pytest.raises(LocalProtocolError) as caught:
                await connection.catalog()
            assert str(caught.value) == "cannot ask for the catalog while a query is still streaming on this session"
            assert "".join([event.text async for event in query if type(event) is TextDelta]) == "Yes."

    asyncio.run(main())


def memory_answer(
    script: list[str], tracer: Tracer | None = None, seed: int | None = None
) -> tuple[MemoryNetwork, AsyncAnswer]:
    network = MemoryNetwork(lambda stream: LabsServer(stream, script))
    config = ClientConfig(server="http://labs.test", transport="websocket", connect_timeout=10.0)
    client = LabsClient(config, rng=random.Random(seed))
    return network, AsyncAnswer(lambda: Driver(client, network), to_messages("hi"), "sonar", tracer, seed)


def test_an_answer_closed_before_or_while_it_is_read_yields_nothing_more() -> None:
    network, answer = memory_answer(SCRIPT)
    run_blocking(answer.aclose())
    with pytest.raises(StopAsyncIteration):
        run_blocking(answer.__anext__())
    assert network.connects == []  # it never connected
    network, answer = memory_answer(SCRIPT)
    assert run_blocking(answer.__anext__()) == "Hello"
    run_blocking(answer.aclose())
    with pytest.raises(StopAsyncIteration):
        run_blocking(answer.__anext__())
    assert network.streams[0].closed


def test_an_answer_never_read_is_collected_quietly() -> None:
    assert reported_when_collected([memory_answer(SCRIPT)[1]]) == []


def test_an_answer_announces_its_seed_to_the_tracer_when_it_connects() -> None:
    traced: list[tuple[float, int, str, bytes]] = []
    network, answer = memory_answer(SCRIPT, tracer=lambda *record: traced.append(record), seed=7)
    network.clock = 2.5
    assert run_blocking(answer.__anext__()) == "Hello"
    assert traced[0] == (2.5, 0, "seed", b"7")
    run_blocking(answer.aclose())


def test_a_query_needs_an_open_connection_and_the_previous_query_finished() -> None:
    unopened = MemoryConnection(MemoryNetwork(lambda stream: LabsServer(stream, SCRIPT)))
    with pytest.raises(LocalProtocolError) as caught:
        unopened.query("one")
    assert str(caught.value) == (
        "cannot query: the connection is not open (open it, or use it as a context manager)"
    )
    _, connection, _ = memory_session(SCRIPT)
    first = connection.query("one", model="sonar")
    with pytest.raises(LocalProtocolError) as caught:
        connection.query("two", model="sonar")
    assert str(caught.value) == (
        "cannot start a query while another one is still streaming on this session: queries run one after another"
    )
    assert run_blocking(first.__anext__()) == TextDelta(text="Hello")
    run_blocking(connection.aclose())


def test_a_query_without_a_model_asks_for_the_services_default(
    perplexity_emulator_factory: PerplexityEmulatorFactory,
) -> None:
    url = perplexity_emulator_factory(answer="Yes.").url
    with sync_backend.connect(server=url, service="perplexity", timeout=10) as connection:
        finished = list(connection.query("Hi"))[-1]
    assert isinstance(finished, AnswerFinished) and (finished.model, finished.text) == ("turbo", "Yes.")


def test_a_session_that_failed_while_idle_refuses_the_next_query_naming_the_failure() -> None:
    network, connection, [server] = memory_session(SCRIPT)
    server.stream.push(b"", at=5.0)  # the server goes away between queries
    network.idle(until=10.0)
    with pytest.raises(LocalProtocolError) as caught:
        run_blocking(connection.query("one", model="sonar").__anext__())
    failure = caught.value.__cause__
    assert failure is not None and str(caught.value) == f"cannot use this session: it failed ({failure})"


def test_a_query_whose_connection_is_closed_meanwhile_raises_with_the_partial_answer() -> None:
    # Closed from elsewhere (another task) while the answer streams: the query raises with what came.
    model = "sonar-reasoning"
    script = [progress(model, {"output": "<think>Weigh</think>\n\nHel", "final": False})]
    _, connection, _ = memory_session(script)
    query = connection.query("one", model=model)
    assert [run_blocking(query.__anext__()) for _ in range(2)] == [ReasoningDelta(text="Weigh"), TextDelta(text="Hel")]
    run_blocking(connection.aclose())
    with pytest.raises(RemoteProtocolError) as caught:
        run_blocking(query.__anext__())
    assert str(caught.value) == "expected the answer to finish, but the session ended: closed by the client"
    assert (caught.value.partial_text, caught.value.partial_reasoning) == ("Hel", "Weigh")
    with pytest.raises(StopAsyncIteration):
        run_blocking(query.__anext__())


def test_a_query_whose_connection_was_collected_says_the_session_is_closed() -> None:
    _, connection, _ = memory_session(SCRIPT[:1])
    query = connection.query("one", model="sonar")
    assert run_blocking(query.__anext__()) == TextDelta(text="Hello")
    del connection  # closed at once, as it is collected
    gc.collect()
    with pytest.raises(LocalProtocolError) as caught:
        run_blocking(query.__anext__())
    assert str(caught.value) == "cannot wait for an answer: the session is closed"


def test_an_answer_stays_ended_after_its_end_or_an_error() -> None:
    _, answer = memory_answer(SCRIPT)
    assert run_blocking(answer.__anext__()) == "Hello"
    assert run_blocking(answer.__anext__()) == "!"
    for _ in range(2):
        with pytest.raises(StopAsyncIteration):
            run_blocking(answer.__anext__())
    network, answer = memory_answer(SCRIPT[:1])
    assert run_blocking(answer.__anext__()) == "Hello"
    network.streams[0].push(b"")  # the server goes away mid-answer
    with pytest.raises(RemoteProtocolError):
        run_blocking(answer.__anext__())
    with pytest.raises(StopAsyncIteration):
        run_blocking(answer.__anext__())


def test_a_connection_collected_open_closes_its_connection() -> None:
    _, connection, [server] = memory_session(SCRIPT)
    del connection
    gc.collect()
    assert server.stream.closed


# -- the asyncio backend ---------------------------------------------------------------------------


def test_asyncio_an_ask_announces_its_seed_to_its_tracer(emulator_factory: EmulatorFactory) -> None:
    url = emulator_factory(chunk_size=64).url
    traced: list[tuple[float, int, str, bytes]] = []

    async def main() -> str:
        answer = asyncio_backend.ask("hi", server=url, model="sonar", timeout=10, seed=5,
                                     tracer=lambda *record: traced.append(record))
        return "".join([text async for text in answer])

    assert asyncio.run(main())
    assert traced[0][1:] == (0, "seed", b"5") and isinstance(traced[0][0], float)


def test_asyncio_connect_takes_the_seed_and_refuses_a_model() -> None:
    assert asyncio_backend.connect(seed=5).seed == 5
    with pytest.raises(LocalProtocolError) as caught:
        asyncio_backend.connect(model="sonar")  # type: ignore[call-arg]
    assert str(caught.value).startswith("expected keyword arguments among accept_encoding, ")
    assert str(caught.value).endswith(", version, got 'model'")


def test_asyncio_provider_goes_through_the_proxy_it_is_given(emulator_factory: EmulatorFactory) -> None:
    url = emulator_factory(chunk_size=64).url
    port = free_port()  # nothing listens there

    async def main() -> None:
        async for _ in asyncio_backend.PerplexityLabs.create_async_generator(
            "sonar", [{"role": "user", "content": "hi"}], proxy=f"http://127.0.0.1:{port}", server=url, timeout=10
        ):
            pass

    with pytest.raises(NetworkError) as caught:
        asyncio.run(main())
    assert f"the proxy at 127.0.0.1:{port}" in str(caught.value)


def test_asyncio_a_server_that_ends_the_connection_mid_answer(
    perplexity_emulator_factory: PerplexityEmulatorFactory,
) -> None:
    # The server closes its side (a FIN, read as end of file) after a few frames: the ask raises
    # with the text that came, at once.
    url = perplexity_emulator_factory(answer="Several words of an answer.", chunk_size=4, drop_after=5).url

    async def main() -> str:
        return "".join([text async for text in asyncio_backend.ask("hi", server=url, service="perplexity", timeout=10)])

    with pytest.raises(RemoteProtocolError) as caught:
        asyncio.run(main())
    assert caught.value.partial_text == "Several words of an answer."[:12]


def test_asyncio_a_connection_reset_by_the_server_is_a_network_error_at_once() -> None:
    # The server reads the handshake's request, then resets the connection (RST, not an end of file):
    # the error names the reset and its errno, long before the timeout.
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def reset() -> None:
        connection, _ = server.accept()
        with connection:
            connection.recv(65536)
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    thread = threading.Thread(target=reset)
    thread.start()

    async def main() -> str:
        return "".join([text async for text in asyncio_backend.ask("hi", server=f"http://127.0.0.1:{port}", timeout=20)])

    try:
        with pytest.raises(NetworkError) as caught:
            asyncio.run(main())
    finally:
        thread.join()
        server.close()
    assert caught.value.errno == errno.ECONNRESET
    assert str(caught.value).startswith(
        f"expected to receive from the server at 127.0.0.1:{port}, but the connection failed (ConnectionResetError: "
    )


def test_asyncio_a_polite_close_ends_when_the_sockets_are_gone(emulator_factory: EmulatorFactory) -> None:
    # It waits for its connections to go (at most a second, for a peer that does not read); the
    # emulator takes the goodbye at once, so the close takes far less.
    url = emulator_factory(chunk_size=64).url

    async def main() -> float:
        connection = asyncio_backend.connect(server=url, timeout=10)
        await connection.open()
        started = time.monotonic()
        await connection.aclose()
        return time.monotonic() - started

    assert asyncio.run(main()) < 0.9  # the bound is 1 s


def asyncio_ask_until_it_fails(url: str, **options: Any) -> tuple[BaseException, float]:
    """The error an asyncio ask raises, and after how many seconds (a hang fails after 10 s)."""

    async def main() -> None:
        async for _ in asyncio_backend.ask("hi", server=url, model="sonar", **options):
            pass

    started = time.monotonic()
    with pytest.raises(Exception) as caught:
        asyncio.run(asyncio.wait_for(main(), 10))
    return caught.value, time.monotonic() - started


def test_asyncio_the_connect_deadline_fires_while_the_server_says_nothing(silent: Silent) -> None:
    error, took = asyncio_ask_until_it_fails(silent.url, timeout=5, connect_timeout=0.3)
    assert isinstance(error, LabsTimeout) and error.deadline == "connect"
    assert 0.3 <= took < 3


def test_asyncio_the_connect_deadline_fires_while_the_tcp_connect_stalls() -> None:
    with stalled_listener() as server:  # the TCP connect itself stalls
        port = server.getsockname()[1]
        error, took = asyncio_ask_until_it_fails(f"http://127.0.0.1:{port}", timeout=5, connect_timeout=0.3)
    assert isinstance(error, LabsTimeout) and error.deadline == "connect"
    assert 0.3 <= took < 3
