"""The one driver loop of the socket backends (asyncio, trio and sync), over the network seam.

:class:`Driver` runs a :class:`~plabs_proto.wire.client.Client` (of either service) over a
:class:`~._seam.Network` for whoever awaits :meth:`Driver.next_event`:
instructions out (``transmit()``: open, send, close), bytes and timers in
(``receive_data``, ``handle_timer`` at the client's ``get_timer()`` deadline),
the client's events to the consumer (taken from the client as they are asked for:
the driver holds none), the first error kept (and raised once the events before
it are taken), every connection closed on exit.  :meth:`Driver.pump_idle` keeps
the session alive between queries (answering the server's pings) until told to
stop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, cast

from plabs_proto.errors import LocalProtocolError, NetworkError
from plabs_proto.events import CloseStream, Event, OpenStream, SendBytes
from plabs_proto.wire.client import Client, ClientState

from ._async_api import DriverBase
from ._errors import closed_error, stream_error
from ._seam import GRACE, Network, Stream

__all__ = ["CLOSE_WAIT", "Driver"]

#: Seconds the polite close may spend writing.
CLOSE_WAIT = 0.25
#: Seconds an idle wait with nothing to read and no deadline lasts before it looks again (a wake ends it).
IDLE_WAIT = 60.0


class Driver(DriverBase[Client]):
    """A client over a :class:`Network`, pumped by whoever awaits :meth:`next_event`."""

    def __init__(self, client: Client, network: Network) -> None:
        self.client = client
        self.network = network
        self.now = network.now
        self.proxied = client.config.proxy is not None
        self.streams: dict[int, Stream] = {}
        self.targets: dict[int, OpenStream] = {}
        self.at_eof: list[int] = []  # the streams whose end came (a list: a set costs 216 bytes even empty)
        self.error: BaseException | None = None
        self.finished = False
        self._pumping = False
        self._idler: Callable[[], Awaitable[object]] | None = None  # awaits the idle pumping's end
        self._idle_stop = False

    def next_event(self) -> Coroutine[Any, Any, Event]:
        """The next event; the kept error once the events before it are taken.

        The pumping coroutine itself (it returns an event the client holds at once), not one
        that awaits it: a coroutine less per wait, and one frame less held per session while
        it waits (about 230 bytes; a thousand sessions may wait at once).
        """
        return cast(Coroutine[Any, Any, Event], self._pump(None))

    async def pump_idle(self, stop: Callable[[], bool]) -> None:
        """Keep the session alive (pings answered, deadlines fired) until ``stop()`` is true (the
        network's ``wake`` then ends its wait).  Events that come meanwhile wait in the client;
        an error is kept (as in :meth:`next_event`) and ends the pumping."""
        with contextlib.suppress(Exception):
            await self._pump(stop)

    def start_idling(self) -> None:
        """Answer the server's pings between queries: :meth:`pump_idle` in the background
        (as the network runs it: a task, a thread) until :meth:`stop_idling`; not while a query
        streams (its reader pumps)."""
        if self._idler is None and not self.finished and not self.busy:
            self._idle_stop = False
            self._idler = self.network.start(self.pump_idle(lambda: self._idle_stop))

    async def stop_idling(self) -> None:
        """Stop the idle pumping (waking its wait; a write or connect under way is finished first)."""
        idler = self._idler
        if idler is not None:
            self._idle_stop = True
            self.network.wake()
            await idler()
            self._idler = None

    async def _pump(self, stop: Callable[[], bool] | None) -> Event | None:
        if self._pumping:
            raise LocalProtocolError("cannot wait for this session's events in two tasks at once")
        self._pumping = True
        try:
            client = self.client
            while True:
                if stop is None:
                    event = client.next_event()
                    if event is not None:
                        return event
                self._check_open()
                try:
                    await self._flush()
                    if stop is not None and stop():
                        return None  # after the flush: what the last input asked for (a pong) is sent
                    if not self.finished:
                        await self._wait_input(idle=stop is not None)
                except Exception as exc:  # LabsError from the core, wrapped socket errors, core bugs
                    self._fail(exc)
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
                        try:
                            sent = await stream.send_all(cast(SendBytes, instruction).data, self.client.get_timer())
                        except OSError as exc:
                            raise self._stream_error(exc, "send to", stream_id) from exc
                        if not sent:
                            self._deadline_came()
                elif kind is OpenStream:
                    await self._open(cast(OpenStream, instruction))
                elif kind is CloseStream:
                    self._close_stream(stream_id)

    async def _open(self, target: OpenStream) -> None:
        self.targets[target.stream_id] = target
        try:
            stream = await self.network.connect(target.host, target.port, self.client.get_timer())
        except OSError as exc:
            raise self._stream_error(exc, "connect to", target.stream_id) from exc
        if stream is None:
            self._deadline_came()
        elif self.finished:  # closed (from elsewhere: __del__, another task) while connecting
            stream.close()
        else:
            self.streams[target.stream_id] = stream

    def _deadline_came(self) -> None:
        """A write or connect ran into the client's deadline: fire it (the client raises its timeout)."""
        at = self.client.get_timer()
        assert at is not None
        self.client.handle_timer(max(self.network.now(), at))
        raise LocalProtocolError(f"expected a deadline error from the client at {at}, got none")

    async def _wait_input(self, *, idle: bool = False) -> None:
        """Read what comes first on any connection, or fire the deadline.  When the deadline has
        already passed (the consumer was busy elsewhere), bytes already waiting are read first,
        once, so the client sees what came before the deadline; then it fires."""
        network = self.network
        at = self.client.get_timer()
        now = network.now()
        overdue = at is not None and at <= now
        until = now + GRACE if overdue else at
        readable = [(sid, stream) for sid, stream in self.streams.items() if sid not in self.at_eof]
        if readable:
            got = await network.receive([stream for _, stream in readable], until)
        elif at is None and idle and self.client.state is ClientState.READY:
            # A session ready between queries with no deadline keeps nothing alive (one whose every
            # request opens a connection as it needs one, once the server ended an idle keep-alive;
            # a Labs session always has its heartbeat deadline): wait to be woken by the next query.
            await network.sleep_until(now + IDLE_WAIT)
            got = []
        elif at is None:
            client = self.client
            raise closed_error("no connection is left to read from", partial_text=client.partial_text,
                               partial_reasoning=client.partial_reasoning)
        else:
            await network.sleep_until(at if until is None else until)
            got = []
        ids = {id(stream): sid for sid, stream in readable}
        for stream, data in got:
            stream_id = ids[id(stream)]
            if isinstance(data, OSError):
                raise self._stream_error(data, "receive from", stream_id) from data
            if not data and stream_id not in self.at_eof:
                self.at_eof.append(stream_id)
            if stream_id in self.streams:
                self.client.receive_data(stream_id, data, network.now())
        if at is not None and (overdue or (not got and network.now() >= at)):
            self.client.handle_timer(max(network.now(), at))

    def _stream_error(self, exc: BaseException, action: str, stream_id: int) -> NetworkError:
        """The :class:`NetworkError` for a socket failure on this connection (see :func:`stream_error`)."""
        target, client = self.targets.get(stream_id), self.client
        host, port = ("", 0) if target is None else (target.host, target.port)
        return stream_error(exc, action=action, host=host, port=port, proxied=self.proxied,
                            partial_text=client.partial_text, partial_reasoning=client.partial_reasoning)

    # -- ending ----------------------------------------------------------------------------------

    def _close_stream(self, stream_id: int) -> None:
        stream = self.streams.pop(stream_id, None)
        self.targets.pop(stream_id, None)  # (the upgrade's polling connections: not kept for the whole answer)
        if stream_id in self.at_eof:
            self.at_eof.remove(stream_id)
        if stream is not None:
            stream.close()

    def _shutdown(self) -> None:
        self.finished = True
        for stream_id in list(self.streams):
            self._close_stream(stream_id)

    def close(self) -> None:
        """Close every connection and the network at once (synchronously: no polite goodbye)."""
        self._shutdown()
        self.network.close()

    async def aclose(self) -> None:
        """Stop idling, close politely if still healthy (writes bounded by :data:`CLOSE_WAIT`),
        then every connection (given a moment to go) and the network."""
        await self.stop_idling()
        try:
            if not self.finished:
                with contextlib.suppress(Exception):
                    self.client.close(self.network.now())
                deadline = self.network.now() + CLOSE_WAIT
                for instruction in self.client.transmit():
                    stream = self.streams.get(instruction.stream_id)
                    if type(instruction) is SendBytes and stream is not None:
                        await self.network.send_last(stream, instruction.data, deadline)
                    elif type(instruction) is CloseStream:
                        self._close_stream(instruction.stream_id)
        except BaseException:
            self._shutdown()
            self.network.close()  # at once
            raise
        self._shutdown()
        try:
            await self.network.closed()
        finally:
            self.network.close()
