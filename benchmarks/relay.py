"""A TCP relay on 127.0.0.1 that adds a fixed one-way delay in each direction (a slow link).

    python benchmarks/relay.py --upstream 127.0.0.1:8443 [--delay 0.025] [--port 0]

Prints ``READY <port>`` and relays every accepted connection to the upstream.  Each chunk
read from one side is written to the other ``delay`` seconds later, in order (every chunk is
timestamped; one forwarding task per direction sleeps until the chunk is due).  End of file is
carried the same way.  The relay moves bytes only: TLS goes end to end through it.

A real TCP connect costs one round trip before the client can send; on loopback ``connect()``
returns at once.  So the relay also charges the handshake: bytes a client sends on a new
connection are not delivered before ``accept + 2 * delay`` (the moment a real connect would
have completed) plus the one-way delay.  ``--no-handshake`` turns that off.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections import deque
from typing import Any

HOST = "127.0.0.1"
READ_SIZE = 65536
_SPIN = 0.0015


class _Direction:
    """One direction of one relayed connection: chunks with their due time, forwarded in order."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        delay: float,
        not_before: float,
    ) -> None:
        self.loop = loop
        self.reader = reader
        self.writer = writer
        self.delay = delay
        self.not_before = not_before
        self.queue: deque[tuple[float, bytes | None]] = deque()
        self.ready = asyncio.Event()

    async def read(self) -> None:
        try:
            while True:
                data = await self.reader.read(READ_SIZE)
                due = max(self.loop.time(), self.not_before) + self.delay
                self.queue.append((due, data or None))
                self.ready.set()
                if not data:
                    return
        except (ConnectionError, OSError):
            self.queue.append((self.loop.time() + self.delay, None))
            self.ready.set()

    async def _until(self, due: float) -> None:
        """Sleep until ``due``: the loop's timers wake up to a millisecond late (epoll rounds the
        timeout up), so the last 1.5 ms are spent yielding to the loop instead."""
        wait = due - self.loop.time()
        if wait > _SPIN:
            await asyncio.sleep(wait - _SPIN)
        while self.loop.time() < due:
            await asyncio.sleep(0)

    async def forward(self) -> None:
        while True:
            while not self.queue:
                self.ready.clear()
                await self.ready.wait()
            due, data = self.queue.popleft()
            await self._until(due)
            if data is None:
                with contextlib.suppress(OSError, RuntimeError):
                    if self.writer.can_write_eof():
                        self.writer.write_eof()
                return
            self.writer.write(data)
            await self.writer.drain()


class Relay:
    """The relay on the running asyncio loop: ``port = await relay.start()``, ``await relay.stop()``."""

    def __init__(self, upstream: tuple[str, int], delay: float, *, handshake: bool = True) -> None:
        self.upstream = upstream
        self.delay = delay
        self.handshake = handshake
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self, host: str = HOST, port: int = 0) -> int:
        self._server = await asyncio.start_server(self._handle, host, port, backlog=1024)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        loop = asyncio.get_running_loop()
        accepted = loop.time()
        uwriter: asyncio.StreamWriter | None = None
        try:
            try:
                ureader, uwriter = await asyncio.open_connection(*self.upstream)
            except OSError:
                return
            opened = accepted + 2 * self.delay if self.handshake else accepted
            up = _Direction(loop, creader, uwriter, self.delay, opened)
            down = _Direction(loop, ureader, cwriter, self.delay, accepted)
            jobs = [loop.create_task(job) for job in (up.read(), up.forward(), down.read(), down.forward())]
            try:
                await asyncio.gather(*jobs)
            finally:
                for job in jobs:
                    job.cancel()
                await asyncio.gather(*jobs, return_exceptions=True)
        except (ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            pass  # stop(): end quietly (asyncio's start_server callback reads the task's exception)
        finally:
            for writer in (cwriter, uwriter):
                if writer is not None:
                    writer.transport.abort()
            self._tasks.discard(task)


async def _main(upstream: tuple[str, int], delay: float, port: int, handshake: bool) -> None:
    from _common import ready, serve_until_stopped

    relay = Relay(upstream, delay, handshake=handshake)
    listen = await relay.start(HOST, port)
    ready(listen)
    try:
        await serve_until_stopped()
    finally:
        await relay.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", required=True, help="host:port to relay to")
    parser.add_argument("--delay", type=float, default=0.025, help="one-way delay in seconds (default 0.025)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one)")
    parser.add_argument("--no-handshake", action="store_true", help="do not charge a round trip for connect")
    args = parser.parse_args(argv)
    host, _, port = args.upstream.rpartition(":")
    asyncio.run(_main((host or HOST, int(port)), args.delay, args.port, not args.no_handshake))


if __name__ == "__main__":
    main()
