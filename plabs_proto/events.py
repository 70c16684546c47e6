"""Events the client hands out, and the transport instructions it gives its caller.

Events are small frozen dataclasses, built with keyword arguments only.  There
are two families:

* **Events** (:class:`Event` subclasses), read with ``LabsClient.next_event()``:
  what happened on the Labs session (connected, answer text, reasoning,
  citations, the final answer, a server-reported failure, the end).
* **Instructions** (:class:`Instruction` subclasses), read with
  ``LabsClient.transmit()``: what the caller's I/O layer must do with its TCP
  connections (open one, write bytes to one, close one).  Each connection is
  named by a small integer ``stream_id``.
* **Session instructions** (:class:`SessionInstruction` subclasses), read with
  ``LabsSession.transmit()``: the message level, one step above bytes.  Make an
  HTTP request, open a WebSocket, send a WebSocket message, close it.  Any
  HTTP or WebSocket client can carry them; requests are named by
  ``request_id``, WebSockets by ``ws_id`` (one counter, so an id names one
  thing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from plabs_proto.errors import ResponseError

__all__ = [
    "AnswerFinished",
    "AnswerRevised",
    "Citations",
    "CloseStream",
    "Closed",
    "Connected",
    "Event",
    "EventQueue",
    "HTTPRequest",
    "Instruction",
    "OpenStream",
    "QueryFailed",
    "ReasoningDelta",
    "SearchQueries",
    "SendBytes",
    "SessionInstruction",
    "SourcesRead",
    "TextDelta",
    "ThreadIdentity",
    "TransportSwitched",
    "WebSocketClose",
    "WebSocketConnect",
    "WebSocketSend",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """Base class of the events a :class:`~plabs_proto.wire.client.LabsClient` hands out."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Connected(Event):
    """The Socket.IO session is open: queries can be sent.

    ``engine_sid`` is the Engine.IO session id, ``socket_sid`` the Socket.IO id
    from the connect ack, ``transport`` the transport in use.
    """

    engine_sid: str
    socket_sid: str
    transport: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TextDelta(Event):
    """New answer text (the new suffix of the cumulative ``output``).

    The rule for a consumer that reads TextDeltas alone: joining every
    TextDelta of a query gives :attr:`AnswerFinished.text`, unless an
    :class:`AnswerRevised` came whose ``text`` differs from the text joined so
    far (a true rewrite of the answer text, see there).  No answer text ever
    arrives only inside an AnswerRevised.
    """

    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ReasoningDelta(Event):
    """New reasoning text (text inside ``<think>...</think>``).

    The same rule as for :class:`TextDelta`: joining every ReasoningDelta gives
    :attr:`AnswerFinished.reasoning`, unless an :class:`AnswerRevised` came
    whose ``reasoning`` differs from the reasoning joined so far.
    """

    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Citations(Event):
    """The citations of the answer (URL strings or objects, as the server sent them)."""

    citations: tuple[Any, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class AnswerRevised(Event):
    """The server's cumulative output no longer extends what was already reported.

    ``text`` and ``reasoning`` are the whole answer and reasoning as they now
    stand, up to this event; deltas after it extend these.  A consumer that
    follows revisions (sets its text and reasoning to these, then appends the
    deltas) always holds what the decoder holds.

    A revision rewrites only what must be rewritten.  Often only one part is
    taken back: the default model ``r1-1776`` streams untagged output as
    reasoning, and when the final frame shows it was the answer, the reasoning
    is rewritten (to ``""``) while the answer text grows from ``""``.  Then
    ``text`` repeats the text reported so far, unchanged, and the new text
    follows as a :class:`TextDelta` (the same holds for ``reasoning`` and
    :class:`ReasoningDelta`).  So ``text`` differs from the text reported
    before only on a true rewrite of the answer text: text already handed out
    that the server no longer sends.
    """

    text: str
    reasoning: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AnswerFinished(Event):
    """The final progress frame arrived (``final: true``): the answer is complete.

    ``text`` and ``reasoning`` are the server's final answer and reasoning: what
    the deltas of the query join to when followed with their revisions, and
    what the TextDeltas alone join to unless an :class:`AnswerRevised` rewrote
    the answer text (see :class:`TextDelta`).
    """

    model: str
    text: str
    reasoning: str
    citations: tuple[Any, ...] = ()
    elapsed_time: float | None = None
    tokens_streamed: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class QueryFailed(Event):
    """The server reported a failure for the query (``status: "failed"``)."""

    model: str
    message: str
    partial_text: str = ""
    partial_reasoning: str = ""

    def error(self) -> ResponseError:
        """The :class:`~plabs_proto.errors.ResponseError` a backend raises for this event."""
        return ResponseError(
            f"Labs server reported a failure for model {self.model!r}: {self.message}",
            server_text=self.message,
            partial_text=self.partial_text,
            partial_reasoning=self.partial_reasoning,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Closed(Event):
    """The session ended (our close, or the server's disconnect)."""

    reason: str


class EventQueue:
    """The events a session holds for its user, the one place they wait: taken one at a time
    (:meth:`next_event`) or all at once (:meth:`events`).  Each session is one."""

    # A list and the index of the next event to take, not a deque: an empty deque is 600 bytes (a
    # block of 64 slots), an empty list 56, and at a thousand sessions that is a few percent of each.
    # Subclasses add events with ``self._events.append``/``extend``.

    def __init__(self) -> None:
        self._events: list[Event] = []
        self._taken = 0  # events[:_taken] were handed out already

    def next_event(self) -> Event | None:
        """The next event, or None when there is none for now."""
        events = self._events
        taken = self._taken
        if taken >= len(events):
            return None
        event = events[taken]
        if taken + 1 == len(events):
            events.clear()
            self._taken = 0
        else:
            self._taken = taken + 1
        return event

    def events(self) -> list[Event]:
        """Every pending event at once."""
        out = self._events[self._taken :] if self._taken else self._events
        self._events = []
        self._taken = 0
        return out


# -- instructions for the caller's I/O layer ---------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Instruction:
    """Base class of what ``LabsClient.transmit()`` asks the caller to do."""

    stream_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenStream(Instruction):
    """Open a TCP connection to ``host``:``port`` and feed what it receives to ``receive_data(stream_id, ...)``.

    ``host`` and ``port`` are the first hop: the proxy when one is configured.
    """

    host: str
    port: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SendBytes(Instruction):
    """Write ``data`` to the stream."""

    data: bytes = field(repr=False)

    def __repr__(self) -> str:
        return f"SendBytes(stream_id={self.stream_id}, data=<{len(self.data)} bytes>)"


@dataclass(frozen=True, slots=True, kw_only=True)
class CloseStream(Instruction):
    """Close the stream; the client will not use it again."""


# -- instructions of the message level (plabs_proto.labs.session.LabsSession) ----------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionInstruction:
    """Base class of what ``LabsSession.transmit()`` asks its HTTP/WebSocket client to do."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPRequest(SessionInstruction):
    """Make one HTTP request and hand its response to ``receive_http_response(request_id, ...)``.

    ``url`` is absolute (``https://host/socket.io/?EIO=4&transport=polling&t=...``).
    ``headers`` are the ones the protocol needs (Origin, Referer, a POST's
    Content-Type); the carrier adds its own (Host, User-Agent, cookies, ...).
    A request that fails below HTTP goes to ``receive_transport_error(request_id, ...)``.

    ``lane``: requests of one lane go one after another, so one kept-alive
    connection carries them; requests of different lanes may be out at the same
    time (a long-polling GET and a POST), so a carrier that keeps connections
    keeps one per lane.  Requests never rely on sharing a connection: any
    connection (or none kept alive) will do.

    ``incremental``: the session takes the response's body as it arrives:
    ``receive_http_head(request_id, ...)``, then ``receive_http_body(request_id,
    data, ...)`` for each piece, then ``receive_http_end(request_id, ...)``
    (a Server-Sent Events stream).  Otherwise the whole response goes to
    ``receive_http_response``.
    """

    request_id: int
    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes = field(repr=False)
    lane: int = 0
    incremental: bool = False

    def __repr__(self) -> str:
        """The request with the values of ``Cookie`` and ``Authorization`` headers hidden (a session token)."""
        shown = tuple(
            (name, "[redacted]" if name.lower() in ("cookie", "authorization") else value)
            for name, value in self.headers
        )
        return (
            f"HTTPRequest(request_id={self.request_id}, method={self.method!r}, url={self.url!r}, "
            f"headers={shown!r}, body=<{len(self.body)} bytes>, lane={self.lane}, incremental={self.incremental})"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class WebSocketConnect(SessionInstruction):
    """Open a WebSocket to ``url`` (``ws://`` or ``wss://``); report ``receive_websocket_open(ws_id, ...)``."""

    ws_id: int
    url: str
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class WebSocketSend(SessionInstruction):
    """Send one WebSocket message: a text message for ``str``, a binary one for ``bytes``."""

    ws_id: int
    data: str | bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class WebSocketClose(SessionInstruction):
    """Close the WebSocket (or give up opening it); the session will not use it again.

    ``code`` set: end with the closing handshake, a close frame of that code (the
    session said goodbye and the WebSocket is open).  ``None``: drop the
    connection (the session failed, the server ended it, or it never opened).
    """

    ws_id: int
    code: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TransportSwitched(SessionInstruction):
    """The WebSocket ``ws_id`` carries the session from the instruction before this one on.

    The HTTP requests are over: a carrier that keeps connections may close the
    ones they used, once what it was told to send before this is written.
    """

    ws_id: int


# -- events of the Perplexity ask service (plabs_proto.perplexity) -------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SearchQueries(Event):
    """The service searched the web for ``queries`` (one search step).

    Search steps (this and :class:`SourcesRead`) come in the order the service
    took them, each query and each source once.
    """

    queries: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class SourcesRead(Event):
    """The service read these sources (one reading step).

    Each source is a dict ``{"url": ..., "title": ...}`` (``title`` is ``""``
    when the service named none), the form :class:`Citations` uses.
    """

    sources: tuple[dict[str, str], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ThreadIdentity(Event):
    """Which thread the answer belongs to: what a follow-up in the same thread sends back.

    ``backend_uuid`` names this answer (a follow-up sends it as
    ``last_backend_uuid``), ``read_write_token`` is the thread's token and
    ``thread_url_slug`` its place on the site (``/search/<slug>``); either may be
    None when the service did not send it.  Handed out when first known and
    again whenever one of them changes.
    """

    backend_uuid: str
    read_write_token: str | None = None
    thread_url_slug: str | None = None
