"""What the three backends share, with no I/O of its own.

* :func:`build_config` turns the keyword arguments of ``ask``/``connect`` into a
  :class:`~plabs_proto.client.ClientConfig` (and maps ``timeout``);
* :func:`to_messages` turns a prompt string into one user message;
* :func:`make_rng` picks the randomness (system randomness, or a seeded generator
  when a trace must be replayable);
* :func:`stream_error` and :func:`closed_error` word the errors a backend raises
  itself (a socket failed, the session ended early), without ever naming proxy
  credentials;
* :class:`AnswerText` keeps the promise of the text-only APIs (``ask``): what they
  yield joins to the server's final answer, or they raise
  :class:`~plabs_proto.errors.AnswerRewrittenError`;
* :class:`AsyncAnswer`, :class:`AsyncQuery` and :class:`AsyncSession`: the answer
  stream, query stream and session of the two async backends, written against the
  small :class:`AsyncLink` interface each backend implements over its sockets.

``timeout`` is the overall deadline of a query, counted from the moment it is
asked.  ``ask`` starts the connection and the query at the same instant, so it
becomes ``ClientConfig.query_timeout``, which covers connecting too;
``connect_timeout`` is capped by it (at most :data:`CONNECT_TIMEOUT`).  A keyword
argument naming a ``ClientConfig`` field (``connect_timeout=``,
``first_text_timeout=``, ``query_timeout=``...) wins over this mapping.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Generic, Protocol, TypeVar

from plabs_proto.client import ClientConfig, ClientState, LabsClient, Tracer
from plabs_proto.errors import AnswerRewrittenError, LocalProtocolError, RemoteProtocolError, ResponseError
from plabs_proto.events import (
    AnswerFinished,
    AnswerRevised,
    Closed,
    Connected,
    Event,
    OpenStream,
    QueryFailed,
    TextDelta,
)
from plabs_proto.labs import normalize_messages
from plabs_proto.proxy import ProxyConfig
from plabs_proto.trace import SEED_DIRECTION

__all__ = [
    "CONNECT_TIMEOUT",
    "DEFAULT_MODEL",
    "DEFAULT_SERVER",
    "DEFAULT_TIMEOUT",
    "MODELS",
    "READ_SIZE",
    "SEED_DIRECTION",
    "AnswerText",
    "AsyncAnswer",
    "AsyncLink",
    "AsyncQuery",
    "AsyncSession",
    "Headers",
    "LinkBase",
    "Messages",
    "SessionBase",
    "announce_seed",
    "build_config",
    "check_event",
    "closed_error",
    "make_rng",
    "read_buffer",
    "stream_error",
    "to_messages",
]

DEFAULT_MODEL = "r1-1776"
DEFAULT_SERVER = "https://www.perplexity.ai"
MODELS = ["r1-1776", "sonar-pro", "sonar", "sonar-reasoning", "sonar-reasoning-pro"]
#: Seconds a whole ``ask`` may take (connecting included); ``None`` means no overall deadline.
DEFAULT_TIMEOUT = 300.0
#: Upper bound of the connect deadline that ``timeout`` implies.
CONNECT_TIMEOUT = 30.0
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

Messages = str | Sequence[Mapping[str, Any]]
Headers = Mapping[str, str] | Iterable[tuple[str, str]] | None

# ClientConfig fields ask/connect take as named parameters; the rest may come as **config.
_NAMED = frozenset({"server", "transport", "proxy", "ssl_context", "cafile", "headers"})
_EXTRAS = frozenset(f.name for f in dataclasses.fields(ClientConfig)) - _NAMED
_TIMEOUTS = frozenset({"connect_timeout", "first_text_timeout", "query_timeout"})
_STRINGS = frozenset({"origin", "jwt", "version", "user_agent", "path"})


def _check_seconds(name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise LocalProtocolError(f"expected {name} as a number of seconds > 0 or None, got {value!r:.60}")
    return float(value)


def _headers(headers: Headers) -> tuple[tuple[str, str], ...]:
    if headers is None:
        return ()
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    out: list[tuple[str, str]] = []
    for pair in pairs:
        if (
            not isinstance(pair, tuple)
            or len(pair) != 2
            or not isinstance(pair[0], str)
            or not isinstance(pair[1], str)
        ):
            raise LocalProtocolError(
                f"expected headers as a mapping or (name, value) pairs of str, got {pair!r:.60}"
            )
        out.append((pair[0], pair[1]))
    return tuple(out)


def build_config(
    *,
    server: str,
    proxy: str | ProxyConfig | None,
    transport: str,
    ssl_context: Any,
    cafile: str | None,
    timeout: float | None,
    headers: Headers,
    extras: Mapping[str, Any],
) -> ClientConfig:
    """The :class:`ClientConfig` for ``ask``/``connect`` (see the module docstring for ``timeout``).

    ``extras`` are the other keyword arguments; each must name a ``ClientConfig``
    field (``origin``, ``jwt``, ``version``, ``user_agent``, ``path``, ``tls``,
    ``connect_timeout``, ``first_text_timeout``, ``query_timeout``,
    ``max_message_size``), else :class:`LocalProtocolError`.  ``max_message_size``
    is the receive limit in bytes (the largest message taken from the server);
    ``None`` keeps the default, :data:`~plabs_proto.client.DEFAULT_MAX_MESSAGE_SIZE`.
    """
    unknown = sorted(set(extras) - _EXTRAS)
    if unknown:
        raise LocalProtocolError(
            f"expected keyword arguments among {', '.join(sorted(_EXTRAS))} "
            f"(besides the named ones), got {', '.join(map(repr, unknown))}"
        )
    if not isinstance(server, str):
        raise LocalProtocolError(f"expected the server URL as a str, got {type(server).__name__}")
    if proxy is not None and not isinstance(proxy, str | ProxyConfig):
        raise LocalProtocolError(f"expected the proxy as a URL str or a ProxyConfig, got {type(proxy).__name__}")
    overall = _check_seconds("timeout", timeout)
    values: dict[str, Any] = {
        "server": server,
        "proxy": proxy,
        "transport": transport,
        "ssl_context": ssl_context,
        "cafile": cafile,
        "headers": _headers(headers),
        "query_timeout": overall,
        "connect_timeout": CONNECT_TIMEOUT if overall is None else min(overall, CONNECT_TIMEOUT),
    }
    for name, value in extras.items():
        if name in _TIMEOUTS:
            value = _check_seconds(name, value)
        elif name in _STRINGS and not isinstance(value, str):
            raise LocalProtocolError(f"expected {name} as a str, got {value!r:.60}")
        elif name == "tls" and value is not None and not isinstance(value, bool):
            raise LocalProtocolError(f"expected tls as True, False or None, got {value!r:.60}")
        elif name == "max_message_size":
            if value is None:
                continue  # the default receive limit
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LocalProtocolError(
                    f"expected max_message_size as an int >= 1 (bytes) or None, got {value!r:.60}"
                )
        values[name] = value
    return ClientConfig(**values)


def to_messages(prompt_or_messages: Messages) -> list[dict[str, str]]:
    """The conversation, checked now: a prompt string becomes ``[{"role": "user", "content": prompt}]``.

    Messages are normalised as Labs takes them (see
    :func:`plabs_proto.labs.normalize_messages`); anything malformed raises
    :class:`~plabs_proto.errors.LocalProtocolError` here, before any connection.
    """
    return normalize_messages(prompt_or_messages)


def make_rng(tracer: Tracer | None, seed: int | None) -> tuple[random.Random, int | None]:
    """The generator for ``LabsClient(rng=...)`` and the seed it was made from.

    With a ``seed``, ``random.Random(seed)``.  Without one, ``random.SystemRandom()``;
    but when a ``tracer`` records the session, a fresh 128-bit seed is drawn from
    ``os.urandom`` so that the trace can be replayed (the backend hands it to the
    tracer, see :func:`announce_seed`).
    """
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise LocalProtocolError(f"expected seed as an int or None, got {seed!r:.60}")
        return random.Random(seed), seed
    if tracer is not None:
        seed = int.from_bytes(os.urandom(16), "big")
        return random.Random(seed), seed
    return random.SystemRandom(), None


def announce_seed(tracer: Tracer | None, seed: int | None, now: float) -> None:
    """Tell the tracer the seed: ``tracer(now, 0, "seed", b"<decimal seed>")`` (stream 0 is never a socket)."""
    if tracer is not None and seed is not None:
        tracer(now, 0, SEED_DIRECTION, str(seed).encode("ascii"))


def _peer(open_stream: OpenStream | None, proxied: bool) -> str:
    if open_stream is None:
        return "the server"
    host = f"[{open_stream.host}]" if ":" in open_stream.host else open_stream.host
    return f"the {'proxy' if proxied else 'server'} at {host}:{open_stream.port}"


def stream_error(
    exc: BaseException,
    *,
    action: str,
    open_stream: OpenStream | None,
    proxied: bool,
    partial_text: str,
    partial_reasoning: str,
) -> RemoteProtocolError:
    """A :class:`RemoteProtocolError` for a socket failure (``action`` is "connect to", "send to"...).

    The message names the host and port the socket went to (the proxy's when one is
    used: proxy credentials are never part of it) and how much of the answer came.
    """
    what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    got = f" after {len(partial_text)} characters of the answer" if partial_text else ""
    return RemoteProtocolError(
        f"expected to {action} {_peer(open_stream, proxied)}, but the connection failed{got} ({what})",
        partial_text=partial_text,
        partial_reasoning=partial_reasoning,
    )


def closed_error(reason: str, *, partial_text: str, partial_reasoning: str) -> RemoteProtocolError:
    """The error for a session that ended (``Closed`` event) while an answer or the connect ack was awaited."""
    return RemoteProtocolError(
        f"expected the answer to finish, but the session ended: {reason}",
        partial_text=partial_text,
        partial_reasoning=partial_reasoning,
    )


def check_event(event: Event, *, partial_text: str, partial_reasoning: str) -> bool:
    """Judge an event met while a query streams: True once the answer is finished.

    ``QueryFailed`` raises its :class:`~plabs_proto.errors.ResponseError`; ``Closed``
    raises :func:`closed_error`.  Anything else is False.
    """
    kind = type(event)
    if kind is AnswerFinished:
        return True
    if kind is QueryFailed:
        assert isinstance(event, QueryFailed)
        raise event.error()
    if kind is Closed:
        assert isinstance(event, Closed)
        raise closed_error(event.reason, partial_text=partial_text, partial_reasoning=partial_reasoning)
    return False


# -- the text a text-only API yields ------------------------------------------------------------------


class AnswerText:
    """What a text-only API (``ask``) yields of one query: the answer text, and only it.

    Feed it the query's ``TextDelta`` and ``AnswerRevised`` events with
    :meth:`take` and yield what it returns; at ``AnswerFinished`` yield what
    :meth:`finish` returns.  The promise: the text yielded joins to
    ``AnswerFinished.text``, or :meth:`finish` raises
    :class:`~plabs_proto.errors.AnswerRewrittenError`.

    A TextDelta is yielded as it comes.  An ``AnswerRevised`` whose text begins
    with what was yielded (the decoder repeats the text unchanged when only the
    reasoning was rewritten, as for ``r1-1776``) yields the rest of it.  One
    that rewrites yielded text cannot be followed: nothing more is yielded
    until a later revision or the final answer begins with the yielded text
    again, and :meth:`finish` raises when the final answer does not.
    """

    __slots__ = ("_following", "_parts")

    def __init__(self) -> None:
        self._parts: list[str] = []  # what was yielded
        self._following = True  # False after a revision that rewrote yielded text

    @property
    def yielded(self) -> str:
        """The text yielded so far."""
        if len(self._parts) > 1:
            self._parts[:] = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    def take(self, event: Event) -> str:
        """The text to yield for ``event`` (``""``: nothing)."""
        kind = type(event)
        if kind is TextDelta:
            assert isinstance(event, TextDelta)
            if self._following and event.text:
                self._parts.append(event.text)
                return event.text
            return ""
        if kind is AnswerRevised:
            assert isinstance(event, AnswerRevised)
            return self._catch_up(event.text)
        return ""

    def finish(self, finished: AnswerFinished) -> str:
        """The rest of the final answer to yield (usually ``""``), or raise AnswerRewrittenError."""
        rest = self._catch_up(finished.text)
        if self._following:
            return rest
        yielded = self.yielded
        final = finished.text
        same = 0
        while same < min(len(yielded), len(final)) and yielded[same] == final[same]:
            same += 1
        raise AnswerRewrittenError(
            f"expected the final answer to begin with the {len(yielded)} characters already yielded, "
            f"but the server rewrote the answer after they were yielded: its final text "
            f"({len(final)} characters) differs from them at character {same}; "
            "the final answer is in the error's text",
            text=final,
            reasoning=finished.reasoning,
            yielded=yielded,
        )

    def _catch_up(self, text: str) -> str:
        yielded = self.yielded
        if not text.startswith(yielded):
            self._following = False
            return ""
        self._following = True
        rest = text[len(yielded) :]
        if rest:
            self._parts.append(rest)
        return rest


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

    @abstractmethod
    def _shutdown(self) -> None:
        """Close every connection at once."""


# -- the async answer stream and session, shared by the asyncio and trio backends ----------------------
#
# They are classes rather than async generators: trio warns (ResourceWarning) about every
# async generator collected before it was exhausted, and an abandoned answer must not warn.
# An object can close its sockets synchronously from __del__ instead.


class AsyncLink(Protocol):
    """What a backend's connection driver offers the shared classes below."""

    client: LabsClient
    events: deque[Event]
    finished: bool

    def now(self) -> float:
        """The backend's clock (the one the client's deadlines use)."""

    def command(self, method: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        """Call a client command with ``now=``; misuse raises, other errors are kept for next_event."""

    async def next_event(self) -> Event:
        """The next event (pumping I/O as needed); raises the session's error after the events before it."""

    def close(self) -> None:
        """Close every connection at once, synchronously (safe from ``__del__``)."""

    async def aclose(self) -> None:
        """Close politely if the session is healthy (bounded in time), then every connection."""


def _release(close: Callable[[], None]) -> None:
    with contextlib.suppress(Exception):
        close()


T = TypeVar("T")


class _OneReader(ABC, Generic[T]):
    """An async iterator that one task reads at a time (its subclasses give ``_next``)."""

    _what = "this stream"
    _done = False
    _reading = False

    def __aiter__(self) -> _OneReader[T]:
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


class AsyncAnswer(_OneReader[str]):
    """What ``ask`` returns: an async iterator of answer text deltas (str).

    The texts join to the server's final answer (``AnswerFinished.text``), or
    the iteration ends with :class:`~plabs_proto.errors.AnswerRewrittenError`
    when the server rewrote text already yielded (see :class:`AnswerText`).

    The connection opens on the first ``__anext__`` and closes when the answer is
    complete, on an error or cancellation, on :meth:`aclose` (or leaving
    ``async with``), and, failing all that, when the object is collected.
    """

    _what = "one answer"

    def __init__(
        self,
        make_link: Callable[[], AsyncLink],
        messages: Messages,
        model: str,
        tracer: Tracer | None,
        seed: int | None,
    ) -> None:
        self._make_link = make_link
        self._messages = messages
        self._model = model
        self._tracer = tracer
        self._seed = seed
        self._link: AsyncLink | None = None
        self._text = AnswerText()
        self._done = False
        self._reading = False

    @property
    def seed(self) -> int | None:
        """The seed of the client's randomness (None: system randomness)."""
        return self._seed

    async def _next(self) -> str:
        link = self._link
        try:
            if link is None:
                link = self._link = self._make_link()
                announce_seed(self._tracer, self._seed, link.now())
                link.command(link.client.connect)
                link.command(link.client.query, self._messages, model=self._model)
            client = link.client
            while True:
                event = await link.next_event()
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

    async def __aenter__(self) -> AsyncAnswer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        link = self._link
        if link is not None and not link.finished:
            _release(link.close)


class AsyncQuery(_OneReader[Event]):
    """What ``Session.query`` returns: an async iterator of the answer's events.

    ``TextDelta``, ``ReasoningDelta``, ``Citations``, ``AnswerRevised``, then
    ``AnswerFinished``.  The query is sent on the first ``__anext__``.  A
    server-reported failure raises :class:`~plabs_proto.errors.ResponseError` and
    leaves the session usable; any other error, a cancellation, or leaving before
    ``AnswerFinished`` closes the session.
    """

    _what = "one query's events"

    def __init__(self, session: AsyncSession, link: AsyncLink, messages: Messages, model: str) -> None:
        self._session = session
        self._link = link
        self._messages = messages
        self._model = model
        self._started = False
        self._done = False
        self._reading = False

    async def _next(self) -> Event:
        link = self._link
        client = link.client
        try:
            if not self._started:
                self._started = True
                link.events.clear()
                link.command(client.query, self._messages, model=self._model)
            while True:
                event = await link.next_event()
                if type(event) is Connected:
                    continue
                if check_event(event, partial_text=client.partial_text, partial_reasoning=client.partial_reasoning):
                    self._finish()
                return event
        except ResponseError:
            self._finish()
            if not link.finished and client.state is ClientState.READY:
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

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            self._session._busy = False

    async def aclose(self) -> None:
        """Stop reading: if the answer was still streaming, the session closes."""
        if self._done:
            return
        self._finish()
        if self._started:
            await self._link.aclose()

    async def __aenter__(self) -> AsyncQuery:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        if not self._done:
            self._finish()
            if self._started:
                _release(self._link.close)


class SessionBase:
    """What every backend's ``Session`` holds: its client, seed, tracer and whether a query runs."""

    def __init__(self, config: ClientConfig, *, tracer: Tracer | None = None, seed: int | None = None) -> None:
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


class AsyncSession(SessionBase, ABC):
    """One Labs connection for several queries, run one after another (``async with``).

    Backends subclass it and say how to make the connection driver (:meth:`_new_link`).
    """

    def __init__(self, config: ClientConfig, *, tracer: Tracer | None = None, seed: int | None = None) -> None:
        self._link: AsyncLink | None = None  # first: __del__ reads it even if the client refuses the config
        super().__init__(config, tracer=tracer, seed=seed)

    @abstractmethod
    def _new_link(self) -> AsyncLink:
        """The backend's connection driver for this session's client."""

    async def open(self) -> None:
        """Connect and wait for the Socket.IO connect ack."""
        if self._link is not None:
            raise LocalProtocolError("cannot open this session: it was opened already")
        link = self._link = self._new_link()
        try:
            announce_seed(self._tracer, self.seed, link.now())
            link.command(self._client.connect)
            while True:
                event = await link.next_event()
                if type(event) is Connected:
                    self.connected = event
                    return
                if type(event) is Closed:
                    raise closed_error(event.reason, partial_text="", partial_reasoning="")
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
            raise LocalProtocolError("cannot query: the session is not open (use `async with connect(...)`)")
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
            await self._link.aclose()

    async def __aenter__(self) -> AsyncSession:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        link = self._link
        if link is not None and not link.finished:
            _release(link.close)
