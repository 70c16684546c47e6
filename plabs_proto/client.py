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
"""

from __future__ import annotations

import json
import random
import re
import ssl
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any
from urllib.parse import quote, urlsplit

from . import engineio, socketio
from .errors import (
    HandshakeError,
    LabsError,
    LabsTimeout,
    LocalProtocolError,
    RemoteProtocolError,
    ResponseError,
)
from .events import (
    AnswerFinished,
    Closed,
    CloseStream,
    Connected,
    Event,
    Instruction,
    OpenStream,
    QueryFailed,
    ReasoningDelta,
    SendBytes,
    TextDelta,
)
from .http import HTTPChannel, HTTPResponse, SwitchedProtocol, looks_like_cloudflare
from .jsondepth import check_depth, too_deep
from .labs import (
    DEFAULT_MODEL,
    DEFAULT_VERSION,
    REQUEST_EVENT,
    AnswerDecoder,
    CumulativeFrameReader,
    build_request,
)
from .proxy import HTTPConnectTunnel, ProxyConfig, SOCKS5Tunnel, parse_proxy_url
from .stack import Layer, StreamStack
from .tls import TLSLayer, check_ssl_context, make_ssl_context
from .websocket import Utf8Text, WebSocketChannel, accept_token, make_key

__all__ = ["DEFAULT_MAX_MESSAGE_SIZE", "TRANSPORTS", "ClientConfig", "ClientState", "LabsClient", "Tracer"]

TRANSPORTS = ("upgrade", "websocket", "polling")
DEFAULT_SERVER = "https://www.perplexity.ai"
DEFAULT_ORIGIN = "https://labs.perplexity.ai"
DEFAULT_JWT = "anonymous-ask-user"
#: The default of :attr:`ClientConfig.max_message_size`, our receive limit: 64 MiB, so that a
#: long answer's last cumulative frame (the whole answer again, JSON-escaped) fits.
DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024
#: What a polling GET body may carry beyond one packet of the receive limit: the few small
#: packets (pings, a noop, a connect ack) a server batches with it.
_BODY_SLACK = 64 * 1024
#: Engine.IO's default maxPayload, for a server that does not announce one.
_ENGINEIO_MAX_PAYLOAD = 1_000_000

#: Set-Cookie values kept and sent back: visible ASCII names, printable ASCII values, at most
#: this many cookies of at most this many characters each (RFC 6265's minimums for a browser).
_COOKIE_NAME = re.compile(r"[!-~]+")
_COOKIE_VALUE = re.compile(r"[ -~]*")
_MAX_COOKIES = 50
_MAX_COOKIE_SIZE = 4096

#: ``tracer(now, stream_id, direction, data)``: called with every byte above TLS ("in" or "out").
Tracer = Callable[[float, int, str, bytes], None]


class _SessionEnded(LocalProtocolError):
    """Something tried to open a connection or write after the session ended.

    Raised by :meth:`LabsClient._open_stream` and :meth:`LabsClient._write` once
    the state is CLOSED or ERROR: whatever was under way (the rest of a
    handshake, the next poll, a pong) stops there, and the guard around every
    entry point swallows it, so a closed session never opens a new stream.
    """


class ClientState(Enum):
    """Where the session stands."""

    IDLE = "idle"  #: created, ``connect()`` not called yet
    CONNECTING = "connecting"  #: handshake under way
    READY = "ready"  #: connected, no query in flight
    QUERYING = "querying"  #: a query's answer is streaming
    CLOSED = "closed"  #: ended cleanly (our close or the server's)
    ERROR = "error"  #: ended by an error; every stream was closed


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
    """

    server: str = DEFAULT_SERVER
    path: str = "/socket.io/"
    transport: str = "upgrade"
    proxy: str | ProxyConfig | None = field(default=None, repr=False)
    ssl_context: ssl.SSLContext | None = None
    cafile: str | None = None
    tls: bool | None = None
    headers: tuple[tuple[str, str], ...] = ()
    origin: str = DEFAULT_ORIGIN
    jwt: str = DEFAULT_JWT
    version: str = DEFAULT_VERSION
    user_agent: str = "plabs-proto/0.1"
    connect_timeout: float | None = 30.0
    first_text_timeout: float | None = 60.0
    query_timeout: float | None = None
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE


def _check_request_text(config: ClientConfig, host_header: str, path: str) -> None:
    """Refuse what cannot go in a request head: HTTP/1.1 header text is ASCII without CR or LF."""
    fields = [("the server host", host_header), ("the server path", path), ("origin", config.origin),
              ("user_agent", config.user_agent)]
    if not isinstance(config.headers, (tuple, list)):
        raise LocalProtocolError(f"expected headers as a tuple of (name, value) tuples, got {config.headers!r:.80}")
    for item in config.headers:
        if not isinstance(item, tuple) or len(item) != 2:
            raise LocalProtocolError(f"expected each of headers as a (name, value) tuple, got {item!r:.80}")
        fields += [("a header name", item[0]), (f"the {item[0]!r} header", item[1])]
    for what, text in fields:
        if not isinstance(text, str) or not text.isascii() or "\r" in text or "\n" in text:
            raise LocalProtocolError(
                f"expected {what} as ASCII text without CR or LF (HTTP/1.1 header text; "
                f"punycode a host name, percent-encode a path), got {text!r:.80}"
            )


