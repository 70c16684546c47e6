"""An OpenAI-compatible gateway to Perplexity Labs: an ASGI application (Starlette).

    plabs serve [--host 127.0.0.1] [--port 8000] [--server URL | --emulator] [--api-key KEY] ...

or, under any ASGI server, the factory :func:`create_app` (configured by its
arguments or, with none, by ``PLABS_*`` environment variables, see
:meth:`GatewayConfig.from_env`)::

    uvicorn --factory plabs_proto.backends.programs.gateway:create_app --workers 4

Routes:

* ``POST /v1/chat/completions``: OpenAI's chat completion, streamed (Server-Sent
  Events, ``chat.completion.chunk`` objects then ``data: [DONE]``) or not
  (one ``chat.completion``).  Answer text is ``content``, reasoning is
  ``reasoning_content`` (the convention of OpenAI-compatible servers for
  reasoning models), citations are a top-level ``citations`` list (as
  Perplexity's own API returns them) on the final chunk and in the response.
* ``GET /v1/models``: the Labs models in OpenAI's list format.
* ``GET /health``: ``{"status": "ok", ...}``.

It is built on the public API of the Labs backends only (``connect()`` and
``Session.query()``): under an asyncio server it drives
:mod:`plabs_proto.backends.asyncio`, under trio (hypercorn's trio worker)
:mod:`plabs_proto.backends.trio`.

**Revisions.** ``content`` deltas are the query's ``TextDelta`` events, so
what a client joins from them is exactly the server's final answer, with one
exception it is told about: when the server rewrites answer text already sent
(an ``AnswerRevised`` whose text does not begin with what was sent), the text
sent cannot be taken back; the gateway stops sending text, reads the answer to
its end and ends the stream with an error event (code ``answer_rewritten``,
the final answer in the message's ``final_text``), which the ``openai``
package raises as ``APIError``.  A revision that only extends what was sent
(the usual case: ``r1-1776`` answering without a ``<think>`` block, where the
reasoning is taken back and the answer follows) is followed silently.  Streamed
``reasoning_content`` is what the server streamed as reasoning: when the
server later takes reasoning back (that same ``r1-1776`` case), the final
chunk says so with ``reasoning_revised: true`` and the final reasoning in
``reasoning_content_final``; the non-streamed response always has the final
reasoning.

**Errors** are OpenAI's JSON (``{"error": {"message", "type", "code"}}``): 400
for a bad request, 401 for a wrong or missing key (when an api key is set), 429
when ``max_sessions`` requests are running or when Labs itself rate-limits
(``code`` is ``labs_rate_limited``; its ``Retry-After`` is passed on, which the
``openai`` package honours when it retries), 502 when Labs fails (its text kept:
``code`` is ``labs_error``), 504 on a Labs timeout.  A streamed request reports
errors that come before its first chunk with these statuses too; an error after
the first chunk ends the stream with ``data: {"error": {...}}``.

**Sessions.** Every request gets a Labs session of its own (one query at a
time), taken from the warm pool when ``warm > 0`` (connected in advance, so a
request skips the handshake) or opened for it.  A session goes back to the
pool only after a clean finish; any error, a client that leaves, or a shutdown
closes it at once.  Idle pooled sessions answer heartbeats in the background:
under asyncio by themselves, under trio from a task of the pool per session,
which holds the session's ``keep_alive()`` until the session is closed.  A
session opened for a request sends its query the moment the server acks the
connection (``open(wait=False)``), not a turn of the event loop later.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import os
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, fields
from types import ModuleType
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from plabs_proto.errors import LabsError, LabsTimeout, LocalProtocolError, RateLimitedError, ResponseError
from plabs_proto.events import (
    AnswerFinished,
    AnswerRevised,
    Citations,
    Event,
    ReasoningDelta,
    TextDelta,
)
from plabs_proto.labs.answer import DEFAULT_MODEL, MODELS, normalize_messages
from plabs_proto.state import SessionState
from plabs_proto.wire.client import ClientState

__all__ = ["BACKENDS", "DEFAULT_SERVER", "GatewayConfig", "GatewayError", "create_app"]

logger = logging.getLogger("plabs_proto.gateway")

DEFAULT_SERVER = "https://www.perplexity.ai"
#: Labs backends the gateway can drive; ``auto`` follows the ASGI server's event loop.
BACKENDS = ("auto", "asyncio", "trio", "curl")
#: Largest request body read (bytes); a larger one is refused with 413.
MAX_BODY = 8 * 1024 * 1024
_POOL_CHECK = 1.0  # seconds between checks of the warm pool
_POOL_RETRY = 1.0  # seconds before trying again after a warm session failed to connect
_CLOSE_WAIT = 2.0  # seconds a session's polite close may take
# Request fields that would mislead when ignored: refused with a 400.
_REFUSED = ("tools", "functions", "tool_choice", "function_call")
# A session ready for a query: a LabsClient's (asyncio, trio) or a LabsSession's (curl)
_READY = (ClientState.READY, SessionState.READY)


class GatewayError(Exception):
    """The gateway cannot be set up as configured (an unknown backend, a bad option)."""


@dataclass(frozen=True)
class GatewayConfig:
    """How the gateway reaches Labs and whom it serves.

    ``backend``: ``auto`` (the ASGI server's event loop decides: asyncio or
    trio), ``asyncio`` or ``trio`` (then the server must run that loop);
    ``curl`` (Chrome's TLS and HTTP/2 through curl_cffi; asyncio only).
    ``timeout`` bounds each query (seconds, connecting included when no warm
    session is ready).  ``max_sessions`` limits the requests served at once (0:
    no limit); ``warm`` keeps that many connected sessions ready.  ``api_key``,
    when set, is required as ``Authorization: Bearer KEY``; it is never shown
    (not in ``repr``, not in logs).
    """

    server: str = DEFAULT_SERVER
    backend: str = "auto"
    transport: str = "upgrade"
    proxy: str | None = None
    cafile: str | None = None
    api_key: str | None = field(default=None, repr=False)
    max_sessions: int = 0
    warm: int = 0
    timeout: float | None = 300.0
    options: Mapping[str, Any] = field(default_factory=dict)  # more keyword arguments of connect()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> GatewayConfig:
        """The configuration from ``PLABS_SERVER``, ``PLABS_BACKEND``, ``PLABS_TRANSPORT``,
        ``PLABS_PROXY``, ``PLABS_CAFILE``, ``PLABS_API_KEY``, ``PLABS_MAX_SESSIONS``,
        ``PLABS_WARM`` and ``PLABS_TIMEOUT`` (unset: the defaults).  This is what
        ``create_app()`` uses when given nothing, e.g. under ``uvicorn --factory``."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"PLABS_{f.name.upper()}")
            if raw is None or f.name == "options":
                continue
            if f.name in ("max_sessions", "warm"):
                try:
                    values[f.name] = int(raw)
                except ValueError:
                    raise GatewayError(f"expected PLABS_{f.name.upper()} as a whole number, got {raw!r}") from None
            elif f.name == "timeout":
                try:
                    values[f.name] = float(raw)
                except ValueError:
                    raise GatewayError(f"expected PLABS_TIMEOUT as a number of seconds, got {raw!r}") from None
            else:
                values[f.name] = raw
        return cls(**values)

    def connect_options(self) -> dict[str, Any]:
        """The keyword arguments of the backends' ``connect()``."""
        return {
            "server": self.server,
            "proxy": self.proxy,
            "transport": self.transport,
            "cafile": self.cafile,
            "timeout": self.timeout,
            **self.options,
        }


def _backend_module(name: str) -> ModuleType:
    """The backend module for ``asyncio``, ``trio`` or ``curl``; a clear GatewayError otherwise."""
    if name == "curl":
        try:
            from .. import curl as curl_backend
        except ImportError as exc:
            raise GatewayError(
                f"the curl backend needs curl_cffi (pip install 'plabs-proto[impersonate]'): {exc}"
            ) from None
        return curl_backend
    if name == "asyncio":
        from .. import asyncio as asyncio_backend

        return asyncio_backend
    if name == "trio":
        try:
            from .. import trio as trio_backend
        except ImportError as exc:
            raise GatewayError(f"the trio backend needs trio (pip install 'plabs-proto[trio]'): {exc}") from None
        return trio_backend
    raise GatewayError(f"expected the backend to be one of {', '.join(BACKENDS)}, got {name!r}")


def _running_library() -> str:
    """``asyncio`` or ``trio``: the event loop running this code."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return "trio"
    return "asyncio"


def check_config(config: GatewayConfig) -> None:
    """Raise :class:`GatewayError` for a configuration that cannot work (checked at startup)."""
    if config.backend not in BACKENDS:
        raise GatewayError(f"expected the backend to be one of {', '.join(BACKENDS)}, got {config.backend!r}")
    if config.backend != "auto":
        _backend_module(config.backend)
    if config.max_sessions < 0 or config.warm < 0:
        raise GatewayError(
            f"expected max_sessions and warm >= 0, got {config.max_sessions!r} and {config.warm!r}"
        )
    if config.api_key is not None and not config.api_key:
        raise GatewayError("expected a non-empty api key (or none)")
    from .. import asyncio as checker

    try:
        checker.connect(**config.connect_options())  # checks the options; opens nothing
    except LabsError as exc:
        raise GatewayError(str(exc)) from None


# -- OpenAI's shapes ---------------------------------------------------------------------------------


class _Refusal(Exception):
    """An error answered in OpenAI's JSON shape."""

    def __init__(self, status: int, message: str, type_: str, code: str | None, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, **self.extra}}

    def headers(self) -> dict[str, str]:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else {}
        retry_after = self.extra.get("retry_after")
        if retry_after is not None:  # Labs said when to come back: OpenAI clients wait that long
            headers["Retry-After"] = str(math.ceil(retry_after))
        return headers

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers() or None)


