"""The OpenAI-compatible gateway (``plabs serve``) side by side with a direct ``ask()``.

    python benchmarks/gateway.py [--delay 0.01] [--runs 9] [--sessions 200] [--quick]
                                 [--loopback-only] [--baseline PLABS]
    python benchmarks/gateway.py --scale 1000 [--frames 40] [--transport websocket]

Against the same Labs emulator (its own process), through the latency relay (relay.py):

1. **Time to first token**, interleaved per round (direct, direct sessions, cold gateway, warm
   gateway; in a new random order each round, 50 ms apart): a direct ``ask()`` in this process, clocked from the call to its first text;
   beside it a direct asyncio ``Session``, ``open()`` (waiting for the connect ack) then a
   query, and ``open(wait=False)`` then a query (the gateway's cold path); and a request
   to ``plabs serve`` (cold: no ``--warm``; warm: ``--warm 2``), clocked from writing the
   HTTP request on an open loopback connection to reading the first ``content`` chunk (a
   bare socket client, so no client library's time is counted).  Over a zero-delay relay
   ("loopback") and over a relay of DELAY seconds each way (RTT = 2 * DELAY).
   ``--baseline PLABS`` adds a cold gateway run by another ``plabs`` executable (e.g.
   another checkout's ``.venv/bin/plabs``, run from its own folder), in the same rounds,
   so a change to the gateway is measured side by side.  On loopback, an **echo** round
   gives the floor of any gateway: the same request bytes written on a fresh connection to
   a bare asyncio echo server in another process, clocked to their return (the two wake-ups
   of a second process that the gateway's request and first chunk cost, and nothing else).
   Medians and minima are shown: on a shared machine the minimum tells what the code
   costs, the median what scheduling adds.
2. **CPU per streamed chunk** for a long burst answer (frames of 8 characters, no delay):
   the CPU time of the process doing the Labs work, divided by the chunks: this process for
   the direct ``ask()``, the gateway process (its Labs client and its HTTP/SSE output) for
   the gateway.  Interleaved, median of the runs.
3. **SESSIONS concurrent streams**: a fresh gateway gets SESSIONS streamed requests at once
   (answers of 60 frames 50 ms apart, so they overlap); every answer is checked and the
   gateway's peak resident memory (VmHWM) is read; beside it, a child process runs SESSIONS
   direct ``ask()`` calls at once and reports its own peak.

4. ``--scale N``: the scale run of issue 18 alone.  N streamed requests at once (default
   1,000) through one fresh gateway process in front of the emulator (its own process,
   ``--transport websocket``: one Labs connection per stream), answers of ``--frames`` (40)
   frames of 8 characters 50 ms apart; every answer is checked byte for byte; the gateway's peak memory over its idle
   baseline per stream (VmHWM) and its CPU per streamed chunk are recorded.  Then N more
   clients leave after their first chunk, and the gateway must hold no Labs connection and
   no active request within 5 s (``/proc/net/tcp`` and ``/health``).

Targets (issue 11): the gateway adds at most 1 ms to the first token on loopback and costs
at most 2x the direct CPU per chunk; with ``--warm`` the first token comes at most one
round trip after the request reaches the gateway (plus server time).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import re
import resource
import select
import subprocess
import sys
import time
from typing import Any

from _common import HERE, PYTHON, Child, child_env, header, median, table, verdict

MODEL = "sonar"
PROMPT = "What is sans-IO?"
ANSWER = (
    "Sans-IO means the protocol code never touches a socket: it takes the bytes that arrived and "
    "gives back events and the bytes to send, so any I/O library can drive it."
)
WORDS = "Sans-IO keeps the protocol apart from the sockets, so one state machine serves every backend. "


def text_of(chars: int) -> str:
    return (WORDS * (chars // len(WORDS) + 1))[:chars]


# -- the gateway process ---------------------------------------------------------------------------


class Gateway:
    """``plabs serve`` in a child process, on a free port (``plabs``: another checkout's executable,
    run from its folder with its own imports, instead of this checkout's)."""

    def __init__(self, server: str, *args: str, plabs: str | None = None) -> None:
        command = [PYTHON, "-m", "plabs_proto"] if plabs is None else [plabs]
        if plabs is None:
            args = ("--quiet", *args)  # no access log on our stderr (a baseline may predate --quiet)
        env = child_env()
        cwd = None
        if plabs is not None:
            env.pop("PYTHONPATH", None)
            cwd = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(plabs))))  # .venv/bin/..
        self.proc = subprocess.Popen(
            [*command, "serve", "--port", "0", "--server", server, *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=env, cwd=cwd,  # stderr: ours
        )
        assert self.proc.stdout is not None
        got = b""
        deadline = time.monotonic() + 20
        while not re.search(rb"http://127\.0\.0\.1:(\d+)/v1", got):
            data = b""
            if time.monotonic() < deadline and select.select([self.proc.stdout], [], [], 1)[0]:
                data = os.read(self.proc.stdout.fileno(), 4096)
                got += data
            if not data and (time.monotonic() >= deadline or self.proc.poll() is not None):
                self.stop()
                raise SystemExit(f"plabs serve did not start: {got!r}")
        match = re.search(rb"http://127\.0\.0\.1:(\d+)/v1", got)
        assert match is not None
        self.port = int(match.group(1))

    def cpu(self) -> float:
        """The gateway process's CPU seconds so far (user + system)."""
        with open(f"/proc/{self.proc.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def sched(self) -> tuple[float, float]:
        """(seconds on a CPU, seconds waiting for one) of the gateway's main thread so far."""
        return sched_of(self.proc.pid)

    def peak_kib(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) of the gateway in KiB."""
        values = {}
        with open(f"/proc/{self.proc.pid}/status") as status:
            for line in status:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    values[line.split(":")[0]] = int(line.split()[1])
        return values["VmRSS"], values["VmHWM"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(2)  # SIGINT: Ctrl-C
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def sched_of(pid: int | str) -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting for a CPU) of a process's main thread
    (``/proc/PID/schedstat``, in nanoseconds: precise, unlike the clock ticks of ``stat``)."""
    with open(f"/proc/{pid}/schedstat") as stat:
        on_cpu, waiting = stat.read().split()[:2]
    return int(on_cpu) / 1e9, int(waiting) / 1e9


# -- a bare client ---------------------------------------------------------------------------------


async def stream_once(port: int, prompt: str = PROMPT) -> tuple[float, str, int]:
    """One streamed request on a fresh loopback connection: (seconds from writing the request to the
    first content chunk, the joined content, the number of content chunks)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = json.dumps({"model": MODEL, "stream": True, "messages": [{"role": "user", "content": prompt}]}).encode()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    try:
        start = time.perf_counter()
        writer.write(request)
        first = 0.0
        data = b""
        while True:
            chunk = await reader.read(262144)
            if not chunk:
                break
            if not first and b'"content":"' in chunk:
                first = time.perf_counter() - start
            data += chunk
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, raw = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"gateway answered {head[:200]!r}")
    if b"transfer-encoding: chunked" in head.lower():
        raw = dechunk(raw)
    parts = []
    for event in raw.split(b"\n\n"):
        if event.startswith(b"data: {"):
            obj = json.loads(event[6:])
            if "error" in obj:
                raise RuntimeError(f"stream error: {obj['error']}")
            content = obj["choices"][0]["delta"].get("content")
            if content:
                parts.append(content)
    return first, "".join(parts), len(parts)


async def echo_once(port: int) -> float:
    """The floor: the bytes of a gateway request written on a fresh connection to the echo server,
    clocked from the write to their return."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = b"x" * 223  # the size of stream_once's request
    try:
        start = time.perf_counter()
        writer.write(request)
        got = 0
        while got < len(request):
            got += len(await reader.read(65536))
        return time.perf_counter() - start
    finally:
        writer.close()
        await writer.wait_closed()


def echo_server() -> None:
    """In a child: a bare asyncio echo server on 127.0.0.1; prints READY <port>, ends when stdin closes."""

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)  # type: ignore[attr-defined]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        print("READY", server.sockets[0].getsockname()[1], flush=True)
        done = loop.create_future()
        loop.add_reader(sys.stdin.fileno(), lambda: done.done() or done.set_result(None))
        await done
        server.close()

    asyncio.run(main())


def dechunk(raw: bytes) -> bytes:
    out = []
    while raw:
        size_line, _, raw = raw.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out.append(raw[:size])
        raw = raw[size + 2:]
    return b"".join(out)


async def direct_once(url: str, prompt: str = PROMPT) -> tuple[float, str, int]:
    from plabs_proto.backends.asyncio import ask

    parts: list[str] = []
    first = 0.0
    start = time.perf_counter()
    async with ask(prompt, model=MODEL, server=url) as answer:
        async for text in answer:
            if text and not parts:
                first = time.perf_counter() - start
            parts.append(text)
    return first, "".join(parts), len(parts)


async def session_once(url: str, *, wait: bool, prompt: str = PROMPT) -> tuple[float, str, int]:
    """A direct ``Session``: ``open(wait=wait)`` then one query, clocked from ``connect()`` to its first text."""
    from plabs_proto.backends.asyncio import connect

    from plabs_proto.events import TextDelta

    parts: list[str] = []
    first = 0.0
    start = time.perf_counter()
    session = connect(server=url)
    try:
        await session.open(wait=wait)
        async with session.query(prompt, model=MODEL) as query:
            async for event in query:
                if type(event) is TextDelta:
                    if not parts:
                        first = time.perf_counter() - start
                    parts.append(event.text)
    finally:
        await session.aclose()
    return first, "".join(parts), len(parts)


# -- the measurements ------------------------------------------------------------------------------


def ttft(relay_url: str, cold: Gateway, warm: Gateway, runs: int, baseline: Gateway | None = None,
         echo_port: int | None = None) -> tuple[dict[str, list[float]], dict[str, list[tuple[float, float]]]]:
    """The times to first token of every contender, and the (CPU, runqueue wait) seconds each
    request cost the process doing the Labs work (this one for direct, else the gateway's)."""
    times: dict[str, list[float]] = {"direct": [], "open": [], "pipelined": [], "cold": [], "warm": []}
    if baseline is not None:
        times["baseline"] = []
    if echo_port is not None:
        times["echo"] = []
    costs: dict[str, list[tuple[float, float]]] = {kind: [] for kind in times if kind != "echo"}
    gateways = {"cold": cold, "warm": warm, "baseline": baseline}

    order = list(times)
    shuffle = random.Random(11).shuffle

    async def main() -> None:
        for round_ in range(runs + 1):  # round 0 warms up
            shuffle(order)  # no contender always follows the same one (the servers' leftovers of it)
            for kind in order:
                await asyncio.sleep(0.05)  # the servers finish with the last one; a warm session is back
                gateway = gateways.get(kind)
                before = gateway.sched() if gateway is not None else sched_of("self")
                if kind == "echo":
                    assert echo_port is not None
                    first, text = await echo_once(echo_port), ANSWER
                elif kind == "baseline":
                    assert baseline is not None
                    first, text, _ = await stream_once(baseline.port)
                elif kind == "direct":
                    first, text, _ = await direct_once(relay_url)
                elif kind in ("open", "pipelined"):
                    first, text, _ = await session_once(relay_url, wait=kind == "open")
                else:
                    first, text, _ = await stream_once((cold if kind == "cold" else warm).port)
                if text != ANSWER:
                    raise SystemExit(f"{kind}: wrong answer {text[:80]!r}")
                if gateway is not None:
                    await asyncio.sleep(0.05)  # the gateway finishes the request (closes its session)
                after = gateway.sched() if gateway is not None else sched_of("self")
                if round_:
                    times[kind].append(first)
                    if kind in costs:
                        costs[kind].append((after[0] - before[0], after[1] - before[1]))

    asyncio.run(main())
    return times, costs


def cpu_per_chunk(relay_url: str, gateway: Gateway, chars: int, runs: int) -> dict[str, list[float]]:
    expected = text_of(chars)
    cpus: dict[str, list[float]] = {"direct": [], "gateway": []}

    async def main() -> None:
        for round_ in range(runs + 1):
            before = time.process_time()
            _, text, chunks = await direct_once(relay_url)
            direct = (time.process_time() - before) / chunks
            if text != expected:
                raise SystemExit(f"direct: wrong burst answer ({len(text)} chars)")
            before = gateway.cpu()
            _, text, chunks = await stream_once(gateway.port)
            await asyncio.sleep(0.05)
            through = (gateway.cpu() - before) / chunks
            if text != expected:
                raise SystemExit(f"gateway: wrong burst answer ({len(text)} chars)")
            if round_:
                cpus["direct"].append(direct)
                cpus["gateway"].append(through)

    asyncio.run(main())
    return cpus


def concurrent_gateway(url: str, sessions: int, expected: str) -> dict[str, Any]:
    gateway = Gateway(url)
    try:
        async def main() -> list[Any]:
            await stream_once(gateway.port, "warm-up")
            return list(await asyncio.gather(*(stream_once(gateway.port, f"q{n}") for n in range(sessions)),
                                             return_exceptions=True))

        time.sleep(0.2)
        base, _ = gateway.peak_kib()
        started = time.perf_counter()
        cpu0 = gateway.cpu()
        results = asyncio.run(main())
        wall = time.perf_counter() - started
        cpu = gateway.cpu() - cpu0
        _, peak = gateway.peak_kib()
    finally:
        gateway.stop()
    correct = sum(1 for r in results if not isinstance(r, BaseException) and r[1] == expected)
    errors = [repr(r)[:200] for r in results if isinstance(r, BaseException)][:3]
    return {"correct": correct, "base_kib": base, "peak_kib": peak, "wall": wall, "cpu": cpu, "errors": errors}


def established_to(port: int) -> int:
    """Established TCP connections on this host to 127.0.0.1:``port`` (Linux /proc)."""
    count = 0
    for table_path in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table_path) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                    count += 1
    return count