@dataclass(slots=True)
class _Stream:
    id: int
    stack: StreamStack
    http: HTTPChannel | None
    ws: WebSocketChannel | None = None
    purpose: str = ""  # what the outstanding HTTP request is for
    open: bool = True


_OPEN, _CONNECT_POST, _UPGRADE, _POLL, _POST = ("open", "connect-post", "upgrade", "poll", "post")


class LabsClient:
    """A sans-IO Perplexity Labs session.  See the module docstring for the loop.

    ``rng`` supplies every random choice (the ``t`` cache buster, WebSocket
    keys and masks): pass ``random.SystemRandom()`` in production and a seeded
    ``random.Random`` in tests.  ``tracer`` sees every byte above TLS.
    """

    def __init__(
        self, config: ClientConfig | None = None, *, rng: random.Random, tracer: Tracer | None = None
    ) -> None:
        self.config = config = config or ClientConfig()
        if config.transport not in TRANSPORTS:
            raise LocalProtocolError(
                f"expected a transport among {', '.join(TRANSPORTS)}, got {config.transport!r}"
            )
        limit = config.max_message_size
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise LocalProtocolError(f"expected max_message_size as an int >= 1 (bytes), got {limit!r:.60}")
        try:
            url = urlsplit(config.server) if isinstance(config.server, str) else None
        except ValueError:  # an unclosed "[" of an IPv6 address, say
            url = None
        if url is None or url.scheme not in ("http", "https") or not url.hostname:
            raise LocalProtocolError(f"expected an http:// or https:// server URL, got {config.server!r}")
        if not isinstance(config.path, str):
            raise LocalProtocolError(f"expected the path as a str, got {config.path!r}")
        https = url.scheme == "https"
        self._tls = https if config.tls is None else config.tls
        self._host = url.hostname
        try:
            port = url.port
        except ValueError as exc:
            raise LocalProtocolError(f"expected a valid port in the server URL, got {config.server!r}") from exc
        self._port = port or (443 if https else 80)
        default_port = 443 if https else 80
        host_literal = f"[{self._host}]" if ":" in self._host else self._host
        self._host_header = host_literal if self._port == default_port else f"{host_literal}:{self._port}"
        prefix = url.path.rstrip("/")
        self._path = prefix + "/" + config.path.strip("/") + "/"
        _check_request_text(config, self._host_header, self._path)
        self._proxy: ProxyConfig | None = (
            parse_proxy_url(config.proxy) if isinstance(config.proxy, str) else config.proxy
        )
        self._ssl_context: ssl.SSLContext | None = None
        if self._tls:
            if config.ssl_context is not None:
                check_ssl_context(config.ssl_context)
                self._ssl_context = config.ssl_context
            else:
                self._ssl_context = make_ssl_context(config.cafile)
        self._rng = rng
        self._tracer = tracer
        self._t = f"{rng.getrandbits(32):08x}"
        self._state = ClientState.IDLE
        self._events: deque[Event] = deque()
        self._instructions: list[Instruction] = []
        self._streams: dict[int, _Stream] = {}
        self._next_stream_id = 1
        self._main: _Stream | None = None  # GET / WebSocket stream
        self._post_stream: _Stream | None = None  # polling transport: POST stream
        self._deadlines: dict[str, float] = {}
        self._cookies: dict[str, str] = {}
        self._limit = limit  # what we take from the server (config.max_message_size)
        self._ping_window = 45.0
        self._max_payload: int | None = None  # what the server takes from us: its open packet says
        self.engine_sid = ""
        self.socket_sid = ""
        self._connected = False
        self._probing = False
        self._ws_stream: _Stream | None = None  # upgrade transport: the connection for the WebSocket
        self._connect_posted = False  # upgrade transport: the CONNECT POST was answered
        self._probe_sent = False
        self._ws_key = ""
        self._eio_out: list[str] = []  # Engine.IO text packets waiting for a POST or the WebSocket
        self._pong_queued = False  # a pong was queued since the last transmit()
        self._sio = socketio.PacketDecoder()
        self._decoder: AnswerDecoder | None = None
        self._frames = CumulativeFrameReader()
        self._pending_query: str | None = None
        self._transport_name = config.transport
        self._upgrades: tuple[str, ...] = ("websocket",)
        self._now = 0.0

    # -- public state ---------------------------------------------------------------------------

    @property
    def state(self) -> ClientState:
        """The session's state."""
        return self._state

    @property
    def transport(self) -> str:
        """The transport in use: the configured one, or ``"polling"`` if an upgrade was not offered."""
        return self._transport_name

    @property
    def partial_text(self) -> str:
        """The answer text so far of the query streaming now; ``""`` when none is.

        A finished answer is in its ``AnswerFinished`` (a failed one in its
        ``QueryFailed``).  Errors copy this, so an error after an answer finished
        carries no partial text (see :class:`~plabs_proto.errors.LabsError`).
        """
        return self._decoder.text if self._decoder is not None else ""

    @property
    def partial_reasoning(self) -> str:
        """The reasoning so far of the query streaming now; ``""`` when none is."""
        return self._decoder.reasoning if self._decoder is not None else ""

    # -- user commands --------------------------------------------------------------------------

    def connect(self, now: float) -> None:
        """Start the session: the first ``transmit()`` then opens a connection."""
        if self._state is not ClientState.IDLE:
            raise LocalProtocolError(f"connect() needs a new client, but this one is {self._state.value}")
        self._now = now
        self._state = ClientState.CONNECTING
        self._transport_name = self.config.transport
        if self.config.connect_timeout is not None:
            self._deadlines["connect"] = now + self.config.connect_timeout
        with self._guard():
            stream = self._open_stream()
            self._main = stream
            if self.config.transport == "websocket":
                self._send_upgrade(stream, sid=None)
            else:
                self._http(stream, "GET", self._target("polling"), b"", _OPEN)
            # The second connection (polling: for POSTs; upgrade: for the WebSocket) opens
            # now, so its TCP (and TLS, proxy) handshakes run beside the handshake GET.
            if self.config.transport == "polling":
                self._post_stream = self._open_stream()
            elif self.config.transport == "upgrade":
                self._ws_stream = self._open_stream()

    def query(
        self,
        messages: str | Sequence[Mapping[str, Any]],
        *,
        model: str = DEFAULT_MODEL,
        now: float,
    ) -> None:
        """Ask Labs; the answer comes as events.  One query at a time per session.

        Allowed while connecting (it is sent as soon as the session is up) and
        when ready.  ``messages`` is a prompt string or a list of
        ``{"role", "content"}`` messages; they are normalised as Labs needs.

        A request not smaller than the server's ``maxPayload`` is never sent: once
        the server's open packet has arrived, this raises
        :class:`LocalProtocolError` (the session stays as it was).  A query
        made before that waits, and the check runs when the open packet
        arrives: the error is then raised from the ``receive_data()`` call that
        brought it, and is fatal (the client moves to ``ERROR`` and closes its
        streams), since the query it belongs to can no longer be refused alone.
        """
        if self._state not in (ClientState.CONNECTING, ClientState.READY) or self._decoder is not None:
            if self._decoder is not None or self._state is ClientState.QUERYING:
                raise LocalProtocolError(
                    "cannot start a query while another one is still streaming on this session: "
                    "queries run one after another"
                )
            raise LocalProtocolError(
                f"cannot query a session that is {self._state.value}; call connect() first"
                if self._state is ClientState.IDLE
                else f"cannot query a session that is {self._state.value}"
            )
        request = build_request(messages, model=model or DEFAULT_MODEL, version=self.config.version)
        self._now = now
        frame = "42" + json.dumps([REQUEST_EVENT, request], separators=(",", ":"), ensure_ascii=False)
        if self._max_payload is not None:
            self._check_request_size(frame, pending=False)
        self._decoder = AnswerDecoder(request["model"])
        self._frames = CumulativeFrameReader()
        if self.config.first_text_timeout is not None:
            self._deadlines["first_text"] = now + self.config.first_text_timeout
        if self.config.query_timeout is not None:
            self._deadlines["query"] = now + self.config.query_timeout
        if self._state is ClientState.READY:
            self._state = ClientState.QUERYING
            with self._guard():
                self._send_eio(frame)
        else:
            self._pending_query = frame

    def close(self, now: float) -> None:
        """End the session politely (Socket.IO and Engine.IO close), then close every stream."""
        if self._state in (ClientState.CLOSED, ClientState.ERROR):
            return
        self._now = now
        if self._state is not ClientState.IDLE:
            main = self._main
            if main is not None and main.ws is not None and not main.ws.closed and main.open:
                self._write(main, main.ws.send_text("41") + main.ws.send_text("1") + main.ws.close())
            elif self.engine_sid and self._transport_name != "websocket":
                stream = self._post_stream if self._transport_name == "polling" else self._main
                if stream is not None and stream.open and stream.http is not None and stream.http.reusable:
                    body = engineio.encode_payload(
                        [engineio.Packet(engineio.PacketType.MESSAGE, "1"), engineio.Packet(engineio.PacketType.CLOSE)]
                    ).encode("utf-8")
                    self._http(stream, "POST", self._target("polling", self.engine_sid), body, "close")
        self._state = ClientState.CLOSED
        self._deadlines.clear()
        self._close_all()
        self._events.append(Closed(reason="closed by the client"))

    # -- I/O inputs -----------------------------------------------------------------------------

    def receive_data(self, stream_id: int, data: bytes, now: float) -> None:
        """Feed bytes received on a stream (``b""`` at end of file)."""
        stream = self._streams.get(stream_id)
        if stream is None or not stream.open:
            if not 0 < stream_id < self._next_stream_id:
                raise LocalProtocolError(
                    f"expected the id of a stream this client opened, got {stream_id!r}"
                )
            if self._state is ClientState.ERROR:
                raise LocalProtocolError("cannot receive data: the client already failed and closed its streams")
            return  # late bytes for a stream we already closed
        self._now = now
        with self._guard():
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
        due = [(at, name) for name, at in self._deadlines.items() if at <= now]
        if not due:
            return
        _, name = min(due)
        waited = {
            "connect": self.config.connect_timeout,
            "first_text": self.config.first_text_timeout,
            "query": self.config.query_timeout,
            "heartbeat": self._ping_window,
        }[name]
        message = {
            "connect": f"expected the Labs session to be connected within {waited:g} s, it was not",
            "first_text": f"expected the first answer text within {waited:g} s of the query, got none",
            "query": f"expected the whole answer within {waited:g} s of the query, it was not complete",
            "heartbeat": (
                f"expected a ping from the server at least every {waited:g} s "
                "(pingInterval + pingTimeout), got none"
            ),
        }[name]
        with self._guard():
            raise LabsTimeout(message, deadline=name)

    # -- outputs --------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The next deadline (same clock as ``now``), or None."""
        return min(self._deadlines.values()) if self._deadlines else None

    def next_event(self) -> Event | None:
        """The next event, or None when there is none for now."""
        return self._events.popleft() if self._events else None

    def events(self) -> list[Event]:
        """Every pending event at once."""
        out = list(self._events)
        self._events.clear()
        return out

    def transmit(self) -> list[Instruction]:
        """What the caller must do now with its connections, in order."""
        out = self._instructions
        self._instructions = []
        self._pong_queued = False
        return out

    # -- internals: errors ----------------------------------------------------------------------

    class _GuardCtx:
        __slots__ = ("client",)

        def __init__(self, client: LabsClient) -> None:
            self.client = client

        def __enter__(self) -> None:
            return None

        def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> bool:
            if isinstance(exc, _SessionEnded):
                return True  # the session ended mid-step: the rest of the step has nothing to do
            if isinstance(exc, LabsError) and not isinstance(exc, LocalProtocolError):
                self.client._fail(exc)
            return False

    def _guard(self) -> LabsClient._GuardCtx:
        return LabsClient._GuardCtx(self)

    def _fail(self, exc: LabsError) -> None:
        if not exc.partial_text:
            exc.partial_text = self.partial_text
        if not exc.partial_reasoning:
            exc.partial_reasoning = self.partial_reasoning
        self._state = ClientState.ERROR
        self._deadlines.clear()
        self._close_all()

    def _close_all(self) -> None:
        for stream in self._streams.values():
            if stream.open:
                stream.open = False
                self._instructions.append(CloseStream(stream_id=stream.id))

    # -- internals: streams and HTTP ------------------------------------------------------------

    def _open_stream(self) -> _Stream:
        self._check_live("open a connection")
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
        stream = _Stream(stream_id, stack, HTTPChannel(max_body=self._limit + _BODY_SLACK))
        self._streams[stream_id] = stream
        self._instructions.append(OpenStream(stream_id=stream_id, host=host, port=port))
        opening = stack.data_to_send()  # a CONNECT request, a SOCKS greeting or a ClientHello
        if opening:
            self._instructions.append(SendBytes(stream_id=stream_id, data=opening))
        return stream

    def _close_stream(self, stream: _Stream) -> None:
        if stream.open:
            stream.open = False
            self._instructions.append(CloseStream(stream_id=stream.id))
        self._streams.pop(stream.id, None)

    def _check_live(self, what: str) -> None:
        """Refuse to ``what`` once the session has ended: every stream is closed for good."""
        if self._state is ClientState.CLOSED or self._state is ClientState.ERROR:
            raise _SessionEnded(f"cannot {what}: the session is {self._state.value}")

    def _write(self, stream: _Stream, data: bytes) -> None:
        self._check_live("send")
        if self._tracer is not None:
            self._tracer(self._now, stream.id, "out", data)
        stack = stream.stack
        stack.send(data)
        raw = stack.data_to_send()
        if raw:
            self._instructions.append(SendBytes(stream_id=stream.id, data=raw))

    def _target(self, transport: str, sid: str | None = None) -> str:
        query = f"EIO=4&transport={transport}"
        if transport == "polling":
            query += f"&t={self._t}"
        if sid:
            # The server chose the sid (printable, checked when the open packet was read): escape
            # every byte that could end or change the query.
            query += "&sid=" + quote(sid, safe="")
        return f"{self._path}?{query}"

    def _request_headers(self) -> list[tuple[str, str]]:
        headers = [
            ("Host", self._host_header),
            ("User-Agent", self.config.user_agent),
            ("Accept", "*/*"),
            ("Origin", self.config.origin),
            ("Referer", self.config.origin.rstrip("/") + "/"),
        ]
        if self._cookies:
            headers.append(("Cookie", "; ".join(f"{k}={v}" for k, v in self._cookies.items())))
        if self.config.headers:
            # The caller's headers replace ours of the same name (a browser's User-Agent, say).
            own = {name.lower() for name, _ in self.config.headers}
            headers = [(name, value) for name, value in headers if name.lower() not in own]
            headers.extend(self.config.headers)
        return headers

    def _usable(self, stream: _Stream | None) -> _Stream:
        """``stream`` if it can carry a request now, else a fresh connection in its place."""
        if stream is not None and stream.open and stream.http is not None and stream.http.reusable:
            return stream
        if stream is not None:
            self._close_stream(stream)
        return self._open_stream()

    def _http(self, stream: _Stream, method: str, target: str, body: bytes, purpose: str) -> None:
        headers = self._request_headers()
        if method == "POST":
            headers.append(("Content-Type", "text/plain;charset=UTF-8"))
        assert stream.http is not None  # every caller passes a stream from _usable/_open_stream
        stream.purpose = purpose
        self._write(stream, stream.http.request(method, target, headers, body))

    def _send_upgrade(self, stream: _Stream, sid: str | None) -> None:
        self._ws_key = make_key(self._rng)
        headers = self._request_headers()
        headers += [
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", self._ws_key),
        ]
        assert stream.http is not None
        stream.purpose = _UPGRADE
        self._write(stream, stream.http.request("GET", self._target("websocket", sid), headers))

    def _on_http_bytes(self, stream: _Stream, data: bytes, now: float) -> None:
        http = stream.http
        if http is None:  # pragma: no cover - streams without HTTP are WebSocket streams
            return
        result = http.receive_data(data)
        if result is None:
            return
        purpose, stream.purpose = stream.purpose, ""
        if isinstance(result, SwitchedProtocol):
            self._on_switched(stream, result, now)
            return
        self._remember_cookies(result)
        if purpose == _UPGRADE:
            raise self._refused(result, "the WebSocket upgrade", 101)
        if http.closed:
            self._close_stream(stream)
        if purpose == _OPEN:
            self._on_open_response(stream, result, now)
        elif purpose == _CONNECT_POST:
            self._check_post(result, "the Socket.IO CONNECT POST")
            self._connect_posted = True
            self._maybe_probe()
        elif purpose == _POLL:
            self._on_poll_body(result, now, "a long-polling GET")
            self._next_poll()
        elif purpose == _POST:
            self._check_post(result, "a polling POST")
            self._flush_posts()
        # "close": nothing more to do

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

    def _refused(self, response: HTTPResponse, what: str, expected: int) -> HandshakeError:
        text = " ".join(response.text().split())
        excerpt = text[:200]
        if looks_like_cloudflare(response):
            return HandshakeError(
                f"Cloudflare blocked {what}: expected HTTP {expected}, got HTTP {response.status} "
                f"{response.reason} with a Cloudflare challenge page",
                status=response.status,
                body_excerpt=excerpt,
                cloudflare=True,
            )
        detail = ""
        full = response.text()
        if not too_deep(full):  # a body nested too deep is only shown, not read
            try:
                body = json.loads(full)
            except ValueError:
                body = None
            if isinstance(body, dict) and isinstance(body.get("message"), str):
                detail = f" (Engine.IO error {body.get('code')}: {body['message']})"
        return HandshakeError(
            f"the server refused {what}: expected HTTP {expected}, got HTTP {response.status} "
            f"{response.reason}{detail}: {excerpt!r}",
            status=response.status,
            body_excerpt=excerpt,
        )

    def _check_post(self, response: HTTPResponse, what: str) -> None:
        if response.status == 413:
            what += " (413: the body was larger than the server accepts" + (
                f", its maxPayload being {self._max_payload} bytes)" if self._max_payload is not None else ")"
            )
        if response.status != 200:
            raise self._refused(response, what, 200)
        if response.body.strip().lower() != b"ok":
            raise RemoteProtocolError(
                f"expected 'ok' (any case) in answer to {what}, got {response.body[:60]!r}"
            )

    def _on_open_response(self, stream: _Stream, response: HTTPResponse, now: float) -> None:
        if response.status != 200:
            raise self._refused(response, "the Engine.IO handshake (polling GET)", 200)
        body = response.text()
        if not body.lstrip().startswith(("0", "9", "8", "7", "6", "5", "4", "3", "2", "1")):
            hint = " (an HTML page)" if "<html" in body[:2000].lower() else ""
            raise RemoteProtocolError(
                f"expected the Engine.IO open packet '0{{...}}' from the handshake GET, got{hint} {body[:60]!r}"
            )
        packets = engineio.iter_payload(body)
        first = next(packets, None)  # None: the v3 empty payload '0:'
        if first is None or first.type is not engineio.PacketType.OPEN or not isinstance(first.data, str):
            raise RemoteProtocolError(
                f"expected the Engine.IO open packet first in the handshake GET, got {body[:60]!r}"
            )
        self._on_open_packet(first.data, now)
        for packet in packets:
            self._on_eio_packet(packet, now)
            if self._state is ClientState.CLOSED:
                return  # the server closed the session at once (an Engine.IO close packet)
        if "websocket" not in self._upgrades and self._transport_name == "upgrade":
            # The server offers no upgrade: stay on polling, POSTing on the connection
            # that was opened for the WebSocket.
            self._transport_name = "polling"
            self._post_stream, self._ws_stream = self._ws_stream, None
        auth = "40" + json.dumps({"jwt": self.config.jwt}, separators=(",", ":"))
        if self._transport_name == "upgrade":
            # The CONNECT POST and the WebSocket upgrade go out together, on two connections.
            # The probe waits for both answers, so the server has the CONNECT before the
            # upgrade ends polling; its ack then comes on the WebSocket.
            main = self._usable(stream)
            self._main = main
            self._http(main, "POST", self._target("polling", self.engine_sid), auth.encode("utf-8"), _CONNECT_POST)
            ws_stream = self._usable(self._ws_stream)
            self._ws_stream = ws_stream
            self._send_upgrade(ws_stream, self.engine_sid)
        else:
            self._main = self._usable(stream)
            self._eio_out.append(auth)
            self._flush_posts()
            self._next_poll()

    def _on_open_packet(self, data: str, now: float) -> None:
        info = engineio.parse_open_packet(data)
        self.engine_sid = info.sid
        self._upgrades = info.upgrades
        self._ping_window = (info.ping_interval + info.ping_timeout) / 1000.0
        # maxPayload bounds what we send (our receive limit stays config.max_message_size).
        self._max_payload = info.max_payload
        self._deadlines["heartbeat"] = now + self._ping_window
        if self._pending_query is not None:
            self._check_request_size(self._pending_query, pending=True)

    def _check_request_size(self, frame: str, *, pending: bool) -> None:
        """Refuse a query whose request the server would refuse: not smaller than its maxPayload.

        Engine.IO allows a message of exactly maxPayload bytes, but python-engineio on aiohttp
        closes such a WebSocket message with 1009 (aiohttp's check is ``>=``): what we send
        stays below the limit, on every transport.
        """
        size = len(frame.encode("utf-8"))
        limit = self._max_payload
        if limit is None or size < limit:
            return
        message = (
            f"cannot send the query: its request is {size} bytes, but the server's maxPayload (in its "
            f"Engine.IO open packet) is {limit} bytes and a request must be smaller; shorten the prompt"
        )
        if not pending:
            raise LocalProtocolError(message)
        # A query made before the open packet: raised from receive_data, it ends the session.
        exc = LocalProtocolError(message + " (the query was made before the server's limit was known: "
                                 "the session is closed)")
        self._fail(exc)
        raise exc

    def _on_poll_body(self, response: HTTPResponse, now: float, what: str) -> None:
        if response.status != 200:
            raise self._refused(response, what, 200)
        noop = engineio.PacketType.NOOP
        for packet in engineio.iter_payload(response.text()):
            if packet.type is noop:
                continue
            if packet.data is not None and len(packet.data) > self._limit:
                raise RemoteProtocolError(
                    f"expected Engine.IO packets of at most {self._limit} bytes (max_message_size) in {what}, "
                    f"got one of {len(packet.data)}"
                )
            self._on_eio_packet(packet, now)
            if self._state is ClientState.CLOSED:
                return  # the packets after a close belong to no session

    def _next_poll(self) -> None:
        if self._state in (ClientState.CLOSED, ClientState.ERROR) or self._transport_name != "polling":
            return
        main = self._usable(self._main)
        self._main = main
        self._http(main, "GET", self._target("polling", self.engine_sid), b"", _POLL)

    def _flush_posts(self) -> None:
        if not self._eio_out or self._state in (ClientState.CLOSED, ClientState.ERROR):
            return
        stream = self._post_stream
        if stream is not None and stream.open and stream.http is not None and stream.http.busy:
            return  # the POST in flight will flush the rest when it completes
        stream = self._usable(stream)
        self._post_stream = stream
        # Split like the reference client: a body (packets joined by one separator byte) stays
        # below the server's maxPayload (see _check_request_size) unless it is one packet.
        limit = self._max_payload or _ENGINEIO_MAX_PAYLOAD  # posts follow the open packet: it is known
        batch: list[str] = []
        size = -1
        for text in self._eio_out:
            size += 1 + len(text.encode("utf-8"))
            if batch and size >= limit:
                break
            batch.append(text)
        self._eio_out = self._eio_out[len(batch):]
        body = "\x1e".join(batch).encode("utf-8")
        self._http(stream, "POST", self._target("polling", self.engine_sid), body, _POST)

    def _on_switched(self, stream: _Stream, switched: SwitchedProtocol, now: float) -> None:
        accept = switched.header("sec-websocket-accept")
        if accept != accept_token(self._ws_key):
            raise RemoteProtocolError(
                f"expected Sec-WebSocket-Accept {accept_token(self._ws_key)!r} in the 101 response, got {accept!r}"
            )
        self._remember_cookies(HTTPResponse(101, "", switched.headers, b""))
        stream.http = None
        stream.ws = WebSocketChannel(self._rng, max_message_size=self._limit, raw_text=True)
        if self._transport_name == "upgrade":
            self._maybe_probe()
        else:
            self._main = stream
        if switched.trailing_data:
            self._on_ws_bytes(stream, switched.trailing_data, now)

    def _maybe_probe(self) -> None:
        """Upgrade transport: once the WebSocket is open and the CONNECT POST answered, switch to it."""
        stream = self._ws_stream
        if not self._connect_posted or stream is None or stream.ws is None or self._probe_sent:
            return
        ws = stream.ws
        self._probing = self._probe_sent = True
        # The probe and the upgrade go out together, then whatever waited for the
        # WebSocket (pongs, a query): servers read them in order, so no round trip is spent.
        out = ws.send_text("2probe") + ws.send_text("5")
        for text in self._eio_out:
            out += ws.send_text(text)
        self._eio_out.clear()
        self._write(stream, out)
        polling = self._main
        self._main = stream
        if polling is not None and polling is not stream:
            self._close_stream(polling)  # the upgrade ends polling

    def _on_eof(self, stream: _Stream, now: float) -> None:
        if stream.ws is not None:
            if self._state is ClientState.CLOSED:
                self._close_stream(stream)
                return
            querying = self._decoder is not None
            raise RemoteProtocolError(
                "expected the rest of the answer, but the server closed the connection "
                f"after {len(self.partial_text)} characters of it"
                if querying
                else "expected the WebSocket connection to stay open, but the server closed it"
            )
        http = stream.http
        if http is not None and http.busy:
            # A response whose body ends at end of file (HTTP/1.0, no Content-Length) completes
            # now; one cut short raises.
            self._on_http_bytes(stream, b"", now)
        self._close_stream(stream)  # an idle keep-alive connection the server let go

    # -- internals: Engine.IO and Socket.IO -----------------------------------------------------

    def _send_eio(self, text: str) -> None:
        main = self._main
        if main is not None and main.ws is not None and main.open and not main.ws.closed:
            self._write(main, main.ws.send_text(text))
        else:
            self._eio_out.append(text)
            if self._transport_name == "polling" and self.engine_sid:
                self._flush_posts()

    def _on_ws_bytes(self, stream: _Stream, data: bytes, now: float) -> None:
        ws = stream.ws
        if ws is None:  # pragma: no cover
            return
        messages = ws.receive_data(data)
        for message in messages:
            if self._state in (ClientState.CLOSED, ClientState.ERROR):
                break
            if isinstance(message, Utf8Text):
                data = message.data
                if (
                    self._decoder is not None
                    and data[:3] == b"42["
                    and not self._probing
                    and not self._sio.awaiting_attachments
                ):
                    # A progress frame read on its bytes: only what follows the previous
                    # frame's output is decoded.
                    fast = self._frames.read_bytes(data, 1)
                    if fast is not None:
                        self._on_event(fast[0], fast[1], now)
                        continue
                self._on_ws_text(message.decode(), now)
            elif isinstance(message, str):
                self._on_ws_text(message, now)
            else:
                self._on_sio_binary(message)
        reply = ws.data_to_send()
        if reply and stream.open:
            self._write(stream, reply)
        if ws.close_reason is not None and self._state not in (ClientState.CLOSED, ClientState.ERROR):
            code, reason = ws.close_reason
            too_big = ""
            if code == 1009:  # RFC 6455: the endpoint got a message too big for it to process
                too_big = "; 1009 means message too big: the server refused a message we sent" + (
                    f" (its maxPayload is {self._max_payload} bytes)" if self._max_payload is not None else ""
                )
            if self._decoder is not None:
                raise RemoteProtocolError(
                    f"expected the rest of the answer, got a WebSocket close ({code} {reason!r}) after "
                    f"{len(self.partial_text)} characters of it{too_big}"
                )
            self._server_closed(f"WebSocket closed by the server ({f'{code} {reason}'.rstrip()}){too_big}")

    def _on_ws_text(self, text: str, now: float) -> None:
        if self._probing:
            if text != "3probe":
                raise RemoteProtocolError(f"expected '3probe' in answer to the upgrade probe, got {text[:60]!r}")
            self._probing = False
            return
        if text[:1] == "4":
            self._on_sio_text(text, 1, now)
        else:
            self._on_eio_packet(engineio.decode_packet(text), now)

    def _on_eio_packet(self, packet: engineio.Packet, now: float) -> None:
        kind = packet.type
        if kind is engineio.PacketType.MESSAGE:
            if isinstance(packet.data, bytes):
                self._on_sio_binary(packet.data)
            else:
                self._on_sio_text(packet.data or "", 0, now)
        elif kind is engineio.PacketType.PING:
            self._deadlines["heartbeat"] = now + self._ping_window
            # One pong waiting to be sent answers every ping before it: the server only
            # needs a pong after its latest ping (it clears its pingTimeout timer on any
            # pong; eio-sio-spec.md 1.6), so pings that arrive while a POST is stalled
            # queue nothing more.
            # Likewise on a WebSocket: a pong not handed to transmit() yet answers a ping after it.
            if not self._pong_queued and "3" not in self._eio_out:
                self._send_eio("3")
                self._pong_queued = True
        elif kind is engineio.PacketType.NOOP:
            pass
        elif kind is engineio.PacketType.OPEN:
            if self.engine_sid:
                raise RemoteProtocolError(f"expected one Engine.IO open packet, got a second one: {packet.data!r}")
            self._on_open_packet(packet.data if isinstance(packet.data, str) else "", now)
            self._send_eio("40" + json.dumps({"jwt": self.config.jwt}, separators=(",", ":")))
        elif kind is engineio.PacketType.CLOSE:
            if self._decoder is not None:
                raise RemoteProtocolError(
                    "expected the rest of the answer, got an Engine.IO close packet after "
                    f"{len(self.partial_text)} characters of it"
                )
            self._server_closed("Engine.IO session closed by the server")
        else:
            raise RemoteProtocolError(
                f"expected an Engine.IO packet a server sends (open, close, ping, message, noop), "
                f"got {kind.name.lower()} {packet.data!r:.60}"
            )

    def _on_sio_text(self, text: str, start: int, now: float) -> None:
        """The Socket.IO packet at ``text[start:]``."""
        # Fast paths: an EVENT on the default namespace without an ack id, 2["name",...]
        if text.startswith("2[", start) and not self._sio.awaiting_attachments:
            if self._decoder is not None:
                # A progress frame read by the prefix it shares with the previous one.
                fast = self._frames.read(text, start)
                if fast is not None:
                    self._on_event(fast[0], fast[1], now)
                    return
            check_depth(text, "the JSON data of a Socket.IO event", start + 1)
            try:
                args = json.loads(text[start + 1 :])
            except ValueError:
                raise RemoteProtocolError(
                    f"expected a JSON array after '42', got {text[start : start + 60]!r}"
                ) from None
            if type(args) is list and args and type(args[0]) is str:
                self._on_event(args[0], args[1] if len(args) > 1 else None, now)
                return
        packet = self._sio.feed(text[start:] if start else text)
        if packet is not None:
            self._on_sio_packet(packet, now)

    def _on_sio_binary(self, data: bytes) -> None:
        packet = self._sio.feed(data)
        if packet is not None:
            self._on_sio_packet(packet, self._now)

    def _on_sio_packet(self, packet: socketio.Packet, now: float) -> None:
        if packet.namespace != "/":
            return  # not ours
        kind = packet.type
        if kind is socketio.PacketType.CONNECT:
            data = packet.data
            if not isinstance(data, dict) or not isinstance(data.get("sid"), str):
                raise RemoteProtocolError(
                    f"expected a Socket.IO connect ack with a sid ('40{{\"sid\":...}}'), got {data!r:.60}"
                )
            self._on_connected(data["sid"])
        elif kind is socketio.PacketType.EVENT:
            args = packet.data
            if isinstance(args, list) and args and isinstance(args[0], str):
                self._on_event(args[0], args[1] if len(args) > 1 else None, now)
        elif kind is socketio.PacketType.CONNECT_ERROR:
            data = packet.data
            message = data.get("message") if isinstance(data, dict) else data
            raise ResponseError(
                f"the server refused the Socket.IO connection: {message}", server_text=str(message)
            )
        elif kind is socketio.PacketType.DISCONNECT:
            if self._decoder is not None:
                raise RemoteProtocolError(
                    "expected the rest of the answer, got a Socket.IO disconnect after "
                    f"{len(self.partial_text)} characters of it"
                )
            self._server_closed("Socket.IO namespace disconnected by the server")
        # ACKs: we send no acked events, so there is nothing to match them with.

    def _on_connected(self, socket_sid: str) -> None:
        if self._connected:
            return  # a duplicate ack (it may be re-sent on the new transport)
        self._connected = True
        self.socket_sid = socket_sid
        self._deadlines.pop("connect", None)
        self._events.append(
            Connected(engine_sid=self.engine_sid, socket_sid=socket_sid, transport=self._transport_name)
        )
        self._state = ClientState.READY
        if self._pending_query is not None:
            # Before the upgrade this waits in _eio_out and goes out right behind the probe.
            frame, self._pending_query = self._pending_query, None
            self._state = ClientState.QUERYING
            self._send_eio(frame)

    def _on_event(self, name: str, payload: object, now: float) -> None:
        decoder = self._decoder
        if decoder is None or not name.endswith("_query_progress"):
            return  # not an answer we wait for
        events = decoder.feed(payload)
        for event in events:
            if type(event) is TextDelta or type(event) is ReasoningDelta:
                if self._deadlines:
                    self._deadlines.pop("first_text", None)
            elif type(event) is AnswerFinished or type(event) is QueryFailed:
                self._decoder = None
                self._deadlines.pop("first_text", None)
                self._deadlines.pop("query", None)
                self._state = ClientState.READY
        self._events.extend(events)

    def _server_closed(self, reason: str) -> None:
        self._state = ClientState.CLOSED
        self._deadlines.clear()
        self._close_all()
        self._events.append(Closed(reason=reason))
