"""The byte level: a message-level session carried over streams, every byte in and out.

:class:`Client` carries any message-level session (the session: Labs's
:class:`~plabs_proto.labs.session.LabsSession`, or another service's) without
doing any I/O.  It turns each ``HTTPRequest`` and ``WebSocketConnect`` the
session asks for into a request on a stream (h11, wsproto, TLS over MemoryBIO,
a proxy tunnel), keeps cookies, reuses a connection while the server keeps it
alive (one per lane of requests), and opens the session's further connections
at ``connect()`` so their handshakes run beside the first request's.  HTTP body
and WebSocket frame limits are checked here, from the bytes, before anything is
buffered.  It talks to the session only through the session's public calls:
the session's instructions say what to do (including when the transport
switched and how to close a WebSocket), its inputs take what came back.

Its caller (a backend, or a test) does three things in a loop:

1. carries out ``transmit()``: open the TCP connections it names, write the
   bytes it gives, close the connections it is done with;
2. feeds what each connection receives to ``receive_data(stream_id, data, now)``
   (``b""`` when the connection reaches end of file);
3. fires ``handle_timer(now)`` when ``get_timer()``'s deadline comes;

and reads ``next_event()`` for what happened.  User commands are
``connect(now)``, ``query(..., now=...)`` and ``close(now)``.

:class:`LabsClient` is a client of a Labs session.  Three transports are offered:

``"upgrade"`` (default)
    Like the browser: the Engine.IO polling handshake (GET the open packet,
    POST the Socket.IO CONNECT), then a WebSocket upgrade (``2probe``/``3probe``,
    ``5``).  The WebSocket's connection opens beside the first one and its
    upgrade request goes out with the CONNECT POST; the connect ack then comes
    on the WebSocket (or on a poll, if the server sends it there).
``"websocket"``
    Straight to a WebSocket: fewest round trips.
``"polling"``
    HTTP long-polling only (two connections: one for GETs, one for POSTs), for
    networks where WebSockets are blocked.

Fatal errors are raised from the method that discovered them, after the
session has moved to ERROR and ``CloseStream`` was queued for every
connection.  They carry the answer text received so far.
"""

from __future__ import annotations

import random
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

from plabs_proto.config import ClientConfig, split_server
from plabs_proto.errors import LabsError, LocalProtocolError, RemoteProtocolError
from plabs_proto.events import (
    CloseStream,
    Event,
    HTTPRequest,
    Instruction,
    OpenStream,
    SendBytes,
    SessionInstruction,
    ThreadIdentity,
    TransportSwitched,
    WebSocketClose,
    WebSocketConnect,
    WebSocketSend,
)
from plabs_proto.labs.answer import DEFAULT_MODEL
from plabs_proto.labs.engineio_session import BODY_SLACK
from plabs_proto.labs.session import LabsSession
from plabs_proto.perplexity import request as _ask
from plabs_proto.perplexity.session import PerplexitySession
from plabs_proto.state import END_STATES, SessionState
from plabs_proto.wire.headers import CookieJar, RequestHeaders
from plabs_proto.wire.http import (
    RESPONSE_END,
    HTTPChannel,
    Piece,
    ResponseHead,
    SwitchedProtocol,
)
from plabs_proto.wire.proxy import HTTPConnectTunnel, ProxyConfig, SOCKS5Tunnel, parse_proxy_url
from plabs_proto.wire.stack import Layer, StreamStack
from plabs_proto.wire.tls import TLSLayer, make_ssl_context
from plabs_proto.wire.websocket import (
    Utf8Text,
    WebSocketChannel,
    accept_token,
    make_key,
    negotiate_deflate,
)

__all__ = [
    "CarriedSession", "Client", "ClientState", "IncrementalSession", "LabsClient", "PerplexityClient", "Tracer",
]

#: ``tracer(now, stream_id, direction, data)``: called with every byte above TLS ("in" or "out").
Tracer = Callable[[float, int, str, bytes], None]

#: Where the session stands: the message level's states (see :mod:`plabs_proto.state`).
ClientState = SessionState