def _bad_request(message: str, code: str | None = None, param: str | None = None) -> _Refusal:
    return _Refusal(400, message, "invalid_request_error", code, param=param)


def _labs_refusal(exc: BaseException) -> _Refusal:
    """The OpenAI error for a failure of the Labs side."""
    if isinstance(exc, LabsTimeout):
        return _Refusal(504, f"Perplexity Labs timed out: {exc}", "api_error", "labs_timeout", deadline=exc.deadline)
    if isinstance(exc, RateLimitedError):
        return _Refusal(429, f"Perplexity Labs is rate limiting this gateway: {exc}", "rate_limit_error",
                        "labs_rate_limited", retry_after=exc.retry_after)
    if isinstance(exc, ResponseError):
        return _Refusal(502, f"Perplexity Labs reported a failure: {exc.server_text or exc}", "api_error",
                        "labs_error", labs_text=exc.server_text)
    if isinstance(exc, LabsError):
        return _Refusal(502, f"the Perplexity Labs session failed: {exc}", "api_error", "labs_unavailable")
    return _Refusal(500, f"internal error of the gateway: {type(exc).__name__}", "api_error", "internal_error")


@dataclass
class _ChatRequest:
    messages: list[dict[str, str]]
    model: str
    stream: bool
    include_usage: bool


