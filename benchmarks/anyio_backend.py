"""An anyio backend on the network seam, kept here for the evaluation in RESULTS.md (not shipped).

The one driver (``backends/_driver.py``) over :class:`AnyioNetwork`: ``anyio.connect_tcp``,
``send``/``receive`` under cancel scopes with deadlines on ``anyio.current_time()``, a task
group for the first of several connections.  It runs on asyncio and on trio alike.

What it showed besides the numbers: anyio streams close only asynchronously (``aclose``),
while the seam's ``Stream.close`` must be synchronous (an abandoned answer closes its
sockets from ``__del__``); here it shuts the raw socket down and lets the loop reap it.
"""

from __future__ import annotations

import contextlib
import math
import socket
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.abc
from plabs_proto.backends._async_api import AsyncAnswer
from plabs_proto.backends._config import parse_options, to_messages
from plabs_proto.backends._driver import Driver
from plabs_proto.backends._seam import GRACE, READ_SIZE, Network, Stream


def _deadline(deadline: float | None) -> float:
    return math.inf if deadline is None else max(deadline, anyio.current_time() + GRACE)


class _AnyioStream(Stream):
    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream

    async def send_all(self, data: bytes, deadline: float | None) -> bool:
        with anyio.CancelScope(deadline=_deadline(deadline)):
            try:
                await self.stream.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
                raise OSError(str(exc) or type(exc).__name__) from exc
            return True
        return False

    async def receive(self) -> bytes | OSError:
        try:
            return await self.stream.receive(READ_SIZE)
        except anyio.EndOfStream:
            return b""
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            return OSError(str(exc) or type(exc).__name__)
        except OSError as exc:
            return exc

    def close(self) -> None:
        raw: socket.socket = self.stream.extra(anyio.abc.SocketAttribute.raw_socket)
        with contextlib.suppress(OSError):
            raw.shutdown(socket.SHUT_RDWR)


class AnyioNetwork(Network):
    def __init__(self) -> None:
        self._waiting: anyio.CancelScope | None = None

    def now(self) -> float:
        return anyio.current_time()

    async def connect(self, host: str, port: int, deadline: float | None) -> Stream | None:
        with anyio.CancelScope(deadline=_deadline(deadline)):
            return _AnyioStream(await anyio.connect_tcp(host, port))
        return None

    async def receive(self, streams: Sequence[Stream], deadline: float | None) -> list[tuple[Stream, Any]]:
        got: list[tuple[Stream, Any]] = []
        with anyio.CancelScope(deadline=math.inf if deadline is None else deadline) as self._waiting:
            if len(streams) == 1:
                only = streams[0]
                assert isinstance(only, _AnyioStream)
                got.append((only, await only.receive()))
            else:
                async with anyio.create_task_group() as group:
                    for stream in streams:
                        assert isinstance(stream, _AnyioStream)
                        group.start_soon(self._receive_into, stream, got, group.cancel_scope)
        self._waiting = None
        return got

    async def _receive_into(self, stream: _AnyioStream, got: list[tuple[Stream, Any]], scope: anyio.CancelScope) -> None:
        got.append((stream, await stream.receive()))
        scope.cancel()

    async def sleep_until(self, deadline: float) -> None:
        await anyio.sleep_until(deadline)

    async def send_last(self, stream: Stream, data: bytes, deadline: float) -> None:
        with anyio.CancelScope(shield=True, deadline=deadline), contextlib.suppress(OSError):
            await stream.send_all(data, None)

    def wake(self) -> None:
        if self._waiting is not None:
            self._waiting.cancel()


def ask(prompt_or_messages: Any, **options: Any) -> AsyncAnswer:
    """``ask`` of the anyio backend (same options as the shipped backends)."""
    messages = to_messages(prompt_or_messages)
    opts = parse_options(options, with_model=True)
    client, used_seed = opts.new_client()
    return AsyncAnswer(lambda: Driver(client, AnyioNetwork()), messages, opts.model, opts.tracer, used_seed)
