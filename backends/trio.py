"""The trio backend: :func:`ask` and :func:`connect`.

It runs the one driver (:mod:`._driver`) over :class:`TrioNetwork`, the network
seam (:mod:`._seam`) on trio, in the consumer's own task: to get the next event,
the driver carries out ``transmit()`` (opening connections with
``trio.open_tcp_stream``, writing with ``send_all``), then reads from the
connection (or from each connection, in a short-lived nursery, on the polling
transport) until the client's ``get_timer()`` deadline, where it calls
``handle_timer(trio.current_time())``.  No nursery or cancel scope is ever held
across a ``yield``, so the generators are safe to abandon, and no
ExceptionGroup escapes.

Consequence: a :class:`Session` reads only while a query (or ``open()``) is
awaited.  Between queries the server's pings wait in the socket; Engine.IO gives
``pingInterval + pingTimeout`` (45 s on Labs) before it gives up, so keep idle
gaps shorter than that.

Leaving an answer early (``break``, an exception, cancellation) closes the
connection; its sockets are closed synchronously, so even an iterator that is
just dropped leaks nothing and warns about nothing (``ask`` and ``query`` return
iterator objects, not async generators, which trio would warn about).  Use
them as async context managers to close at a known point.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import trio

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup


from ._async_api import AsyncAnswer, AsyncSession
from ._config import AskOptions, Messages, SessionOptions, parse_options, to_messages
from ._driver import Driver
from ._link import READ_SIZE
from ._seam import Network, Stream

if TYPE_CHECKING:  # typing.Unpack is Python 3.11+; only type checkers read it here
    from typing import Unpack

__all__ = ["Session", "ask", "connect"]

_GRACE = 0.001  # seconds given to bytes already waiting when a deadline is overdue
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
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(reversed(exc.exceptions))
        else:
            leaves.append(exc)
    for exc in leaves:
        if not isinstance(exc, trio.Cancelled):
            return exc
    return leaves[0]


def _until(deadline: float | None) -> float:
    return math.inf if deadline is None else deadline


class _TrioStream(Stream):
    """A trio socket stream."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream  # trio turns TCP_NODELAY on for its socket streams

    async def send_all(self, data: bytes, deadline: float | None) -> bool:
        # A deadline already passed still gives the write a moment (the bytes may fit at once).
        with trio.move_on_at(_until(deadline) if deadline is None else max(deadline, trio.current_time() + _GRACE)):
            try:
                await self.stream.send_all(data)
            except _STREAM_ERRORS as exc:
                raise _os_error(exc) from exc
            return True
        return False

    async def receive(self) -> bytes | OSError:
        # receive_some, not recv_into a shared buffer: trio checkpoints between the
        # syscall and our copy, so another task's read could overwrite the buffer.
        try:
            return await self.stream.receive_some(READ_SIZE)
        except _STREAM_ERRORS as exc:
            return _os_error(exc)

    def close(self) -> None:
        sock = self.stream.socket
        try:
            sock.close()
        except RuntimeError:  # collected after trio.run() ended: nothing can be waiting on it
            with contextlib.suppress(OSError):
                os.close(sock.detach())


class TrioNetwork(Network):
    """The seam on trio: ``open_tcp_stream``, ``send_all``, ``receive_some`` under cancel scopes."""

    def now(self) -> float:
        return trio.current_time()

    async def connect(self, host: str, port: int, deadline: float | None) -> Stream | None:
        with trio.move_on_at(_until(deadline) if deadline is None else max(deadline, trio.current_time() + _GRACE)):
            try:
                return _TrioStream(await trio.open_tcp_stream(host, port))
            except OSError as exc:
                raise _connect_failure(exc) from exc
        return None

    async def receive(
        self, streams: Sequence[Stream], deadline: float | None
    ) -> list[tuple[Stream, bytes | OSError]]:
        got: list[tuple[Stream, bytes | OSError]] = []
        with trio.move_on_at(_until(deadline)):
            if len(streams) == 1:
                only = cast(_TrioStream, streams[0])
                got.append((only, await only.receive()))
            else:
                try:
                    async with trio.open_nursery() as nursery:
                        for stream in streams:
                            nursery.start_soon(self._receive_into, cast(_TrioStream, stream), got, nursery.cancel_scope)
                except BaseExceptionGroup as group:
                    raise _collapse(group) from None
        return got

    async def _receive_into(
        self, stream: _TrioStream, got: list[tuple[Stream, bytes | OSError]], scope: trio.CancelScope
    ) -> None:
        got.append((stream, await stream.receive()))
        scope.cancel()

    async def sleep_until(self, deadline: float) -> None:
        await trio.sleep_until(deadline)

    async def send_last(self, stream: Stream, data: bytes, deadline: float) -> None:
        with trio.CancelScope(shield=True, deadline=deadline), contextlib.suppress(OSError):
            await stream.send_all(data, None)


# -- the public API --------------------------------------------------------------------------------


def ask(prompt_or_messages: Messages, **options: Unpack[AskOptions]) -> AsyncAnswer:
    """Ask Labs once and stream the answer text: ``async for text in ask(...)``.

    Same options, errors and tracing as :func:`plabs_proto.backends.asyncio.ask`.
    """
    messages = to_messages(prompt_or_messages)
    opts = parse_options(options, with_model=True)
    client, used_seed = opts.new_client()
    return AsyncAnswer(lambda: Driver(client, TrioNetwork()), messages, opts.model, opts.tracer, used_seed)


class Session(AsyncSession):
    """One Labs connection for several queries, run one after another.

    ``async with connect(...) as session:`` then ``async for event in
    session.query(...)``.  Leaving a query before ``AnswerFinished`` closes the
    session.  The session reads only while it is awaited (see the module
    docstring about idle gaps).
    """

    def _new_link(self) -> Driver:
        return Driver(self._client, TrioNetwork())

    async def __aenter__(self) -> Session:
        await self.open()
        return self


def connect(**options: Unpack[SessionOptions]) -> Session:
    """A :class:`Session` (not open yet: use ``async with``).  Options as for :func:`ask`;
    ``timeout`` bounds each query."""
    opts = parse_options(options, with_model=False)
    return Session(opts.config, tracer=opts.tracer, seed=opts.seed)