class CarriedSession(Protocol):
    """What the byte level needs of a message-level session: its public calls, nothing more."""

    @property
    def state(self) -> SessionState: ...
    @property
    def partial_text(self) -> str: ...
    @property
    def partial_reasoning(self) -> str: ...
    @property
    def max_connections(self) -> int: ...

    def connect(self, now: float) -> None: ...
    def close(self, now: float) -> None: ...
    def fail(self, exc: LabsError) -> None: ...
    def transmit(self) -> list[SessionInstruction]: ...
    def next_event(self) -> Event | None: ...
    def events(self) -> list[Event]: ...
    def get_timer(self) -> float | None: ...
    def handle_timer(self, now: float) -> None: ...
    def receive_http_response(
        self, request_id: int, status: int, headers: Sequence[tuple[str, str]], body: bytes, now: float,
        *, reason: str = "",
    ) -> None: ...
    def receive_websocket_open(self, ws_id: int, now: float) -> None: ...
    def receive_websocket_messages(
        self, ws_id: int, messages: Sequence[str | bytes | Utf8Text], now: float, *, limited: bool = False
    ) -> None: ...
    def receive_websocket_close(self, ws_id: int, code: int | None, now: float, reason: str = "") -> None: ...
    def receive_websocket_refused(
        self, ws_id: int, status: int, headers: Sequence[tuple[str, str]], body: bytes, now: float,
        reason: str = "",
    ) -> None: ...


class IncrementalSession(CarriedSession, Protocol):
    """A session that asks for some responses in pieces (``HTTPRequest(incremental=True)``)."""

    def receive_http_head(
        self, request_id: int, status: int, headers: Sequence[tuple[str, str]], now: float, *, reason: str = ""
    ) -> None: ...
    def receive_http_body(self, request_id: int, data: bytes, now: float) -> None: ...
    def receive_http_end(self, request_id: int, now: float) -> None: ...


@dataclass(slots=True)
class _Stream:
    id: int
    stack: StreamStack
    http: HTTPChannel | None
    ws: WebSocketChannel | None = None
    request_id: int | None = None  # the session's HTTPRequest waiting for its response here
    incremental: bool = False  # that response goes to the session in pieces
    ws_id: int | None = None  # the session's WebSocket on this stream (its upgrade, then its frames)
    open: bool = True


