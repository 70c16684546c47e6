"""A local server of Perplexity's SSE ask endpoint for tests and demos (aiohttp).

It answers as protocol.md §10 describes the web app's endpoints:

* ``GET /api/auth/session`` (and ``GET /search/new``, the other warm-up clients use) sets the
  anonymous cookies ``__cf_bm`` and ``next-auth.csrf-token`` and answers ``{}``;
* ``GET /rest/models/config/v2`` answers a small model catalog (:data:`CATALOG`);
* ``POST /rest/sse/perplexity_ask`` checks the JSON body (``query_str``, ``params``) and answers
  ``text/event-stream`` frames ``event: message`` / ``data: <json>`` ending with
  ``event: end_of_stream`` / ``data: {}``, in one of the three answer shapes of §10.4
  (:data:`SHAPES`).  A second ask naming an answer of this server in ``last_backend_uuid`` is a
  follow-up: it is checked against that thread (``read_write_token``, ``query_source``) and
  answered in it (same ``thread_url_slug``, a new ``backend_uuid``).

:class:`PerplexityEmulatorConfig` holds the answer, its shape and pacing, and the faults.  Three
ways to run it, as for the Labs emulator: ``async with PerplexityEmulator(cfg)`` on the caller's
asyncio loop, :class:`PerplexityEmulatorThread` (its own loop in a daemon thread) and :func:`run`
(foreground).
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web

from .emulator import CLOUDFLARE_HTML, Listening, ServerThread, run_server

__all__ = [
    "CATALOG",
    "DEFAULT_ERROR_CODE",
    "GUARD_STEPS",
    "LINE_ENDINGS",
    "SHAPES",
    "TOKEN_COOKIE",
    "WEB_RESULTS",
    "PerplexityEmulator",
    "PerplexityEmulatorConfig",
    "PerplexityEmulatorThread",
    "default_answer",
    "run",
]

#: The answer shapes of protocol.md §10.4: the legacy steps text (double-encoded FINAL answer),
#: schematized markdown blocks streamed by ``diff_block`` patches, and the 2026 ``workflow_block``.
SHAPES = ("steps", "blocks", "workflow")
LINE_ENDINGS = ("crlf", "lf")
#: Where a guard switch answers instead of the service: the warm-up, the ask, or both.
GUARD_STEPS = ("session", "ask", "catalog", "all")
DEFAULT_ERROR_CODE = "FREE_TIER_RATE_LIMITED"
#: The example sources every answer cites (``name``, ``url``, ``snippet`` as in ``web_results``).
WEB_RESULTS: tuple[dict[str, str], ...] = (
    {"name": "Example source one", "url": "https://example.com/perplexity-emulator/one",
     "snippet": "The first example source."},
    {"name": "Example source two", "url": "https://example.org/perplexity-emulator/two",
     "snippet": "The second example source."},
)
#: What ``GET /rest/models/config/v2`` answers (the web app's catalog, reduced).
CATALOG: dict[str, Any] = {
    "models": {
        "turbo": {"label": "Best", "description": "Default model", "mode": "search", "provider": None},
        "pplx_pro": {"label": "Pro", "description": "Pro search", "mode": "search", "provider": None},
        "experimental": {"label": "Sonar", "description": "Perplexity's fast model", "mode": "search",
                         "provider": "perplexity"},
        "pplx_reasoning": {"label": "Reasoning", "description": "Reasoning", "mode": "search", "provider": None},
        "gpt5": {"label": "GPT-5", "description": "OpenAI's model", "mode": "search", "provider": "openai"},
        "claude45sonnet": {"label": "Claude Sonnet 4.5", "description": "Anthropic's model", "mode": "search",
                           "provider": "anthropic"},
    },
    "config": [
        {"label": "Best", "description": "Default model", "subheading": None, "has_new_tag": False,
         "subscription_tier": "free", "non_reasoning_model": "turbo", "reasoning_model": None,
         "text_only_model": False, "is_default": True},
        {"label": "Sonar", "description": "Perplexity's fast model", "subheading": None, "has_new_tag": False,
         "subscription_tier": "pro", "non_reasoning_model": "experimental", "reasoning_model": None,
         "text_only_model": False},
        {"label": "GPT-5", "description": "OpenAI's model", "subheading": None, "has_new_tag": False,
         "subscription_tier": "pro", "non_reasoning_model": "gpt5", "reasoning_model": None,
         "text_only_model": False},
        {"label": "Claude Sonnet 4.5", "description": "Anthropic's model", "subheading": None,
         "has_new_tag": True, "subscription_tier": "pro", "non_reasoning_model": "claude45sonnet",
         "reasoning_model": None, "text_only_model": False},
    ],
    "default_models": {"search": "turbo"},
}
SESSION_COOKIE = "__cf_bm"
#: The cookie of a signed-in session (protocol.md §10.2).
TOKEN_COOKIE = "__Secure-next-auth.session-token"
_REDIRECT_STATUSES = (301, 302, 303, 307, 308)
_COOKIE_VALUE = re.compile(r"[!#-+\--:<-\[\]-~]+")
CSRF_COOKIE = "next-auth.csrf-token"
_THINKING = "Looking through the sources for the answer."
_NO_STORE = "private, max-age=0, no-store, no-cache, must-revalidate"


@dataclass(frozen=True, slots=True, kw_only=True)
class PerplexityEmulatorConfig:
    """What the emulator answers and which faults it injects (times in seconds).

    * ``shape``: one of :data:`SHAPES`; ``answer``: the answer text (None: built from the
      query, :func:`default_answer`); ``chunk_size``: answer characters per streamed frame.
    * ``line_ending``: ``"crlf"`` (what the service sends) or ``"lf"``; ``extras``: an SSE
      ``retry:`` line, a comment before each frame and every ``data`` over several lines.
    * ``write_size``: the body goes out in writes (HTTP chunks) of this many bytes (1: one byte
      each); None: one write per frame.  ``frame_delay``: a pause before each frame.
    * ``early_final``: the trap of §10.3, a PENDING frame with ``final: true`` sent when only
      half of the answer has been streamed; the rest arrives only in the COMPLETED frame.
    * ``fail``: after ``fail_after`` frames, a ``status: "failed"`` frame with this message and
      ``error_code``, then ``end_of_stream``.
    * ``rate_limit`` / ``cloudflare``: a step of :data:`GUARD_STEPS` answered 429 with
      ``Retry-After: retry_after`` (none when None) / Cloudflare's 403 challenge page.
    * ``redirect``: a step of :data:`GUARD_STEPS` answered ``redirect_status`` (302 by default)
      with ``Location: redirect_to``, as a moved site answers.
    * ``require_cookie``: an ask without the warm-up's ``__cf_bm`` cookie is refused with 403.
    * ``session_token``: an ask without the cookie ``__Secure-next-auth.session-token`` of this
      value is refused with 401 (a signed-in session whose token is missing or expired).
    * ``drop_after``: the connection closes after this many frames, with no end.
    * ``gzip``: the SSE body is gzip-encoded (flushed per frame) when the client accepts gzip.
    """

    shape: str = "blocks"
    answer: str | None = None
    chunk_size: int = 8
    line_ending: str = "crlf"
    extras: bool = False
    write_size: int | None = None
    frame_delay: float = 0.0
    early_final: bool = False
    fail: str | None = None
    error_code: str = DEFAULT_ERROR_CODE
    fail_after: int = 0
    rate_limit: str | None = None
    retry_after: str | None = "30"
    cloudflare: str | None = None
    redirect: str | None = None
    redirect_to: str = "https://www.perplexity.ai/"
    redirect_status: int = 302
    require_cookie: bool = False
    session_token: str | None = None
    drop_after: int | None = None
    gzip: bool = False

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {SHAPES!r}, got {self.shape!r}")
        if self.line_ending not in LINE_ENDINGS:
            raise ValueError(f"line_ending must be one of {LINE_ENDINGS!r}, got {self.line_ending!r}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {self.chunk_size!r}")
        if self.write_size is not None and self.write_size < 1:
            raise ValueError(f"write_size must be None or at least 1, got {self.write_size!r}")
        if self.frame_delay < 0:
            raise ValueError(f"frame_delay must be >= 0, got {self.frame_delay!r}")
        if self.fail_after < 0:
            raise ValueError(f"fail_after must be >= 0, got {self.fail_after!r}")
        if self.drop_after is not None and self.drop_after < 0:
            raise ValueError(f"drop_after must be None or >= 0, got {self.drop_after!r}")
        for name in ("rate_limit", "cloudflare", "redirect"):
            step = getattr(self, name)
            if step is not None and step not in GUARD_STEPS:
                raise ValueError(f"{name} must be None or one of {GUARD_STEPS!r}, got {step!r}")
        if self.redirect_status not in _REDIRECT_STATUSES:
            raise ValueError(f"redirect_status must be one of {_REDIRECT_STATUSES!r}, got {self.redirect_status!r}")
        for name in ("retry_after", "redirect_to"):
            value = getattr(self, name)
            if value is not None and any(char in value for char in "\r\n\0"):
                raise ValueError(f"{name} must be one header line, got {value!r}")
        if self.session_token is not None and not _COOKIE_VALUE.fullmatch(self.session_token):
            raise ValueError(f"session_token must be a cookie value (cookie-octets), got {self.session_token!r}")


def default_answer(query: str, mode: str | None = None) -> str:
    """The answer when none is configured: deterministic, built from the query, and from the mode
    the ask named when it is not ``copilot`` (the web app's), so that a client sees which it asked."""
    if mode is not None and mode != "copilot":
        return f"This is the Perplexity emulator's {mode} answer to: {query} [1][2]"
    return f"This is the Perplexity emulator's answer to: {query} [1][2]"


# --------------------------------------------------------------------------------------------
# The answer frames
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Thread:
    slug: str
    read_write_token: str
    context_uuid: str
    answers: list[str] = field(default_factory=list)  # backend_uuid of each answer, in order


@dataclass(slots=True, kw_only=True)
class _Ask:
    """One ask being answered: its query, model and identity in its thread."""

    query: str
    model: str
    mode: str
    asked_mode: str | None  # the mode the ask named (``mode`` is what the frames echo: concise when none)
    frontend_uuid: str | None
    thread: _Thread
    backend_uuid: str


def _pieces(text: str, size: int) -> list[str]:
    return [text[start : start + size] for start in range(0, len(text), size)]


def _slug(query: str) -> str:
    words = re.sub(r"[^a-z0-9]+", "-", query.lower()).strip("-")[:60].strip("-") or "thread"
    return f"{words}-{secrets.token_urlsafe(9).replace('_', 'a').replace('-', 'b')}"


class _Frames:
    """The JSON objects of one answer, in order, for the configured shape."""

    def __init__(self, config: PerplexityEmulatorConfig, ask: _Ask) -> None:
        self.config = config
        self.ask = ask
        self.answer = config.answer if config.answer is not None else default_answer(ask.query, ask.asked_mode)
        self.pieces = _pieces(self.answer, config.chunk_size)
        # With the trap, only the first half of the answer is streamed before the early final.
        self.streamed = len(self.pieces) // 2 if config.early_final else len(self.pieces)

    def common(self, status: str, *, final: bool = False, completed: bool = False) -> dict[str, Any]:
        ask, thread = self.ask, self.ask.thread
        return {
            "backend_uuid": ask.backend_uuid,
            "uuid": ask.backend_uuid,
            "context_uuid": thread.context_uuid,
            "frontend_uuid": ask.frontend_uuid,
            "read_write_token": thread.read_write_token,
            "thread_url_slug": thread.slug,
            "thread_title": ask.query[:80],
            "query_str": ask.query,
            "display_model": ask.model,
            "mode": ask.mode,
            "status": status,
            "final": final or completed,
            "final_sse_message": completed,
            "text_completed": completed or (final and not self.config.early_final),
        }

    def failed(self, message: str) -> dict[str, Any]:
        frame = self.common("failed", completed=True)
        frame.update(text=message, error_message=message, error_code=self.config.error_code)
        return frame

    def __iter__(self) -> Iterator[dict[str, Any]]:
        shape = self.config.shape
        if shape == "steps":
            return self._steps()
        if shape == "blocks":
            return self._blocks()
        return self._workflow()

    # -- steps: ``text`` is a JSON string of steps; FINAL's answer is JSON again ----------------

    def _step_list(self, count: int | None) -> list[dict[str, Any]]:
        urls = [result["url"] for result in WEB_RESULTS]
        steps: list[dict[str, Any]] = [
            {"uuid": "s-initial", "step_type": "INITIAL_QUERY", "content": {"query": self.ask.query}},
            {"uuid": "s-search", "step_type": "SEARCH_WEB",
             "content": {"queries": [{"engine": "web", "query": self.ask.query, "limit": 8}]}},
            {"uuid": "s-results", "step_type": "SEARCH_RESULTS", "content": {"web_results": list(WEB_RESULTS)}},
            {"uuid": "s-read", "step_type": "READ_RESULTS", "content": {"urls": urls}},
        ]
        if count is not None:
            chunks = self.pieces[:count]
            inner = {"answer": "".join(chunks), "chunks": chunks, "web_results": list(WEB_RESULTS),
                     "structured_answer": [{"type": "markdown", "text": "".join(chunks)}]}
            steps.append({"uuid": "s-final", "step_type": "FINAL", "content": {"answer": json.dumps(inner)}})
        return steps

    def _steps(self) -> Iterator[dict[str, Any]]:
        yield {**self.common("PENDING"), "text": json.dumps(self._step_list(None)[:2])}
        yield {**self.common("PENDING"), "text": json.dumps(self._step_list(None))}
        for count in range(1, self.streamed + 1):
            yield {**self.common("PENDING"), "text": json.dumps(self._step_list(count))}
        yield {**self.common("PENDING", final=True), "text": json.dumps(self._step_list(self.streamed))}
        yield {**self.common("COMPLETED", completed=True), "text": json.dumps(self._step_list(len(self.pieces)))}

    # -- blocks: markdown blocks, patched; two answer tracks ----------------------------------

    def _plan(self, done: bool) -> dict[str, Any]:
        steps: list[dict[str, Any]] = [
            {"uuid": "p-search", "step_type": "SEARCH_WEB",
             "search_web_content": {"queries": [{"engine": "web", "query": self.ask.query}]}},
        ]
        if done:
            steps.append({"uuid": "p-read", "step_type": "READ_RESULTS",
                          "read_results_content": {"urls": [result["url"] for result in WEB_RESULTS]}})
        return {"intended_usage": "pro_search_steps",
                "plan_block": {"progress": "DONE" if done else "IN_PROGRESS",
                               "goals": [{"id": "g-0", "description": _THINKING, "final": done}],
                               "steps": steps}}

    def _markdown(self, usage: str) -> dict[str, Any]:
        return {"intended_usage": usage,
                "markdown_block": {"progress": "DONE", "chunks": list(self.pieces), "chunk_starting_offset": 0,
                                   "answer": self.answer}}

    def _blocks(self) -> Iterator[dict[str, Any]]:
        web = {"intended_usage": "web_results",
               "web_result_block": {"progress": "DONE", "web_results": list(WEB_RESULTS)}}
        yield {**self.common("PENDING"), "blocks": [self._plan(False)]}
        read = {"op": "add", "path": "/steps/1", "value": self._plan(True)["plan_block"]["steps"][1]}
        yield {**self.common("PENDING"), "blocks": [web, {"intended_usage": "pro_search_steps", "diff_block": {
            "field": "plan_block", "patches": [read, {"op": "replace", "path": "/progress", "value": "DONE"}]}}]}
        for index in range(self.streamed):
            piece = self.pieces[index]
            if index == 0:
                patch = {"op": "replace", "path": "",
                         "value": {"progress": "IN_PROGRESS", "chunks": [piece], "chunk_starting_offset": 0}}
            else:
                patch = {"op": "add", "path": f"/chunks/{index}", "value": piece}
            yield {**self.common("PENDING"), "blocks": [
                {"intended_usage": "ask_text", "diff_block": {"field": "markdown_block", "patches": [patch]}},
                {"intended_usage": "ask_text_0_markdown",
                 "markdown_block": {"progress": "IN_PROGRESS", "chunks": [piece], "chunk_starting_offset": index}},
            ]}
        closing: list[dict[str, Any]] = []
        if not self.config.early_final and self.pieces:
            closing = [{"intended_usage": "ask_text", "diff_block": {"field": "markdown_block", "patches": [
                {"op": "replace", "path": "/progress", "value": "DONE"},
                {"op": "add", "path": "/answer", "value": self.answer}]}}]
        yield {**self.common("PENDING", final=True), "blocks": closing}
        final_step = {"step_type": "FINAL", "content": {
            "answer": json.dumps({"answer": self.answer, "chunks": self.pieces})}}
        yield {**self.common("COMPLETED", completed=True), "text": json.dumps([final_step]), "blocks": [
            self._plan(True), web, self._markdown("ask_text"), self._markdown("ask_text_0_markdown")]}

    # -- workflow: one workflow_block, patched by RFC 6902 operations --------------------------

    def _workflow(self) -> Iterator[dict[str, Any]]:
        queries = {"type": "WORKFLOW_ITEM_QUERIES",
                   "payload": {"queries_payload": {"queries": [{"query": self.ask.query}]}}}
        sources = {"type": "WORKFLOW_ITEM_SOURCES",
                   "payload": {"sources_payload": {"sources": list(WEB_RESULTS)}}}
        thinking = {"type": "WORKFLOW_ITEM_TEXT", "payload": {"text_payload": {
            "text": _THINKING, "chunks": [_THINKING], "variant": "thinking", "is_streaming": False}}}

        def answer_item(chunks: list[str], streaming: bool) -> dict[str, Any]:
            return {"type": "WORKFLOW_ITEM_TEXT", "payload": {"text_payload": {
                "text": "".join(chunks), "chunks": chunks, "variant": "answer", "is_streaming": streaming}}}

        def patched(*patches: dict[str, Any]) -> list[dict[str, Any]]:
            return [{"intended_usage": "workflow_root",
                     "diff_block": {"field": "workflow_block", "patches": list(patches)}}]

        yield {**self.common("PENDING"), "blocks": [{"intended_usage": "workflow_root", "workflow_block": {
            "status": "WORKFLOW_EXECUTING_STEPS", "steps": [{"uuid": "w-search", "items": [queries]}]}}]}
        yield {**self.common("PENDING"), "blocks": patched(
            {"op": "add", "path": "/steps/0/items/1", "value": sources},
            {"op": "add", "path": "/steps/1", "value": {"uuid": "w-think", "items": [thinking]}})}
        yield {**self.common("PENDING"), "blocks": patched(
            {"op": "add", "path": "/steps/2", "value": {"uuid": "w-answer", "items": [answer_item([], True)]}})}
        where = "/steps/2/items/0/payload/text_payload"
        for index in range(self.streamed):
            yield {**self.common("PENDING"), "blocks": patched(
                {"op": "add", "path": f"{where}/chunks/{index}", "value": self.pieces[index]},
                {"op": "replace", "path": f"{where}/text", "value": "".join(self.pieces[: index + 1])})}
        closing = [] if self.config.early_final else [{"op": "replace", "path": f"{where}/is_streaming", "value": False}]
        yield {**self.common("PENDING", final=True), "blocks": patched(*closing) if closing else []}
        yield {**self.common("COMPLETED", completed=True), "blocks": [{"intended_usage": "workflow_root",
            "workflow_block": {"status": "WORKFLOW_COMPLETED", "steps": [
                {"uuid": "w-search", "items": [queries, sources]},
                {"uuid": "w-think", "items": [thinking]},
                {"uuid": "w-answer", "items": [answer_item(list(self.pieces), False)]}]}}]}


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


class _BadRequest(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class PerplexityEmulator(Listening):
    """The ask endpoint's server on this asyncio loop.  ``await start()`` returns its base URL."""

    def __init__(self, config: PerplexityEmulatorConfig | None = None) -> None:
        self.config = config if config is not None else PerplexityEmulatorConfig()
        self._runner: web.AppRunner | None = None
        self._threads: dict[str, _Thread] = {}  # backend_uuid of any answer -> its thread
        self._cookies: set[str] = set()  # the __cf_bm values handed out
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, *, certfile: str | None = None, keyfile: str | None = None
    ) -> str:
        """Listen on ``host:port`` (0 = a free port), with TLS when ``certfile`` is given."""
        if self._runner is not None:
            raise RuntimeError("the emulator is already running")
        app = web.Application()
        app.router.add_get("/api/auth/session", self._session)
        app.router.add_get("/search/new", self._session)
        app.router.add_get("/rest/models/config/v2", self._catalog)
        app.router.add_post("/rest/sse/perplexity_ask", self._ask)
        self._runner = await self._listen(app, host, port, certfile, keyfile)
        return self.url

    async def stop(self) -> None:
        """Stop answering, close the listening socket; leave no task behind."""
        runner = self._runner
        if runner is None:
            return
        self._runner = None
        pending = [task for task in self._tasks if not task.done()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await runner.cleanup()
        self._threads.clear()
        self._cookies.clear()
        self._url = None
        self._port = None

    async def __aenter__(self) -> PerplexityEmulator:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- handlers -------------------------------------------------------------------------------

    def _guarded(self, step: str) -> web.Response | None:
        cfg = self.config
        if cfg.redirect in (step, "all"):
            return web.Response(status=cfg.redirect_status, text="<html><body>Moved</body></html>\n",
                                content_type="text/html", headers={"Location": cfg.redirect_to})
        if cfg.rate_limit in (step, "all"):
            headers = {} if cfg.retry_after is None else {"Retry-After": cfg.retry_after}
            return web.json_response({"detail": {"error_code": "RATE_LIMITED", "message": "Too many requests"}},
                                     status=429, headers=headers)
        if cfg.cloudflare in (step, "all"):
            return web.Response(status=403, text=CLOUDFLARE_HTML, content_type="text/html", charset="UTF-8",
                                headers={"Server": "cloudflare", "CF-RAY": "8f0e0d0c0b0a0908-AMS",
                                         "cf-mitigated": "challenge", "Cache-Control": _NO_STORE})
        return None

    async def _session(self, request: web.Request) -> web.Response:
        guarded = self._guarded("session")
        if guarded is not None:
            return guarded
        if request.path == "/search/new":
            response = web.Response(text="<!DOCTYPE html><html><head><title>Perplexity</title></head>"
                                         "<body></body></html>\n", content_type="text/html", charset="UTF-8")
        else:
            response = web.json_response({})
        bm = secrets.token_urlsafe(32)
        self._cookies.add(bm)
        response.set_cookie(SESSION_COOKIE, bm, path="/", httponly=True, max_age=1800)
        response.set_cookie(CSRF_COOKIE, f"{secrets.token_hex(32)}%7C{secrets.token_hex(32)}", path="/",
                            httponly=True, samesite="Lax")
        response.headers["Cache-Control"] = _NO_STORE
        return response

    async def _catalog(self, request: web.Request) -> web.Response:
        guarded = self._guarded("catalog")
        if guarded is not None:
            return guarded
        return web.json_response(CATALOG)

    async def _ask(self, request: web.Request) -> web.StreamResponse:
        guarded = self._guarded("ask")
        if guarded is not None:
            return guarded
        if self.config.require_cookie and request.cookies.get(SESSION_COOKIE) not in self._cookies:
            got = request.cookies.get(SESSION_COOKIE)
            return web.json_response({"detail": f"expected the cookie {SESSION_COOKIE} set by GET "
                                                f"/api/auth/session, got {'none' if got is None else repr(got)}"},
                                     status=403)
        token = self.config.session_token
        if token is not None and request.cookies.get(TOKEN_COOKIE) != token:
            got = "none" if TOKEN_COOKIE not in request.cookies else "another value"
            return web.json_response({"detail": f"expected the session token in the cookie {TOKEN_COOKIE} "
                                                f"(signed in), got {got}: missing or expired"}, status=401)
        try:
            ask = await self._read_ask(request)
        except _BadRequest as exc:
            return web.json_response({"detail": exc.detail}, status=exc.status)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            return await self._stream(request, ask)
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def _read_ask(self, request: web.Request) -> _Ask:
        if request.content_type != "application/json":
            raise _BadRequest(415, f"expected Content-Type application/json, got {request.content_type!r}")
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError) as exc:
            raise _BadRequest(400, f"expected a JSON body, got invalid JSON ({exc})") from None
        if not isinstance(body, dict):
            raise _BadRequest(400, f"expected a JSON object, got {type(body).__name__}")
        query, params = body.get("query_str"), body.get("params")
        if not isinstance(query, str) or not query:
            raise _BadRequest(400, f"expected query_str, a non-empty string, got {query!r}")
        if not isinstance(params, dict):
            raise _BadRequest(400, f"expected params, an object, got {params!r}")
        for name in ("version", "model_preference", "mode"):
            if name in params and not isinstance(params[name], str):
                raise _BadRequest(400, f"expected params.{name}, a string, got {params[name]!r}")
        if "version" not in params:
            raise _BadRequest(400, "expected params.version (e.g. \"2.18\"), got none")
        last = params.get("last_backend_uuid")
        source = params.get("query_source")
        if last is None:
            if source == "followup":
                raise _BadRequest(400, "expected last_backend_uuid with query_source \"followup\", got none")
            thread = _Thread(_slug(query), str(uuid.uuid4()), str(uuid.uuid4()))
        else:
            known = self._threads.get(last) if isinstance(last, str) else None
            if known is None:
                raise _BadRequest(400, f"expected last_backend_uuid naming an earlier answer, got {last!r}")
            token = params.get("read_write_token")
            if token is not None and token != known.read_write_token:
                raise _BadRequest(403, f"expected the read_write_token of thread {known.slug}, got {token!r}")
            if source is not None and source != "followup":
                raise _BadRequest(400, f"expected query_source \"followup\" on a follow-up, got {source!r}")
            thread = known
        backend_uuid = str(uuid.uuid4())
        thread.answers.append(backend_uuid)
        self._threads[backend_uuid] = thread
        model = params.get("model_preference") or "turbo"
        frontend = params.get("frontend_uuid")
        return _Ask(query=query, model=model, mode=params.get("mode") or "concise", asked_mode=params.get("mode"),
                    frontend_uuid=frontend if isinstance(frontend, str) else None,
                    thread=thread, backend_uuid=backend_uuid)

    async def _stream(self, request: web.Request, ask: _Ask) -> web.StreamResponse:
        cfg = self.config
        eol = "\r\n" if cfg.line_ending == "crlf" else "\n"
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                               "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        compressor = None
        if cfg.gzip and "gzip" in request.headers.get("Accept-Encoding", "").lower():
            compressor = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
            response.headers["Content-Encoding"] = "gzip"
        response.enable_chunked_encoding()
        await response.prepare(request)

        async def send(text: str) -> None:
            data = text.encode()
            if compressor is not None:
                data = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
            size = cfg.write_size or len(data) or 1
            for start in range(0, len(data), size):
                await response.write(data[start : start + size])

        def event(name: str, data: dict[str, Any]) -> str:
            if not cfg.extras:
                return f"event: {name}{eol}data: {json.dumps(data)}{eol}{eol}"
            lines = json.dumps(data, indent=1).split("\n")
            return f": keep-alive{eol}event: {name}{eol}" + "".join(f"data: {line}{eol}" for line in lines) + eol

        if cfg.extras:
            await send(f"retry: 3000{eol}{eol}")
        frames = _Frames(cfg, ask)
        for sent, frame in enumerate(frames):
            if cfg.drop_after is not None and sent >= cfg.drop_after:
                if request.transport is not None:
                    request.transport.close()  # what was written still leaves; no end follows
                return response
            if cfg.fail is not None and sent >= cfg.fail_after:
                await send(event("message", frames.failed(cfg.fail)))
                break
            if cfg.frame_delay:
                await asyncio.sleep(cfg.frame_delay)
            await send(event("message", frame))
        await send(f"event: end_of_stream{eol}data: {{}}{eol}{eol}")
        if compressor is not None:
            await response.write(compressor.flush())
        await response.write_eof()
        return response


# --------------------------------------------------------------------------------------------
# Running it: in a thread, or in the foreground
# --------------------------------------------------------------------------------------------


class PerplexityEmulatorThread(ServerThread):
    """An :class:`PerplexityEmulator` on its own asyncio loop in a daemon thread (see :class:`~.emulator.ServerThread`)."""

    def __init__(
        self,
        config: PerplexityEmulatorConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        certfile: str | None = None,
        keyfile: str | None = None,
    ) -> None:
        self.config = config if config is not None else PerplexityEmulatorConfig()
        super().__init__(lambda: PerplexityEmulator(self.config), name="plabs-perplexity-emulator", host=host, port=port,
                         certfile=certfile, keyfile=keyfile)


def run(
    config: PerplexityEmulatorConfig | None,
    host: str = "127.0.0.1",
    port: int = 0,
    certfile: str | None = None,
    keyfile: str | None = None,
) -> None:
    """Serve in the foreground until Ctrl-C; prints one line with the URL."""
    run_server(lambda: PerplexityEmulator(config), "Perplexity emulator", host, port, certfile, keyfile)
