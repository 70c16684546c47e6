"""The blocking backend: sessions, leaving early, Ctrl-C and cleanup (real sockets)."""

from __future__ import annotations

import contextlib
import errno
import gc
import select
import signal
import socket
import struct
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import pytest
from conftest import EmulatorFactory, NodeFactory
from plabs_proto.backends import sync as sync_backend
from plabs_proto.backends._seam import run_blocking
from plabs_proto.backends.programs.emulator import default_answer
from servers import stalled_listener

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


# -- the public API's options ------------------------------------------------------------------------


def test_ask_uses_the_model_and_announces_its_seed_to_its_tracer(emulator_factory: EmulatorFactory) -> None:
    url = emulator_factory(chunk_size=64, **FAST).url
    traced: list[tuple[float, int, str, bytes]] = []
    text = "".join(sync_backend.ask("hi", server=url, model="sonar", timeout=10, seed=5,
                                    tracer=lambda *record: traced.append(record)))
    assert text == default_answer("sonar", "hi")
    assert traced[0][1:] == (0, "seed", b"5") and isinstance(traced[0][0], float)


def test_connect_takes_the_seed_and_refuses_a_model() -> None:
    assert sync_backend.connect(seed=5).seed == 5
    assert sync_backend.Connection(sync_backend.connect().client.config, seed=7).seed == 7
    with pytest.raises(LocalProtocolError) as caught:
        sync_backend.connect(model="sonar")  # type: ignore[call-arg]
    assert str(caught.value).startswith("expected keyword arguments among accept_encoding, ")
    assert str(caught.value).endswith(", version, got 'model'")


# -- the network (SelectorNetwork) over real sockets ----------------------------------------------------

BIG = b"x" * (32 << 20)  # more than loopback's socket buffers take from a peer that does not read
RESCUE = 3.0  # seconds after which a test's helper ends a wait that its deadline should have ended


@pytest.fixture
def network() -> Iterator[sync_backend.SelectorNetwork]:
    network = sync_backend.SelectorNetwork()
    yield network
    network.close()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server


def open_stream(network: sync_backend.SelectorNetwork, listener: socket.socket,
                deadline: float | None = None) -> tuple[Any, socket.socket]:
    """A stream of ``network`` to ``listener``, and the server's end of it."""
    stream = run_blocking(network.connect("127.0.0.1", listener.getsockname()[1], deadline))
    assert stream is not None
    peer, _ = listener.accept()
    return stream, peer


def reset(peer: socket.socket) -> None:
    """Close with a RST (SO_LINGER 0), not an end of file."""
    with contextlib.suppress(OSError):
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()


def readable(*streams: Any) -> None:
    """Wait (at most 5 s) until the client's end of every stream has something to read."""
    for stream in streams:
        assert select.select([stream.sock], [], [], 5)[0]


@contextlib.contextmanager
def rescued(action: Callable[[], object]) -> Iterator[None]:
    """Run ``action`` after RESCUE seconds unless the block ended before (a mutant that waits forever
    then fails its test instead of hanging it)."""
    timer = threading.Timer(RESCUE, action)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def test_a_send_stops_at_its_deadline_when_the_peer_does_not_read(
    network: sync_backend.SelectorNetwork, listener: socket.socket
) -> None:
    stream, peer = open_stream(network, listener)
    with peer:
        assert run_blocking(stream.send_all(b"hello", None)) is True  # no deadline: waits as long as it takes
        assert peer.recv(5) == b"hello"
        started = time.monotonic()
        with rescued(lambda: reset(peer)):
            sent = run_blocking(stream.send_all(BIG, network.now() + 0.2))
        assert sent is False  # the deadline came: not an error, the driver names the deadline
        assert 0.2 <= time.monotonic() - started < 1.5
        stream.close()


def test_the_last_send_stops_at_its_deadline_and_swallows_errors(
    network: sync_backend.SelectorNetwork, listener: socket.socket
) -> None:
    stream, peer = open_stream(network, listener)
    started = time.monotonic()
    with rescued(lambda: reset(peer)):
        run_blocking(network.send_last(stream, BIG, network.now() + 0.2))
    assert 0.2 <= time.monotonic() - started < 1.5
    reset(peer)
    readable(stream)  # the RST came: the next send fails
    run_blocking(network.send_last(stream, b"goodbye", network.now() + 1))  # raises nothing
    stream.close()


