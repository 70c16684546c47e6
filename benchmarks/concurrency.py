"""Many answers streaming at once in one process: peak memory and CPU per session, at scale.

    python benchmarks/concurrency.py [--sessions 1000 ...] [--servers emulator node] [--deflate on off]
                                     [--rounds 3] [--sync-max 1000] [--frames 60] [--frame-delay 0.05] [--quick]

Each server (its own process) answers every query with FRAMES progress frames of 8 characters,
FRAME_DELAY seconds apart, so an answer streams for about FRAMES * FRAME_DELAY seconds and the
sessions overlap.  Servers: ``emulator`` (python-socketio and python-engineio on aiohttp, whose
``WebSocketResponse`` accepts permessage-deflate) and ``node`` (tests/node_server/server.js on
socket.io, ``--per-message-deflate``).  Once the extension is negotiated both compress every
message, small ones included (Node's too: 63 of 63 frames of a session carry RSV1, whatever
the 1 KiB threshold server.js mentions).

Each client kind runs in a fresh process: it asks once to warm up (imports, lazily built tables),
collects garbage and reads its resident memory (VmRSS); then it starts SESSIONS questions at once
(``asyncio.gather``; an anyio task group on trio; one thread each on the sync backend), waits for
all of them and reads its peak resident memory (``ru_maxrss``) and CPU time.  Memory per session =
(peak - baseline) / SESSIONS.  Every answer is checked.

Clients: plabs-proto on asyncio, trio and sync (threads, up to ``--sync-max`` sessions) with the
``websocket`` and ``upgrade`` transports, each with permessage-deflate offered (``deflate on``, the
default) and not (``deflate off``); python-socketio's AsyncClient (one per session, as its users
do; default transports and websocket only) and the seed provider's flow on aiohttp (one
ClientSession per question, as the provider does).  Neither offers the extension.

The machine is shared: every round runs each contender once, in an order that rotates from round
to round, and the tables give medians over the rounds.

Targets (issue 20), as ratios to python-socketio's AsyncClient of the same transport
(``websocket``: its websocket-only client; ``upgrade``: its default polling+upgrade) in the same
run, checked at the largest count run (1,000 by default, where they bite; at 200 they did not):
memory per session at most 1.0x with the extension negotiated and every message compressed (the
emulator), at most 0.5x otherwise; CPU per session at most 0.7x on asyncio and 0.8x on trio; every
answer correct.
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
from _common import Child, NodeChild, header, median, run_worker, table, verdict

PLABS = [
    "plabs-asyncio-websocket",
    "plabs-asyncio-upgrade",
    "plabs-trio-websocket",
    "plabs-trio-upgrade",
]
SYNC = ["plabs-sync-websocket", "plabs-sync-upgrade"]
OTHERS = ["python-socketio", "python-socketio-ws", "seed"]
#: The python-socketio client each plabs transport is held against.
PEER = {"websocket": "python-socketio-ws", "upgrade": "python-socketio"}
#: Targets: memory per session as a ratio to python-socketio's, with the extension negotiated
#: and every message compressed / otherwise; CPU per session by backend.
MEMORY_COMPRESSED = 1.0
MEMORY_PLAIN = 0.5
CPU = {"asyncio": 0.7, "trio": 0.8}
#: The servers that compress every message once the extension is negotiated.
COMPRESS_ALL = {"emulator", "node"}
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


async def _asyncio_sessions(kind: str, url: str, n: int, options: dict[str, Any]) -> list[Any]:
    factory = asyncio_coroutine(kind, url, **options)

    async def one() -> tuple[Span, str]:
        start = time.perf_counter()
        first, text = await factory()
        return (start, start + first, time.perf_counter()), text

    return list(await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True))


async def _grouped_sessions(kind: str, url: str, n: int, options: dict[str, Any]) -> list[Any]:
    """The trio backend (plabs-trio-<transport>, on trio) or the evaluated anyio backend
    (anyio-<loop>-<transport>), n asks in one anyio task group."""
    import anyio
    from _clients import ask_anyio, ask_plabs_trio

    transport = kind.rsplit("-", 1)[1]
    results: list[Any] = [None] * n

    async def one(i: int) -> None:
        start = time.perf_counter()
        try:
            if kind.startswith("anyio-"):
                first, text = await ask_anyio(url, transport, None)
            else:
                first, text = await ask_plabs_trio(url, transport, None, **options)
            results[i] = ((start, start + first, time.perf_counter()), text)
        except Exception as exc:
            results[i] = exc

    async with anyio.create_task_group() as group:
        for i in range(n):
            group.start_soon(one, i)
    return results


def _threaded_sessions(kind: str, url: str, n: int, options: dict[str, Any]) -> list[Any]:
    """The sync backend: n asks, one thread each."""
    import threading

    from _clients import ask_plabs_sync

    transport = kind.rsplit("-", 1)[1]
    results: list[Any] = [None] * n

    def one(i: int) -> None:
        start = time.perf_counter()
        try:
            first, text = ask_plabs_sync(url, transport, None, **options)
            results[i] = ((start, start + first, time.perf_counter()), text)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def run_sessions(kind: str, url: str, n: int, options: dict[str, Any]) -> list[Any]:
    if kind.startswith("plabs-sync-"):
        return _threaded_sessions(kind, url, n, options)
    if kind.startswith(("anyio-", "plabs-trio-")):
        import anyio

        loop = kind.split("-")[1]  # asyncio or trio ("plabs-trio-...": trio)
        return anyio.run(_grouped_sessions, kind, url, n, options, backend=loop)  # type: ignore[no-any-return]
    return asyncio.run(_asyncio_sessions(kind, url, n, options))


def max_overlap(spans: list[Span]) -> int:
    """The most sessions streaming (first text received, not finished) at one instant."""
    points = sorted([(first, 1) for _, first, _ in spans] + [(end, -1) for _, _, end in spans])
    live = best = 0
    for _, step in points:
        live += step
        best = max(best, live)
    return best


def worker(kind: str, url: str, sessions: int, frames: int, plain: bool) -> None:
    expected = answer_text(frames)
    options: dict[str, Any] = {"permessage_deflate": False} if plain else {}
    warm = run_sessions(kind, url, 1, options)[0]
    if isinstance(warm, BaseException) or warm[1] != expected:
        raise SystemExit(f"{kind}: the warm-up failed: {warm!r:.300}")
    gc.collect()
    base = rss_kib()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    results = run_sessions(kind, url, sessions, options)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    spans = [r[0] for r in results if not isinstance(r, BaseException)]
    correct = sum(1 for r in results if not isinstance(r, BaseException) and r[1] == expected)
    errors = sorted({f"{type(r).__name__}: {r}"[:200] for r in results if isinstance(r, BaseException)})
    print(json.dumps({"kind": kind, "base_kib": base, "peak_kib": peak, "cpu": cpu, "wall": wall,
                      "correct": correct, "overlap": max_overlap(spans) if spans else 0, "errors": errors[:3]}))


Contender = tuple[str, bool]  # kind, permessage-deflate offered (plabs only; the others never offer it)


def contenders(family: str, count: int, deflate: list[str], sync_max: int) -> list[Contender]:
    plabs = PLABS + (SYNC if count <= sync_max else [])
    out: list[Contender] = [(kind, mode == "on") for kind in plabs for mode in deflate]
    # The seed flow expects python-engineio's "OK" to its POST: Node's engine.io answers "ok".
    return out + [(kind, False) for kind in OTHERS if not (kind == "seed" and family == "node")]


def name(contender: Contender) -> str:
    kind, offered = contender
    if not kind.startswith("plabs-"):
        return label(kind)
    return f"{label(kind)} deflate {'on' if offered else 'off'}"


def server(family: str, frames: int, delay: float) -> Child:
    answer = answer_text(frames)
    if family == "node":
        return NodeChild("--answer", answer, "--chunk-size", "8", "--frame-delay-ms", str(round(delay * 1000)),
                         "--per-message-deflate", "--citations", "[]")
    return Child("servers.py", "emulator", "--answer", answer, "--chunk-size", "8", "--frame-delay", str(delay))


def measure(args: argparse.Namespace) -> dict[tuple[str, int], dict[Contender, list[dict[str, Any]]]]:
    """Every (server, count): each contender's result in each round."""
    out: dict[tuple[str, int], dict[Contender, list[dict[str, Any]]]] = {}
    for family in args.servers:
        with server(family, args.frames, args.frame_delay) as child:
            url = child.ready[0]
            for count in args.sessions:
                runs = out[(family, count)] = {}
                order = [c for c in contenders(family, count, args.deflate, args.sync_max)
                         if not args.kinds or c[0] in args.kinds]
                for r in range(args.rounds):
                    shift = r * len(order) // args.rounds
                    for kind, offered in order[shift:] + order[:shift]:
                        flags = [] if offered or not kind.startswith("plabs-") else ["--plain"]
                        result = run_worker("concurrency.py", "--worker", kind, "--url", url, "--sessions",
                                            str(count), "--frames", str(args.frames), *flags, timeout=600)
                        result["per_session_kib"] = (result["peak_kib"] - result["base_kib"]) / count
                        result["cpu_ms"] = result["cpu"] / count * 1000
                        runs.setdefault((kind, offered), []).append(result)
    return out


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The medians of a contender's rounds (correct: the fewest; errors: all seen)."""
    return {
        "kib": median([r["per_session_kib"] for r in results]),
        "cpu_ms": median([r["cpu_ms"] for r in results]),
        "base": median([r["base_kib"] for r in results]) / 1024,
        "wall": median([r["wall"] for r in results]),
        "overlap": min(r["overlap"] for r in results),
        "correct": min(r["correct"] for r in results),
        "errors": sorted({e for r in results for e in r["errors"]}),
    }


