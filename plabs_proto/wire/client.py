"""The Labs client state machine.

:class:`LabsClient` drives a whole Perplexity Labs session without doing any
I/O.  Its caller (a backend, or a test) does three things in a loop:

1. carries out ``transmit()``: open the TCP connections it names, write the
   bytes it gives, close the connections it is done with;
2. feeds what each connection receives to ``receive_data(stream_id, data, now)``
   (``b""`` when the connection reaches end of file);
3. fires ``handle_timer(now)`` when ``get_timer()``'s deadline comes;

and reads ``next_event()`` for what happened.  User commands are
``connect(now)``, ``query(messages, model=..., now=...)`` and ``close(now)``.

Three transports are offered:

``"upgrade"`` (default)
    Like the browser: the Engine.IO polling handshake (GET the open packet,
    POST the Socket.IO CONNECT), then a WebSocket upgrade (``2probe``/``3probe``,
    ``5``).  The WebSocket's connection opens beside the first one and its
    upgrade request goes out with the CONNECT POST; the connect ack then comes
    on the WebSocket (or on a poll, if the server sends it there).  Requests on
    one connection reuse it while the server keeps it alive.
``"websocket"``
    Straight to a WebSocket: fewest round trips.
``"polling"``
    HTTP long-polling only (two connections: one for GETs, one for POSTs), for
    networks where WebSockets are blocked.

Fatal errors are raised from the method that discovered them, after the
client has moved to :attr:`ClientState.ERROR` and queued ``CloseStream`` for
every connection.  They carry the answer text received so far.

Two levels: every Engine.IO, Socket.IO and Labs rule lives in
:class:`~plabs_proto.labs.session.LabsSession` (the message level, which any
HTTP/WebSocket client can drive); this module is the byte level beneath it.
It turns each ``HTTPRequest`` and ``WebSocketConnect`` into a request on a
stream (h11, wsproto, TLS, a proxy tunnel), keeps cookies, reuses a
connection while the server keeps it alive, and opens the second connection
at ``connect()`` (polling: for POSTs; upgrade: for the WebSocket) so its
handshakes run beside the first request's.  HTTP body and WebSocket frame
limits are checked here, from the bytes, before anything is buffered.
"""

from __future__ import annotations

import os
import random
import re
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from plabs_proto.errors import LabsError, LocalProtocolError, RemoteProtocolError
from plabs_proto.events import (
    CloseStream,
    Event,
    HTTPRequest,
    Instruction,
    OpenStream,
    SendBytes,
    SessionInstruction,
    WebSocketClose,
    WebSocketConnect,
    WebSocketSend,
)
from plabs_proto.labs.answer import DEFAULT_MODEL, DEFAULT_VERSION
from plabs_proto.labs.session import (
    BODY_SLACK,
    DEFAULT_JWT,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_ORIGIN,
    DEFAULT_SERVER,
    TRANSPORTS,
    LabsSession,
    SessionConfig,
    check_header_text,
    split_server,
)
from plabs_proto.state import END_STATES, SessionState
from plabs_proto.wire.browser import CHROME, BrowserProfile, merge_headers
from plabs_proto.wire.http import ACCEPT_ENCODING, HTTPChannel, HTTPResponse, SwitchedProtocol
from plabs_proto.wire.proxy import HTTPConnectTunnel, ProxyConfig, SOCKS5Tunnel, parse_proxy_url
from plabs_proto.wire.stack import Layer, StreamStack
from plabs_proto.wire.tls import TLSLayer, check_ssl_context, make_ssl_context
from plabs_proto.wire.websocket import (
    DEFLATE_OFFER,
    WebSocketChannel,
    accept_token,
    make_key,
    negotiate_deflate,
)

__all__ = ["DEFAULT_MAX_MESSAGE_SIZE", "DEFAULT_SERVER", "TRANSPORTS", "ClientConfig", "ClientState", "LabsClient", "Tracer"]

#: Set-Cookie values kept and sent back: visible ASCII names, printable ASCII values, at most
#: this many cookies of at most this many characters each (RFC 6265's minimums for a browser).
_COOKIE_NAME = re.compile(r"[!-~]+")
_COOKIE_VALUE = re.compile(r"[ -~]*")
_MAX_COOKIES = 50
_MAX_COOKIE_SIZE = 4096

