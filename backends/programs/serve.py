"""``plabs serve``: run the OpenAI-compatible gateway (:mod:`plabs_proto.backends.programs.gateway`).

    plabs serve [--service labs|perplexity] [--host 127.0.0.1] [--port 8000] [--server URL | --emulator]
                [--backend asyncio|trio|curl] [--transport T] [--proxy URL] [--cafile PEM]
                [--api-key KEY] [--max-sessions N] [--warm N] [--timeout S] [--any-model] [--quiet]
                [--max-threads N] [--thread-age S] [--mode MODE] [--live-models]

``--service labs`` (the default) serves Perplexity Labs over Socket.IO;
``--service perplexity`` the ask endpoint that answers today (``POST
/rest/sse/perplexity_ask``), where a conversation's next turn continues the
thread of the answer this gateway gave (see the gateway's ``ThreadCache``).

With the asyncio backend (the default) uvicorn serves the app; with ``trio``,
hypercorn's trio worker does (the ``gateway-trio`` extra).  The command binds to
127.0.0.1 unless told otherwise, prints its base URL alone on the first line of
standard output once it listens, logs one line per request on standard error
(method, path, status, seconds, model; ``--quiet``: none), and on Ctrl-C (or
SIGTERM) ends every open stream at once (with an error event), closes their
sessions, the warm pool and the kept threads, and exits with status 0.

This module only parses and starts: it imports Starlette and the ASGI servers
when the command runs, so ``plabs`` works without the ``gateway`` extra.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from plabs_proto.perplexity.request import DEFAULT_MODE, MODES

from .arguments import count, port, proxy, seconds

__all__ = ["add_serve_command", "serve"]

_EXTRA = "pip install 'plabs-proto[gateway]'"
_TRIO_EXTRA = "pip install 'plabs-proto[gateway-trio]'"


def add_serve_command(commands: Any) -> argparse.ArgumentParser:
    """Add ``serve`` to the ``plabs`` subcommands (``commands`` is ``add_subparsers()``'s result)."""
    sub: argparse.ArgumentParser = commands.add_parser(
        "serve",
        help="serve an OpenAI-compatible API (/v1/chat/completions, /v1/responses) backed by Perplexity",
        description="Serve OpenAI's chat completions and responses APIs, answered by Perplexity Labs (--service "
        "labs, the default) or Perplexity's SSE ask endpoint (--service perplexity), until Ctrl-C (prints its base "
        "URL on one line).",
    )
    sub.add_argument("--service", choices=("labs", "perplexity"), default="labs",
                     help="labs (default): the Socket.IO service; perplexity: POST /rest/sse/perplexity_ask, "
                     "the endpoint that answers today")
    sub.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: 127.0.0.1)")
    sub.add_argument("--port", type=port, default=8000, help="default: 8000 (0: a free port)")
    sub.add_argument("--server", default=None, metavar="URL", help="the server (default https://www.perplexity.ai)")
    sub.add_argument("--emulator", action="store_true", help="answer from a local emulator started in-process")
    sub.add_argument("--backend", default="asyncio", choices=("asyncio", "trio", "curl"), help="default: asyncio")
    sub.add_argument("--transport", default="upgrade", choices=("upgrade", "websocket", "polling"),
                     help="default: upgrade")
    sub.add_argument("--proxy", type=proxy, default=None, metavar="URL",
                     help="http://[user:pass@]host:port or socks5://...")
    sub.add_argument("--cafile", default=None, metavar="PEM", help="trust these CA certificates instead")
    sub.add_argument("--api-key", default=None, metavar="KEY",
                     help="require 'Authorization: Bearer KEY' (default: $PLABS_API_KEY, else no key)")
    sub.add_argument("--max-sessions", type=count, default=0, metavar="N",
                     help="answer 429 beyond N requests at once (default 0: no limit)")
    sub.add_argument("--warm", type=count, default=0, metavar="N", help="keep N Labs sessions connected, ready")
    sub.add_argument("--timeout", type=seconds, default=None, metavar="S",
                     help="deadline of each Labs query in seconds (default 300)")
    sub.add_argument("--any-model", action="store_true",
                     help="pass any model id on to Labs (default: 404 model_not_found for ids `plabs models` "
                     "does not list)")
    sub.add_argument("--mode", choices=MODES, default=None,
                     help="--service perplexity: the ask mode of a request that names none (default: "
                     f"{DEFAULT_MODE}); a request may name its own in a 'mode' field")
    sub.add_argument("--live-models", action="store_true",
                     help="--service perplexity: serve the service's own model catalog (asked as the gateway "
                     "starts) instead of the built-in list")
    sub.add_argument("--quiet", action="store_true", help="no access log (one line per request on stderr)")
    sub.add_argument("--max-threads", type=count, default=None, metavar="N",
                     help="--service perplexity: keep at most N threads for conversations to continue (default 256)")
    sub.add_argument("--thread-age", type=seconds, default=None, metavar="S",
                     help="--service perplexity: keep each thread S seconds after its answer (default 3600)")
    sub.set_defaults(run=_cmd_serve, parser=sub)
    return sub


def _error(message: str) -> int:
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"plabs: error: {' '.join(message.split())}\n")
        sys.stderr.flush()
    return 1