def test_a_connect_with_no_deadline_and_one_that_stalls_past_its_deadline(
    network: sync_backend.SelectorNetwork, listener: socket.socket
) -> None:
    stream, peer = open_stream(network, listener, None)
    peer.close()
    stream.close()
    with stalled_listener() as server:  # the TCP connect itself stalls
        port = server.getsockname()[1]
        started = time.monotonic()
        with rescued(server.close):  # then the next SYN is refused
            assert run_blocking(network.connect("127.0.0.1", port, network.now() + 0.3)) is None
    assert 0.3 <= time.monotonic() - started < 2


def test_a_receive_waits_until_its_deadline_or_a_wake(
    network: sync_backend.SelectorNetwork, listener: socket.socket
) -> None:
    stream, peer = open_stream(network, listener)
    with peer:
        started = time.monotonic()
        with rescued(network.wake):
            assert run_blocking(network.receive([stream], network.now() + 0.2)) == []
        assert 0.2 <= time.monotonic() - started < 0.9
        network.wake()
        started = time.monotonic()
        assert run_blocking(network.receive([stream], network.now() + 5)) == []
        assert time.monotonic() - started < 0.5
        # A wake and data that came after it: one receive takes the data.
        network.wake()
        peer.sendall(b"data")
        readable(stream)
        assert run_blocking(network.receive([stream], network.now() + 5)) == [(stream, b"data")]
        stream.close()


def test_a_sleep_waits_until_its_deadline_or_a_wake(network: sync_backend.SelectorNetwork) -> None:
    started = time.monotonic()
    with rescued(network.wake):
        run_blocking(network.sleep_until(network.now() + 0.2))
    assert 0.2 <= time.monotonic() - started < 0.9
    # Many wakes never block the waker (the wake socket is not read meanwhile), and one wait drains them all.
    waker = threading.Thread(target=lambda: [network.wake() for _ in range(2000)], daemon=True)
    waker.start()
    waker.join(5)
    assert not waker.is_alive()
    started = time.monotonic()
    run_blocking(network.sleep_until(network.now() + 5))
    assert time.monotonic() - started < 0.5
    started = time.monotonic()
    with rescued(network.wake):
        run_blocking(network.sleep_until(network.now() + 0.1))
    assert 0.1 <= time.monotonic() - started < 0.9
    run_blocking(network.sleep_until(network.now() - 1))  # a deadline passed: at once


def test_a_reset_is_the_streams_error_and_other_streams_are_read_in_the_same_receive(
    network: sync_backend.SelectorNetwork, listener: socket.socket
) -> None:
    first, first_peer = open_stream(network, listener)
    second, second_peer = open_stream(network, listener)
    reset(first_peer)
    readable(first)
    with second_peer:
        second_peer.sendall(b"still here")
        readable(second)
        got = run_blocking(network.receive([first, second], network.now() + 5))
    assert [stream for stream, _ in got] == [first, second]
    error = got[0][1]
    assert isinstance(error, ConnectionResetError) and error.errno == errno.ECONNRESET
    assert got[1][1] == b"still here"
    first.close()
    second.close()


def test_a_stream_at_its_end_is_no_longer_watched_and_closes_quietly(
    network: sync_backend.SelectorNetwork, listener: socket.socket
) -> None:
    first, first_peer = open_stream(network, listener)
    first.close()  # closed while open: no longer watched, so the next stream may take its descriptor
    first_peer.close()
    stream, peer = open_stream(network, listener)
    peer.sendall(b"first")
    readable(stream)
    assert run_blocking(network.receive([stream], network.now() + 5)) == [(stream, b"first")]
    peer.close()  # an end of file
    readable(stream)
    assert run_blocking(network.receive([stream], network.now() + 5)) == [(stream, b"")]
    started = time.monotonic()
    assert run_blocking(network.receive([stream], network.now() + 0.1)) == []  # not at once, again
    assert time.monotonic() - started >= 0.1
    stream.close()
    stream.close()  # closing twice raises nothing
    # The next connection (the kernel gives it the closed one's descriptor) is watched as the first was.
    again, again_peer = open_stream(network, listener)
    with again_peer:
        again_peer.sendall(b"again")
        readable(again)
        assert run_blocking(network.receive([again], network.now() + 5)) == [(again, b"again")]
    again.close()


def test_background_work_runs_in_a_daemon_thread(network: sync_backend.SelectorNetwork) -> None:
    # A session left open does not keep the interpreter from exiting.
    release = threading.Event()
    before = set(threading.enumerate())

    async def work() -> None:
        release.wait(5)

    join = network.start(work())
    [thread] = [t for t in threading.enumerate() if t not in before]
    assert thread.name == "plabs-heartbeats" and thread.daemon
    release.set()
    run_blocking(join())
    assert not thread.is_alive()
