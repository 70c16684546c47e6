"""The answer stream, query stream and session every backend shares, and the link they run on.

They are written against :class:`LinkBase`, which every backend's connection driver
("link") is: the driver over a network seam (:mod:`._driver`), or curl's link over its
session.  The asyncio, trio and curl backends hand them out as they are; the blocking
backend steps them with :func:`~._seam.run_blocking`, as its driver never suspends.
"""

from __future__ import annotations

import contextlib
import random
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeAlias, TypeVar, cast

from plabs_proto.config import ClientConfig
from plabs_proto.errors import LocalProtocolError, ResponseError
from plabs_proto.events import AnswerFinished, AnswerRevised, Connected, Event, TextDelta
from plabs_proto.labs.session import LabsSession
from plabs_proto.wire.client import ClientState, LabsClient, Tracer

from ._config import DEFAULT_MODEL, Messages, announce_seed, make_rng, to_messages
from ._errors import check_event, opened
from ._text import AnswerText

__all__ = ["AsyncAnswer", "AsyncLink", "AsyncQuery", "AsyncSession", "Core", "LinkBase", "OneReader"]


#: The sans-IO core a link runs: the byte-level client, or (curl) the message-level session.
Core = TypeVar("Core", LabsClient, LabsSession)


class LinkBase(ABC, Generic[Core]):
    """The bookkeeping of a backend's connection driver ("link") around its core: the core
    (``client``), the events waiting for the consumer, the first error (every connection is
    closed once it is kept).  Subclasses give the clock (``now``) and ``_shutdown``."""

    client: Core
    events: deque[Event]
    error: BaseException | None
    finished: bool
    now: Callable[[], float]

    def command(self, method: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        """Call a user command of the core (connect, query, close) with ``now=``: misuse raises
        :class:`LocalProtocolError` at once, any other error is kept for the consumer."""
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
        """Keep the session alive between queries until :meth:`stop_idling`: nothing here (curl's
        link reads all the time); the driver, which reads only while awaited, overrides it."""

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


# The streams are classes rather than async generators: trio warns (ResourceWarning) about every
# async generator collected unfinished, and an object can close its sockets synchronously from __del__.

#: What a backend's connection driver offers the classes below (its core is a LabsClient or a LabsSession).
AsyncLink: TypeAlias = LinkBase[Any]


def _release(close: Callable[[], None]) -> None:
    with contextlib.suppress(Exception):
        close()


T = TypeVar("T")
R = TypeVar("R", bound="OneReader[Any]")
S = TypeVar("S", bound="AsyncSession[Any]")


class OneReader(ABC, Generic[T]):
    """An async iterator that one task reads at a time (its subclasses give ``_next``)."""

    _what = "this stream"
    _done = False
    _reading = False

    def __aiter__(self) -> OneReader[T]:
        return self

    async def __anext__(self) -> T:
        if self._done:
            raise StopAsyncIteration
        if self._reading:
            raise LocalProtocolError(f"cannot read {self._what} in two tasks at once")
        self._reading = True
        try:
            return await self._next()
        finally:
            self._reading = False

    @abstractmethod
    async def _next(self) -> T:
        """The next item; sets ``_done`` at the end."""

    @abstractmethod
    async def aclose(self) -> None:
        """Stop reading and release the connection."""

    async def __aenter__(self: R) -> R:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class AsyncAnswer(OneReader[str]):
    """What ``ask`` returns: an async iterator of answer text deltas (str), which join to the
    final answer or end with AnswerRewrittenError (see :class:`~._text.AnswerText`).

    The connection opens on the first ``__anext__`` and closes when the answer is complete,
    on an error or cancellation, on :meth:`aclose` (or leaving ``async with``), and, failing
    all that, when the object is collected.
    """

    _what = "one answer"

    def __init__(
        self, make_link: Callable[[], AsyncLink], messages: Messages, model: str, tracer: Tracer | None, seed: int | None
    ) -> None:
        self._make_link = make_link
        self._messages = messages
        self._model = model
        self._tracer = tracer
        self._seed = seed
        self._link: AsyncLink | None = None
        self._text = AnswerText()

    async def _next(self) -> str:
        link = self._link
        try:
            if link is None:
                link = self._link = self._make_link()
                announce_seed(self._tracer, self._seed, link.now())
                link.command(link.client.connect)
                link.command(link.client.query, self._messages, model=self._model)
            client, events = link.client, link.events
            while True:  # nothing else reads this link: queued events are taken without a coroutine
                event = events.popleft() if events else await link.next_event()
                kind = type(event)
                if kind is TextDelta or kind is AnswerRevised:
                    text = self._text.take(event)
                    if text:
                        return text
                elif check_event(event, partial_text=client.partial_text, partial_reasoning=client.partial_reasoning):
                    break
        except BaseException:
            self._done = True
            if link is not None:
                link.close()
            raise
        self._done = True
        await link.aclose()
        assert isinstance(event, AnswerFinished)
        rest = self._text.finish(event)  # raises AnswerRewrittenError when the text was rewritten
        if rest:
            return rest
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop: close the connection (politely if it is healthy)."""
        self._done = True
        if self._link is not None:
            await self._link.aclose()

    def __del__(self) -> None:
        link = self._link
        if link is not None and not link.finished:
            _release(link.close)


class AsyncQuery(OneReader[Event]):
    """What ``Session.query`` returns: an async iterator of the answer's events (``TextDelta``,
    ``ReasoningDelta``, ``Citations``, ``AnswerRevised``, then ``AnswerFinished``).

    The query is sent on the first ``__anext__``.  A server-reported failure raises
    :class:`~plabs_proto.errors.ResponseError` and leaves the session usable; any other error,
    a cancellation, or leaving before ``AnswerFinished`` closes the session.  After
    ``open(wait=False)`` it takes the connect ack on its way (setting ``session.connected``),
    and raises what ``open()`` would have raised when the server refuses the handshake.
    """

    _what = "one query's events"

    def __init__(self, session: AsyncSession[Any], link: AsyncLink, messages: Messages, model: str) -> None:
        self._session = session
        self._link = link
        self._messages = messages
        self._model = model
        self._started = False

    async def _next(self) -> Event:
        link = self._link
        client = link.client
        try:
            if not self._started:
                self._started = True
                session = self._session
                await session._stop_idling()
                if session.connected is not None:
                    link.events.clear()
                elif link.error is not None:  # open(wait=False): the handshake failed already
                    raise link.error
                link.command(client.query, self._messages, model=self._model)
            while True:
                event = await link.next_event()
                if type(event) is Connected:  # the ack, after open(wait=False)
                    self._session.connected = event
                    continue
                if check_event(event, partial_text=client.partial_text, partial_reasoning=client.partial_reasoning):
                    self._finish(idle=True)
                return event
        except ResponseError:
            self._finish()
            if not link.finished and client.state is ClientState.READY:
                self._session._start_idling()
                raise  # the server failed this query; the session goes on
            link.close()
            raise
        except LocalProtocolError:
            self._finish()  # a misuse (or a session already over) closes nothing
            raise
        except BaseException:
            self._finish()
            link.close()
            raise

    def _finish(self, *, idle: bool = False) -> None:
        if not self._done:
            self._done = True
            self._session._busy = False
            if idle:  # the answer is complete and the session goes on
                self._session._start_idling()

    async def aclose(self) -> None:
        """Stop reading: if the answer was still streaming, the session closes."""
        if self._done:
            return
        self._finish()
        if self._started:
            await self._link.aclose()

    def __del__(self) -> None:
        if not self._done:
            self._finish()
            if self._started:
                _release(self._link.close)


class AsyncSession(ABC, Generic[Core]):
    """One Labs connection for several queries, run one after another (``async with``).

    Backends subclass it and say how to make the connection driver (:meth:`_new_link`).
    """

    _link: AsyncLink | None = None  # the connection driver once open; read by __del__

    def __init__(self, config: ClientConfig, *, tracer: Tracer | None = None, seed: int | None = None) -> None:
        rng, self.seed = make_rng(tracer, seed)
        self._client: Core = self._new_core(config, rng, tracer)
        self._tracer = tracer
        self._busy = False
        #: The ``Connected`` event, once the session is open.
        self.connected: Connected | None = None

    def _new_core(self, config: ClientConfig, rng: random.Random, tracer: Tracer | None) -> Core:
        """The sans-IO core of this session (a :class:`LabsClient` unless a backend says otherwise)."""
        return LabsClient(config, rng=rng, tracer=tracer)  # type: ignore[return-value]

    @property
    def client(self) -> Core:
        """The sans-IO client underneath (its state, partial text, transport)."""
        return self._client

    @abstractmethod
    def _new_link(self) -> AsyncLink:
        """The backend's connection driver for this session's client."""

    def _start_idling(self) -> None:
        """Keep the open session alive between queries (the link's ``start_idling``)."""
        if self._link is not None and not self._busy:
            self._link.start_idling()

    async def _stop_idling(self) -> None:
        """Stop what :meth:`_start_idling` started, before the consumer reads again."""
        if self._link is not None:
            await self._link.stop_idling()

    async def open(self, *, wait: bool = True) -> None:
        """Connect and wait for the Socket.IO connect ack (``async with`` calls this).

        ``open(wait=False)`` only starts the handshake and returns at once: a :meth:`query`
        made then goes out in the very step that reads the ack (as ``ask`` sends its query),
        not after a turn of the caller's code (see :class:`AsyncQuery`).
        """
        if self._link is not None:
            raise LocalProtocolError("cannot open this session: it was opened already")
        link = self._link = self._new_link()
        try:
            announce_seed(self._tracer, self.seed, link.now())
            link.command(self._client.connect)
            if not wait:
                self._start_idling()  # a backend that reads only when awaited makes progress meanwhile
                return
            event = await link.next_event()
            while not opened(event):
                event = await link.next_event()
            self.connected = cast(Connected, event)
            self._start_idling()
        except BaseException:
            link.close()
            raise

    def query(self, messages: Messages, *, model: str = DEFAULT_MODEL) -> AsyncQuery:
        """Ask; iterate the result for the answer's events (see :class:`AsyncQuery`).

        Raises :class:`~plabs_proto.errors.LocalProtocolError` at once when the
        session is not open or another query on it is still streaming.
        """
        link = self._link
        if link is None:
            raise LocalProtocolError("cannot query: the session is not open (open it, or use it as a context manager)")
        if self._busy:
            raise LocalProtocolError(
                "cannot start a query while another one is still streaming on this session: "
                "queries run one after another"
            )
        messages = to_messages(messages)
        self._busy = True
        return AsyncQuery(self, link, messages, model)

    async def aclose(self) -> None:
        """Close the session (politely when it is healthy); idempotent."""
        if self._link is not None:
            try:
                await self._stop_idling()
            except BaseException:  # cancelled while the idle task ends: close at once
                self._link.close()
                raise
            await self._link.aclose()

    async def __aenter__(self: S) -> S:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        link = self._link
        if link is not None and not link.finished:
            _release(link.close)
