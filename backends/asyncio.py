"""The asyncio backend: :func:`ask`, :func:`connect` and the gpt4free-style :class:`PerplexityLabs`.

It runs the one driver (:mod:`._driver`) over :class:`AsyncioNetwork`, the network seam
(:mod:`._seam`) on asyncio, in the consumer's own task.  Each TCP connection is an
:class:`asyncio.BufferedProtocol` whose callbacks only keep what arrives (and wake the
driver); past :data:`HIGH_WATER` bytes waiting, reading pauses until the driver takes them,
so a consumer that reads slowly holds bounded memory.  Between a session's queries a task
of its own answers the server's pings.

Leaving an answer early (``break``, an exception, cancellation) closes the connection:
at once on an exception or cancellation, after a ``break`` when the iterator is collected
(at once in CPython).  To close at a known point, use it as an async context manager::

    async with ask("Hello", model="sonar") as answer:
        async for text in answer:
            if "stop" in text:
                break
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, cast

from plabs_proto.wire.client import Client

from ._async_api import AsyncAnswer, AsyncConnection
from ._config import DEFAULT_MODEL, MODELS, AskOptions, Messages, SessionOptions, parse_options, to_messages
from ._driver import Driver
from ._seam import GRACE, READ_SIZE, Network, Stream, read_buffer

if TYPE_CHECKING:  # typing.Unpack is Python 3.11+; only type checkers read it here
    from typing import Unpack

__all__ = ["HIGH_WATER", "AsyncioNetwork", "Connection", "PerplexityLabs", "Session", "ask", "connect"]

#: Bytes a connection may have waiting for the driver before its reading is paused.
HIGH_WATER = 4 * READ_SIZE
_CLOSE_WAIT = 1.0  # seconds aclose() lets the sockets write out and close before they are aborted
_idlers: set[asyncio.Task[None]] = set()  # the idle tasks running (asyncio keeps only weak references)


class _StreamProtocol(asyncio.BufferedProtocol, Stream):
    """One TCP connection: its protocol callbacks keep what arrives for :meth:`AsyncioNetwork.receive`.

    The loop reads into the thread's shared read buffer (:func:`~._seam.read_buffer`), and
    ``buffer_updated`` copies out what arrived before any other read can happen (a proactor
    loop keeps reads pending across callbacks: there each connection has a buffer of its own).
    """

    def __init__(self, network: AsyncioNetwork) -> None:
        self.network = network
        proactor = "Proactor" in type(network.loop).__name__
        self._view = memoryview(bytearray(READ_SIZE)) if proactor else read_buffer()
        self.transport: asyncio.Transport | None = None
        self.chunks: list[bytes] = []  # bytes not taken yet
        self.waiting = 0  # their length
        self.end: bytes | OSError | None = None  # b"" at EOF, or the error the connection met
        #: Done once the connection is lost; made only when :meth:`AsyncioNetwork.closed` waits for it.
        self.lost: asyncio.Future[None] | None = None

    # -- the protocol's side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # asyncio turns TCP_NODELAY on itself
        self.network.open.append(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self.chunks.append(bytes(self._view[:nbytes]))
        self.waiting += nbytes
        if self.waiting > HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
        self.network.wake()

    def eof_received(self) -> bool:
        self.end = b""
        self.network.wake()
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.network.open:
            self.network.open.remove(self)
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(None)
        if self.end is None:
            self.end = b"" if exc is None else exc if isinstance(exc, OSError) else OSError(str(exc))
            self.network.wake()

    # -- the driver's side

    def lost_future(self) -> asyncio.Future[None]:
        """:attr:`lost`, made now if it was not (a connection still open: its loss sets it)."""
        if self.lost is None:
            self.lost = self.network.loop.create_future()
        return self.lost

    def take(self, got: list[tuple[Stream, bytes | OSError]]) -> None:
        """Append what came (each read as it came: joining them would copy them once more), then the end."""
        if self.chunks:
            got.extend([(self, chunk) for chunk in self.chunks])
            self.chunks = []
            if self.waiting > HIGH_WATER and self.transport is not None:
                self.transport.resume_reading()
            self.waiting = 0
        if self.end is not None:
            got.append((self, self.end))

    async def send_all(self, data: bytes, deadline: float | None) -> bool:
        # The transport buffers what the socket does not take at once (as the loop's streams do).
        if self.transport is not None:
            self.transport.write(data)
        return True

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class AsyncioNetwork(Network):
    """The seam on asyncio: ``create_connection`` with :class:`_StreamProtocol` protocols, one waiter."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.open: list[_StreamProtocol] = []  # every connection not lost yet (a set costs 216 bytes even empty)
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None  # one timer, moved only when the deadline moves
        self._timer_at: float | None = None

    def now(self) -> float:
        return self.loop.time()

    async def connect(self, host: str, port: int, deadline: float | None) -> Stream | None:
        timeout = None if deadline is None else max(deadline - self.loop.time(), GRACE)
        try:
            _, connection = await asyncio.wait_for(
                self.loop.create_connection(lambda: _StreamProtocol(self), host, port), timeout
            )
        except TimeoutError as exc:
            if exc.errno is None:  # our deadline, not the kernel's ETIMEDOUT
                return None
            raise
        return connection

    async def receive(
        self, streams: Sequence[Stream], deadline: float | None
    ) -> list[tuple[Stream, bytes | OSError]]:
        got: list[tuple[Stream, bytes | OSError]] = []
        for stream in streams:
            cast(_StreamProtocol, stream).take(got)
        if got:
            return got
        try:
            await self._arm(deadline)  # the wait itself, not a coroutine of sleep_until's awaiting it
        finally:
            self._waiter = None
        for stream in streams:
            cast(_StreamProtocol, stream).take(got)
        return got

    async def sleep_until(self, deadline: float | None) -> None:
        try:
            await self._arm(deadline)
        finally:
            self._waiter = None

    def _arm(self, deadline: float | None) -> asyncio.Future[None]:
        """The future a wait awaits (set by :meth:`wake`), with the timer moved to ``deadline``."""
        if deadline != self._timer_at:
            self._disarm()
            self._timer_at = deadline
            self._timer = None if deadline is None else self.loop.call_at(deadline, self._ring)
        waiter = self._waiter = self.loop.create_future()
        return waiter

    def _ring(self) -> None:
        self._timer = self._timer_at = None
        self.wake()

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._timer_at = None

    def close(self) -> None:
        self._disarm()
        self.wake()  # an idle task ends
        for connection in list(self.open):  # closing but not gone: a peer that does not read keeps it
            if connection.transport is not None:
                connection.transport.abort()

    async def send_last(self, stream: Stream, data: bytes, deadline: float) -> None:
        await stream.send_all(data, deadline)  # the transport's close() writes it out before closing

    def start(self, work: Coroutine[Any, Any, None]) -> Callable[[], Awaitable[object]]:
        task = self.loop.create_task(work)
        _idlers.add(task)
        task.add_done_callback(_idlers.discard)
        return lambda: asyncio.wait([task])

    async def closed(self) -> None:
        """Wait at most :data:`_CLOSE_WAIT` s for every connection to go (:meth:`close` aborts the rest)."""
        if self.open:
            await asyncio.wait([c.lost_future() for c in self.open], timeout=_CLOSE_WAIT)