#: ``tracer(now, stream_id, direction, data)``: called with every byte above TLS ("in" or "out").
Tracer = Callable[[float, int, str, bytes], None]


#: Where the session stands: the message level's states (see :mod:`plabs_proto.state`).
ClientState = SessionState


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientConfig:
    """Everything a session needs to know before it starts.

    Timeouts are in seconds (``None`` = no deadline).  ``first_text_timeout``
    runs from the query to its first answer or reasoning text.
    ``max_message_size`` is our receive limit, in bytes: the largest WebSocket
    message or Engine.IO packet taken from the server (a polling body may carry
    one such packet and 64 KiB of small ones besides).  A frame announcing more
    is refused from its header, before it is buffered.  The default, 64 MiB,
    fits a long answer's last cumulative frame.  The server's ``maxPayload``
    (from its open packet) is something else: the most the server accepts from
    *us*.  It never changes our receive limit; a query whose request is not
    smaller is refused with :class:`LocalProtocolError` before it is sent.  ``tls`` is taken
    from the URL scheme when ``None``; ``False`` speaks plain HTTP even to an
    ``https://`` server, for a caller whose transport does TLS itself (and for
    replaying a trace, which holds the bytes above TLS).

    ``browser`` is the header profile of every request (:data:`~plabs_proto.wire.browser.CHROME`:
    a desktop Chrome's headers, in Chrome's order; see :mod:`plabs_proto.wire.browser`).
    ``None`` sends only Host, User-Agent (when ``user_agent`` is set), ``Accept: */*``,
    the session's headers and cookies: the headers of plabs-proto before profiles, which
    replaying an old trace needs.  ``user_agent`` replaces the profile's User-Agent; the
    client hints (``sec-ch-ua*``) are then left out, as they would contradict it.
    ``headers`` are the caller's: with a profile each replaces the header of the same name
    (any case) where it stands, the others go at the end (without one, as before: all at the end).

    Compression, both on by default as in a browser: ``accept_encoding`` sends
    ``Accept-Encoding: gzip, deflate`` on every HTTP request (Node's engine.io
    and python-engineio then gzip polling bodies of 1 KiB and more); a body the
    server compressed is inflated whatever we offered, never past the receive
    limit.  ``permessage_deflate`` offers the WebSocket extension of RFC 7692
    (``Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits``);
    when the server accepts it, its compressed messages are inflated (within
    ``max_message_size``) and ours are compressed with the parameters it chose.
    Turned off, nothing is offered, and a server that answers with an
    extension all the same is refused.  Neither changes the message level
    (:class:`~plabs_proto.labs.session.SessionConfig`): compression is the carrier's.
    """

    server: str = DEFAULT_SERVER
    path: str = "/socket.io/"
    transport: str = "upgrade"
    proxy: str | ProxyConfig | None = field(default=None, repr=False)
    ssl_context: ssl.SSLContext | None = None
    cafile: str | os.PathLike[str] | None = None
    tls: bool | None = None
    headers: tuple[tuple[str, str], ...] = ()
    origin: str = DEFAULT_ORIGIN
    jwt: str = DEFAULT_JWT
    version: str = DEFAULT_VERSION
    browser: BrowserProfile | None = CHROME
    user_agent: str | None = None
    connect_timeout: float | None = 30.0
    first_text_timeout: float | None = 60.0
    query_timeout: float | None = None
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    accept_encoding: bool = True
    permessage_deflate: bool = True

    def session_config(self) -> SessionConfig:
        """The message-level part of this configuration, for :class:`~plabs_proto.labs.session.LabsSession`."""
        return SessionConfig(
            server=self.server,
            path=self.path,
            transport=self.transport,
            origin=self.origin,
            jwt=self.jwt,
            version=self.version,
            connect_timeout=self.connect_timeout,
            first_text_timeout=self.first_text_timeout,
            query_timeout=self.query_timeout,
            max_message_size=self.max_message_size,
        )

    def __post_init__(self) -> None:
        """Refuse a field of the wrong kind now, with :class:`LocalProtocolError`, not with a TypeError later.

        The message-level fields are checked by the :class:`~plabs_proto.labs.session.SessionConfig`
        made here, the byte-level ones below: a carrier of :meth:`session_config` (curl's)
        gets a checked config too.
        """
        self.session_config()  # checks the message-level fields
        host = split_server(self.server, self.path)[1]
        if self.proxy is not None and not isinstance(self.proxy, ProxyConfig):
            if not isinstance(self.proxy, str):
                raise LocalProtocolError(
                    f"expected the proxy as a URL str or a ProxyConfig, got {type(self.proxy).__name__}"
                )
            parse_proxy_url(self.proxy)
        if self.ssl_context is not None:
            check_ssl_context(self.ssl_context)
        if self.cafile is not None and not isinstance(self.cafile, str | os.PathLike):
            raise LocalProtocolError(f"expected cafile as a path (str or os.PathLike) or None, got {self.cafile!r:.60}")
        if self.tls is not None and not isinstance(self.tls, bool):
            raise LocalProtocolError(f"expected tls as True, False or None, got {self.tls!r:.60}")
        if self.browser is not None and not isinstance(self.browser, BrowserProfile):
            raise LocalProtocolError(f"expected browser as a BrowserProfile or None, got {self.browser!r:.80}")
        for name in ("accept_encoding", "permessage_deflate"):
            if not isinstance(getattr(self, name), bool):
                raise LocalProtocolError(f"expected {name} as True or False, got {getattr(self, name)!r:.60}")
        texts = [("the server host", host)]
        if self.user_agent is not None:
            if not isinstance(self.user_agent, str):
                raise LocalProtocolError(f"expected user_agent as a str, got {self.user_agent!r:.60}")
            texts.append(("user_agent", self.user_agent))
        if not isinstance(self.headers, (tuple, list)):
            raise LocalProtocolError(f"expected headers as a tuple of (name, value) tuples, got {self.headers!r:.80}")
        for item in self.headers:
            if not isinstance(item, tuple) or len(item) != 2:
                raise LocalProtocolError(f"expected each of headers as a (name, value) tuple, got {item!r:.80}")
            texts += [("a header name", item[0]), (f"the {item[0]!r} header", item[1])]
        for what, text in texts:
            check_header_text(what, text)


