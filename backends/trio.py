"""The trio backend: :func:`ask` and :func:`connect`.

It runs the one driver (:mod:`._driver`) over :class:`TrioNetwork`, the network seam
(:mod:`._seam`) on trio, in the consumer's own task.  No nursery or cancel scope is held
across a ``yield``, and no ExceptionGroup escapes.  Between a session's queries a task in
the session's own nursery answers the server's pings (see :class:`Session`).  One system
task per trio run ends the sessions' waits at their deadlines (``_Timers``: cheaper than a
cancel scope per wait).

Leaving an answer early (``break``, an exception, cancellation) closes the connection;
its sockets close synchronously, so even an iterator that is just dropped leaks nothing
and warns about nothing (``ask`` and ``query`` return iterator objects, not async
generators, which trio would warn about).  Use them as async context managers to close
at a known point.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
import os
import select
import socket
import sys
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, cast

try:
    import trio
except ImportError as exc:  # the core and the other backends need no trio: say which extra brings it
    raise ModuleNotFoundError(
        f"plabs_proto.backends.trio needs trio: pip install 'plabs-proto[trio]' ({exc})", name=exc.name
    ) from exc

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

from plabs_proto.config import ClientConfig
from plabs_proto.errors import LocalProtocolError
from plabs_proto.wire.client import Client, Tracer

from ._async_api import AsyncAnswer, AsyncConnection
from ._config import AskOptions, Messages, SessionOptions, parse_options, to_messages
from ._driver import Driver
from ._seam import GRACE, Network, Stream, read_buffer

if TYPE_CHECKING:  # typing.Unpack is Python 3.11+; only type checkers read it here
    from typing import Unpack

__all__ = ["Connection", "Session", "ask", "connect"]

_STREAM_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)


def _os_error(exc: BaseException) -> OSError:
    """The OSError under a trio stream error (one is made when trio kept none)."""
    if isinstance(exc, OSError):
        return exc
    cause = exc.__cause__
    return cause if isinstance(cause, OSError) else OSError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


def _connect_failure(exc: OSError) -> OSError:
    """The first underlying error of trio's "all attempts to connect ... failed" (it names the cause)."""
    cause = exc.__cause__
    while isinstance(cause, BaseExceptionGroup) and cause.exceptions:
        cause = cause.exceptions[0]
    return cause if isinstance(cause, OSError) else exc


