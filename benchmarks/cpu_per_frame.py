"""CPU time per streamed frame: each client against a server that bursts a long answer.

    python benchmarks/cpu_per_frame.py [--frames 5000] [--step 8] [--repeat 3] [--quick] [--profile KIND] [--deflate]

The burst server (servers.py burst, its own process) answers the query with FRAMES progress
frames, ``output`` growing by STEP characters a frame (the emulator's chunk size), written in
one go.  Each client runs in a fresh process of its own that asks once to warm up, then
REPEAT times; the process's CPU time (``time.process_time()``, user + system, all threads)
from the call to the final frame is divided by FRAMES.  Best run per client.  Every answer
is checked against the expected text.

Clients: plabs-proto ``websocket`` transport on asyncio, trio and sync; python-socketio's
AsyncClient (polling, then upgrade); the seed provider's flow on aiohttp; and the floor: a
blocking socket, wsproto and ``json.loads`` of every message (the least a Python client using
wsproto and the json module does).

Targets (issue 4): plabs-proto at most half of python-socketio's CPU per frame and at most
1.3 times the floor; at least 15,000 frames/s end to end.

``--profile KIND`` runs that client once under cProfile and prints the top entries.

``--deflate``: the burst server accepts permessage-deflate and sends the burst compressed
(see servers.py); the clients that offer it (plabs-proto's pure-Python backends, by default)
then inflate every frame.  Compare with a run without it for the cost of compression.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import socket
import sys
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from _clients import label, runner
from _common import (
    HOST,
    JWT,
    ORIGIN,
    Child,
    burst_outputs,
    header,
    query_message,
    run_worker,
    table,
    verdict,
)

PLABS = ["plabs-asyncio-websocket", "plabs-trio-websocket", "plabs-sync-websocket"]
# The curl_cffi backend (Chrome's TLS, libcurl's I/O) beside them, when curl_cffi is installed; no target.
CURL = ["plabs-curl-websocket"] if importlib.util.find_spec("curl_cffi") else []
KINDS = ["floor", *PLABS, *CURL, "python-socketio", "seed"]


def floor_ask(url: str) -> str:
    """The floor client: blocking socket, wsproto, json.loads of every message; returns the final output."""
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, Request, TextMessage

    parts = urlsplit(url)
    host, port = parts.hostname or HOST, parts.port or 80
    loads = json.loads
    ws = WSConnection(ConnectionType.CLIENT)
    with socket.create_connection((host, port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(ws.send(Request(host=f"{host}:{port}", target="/socket.io/?EIO=4&transport=websocket",
                                     extra_headers=[(b"origin", ORIGIN.encode())])))
        pieces: list[str] = []
        while True:
            data = sock.recv(65536)
            if not data:
                raise RuntimeError("the server closed the connection before the final frame")
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, TextMessage):
                    pieces.append(event.data)
                    if not event.message_finished:
                        continue
                    text = "".join(pieces)
                    pieces.clear()
                    if text.startswith("42"):
                        payload = loads(text[2:])[1]
                        if payload.get("final"):
                            return str(payload["output"])
                    elif text.startswith("0"):
                        sock.sendall(ws.send(TextMessage("40" + json.dumps({"jwt": JWT}, separators=(",", ":")))))
                    elif text.startswith("40"):
                        sock.sendall(ws.send(TextMessage(query_message())))
                    elif text == "2":
                        sock.sendall(ws.send(TextMessage("3")))
                elif isinstance(event, AcceptConnection):
                    pass


def worker(kind: str, url: str, frames: int, step: int, repeat: int, profile: bool) -> None:
    expected = burst_outputs(frames, step)[-1]
    ask: Callable[[], str]
    if kind == "floor":
        ask = lambda: floor_ask(url)  # noqa: E731
    else:
        call = runner(kind, url, None)
        ask = lambda: call()[1]  # noqa: E731
    if ask() != expected:  # warm-up
        raise SystemExit(f"{kind}: wrong answer")
    cpu: list[float] = []
    wall: list[float] = []
    for _ in range(repeat):
        c0, w0 = time.process_time(), time.perf_counter()
        text = ask()
        c1, w1 = time.process_time(), time.perf_counter()
        if text != expected:
            raise SystemExit(f"{kind}: wrong answer ({len(text)} chars, expected {len(expected)})")
        cpu.append(c1 - c0)
        wall.append(w1 - w0)
    if profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.enable()
        text = ask()
        profiler.disable()
        assert text == expected
        stats = pstats.Stats(profiler, stream=sys.stderr)
        sys.stderr.write(f"cProfile of one {kind} run ({frames} frames), by own time:\n")
        stats.sort_stats("tottime").print_stats(25)
    print(json.dumps({"kind": kind, "cpu": cpu, "wall": wall}))


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=5000)
    parser.add_argument("--step", type=int, default=8, help="characters added per frame (default 8)")
    parser.add_argument("--repeat", type=int, default=3, help="measured runs per client (default 3)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 500 frames, 1 run")
    parser.add_argument("--profile", metavar="KIND", help=f"profile one client: one of {', '.join(KINDS)}")
    parser.add_argument("--deflate", action="store_true",
                        help="the server negotiates permessage-deflate and compresses the burst")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.frames, args.repeat = 500, 1
    if args.worker:
        worker(args.worker, args.url, args.frames, args.step, args.repeat, args.profile == args.worker)
        return {}
    kinds = [args.profile] if args.profile else KINDS
    sizes = burst_outputs(args.frames, args.step)
    stream_mb = sum(len(s) + 60 for s in sizes) / 1e6
    started = time.monotonic()
    results: dict[str, dict[str, float]] = {}
    deflate = ["--deflate"] if args.deflate else []
    with Child("servers.py", "burst", "--frames", str(args.frames), "--step", str(args.step), *deflate) as server:
        url = server.ready[0]
        for kind in kinds:
            extra = ["--profile", kind] if args.profile else []
            out = run_worker("cpu_per_frame.py", "--worker", kind, "--url", url, "--frames", str(args.frames),
                             "--step", str(args.step), "--repeat", str(args.repeat), *extra)
            results[kind] = {"cpu": min(out["cpu"]), "wall": min(out["wall"])}
    elapsed = time.monotonic() - started
    if args.profile:
        return results

    n = args.frames
    print(header("CPU per streamed frame (benchmarks/cpu_per_frame.py)"))
    print(f"{n} frames, output growing by {args.step} chars a frame to {len(sizes[-1])} chars (about {stream_mb:.0f} MB "
          f"of frames); server: a burst of pre-encoded frames in its own process; each client in a fresh process, "
          f"best of {args.repeat} after a warm-up; {elapsed:.0f} s"
          + ("; permessage-deflate offered by the server, the burst compressed" if args.deflate else ""))
    print()
    floor = results["floor"]["cpu"]
    sio = results["python-socketio"]["cpu"]
    rows = []
    for kind in kinds:
        r = results[kind]
        rows.append([label(kind), f"{r['cpu'] / n * 1e6:.1f}", f"{n / r['cpu']:.0f}", f"{n / r['wall']:.0f}",
                     f"{r['cpu'] / floor:.2f}", f"{r['cpu'] / sio:.2f}"])
    print(table(["client", "CPU µs/frame", "frames/CPU-s", "frames/s wall", "x floor", "x python-socketio"], rows))
    print()
    for kind in PLABS:
        r = results[kind]
        print(f"{label(kind)}: {r['cpu'] / sio:.2f} x python-socketio (target <= 0.5: {verdict(r['cpu'] / sio <= 0.5)}), "
              f"{r['cpu'] / floor:.2f} x floor (target <= 1.3: {verdict(r['cpu'] / floor <= 1.3)}), "
              f"{n / r['wall']:.0f} frames/s wall (aim >= 15000: {verdict(n / r['wall'] >= 15000)})")
    for kind in CURL:
        r, pure = results[kind], results["plabs-asyncio-websocket"]
        print(f"{label(kind)}: {r['cpu'] / pure['cpu']:.2f} x plabs-proto asyncio CPU per frame, "
              f"{r['cpu'] / sio:.2f} x python-socketio, {n / r['wall']:.0f} frames/s wall")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