@dataclass(slots=True)
class _Stream:
    id: int
    stack: StreamStack
    http: HTTPChannel | None
    ws: WebSocketChannel | None = None
    request_id: int | None = None  # the session's HTTPRequest waiting for its response here
    ws_id: int | None = None  # the session's WebSocket on this stream (its upgrade, then its frames)
    open: bool = True


class LabsClient:
    """A sans-IO Perplexity Labs session at the byte level.  See the module docstring for the loop.

    It is a :class:`~plabs_proto.labs.session.LabsSession` (the message level: every
    Engine.IO, Socket.IO and Labs rule) carried by this module's byte stack:
    each HTTP request and WebSocket the session asks for becomes bytes on a
    stream (h11, wsproto, TLS over MemoryBIO, a proxy tunnel), with the
    cookies, keep-alive and second connection a browser would use.

    ``rng`` supplies every random choice (the ``t`` cache buster, WebSocket
    keys and masks): pass ``random.SystemRandom()`` in production and a seeded
    ``random.Random`` in tests.  ``tracer`` sees every byte above TLS.
    """

    def __init__(
        self, config: ClientConfig | None = None, *, rng: random.Random, tracer: Tracer | None = None
    ) -> None:
        self.config = config = config or ClientConfig()
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
        self._session = LabsSession(config.session_config(), rng=rng)  # draws the cache buster first
        self._rng = rng
        self._tracer = tracer
        self._instructions: list[Instruction] = []
        self._streams: dict[int, _Stream] = {}
        self._next_stream_id = 1
        self._main: _Stream | None = None  # GETs (and the upgrade transport's POSTs)
        self._post_stream: _Stream | None = None  # polling transport: POSTs
        self._spare: _Stream | None = None  # opened by connect() beside the first request
        self._ws_stream: _Stream | None = None
        self._ws_key = ""
        self._ws_active = False  # the WebSocket carries the session (its first message went out)
        self._closing = False  # close() was called: the WebSocket gets a close frame
        self._cookies: dict[str, str] = {}
        self._limit = config.max_message_size
        self._out_stream: _Stream | None = None  # WebSocket bytes gathered for one write
        self._out_data: list[bytes] = []
        self._now = 0.0

    # -- public state ---------------------------------------------------------------------------

    @property
    def session(self) -> LabsSession:
        """The message-level session this client carries."""
        return self._session

    @property
    def state(self) -> ClientState:
        """The session's state."""
        return self._session.state

    @property
    def transport(self) -> str:
        """The transport in use: the configured one, or ``"polling"`` if an upgrade was not offered."""
        return self._session.transport

    @property
    def engine_sid(self) -> str:
        """The Engine.IO session id (``""`` until the open packet)."""
        return self._session.engine_sid

    @property
    def socket_sid(self) -> str:
        """The Socket.IO session id (``""`` until the connect ack)."""
        return self._session.socket_sid

    @property
    def partial_text(self) -> str:
        """The answer text so far of the query streaming now; ``""`` when none is.

        A finished answer is in its ``AnswerFinished`` (a failed one in its
        ``QueryFailed``).  Errors copy this, so an error after an answer finished
        carries no partial text (see :class:`~plabs_proto.errors.LabsError`).
        """
        return self._session.partial_text

    @property
    def cookies(self) -> dict[str, str]:
        """The cookies kept from the server's ``Set-Cookie`` headers (name: value), sent on every request."""
        return dict(self._cookies)

    @property
    def partial_reasoning(self) -> str:
        """The reasoning so far of the query streaming now; ``""`` when none is."""
        return self._session.partial_reasoning

    # -- user commands --------------------------------------------------------------------------

    def connect(self, now: float) -> None:
        """Start the session: the first ``transmit()`` then opens a connection."""
        self._now = now
        self._step(lambda: self._session.connect(now))
        # The second connection (polling: for POSTs; upgrade: for the WebSocket) opens now,
        # so its TCP (and TLS, proxy) handshakes run beside the handshake GET.
        if self.config.transport != "websocket" and self._session.state is ClientState.CONNECTING:
            self._spare = self._open_stream()

    def query(
        self,
        messages: str | Sequence[Mapping[str, Any]],
        *,
        model: str = DEFAULT_MODEL,
        now: float,
    ) -> None:
        """Ask Labs; the answer comes as events.  One query at a time per session.

        See :meth:`LabsSession.query <plabs_proto.labs.session.LabsSession.query>`:
        allowed while connecting and when ready; a request not smaller than the
        server's ``maxPayload`` raises :class:`LocalProtocolError` (fatal only
        for a query made before the open packet, raised from the
        ``receive_data()`` that brought it).
        """
        self._now = now
        self._step(lambda: self._session.query(messages, model=model, now=now))

    def close(self, now: float) -> None:
        """End the session politely (Socket.IO and Engine.IO close), then close every stream."""
        if self._session.state in END_STATES:
            return
        self._now = now
        self._closing = True
        self._step(lambda: self._session.close(now))

    # -- I/O inputs -----------------------------------------------------------------------------

    def receive_data(self, stream_id: int, data: bytes, now: float) -> None:
        """Feed bytes received on a stream (``b""`` at end of file)."""
        stream = self._streams.get(stream_id)
        if stream is None or not stream.open:
            if not 0 < stream_id < self._next_stream_id:
                raise LocalProtocolError(
                    f"expected the id of a stream this client opened, got {stream_id!r}"
                )
            if self._session.state is ClientState.ERROR:
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
        self._step(lambda: self._session.handle_timer(now))

    # -- outputs --------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The next deadline (same clock as ``now``), or None."""
        return self._session.get_timer()

    def next_event(self) -> Event | None:
        """The next event, or None when there is none for now."""
        return self._session.next_event()

    def events(self) -> list[Event]:
        """Every pending event at once."""
        return self._session.events()

    def transmit(self) -> list[Instruction]:
        """What the caller must do now with its connections, in order."""
        self._carry(self._session.transmit())  # (empty: every input carried its own; ends the pong window)
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
        try:
            action()
            self._carry(self._session._drain())
        except LabsError as exc:
            session = self._session
            if not isinstance(exc, LocalProtocolError) and session.state is not ClientState.ERROR:
                session._fail(exc)
            if session.state is ClientState.ERROR:
                self._out_stream, self._out_data = None, []
                self._close_all()
            else:
                self._carry(session._drain())
            raise

    def _carry(self, instructions: list[SessionInstruction]) -> None:
        """Turn the session's instructions into streams and bytes."""
        for instruction in instructions:
            kind = type(instruction)
            if kind is WebSocketSend:
                assert isinstance(instruction, WebSocketSend)
                self._on_ws_send(instruction)
            elif kind is HTTPRequest:
                assert isinstance(instruction, HTTPRequest)
                self._on_request(instruction)
            elif kind is WebSocketConnect:
                assert isinstance(instruction, WebSocketConnect)
                self._on_ws_connect(instruction)
            elif kind is WebSocketClose:
                self._on_ws_close()
        self._flush()
        if self._session.state in END_STATES:
            self._close_all()

    def _on_request(self, request: HTTPRequest) -> None:
        polling_post = request.method == "POST" and self._session.transport == "polling"
        stream = self._post_stream if polling_post else self._main
        if polling_post and stream is None and self._spare is not None:
            stream, self._spare = self._spare, None
        if self._session.state in END_STATES:
            # The goodbye POST of close(): only on a connection open and idle already.
            if stream is None or not stream.open or stream.http is None or not stream.http.reusable:
                return
        else:
            stream = self._usable(stream)
        if polling_post:
            self._post_stream = stream
        else:
            self._main = stream
        headers = self._request_headers(request.headers, len(request.body) if request.method == "POST" else None)
        assert stream.http is not None  # _usable gives a stream that can carry a request
        stream.request_id = request.request_id
        self._write(stream, stream.http.request(request.method, _target(request.url), headers, request.body))

    def _on_ws_connect(self, connect: WebSocketConnect) -> None:
        stream, self._spare = self._spare, None
        stream = self._usable(stream) if stream is not None else self._open_stream()
        self._ws_stream = stream
        stream.ws_id = connect.ws_id
        self._ws_key = make_key(self._rng)
        headers = self._upgrade_headers(connect.headers)
        assert stream.http is not None
        self._write(stream, stream.http.request("GET", _target(connect.url), headers))

    def _on_ws_send(self, send: WebSocketSend) -> None:
        stream = self._ws_stream
        if stream is None or not stream.open or stream.ws is None or stream.ws.closed:
            return
        if not isinstance(send.data, str):
            raise LocalProtocolError("expected text WebSocket messages from the session, got bytes")
        if not self._ws_active:
            self._ws_active = True
            polling = self._main
            self._main = stream
            if polling is not None and polling is not stream:
                # The upgrade ends polling: its connection closes once the probe is written.
                self._write(stream, stream.ws.send_text(send.data))
                self._flush()
                self._close_stream(polling)
                return
        self._write(stream, stream.ws.send_text(send.data))

    def _on_ws_close(self) -> None:
        stream = self._ws_stream
        if (
            self._closing
            and self._ws_active
            and stream is not None
            and stream.open
            and stream.ws is not None
            and not stream.ws.closed
        ):
            self._write(stream, stream.ws.close())

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

    def _cookie_header(self) -> str | None:
        """The ``Cookie`` value of every cookie kept so far (None when there is none)."""
        return "; ".join(f"{k}={v}" for k, v in self._cookies.items()) if self._cookies else None

    def _caller_user_agent(self) -> str | None:
        """The User-Agent the caller chose (``headers`` first, then ``user_agent``), or None."""
        for name, value in self.config.headers:
            if name.lower() == "user-agent":
                return value
        return self.config.user_agent

    def _request_headers(
        self, session_headers: tuple[tuple[str, str], ...], content_length: int | None = None
    ) -> list[tuple[str, str]]:
        """A polling request's headers: the browser profile's, or (without one) the plain set.

        Plain (as before profiles): Host, User-Agent, Accept, the session's (Origin, Referer),
        cookies, the caller's (replacing ours of the same name), and a POST's Content-Type last.  ``content_length`` (a POST's) takes
        Chrome's place in a profile's order; h11 keeps that one and adds no second.
        """
        profile = self.config.browser
        if profile is not None:
            headers = profile.fetch_headers(
                host=self._host_header,
                origin=self.config.origin,
                server=self.config.server,
                session_headers=session_headers,
                content_length=content_length,
                user_agent=self._caller_user_agent(),
                accept_encoding=ACCEPT_ENCODING if self.config.accept_encoding else None,
                cookie=self._cookie_header(),
            )
            return merge_headers(headers, self.config.headers)
        headers = [("Host", self._host_header)]
        if self.config.user_agent is not None:
            headers.append(("User-Agent", self.config.user_agent))
        headers.append(("Accept", "*/*"))
        last: list[tuple[str, str]] = []
        for name, value in session_headers:
            (last if name == "Content-Type" else headers).append((name, value))
        if self.config.accept_encoding:
            headers.append(("Accept-Encoding", ACCEPT_ENCODING))
        cookie = self._cookie_header()
        if cookie is not None:
            headers.append(("Cookie", cookie))
        if self.config.headers:
            # As before profiles (old traces replay byte for byte): the caller's replace ours at the end.
            own = {name.lower() for name, _ in self.config.headers}
            headers = [(name, value) for name, value in headers if name.lower() not in own]
            headers.extend(self.config.headers)
        return headers + last

    def _upgrade_headers(self, session_headers: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
        """The WebSocket upgrade's headers: the browser profile's, or the plain set and the upgrade's own."""
        profile = self.config.browser
        if profile is not None:
            headers = profile.websocket_headers(
                host=self._host_header,
                key=self._ws_key,
                session_headers=session_headers,
                user_agent=self._caller_user_agent(),
                accept_encoding=ACCEPT_ENCODING if self.config.accept_encoding else None,
                cookie=self._cookie_header(),
                extensions=DEFLATE_OFFER if self.config.permessage_deflate else None,
            )
            return merge_headers(headers, self.config.headers)
        return [
            *self._request_headers(session_headers),
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", self._ws_key),
            *([("Sec-WebSocket-Extensions", DEFLATE_OFFER)] if self.config.permessage_deflate else []),
        ]

    def _on_http_bytes(self, stream: _Stream, data: bytes, now: float) -> None:
        http = stream.http
        if http is None:  # pragma: no cover - streams without HTTP are WebSocket streams
            return
        result = http.receive_data(data)
        if result is None:
            return
        request_id, stream.request_id = stream.request_id, None
        if isinstance(result, SwitchedProtocol):
            self._on_switched(stream, result, now)
            return
        self._remember_cookies(result)
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

    def _remember_cookies(self, response: HTTPResponse) -> None:
        """Keep the ``name=value`` of each Set-Cookie, to send back in a Cookie header.

        A cookie that could not be sent back as it came is ignored, as a browser
        ignores a cookie it cannot parse: one whose name is not visible ASCII or
        whose value holds anything but printable ASCII (a control character, a
        non-ASCII byte).  So is one of more than :data:`_MAX_COOKIE_SIZE`
        characters, and a new name once :data:`_MAX_COOKIES` are kept.
        """
        for value in response.header_values("set-cookie"):
            pair = value.split(";", 1)[0]
            name, sep, val = pair.partition("=")
            name, val = name.strip(), val.strip()
            if (
                sep
                and _COOKIE_NAME.fullmatch(name)
                and _COOKIE_VALUE.fullmatch(val)
                and len(name) + len(val) <= _MAX_COOKIE_SIZE
                and (name in self._cookies or len(self._cookies) < _MAX_COOKIES)
            ):
                self._cookies[name] = val

    def _on_switched(self, stream: _Stream, switched: SwitchedProtocol, now: float) -> None:
        accept = switched.header("sec-websocket-accept")
        if accept != accept_token(self._ws_key):
            raise RemoteProtocolError(
                f"expected Sec-WebSocket-Accept {accept_token(self._ws_key)!r} in the 101 response, got {accept!r}"
            )
        deflate = negotiate_deflate(switched.header_values("sec-websocket-extensions"),
                                    offered=self.config.permessage_deflate)
        self._remember_cookies(HTTPResponse(101, "", switched.headers, b""))
        stream.http = None
        stream.ws = WebSocketChannel(self._rng, max_message_size=self._limit, raw_text=True, deflate=deflate)
        if stream.ws_id is not None:
            self._session.receive_websocket_open(stream.ws_id, now)
            self._carry(self._session._drain())  # the probe goes out before any answer to what follows
        if switched.trailing_data:
            self._on_ws_bytes(stream, switched.trailing_data, now)

    def _on_eof(self, stream: _Stream, now: float) -> None:
        if stream.ws is not None:
            if self._session.state is not ClientState.CLOSED and stream.ws_id is not None:
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
        self._carry(session._drain())
        reply = ws.data_to_send()  # wsproto's pong to a WebSocket ping, its answer to a close
        if reply and stream.open and session.state not in END_STATES:
            self._write(stream, reply)
            self._flush()
        if ws.close_reason is not None and session.state not in END_STATES:
            code, reason = ws.close_reason
            session.receive_websocket_close(ws_id, code, now, reason)


def _target(url: str) -> str:
    """The request target (path and query) of an absolute URL."""
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path