def _collapse(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """One exception out of a nursery's group: a non-Cancelled one if any, else the first Cancelled."""
    exc: BaseException = group.split(trio.Cancelled)[1] or group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _until(deadline: float | None) -> float:
    """A trio deadline: ``math.inf`` for none; one already passed still gives :data:`GRACE`."""
    return math.inf if deadline is None else max(deadline, trio.current_time() + GRACE)


async def _connect(host: str, port: int) -> socket.socket:
    """A socket connected to ``host:port`` (non-blocking, ours alone): ``trio.open_tcp_stream``'s happy
    eyeballs when the name has several addresses; to a single one (a numeric host, one DNS record)
    directly, without the nursery, task and scopes of the happy eyeballs (with a thousand
    connections opening at once they left 3-8 KiB more per session resident: the allocator's, after
    they were gone), and with a stdlib socket trio only waits on, without a trio socket around it
    (whose ``connect`` resolves the address again: some 65,000 instructions more per connection)."""
    targets = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if len(targets) != 1:
        connected = (await trio.open_tcp_stream(host, port)).socket
        # trio's socket is left detached: the descriptor is ours alone.
        return socket.socket(connected.family, connected.type, connected.proto, connected.detach())
    family, kind, proto, _, address = targets[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        try:
            sock.connect(address)
        except BlockingIOError:  # under way (EINPROGRESS): done once the socket is writable
            await trio.lowlevel.wait_writable(sock)
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise OSError(error, f"Error connecting to {address!r}: {os.strerror(error)}") from None  # trio's words
    except BaseException:
        sock.close()
        raise
    return sock


class _TrioStream(Stream):
    """One TCP connection: the socket :func:`_connect` connected, read and written directly
    (non-blocking) with trio's low-level waits.

    Reading waits until the socket is readable and then reads what it holds into the
    thread's shared read buffer (:func:`~._seam.read_buffer`), copying out only the bytes
    read before anything else can run.  Against ``SocketStream.receive_some``, per chunk:
    no ``recv`` tried first that fails (trio tries before it waits), and no READ_SIZE bytes
    object allocated and shrunk.  TLS here is sans-IO (the core's MemoryBIO), so the socket
    carries only raw bytes.
    """

    def __init__(self, connected: socket.socket) -> None:
        self.sock = connected  # non-blocking
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as trio's SocketStream and asyncio do
        self.closed = False
        self.polled: _Several | None = None  # the wait on several connections this one is in, if any

    async def send_all(self, data: bytes, deadline: float | None) -> bool:
        sock = self.sock
        try:
            sent = sock.send(data)  # what fits goes at once, even when the deadline has passed
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return True
        rest = memoryview(data)[sent:]
        with trio.move_on_at(_until(deadline)):
            while rest:
                try:
                    await trio.lowlevel.wait_writable(sock)
                except _STREAM_ERRORS as exc:  # closed meanwhile (trio.ClosedResourceError)
                    raise _os_error(exc) from exc
                with contextlib.suppress(BlockingIOError):
                    rest = rest[sock.send(rest):]
            return True
        return False

    async def receive(self, got: list[tuple[Stream, bytes | OSError]]) -> None:
        """Wait until the socket is readable, then :meth:`read` it.  A wait ended by
        :meth:`interrupt` (the socket still open) appends nothing."""
        try:
            await trio.lowlevel.wait_readable(self.sock)
        except _STREAM_ERRORS as exc:  # closed meanwhile, or interrupted (trio.ClosedResourceError both)
            if self.closed:
                got.append((self, _os_error(exc)))
            return
        self.read(got)

    def interrupt(self) -> None:
        """End the wait under way on this socket, if any, leaving the socket open (its next wait
        registers it with trio again).  ``notify_closing`` is trio's one public way to end a
        ``wait_readable`` other than cancellation, which takes a cancel scope (see :class:`_Timers`)."""
        if not self.closed:
            trio.lowlevel.notify_closing(self.sock)

    def read(self, got: list[tuple[Stream, bytes | OSError]]) -> None:
        """Append what the socket holds now, chunk by chunk (``b""`` at its end, or the OSError it
        met), without waiting: read again while a read fills the whole buffer (more may wait); a
        shorter read took all there was, and the next wait starts with a wait, not a failed read."""
        view = read_buffer()
        while True:
            try:
                size = self.sock.recv_into(view)
            except BlockingIOError:  # nothing (more) after all
                return
            except OSError as exc:
                got.append((self, exc))
                return
            got.append((self, bytes(view[:size])))  # copied out before any other read
            if size < len(view):
                return

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(RuntimeError):  # outside trio.run() (collected after it): nobody waits
            trio.lowlevel.notify_closing(self.sock)  # a task waiting on it gets ClosedResourceError
            if self.polled is not None:
                self.polled.interrupt()  # a wait on several connections ends (and reports this one closed)
        self.sock.close()


#: A wait on several connections at once is one trio wait on an epoll set of their sockets
#: (Linux); without epoll (macOS, Windows), a task per connection in a nursery.
_EPOLL = hasattr(select, "epoll")


class _Several:
    """One wait on several connections (the upgrade's two): an epoll set of their sockets, whose
    own descriptor trio waits on (it is readable once one of theirs is), instead of a nursery with
    a task per connection under a cancel scope: about a quarter of the instructions per wait
    (a nursery, its cancel scope and two tasks cost trio some 250,000 per wait, and the upgrade
    waits on two connections three or four times per session)."""

    __slots__ = ("poll", "streams")

    def __init__(self, streams: Sequence[_TrioStream]) -> None:
        self.streams = streams
        self.poll = select.epoll(len(streams))

    async def receive(self, got: list[tuple[Stream, bytes | OSError]]) -> None:
        """Wait until one of the connections is readable (or closed), then read each; a wait ended by
        :meth:`interrupt` reads what is there all the same.  The epoll set is closed at the end."""
        poll = self.poll
        try:
            if all(not stream.closed for stream in self.streams):
                for stream in self.streams:
                    poll.register(stream.sock, select.EPOLLIN)
                    stream.polled = self
                with contextlib.suppress(*_STREAM_ERRORS):  # interrupted (trio.ClosedResourceError)
                    await trio.lowlevel.wait_readable(poll)
        finally:
            for stream in self.streams:
                stream.polled = None
            poll.close()  # (its sockets are left as they were; trio no longer waits on it)
        for stream in self.streams:
            if stream.closed:  # the words of a wait on one connection closed under it
                got.append((stream, _os_error(trio.ClosedResourceError("another task closed this fd"))))
            else:
                stream.read(got)

    def interrupt(self) -> None:
        """End the wait under way (see :meth:`_TrioStream.interrupt`)."""
        if not self.poll.closed:
            trio.lowlevel.notify_closing(self.poll)


class _Timers:
    """Ends the waits of one trio run's networks at their deadlines: one system task, one heap.

    Entering and leaving a cancel scope costs trio about as much as the wait it bounds (some
    56,000 instructions each, callgrind, trio 0.35, and a scope's objects for the collector),
    and a session waits once per chunk received, while its deadline seldom moves (a Labs
    session's: twice per answer).  So a network's wait on one socket takes no scope: the
    network hands its deadline here only when it moved, and at the deadline this task ends
    the wait (:meth:`_TrioStream.interrupt`).
    """

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, weakref.ref[TrioNetwork]]] = []  # deadline, order, network
        self.order = itertools.count()
        self.sleeping: trio.CancelScope | None = None  # the task's sleep until the earliest deadline

    @staticmethod
    def of_this_run() -> _Timers:
        """This run's timers (their task started on first use)."""
        try:
            return _timers.get()
        except LookupError:
            timers = _Timers()
            _timers.set(timers)
            trio.lowlevel.spawn_system_task(timers.run, name="plabs_proto.backends.trio timers")
            return timers

    def add(self, network: TrioNetwork, deadline: float) -> None:
        """Call ``network.expire(deadline)`` at ``deadline`` (it ignores one no longer its own)."""
        heapq.heappush(self.heap, (deadline, next(self.order), weakref.ref(network)))
        if self.sleeping is not None and deadline < self.sleeping.deadline:
            self.sleeping.deadline = deadline

    async def run(self) -> None:
        heap = self.heap
        while True:
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                deadline, _, ref = heapq.heappop(heap)
                network = ref()
                if network is not None:
                    network.expire(deadline)
            with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as self.sleeping:
                await trio.sleep_forever()
            self.sleeping = None


