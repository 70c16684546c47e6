"""The asyncio and trio backends: sessions, concurrency, cancellation and cleanup.

Each test runs twice through anyio's pytest plugin, once on asyncio with
``plabs_proto.backends.asyncio`` and once on trio with ``plabs_proto.backends.trio``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

import anyio
import pytest
from conftest import EmulatorFactory, NodeFactory
from plabs_proto.backends import asyncio as asyncio_backend
from plabs_proto.backends import trio as trio_backend
from plabs_proto.backends.programs.emulator import default_answer

from plabs_proto.errors import (
    AnswerRewrittenError,
    LabsError,
    LocalProtocolError,
    RemoteProtocolError,
    ResponseError,
)
from plabs_proto.events import AnswerFinished, Event, TextDelta
from plabs_proto.wire.client import ClientState

pytestmark = pytest.mark.anyio

FAST = {"frame_delay": 0.001}
SLOW = {"frame_delay": 0.02}  # about 1.3 s per default answer: time to break or cancel midway


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def collect(lab: ModuleType, prompt: Any, **options: Any) -> str:
    async with contextlib.aclosing(lab.ask(prompt, **options)) as answer:
        return "".join([text async for text in answer])


def text_of(events: list[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


async def settle(sockets_to: Callable[[int], int], port: int) -> int:
    """Sockets still open to ``port`` after giving a collected generator's cleanup a moment."""
    for _ in range(50):
        gc.collect()
        if sockets_to(port) == 0:
            return 0
        await anyio.sleep(0.01)
    return sockets_to(port)


# -- concurrency -----------------------------------------------------------------------------------------


async def test_a_hundred_concurrent_asks(lab: ModuleType, emulator_factory: EmulatorFactory) -> None:
    url = emulator_factory(**FAST).url
    answers: dict[int, str] = {}

    async def one(index: int) -> None:
        transport = ("upgrade", "websocket", "polling")[index % 3]
        answers[index] = await collect(lab, f"question #{index}", server=url, model="sonar", transport=transport,
                                       timeout=30)

    async with anyio.create_task_group() as group:
        for index in range(100):
            group.start_soon(one, index)
    assert len(answers) == 100
    for index, answer in answers.items():
        assert answer == default_answer("sonar", f"question #{index}")


async def test_concurrent_asks_against_node(lab: ModuleType, node_factory: NodeFactory) -> None:
    url = node_factory(**FAST).url
    answers: dict[int, str] = {}

    async def one(index: int) -> None:
        answers[index] = await collect(lab, f"node #{index}", server=url, model="sonar", timeout=30)

    async with anyio.create_task_group() as group:
        for index in range(20):
            group.start_soon(one, index)
    assert answers == {index: default_answer("sonar", f"node #{index}") for index in range(20)}


# -- sessions --------------------------------------------------------------------------------------------


async def test_second_concurrent_query_is_refused(lab: ModuleType, emulator_factory: EmulatorFactory) -> None:
    url = emulator_factory(**FAST).url
    async with lab.connect(server=url, timeout=10) as session:
        assert session.connected is not None and session.connected.transport == "upgrade"
        first = session.query("first", model="sonar")
        events = [await first.__anext__(), await first.__anext__()]
        with pytest.raises(LocalProtocolError, match="another one is still streaming"):
            session.query("second", model="sonar")
        events += [event async for event in first]  # the first query is not disturbed
        assert text_of(events) == default_answer("sonar", "first")
        assert isinstance(events[-1], AnswerFinished)
        # Once the first is done, the next query runs on the same connection.
        third = [event async for event in session.query("third", model="sonar")]
        assert text_of(third) == default_answer("sonar", "third")
        assert session.client.state is ClientState.READY


async def test_leaving_a_query_early_closes_the_session(
    lab: ModuleType, node_factory: NodeFactory, sockets_to: Callable[[int], int]
) -> None:
    server = node_factory(**SLOW)
    async with lab.connect(server=server.url, timeout=10) as session:
        assert sockets_to(server.port) == 1
        async with contextlib.aclosing(session.query("break", model="sonar")) as events:
            async for event in events:
                if isinstance(event, TextDelta):
                    break
        assert sockets_to(server.port) == 0
        assert session.client.state is ClientState.CLOSED
        with pytest.raises(LocalProtocolError, match="closed"):
            await session.query("again").__anext__()


async def test_a_failed_query_leaves_the_session_usable(lab: ModuleType, node_factory: NodeFactory) -> None:
    url = node_factory(fail="Error in processing query", fail_after=2, **FAST).url
    async with lab.connect(server=url, timeout=10) as session:
        for prompt in ("one", "two"):
            with pytest.raises(ResponseError) as caught:
                async for _ in session.query(prompt, model="sonar"):
                    pass
            assert caught.value.server_text == "Error in processing query"
            assert caught.value.partial_text == default_answer("sonar", prompt)[:16]
            assert session.client.state is ClientState.READY


