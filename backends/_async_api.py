"""The answer, the query and the connection every backend shares, and the driver they run on.

They are written against :class:`DriverBase`, which every backend's driver is: the driver
over a network seam (:mod:`._driver`), or curl's driver over its HTTP/WebSocket client.  The
asyncio, trio and curl backends hand them out as they are; the blocking backend steps them
with :func:`~._seam.run_blocking`, as its driver never suspends.  Each holds only what the
layer below does not: the events stay in the sans-IO core until the user takes them.
"""

from __future__ import annotations

import contextlib
import random
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Generic, TypeAlias, TypeVar, cast

from plabs_proto.config import ClientConfig, check_mode
from plabs_proto.errors import LocalProtocolError, ResponseError
from plabs_proto.events import AnswerFinished, AnswerRevised, Connected, Event, TextDelta
from plabs_proto.labs.session import LabsSession
from plabs_proto.perplexity.request import Model
from plabs_proto.perplexity.session import Catalog, PerplexitySession
from plabs_proto.wire.client import Client, ClientState, PerplexityClient, Tracer

from ._config import Messages, announce_seed, default_model, make_client, make_rng, to_messages
from ._errors import check_event, opened
from ._text import AnswerText

__all__ = ["AnyDriver", "AsyncAnswer", "AsyncConnection", "AsyncQuery", "Core", "DriverBase", "OneReader"]


#: The sans-IO core a driver runs: the byte-level client (of either service), or (curl) the message-level session.
Core = TypeVar("Core", Client, LabsSession)


class DriverBase(ABC, Generic[Core]):
    """What every backend's driver keeps around its core: the core (``client``), the first error
    (every connection is closed once it is kept), whether a query is streaming (``busy``) and the
    ``Connected`` event once the session is open.  The events themselves stay in the core until
    :meth:`next_event` takes them.  Subclasses give the clock (``now``) and ``_shutdown``."""

    client: Core
    error: BaseException | None
    finished: bool
    now: Callable[[], float]
    #: A query is streaming: its reader takes the events (no idling meanwhile).
    busy: bool = False
    #: The ``Connected`` event, once the session is open.
    connected: Connected | None = None

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
            return
        self._after_command()

    def _after_command(self) -> None:
        """What a command's instructions need at once (curl's driver starts them; the socket driver
        carries them when next awaited)."""

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
        driver reads all the time); the socket driver, which reads only while awaited, overrides it."""

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

#: What a backend's driver offers the classes below (its core is a LabsClient or a LabsSession).
AnyDriver: TypeAlias = DriverBase[Any]


def _query_options(model: str, mode: str | None) -> dict[str, str]:
    """The keyword arguments of the core's ``query``: the model, and the mode when one was given
    (only the ask service has modes: a Labs core is never given one)."""
    return {"model": model} if mode is None else {"model": model, "mode": mode}


def _release(close: Callable[[], None]) -> None:
    with contextlib.suppress(Exception):
        close()


T = TypeVar("T")
R = TypeVar("R", bound="OneReader[Any]")
S = TypeVar("S", bound="AsyncConnection[Any]")


class OneReader(ABC, Generic[T]):
    """An async iterator that one task reads at a time (its subclasses give :meth:`next_item`)."""

    _what = "this reader"
    #: Nothing more to read (set by :meth:`next_item` at the end).
    done = False
    _reading = False

    def __aiter__(self) -> OneReader[T]:
        return self

    async def __anext__(self) -> T:
        if self.done:
            raise StopAsyncIteration
        if self._reading:
            raise LocalProtocolError(f"cannot read {self._what} in two tasks at once")
        self._reading = True
        try:
            return await self.next_item()
        finally:
            self._reading = False

    @abstractmethod
    async def next_item(self) -> T:
        """The next item (StopAsyncIteration at the end, after setting :attr:`done`), without the
        one-reader guard of ``__anext__``: for a caller that steps it alone (the blocking backend)."""

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
        self, make_driver: Callable[[], AnyDriver], messages: Messages, model: str, tracer: Tracer | None,
        seed: int | None,
    ) -> None:
        #: What the first ``__anext__`` makes the driver with and asks, let go then: a thousand
        #: answers may stream at once, and these are half a KiB each, needed only to start.
        self._request: tuple[Callable[[], AnyDriver], Messages] | None = (make_driver, messages)
        self._model = model
        self._tracer = tracer
        self._seed = seed
        self._driver: AnyDriver | None = None
        self._text = AnswerText()

    async def next_item(self) -> str:
        driver = self._driver
        try:
            if driver is None:
                request, self._request = self._request, None
                assert request is not None  # the driver is made once, with it (a failure ends the answer)
                make_driver, messages = request
                driver = self._driver = make_driver()
                announce_seed(self._tracer, self._seed, driver.now())
                driver.command(driver.client.connect)
                driver.command(driver.client.query, messages, model=self._model)
            client = driver.client
            while True:  # nothing else reads this driver: events the core holds are taken without a coroutine
                event = client.next_event()
                if event is None:
                    event = await driver.next_event()
                kind = type(event)
                if kind is TextDelta or kind is AnswerRevised:
                    text = self._text.take(event)
                    if text:
                        return text
                elif check_event(event, partial_text=client.partial_text, partial_reasoning=client.partial_reasoning):
                    break
        except BaseException:
            self.done = True
            if driver is not None:
                driver.close()
            raise
        self.done = True
        await driver.aclose()
        assert isinstance(event, AnswerFinished)
        rest = self._text.finish(event)  # raises AnswerRewrittenError when the text was rewritten
        if rest:
            return rest
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop: close the connection (politely if it is healthy)."""
        self.done = True
        if self._driver is not None:
            await self._driver.aclose()

    def __del__(self) -> None:
        driver = self._driver
        if driver is not None and not driver.finished:
            _release(driver.close)


