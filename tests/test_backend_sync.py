"""The blocking backend: sessions, leaving early, Ctrl-C and cleanup (real sockets)."""

from __future__ import annotations

import contextlib
import gc
import signal
import time
import warnings
from collections.abc import Callable, Iterator
from types import FrameType

import pytest
from conftest import EmulatorFactory, NodeFactory
from plabs_proto.backends import sync as sync_backend
from plabs_proto.backends.programs.emulator import default_answer

from plabs_proto.errors import LocalProtocolError, ResponseError
from plabs_proto.events import AnswerFinished, TextDelta
from plabs_proto.wire.client import ClientState

FAST = {"frame_delay": 0.001}
SLOW = {"frame_delay": 0.02}


def test_break_closes_the_connection_at_once(node_factory: NodeFactory, sockets_to: Callable[[int], int]) -> None:
    server = node_factory(**SLOW)
    got = ""
    for text in sync_backend.ask("break", server=server.url, model="sonar", timeout=10):
        got = text
        assert sockets_to(server.port) == 1
        break
    # Nothing else refers to the generator: CPython closes it as the loop ends.
    assert got and default_answer("sonar", "break").startswith(got)
    assert sockets_to(server.port) == 0


def test_an_exception_in_the_consumer_closes_with_closing(
    node_factory: NodeFactory, sockets_to: Callable[[int], int]
) -> None:
    server = node_factory(**SLOW)
    with pytest.raises(ZeroDivisionError), contextlib.closing(
        sync_backend.ask("boom", server=server.url, model="sonar", timeout=10)
    ) as answer:
        for _ in answer:
            1 / 0  # noqa: B018
    assert sockets_to(server.port) == 0


@contextlib.contextmanager
def interrupt_after(seconds: float) -> Iterator[None]:
    """Raise KeyboardInterrupt in the main thread after ``seconds``, like Ctrl-C."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_ctrl_c_while_waiting_closes_everything(node_factory: NodeFactory, sockets_to: Callable[[int], int]) -> None:
    server = node_factory(silent=True, **FAST)
    started = time.monotonic()
    answer = sync_backend.ask("silence", server=server.url, timeout=10)
    with pytest.raises(KeyboardInterrupt), interrupt_after(0.3):
        for _ in answer:
            pass
    assert time.monotonic() - started < 2
    # The interrupt went through the generator's frame: its sockets are closed already.
    assert sockets_to(server.port) == 0
    assert list(answer) == []


def test_abandoned_generator_is_cleaned_up_without_warnings(
    node_factory: NodeFactory, sockets_to: Callable[[int], int]
) -> None:
    server = node_factory(**SLOW)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        answer = sync_backend.ask("abandon", server=server.url, model="sonar", timeout=10)
        assert next(answer)
        assert sockets_to(server.port) == 1
        del answer
        gc.collect()
        assert sockets_to(server.port) == 0
    assert [str(w.message) for w in caught] == []


def test_session_refuses_a_second_concurrent_query(emulator_factory: EmulatorFactory) -> None:
    url = emulator_factory(**FAST).url
    with sync_backend.connect(server=url, timeout=10) as session:
        assert session.connected is not None
        first = session.query("first", model="sonar")
        events = [next(first), next(first)]
        with pytest.raises(LocalProtocolError, match="another one is still streaming"):
            session.query("second", model="sonar")
        events += list(first)
        assert "".join(e.text for e in events if isinstance(e, TextDelta)) == default_answer("sonar", "first")
        assert isinstance(events[-1], AnswerFinished)
        # A query made but not started yet counts (as on the async backends): the next is refused at once.
        third = session.query("third", model="sonar")
        with pytest.raises(LocalProtocolError, match="another one is still streaming"):
            session.query("fourth", model="sonar")
        assert isinstance(list(third)[-1], AnswerFinished)
        session.query("unread", model="sonar")  # made and dropped unread: the session is free again
        assert isinstance(list(session.query("fifth", model="sonar"))[-1], AnswerFinished)
        assert session.client.state is ClientState.READY


def test_leaving_a_query_early_closes_the_session(
    node_factory: NodeFactory, sockets_to: Callable[[int], int]
) -> None:
    server = node_factory(**SLOW)
    with sync_backend.connect(server=server.url, timeout=10) as session:
        for event in session.query("leave", model="sonar"):
            if isinstance(event, TextDelta):
                break
        assert sockets_to(server.port) == 0
        assert session.client.state is ClientState.CLOSED
        with pytest.raises(LocalProtocolError, match="closed"):
            next(session.query("again"))
    assert sockets_to(server.port) == 0


def test_a_failed_query_leaves_the_session_usable(emulator_factory: EmulatorFactory) -> None:
    url = emulator_factory(fail="Error in processing query", fail_after=1, **FAST).url
    with sync_backend.connect(server=url, transport="polling", timeout=10) as session:
        for prompt in ("one", "two"):
            with pytest.raises(ResponseError) as caught:
                list(session.query(prompt, model="sonar"))
            assert caught.value.server_text == "Error in processing query"
            assert caught.value.partial_text == default_answer("sonar", prompt)[:8]
            assert session.client.state is ClientState.READY


def test_session_closes_its_sockets(node_factory: NodeFactory, sockets_to: Callable[[int], int]) -> None:
    server = node_factory(**FAST)
    with sync_backend.connect(server=server.url, transport="polling", timeout=10) as session:
        assert [e for e in session.query("p", model="sonar") if isinstance(e, AnswerFinished)]
        assert sockets_to(server.port) >= 1
    assert sockets_to(server.port) == 0
    assert session.client.state is ClientState.CLOSED


def test_options_are_checked_when_ask_is_called() -> None:
    with pytest.raises(LocalProtocolError, match="bogus"):
        sync_backend.ask("hi", bogus=1)
    with pytest.raises(LocalProtocolError, match="not open"):
        sync_backend.connect(server="http://127.0.0.1:9").query("x")


def test_a_session_closed_from_its_own_heartbeat_thread_closes(
    emulator_factory: EmulatorFactory, sockets_to: Callable[[int], int]
) -> None:
    # Code that runs in the heartbeat thread (a tracer here; a collector's __del__ in real life) may
    # close the session: the thread cannot wait for itself, so it stops itself and the session closes.
    import threading

    server = emulator_factory(ping_interval=0.1, ping_timeout=0.2, **FAST)
    closed_in: list[str] = []
    session: sync_backend.Session | None = None

    def tracer(now: float, stream_id: int, direction: str, data: bytes) -> None:
        thread = threading.current_thread()
        if session is not None and direction == "in" and thread.name == "plabs-heartbeats" and not closed_in:
            try:
                session.close()
            except Exception as exc:  # e.g. "cannot join current thread"
                closed_in.append(repr(exc))
            else:
                closed_in.append("closed")

    session = sync_backend.connect(server=server.url, timeout=10, tracer=tracer)
    session.open()
    deadline = time.monotonic() + 5
    while not closed_in and time.monotonic() < deadline:
        time.sleep(0.02)
    assert closed_in == ["closed"]
    for _ in range(100):
        if sockets_to(server.port) == 0:
            break
        time.sleep(0.02)
    assert sockets_to(server.port) == 0
    with pytest.raises(LocalProtocolError, match="it is closed"):  # closed, not failed
        list(session.query("after the close", model="sonar"))
    session.close()