class Client:
    """A message-level session carried at the byte level.  See the module docstring for the loop.

    ``rng`` supplies every random choice of the byte level (WebSocket keys and
    masks): pass ``random.SystemRandom()`` in production and a seeded
    ``random.Random`` in tests.  ``tracer`` sees every byte above TLS.
    """

    def __init__(
        self, session: CarriedSession, config: ClientConfig, *, rng: random.Random, tracer: Tracer | None = None
    ) -> None:
        self.config = config
        scheme, self._host, port, _ = split_server(config.server, config.path)
        https = scheme == "https"
        self._tls = https if config.tls is None else config.tls
        default_port = 443 if https else 80
        self._port = port or default_port
        host_literal = f"[{self._host}]" if ":" in self._host else self._host
        self._host_header = host_literal if self._port == default_port else f"{host_literal}:{self._port}"
        self._proxy: ProxyConfig | None = (
            parse_proxy_url(config.proxy) if isinstance(config.proxy, str) else config.proxy
        )
        self._ssl_context: ssl.SSLContext | None = None
        if self._tls:
            self._ssl_context = config.ssl_context or make_ssl_context(config.cafile)
        self._session = session
        #: The next event, or None when there is none for now: the session's own ``next_event``
        #: (events wait in the session's queue alone, and are taken from it without a call of ours).
        self.next_event: Callable[[], Event | None] = session.next_event
        self._rng = rng
        self._tracer = tracer
        self._instructions: list[Instruction] = []
        self._streams: dict[int, _Stream] = {}
        self._next_stream_id = 1
        self._lanes: dict[int, _Stream] = {}  # the connection of each lane of requests
        self._spare: _Stream | None = None  # opened by connect() beside the first request
        self._ws_stream: _Stream | None = None
        self._ws_key = ""
        self._cookies = CookieJar()
        self._headers = RequestHeaders(config, self._host_header, self._cookies)
        self._limit = config.max_message_size
        self._out_stream: _Stream | None = None  # WebSocket bytes gathered for one write
        self._retired: list[_Stream] = []  # the requests' connections, closed once the switch's writes are out
        self._out_data: list[bytes] = []
        self._now = 0.0

    # -- public state ---------------------------------------------------------------------------

    @property
    def session(self) -> CarriedSession:
        """The message-level session this client carries."""
        return self._session

    @property
    def state(self) -> SessionState:
        """The session's state."""
        return self._session.state

    @property
    def partial_text(self) -> str:
        """The answer text so far of the query streaming now; ``""`` when none is.

        A finished answer is in its ``AnswerFinished`` (a failed one in its
        ``QueryFailed``).  Errors copy this, so an error after an answer finished
        carries no partial text (see :class:`~plabs_proto.errors.LabsError`).
        """
        return self._session.partial_text

    @property
    def partial_reasoning(self) -> str:
        """The reasoning so far of the query streaming now; ``""`` when none is."""
        return self._session.partial_reasoning

    @property
    def cookies(self) -> dict[str, str]:
        """The cookies kept from the server's ``Set-Cookie`` headers (name: value), sent on every request."""
        return self._cookies.as_dict()

    # -- user commands --------------------------------------------------------------------------

    def connect(self, now: float) -> None:
        """Start the session: the first ``transmit()`` then opens a connection (and the session's second, if it
        uses two at once, so that its TCP, TLS and proxy handshakes run beside the first request)."""
        self._now = now
        session = self._session
        self._step(lambda: session.connect(now))
        if session.max_connections > 1 and session.state is SessionState.CONNECTING:
            self._spare = self._open_stream()

    def query(self, *args: Any, now: float, **kwargs: Any) -> None:
        """Ask (the session's ``query`` with the same arguments); the answer comes as events."""
        self._now = now
        session: Any = self._session
        self._step(lambda: session.query(*args, now=now, **kwargs))

    def close(self, now: float) -> None:
        """End the session politely, then close every stream."""
        if self._session.state in END_STATES:
            return
        self._now = now
        session = self._session
        self._step(lambda: session.close(now))

    # -- I/O inputs -----------------------------------------------------------------------------

    def receive_data(self, stream_id: int, data: bytes, now: float) -> None:
        """Feed bytes received on a stream (``b""`` at end of file)."""
        stream = self._streams.get(stream_id)
        if stream is None or not stream.open:
            if not 0 < stream_id < self._next_stream_id:
                raise LocalProtocolError(
                    f"expected the id of a stream this client opened, got {stream_id!r}"
                )
            if self._session.state is SessionState.ERROR:
                raise LocalProtocolError("cannot receive data: the client already failed and closed its streams")
            return  # late bytes for a stream we already closed
        self._now = now
        self._step(lambda: self._receive(stream, data, now))

    def _receive(self, stream: _Stream, data: bytes, now: float) -> None:
        stack = stream.stack
        app = stack.receive_data(data)
        raw = stack.data_to_send()
        if raw:
            self._instructions.append(SendBytes(stream_id=stream.id, data=raw))
        if app:
            if self._tracer is not None:
                self._tracer(now, stream.id, "in", app)
            if stream.ws is not None:
                self._on_ws_bytes(stream, app, now)
            else:
                self._on_http_bytes(stream, app, now)
        if stack.eof and stream.open:
            if self._tracer is not None:
                self._tracer(now, stream.id, "in", b"")
            self._on_eof(stream, now)

    def handle_timer(self, now: float) -> None:
        """Fire the deadlines due at ``now`` (call it when ``get_timer()`` comes)."""
        self._now = now
        session = self._session
        self._step(lambda: session.handle_timer(now))

    # -- outputs --------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The next deadline (same clock as ``now``), or None."""
        return self._session.get_timer()

    def events(self) -> list[Event]:
        """Every pending event at once."""
        return self._session.events()

    def transmit(self) -> list[Instruction]:
        """What the caller must do now with its connections, in order."""
        out = self._instructions
        self._instructions = []
        return out

    # -- internals: carrying the session's instructions -----------------------------------------

    def _step(self, action: Callable[[], None]) -> None:
        """Run one input or command, then carry what the session asked for.

        An error from the bytes (TLS, HTTP, WebSocket, a proxy) fails the
        session as one of its own would; either way every stream is closed
        once the session has ended.
        """
        session = self._session
        try:
            action()
            self._carry(session.transmit())
        except LabsError as exc:
            if not isinstance(exc, LocalProtocolError) and session.state is not SessionState.ERROR:
                session.fail(exc)
            if session.state is SessionState.ERROR:
                self._out_stream, self._out_data = None, []
                self._close_all()
            else:
                self._carry(session.transmit())
            raise

    def _carry(self, instructions: list[SessionInstruction]) -> None:
        """Turn the session's instructions into streams and bytes."""
        for instruction in instructions:
            kind = type(instruction)
            if kind is WebSocketSend:
                self._on_ws_send(cast(WebSocketSend, instruction))
            elif kind is HTTPRequest:
                self._on_request(cast(HTTPRequest, instruction))
            elif kind is WebSocketConnect:
                self._on_ws_connect(cast(WebSocketConnect, instruction))
            elif kind is TransportSwitched:
                self._on_switch()
            elif kind is WebSocketClose:
                self._on_ws_close(cast(WebSocketClose, instruction))
        self._flush()
        if self._retired:
            retired, self._retired = self._retired, []
            for stream in retired:
                self._close_stream(stream)
        if self._session.state in END_STATES:
            self._close_all()

    def _on_request(self, request: HTTPRequest) -> None:
        lane = request.lane
        stream = self._lanes.get(lane)
        if stream is None and lane and self._spare is not None:
            stream, self._spare = self._spare, None  # a second lane takes the connection opened beside the first
        if self._session.state in END_STATES:
            # The goodbye of a session that ended: only on a connection open and idle already.
            if stream is None or not stream.open or stream.http is None or not stream.http.reusable:
                return
        else:
            stream = self._usable(stream)
        self._lanes[lane] = stream
        headers = self._headers.request(request.headers, len(request.body) if request.method == "POST" else None)
        assert stream.http is not None  # _usable gives a stream that can carry a request
        stream.request_id = request.request_id
        stream.incremental = request.incremental
        self._write(
            stream,
            stream.http.request(request.method, _target(request.url), headers, request.body,
                                incremental=request.incremental),
        )

    def _on_ws_connect(self, connect: WebSocketConnect) -> None:
        stream, self._spare = self._spare, None
        stream = self._usable(stream) if stream is not None else self._open_stream()
        self._ws_stream = stream
        stream.ws_id = connect.ws_id
        self._ws_key = make_key(self._rng)
        headers = self._headers.upgrade(connect.headers, self._ws_key)
        assert stream.http is not None
        self._write(stream, stream.http.request("GET", _target(connect.url), headers))

    def _on_ws_send(self, send: WebSocketSend) -> None:
        stream = self._ws_stream
        if stream is None or not stream.open or stream.ws is None or stream.ws.closed:
            return
        if not isinstance(send.data, str):
            raise LocalProtocolError("expected text WebSocket messages from the session, got bytes")
        self._write(stream, stream.ws.send_text(send.data))

    def _on_switch(self) -> None:
        """The WebSocket carries the session now: the connections of the requests close, once what is
        written to the WebSocket with the switch is out (the probe and the upgrade go in one write)."""
        lanes, self._lanes = self._lanes, {}
        self._retired += [stream for stream in lanes.values() if stream is not self._ws_stream]

    def _on_ws_close(self, close: WebSocketClose) -> None:
        stream = self._ws_stream
        if close.code is not None and stream is not None and stream.open and stream.ws is not None and not stream.ws.closed:
            self._write(stream, stream.ws.close(close.code))

    # -- internals: streams and bytes -----------------------------------------------------------

    def _open_stream(self) -> _Stream:
        self._flush()
        stream_id = self._next_stream_id
        self._next_stream_id += 1
        layers: list[Layer] = []
        host, port = self._host, self._port
        if self._proxy is not None:
            tunnel_cls = HTTPConnectTunnel if self._proxy.scheme == "http" else SOCKS5Tunnel
            layers.append(
                tunnel_cls(self._host, self._port, username=self._proxy.username, password=self._proxy.password)
            )
            host, port = self._proxy.host, self._proxy.port
        if self._ssl_context is not None:
            layers.append(TLSLayer(self._ssl_context, self._host))
        stack = StreamStack(layers)
        stack.start()
        http = HTTPChannel(max_body=self._limit + BODY_SLACK, limit_name="max_message_size + 64 KiB")
        stream = _Stream(stream_id, stack, http)
        self._streams[stream_id] = stream
        self._instructions.append(OpenStream(stream_id=stream_id, host=host, port=port))
        opening = stack.data_to_send()  # a CONNECT request, a SOCKS greeting or a ClientHello
        if opening:
            self._instructions.append(SendBytes(stream_id=stream_id, data=opening))
        return stream

    def _close_stream(self, stream: _Stream) -> None:
        self._flush()
        if stream.open:
            stream.open = False
            self._instructions.append(CloseStream(stream_id=stream.id))
        self._streams.pop(stream.id, None)

    def _close_all(self) -> None:
        self._flush()
        for stream in self._streams.values():
            if stream.open:
                stream.open = False
                self._instructions.append(CloseStream(stream_id=stream.id))

    def _usable(self, stream: _Stream | None) -> _Stream:
        """``stream`` if it can carry a request now, else a fresh connection in its place."""
        if stream is not None and stream.open and stream.http is not None and stream.http.reusable:
            return stream
        if stream is not None:
            self._close_stream(stream)
        return self._open_stream()

    def _write(self, stream: _Stream, data: bytes) -> None:
        """Write ``data``; consecutive writes to one stream go out as one (one TLS record, one trace)."""
        if self._out_stream is not stream:
            self._flush()
            self._out_stream = stream
        self._out_data.append(data)

    def _flush(self) -> None:
        stream = self._out_stream
        if stream is None:
            return
        data = b"".join(self._out_data)
        self._out_stream, self._out_data = None, []
        if not stream.open:
            return
        if self._tracer is not None:
            self._tracer(self._now, stream.id, "out", data)
        stack = stream.stack
        stack.send(data)
        raw = stack.data_to_send()
        if raw:
            self._instructions.append(SendBytes(stream_id=stream.id, data=raw))

    def _on_http_bytes(self, stream: _Stream, data: bytes, now: float) -> None:
        http = stream.http
        if http is None:  # pragma: no cover - streams without HTTP are WebSocket streams
            return
        if stream.incremental:
            self._on_pieces(stream, http.receive_pieces(data), now)
            return
        result = http.receive_data(data)
        if result is None:
            return
        request_id, stream.request_id = stream.request_id, None
        if isinstance(result, SwitchedProtocol):
            self._on_switched(stream, result, now)
            return
        self._cookies.remember(result.headers)
        if stream.ws_id is not None:
            self._session.receive_websocket_refused(
                stream.ws_id, result.status, result.headers, result.body, now, reason=result.reason
            )
            return
        if http.closed:
            self._close_stream(stream)
        if request_id is not None:
            self._session.receive_http_response(
                request_id, result.status, result.headers, result.body, now, reason=result.reason
            )

    def _on_pieces(self, stream: _Stream, pieces: list[Piece], now: float) -> None:
        """A response asked for incrementally: each piece to the session as it comes."""
        session = cast(IncrementalSession, self._session)
        request_id = stream.request_id
        for piece in pieces:
            if request_id is None:
                return
            if type(piece) is bytes:
                session.receive_http_body(request_id, piece, now)
            elif isinstance(piece, ResponseHead):
                self._cookies.remember(piece.headers)
                session.receive_http_head(request_id, piece.status, piece.headers, now, reason=piece.reason)
            elif piece is RESPONSE_END:
                stream.request_id, stream.incremental = None, False
                assert stream.http is not None
                if stream.http.closed:
                    self._close_stream(stream)
                session.receive_http_end(request_id, now)
            self._carry(session.transmit())

    def _on_switched(self, stream: _Stream, switched: SwitchedProtocol, now: float) -> None:
        accept = switched.header("sec-websocket-accept")
        if accept != accept_token(self._ws_key):
            raise RemoteProtocolError(
                f"expected Sec-WebSocket-Accept {accept_token(self._ws_key)!r} in the 101 response, got {accept!r}"
            )
        deflate = negotiate_deflate(switched.header_values("sec-websocket-extensions"),
                                    offered=self.config.permessage_deflate)
        self._cookies.remember(switched.headers)
        stream.http = None
        stream.ws = WebSocketChannel(self._rng, max_message_size=self._limit, raw_text=True, deflate=deflate)
        if stream.ws_id is not None:
            self._session.receive_websocket_open(stream.ws_id, now)
            self._carry(self._session.transmit())  # the probe goes out before any answer to what follows
        if switched.trailing_data:
            self._on_ws_bytes(stream, switched.trailing_data, now)

    def _on_eof(self, stream: _Stream, now: float) -> None:
        if stream.ws is not None:
            if self._session.state is not SessionState.CLOSED and stream.ws_id is not None:
                # The connection ended without a close frame: an error unless the session is over.
                self._session.receive_websocket_close(stream.ws_id, None, now)
            self._close_stream(stream)
            return
        http = stream.http
        if http is not None and http.busy:
            # A response whose body ends at end of file (HTTP/1.0, no Content-Length) completes
            # now; one cut short raises.
            self._on_http_bytes(stream, b"", now)
        self._close_stream(stream)  # an idle keep-alive connection the server let go

    def _on_ws_bytes(self, stream: _Stream, data: bytes, now: float) -> None:
        ws = stream.ws
        ws_id = stream.ws_id
        if ws is None or ws_id is None:  # pragma: no cover
            return
        session = self._session
        messages = ws.receive_data(data)
        if messages:
            session.receive_websocket_messages(ws_id, messages, now, limited=True)  # the channel's limit
        self._carry(session.transmit())
        reply = ws.data_to_send()  # wsproto's pong to a WebSocket ping, its answer to a close
        if reply and stream.open and session.state not in END_STATES:
            self._write(stream, reply)
            self._flush()
        if ws.close_reason is not None and session.state not in END_STATES:
            code, reason = ws.close_reason
            session.receive_websocket_close(ws_id, code, now, reason)


