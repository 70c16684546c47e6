"""The servers the client benchmarks run in a child process.

    python benchmarks/servers.py emulator [--answer TEXT] [--chunk-size 8] [--frame-delay 0.005]
                                          [--certfile F --keyfile F]
    python benchmarks/servers.py burst [--frames 5000] [--step 8] [--deflate]

Each prints ``READY <url>`` and serves on 127.0.0.1 until SIGTERM or until its stdin closes.

``emulator`` is plabs-proto's Labs emulator (python-socketio on aiohttp), the same server for
every client.

``burst`` answers a query with one pre-encoded burst: FRAMES WebSocket text frames
``42["<model>_query_progress",{"output": <cumulative>, ...}]`` written in one go, so the
client, not the server, is what limits the rate.  It speaks the Engine.IO v4 handshakes the
clients use: the polling handshake (GET open packet, POST ``40``, GET the connect ack) and
the WebSocket upgrade in python-engineio's way (``2probe`` -> ``3probe`` plus a queued NOOP,
``5``), or a straight WebSocket (open packet, ``40`` -> ``40{"sid":...}``).  Polling answers
are not supported (a query over polling gets a failure frame).

``--deflate``: accept a client's permessage-deflate offer (RFC 7692, with context takeover) and
send the burst compressed, pre-encoded like the plain one: the burst is the first compressed
message on its connection (the handshake's messages go uncompressed, RSV1 clear, which leaves
the window empty), so one compressor run over the burst's messages gives every connection's bytes.
A second query on one connection gets the plain burst.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import secrets
import struct
import zlib
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from _common import HOST, burst_outputs, progress_messages, ready, serve_until_stopped
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import CloseConnection, Message, Ping, TextMessage
from wsproto.extensions import PerMessageDeflate

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_PING_INTERVAL = 25000
_PING_TIMEOUT = 20000
_SLICE = 1 << 20


def ws_frame(text: str, *, compressor: zlib._Compress | None = None) -> bytes:
    """An unmasked server text frame (compressed by ``compressor``, RSV1 set, when given)."""
    data = text.encode("utf-8")
    first = 0x81
    if compressor is not None:
        data = (compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]  # RFC 7692 §7.2.1
        first = 0xC1
    n = len(data)
    if n < 126:
        return struct.pack("!BB", first, n) + data
    if n < 65536:
        return struct.pack("!BBH", first, 126, n) + data
    return struct.pack("!BBQ", first, 127, n) + data


@dataclass
class _Session:
    sid: str
    queue: list[str] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    upgraded: bool = False
    deflated: bool = False  # its connection already carried the compressed burst

    def push(self, packet: str) -> None:
        self.queue.append(packet)
        self.wake.set()

    def drain(self) -> list[str]:
        packets, self.queue = self.queue, []
        self.wake.clear()
        return packets


class BurstServer:
    def __init__(self, frames: int, step: int, deflate: bool = False) -> None:
        self.frames = frames
        self.step = step
        self.deflate = deflate
        self.sessions: dict[str, _Session] = {}
        self._bursts: dict[str, bytes] = {}
        self._deflated: dict[str, bytes] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def burst(self, model: str) -> bytes:
        data = self._bursts.get(model)
        if data is None:
            messages = progress_messages(model, burst_outputs(self.frames, self.step))
            data = self._bursts[model] = b"".join(ws_frame(m) for m in messages)
        return data

    def deflated_burst(self, model: str) -> bytes:
        """The burst compressed with permessage-deflate, one window over all its messages."""
        data = self._deflated.get(model)
        if data is None:
            # Level 1: encoding 100 MB of growing outputs takes seconds at the default level; the
            # client's cost (inflating) depends on what comes out, not on how hard it was squeezed.
            compressor = zlib.compressobj(1, zlib.DEFLATED, -15)
            messages = progress_messages(model, burst_outputs(self.frames, self.step))
            data = self._deflated[model] = b"".join(ws_frame(m, compressor=compressor) for m in messages)
        return data

    def _open_packet(self, sid: str, upgrades: list[str]) -> str:
        return "0" + json.dumps({"sid": sid, "upgrades": upgrades, "pingInterval": _PING_INTERVAL,
                                 "pingTimeout": _PING_TIMEOUT, "maxPayload": 1_000_000}, separators=(",", ":"))

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
                query = parse_qs(urlsplit(target).query)
                sid = query.get("sid", [None])[0]
                if headers.get("upgrade", "").lower() == "websocket":
                    await self._websocket(reader, writer, headers, sid)
                    return
                status, text = await self._polling(method, sid, body.decode("utf-8", "replace"))
                payload = text.encode("utf-8")
                writer.write(
                    f"HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=UTF-8\r\n"
                    f"Content-Length: {len(payload)}\r\nConnection: keep-alive\r\n\r\n".encode("latin-1") + payload
                )
                await writer.drain()
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.transport.abort()
            if task is not None:
                self._tasks.discard(task)

    async def _polling(self, method: str, sid: str | None, body: str) -> tuple[str, str]:
        if sid is None:
            if method != "GET":
                return "400 Bad Request", "expected a GET for a new session"
            sid = secrets.token_hex(8)
            self.sessions[sid] = _Session(sid)
            return "200 OK", self._open_packet(sid, ["websocket"])
        session = self.sessions.get(sid)
        if session is None:
            return "400 Bad Request", "unknown sid"
        if method == "POST":
            for packet in body.split("\x1e"):
                self._client_packet(session, packet, None)
            return "200 OK", "OK"
        if session.upgraded:
            return "400 Bad Request", "session upgraded"
        if not session.queue:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(session.wake.wait(), _PING_INTERVAL / 1000)
        packets = session.drain() or ["6"]
        return "200 OK", "\x1e".join(packets)

    def _client_packet(
        self, session: _Session, packet: str, send: list[bytes] | None, deflate: bool = False
    ) -> None:
        """A packet from the client; replies are queued on the session (polling) or sent (WebSocket)."""
        out: list[str] = []
        if packet.startswith("40"):
            out.append("40" + json.dumps({"sid": secrets.token_hex(8)}, separators=(",", ":")))
        elif packet.startswith("42"):
            try:
                name, request = json.loads(packet[2:])[:2]
                model = str(request["model"])
            except (ValueError, KeyError, TypeError):
                return
            if name != "perplexity_labs":
                return
            if send is None:
                out.append("42" + json.dumps([f"{model}_query_progress",
                                              {"status": "failed", "text": "polling answers are not served"}]))
            elif deflate and not session.deflated:
                session.deflated = True
                send.append(self.deflated_burst(model))
                return
            else:
                send.append(self.burst(model))
                return
        elif packet == "1":
            self.sessions.pop(session.sid, None)
            return
        if send is None:
            for p in out:
                session.push(p)
        else:
            send.append(b"".join(ws_frame(p) for p in out))

    async def _websocket(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, headers: dict[str, str], sid: str | None
    ) -> None:
        key = headers.get("sec-websocket-key", "").encode("ascii")
        accept = base64.b64encode(hashlib.sha1(key + _GUID).digest()).decode("ascii")
        deflate = self.deflate and "permessage-deflate" in headers.get("sec-websocket-extensions", "")
        agreed = "Sec-WebSocket-Extensions: permessage-deflate\r\n" if deflate else ""
        writer.write(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\n{agreed}\r\n".encode("ascii")
        )
        if sid is None:
            session = _Session(secrets.token_hex(8), upgraded=True)
            writer.write(ws_frame(self._open_packet(session.sid, [])))
        else:
            found = self.sessions.get(sid)
            if found is None:
                writer.write(ws_frame("1"))
                return
            session = found
        extensions = []
        if deflate:
            extension = PerMessageDeflate()
            extension.finalize("permessage-deflate")  # what the 101 agreed to: the client's frames may be compressed
            extensions.append(extension)
        conn = Connection(ConnectionType.SERVER, extensions=extensions)
        parts: list[str] = []
        pending: list[bytes] = []  # what to send, written by this loop
        while conn.state is not ConnectionState.CLOSED:
            await writer.drain()
            while pending:
                # Slices of 1 MiB with a drain between: the transport's buffer stays small, so the
                # kernel, not a growing user-space buffer, paces the burst.
                view = memoryview(pending.pop(0))
                for i in range(0, len(view), _SLICE):
                    writer.write(view[i : i + _SLICE])
                    await writer.drain()
            data = await reader.read(65536)
            conn.receive_data(data or None)
            for event in conn.events():
                if isinstance(event, TextMessage):
                    parts.append(event.data)
                    if not event.message_finished:
                        continue
                    text = "".join(parts)
                    parts.clear()
                    if text == "2probe":
                        writer.write(ws_frame("3probe"))
                        session.push("6")  # python-engineio's NOOP: ends a pending poll, or goes out after 5
                    elif text == "5":
                        session.upgraded = True
                        writer.write(b"".join(ws_frame(p) for p in session.drain()))
                    else:
                        self._client_packet(session, text, pending, deflate)
                elif isinstance(event, Message):
                    parts.clear()
                elif isinstance(event, Ping):
                    writer.write(conn.send(event.response()))
                elif isinstance(event, CloseConnection):
                    with contextlib.suppress(Exception):
                        writer.write(conn.send(event.response()))
                    await writer.drain()
                    return
            if not data:
                return

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


async def _serve_burst(frames: int, step: int, deflate: bool) -> None:
    server = BurstServer(frames, step, deflate)
    server.burst("sonar")  # encode before the first client comes (the compressed one: at the warm-up's query)
    listener = await asyncio.start_server(server.handle, HOST, 0, backlog=1024)
    port = listener.sockets[0].getsockname()[1]
    ready(f"http://{HOST}:{port}")
    try:
        await serve_until_stopped()
    finally:
        listener.close()
        await server.stop()
        await listener.wait_closed()


async def _serve_emulator(args: argparse.Namespace) -> None:
    from plabs_proto.backends.programs.emulator import Emulator, EmulatorConfig

    config = EmulatorConfig(answer=args.answer, chunk_size=args.chunk_size, frame_delay=args.frame_delay,
                            citations=[])
    emulator = Emulator(config)
    url = await emulator.start(HOST, 0, certfile=args.certfile, keyfile=args.keyfile)
    ready(url)
    try:
        await serve_until_stopped()
    finally:
        await emulator.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="server", required=True)
    emu = sub.add_parser("emulator")
    emu.add_argument("--answer", default=None)
    emu.add_argument("--chunk-size", type=int, default=8)
    emu.add_argument("--frame-delay", type=float, default=0.005)
    emu.add_argument("--certfile")
    emu.add_argument("--keyfile")
    burst = sub.add_parser("burst")
    burst.add_argument("--frames", type=int, default=5000)
    burst.add_argument("--step", type=int, default=8)
    burst.add_argument("--deflate", action="store_true", help="accept permessage-deflate, send the burst compressed")
    args = parser.parse_args(argv)
    if args.server == "emulator":
        asyncio.run(_serve_emulator(args))
    else:
        asyncio.run(_serve_burst(args.frames, args.step, args.deflate))


if __name__ == "__main__":
    main()
