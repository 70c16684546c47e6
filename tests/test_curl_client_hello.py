"""The curl backend's TLS ClientHello is Chrome's, not the pure-Python backends'.

A local TCP listener reads the first TLS record of each client and closes the
connection; the test compares what three clients sent: the curl backend, curl_cffi's
own ``chrome`` target, and the asyncio backend (our TLS over Python's ``ssl``).  It
compares cipher suite lists and extension types (GREASE values, which Chrome draws
at random, are set aside; so is the extension order, which Chrome shuffles), never
random bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

pytest.importorskip("curl_cffi")

from curl_cffi import AsyncSession as CurlSession
from plabs_proto.backends import asyncio as asyncio_backend
from plabs_proto.backends import curl as curl_backend

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _grease(value: int) -> bool:
    """RFC 8701's reserved values 0x0a0a, 0x1a1a ... 0xfafa."""
    return value & 0x0F0F == 0x0A0A and value >> 8 == value & 0xFF


@dataclass(frozen=True)
class Hello:
    ciphers: tuple[int, ...]  # in order, GREASE left out
    extensions: frozenset[int]  # GREASE left out
    grease: bool  # any GREASE cipher or extension


def parse_client_hello(record: bytes) -> Hello:
    """The cipher suites and extension types of a TLS record holding a ClientHello."""
    assert record[0] == 0x16, f"expected a TLS handshake record, got type {record[0]}"
    body = record[5:]
    assert body[0] == 0x01, f"expected a ClientHello, got handshake type {body[0]}"
    at = 4 + 2 + 32  # handshake header, legacy version, random
    at += 1 + body[at]  # session id
    (size,) = struct.unpack_from("!H", body, at)
    suites = struct.unpack_from(f"!{size // 2}H", body, at + 2)
    at += 2 + size
    at += 1 + body[at]  # compression methods
    (end,) = struct.unpack_from("!H", body, at)
    at += 2
    end += at
    types = []
    while at < end:
        kind, length = struct.unpack_from("!HH", body, at)
        types.append(kind)
        at += 4 + length
    return Hello(
        ciphers=tuple(s for s in suites if not _grease(s)),
        extensions=frozenset(t for t in types if not _grease(t)),
        grease=any(_grease(v) for v in (*suites, *types)),
    )


@contextlib.asynccontextmanager
async def hello_listener() -> AsyncIterator[tuple[int, asyncio.Queue[bytes]]]:
    """A TCP listener on loopback that keeps the first TLS record of each connection, then hangs up."""
    records: asyncio.Queue[bytes] = asyncio.Queue()

    async def take(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            header = await reader.readexactly(5)
            (length,) = struct.unpack_from("!H", header, 3)
            records.put_nowait(header + await reader.readexactly(length))
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(take, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], records
    finally:
        server.close()
        await server.wait_closed()


async def capture(client: Callable[[str], Awaitable[object]]) -> Hello:
    async with hello_listener() as (port, records):
        with contextlib.suppress(Exception):  # the listener hangs up: every client fails
            await asyncio.wait_for(client(f"https://127.0.0.1:{port}"), 5)
        return parse_client_hello(await asyncio.wait_for(records.get(), 5))


async def ask_with(module: object, url: str) -> None:
    async with contextlib.aclosing(module.ask("hello", server=url, transport="polling", timeout=5)) as answer:  # type: ignore[attr-defined]
        async for _ in answer:
            pass


async def curl_cffi_chrome(url: str) -> None:
    async with CurlSession(impersonate="chrome") as http:
        await http.get(url + "/socket.io/?EIO=4&transport=polling")


async def test_the_curl_backend_says_hello_as_chrome_and_unlike_the_pure_python_path() -> None:
    ours_curl = await capture(lambda url: ask_with(curl_backend, url))
    chrome = await capture(curl_cffi_chrome)
    pure = await capture(lambda url: ask_with(asyncio_backend, url))

    assert ours_curl.ciphers == chrome.ciphers
    assert ours_curl.extensions == chrome.extensions
    assert ours_curl.grease and chrome.grease  # Chrome sends GREASE; Python's ssl never does
    assert not pure.grease
    assert pure.ciphers != chrome.ciphers
    assert pure.extensions != chrome.extensions
    # Chrome's hello, as curl_cffi's target knows it: TLS 1.3 suites first, ALPS and compressed certificates
    assert chrome.ciphers[:3] == (0x1301, 0x1302, 0x1303)
    assert 0x001B in chrome.extensions  # compress_certificate
    assert 0x001B not in pure.extensions


async def test_another_target_says_another_hello() -> None:
    chrome = await capture(lambda url: ask_with(curl_backend, url))

    async def as_safari(url: str) -> None:
        async with contextlib.aclosing(curl_backend.ask("hello", server=url, impersonate="safari",
                                                        transport="polling", timeout=5)) as answer:
            async for _ in answer:
                pass

    safari = await capture(as_safari)
    assert (safari.ciphers, safari.extensions) != (chrome.ciphers, chrome.extensions)