async def test_session_seed_and_tracer(lab: ModuleType, emulator_factory: EmulatorFactory) -> None:
    url = emulator_factory(**FAST).url
    calls: list[tuple[int, str, bytes]] = []

    def tracer(now: float, stream_id: int, direction: str, data: bytes) -> None:
        calls.append((stream_id, direction, data))

    async with lab.connect(server=url, tracer=tracer, timeout=10) as session:
        assert isinstance(session.seed, int) and session.seed.bit_length() > 64
        assert calls[0] == (0, "seed", str(session.seed).encode())
        assert [e async for e in session.query("traced", model="sonar")]
    assert any(direction == "out" for _, direction, _ in calls[1:])
    assert any(direction == "in" for _, direction, _ in calls[1:])
    async with lab.connect(server=url, timeout=10) as session:
        assert session.seed is None  # no tracer: system randomness


# -- leaving early, cancellation, garbage collection --------------------------------------------------------


async def test_break_closes_the_connection_at_once(
    lab: ModuleType, node_factory: NodeFactory, sockets_to: Callable[[int], int]
) -> None:
    server = node_factory(**SLOW)
    got = ""
    async with contextlib.aclosing(lab.ask("break early", server=server.url, model="sonar", timeout=10)) as answer:
        async for text in answer:
            got += text
            assert sockets_to(server.port) == 1
            break
    assert got and default_answer("sonar", "break early").startswith(got)
    assert sockets_to(server.port) == 0


async def test_cancellation_closes_the_connection(
    lab: ModuleType, node_factory: NodeFactory, sockets_to: Callable[[int], int]
) -> None:
    server = node_factory(**SLOW)
    got: list[str] = []
    with anyio.move_on_after(0.3) as scope:
        async with contextlib.aclosing(lab.ask("cancel me", server=server.url, model="sonar", timeout=10)) as answer:
            async for text in answer:
                got.append(text)
    assert scope.cancelled_caught
    assert got
    assert sockets_to(server.port) == 0


async def test_cancellation_on_polling_leaks_no_exception_group(
    lab: ModuleType, emulator_factory: EmulatorFactory
) -> None:
    # Polling keeps two connections open; the trio backend then reads both in a nursery.
    url = emulator_factory(silent=True, **FAST).url
    with anyio.move_on_after(0.3) as scope:
        await collect(lab, "quiet", server=url, transport="polling", timeout=10)
    assert scope.cancelled_caught


async def test_abandoned_generator_is_cleaned_up_without_warnings(
    lab: ModuleType, node_factory: NodeFactory, sockets_to: Callable[[int], int]
) -> None:
    server = node_factory(**SLOW)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        answer = lab.ask("abandon me", server=server.url, model="sonar", timeout=10)
        first = await answer.__anext__()
        assert first
        assert sockets_to(server.port) == 1
        del answer  # never closed: the event loop's async-generator hooks must finalise it
        assert await settle(sockets_to, server.port) == 0
        gc.collect()
        await anyio.sleep(0.05)
    assert [str(w.message) for w in caught] == []


async def test_options_are_checked_when_ask_is_called(lab: ModuleType) -> None:
    with pytest.raises(LocalProtocolError, match="bogus"):
        lab.ask("hi", bogus=1)
    with pytest.raises(LocalProtocolError, match="transport"):
        lab.ask("hi", transport="carrier-pigeon")
    with pytest.raises(LocalProtocolError, match="timeout"):
        lab.ask("hi", timeout=-1)
    with pytest.raises(LocalProtocolError, match="proxy URL"):
        lab.ask("hi", proxy="ftp://user:pw@host:21")
    with pytest.raises(LocalProtocolError, match="messages"):
        lab.ask(b"bytes are not a prompt")
    with pytest.raises(LocalProtocolError, match="role"):
        lab.ask([{"role": "robot", "content": "beep"}])
    with pytest.raises(LocalProtocolError, match="not open"):
        lab.connect(server="http://127.0.0.1:9").query("x")


async def test_labs_errors_are_not_wrapped(lab: ModuleType, emulator_factory: EmulatorFactory) -> None:
    url = emulator_factory(drop_after=3, **FAST).url
    with pytest.raises(LabsError) as caught:
        await collect(lab, "dropped", server=url, model="sonar", transport="polling", timeout=10)
    assert type(caught.value) is RemoteProtocolError
    assert caught.value.partial_text == default_answer("sonar", "dropped")[:24]


# -- asyncio only ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("anyio_backend", ["asyncio"], indirect=True)
async def test_perplexity_labs_provider(emulator_factory: EmulatorFactory) -> None:
    labs = asyncio_backend.PerplexityLabs
    assert labs.url == "https://labs.perplexity.ai"
    assert labs.working is True
    assert labs.default_model == "r1-1776"
    assert labs.models == ["r1-1776", "sonar-pro", "sonar", "sonar-reasoning", "sonar-reasoning-pro"]
    url = emulator_factory(**FAST).url
    messages = [{"role": "user", "content": "provider"}]
    chunks = [c async for c in labs.create_async_generator("sonar", messages, server=url, stream=True, timeout=10)]
    assert len(chunks) > 1 and all(isinstance(c, str) for c in chunks)
    assert "".join(chunks) == default_answer("sonar", "provider")
    # An empty model means the default one.
    chunks = [c async for c in labs.create_async_generator("", messages, proxy=None, server=url)]
    assert "".join(chunks) == default_answer("r1-1776", "provider")


