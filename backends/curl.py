"""A Chrome-impersonating backend: :class:`~plabs_proto.session.LabsSession` carried by curl_cffi.

Every polling request goes through ``curl_cffi``'s ``AsyncSession(impersonate=...)``
and the WebSocket through its ``ws_connect``, so the TLS ClientHello, the HTTP/2
settings and the header order are those of the browser curl impersonates
(``"chrome"`` by default), as the seed provider's were.  curl owns the User-Agent,
``sec-ch-ua``, ``Accept-Encoding`` and the cookie jar; the session adds only what the
protocol needs (Origin, Referer, a POST's Content-Type) and the caller's ``headers``.

The public API is the asyncio backend's (:func:`ask`, :func:`connect`), with one more
keyword, ``impersonate`` (a curl_cffi target: ``"chrome"``, ``"safari"``...).  Options
that only the byte level knows are refused here: ``ssl_context`` (use ``cafile``),
``tls=False``, ``user_agent`` (curl's is the browser's).  ``browser`` (the pure-Python path's
header profile) is not used: curl sends its target's headers.  A ``tracer`` is told the
seed but sees no bytes (curl keeps them).  Needs the ``impersonate`` extra.

Errors: a refused or reset connection raises :class:`~plabs_proto.errors.NetworkError`
(host and port of the server, or of the proxy when one is used), a failed
certificate check :class:`~plabs_proto.errors.TLSError`, a proxy that fails
:class:`~plabs_proto.errors.ProxyError`; all of them carry ``partial_text``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from curl_cffi import AsyncSession as CurlSession
from curl_cffi import CurlError
from curl_cffi.const import CurlECode, CurlHttpVersion, CurlWsFlag
from curl_cffi.requests import AsyncWebSocket
from curl_cffi.requests.websockets import WebSocketClosed

from plabs_proto.client import ClientConfig
from plabs_proto.errors import (
    LabsError,
    LocalProtocolError,
    NetworkError,
    ProxyError,
    ResponseError,
    TLSError,
)
from plabs_proto.events import (
    Connected,
    Event,
    HTTPRequest,
    WebSocketClose,
    WebSocketConnect,
    WebSocketSend,
)
from plabs_proto.labs import DEFAULT_MODEL
from plabs_proto.session import LabsSession, SessionState

from ._async_api import AsyncAnswer, AsyncLink
from ._config import (
    AskOptions,
    Messages,
    Options,
    SessionOptions,
    announce_seed,
    make_rng,
    parse_options,
    to_messages,
)
from ._errors import check_event, opened

if TYPE_CHECKING:  # typing.Unpack is Python 3.11+; only type checkers read it here
    from typing import Unpack

__all__ = ["DEFAULT_IMPERSONATE", "Session", "ask", "connect"]

#: The browser curl impersonates unless told otherwise.
DEFAULT_IMPERSONATE = "chrome"
_CLOSE_WAIT = 1.0  # seconds aclose() waits for the goodbye to go out before closing everything
_END_STATES = (SessionState.CLOSED, SessionState.ERROR)
_TLS_CODES = frozenset(
    {
        CurlECode.PEER_FAILED_VERIFICATION,
        CurlECode.SSL_CONNECT_ERROR,
        CurlECode.SSL_CERTPROBLEM,
        CurlECode.SSL_CACERT_BADFILE,
        CurlECode.SSL_PINNEDPUBKEYNOTMATCH,
        CurlECode.SSL_ISSUER_ERROR,
    }
)
_PROXY_CODES = frozenset({CurlECode.PROXY, CurlECode.COULDNT_RESOLVE_PROXY})
_Close = object()  # the writer's "close the WebSocket" item


def _check_config(config: ClientConfig) -> None:
    if config.ssl_context is not None:
        raise LocalProtocolError("expected cafile on the curl backend, got ssl_context (curl does its own TLS)")
    if config.tls is False:
        raise LocalProtocolError("expected tls left as None on the curl backend, got tls=False")
    if config.user_agent is not None:
        raise LocalProtocolError(
            f"expected no user_agent on the curl backend (curl sends the impersonated browser's), got {config.user_agent!r:.60}"
        )
    if config.proxy is not None and not isinstance(config.proxy, str):
        raise LocalProtocolError("expected the proxy as a URL str on the curl backend, got a ProxyConfig")


def _check_impersonate(impersonate: object) -> str:
    if not isinstance(impersonate, str) or not impersonate:
        raise LocalProtocolError(f"expected impersonate as a curl_cffi target name (str), got {impersonate!r:.60}")
    return impersonate


class _Link:
    """One Labs session over one curl session: a pump task runs the inputs and timers.

    It offers what the shared :class:`~backends._async_api.AsyncAnswer` needs of a link
    (``client``, ``events``, ``error``, ``finished``, ``now``, ``command``,
    ``next_event``, ``close``, ``aclose``), with a :class:`LabsSession` as ``client``.
    """

    def __init__(self, config: ClientConfig, rng: random.Random, impersonate: str) -> None:
        self._loop = asyncio.get_running_loop()
        self.client = LabsSession(config.session_config(), rng=rng)
        self.events: deque[Event] = deque()
        self.error: BaseException | None = None
        self.finished = False
        self._proxy = config.proxy if isinstance(config.proxy, str) else None
        self._extra = list(config.headers)
        # timeout=None: curl waits as long as the session does (its deadlines are the session's)
        self._http: CurlSession[Any] = CurlSession(
            impersonate=cast(Any, impersonate),
            proxy=self._proxy,
            verify=cast(Any, config.cafile or True),  # curl_cffi takes a CA file path too
            timeout=cast(Any, None),
            # never follow a redirect silently: the session reads it as a RedirectError naming the Location
            allow_redirects=False,
            # HTTP/2 over TLS only, as Chrome: over plain http:// curl would otherwise offer an h2c
            # upgrade, which no browser sends (and an Engine.IO server refuses on a polling GET)
            http_version=CurlHttpVersion.V2TLS,
        )
        self._inbox: asyncio.Queue[tuple[Callable[..., None], tuple[Any, ...]]] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._outgoing: dict[int, asyncio.Queue[object]] = {}
        self._sockets: dict[int, AsyncWebSocket] = {}
        self._wakeup = asyncio.Event()
        self._pump = self._loop.create_task(self._run())

    # -- what the consumer calls --------------------------------------------------------------

    def now(self) -> float:
        return self._loop.time()

    def command(self, method: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        """Call a session command with ``now=``; misuse raises, other errors wait for :meth:`next_event`."""
        if self.error is not None:
            raise LocalProtocolError(f"cannot use this session: it failed ({self.error})") from self.error
        if self.finished:
            raise LocalProtocolError("cannot use this session: it is closed")
        try:
            method(*args, now=self.now(), **kwargs)
        except LocalProtocolError:
            raise
        except LabsError as exc:
            self.error = exc
        self._step()

    async def next_event(self) -> Event:
        while True:
            if self.events:
                return self.events.popleft()
            if self.error is not None:
                raise self.error
            if self.finished:
                raise LocalProtocolError("cannot read this session: it is closed")
            self._wakeup.clear()
            await self._wakeup.wait()

    def close(self) -> None:
        """Close every request and WebSocket at once (safe from ``__del__``)."""
        if self.finished and not self._tasks and self._pump.done():
            return
        self.finished = True
        self._pump.cancel()
        for task in list(self._tasks):
            task.cancel()
        for ws in self._sockets.values():
            with contextlib.suppress(Exception):
                ws.terminate()
        self._sockets.clear()
        if not self._loop.is_closed():
            _closing.add(task := self._loop.create_task(self._http.close()))
            task.add_done_callback(_closing.discard)
        self._wakeup.set()

    async def aclose(self) -> None:
        """Say goodbye if the session is healthy (bounded in time), then close everything."""
        try:
            if not self.finished and self.error is None and self.client.state not in _END_STATES:
                self.command(self.client.close)
                if self._tasks:
                    await asyncio.wait(set(self._tasks), timeout=_CLOSE_WAIT)
            self.finished = True
            self._pump.cancel()
            for task in list(self._tasks):
                task.cancel()
            for ws in list(self._sockets.values()):
                with contextlib.suppress(Exception):
                    ws.terminate()
            self._sockets.clear()
            await self._http.close()
        finally:
            self.close()

    # -- the pump -----------------------------------------------------------------------------

    async def _run(self) -> None:
        client = self.client
        while True:
            timer = client.get_timer()
            try:
                method, args = await asyncio.wait_for(
                    self._inbox.get(), None if timer is None else max(0.0, timer - self.now())
                )
            except TimeoutError:
                self._input(client.handle_timer)
            else:
                self._input(method, *args)

    def _input(self, method: Callable[..., None], *args: Any) -> None:
        try:
            method(*args, self.now())
        except LabsError as exc:
            if self.error is None:
                self.error = exc
        self._step()

    def _step(self) -> None:
        client = self.client
        for step in client.transmit():
            if isinstance(step, HTTPRequest):
                self._start(self._request(step))
            elif isinstance(step, WebSocketConnect):
                self._outgoing[step.ws_id] = asyncio.Queue()
                self._start(self._websocket(step))
            elif isinstance(step, WebSocketSend):
                self._outgoing[step.ws_id].put_nowait(step.data)
            elif isinstance(step, WebSocketClose) and step.ws_id in self._outgoing:
                self._outgoing[step.ws_id].put_nowait(_Close)
        self.events.extend(client.events())
        if self.error is not None or self.events:
            self._wakeup.set()

    def _start(self, work: Any) -> None:
        task = self._loop.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _report(self, method: Callable[..., None], *args: Any) -> None:
        self._inbox.put_nowait((method, args))

    # -- the carriers -------------------------------------------------------------------------

    async def _request(self, request: HTTPRequest) -> None:
        try:
            response = await self._http.request(
                cast(Any, request.method),
                request.url,
                headers=[*request.headers, *self._extra],
                data=request.body or None,
            )
        except CurlError as exc:
            self._report(self._failed, request.request_id, self._error(exc, request.url))
            return
        if self._proxy and response.status_code == 407:  # a plain http:// request the proxy forwards
            self._report(self._failed, request.request_id, self._proxy_refused())
            return
        headers = [(name, value or "") for name, value in response.headers.multi_items()]
        self._report(self.client.receive_http_response, request.request_id, response.status_code, headers,
                     response.content)

    async def _websocket(self, connect: WebSocketConnect) -> None:
        ws_id = connect.ws_id
        try:
            ws = await self._http.ws_connect(connect.url, headers=[*connect.headers, *self._extra])
        except CurlError as exc:
            self._report(self._failed, ws_id, self._error(exc, connect.url))
            return
        self._sockets[ws_id] = ws
        self._report(self.client.receive_websocket_open, ws_id)
        writer = self._loop.create_task(self._write(ws, self._outgoing[ws_id]))
        try:
            while True:
                try:
                    data, flags = await ws.recv()
                except WebSocketClosed:
                    break
                if flags & CurlWsFlag.CLOSE:
                    break
                if flags & CurlWsFlag.TEXT:
                    try:
                        text = data.decode("utf-8")
                    except UnicodeDecodeError:
                        self._report(self._failed, ws_id, None)
                        return
                    self._report(self.client.receive_websocket_message, ws_id, text)
                else:
                    self._report(self.client.receive_websocket_message, ws_id, data)
            self._report(self.client.receive_websocket_close, ws_id, ws.close_code)
        except CurlError as exc:
            self._report(self._failed, ws_id, self._error(exc, connect.url))
        finally:
            writer.cancel()
            self._sockets.pop(ws_id, None)
            with contextlib.suppress(Exception):
                ws.terminate()

    async def _write(self, ws: AsyncWebSocket, outgoing: asyncio.Queue[object]) -> None:
        while True:
            item = await outgoing.get()
            if item is _Close:
                with contextlib.suppress(CurlError):
                    await ws.close(timeout=_CLOSE_WAIT)
                return
            try:
                if isinstance(item, str):
                    await ws.send_str(item)
                else:
                    await ws.send_bytes(cast(bytes, item))
            except CurlError:
                return  # the reader sees the failure

    # -- errors -------------------------------------------------------------------------------

    def _failed(self, id: int, error: LabsError | None, now: float) -> None:
        """A request or WebSocket failed below HTTP: the session fails with our error (if it still waited)."""
        message = "invalid UTF-8 in a text message" if error is None else error.message
        try:
            self.client.receive_transport_error(id, message, now)
        except LabsError as exc:
            if error is None:
                raise
            error.partial_text = exc.partial_text
            error.partial_reasoning = exc.partial_reasoning
            raise error from error.__cause__

    def _proxy_refused(self) -> ProxyError:
        target = urlsplit(self._proxy or "")
        return ProxyError(
            f"expected the proxy at {target.hostname}:{target.port} to take our credentials, "
            "it answered HTTP 407 (proxy authentication required)"
        )

    def _error(self, exc: CurlError, url: str) -> LabsError:
        code = getattr(exc, "code", 0)
        target = urlsplit(self._proxy if self._proxy else url)
        host = target.hostname or ""
        port = target.port or (443 if target.scheme in ("https", "wss") else 80)
        peer = f"the {'proxy' if self._proxy else 'server'} at {host}:{port}"
        error: LabsError
        if code in _TLS_CODES:
            error = TLSError(f"expected a TLS connection to {urlsplit(url).hostname} that verifies, got: {exc}")
        elif self._proxy and code in _PROXY_CODES:
            error = ProxyError(f"expected {peer} to carry the connection, it failed (curl error {code})")
        else:
            error = NetworkError(
                f"expected to reach {peer}, but the connection failed (curl error {code}: {exc})",
                host=host,
                port=port,
                errno=None,
            )
        error.__cause__ = exc
        return error


_closing: set[asyncio.Task[None]] = set()


# -- the public API --------------------------------------------------------------------------------


def ask(prompt_or_messages: Messages, *, impersonate: str = DEFAULT_IMPERSONATE,
        **options: Unpack[AskOptions]) -> AsyncAnswer:
    """Ask Labs once through curl and stream the answer text: ``async for text in ask(...)``.

    As :func:`plabs_proto.backends.asyncio.ask` (the same options, errors and
    ``AnswerText`` promise), with ``impersonate``, the browser curl speaks as.
    """
    messages = to_messages(prompt_or_messages)
    opts = parse_options(options, with_model=True)
    _check_config(opts.config)
    target = _check_impersonate(impersonate)
    rng, seed = make_rng(opts.tracer, opts.seed)
    return AsyncAnswer(
        lambda: cast(AsyncLink, _Link(opts.config, rng, target)), messages, opts.model, opts.tracer, seed
    )


class Session:
    """One Labs connection through curl for several queries, one after another (``async with``).

    Between queries the pump task keeps answering heartbeats.  Leaving a query
    before ``AnswerFinished`` closes the session; a server-reported failure
    (:class:`~plabs_proto.errors.ResponseError`) leaves it usable.
    """

    def __init__(self, opts: Options, impersonate: str) -> None:
        self._opts = opts
        self._impersonate = impersonate
        self._rng, self.seed = make_rng(opts.tracer, opts.seed)
        self._link: _Link | None = None
        self._busy = False
        #: The ``Connected`` event, once the session is open.
        self.connected: Connected | None = None

    @property
    def client(self) -> LabsSession:
        """The sans-IO session underneath (its state, partial text, transport)."""
        if self._link is None:
            raise LocalProtocolError("cannot read the session: it is not open")
        return self._link.client

    async def open(self, *, wait: bool = True) -> None:
        """Connect and wait for the Socket.IO connect ack (``wait=False``: only start)."""
        if self._link is not None:
            raise LocalProtocolError("cannot open this session: it was opened already")
        link = self._link = _Link(self._opts.config, self._rng, self._impersonate)
        try:
            announce_seed(self._opts.tracer, self.seed, link.now())
            link.command(link.client.connect)
            if not wait:
                return
            event = await link.next_event()
            while not opened(event):
                event = await link.next_event()
            self.connected = cast(Connected, event)
        except BaseException:
            link.close()
            raise

    def query(self, messages: Messages, *, model: str = DEFAULT_MODEL) -> _Query:
        """Ask; iterate the result for the answer's events (``TextDelta``... ``AnswerFinished``)."""
        if self._link is None:
            raise LocalProtocolError("cannot query: the session is not open (use `async with connect(...)`)")
        if self._busy:
            raise LocalProtocolError(
                "cannot start a query while another one is still streaming on this session: "
                "queries run one after another"
            )
        checked = to_messages(messages)
        self._busy = True
        return _Query(self, self._link, checked, model)

    async def aclose(self) -> None:
        """Close the session (politely when it is healthy); idempotent."""
        if self._link is not None:
            await self._link.aclose()

    async def __aenter__(self) -> Session:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        link = self._link
        if link is not None and not link.finished:
            with contextlib.suppress(Exception):
                link.close()


