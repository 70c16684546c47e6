"""The trio backend: :func:`ask` and :func:`connect`.

Everything runs in the consumer's own task, without a background task: to get
the next event, the backend carries out ``transmit()`` (opening connections with
``trio.open_tcp_stream``, writing with ``send_all``), then reads 64 KiB from the
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
from collections import deque
from typing import TYPE_CHECKING, Any, cast

import trio

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

from plabs_proto.client import LabsClient
from plabs_proto.errors import LocalProtocolError, NetworkError
from plabs_proto.events import CloseStream, Event, OpenStream, SendBytes

from ._async_api import AsyncAnswer, AsyncSession
from ._config import AskOptions, Messages, SessionOptions, parse_options, to_messages
from ._errors import closed_error, stream_error
from ._link import READ_SIZE, LinkBase

if TYPE_CHECKING:  # typing.Unpack is Python 3.11+; only type checkers read it here
    from typing import Unpack

__all__ = ["Session", "ask", "connect"]

_CLOSE_WAIT = 0.25  # seconds the polite close may spend writing
_GRACE = 0.001  # seconds given to bytes already waiting when a deadline is overdue
_STREAM_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)


def _cause(exc: BaseException) -> BaseException:
    """The OSError under a trio.BrokenResourceError, for the message."""
    return exc.__cause__ if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ is not None else exc


def _connect_failure(exc: OSError) -> BaseException:
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


class _Link(LinkBase):
    """A LabsClient over trio socket streams, pumped by whoever awaits :meth:`next_event`."""

    def __init__(self, client: LabsClient) -> None:
        self.client = client
        self.now = trio.current_time
        self.proxied = client.config.proxy is not None
        self.streams: dict[int, trio.SocketStream] = {}
        self.targets: dict[int, OpenStream] = {}
        self.at_eof: set[int] = set()
        self.events: deque[Event] = deque()
        self.error: BaseException | None = None
        self.finished = False
        self._pumping = False

    async def next_event(self) -> Event:
        """The next event; the kept error once the events before it are taken."""
        if self._pumping:
            raise LocalProtocolError("cannot wait for this session's events in two tasks at once")
        self._pumping = True
        try:
            while True:
                if self.events:
                    return self.events.popleft()
                if self.error is not None:
                    raise self.error
                if self.finished:
                    raise LocalProtocolError("cannot wait for an answer: the session is closed")
                try:
                    await self._flush()
                    if not self.events and not self.finished:
                        await self._wait_input()
                except Exception as exc:  # LabsError from the core, wrapped socket errors, core bugs
                    self._fail(exc)
                self.events.extend(self.client.events())
        finally:
            self._pumping = False

    # -- pumping ---------------------------------------------------------------------------------

    async def _flush(self) -> None:
        """Carry out ``transmit()`` until the client has nothing more to say."""
        while True:
            instructions = self.client.transmit()
            if not instructions:
                return
            for instruction in instructions:
                kind = type(instruction)
                stream_id = instruction.stream_id
                if kind is SendBytes:
                    stream = self.streams.get(stream_id)
                    if stream is not None:
                        data = cast(SendBytes, instruction).data
                        try:
                            await self._before_timer(stream.send_all(data))
                        except _STREAM_ERRORS as exc:
                            cause = _cause(exc)
                            raise self._stream_error(cause, "send to", stream_id) from cause
                elif kind is OpenStream:
                    await self._open(cast(OpenStream, instruction))
                elif kind is CloseStream:
                    self._close_stream(stream_id)

    async def _open(self, target: OpenStream) -> None:
        self.targets[target.stream_id] = target
        try:
            stream = await self._before_timer(trio.open_tcp_stream(target.host, target.port))
        except OSError as exc:
            cause = _connect_failure(exc)
            raise self._stream_error(cause, "connect to", target.stream_id) from cause
        self.streams[target.stream_id] = stream  # trio turns TCP_NODELAY on for its socket streams

    async def _before_timer(self, awaitable: Any) -> Any:
        """Await ``awaitable`` unless the client's next deadline comes first (then fire it)."""
        at = self.client.get_timer()
        with trio.move_on_at(math.inf if at is None else max(at, trio.current_time() + _GRACE)):
            return await awaitable
        assert at is not None
        self._fire_timer(at)
        raise LocalProtocolError(f"expected a deadline error from the client at {at}, got none")

    def _fire_timer(self, at: float) -> None:
        self.client.handle_timer(max(trio.current_time(), at))

    async def _wait_input(self) -> None:
        """Read what comes first on any connection, or fire the deadline.

        When the deadline has already passed (the consumer was busy elsewhere), bytes
        that are waiting are read first, once, so the client sees what came before
        the deadline; then the deadline fires.
        """
        at = self.client.get_timer()
        now = trio.current_time()
        overdue = at is not None and at <= now
        until = now + _GRACE if overdue else (math.inf if at is None else at)
        readable = [(sid, stream) for sid, stream in self.streams.items() if sid not in self.at_eof]
        got: list[tuple[int, bytes | BaseException]] = []
        with trio.move_on_at(until):
            if len(readable) == 1:
                stream_id, stream = readable[0]
                got.append((stream_id, await self._read(stream_id, stream)))
            elif readable:
                try:
                    async with trio.open_nursery() as nursery:
                        for stream_id, stream in readable:
                            nursery.start_soon(self._read_into, stream_id, stream, got, nursery.cancel_scope)
                except BaseExceptionGroup as group:
                    raise _collapse(group) from None
            elif at is None:
                raise closed_error(
                    "no connection is left to read from",
                    partial_text=self.client.partial_text,
                    partial_reasoning=self.client.partial_reasoning,
                )
            else:
                await trio.sleep_forever()
        for stream_id, data in got:
            if isinstance(data, BaseException):
                raise self._stream_error(data, "receive from", stream_id)
            if not data:
                self.at_eof.add(stream_id)
            if stream_id in self.streams:
                self.client.receive_data(stream_id, data, trio.current_time())
        if overdue or not got:
            assert at is not None
            self._fire_timer(at)

    async def _read(self, stream_id: int, stream: trio.SocketStream) -> bytes | BaseException:
        # receive_some, not recv_into a shared buffer: trio checkpoints between the
        # syscall and our copy, so another task's read could overwrite the buffer.
        try:
            return await stream.receive_some(READ_SIZE)
        except _STREAM_ERRORS as exc:
            return _cause(exc)

    async def _read_into(
        self,
        stream_id: int,
        stream: trio.SocketStream,
        got: list[tuple[int, bytes | BaseException]],
        scope: trio.CancelScope,
    ) -> None:
        got.append((stream_id, await self._read(stream_id, stream)))
        scope.cancel()

    def _stream_error(self, exc: BaseException, action: str, stream_id: int) -> NetworkError:
        return stream_error(
            exc,
            action=action,
            open_stream=self.targets.get(stream_id),
            proxied=self.proxied,
            partial_text=self.client.partial_text,
            partial_reasoning=self.client.partial_reasoning,
        )

    # -- ending ----------------------------------------------------------------------------------

    def _close_stream(self, stream_id: int) -> None:
        stream = self.streams.pop(stream_id, None)
        self.at_eof.discard(stream_id)
        if stream is not None:
            sock = stream.socket
            try:
                sock.close()
            except RuntimeError:  # collected after trio.run() ended: nothing can be waiting on it
                with contextlib.suppress(OSError):
                    os.close(sock.detach())

    def _shutdown(self) -> None:
        self.finished = True
        for stream_id in list(self.streams):
            self._close_stream(stream_id)

    def close(self) -> None:
        """Close every socket at once (synchronously: no polite goodbye)."""
        self._shutdown()

    async def aclose(self) -> None:
        """Close politely if still healthy (bounded, shielded writes), then close every socket."""
        if self.finished:
            return
        with contextlib.suppress(Exception):
            self.client.close(trio.current_time())
        try:
            with trio.CancelScope(shield=True, deadline=trio.current_time() + _CLOSE_WAIT):
                for instruction in self.client.transmit():
                    stream = self.streams.get(instruction.stream_id)
                    if type(instruction) is SendBytes and stream is not None:
                        await stream.send_all(instruction.data)
                    elif type(instruction) is CloseStream:
                        self._close_stream(instruction.stream_id)
        except _STREAM_ERRORS:
            pass
        finally:
            self._shutdown()


