"""The ask session: Perplexity's ``POST /rest/sse/perplexity_ask`` at the message level.

:class:`PerplexitySession` runs the ask service as the web app does, without a
byte of HTTP of its own, so that any HTTP client can carry it (the byte level,
:class:`~plabs_proto.wire.client.PerplexityClient`; curl_cffi; your own).  Its
caller, the carrier, does in a loop what it does for
:class:`~plabs_proto.labs.session.LabsSession`:

1. carries out ``transmit()``: :class:`~plabs_proto.events.HTTPRequest` only
   (one at a time, lane 0, so one kept-alive connection carries them all);
2. reports what came back: ``receive_http_response`` for a request asked for
   whole (the warm-up), ``receive_http_head`` / ``receive_http_body`` (each piece
   as it arrives) / ``receive_http_end`` for one asked for with
   ``incremental=True`` (the ask: its body is a Server-Sent Events stream; a
   carrier that cannot stream may hand it whole to ``receive_http_response``),
   ``receive_transport_error`` for a request that failed below HTTP, or
   ``fail(exc)`` for an error it found in the bytes itself;
3. fires ``handle_timer(now)`` when ``get_timer()``'s deadline comes;

and reads ``next_event()`` for what happened.  Commands are ``connect(now)``
(the warm-up ``GET /api/auth/session``, which sets the anonymous cookies; READY
on its 200), ``query(messages, model=..., mode=..., now=...)`` (the ask; a second
one is a follow-up in the same thread), ``request_catalog(now=...)`` (``GET
/rest/models/config/v2``, answered by a :class:`Catalog` event with the service's
own models) and ``close(now)``.  The states and the
moves between them are :mod:`plabs_proto.state`'s.

The answer: SSE events (:class:`~plabs_proto.perplexity.sse.SSEDecoder`), the
JSON of each ``message`` (:class:`~plabs_proto.perplexity.frames.FrameLoader`: only
what differs from the frame before is decoded again),
the events it brings (:class:`~plabs_proto.perplexity.answer.AnswerDecoder`).
It ends on a frame whose ``status`` is ``COMPLETED`` or on ``end_of_stream``
(protocol.md §10.3), never on ``final`` alone; a body that ends before either
raises :class:`~plabs_proto.errors.RemoteProtocolError` with the text so far.

Errors (each fails the session, keeping ``partial_text``): the service's
``status: "failed"`` is :class:`~plabs_proto.errors.AnswerFailedError` (with
``error_code``), a quota :class:`~plabs_proto.errors.AnswerRateLimitedError`; an
HTTP 429 is :class:`~plabs_proto.errors.RateLimitedError` (``retry_after``), a
Cloudflare page :class:`~plabs_proto.errors.ChallengeError`, another 401 or 403
:class:`~plabs_proto.errors.SignInError`, a redirect
:class:`~plabs_proto.errors.RedirectError`.

The session states what the web app sends (Accept, Origin, Referer, the ask's
Content-Type and ``x-app-*`` headers) and, signed in, a ``Cookie`` header with
the session token and the cookies.txt cookies (``SessionConfig.session_token``,
``cookies_txt``); its carrier adds the rest (Host, User-Agent, the cookies the
server set, compression, proxies, TLS).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from plabs_proto import state as _state
from plabs_proto.config import SessionConfig
from plabs_proto.errors import (
    HandshakeError,
    LabsError,
    LabsTimeout,
    LocalProtocolError,
    NetworkError,
    RemoteProtocolError,
    SignInError,
    UnexpectedPageError,
)
from plabs_proto.events import (
    AnswerFinished,
    Closed,
    Connected,
    Event,
    EventQueue,
    HTTPRequest,
    ReasoningDelta,
    SessionInstruction,
    TextDelta,
    ThreadIdentity,
)
from plabs_proto.jsondepth import check_depth
from plabs_proto.labs.answer import normalize_messages
from plabs_proto.messages import HTTPResponse, Utf8Text
from plabs_proto.perplexity.answer import END_OF_STREAM, MESSAGE, AnswerDecoder
from plabs_proto.perplexity.frames import FrameLoader
from plabs_proto.perplexity.request import (
    DEFAULT_MODE,
    DEFAULT_MODEL,
    SESSION_COOKIE,
    Model,
    ask_request,
    catalog_request,
    parse_catalog,
    read_cookies_txt,
    warmup_request,
)
from plabs_proto.perplexity.sse import SSEDecoder
from plabs_proto.refusal import HEADER_LIMIT, clean, page_title, refusal
from plabs_proto.state import SessionState, next_state

__all__ = ["ERROR_BODY_LIMIT", "TRANSPORT", "Catalog", "PerplexitySession", "signed_in_cookie"]

#: What ``Connected.transport`` says for this service.
TRANSPORT = "sse"
#: Most bytes of a refused answer's body kept to read the refusal from (a Cloudflare page, a JSON error).
ERROR_BODY_LIMIT = 64 * 1024

_CLOSED, _ERROR, _QUERYING, _READY = SessionState.CLOSED, SessionState.ERROR, SessionState.QUERYING, SessionState.READY
_CATALOG = "the model catalog (GET /rest/models/config/v2)"


@dataclass(frozen=True, slots=True, kw_only=True)
class Catalog(Event):
    """The service's own models, the answer to ``request_catalog()`` (see
    :func:`~plabs_proto.perplexity.request.parse_catalog`), in the catalog's order."""

    models: tuple[Model, ...]


