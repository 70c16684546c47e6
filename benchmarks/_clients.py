"""The clients under test, each asking one question the way its users do.

Every ``ask_*`` function starts its clock right before the client is called and returns
``(seconds to the first non-empty answer text, the whole answer)``.  Async ones are
coroutines for their own event loop (asyncio or trio); ``run_once`` runs any of them from
plain code.

Kinds: ``plabs-<backend>-<transport>`` (backend asyncio, trio or sync; transport websocket,
upgrade or polling), ``python-socketio`` (its ``AsyncClient``, polling then upgrade, as by
default), ``python-socketio-ws`` (``transports=["websocket"]``) and ``seed`` (the seed
provider's flow on aiohttp, see seed_client.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from _common import JWT, MODEL, ORIGIN, PROMPT, VERSION, client_ssl_context

BACKENDS = ("asyncio", "trio", "sync")
TRANSPORTS = ("websocket", "upgrade", "polling")
Result = tuple[float, str]


def plabs_kinds(backends: tuple[str, ...] = BACKENDS, transports: tuple[str, ...] = TRANSPORTS) -> list[str]:
    return [f"plabs-{b}-{t}" for t in transports for b in backends]

async def _collect(
    ask: Callable[..., Any], url: str, transport: str, cafile: str | None, prompt: str, **options: Any
) -> Result:
    """Time an async ``ask``: seconds to its first non-empty text, and the whole answer.
    ``options``: more keywords for ``ask`` (e.g. ``permessage_deflate=False``)."""
    parts: list[str] = []
    first = 0.0
    start = time.perf_counter()
    answer = ask(prompt, model=MODEL, server=url, transport=transport, cafile=cafile, **options)
    async with contextlib.aclosing(answer):
        async for text in answer:
            if text and not parts:
                first = time.perf_counter() - start
            if text:
                parts.append(text)
    return first, "".join(parts)



async def ask_plabs_asyncio(
    url: str, transport: str, cafile: str | None, prompt: str = PROMPT, **options: Any
) -> Result:
    from plabs_proto.backends.asyncio import ask

    return await _collect(ask, url, transport, cafile, prompt, **options)


async def ask_plabs_trio(url: str, transport: str, cafile: str | None, prompt: str = PROMPT, **options: Any) -> Result:
    from plabs_proto.backends.trio import ask

    return await _collect(ask, url, transport, cafile, prompt, **options)


async def ask_plabs_curl(url: str, transport: str, cafile: str | None, prompt: str = PROMPT) -> Result:
    from plabs_proto.backends.curl import ask

    return await _collect(ask, url, transport, cafile, prompt)


def ask_plabs_sync(url: str, transport: str, cafile: str | None, prompt: str = PROMPT, **options: Any) -> Result:
    from plabs_proto.backends.sync import ask

    parts: list[str] = []
    first = 0.0
    start = time.perf_counter()
    answer = ask(prompt, model=MODEL, server=url, transport=transport, cafile=cafile, **options)
    with contextlib.closing(answer):
        for text in answer:
            if text and not parts:
                first = time.perf_counter() - start
            if text:
                parts.append(text)
    return first, "".join(parts)


async def ask_python_socketio(
    url: str, transports: list[str] | None, cafile: str | None, prompt: str = PROMPT
) -> Result:
    """python-socketio's AsyncClient: connect (jwt auth, Origin), emit, collect the progress events."""
    import aiohttp
    import socketio

    http: aiohttp.ClientSession | None = None
    if cafile is not None:  # the external session carries the CA for both polling and the WebSocket
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl_context(cafile)))
    sio = socketio.AsyncClient(http_session=http) if http is not None else socketio.AsyncClient()
    loop = asyncio.get_running_loop()
    done: asyncio.Future[str] = loop.create_future()
    first = 0.0
    seen = 0
    parts: list[str] = []

    async def on_progress(data: dict[str, Any]) -> None:
        nonlocal first, seen
        if data.get("status") == "failed":
            if not done.done():
                done.set_exception(RuntimeError(f"query failed: {data.get('text')!r}"))
            return
        output = data.get("output", "")
        if output and not first:
            first = time.perf_counter() - start
        parts.append(output[seen:])
        seen = len(output)
        if data.get("final") and not done.done():
            done.set_result("".join(parts))

    sio.on(f"{MODEL}_query_progress", on_progress)
    request = {"version": VERSION, "source": "default", "model": MODEL,
               "messages": [{"role": "user", "content": prompt}]}
    start = time.perf_counter()
    try:
        # wait_timeout: the default 1 s for the namespace ack is too short when 200 clients connect at once.
        await sio.connect(url, auth={"jwt": JWT}, headers={"Origin": ORIGIN}, transports=transports,
                          wait_timeout=30)
        await sio.emit("perplexity_labs", request)
        text = await asyncio.wait_for(done, 120)
    finally:
        await sio.disconnect()
        if http is not None:
            await http.close()
    return first, text


