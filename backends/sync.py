"""The blocking backend: :func:`ask` and :func:`connect` on stdlib sockets and :mod:`selectors`.

It runs the one driver (:mod:`._driver`) over :class:`SelectorNetwork`, the network
seam (:mod:`._seam`) on stdlib sockets: connects block until the client's
``get_timer()`` deadline (``time.monotonic()`` clock; host names are resolved with
a blocking ``getaddrinfo``, outside the deadlines), reads wait in one selector
for the first connection that has bytes, or the deadline, where the driver calls
``handle_timer``.  The driver's coroutines never suspend on this network, so
:func:`~._seam.run_blocking` steps them to the end.

Between the queries of a :class:`Session`, a helper thread runs the driver's
``pump_idle`` so the server's pings are answered however long the session idles
(answering them only at the next call would let Engine.IO's ``pingInterval +
pingTimeout``, 45 s on Labs, pass).  The thread touches the client only while the
session idles: a query wakes it and waits for it to end before reading.

Leaving an answer early closes every socket: at once when an error or Ctrl-C
interrupts the wait; after a ``break``, when the generator is dropped (at once
in CPython when nothing else refers to it).  ``contextlib.closing(ask(...))``
closes it at a known point.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from collections.abc import Generator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, cast

from plabs_proto.client import ClientState, LabsClient
from plabs_proto.errors import LocalProtocolError, ResponseError
from plabs_proto.events import Connected, Event

from ._async_api import AsyncAnswer
from ._config import (
    DEFAULT_MODEL,
    AskOptions,
    Messages,
    SessionOptions,
    announce_seed,
    parse_options,
    to_messages,
)
from ._driver import Driver
from ._errors import check_event, opened
from ._link import SessionBase, read_buffer
from ._seam import GRACE, Network, Stream, run_blocking

if TYPE_CHECKING:  # typing.Unpack is Python 3.11+; only type checkers read it here
    from typing import Unpack

__all__ = ["Session", "ask", "connect"]



class _SocketStream(Stream):
    """A non-blocking TCP socket, read through its network's selector."""

    def __init__(self, sock: socket.socket, network: SelectorNetwork) -> None:
        self.sock = sock
        self.network = network

    async def send_all(self, data: bytes, deadline: float | None) -> bool:
        view = memoryview(data)
        while view:
            try:
                sent = self.sock.send(view)
            except (BlockingIOError, InterruptedError):
                if not self.network.wait_writable(self.sock, deadline):
                    return False
                continue
            view = view[sent:]
        return True

    def close(self) -> None:
        self.network.forget(self.sock)
        self.sock.close()


