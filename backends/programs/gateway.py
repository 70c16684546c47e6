"""An OpenAI-compatible gateway to Perplexity Labs: an ASGI application (Starlette).

    plabs serve [--host 127.0.0.1] [--port 8000] [--server URL | --emulator] [--api-key KEY] ...

or, under any ASGI server, the factory :func:`create_app` (configured by its
arguments or, with none, by ``PLABS_*`` environment variables, see
:meth:`GatewayConfig.from_env`)::

    uvicorn --factory plabs_proto.backends.programs.gateway:create_app --workers 4

Routes:

* ``POST /v1/chat/completions``: OpenAI's chat completion, streamed (Server-Sent
  Events, ``chat.completion.chunk`` objects then ``data: [DONE]``; with
  ``stream_options.include_usage`` a last chunk with ``choices: []`` and the
  ``usage``) or not (one ``chat.completion``).  Answer text is ``content``,
  reasoning is ``reasoning_content`` (the convention of OpenAI-compatible servers
  for reasoning models), citations are a top-level ``citations`` list (as
  Perplexity's own API returns them) on the final chunk and in the response.
* ``POST /v1/responses``: OpenAI's Responses API (``input`` as text or message
  items, ``instructions``), one ``response`` object or its typed events
  (``response.created`` ... ``response.output_text.delta`` ... ``response.completed``).
* ``GET /v1/models`` and ``GET /v1/models/{id}``: the models served
  (:attr:`GatewayConfig.models`; by default the real model ids of the service in front).  A request without
  a model is a 400; with one not listed, a 404 ``model_not_found`` unless
  ``any_model``.
* ``GET /health``: ``{"status": "ok", "active": N, "warm": N}`` (and ``"threads": N`` on the
  perplexity service).

**Services.** ``GatewayConfig.service`` is ``labs`` (Socket.IO, the default) or
``perplexity`` (the SSE ask endpoint, ``plabs serve --service perplexity``);
both go through the same backends' ``connect(service=...)``.

``usage`` counts the completion as Labs reports it (``tokens_streamed``) and
estimates what it does not report by :func:`estimate_tokens` (one token per 4
bytes of UTF-8): the prompt always, the completion when Labs gives no count.

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

**Errors** are OpenAI's JSON (``{"error": {"message", "type", "param",
"code"}}``), the same from every path.  Every client mistake is a 4xx decided
before any Labs session opens: 400 for a bad request (JSON that is not strict
UTF-8 JSON nested at most :data:`~plabs_proto.jsondepth.MAX_DEPTH` deep:
``invalid_json``; more text than :data:`MAX_PROMPT`: ``context_length_exceeded``;
more messages than :data:`MAX_MESSAGES`: ``array_above_max_length``; a model id
longer than :data:`MAX_MODEL_ID`: ``string_above_max_length``), 401 for a wrong
or missing key (when an api key is set), 404 for an unknown model or path, 405,
413 for a body over :data:`MAX_BODY`, 429 with ``Retry-After: 1`` when
``max_sessions`` requests are running.  A 5xx is for what Labs did: 429 when
Labs rate-limits (``code`` is ``labs_rate_limited``; its ``Retry-After`` is
passed on, which the ``openai`` package honours when it retries), 502 when Labs
fails (its text kept: ``code`` is ``labs_error``), 504 on a Labs timeout.  A
streamed request reports errors that come before its first chunk with these
statuses too; an error after the first chunk ends the stream with ``data:
{"error": {...}}`` (a ``response.failed`` event on the Responses API).

**Sessions.** Every request gets a Labs session of its own (one query at a
time), taken from the warm pool when ``warm > 0`` (connected in advance, so a
request skips the handshake) or opened for it.  A session goes back to the
pool only after a clean finish; any error, a client that leaves, or a shutdown
closes it at once.  Idle pooled sessions answer heartbeats in the background:
under asyncio by themselves, under trio from a task of the pool per session,
which holds the session's ``keep_alive()`` until the session is closed.  A
session opened for a request sends its query the moment the server acks the
connection (``open(wait=False)``), not a turn of the event loop later.

**Threads** (perplexity service).  The Labs protocol takes the whole conversation
with each question; the ask endpoint keeps threads.  A session that answered
cleanly is kept in a :class:`ThreadCache` under the :func:`thread_key` of the
conversation up to its answer (and the caller's ``Authorization`` header), never
back in the warm pool.  A request whose messages but the last (a user message)
have a kept session's key takes it out and asks there: the session sends a
follow-up in its thread (``last_backend_uuid``, ``read_write_token``) with the
last user message alone.  Any other request gets a fresh session and asks
:func:`fold_history` of its messages, a new thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, fields, replace
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
from plabs_proto.jsondepth import MAX_DEPTH, too_deep
from plabs_proto.labs.answer import DEFAULT_MODEL, MODELS, normalize_messages
from plabs_proto.perplexity import request as ask_service
from plabs_proto.state import SessionState
from plabs_proto.wire.client import ClientState

__all__ = [
    "BACKENDS",
    "DEFAULT_SERVER",
    "LABS_MODELS",
    "MAX_MESSAGES",
    "MAX_MODEL_ID",
    "MAX_PROMPT",
    "PERPLEXITY_MODELS",
    "SERVICES",
    "GatewayConfig",
    "GatewayError",
    "ModelCard",
    "ThreadCache",
    "create_app",
    "estimate_tokens",
    "fold_history",
    "thread_key",
]

logger = logging.getLogger("plabs_proto.gateway")
#: One line per request (method, path, status, seconds, model), at INFO; ``plabs serve --quiet`` silences it.
access_logger = logging.getLogger("plabs_proto.gateway.access")

DEFAULT_SERVER = "https://www.perplexity.ai"
#: Labs backends the gateway can drive; ``auto`` follows the ASGI server's event loop.
BACKENDS = ("auto", "asyncio", "trio", "curl")
#: The services the gateway can stand in front of: Labs (Socket.IO) and the SSE ask endpoint.
SERVICES = ("labs", "perplexity")
#: Largest request body read (bytes); a larger one is refused with 413.
MAX_BODY = 8 * 1024 * 1024
#: Most text a request may send, in UTF-8 bytes over all its messages (and instructions).  Labs's
#: Socket.IO server takes messages of up to 1 MB; JSON escapes a byte to at most 6 (``\u0001``),
#: so 128 KiB of any text fits.  More is refused with 400 ``context_length_exceeded``.
MAX_PROMPT = 128 * 1024
#: Most messages (or input items) a request may send: OpenAI's own limit.  More: 400 ``array_above_max_length``.
MAX_MESSAGES = 2048
#: Longest model id taken (characters); longer: 400 ``string_above_max_length``.
MAX_MODEL_ID = 256
_POOL_CHECK = 1.0  # seconds between checks of the warm pool
_POOL_RETRY = 1.0  # seconds before trying again after a warm session failed to connect
_CLOSE_WAIT = 2.0  # seconds a session's polite close may take
_BUSY_RETRY = 1  # the Retry-After (seconds) of a 429 when max_sessions requests are running
# Request fields that would mislead when ignored: refused with a 400.
_REFUSED = ("tools", "functions", "tool_choice", "function_call")
# A session ready for a query: a LabsClient's (asyncio, trio) or a LabsSession's (curl)
_READY = (ClientState.READY, SessionState.READY)


class GatewayError(Exception):
    """The gateway cannot be set up as configured (an unknown backend, a bad option)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelCard:
    """A model the gateway serves, as ``GET /v1/models`` shows it; ``service`` names who answers it."""

    id: str
    owned_by: str
    created: int  # Unix time
    service: str

    def as_openai(self) -> dict[str, Any]:
        """OpenAI's model object."""
        return {"id": self.id, "object": "model", "created": self.created, "owned_by": self.owned_by}


