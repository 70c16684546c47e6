"""The ask service (``service="perplexity"``, SSE): round trips, CPU per event, long answers (issue 17).

    python benchmarks/perplexity.py rtt  [--delay 0.025] [--runs 5]
    python benchmarks/perplexity.py cpu  [--events 5000] [--chunk 8] [--shape blocks] [--repeat 3] [--profile KIND]
    python benchmarks/perplexity.py size [--kib 512 1024] [--events 256] [--repeat 3]
    python benchmarks/perplexity.py layers [--events 5000] [--chunk 8] [--shape blocks]

The server is a burst server of the ask endpoint (``serve``, a child process): ``GET
/api/auth/session`` answers ``{}`` with a ``__cf_bm`` cookie; ``POST /rest/sse/perplexity_ask``
answers a pre-encoded event stream (the emulator's frames for the shape, CRLF, ``event:
message`` then ``end_of_stream``), chunked, whole events per chunk, written in one go, so the
client, not the server, limits the rate.  HTTP/1.1 keep-alive; an ask whose query starts with
``[close]`` is answered with ``Connection: close`` and the connection closed after it.

``rtt``: the burst server on TLS (trustme, TLS 1.3) behind ``relay.py`` (DELAY each way, a
round trip charged per TCP connect) and behind a zero-delay relay.  One session per run on each
backend asks three times: the first query (clock from ``connect``: TCP, TLS, the warm-up GET,
the POST: floor 4 RTT), a follow-up on the kept-alive connection (the POST: floor 1 RTT), then,
after the server closed that connection, another follow-up: a new connection with the cookies
kept, no warm-up (TCP, TLS, the POST: floor 3 RTT).  Rounds interleave the backends; medians.

``cpu``: EVENTS message events of CHUNK answer characters each; every client in a fresh
process asks once to warm up, then REPEAT times; ``time.process_time()`` of the whole ask
(warm-up GET included, for every client) divided by EVENTS; the median.  Processes of the
clients interleave (A B C ... A B C ...).  Clients: plabs-proto on asyncio, trio and sync; what
a user would write instead: httpx + httpx-sse (``connect_sse``/``iter_sse``, ``json.loads`` of
each event) and curl_cffi reading lines (``iter_lines``, ``json.loads`` of each ``data:`` line,
as the public clients do); and the floor: a blocking socket that reads the response whole and
``json.loads`` every event's data, nothing else.  Targets: plabs-proto at most 0.7x the cheaper
of httpx-sse and curl_cffi, and within 1.3x of the floor.

``size``: the core alone (a :class:`PerplexityClient` fed the warm-up's and the ask's response
bytes in 64 KiB pieces, in memory, no sockets), for an answer of each size in each shape, in
EVENTS events (CHUNK = size / EVENTS): CPU (median of REPEAT, fresh process each) and the peak of
Python's allocations (tracemalloc, a run of its own).  The steps shape re-sends the whole text in
every event, so its bytes grow as size x EVENTS: with EVENTS fixed they grow linearly with the
answer, as do the other shapes'.  Linear: the ratio between the two sizes is about the ratio of
the sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import socket
import ssl
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from _common import HOST, Child, certificates, header, ready, run_worker, serve_until_stopped, table, verdict

PROMPT = "What is sans-IO?"
WARMUP = "/api/auth/session"
ASK = "/rest/sse/perplexity_ask"
CHUNK_BYTES = 64 * 1024
CLOSE = "[close]"


# -- the answer -----------------------------------------------------------------------------------------


def answer_text(size: int) -> str:
    """A deterministic ASCII answer of ``size`` characters."""
    rng = random.Random(17)
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "Perplexity",
             "streams", "its", "answer", "as", "events"]
    out: list[str] = []
    total = 0
    while total < size:
        word = rng.choice(words) + " "
        out.append(word)
        total += len(word)
    return "".join(out)[:size]


def sse_events(shape: str, answer: str, chunk: int, query: str = PROMPT) -> list[bytes]:
    """The event stream of one answer, one ``bytes`` per SSE event (the emulator's frames for ``shape``)."""
    from plabs_proto.backends.programs.emulator_perplexity import (  # the emulator's own frames
        PerplexityEmulatorConfig,
        _Ask,
        _Frames,
        _Thread,
    )

    thread = _Thread(slug="bench-thread", read_write_token="rwt-bench", context_uuid="ctx-bench")
    ask = _Ask(query=query, model="turbo", mode="copilot", asked_mode="copilot", frontend_uuid="f-bench", thread=thread,
               backend_uuid="b-bench")
    frames = _Frames(PerplexityEmulatorConfig(shape=shape, answer=answer, chunk_size=chunk), ask)
    events = [f"event: message\r\ndata: {json.dumps(frame)}\r\n\r\n".encode() for frame in frames]
    events.append(b"event: end_of_stream\r\ndata: {}\r\n\r\n")
    return events


def chunked_body(events: list[bytes]) -> bytes:
    """``events`` as an HTTP/1.1 chunked body, whole events per chunk (a chunk of about 64 KiB or one event)."""
    out: list[bytes] = []
    group: list[bytes] = []
    size = 0

    def flush() -> None:
        nonlocal size
        if group:
            data = b"".join(group)
            out.append(b"%x\r\n%s\r\n" % (len(data), data))
            group.clear()
            size = 0

    for event in events:
        if size and size + len(event) > CHUNK_BYTES:
            flush()
        group.append(event)
        size += len(event)
    flush()
    out.append(b"0\r\n\r\n")
    return b"".join(out)


def warmup_response(close: bool = False) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
            b"Set-Cookie: __cf_bm=bench-cookie; Path=/; HttpOnly\r\n"
            + (b"Connection: close\r\n" if close else b"") + b"\r\n{}")


