"""This checkout's core against another commit's, side by side in one process.

    python benchmarks/ab.py [--base main] [--frames 2000] [--step 8] [--rounds 21]
    python benchmarks/ab.py --base REV --instructions    # valgrind's instruction counts instead
    python benchmarks/ab.py --service perplexity [--shape blocks] [--frames 2000] [--step 8] [--instructions]

A machine shared with other work makes two separate runs disagree by more than the
differences worth measuring.  So the other commit's ``plabs_proto`` is unpacked
(``git archive``) under another name (``plabs_base``: the package imports itself
relatively) and both are timed in the same process, alternately A B B A..., on
core.py's recorded stream: ``LabsClient.receive_data`` on 64 KiB reads of
WebSocket progress frames after a scripted ``websocket`` handshake, then draining
the events.  Process CPU time per frame; the median and the minimum of each, and
B / A.  A is the base, B this checkout.

``--service perplexity`` does the same for the ask service: a ``PerplexityClient`` fed the
warm-up's response and then the ask's (HTTP/1.1 chunked, the emulator's SSE events of
``--shape`` with ``--step`` answer characters each, ``perplexity.py``'s stream) in 64 KiB
pieces, the events drained; CPU (or instructions) per SSE event.

``--instructions`` counts instead of timing, for a machine too busy for times to agree: each
side runs alone under valgrind (cachegrind), once with ``--frames`` frames and once with three
times as many, and the difference divided by the extra frames is instructions per frame,
without the start-up.  Valgrind must be on PATH.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from types import ModuleType

from core import CHUNK, _frame, recorded_stream

ROOT = Path(__file__).resolve().parent.parent
KEY = "a6qUVePnBoLCCUysYp9vvg=="  # the Sec-WebSocket-Key random.Random(0) gives
ACCEPT = base64.b64encode(hashlib.sha1((KEY + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
SWITCH = (
    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    f"Sec-WebSocket-Accept: {ACCEPT}\r\n\r\n"
).encode()
OPEN = '0{"sid":"E","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}'


def base_package(rev: str, into: Path) -> ModuleType:
    """``plabs_proto`` as of ``rev``, imported as ``plabs_base``: its byte-level client module
    (``plabs_base.wire.client``, or ``plabs_base.client`` before the layout of issue 16).  The
    package's own absolute imports are renamed with it."""
    archive = into / "base.tar"
    with archive.open("wb") as out:
        subprocess.run(["git", "-C", str(ROOT), "archive", rev, "plabs_proto"], stdout=out, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "tree", filter="data")
    shutil.move(into / "tree" / "plabs_proto", into / "plabs_base")
    for source in (into / "plabs_base").rglob("*.py"):
        source.write_text(source.read_text().replace("plabs_proto", "plabs_base"))
    sys.path.insert(0, str(into))
    wire = into / "plabs_base" / "wire" / "client.py"
    return importlib.import_module("plabs_base.wire.client" if wire.exists() else "plabs_base.client")


def per_frame(client_module: ModuleType, stream: bytes, answer: str, frames: int) -> float:
    """CPU µs per frame for one pass over the stream."""
    client = client_module.LabsClient(
        client_module.ClientConfig(server="http://labs.test", transport="websocket"), rng=random.Random(0)
    )
    client.connect(0.0)
    client.query("hi", model="sonar", now=0.0)
    client.transmit()
    client.receive_data(1, SWITCH + _frame(OPEN) + _frame('40{"sid":"S"}'), 0.5)
    client.transmit()
    client.events()
    last = None
    start = time.process_time()
    for i in range(0, len(stream), CHUNK):
        client.receive_data(1, stream[i : i + CHUNK], 1.0)
        got = client.events()
        if got:
            last = got[-1]
    spent = time.process_time() - start
    if type(last).__name__ != "AnswerFinished" or getattr(last, "text", None) != answer:
        raise SystemExit(f"{client_module.__name__} decoded the wrong answer")
    return spent / frames * 1e6


def ask_stream(shape: str, events: int, step: int) -> tuple[bytes, str]:
    """The ask's whole response (head and chunked SSE body) for ``events`` events of ``step``
    characters in ``shape``, and the answer (``perplexity.py``'s burst stream)."""
    import perplexity

    answer = perplexity.answer_text(events * step)
    return perplexity.ask_head() + perplexity.chunked_body(perplexity.sse_events(shape, answer, step)), answer