def _query_text(messages: str | Sequence[Mapping[str, Any]], follow_up: bool) -> str:
    """The ``query_str`` of a conversation: one message's text, else each message on lines of its own.

    A follow-up sends only the last user message: the thread holds the rest.
    """
    listed = normalize_messages(messages)
    if follow_up:
        users = [message["content"] for message in listed if message["role"] == "user"]
        if users:
            return users[-1]
    if len(listed) == 1:
        return listed[0]["content"]
    return "\n".join(f"{message['role'].capitalize()}: {message['content']}" for message in listed)


def signed_in_cookie(config: SessionConfig) -> str | None:
    """The ``Cookie`` value a signed-in session sends: the cookies.txt cookies, then the session token
    (which wins over a cookie of the same name); None when anonymous."""
    pairs: dict[str, str] = {}
    if config.cookies_txt is not None:
        for cookie in read_cookies_txt(config.cookies_txt):
            pairs[cookie.name] = cookie.value
    if config.session_token is not None:
        pairs[SESSION_COOKIE] = config.session_token
    return "; ".join(f"{name}={value}" for name, value in pairs.items()) if pairs else None


class _Ask:
    """The ask in flight: its request id, its decoders, and the refusal body when it was refused."""

    __slots__ = ("answer", "frames", "head", "refused", "request_id", "sse")

    def __init__(self, request_id: int, config: SessionConfig, model: str) -> None:
        self.request_id = request_id
        limit = config.max_message_size
        self.sse = SSEDecoder(max_line=limit + 1024, max_data=limit)
        self.frames = FrameLoader()
        self.answer = AnswerDecoder(model=model)
        self.head: HTTPResponse | None = None  # the response head, once it came
        self.refused: bytearray | None = None  # the body of a refused answer (not SSE), kept to read it


