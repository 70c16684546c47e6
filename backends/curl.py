"""A Chrome-impersonating backend: a message-level session carried by curl_cffi.

It carries :class:`~plabs_proto.labs.session.LabsSession` (``service="labs"``, the default) or
:class:`~plabs_proto.perplexity.session.PerplexitySession` (``service="perplexity"``: the ask's
event stream is read with curl_cffi's streaming response, each piece handed to the session as
it arrives).

Every polling request goes through ``curl_cffi``'s ``AsyncConnection(impersonate=...)``
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
import os
import random
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from curl_cffi import AsyncSession as CurlHTTP
from curl_cffi import CurlError
from curl_cffi.const import CurlECode, CurlHttpVersion, CurlOpt, CurlWsFlag
from curl_cffi.requests import AsyncWebSocket
from curl_cffi.requests.websockets import WebSocketClosed

from plabs_proto.config import ClientConfig
from plabs_proto.errors import LabsError, LocalProtocolError, ProxyError, TLSError
from plabs_proto.events import Event, HTTPRequest, WebSocketClose, WebSocketConnect, WebSocketSend
from plabs_proto.labs.session import LabsSession
from plabs_proto.perplexity.session import PerplexitySession, signed_in_cookie
from plabs_proto.state import SessionState
from plabs_proto.wire.client import Tracer

from ._async_api import AsyncAnswer, AsyncConnection, DriverBase
from ._config import AskOptions, Messages, SessionOptions, make_rng, parse_options, to_messages
from ._errors import stream_error

if TYPE_CHECKING:  # typing.Unpack is Python 3.11+; only type checkers read it here
    from typing import Unpack

__all__ = ["DEFAULT_IMPERSONATE", "Connection", "Session", "ask", "connect"]

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
_Close = object()  # the writer's "close the WebSocket with a close frame" item
_Drop = object()  # the writer's "drop the WebSocket" item


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


#: The sessions curl carries (the core of a curl connection).
Carried = LabsSession | PerplexitySession


def _new_session(config: ClientConfig, rng: random.Random) -> Any:
    """The message-level session of ``config.service``."""
    if config.service == "perplexity":
        return PerplexitySession(config.session_config(), rng=rng)
    return LabsSession(config.session_config(), rng=rng)


class _CurlDriver(DriverBase[Any]):
    """One session over one curl session: a pump task runs the inputs and timers.

    It offers what the shared :class:`~._async_api.AsyncAnswer` and
    :class:`~._async_api.AsyncQuery` need of a link, with the session as ``client``.
    """

    client: Carried

    def __init__(self, client: Carried, config: ClientConfig, impersonate: str) -> None:
        self._loop = asyncio.get_running_loop()
        self.client = client
        self.now = self._loop.time
        self.error: BaseException | None = None
        self.finished = False
        self._proxy = config.proxy if isinstance(config.proxy, str) else None
        self._extra = list(config.headers)
        # A signed-in session's cookies go in with CURLOPT_COOKIE, which curl sends in one Cookie
        # header with those of its jar (a Cookie header of our own would be a second one).
        cookie = signed_in_cookie(config) if config.service == "perplexity" else None
        # timeout=None: curl waits as long as the session does (its deadlines are the session's)
        self._http: CurlHTTP[Any] = CurlHTTP(
            impersonate=cast(Any, impersonate),
            proxy=self._proxy,
            verify=cast(Any, True if config.cafile is None else os.fspath(config.cafile)),  # or a CA file path
            timeout=cast(Any, None),
            # never follow a redirect silently: the session reads it as a RedirectError naming the Location
            allow_redirects=False,
            # HTTP/2 over TLS only, as Chrome: over plain http:// curl would otherwise offer an h2c
            # upgrade, which no browser sends (and an Engine.IO server refuses on a polling GET)
            http_version=CurlHttpVersion.V2TLS,
            curl_options={CurlOpt.COOKIE: cookie} if cookie else None,
        )
        self._http_closed: asyncio.Task[None] | None = None
        self._inbox: asyncio.Queue[tuple[Callable[..., None], tuple[Any, ...]]] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._outgoing: dict[int, asyncio.Queue[object]] = {}
        self._sockets: dict[int, AsyncWebSocket] = {}
        self._wakeup = asyncio.Event()
        self._pump = self._loop.create_task(self._run())

    # -- what the consumer calls --------------------------------------------------------------

    async def next_event(self) -> Event:
        """The next event; the kept error once the events before it are taken."""
        client = self.client
        while True:
            event = client.next_event()
            if event is not None:
                return event
            self._check_open()
            self._wakeup.clear()
            await self._wakeup.wait()

    def _after_command(self) -> None:
        self._step()

    def _shutdown(self) -> None:
        """Close every request and WebSocket at once (safe from ``__del__``)."""
        if self.finished:
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
            self._http_closed = task
        self._wakeup.set()

    close = _shutdown

    async def aclose(self) -> None:
        """Say goodbye if the session is healthy (bounded in time), then close everything."""
        try:
            if not self.finished and self.error is None and self.client.state not in _END_STATES:
                self.command(self.client.close)
                if self._tasks:
                    await asyncio.wait(set(self._tasks), timeout=_CLOSE_WAIT)
        finally:
            self._shutdown()
        if self._http_closed is not None:
            await asyncio.wait([self._http_closed])

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
        except Exception as exc:  # LabsError, or a core bug: the consumer sees it either way
            self._fail(exc)
            self._wakeup.set()
            return
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
                # A close frame when the session said goodbye over it (code), else the connection dropped.
                self._outgoing[step.ws_id].put_nowait(_Close if step.code is not None else _Drop)
        self._wakeup.set()  # the consumer looks for events in the session

    def _start(self, work: Any) -> None:
        task = self._loop.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._carried)

    def _carried(self, task: asyncio.Task[None]) -> None:
        """A carrier's end.  A carrier reports its own failures (curl's errors) to the session; one
        that died of anything else (a bug here or in curl_cffi) ends the answer with that error at
        once, instead of leaving the consumer waiting for the session's deadline."""
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._fail(exc)
            self._wakeup.set()

    def _report(self, method: Callable[..., None], *args: Any) -> None:
        self._inbox.put_nowait((method, args))

    # -- the carriers -------------------------------------------------------------------------

    async def _request(self, request: HTTPRequest) -> None:
        if request.incremental:
            await self._stream(request)
            return
        try:
            response = await self._http.request(
                cast(Any, request.method),
                request.url,
                data=request.body or None,
                **self._headers(request),
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

    def _headers(self, request: HTTPRequest) -> dict[str, Any]:
        """The request's headers for curl, but a session's ``Cookie`` (a signed-in session's): curl
        sends that one itself (``CURLOPT_COOKIE``, set once) with the cookies of its jar."""
        return {"headers": [item for item in [*request.headers, *self._extra] if item[0].lower() != "cookie"]}

    async def _stream(self, request: HTTPRequest) -> None:
        """A request whose response the session takes in pieces (the ask's event stream)."""
        client = cast(PerplexitySession, self.client)
        request_id = request.request_id
        try:
            response = await self._http.request(
                cast(Any, request.method), request.url, data=request.body or None, stream=True,
                **self._headers(request),
            )
        except CurlError as exc:
            self._report(self._failed, request_id, self._error(exc, request.url))
            return
        try:
            if self._proxy and response.status_code == 407:
                self._report(self._failed, request_id, self._proxy_refused())
                return
            headers = [(name, value or "") for name, value in response.headers.multi_items()
                       if name.lower() != "content-encoding"]  # curl inflated the body already
            self._report(client.receive_http_head, request_id, response.status_code, headers)
            async for piece in response.aiter_content():
                self._report(client.receive_http_body, request_id, piece)
            self._report(client.receive_http_end, request_id)
        except CurlError as exc:
            self._report(self._failed, request_id, self._error(exc, request.url))
        finally:
            with contextlib.suppress(Exception):
                await response.aclose()

    async def _websocket(self, connect: WebSocketConnect) -> None:
        ws_id = connect.ws_id
        try:
            ws = await self._http.ws_connect(connect.url, headers=[*connect.headers, *self._extra])
        except CurlError as exc:
            refused = _REFUSED_UPGRADE.search(str(exc))
            if refused is not None:
                # The server answered with HTTP, not 101: the session names the refusal by its status
                # (a redirect, a rate limit, ...). curl_cffi keeps that response's headers and body
                # to itself, so a Location or Retry-After cannot be told (those fields are None).
                self._report(self.client.receive_websocket_refused, ws_id, int(refused.group(1)), (), b"")
            else:
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
            if item is _Drop:
                with contextlib.suppress(Exception):
                    ws.terminate()
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
        error: LabsError
        if code in _TLS_CODES:
            error = TLSError(f"expected a TLS connection to {urlsplit(url).hostname} that verifies, got: {exc}")
        elif self._proxy and code in _PROXY_CODES:
            error = ProxyError(f"expected the proxy at {host}:{port} to carry the connection, it failed (curl error {code})")
        else:
            return stream_error(exc, action="reach", host=host, port=port, proxied=self._proxy is not None)
        error.__cause__ = exc
        return error


_closing: set[asyncio.Task[None]] = set()
#: libcurl's words for a WebSocket handshake answered with another status than 101.
_REFUSED_UPGRADE = re.compile(r"Refused WebSocket upgrade: (\d{3})\b")


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
    client = _new_session(opts.config, rng)
    return AsyncAnswer(lambda: _CurlDriver(client, opts.config, target), messages, opts.model, opts.tracer, seed)


class Connection(AsyncConnection[Any]):
    """One Labs connection through curl for several queries, one after another (``async with``).

    Between queries the pump task keeps answering heartbeats.  Leaving a query
    before ``AnswerFinished`` closes the session; a server-reported failure
    (:class:`~plabs_proto.errors.ResponseError`) leaves it usable.
    """

    _link: _CurlDriver | None

    def __init__(
        self,
        config: ClientConfig,
        *,
        tracer: Tracer | None = None,
        seed: int | None = None,
        impersonate: str = DEFAULT_IMPERSONATE,
    ) -> None:
        _check_config(config)
        self._config = config
        self._impersonate = _check_impersonate(impersonate)
        super().__init__(config, tracer=tracer, seed=seed)

    def _new_core(self, config: ClientConfig, rng: random.Random, tracer: Tracer | None) -> Carried:
        return cast(Carried, _new_session(config, rng))

    def _new_driver(self) -> _CurlDriver:
        return _CurlDriver(self._client, self._config, self._impersonate)


def connect(*, impersonate: str = DEFAULT_IMPERSONATE, **options: Unpack[SessionOptions]) -> Connection:
    """A :class:`Connection` (not open yet: use ``async with``).  Options as for :func:`ask`."""
    opts = parse_options(options, with_model=False)
    return Connection(opts.config, tracer=opts.tracer, seed=opts.seed, impersonate=impersonate)


#: The name of :class:`Connection` before 0.2 (see the README's changelog).
Session = Connection