def _content_parts(index: int, content: Any) -> Any:
    """Refuse content parts Labs cannot take (images, audio...): Labs takes text only."""
    if isinstance(content, list):
        for part_index, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") != "text":
                raise _bad_request(
                    f"messages[{index}].content[{part_index}]: expected a text part, got a part of type "
                    f"{str(part.get('type'))[:40]!r}: Perplexity Labs takes text only",
                    "unsupported_content",
                    f"messages[{index}].content",
                )
    return content


def parse_chat_request(body: Any) -> _ChatRequest:
    """Check an OpenAI chat completion request; raise :class:`_Refusal` (400) for a bad one."""
    if not isinstance(body, dict):
        raise _bad_request(f"expected a JSON object as the request body, got {type(body).__name__}")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad_request("expected 'messages' as a non-empty list of messages", param="messages")
    converted: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _bad_request(f"messages[{index}]: expected an object, got {type(message).__name__}",
                               param="messages")
        role = message.get("role")
        if role == "developer":  # OpenAI's newer name for the system role
            role = "system"
        converted.append({"role": role, "content": _content_parts(index, message.get("content"))})
    try:
        normalized = normalize_messages(converted)
    except LocalProtocolError as exc:
        raise _bad_request(str(exc), param="messages") from None
    model = body.get("model", DEFAULT_MODEL)
    if model is None or model == "":
        model = DEFAULT_MODEL
    if not isinstance(model, str):
        raise _bad_request(f"expected 'model' as a string, got {type(model).__name__}", param="model")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _bad_request(f"expected 'stream' as true or false, got {json.dumps(stream)[:40]}", param="stream")
    n = body.get("n", 1)
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise _bad_request(f"expected 'n' as a whole number >= 1, got {json.dumps(n)[:40]}", param="n")
    if n is not None and n > 1:
        raise _bad_request(f"Perplexity Labs gives one answer per request: 'n' must be 1, got {n}",
                           "unsupported_parameter", "n")
    for name in _REFUSED:
        if body.get(name) not in (None, [], "none"):
            raise _bad_request(
                f"Perplexity Labs cannot call tools: '{name}' is not supported", "unsupported_parameter", name
            )
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    return _ChatRequest(normalized, model, stream, include_usage)


