"""Many answers streaming at once in one process: peak memory per session and total CPU.

    python benchmarks/concurrency.py [--sessions 200] [--frames 60] [--frame-delay 0.05] [--quick]

The Labs emulator (its own process) answers every query with FRAMES progress frames of 8
characters, FRAME_DELAY seconds apart, so an answer streams for about FRAMES * FRAME_DELAY
seconds and the sessions overlap.  Each client kind runs in a fresh process: it asks once to
warm up (imports, lazily built tables), collects garbage and reads its resident memory
(VmRSS); then it starts SESSIONS questions at once (``asyncio.gather`` / an anyio task group on trio),
waits for all of them and reads its peak resident memory (``ru_maxrss``) and CPU time.
Memory per session = (peak - baseline) / SESSIONS.  Every answer is checked.

Clients: plabs-proto on asyncio and trio with the ``websocket`` and ``upgrade`` transports,
python-socketio's AsyncClient (one per session, as its users do; default transports and
websocket only) and the seed provider's flow on aiohttp (one ClientSession per question, as
the provider does).

Target (issue 4): less memory per session than python-socketio's client, every answer correct.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import resource
import sys
import time
from typing import Any

from _clients import asyncio_coroutine, label
from _common import Child, header, run_worker, table, verdict

KINDS = [
    "plabs-asyncio-websocket",
    "plabs-asyncio-upgrade",
    "plabs-trio-websocket",
    "plabs-trio-upgrade",
    "python-socketio",
    "python-socketio-ws",
    "seed",
]
WORDS = "Sans-IO keeps the protocol apart from the sockets, so one state machine serves every backend. "


def answer_text(frames: int) -> str:
    text = WORDS * (frames * 8 // len(WORDS) + 1)
    return text[: frames * 8]


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


Span = tuple[float, float, float]  # start, first text, end (perf_counter)


async def _asyncio_sessions(kind: str, url: str, n: int) -> list[Any]:
    factory = asyncio_coroutine(kind, url)

    async def one() -> tuple[Span, str]:
        start = time.perf_counter()
        first, text = await factory()
        return (start, start + first, time.perf_counter()), text

    return list(await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True))


async def _grouped_sessions(kind: str, url: str, n: int) -> list[Any]:
    """The trio backend (plabs-trio-<transport>, on trio) or the evaluated anyio backend
    (anyio-<loop>-<transport>), n asks in one anyio task group."""
    import anyio
    from _clients import ask_anyio, ask_plabs_trio

    ask = ask_anyio if kind.startswith("anyio-") else ask_plabs_trio
    transport = kind.rsplit("-", 1)[1]
    results: list[Any] = [None] * n

    async def one(i: int) -> None:
        start = time.perf_counter()
        try:
            first, text = await ask(url, transport, None)
            results[i] = ((start, start + first, time.perf_counter()), text)
        except Exception as exc:
            results[i] = exc

    async with anyio.create_task_group() as group:
        for i in range(n):
            group.start_soon(one, i)
    return results


def run_sessions(kind: str, url: str, n: int) -> list[Any]:
    if kind.startswith(("anyio-", "plabs-trio-")):
        import anyio

        loop = kind.split("-")[1]  # asyncio or trio ("plabs-trio-...": trio)
        return anyio.run(_grouped_sessions, kind, url, n, backend=loop)  # type: ignore[no-any-return]
    return asyncio.run(_asyncio_sessions(kind, url, n))


def max_overlap(spans: list[Span]) -> int:
    """The most sessions streaming (first text received, not finished) at one instant."""
    points = sorted([(first, 1) for _, first, _ in spans] + [(end, -1) for _, _, end in spans])
    live = best = 0
    for _, step in points:
        live += step
        best = max(best, live)
    return best


def worker(kind: str, url: str, sessions: int, frames: int) -> None:
    expected = answer_text(frames)
    warm = run_sessions(kind, url, 1)[0]
    if isinstance(warm, BaseException) or warm[1] != expected:
        raise SystemExit(f"{kind}: the warm-up failed: {warm!r:.300}")
    gc.collect()
    base = rss_kib()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    results = run_sessions(kind, url, sessions)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    spans = [r[0] for r in results if not isinstance(r, BaseException)]
    correct = sum(1 for r in results if not isinstance(r, BaseException) and r[1] == expected)
    errors = sorted({f"{type(r).__name__}: {r}"[:200] for r in results if isinstance(r, BaseException)})
    print(json.dumps({"kind": kind, "base_kib": base, "peak_kib": peak, "cpu": cpu, "wall": wall,
                      "correct": correct, "overlap": max_overlap(spans) if spans else 0, "errors": errors[:3]}))


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--frames", type=int, default=60, help="progress frames per answer (default 60)")
    parser.add_argument("--frame-delay", type=float, default=0.05, help="seconds between frames (default 0.05)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 20 sessions, 20 frames")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.sessions, args.frames = 20, 20
    if args.worker:
        worker(args.worker, args.url, args.sessions, args.frames)
        return {}
    started = time.monotonic()
    results: dict[str, dict[str, Any]] = {}
    emulator = ["emulator", "--answer", answer_text(args.frames), "--chunk-size", "8",
                "--frame-delay", str(args.frame_delay)]
    with Child("servers.py", *emulator) as server:
        url = server.ready[0]
        for kind in KINDS:
            results[kind] = run_worker("concurrency.py", "--worker", kind, "--url", url, "--sessions",
                                       str(args.sessions), "--frames", str(args.frames))
    elapsed = time.monotonic() - started

    n = args.sessions
    print(header("Concurrent sessions in one process (benchmarks/concurrency.py)"))
    print(f"{n} sessions at once, each streaming a {args.frames * 8}-char answer in {args.frames} frames "
          f"{args.frame_delay * 1000:.0f} ms apart from the emulator (its own process); each client in a fresh process; "
          f"{elapsed:.0f} s")
    print()
    rows = []
    for kind in KINDS:
        r = results[kind]
        per = (r["peak_kib"] - r["base_kib"]) / n
        rows.append([label(kind), f"{r['base_kib'] / 1024:.1f}", f"{r['peak_kib'] / 1024:.1f}", f"{per:.0f}",
                     f"{r['cpu']:.2f}", f"{r['cpu'] / n * 1000:.1f}", f"{r['wall']:.1f}", r["overlap"],
                     f"{r['correct']}/{n}"])
        r["per_session_kib"] = per
    print(table(["client", "base MiB", "peak MiB", "KiB/session", "CPU s", "CPU ms/session", "wall s",
                 "max streaming", "correct"], rows))
    for kind in KINDS:
        if results[kind]["errors"]:
            print(f"{label(kind)} errors: {'; '.join(results[kind]['errors'])}")
    print()
    sio = results["python-socketio"]
    for kind in KINDS[:4]:
        r = results[kind]
        ok = r["per_session_kib"] < sio["per_session_kib"] and r["correct"] == n
        print(f"{label(kind)}: {r['per_session_kib'] / sio['per_session_kib']:.2f} x python-socketio's memory per "
              f"session, {r['cpu'] / sio['cpu']:.2f} x its CPU, {r['correct']}/{n} correct (target: {verdict(ok)})")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