def targets(family: str, count: int, rows: dict[Contender, dict[str, Any]]) -> list[str]:
    """The verdict lines for one server at the count where the targets are checked."""
    lines = []
    for (kind, offered), row in rows.items():
        if not kind.startswith("plabs-"):
            continue
        _, backend, transport = kind.split("-", 2)
        peer = rows.get((PEER[transport], False))
        if peer is None:
            continue
        compressed = offered and family in COMPRESS_ALL
        memory_bound = MEMORY_COMPRESSED if compressed else MEMORY_PLAIN
        memory = row["kib"] / peer["kib"]
        cpu = row["cpu_ms"] / peer["cpu_ms"]
        cpu_bound = CPU.get(backend)
        ok = memory <= memory_bound and (cpu_bound is None or cpu <= cpu_bound) and row["correct"] == count
        cpu_target = f" and {cpu_bound}x CPU" if cpu_bound is not None else " (CPU: no target)"
        lines.append(
            f"{name((kind, offered))}: {memory:.2f} x {PEER[transport]}'s memory per session, {cpu:.2f} x its CPU, "
            f"{row['correct']}/{count} correct (target: {memory_bound}x memory{cpu_target}: {verdict(ok)})"
        )
    return lines


def main(argv: list[str] | None = None) -> dict[tuple[str, int], dict[Contender, dict[str, Any]]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, nargs="+", default=[1000], help="session counts (default 1000)")
    parser.add_argument("--servers", nargs="+", choices=["emulator", "node"], default=["emulator", "node"])
    parser.add_argument("--deflate", nargs="+", choices=["on", "off"], default=["on", "off"],
                        help="plabs with permessage-deflate offered (on), not (off), or both (default)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the tables give medians (default 3)")
    parser.add_argument("--kinds", nargs="+", help="only these client kinds (default: all)")
    parser.add_argument("--sync-max", type=int, default=1000, help="the most sessions the sync backend runs")
    parser.add_argument("--frames", type=int, default=60, help="progress frames per answer (default 60)")
    parser.add_argument("--frame-delay", type=float, default=0.05, help="seconds between frames (default 0.05)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 20 sessions, 20 frames, one round")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.sessions, args.frames, args.rounds = [20], 20, 1
    if args.worker:
        worker(args.worker, args.url, args.sessions[0], args.frames, args.plain)
        return {}
    started = time.monotonic()
    measured = measure(args)
    elapsed = time.monotonic() - started

    print(header("Concurrent sessions in one process (benchmarks/concurrency.py)"))
    print(f"each session streams a {args.frames * 8}-char answer in {args.frames} frames "
          f"{args.frame_delay * 1000:.0f} ms apart; each client in a fresh process; medians of {args.rounds} "
          f"interleaved round(s); {elapsed:.0f} s")
    summaries: dict[tuple[str, int], dict[Contender, dict[str, Any]]] = {}
    for (family, count), runs in measured.items():
        rows = summaries[(family, count)] = {c: summary(r) for c, r in runs.items()}
        print()
        print(f"## {family}, {count} sessions at once")
        print()
        print(table(["client", "base MiB", "KiB/session", "CPU ms/session", "wall s", "max streaming", "correct"],
                    [[name(c), f"{s['base']:.1f}", f"{s['kib']:.0f}", f"{s['cpu_ms']:.1f}", f"{s['wall']:.1f}",
                      s["overlap"], f"{s['correct']}/{count}"] for c, s in rows.items()]))
        for c, s in rows.items():
            if s["errors"]:
                print(f"{name(c)} errors: {'; '.join(s['errors'][:3])}")
    top = max(args.sessions)
    print()
    print(f"## Targets at {top} sessions")
    for family in args.servers:
        print()
        print(f"{family}:")
        for line in targets(family, top, summaries[(family, top)]):
            print(f"  {line}")
    return summaries


if __name__ == "__main__":
    main(sys.argv[1:])
