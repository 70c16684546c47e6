"""The Labs session: Socket.IO v5 and the Labs answer over an Engine.IO session, at the message level.

:class:`LabsSession` runs a whole Perplexity Labs session (the Socket.IO
connect, queries, the Labs answer stream, its deadlines and the state table)
over an :class:`~plabs_proto.labs.engineio_session.EngineIOSession` (the
transports, the handshake, heartbeats), without a byte of HTTP or WebSocket of
its own, so that any HTTP/WebSocket client can carry it: aiohttp, httpx with a
WebSocket library, a browser's fetch, curl_cffi, or the byte level
(:class:`~plabs_proto.wire.client.Client`).  Its caller, the carrier, does in a loop:

1. carries out ``transmit()``: :class:`~plabs_proto.events.HTTPRequest`,
   :class:`~plabs_proto.events.WebSocketConnect`,
   :class:`~plabs_proto.events.WebSocketSend`,
   :class:`~plabs_proto.events.WebSocketClose` (and may act on
   :class:`~plabs_proto.events.TransportSwitched`);
2. reports what came back: ``receive_http_response``, ``receive_websocket_open``,
   ``receive_websocket_message`` (or ``receive_websocket_messages`` for all of
   one read), ``receive_websocket_close``, ``receive_websocket_refused``, and
   ``receive_transport_error`` for a request or WebSocket that failed below
   (refused, reset, TLS), or ``fail(exc)`` for an error it found in the bytes itself;
3. fires ``handle_timer(now)`` when ``get_timer()``'s deadline comes;

and reads ``next_event()`` for what happened.  Commands are ``connect(now)``,
``query(messages, model=..., now=...)`` and ``close(now)``.  The states and the
moves between them are in :mod:`plabs_proto.state`.

Data flows one way: each input goes down to the Engine.IO session, and this
session reads its events back (opened, a message, the upgrade, closed); the
Engine.IO session knows nothing of this one.  The session states only what the
protocol needs (Origin, Referer, a POST's Content-Type); its carrier adds its
own headers, cookies, compression, proxies and TLS.  Once the session has ended
(CLOSED or ERROR) every WebSocket it opened has a ``WebSocketClose`` and
requests still out have nobody waiting for them: drop them.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import plabs_proto.state as _state
from plabs_proto.config import SessionConfig
from plabs_proto.errors import LabsError, LabsTimeout, LocalProtocolError, RemoteProtocolError, ResponseError
from plabs_proto.events import (
    AnswerFinished,
    Closed,
    Connected,
    EventQueue,
    QueryFailed,
    ReasoningDelta,
    SessionInstruction,
    TextDelta,
)
from plabs_proto.labs import engineio_session as eio
from plabs_proto.labs import socketio
from plabs_proto.labs.answer import (
    DEFAULT_MODEL,
    REQUEST_EVENT,
    AnswerDecoder,
    CumulativeFrameReader,
    build_request,
    is_progress_event,
)
from plabs_proto.messages import HTTPResponse, Utf8Text
from plabs_proto.state import SessionState, next_state

__all__ = ["LabsSession"]

_CLOSED, _ERROR, _QUERYING = SessionState.CLOSED, SessionState.ERROR, SessionState.QUERYING
_Message = eio.Message
_DISCONNECT = socketio.encode_packet(socketio.Packet(socketio.PacketType.DISCONNECT))


class LabsSession(EventQueue):
    """A sans-IO Labs session at the message level.  See the module docstring for the loop.

    ``rng`` supplies the ``t`` cache buster of polling URLs: pass
    ``random.SystemRandom()`` in production and a seeded ``random.Random`` in
    tests.  ``config`` may be a :class:`~plabs_proto.config.ClientConfig`: the
    session reads only the message-level fields.
    """

    def __init__(self, config: SessionConfig | None = None, *, rng: random.Random) -> None:
        self.config = config = config or SessionConfig()
        self._engine = eio.EngineIOSession(config, rng=rng)
        self._state = SessionState.IDLE
        EventQueue.__init__(self)  # the events wait here, for next_event() and events()
        self._deadlines: dict[str, float] = {}
        self.socket_sid = ""  #: the Socket.IO session id ("" until the connect ack)
        self._sio = socketio.PacketDecoder()
        self._decoder: AnswerDecoder | None = None
        self._frames = CumulativeFrameReader()
        self._pending_query: str | None = None  # a query made while connecting, sent once connected

    # -- public state ---------------------------------------------------------------------------

    @property
    def state(self) -> SessionState:
        """The session's state (see :mod:`plabs_proto.state`)."""
        return self._state

    @property
    def transport(self) -> str:
        """The transport in use: the configured one, or ``"polling"`` if an upgrade was not offered."""
        return self._engine.transport

    @property
    def engine_sid(self) -> str:
        """The Engine.IO session id (``""`` until the open packet)."""
        return self._engine.sid

    @property
    def max_payload(self) -> int | None:
        """The server's maxPayload from its open packet (None before it came)."""
        return self._engine.max_payload

    @property
    def max_connections(self) -> int:
        """The most connections the session uses at once; a carrier may open them all at ``connect()``."""
        return self._engine.max_connections

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
        self._engine.open(now)
        connect = socketio.Packet(socketio.PacketType.CONNECT, data={"jwt": self.config.jwt})
        self._engine.send(socketio.encode_packet(connect))  # goes out once the Engine.IO session is open

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
        text = socketio.encode_packet(socketio.Packet(socketio.PacketType.EVENT, data=[REQUEST_EVENT, request]))
        if self._engine.max_payload is not None:
            self._check_request_size(text, pending=False)
        self._decoder = AnswerDecoder(request["model"])
        self._frames = CumulativeFrameReader()
        if self.config.first_text_timeout is not None:
            self._deadlines["first_text"] = now + self.config.first_text_timeout
        if self.config.query_timeout is not None:
            self._deadlines["query"] = now + self.config.query_timeout
        self._state = new_state
        if new_state is SessionState.QUERYING:
            self._engine.send(text)
        else:
            self._pending_query = text

    def close(self, now: float) -> None:
        """End the session politely (Socket.IO and Engine.IO close), then close the WebSocket."""
        state = self._state
        self._state = next_state(state, _state.CLOSE)
        if state in _state.END_STATES:
            return
        self._engine.close(_DISCONNECT)
        self._deadlines.clear()
        self._events.append(Closed(reason="closed by the client"))

    def fail(self, exc: LabsError) -> None:
        """End the session in ERROR because of ``exc``, keeping the answer so far on it.

        The byte level calls it for an error of its own bytes (TLS, HTTP, a
        WebSocket frame, a proxy): below the messages, the session would never
        see it otherwise.  The session calls it for its own errors.
        """
        exc.keep_partial(self.partial_text, self.partial_reasoning)
        self._state = next_state(self._state, _state.FAILED)
        self._deadlines.clear()
        self._engine.abort()

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
        response = HTTPResponse(status, reason, tuple((k.lower(), v) for k, v in headers), bytes(body))
        try:
            self._engine.receive_http_response(request_id, response, now)
            self._read_engine(now)
        except LabsError as exc:
            self._failed(exc)
            raise

    def receive_websocket_open(self, ws_id: int, now: float) -> None:
        """The WebSocket of ``ws_id`` is open (its handshake succeeded)."""
        try:
            self._engine.receive_websocket_open(ws_id, now)
        except LabsError as exc:
            self._failed(exc)
            raise

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
        :class:`~plabs_proto.wire.websocket.Utf8Text` (text not decoded yet).  A
        progress frame given as ``Utf8Text`` is read on its UTF-8 bytes by the
        prefix it shares with the previous one, so only its new text is
        decoded: a carrier that can hand the undecoded text of its messages
        should.  Messages after one that ended the session are dropped.
        ``limited=True`` says the carrier already refused every message over
        ``max_message_size`` (the byte level's WebSocket does, from the frame
        header), so the session does not measure them again.
        """
        try:
            self._engine.receive_websocket_messages(ws_id, messages, now, limited=limited)
            self._read_engine(now)
        except LabsError as exc:
            self._failed(exc)
            raise

    def receive_websocket_close(self, ws_id: int, code: int | None, now: float, reason: str = "") -> None:
        """The WebSocket of ``ws_id`` closed.

        ``code`` is the close frame's code, or None when the connection ended
        without a close frame (or the carrier does not know).  Closed while an
        answer streams is an error; otherwise it ends the session cleanly.
        """
        try:
            self._engine.receive_websocket_close(ws_id, code, now, reason)
            self._read_engine(now)
        except LabsError as exc:
            self._failed(exc)
            raise

    def receive_websocket_refused(
        self, ws_id: int, status: int, headers: Sequence[tuple[str, str]], body: bytes, now: float,
        reason: str = "",
    ) -> None:
        """The server answered the WebSocket handshake of ``ws_id`` with an HTTP response, not 101."""
        response = HTTPResponse(status, reason, tuple((k.lower(), v) for k, v in headers), bytes(body))
        try:
            self._engine.receive_websocket_refused(ws_id, response, now)
        except LabsError as exc:
            self._failed(exc)
            raise

    def receive_transport_error(self, id: int, message: str, now: float) -> None:
        """The request or WebSocket ``id`` failed below HTTP (refused, reset, TLS): the session fails.

        Raises :class:`~plabs_proto.errors.NetworkError` with the server's
        ``host`` and ``port`` (from ``SessionConfig.server``: every request and
        WebSocket goes there; the port is 443 or 80 when the URL names none) and
        ``errno=None`` (the carrier's message is all the session knows), keeping
        the answer's text so far in ``partial_text``.  Late news of a request or
        WebSocket nobody waits for any more (the session ended) is ignored.
        """
        text = self.partial_text
        try:
            self._engine.receive_transport_error(
                id, message, now, detail=f" (after {len(text)} characters of the answer)" if text else ""
            )
        except LabsError as exc:
            self._failed(exc)
            raise

    def handle_timer(self, now: float) -> None:
        """Fire the deadlines due at ``now`` (call it when ``get_timer()`` comes)."""
        due = [(at, name) for name, at in self._deadlines.items() if at <= now]
        heartbeat = self._engine.get_timer()
        if heartbeat is not None and heartbeat <= now:
            due.append((heartbeat, "heartbeat"))
        if not due:
            return
        _, name = min(due)
        try:
            if name == "heartbeat":
                self._engine.handle_timer(now)
            waited = {
                "connect": self.config.connect_timeout,
                "first_text": self.config.first_text_timeout,
                "query": self.config.query_timeout,
            }[name]
            message = {
                "connect": f"expected the Labs session to be connected within {waited:g} s, it was not",
                "first_text": f"expected the first answer text within {waited:g} s of the query, got none",
                "query": f"expected the whole answer within {waited:g} s of the query, it was not complete",
            }[name]
            raise LabsTimeout(message, deadline=name)
        except LabsError as exc:
            self._failed(exc)
            raise

    # -- outputs --------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The next deadline (same clock as ``now``), or None."""
        heartbeat = self._engine.get_timer()
        deadlines = self._deadlines
        if not deadlines:
            return heartbeat
        first = min(deadlines.values())
        return first if heartbeat is None or first < heartbeat else heartbeat

    def transmit(self) -> list[SessionInstruction]:
        """What the carrier must do now, in order (each call ends the window in which pings share a pong)."""
        return self._engine.transmit()

    # -- internals: the end ---------------------------------------------------------------------

    def _failed(self, exc: LabsError) -> None:
        """An input or the timer raised ``exc``: an error of the server's fails the session (a local one does not)."""
        if not isinstance(exc, LocalProtocolError) and self._state is not _ERROR:
            self.fail(exc)

    def _server_closed(self, reason: str) -> None:
        self._state = next_state(self._state, _state.SERVER_CLOSED)
        self._deadlines.clear()
        self._engine.abort()
        self._events.append(Closed(reason=reason))

    def _check_request_size(self, text: str, *, pending: bool) -> None:
        """Refuse a query the server would refuse: a request not smaller than its maxPayload.

        Engine.IO allows a message of exactly maxPayload bytes, but python-engineio on aiohttp
        closes such a WebSocket message with 1009 (aiohttp's check is ``>=``): what we send
        stays below the limit, on every transport.
        """
        size = self._engine.packet_size(text)
        limit = self._engine.max_payload
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
        self.fail(exc)
        raise exc

    # -- internals: what the Engine.IO session reports ------------------------------------------

    def _read_engine(self, now: float) -> None:
        """Read the Engine.IO session's events, until there are none or this session has ended."""
        for event in self._engine.events():
            if type(event) is _Message:
                data, start = event
                if type(data) is Utf8Text:
                    raw = data.data
                    if self._decoder is not None and raw[start : start + 2] == b"2[" and not self._sio.awaiting_attachments:
                        # A progress frame read by the bytes it shares with the previous one.
                        fast = self._frames.read_bytes(raw, start)
                        if fast is not None:
                            self._on_event(fast[0], fast[1], now)
                            continue
                    self._on_text(data.decode(), start, now)
                elif type(data) is bytes:
                    self._on_binary(data, now)
                else:
                    self._on_text(data, start, now)  # type: ignore[arg-type]
            elif type(event) is eio.Opened:
                if self._pending_query is not None:
                    self._check_request_size(self._pending_query, pending=True)
            elif type(event) is eio.Closed:
                self._on_closed(event)
            # eio.Upgraded: the WebSocket carries the session now; nothing changes up here.
            if self._state is _CLOSED or self._state is _ERROR:
                return  # what came after belongs to no session

    def _on_closed(self, event: eio.Closed) -> None:
        if self._decoder is not None and self._state is _QUERYING:
            raise RemoteProtocolError(
                f"expected the rest of the answer, {event.cut} after {len(self.partial_text)} characters of it"
                f"{event.note}"
            )
        if event.error:
            raise RemoteProtocolError(event.error)
        self._server_closed(event.reason)

    def _on_text(self, text: str, start: int, now: float) -> None:
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

    def _on_binary(self, data: bytes, now: float) -> None:
        packet = self._sio.feed(data)
        if packet is not None:
            self._on_sio_packet(packet, now)

    # -- internals: Socket.IO and Labs ----------------------------------------------------------

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
            if self._decoder is not None and self._state is _QUERYING:
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
        engine = self._engine
        self._events.append(Connected(engine_sid=engine.sid, socket_sid=socket_sid, transport=engine.transport))
        if self._pending_query is not None:
            text, self._pending_query = self._pending_query, None
            self._state = next_state(self._state, _state.QUERY)
            engine.send(text)

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