@pytest.mark.parametrize("anyio_backend", ["asyncio"], indirect=True)
async def test_perplexity_labs_provider_keeps_an_answer_without_reasoning(
    emulator_factory: EmulatorFactory,
) -> None:
    # The default model with an output that never has "</think>": streamed as reasoning,
    # revealed as the answer by the final frame.  The provider yields text only.
    url = emulator_factory(answer="Hello there!", no_reasoning=True, chunk_size=5, **FAST).url
    messages = [{"role": "user", "content": "hi"}]
    chunks = [c async for c in asyncio_backend.PerplexityLabs.create_async_generator("", messages, server=url)]
    assert "".join(chunks) == "Hello there!"


@pytest.mark.parametrize("anyio_backend", ["asyncio"], indirect=True)
async def test_perplexity_labs_provider_raises_on_a_rewritten_answer(emulator_factory: EmulatorFactory) -> None:
    url = emulator_factory(answer="First take.", final_output="Second take.", chunk_size=5, **FAST).url
    messages = [{"role": "user", "content": "hi"}]
    chunks: list[str] = []
    with pytest.raises(AnswerRewrittenError) as caught:
        async for chunk in asyncio_backend.PerplexityLabs.create_async_generator("sonar", messages, server=url):
            chunks.append(chunk)
    assert "".join(chunks) == caught.value.yielded == "First take."
    assert caught.value.text == caught.value.partial_text == "Second take."


@pytest.mark.parametrize("anyio_backend", ["asyncio"], indirect=True)
async def test_asyncio_task_cancel_mid_answer(node_factory: NodeFactory, sockets_to: Callable[[int], int]) -> None:
    server = node_factory(**SLOW)
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in asyncio_backend.ask("task", server=server.url, model="sonar", timeout=10):
            started.set()

    before = asyncio.all_tasks()
    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sockets_to(server.port) == 0
    assert not [t for t in asyncio.all_tasks() - before if not t.done()]  # no connect task left behind


@pytest.mark.parametrize("anyio_backend", ["asyncio"], indirect=True)
async def test_same_seed_same_bytes(emulator_factory: EmulatorFactory) -> None:
    url = emulator_factory(**FAST).url
    seed = random.Random(os.getpid()).getrandbits(64)

    async def first_request(seed: int) -> bytes:
        out: list[bytes] = []

        def tracer(now: float, stream_id: int, direction: str, data: bytes) -> None:
            if direction == "out":
                out.append(data)

        await collect(asyncio_backend, "seeded", server=url, model="sonar", tracer=tracer, seed=seed, timeout=10)
        return out[0]

    one, two, other = await first_request(seed), await first_request(seed), await first_request(seed + 1)
    assert one == two != other
    assert one.startswith(b"GET /socket.io/?EIO=4&transport=polling&t=")


async def test_two_tasks_cannot_read_one_answer(lab: ModuleType, emulator_factory: EmulatorFactory) -> None:
    url = emulator_factory(**SLOW).url
    failures: list[BaseException] = []
    texts: list[str] = []
    async with lab.ask("shared", server=url, model="sonar", timeout=10) as answer:

        async def first() -> None:
            async for text in answer:
                texts.append(text)

        async def second() -> None:
            await anyio.sleep(0.1)  # the first task is waiting for a frame by now
            try:
                await answer.__anext__()
            except LocalProtocolError as exc:
                failures.append(exc)

        async with anyio.create_task_group() as group:
            group.start_soon(first)
            group.start_soon(second)
    assert [str(exc) for exc in failures] == ["cannot read one answer in two tasks at once"]
    assert "".join(texts) == default_answer("sonar", "shared")  # the first reader was not disturbed


@pytest.mark.parametrize("anyio_backend", ["trio"], indirect=True)
async def test_trio_session_nursery_leaks_no_exception_group(
    emulator_factory: EmulatorFactory, sockets_to: Callable[[int], int]
) -> None:
    # The session's own nursery (its idle task) must not wrap what leaves `async with` in an ExceptionGroup.
    import trio

    emulator = emulator_factory(**FAST)
    with pytest.raises(ValueError, match="mine"):
        async with trio_backend.connect(server=emulator.url, timeout=10):
            raise ValueError("mine")
    with pytest.raises(ResponseError, match="not authorized"):  # open() fails inside `async with`
        async with trio_backend.connect(server=emulator.url, jwt="not-the-one", timeout=10):
            pass
    assert await settle(sockets_to, emulator.port) == 0
    with trio.move_on_after(0.3) as scope:
        async with trio_backend.connect(server=emulator.url, timeout=10) as session:
            events = [event async for event in session.query("idle then cancelled", model="sonar")]
            await trio.sleep(5)  # idling (the idle task reads) when the cancellation comes
    assert scope.cancelled_caught
    assert text_of(events) == default_answer("sonar", "idle then cancelled")
    assert await settle(sockets_to, emulator.port) == 0  # closed at once, not left to the collector
