"""The blocking backend: :func:`ask` and :func:`connect` on stdlib sockets and :mod:`selectors`.

It runs the one driver (:mod:`._driver`) over :class:`SelectorNetwork`, the network seam
(:mod:`._seam`) on blocking sockets (``time.monotonic()`` clock; host names resolved by a
blocking ``getaddrinfo``, outside the deadlines).  The driver never suspends on it, so
:func:`~._seam.run_blocking` steps the answer, query and session the async backends share
(:mod:`._async_api`) synchronously.

Between a session's queries a helper thread answers the server's pings (answering them
only at the next call would let ``pingInterval + pingTimeout``, 45 s on Labs, pass); it
touches the client only while the session idles.

Leaving an answer early closes every socket: at once on an error or Ctrl-C; after a
``break``, when the generator is dropped (at once in CPython).
``contextlib.closing(ask(...))`` closes it at a known point.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from plabs_proto.config import ClientConfig
from plabs_proto.events import Connected, Event
from plabs_proto.perplexity.request import Model
from plabs_proto.wire.client import Client, Tracer

from ._async_api import AsyncAnswer, AsyncConnection, OneReader
from ._config import (
    AskOptions,
    Messages,
    SessionOptions,
    parse_options,
    to_messages,
)
from ._driver import Driver
from ._seam import GRACE, Network, Stream, read_buffer, run_blocking

if TYPE_CHECKING:  # typing.Unpack is Python 3.11+; only type checkers read it here
    from typing import Unpack

__all__ = ["Connection", "Session", "ask", "connect"]

T = TypeVar("T")


class _SocketStream(Stream):
    """A non-blocking TCP socket, read through its network's selector."""

    def __init__(self, sock: socket.socket, network: SelectorNetwork) -> None:
        self.sock = sock
        self.network = network

    async def send_all(self, data: bytes, deadline: float | None) -> bool:
        self.sock.settimeout(None if deadline is None else max(deadline - time.monotonic(), GRACE))
        try:
            self.sock.sendall(data)
        except TimeoutError as exc:
            if exc.errno is not None:  # the kernel's ETIMEDOUT, not our deadline
                raise
            return False
        finally:
            self.sock.setblocking(False)  # reads go through the selector
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
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stream = _SocketStream(sock, self)
        self.selector.register(sock, selectors.EVENT_READ, stream)
        return stream

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

    def start(self, work: Coroutine[Any, Any, None]) -> Callable[[], Awaitable[object]]:
        thread = threading.Thread(target=run_blocking, args=(work,), name="plabs-heartbeats", daemon=True)
        thread.start()

        async def join() -> None:
            if thread is not threading.current_thread():  # a collector's __del__ may run in the thread itself
                thread.join()

        return join

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


class _BlockingDriver(Driver):
    """The one driver over blocking sockets, stepped synchronously (see :func:`run_blocking`)."""

    network: SelectorNetwork

    def __init__(self, client: Client) -> None:
        super().__init__(client, SelectorNetwork())

    def close(self) -> None:
        """:meth:`aclose`, synchronously: the helper thread is stopped before the sockets close."""
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
    return _stepped(AsyncAnswer(lambda: _BlockingDriver(client), messages, opts.model, opts.tracer, used_seed))


def _stepped(reader: OneReader[T]) -> Generator[T, None, None]:
    """A shared answer or query, stepped synchronously (see :func:`run_blocking`); leaving the
    generator closes it.  It steps ``next_item``, not ``__anext__``: a generator cannot be read
    twice at once anyway, and one coroutine less per item is CPU per frame."""
    try:
        while not reader.done:
            try:
                yield run_blocking(reader.next_item())
            except StopAsyncIteration:
                return
    finally:
        run_blocking(reader.aclose())


class _AsyncConnection(AsyncConnection[Client]):
    """The shared session over the blocking driver, whose helper thread idles between queries."""

    def _new_driver(self) -> _BlockingDriver:
        return _BlockingDriver(self._client)


class Connection:
    """One Labs connection for several queries, run one after another: ``with connect(...) as session``.

    The async backends' session (:class:`~._async_api.AsyncConnection`), stepped synchronously;
    between queries a helper thread answers the server's pings (see the module docstring).
    """

    def __init__(self, config: ClientConfig, *, tracer: Tracer | None = None, seed: int | None = None) -> None:
        self._connection = _AsyncConnection(config, tracer=tracer, seed=seed)

    @property
    def client(self) -> Client:
        """The sans-IO client underneath (its state, partial text, transport)."""
        return self._connection.client

    @property
    def seed(self) -> int | None:
        """The seed of the client's randomness (None: system randomness)."""
        return self._connection.seed

    @property
    def connected(self) -> Connected | None:
        """The ``Connected`` event, once the session is open."""
        return self._connection.connected

    def open(self, *, wait: bool = True) -> None:
        """Connect and wait for the Socket.IO connect ack (``with`` calls this); ``open(wait=False)``
        starts the handshake in the helper thread and returns (see :meth:`~._async_api.AsyncConnection.open`)."""
        run_blocking(self._connection.open(wait=wait))

    def query(
        self, messages: Messages, *, model: str | None = None, mode: str | None = None
    ) -> Generator[Event, None, None]:
        """Ask and stream the answer's events, as :class:`~._async_api.AsyncQuery` does (a
        ResponseError leaves the session usable; any other error, or leaving the generator before
        ``AnswerFinished``, closes it).  Raises :class:`~plabs_proto.errors.LocalProtocolError` at
        once when the session is not open or another query on it is still streaming.  ``mode`` as
        for :meth:`~._async_api.AsyncConnection.query`."""
        return _stepped(self._connection.query(messages, model=model, mode=mode))

    def catalog(self) -> tuple[Model, ...]:
        """The service's own models, asked on this open session (``service="perplexity"`` only; see
        :meth:`~._async_api.AsyncConnection.catalog`)."""
        return run_blocking(self._connection.catalog())

    def close(self) -> None:
        """Close the session (politely when it is healthy); idempotent."""
        run_blocking(self._connection.aclose())

    def __enter__(self) -> Connection:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def connect(**options: Unpack[SessionOptions]) -> Connection:
    """A :class:`Connection` (not open yet: use ``with``).  Options as for :func:`ask`; ``timeout``
    bounds each query."""
    opts = parse_options(options, with_model=False)
    return Connection(opts.config, tracer=opts.tracer, seed=opts.seed)


#: The name of :class:`Connection` before 0.2 (see the README's changelog).
Session = Connection