def _cmd_serve(args: argparse.Namespace, printer: Any) -> int:
    if args.emulator and args.server is not None:
        args.parser.error("--emulator and --server cannot be used together")
    try:
        from . import gateway
    except ImportError as exc:
        return _error(f"plabs serve needs starlette and uvicorn ({_EXTRA}): {exc}")
    api_key = args.api_key if args.api_key is not None else os.environ.get("PLABS_API_KEY") or None
    settings: dict[str, Any] = {
        "service": args.service,
        "backend": args.backend,
        "transport": args.transport,
        "proxy": args.proxy,
        "cafile": args.cafile,
        "api_key": api_key,
        "max_sessions": args.max_sessions,
        "warm": args.warm,
        "any_model": args.any_model,
        "live_models": args.live_models,
        "mode": args.mode,
    }
    if args.timeout is not None:
        settings["timeout"] = args.timeout
    if args.max_threads is not None:
        settings["max_threads"] = args.max_threads
    if args.thread_age is not None:
        settings["thread_age"] = args.thread_age
    emulator: Any = None
    try:
        if args.emulator:
            try:
                from .emulator import EmulatorConfig, EmulatorThread
                from .emulator_perplexity import PerplexityEmulatorThread
            except ImportError as exc:
                return _error(f"the emulator needs python-socketio and aiohttp (pip install "
                              f"'plabs-proto[emulator]'): {exc}")
            for name in ("aiohttp.access", "aiohttp.server", "aiohttp.web", "engineio.server", "socketio.server"):
                logging.getLogger(name).setLevel(logging.CRITICAL + 1)
            if args.service == "perplexity":
                emulator = PerplexityEmulatorThread(host="127.0.0.1", port=0)
            else:
                emulator = EmulatorThread(EmulatorConfig(), host="127.0.0.1", port=0)
            emulator.start()
            settings["server"] = emulator.url
        elif args.server is not None:
            settings["server"] = args.server
        try:
            config = gateway.GatewayConfig(**settings)
            _access_log(quiet=args.quiet)
            serve(config, host=args.host, port=args.port)
        except gateway.GatewayError as exc:
            return _error(str(exc))
        except OSError as exc:
            return _error(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
    finally:
        if emulator is not None:
            emulator.stop()
    return 0


def _access_log(*, quiet: bool) -> None:
    """The access log on standard error (one line a request, with the time), unless ``quiet``."""
    access = logging.getLogger("plabs_proto.gateway.access")
    access.propagate = False
    if quiet:
        access.setLevel(logging.WARNING)
        return
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter("%(asctime)sZ %(message)s", "%Y-%m-%dT%H:%M:%S")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    access.addHandler(handler)
    access.setLevel(logging.INFO)


def _listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (its real port tells where a port of 0 went)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock


def _base_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/v1"


def serve(
    config: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Serve the gateway in the foreground until Ctrl-C or SIGTERM.

    ``announce`` gets the base URL (``http://HOST:PORT/v1``) once the gateway
    listens (default: print it alone on a line).  Raises :class:`~plabs_proto.backends.programs.gateway.GatewayError`
    for a configuration that cannot work and ``OSError`` when it cannot listen.
    """
    from .gateway import check_config

    check_config(config)
    if announce is None:
        def announce(line: str) -> None:
            print(line, flush=True)

    sock = _listen(host, port)
    try:
        line = _base_url(sock)
        if config.backend == "trio":
            _serve_trio(config, sock, lambda: announce(line))
        else:
            _serve_asyncio(config, sock, lambda: announce(line))
    finally:
        sock.close()


def _serve_asyncio(config: Any, sock: socket.socket, ready: Callable[[], None]) -> None:
    import asyncio

    import uvicorn

    from .gateway import begin_shutdown, create_app

    app = create_app(config)

    class Server(uvicorn.Server):
        """uvicorn's server with our signal handling: the first Ctrl-C (or SIGTERM) ends the open
        streams and stops gracefully, a second one forces the exit.  (uvicorn's own handling
        raises the signal again once stopped, which asyncio.run turns into a KeyboardInterrupt
        in the middle of the lifespan shutdown.)"""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            loop = asyncio.get_running_loop()
            handled = (signal.SIGINT, signal.SIGTERM)
            for sig in handled:
                loop.add_signal_handler(sig, self.stop)
            try:
                yield
            finally:
                for sig in handled:
                    loop.remove_signal_handler(sig)

        def stop(self) -> None:
            if self.should_exit:
                self.force_exit = True
            self.should_exit = True
            begin_shutdown(app)

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if not self.should_exit:
                ready()

    server = Server(uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=5,
        server_header=False,
    ))
    server.run(sockets=[sock])


def _serve_trio(config: Any, sock: socket.socket, ready: Callable[[], None]) -> None:
    try:
        import trio
        from hypercorn.config import Config
        from hypercorn.trio import serve as hypercorn_serve
    except ImportError as exc:
        from .gateway import GatewayError

        raise GatewayError(f"--backend trio serves with hypercorn on trio ({_TRIO_EXTRA}): {exc}") from None
    from .gateway import begin_shutdown, create_app

    app = create_app(config)
    hconfig = Config()
    hconfig.bind = [f"fd://{sock.detach()}"]  # hypercorn owns the socket now (it closes it)
    hconfig.graceful_timeout = 5.0
    hconfig.accesslog = None
    hconfig.errorlog = logging.getLogger("plabs_proto.gateway.hypercorn")

    async def main() -> None:
        async def stop_on_signal() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    begin_shutdown(app)
                    return

        ready()
        await hypercorn_serve(app, hconfig, shutdown_trigger=stop_on_signal)  # type: ignore[arg-type]

    with contextlib.suppress(KeyboardInterrupt):
        trio.run(main)