async def leave_after_first_chunk(port: int, prompt: str) -> bool:
    """A streamed request whose client closes its connection after the first content chunk."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = json.dumps({"model": MODEL, "stream": True, "messages": [{"role": "user", "content": prompt}]}).encode()
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    data = b""
    try:
        while b'"content":"' not in data:
            chunk = await reader.read(65536)
            if not chunk:
                return False
            data += chunk
        return True
    finally:
        writer.close()
        await writer.wait_closed()


async def health(port: int) -> dict[str, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    result: dict[str, Any] = json.loads(dechunk(data.partition(b"\r\n\r\n")[2]) if b"chunked" in data.lower()
                                        else data.partition(b"\r\n\r\n")[2])
    return result


def scale(streams: int, frames: int = 40, frame_delay: float = 0.05, transport: str = "websocket") -> dict[str, Any]:
    """The scale run: ``streams`` concurrent streams through one gateway, then as many clients leaving."""
    text = text_of(frames * 8)
    emulator = Child("servers.py", "emulator", "--answer", text, "--chunk-size", "8",
                     "--frame-delay", str(frame_delay), timeout=60)
    url = emulator.ready[0]
    emulator_port = int(url.rsplit(":", 1)[1])
    gateway = Gateway(url, "--transport", transport)
    try:
        async def wave() -> list[Any]:
            await stream_once(gateway.port, "warm-up")
            return list(await asyncio.gather(*(stream_once(gateway.port, f"q{n}") for n in range(streams)),
                                             return_exceptions=True))

        time.sleep(0.5)
        gc.collect()
        base, _ = gateway.peak_kib()
        cpu0, started = gateway.cpu(), time.perf_counter()
        results = asyncio.run(wave())
        wall, cpu = time.perf_counter() - started, gateway.cpu() - cpu0
        _, peak = gateway.peak_kib()
        correct = sum(1 for r in results if not isinstance(r, BaseException) and r[1] == text)
        chunks = sum(r[2] for r in results if not isinstance(r, BaseException))
        errors = [repr(r)[:200] for r in results if isinstance(r, BaseException) or r[1] != text][:3]
        t0 = time.perf_counter()
        while established_to(emulator_port) and time.perf_counter() - t0 < 5:  # closes still under way
            time.sleep(0.05)
        after_wave = established_to(emulator_port)

        async def leaving() -> tuple[int, float, dict[str, Any]]:
            left = await asyncio.gather(*(leave_after_first_chunk(gateway.port, f"l{n}") for n in range(streams)),
                                        return_exceptions=True)
            t0 = time.perf_counter()
            while established_to(emulator_port) and time.perf_counter() - t0 < 5:
                await asyncio.sleep(0.05)
            return sum(1 for r in left if r is True), time.perf_counter() - t0, await health(gateway.port)

        left, drained, state = asyncio.run(leaving())
        still_open = established_to(emulator_port)
    finally:
        gateway.stop()
        emulator.stop()
    return {"streams": streams, "frames": frames, "transport": transport, "correct": correct, "chunks": chunks, "base_kib": base, "peak_kib": peak,
            "wall": wall, "cpu": cpu, "errors": errors, "open_after_wave": after_wave, "left": left,
            "drained_s": drained, "open_after_leaving": still_open, "health": state}


def print_scale(r: dict[str, Any]) -> None:
    n = r["streams"]
    print(header(f"{n} concurrent streams through one gateway (benchmarks/gateway.py --scale {n} "
                 f"--frames {r['frames']} --transport {r['transport']})"))
    print(table(["", "value"], [
        ["answers exact", f"{r['correct']}/{n}"],
        ["content chunks streamed", str(r["chunks"])],
        ["gateway baseline / peak MiB", f"{r['base_kib'] / 1024:.1f} / {r['peak_kib'] / 1024:.1f}"],
        ["memory per stream KiB (peak - baseline) / N", f"{(r['peak_kib'] - r['base_kib']) / n:.1f}"],
        ["gateway CPU s (whole wave)", f"{r['cpu']:.2f}"],
        ["CPU per chunk µs (gateway CPU / chunks)", f"{r['cpu'] / max(r['chunks'], 1) * 1e6:.1f}"],
        ["wall s (all streams)", f"{r['wall']:.2f}"],
        ["Labs connections open after the wave", str(r["open_after_wave"])],
        ["clients that left after their first chunk", f"{r['left']}/{n}"],
        ["Labs connections open after they left", f"{r['open_after_leaving']} (after {r['drained_s']:.2f} s)"],
        ["/health after they left", json.dumps(r["health"])],
    ]))
    if r["errors"]:
        print("errors:", r["errors"])
    ok = (r["correct"] == n and r["open_after_wave"] == 0 and r["open_after_leaving"] == 0
          and r["health"].get("active") == 0)
    print(f"every answer exact and no session left open: {verdict(ok)}")


def concurrent_direct_worker(url: str, sessions: int, expected: str) -> None:
    """In a child: SESSIONS direct ask() at once; prints a JSON line."""

    async def main() -> list[Any]:
        await direct_once(url, "warm-up")
        gc.collect()
        return list(await asyncio.gather(*(direct_once(url, f"q{n}") for n in range(sessions)),
                                         return_exceptions=True))

    with open("/proc/self/status") as status:
        base = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    cpu0, wall0 = time.process_time(), time.perf_counter()
    results = asyncio.run(main())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    correct = sum(1 for r in results if not isinstance(r, BaseException) and r[1] == expected)
    print(json.dumps({"correct": correct, "base_kib": base, "peak_kib": peak,
                      "wall": time.perf_counter() - wall0, "cpu": time.process_time() - cpu0}))


def concurrent_direct(url: str, sessions: int, frames_text: str) -> dict[str, Any]:
    proc = subprocess.run(
        [PYTHON, str(HERE / "gateway.py"), "--direct-worker", url, str(sessions), str(len(frames_text))],
        capture_output=True, text=True, env=child_env(), timeout=120,
    )
    if proc.returncode:
        raise SystemExit(f"direct worker failed: {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--delay", type=float, default=0.01, help="one-way delay of the slow relay (default 0.01 s)")
    parser.add_argument("--runs", type=int, default=9, help="measured rounds per measurement (default 9)")
    parser.add_argument("--sessions", type=int, default=200, help="concurrent streams (default 200)")
    parser.add_argument("--burst", type=int, default=12000, help="characters of the CPU answer (default 12000)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rounds, 20 sessions")
    parser.add_argument("--loopback-only", action="store_true",
                        help="only the time to first token on loopback (with the echo floor)")
    parser.add_argument("--baseline", metavar="PLABS", default=None,
                        help="also time a cold gateway run by this plabs executable (e.g. another checkout's "
                        ".venv/bin/plabs), in the same rounds")
    parser.add_argument("--scale", type=int, metavar="N", default=None,
                        help="only the scale run: N concurrent streams through one gateway (e.g. 1000)")
    parser.add_argument("--frames", type=int, default=40, help="frames per answer of the scale run (default 40)")
    parser.add_argument("--transport", default="websocket", help="the gateway's transport in the scale run")
    parser.add_argument("--direct-worker", nargs=3, metavar=("URL", "N", "CHARS"), help=argparse.SUPPRESS)
    parser.add_argument("--echo-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.direct_worker:
        url, n, chars = args.direct_worker
        concurrent_direct_worker(url, int(n), text_of(int(chars)))
        return {}
    if args.echo_server:
        echo_server()
        return {}
    if args.scale is not None:
        result = scale(args.scale, args.frames, transport=args.transport)
        print_scale(result)
        return result
    runs = 2 if args.quick else args.runs
    sessions = 20 if args.quick else args.sessions
    rtt = 2 * args.delay
    started = time.monotonic()
    results: dict[str, Any] = {}
    long_text = text_of(60 * 8)
    children: list[Any] = []
    links = (("loopback", 0.0),) if args.loopback_only else (("loopback", 0.0), ("slow", args.delay))
    try:
        short = Child("servers.py", "emulator", "--answer", ANSWER, "--chunk-size", "8", "--frame-delay", "0.002")
        children.append(short)

        def relay(url: str, delay: float) -> str:
            port = url.rsplit(":", 1)[1]
            extra = ["--no-handshake"] if delay == 0 else []
            child = Child("relay.py", "--upstream", f"127.0.0.1:{port}", "--delay", str(delay), *extra)
            children.append(child)
            return f"http://127.0.0.1:{child.ready[0]}"

        echo = Child("gateway.py", "--echo-server")
        children.append(echo)
        for link, delay in links:
            url = relay(short.ready[0], delay)
            cold, warm = Gateway(url), Gateway(url, "--warm", "2")
            children += [cold, warm]
            baseline = None
            if args.baseline:
                baseline = Gateway(url, plabs=args.baseline)
                children.append(baseline)
            time.sleep(1.0 + 10 * delay)  # the warm pool connects
            times, costs = ttft(url, cold, warm, runs, baseline, int(echo.ready[0]) if link == "loopback" else None)
            results[f"cost_{link}"] = {k: (median([c for c, _ in v]), median([w for _, w in v]))
                                       for k, v in costs.items()}
            results[f"ttft_{link}"] = {k: median(v) for k, v in times.items()}
            results[f"ttft_{link}_min"] = {k: min(v) for k, v in times.items()}
            results[f"ttft_{link}_q1"] = {k: sorted(v)[(len(v) - 1) // 4] for k, v in times.items()}

        if not args.loopback_only:
            burst = Child("servers.py", "emulator", "--answer", text_of(args.burst), "--chunk-size", "8",
                          "--frame-delay", "0")
            children.append(burst)
            slow = Child("servers.py", "emulator", "--answer", long_text, "--chunk-size", "8",
                         "--frame-delay", "0.05")
            children.append(slow)
            burst_url = relay(burst.ready[0], 0.0)
            burst_gateway = Gateway(burst_url)
            children.append(burst_gateway)
            cpus = cpu_per_chunk(burst_url, burst_gateway, args.burst, runs)
            results["cpu"] = {k: median(v) for k, v in cpus.items()}

            slow_url = relay(slow.ready[0], 0.0)
            results["concurrent_gateway"] = concurrent_gateway(slow_url, sessions, long_text)
            results["concurrent_direct"] = concurrent_direct(slow_url, sessions, long_text)
    finally:
        for child in reversed(children):
            child.stop()
    elapsed = time.monotonic() - started

    print(header("The OpenAI-compatible gateway vs a direct ask() (benchmarks/gateway.py)"))
    print(f"emulator behind the latency relay; one-way delay {args.delay * 1000:.0f} ms on the slow link "
          f"(RTT {rtt * 1000:.0f} ms); median of {runs} interleaved rounds after a warm-up; {elapsed:.0f} s")
    if args.baseline:
        print(f"baseline: a cold gateway run by {args.baseline}")
    print()
    rows = []
    for link, _ in links:
        r = results[f"ttft_{link}"]
        rows.append([link, f"{r['direct'] * 1000:.1f}", f"{r['cold'] * 1000:.1f}", f"{r['warm'] * 1000:.1f}",
                     f"{(r['cold'] - r['direct']) * 1000:+.1f}", f"{(r['warm'] - r['direct']) * 1000:+.1f}",
                     f"{r['warm'] / rtt:.2f}" if link == "slow" else "-"])
    print(table(["link", "direct ask ms", "gateway cold ms", "gateway --warm ms", "cold - direct",
                 "warm - direct", "warm in RTT"], rows))
    print()
    names = {"direct": "direct ask()", "open": "direct open() + query", "pipelined": "direct open(wait=False) + query",
             "cold": "gateway cold", "warm": "gateway --warm", "baseline": "baseline gateway cold",
             "echo": "echo through a 2nd process (floor)"}
    for link, _ in links:
        r, q, m = results[f"ttft_{link}"], results[f"ttft_{link}_q1"], results[f"ttft_{link}_min"]
        rows = [[names[k], f"{r[k] * 1000:.2f}", f"{q[k] * 1000:.2f}", f"{m[k] * 1000:.2f}",
                 *("-" if k in ("direct", "echo") else f"{(x[k] - x['direct']) * 1000:+.2f}" for x in (r, q, m))]
                for k in r]
        print(table([f"first token, {link}", "median ms", "1st quartile ms", "min ms", "median - direct",
                     "quartile - direct", "min - direct"], rows))
        cost = results[f"cost_{link}"]
        print(table([f"per request, {link}: the Labs side's process", "CPU ms (median)", "runqueue wait ms (median)"],
                    [[names[k] + (" (this process)" if k in ("direct", "open", "pipelined") else " (its process)"),
                      f"{c * 1000:.2f}", f"{w * 1000:.2f}"] for k, (c, w) in cost.items()]))
        if "baseline" in r:
            print(f"cold gateway / baseline: median {r['cold'] / r['baseline']:.2f}, min {m['cold'] / m['baseline']:.2f}; "
                  f"added over direct: median {(r['cold'] - r['direct']) * 1000:+.2f} vs "
                  f"{(r['baseline'] - r['direct']) * 1000:+.2f} ms, min {(m['cold'] - m['direct']) * 1000:+.2f} vs "
                  f"{(m['baseline'] - m['direct']) * 1000:+.2f} ms")
        print()
    if not args.loopback_only:
        rows = []
        for link, _ in links:
            r = results[f"ttft_{link}"]
            rows.append([link, f"{r['direct'] * 1000:.1f}", f"{r['open'] * 1000:.1f}",
                         f"{r['pipelined'] * 1000:.1f}", f"{r['open'] / r['direct']:.2f}",
                         f"{r['pipelined'] / r['direct']:.2f}"])
        print(table(["direct, this process", "ask() ms", "Session open() + query ms", "open(wait=False) + query ms",
                     "open / ask", "wait=False / ask"], rows))
        print()
        cpu = results["cpu"]
        print(table(["CPU per streamed chunk", "µs"], [
            ["direct ask() (this process)", f"{cpu['direct'] * 1e6:.1f}"],
            ["gateway (its process)", f"{cpu['gateway'] * 1e6:.1f}"],
            ["ratio gateway / direct", f"{cpu['gateway'] / cpu['direct']:.2f}"],
        ]))
        print()
        g, d = results["concurrent_gateway"], results["concurrent_direct"]
        print(table([f"{sessions} concurrent streams", "correct", "baseline MiB", "peak MiB", "KiB/stream", "wall s",
                     "CPU s"], [
            ["gateway (its process)", f"{g['correct']}/{sessions}", f"{g['base_kib'] / 1024:.1f}",
             f"{g['peak_kib'] / 1024:.1f}", f"{(g['peak_kib'] - g['base_kib']) / sessions:.0f}", f"{g['wall']:.2f}",
             f"{g['cpu']:.2f}"],
            ["direct ask() (one process)", f"{d['correct']}/{sessions}", f"{d['base_kib'] / 1024:.1f}",
             f"{d['peak_kib'] / 1024:.1f}", f"{(d['peak_kib'] - d['base_kib']) / sessions:.0f}", f"{d['wall']:.2f}",
             f"{d['cpu']:.2f}"],
        ]))
        if g.get("errors"):
            print("gateway errors:", g["errors"])
        print()
    loop, loop_min = results["ttft_loopback"], results["ttft_loopback_min"]
    for label, r in (("median", loop), ("minimum", loop_min)):
        cold_added = (r["cold"] - r["direct"]) * 1000
        warm_added = (r["warm"] - r["direct"]) * 1000
        print(f"gateway adds at most 1 ms to the first token on loopback ({label}): cold {cold_added:+.2f} ms "
              f"({verdict(cold_added <= 1.0)}), with --warm {warm_added:+.2f} ms ({verdict(warm_added <= 1.0)})")
    if not args.loopback_only:
        slow_r = results["ttft_slow"]
        ratio = cpu["gateway"] / cpu["direct"]
        print(f"gateway CPU per chunk at most 2x direct: {ratio:.2f}x ({verdict(ratio <= 2.0)})")
        print(f"--warm first token within 1 RTT (+ server time): {slow_r['warm'] / rtt:.2f} RTT "
              f"({verdict(round(slow_r['warm'] / rtt) <= 1)})")
        print(f"{sessions} concurrent streams all correct: gateway {verdict(g['correct'] == sessions)}, "
              f"direct {verdict(d['correct'] == sessions)}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