def per_event(client_module: ModuleType, response: bytes, answer: str, events: int) -> float:
    """CPU µs per SSE event for one ask: the warm-up's response, then ``response`` in 64 KiB pieces."""
    import perplexity

    client = client_module.PerplexityClient(
        client_module.ClientConfig(service="perplexity", server="http://bench.test"), rng=random.Random(1)
    )
    client.connect(0.0)
    client.query("What is sans-IO?", now=0.0)
    stream = next(i.stream_id for i in client.transmit() if getattr(i, "stream_id", 0))
    client.receive_data(stream, perplexity.warmup_response(), 0.0)
    client.transmit()
    last = None
    start = time.process_time()
    for i in range(0, len(response), CHUNK):
        client.receive_data(stream, response[i : i + CHUNK], 1.0)
        client.transmit()
        got = client.events()
        if got:
            last = got[-1]
    spent = time.process_time() - start
    if type(last).__name__ != "AnswerFinished" or getattr(last, "text", None) != answer:
        raise SystemExit(f"{client_module.__name__} decoded the wrong answer")
    return spent / events * 1e6


def count_instructions(side: str, rev: str, frames: int, step: int, shape: str | None = None) -> float:
    """Instructions per frame (per SSE event with ``shape``) of one side ("A": ``rev``, "B": this
    checkout), counted by cachegrind: the recorded stream is made outside valgrind and read from a
    file, so only decoding is counted."""
    counts = []
    for n in (frames, 3 * frames):
        with tempfile.TemporaryDirectory() as tmp:
            out, recorded = Path(tmp) / "cachegrind.out", Path(tmp) / "stream"
            stream, answer = recorded_stream(n, step) if shape is None else ask_stream(shape, n, step)
            recorded.write_bytes(answer.encode() + b"\0" + stream)
            service = [] if shape is None else ["--service", "perplexity", "--shape", shape]
            subprocess.run(
                ["valgrind", "--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={out}",
                 sys.executable, __file__, "--one", side, "--base", rev, "--frames", str(n), "--stream", str(recorded),
                 *service],
                check=True, capture_output=True, cwd=Path(__file__).parent,
            )
            summary = next(line for line in out.read_text().splitlines() if line.startswith("summary:"))
            counts.append(int(summary.split()[1]))
    return (counts[1] - counts[0]) / (2 * frames)


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="main", help="the commit to compare with (default main)")
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--step", type=int, default=8, help="characters added per frame (default 8)")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--instructions", action="store_true", help="count instructions (valgrind) instead")
    parser.add_argument("--service", choices=("labs", "perplexity"), default="labs",
                        help="the service whose stream is decoded (default labs)")
    parser.add_argument("--shape", choices=("steps", "blocks", "workflow"), default="blocks",
                        help="the ask service's answer shape (default blocks)")
    parser.add_argument("--one", choices=("A", "B"), help=argparse.SUPPRESS)  # one pass of one side
    parser.add_argument("--stream", help=argparse.SUPPRESS)  # ... on this recorded stream
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    shape = args.shape if args.service == "perplexity" else None
    unit, units = ("frame", "frames") if shape is None else ("SSE event", f"SSE events ({shape} shape)")
    if args.instructions:
        a, b = (count_instructions(side, args.base, args.frames, args.step, shape) for side in ("A", "B"))
        print(f"{args.frames} and {3 * args.frames} {units}, {args.step} characters each; instructions per {unit}")
        print(f"A ({args.base}): {a:,.0f}")
        print(f"B (this checkout): {b:,.0f}")
        print(f"B / A: {b / a:.3f}")
        return b / a
    if args.one is not None:
        answer_bytes, _, stream = Path(args.stream).read_bytes().partition(b"\0")
        answer = answer_bytes.decode()
        with tempfile.TemporaryDirectory() as tmp:
            module = base_package(args.base, Path(tmp)) if args.one == "A" else importlib.import_module(
                "plabs_proto.wire.client"
            )
            if shape is None:
                per_frame(module, stream, answer, args.frames)
            else:
                per_event(module, stream, answer, args.frames)
        return 0.0
    stream, answer = recorded_stream(args.frames, args.step) if shape is None else ask_stream(shape, args.frames,
                                                                                                args.step)
    measure = per_frame if shape is None else per_event
    current = importlib.import_module("plabs_proto.wire.client")
    times: dict[str, list[float]] = {"A": [], "B": []}
    with tempfile.TemporaryDirectory() as tmp:
        base = base_package(args.base, Path(tmp))
        for round_ in range(args.rounds):
            order = (("A", base), ("B", current)) if round_ % 2 == 0 else (("B", current), ("A", base))
            for name, module in order:
                times[name].append(measure(module, stream, answer, args.frames))
    a, b = statistics.median(times["A"]), statistics.median(times["B"])
    low_a, low_b = min(times["A"]), min(times["B"])
    print(f"{args.frames} {units}, {args.step} characters each, {args.rounds} rounds; CPU µs per {unit}")
    print(f"A ({args.base}): median {a:.2f}, min {low_a:.2f}")
    print(f"B (this checkout): median {b:.2f}, min {low_b:.2f}")
    print(f"B / A: median {b / a:.3f}, min {low_b / low_a:.3f}")
    return b / a


if __name__ == "__main__":
    main()
