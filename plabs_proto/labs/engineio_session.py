"""The Engine.IO session: one Engine.IO v4 connection at the message level, and nothing above it.

:class:`EngineIOSession` owns what Engine.IO is: the three transports
(``polling``: a long-polling GET out and the queue batched into POSTs;
``websocket``: one packet per message; ``upgrade``: the polling handshake, then
the WebSocket probe and the switch), the open handshake, ping/pong and the
heartbeat deadline, and the outgoing queue.  It knows nothing of Socket.IO or
of answers: the layer above (:class:`~plabs_proto.labs.session.LabsSession`)
calls it down and reads back its events:

* :class:`Opened`: the server's open packet came (the session id, the most the server takes);
* :class:`Message`: an Engine.IO message, text or binary;
* :class:`Upgraded`: the WebSocket carries the session from now on (the upgrade transport);
* :class:`Closed`: the server ended the Engine.IO session (a close packet, a WebSocket close).

Its inputs are the carrier's (``receive_http_response``, ``receive_websocket_*``,
``receive_transport_error``, ``handle_timer``), passed on by the layer above;
its commands are ``open``, ``send``, ``close`` and ``abort``; its output is the
carrier's instructions (``transmit()``) and its deadline (``get_timer()``).  An
error in what the server sent is raised from the input that brought it, after
which the layer above calls :meth:`abort`.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import quote

from plabs_proto.config import SessionConfig, split_server
from plabs_proto.errors import LabsTimeout, LocalProtocolError, NetworkError, RemoteProtocolError
from plabs_proto.events import (
    HTTPRequest,
    SessionInstruction,
    TransportSwitched,
    WebSocketClose,
    WebSocketConnect,
    WebSocketSend,
)
from plabs_proto.labs import engineio
from plabs_proto.messages import HTTPResponse, Utf8Text
from plabs_proto.refusal import refusal, unexpected_page

__all__ = ["BODY_SLACK", "ENGINEIO_MAX_PAYLOAD", "Closed", "EngineIOSession", "Message", "Opened", "Upgraded"]

#: What a polling GET body may carry beyond one packet of the receive limit.
BODY_SLACK = 64 * 1024
#: Engine.IO's default maxPayload, for a server that does not announce one.
ENGINEIO_MAX_PAYLOAD = 1_000_000

_PONG = engineio.Packet(engineio.PacketType.PONG)
_new = tuple.__new__
_MESSAGE = engineio.PacketType.MESSAGE
_PING = engineio.PacketType.PING
_NOOP = engineio.PacketType.NOOP

#: Requests, by what they are for.
_OPEN, _CONNECT_POST, _POLL, _POST, _CLOSE = "open", "connect-post", "poll", "post", "close"


# -- the events it hands up ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Opened:
    """The server's open packet came: the session is ``sid``; ``max_payload`` bounds what we send."""

    sid: str
    max_payload: int


class Message(NamedTuple):
    """An Engine.IO message: text at ``data[start:]`` (``str``, or :class:`Utf8Text` not decoded yet), or binary ``bytes``.

    The text is handed with what came before it in the WebSocket message (the
    ``4`` type: ``start`` 1) rather than sliced, so a long message is not copied.
    A named tuple, not a dataclass: one is made per answer frame, and a tuple is
    made in a third of the time (it is as immutable).
    """

    data: str | bytes | Utf8Text
    start: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Upgraded:
    """The upgrade is done: the WebSocket ``ws_id`` carries the session from now on."""

    ws_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Closed:
    """The server ended the Engine.IO session.

    ``reason`` says why, for a clean end.  ``error`` is set when the end is an
    error in itself (the WebSocket closed before it carried the session, or
    without a close frame).  ``cut`` and ``note`` word it for a layer above that
    was still waiting for something: ``f"expected ..., {cut} after ...{note}"``.
    """

    reason: str
    cut: str
    error: str = ""
    note: str = ""


Event = Opened | Message | Upgraded | Closed


def _size(packet: engineio.Packet) -> int:
    """The size in bytes of an Engine.IO text packet as sent."""
    encoded = engineio.encode_packet(packet)
    return len(encoded.encode("utf-8") if isinstance(encoded, str) else encoded)