async def ask_seed(url: str, cafile: str | None, prompt: str = PROMPT) -> Result:
    from seed_client import seed_ask

    context = client_ssl_context(cafile) if cafile is not None else None
    parts: list[str] = []
    first = 0.0
    start = time.perf_counter()
    async for text in seed_ask(url, prompt, model=MODEL, ssl_context=context):
        if text and not parts:
            first = time.perf_counter() - start
        if text:
            parts.append(text)
    return first, "".join(parts)


async def ask_anyio(url: str, transport: str, cafile: str | None, prompt: str = PROMPT) -> Result:
    """The evaluated anyio backend (benchmarks/anyio_backend.py), on whichever loop runs it."""
    from anyio_backend import ask

    return await _collect(ask, url, transport, cafile, prompt)


def runner(kind: str, url: str, cafile: str | None, prompt: str = PROMPT) -> Callable[[], Result]:
    """A no-argument function asking once with client ``kind`` (from plain code)."""
    if kind.startswith("anyio-"):  # anyio-<loop>-<transport>: the evaluated anyio backend
        import anyio

        _, loop, transport = kind.split("-", 2)
        return lambda: anyio.run(ask_anyio, url, transport, cafile, prompt, backend=loop)
    if kind.startswith("plabs-"):
        _, backend, transport = kind.split("-", 2)
        if backend == "asyncio":
            return lambda: asyncio.run(ask_plabs_asyncio(url, transport, cafile, prompt))
        if backend == "trio":
            import trio

            return lambda: trio.run(ask_plabs_trio, url, transport, cafile, prompt)
        if backend == "sync":
            return lambda: ask_plabs_sync(url, transport, cafile, prompt)
        if backend == "curl":
            return lambda: asyncio.run(ask_plabs_curl(url, transport, cafile, prompt))
    if kind == "python-socketio":
        return lambda: asyncio.run(ask_python_socketio(url, None, cafile, prompt))
    if kind == "python-socketio-ws":
        return lambda: asyncio.run(ask_python_socketio(url, ["websocket"], cafile, prompt))
    if kind == "seed":
        return lambda: asyncio.run(ask_seed(url, cafile, prompt))
    raise ValueError(f"unknown client kind {kind!r}")


def asyncio_coroutine(kind: str, url: str, prompt: str = PROMPT, **options: Any) -> Callable[[], Awaitable[Result]]:
    """For the asyncio kinds: a factory of one-question coroutines (no TLS); ``options`` go to plabs' ``ask``."""
    if kind.startswith("plabs-asyncio-"):
        transport = kind.rsplit("-", 1)[1]
        return lambda: ask_plabs_asyncio(url, transport, None, prompt, **options)
    if kind.startswith("plabs-curl-"):
        transport = kind.rsplit("-", 1)[1]
        return lambda: ask_plabs_curl(url, transport, None, prompt)
    if kind == "python-socketio":
        return lambda: ask_python_socketio(url, None, None, prompt)
    if kind == "python-socketio-ws":
        return lambda: ask_python_socketio(url, ["websocket"], None, prompt)
    if kind == "seed":
        return lambda: ask_seed(url, None, prompt)
    raise ValueError(f"no asyncio coroutine for client kind {kind!r}")


def label(kind: str) -> str:
    if kind.startswith("plabs-"):
        _, backend, transport = kind.split("-", 2)
        return f"plabs-proto {backend:<7} {transport}"
    return {
        "python-socketio": "python-socketio AsyncClient (polling+upgrade)",
        "python-socketio-ws": "python-socketio AsyncClient (websocket)",
        "seed": "seed flow (aiohttp)",
        "floor": "floor: socket + wsproto + json.loads",
    }.get(kind, kind)

