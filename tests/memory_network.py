"""The network seam in memory, on a fake clock: the driver's tests run without sockets or sleeps.

Like trio's ``MockClock(autojump_threshold=0)``: when the driver waits and nothing
is due, the clock jumps to the next thing that is (a reply a test scheduled, or
the driver's deadline).  A test plays the server: :class:`MemoryNetwork` hands
every new connection to ``serve``, which returns an object whose ``received(data)``
sees what the client wrote (at :attr:`MemoryNetwork.clock`); it answers with
:meth:`MemoryStream.push` (now, or at a later time).
"""

from __future__ import annotations

import errno
from collections import deque
from collections.abc import Callable, Sequence
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
        self.closed = False
        self.peer: Peer | None = None

    def push(self, data: bytes | OSError, at: float | None = None) -> None:
        """Bytes (or a failure) for the client, due at ``at`` (default: now); kept in time order."""
        due = self.network.clock if at is None else at
        items = sorted([*self.inbound, (due, data)], key=lambda item: item[0])
        self.inbound = deque(items)

    async def send_all(self, data: bytes, deadline: float | None) -> bool:
        assert not self.closed, "the driver wrote to a stream it closed"
        self.written.append((self.network.clock, data))
        if self.peer is not None:
            self.peer.received(data)
        return True

    def close(self) -> None:
        self.closed = True


class MemoryNetwork(Network):
    def __init__(self, serve: Callable[[MemoryStream], Peer], *, refuse: bool = False) -> None:
        self.serve = serve
        self.refuse = refuse
        self.clock = 0.0
        self.streams: list[MemoryStream] = []

    def now(self) -> float:
        return self.clock

    async def connect(self, host: str, port: int, deadline: float | None) -> Stream | None:
        if self.refuse:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
        stream = MemoryStream(self, host, port)
        self.streams.append(stream)
        stream.peer = self.serve(stream)
        return stream

    async def receive(self, streams: Sequence[Stream], deadline: float | None) -> list[tuple[Stream, Any]]:
        mine = [stream for stream in streams if isinstance(stream, MemoryStream)]
        assert mine and len(mine) == len(streams) and not any(stream.closed for stream in mine)
        due = [stream.inbound[0][0] for stream in mine if stream.inbound]
        next_at = min(due, default=None)
        if next_at is None or (deadline is not None and deadline < next_at):
            assert deadline is not None, "the driver would wait forever"
            self.clock = max(self.clock, deadline)
            return []
        self.clock = max(self.clock, next_at)
        return [(stream, stream.inbound.popleft()[1]) for stream in mine if stream.inbound and stream.inbound[0][0] <= self.clock]

    async def sleep_until(self, deadline: float) -> None:
        self.clock = max(self.clock, deadline)

    async def send_last(self, stream: Stream, data: bytes, deadline: float) -> None:
        await stream.send_all(data, deadline)

    def wake(self) -> None:
        pass  # nothing here ever waits: the clock jumps