_timers: trio.lowlevel.RunVar[_Timers] = trio.lowlevel.RunVar("plabs_proto.backends.trio timers")


class TrioNetwork(Network):
    """The seam on trio: sockets it connects (:func:`_connect`) and reads and writes itself (:class:`_TrioStream`).

    A wait on one connection (the common case: once per chunk received) ends at its deadline
    by the run's timers (:class:`_Timers`), not a cancel scope of its own; so does a wait on
    the upgrade's two connections at once where epoll is (:class:`_Several`); other waits (a
    sleep; several connections without epoll) take a cancel scope.

    ``nursery()`` gives the nursery background work runs in (None: none, the work is not run).
    """

    def __init__(self, nursery: Callable[[], trio.Nursery | None] = lambda: None) -> None:
        self._waiting: trio.CancelScope | None = None  # the wait under a scope under way, which wake() cancels
        self._waiting_on: _TrioStream | _Several | None = None  # what a wait without a scope is on
        self._armed: float | None = None  # the deadline handed to the run's _Timers (None: none)
        self.nursery = nursery
        self._clock: trio.abc.Clock | None = None  # the run's, kept by now()

    def now(self) -> float:
        # The run's clock, kept and asked directly: trio.current_time() costs some 1,300
        # instructions more per call (its guard against KeyboardInterrupt), and the driver asks
        # several times per chunk.  A network lives in one trio run (its sockets are that run's).
        clock = self._clock
        if clock is None:
            clock = self._clock = trio.lowlevel.current_clock()
        return clock.current_time()

    async def connect(self, host: str, port: int, deadline: float | None) -> Stream | None:
        with trio.move_on_at(_until(deadline)):
            try:
                return _TrioStream(await _connect(host, port))
            except OSError as exc:
                raise _connect_failure(exc) from exc
        return None

    async def receive(
        self, streams: Sequence[Stream], deadline: float | None
    ) -> list[tuple[Stream, bytes | OSError]]:
        got: list[tuple[Stream, bytes | OSError]] = []
        if len(streams) == 1 or _EPOLL:  # without a cancel scope (see _Timers)
            if deadline != self._armed:
                self._armed = deadline
                if deadline is not None:
                    _Timers.of_this_run().add(self, deadline)
            if len(streams) == 1:
                only = self._waiting_on = cast(_TrioStream, streams[0])
                try:  # _TrioStream.receive, inline: a coroutine less per wait, and its frame (0.25 KiB) while it waits
                    await trio.lowlevel.wait_readable(only.sock)
                except _STREAM_ERRORS as exc:  # closed meanwhile, or interrupted (trio.ClosedResourceError both)
                    if only.closed:
                        got.append((only, _os_error(exc)))
                else:
                    only.read(got)
                finally:
                    self._waiting_on = None
                return got
            several = self._waiting_on = _Several(cast(Sequence[_TrioStream], streams))
            try:
                await several.receive(got)
            finally:
                self._waiting_on = None
            return got
        self._armed = None  # this wait's deadline is its scope's
        with trio.move_on_at(_until(deadline)) as self._waiting:  # several connections, without epoll
            try:
                async with trio.open_nursery() as nursery:
                    for stream in streams:
                        nursery.start_soon(self._receive_into, cast(_TrioStream, stream), got, nursery.cancel_scope)
            except BaseExceptionGroup as group:
                raise _collapse(group) from None
        self._waiting = None
        return got

    async def _receive_into(
        self, stream: _TrioStream, got: list[tuple[Stream, bytes | OSError]], scope: trio.CancelScope
    ) -> None:
        await stream.receive(got)
        scope.cancel()

    async def sleep_until(self, deadline: float) -> None:
        self._armed = None
        with trio.move_on_at(deadline) as self._waiting:
            await trio.sleep_forever()
        self._waiting = None

    def expire(self, deadline: float) -> None:
        """The run's timers: ``deadline`` came (ignored unless it is the one this network waits for)."""
        if deadline == self._armed:
            self._armed = None  # a wait with the same deadline hands it over again (and it ends at once)
            self.wake()

    def wake(self) -> None:
        if self._waiting_on is not None:
            self._waiting_on.interrupt()
        if self._waiting is not None:
            self._waiting.cancel()

    async def send_last(self, stream: Stream, data: bytes, deadline: float) -> None:
        with trio.CancelScope(shield=True, deadline=deadline), contextlib.suppress(OSError):
            await stream.send_all(data, None)

    def start(self, work: Coroutine[Any, Any, None]) -> Callable[[], Awaitable[object]] | None:
        nursery, done = self.nursery(), trio.Event()

        async def run() -> None:
            try:
                await work
            finally:
                done.set()

        if nursery is not None:
            with contextlib.suppress(RuntimeError):  # the nursery is closing
                nursery.start_soon(run)
                return done.wait
        work.close()  # not run
        return None


