"""What every backend's connection driver ("link") shares, with no I/O of its own.

* :class:`LinkBase`: the bookkeeping around the sans-IO core a link runs (a
  :class:`~plabs_proto.client.LabsClient`, or the curl backend's
  :class:`~plabs_proto.session.LabsSession`): events waiting for the consumer, the
  first error, closing everything once it is kept;
* :func:`read_buffer`: the one read buffer a thread's connections share.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from plabs_proto.client import LabsClient
from plabs_proto.errors import LocalProtocolError
from plabs_proto.events import Event
from plabs_proto.session import LabsSession

__all__ = ["READ_SIZE", "Core", "LinkBase", "read_buffer"]

#: Bytes read from a socket at a time: as much as fits under glibc's default mmap threshold
#: (128 KiB), so the bytes object a read becomes comes from the heap, not from a fresh mmap
#: (and its page faults) every time.
READ_SIZE = 126 * 1024

_read_buffers = threading.local()

#: The sans-IO core a link runs: the byte-level client, or (curl) the message-level session.
Core = TypeVar("Core", LabsClient, LabsSession)


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


class LinkBase(ABC, Generic[Core]):
    """The bookkeeping of a backend's connection driver ("link") around its core.

    A link keeps the core (``client``), the events waiting for the consumer, and the
    first error; it closes every connection once that error is kept.  Subclasses give
    the clock (``now``), their ``_shutdown`` and what follows a command (``_after_command``).
    """

    client: Core
    events: deque[Event]
    error: BaseException | None
    finished: bool
    now: Callable[[], float]

    def command(self, method: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        """Call a user command of the core (connect, query, close) with ``now=``.

        Misuse raises :class:`LocalProtocolError` at once; any other error is kept
        for the consumer, who gets it after the events that came before it.
        """
        if self.error is not None:
            raise LocalProtocolError(f"cannot use this session: it failed ({self.error})") from self.error
        if self.finished:
            raise LocalProtocolError("cannot use this session: it is closed")
        try:
            method(*args, now=self.now(), **kwargs)
        except LocalProtocolError:
            raise
        except Exception as exc:
            self._fail(exc)
            self.events.extend(self.client.events())
            return
        self._after_command()

    def _after_command(self) -> None:
        self.events.extend(self.client.events())

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self._shutdown()

    @abstractmethod
    async def next_event(self) -> Event:
        """The next event (pumping I/O as needed); the kept error once the events before it are taken."""

    @abstractmethod
    def close(self) -> None:
        """Close every connection at once, synchronously (safe from ``__del__``)."""

    @abstractmethod
    async def aclose(self) -> None:
        """Close politely if the session is healthy (bounded in time), then every connection."""

    def start_idling(self) -> None:
        """Keep the session alive between queries (pings answered) until :meth:`stop_idling`.

        Nothing here: a link that reads only while awaited overrides it (asyncio: a
        task; sync: a thread); the trio session idles in its own nursery instead.
        """

    async def stop_idling(self) -> None:
        """Stop what :meth:`start_idling` started, before the consumer reads again."""

    def _check_open(self) -> None:
        """Before waiting for an event (none is queued): raise the kept error, or say the session is closed."""
        if self.error is not None:
            raise self.error
        if self.finished:
            raise LocalProtocolError("cannot wait for an answer: the session is closed")

    @abstractmethod
    def _shutdown(self) -> None:
        """Close every connection at once."""