def _check_post(response: HTTPResponse, what: str, max_payload: int | None) -> None:
    """Refuse a POST's answer other than 200 'ok' (413 names the server's maxPayload)."""
    if response.status == 413:
        what += " (413: the body was larger than the server accepts" + (
            f", its maxPayload being {max_payload} bytes)" if max_payload is not None else ")"
        )
    if response.status != 200:
        raise refusal(response, what, 200)
    if response.body.strip().lower() != b"ok":
        page = unexpected_page(response, what, "'ok'")
        if page is not None:
            raise page
        raise RemoteProtocolError(f"expected 'ok' (any case) in answer to {what}, got {response.body[:60]!r}")


def _open_payload(response: HTTPResponse) -> tuple[str, Iterator[engineio.Packet]]:
    """The open packet's data of the handshake GET's answer, and the packets after it."""
    what = "the Engine.IO handshake (polling GET)"
    if response.status != 200:
        raise refusal(response, what, 200)
    body = response.text()
    if not body.lstrip().startswith(("0", "9", "8", "7", "6", "5", "4", "3", "2", "1")):
        page = unexpected_page(response, what, "the Engine.IO open packet '0{...}'")
        if page is not None:
            raise page
        raise RemoteProtocolError(f"expected the Engine.IO open packet '0{{...}}' from the handshake GET, got {body[:60]!r}")
    packets = engineio.iter_payload(body)
    first = next(packets, None)  # None: the v3 empty payload '0:'
    if first is None or first.type is not engineio.PacketType.OPEN or not isinstance(first.data, str):
        raise RemoteProtocolError(f"expected the Engine.IO open packet first in the handshake GET, got {body[:60]!r}")
    return first.data, packets


def _batch(queue: list[engineio.Packet], limit: int) -> int:
    """How many packets of ``queue`` one POST takes: its body stays below the server's maxPayload
    unless it is one packet, like the reference client's."""
    size = -1
    count = 0
    for packet in queue:
        size += 1 + _size(packet)
        if count and size >= limit:
            break
        count += 1
    return count


#: The event for a WebSocket whose connection ended without a close frame.
_DROPPED = Closed(
    reason="the server closed the connection",
    cut="but the server closed the connection",
    error="expected the WebSocket connection to stay open, but the server closed it",
)


def _websocket_closed(code: int, reason: str, carrying: bool, max_payload: int | None) -> Closed:
    """The event for a WebSocket the server closed with ``code``; ``carrying``: it carried the session."""
    note = ""
    if code == 1009:  # RFC 6455: the endpoint got a message too big for it to process
        note = "; 1009 means message too big: the server refused a message we sent" + (
            f" (its maxPayload is {max_payload} bytes)" if max_payload is not None else ""
        )
    shown = f"{code} {reason}".rstrip()
    return Closed(
        reason=f"WebSocket closed by the server ({shown}){note}",
        cut=f"got a WebSocket close ({code} {reason!r})",
        error="" if carrying else f"expected the WebSocket to stay open for the session, but the server closed it ({shown})",
        note=note,
    )