def ask_head(close: bool = False) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\n" + (b"Connection: close\r\n" if close else b"") + b"\r\n")


# -- the burst server -----------------------------------------------------------------------------------


async def _serve(shape: str, events: int, chunk: int, certfile: str | None, keyfile: str | None) -> None:
    body = chunked_body(sse_events(shape, answer_text(events * chunk), chunk))
    context = None
    if certfile:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(certfile, keyfile)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target = lines[0].split(" ")[:2]
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                data = await reader.readexactly(length) if length else b""
                if method == "GET" and target == WARMUP:
                    writer.write(warmup_response())
                    close = False
                elif method == "POST" and target == ASK:
                    close = json.loads(data).get("query_str", "").startswith(CLOSE)
                    writer.write(ask_head(close))
                    writer.write(body)
                else:
                    writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    close = True
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, HOST, 0, ssl=context, backlog=512)
    port = server.sockets[0].getsockname()[1]
    ready(f"{'https' if context else 'http'}://{HOST}:{port}")
    async with server:
        await serve_until_stopped()


# -- the clients ----------------------------------------------------------------------------------------

PLABS = ["plabs-asyncio", "plabs-trio", "plabs-sync"]
OTHERS = ["httpx-sse", "curl_cffi-lines"]
KINDS = ["floor", *PLABS, *OTHERS]
LABELS = {"floor": "floor: socket + json.loads of every event's data", "plabs-asyncio": "plabs-proto asyncio",
          "plabs-trio": "plabs-proto trio", "plabs-sync": "plabs-proto sync",
          "httpx-sse": "httpx + httpx-sse (iter_sse, json.loads)",
          "curl_cffi-lines": "curl_cffi (iter_lines, json.loads)"}


def _ask_json() -> dict[str, Any]:
    from plabs_proto.perplexity.request import ask_body

    return ask_body(PROMPT, rng=random.Random(1))


