"""The sans-IO core alone against its floor, over one recorded stream of progress frames.

    python benchmarks/core.py [--frames 10000] [--step 5] [--repeat 5]

The stream is what a server sends after the WebSocket upgrade: FRAMES text
frames ``42["sonar_query_progress",{"output": <cumulative>, ...}]`` whose
output grows by STEP characters each, delivered in 64 KiB reads as a socket
would.  Two consumers read the same bytes in the same run:

* the core: ``LabsClient.receive_data`` (WebSocket frames, Engine.IO,
  Socket.IO, the Labs decoder) and draining its events;
* the floor: wsproto's ``Connection`` parsing the frames plus ``json.loads``
  of each message, which is the least any Python client that uses wsproto and
  the json module does.

It prints the best time of each and the ratio core / floor (the target is at
most 1.3).  Then one Socket.IO event of about 2 KB (a progress frame with
citations and nested fields): ``socketio.decode_packet`` against the least
it must do (bound the nesting, ``json.loads``), interleaved, best of each
(the target is about 1.1, at most 1.5).
"""

from __future__ import annotations

import argparse
import json
import random
import struct
import sys
import time
import timeit
from pathlib import Path

from wsproto.connection import Connection, ConnectionType
from wsproto.events import TextMessage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from peer import Harness, large_progress_event, open_packet, switching_protocols

from plabs_proto.config import ClientConfig
from plabs_proto.events import AnswerFinished
from plabs_proto.jsondepth import too_deep
from plabs_proto.labs.socketio import decode_packet
from plabs_proto.wire.client import LabsClient

CHUNK = 65536
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "Perplexity", "Labs", "streams", "its", "answer"]


def _frame(text: str) -> bytes:
    data = text.encode("utf-8")
    n = len(data)
    if n < 126:
        return struct.pack("!BB", 0x81, n) + data
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + data
    return struct.pack("!BBQ", 0x81, 127, n) + data


def recorded_stream(frames: int, step: int, model: str = "sonar") -> tuple[bytes, str]:
    """The server's bytes for one answer of ``frames`` progress frames, and the answer."""
    rng = random.Random(7)
    text = ""
    out = bytearray()
    for i in range(frames):
        while len(text) < (i + 1) * step:
            text += rng.choice(WORDS) + " "
        text = text[: (i + 1) * step]
        final = i == frames - 1
        payload: dict[str, object] = {"output": text, "final": final, "elapsed_time": round(i * 0.01, 2),
                                      "tokens_streamed": i + 1}
        if final:
            payload["status"] = "completed"
            payload["citations"] = []
        out += _frame("42" + json.dumps([f"{model}_query_progress", payload]))
    return bytes(out), text


def connected_client() -> LabsClient:
    """A client past its (scripted) WebSocket handshake, with a query in flight."""
    client = LabsClient(ClientConfig(server="http://labs.test", transport="websocket"), rng=random.Random(0))
    h = Harness(client)
    client.connect(0.0)
    client.query("hi", model="sonar", now=0.0)
    h.take(1)
    h.reply(1, switching_protocols("a6qUVePnBoLCCUysYp9vvg==") + _frame(open_packet()) + _frame('40{"sid":"S"}'))
    h.take(1)
    client.events()
    return client


def run_core(stream: bytes, answer: str) -> float:
    client = connected_client()
    receive = client.receive_data
    events = client.events
    last = None
    start = time.perf_counter()
    for i in range(0, len(stream), CHUNK):
        receive(1, stream[i : i + CHUNK], 1.0)
        got = events()
        if got:
            last = got[-1]
    elapsed = time.perf_counter() - start
    assert isinstance(last, AnswerFinished) and last.text == answer, "the core decoded the wrong answer"
    client.transmit()
    return elapsed


def run_floor(stream: bytes, answer: str) -> float:
    conn = Connection(ConnectionType.CLIENT)
    loads = json.loads
    parts: list[str] = []
    last = None
    start = time.perf_counter()
    for i in range(0, len(stream), CHUNK):
        conn.receive_data(stream[i : i + CHUNK])
        for event in conn.events():
            if isinstance(event, TextMessage):
                parts.append(event.data)
                if event.message_finished:
                    message = "".join(parts)
                    parts.clear()
                    last = loads(message[2:])
    elapsed = time.perf_counter() - start
    assert last is not None and last[1]["output"] == answer, "the floor decoded the wrong answer"
    return elapsed


def event_decode_ratio(rounds: int = 15, number: int = 2000) -> float:
    """``decode_packet`` of a 2 KB progress event / the bare minimum, best of ``rounds`` each."""
    event = large_progress_event()
    payload = json.dumps(["sonar_query_progress", event], separators=(",", ":"), ensure_ascii=False)
    wire = "2" + payload

    def bare() -> None:
        too_deep(payload)
        json.loads(payload)

    least = ours = float("inf")
    for _ in range(rounds):  # interleaved: a busy machine slows both alike
        least = min(least, timeit.timeit(bare, number=number))
        ours = min(ours, timeit.timeit(lambda: decode_packet(wire), number=number))
    return ours / least


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--step", type=int, default=5, help="characters added per frame")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    stream, answer = recorded_stream(args.frames, args.step)
    core = floor = float("inf")
    for _ in range(args.repeat):  # interleaved, best of each
        floor = min(floor, run_floor(stream, answer))
        core = min(core, run_core(stream, answer))
    print(f"stream: {args.frames} frames, {len(stream) / 1e6:.1f} MB, final answer {len(answer)} chars")
    print(f"{'consumer':<34}{'best s':>10}{'µs/frame':>12}{'frames/s':>12}")
    for name, secs in (("floor (wsproto + json.loads)", floor), ("plabs-proto core", core)):
        print(f"{name:<34}{secs:>10.4f}{secs / args.frames * 1e6:>12.2f}{args.frames / secs:>12.0f}")
    ratio = core / floor
    print(f"ratio core / floor: {ratio:.2f} (target <= 1.3)")
    print(f"one 2 KB Socket.IO event, decode_packet / (nesting bound + json.loads): {event_decode_ratio():.2f}"
          " (target about 1.1, at most 1.5)")
    return ratio


if __name__ == "__main__":
    main()