def _usage(finished: AnswerFinished) -> dict[str, int] | None:
    """The counts Labs reported: ``tokens_streamed`` as the completion tokens (nothing invented)."""
    if finished.tokens_streamed is None:
        return None
    return {"completion_tokens": finished.tokens_streamed}


# -- sessions: the warm pool and the limit ------------------------------------------------------------


class _Sessions:
    """Where requests get their Labs session: the warm pool, else a new one; and the limit on requests."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.options = config.connect_options()
        self.active = 0  # requests being served
        self.idle: deque[Any] = deque()  # connected sessions waiting for a request
        self.opening = 0  # warm sessions being connected
        self.lent = 0  # warm sessions serving a request
        self.held: dict[Any, anyio.Event] = {}  # trio: pooled sessions kept alive by a task, and what ends it
        self._group: anyio.abc.TaskGroup | None = None  # keep_warm's, where those tasks run
        self.library = ""
        self.module: ModuleType | None = None
        self.stopping = False  # shutdown began: streams end, the pool closes
        self.running: set[_Completion] = set()  # the responses being sent, ended at once by stop()
        self._wake: anyio.Event | None = None

    def start(self) -> None:
        self.library = _running_library()
        name = self.config.backend
        if name == "auto":
            name = self.library
        elif (needs := "asyncio" if name == "curl" else name) != self.library:
            raise GatewayError(
                f"the {name} backend needs an ASGI server running {needs}, but it runs {self.library}"
            )
        self.module = _backend_module(name)
        self._wake = anyio.Event()

    def ensure_started(self) -> None:
        """Start on first use when the ASGI server ran no lifespan (no warm pool then)."""
        if self.module is None:
            self.start()

    def stop(self) -> None:
        """Begin the shutdown (safe to call more than once): the responses being sent end at once."""
        self.stopping = True
        for completion in list(self.running):
            completion.interrupt("shutdown")
        self._poke()

    # -- the limit

    def try_enter(self) -> bool:
        limit = self.config.max_sessions
        if limit and self.active >= limit:
            return False
        self.active += 1
        return True

    def leave(self) -> None:
        self.active -= 1

    # -- sessions

    @staticmethod
    def _healthy(session: Any) -> bool:
        return session.client.state in _READY

    async def take(self) -> Any | None:
        """A warm session, or None (idle sessions found dead or too old are closed).

        A session taken is lent, not gone: it still counts toward ``warm``, so taking
        one opens no replacement (whose handshake would compete with the request for
        the CPU); it comes back with :meth:`release`.
        """
        while self.idle:
            session = self.idle.popleft()
            if self._healthy(session):
                self.lent += 1
                return session
            await self.aclose(session)
            self._poke()
        return None

    async def open(self, *, wait: bool = True) -> Any:
        """A new session, connected (``wait``) or connecting, so that its first query goes out as
        the connect ack arrives (raises the backend's errors; closes what it opened on any)."""
        assert self.module is not None
        session = self.module.connect(**self.options)
        try:
            await session.open(wait=wait)
        except BaseException:
            await self.aclose(session)
            raise
        return session

    def _wanted(self) -> int:
        """How many more sessions the pool wants."""
        return self.config.warm - (len(self.idle) + self.opening + self.lent)

    async def release(self, session: Any, *, lent: bool, clean: bool) -> None:
        """A request is done with ``session``: back into the pool after a clean finish when the
        pool wants it, else closed (the pool then opens a replacement)."""
        if lent:
            self.lent -= 1
        if clean and not self.stopping and self._wanted() > 0 and self._healthy(session):
            self._keep_alive(session)
            self.idle.append(session)
        else:
            await self.aclose(session)
            self._poke()

    async def aclose(self, session: Any) -> None:
        """Close a session politely, bounded in time and shielded from cancellation (a session
        whose query failed or was cancelled has closed its sockets already)."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_WAIT), contextlib.suppress(Exception):
            await session.aclose()
        done = self.held.pop(session, None)
        if done is not None:
            done.set()

    def _keep_alive(self, session: Any) -> None:
        """Under trio, have a task of the pool hold ``session.keep_alive()`` (its pings answered
        between queries, in whichever task the queries run) until the session is closed."""
        if self.library == "trio" and session not in self.held and self._group is not None:
            done = self.held[session] = anyio.Event()
            self._group.start_soon(self._hold, session, done)

    async def _hold(self, session: Any, done: anyio.Event) -> None:
        try:
            async with session.keep_alive():
                await done.wait()
        finally:
            self.held.pop(session, None)

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def keep_warm(self) -> None:
        """Keep ``warm`` sessions connected until shutdown (run in the app's task group)."""
        async with anyio.create_task_group() as group:
            self._group = group
            while not self.stopping:
                for session in list(self.idle):
                    if not self._healthy(session):
                        self.idle.remove(session)
                        group.start_soon(self.aclose, session)
                while self._wanted() > 0:
                    self.opening += 1
                    group.start_soon(self._warm_one)
                self._wake = anyio.Event()
                with anyio.move_on_after(_POOL_CHECK):
                    await self._wake.wait()
            self._group = None
            group.cancel_scope.cancel()

    async def _warm_one(self) -> None:
        try:
            session = await self.open()
        except LabsError as exc:
            logger.warning("a warm Labs session failed to connect: %s", exc)
            await anyio.sleep(_POOL_RETRY)
            return
        finally:
            self.opening -= 1
        if self.stopping:
            await self.aclose(session)
        else:
            self._keep_alive(session)
            self.idle.append(session)

    async def shutdown(self) -> None:
        self.stop()
        idle = list(self.idle)
        self.idle.clear()
        for session in idle:
            await self.aclose(session)


# -- the chat completion response (one ASGI callable for both modes) ----------------------------------


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


class _Completion:
    """Runs one chat completion and sends its response; the Labs session lives and dies with it.

    A listener task watches for the client leaving (``http.disconnect``), and the
    gateway's shutdown calls :meth:`interrupt`; either cancels the work at once,
    which closes the Labs session (so the Labs server sees the client leave).
    (One task per request, not one per thing awaited: every task and task group
    made before the Labs session's first bytes go out delays them.)  Streamed: the
    response starts with the first chunk (errors before it get their HTTP
    status), then one chunk per delta.
    """

    def __init__(self, sessions: _Sessions, request: _ChatRequest) -> None:
        self.sessions = sessions
        self.request = request
        self.id = "chatcmpl-" + secrets.token_hex(12)
        self.created = int(time.time())
        self.started = False  # response headers sent
        self.done = False  # the last body part sent
        self.left = False  # the request no longer counts toward max_sessions
        self.session: Any = None
        self.lent = False  # the session came from the warm pool
        self.clean = False
        self.interrupted = ""  # why the work was cancelled: "disconnect" or "shutdown"
        self._cancel: anyio.CancelScope | None = None  # the work's, while it runs
        model = json.dumps(request.model, ensure_ascii=False)
        head = f'data: {{"id":"{self.id}","object":"chat.completion.chunk","created":{self.created},"model":{model},'
        self._chunk_head = (head + '"choices":[{"index":0,"delta":{').encode()
        self._chunk_tail = b'},"finish_reason":null}]}\n\n'

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def tracking(message: Any) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self.done = True
                self._leave()  # the client has its answer: the slot is free for its next request

        try:
            async with anyio.create_task_group() as group:
                self._cancel = group.cancel_scope
                self.sessions.running.add(self)
                if self.sessions.stopping:
                    self.interrupt("shutdown")
                group.start_soon(self._watch, receive)
                try:
                    await self._respond(tracking)
                finally:
                    group.cancel_scope.cancel()
            if self.interrupted == "shutdown" and not self.done:
                refusal = _Refusal(503, "the gateway is shutting down", "api_error", "shutting_down")
                with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_WAIT), contextlib.suppress(Exception):
                    await self._fail(refusal, tracking)
        finally:
            self.sessions.running.discard(self)
            self._cancel = None
            session, self.session = self.session, None
            if session is not None:
                await self.sessions.release(session, lent=self.lent, clean=self.clean)
            self._leave()

    def interrupt(self, why: str) -> None:
        """Cancel the work at once (``why``: "disconnect" or "shutdown"; the first reason stays)."""
        if not self.interrupted:
            self.interrupted = why
        if self._cancel is not None:
            self._cancel.cancel()

    def _leave(self) -> None:
        if not self.left:
            self.left = True
            self.sessions.leave()

    async def _watch(self, receive: Receive) -> None:
        """Wait for the client to leave (the request body is read already), then interrupt."""
        while (await receive())["type"] != "http.disconnect":
            pass
        self.interrupt("disconnect")

    async def _events(self) -> AsyncIterator[Event]:
        session = await self.sessions.take()
        if session is None:
            session = await self.sessions.open(wait=False)
        else:
            self.lent = True
        self.session = session
        async with session.query(self.request.messages, model=self.request.model) as query:
            async for event in query:
                yield event

    async def _respond(self, send: Send) -> None:
        events = self._events()
        try:
            if self.request.stream:
                await self._stream(events, send)
            else:
                await self._whole(events, send)
        except LabsError as exc:
            await self._fail(_labs_refusal(exc), send)
        finally:
            with anyio.CancelScope(shield=True):
                await events.aclose()  # type: ignore[attr-defined]

    async def _fail(self, refusal: _Refusal, send: Send) -> None:
        if refusal.status in (500, 502, 504):
            logger.warning("chat completion failed (%d): %s", refusal.status, refusal.message)
        if self.started:
            await send({"type": "http.response.body", "body": _sse(refusal.body()), "more_body": False})
        else:
            body = json.dumps(refusal.body(), ensure_ascii=False).encode()
            await send({
                "type": "http.response.start",
                "status": refusal.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *((k.lower().encode(), v.encode()) for k, v in refusal.headers().items())],
            })
            await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _whole(self, events: AsyncIterator[Event], send: Send) -> None:
        finished: AnswerFinished | None = None
        async for event in events:
            if type(event) is AnswerFinished:
                assert isinstance(event, AnswerFinished)
                finished = event
        assert finished is not None
        self.clean = True
        message: dict[str, Any] = {"role": "assistant", "content": finished.text}
        if finished.reasoning:
            message["reasoning_content"] = finished.reasoning
        body: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": finished.model or self.request.model,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "citations": list(finished.citations),
        }
        usage = _usage(finished)
        if usage is not None:
            body["usage"] = usage
        data = json.dumps(body, ensure_ascii=False).encode()
        await send({
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
        })
        await send({"type": "http.response.body", "body": data, "more_body": False})

    async def _chunk(self, send: Send, delta: bytes) -> None:
        body = self._chunk_head + delta + self._chunk_tail
        if not self.started:
            self.started = True
            await send({
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                    (b"x-accel-buffering", b"no"),
                ],
            })
            body = self._chunk_head + b'"role":"assistant",' + delta + self._chunk_tail
        await send({"type": "http.response.body", "body": body, "more_body": True})

    async def _stream(self, events: AsyncIterator[Event], send: Send) -> None:
        sent: list[str] = []  # the answer text sent
        reasoning: list[str] = []  # the reasoning sent
        following = True  # False once the server rewrote text already sent
        citations: tuple[Any, ...] = ()
        finished: AnswerFinished | None = None
        dumps = json.dumps
        async for event in events:
            kind = type(event)
            if kind is TextDelta:
                text = event.text  # type: ignore[attr-defined]
                if following and text:
                    sent.append(text)
                    await self._chunk(send, b'"content":' + dumps(text, ensure_ascii=False).encode())
            elif kind is ReasoningDelta:
                text = event.text  # type: ignore[attr-defined]
                if text:
                    reasoning.append(text)
                    await self._chunk(send, b'"reasoning_content":' + dumps(text, ensure_ascii=False).encode())
            elif kind is AnswerRevised:
                assert isinstance(event, AnswerRevised)
                following = await self._catch_up(send, sent, event.text)
            elif kind is Citations:
                assert isinstance(event, Citations)
                citations = event.citations
            elif kind is AnswerFinished:
                assert isinstance(event, AnswerFinished)
                finished = event
        assert finished is not None
        if not await self._catch_up(send, sent, finished.text):
            so_far = "".join(sent)
            raise_after = _Refusal(
                502,
                f"Perplexity Labs rewrote the answer after {len(so_far)} characters of it were streamed; "
                "the text streamed is not the final answer, which is in this error's final_text",
                "api_error",
                "answer_rewritten",
                final_text=finished.text,
            )
            await self._fail(raise_after, send)
            return
        self.clean = True
        final: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": finished.model or self.request.model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "citations": list(finished.citations or citations),
        }
        if "".join(reasoning) != finished.reasoning:
            final["reasoning_revised"] = True
            final["reasoning_content_final"] = finished.reasoning
        if self.request.include_usage:
            final["usage"] = _usage(finished)
        if not self.started:  # an empty answer: the stream still has its role and final chunk
            await self._chunk(send, b'"content":""')
        await send({"type": "http.response.body", "body": _sse(final) + b"data: [DONE]\n\n", "more_body": False})

    async def _catch_up(self, send: Send, sent: list[str], text: str) -> bool:
        """Follow a revision or the final text: send what extends the text sent; False on a rewrite."""
        so_far = "".join(sent)
        sent[:] = [so_far] if so_far else []
        if not text.startswith(so_far):
            return False
        rest = text[len(so_far):]
        if rest:
            sent.append(rest)
            await self._chunk(send, b'"content":' + json.dumps(rest, ensure_ascii=False).encode())
        return True


