"""What every backend's connection driver and session share, with no I/O of its own.

* :class:`LinkBase`: the bookkeeping around a :class:`~plabs_proto.client.LabsClient`
  (events waiting for the consumer, the first error, closing everything once it is kept);
* :class:`SessionBase`: what a ``Session`` holds (client, seed, tracer, whether a query runs);
* :func:`read_buffer`: the one read buffer a thread's connections share.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from typing import Any

from plabs_proto.client import ClientConfig, LabsClient, Tracer
from plabs_proto.errors import LocalProtocolError, NetworkError
from plabs_proto.events import Connected, Event, OpenStream

from ._config import make_rng
from ._errors import stream_error

__all__ = ["READ_SIZE", "LinkBase", "SessionBase", "read_buffer"]

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


# -- what every backend's connection driver shares ----------------------------------------------------


class LinkBase(ABC):
    """The bookkeeping of a backend's connection driver ("link") around its LabsClient.

    A link keeps the client, the events waiting for the consumer, and the first
    error; it closes every connection once that error is kept.  Subclasses give the
    clock (``now``), their ``_shutdown`` and what follows a command (``_after_command``).
    """

    client: LabsClient
    events: deque[Event]
    error: BaseException | None
    finished: bool
    now: Callable[[], float]
    targets: dict[int, OpenStream]  # where each connection goes, for the errors' wording
    proxied: bool

    def command(self, method: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        """Call a user command of the client (connect, query) with ``now=``.

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

    def _stream_error(self, exc: BaseException, action: str, stream_id: int) -> NetworkError:
        """The :class:`NetworkError` for a socket failure on this connection (see :func:`stream_error`)."""
        return stream_error(
            exc,
            action=action,
            open_stream=self.targets.get(stream_id),
            proxied=self.proxied,
            partial_text=self.client.partial_text,
            partial_reasoning=self.client.partial_reasoning,
        )

    @abstractmethod
    def _shutdown(self) -> None:
        """Close every connection at once."""


class SessionBase:
    """What every backend's ``Session`` holds: its client, seed, tracer and whether a query runs."""

    _link: Any  # the backend's connection driver once open (subclasses say which)

    def __init__(self, config: ClientConfig, *, tracer: Tracer | None = None, seed: int | None = None) -> None:
        self._link = None  # first: __del__ reads it even if the client refuses the config
        rng, self.seed = make_rng(tracer, seed)
        self._client = LabsClient(config, rng=rng, tracer=tracer)
        self._tracer = tracer
        self._busy = False
        #: The ``Connected`` event, once the session is open.
        self.connected: Connected | None = None

    @property
    def client(self) -> LabsClient:
        """The sans-IO client underneath (its state, partial text, transport)."""
        return self._client

    def _check_idle(self) -> None:
        """Raise :class:`LocalProtocolError` while a query of this session is still streaming."""
        if self._busy:
            raise LocalProtocolError(
                "cannot start a query while another one is still streaming on this session: "
                "queries run one after another"
            )