class AsyncQuery(OneReader[Event]):
    """What ``Connection.query`` returns: an async iterator of the answer's events (``TextDelta``,
    ``ReasoningDelta``, ``Citations``, ``AnswerRevised``, then ``AnswerFinished``).

    The query is sent on the first ``__anext__``.  A server-reported failure raises
    :class:`~plabs_proto.errors.ResponseError` and leaves the connection usable; any other error,
    a cancellation, or leaving before ``AnswerFinished`` closes it.  After
    ``open(wait=False)`` it takes the connect ack on its way (setting ``connection.connected``),
    and raises what ``open()`` would have raised when the server refuses the handshake.
    It works on the driver alone: the driver says whether a query is streaming (``busy``).
    """

    _what = "one query's events"

    def __init__(self, driver: AnyDriver, messages: Messages, model: str, *, mode: str | None = None) -> None:
        self._driver = driver
        self._messages = messages
        self._model = model
        self._mode = mode
        self._started = False

    async def next_item(self) -> Event:
        driver = self._driver
        client = driver.client
        try:
            if not self._started:
                self._started = True
                await driver.stop_idling()
                if driver.connected is not None:
                    client.events()  # what idling left (nothing of this query's)
                elif driver.error is not None:  # open(wait=False): the handshake failed already
                    raise driver.error
                driver.command(client.query, self._messages, **_query_options(self._model, self._mode))
            while True:
                event = await driver.next_event()
                if type(event) is Connected:  # the ack, after open(wait=False)
                    driver.connected = event
                    continue
                if check_event(event, partial_text=client.partial_text, partial_reasoning=client.partial_reasoning):
                    self._finish(idle=True)
                return event
        except ResponseError:
            self._finish()
            if not driver.finished and client.state is ClientState.READY:
                driver.start_idling()
                raise  # the server failed this query; the connection goes on
            driver.close()
            raise
        except LocalProtocolError:
            self._finish()  # a misuse (or a connection already over) closes nothing
            raise
        except BaseException:
            self._finish()
            driver.close()
            raise

    def _finish(self, *, idle: bool = False) -> None:
        if not self.done:
            self.done = True
            self._driver.busy = False
            if idle:  # the answer is complete and the connection goes on
                self._driver.start_idling()

    async def aclose(self) -> None:
        """Stop reading: if the answer was still streaming, the connection closes."""
        if self.done:
            return
        self._finish()
        if self._started:
            await self._driver.aclose()

    def __del__(self) -> None:
        if not self.done:
            self._finish()
            if self._started:
                _release(self._driver.close)