# -- the public API --------------------------------------------------------------------------------


def ask(prompt_or_messages: Messages, **options: Unpack[AskOptions]) -> AsyncAnswer:
    """Ask Labs once and stream the answer text: ``async for text in ask(...)``.

    Same options, errors and tracing as :func:`plabs_proto.backends.asyncio.ask`, and the
    same promise: the texts join to the final answer, else AnswerRewrittenError.
    """
    messages = to_messages(prompt_or_messages)
    opts = parse_options(options, with_model=True)
    client, used_seed = opts.new_client()
    return AsyncAnswer(lambda: Driver(client, TrioNetwork()), messages, opts.model, opts.tracer, used_seed)


class Connection(AsyncConnection[Client]):
    """One Labs connection for several queries, run one after another: ``async with connect(...)``.

    Between queries a task in the session's own nursery (opened by ``async with``, or by
    :meth:`keep_alive`) answers the server's pings; a session opened with :meth:`open` alone
    reads only while it is awaited.  To send the first query as the handshake ends (see
    :meth:`~._async_api.AsyncConnection.open`), with pings answered between queries::

        session = connect(...)
        async with session.keep_alive():
            await session.open(wait=False)
            async for event in session.query("Hello"):
                ...
            await session.aclose()
    """

    def __init__(self, config: ClientConfig, *, tracer: Tracer | None = None, seed: int | None = None) -> None:
        super().__init__(config, tracer=tracer, seed=seed)
        self._nursery: trio.Nursery | None = None
        self._kept: contextlib.AsyncExitStack | None = None  # async with's keep_alive()

    def _new_driver(self) -> Driver:
        return Driver(self._client, TrioNetwork(lambda: self._nursery))

    @contextlib.asynccontextmanager
    async def keep_alive(self) -> AsyncIterator[Connection]:
        """An async context manager inside which this session answers the server's pings
        between queries (from a task in a nursery of its own), whoever opened it, and in
        whatever task its queries run.  Leaving it stops that (it does not close the
        session).  ``async with session:`` does this for you."""
        if self._nursery is not None:
            raise LocalProtocolError("cannot keep this session alive twice at once")
        manager = trio.open_nursery()
        nursery = self._nursery = await manager.__aenter__()
        try:
            if self._driver is not None:
                self._driver.start_idling()  # when open and between queries
            yield self
        finally:
            try:
                if self._driver is not None:
                    await self._driver.stop_idling()
            finally:
                self._nursery = None
                nursery.cancel_scope.cancel()  # the idle task, if still there, ends (its Cancelled stays inside)
                await manager.__aexit__(None, None, None)

    async def __aenter__(self) -> Connection:
        async with contextlib.AsyncExitStack() as stack:  # kept alive from here, unless open() fails
            await stack.enter_async_context(self.keep_alive())
            await self.open()
            self._kept = stack.pop_all()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        kept, self._kept = self._kept, None
        try:
            await self.aclose()
        finally:
            if kept is not None:
                await kept.aclose()


def connect(**options: Unpack[SessionOptions]) -> Connection:
    """A :class:`Connection` (not open yet: use ``async with``).  Options as for :func:`ask`;
    ``timeout`` bounds each query."""
    opts = parse_options(options, with_model=False)
    return Connection(opts.config, tracer=opts.tracer, seed=opts.seed)


#: The name of :class:`Connection` before 0.2 (see the README's changelog).
Session = Connection
