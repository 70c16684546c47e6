"""What hostile input shapes cost the sans-IO client: seconds per megabyte and peak memory.

    python benchmarks/hostile.py [--mb 7.6] [--shape NAME ...]

Each shape is fed to a fresh :class:`~plabs_proto.wire.client.LabsClient` (no sockets: the bytes go
straight to ``receive_data``) after a polling or WebSocket handshake.  For each it prints the
bytes fed, the CPU seconds per megabyte (``time.process_time()``), tracemalloc's peak above
the baseline divided by the bytes fed, and how it ended (the events, or the error).

Shapes:

``noops``      one polling body of Engine.IO v4 noops, ``6\\x1e6\\x1e...``
``pings``      one polling body of pings, ``2\\x1e2\\x1e...``, while the POST connection is stalled
``legacy``     one polling body in the v3 length-prefixed form, ``1:61:6...``
``chunked``    a polling body in HTTP chunks of 2 bytes (``Transfer-Encoding: chunked``)
``chunked64``  the same in chunks of 64 bytes, the smallest average the client accepts
``fragments``  a WebSocket message in 2-byte continuation frames, up to the 1 MB message limit
``fragments64`` the same in fragments of 64 bytes
``wspings``    WebSocket frames of one ping each (each answered with a pong)

The bounds the client keeps (tests/test_client_hostile.py asserts them with margins): about a
second of CPU per megabyte at most, and a peak of at most 20 times the input; a body cut into
absurdly many pieces may be refused early with a RemoteProtocolError.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from peer import http_response, open_packet, switching_protocols, ws_frame

from plabs_proto.config import ClientConfig
from plabs_proto.errors import LabsError
from plabs_proto.wire.client import LabsClient
from plabs_proto.wire.websocket import make_key


def polling_client() -> LabsClient:
    """A polling session past its handshake: stream 1 waits for a poll, stream 2 for the CONNECT POST."""
    client = LabsClient(ClientConfig(server="http://labs.test", transport="polling"), rng=random.Random(0))
    client.connect(0.0)
    client.receive_data(1, http_response(200, open_packet(upgrades=())), 0.0)
    client.transmit()
    return client


def websocket_client() -> LabsClient:
    """A websocket session past its open packet."""
    client = LabsClient(ClientConfig(server="http://labs.test", transport="websocket"), rng=random.Random(0))
    client.connect(0.0)
    client.transmit()
    rng = random.Random(0)  # the client's draws: the `t` cache buster, then the key
    rng.getrandbits(32)
    key = make_key(rng)
    client.receive_data(1, switching_protocols(key) + ws_frame(open_packet(upgrades=())), 0.0)
    client.transmit()
    return client


def body_of(size: int, unit: str) -> str:
    return unit * (size // len(unit))


def chunked(body: bytes, piece: int) -> bytes:
    out = bytearray(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n")
    head = f"{piece:x}\r\n".encode()
    for start in range(0, len(body) - len(body) % piece, piece):
        out += head + body[start : start + piece] + b"\r\n"
    if len(body) % piece:
        out += f"{len(body) % piece:x}\r\n".encode() + body[-(len(body) % piece) :] + b"\r\n"
    out += b"0\r\n\r\n"
    return bytes(out)


def fragments(size: int, piece: int) -> bytes:
    first = bytes([0x01, piece]) + b"6" * piece  # TEXT, not final
    middle = bytes([0x00, piece]) + b"6" * piece  # CONTINUATION, not final
    last = bytes([0x80, piece]) + b"6" * piece
    return first + middle * (size // piece - 2) + last


def shapes(size: int) -> dict[str, tuple[Callable[[], LabsClient], int, bytes]]:
    return {
        "noops": (polling_client, 1, http_response(200, body_of(size, "6\x1e") + "6")),
        "pings": (polling_client, 1, http_response(200, body_of(size, "2\x1e") + "2")),
        "legacy": (polling_client, 1, http_response(200, body_of(size, "1:6"))),
        "chunked": (polling_client, 1, chunked((body_of(size, "6\x1e") + "6").encode(), 2)),
        "chunked64": (polling_client, 1, chunked((body_of(size, "6\x1e") + "6").encode(), 64)),
        "fragments": (websocket_client, 1, fragments(min(size, 1_000_000), 2)),
        "fragments64": (websocket_client, 1, fragments(min(size, 1_000_000), 64)),
        "wspings": (websocket_client, 1, ws_frame("2") * (size // 3)),
    }


def measure(name: str, make: Callable[[], LabsClient], stream: int, data: bytes) -> None:
    """Time one run as it is, then trace the memory of another (tracemalloc slows Python down)."""
    client = make()
    start = time.process_time()
    try:
        client.receive_data(stream, data, 1.0)
    except LabsError:
        pass
    seconds = time.process_time() - start
    del client
    client = make()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    try:
        client.receive_data(stream, data, 1.0)
        outcome = f"{len(client.events())} events"
    except LabsError as exc:
        outcome = f"{type(exc).__name__}: {str(exc)[:70]}"
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    mb = len(data) / 1e6
    print(f"{name:10} {mb:6.2f} MB  {seconds / mb:7.3f} s/MB  peak {peak / len(data):6.2f}x  {outcome}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=7.6, help="body size in MB (fragments stop at 1 MB)")
    parser.add_argument("--shape", action="append", help="only these shapes")
    args = parser.parse_args()
    table = shapes(int(args.mb * 1e6))
    for name in args.shape or list(table):
        make, stream, data = table[name]
        measure(name, make, stream, data)


if __name__ == "__main__":
    main()