# -- the public API --------------------------------------------------------------------------------


def ask(prompt_or_messages: Messages, **options: Unpack[AskOptions]) -> AsyncAnswer:
    """Ask Labs once and stream the answer text as it grows: ``async for text in ask(...)``.

    ``prompt_or_messages`` is a prompt (one user message) or a list of ``{"role", "content"}``
    messages.  The options are :class:`~._config.AskOptions`: ``timeout`` bounds the whole call,
    connecting included (``None``: no overall deadline), ``proxy`` is ``http://[user:pass@]host:port``
    or ``socks5://...``, the rest are :class:`~plabs_proto.wire.client.ClientConfig` fields.  They are
    checked at once (``LocalProtocolError``).

    Only the answer text is yielded (use :func:`connect` for reasoning and the typed events),
    and the texts join to the server's final answer, ``AnswerFinished.text``.  Should the
    server rewrite text already yielded, the answer is read to its end and
    :class:`~plabs_proto.errors.AnswerRewrittenError` raised, with the final answer in ``text``
    (a revision of the reasoning alone is no rewrite).  A server-reported failure raises
    :class:`~plabs_proto.errors.ResponseError`; protocol errors, timeouts and socket failures
    (:class:`~plabs_proto.errors.NetworkError`, caused by the ``OSError``) carry ``partial_text``.

    ``tracer`` sees every byte above TLS; the client's randomness then comes from
    ``random.Random(seed)`` (a fresh seed when ``seed`` is None, announced as
    ``tracer(now, 0, "seed", b"<seed>")``) so the trace can be replayed.
    """
    messages = to_messages(prompt_or_messages)
    opts = parse_options(options, with_model=True)
    client, used_seed = opts.new_client()
    return AsyncAnswer(lambda: Driver(client, AsyncioNetwork()), messages, opts.model, opts.tracer, used_seed)


class Connection(AsyncConnection[Client]):
    """One Labs connection for several queries, run one after another.

    ``async with connect(...) as session:`` then ``async for event in
    session.query(...)``.  Between queries the connection stays up: heartbeats are
    answered in the background.  Leaving a query before ``AnswerFinished`` closes
    the session.
    """

    def _new_driver(self) -> Driver:
        return Driver(self._client, AsyncioNetwork())


def connect(**options: Unpack[SessionOptions]) -> Connection:
    """A :class:`Connection` (not open yet: use ``async with``).  Options as for :func:`ask`;
    ``timeout`` bounds each query."""
    opts = parse_options(options, with_model=False)
    return Connection(opts.config, tracer=opts.tracer, seed=opts.seed)


# The options of ask that pass through a provider call's kwargs (model and proxy come as arguments).
_ASK_OPTIONS = AskOptions.__optional_keys__ - {"model", "proxy"}


class PerplexityLabs:
    """The gpt4free-style provider interface of the original code, on this backend."""

    url = "https://labs.perplexity.ai"
    working = True
    default_model = DEFAULT_MODEL
    models = list(MODELS)

    @classmethod
    async def create_async_generator(
        cls, model: str, messages: Messages, proxy: str | None = None, **kwargs: Any
    ) -> AsyncGenerator[str, None]:
        """Yield the answer text in pieces, as :func:`ask` does (an empty ``model``: :attr:`default_model`).

        The options of :func:`ask` (``server``, ``timeout``...) pass through ``kwargs``; the
        others gpt4free hands every provider (``stream``, ``temperature``...) are ignored, as
        the original provider did.
        """
        options = {name: value for name, value in kwargs.items() if name in _ASK_OPTIONS}
        async with ask(messages, model=model or cls.default_model, proxy=proxy, **options) as answer:
            async for text in answer:
                yield text


#: The name of :class:`Connection` before 0.2 (see the README's changelog).
Session = Connection