# -- the application ---------------------------------------------------------------------------------

_CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")


class _ClientLeft(Exception):
    """The client left before its request was read."""


def _route_path(scope: Scope) -> str:
    """The request's path below the app's root path (what Starlette's router matches)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root):len(root) + 1] == "/":
        return path[len(root):]
    return path


class _Endpoint:
    """A bare ASGI app as a route's endpoint (Starlette takes a plain function for a request handler)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


class _App(Starlette):
    """Starlette, with ``POST`` to the chat completion paths handed straight to ``chat``.

    Every chat completion pays for whatever runs before its Labs session opens
    and for every layer each streamed chunk is sent through: Starlette's
    middleware stack, router and request/response wrappers cost about 70 µs a
    request (measured on a loaded machine) and two ``send`` wrappers a chunk.
    The chat handler needs none of them (it answers its own errors, in OpenAI's
    shape); the routes stay for everything else (and a 405 for other methods).
    """

    def __init__(self, chat: ASGIApp, **settings: Any) -> None:
        super().__init__(**settings)
        self.chat = chat

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and _route_path(scope) in _CHAT_PATHS:
            await self.chat(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def create_app(config: GatewayConfig | None = None, **settings: Any) -> Starlette:
    """The gateway's ASGI application.

    ``create_app()`` reads ``PLABS_*`` environment variables
    (:meth:`GatewayConfig.from_env`); ``create_app(config)`` or
    ``create_app(server=..., api_key=...)`` take the settings given.  Raises
    :class:`GatewayError` for a configuration that cannot work.
    """
    if config is None:
        config = GatewayConfig(**settings) if settings else GatewayConfig.from_env()
    elif settings:
        raise GatewayError("give either a GatewayConfig or keyword settings, not both")
    check_config(config)
    sessions = _Sessions(config)
    key = config.api_key.encode() if config.api_key is not None else None

    def authorize(headers: Headers) -> None:
        if key is None:
            return
        header = headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        ok = hmac.compare_digest(given.strip().encode(), key) and scheme.lower() == "bearer"
        if not ok:
            what = "no API key was given" if not header else "the API key is not valid"
            raise _Refusal(401, f"{what}: send 'Authorization: Bearer <key>' with the gateway's key",
                           "invalid_request_error", "invalid_api_key")

    async def read_json(receive: Receive) -> Any:
        """The request body as JSON (raises _ClientLeft when the client leaves before sending it all)."""
        size = 0
        parts: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise _ClientLeft
            part = message.get("body", b"")
            size += len(part)
            if size > MAX_BODY:
                raise _Refusal(413, f"expected a request body of at most {MAX_BODY} bytes, got more",
                               "invalid_request_error", "request_too_large")
            parts.append(part)
            if not message.get("more_body", False):
                break
        try:
            return json.loads(b"".join(parts))
        except ValueError as exc:
            raise _bad_request(f"expected a JSON request body, got invalid JSON ({exc})") from None

    async def chat_completions(scope: Scope, receive: Receive, send: Send) -> None:
        """POST /v1/chat/completions, as a bare ASGI app (see :class:`_App`)."""
        try:
            authorize(Headers(scope=scope))
            chat = parse_chat_request(await read_json(receive))
            sessions.ensure_started()
            if sessions.stopping:
                raise _Refusal(503, "the gateway is shutting down", "api_error", "shutting_down")
            if not sessions.try_enter():
                raise _Refusal(
                    429,
                    f"all {config.max_sessions} Labs sessions of this gateway are busy; try again shortly",
                    "rate_limit_error",
                    "rate_limit_exceeded",
                )
        except _Refusal as refusal:
            await refusal.response()(scope, receive, send)
            return
        except _ClientLeft:
            return  # nobody to answer
        await _Completion(sessions, chat)(scope, receive, send)

    async def models(request: Request) -> Response:
        try:
            authorize(request.headers)
        except _Refusal as refusal:
            return refusal.response()
        names = [DEFAULT_MODEL, *(name for name in MODELS if name != DEFAULT_MODEL)]
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "perplexity-labs"} for name in names]
        return JSONResponse({"object": "list", "data": data})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "active": sessions.active, "warm": len(sessions.idle)})

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
        return _Refusal(exc.status_code, str(exc.detail), "invalid_request_error", kind).response()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        sessions.start()
        async with anyio.create_task_group() as group:
            if config.warm:
                group.start_soon(sessions.keep_warm)
            try:
                yield
            finally:
                with anyio.CancelScope(shield=True):
                    await sessions.shutdown()
                group.cancel_scope.cancel()

    app = _App(
        chat_completions,
        routes=[
            *(Route(path, _Endpoint(chat_completions), methods=["POST"]) for path in _CHAT_PATHS),
            Route("/v1/models", models, methods=["GET"]),
            Route("/models", models, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
    app.state.gateway = sessions
    return app


def begin_shutdown(app: Starlette) -> None:
    """Tell the gateway the server is stopping: open streams end at once (with an error event).

    Call it from the ASGI server's signal handling (``plabs serve`` does); the
    lifespan shutdown closes the rest.
    """
    sessions: _Sessions = app.state.gateway
    sessions.stop()