def floor_ask(url: str) -> int:
    """A blocking socket: the warm-up, the ask, the response read whole; ``json.loads`` of each event's data."""
    parts = urlsplit(url)
    host, port = parts.hostname or HOST, parts.port or 80
    loads = json.loads
    body = json.dumps(_ask_json()).encode()
    with socket.create_connection((host, port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(f"GET {WARMUP} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        got = b""
        while not got.endswith(b"{}"):
            got += sock.recv(65536)
        sock.sendall(f"POST {ASK} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                     f"Cookie: __cf_bm=bench-cookie\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        pieces: list[bytes] = []
        tail = b""
        while not tail.endswith(b"\r\n0\r\n\r\n"):
            data = sock.recv(262144)
            if not data:
                raise RuntimeError("the server closed the connection before the end")
            pieces.append(data)
            tail = (tail + data)[-16:]
    count = 0
    for line in b"".join(pieces).split(b"\r\n"):
        if line.startswith(b"data: "):
            loads(line[6:])
            count += 1
    return count


def httpx_sse_ask(url: str) -> int:
    import httpx
    from httpx_sse import connect_sse

    count = 0
    with httpx.Client(base_url=url) as client:
        client.get(WARMUP).raise_for_status()
        with connect_sse(client, "POST", ASK, json=_ask_json()) as source:
            for sse in source.iter_sse():
                json.loads(sse.data)
                count += 1
    return count


def curl_lines_ask(url: str) -> int:
    from curl_cffi import requests

    count = 0
    with requests.Session() as session:
        session.get(url + WARMUP).raise_for_status()
        response = session.post(url + ASK, json=_ask_json(), stream=True)
        try:
            for line in response.iter_lines():
                if line.startswith(b"data: "):
                    json.loads(line[6:])
                    count += 1
        finally:
            response.close()
    return count


def plabs_ask(backend: str, url: str, cafile: str | None = None) -> str:
    """One ask through a plabs-proto backend; the answer text."""
    if backend == "sync":
        from plabs_proto.backends.sync import ask

        return "".join(ask(PROMPT, service="perplexity", server=url, cafile=cafile))

    async def collect(ask: Any) -> str:
        parts: list[str] = []
        answer = ask(PROMPT, service="perplexity", server=url, cafile=cafile)
        async with contextlib.aclosing(answer):
            async for text in answer:
                parts.append(text)
        return "".join(parts)

    if backend == "trio":
        import trio
        from plabs_proto.backends.trio import ask as trio_ask

        return str(trio.run(collect, trio_ask))
    from plabs_proto.backends.asyncio import ask as asyncio_ask

    return asyncio.run(collect(asyncio_ask))


def cpu_worker(kind: str, url: str, events: int, chunk: int, repeat: int, profile: bool) -> None:
    expected = answer_text(events * chunk)
    call: Callable[[], object]
    check: Callable[[object], bool]
    if kind == "floor":
        call, check = (lambda: floor_ask(url)), (lambda n: n == events_count)
    elif kind == "httpx-sse":
        call, check = (lambda: httpx_sse_ask(url)), (lambda n: n == events_count)
    elif kind == "curl_cffi-lines":
        call, check = (lambda: curl_lines_ask(url)), (lambda n: n == events_count)
    else:
        backend = kind.split("-", 1)[1]
        call, check = (lambda: plabs_ask(backend, url)), (lambda text: text == expected)
    events_count = 0
    first = call()
    if kind in ("floor", "httpx-sse", "curl_cffi-lines"):
        events_count = int(first)  # type: ignore[call-overload]
    elif not check(first):
        raise SystemExit(f"{kind}: wrong answer ({len(str(first))} chars, expected {len(expected)})")
    cpu: list[float] = []
    for _ in range(repeat):
        c0 = time.process_time()
        result = call()
        cpu.append(time.process_time() - c0)
        if not check(result):
            raise SystemExit(f"{kind}: wrong result {str(result)[:80]!r}")
    if profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.enable()
        call()
        profiler.disable()
        stats = pstats.Stats(profiler, stream=sys.stderr)
        sys.stderr.write(f"cProfile of one {kind} ask ({events} events), by own time:\n")
        stats.sort_stats("tottime").print_stats(30)
    print(json.dumps({"kind": kind, "cpu": cpu, "events": events_count}))


def run_cpu(args: argparse.Namespace) -> dict[str, Any]:
    kinds = [args.profile] if args.profile else KINDS
    started = time.monotonic()
    cpu: dict[str, list[float]] = {kind: [] for kind in kinds}
    streamed = 0
    with Child("perplexity.py", "serve", "--shape", args.shape, "--events", str(args.events),
               "--chunk", str(args.chunk)) as server:
        url = server.ready[0]
        for _ in range(args.rounds):  # A B C ... A B C ...: every client in each round, each in a fresh process
            for kind in kinds:
                extra = ["--profile", kind] if args.profile else []
                out = run_worker("perplexity.py", "cpu-worker", "--kind", kind, "--url", url, "--events",
                                 str(args.events), "--chunk", str(args.chunk), "--repeat", str(args.repeat), *extra)
                cpu[kind].extend(out["cpu"])
                streamed = max(streamed, out["events"])
    elapsed = time.monotonic() - started
    if args.profile:
        return {}
    sample = sse_events(args.shape, answer_text(args.events * args.chunk), args.chunk)
    n = len(sample) - 1  # message events (the end_of_stream is not counted)
    per = {kind: statistics.median(values) / n * 1e6 for kind, values in cpu.items()}
    floor = per["floor"]
    cheaper = min(per[kind] for kind in OTHERS)
    print(header("CPU per SSE event, the ask service (benchmarks/perplexity.py cpu)"))
    print(f"{n} message events of the {args.shape} shape ({args.chunk} answer chars each, {sum(map(len, sample)) / 1e6:.1f} MB "
          f"of events, mean {sum(map(len, sample)) / len(sample):.0f} B); a burst server in its own process; each "
          f"client in a fresh process, {args.rounds} rounds interleaved x {args.repeat} asks after a warm-up; "
          f"median; {elapsed:.0f} s")
    print()
    rows = [[LABELS[kind], f"{per[kind]:.1f}", f"{1e6 / per[kind]:.0f}", f"{per[kind] / floor:.2f}",
             f"{per[kind] / cheaper:.2f}"] for kind in kinds]
    print(table(["client", "CPU µs/event", "events/CPU-s", "x floor", "x cheaper of httpx-sse/curl"], rows))
    print()
    for kind in PLABS:
        to_user, to_floor = per[kind] / cheaper, per[kind] / floor
        print(f"{LABELS[kind]}: {to_user:.2f} x the cheaper of httpx-sse/curl_cffi (target <= 0.7: "
              f"{verdict(to_user <= 0.7)}), {to_floor:.2f} x floor (target <= 1.3: {verdict(to_floor <= 1.3)})")
    return per


# -- round trips ----------------------------------------------------------------------------------------


async def _three_asks_async(backend: str, url: str, cafile: str) -> tuple[float, float, float, str]:
    if backend == "trio":
        from plabs_proto.backends.trio import connect
    else:
        from plabs_proto.backends.asyncio import connect  # type: ignore[assignment]

    async def first_text(session: Any, prompt: str, start: float) -> tuple[float, str]:
        first = 0.0
        parts: list[str] = []
        async with contextlib.aclosing(session.query(prompt)) as answer:
            async for event in answer:
                text = getattr(event, "text", "")
                if type(event).__name__ == "TextDelta" and text:
                    if not parts:
                        first = time.perf_counter() - start
                    parts.append(text)
        return first, "".join(parts)

    start = time.perf_counter()
    session = connect(service="perplexity", server=url, cafile=cafile)
    async with session:
        cold, text = await first_text(session, PROMPT, start)
        warm, _ = await first_text(session, CLOSE + " and again", time.perf_counter())
        kept, _ = await first_text(session, "once more", time.perf_counter())
    return cold, warm, kept, text


def three_asks(backend: str, url: str, cafile: str) -> tuple[float, float, float, str]:
    """Seconds to the first text: the first ask (cold, with the warm-up), a follow-up on the kept-alive
    connection, and a follow-up on a new connection after the server closed it (cookies kept)."""
    if backend == "trio":
        import trio

        return trio.run(_three_asks_async, backend, url, cafile)  # type: ignore[no-any-return]
    if backend == "asyncio":
        return asyncio.run(_three_asks_async(backend, url, cafile))
    from plabs_proto.backends.sync import connect

    def first_text(session: Any, prompt: str, start: float) -> tuple[float, str]:
        first = 0.0
        parts: list[str] = []
        with contextlib.closing(session.query(prompt)) as answer:
            for event in answer:
                text = getattr(event, "text", "")
                if type(event).__name__ == "TextDelta" and text:
                    if not parts:
                        first = time.perf_counter() - start
                    parts.append(text)
        return first, "".join(parts)

    start = time.perf_counter()
    with connect(service="perplexity", server=url, cafile=cafile) as session:
        cold, text = first_text(session, PROMPT, start)
        warm, _ = first_text(session, CLOSE + " and again", time.perf_counter())
        kept, _ = first_text(session, "once more", time.perf_counter())
    return cold, warm, kept, text


def run_rtt(args: argparse.Namespace) -> dict[str, Any]:
    backends = ["asyncio", "trio", "sync"]
    rtt = 2 * args.delay
    expected = answer_text(20 * 8)
    started = time.monotonic()
    results: dict[str, dict[str, list[float]]] = {b: {} for b in backends}
    with certificates() as certs, Child("perplexity.py", "serve", "--events", "20", "--chunk", "8",
                                        "--certfile", certs.certfile, "--keyfile", certs.keyfile) as server:
        port = server.ready[0].rsplit(":", 1)[1]
        with Child("relay.py", "--upstream", f"{HOST}:{port}", "--delay", str(args.delay)) as slow, Child(
            "relay.py", "--upstream", f"{HOST}:{port}", "--delay", "0", "--no-handshake"
        ) as fast:
            links = {"slow": f"https://{HOST}:{slow.ready[0]}", "zero": f"https://{HOST}:{fast.ready[0]}"}
            for round_ in range(args.runs + 1):  # round 0 warms up
                for link, url in links.items():
                    for backend in backends:
                        cold, warm, kept, text = three_asks(backend, url, certs.cafile)
                        if text != expected:
                            raise SystemExit(f"{backend}: wrong answer {text[:60]!r}")
                        if round_:
                            for name, value in (("cold", cold), ("warm", warm), ("kept", kept)):
                                results[backend].setdefault(f"{link}-{name}", []).append(value)
    elapsed = time.monotonic() - started
    med = {b: {k: statistics.median(v) for k, v in r.items()} for b, r in results.items()}
    floors = {"cold": 4, "kept": 3, "warm": 1}
    names = {"cold": "cold, with the warm-up", "kept": "cold, cookies kept", "warm": "warm, kept-alive"}
    print(header("Round trips to the first text, the ask service (benchmarks/perplexity.py rtt)"))
    print(f"TLS 1.3 (trustme) through relay.py: {args.delay * 1000:.0f} ms each way (RTT {rtt * 1000:.0f} ms), "
          f"TCP connect charged one RTT; the same through a zero-delay relay; median of {args.runs} interleaved "
          f"runs after a warm-up; {elapsed:.0f} s")
    print()
    rows = []
    for backend in backends:
        for case in ("cold", "kept", "warm"):
            slow, zero = med[backend][f"slow-{case}"], med[backend][f"zero-{case}"]
            net = (slow - zero) / rtt
            rows.append([f"plabs-proto {backend:<7} {names[case]}", f"{slow * 1000:.0f}", f"{slow / rtt:.2f}",
                         f"{net:.2f}", f"{zero * 1000:.1f}", str(floors[case]),
                         verdict(round(net) <= floors[case])])
    print(table(["client, case", "ms", "RTT", "net RTT", "0-delay ms", "floor", "floor reached"], rows))
    print()
    print("floor: cold = TCP + TLS 1.3 + the warm-up GET + the POST (4); cookies kept = TCP + TLS + the POST (3);")
    print("warm = the POST (1).  net = (time - the same over the zero-delay relay) / RTT, judged rounded.")
    return med


# -- a long answer, the core alone ------------------------------------------------------------------------


def core_ask(warmup: bytes, response: bytes) -> str:
    """A PerplexityClient fed the warm-up's and the ask's response in 64 KiB pieces, in memory; the answer."""
    from plabs_proto.config import ClientConfig
    from plabs_proto.events import AnswerFinished
    from plabs_proto.wire.client import PerplexityClient

    client = PerplexityClient(ClientConfig(service="perplexity", server="http://bench.test"), rng=random.Random(1))
    client.connect(0.0)
    client.query(PROMPT, now=0.0)
    streams = [getattr(i, "stream_id", 0) for i in client.transmit()]
    stream = next(s for s in streams if s)
    client.receive_data(stream, warmup, 0.0)
    client.transmit()
    final = ""
    view = memoryview(response)
    for start in range(0, len(response), CHUNK_BYTES):
        client.receive_data(stream, bytes(view[start : start + CHUNK_BYTES]), 0.0)
        client.transmit()
        for event in client.events():
            if isinstance(event, AnswerFinished):
                final = event.text
    return final


def size_worker(shape: str, kib: int, events: int, repeat: int, memory: bool, profile: bool) -> None:
    size = kib * 1024
    chunk = -(-size // events)
    answer = answer_text(size)
    response = ask_head() + chunked_body(sse_events(shape, answer, chunk))
    warmup = warmup_response()
    out: dict[str, Any] = {"shape": shape, "kib": kib, "bytes": len(response)}
    if memory:
        import tracemalloc

        tracemalloc.start()
        text = core_ask(warmup, response)
        out["peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    elif profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.enable()
        text = core_ask(warmup, response)
        profiler.disable()
        stats = pstats.Stats(profiler, stream=sys.stderr)
        stats.sort_stats("tottime").print_stats(25)
    else:
        cpu = []
        for _ in range(repeat):
            c0 = time.process_time()
            text = core_ask(warmup, response)
            cpu.append(time.process_time() - c0)
        out["cpu"] = cpu
    if text != answer:
        raise SystemExit(f"{shape} {kib} KiB: wrong answer ({len(text)} chars, expected {len(answer)})")
    print(json.dumps(out))


def run_size(args: argparse.Namespace) -> dict[str, Any]:
    shapes = ["steps", "blocks", "workflow"]
    started = time.monotonic()
    cpu: dict[tuple[str, int], list[float]] = {}
    peak: dict[tuple[str, int], int] = {}
    sizes: dict[tuple[str, int], int] = {}
    common = ["--events", str(args.events), "--repeat", str(args.repeat)]
    for _ in range(args.rounds):
        for shape in shapes:
            for kib in args.kib:  # small, large, small, large...: interleaved
                out = run_worker("perplexity.py", "size-worker", "--shape", shape, "--kib", str(kib), *common,
                                 timeout=600)
                cpu.setdefault((shape, kib), []).extend(out["cpu"])
                sizes[(shape, kib)] = out["bytes"]
    for shape in shapes:
        for kib in args.kib:
            out = run_worker("perplexity.py", "size-worker", "--shape", shape, "--kib", str(kib), *common,
                             "--memory", timeout=600)
            peak[(shape, kib)] = out["peak"]
    elapsed = time.monotonic() - started
    small, large = args.kib
    print(header("A long answer in each shape, the core alone (benchmarks/perplexity.py size)"))
    print(f"answers of {small} and {large} KiB in {args.events} events each; a PerplexityClient fed the response in "
          f"64 KiB pieces in memory; CPU the median of {args.rounds} x {args.repeat} runs (fresh processes, "
          f"interleaved); peak = tracemalloc's peak of one run of its own; {elapsed:.0f} s")
    print()
    rows = []
    for shape in shapes:
        a, b = (shape, small), (shape, large)
        ca, cb = statistics.median(cpu[a]), statistics.median(cpu[b])
        rows.append([shape, f"{sizes[a] / 2**20:.1f} / {sizes[b] / 2**20:.1f}", f"{sizes[b] / sizes[a]:.2f}",
                     f"{ca * 1000:.0f} / {cb * 1000:.0f}", f"{cb / ca:.2f}",
                     f"{cb / (sizes[b] / 2**20) * 1000:.1f}",
                     f"{peak[a] / 2**20:.1f} / {peak[b] / 2**20:.1f}", f"{peak[b] / peak[a]:.2f}"])
    print(table(["shape", "stream MiB", "ratio", "CPU ms", "ratio", "ms/MiB (large)", "peak MiB", "ratio"], rows))
    print()
    print(f"size ratio {large / small:.2f}: linear means the CPU and peak ratios are near it (and near the stream's).")
    return {"cpu": {f"{k[0]}-{k[1]}": statistics.median(v) for k, v in cpu.items()},
            "peak": {f"{k[0]}-{k[1]}": v for k, v in peak.items()}}


def run_layers(args: argparse.Namespace) -> dict[str, float]:
    from plabs_proto.perplexity.answer import AnswerDecoder, load_frame
    from plabs_proto.perplexity.frames import FrameLoader
    from plabs_proto.perplexity.sse import SSEDecoder

    events = sse_events(args.shape, answer_text(args.events * args.chunk), args.chunk)
    body = b"".join(events)
    response = ask_head() + chunked_body(events)
    pieces = [body[start : start + CHUNK_BYTES] for start in range(0, len(body), CHUNK_BYTES)]

    def sse() -> list[Any]:
        decoder = SSEDecoder()
        return [event for piece in pieces for event in decoder.feed_raw(piece)]  # (as the session reads)

    datas = [data for kind, data, _, _ in sse() if kind == "message"]

    def loads() -> None:
        for data in datas:
            json.loads(data)

    def frames() -> None:
        for data in datas:
            load_frame(data)

    def loader() -> None:
        frames = FrameLoader()
        for data in datas:
            frames.load(data)

    def decode() -> None:
        decoder, frames = AnswerDecoder(model="turbo"), FrameLoader()
        for data in datas:
            decoder.feed(frames.load(data))

    answer = answer_text(args.events * args.chunk)

    def core() -> None:
        if core_ask(warmup_response(), response) != answer:
            raise SystemExit("the core gave a wrong answer")

    layers: dict[str, Callable[[], object]] = {
        "json.loads of each event's data": loads, "the SSE decoder (feed_raw)": sse,
        "load_frame (depth check + json.loads)": frames, "FrameLoader.load (what the session decodes with)": loader,
        "FrameLoader.load + AnswerDecoder.feed": decode,
        "the whole core (bytes, h11, SSE, answer)": core,
    }
    times: dict[str, list[float]] = {name: [] for name in layers}
    for _ in range(7):
        for name, call in layers.items():
            c0 = time.process_time()
            call()
            times[name].append((time.process_time() - c0) / len(datas) * 1e6)
    per = {name: statistics.median(values) for name, values in times.items()}
    print(header("Where the core's CPU per event goes (benchmarks/perplexity.py layers)"))
    print(f"{len(datas)} events of the {args.shape} shape, in memory; medians of 7 interleaved runs")
    print()
    print(table(["layer", "CPU µs/event"], [[name, f"{value:.1f}"] for name, value in per.items()]))
    return per


# -- main -----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> Any:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="the burst server (a child)")
    serve.add_argument("--shape", default="blocks", choices=("steps", "blocks", "workflow"))
    serve.add_argument("--events", type=int, default=5000)
    serve.add_argument("--chunk", type=int, default=8)
    serve.add_argument("--certfile")
    serve.add_argument("--keyfile")
    rtt = sub.add_parser("rtt")
    rtt.add_argument("--delay", type=float, default=0.025)
    rtt.add_argument("--runs", type=int, default=5)
    cpu = sub.add_parser("cpu")
    cpu.add_argument("--events", type=int, default=5000)
    cpu.add_argument("--chunk", type=int, default=8)
    cpu.add_argument("--shape", default="blocks", choices=("steps", "blocks", "workflow"))
    cpu.add_argument("--repeat", type=int, default=3)
    cpu.add_argument("--rounds", type=int, default=3)
    cpu.add_argument("--profile", metavar="KIND", choices=KINDS)
    worker = sub.add_parser("cpu-worker")
    worker.add_argument("--kind", required=True)
    worker.add_argument("--url", required=True)
    worker.add_argument("--events", type=int, required=True)
    worker.add_argument("--chunk", type=int, required=True)
    worker.add_argument("--repeat", type=int, required=True)
    worker.add_argument("--profile")
    size = sub.add_parser("size")
    size.add_argument("--kib", type=int, nargs=2, default=[512, 1024])
    size.add_argument("--events", type=int, default=256)
    size.add_argument("--repeat", type=int, default=3)
    size.add_argument("--rounds", type=int, default=2)
    layers = sub.add_parser("layers")
    layers.add_argument("--events", type=int, default=5000)
    layers.add_argument("--chunk", type=int, default=8)
    layers.add_argument("--shape", default="blocks", choices=("steps", "blocks", "workflow"))
    sworker = sub.add_parser("size-worker")
    sworker.add_argument("--shape", required=True)
    sworker.add_argument("--kib", type=int, required=True)
    sworker.add_argument("--events", type=int, required=True)
    sworker.add_argument("--repeat", type=int, default=3)
    sworker.add_argument("--memory", action="store_true")
    sworker.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "serve":
        asyncio.run(_serve(args.shape, args.events, args.chunk, args.certfile, args.keyfile))
        return None
    if args.command == "cpu-worker":
        cpu_worker(args.kind, args.url, args.events, args.chunk, args.repeat, args.profile == args.kind)
        return None
    if args.command == "size-worker":
        size_worker(args.shape, args.kib, args.events, args.repeat, args.memory, args.profile)
        return None
    commands: dict[str, Callable[[argparse.Namespace], Any]] = {
        "rtt": run_rtt, "cpu": run_cpu, "size": run_size, "layers": run_layers}
    return commands[args.command](args)


if __name__ == "__main__":
    main(sys.argv[1:])