class _Requests:
    """The requests and the WebSocket a session asks for: their ids (one counter), URLs and
    headers, and what each request still waited for is for."""

    __slots__ = ("_http_base", "_next_id", "_origin_headers", "_purposes", "_t", "_ws_base", "host", "port")

    def __init__(self, config: SessionConfig, rng: random.Random) -> None:
        scheme, host, port, path = split_server(config.server, config.path)
        literal = f"[{host}]" if ":" in host else host
        authority = literal if port is None else f"{literal}:{port}"
        ws_scheme = "wss" if scheme == "https" else "ws"
        self._http_base = f"{scheme}://{authority}{path}"
        self._ws_base = f"{ws_scheme}://{authority}{path}"
        self.host = host
        self.port = port if port is not None else (443 if scheme == "https" else 80)
        self._origin_headers = (("Origin", config.origin), ("Referer", config.origin.rstrip("/") + "/"))
        self._t = f"{rng.getrandbits(32):08x}"
        self._next_id = 1
        self._purposes: dict[int, str] = {}  # request id -> what it is for

    def _take_id(self) -> int:
        new = self._next_id
        self._next_id += 1
        return new

    def _url(self, transport: str, sid: str | None) -> str:
        query = f"EIO=4&transport={transport}"
        if transport == "polling":
            query += f"&t={self._t}"
        if sid:
            query += "&sid=" + quote(sid, safe="")  # checked printable when read; escaped all the same
        base = self._http_base if transport == "polling" else self._ws_base
        return f"{base}?{query}"

    def make(self, method: str, sid: str | None, body: bytes, purpose: str, lane: int) -> HTTPRequest:
        """A polling request of the session ``sid`` (None: the handshake), waited for as ``purpose``."""
        headers: tuple[tuple[str, str], ...] = self._origin_headers
        if method == "POST":
            headers += (("Content-Type", "text/plain;charset=UTF-8"),)
        request_id = self._take_id()
        self._purposes[request_id] = purpose
        return HTTPRequest(
            request_id=request_id, method=method, url=self._url("polling", sid), headers=headers, body=body, lane=lane
        )

    def websocket(self, sid: str | None) -> WebSocketConnect:
        """The session's WebSocket (of the session ``sid``; None: straight to a WebSocket)."""
        return WebSocketConnect(ws_id=self._take_id(), url=self._url("websocket", sid), headers=self._origin_headers)

    def take(self, request_id: int, ws_id: int | None) -> str | None:
        """What the request was for; None for one nobody waits for any more (:meth:`forget`)."""
        purpose = self._purposes.pop(request_id, None)
        if purpose is None and (
            not isinstance(request_id, int) or not 0 < request_id < self._next_id or request_id == ws_id
        ):
            raise LocalProtocolError(f"expected the id of an HTTPRequest this session made, got {request_id!r}")
        return purpose

    def forget(self) -> None:
        """Nobody waits for any request any more (the session ended)."""
        self._purposes.clear()


class _Ended(Exception):
    """The session ended in the middle of a step: the rest of the step has nothing to do."""


@dataclass(slots=True)
class _WebSocket:
    """What the session knows of its one WebSocket."""

    id: int
    open: bool = False  # receive_websocket_open came
    closed: bool = False  # WebSocketClose was sent or the peer closed it
    probing: bool = False  # upgrade: 2probe sent, 3probe not received yet


