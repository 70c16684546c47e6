"""The network seam: the little a driver needs from a network, and nothing more.

In the spirit of httpcore's ``NetworkStream``/``NetworkBackend``, shaped for this client:
open TCP connections, write, close, and wait for the first of several connections to have
bytes (or a deadline).  The driver (:mod:`._driver`) runs over any :class:`Network`:
asyncio protocols (:mod:`.asyncio`), trio sockets (:mod:`.trio`), blocking sockets and one
selector (:mod:`.sync`), or connections in memory with a fake clock (``tests/memory_network.py``).

Every method is ``async``, also on the blocking network, whose methods never suspend:
:func:`run_blocking` steps the driver's coroutines there, so one loop serves all.
Deadlines are absolute times on :meth:`Network.now`'s clock (``None``: none); failures
are :class:`OSError`, which the driver words as :class:`~plabs_proto.errors.NetworkError`.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

__all__ = ["GRACE", "READ_SIZE", "Network", "Stream", "read_buffer", "run_blocking"]

#: Seconds a wait still gets when its deadline has already passed: bytes already waiting
#: are read (and a write that fits at once is made) before the deadline fires.
GRACE = 0.001

#: Bytes read from a socket at a time: as much as fits under glibc's default mmap threshold
#: (128 KiB), so the bytes object a read becomes comes from the heap, not from a fresh mmap
#: (and its page faults) every time.
READ_SIZE = 126 * 1024

_read_buffers = threading.local()


def read_buffer() -> memoryview:
    """A READ_SIZE buffer shared by every connection of this thread.

    A backend reads into it (``recv_into``) and copies out what arrived before it
    reads again, so one buffer serves all its connections: no allocation of a
    fresh READ_SIZE object per read, and no READ_SIZE buffer per connection.
    """
    view: memoryview | None = getattr(_read_buffers, "view", None)
    if view is None:
        view = _read_buffers.view = memoryview(bytearray(READ_SIZE))
    return view


class Stream(ABC):
    """One open connection."""

    @abstractmethod
    async def send_all(self, data: bytes, deadline: float | None) -> bool:
        """Write all of ``data``; False when the deadline came first.  Raises OSError."""

    @abstractmethod
    def close(self) -> None:
        """Close at once (synchronous, idempotent, safe from ``__del__``)."""


class Network(ABC):
    """Opens :class:`Stream` s and waits for their bytes, on one clock."""

    @abstractmethod
    def now(self) -> float:
        """The clock every deadline is on (the client's ``now``)."""

    @abstractmethod
    async def connect(self, host: str, port: int, deadline: float | None) -> Stream | None:
        """A connection to ``host:port``; None when the deadline came first.  Raises OSError."""

    @abstractmethod
    async def receive(
        self, streams: Sequence[Stream], deadline: float | None
    ) -> list[tuple[Stream, bytes | OSError]]:
        """Wait until one of ``streams`` (never empty) has bytes: ``b""`` at its end (it is not
        passed again), or the OSError it met.  Returns what came, for one stream or more; an empty
        list at the deadline, or when woken early (the caller looks at the clock)."""

    @abstractmethod
    async def sleep_until(self, deadline: float) -> None:
        """Wait for the deadline (or less, when woken early)."""

    @abstractmethod
    async def send_last(self, stream: Stream, data: bytes, deadline: float) -> None:
        """The polite close's write: sent until ``deadline`` even inside a cancelled task; errors ignored."""

    def start(self, work: Coroutine[Any, Any, None]) -> Callable[[], Awaitable[object]] | None:
        """Run ``work`` (the driver's idling between queries) in the background, a task or a thread;
        return what awaits its end.  None (the default): this network runs nothing in the background."""
        work.close()
        return None

    def close(self) -> None:
        """At once: release what the network holds (a timer, a selector) and drop any connection
        still closing (the driver's streams are closed).  Idempotent."""
        return None

    async def closed(self) -> None:
        """Give the closed connections a moment (bounded) to write out what they hold and go."""
        return None

    @abstractmethod
    def wake(self) -> None:
        """End the :meth:`receive` or :meth:`sleep_until` under way early (it returns nothing); called
        from the backend's own thread or another one (sync) to stop the idling; never interrupts a write."""


T = TypeVar("T")


def run_blocking(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (the driver over a blocking network) to its end."""
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    coroutine.close()
    raise RuntimeError("expected a blocking network's coroutine to finish without suspending, but it suspended")
