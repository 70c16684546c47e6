"""The blocking backend: :func:`ask` and :func:`connect` on stdlib sockets and :mod:`selectors`.

Non-blocking TCP sockets share one selector.  To get the next event the backend
carries out ``transmit()`` (connects and writes are started and finished as the
selector reports the sockets writable), then waits in ``select()`` until data
arrives or the client's ``get_timer()`` deadline (``time.monotonic()`` clock),
where it calls ``handle_timer``.  Reads take 64 KiB at a time.  (Host names are
resolved with a blocking ``getaddrinfo``, outside the deadlines.)

A :class:`Session` reads only while it is used: between queries the server's
pings wait in the socket (Engine.IO allows ``pingInterval + pingTimeout``, 45 s
on Labs, before it gives up).

Leaving an answer early closes every socket: at once when an error or Ctrl-C
interrupts the wait; after a ``break``, when the generator is dropped (at once
in CPython when nothing else refers to it).  ``contextlib.closing(ask(...))``
closes it at a known point.
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import socket
import time
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

from plabs_proto.client import ClientConfig, ClientState, LabsClient, Tracer
from plabs_proto.errors import LocalProtocolError, NetworkError, ResponseError
from plabs_proto.events import Closed, CloseStream, Connected, Event, OpenStream, SendBytes, TextDelta

from ._config import (
    DEFAULT_MODEL,
    AskOptions,
    Messages,
    SessionOptions,
    announce_seed,
    parse_options,
    to_messages,
)
from ._errors import check_event, closed_error, stream_error
from ._link import LinkBase, SessionBase, read_buffer

if TYPE_CHECKING:  # typing.Unpack is Python 3.11+; only type checkers read it here
    from typing import Unpack

__all__ = ["Session", "ask", "connect"]

_IN_PROGRESS = {errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN}
_AddrInfo = tuple[int, int, int, str, Any]


@dataclass(slots=True)
class _Socket:
    """One connection: its socket, the addresses still to try while connecting, unsent bytes."""

    sock: socket.socket
    target: OpenStream
    addresses: list[_AddrInfo]
    connecting: bool = True
    out: bytearray = field(default_factory=bytearray)
    eof: bool = False


class _Link(LinkBase):
    """A LabsClient over non-blocking sockets, pumped by whoever calls :meth:`next_event`."""

    def __init__(self, client: LabsClient) -> None:
        self.client = client
        self.now = time.monotonic
        self.proxied = client.config.proxy is not None
        self.selector = selectors.DefaultSelector()
        self._read_view = read_buffer()  # the thread's read buffer (recv_into, copied out at once)
        self.sockets: dict[int, _Socket] = {}
        self.events: deque[Event] = deque()
        self.error: BaseException | None = None
        self.finished = False

    def next_event(self) -> Event:
        """The next event; the kept error once the events before it are taken."""
        while True:
            if self.events:
                return self.events.popleft()
            if self.error is not None:
                raise self.error
            if self.finished:
                raise LocalProtocolError("cannot wait for an answer: the session is closed")
            try:
                self._transmit()
                if not self.events:
                    self._wait()
            except Exception as exc:  # LabsError from the core, wrapped socket errors, core bugs
                self._fail(exc)
            self.events.extend(self.client.events())

    # -- pumping ---------------------------------------------------------------------------------

    def _transmit(self) -> None:
        for instruction in self.client.transmit():
            kind = type(instruction)
            if kind is SendBytes:
                entry = self.sockets.get(instruction.stream_id)
                if entry is not None:
                    entry.out += cast(SendBytes, instruction).data
                    if not entry.connecting:
                        self._write(entry)
            elif kind is OpenStream:
                self._open(cast(OpenStream, instruction))
            elif kind is CloseStream:
                self._close_stream(instruction.stream_id)

    def _open(self, target: OpenStream) -> None:
        try:
            addresses = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise self._stream_error(exc, "connect to", target) from exc
        self._connect_next(target, list(addresses), None)

    def _connect_next(self, target: OpenStream, addresses: list[_AddrInfo], failure: OSError | None) -> None:
        """Start connecting to the first address that takes it (raise when none is left)."""
        while addresses:
            family, kind, proto, _, address = addresses.pop(0)
            sock = socket.socket(family, kind, proto)
            try:
                sock.setblocking(False)
                if family in (socket.AF_INET, socket.AF_INET6):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                code = sock.connect_ex(address)
            except OSError as exc:
                sock.close()
                failure = exc
                continue
            if code and code not in _IN_PROGRESS:
                sock.close()
                failure = OSError(code, os.strerror(code))
                continue
            old = self.sockets.get(target.stream_id)
            entry = _Socket(sock, target, addresses)
            if old is not None:
                entry.out = old.out
            self.sockets[target.stream_id] = entry
            self.selector.register(sock, selectors.EVENT_WRITE, entry)
            return
        self.sockets.pop(target.stream_id, None)
        raise self._stream_error(failure or OSError("no address to connect to"), "connect to", target)

    def _connected(self, entry: _Socket) -> None:
        code = entry.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self.selector.unregister(entry.sock)
            entry.sock.close()
            self._connect_next(entry.target, entry.addresses, OSError(code, os.strerror(code)))
            return
        entry.connecting = False
        self._write(entry)

    def _write(self, entry: _Socket) -> None:
        while entry.out:
            try:
                sent = entry.sock.send(entry.out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                raise self._stream_error(exc, "send to", entry.target) from exc
            del entry.out[:sent]
        mask = selectors.EVENT_WRITE if entry.out else 0
        if not entry.eof:
            mask |= selectors.EVENT_READ
        if mask:
            self.selector.modify(entry.sock, mask, entry)
        else:
            self.selector.unregister(entry.sock)

    def _wait(self) -> None:
        """Wait for the sockets or the deadline, and feed the client what happened."""
        at = self.client.get_timer()
        if not self.selector.get_map():
            if at is None:
                raise closed_error(
                    "no connection is left to read from",
                    partial_text=self.client.partial_text,
                    partial_reasoning=self.client.partial_reasoning,
                )
            time.sleep(max(0.0, at - time.monotonic()))
            ready = []
        else:
            ready = self.selector.select(None if at is None else max(0.0, at - time.monotonic()))
        for key, mask in ready:
            entry = cast(_Socket, key.data)
            if self.sockets.get(entry.target.stream_id) is not entry:
                continue  # closed by an earlier input in this round
            if entry.connecting:
                self._connected(entry)
                continue
            if mask & selectors.EVENT_WRITE:
                self._write(entry)
            if mask & selectors.EVENT_READ:
                try:
                    count = entry.sock.recv_into(self._read_view)
                    data = bytes(self._read_view[:count])
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as exc:
                    raise self._stream_error(exc, "receive from", entry.target) from exc
                if not data:
                    entry.eof = True
                    self._write(entry)  # stop watching for reads
                self.client.receive_data(entry.target.stream_id, data, time.monotonic())
                self._transmit()
        if at is not None and time.monotonic() >= at:
            self.client.handle_timer(time.monotonic())

    def _stream_error(self, exc: BaseException, action: str, target: OpenStream) -> NetworkError:
        return stream_error(
            exc,
            action=action,
            open_stream=target,
            proxied=self.proxied,
            partial_text=self.client.partial_text,
            partial_reasoning=self.client.partial_reasoning,
        )

    # -- ending ----------------------------------------------------------------------------------

    def _close_stream(self, stream_id: int) -> None:
        entry = self.sockets.pop(stream_id, None)
        if entry is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(entry.sock)
            entry.sock.close()

    def _shutdown(self) -> None:
        self.finished = True
        for stream_id in list(self.sockets):
            self._close_stream(stream_id)
        self.selector.close()

    def close(self) -> None:
        """Close politely if still healthy (one non-blocking write per socket), then close every socket."""
        if self.finished:
            return
        with contextlib.suppress(Exception):
            self.client.close(time.monotonic())
        try:
            for instruction in self.client.transmit():
                entry = self.sockets.get(instruction.stream_id)
                if entry is None:
                    continue
                if type(instruction) is SendBytes and not entry.connecting:
                    entry.out += instruction.data
                    with contextlib.suppress(OSError):
                        entry.sock.send(entry.out)
                    entry.out.clear()
                elif type(instruction) is CloseStream:
                    self._close_stream(instruction.stream_id)
        finally:
            self._shutdown()


# -- the public API --------------------------------------------------------------------------------


def ask(prompt_or_messages: Messages, **options: Unpack[AskOptions]) -> Generator[str, None, None]:
    """Ask Labs once and stream the answer text (a generator of str deltas).

    Same options, errors and tracing as :func:`plabs_proto.backends.asyncio.ask`.
    """
    messages = to_messages(prompt_or_messages)
    opts = parse_options(options, with_model=True)
    client, used_seed = opts.new_client()
    return _answer(client, messages, opts.model, opts.tracer, used_seed)


def _answer(
    client: LabsClient, messages: Messages, model: str, tracer: Tracer | None, seed: int | None
) -> Generator[str, None, None]:
    link = _Link(client)
    try:
        announce_seed(tracer, seed, time.monotonic())
        link.command(client.connect)
        link.command(client.query, messages, model=model)
        while True:
            event = link.next_event()
            if type(event) is TextDelta:
                yield event.text
            elif check_event(
                event, partial_text=client.partial_text, partial_reasoning=client.partial_reasoning
            ):
                return
    finally:
        link.close()


class Session(SessionBase):
    """One Labs connection for several queries, run one after another.

    Use ``with connect(...) as session``; :meth:`query` streams the typed events
    of one answer, ending with ``AnswerFinished``.  Leaving a ``query`` generator
    before its answer finished closes the session.  The session reads only while
    it is used (see the module docstring about idle gaps).
    """

    def __init__(self, config: ClientConfig, *, tracer: Tracer | None = None, seed: int | None = None) -> None:
        super().__init__(config, tracer=tracer, seed=seed)
        self._link: _Link | None = None

    def open(self) -> None:
        """Connect and wait for the Socket.IO connect ack."""
        if self._link is not None:
            raise LocalProtocolError("cannot open this session: it was opened already")
        link = self._link = _Link(self._client)
        try:
            announce_seed(self._tracer, self.seed, time.monotonic())
            link.command(self._client.connect)
            while True:
                event = link.next_event()
                if type(event) is Connected:
                    self.connected = event
                    return
                if type(event) is Closed:
                    raise closed_error(event.reason, partial_text="", partial_reasoning="")
        except BaseException:
            link.close()
            raise

    def query(self, messages: Messages, *, model: str = DEFAULT_MODEL) -> Generator[Event, None, None]:
        """Ask and stream the answer's events (``TextDelta``, ``ReasoningDelta``, ``Citations``,
        ``AnswerRevised``, then ``AnswerFinished``); the query is sent on the first ``next()``.

        A server-reported failure raises :class:`~plabs_proto.errors.ResponseError`
        (the session stays usable); any other error, or leaving before
        ``AnswerFinished``, closes the session.  Raises
        :class:`~plabs_proto.errors.LocalProtocolError` at once when the session is
        not open or another query on it is still streaming.
        """
        link = self._link
        if link is None:
            raise LocalProtocolError("cannot query: the session is not open (use `with connect(...)`)")
        self._check_idle()
        return self._query(link, to_messages(messages), model)

    def _check_idle(self) -> None:
        if self._busy:
            raise LocalProtocolError(
                "cannot start a query while another one is still streaming on this session: "
                "queries run one after another"
            )

    def _query(self, link: _Link, messages: Messages, model: str) -> Generator[Event, None, None]:
        self._check_idle()  # again: two queries may have been made before either started
        self._busy = True
        done = False
        client = self._client
        try:
            link.events.clear()
            link.command(client.query, messages, model=model)
            while True:
                event = link.next_event()
                if type(event) is Connected:
                    continue
                try:
                    done = check_event(
                        event, partial_text=client.partial_text, partial_reasoning=client.partial_reasoning
                    )
                except ResponseError:
                    done = not link.finished and client.state is ClientState.READY  # the session goes on
                    raise
                yield event
                if done:
                    return
        except LocalProtocolError:
            done = True  # a misuse (or a session already over) closes nothing
            raise
        finally:
            self._busy = False
            if not done:
                link.close()

    def close(self) -> None:
        """Close the session (politely when it is healthy); idempotent."""
        if self._link is not None:
            self._link.close()

    def __enter__(self) -> Session:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if self._link is not None:
            with contextlib.suppress(Exception):
                self._link.close()


def connect(**options: Unpack[SessionOptions]) -> Session:
    """A :class:`Session` (not open yet: use ``with``).  Options as for :func:`ask`; ``timeout``
    bounds each query."""
    opts = parse_options(options, with_model=False)
    return Session(opts.config, tracer=opts.tracer, seed=opts.seed)