class EngineIOSession:
    """One Engine.IO v4 session over abstract HTTP requests and WebSocket messages (see the module docstring).

    ``rng`` supplies the ``t`` cache buster of polling URLs.
    """

    def __init__(self, config: SessionConfig, *, rng: random.Random) -> None:
        self._requests = _Requests(config, rng)
        self.host, self.port = self._requests.host, self._requests.port  #: where everything goes
        self._limit = config.max_message_size
        self._transport = config.transport
        self._events: list[Event] = []  # the end's event, when it comes from an input (a list: a deque is 600 B)
        self._out: list[SessionInstruction] = []
        self._ended = False
        self._heartbeat: float | None = None  # the heartbeat deadline
        self.sid = ""  #: the Engine.IO session id ("" until the open packet)
        self._ping_window = 45.0
        self._max_payload: int | None = None  # what the server takes from us (its open packet)
        self._upgrades: tuple[str, ...] = ("websocket",)
        self._queue: list[engineio.Packet] = []  # packets waiting for a POST or the WebSocket
        self._pong_queued = False  # a pong is out since the last transmit()
        self._get_id: int | None = None  # the long-polling GET out
        self._post_id: int | None = None  # the polling POST out
        self._posted = False  # upgrade: the first POST (with the queue of the open) was answered
        self._ws: _WebSocket | None = None
        self._on_ws = False  # packets go over the WebSocket (websocket transport, or upgraded)
        self._work: Iterator[Event] | None = None  # what an input brought, read as events are asked for

    # -- public state ---------------------------------------------------------------------------

    @property
    def transport(self) -> str:
        """The transport in use: the configured one, or ``"polling"`` if an upgrade was not offered."""
        return self._transport

    @property
    def max_payload(self) -> int | None:
        """The server's maxPayload from its open packet (None before it came)."""
        return self._max_payload

    @property
    def max_connections(self) -> int:
        """The most connections the session uses at once: a second for polling's POSTs or the upgrade's WebSocket."""
        return 1 if self._transport == "websocket" else 2

    # -- commands -------------------------------------------------------------------------------

    def open(self, now: float) -> None:
        """Start: the handshake GET (polling, upgrade) or the WebSocket (websocket)."""
        if self._transport == "websocket":
            self._open_websocket(sid=None)
            self._on_ws = True
        else:
            self._request("GET", None, b"", _OPEN)

    def send(self, text: str) -> None:
        """Send an Engine.IO message (text): queued until the session is open, then by its transport."""
        if self._ended:
            raise LocalProtocolError("cannot send on an Engine.IO session that has ended")
        packet = engineio.Packet(_MESSAGE, text)
        if self.sid:
            self._send(packet)
        else:
            self._queue.append(packet)

    def packet_size(self, text: str) -> int:
        """The size in bytes of the message ``text`` as sent (to hold against :attr:`max_payload`)."""
        return _size(engineio.Packet(_MESSAGE, text))

    def close(self, last: str) -> None:
        """End politely: the message ``last`` and the Engine.IO close go out, then the WebSocket closes."""
        if self._ended:
            return
        goodbye = [engineio.Packet(_MESSAGE, last), engineio.Packet(engineio.PacketType.CLOSE)]
        ws = self._ws
        code = None
        if self._on_ws and ws is not None and ws.open and not ws.closed:
            for packet in goodbye:
                self._ws_send(ws, packet)
            code = 1000
        elif self.sid and self._transport != "websocket":
            body = engineio.encode_payload(goodbye).encode("utf-8")
            lane = 1 if self._transport == "polling" else 0  # beside the long-polling GET, as every POST
            self._out.append(self._requests.make("POST", self.sid, body, _CLOSE, lane))
        self._end(code)

    def abort(self) -> None:
        """End at once: no deadline, no request waited for, the WebSocket dropped."""
        self._end(None)

    # -- inputs ---------------------------------------------------------------------------------

    def receive_http_response(self, request_id: int, response: HTTPResponse, now: float) -> None:
        """The response to a request of this session (late news of one nobody waits for is ignored)."""
        purpose = self._requests.take(request_id, None if self._ws is None else self._ws.id)
        if purpose is None:
            return
        body = response.body
        if len(body) > self._limit + BODY_SLACK:
            raise RemoteProtocolError(
                f"expected an HTTP body of at most {self._limit + BODY_SLACK} bytes (max_message_size and "
                f"64 KiB), got one of {len(body)}"
            )
        if purpose == _OPEN:
            self._work = self._on_open_response(response, now)
        elif purpose == _CONNECT_POST:
            _check_post(response, "the Socket.IO CONNECT POST", self._max_payload)
            self._posted = True
            self._probe()
        elif purpose == _POLL:
            self._work = self._on_poll(response, now)
        else:  # _POST (a _CLOSE is not waited for: the session ended with it)
            self._post_id = None
            _check_post(response, "a polling POST", self._max_payload)
            self._flush()

    def receive_websocket_open(self, ws_id: int, now: float) -> None:
        """The WebSocket of ``ws_id`` is open (its handshake succeeded)."""
        ws = self._websocket(ws_id)
        if ws is None:
            return
        if ws.open:
            raise LocalProtocolError(f"expected one receive_websocket_open for WebSocket {ws_id}, got a second one")
        ws.open = True
        if self._transport == "upgrade":
            self._probe()

    def receive_websocket_messages(
        self, ws_id: int, messages: Sequence[str | bytes | Utf8Text], now: float, *, limited: bool = False
    ) -> None:
        """The messages one read of the WebSocket ``ws_id`` brought, read as :meth:`next_event` asks
        (``limited``: the carrier refused every message over ``max_message_size`` already)."""
        ws = self._websocket(ws_id)
        if ws is None:
            return
        if not ws.open:
            raise LocalProtocolError(
                f"expected receive_websocket_open for WebSocket {ws.id} before its messages, got a message first"
            )
        self._work = self._read_messages(ws, messages, now, None if limited else self._limit)

    def receive_websocket_close(self, ws_id: int, code: int | None, now: float, reason: str = "") -> None:
        """The WebSocket of ``ws_id`` closed (``code`` None: without a close frame): the session ends."""
        ws = self._websocket(ws_id)
        if ws is None:
            return
        ws.closed = True
        carrying = ws.open and self._on_ws
        self._events.append(_DROPPED if code is None else _websocket_closed(code, reason, carrying, self._max_payload))
        self._end(None)

    def receive_websocket_refused(self, ws_id: int, response: HTTPResponse, now: float) -> None:
        """The server answered the WebSocket handshake of ``ws_id`` with an HTTP response, not 101: raises."""
        ws = self._websocket(ws_id)
        if ws is None:
            return
        ws.closed = True
        raise refusal(response, "the WebSocket upgrade", 101)

    def receive_transport_error(self, id: int, message: str, now: float, *, detail: str = "") -> None:
        """The request or WebSocket ``id`` failed below HTTP: raises :class:`NetworkError` (``detail`` is added)."""
        ws = self._ws
        if ws is not None and ws.id == id:
            if ws.closed or self._ended:
                return
            ws.closed = True
            what = "the WebSocket"
        else:
            purpose = self._requests.take(id, None if self._ws is None else self._ws.id)
            if purpose is None:
                return
            what = f"the HTTP request ({purpose})"
        raise NetworkError(
            f"expected {what} to {self.host} port {self.port} to go through, but it failed below HTTP: "
            f"{message}{detail}",
            host=self.host,
            port=self.port,
        )

    def handle_timer(self, now: float) -> None:
        """Fire the heartbeat deadline when due: raises :class:`~plabs_proto.errors.LabsTimeout`."""
        if self._heartbeat is not None and self._heartbeat <= now:
            raise LabsTimeout(
                f"expected a ping from the server at least every {self._ping_window:g} s "
                "(pingInterval + pingTimeout), got none",
                deadline="heartbeat",
            )

    # -- outputs --------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The heartbeat deadline (None before the open packet and after the end)."""
        return self._heartbeat

    def next_event(self) -> Event | None:
        """The next event, or None: what an input brought is read as events are asked for (as h11
        parses), so what came after the event the layer above ended on is never read; its errors
        are raised from here."""
        if self._events:
            return self._events.pop(0)
        event = None
        with contextlib.suppress(_Ended):
            event = next(self._work, None) if self._work is not None else None
        if event is None:
            self._work = None
        return event

    def events(self) -> Iterator[Event]:
        """Every event, read as the caller iterates (:meth:`next_event` in a loop, at a fraction of the
        cost: the hot path).  Stop iterating once the layer above has ended: what came after is never read."""
        queued = self._events
        while queued:
            yield queued.pop(0)
        work = self._work
        if work is None:
            return
        try:
            yield from work
        except _Ended:
            pass
        if self._work is work:
            self._work = None

    def transmit(self) -> list[SessionInstruction]:
        """What the carrier must do now, in order."""
        self._pong_queued = False  # one pong per transmit(): a ping after this one needs its own
        out = self._out
        self._out = []
        return out

    # -- internals: the end ---------------------------------------------------------------------

    def _end(self, code: int | None) -> None:
        self._ended = True
        self._work = None
        self._heartbeat = None
        self._requests.forget()
        self._queue.clear()
        ws = self._ws
        if ws is not None and not ws.closed:
            ws.closed = True
            self._out.append(WebSocketClose(ws_id=ws.id, code=code))

    def _check_live(self) -> None:
        if self._ended:
            raise _Ended

    def _too_big(self, size: int) -> RemoteProtocolError:
        return RemoteProtocolError(
            f"expected a WebSocket message of at most {self._limit} bytes (max_message_size), got one of {size}"
        )

    # -- internals: requests and WebSockets -----------------------------------------------------

    def _request(self, method: str, sid: str | None, body: bytes, purpose: str, lane: int = 0) -> int:
        self._check_live()
        request = self._requests.make(method, sid, body, purpose, lane)
        self._out.append(request)
        return request.request_id

    def _websocket(self, ws_id: int) -> _WebSocket | None:
        ws = self._ws
        if ws is None or ws.id != ws_id:
            raise LocalProtocolError(f"expected the id of the WebSocket this session opened, got {ws_id!r}")
        if ws.closed or self._ended:
            return None  # late news of a WebSocket already closed
        return ws

    def _open_websocket(self, sid: str | None) -> None:
        self._check_live()
        connect = self._requests.websocket(sid)
        self._ws = _WebSocket(connect.ws_id)
        self._out.append(connect)

    def _ws_send(self, ws: _WebSocket, packet: engineio.Packet) -> None:
        self._out.append(WebSocketSend(ws_id=ws.id, data=engineio.encode_packet(packet)))

    # -- internals: sending ---------------------------------------------------------------------

    def _send(self, packet: engineio.Packet) -> None:
        """Send one packet: on the WebSocket once it carries them, else by POST."""
        self._check_live()
        ws = self._ws
        if self._on_ws and ws is not None and ws.open and not ws.closed:
            self._ws_send(ws, packet)
        else:
            self._queue.append(packet)
            if self._transport == "polling" and self.sid:
                self._flush()

    def _flush(self) -> None:
        """POST what waits in the queue, unless a POST is out (its answer sends the rest)."""
        queue = self._queue
        if not queue or self._post_id is not None:
            return
        self._check_live()
        count = _batch(queue, self._max_payload or ENGINEIO_MAX_PAYLOAD)
        batch, self._queue = queue[:count], queue[count:]
        body = engineio.encode_payload(batch).encode("utf-8")
        self._post_id = self._request("POST", self.sid, body, _POST, lane=1)  # beside the long-polling GET

    def _poll(self) -> None:
        """Keep one long-polling GET out (when polling carries the session)."""
        if self._transport != "polling" or self._get_id is not None:
            return
        self._get_id = self._request("GET", self.sid, b"", _POLL)

    def _probe(self) -> None:
        """Upgrade: once the WebSocket is open and the first POST answered, probe and switch to it."""
        ws = self._ws
        if not self._posted or ws is None or not ws.open or ws.probing or self._on_ws:
            return
        self._check_live()
        ws.probing = True
        self._on_ws = True
        # The probe and the upgrade go out together, then whatever waited (pongs, a query):
        # servers read them in order, so no round trip is spent.
        self._ws_send(ws, engineio.Packet(engineio.PacketType.PING, "probe"))
        self._out.append(TransportSwitched(ws_id=ws.id))
        self._ws_send(ws, engineio.Packet(engineio.PacketType.UPGRADE))
        queued, self._queue = self._queue, []
        for packet in queued:
            self._ws_send(ws, packet)

    # -- internals: polling ---------------------------------------------------------------------

    def _on_poll(self, response: HTTPResponse, now: float) -> Iterator[Event]:
        """A long-polling GET's answer: its packets, then the next GET."""
        self._get_id = None
        what = "a long-polling GET"
        if response.status != 200:
            raise refusal(response, what, 200)
        page = unexpected_page(response, what, "Engine.IO packets")
        if page is not None:
            raise page
        limit = self._limit
        for packet in engineio.iter_payload(response.text()):
            if packet.type is _NOOP:
                continue
            if packet.data is not None and len(packet.data) > limit:
                raise RemoteProtocolError(
                    f"expected Engine.IO packets of at most {limit} bytes (max_message_size) in {what}, "
                    f"got one of {len(packet.data)}"
                )
            yield from self._on_packet(packet, now)
            self._check_live()  # the packets after a close belong to no session
        self._poll()

    def _on_open_response(self, response: HTTPResponse, now: float) -> Iterator[Event]:
        data, packets = _open_payload(response)
        waiting, self._queue = self._queue, []  # what the layer above sent before the open (its CONNECT)
        yield self._on_open_packet(data, now)
        for packet in packets:
            yield from self._on_packet(packet, now)
            self._check_live()  # the server closed the session at once
        if "websocket" not in self._upgrades and self._transport == "upgrade":
            self._transport = "polling"  # the server offers no upgrade: stay on polling
        if self._transport == "upgrade":
            # The first POST (the CONNECT) and the WebSocket go out together; the probe waits for both
            # answers, so the server has the CONNECT before the upgrade ends polling.
            if waiting:
                self._request("POST", self.sid, engineio.encode_payload(waiting).encode("utf-8"), _CONNECT_POST)
            else:
                self._posted = True  # nothing to say by POST: the probe waits for the WebSocket alone
            self._open_websocket(self.sid)
        else:
            self._queue[:0] = waiting
            self._flush()
            self._poll()

    # -- internals: the packets -----------------------------------------------------------------

    def _read_messages(
        self, ws: _WebSocket, messages: Sequence[str | bytes | Utf8Text], now: float, limit: int | None
    ) -> Iterator[Event]:
        """A read's WebSocket messages, one event at a time: the hot path (a ``4...`` message is handed up whole)."""
        for message in messages:
            if self._ended:
                return  # (what follows belongs to no session)
            if isinstance(message, Utf8Text):
                data = message.data
                if limit is not None and len(data) > limit:
                    raise self._too_big(len(data))
                if data[:1] == b"4" and not ws.probing:  # an Engine.IO message: handed up undecoded
                    yield _new(Message, (message, 1))  # a Message, made at C speed (the hot path)
                    continue
                text = message.decode()
            elif isinstance(message, str):
                if limit is not None and len(message) > limit:
                    raise self._too_big(len(message))
                text = message
            elif isinstance(message, (bytes, bytearray, memoryview)):
                if limit is not None and len(message) > limit:
                    raise self._too_big(len(message))
                yield Message(bytes(message))
                continue
            else:
                raise LocalProtocolError(
                    "expected WebSocket messages as str (text), bytes (binary) or Utf8Text, got "
                    f"{type(message).__name__}"
                )
            if ws.probing:
                if text != "3probe":
                    raise RemoteProtocolError(f"expected '3probe' in answer to the upgrade probe, got {text[:60]!r}")
                ws.probing = False
                yield Upgraded(ws_id=ws.id)
            elif text[:1] == "4":
                yield Message(text, 1)
            else:
                yield from self._on_packet(engineio.decode_packet(text), now)

    def _on_open_packet(self, data: str, now: float) -> Opened:
        info = engineio.parse_open_packet(data)
        self.sid = info.sid
        self._upgrades = info.upgrades
        self._ping_window = (info.ping_interval + info.ping_timeout) / 1000.0
        self._max_payload = info.max_payload  # bounds what we send; our receive limit stays ours
        self._heartbeat = now + self._ping_window
        return Opened(sid=info.sid, max_payload=info.max_payload)

    def _on_packet(self, packet: engineio.Packet, now: float) -> Iterator[Event]:
        kind = packet.type
        if kind is _MESSAGE:
            yield Message(packet.data if packet.data is not None else "")
        elif kind is _PING:
            self._heartbeat = now + self._ping_window
            # One pong not handed out yet answers every ping before it: the server clears its
            # pingTimeout on any pong (eio-sio-spec.md 1.6).
            if not self._pong_queued and _PONG not in self._queue:
                self._pong_queued = True
                self._send(_PONG)
        elif kind is _NOOP:
            pass
        elif kind is engineio.PacketType.OPEN:
            if self.sid:
                raise RemoteProtocolError(f"expected one Engine.IO open packet, got a second one: {packet.data!r}")
            yield self._on_open_packet(packet.data if isinstance(packet.data, str) else "", now)
            queued, self._queue = self._queue, []
            for waiting in queued:
                self._send(waiting)
        elif kind is engineio.PacketType.CLOSE:
            self._end(None)
            yield Closed(reason="Engine.IO session closed by the server", cut="got an Engine.IO close packet")
        else:
            raise RemoteProtocolError(
                "expected an Engine.IO packet a server sends (open, close, ping, message, noop), "
                f"got {kind.name.lower()} {packet.data!r:.60}"
            )
