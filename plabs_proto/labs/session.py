"""The message level: a Labs session over abstract HTTP exchanges and WebSocket messages.

:class:`LabsSession` runs a whole Perplexity Labs session (the Engine.IO
handshake, the probe and upgrade, heartbeats, the Socket.IO connect, queries,
the Labs answer stream, deadlines) without a byte of HTTP or WebSocket of its
own, so that any HTTP/WebSocket client can carry it: aiohttp, httpx with a
WebSocket library, a browser's fetch, curl_cffi.  Its caller does, in a loop:

1. carries out ``transmit()``: :class:`~plabs_proto.events.HTTPRequest`,
   :class:`~plabs_proto.events.WebSocketConnect`,
   :class:`~plabs_proto.events.WebSocketSend`,
   :class:`~plabs_proto.events.WebSocketClose`;
2. reports what came back: ``receive_http_response``, ``receive_websocket_open``,
   ``receive_websocket_message``, ``receive_websocket_close``, and
   ``receive_transport_error`` for a request or WebSocket that failed below
   (refused, reset, TLS);
3. fires ``handle_timer(now)`` when ``get_timer()``'s deadline comes;

and reads ``next_event()`` for what happened.  Commands are ``connect(now)``,
``query(messages, model=..., now=...)`` and ``close(now)``.  The states and the
moves between them are in :mod:`plabs_proto.state`.

The session states only what the protocol needs (Origin, Referer, a POST's
Content-Type); its carrier adds its own headers, cookies, compression, proxies
and TLS.  It never assumes two requests share a connection.  Once the session
has ended (CLOSED or ERROR) every WebSocket it opened has a ``WebSocketClose``
and requests still out have nobody waiting for them: drop them.

The byte level (:class:`~plabs_proto.wire.client.LabsClient`) drives a session with
the public calls above (``receive_http_response(..., reason=...)``,
``receive_websocket_messages(..., limited=True)`` for each WebSocket read) and
exactly two internals, both for what only a carrier that parses the bytes
itself has: ``_drain()`` hands out the instructions of each input without
ending the pong window that ``transmit()`` ends, and ``_fail(exc)`` ends the
session for an error in the bytes (TLS, HTTP, WebSocket frames, a proxy).

The pieces below, in the manner of aioquic's H3 over QUIC: the session itself
is the shared part, which knows what the packets mean (the Engine.IO open,
ping/pong and close, Socket.IO, the Labs events, the outgoing queue, the state
table and the deadlines); under it, one small piece per transport knows only
how to carry Engine.IO packets: :class:`_Polling` (a long-polling GET out, the
queue batched into POSTs), :class:`_WebSocket` (one packet per message, the
probe's answer) and :class:`_Upgrade`, over those two (the CONNECT by POST
while the WebSocket opens, then the probe and the switch).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from plabs_proto import state as _state
from plabs_proto.errors import (
    HandshakeError,
    LabsError,
    LabsTimeout,
    LocalProtocolError,
    NetworkError,
    RemoteProtocolError,
    ResponseError,
)
from plabs_proto.events import (
    AnswerFinished,
    Closed,
    Connected,
    Event,
    HTTPRequest,
    QueryFailed,
    ReasoningDelta,
    SessionInstruction,
    TextDelta,
    WebSocketClose,
    WebSocketConnect,
    WebSocketSend,
)
from plabs_proto.labs import engineio, socketio
from plabs_proto.labs.answer import (
    DEFAULT_MODEL,
    DEFAULT_VERSION,
    REQUEST_EVENT,
    AnswerDecoder,
    CumulativeFrameReader,
    build_request,
    is_progress_event,
)
from plabs_proto.refusal import refusal, unexpected_page
from plabs_proto.state import SessionState, next_state
from plabs_proto.wire.http import HTTPResponse
from plabs_proto.wire.websocket import Utf8Text

__all__ = ["DEFAULT_MAX_MESSAGE_SIZE", "DEFAULT_SERVER", "TRANSPORTS", "LabsSession", "SessionConfig", "SessionState"]

TRANSPORTS = ("upgrade", "websocket", "polling")
DEFAULT_SERVER = "https://www.perplexity.ai"
DEFAULT_ORIGIN = "https://labs.perplexity.ai"
DEFAULT_JWT = "anonymous-ask-user"
#: Our receive limit by default: 64 MiB, so that a long answer's last cumulative frame fits.
DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024
#: What a polling GET body may carry beyond one packet of the receive limit.
BODY_SLACK = 64 * 1024
#: Engine.IO's default maxPayload, for a server that does not announce one.
ENGINEIO_MAX_PAYLOAD = 1_000_000

_PONG = engineio.Packet(engineio.PacketType.PONG)


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionConfig:
    """What the message level needs: where, how, who, and how long to wait.

    The same fields, defaults and meanings as in
    :class:`~plabs_proto.wire.client.ClientConfig`, without the byte-level ones
    (proxy, TLS, extra headers, User-Agent): those belong to whoever carries
    the session.  ``max_message_size`` is our receive limit (a WebSocket
    message, an Engine.IO packet); the server's ``maxPayload`` bounds what we
    send.
    """

    server: str = DEFAULT_SERVER
    path: str = "/socket.io/"
    transport: str = "upgrade"
    origin: str = DEFAULT_ORIGIN
    jwt: str = DEFAULT_JWT
    version: str = DEFAULT_VERSION
    connect_timeout: float | None = 30.0
    first_text_timeout: float | None = 60.0
    query_timeout: float | None = None
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE

    def __post_init__(self) -> None:
        """Refuse a field of the wrong kind now, with :class:`LocalProtocolError`, not with a TypeError later."""
        if self.transport not in TRANSPORTS:
            raise LocalProtocolError(
                f"expected a transport among {', '.join(TRANSPORTS)}, got {self.transport!r:.60}"
            )
        size = self.max_message_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise LocalProtocolError(f"expected max_message_size as an int >= 1 (bytes), got {size!r:.60}")
        if not isinstance(self.path, str):
            raise LocalProtocolError(f"expected the path as a str, got {self.path!r:.60}")
        check_header_text("the server path", split_server(self.server, self.path)[3])
        for name in ("origin", "jwt", "version"):
            if not isinstance(getattr(self, name), str):
                raise LocalProtocolError(f"expected {name} as a str, got {getattr(self, name)!r:.60}")
        check_header_text("origin", self.origin)
        for name in ("connect_timeout", "first_text_timeout", "query_timeout"):
            check_seconds(name, getattr(self, name))


def split_server(server: str, path: str) -> tuple[str, str, int | None, str]:
    """The scheme, host, port (``None`` when the URL names none) and request path of a server URL.

    The request path is the URL's own path and the Socket.IO ``path``, one slash between
    and one at the end (``https://x.test/base`` and ``socket.io`` give ``/base/socket.io/``).
    Anything but an ``http://`` or ``https://`` URL with a host and a valid port raises
    :class:`LocalProtocolError`.
    """
    try:
        url = urlsplit(server) if isinstance(server, str) else None
    except ValueError:  # an unclosed "[" of an IPv6 address, say
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.hostname:
        raise LocalProtocolError(f"expected an http:// or https:// server URL, got {server!r:.80}")
    try:
        port = url.port
    except ValueError:
        raise LocalProtocolError(f"expected a valid port in the server URL, got {server!r:.80}") from None
    return url.scheme, url.hostname, port, url.path.rstrip("/") + "/" + path.strip("/") + "/"


def check_header_text(what: str, text: object) -> None:
    """Refuse what cannot go in a request head: HTTP/1.1 header text is ASCII without CR or LF."""
    if not isinstance(text, str) or not text.isascii() or "\r" in text or "\n" in text:
        raise LocalProtocolError(
            f"expected {what} as ASCII text without CR or LF (HTTP/1.1 header text; "
            f"punycode a host name, percent-encode a path), got {text!r:.80}"
        )


def check_seconds(name: str, value: object) -> None:
    """Refuse a deadline that is not ``None`` or a number of seconds > 0."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or not value > 0):
        raise LocalProtocolError(f"expected {name} as a number of seconds > 0 or None, got {value!r:.60}")


def _size(packet: engineio.Packet) -> int:
    """The size in bytes of an Engine.IO text packet as sent."""
    encoded = engineio.encode_packet(packet)
    return len(encoded.encode("utf-8") if isinstance(encoded, str) else encoded)


_CLOSED, _ERROR, _QUERYING = SessionState.CLOSED, SessionState.ERROR, SessionState.QUERYING


class _Ended(Exception):
    """The session ended in the middle of a step: the rest of the step has nothing to do."""


class _Polling:
    """The long-polling piece: carries Engine.IO packets by GET and POST, at most one of each out.

    It knows requests, not Engine.IO: it batches the session's outgoing queue
    into POST bodies below the server's maxPayload, keeps one GET waiting, and
    hands every packet a GET brings to the session.  The session decides when
    polling runs (``transport == "polling"``) and what the packets mean.
    """

    __slots__ = ("get_id", "post_id", "session")

    def __init__(self, session: LabsSession) -> None:
        self.session = session
        self.get_id: int | None = None
        self.post_id: int | None = None

    def poll(self) -> None:
        """Keep one long-polling GET out (when polling carries the session)."""
        session = self.session
        if session._transport != "polling" or self.get_id is not None:
            return
        self.get_id = session._request("GET", session._url("polling", session.engine_sid), b"", "poll")

    def flush(self) -> None:
        """POST what waits in the session's queue, unless a POST is out (its answer sends the rest)."""
        session = self.session
        queue = session._queue
        if not queue or self.post_id is not None:
            return
        session._check_live()
        # Like the reference client: a body stays below the server's maxPayload unless it is one packet.
        limit = session._max_payload or ENGINEIO_MAX_PAYLOAD
        size = -1
        count = 0
        for packet in queue:
            size += 1 + _size(packet)
            if count and size >= limit:
                break
            count += 1
        batch, session._queue = queue[:count], queue[count:]
        body = engineio.encode_payload(batch).encode("utf-8")
        self.post_id = session._request("POST", session._url("polling", session.engine_sid), body, "post")

    def on_get(self, response: HTTPResponse, now: float) -> None:
        """A long-polling GET's answer: its packets go up to the session, then the next GET goes out."""
        self.get_id = None
        session = self.session
        what = "a long-polling GET"
        if response.status != 200:
            raise session._refused(response, what, 200)
        page = unexpected_page(response, what, "Engine.IO packets")
        if page is not None:
            raise page
        noop = engineio.PacketType.NOOP
        limit = session._limit
        for packet in engineio.iter_payload(response.text()):
            if packet.type is noop:
                continue
            if packet.data is not None and len(packet.data) > limit:
                raise RemoteProtocolError(
                    f"expected Engine.IO packets of at most {limit} bytes (max_message_size) in {what}, "
                    f"got one of {len(packet.data)}"
                )
            session._on_eio_packet(packet, now)
            session._check_live()  # the packets after a close belong to no session
        self.poll()

    def on_post(self, response: HTTPResponse) -> None:
        """A polling POST's answer: 'ok', then the next batch goes out."""
        self.post_id = None
        self.check_post(response, "a polling POST")
        self.flush()

    def check_post(self, response: HTTPResponse, what: str) -> None:
        """Refuse a POST's answer other than 200 'ok' (413 names the server's maxPayload)."""
        session = self.session
        if response.status == 413:
            what += " (413: the body was larger than the server accepts" + (
                f", its maxPayload being {session._max_payload} bytes)" if session._max_payload is not None else ")"
            )
        if response.status != 200:
            raise session._refused(response, what, 200)
        if response.body.strip().lower() != b"ok":
            page = unexpected_page(response, what, "'ok'")
            if page is not None:
                raise page
            raise RemoteProtocolError(f"expected 'ok' (any case) in answer to {what}, got {response.body[:60]!r}")


class _WebSocket:
    """The WebSocket piece: one WebSocket, one Engine.IO packet per message, from connect to close.

    It knows messages, not Engine.IO: it sends packets as messages, answers the
    upgrade probe's '3probe' check, and hands every other text message up to the
    session (a Socket.IO message straight to the Socket.IO layer).
    """

    __slots__ = ("closed", "id", "open", "probing", "session")

    def __init__(self, session: LabsSession, ws_id: int) -> None:
        self.session = session
        self.id = ws_id
        self.open = False  # receive_websocket_open came
        self.closed = False  # WebSocketClose was sent or the peer closed it
        self.probing = False  # upgrade: 2probe sent, 3probe not received yet

    def send(self, packet: engineio.Packet) -> None:
        self.session._out.append(WebSocketSend(ws_id=self.id, data=engineio.encode_packet(packet)))

    def on_text(self, text: str, now: float) -> None:
        """One text message: the probe's answer, or an Engine.IO packet for the session."""
        if self.probing:
            if text != "3probe":
                raise RemoteProtocolError(f"expected '3probe' in answer to the upgrade probe, got {text[:60]!r}")
            self.probing = False
            return
        if text[:1] == "4":
            self.session._on_sio_text(text, 1, now)
        else:
            self.session._on_eio_packet(engineio.decode_packet(text), now)

    def close(self) -> None:
        """Close it (once): a WebSocketClose for the carrier."""
        if not self.closed:
            self.closed = True
            self.session._out.append(WebSocketClose(ws_id=self.id))


class _Upgrade:
    """The upgrade piece, over the other two: a polling handshake, then a WebSocket probe and the switch.

    The CONNECT goes by POST while the WebSocket opens; once both are done the
    probe and the upgrade packet go out together, followed by whatever waited
    in the queue, and from then on the WebSocket carries the session.
    """

    __slots__ = ("posted", "session")

    def __init__(self, session: LabsSession) -> None:
        self.session = session
        self.posted = False  # the CONNECT POST was answered

    def on_connect_post(self, response: HTTPResponse) -> None:
        self.session._polling.check_post(response, "the Socket.IO CONNECT POST")
        self.posted = True
        self.probe()

    def probe(self) -> None:
        """Once the WebSocket is open and the CONNECT POST answered, probe and switch to it."""
        session = self.session
        ws = session._ws
        if not self.posted or ws is None or not ws.open or ws.probing or session._on_ws:
            return
        session._check_live()
        ws.probing = True
        session._on_ws = True
        # The probe and the upgrade go out together, then whatever waited (pongs, a query):
        # servers read them in order, so no round trip is spent.
        ws.send(engineio.Packet(engineio.PacketType.PING, "probe"))
        ws.send(engineio.Packet(engineio.PacketType.UPGRADE))
        queued, session._queue = session._queue, []
        for packet in queued:
            ws.send(packet)


class LabsSession:
    """A sans-IO Labs session at the message level.  See the module docstring for the loop.

    ``rng`` supplies the ``t`` cache buster of polling URLs: pass
    ``random.SystemRandom()`` in production and a seeded ``random.Random`` in
    tests.
    """

    def __init__(self, config: SessionConfig | None = None, *, rng: random.Random) -> None:
        self.config = config = config or SessionConfig()
        scheme, host, port, path = split_server(config.server, config.path)
        literal = f"[{host}]" if ":" in host else host
        authority = literal if port is None else f"{literal}:{port}"
        ws_scheme = "wss" if scheme == "https" else "ws"
        self._http_base = f"{scheme}://{authority}{path}"
        self._ws_base = f"{ws_scheme}://{authority}{path}"
        self._host = host  # where every request and WebSocket goes (for a NetworkError)
        self._port = port if port is not None else (443 if scheme == "https" else 80)
        self._origin_headers = (("Origin", config.origin), ("Referer", config.origin.rstrip("/") + "/"))
        self._t = f"{rng.getrandbits(32):08x}"
        self._limit = config.max_message_size
        self._state = SessionState.IDLE
        self._transport = config.transport
        self._events: deque[Event] = deque()
        self._out: list[SessionInstruction] = []
        self._next_id = 1
        self._requests: dict[int, str] = {}  # request id -> what it is for
        self._deadlines: dict[str, float] = {}
        # The Engine.IO session
        self.engine_sid = ""
        self.socket_sid = ""
        self._ping_window = 45.0
        self._max_payload: int | None = None  # what the server takes from us (its open packet)
        self._upgrades: tuple[str, ...] = ("websocket",)
        self._queue: list[engineio.Packet] = []  # Engine.IO packets waiting for a POST or the WebSocket
        self._pong_queued = False  # a pong is out since the last transmit()
        # The transports
        self._polling = _Polling(self)
        self._upgrade = _Upgrade(self)
        self._ws: _WebSocket | None = None
        self._on_ws = False  # packets go over the WebSocket (websocket transport, or upgraded)
        # Socket.IO and Labs
        self._sio = socketio.PacketDecoder()
        self._decoder: AnswerDecoder | None = None
        self._frames = CumulativeFrameReader()
        self._pending_query: engineio.Packet | None = None

    # -- public state ---------------------------------------------------------------------------

    @property
    def state(self) -> SessionState:
        """The session's state (see :mod:`plabs_proto.state`)."""
        return self._state

    @property
    def transport(self) -> str:
        """The transport in use: the configured one, or ``"polling"`` if an upgrade was not offered."""
        return self._transport

    @property
    def max_payload(self) -> int | None:
        """The server's maxPayload from its open packet (None before it came)."""
        return self._max_payload

    @property
    def partial_text(self) -> str:
        """The answer text so far of the query streaming now; ``""`` when none is."""
        return self._decoder.text if self._decoder is not None else ""

    @property
    def partial_reasoning(self) -> str:
        """The reasoning so far of the query streaming now; ``""`` when none is."""
        return self._decoder.reasoning if self._decoder is not None else ""

    # -- commands -------------------------------------------------------------------------------

    def connect(self, now: float) -> None:
        """Start the session: the first ``transmit()`` then holds its first request."""
        self._state = next_state(self._state, _state.CONNECT)
        if self.config.connect_timeout is not None:
            self._deadlines["connect"] = now + self.config.connect_timeout
        with self._guard():
            if self._transport == "websocket":
                self._open_websocket(sid=None)
                self._on_ws = True
            else:
                self._request("GET", self._url("polling"), b"", "open")

    def query(self, messages: str | Sequence[Mapping[str, Any]], *, model: str = DEFAULT_MODEL, now: float) -> None:
        """Ask Labs; the answer comes as events.  One query at a time.

        Allowed while connecting (it is sent once the session is up) and when
        ready.  A request not smaller than the server's ``maxPayload`` raises
        LocalProtocolError once the open packet is known (the session stays as
        it was); a query made before that is checked when the open packet
        comes, and fails the session from that input.
        """
        if self._decoder is not None:  # a query waits or streams
            raise LocalProtocolError(
                "cannot start a query while another one is still streaming on this session: "
                "queries run one after another"
            )
        new_state = next_state(self._state, _state.QUERY)
        request = build_request(messages, model=model or DEFAULT_MODEL, version=self.config.version)
        packet = engineio.Packet(
            engineio.PacketType.MESSAGE,
            socketio.encode_packet(socketio.Packet(socketio.PacketType.EVENT, data=[REQUEST_EVENT, request])),
        )
        if self._max_payload is not None:
            self._check_request_size(packet, pending=False)
        self._decoder = AnswerDecoder(request["model"])
        self._frames = CumulativeFrameReader()
        if self.config.first_text_timeout is not None:
            self._deadlines["first_text"] = now + self.config.first_text_timeout
        if self.config.query_timeout is not None:
            self._deadlines["query"] = now + self.config.query_timeout
        self._state = new_state
        if new_state is SessionState.QUERYING:
            with self._guard():
                self._send(packet)
        else:
            self._pending_query = packet

    def close(self, now: float) -> None:
        """End the session politely (Socket.IO and Engine.IO close), then close the WebSocket."""
        state = self._state
        self._state = next_state(state, _state.CLOSE)
        if state in _state.END_STATES:
            return
        goodbye = [
            engineio.Packet(engineio.PacketType.MESSAGE, socketio.encode_packet(
                socketio.Packet(socketio.PacketType.DISCONNECT))),
            engineio.Packet(engineio.PacketType.CLOSE),
        ]
        ws = self._ws
        if self._on_ws and ws is not None and ws.open and not ws.closed:
            for packet in goodbye:
                ws.send(packet)
        elif self.engine_sid and self._transport != "websocket":
            body = engineio.encode_payload(goodbye).encode("utf-8")
            self._emit_request("POST", self._url("polling", self.engine_sid), body, "close")
        self._end()
        self._events.append(Closed(reason="closed by the client"))

    # -- inputs ---------------------------------------------------------------------------------

    def receive_http_response(
        self, request_id: int, status: int, headers: Sequence[tuple[str, str]], body: bytes, now: float,
        *, reason: str = "",
    ) -> None:
        """The response to the ``HTTPRequest`` of ``request_id`` (any status; headers as received).

        ``reason`` is the status line's reason phrase, for a carrier that has
        it (HTTP/1.1; HTTP/2 has none): error messages then show it after the
        status ("HTTP 403 Forbidden").
        """
        if (
            isinstance(status, bool) or not isinstance(status, int) or not isinstance(body, (bytes, bytearray))
            or not isinstance(reason, str)
        ):
            raise LocalProtocolError(
                "expected an int status, a bytes body and a str reason, got "
                f"{type(status).__name__}, {type(body).__name__} and {type(reason).__name__}"
            )
        purpose = self._take_request(request_id)
        if purpose is None:
            return
        with self._guard():
            if len(body) > self._limit + BODY_SLACK:
                raise RemoteProtocolError(
                    f"expected an HTTP body of at most {self._limit + BODY_SLACK} bytes (max_message_size and "
                    f"64 KiB), got one of {len(body)}"
                )
            response = HTTPResponse(status, reason, tuple((k.lower(), v) for k, v in headers), bytes(body))
            if purpose == "open":
                self._on_open_response(response, now)
            elif purpose == "connect-post":
                self._upgrade.on_connect_post(response)
            elif purpose == "poll":
                self._polling.on_get(response, now)
            elif purpose == "post":
                self._polling.on_post(response)

    def receive_websocket_open(self, ws_id: int, now: float) -> None:
        """The WebSocket of ``ws_id`` is open (its handshake succeeded)."""
        ws = self._websocket(ws_id)
        if ws is None:
            return
        if ws.open:
            raise LocalProtocolError(f"expected one receive_websocket_open for WebSocket {ws_id}, got a second one")
        ws.open = True
        with self._guard():
            if self._transport == "upgrade":
                self._upgrade.probe()

    def receive_websocket_message(self, ws_id: int, data: str | bytes, now: float) -> None:
        """A whole message from the WebSocket of ``ws_id``: ``str`` for text, ``bytes`` for binary."""
        if not isinstance(data, (str, bytes, bytearray, memoryview)):
            raise LocalProtocolError(
                f"expected a WebSocket message as str (text) or bytes (binary), got {type(data).__name__}"
            )
        self.receive_websocket_messages(ws_id, [data], now)

    def receive_websocket_utf8(self, ws_id: int, message: Utf8Text, now: float) -> None:
        """A text message not decoded yet (:class:`~plabs_proto.wire.websocket.Utf8Text`): only its new text is decoded."""
        self.receive_websocket_messages(ws_id, [message], now)

    def receive_websocket_messages(
        self, ws_id: int, messages: Sequence[str | bytes | Utf8Text], now: float, *, limited: bool = False
    ) -> None:
        """Every message one read of the WebSocket ``ws_id`` brought, in order: the hot path.

        The same as a ``receive_websocket_message`` per ``str`` (text) or
        ``bytes`` (binary) message and a ``receive_websocket_utf8`` per
        :class:`~plabs_proto.wire.websocket.Utf8Text` (text not decoded yet), with
        the WebSocket looked up and the error guard set up once per read
        instead of once per message.  A progress frame given as ``Utf8Text``
        is read on its UTF-8 bytes by the prefix it shares with the previous
        one, so only its new text is decoded: a carrier that can hand the
        undecoded text of its messages should.  Messages after one that ended
        the session are dropped.  ``limited=True`` says the carrier already
        refused every message over ``max_message_size`` (the byte level's
        WebSocket does, from the frame header), so the session does not
        measure them again.
        """
        ws = self._websocket(ws_id)
        if ws is None:
            return
        with self._guard():
            self._check_open(ws)
            limit = None if limited else self._limit
            for message in messages:
                if self._state is _CLOSED or self._state is _ERROR:
                    break  # (the session ended: what follows belongs to no session)
                if isinstance(message, Utf8Text):
                    data = message.data
                    if limit is not None and len(data) > limit:
                        raise self._too_big(len(data))
                    if (
                        self._decoder is not None
                        and data[:3] == b"42["
                        and not ws.probing
                        and not self._sio.awaiting_attachments
                    ):
                        fast = self._frames.read_bytes(data, 1)
                        if fast is not None:
                            self._on_event(fast[0], fast[1], now)
                            continue
                    ws.on_text(message.decode(), now)
                elif isinstance(message, str):
                    if limit is not None and len(message) > limit:
                        raise self._too_big(len(message))
                    ws.on_text(message, now)
                elif isinstance(message, (bytes, bytearray, memoryview)):
                    if limit is not None and len(message) > limit:
                        raise self._too_big(len(message))
                    self._on_sio_binary(bytes(message), now)
                else:
                    raise LocalProtocolError(
                        "expected WebSocket messages as str (text), bytes (binary) or Utf8Text, got "
                        f"{type(message).__name__}"
                    )

    def receive_websocket_close(self, ws_id: int, code: int | None, now: float, reason: str = "") -> None:
        """The WebSocket of ``ws_id`` closed.

        ``code`` is the close frame's code, or None when the connection ended
        without a close frame (or the carrier does not know).  Closed while an
        answer streams is an error; otherwise it ends the session cleanly.
        """
        ws = self._websocket(ws_id)
        if ws is None:
            return
        ws.closed = True
        with self._guard():
            querying = self._decoder is not None and self._state is SessionState.QUERYING
            if code is None:
                raise RemoteProtocolError(
                    "expected the rest of the answer, but the server closed the connection "
                    f"after {len(self.partial_text)} characters of it"
                    if querying
                    else "expected the WebSocket connection to stay open, but the server closed it"
                )
            too_big = ""
            if code == 1009:  # RFC 6455: the endpoint got a message too big for it to process
                too_big = "; 1009 means message too big: the server refused a message we sent" + (
                    f" (its maxPayload is {self._max_payload} bytes)" if self._max_payload is not None else ""
                )
            if querying:
                raise RemoteProtocolError(
                    f"expected the rest of the answer, got a WebSocket close ({code} {reason!r}) after "
                    f"{len(self.partial_text)} characters of it{too_big}"
                )
            shown = f"{code} {reason}".rstrip()
            if not ws.open or not self._on_ws:
                raise RemoteProtocolError(
                    f"expected the WebSocket to stay open for the session, but the server closed it ({shown})"
                )
            self._server_closed(f"WebSocket closed by the server ({shown}){too_big}")

    def receive_websocket_refused(
        self, ws_id: int, status: int, headers: Sequence[tuple[str, str]], body: bytes, now: float,
        reason: str = "",
    ) -> None:
        """The server answered the WebSocket handshake of ``ws_id`` with an HTTP response, not 101."""
        ws = self._websocket(ws_id)
        if ws is None:
            return
        ws.closed = True
        response = HTTPResponse(status, reason, tuple((k.lower(), v) for k, v in headers), bytes(body))
        with self._guard():
            raise self._refused(response, "the WebSocket upgrade", 101)

    def receive_transport_error(self, id: int, message: str, now: float) -> None:
        """The request or WebSocket ``id`` failed below HTTP (refused, reset, TLS): the session fails.

        Raises :class:`~plabs_proto.errors.NetworkError` with the server's
        ``host`` and ``port`` (from ``SessionConfig.server``: every request and
        WebSocket goes there; the port is 443 or 80 when the URL names none) and
        ``errno=None`` (the carrier's message is all the session knows), keeping
        the answer's text so far in ``partial_text``.  Late news of a request or
        WebSocket nobody waits for any more (the session ended) is ignored.
        """
        ws = self._ws
        if ws is not None and ws.id == id:
            if ws.closed or self._state in _state.END_STATES:
                return
            ws.closed = True
            what = "the WebSocket"
        else:
            purpose = self._take_request(id)
            if purpose is None:
                return
            what = f"the HTTP request ({purpose})"
        with self._guard():
            text = self.partial_text
            raise NetworkError(
                f"expected {what} to {self._host} port {self._port} to go through, but it failed below HTTP: "
                f"{message}" + (f" (after {len(text)} characters of the answer)" if text else ""),
                host=self._host,
                port=self._port,
            )

    def handle_timer(self, now: float) -> None:
        """Fire the deadlines due at ``now`` (call it when ``get_timer()`` comes)."""
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
                f"expected a ping from the server at least every {waited:g} s (pingInterval + pingTimeout), got none"
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

    def transmit(self) -> list[SessionInstruction]:
        """What the carrier must do now, in order."""
        self._pong_queued = False  # one pong per transmit(): a ping after this one needs its own
        return self._drain()

    def _drain(self) -> list[SessionInstruction]:
        """The instructions so far, without ending the pong window (for the byte level, between inputs).

        The byte level carries each input's instructions at once (so that, say,
        the probe goes out before the answer to what follows it in the same
        read) but a ping answered in that read and one in the next still share
        one pong until its own ``transmit()``, as they would for a carrier that
        calls ``transmit()`` once per read.
        """
        out = self._out
        self._out = []
        return out

    # -- internals: errors and the end ----------------------------------------------------------

    class _GuardCtx:
        __slots__ = ("session",)

        def __init__(self, session: LabsSession) -> None:
            self.session = session

        def __enter__(self) -> None:
            return None

        def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> bool:
            if isinstance(exc, _Ended):
                return True
            if isinstance(exc, LabsError) and not isinstance(exc, LocalProtocolError):
                self.session._fail(exc)
            return False

    def _guard(self) -> LabsSession._GuardCtx:
        return LabsSession._GuardCtx(self)

    def _fail(self, exc: LabsError) -> None:
        """End the session in ERROR because of ``exc`` (keeping the answer so far on it).

        The byte level calls it for an error of its own bytes (TLS, HTTP, a
        WebSocket frame, a proxy): below the messages, the session would never
        see it otherwise.
        """
        if not exc.partial_text:
            exc.partial_text = self.partial_text
        if not exc.partial_reasoning:
            exc.partial_reasoning = self.partial_reasoning
        self._state = next_state(self._state, _state.FAILED)
        self._end()

    def _end(self) -> None:
        """The session is over: no deadline, no request waited for, the WebSocket closed."""
        self._deadlines.clear()
        self._requests.clear()
        self._queue.clear()
        if self._ws is not None:
            self._ws.close()

    def _server_closed(self, reason: str) -> None:
        self._state = next_state(self._state, _state.SERVER_CLOSED)
        self._end()
        self._events.append(Closed(reason=reason))

    def _check_live(self) -> None:
        if self._state in _state.END_STATES:
            raise _Ended

    def _too_big(self, size: int) -> RemoteProtocolError:
        return RemoteProtocolError(
            f"expected a WebSocket message of at most {self._limit} bytes (max_message_size), got one of {size}"
        )

    # -- internals: requests and WebSockets -----------------------------------------------------

    def _take_id(self) -> int:
        new = self._next_id
        self._next_id += 1
        return new

    def _url(self, transport: str, sid: str | None = None) -> str:
        query = f"EIO=4&transport={transport}"
        if transport == "polling":
            query += f"&t={self._t}"
        if sid:
            query += "&sid=" + quote(sid, safe="")  # checked printable when read; escaped all the same
        base = self._http_base if transport == "polling" else self._ws_base
        return f"{base}?{query}"

    def _request(self, method: str, url: str, body: bytes, purpose: str) -> int:
        self._check_live()
        return self._emit_request(method, url, body, purpose)

    def _emit_request(self, method: str, url: str, body: bytes, purpose: str) -> int:
        headers: tuple[tuple[str, str], ...] = self._origin_headers
        if method == "POST":
            headers += (("Content-Type", "text/plain;charset=UTF-8"),)
        request_id = self._take_id()
        self._requests[request_id] = purpose
        self._out.append(HTTPRequest(request_id=request_id, method=method, url=url, headers=headers, body=body))
        return request_id

    def _take_request(self, request_id: int) -> str | None:
        """What the request was for; None for one nobody waits for any more (the session ended)."""
        purpose = self._requests.pop(request_id, None)
        if purpose is None and (
            not isinstance(request_id, int)
            or not 0 < request_id < self._next_id
            or (self._ws is not None and self._ws.id == request_id)
        ):
            raise LocalProtocolError(f"expected the id of an HTTPRequest this session made, got {request_id!r}")
        return purpose  # None: nobody waits for it any more (the session ended)

    def _websocket(self, ws_id: int) -> _WebSocket | None:
        ws = self._ws
        if ws is None or ws.id != ws_id:
            raise LocalProtocolError(f"expected the id of the WebSocket this session opened, got {ws_id!r}")
        if ws.closed or self._state in _state.END_STATES:
            return None  # late news of a WebSocket already closed
        return ws

    def _check_open(self, ws: _WebSocket) -> None:
        if not ws.open:
            raise LocalProtocolError(
                f"expected receive_websocket_open for WebSocket {ws.id} before its messages, got a message first"
            )

    def _open_websocket(self, sid: str | None) -> None:
        self._check_live()
        self._ws = _WebSocket(self, self._take_id())
        self._out.append(WebSocketConnect(ws_id=self._ws.id, url=self._url("websocket", sid), headers=self._origin_headers))

    # -- internals: the polling piece -----------------------------------------------------------

    def _refused(self, response: HTTPResponse, what: str, expected: int) -> HandshakeError:
        """The error for ``what`` answered with a status other than ``expected`` (see :mod:`._refusal`)."""
        return refusal(response, what, expected)

    def _on_open_response(self, response: HTTPResponse, now: float) -> None:
        if response.status != 200:
            raise self._refused(response, "the Engine.IO handshake (polling GET)", 200)
        body = response.text()
        if not body.lstrip().startswith(("0", "9", "8", "7", "6", "5", "4", "3", "2", "1")):
            page = unexpected_page(response, "the Engine.IO handshake (polling GET)", "the Engine.IO open packet '0{...}'")
            if page is not None:
                raise page
            raise RemoteProtocolError(
                f"expected the Engine.IO open packet '0{{...}}' from the handshake GET, got {body[:60]!r}"
            )
        packets = engineio.iter_payload(body)
        first = next(packets, None)  # None: the v3 empty payload '0:'
        if first is None or first.type is not engineio.PacketType.OPEN or not isinstance(first.data, str):
            raise RemoteProtocolError(f"expected the Engine.IO open packet first in the handshake GET, got {body[:60]!r}")
        self._on_open_packet(first.data, now)
        for packet in packets:
            self._on_eio_packet(packet, now)
            self._check_live()  # the server closed the session at once
        if "websocket" not in self._upgrades and self._transport == "upgrade":
            self._transport = "polling"  # the server offers no upgrade: stay on polling
        auth = self._connect_packet()
        if self._transport == "upgrade":
            # The CONNECT POST and the WebSocket go out together; the probe waits for both answers,
            # so the server has the CONNECT before the upgrade ends polling.
            post = engineio.encode_payload([auth]).encode("utf-8")
            self._request("POST", self._url("polling", self.engine_sid), post, "connect-post")
            self._open_websocket(self.engine_sid)
        else:
            self._queue.append(auth)
            self._polling.flush()
            self._polling.poll()

    # -- internals: sending -------------------------------------------------------------------

    def _send(self, packet: engineio.Packet) -> None:
        """Send one Engine.IO packet: on the WebSocket once it carries them, else by POST."""
        self._check_live()
        ws = self._ws
        if self._on_ws and ws is not None and ws.open and not ws.closed:
            ws.send(packet)
        else:
            self._queue.append(packet)
            if self._transport == "polling" and self.engine_sid:
                self._polling.flush()

    # -- internals: the Engine.IO session -------------------------------------------------------

    def _connect_packet(self) -> engineio.Packet:
        sio = socketio.encode_packet(socketio.Packet(socketio.PacketType.CONNECT, data={"jwt": self.config.jwt}))
        return engineio.Packet(engineio.PacketType.MESSAGE, sio)

    def _on_open_packet(self, data: str, now: float) -> None:
        info = engineio.parse_open_packet(data)
        self.engine_sid = info.sid
        self._upgrades = info.upgrades
        self._ping_window = (info.ping_interval + info.ping_timeout) / 1000.0
        self._max_payload = info.max_payload  # bounds what we send; our receive limit stays ours
        self._deadlines["heartbeat"] = now + self._ping_window
        if self._pending_query is not None:
            self._check_request_size(self._pending_query, pending=True)

    def _check_request_size(self, packet: engineio.Packet, *, pending: bool) -> None:
        """Refuse a query the server would refuse: a request not smaller than its maxPayload.

        Engine.IO allows a message of exactly maxPayload bytes, but python-engineio on aiohttp
        closes such a WebSocket message with 1009 (aiohttp's check is ``>=``): what we send
        stays below the limit, on every transport.
        """
        size = _size(packet)
        limit = self._max_payload
        if limit is None or size < limit:
            return
        message = (
            f"cannot send the query: its request is {size} bytes, but the server's maxPayload (in its "
            f"Engine.IO open packet) is {limit} bytes and a request must be smaller; shorten the prompt"
        )
        if not pending:
            raise LocalProtocolError(message)
        exc = LocalProtocolError(
            message + " (the query was made before the server's limit was known: the session is closed)"
        )
        self._fail(exc)
        raise exc

    def _on_eio_packet(self, packet: engineio.Packet, now: float) -> None:
        kind = packet.type
        if kind is engineio.PacketType.MESSAGE:
            if isinstance(packet.data, bytes):
                self._on_sio_binary(packet.data, now)
            else:
                self._on_sio_text(packet.data or "", 0, now)
        elif kind is engineio.PacketType.PING:
            self._deadlines["heartbeat"] = now + self._ping_window
            # One pong not handed out yet answers every ping before it: the server clears its
            # pingTimeout on any pong (eio-sio-spec.md 1.6).
            if not self._pong_queued and _PONG not in self._queue:
                self._pong_queued = True
                self._send(_PONG)
        elif kind is engineio.PacketType.NOOP:
            pass
        elif kind is engineio.PacketType.OPEN:
            if self.engine_sid:
                raise RemoteProtocolError(f"expected one Engine.IO open packet, got a second one: {packet.data!r}")
            self._on_open_packet(packet.data if isinstance(packet.data, str) else "", now)
            self._send(self._connect_packet())
        elif kind is engineio.PacketType.CLOSE:
            if self._decoder is not None and self._state is SessionState.QUERYING:
                raise RemoteProtocolError(
                    "expected the rest of the answer, got an Engine.IO close packet after "
                    f"{len(self.partial_text)} characters of it"
                )
            self._server_closed("Engine.IO session closed by the server")
        else:
            raise RemoteProtocolError(
                "expected an Engine.IO packet a server sends (open, close, ping, message, noop), "
                f"got {kind.name.lower()} {packet.data!r:.60}"
            )

    # -- internals: Socket.IO and Labs ----------------------------------------------------------

    def _on_sio_text(self, text: str, start: int, now: float) -> None:
        """The Socket.IO packet at ``text[start:]``."""
        if text.startswith("2[", start) and self._decoder is not None and not self._sio.awaiting_attachments:
            # A progress frame read by the prefix it shares with the previous one.
            fast = self._frames.read(text, start)
            if fast is not None:
                self._on_event(fast[0], fast[1], now)
                return
        packet = self._sio.feed(text[start:] if start else text)
        if packet is not None:
            self._on_sio_packet(packet, now)

    def _on_sio_binary(self, data: bytes, now: float) -> None:
        packet = self._sio.feed(data)
        if packet is not None:
            self._on_sio_packet(packet, now)

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
            raise ResponseError(f"the server refused the Socket.IO connection: {message}", server_text=str(message))
        elif kind is socketio.PacketType.DISCONNECT:
            if self._decoder is not None and self._state is SessionState.QUERYING:
                raise RemoteProtocolError(
                    "expected the rest of the answer, got a Socket.IO disconnect after "
                    f"{len(self.partial_text)} characters of it"
                )
            self._server_closed("Socket.IO namespace disconnected by the server")
        # ACKs: we send no acked events, so there is nothing to match them with.

    def _on_connected(self, socket_sid: str) -> None:
        if self._state is not SessionState.CONNECTING:
            return  # a duplicate ack (it may be re-sent on the new transport): the table says we are connected
        self.socket_sid = socket_sid
        self._deadlines.pop("connect", None)
        self._state = next_state(self._state, _state.CONNECTED)
        self._events.append(Connected(engine_sid=self.engine_sid, socket_sid=socket_sid, transport=self._transport))
        if self._pending_query is not None:
            packet, self._pending_query = self._pending_query, None
            self._state = next_state(self._state, _state.QUERY)
            self._send(packet)

    def _on_event(self, name: str, payload: object, now: float) -> None:
        decoder = self._decoder
        if decoder is None or self._state is not _QUERYING or not is_progress_event(name):
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
                self._state = next_state(self._state, _state.ANSWER_ENDED)
        self._events.extend(events)
