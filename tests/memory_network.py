"""The network seam in memory, on a fake clock: the driver's tests run without sockets or sleeps.

Like trio's ``MockClock(autojump_threshold=0)``: when the driver waits and nothing
is due, the clock jumps to the next thing that is (a reply a test scheduled, or
the driver's deadline).  A test plays the server: :class:`MemoryNetwork` hands
every new connection to ``serve``, which returns an object whose ``received(data)``
sees what the client wrote (at :attr:`MemoryNetwork.clock`); it answers with
:meth:`MemoryStream.push` (now, or at a later time).

Every deadline the driver hands the seam is recorded (``connects``, ``sends``,
``goodbyes``, ``sleeps``), so a test asserts it exactly.  A connection can be made to stall
(``stall_connect``, :attr:`MemoryStream.stall_sends`: the deadline comes first) or
fail (``refuse``, :attr:`MemoryStream.send_error`).  Work the driver starts in the
background (its idling between queries) runs when the test lets time pass
(:meth:`MemoryNetwork.idle`) and stops where a task or thread would: in a wait,
which ends early (nothing received) when the test resumes it.
"""

from __future__ import annotations

import errno
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from typing import Any, Protocol

from plabs_proto.backends._seam import Network, Stream


class Peer(Protocol):
    def received(self, data: bytes) -> None: ...


class MemoryStream(Stream):
    def __init__(self, network: MemoryNetwork, host: str, port: int) -> None:
        self.network = network
        self.host = host
        self.port = port
        self.inbound: deque[tuple[float, bytes | OSError]] = deque()
        self.written: list[tuple[float, bytes]] = []
        self.sends: list[float | None] = []  # the deadline of every send_all
        self.stall_sends = False  # writes block until their deadline
        self.send_error: OSError | None = None  # what the next write raises
        self.closed = False
        self.ended = False  # its end (b"") was handed out: a stream at its end is not waited on again
        self.peer: Peer | None = None

    def push(self, data: bytes | OSError, at: float | None = None) -> None:
        """Bytes (or a failure) for the client, due at ``at`` (default: now); kept in time order."""
        due = self.network.clock if at is None else at
        items = sorted([*self.inbound, (due, data)], key=lambda item: item[0])
        self.inbound = deque(items)

    async def send_all(self, data: bytes, deadline: float | None) -> bool:
        assert not self.closed, "the driver wrote to a stream it closed"
        self.sends.append(deadline)
        if self.send_error is not None:
            raise self.send_error
        if self.stall_sends:
            assert deadline is not None, "the driver would write forever"
            self.network.clock = max(self.network.clock, deadline)
            return False
        self.written.append((self.network.clock, data))
        if self.peer is not None:
            self.peer.received(data)
        return True

    def close(self) -> None:
        self.closed = True


class _Suspend:
    """Awaited, suspends the coroutine (the background work) until the test resumes it."""

    def __await__(self) -> Generator[None, None, None]:
        yield


class MemoryNetwork(Network):
    def __init__(self, serve: Callable[[MemoryStream], Peer], *, refuse: bool = False,
                 stall_connect: float | None = None) -> None:
        self.serve = serve
        self.refuse = refuse
        self.stall_connect = stall_connect  # seconds before its deadline a connect gives up (None: it connects)
        self.clock = 0.0
        self.streams: list[MemoryStream] = []
        self.connects: list[tuple[str, int, float | None]] = []
        self.goodbyes: list[tuple[float, bytes, float]] = []  # send_last: (clock, data, deadline)
        self.sleeps: list[float] = []  # the deadline of every sleep_until
        self.started = 0  # how many works were started in the background
        self.background: Coroutine[Any, Any, None] | None = None
        self._horizon: float | None = None  # while the background work runs: where it stops

    def now(self) -> float:
        return self.clock

    async def connect(self, host: str, port: int, deadline: float | None) -> Stream | None:
        self.connects.append((host, port, deadline))
        if self.refuse:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
        if self.stall_connect is not None:
            assert deadline is not None, "the driver would connect forever"
            self.clock = max(self.clock, deadline - self.stall_connect)
            return None
        stream = MemoryStream(self, host, port)
        self.streams.append(stream)
        stream.peer = self.serve(stream)
        return stream

    async def receive(self, streams: Sequence[Stream], deadline: float | None) -> list[tuple[Stream, Any]]:
        mine = [stream for stream in streams if isinstance(stream, MemoryStream)]
        assert mine and len(mine) == len(streams) and not any(stream.closed or stream.ended for stream in mine)
        due = [stream.inbound[0][0] for stream in mine if stream.inbound]
        next_at = min(due, default=None)
        if await self._paused(min((at for at in (next_at, deadline) if at is not None), default=None)):
            return []
        if next_at is None or (deadline is not None and deadline < next_at):
            assert deadline is not None, "the driver would wait forever"
            self.clock = max(self.clock, deadline)
            return []
        self.clock = max(self.clock, next_at)
        got = [(stream, stream.inbound.popleft()[1]) for stream in mine if stream.inbound and stream.inbound[0][0] <= self.clock]
        for stream, data in got:
            stream.ended = stream.ended or data == b""
        return got

    async def sleep_until(self, deadline: float) -> None:
        assert deadline is not None and deadline > self.clock, f"the driver would spin: a sleep until {deadline}"
        self.sleeps.append(deadline)
        if not await self._paused(deadline):
            self.clock = max(self.clock, deadline)

    async def send_last(self, stream: Stream, data: bytes, deadline: float) -> None:
        self.goodbyes.append((self.clock, data, deadline))
        await stream.send_all(data, deadline)

    def wake(self) -> None:
        pass  # the background work, stopped in a wait, is resumed by what awaits its end

    # -- the background work ----------------------------------------------------------------------

    def start(self, work: Coroutine[Any, Any, None]) -> Callable[[], Awaitable[object]] | None:
        assert self.background is None, "the driver started a second background work"
        self.started += 1
        self.background = work

        async def finished() -> None:
            if self.background is work:  # not ended on its own (an error ends it)
                self._resume(None)  # woken: its wait ends, and it runs to its end
            assert self.background is None, "the background work did not end when woken"

        return finished

    def close(self) -> None:
        if self.background is not None:  # the background work ends, as a task woken by a closed network does
            self._resume(None)

    def idle(self, until: float) -> None:
        """Let the background work run while the clock goes to ``until`` (the consumer is elsewhere)."""
        self._resume(until)
        self.clock = max(self.clock, until)

    def _resume(self, horizon: float | None) -> None:
        work = self.background
        assert work is not None, "no work runs in the background"
        self._horizon = horizon
        try:
            work.send(None)
        except StopIteration:
            self.background = None
        finally:
            self._horizon = None

    async def _paused(self, until: float | None) -> bool:
        """In the background work, a wait past the horizon: stop there until resumed (then it ends early)."""
        horizon = self._horizon
        if horizon is None or (until is not None and until <= horizon):
            return False
        self.clock = max(self.clock, horizon)
        await _Suspend()
        return True