class LabsClient(Client):
    """A :class:`~plabs_proto.labs.session.LabsSession` carried at the byte level (see :class:`Client`).

    ``rng`` also draws the session's ``t`` cache buster, first.
    """

    def __init__(
        self, config: ClientConfig | None = None, *, rng: random.Random, tracer: Tracer | None = None
    ) -> None:
        config = config or ClientConfig()
        # The session takes the config as it is (a ClientConfig is a SessionConfig): no copy per session.
        self._labs = LabsSession(config, rng=rng)  # draws the cache buster first
        super().__init__(self._labs, config, rng=rng, tracer=tracer)

    @property
    def session(self) -> LabsSession:
        """The Labs session this client carries (its transport, Engine.IO and Socket.IO ids)."""
        return self._labs

    def query(  # type: ignore[override]
        self, messages: str | Sequence[Mapping[str, Any]], *, model: str = DEFAULT_MODEL, now: float
    ) -> None:
        """Ask Labs; the answer comes as events.  One query at a time per session.

        See :meth:`LabsSession.query <plabs_proto.labs.session.LabsSession.query>`:
        allowed while connecting and when ready; a request not smaller than the
        server's ``maxPayload`` raises :class:`LocalProtocolError` (fatal only
        for a query made before the open packet, raised from the
        ``receive_data()`` that brought it).
        """
        self._now = now
        labs = self._labs
        self._step(lambda: labs.query(messages, model=model, now=now))


