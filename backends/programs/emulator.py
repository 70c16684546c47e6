"""A local Perplexity Labs server for tests and demos (python-socketio + aiohttp).

It speaks the Labs protocol of ``/work/shared/protocol.md`` through python-socketio, an
independent Socket.IO implementation, served by aiohttp on a real socket.  It keeps the
"python flavour" of python-engineio: the polling POST is answered ``OK`` and a NOOP (``6``)
is queued right after ``3probe``.

Switches (:class:`EmulatorConfig`) cover the answer text and pacing, answers without
reasoning or rewritten at the end, short heartbeats, TLS, a failure frame, an abrupt drop
mid-answer, silence, a cookie every request must bring back, and what a moved or guarded
service answers instead of Engine.IO: a redirect, a 429 or Cloudflare's rate-limit page (error
1015), Cloudflare's 403 challenge page and an HTML login page, each at a chosen step of the
handshake.

Two deliberate departures from stock python-engineio 4.x: the open packet advertises the real
``pingInterval`` for fractional seconds (stock sends ``int(seconds) * 1000``, i.e. ``0`` for
0.2 s), and a polling client's CLOSE ends its pending long-poll GET at once (stock holds it
until the poll timeout).

Three ways to run it: ``async with Emulator(cfg) as em`` on the caller's asyncio loop,
:class:`EmulatorThread` (its own loop in a daemon thread, for sync and trio tests) and
:func:`run` (foreground, used by ``plabs emulator``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qs

import engineio
import socketio
from aiohttp import web
from engineio import packet as eio_packet

__all__ = [
    "ALLOWED_ORIGIN",
    "CLOUDFLARE_HTML",
    "DEFAULT_JWT",
    "GUARD_STEPS",
    "LOGIN_HTML",
    "RATE_LIMIT_HTML",
    "REASONING_MODELS",
    "Emulator",
    "EmulatorConfig",
    "EmulatorThread",
    "build_output",
    "default_answer",
    "default_citations",
    "default_reasoning",
    "run",
    "validate_request",
]

ALLOWED_ORIGIN = "https://labs.perplexity.ai"
DEFAULT_JWT = "anonymous-ask-user"
QUERY_EVENT = "perplexity_labs"
#: Models whose output carries the chain of thought inline between ``<think>`` and ``</think>``.
REASONING_MODELS = frozenset({"r1-1776", "sonar-reasoning", "sonar-reasoning-pro"})
#: The model whose output lacks the opening ``<think>`` (protocol.md §2.3).
NO_OPENING_THINK = "r1-1776"
SONAR_CITATIONS = (
    "https://example.com/labs-emulator/source-1",
    "https://example.org/labs-emulator/source-2",
)
_ROLES = ("user", "assistant", "system")
_FLUSH_TIMEOUT = 1.0  # seconds a drop waits for already emitted frames to leave

#: A Cloudflare-style challenge page (the markers clients look for: title, ``cf-please-wait``).
CLOUDFLARE_HTML = (
    '<!DOCTYPE html><html lang="en-US"><head><title>Just a moment...</title>'
    '<meta http-equiv="Content-Type" content="text/html; charset=UTF-8">'
    '<meta name="robots" content="noindex,nofollow"></head>'
    '<body><div class="main-wrapper" role="main"><div class="main-content">'
    '<h1 class="zone-name-title h1">www.perplexity.ai</h1>'
    '<div id="cf-please-wait"><p>Verifying you are human. This may take a few seconds.</p></div>'
    "<noscript>Enable JavaScript and cookies to continue</noscript>"
    "</div></div></body></html>\n"
)
#: ``name=value`` as RFC 6265 allows it in a Set-Cookie (a token, then cookie-octets).
_COOKIE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+=[!#-+\--:<-\[\]-~]*")
#: Cloudflare's rate-limit page, error 1015 (the markers clients look for: the code, the headline).
RATE_LIMIT_HTML = (
    '<!DOCTYPE html><html lang="en-US"><head><title>Access denied | www.perplexity.ai used Cloudflare to '
    "restrict access</title></head><body><div id=\"cf-wrapper\"><div id=\"cf-error-details\">"
    '<h1><span class="cf-error-type">Error</span> <span class="cf-error-code">1015</span></h1>'
    '<h2 class="cf-subheadline">You are being rate limited</h2>'
    "<p>The owner of this website (www.perplexity.ai) has banned you temporarily from accessing this website.</p>"
    '<p>Cloudflare Ray ID: <strong class="font-semibold">8f0e0d0c0b0a0908</strong></p>'
    "</div></div></body></html>\n"
)
#: A login page, as a site answers a path that wants a signed-in user.
LOGIN_HTML = (
    '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Sign in - Perplexity</title></head>'
    '<body><form method="post" action="/login"><input name="email" type="email">'
    '<button type="submit">Continue with email</button></form></body></html>\n'
)
#: The handshake steps a guard switch can answer: "polling" (the GET that opens the session), "post"
#: (the polling POSTs), "poll" (the long-polling GETs after it), "upgrade" (the WebSocket), "all".
GUARD_STEPS = ("polling", "post", "poll", "upgrade", "all")
_REDIRECT_STATUSES = (301, 302, 303, 307, 308)
_RATE_LIMIT_PAGES = ("plain", "cloudflare")


@dataclass
class EmulatorConfig:
    """What the emulator answers and which faults it injects.

    Times are in seconds.  ``answer``/``reasoning`` of ``None`` mean a deterministic default
    text built from the prompt; ``citations`` of ``None`` means a couple of example URLs for
    ``sonar*`` models and ``[]`` for the others.

    ``no_reasoning`` sends the answer alone, with no ``<think>...</think>``, for every
    model (a short ``r1-1776`` answer, or a server that sends no reasoning).
    ``final_output``, when set, is the ``output`` of the final frame instead of the
    streamed one: a server that rewrites its answer at the end.
    ``cookie``, when set (``"name=value"``, like Cloudflare's ``__cf_bm``), is set on the
    handshake response (the open packet's, or the 101 of a WebSocket-only session), and
    every later request of a session (polls, POSTs, the upgrade) that does not bring it
    back in its ``Cookie`` header is refused with 403.

    The guard switches answer a step of the handshake (one of :data:`GUARD_STEPS`) as a
    moved or guarded service would, instead of with Engine.IO; when several apply, the
    first in this order answers:

    * ``redirect``: ``redirect_status`` (302 by default; 301, 303, 307, 308) with
      ``Location: redirect_to``;
    * ``rate_limit``: 429 with ``Retry-After: retry_after`` (no header when None), and
      a short text (``rate_limit_page="plain"``) or Cloudflare's error 1015 page
      (``"cloudflare"``, :data:`RATE_LIMIT_HTML`);
    * ``cloudflare``: Cloudflare's 403 "Just a moment..." challenge with
      ``cf-mitigated: challenge`` (:data:`CLOUDFLARE_HTML`);
    * ``login_page``: 200 ``text/html``, a login page (:data:`LOGIN_HTML`).
    """

    answer: str | None = None
    reasoning: str | None = None
    no_reasoning: bool = False
    final_output: str | None = None
    chunk_size: int = 8
    frame_delay: float = 0.01
    ping_interval: float = 25.0
    ping_timeout: float = 20.0
    max_payload: int = 1_000_000
    fail: str | None = None
    fail_after: int = 0
    drop_after: int | None = None
    silent: bool = False
    cloudflare: str | None = None
    redirect: str | None = None
    redirect_to: str = "https://www.perplexity.ai/"
    redirect_status: int = 302
    rate_limit: str | None = None
    rate_limit_page: str = "plain"
    retry_after: str | None = "30"
    login_page: str | None = None
    not_found: bool = False
    citations: list[Any] | None = None
    check_origin: bool = True
    jwt: str = DEFAULT_JWT
    cookie: str | None = None

    def __post_init__(self) -> None:
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {self.chunk_size!r}")
        if self.frame_delay < 0:
            raise ValueError(f"frame_delay must be >= 0, got {self.frame_delay!r}")
        if self.ping_interval <= 0 or self.ping_timeout <= 0:
            raise ValueError(
                f"ping_interval and ping_timeout must be > 0, got {self.ping_interval!r}, {self.ping_timeout!r}"
            )
        if self.fail_after < 0:
            raise ValueError(f"fail_after must be >= 0, got {self.fail_after!r}")
        if self.drop_after is not None and self.drop_after < 0:
            raise ValueError(f"drop_after must be None or >= 0, got {self.drop_after!r}")
        for name in ("cloudflare", "redirect", "rate_limit", "login_page"):
            step = getattr(self, name)
            if step is not None and step not in GUARD_STEPS:
                raise ValueError(f"{name} must be None or one of {GUARD_STEPS!r}, got {step!r}")
        if self.redirect_status not in _REDIRECT_STATUSES:
            raise ValueError(f"redirect_status must be one of {_REDIRECT_STATUSES!r}, got {self.redirect_status!r}")
        if self.rate_limit_page not in _RATE_LIMIT_PAGES:
            raise ValueError(f"rate_limit_page must be one of {_RATE_LIMIT_PAGES!r}, got {self.rate_limit_page!r}")
        for name in ("redirect_to", "retry_after"):
            value = getattr(self, name)
            if value is not None and any(char in value for char in "\r\n\0"):
                raise ValueError(f"{name} must be one header line, got {value!r}")
        if self.cookie is not None and not _COOKIE.fullmatch(self.cookie):
            raise ValueError(f"cookie must be name=value (a token and cookie-octets), got {self.cookie!r}")


# --------------------------------------------------------------------------------------------
# Answer text (pure functions, shared by the emulator and the tests)
# --------------------------------------------------------------------------------------------


def _prompt(messages: list[dict[str, Any]]) -> str:
    """The content of the last user message (or of the last message)."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return str(message.get("content", ""))
    return str(messages[-1].get("content", "")) if messages else ""


def _excerpt(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def default_answer(model: str, prompt: str) -> str:
    """The deterministic answer used when ``EmulatorConfig.answer`` is ``None``."""
    return (
        f"This is the plabs-proto Labs emulator answering as {model}. "
        f"You asked: \u201c{_excerpt(prompt)}\u201d. "
        "A real Perplexity Labs model would answer here; this text is fixed so tests can check it. "
        "It arrives in small cumulative chunks, like the real service."
    )


def default_reasoning(model: str, prompt: str) -> str:
    """The deterministic thinking text used when ``EmulatorConfig.reasoning`` is ``None``."""
    return (
        f"The user asked: \u201c{_excerpt(prompt, 80)}\u201d. "
        f"I am {model} in the emulator, so I will answer briefly and plainly."
    )


def default_citations(model: str) -> list[Any]:
    """Example citations for ``sonar*`` models, none for the others."""
    return list(SONAR_CITATIONS) if model.startswith("sonar") else []


def build_output(model: str, answer: str, reasoning: str) -> str:
    """The full ``output`` text of a completed answer for ``model``.

    Reasoning models wrap their thinking in ``<think>...</think>`` followed by a blank line;
    ``r1-1776`` omits the opening tag.
    """
    if model not in REASONING_MODELS:
        return answer
    opening = "" if model == NO_OPENING_THINK else "<think>"
    return f"{opening}{reasoning}</think>\n\n{answer}"


def validate_request(args: tuple[Any, ...]) -> tuple[str, list[dict[str, Any]]] | str:
    """Check the arguments of a ``perplexity_labs`` event.

    Returns ``(model, messages)`` for a good request, else the text of the failure frame.
    """
    if len(args) != 1:
        return f"Invalid request: expected one request object, got {len(args)} arguments"
    request = args[0]
    if not isinstance(request, dict):
        return f"Invalid request: expected a JSON object, got {_short(request)}"
    for key in ("version", "source", "model", "messages"):
        if key not in request:
            return f"Invalid request: missing field {key!r}"
    for key in ("version", "source", "model"):
        if not isinstance(request[key], str) or not request[key]:
            return f"Invalid request: {key!r} must be a non-empty string, got {_short(request[key])}"
    messages = request["messages"]
    if not isinstance(messages, list) or not messages:
        return f"Invalid request: 'messages' must be a non-empty list, got {_short(messages)}"
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"Invalid request: messages[{index}] must be an object, got {_short(message)}"
        if message.get("role") not in _ROLES:
            return (
                f"Invalid request: messages[{index}].role must be one of {list(_ROLES)}, "
                f"got {_short(message.get('role'))}"
            )
        if not isinstance(message.get("content"), str):
            return (
                f"Invalid request: messages[{index}].content must be a string, "
                f"got {_short(message.get('content'))}"
            )
    return request["model"], messages


def _short(value: Any) -> str:
    return repr(value)[:60]


# --------------------------------------------------------------------------------------------
# Server plumbing
# --------------------------------------------------------------------------------------------


class _EngineServer(engineio.AsyncServer):  # type: ignore[misc]
    """python-engineio's server, with its background tasks tracked and the open packet fixed.

    * Every task it starts (ping timers, event handlers) is remembered so :meth:`Emulator.stop`
      can cancel it; nothing is left pending on the loop.
    * python-engineio computes ``pingInterval`` as ``int(seconds) * 1000``, which advertises
      ``0`` for a 0.2 s interval; the queued open packet is corrected before it is sent.
    * ``on_connect_hook`` sees the handshake so the emulator can find the TCP connection.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tracked_tasks: set[asyncio.Task[Any]] = set()
        self.on_connect_hook: Callable[[str, dict[str, Any]], None] | None = None

    def start_background_task(self, target: Any, *args: Any, **kwargs: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(target(*args, **kwargs))
        self.tracked_tasks.add(task)
        task.add_done_callback(self.tracked_tasks.discard)
        return task

    async def _trigger_event(self, event: str, *args: Any, **kwargs: Any) -> Any:
        if event == "connect" and len(args) == 2:
            sid, environ = args
            self._fix_open_packet(sid)
            if self.on_connect_hook is not None:
                self.on_connect_hook(sid, environ)
        result = await super()._trigger_event(event, *args, **kwargs)
        if event == "disconnect" and len(args) == 2 and args[1] == self.reason.CLIENT_DISCONNECT:
            # A polling client sent CLOSE: end its pending long-poll GET now (with an empty
            # body) instead of holding it until the poll timeout, as python-engineio would.
            sock = self.sockets.get(args[0])
            if sock is not None and not sock.upgraded:
                sock.queue.put_nowait(None)
        return result

    def _fix_open_packet(self, sid: str) -> None:
        sock = self.sockets.get(sid)
        if sock is None:
            return
        queue = sock.queue
        held = []
        while True:
            try:
                held.append(queue.get_nowait())
            except asyncio.QueueEmpty:
                break
            queue.task_done()
        for pkt in held:
            if pkt is not None and pkt.packet_type == eio_packet.OPEN and isinstance(pkt.data, dict):
                pkt.data["pingInterval"] = round(
                    (self.ping_interval + self.ping_interval_grace_period) * 1000
                )
            queue.put_nowait(pkt)


class _SocketServer(socketio.AsyncServer):  # type: ignore[misc]
    def _engineio_server_class(self) -> type[_EngineServer]:
        return _EngineServer


@dataclass
class _Session:
    """Per Socket.IO connection state: queries run one after another."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)


class Listening:
    """What both emulators share: where they listen (:attr:`url`, :attr:`port`) and how they start to."""

    _url: str | None = None
    _port: int | None = None

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:54321``."""
        if self._url is None:
            raise RuntimeError("the emulator is not running; call start() first")
        return self._url

    @property
    def port(self) -> int:
        """The TCP port the emulator listens on."""
        if self._port is None:
            raise RuntimeError("the emulator is not running; call start() first")
        return self._port

    async def _listen(
        self, app: web.Application, host: str, port: int, certfile: str | None, keyfile: str | None
    ) -> web.AppRunner:
        """Serve ``app`` on ``host:port`` (0 = a free port), with TLS when ``certfile`` is given; sets the URL."""
        if keyfile is not None and certfile is None:
            raise ValueError("keyfile given without certfile")
        ssl_context: ssl.SSLContext | None = None
        if certfile is not None:
            ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_context.load_cert_chain(certfile, keyfile)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.setblocking(False)
            await web.SockSite(runner, sock, ssl_context=ssl_context).start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        self._port = int(sock.getsockname()[1])
        shown = f"[{host}]" if ":" in host else host
        self._url = f"{'https' if ssl_context else 'http'}://{shown}:{self._port}"
        return runner


class Emulator(Listening):
    """A Labs server on this asyncio loop.  ``await start()`` returns its base URL."""

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config if config is not None else EmulatorConfig()
        self._runner: web.AppRunner | None = None
        self._sio: _SocketServer | None = None
        self._sessions: dict[str, _Session] = {}
        # Engine.IO sid -> TCP transports that carried requests of that session.
        self._transports: dict[str, set[asyncio.Transport]] = {}
        self._dropped: set[str] = set()
        self._ssl = False

    # -- public API --------------------------------------------------------------------------

    async def start(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        certfile: str | None = None,
        keyfile: str | None = None,
    ) -> str:
        """Listen on ``host:port`` (0 = a free port), with TLS when ``certfile`` is given."""
        if self._runner is not None:
            raise RuntimeError("the emulator is already running")
        cfg = self.config
        sio = _SocketServer(
            async_mode="aiohttp",
            cors_allowed_origins=[ALLOWED_ORIGIN] if cfg.check_origin else "*",
            ping_interval=cfg.ping_interval,
            ping_timeout=cfg.ping_timeout,
            max_http_buffer_size=cfg.max_payload,
            logger=False,
            engineio_logger=False,
        )
        sio.eio.on_connect_hook = self._on_engine_connect
        sio.on("connect", self._on_connect)
        sio.on("disconnect", self._on_disconnect)
        sio.on(QUERY_EVENT, self._on_query)
        app = web.Application(middlewares=[self._middleware])
        app.on_response_prepare.append(self._set_cookie)
        sio.attach(app, socketio_path="socket.io")
        runner = await self._listen(app, host, port, certfile, keyfile)
        self._sio = sio
        self._runner = runner
        self._ssl = certfile is not None
        return self.url

    async def stop(self) -> None:
        """Close every session and the listening socket; leave no task behind."""
        runner, sio = self._runner, self._sio
        if runner is None or sio is None:
            return
        self._runner = None
        self._sio = None
        eio: _EngineServer = sio.eio
        # 1. Stop streaming answers.
        for session in list(self._sessions.values()):
            for task in list(session.tasks):
                task.cancel()
        # 2. Close Engine.IO sessions: the CLOSE packet goes to whoever is listening, then
        #    pending polls and websocket writers are released.
        for sock in list(eio.sockets.values()):
            with contextlib.suppress(Exception):
                await sock.close(wait=False, abort=False)
            with contextlib.suppress(Exception):
                sock.queue.put_nowait(None)
        await asyncio.sleep(0)
        await sio.shutdown()
        # 3. Stop the web server (waits briefly for handlers, then cancels them).
        await runner.cleanup()
        # 4. Whatever python-engineio still has running (ping timers...) is cancelled.
        await _cancel_all(eio.tracked_tasks)
        for session in list(self._sessions.values()):
            await _cancel_all(session.tasks)
        eio.sockets.clear()
        self._sessions.clear()
        self._transports.clear()
        self._dropped.clear()
        self._url = None
        self._port = None

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- HTTP level ----------------------------------------------------------------------------

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if not request.path.startswith("/socket.io"):
            return await handler(request)
        query = parse_qs(request.query_string)
        sid = query.get("sid", [None])[0]
        transport = query.get("transport", ["polling"])[0]
        is_upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        step: str | None
        if transport == "websocket" or is_upgrade:
            step = "upgrade"
        elif sid is None:
            step = "polling" if request.method == "GET" else None
        else:
            step = "post" if request.method == "POST" else "poll"
        guarded = self._guarded(step)
        if guarded is not None:
            return guarded
        if sid is None and request.method == "GET" and transport == "polling" and self.config.not_found:
            return web.Response(status=404, text="Not Found", content_type="text/plain")
        if sid is not None:
            if self.config.cookie is not None and not self._has_cookie(request):
                return web.Response(
                    status=403, text=f"expected the cookie {self.config.cookie.split('=')[0]} back", content_type="text/plain"
                )
            tcp = request.transport
            if sid in self._dropped:
                if tcp is not None:
                    tcp.abort()
                return web.Response(status=400, text="dropped")  # never reaches the peer
            if tcp is not None:
                self._transports.setdefault(sid, set()).add(tcp)
            try:
                return await handler(request)
            except KeyError:
                # python-engineio raises KeyError("Session is disconnected") for a long-poll GET
                # still pending when its session closes (the client's close POST won the race).
                # Answer as Engine.IO does for a session it no longer knows.
                return web.json_response({"code": 1, "message": "Session ID unknown"}, status=400)
        return await handler(request)

    def _has_cookie(self, request: web.BaseRequest) -> bool:
        name, _, value = (self.config.cookie or "").partition("=")
        return request.cookies.get(name) == value

    async def _set_cookie(self, request: web.BaseRequest, response: web.StreamResponse) -> None:
        """Set the ``cookie`` switch's cookie on a session's handshake response (200, or 101)."""
        cookie = self.config.cookie
        if cookie is None or not request.path.startswith("/socket.io") or response.status not in (101, 200):
            return
        if "sid" not in parse_qs(request.query_string):
            secure = "; Secure" if self._ssl else ""
            response.headers.add("Set-Cookie", f"{cookie}; Path=/; HttpOnly{secure}; SameSite=None")

    def _guarded(self, step: str | None) -> web.Response | None:
        """What a guard switch answers at ``step`` of the handshake, or None to let Engine.IO answer."""
        cfg = self.config
        if step is None:
            return None
        if cfg.redirect in (step, "all"):
            return _redirect_response(cfg.redirect_status, cfg.redirect_to)
        if cfg.rate_limit in (step, "all"):
            return _rate_limit_response(cfg.rate_limit_page, cfg.retry_after)
        if cfg.cloudflare in (step, "all"):
            return _cloudflare_response()
        if cfg.login_page in (step, "all"):
            return web.Response(status=200, text=LOGIN_HTML, content_type="text/html", charset="UTF-8")
        return None

    def _on_engine_connect(self, eio_sid: str, environ: dict[str, Any]) -> None:
        request = environ.get("aiohttp.request")
        if isinstance(request, web.BaseRequest) and request.transport is not None:
            self._transports.setdefault(eio_sid, set()).add(request.transport)

    async def _drop(self, sid: str) -> None:
        """Abort the TCP connections of a session: no close frame, no Engine.IO close packet."""
        sio = self._sio
        if sio is None:
            return
        eio_sid = sio.manager.eio_sid_from_sid(sid, "/")
        if eio_sid is None:
            return
        sock = sio.eio.sockets.get(eio_sid)
        if sock is not None:
            # Let the frames already emitted reach the peer first (a pending poll or the
            # websocket writer takes them off the queue), so "after N frames" means N arrived.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(sock.queue.join(), _FLUSH_TIMEOUT)
            deadline = time.monotonic() + _FLUSH_TIMEOUT
            await asyncio.sleep(0.02)
            while time.monotonic() < deadline and any(
                tcp.get_write_buffer_size()
                for tcp in self._transports.get(eio_sid, set())
                if not tcp.is_closing()
            ):
                await asyncio.sleep(0.005)
        self._dropped.add(eio_sid)
        for tcp in self._transports.pop(eio_sid, set()):
            tcp.abort()
        if sock is not None:
            await sock.close(wait=False, abort=True)
            sock.queue.put_nowait(None)

    # -- Socket.IO level ---------------------------------------------------------------------

    async def _on_connect(self, sid: str, environ: dict[str, Any], auth: Any) -> None:
        if not isinstance(auth, dict) or auth.get("jwt") != self.config.jwt:
            raise socketio.exceptions.ConnectionRefusedError(
                f"not authorized: expected auth {{'jwt': {self.config.jwt!r}}}, got {_short(auth)}"
            )
        self._sessions[sid] = _Session()

    async def _on_disconnect(self, sid: str, reason: Any = None) -> None:
        session = self._sessions.pop(sid, None)
        if session is None:
            return
        current = asyncio.current_task()
        for task in session.tasks:
            if task is not current:
                task.cancel()
        sio = self._sio
        if sio is not None:
            eio_sid = sio.manager.eio_sid_from_sid(sid, "/")
            if eio_sid is not None:
                self._transports.pop(eio_sid, None)

    async def _on_query(self, sid: str, *args: Any) -> None:
        session = self._sessions.get(sid)
        task = asyncio.current_task()
        if session is None or task is None:
            return
        session.tasks.add(task)
        try:
            async with session.lock:
                await self._answer(sid, args)
        except asyncio.CancelledError:
            pass
        finally:
            session.tasks.discard(task)

    async def _answer(self, sid: str, args: tuple[Any, ...]) -> None:
        cfg = self.config
        if cfg.silent:
            return
        started = time.monotonic()
        checked = validate_request(args)
        if isinstance(checked, str):
            model = _model_of(args)
            await self._emit(sid, model, {"status": "failed", "text": checked})
            return
        model, messages = checked
        prompt = _prompt(messages)
        answer = cfg.answer if cfg.answer is not None else default_answer(model, prompt)
        reasoning = cfg.reasoning if cfg.reasoning is not None else default_reasoning(model, prompt)
        full = answer if cfg.no_reasoning else build_output(model, answer, reasoning)
        citations = list(cfg.citations) if cfg.citations is not None else default_citations(model)
        count = math.ceil(len(full) / cfg.chunk_size)
        for sent in range(count + 1):
            if cfg.drop_after is not None and sent == cfg.drop_after:
                await self._drop(sid)
                return
            if cfg.fail is not None and sent == cfg.fail_after:
                await self._emit(sid, model, {"status": "failed", "text": cfg.fail})
                return
            if sent == count:
                break
            if sent and cfg.frame_delay > 0:
                await asyncio.sleep(cfg.frame_delay)
            frame = {
                "output": full[: (sent + 1) * cfg.chunk_size],
                "final": False,
                "elapsed_time": _elapsed(started),
                "tokens_streamed": sent + 1,
            }
            await self._emit(sid, model, frame)
        if count and cfg.frame_delay > 0:
            await asyncio.sleep(cfg.frame_delay)
        final = {
            "output": full if cfg.final_output is None else cfg.final_output,
            "final": True,
            "status": "completed",
            "citations": citations,
            "elapsed_time": _elapsed(started),
            "tokens_streamed": count,
        }
        await self._emit(sid, model, final)

    async def _emit(self, sid: str, model: str, data: dict[str, Any]) -> None:
        sio = self._sio
        if sio is not None:
            await sio.emit(f"{model}_query_progress", data, to=sid)


def _model_of(args: tuple[Any, ...]) -> str:
    if args and isinstance(args[0], dict):
        model = args[0].get("model")
        if isinstance(model, str) and model:
            return model
    return "unknown"


def _elapsed(started: float) -> float:
    return round(time.monotonic() - started, 3)


def _cloudflare_response() -> web.Response:
    return web.Response(
        status=403,
        text=CLOUDFLARE_HTML,
        content_type="text/html",
        charset="UTF-8",
        headers={
            "Server": "cloudflare",
            "CF-RAY": "8f0e0d0c0b0a0908-AMS",
            "cf-mitigated": "challenge",
            "Cache-Control": "private, max-age=0, no-store, no-cache, must-revalidate",
        },
    )


def _redirect_response(status: int, location: str) -> web.Response:
    reason = {301: "Moved Permanently", 302: "Found", 303: "See Other", 307: "Temporary Redirect",
              308: "Permanent Redirect"}[status]
    return web.Response(
        status=status,
        text=f"<html><head><title>{status} {reason}</title></head><body><h1>{reason}</h1></body></html>\n",
        content_type="text/html",
        charset="UTF-8",
        headers={"Location": location},
    )


def _rate_limit_response(page: str, retry_after: str | None) -> web.Response:
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    if page == "cloudflare":
        headers.update({"Server": "cloudflare", "CF-RAY": "8f0e0d0c0b0a0908-AMS"})
        return web.Response(status=429, text=RATE_LIMIT_HTML, content_type="text/html", charset="UTF-8",
                            headers=headers)
    return web.Response(status=429, text="Too Many Requests", content_type="text/plain", headers=headers)


async def _cancel_all(tasks: set[asyncio.Task[Any]]) -> None:
    pending = [task for task in tasks if not task.done()]
    current = asyncio.current_task()
    pending = [task for task in pending if task is not current]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)


# --------------------------------------------------------------------------------------------
# Running it: in a thread, or in the foreground
# --------------------------------------------------------------------------------------------


class EmulatedServer(Protocol):
    """What an emulator offers: start listening (its URL), its port, stop."""

    @property
    def port(self) -> int: ...

    async def start(self, host: str, port: int, *, certfile: str | None, keyfile: str | None) -> str: ...

    async def stop(self) -> None: ...


_T = TypeVar("_T", bound="ServerThread")


class ServerThread:
    """An emulator (made by ``make``) on its own asyncio loop in a daemon thread named ``name``."""

    def __init__(
        self,
        make: Callable[[], EmulatedServer],
        *,
        name: str,
        host: str = "127.0.0.1",
        port: int = 0,
        certfile: str | None = None,
        keyfile: str | None = None,
    ) -> None:
        self._make = make
        self._name = name
        self._where = (host, port, certfile, keyfile)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._url: str | None = None
        self._port: int | None = None

    @property
    def url(self) -> str:
        """The base URL of the running emulator."""
        if self._url is None:
            raise RuntimeError("the emulator thread is not running; call start() first")
        return self._url

    @property
    def port(self) -> int:
        """The TCP port of the running emulator."""
        if self._port is None:
            raise RuntimeError("the emulator thread is not running; call start() first")
        return self._port

    def start(self, timeout: float = 10.0) -> str:
        """Start the thread and wait until the emulator listens; returns its URL."""
        if self._thread is not None:
            raise RuntimeError("the emulator thread is already running")
        self._ready.clear()
        self._error = None
        thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread = thread
        thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise RuntimeError(f"the emulator did not start within {timeout} s")
        if self._error is not None:
            error = self._error
            thread.join(timeout)
            self._thread = None
            raise error
        return self.url

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the emulator and join the thread (idempotent)."""
        thread = self._thread
        if thread is None:
            return
        loop, stop_event = self._loop, self._stop_event
        if loop is not None and stop_event is not None:
            with contextlib.suppress(RuntimeError):  # the loop may already be closed
                loop.call_soon_threadsafe(stop_event.set)
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError(f"the emulator thread did not stop within {timeout} s")
        self._thread = None
        self._url = None
        self._port = None

    def __enter__(self: _T) -> _T:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to start(); the thread must not die noisily
            if not self._ready.is_set():
                self._error = exc
                self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        server = self._make()
        host, port, certfile, keyfile = self._where
        try:
            self._url = await server.start(host, port, certfile=certfile, keyfile=keyfile)
            self._port = server.port
            self._ready.set()
            await self._stop_event.wait()
        finally:
            await server.stop()
            self._loop = None


def run_server(
    make: Callable[[], EmulatedServer], what: str, host: str = "127.0.0.1", port: int = 0,
    certfile: str | None = None, keyfile: str | None = None,
) -> None:
    """Serve the emulator ``make`` makes (on the loop) in the foreground until Ctrl-C; prints one line:
    ``what`` and the URL."""

    async def main() -> None:
        server = make()
        url = await server.start(host, port, certfile=certfile, keyfile=keyfile)
        print(f"{what} listening on {url} (Ctrl-C to stop)", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await server.stop()
            # A connection closed by the stop is closed for good by a callback the loop runs next
            # (connection_lost): let it run before asyncio.run closes the loop, or the socket is left
            # to the garbage collector (an "unclosed transport" warning when run inside a program).
            for _ in range(3):
                await asyncio.sleep(0)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())


class EmulatorThread(ServerThread):
    """An :class:`Emulator` on its own asyncio loop in a daemon thread (see :class:`ServerThread`)."""

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        certfile: str | None = None,
        keyfile: str | None = None,
    ) -> None:
        self.config = config if config is not None else EmulatorConfig()
        super().__init__(lambda: Emulator(self.config), name="plabs-emulator", host=host, port=port, certfile=certfile,
                         keyfile=keyfile)


def run(
    config: EmulatorConfig | None,
    host: str = "127.0.0.1",
    port: int = 0,
    certfile: str | None = None,
    keyfile: str | None = None,
) -> None:
    """Serve in the foreground until Ctrl-C; prints one line with the URL."""
    run_server(lambda: Emulator(config), "Perplexity Labs emulator", host, port, certfile, keyfile)