# -- the public API --------------------------------------------------------------------------------


def ask(prompt_or_messages: Messages, **options: Unpack[AskOptions]) -> AsyncAnswer:
    """Ask Labs once and stream the answer text: ``async for text in ask(...)``.

    Same options, errors and tracing as :func:`plabs_proto.backends.asyncio.ask`.
    """
    messages = to_messages(prompt_or_messages)
    opts = parse_options(options, with_model=True)
    client, used_seed = opts.new_client()
    return AsyncAnswer(lambda: _Link(client), messages, opts.model, opts.tracer, used_seed)


class Session(AsyncSession):
    """One Labs connection for several queries, run one after another.

    ``async with connect(...) as session:`` then ``async for event in
    session.query(...)``.  Leaving a query before ``AnswerFinished`` closes the
    session.  The session reads only while it is awaited (see the module
    docstring about idle gaps).
    """

    def _new_link(self) -> _Link:
        return _Link(self._client)

    async def __aenter__(self) -> Session:
        await self.open()
        return self


def connect(**options: Unpack[SessionOptions]) -> Session:
    """A :class:`Session` (not open yet: use ``async with``).  Options as for :func:`ask`;
    ``timeout`` bounds each query."""
    opts = parse_options(options, with_model=False)
    return Session(opts.config, tracer=opts.tracer, seed=opts.seed)