class PerplexityClient(Client):
    """A :class:`~plabs_proto.perplexity.session.PerplexitySession` (the ask endpoint) carried at the
    byte level (see :class:`Client`): one connection, kept alive from the warm-up to the last answer.

    ``rng`` also draws the UUIDs of each ask.
    """

    def __init__(
        self, config: ClientConfig | None = None, *, rng: random.Random, tracer: Tracer | None = None
    ) -> None:
        config = config or ClientConfig(service="perplexity")
        self._ask = PerplexitySession(config, rng=rng)  # (the config as it is, as above)
        super().__init__(self._ask, config, rng=rng, tracer=tracer)

    @property
    def session(self) -> PerplexitySession:
        """The ask session this client carries."""
        return self._ask

    @property
    def thread(self) -> ThreadIdentity | None:
        """The thread of the last answer (what a follow-up sends back), once the service named it."""
        return self._ask.thread

    def query(  # type: ignore[override]
        self,
        messages: str | Sequence[Mapping[str, Any]],
        *,
        model: str = _ask.DEFAULT_MODEL,
        mode: str | None = None,
        now: float,
    ) -> None:
        """Ask; the answer comes as events.  One query at a time; a second one is a follow-up
        in the same thread (see :meth:`PerplexitySession.query
        <plabs_proto.perplexity.session.PerplexitySession.query>`)."""
        self._now = now
        session = self._ask
        self._step(lambda: session.query(messages, model=model, mode=mode, now=now))

    def request_catalog(self, *, now: float) -> None:
        """Ask for the service's model catalog; a :class:`~plabs_proto.perplexity.session.Catalog`
        event brings it (see :meth:`PerplexitySession.request_catalog
        <plabs_proto.perplexity.session.PerplexitySession.request_catalog>`)."""
        self._now = now
        session = self._ask
        self._step(lambda: session.request_catalog(now=now))


def _target(url: str) -> str:
    """The request target (path and query) of an absolute URL."""
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path
