"""The asyncio backend: :func:`ask`, :func:`connect` and the gpt4free-style :class:`PerplexityLabs`.

It drives :class:`~plabs_proto.client.LabsClient` the way aioquic's asyncio
protocol drives QUIC: every TCP connection is an :class:`asyncio.Protocol` whose
callbacks feed received bytes straight into the client; after every input the
backend carries out ``transmit()`` and re-arms one ``loop.call_at`` timer on
``get_timer()``.  The consumer (iterating ``ask(...)`` or ``Session.query(...)``)
only waits for the events the client produced.  So heartbeats are answered even
while the consumer is busy, or between the queries of a :class:`Session`.

Leaving an answer early (``break``, an exception, cancellation) closes the
connection: at once on an exception or cancellation, and when the iterator is
collected after a ``break`` (right away in CPython, as nothing else refers to
it).  To close at a known point, use it as an async context manager (or
:func:`contextlib.aclosing`)::

    async with ask("Hello", model="sonar") as answer:
        async for text in answer:
            if "stop" in text:
                break
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import deque
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any, cast

from plabs_proto.client import LabsClient
from plabs_proto.errors import LocalProtocolError
from plabs_proto.events import CloseStream, Event, OpenStream, SendBytes

from ._async_api import AsyncAnswer, AsyncSession
from ._config import DEFAULT_MODEL, MODELS, AskOptions, Messages, SessionOptions, parse_options, to_messages
from ._link import READ_SIZE, LinkBase, read_buffer

if TYPE_CHECKING:  # typing.Unpack is Python 3.11+; only type checkers read it here
    from typing import Unpack

__all__ = ["PerplexityLabs", "Session", "ask", "connect"]

_CLOSE_WAIT = 1.0  # seconds aclose() waits for the sockets to finish closing before aborting them


class _StreamProtocol(asyncio.BufferedProtocol):
    """One TCP connection of a :class:`_Link`: hands everything to the link.

    A buffered protocol: the loop reads (``recv_into``) into the thread's shared
    read buffer instead of allocating a fresh 256 KiB bytes object for every read;
    ``buffer_updated`` copies out what arrived before any other read can happen.
    (A proactor loop keeps reads pending across callbacks: there each connection
    gets a buffer of its own.)
    """

    def __init__(self, link: _Link, stream_id: int) -> None:
        self.link = link
        self.stream_id = stream_id
        proactor = "Proactor" in type(link.loop).__name__
        self._view = memoryview(bytearray(READ_SIZE)) if proactor else read_buffer()
        self.transport: asyncio.Transport | None = None
        self.eof = False
        self.lost: asyncio.Future[None] = link.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.link.made(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self.link.receive(self.stream_id, bytes(self._view[:nbytes]))

    def eof_received(self) -> bool:
        self.eof = True
        self.link.receive(self.stream_id, b"")
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)
        self.link.lost(self, exc)


class _Link(LinkBase):
    """A LabsClient over asyncio transports.

    Core inputs come from protocol callbacks and the timer; events are queued
    for the consumer, who waits in :meth:`next_event`.  The first error (from the
    core or a socket) is kept, every connection is closed, and the consumer gets
    it once it has taken the events that came before it.
    """

    def __init__(self, client: LabsClient, loop: asyncio.AbstractEventLoop) -> None:
        self.client = client
        self.loop = loop
        self.now = loop.time
        self.proxied = client.config.proxy is not None
        self.streams: dict[int, _StreamProtocol] = {}
        self.opening: dict[int, asyncio.Task[None]] = {}
        self.pending: dict[int, list[bytes]] = {}  # writes for connections still opening
        self.targets: dict[int, OpenStream] = {}
        self.protocols: set[_StreamProtocol] = set()  # every protocol whose connection is not lost yet
        self.events: deque[Event] = deque()
        self.error: BaseException | None = None
        self.finished = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._waiter: asyncio.Future[None] | None = None

    # -- inputs ----------------------------------------------------------------------------------

    def receive(self, stream_id: int, data: bytes) -> None:
        if self.finished:
            return
        try:
            self.client.receive_data(stream_id, data, self.loop.time())
        except Exception as exc:  # LabsError, or a core bug: the consumer sees it either way
            self._fail(exc)
            return
        self._after()

    def _on_timer(self) -> None:
        at = self._timer_at
        self._timer = None
        self._timer_at = None
        if self.finished or at is None:
            return
        try:
            self.client.handle_timer(max(self.loop.time(), at))
        except Exception as exc:
            self._fail(exc)
            return
        self._after()

    # -- connections -----------------------------------------------------------------------------

    def made(self, protocol: _StreamProtocol) -> None:
        transport = protocol.transport
        assert transport is not None
        self.protocols.add(protocol)
        stream_id = protocol.stream_id
        if self.finished or self.opening.pop(stream_id, None) is None:
            transport.close()  # closed (or failed) while the connection was being made
            return
        self.streams[stream_id] = protocol
        for data in self.pending.pop(stream_id, ()):
            transport.write(data)

    def lost(self, protocol: _StreamProtocol, exc: Exception | None) -> None:
        self.protocols.discard(protocol)
        stream_id = protocol.stream_id
        if self.streams.get(stream_id) is not protocol:
            return  # we closed it
        del self.streams[stream_id]
        if self.finished:
            return
        if exc is not None:
            self._fail(self._stream_error(exc, "receive from", stream_id))
        elif not protocol.eof:
            self.receive(stream_id, b"")

    async def _open(self, target: OpenStream) -> None:
        try:
            await self.loop.create_connection(
                lambda: _StreamProtocol(self, target.stream_id), target.host, target.port
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self.opening.pop(target.stream_id, None) is not None and not self.finished:
                if isinstance(exc, OSError):
                    self._fail(self._stream_error(exc, "connect to", target.stream_id))
                else:
                    self._fail(exc)

    # -- outputs ---------------------------------------------------------------------------------

    def _after(self) -> None:
        self._transmit()
        self.events.extend(self.client.events())
        at = self.client.get_timer()
        if at != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._timer_at = at
            if at is not None:
                self._timer = self.loop.call_at(at, self._on_timer)
        if self.events:
            self._wake()

    def _transmit(self) -> None:
        for instruction in self.client.transmit():
            kind = type(instruction)
            stream_id = instruction.stream_id
            if kind is SendBytes:
                data = cast(SendBytes, instruction).data
                protocol = self.streams.get(stream_id)
                if protocol is not None and protocol.transport is not None:
                    protocol.transport.write(data)
                else:
                    waiting = self.pending.get(stream_id)
                    if waiting is not None:
                        waiting.append(data)
            elif kind is OpenStream:
                target = cast(OpenStream, instruction)
                self.targets[stream_id] = target
                self.pending[stream_id] = []
                self.opening[stream_id] = self.loop.create_task(self._open(target))
            elif kind is CloseStream:
                self._close_stream(stream_id)

    def _close_stream(self, stream_id: int) -> None:
        self.pending.pop(stream_id, None)
        task = self.opening.pop(stream_id, None)
        if task is not None:
            task.cancel()
        protocol = self.streams.pop(stream_id, None)
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        with contextlib.suppress(Exception):
            self._transmit()  # what the core queued with its error (a TLS alert, CloseStream...)
        self._shutdown()

    def _after_command(self) -> None:
        self._after()

    def _shutdown(self) -> None:
        self.finished = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = None
        for stream_id in list(self.opening) + list(self.streams):
            self._close_stream(stream_id)
        self._wake()

    # -- the consumer's side ---------------------------------------------------------------------

    async def next_event(self) -> Event:
        """The next event; the kept error once the events before it are taken."""
        while True:
            if self.events:
                return self.events.popleft()
            if self.error is not None:
                raise self.error
            if self.finished:
                raise LocalProtocolError("cannot wait for an answer: the session is closed")
            if self._waiter is not None:
                raise LocalProtocolError("cannot wait for this session's events in two tasks at once")
            waiter = self.loop.create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                self._waiter = None

    def close(self) -> None:
        """Close politely if still healthy (the close packets are written, not awaited), then close
        every connection at once."""
        if not self.finished:
            with contextlib.suppress(Exception):
                self.client.close(self.loop.time())
                self._transmit()
            self._shutdown()

    async def aclose(self) -> None:
        """:meth:`close`, then wait (briefly) until the sockets are really closed and no
        connection attempt is left running."""
        waits: list[asyncio.Future[Any]] = [task for task in self.opening.values() if not task.done()]
        self.close()
        waits += [p.lost for p in self.protocols]
        if not waits:
            return
        try:
            await asyncio.wait(waits, timeout=_CLOSE_WAIT)
        finally:
            for protocol in list(self.protocols):
                if protocol.transport is not None:
                    protocol.transport.abort()


# -- the public API --------------------------------------------------------------------------------


def ask(prompt_or_messages: Messages, **options: Unpack[AskOptions]) -> AsyncAnswer:
    """Ask Labs once and stream the answer text as it grows: ``async for text in ask(...)``.

    ``prompt_or_messages`` is a prompt (one user message) or a list of
    ``{"role", "content"}`` messages.  ``timeout`` bounds the whole call, connecting
    included (``None``: no overall deadline); the other keyword arguments are
    :class:`~plabs_proto.client.ClientConfig` fields (``origin``, ``jwt``, ``version``,
    ``first_text_timeout``, ``connect_timeout``, ``max_message_size``, ``tls``...).
    ``proxy`` is ``http://[user:pass@]host:port`` or ``socks5://[user:pass@]host:port``.

    Only the answer text is yielded (no reasoning: use :func:`connect` for the typed
    events), and the texts join to the server's final answer, ``AnswerFinished.text``.
    Text once yielded cannot be taken back: should the server rewrite it (an
    ``AnswerRevised`` whose text does not begin with what was yielded), the answer
    is read to its end and :class:`~plabs_proto.errors.AnswerRewrittenError` is raised,
    with the final answer in ``text`` and what was yielded in ``yielded``.  A
    revision of the reasoning alone (``r1-1776`` answers without ``</think>``) is no
    rewrite.  Errors: a server-reported failure raises
    :class:`~plabs_proto.errors.ResponseError`; protocol errors, timeouts
    (:class:`~plabs_proto.errors.LabsTimeout`) and socket failures
    (:class:`~plabs_proto.errors.NetworkError`, caused by the ``OSError``) carry ``partial_text``.

    ``tracer`` sees every byte above TLS; then the client's randomness comes from
    ``random.Random(seed)`` (a fresh seed when ``seed`` is None, announced to the
    tracer as ``tracer(now, 0, "seed", b"<seed>")``) so the trace can be replayed.

    Options are checked at once (``LocalProtocolError``); the connection opens on
    the first iteration and closes when the answer ends, on an error or
    cancellation, on ``aclose()``/``async with``, or when the object is collected.
    """
    messages = to_messages(prompt_or_messages)
    opts = parse_options(options, with_model=True)
    client, used_seed = opts.new_client()
    return AsyncAnswer(lambda: _Link(client, asyncio.get_running_loop()), messages, opts.model, opts.tracer, used_seed)


class Session(AsyncSession):
    """One Labs connection for several queries, run one after another.

    ``async with connect(...) as session:`` then ``async for event in
    session.query(...)``.  Between queries the connection stays up: heartbeats are
    answered in the background.  Leaving a query before ``AnswerFinished`` closes
    the session.
    """

    def _new_link(self) -> _Link:
        return _Link(self._client, asyncio.get_running_loop())


def connect(**options: Unpack[SessionOptions]) -> Session:
    """A :class:`Session` (not open yet: use ``async with``).  Options as for :func:`ask`;
    ``timeout`` bounds each query."""
    opts = parse_options(options, with_model=False)
    return Session(opts.config, tracer=opts.tracer, seed=opts.seed)


# The options of ask that pass through a provider call's kwargs (model and proxy come as arguments).
_ASK_OPTIONS = AskOptions.__optional_keys__ - {"model", "proxy"}


class PerplexityLabs:
    """The gpt4free-style provider interface of the original code, on this backend."""

    url = "https://labs.perplexity.ai"
    working = True
    default_model = DEFAULT_MODEL
    models = list(MODELS)

    @classmethod
    async def create_async_generator(
        cls, model: str, messages: Messages, proxy: str | None = None, **kwargs: Any
    ) -> AsyncGenerator[str, None]:
        """Yield the answer text in pieces (an empty ``model`` means :attr:`default_model`).

        The pieces join to the server's final answer, as with :func:`ask` (and, as
        there, :class:`~plabs_proto.errors.AnswerRewrittenError` when the server
        rewrote text already yielded).

        The options of :func:`ask` (``server``, ``timeout``...) pass through
        ``kwargs``; other keyword arguments that gpt4free hands every provider
        (``stream``, ``temperature``...) are ignored, as the original provider did.
        """
        options = {name: value for name, value in kwargs.items() if name in _ASK_OPTIONS}
        async with ask(messages, model=model or cls.default_model, proxy=proxy, **options) as answer:
            async for text in answer:
                yield text