# When each Labs model first appeared in a public Labs client (gpt4free's provider, protocol.md appendix A):
# the sonar family on 2025-01-30, sonar-reasoning-pro on 2025-02-07, r1-1776 on 2025-02-21 (00:00 UTC).
_LABS_CREATED = {"sonar-pro": 1738195200, "sonar": 1738195200, "sonar-reasoning": 1738195200,
                 "sonar-reasoning-pro": 1738886400, "r1-1776": 1740096000}
#: The Labs models (:data:`plabs_proto.labs.answer.MODELS`), the default first.
LABS_MODELS: tuple[ModelCard, ...] = tuple(
    ModelCard(id=name, owned_by="perplexity", created=_LABS_CREATED.get(name, 0), service="labs")
    for name in (DEFAULT_MODEL, *(name for name in MODELS if name != DEFAULT_MODEL))
)
# The ask endpoint's ids carry no dates: each is dated when the first dated public client of the
# endpoint appeared (gpt4free's Perplexity provider, fa644e4e, 2025-10-01 00:00 UTC; protocol.md §10.1).
_PERPLEXITY_CREATED = 1759276800
#: The ask endpoint's built-in models (:data:`plabs_proto.perplexity.request.MODELS`), the default first.
PERPLEXITY_MODELS: tuple[ModelCard, ...] = tuple(
    ModelCard(id=model.id, owned_by="perplexity", created=_PERPLEXITY_CREATED, service="perplexity")
    for model in sorted(ask_service.MODELS, key=lambda model: model.id != ask_service.DEFAULT_MODEL)
)
_SERVICE_MODELS = {"labs": LABS_MODELS, "perplexity": PERPLEXITY_MODELS}
#: What the error messages call each service.
_SERVICE_NAMES = {"labs": "Perplexity Labs", "perplexity": "Perplexity"}


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
    (not in ``repr``, not in logs).  ``models`` are the models served (listed,
    and the only ones taken unless ``any_model``, which passes any other id on
    to Labs as given; None: the service's own, :data:`LABS_MODELS` or
    :data:`PERPLEXITY_MODELS`).  ``live_models`` (perplexity): serve the
    service's own catalog instead, asked once as the gateway starts (its
    anonymous model first).  ``mode`` (perplexity): the ask mode of a request
    that names none (one of :data:`~plabs_proto.perplexity.request.MODES`; None:
    the service's default); a request may name its own in a ``mode`` field.
    ``service``: ``labs`` or ``perplexity`` (the ask endpoint, see :data:`SERVICES`).  On the perplexity service the gateway
    keeps the session of each answer for ``thread_age`` seconds, at most
    ``max_threads`` of them, so that the conversation's next turn continues
    its thread (see :class:`ThreadCache`).
    """

    server: str = DEFAULT_SERVER
    service: str = "labs"
    backend: str = "auto"
    transport: str = "upgrade"
    proxy: str | None = None
    cafile: str | None = None
    api_key: str | None = field(default=None, repr=False)
    max_sessions: int = 0
    warm: int = 0
    timeout: float | None = 300.0
    any_model: bool = False
    models: tuple[ModelCard, ...] | None = None
    live_models: bool = False
    mode: str | None = None
    max_threads: int = 256
    thread_age: float = 3600.0
    options: Mapping[str, Any] = field(default_factory=dict)  # more keyword arguments of connect()

    @property
    def cards(self) -> tuple[ModelCard, ...]:
        """The models served: :attr:`models`, else the service's own."""
        if self.models is not None:
            return self.models
        return _SERVICE_MODELS.get(self.service, LABS_MODELS)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> GatewayConfig:
        """The configuration from ``PLABS_SERVER``, ``PLABS_BACKEND``, ``PLABS_TRANSPORT``,
        ``PLABS_PROXY``, ``PLABS_CAFILE``, ``PLABS_API_KEY``, ``PLABS_MAX_SESSIONS``,
        ``PLABS_WARM``, ``PLABS_TIMEOUT``, ``PLABS_ANY_MODEL`` (``1``: any model id),
        ``PLABS_SERVICE``, ``PLABS_MODE``, ``PLABS_LIVE_MODELS`` (``1``: the service's catalog),
        ``PLABS_MAX_THREADS`` and ``PLABS_THREAD_AGE`` (unset: the defaults).
        This is what ``create_app()`` uses when given nothing, e.g. under ``uvicorn --factory``."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"PLABS_{f.name.upper()}")
            if raw is None or f.name in ("options", "models"):
                continue
            if f.name in ("max_sessions", "warm", "max_threads"):
                try:
                    values[f.name] = int(raw)
                except ValueError:
                    raise GatewayError(f"expected PLABS_{f.name.upper()} as a whole number, got {raw!r}") from None
            elif f.name in ("timeout", "thread_age"):
                try:
                    values[f.name] = float(raw)
                except ValueError:
                    raise GatewayError(f"expected PLABS_{f.name.upper()} as a number of seconds, got {raw!r}") from None
            elif f.name in ("any_model", "live_models"):
                if raw not in ("0", "1"):
                    raise GatewayError(f"expected PLABS_{f.name.upper()} as 0 or 1, got {raw!r}")
                values[f.name] = raw == "1"
            else:
                values[f.name] = raw
        return cls(**values)

    def connect_options(self) -> dict[str, Any]:
        """The keyword arguments of the backends' ``connect()``."""
        return {
            "server": self.server,
            "service": self.service,
            "proxy": self.proxy,
            "transport": self.transport,
            "cafile": self.cafile,
            "timeout": self.timeout,
            **({} if self.mode is None else {"mode": self.mode}),
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
    if config.service not in SERVICES:
        raise GatewayError(f"expected the service to be one of {', '.join(SERVICES)}, got {config.service!r}")
    if config.backend not in BACKENDS:
        raise GatewayError(f"expected the backend to be one of {', '.join(BACKENDS)}, got {config.backend!r}")
    if config.backend != "auto":
        _backend_module(config.backend)
    if config.max_sessions < 0 or config.warm < 0 or config.max_threads < 0:
        raise GatewayError(
            f"expected max_sessions, warm and max_threads >= 0, got {config.max_sessions!r}, {config.warm!r} "
            f"and {config.max_threads!r}"
        )
    if not 0 < config.thread_age < math.inf:
        raise GatewayError(f"expected thread_age as a number of seconds > 0, got {config.thread_age!r}")
    if config.api_key is not None and not config.api_key:
        raise GatewayError("expected a non-empty api key (or none)")
    if config.live_models and config.service != "perplexity":
        raise GatewayError(f"expected live_models on the perplexity service only (Labs has no catalog to ask for), "
                           f"got service {config.service!r}")
    if config.live_models and config.models is not None:
        raise GatewayError("expected either models or live_models, got both")
    ids = [card.id if isinstance(card, ModelCard) else None for card in config.cards]
    if not ids or None in ids or len(set(ids)) != len(ids):
        raise GatewayError(f"expected the models as ModelCards with distinct ids, got {config.cards!r:.200}")
    from .. import asyncio as checker

    try:
        checker.connect(**config.connect_options())  # checks the options; opens nothing
    except LabsError as exc:
        raise GatewayError(str(exc)) from None


# -- OpenAI's shapes ---------------------------------------------------------------------------------


class _Refusal(Exception):
    """An error answered in OpenAI's JSON shape: ``{"error": {"message", "type", "param", "code", ...}}``."""

    def __init__(self, status: int, message: str, type_: str, code: str | None, *, param: str | None = None,
                 headers: Mapping[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.extra = extra
        self._headers = dict(headers or {})

    def error(self) -> dict[str, Any]:
        """The ``error`` object."""
        return {"message": self.message, "type": self.type, "param": self.param, "code": self.code, **self.extra}

    def body(self) -> dict[str, Any]:
        return {"error": self.error()}

    def headers(self) -> dict[str, str]:
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else {}
        retry_after = self.extra.get("retry_after")
        if retry_after is not None:  # Labs said when to come back: OpenAI clients wait that long
            headers["Retry-After"] = str(math.ceil(retry_after))
        headers.update(self._headers)
        return headers

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers() or None)


def _bad_request(message: str, code: str | None = None, param: str | None = None) -> _Refusal:
    return _Refusal(400, message, "invalid_request_error", code, param=param)


def _labs_refusal(exc: LabsError, name: str = "Perplexity Labs") -> _Refusal:
    """The OpenAI error for a failure of the service's side (``name``: what to call the service)."""
    if isinstance(exc, LabsTimeout):
        return _Refusal(504, f"{name} timed out: {exc}", "api_error", "labs_timeout", deadline=exc.deadline)
    if isinstance(exc, RateLimitedError):
        return _Refusal(429, f"{name} is rate limiting this gateway: {exc}", "rate_limit_error",
                        "labs_rate_limited", retry_after=exc.retry_after)
    if isinstance(exc, ResponseError):
        return _Refusal(502, f"{name} reported a failure: {exc.server_text or exc}", "api_error",
                        "labs_error", labs_text=exc.server_text)
    if isinstance(exc, LocalProtocolError):  # the request passed the gateway's checks but not the client's
        return _bad_request(f"the request cannot be sent to {name}: {exc}", "invalid_value")
    return _Refusal(502, f"the {name} session failed: {exc}", "api_error", "labs_unavailable")


def _shown(value: Any) -> str:
    """A value from a request, for an error message: its JSON, at most 40 characters."""
    try:
        text = json.dumps(value, ensure_ascii=True)
    except (TypeError, ValueError, RecursionError):
        text = type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def estimate_tokens(text: str) -> int:
    """The token count the gateway reports where the service reports none: one token per 4 bytes of
    UTF-8, rounded up (OpenAI's rule of thumb of about 4 characters a token in English text)."""
    return -(-len(text.encode("utf-8", "surrogatepass")) // 4)


def fold_history(messages: list[dict[str, str]]) -> str:
    """One question from an OpenAI conversation, for a service that takes a single question.

    A lone user message is the question itself; otherwise the earlier turns come first, each
    under its role, then the last message.  (Labs takes the conversation as it is; the perplexity
    service asks this when the history continues no thread of this gateway's, see :class:`ThreadCache`.)
    """
    *earlier, last = messages
    return "\n\n".join([*(f"{message['role']}: {message['content']}" for message in earlier), last["content"]])


def thread_key(caller: str, messages: list[dict[str, str]]) -> str:
    """What identifies a conversation up to a turn, for one caller (the ``Authorization`` header it
    sent): the SHA-256 of both, in hex.  The gateway stores a thread under the key of the
    conversation that ends with the answer, and looks it up with the key of a request's messages
    but the last."""
    data = json.dumps([caller, [[message["role"], message["content"]] for message in messages]],
                      ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(data.encode("utf-8", "surrogatepass")).hexdigest()


class ThreadCache:
    """The sessions whose last answer this gateway gave, by :func:`thread_key`: the threads a
    conversation can continue.  At most ``size`` (a new one beyond it pushes the oldest out), each
    for ``age`` seconds after its answer (one exactly ``age`` old is still taken).  It only holds
    them: what :meth:`put`, :meth:`expire` and :meth:`drain` hand back is for the caller to close.
    """

    def __init__(self, size: int, age: float) -> None:
        self.size = size
        self.age = age
        self._kept: OrderedDict[str, tuple[float, Any]] = OrderedDict()  # oldest first

    def __len__(self) -> int:
        return len(self._kept)

    def put(self, key: str, session: Any, now: float) -> list[Any]:
        """Keep ``session`` under ``key`` (answered at ``now``); returns the sessions it pushed out."""
        out = self.expire(now)
        old = self._kept.pop(key, None)
        if old is not None:
            out.append(old[1])
        self._kept[key] = (now, session)
        while len(self._kept) > self.size:
            out.append(self._kept.popitem(last=False)[1][1])
        return out

    def take(self, key: str, now: float) -> Any | None:
        """The session kept under ``key``, taken out, when not older than ``age``; else None (an
        older one stays for :meth:`expire`)."""
        kept = self._kept.get(key)
        if kept is None or now - kept[0] > self.age:
            return None
        del self._kept[key]
        return kept[1]

    def expire(self, now: float) -> list[Any]:
        """Take out and return the sessions older than ``age``."""
        out = []
        while self._kept:
            stored, session = next(iter(self._kept.values()))
            if now - stored <= self.age:
                break
            self._kept.popitem(last=False)
            out.append(session)
        return out

    def drain(self) -> list[Any]:
        """Take out and return every session."""
        out = [session for _, session in self._kept.values()]
        self._kept.clear()
        return out


@dataclass
class _ChatRequest:
    messages: list[dict[str, str]]
    model: str
    stream: bool
    include_usage: bool
    prompt_tokens: int
    mode: str | None = None  # the ask mode the request names (perplexity)
    caller: str = ""  # the Authorization header: threads are kept per API key


_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def _text_of(content: Any, where: str, param: str, part_types: tuple[str, ...], name: str) -> str:
    """The text of a message's content: a str, or a list of text parts (of ``part_types``)."""
    if isinstance(content, str):
        return content
    if content is None:  # an assistant's message of tool calls only
        return ""
    if not isinstance(content, list):
        raise _bad_request(f"{where}: expected 'content' as a string or a list of text parts, got {_shown(content)}",
                           param=param)
    texts: list[str] = []
    for index, part in enumerate(content):
        if not isinstance(part, dict):
            raise _bad_request(f"{where}.content[{index}]: expected an object, got {_shown(part)}", param=param)
        kind = part.get("type")
        if kind not in part_types:
            raise _bad_request(
                f"{where}.content[{index}]: expected a part of type {' or '.join(map(repr, part_types))}, got "
                f"{_shown(kind)}: {name} takes text only",
                "unsupported_content",
                param,
            )
        text = part.get("text")
        if not isinstance(text, str):
            raise _bad_request(f"{where}.content[{index}].text: expected a string, got {_shown(text)}", param=param)
        if text:
            texts.append(text)
    return "\n".join(texts)


def _conversation(
    items: Any, param: str, part_types: tuple[str, ...], first: list[dict[str, Any]], name: str
) -> list[dict[str, str]]:
    """``first`` then the messages ``items``, checked and normalized (Labs's rules), within the limits;
    ``name`` is what the errors call the service."""
    if not isinstance(items, list) or not items:
        raise _bad_request(f"expected '{param}' as a non-empty list of messages, got {_shown(items)}", param=param)
    if len(items) > MAX_MESSAGES:
        raise _bad_request(
            f"expected '{param}' to hold at most {MAX_MESSAGES} messages, got {len(items)}",
            "array_above_max_length", param,
        )
    converted = list(first)
    size = sum(len(message["content"].encode("utf-8", "surrogatepass")) for message in first)
    for index, message in enumerate(items):
        where = f"{param}[{index}]"
        if not isinstance(message, dict):
            raise _bad_request(f"{where}: expected an object, got {_shown(message)}", param=param)
        if message.get("type", "message") != "message":
            raise _bad_request(f"{where}: expected an item of type 'message', got {_shown(message.get('type'))}: "
                               f"{name} takes messages only", "unsupported_content", param)
        role = message.get("role")
        if not isinstance(role, str) or role not in _ROLES:
            got = _shown(role) if "role" in message else "no 'role'"
            raise _bad_request(f"{where}: expected 'role' to be one of {', '.join(map(repr, _ROLES))}, got {got}",
                               param=param)
        text = _text_of(message.get("content"), where, param, part_types, name)
        size += len(text.encode("utf-8", "surrogatepass"))
        if size > MAX_PROMPT:
            raise _bad_request(
                f"expected at most {MAX_PROMPT} bytes of text (UTF-8) in a request, got more by {where}",
                "context_length_exceeded", param,
            )
        converted.append({"role": _ROLES[role], "content": text})
    try:
        return normalize_messages(converted)
    except LocalProtocolError as exc:
        raise _bad_request(str(exc), param=param) from None


def _model(body: dict[str, Any], config: GatewayConfig) -> str:
    """The request's model id: required, and one of the gateway's unless ``any_model``."""
    model = body.get("model")
    if model is None or model == "":
        raise _bad_request("you must provide a model parameter ('model': one of GET /v1/models)", param="model")
    if not isinstance(model, str):
        raise _bad_request(f"expected 'model' as a string, got {_shown(model)}", param="model")
    if len(model) > MAX_MODEL_ID:
        raise _bad_request(f"expected 'model' of at most {MAX_MODEL_ID} characters, got {len(model)}",
                           "string_above_max_length", "model")
    if not config.any_model and all(card.id != model for card in config.cards):
        raise _Refusal(404, f"The model {_shown(model)} does not exist: expected one of "
                       f"{', '.join(card.id for card in config.cards)} (GET /v1/models)",
                       "invalid_request_error", "model_not_found", param="model")
    try:
        model.encode("utf-8")
    except UnicodeEncodeError:
        raise _bad_request(f"expected 'model' as text that can be sent as UTF-8, got {_shown(model)}",
                           param="model") from None
    return model


def _stream_flag(body: dict[str, Any]) -> bool:
    stream = body.get("stream", False)
    if stream is None:
        return False
    if not isinstance(stream, bool):
        raise _bad_request(f"expected 'stream' as true or false, got {_shown(stream)}", param="stream")
    return stream


def _refuse_tools(body: dict[str, Any], service: str) -> None:
    for name in _REFUSED:
        if body.get(name) not in (None, [], "none"):
            raise _bad_request(
                f"{service} cannot call tools: '{name}' is not supported", "unsupported_parameter", name
            )


def _mode(body: dict[str, Any], config: GatewayConfig) -> str | None:
    """The request's ask mode (an extension of OpenAI's request: ``mode``, perplexity only); None:
    the gateway's ``mode``, else the service's default."""
    mode = body.get("mode")
    if mode is None:
        return None
    if config.service != "perplexity":
        raise _bad_request(f"{_SERVICE_NAMES.get(config.service, config.service)} has no ask modes: expected no 'mode', got "
                           f"{_shown(mode)} (modes are the ask service's: plabs serve --service perplexity)",
                           "unsupported_parameter", "mode")
    if not isinstance(mode, str) or mode not in ask_service.MODES:
        raise _bad_request(f"expected 'mode' to be one of {', '.join(map(repr, ask_service.MODES))}, got "
                           f"{_shown(mode)}", "invalid_value", "mode")
    return mode


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _bad_request(f"expected a JSON object as the request body, got {_shown(body)}")
    return body


def parse_chat_request(body: Any, config: GatewayConfig | None = None) -> _ChatRequest:
    """Check an OpenAI chat completion request; raise :class:`_Refusal` (4xx) for a bad one."""
    config = config or GatewayConfig()
    body = _object(body)
    name = _SERVICE_NAMES.get(config.service, config.service)
    messages = _conversation(body.get("messages"), "messages", ("text",), [], name)
    model = _model(body, config)
    stream = _stream_flag(body)
    n = body.get("n", 1)
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise _bad_request(f"expected 'n' as a whole number >= 1, got {_shown(n)}", param="n")
    if n is not None and n > 1:
        raise _bad_request(f"{name} gives one answer per request: 'n' must be 1, got {n}",
                           "unsupported_parameter", "n")
    _refuse_tools(body, name)
    mode = _mode(body, config)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _bad_request(f"expected 'stream_options' as an object, got {_shown(options)}", param="stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    prompt = estimate_tokens("\n\n".join(message["content"] for message in messages))
    return _ChatRequest(messages, model, stream, include_usage, prompt, mode)


def parse_responses_request(body: Any, config: GatewayConfig | None = None) -> _ChatRequest:
    """Check an OpenAI Responses API request (``input``: a string or message items; ``instructions``)."""
    config = config or GatewayConfig()
    body = _object(body)
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise _bad_request(f"expected 'instructions' as a string, got {_shown(instructions)}", param="instructions")
    first = [{"role": "system", "content": instructions}] if instructions else []
    items = body.get("input")
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    name = _SERVICE_NAMES.get(config.service, config.service)
    messages = _conversation(items, "input", ("input_text", "output_text", "text"), first, name)
    model = _model(body, config)
    stream = _stream_flag(body)
    _refuse_tools(body, name)
    mode = _mode(body, config)
    if body.get("previous_response_id") is not None:
        raise _bad_request("this gateway keeps no responses: send the whole conversation in 'input' instead of "
                           "'previous_response_id'", "unsupported_parameter", "previous_response_id")
    prompt = estimate_tokens("\n\n".join(message["content"] for message in messages))
    return _ChatRequest(messages, model, stream, False, prompt, mode)


def _completion_tokens(finished: AnswerFinished) -> int:
    """Labs's own count when it gives one (``tokens_streamed``), else the estimate of the answer and
    its reasoning (reasoning counts as completion, as OpenAI counts it)."""
    if finished.tokens_streamed is not None:
        return finished.tokens_streamed
    return estimate_tokens(finished.text) + estimate_tokens(finished.reasoning)


def _usage(finished: AnswerFinished, prompt_tokens: int) -> dict[str, int]:
    """OpenAI's ``usage``: the prompt's tokens estimated, the completion's as Labs counts them."""
    completion = _completion_tokens(finished)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion}


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
        self._holders: anyio.abc.TaskGroup | None = None  # expire_threads's: the same for kept threads
        self.library = ""
        self.module: ModuleType | None = None
        self.stopping = False  # shutdown began: streams end, the pool closes
        self.running: set[_Completion] = set()  # the responses being sent, ended at once by stop()
        self._wake: anyio.Event | None = None
        self._catalog: anyio.Lock | None = None  # held while the service's catalog is asked (live_models)
        self.name = _SERVICE_NAMES.get(config.service, config.service)  # what errors call the service
        # perplexity: the sessions whose answer a conversation may continue (Labs keeps no threads)
        self.threads = ThreadCache(config.max_threads, config.thread_age) if config.service == "perplexity" else None

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

    async def ensure_models(self) -> None:
        """With ``live_models``: ask the service for its catalog once (again on the next request if
        it failed), after which :attr:`config` serves the catalog's models, its anonymous model
        first.  Raises a 502 refusal, in OpenAI's shape, when the service does not answer."""
        if not self.config.live_models:
            return
        if self._catalog is None:
            self._catalog = anyio.Lock()
        async with self._catalog:
            if not self.config.live_models:  # another request asked meanwhile
                return
            try:
                session = await self.open()
                try:
                    models = await session.catalog()
                finally:
                    await self.aclose(session)
            except LabsError as exc:
                raise _Refusal(502, f"expected {self.name}'s model catalog (live_models), got an error: {exc}",
                               "api_error", "catalog_unavailable") from None
            ordered = [m for m in models if not m.signed_in] + [m for m in models if m.signed_in]
            if not ordered:
                raise _Refusal(502, f"expected {self.name}'s model catalog (live_models) to name a model, got none",
                               "api_error", "catalog_unavailable")
            cards = tuple(ModelCard(id=m.id, owned_by="perplexity", created=_PERPLEXITY_CREATED,
                                    service=self.config.service) for m in ordered)
            self.config = replace(self.config, models=cards, live_models=False)
            logger.info("serving the %d models of %s's catalog", len(cards), self.name)

    async def preload_models(self) -> None:
        """:meth:`ensure_models` as the gateway starts; a failure is logged, and the first request
        that needs the models asks again."""
        try:
            await self.ensure_models()
        except _Refusal as refusal:
            logger.warning("%s", refusal.message)

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

    async def follow(self, request: _ChatRequest) -> Any | None:
        """The kept session whose thread ``request`` continues (its messages but the last, a user's,
        are the conversation that session answered last, for the same caller), taken out; else None."""
        threads = self.threads
        messages = request.messages
        if threads is None or len(messages) < 2 or messages[-1]["role"] != "user":
            return None
        now = time.monotonic()
        for stale in threads.expire(now):
            await self.aclose(stale)
        session = threads.take(thread_key(request.caller, messages[:-1]), now)
        if session is not None and not self._healthy(session):
            await self.aclose(session)
            return None
        return session

    async def keep(self, session: Any, key: str) -> None:
        """Keep ``session``, which just answered the conversation of ``key``, for its next turn."""
        assert self.threads is not None
        if self.stopping or not self._healthy(session):
            await self.aclose(session)
            return
        self._keep_alive(session)
        for old in self.threads.put(key, session, time.monotonic()):
            await self.aclose(old)

    async def expire_threads(self) -> None:
        """Close the kept sessions as they grow too old, until shutdown (run in the app's task group)."""
        assert self.threads is not None
        async with anyio.create_task_group() as group:
            self._holders = group
            while not self.stopping:
                for stale in self.threads.expire(time.monotonic()):
                    await self.aclose(stale)
                await anyio.sleep(_POOL_CHECK)
            self._holders = None
            group.cancel_scope.cancel()

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

    async def release(self, session: Any, *, lent: bool, clean: bool, thread: str | None = None) -> None:
        """A request is done with ``session``: after a clean finish, kept for its thread's next turn
        (``thread``: its key, perplexity) or back into the pool when the pool wants it; else closed
        (the pool then opens a replacement).  A session with a thread never goes back to the pool."""
        if lent:
            self.lent -= 1
        if self.threads is not None:
            if clean and thread is not None:
                await self.keep(session, thread)
            else:
                await self.aclose(session)
            self._poke()
            return
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
        group = self._group or self._holders
        if self.library == "trio" and session not in self.held and group is not None:
            done = self.held[session] = anyio.Event()
            group.start_soon(self._hold, session, done)

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
        if self.threads is not None:
            idle += self.threads.drain()
        for session in idle:
            await self.aclose(session)


# -- the chat completion response (one ASGI callable for both modes) ----------------------------------


def _rewritten(sent: str, final: str, name: str) -> _Refusal:
    """The error that ends a stream whose text the service (``name``) rewrote after it was sent."""
    return _Refusal(
        502,
        f"{name} rewrote the answer after {len(sent)} characters of it were streamed; "
        "the text streamed is not the final answer, which is in this error's final_text",
        "api_error",
        "answer_rewritten",
        final_text=final,
    )


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
        self.answer: str | None = None  # the final answer's text, once it came
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
                thread = None
                if self.clean and self.answer is not None and self.sessions.threads is not None:
                    answered = [*self.request.messages, {"role": "assistant", "content": self.answer}]
                    thread = thread_key(self.request.caller, normalize_messages(answered))
                await self.sessions.release(session, lent=self.lent, clean=self.clean, thread=thread)
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
        sessions = self.sessions
        question: str | list[dict[str, str]] = self.request.messages
        session = await sessions.follow(self.request)  # a follow-up: the session sends the last turn only
        if session is None:
            if sessions.threads is not None:  # a new thread: the history folded into the question
                question = fold_history(self.request.messages)
            session = await sessions.take()
            if session is None:
                session = await sessions.open(wait=False)
            else:
                self.lent = True
        self.session = session
        async with session.query(question, model=self.request.model, mode=self.request.mode) as query:
            async for event in query:
                if type(event) is AnswerFinished:
                    self.answer = event.text
                yield event

    async def _respond(self, send: Send) -> None:
        events = self._events()
        try:
            if self.request.stream:
                await self._stream(events, send)
            else:
                await self._whole(events, send)
        except LabsError as exc:
            await self._fail(_labs_refusal(exc, self.sessions.name), send)
        finally:
            with anyio.CancelScope(shield=True):
                await events.aclose()  # type: ignore[attr-defined]

    async def _fail(self, refusal: _Refusal, send: Send) -> None:
        if refusal.status in (500, 502, 504):
            logger.warning("chat completion failed (%d): %s", refusal.status, refusal.message)
        if self.started:
            await send({"type": "http.response.body", "body": self._failure_event(refusal), "more_body": False})
        else:
            body = json.dumps(refusal.body(), ensure_ascii=False).encode()
            await send({
                "type": "http.response.start",
                "status": refusal.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *((k.lower().encode(), v.encode()) for k, v in refusal.headers().items())],
            })
            await send({"type": "http.response.body", "body": body, "more_body": False})

    def _failure_event(self, refusal: _Refusal) -> bytes:
        """The last bytes of a stream that failed after it started."""
        return _sse(refusal.body())

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
            "usage": _usage(finished, self.request.prompt_tokens),
        }
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
            await self._fail(_rewritten("".join(sent), finished.text, self.sessions.name), send)
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
        if not self.started:  # an empty answer: the stream still has its role and final chunk
            await self._chunk(send, b'"content":""')
        tail = _sse(final)
        if self.request.include_usage:  # as OpenAI sends it: a chunk of its own, with no choices, last
            tail += _sse({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                          "model": final["model"], "choices": [],
                          "usage": _usage(finished, self.request.prompt_tokens)})
        await send({"type": "http.response.body", "body": tail + b"data: [DONE]\n\n", "more_body": False})

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


class _Response(_Completion):
    """A Responses API answer (``POST /v1/responses``): one ``response`` object, or its typed stream
    events (``response.created`` ... ``response.output_text.delta`` ... ``response.completed``).
    Answer text only: the reasoning is in the chat completions' ``reasoning_content``."""

    def __init__(self, sessions: _Sessions, request: _ChatRequest) -> None:
        super().__init__(sessions, request)
        self.id = "resp_" + secrets.token_hex(12)
        self.item = "msg_" + secrets.token_hex(12)
        self.sequence = 0

    def _object(self, status: str, text: str | None = None, finished: AnswerFinished | None = None,
                error: dict[str, Any] | None = None) -> dict[str, Any]:
        """The ``response`` object, ``in_progress`` (no output yet), ``completed`` or ``failed``."""
        output = [] if text is None else [self._item("completed", text)]
        usage = None
        if finished is not None:
            completion = _completion_tokens(finished)
            reasoning = estimate_tokens(finished.reasoning) if finished.reasoning else 0
            usage = {"input_tokens": self.request.prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
                     "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": reasoning},
                     "total_tokens": self.request.prompt_tokens + completion}
        return {"id": self.id, "object": "response", "created_at": self.created, "status": status,
                "model": finished.model if finished is not None and finished.model else self.request.model,
                "output": output, "usage": usage, "error": error, "incomplete_details": None,
                "instructions": None, "parallel_tool_calls": False, "tool_choice": "none", "tools": [],
                "text": {"format": {"type": "text"}}}

    def _item(self, status: str, text: str | None) -> dict[str, Any]:
        content = [] if text is None else [self._part(text)]
        return {"id": self.item, "type": "message", "status": status, "role": "assistant", "content": content}

    @staticmethod
    def _part(text: str) -> dict[str, Any]:
        return {"type": "output_text", "text": text, "annotations": []}

    def _event(self, kind: str, **fields: Any) -> bytes:
        data = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return f"event: {kind}\n".encode() + _sse(data)

    def _text_event(self, kind: str, **fields: Any) -> bytes:
        return self._event(kind, item_id=self.item, output_index=0, content_index=0, **fields)

    def _failure_event(self, refusal: _Refusal) -> bytes:
        error = {"code": refusal.code, "message": refusal.message}
        return self._event("response.failed", response=self._object("failed", error=error))

    async def _whole(self, events: AsyncIterator[Event], send: Send) -> None:
        finished: AnswerFinished | None = None
        async for event in events:
            if isinstance(event, AnswerFinished):
                finished = event
        assert finished is not None
        self.clean = True
        data = json.dumps(self._object("completed", finished.text, finished), ensure_ascii=False).encode()
        await send({
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
        })
        await send({"type": "http.response.body", "body": data, "more_body": False})

    async def _open(self, send: Send) -> None:
        """Start the response with its opening events (once)."""
        if self.started:
            return
        self.started = True
        await send({
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                        (b"x-accel-buffering", b"no")],
        })
        opening = (self._event("response.created", response=self._object("in_progress"))
                   + self._event("response.in_progress", response=self._object("in_progress"))
                   + self._event("response.output_item.added", output_index=0, item=self._item("in_progress", None))
                   + self._text_event("response.content_part.added", part=self._part("")))
        await send({"type": "http.response.body", "body": opening, "more_body": True})

    async def _delta(self, send: Send, text: str) -> None:
        await self._open(send)
        data = self._text_event("response.output_text.delta", delta=text, logprobs=[])
        await send({"type": "http.response.body", "body": data, "more_body": True})

    async def _stream(self, events: AsyncIterator[Event], send: Send) -> None:
        sent = ""
        following = True
        finished: AnswerFinished | None = None
        async for event in events:
            if isinstance(event, TextDelta):
                if following and event.text:
                    sent += event.text
                    await self._delta(send, event.text)
            elif isinstance(event, AnswerRevised):
                following = following and event.text.startswith(sent)
            elif isinstance(event, AnswerFinished):
                finished = event
        assert finished is not None
        if not (following and finished.text.startswith(sent)):  # (then text was sent: the stream has begun)
            await self._fail(_rewritten(sent, finished.text, self.sessions.name), send)
            return
        rest = finished.text[len(sent):]
        if rest:
            await self._delta(send, rest)
        self.clean = True
        text = finished.text
        await self._open(send)  # an empty answer still has its opening events
        tail = (self._text_event("response.output_text.done", text=text, logprobs=[])
                + self._text_event("response.content_part.done", part=self._part(text))
                + self._event("response.output_item.done", output_index=0, item=self._item("completed", text))
                + self._event("response.completed", response=self._object("completed", text, finished)))
        await send({"type": "http.response.body", "body": tail, "more_body": False})


# -- the application ---------------------------------------------------------------------------------

_CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")
_RESPONSES_PATHS = ("/v1/responses", "/responses")
_FAST_PATHS = {**dict.fromkeys(_CHAT_PATHS, "chat"), **dict.fromkeys(_RESPONSES_PATHS, "responses")}
#: Where the access log finds the request's model (set by the handlers once the body is read).
_MODEL_KEY = "plabs.model"


class _ClientLeft(Exception):
    """The client left before its request was read."""


def _route_path(scope: Scope) -> str:
    """The request's path below the app's root path (what Starlette's router matches)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root):len(root) + 1] == "/":
        return path[len(root):]
    return path


def _parse_json(data: bytes) -> Any:
    """A request body as JSON; 400 for anything but strict UTF-8 JSON nested at most MAX_DEPTH deep."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _bad_request(f"expected a JSON request body in UTF-8, got the byte 0x{data[exc.start]:02x} at "
                           f"offset {exc.start}", "invalid_json") from None
    if too_deep(text):
        raise _bad_request(f"expected a JSON request body nested at most {MAX_DEPTH} deep, got deeper nesting",
                           "invalid_json")

    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(text, parse_constant=constant)
    except (ValueError, RecursionError) as exc:
        raise _bad_request(f"expected a JSON request body, got invalid JSON ({str(exc)[:200]})",
                           "invalid_json") from None