class SelectorNetwork(Network):
    """The seam on stdlib sockets: blocking connects, non-blocking reads through one selector.

    :meth:`wake` (from another thread) ends a :meth:`receive` or :meth:`sleep_until` early.
    """

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self._read_view = read_buffer()
        self._wake_in, self._wake_out = socket.socketpair()
        self._wake_in.setblocking(False)
        self._wake_out.setblocking(False)
        self.selector.register(self._wake_in, selectors.EVENT_READ, None)

    def now(self) -> float:
        return time.monotonic()

    async def connect(self, host: str, port: int, deadline: float | None) -> Stream | None:
        timeout = None if deadline is None else max(deadline - time.monotonic(), GRACE)
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except TimeoutError as exc:
            if exc.errno is None:  # our deadline (socket.timeout), not the kernel's ETIMEDOUT
                return None
            raise
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stream = _SocketStream(sock, self)
        self.selector.register(sock, selectors.EVENT_READ, stream)
        return stream

    def wait_writable(self, sock: socket.socket, deadline: float | None) -> bool:
        """Wait until ``sock`` takes more bytes: False at the deadline."""
        timeout = None if deadline is None else max(deadline - time.monotonic(), GRACE)
        with selectors.DefaultSelector() as selector:
            selector.register(sock, selectors.EVENT_WRITE)
            return bool(selector.select(timeout))

    async def receive(
        self, streams: Sequence[Stream], deadline: float | None
    ) -> list[tuple[Stream, bytes | OSError]]:
        # The selector watches exactly the open streams not at their end (and the wake socket).
        ready = self.selector.select(None if deadline is None else max(0.0, deadline - time.monotonic()))
        got: list[tuple[Stream, bytes | OSError]] = []
        view = self._read_view
        for key, _ in ready:
            stream = key.data
            if stream is None:
                self._drain_wake()
                continue
            try:
                count = stream.sock.recv_into(view)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                got.append((stream, exc))
                continue
            if not count:
                self.forget(stream.sock)
            got.append((stream, bytes(view[:count])))
        return got

    async def sleep_until(self, deadline: float) -> None:
        if self.selector.select(max(0.0, deadline - time.monotonic())):
            self._drain_wake()

    async def send_last(self, stream: Stream, data: bytes, deadline: float) -> None:
        with contextlib.suppress(OSError):
            await stream.send_all(data, deadline)

    def forget(self, sock: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(sock)

    def wake(self) -> None:
        """End the current wait early (from any thread)."""
        with contextlib.suppress(OSError):
            self._wake_out.send(b"x")

    def _drain_wake(self) -> None:
        with contextlib.suppress(OSError):
            while self._wake_in.recv(64):
                pass

    def close(self) -> None:
        self.selector.close()
        self._wake_in.close()
        self._wake_out.close()


class _Link(Driver):
    """The one driver over blocking sockets, stepped synchronously (see :func:`run_blocking`),
    with the helper thread that idles between queries."""

    network: SelectorNetwork

    def __init__(self, client: LabsClient) -> None:
        super().__init__(client, SelectorNetwork())
        self._idler: threading.Thread | None = None
        self._idle_stop = False

    def next_event_now(self) -> Event:
        """The next event; the kept error once the events before it are taken."""
        events = self.events
        if events:
            return events.popleft()
        return run_blocking(self.next_event())

    def start_idling(self) -> None:
        """Answer the server's pings in a helper thread until :meth:`stop_idling` (between queries)."""
        if self._idler is None and not self.finished:
            self._idle_stop = False
            self._idler = threading.Thread(target=self._idle, name="plabs-heartbeats", daemon=True)
            self._idler.start()

    def _idle(self) -> None:
        run_blocking(self.pump_idle(lambda: self._idle_stop))

    def stop_idling(self) -> None:
        """Stop the helper thread (waking its wait; a write it makes is finished first)."""
        idler = self._idler
        if idler is not None:
            self._idle_stop = True
            self.network.wake()
            if idler is not threading.current_thread():  # a collector's __del__ may run in the idler itself
                idler.join()
            self._idler = None

    async def aclose(self) -> None:
        """Close politely if still healthy (writes bounded in time), then close every socket."""
        self.stop_idling()
        await super().aclose()
        self.network.close()

    def close(self) -> None:
        """:meth:`aclose`, synchronously."""
        run_blocking(self.aclose())


# -- the public API --------------------------------------------------------------------------------


def ask(prompt_or_messages: Messages, **options: Unpack[AskOptions]) -> Generator[str, None, None]:
    """Ask Labs once and stream the answer text (a generator of str deltas).

    Same options, errors and tracing as :func:`plabs_proto.backends.asyncio.ask`, and the
    same promise: the texts join to the final answer, else AnswerRewrittenError.
    """
    messages = to_messages(prompt_or_messages)
    opts = parse_options(options, with_model=True)
    client, used_seed = opts.new_client()
    return _answer(AsyncAnswer(lambda: _Link(client), messages, opts.model, opts.tracer, used_seed))


def _answer(answer: AsyncAnswer) -> Generator[str, None, None]:
    """The shared async answer, stepped synchronously: its driver never suspends (see :func:`run_blocking`)."""
    try:
        while True:
            try:
                text = run_blocking(answer.__anext__())
            except StopAsyncIteration:
                return
            yield text
    finally:
        run_blocking(answer.aclose())


class Session(SessionBase[LabsClient]):
    """One Labs connection for several queries, run one after another.

    Use ``with connect(...) as session``; :meth:`query` streams the typed events
    of one answer, ending with ``AnswerFinished``.  Leaving a ``query`` generator
    before its answer finished closes the session.  Between queries a helper
    thread answers the server's pings (see the module docstring).
    """

    _link: _Link | None

    def open(self, *, wait: bool = True) -> None:
        """Connect and wait for the Socket.IO connect ack (``with`` calls this).

        ``open(wait=False)`` only starts the handshake (in the helper thread) and
        returns at once: a :meth:`query` may follow before the server acked the
        connection, and its query then goes out as soon as the client may send
        it (as ``ask`` sends it): in the very step that reads the ack, not after
        a turn of the caller's code.  Iterating that query takes the ack (setting :attr:`connected`) and raises
        what ``open()`` would have raised when the server refuses the handshake.
        """
        if self._link is not None:
            raise LocalProtocolError("cannot open this session: it was opened already")
        link = self._link = _Link(self._client)
        try:
            announce_seed(self._tracer, self.seed, time.monotonic())
            link.command(self._client.connect)
            if not wait:
                link.start_idling()
                return
            event = link.next_event_now()
            while not opened(event):
                event = link.next_event_now()
            self.connected = cast(Connected, event)
            link.start_idling()
        except BaseException:
            link.close()
            raise

    def query(self, messages: Messages, *, model: str = DEFAULT_MODEL) -> Generator[Event, None, None]:
        """Ask and stream the answer's events (``TextDelta``, ``ReasoningDelta``, ``Citations``,
        ``AnswerRevised``, then ``AnswerFinished``); the query is sent on the first ``next()``.
        After ``open(wait=False)`` the first query takes the connect ack on its way (see :meth:`open`).

        A server-reported failure raises :class:`~plabs_proto.errors.ResponseError`
        (the session stays usable); any other error, or leaving before
        ``AnswerFinished``, closes the session.  Raises
        :class:`~plabs_proto.errors.LocalProtocolError` at once when the session is
        not open or another query on it is still streaming.
        """
        link = self._link
        if link is None:
            raise LocalProtocolError("cannot query: the session is not open (use `with connect(...)`)")
        self._check_idle()
        return self._query(link, to_messages(messages), model)

    def _query(self, link: _Link, messages: Messages, model: str) -> Generator[Event, None, None]:
        self._check_idle()  # again: two queries may have been made before either started
        self._busy = True
        done = False
        client = self._client
        try:
            link.stop_idling()
            if self.connected is not None:
                link.events.clear()
            elif link.error is not None:  # open(wait=False): the handshake failed already
                raise link.error
            link.command(client.query, messages, model=model)
            while True:
                event = link.next_event_now()
                if type(event) is Connected:  # the ack, after open(wait=False)
                    self.connected = event
                    continue
                try:
                    done = check_event(
                        event, partial_text=client.partial_text, partial_reasoning=client.partial_reasoning
                    )
                except ResponseError:
                    done = not link.finished and client.state is ClientState.READY  # the session goes on
                    raise
                yield event
                if done:
                    return
        except LocalProtocolError:
            done = True  # a misuse (or a session already over) closes nothing
            raise
        finally:
            self._busy = False
            if done:
                link.start_idling()  # the session goes on (a closed one starts nothing)
            else:
                link.close()

    def close(self) -> None:
        """Close the session (politely when it is healthy); idempotent."""
        if self._link is not None:
            self._link.close()

    def __enter__(self) -> Session:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if self._link is not None:
            with contextlib.suppress(Exception):
                self._link.close()


def connect(**options: Unpack[SessionOptions]) -> Session:
    """A :class:`Session` (not open yet: use ``with``).  Options as for :func:`ask`; ``timeout``
    bounds each query."""
    opts = parse_options(options, with_model=False)
    return Session(opts.config, tracer=opts.tracer, seed=opts.seed)