class AsyncConnection(ABC, Generic[Core]):
    """One Labs session for several queries, run one after another (``async with``).

    Backends subclass it and say how to make their driver (:meth:`_new_driver`).
    """

    _driver: AnyDriver | None = None  # the driver once open; read by __del__

    def __init__(self, config: ClientConfig, *, tracer: Tracer | None = None, seed: int | None = None) -> None:
        rng, self.seed = make_rng(tracer, seed)
        self._client: Core = self._new_core(config, rng, tracer)
        self._tracer = tracer

    def _new_core(self, config: ClientConfig, rng: random.Random, tracer: Tracer | None) -> Core:
        """The sans-IO core of this connection (the byte-level client of ``config.service`` unless a
        backend says otherwise)."""
        return make_client(config, rng, tracer)  # type: ignore[return-value]

    @property
    def client(self) -> Core:
        """The sans-IO client underneath (its state, partial text, transport)."""
        return self._client

    @property
    def connected(self) -> Connected | None:
        """The ``Connected`` event, once the connection is open."""
        return self._driver.connected if self._driver is not None else None

    @abstractmethod
    def _new_driver(self) -> AnyDriver:
        """The backend's driver for this connection's client."""

    async def open(self, *, wait: bool = True) -> None:
        """Connect and wait for the Socket.IO connect ack (``async with`` calls this).

        ``open(wait=False)`` only starts the handshake and returns at once: a :meth:`query`
        made then goes out in the very step that reads the ack (as ``ask`` sends its query),
        not after a turn of the caller's code (see :class:`AsyncQuery`).
        """
        if self._driver is not None:
            raise LocalProtocolError("cannot open this connection: it was opened already")
        driver = self._driver = self._new_driver()
        try:
            announce_seed(self._tracer, self.seed, driver.now())
            driver.command(self._client.connect)
            if not wait:
                driver.start_idling()  # a backend that reads only when awaited makes progress meanwhile
                return
            event = await driver.next_event()
            while not opened(event):
                event = await driver.next_event()
            driver.connected = cast(Connected, event)
            driver.start_idling()
        except BaseException:
            driver.close()
            raise

    def query(self, messages: Messages, *, model: str | None = None, mode: str | None = None) -> AsyncQuery:
        """Ask; iterate the result for the answer's events (see :class:`AsyncQuery`).

        ``model`` None: the service's default.  ``mode`` (``service="perplexity"`` only: one of
        :data:`~plabs_proto.perplexity.request.MODES`) None: the config's ``mode``, else the session's default.  On ``service="perplexity"`` a second query is a
        follow-up in the thread of the first.  Raises :class:`~plabs_proto.errors.LocalProtocolError` at once when the
        connection is not open or another query on it is still streaming.
        """
        check_mode(self._client.config.service, mode)
        driver = self._driver
        if driver is None:
            raise LocalProtocolError("cannot query: the connection is not open (open it, or use it as a context manager)")
        if driver.busy:
            raise LocalProtocolError(
                "cannot start a query while another one is still streaming on this session: "
                "queries run one after another"
            )
        messages = to_messages(messages)
        driver.busy = True
        return AsyncQuery(driver, messages, model or default_model(self._client.config.service), mode=mode)

    async def catalog(self) -> tuple[Model, ...]:
        """The service's own models (``GET /rest/models/config/v2``, see
        :meth:`~plabs_proto.perplexity.session.PerplexitySession.request_catalog`), asked on this
        open connection between queries; ``service="perplexity"`` only.  An error of the server's
        closes the connection and is raised."""
        core = self._client
        if not isinstance(core, (PerplexityClient, PerplexitySession)):
            raise LocalProtocolError(
                f"expected service=\"perplexity\" to ask for the model catalog, got {self._client.config.service!r} "
                "(the Labs models are plabs_proto.labs.answer.MODELS)"
            )
        driver = self._driver
        if driver is None or driver.connected is None:
            raise LocalProtocolError("cannot ask for the catalog: the connection is not open (open it and wait)")
        if driver.busy:
            raise LocalProtocolError("cannot ask for the catalog while a query is still streaming on this session")
        driver.busy = True
        try:
            await driver.stop_idling()
            driver.command(core.request_catalog)
            while True:
                event = await driver.next_event()
                if type(event) is Catalog:
                    return event.models
        except LocalProtocolError:
            raise
        except BaseException:
            driver.close()
            raise
        finally:
            driver.busy = False
            if not driver.finished:
                driver.start_idling()

    async def aclose(self) -> None:
        """Close the connection (politely when it is healthy); idempotent."""
        driver = self._driver
        if driver is not None:
            try:
                await driver.stop_idling()
            except BaseException:  # cancelled while the idle task ends: close at once
                driver.close()
                raise
            await driver.aclose()

    async def __aenter__(self: S) -> S:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        driver = self._driver
        if driver is not None and not driver.finished:
            _release(driver.close)