class PerplexitySession(EventQueue):
    """A sans-IO session of the ask service at the message level.  See the module docstring for the loop.

    ``rng`` draws the UUIDs of each ask (``frontend_uuid``...): pass
    ``random.SystemRandom()`` in production and a seeded ``random.Random`` in
    tests.  ``config`` may be a :class:`~plabs_proto.config.ClientConfig`: the
    session reads only the message-level fields (``server``, the deadlines,
    ``max_message_size``, ``session_token``, ``cookies_txt``).
    """

    def __init__(self, config: SessionConfig | None = None, *, rng: random.Random) -> None:
        self.config = config = config or SessionConfig(service="perplexity")
        self._rng = rng
        self._state = SessionState.IDLE
        EventQueue.__init__(self)  # the events wait here, for next_event() and events()
        self._out: list[SessionInstruction] = []
        self._deadlines: dict[str, float] = {}
        self._next_id = 1
        self._warmup_id: int | None = None
        self._ask: _Ask | None = None  # the ask in flight (its answer streaming, or waiting for the warm-up)
        self._pending: tuple[str, dict[str, Any]] | None = None  # a query made while connecting
        self._catalog_id: int | None = None  # the catalog request in flight
        self._thread: ThreadIdentity | None = None
        self._cookie = signed_in_cookie(config)
        self._server = config.server.rstrip("/")

    # -- public state ---------------------------------------------------------------------------

    @property
    def state(self) -> SessionState:
        """The session's state (see :mod:`plabs_proto.state`)."""
        return self._state

    @property
    def max_connections(self) -> int:
        """The most connections the session uses at once: one (its requests go one after another)."""
        return 1

    @property
    def signed_in(self) -> bool:
        """Whether the session sends a session token or cookies of the caller's."""
        return self._cookie is not None

    @property
    def thread(self) -> ThreadIdentity | None:
        """The thread of the last answer (what a follow-up sends back), once the service named it."""
        return self._thread

    @property
    def partial_text(self) -> str:
        """The answer text so far of the query streaming now; ``""`` when none is."""
        ask = self._ask
        return ask.answer.partial_text if ask is not None and self._state is _QUERYING else ""

    @property
    def partial_reasoning(self) -> str:
        """The reasoning so far of the query streaming now; ``""`` when none is."""
        ask = self._ask
        return ask.answer.partial_reasoning if ask is not None and self._state is _QUERYING else ""

    # -- commands -------------------------------------------------------------------------------

    def connect(self, now: float) -> None:
        """Start the session: the first ``transmit()`` then holds the warm-up ``GET /api/auth/session``."""
        self._state = next_state(self._state, _state.CONNECT)
        if self.config.connect_timeout is not None:
            self._deadlines["connect"] = now + self.config.connect_timeout
        request = warmup_request(self._server)
        self._warmup_id = self._request(request.method, request.url, request.headers, request.body, incremental=False)

    def query(
        self,
        messages: str | Sequence[Mapping[str, Any]],
        *,
        model: str = DEFAULT_MODEL,
        mode: str | None = None,
        now: float,
    ) -> None:
        """Ask; the answer comes as events.  One query at a time.

        Allowed while connecting (it is sent once the warm-up is answered) and
        when ready.  A query after an answer is a follow-up in its thread
        (``last_backend_uuid``, ``read_write_token``, ``query_source: "followup"``),
        and sends only the last user message of ``messages``.  ``model`` is a
        ``model_preference`` (anonymous use gets ``"turbo"`` only), ``mode``
        ``"copilot"`` or ``"concise"`` (None: ``config.mode``, else ``"copilot"``).
        """
        if self._ask is not None or self._pending is not None:
            raise LocalProtocolError(
                "cannot start a query while another one is still streaming on this session: "
                "queries run one after another"
            )
        if self._catalog_id is not None:
            raise LocalProtocolError("cannot start a query while the model catalog is being fetched: wait for Catalog")
        new_state = next_state(self._state, _state.QUERY)
        mode = self.config.mode or DEFAULT_MODE if mode is None else mode
        options: dict[str, Any] = {"model": model or DEFAULT_MODEL, "mode": mode, "follow_up": self._thread}
        text = _query_text(messages, self._thread is not None)
        ask_request(text, rng=random.Random(0), server=self._server, **options)  # checks it all now, draws nothing
        if self.config.first_text_timeout is not None:
            self._deadlines["first_text"] = now + self.config.first_text_timeout
        if self.config.query_timeout is not None:
            self._deadlines["query"] = now + self.config.query_timeout
        self._state = new_state
        if new_state is _QUERYING:
            self._send_ask(text, options)
        else:
            self._pending = (text, options)

    def request_catalog(self, *, now: float) -> None:
        """Ask for the service's model catalog (``GET /rest/models/config/v2``); a :class:`Catalog`
        event brings it.  Only when ready (after the warm-up, whose cookies it goes with, and
        between queries); one at a time."""
        if self._state is not _READY or self._ask is not None or self._catalog_id is not None:
            doing = "the catalog is being fetched already" if self._catalog_id is not None else f"it is {self._state.value}"
            raise LocalProtocolError(
                f"expected a ready session (connected, no query streaming) to ask for the catalog, but {doing}"
            )
        request = catalog_request(self._server)
        self._catalog_id = self._request(request.method, request.url, request.headers, request.body,
                                         incremental=False)

    def close(self, now: float) -> None:
        """End the session (no request says goodbye: an answer still streaming is dropped)."""
        state = self._state
        self._state = next_state(state, _state.CLOSE)
        if state in _state.END_STATES:
            return
        self._deadlines.clear()
        self._warmup_id = self._catalog_id = None
        self._ask = self._pending = None
        self._events.append(Closed(reason="closed by the client"))

    def fail(self, exc: LabsError) -> None:
        """End the session in ERROR because of ``exc``, keeping the answer so far on it.

        The byte level calls it for an error of its own bytes (TLS, HTTP, a
        proxy); the session calls it for its own errors.
        """
        exc.keep_partial(self.partial_text, self.partial_reasoning)
        self._state = next_state(self._state, _state.FAILED)
        self._deadlines.clear()
        self._warmup_id = self._catalog_id = None
        self._ask = self._pending = None

    # -- inputs ---------------------------------------------------------------------------------

    def receive_http_response(
        self, request_id: int, status: int, headers: Sequence[tuple[str, str]], body: bytes, now: float,
        *, reason: str = "",
    ) -> None:
        """The whole response to the ``HTTPRequest`` of ``request_id`` (any status; headers as received).

        The warm-up's answer comes here; so may the ask's, from a carrier that
        cannot hand a body over in pieces (it is read as if it had).
        """
        if not isinstance(body, (bytes, bytearray)):
            raise LocalProtocolError(f"expected a bytes body, got {type(body).__name__}")
        ask = self._ask
        if ask is not None and request_id == ask.request_id:
            self.receive_http_head(request_id, status, headers, now, reason=reason)
            if self._ask is ask:
                self.receive_http_body(request_id, bytes(body), now)
            if self._ask is ask:
                self.receive_http_end(request_id, now)
            return
        response = self._response(status, reason, headers, body)
        if request_id == self._catalog_id and request_id is not None:
            self._catalog_id = None
            try:
                self._events.append(Catalog(models=_read_catalog(response, self._refused)))
            except LabsError as exc:
                self._failed(exc)
                raise
            return
        if request_id != self._warmup_id:
            return  # an answer nobody waits for any more
        self._warmup_id = None
        try:
            if response.status != 200:
                raise self._refused(response, "the warm-up (GET /api/auth/session)")
            self._deadlines.pop("connect", None)
            self._state = next_state(self._state, _state.CONNECTED)
            self._events.append(Connected(engine_sid="", socket_sid="", transport=TRANSPORT))
            if self._pending is not None:
                text, options = self._pending
                self._pending = None
                self._state = next_state(self._state, _state.QUERY)
                self._send_ask(text, options)
        except LabsError as exc:
            self._failed(exc)
            raise

    def receive_http_head(
        self, request_id: int, status: int, headers: Sequence[tuple[str, str]], now: float, *, reason: str = ""
    ) -> None:
        """The head of the response to the incremental ``HTTPRequest`` of ``request_id`` (the ask)."""
        ask = self._ask
        response = self._response(status, reason, headers, b"")
        if ask is None or request_id != ask.request_id or ask.head is not None:
            return
        ask.head = response
        if status != 200:
            ask.refused = bytearray()
            return
        kind = (response.header("content-type") or "").split(";", 1)[0].strip().lower()
        if kind in ("text/html", "application/xhtml+xml", "application/json"):
            ask.refused = bytearray()  # a page or an error where the event stream was expected

    def receive_http_body(self, request_id: int, data: bytes, now: float) -> None:
        """The next piece of the body of the ask's response, as it arrived (any split)."""
        ask = self._ask
        if ask is None or request_id != ask.request_id:
            return
        if ask.head is None:
            raise LocalProtocolError(
                f"expected receive_http_head before the body of request {request_id}, got {len(data)} body bytes"
            )
        try:
            if ask.refused is not None:
                room = ERROR_BODY_LIMIT - len(ask.refused)
                ask.refused += data[:room]
                if len(data) > room:
                    self._refuse(ask)
                return
            frames, answer = ask.frames, ask.answer
            for kind, text, _, _ in ask.sse.feed_raw(data):
                if kind == MESSAGE:
                    frame = frames.load(text)
                    events = answer.feed(frame, frames.changed)
                elif kind == END_OF_STREAM:
                    events = answer.end_of_stream()
                else:
                    continue
                self._take(events)
                if self._ask is not ask:
                    return  # the answer finished: what follows belongs to no query
        except LabsError as exc:
            self._failed(exc)
            raise

    def receive_http_end(self, request_id: int, now: float) -> None:
        """The ask's response ended (its whole body was handed over)."""
        ask = self._ask
        if ask is None or request_id != ask.request_id:
            return
        try:
            if ask.head is None:
                raise LocalProtocolError(f"expected receive_http_head before the end of request {request_id}, got none")
            if ask.refused is not None:
                self._refuse(ask)
            cut = ask.sse.end()
            text = ask.answer.partial_text
            raise RemoteProtocolError(
                "expected the answer to end with a COMPLETED frame or end_of_stream, but the response body "
                f"ended{' mid-event' if cut else ''} after {len(text)} characters of it",
                partial_text=text,
                partial_reasoning=ask.answer.partial_reasoning,
            )
        except LabsError as exc:
            self._failed(exc)
            raise

    def receive_transport_error(self, id: int, message: str, now: float) -> None:
        """The request ``id`` failed below HTTP (refused, reset, TLS): the session fails.

        Raises :class:`~plabs_proto.errors.NetworkError` naming the server's
        host and port (``errno=None``), with the answer's text so far.  Late
        news of a request nobody waits for any more is ignored.
        """
        ask = self._ask
        if id != self._warmup_id and id != self._catalog_id and (ask is None or id != ask.request_id):
            return
        url = urlsplit(self._server)
        host = url.hostname or ""
        port = url.port or (443 if url.scheme == "https" else 80)
        text = self.partial_text
        got = f" after {len(text)} characters of the answer" if text else ""
        exc = NetworkError(
            f"expected a response from {host}:{port}, but the request failed{got} ({clean(message, 300)})",
            host=host,
            port=port,
        )
        self._failed(exc)
        raise exc

    def receive_websocket_open(self, ws_id: int, now: float) -> None:
        """Not used: this session opens no WebSocket."""
        raise LocalProtocolError(f"expected no WebSocket on an ask session, got news of WebSocket {ws_id}")

    def receive_websocket_message(self, ws_id: int, data: str | bytes, now: float) -> None:
        """Not used: this session opens no WebSocket."""
        raise LocalProtocolError(f"expected no WebSocket on an ask session, got a message of WebSocket {ws_id}")

    def receive_websocket_messages(
        self, ws_id: int, messages: Sequence[str | bytes | Utf8Text], now: float, *, limited: bool = False
    ) -> None:
        """Not used: this session opens no WebSocket."""
        raise LocalProtocolError(f"expected no WebSocket on an ask session, got messages of WebSocket {ws_id}")

    def receive_websocket_close(self, ws_id: int, code: int | None, now: float, reason: str = "") -> None:
        """Not used: this session opens no WebSocket."""
        raise LocalProtocolError(f"expected no WebSocket on an ask session, got the close of WebSocket {ws_id}")

    def receive_websocket_refused(
        self, ws_id: int, status: int, headers: Sequence[tuple[str, str]], body: bytes, now: float,
        reason: str = "",
    ) -> None:
        """Not used: this session opens no WebSocket."""
        raise LocalProtocolError(f"expected no WebSocket on an ask session, got a refusal of WebSocket {ws_id}")

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
        }[name]
        message = {
            "connect": f"expected the warm-up (GET /api/auth/session) to be answered within {waited:g} s, it was not",
            "first_text": f"expected the first answer text within {waited:g} s of the query, got none",
            "query": f"expected the whole answer within {waited:g} s of the query, it was not complete",
        }[name]
        exc = LabsTimeout(message, deadline=name)
        self._failed(exc)
        raise exc

    # -- outputs --------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The next deadline (same clock as ``now``), or None."""
        return min(self._deadlines.values()) if self._deadlines else None

    def transmit(self) -> list[SessionInstruction]:
        """What the carrier must do now, in order (HTTP requests)."""
        out = self._out
        self._out = []
        return out

    # -- internals ------------------------------------------------------------------------------

    def _request(
        self, method: str, url: str, headers: tuple[tuple[str, str], ...], body: bytes, *, incremental: bool
    ) -> int:
        request_id = self._next_id
        self._next_id += 1
        if self._cookie is not None:
            headers = (*headers, ("Cookie", self._cookie))
        self._out.append(
            HTTPRequest(request_id=request_id, method=method, url=url, headers=headers, body=body,
                        incremental=incremental)
        )
        return request_id

    def _send_ask(self, text: str, options: dict[str, Any]) -> None:
        request = ask_request(text, rng=self._rng, server=self._server, **options)
        request_id = self._request(request.method, request.url, request.headers, request.body, incremental=True)
        self._ask = _Ask(request_id, self.config, options["model"])

    @staticmethod
    def _response(status: int, reason: str, headers: Sequence[tuple[str, str]], body: bytes) -> HTTPResponse:
        if isinstance(status, bool) or not isinstance(status, int) or not isinstance(reason, str):
            raise LocalProtocolError(
                f"expected an int status and a str reason, got {type(status).__name__} and {type(reason).__name__}"
            )
        return HTTPResponse(status, reason, tuple((k.lower(), v) for k, v in headers), bytes(body))

    def _take(self, events: list[Event]) -> None:
        """The answer decoder's events: kept for the caller; the deadlines and the state follow them."""
        for event in events:
            kind = type(event)
            if kind is TextDelta or kind is ReasoningDelta:
                if self._deadlines:
                    self._deadlines.pop("first_text", None)
            elif kind is ThreadIdentity:
                self._thread = event  # type: ignore[assignment]
            elif kind is AnswerFinished:
                self._ask = None
                self._deadlines.pop("first_text", None)
                self._deadlines.pop("query", None)
                self._state = next_state(self._state, _state.ANSWER_ENDED)
        self._events.extend(events)

    def _refuse(self, ask: _Ask) -> None:
        head = ask.head
        assert head is not None and ask.refused is not None
        response = HTTPResponse(head.status, head.reason, head.headers, bytes(ask.refused))
        what = "the ask (POST /rest/sse/perplexity_ask)"
        if response.status == 200:
            kind = clean(response.header("content-type") or "", HEADER_LIMIT)
            title = page_title(response.body)
            named = f" titled {title!r}" if title else ""
            raise UnexpectedPageError(
                f"expected an event stream (text/event-stream) from {what}, got HTTP 200 {kind}{named}: "
                f"{clean(response.body[:400].decode('utf-8', 'replace'), 200)!r}",
                status=200,
                title=title,
                content_type=kind or None,
                body_excerpt=clean(response.body[:864].decode("utf-8", "replace"), 200),
            )
        raise self._refused(response, what)

    def _refused(self, response: HTTPResponse, what: str) -> LabsError:
        """The error for a step answered with another status than 200 (see :func:`~plabs_proto.refusal.refusal`);
        401 and 403 without a Cloudflare page are a :class:`SignInError`."""
        error = refusal(response, what, 200)
        if response.status in (401, 403) and type(error) is HandshakeError:
            signed = "the session token you gave" if self._cookie is not None else "no session token was given"
            return SignInError(
                f"{what} was refused with HTTP {response.status}: sign-in needed: the session token "
                f"(cookie {SESSION_COOKIE}) is missing or expired ({signed}); sign in with a browser and "
                f"give session_token= or cookies_txt= again; the server said {error.body_excerpt!r}",
                status=response.status,
                body_excerpt=error.body_excerpt,
            )
        return error

    def _failed(self, exc: LabsError) -> None:
        """An input or the timer raised ``exc``: an error of the server's fails the session (a local one does not)."""
        if not isinstance(exc, LocalProtocolError) and self._state is not _ERROR:
            self.fail(exc)


def _read_catalog(response: HTTPResponse, refused: Callable[[HTTPResponse, str], LabsError]) -> tuple[Model, ...]:
    """The models of the catalog's answer; a refusal (another status than 200) or a body that is
    not a JSON catalog raises (``refused(response, what)`` makes the refusal's error)."""
    if response.status != 200:
        raise refused(response, _CATALOG)
    try:
        text = response.body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError(f"expected {_CATALOG} as UTF-8 JSON, got a byte that is not UTF-8 at {exc.start}") from None
    check_depth(text, "the model catalog")
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise RemoteProtocolError(f"expected {_CATALOG} as JSON, got {clean(text[:200], 100)!r} ({exc})") from None
    return parse_catalog(data)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
