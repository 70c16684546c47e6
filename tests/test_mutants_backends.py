"""Tests written for the survivors of mutation testing of the backends (issue 19).

The driver, the network seam, the shared answer/query/connection, the asyncio, trio, blocking
and curl backends, and the emulators' protocol (benchmarks/mutation-backends.md says which
mutant each test was written for).  They run the client in this process: the servers are
threads of it (the emulators), in memory (``tests/memory_network.py``) or Node.js.
"""

from __future__ import annotations

import asyncio
import random
import threading

import pytest
from memory_network import MemoryNetwork, MemoryStream
from plabs_proto.backends._driver import IDLE_WAIT, Driver
from plabs_proto.backends._seam import READ_SIZE, read_buffer, run_blocking
from test_perplexity_client import ANSWER, WARMUP_RESPONSE, sse_body, sse_response

from plabs_proto.config import ClientConfig
from plabs_proto.events import AnswerFinished, Connected, Event, TextDelta
from plabs_proto.wire.client import PerplexityClient

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