class _Endpoint:
    """A bare ASGI app as a route's endpoint (Starlette takes a plain function for a request handler)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


class _App(Starlette):
    """Starlette, with ``POST`` to the chat completion and responses paths handed straight to their
    handlers, and one access log line per request.

    Every chat completion pays for whatever runs before its Labs session opens
    and for every layer each streamed chunk is sent through: Starlette's
    middleware stack, router and request/response wrappers cost about 70 µs a
    request (measured on a loaded machine) and two ``send`` wrappers a chunk.
    The handlers need none of them (they answer their own errors, in OpenAI's
    shape); the routes stay for everything else (and a 405 for other methods).
    """

    def __init__(self, fast: Mapping[str, ASGIApp], **settings: Any) -> None:
        super().__init__(**settings)
        self.fast = fast

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        started = time.monotonic()
        status = 0

        async def sending(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            handler = self.fast.get(_route_path(scope)) if scope["method"] == "POST" else None
            if handler is not None:
                await handler(scope, receive, sending)
            else:
                await super().__call__(scope, receive, sending)
        finally:
            if access_logger.isEnabledFor(logging.INFO):
                model = scope.get(_MODEL_KEY)
                access_logger.info("%s %s %s %.3fs%s", scope["method"], scope["path"], status or "-",
                                   time.monotonic() - started, f" model={model}" if model else "")


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
                raise _Refusal(413, f"expected a request body of at most {MAX_BODY} bytes, got {size} or more",
                               "invalid_request_error", "request_too_large")
            parts.append(part)
            if not message.get("more_body", False):
                break
        return _parse_json(b"".join(parts))

    def handler(parse: Any, answer: type[_Completion]) -> ASGIApp:
        """A bare ASGI app (see :class:`_App`) that checks a request, then has ``answer`` answer it."""

        async def handle(scope: Scope, receive: Receive, send: Send) -> None:
            try:
                authorize(Headers(scope=scope))
                body = await read_json(receive)
                sessions.ensure_started()
                await sessions.ensure_models()
                request = parse(body, sessions.config)
                request.caller = Headers(scope=scope).get("authorization", "")
                scope[_MODEL_KEY] = request.model
                if sessions.stopping:
                    raise _Refusal(503, "the gateway is shutting down", "api_error", "shutting_down")
                if not sessions.try_enter():
                    raise _Refusal(
                        429,
                        f"all {config.max_sessions} {sessions.name} sessions of this gateway are busy; try again shortly",
                        "rate_limit_error",
                        "rate_limit_exceeded",
                        headers={"Retry-After": str(_BUSY_RETRY)},
                    )
            except _Refusal as refusal:
                await refusal.response()(scope, receive, send)
                return
            except _ClientLeft:
                return  # nobody to answer
            except Exception as exc:  # a bug of the gateway: logged with its traceback, answered in shape
                logger.exception("internal error of the gateway on %s %s", scope["method"], scope["path"])
                internal = _Refusal(500, f"internal error of the gateway: {type(exc).__name__}", "api_error",
                                    "internal_error")
                await internal.response()(scope, receive, send)
                return
            await answer(sessions, request)(scope, receive, send)

        return handle

    chat_completions = handler(parse_chat_request, _Completion)
    responses = handler(parse_responses_request, _Response)

    async def served(headers: Headers) -> tuple[ModelCard, ...]:
        """The models served, once the caller is let in (raises _Refusal)."""
        authorize(headers)
        sessions.ensure_started()
        await sessions.ensure_models()
        return sessions.config.cards

    async def models(request: Request) -> Response:
        try:
            cards = await served(request.headers)
        except _Refusal as refusal:
            return refusal.response()
        return JSONResponse({"object": "list", "data": [card.as_openai() for card in cards]})

    async def model(request: Request) -> Response:
        try:
            cards = {card.id: card for card in await served(request.headers)}
            card = cards.get(request.path_params["model"])
            if card is None:
                raise _Refusal(404, f"The model {_shown(request.path_params['model'])} does not exist: expected "
                               f"one of {', '.join(cards)}", "invalid_request_error", "model_not_found",
                               param="model")
        except _Refusal as refusal:
            return refusal.response()
        return JSONResponse(card.as_openai())

    async def health(request: Request) -> Response:
        body: dict[str, Any] = {"status": "ok", "active": sessions.active, "warm": len(sessions.idle)}
        if sessions.threads is not None:
            body["threads"] = len(sessions.threads)  # conversations whose next turn continues a thread
        return JSONResponse(body)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            message, code = f"Invalid URL ({request.method} {request.url.path}): no such endpoint", "unknown_url"
        elif exc.status_code == 405:
            message, code = (f"expected another method for {request.url.path}, got {request.method}",
                             "method_not_allowed")
        else:
            message, code = str(exc.detail), None
        return _Refusal(exc.status_code, message, "invalid_request_error", code,
                        headers=exc.headers).response()

    async def internal_error(request: Request, exc: Exception) -> Response:
        # (the ASGI server logs the exception itself: it is a bug of the gateway)
        return _Refusal(500, f"internal error of the gateway: {type(exc).__name__}", "api_error",
                        "internal_error").response()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        sessions.start()
        async with anyio.create_task_group() as group:
            if config.warm:
                group.start_soon(sessions.keep_warm)
            if sessions.threads is not None:
                group.start_soon(sessions.expire_threads)
            if config.live_models:
                group.start_soon(sessions.preload_models)
            try:
                yield
            finally:
                with anyio.CancelScope(shield=True):
                    await sessions.shutdown()
                group.cancel_scope.cancel()

    app = _App(
        {path: chat_completions if kind == "chat" else responses for path, kind in _FAST_PATHS.items()},
        routes=[
            *(Route(path, _Endpoint(chat_completions), methods=["POST"]) for path in _CHAT_PATHS),
            *(Route(path, _Endpoint(responses), methods=["POST"]) for path in _RESPONSES_PATHS),
            Route("/v1/models", models, methods=["GET"]),
            Route("/models", models, methods=["GET"]),
            Route("/v1/models/{model:path}", model, methods=["GET"]),
            Route("/models/{model:path}", model, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: internal_error},
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
