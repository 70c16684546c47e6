"""Time to the first answer text over a slow link, in round trips, for every client.

    python benchmarks/ttft.py [--delay 0.025] [--runs 5] [--quick]

One run of the Labs emulator over plain TCP and one over TLS (a trustme certificate; TLS 1.3),
each behind a relay (relay.py) that delays every chunk by DELAY seconds each way and charges
a round trip for each TCP connect, so one round trip (RTT) is 2 * DELAY.  Against the same
servers and the same answer, each client asks the same question; the clock runs from the
call to the first non-empty answer text.  Clients: plabs-proto with each transport on each
backend (curl: the curl_cffi backend, Chrome's TLS, side by side when curl_cffi is installed),
python-socketio's AsyncClient (default: polling, then upgrade), and the seed
provider's flow on aiohttp.  Runs are interleaved (one of each client per round) after one
warm-up each; the table shows the median in milliseconds and in round trips (time / RTT).
Every answer is checked against the expected text.

Targets (issue 4): ``websocket`` at most 4 round trips on TCP and 5 on TLS; ``upgrade`` at
least 2 round trips fewer than the seed's flow.
"""

from __future__ import annotations

import argparse
import sys
import time

from _clients import label, plabs_kinds, runner
from _common import Child, certificates, header, median, table, tls_version, verdict

ANSWER = (
    "Sans-IO means the protocol code never touches a socket: it takes the bytes that arrived and "
    "gives back events and the bytes to send, so any I/O library can drive it."
)
OTHERS = ["python-socketio", "seed"]


def measure(kinds: list[str], url: str, cafile: str | None, runs: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    calls = {kind: runner(kind, url, cafile) for kind in kinds}
    for round_ in range(runs + 1):  # round 0 warms up
        for kind in kinds:
            first, text = calls[kind]()
            if text != ANSWER:
                raise SystemExit(f"{kind} over {url}: wrong answer {text[:80]!r}... (expected {ANSWER[:40]!r}...)")
            if round_:
                times[kind].append(first)
    return times


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--delay", type=float, default=0.025, help="one-way delay in seconds (default 0.025)")
    parser.add_argument("--runs", type=int, default=5, help="measured runs per client and link (default 5)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 run, asyncio and sync only")
    args = parser.parse_args(argv)
    runs = 1 if args.quick else args.runs
    backends: tuple[str, ...] = ("asyncio", "sync") if args.quick else ("asyncio", "trio", "sync")
    if _has_curl():
        backends += ("curl",)
    kinds = plabs_kinds(backends) + OTHERS
    rtt: float = 2 * float(args.delay)
    started = time.monotonic()
    results: dict[str, dict[str, float]] = {kind: {} for kind in kinds}
    with certificates() as certs:
        emulator_args = ["emulator", "--answer", ANSWER, "--chunk-size", "8", "--frame-delay", "0.002"]
        with Child("servers.py", *emulator_args) as plain, Child(
            "servers.py", *emulator_args, "--certfile", certs.certfile, "--keyfile", certs.keyfile
        ) as tls:
            plain_port = plain.ready[0].rsplit(":", 1)[1]
            tls_port = tls.ready[0].rsplit(":", 1)[1]
            version = tls_version(int(tls_port), certs.cafile)
            delay = str(args.delay)
            relays = {
                "tcp": (plain_port, str(args.delay), None),
                "tls": (tls_port, str(args.delay), certs.cafile),
                "tcp0": (plain_port, "0", None),
                "tls0": (tls_port, "0", certs.cafile),
            }
            children: list[Child] = []
            try:
                links = {}
                for link, (port, delay, cafile) in relays.items():
                    extra = ["--no-handshake"] if delay == "0" else []
                    relay = Child("relay.py", "--upstream", f"127.0.0.1:{port}", "--delay", delay, *extra)
                    children.append(relay)
                    scheme = "https" if cafile else "http"
                    links[link] = (f"{scheme}://127.0.0.1:{relay.ready[0]}", cafile)
                for link, (url, cafile) in links.items():
                    for kind, values in measure(kinds, url, cafile, runs).items():
                        results[kind][link] = median(values)
                        results[kind][link + "_min"] = min(values)
                        results[kind][link + "_max"] = max(values)
            finally:
                for child in children:
                    child.stop()
    elapsed = time.monotonic() - started

    print(header("Time to first text over a slow link (benchmarks/ttft.py)"))
    print(f"one-way delay {args.delay * 1000:.0f} ms each way (RTT {rtt * 1000:.0f} ms), TCP connect charged one RTT; "
          f"TLS: {version}; answer {len(ANSWER)} chars in 8-char frames; median of {runs} interleaved runs "
          f"after a warm-up; {elapsed:.0f} s")
    print()

    def net(r: dict[str, float], link: str) -> float:
        return float(r[link] - r[link + "0"]) / rtt

    rows = []
    for kind in kinds:
        r = results[kind]
        rows.append([label(kind),
                     f"{r['tcp'] * 1000:.0f}", f"{r['tcp'] / rtt:.2f}", f"{net(r, 'tcp'):.2f}", f"{r['tcp0'] * 1000:.1f}",
                     f"{r['tls'] * 1000:.0f}", f"{r['tls'] / rtt:.2f}", f"{net(r, 'tls'):.2f}", f"{r['tls0'] * 1000:.1f}"])
    print(table(["client", "TCP ms", "TCP RTT", "net", "0-delay ms", "TLS ms", "TLS RTT", "net", "0-delay ms"], rows))
    print()
    print("RTT = time / RTT; net = (time - the same client's time over a zero-delay relay) / RTT, i.e. the round")
    print("trips spent waiting on the link without the local processing time.  Targets are judged on whole round")
    print("trips (net rounded to the nearest integer).")
    print()
    seed = results["seed"]
    sio = results["python-socketio"]
    for backend in backends:
        ws = results[f"plabs-{backend}-websocket"]
        up = results[f"plabs-{backend}-upgrade"]
        print(f"{backend:<8} websocket: {ws['tcp'] / rtt:.2f} RTT on TCP, {net(ws, 'tcp'):.2f} net = "
              f"{round(net(ws, 'tcp'))} round trips (target <= 4: {verdict(round(net(ws, 'tcp')) <= 4)}); "
              f"{ws['tls'] / rtt:.2f} on TLS, {net(ws, 'tls'):.2f} net = {round(net(ws, 'tls'))} round trips "
              f"(target <= 5: {verdict(round(net(ws, 'tls')) <= 5)})")
        for link in ("tcp", "tls"):
            fewer = (seed[link] - up[link]) / rtt
            print(f"{backend:<8} upgrade on {link.upper()}: {up[link] / rtt:.2f} RTT, {fewer:.2f} fewer than the seed's "
                  f"flow = {round(fewer)} round trips (target >= 2: {verdict(round(fewer) >= 2)}); "
                  f"{(sio[link] - up[link]) / rtt:.2f} fewer than python-socketio")
    if "curl" in backends:
        print()
        for transport in ("websocket", "upgrade", "polling"):
            curl, pure = results[f"plabs-curl-{transport}"], results[f"plabs-asyncio-{transport}"]
            print(f"curl / asyncio, {transport:<9}: " + ", ".join(
                f"{link.upper()} {curl[link] / pure[link]:.2f}x" for link in ("tcp", "tls", "tcp0", "tls0")))
    return results


def _has_curl() -> bool:
    try:
        import curl_cffi  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main(sys.argv[1:])