class _Query:
    """What :meth:`Session.query` returns: an async iterator of one answer's events."""

    def __init__(self, session: Session, link: _Link, messages: list[dict[str, str]], model: str) -> None:
        self._session = session
        self._link = link
        self._messages = messages
        self._model = model
        self._started = False
        self._done = False

    def __aiter__(self) -> _Query:
        return self

    async def __anext__(self) -> Event:
        if self._done:
            raise StopAsyncIteration
        link = self._link
        client = link.client
        try:
            if not self._started:
                self._started = True
                if self._session.connected is not None:
                    link.events.clear()
                elif link.error is not None:
                    raise link.error
                link.command(client.query, self._messages, model=self._model)
            while True:
                event = await link.next_event()
                if type(event) is Connected:
                    self._session.connected = event
                    continue
                if check_event(event, partial_text=client.partial_text, partial_reasoning=client.partial_reasoning):
                    self._finish()
                return event
        except ResponseError:
            self._finish()
            if link.error is None and client.state is SessionState.READY:
                raise
            link.close()
            raise
        except LocalProtocolError:
            self._finish()
            raise
        except BaseException:
            self._finish()
            link.close()
            raise

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            self._session._busy = False

    async def aclose(self) -> None:
        """Stop reading: if the answer was still streaming, the session closes."""
        if self._done:
            return
        self._finish()
        if self._started:
            await self._link.aclose()

    async def __aenter__(self) -> _Query:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def connect(*, impersonate: str = DEFAULT_IMPERSONATE, **options: Unpack[SessionOptions]) -> Session:
    """A :class:`Session` (not open yet: use ``async with``).  Options as for :func:`ask`."""
    opts = parse_options(options, with_model=False)
    _check_config(opts.config)
    return Session(opts, _check_impersonate(impersonate))
