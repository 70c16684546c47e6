"""The asyncio backend's network (``AsyncioNetwork``) over real sockets: back-pressure, ends, closes.

Each connection is a buffered protocol that keeps what the loop reads for the driver; past
``HIGH_WATER`` bytes waiting it pauses reading until the driver takes them.  These tests hold
it to what a peer sends and sees: the pause at its edge, the end of file, a close the peer does
not read (aborted after the close wait), and a connect with no deadline to the host named.
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from plabs_proto.backends.asyncio import HIGH_WATER, AsyncioNetwork

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def server() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listening:
        yield listening


async def connected(network: AsyncioNetwork, server: socket.socket) -> tuple[Any, socket.socket]:
    """A stream the network opened to ``server`` (no deadline), and the peer's end of it (non-blocking)."""
    stream = await network.connect("127.0.0.1", server.getsockname()[1], None)
    assert stream is not None
    peer, _ = server.accept()
    peer.setblocking(False)
    return stream, peer


async def until(network: AsyncioNetwork, condition: Callable[[], bool]) -> None:
    """Wait (each arrival wakes the network) until ``condition`` holds; fail after 3 s."""

    async def wait() -> None:
        while not condition():
            await network.sleep_until(None)

    await asyncio.wait_for(wait(), 3)


async def receive_all(network: AsyncioNetwork, stream: Any, size: int) -> bytes:
    """Take ``size`` bytes from ``stream`` (fail after 3 s)."""
    data = b""
    while len(data) < size:
        got = await asyncio.wait_for(network.receive([stream], None), 3)
        assert all(source is stream and isinstance(chunk, bytes) and chunk for source, chunk in got)
        data += b"".join(chunk for _, chunk in got if isinstance(chunk, bytes))
    return data


async def test_reading_pauses_one_byte_past_the_high_water_mark_and_resumes_when_taken(
    server: socket.socket,
) -> None:
    loop = asyncio.get_running_loop()
    network = AsyncioNetwork()
    stream, peer = await connected(network, server)
    sent = random.Random(1).randbytes(3 * HIGH_WATER + 1)
    with peer:
        # HIGH_WATER bytes waiting, not taken: reading goes on
        await loop.sock_sendall(peer, sent[:HIGH_WATER])
        await until(network, lambda: stream.waiting >= HIGH_WATER)
        assert stream.waiting == HIGH_WATER and stream.transport.is_reading()
        # one byte more: reading pauses, and what the peer sends next stays in the kernel
        await loop.sock_sendall(peer, sent[HIGH_WATER : HIGH_WATER + 1])
        await until(network, lambda: stream.waiting > HIGH_WATER)
        assert stream.waiting == HIGH_WATER + 1 and not stream.transport.is_reading()
        sending = asyncio.ensure_future(loop.sock_sendall(peer, sent[HIGH_WATER + 1 : 2 * HIGH_WATER + 1]))
        got = await network.receive([stream], None)
        assert b"".join(chunk for _, chunk in got) == sent[: HIGH_WATER + 1]  # what was read, in order
        assert stream.transport.is_reading()  # taken: reading resumes
        assert await receive_all(network, stream, HIGH_WATER) == sent[HIGH_WATER + 1 : 2 * HIGH_WATER + 1]
        await asyncio.wait_for(sending, 3)
        # counted again from nothing: HIGH_WATER bytes more are read without a pause
        await loop.sock_sendall(peer, sent[2 * HIGH_WATER + 1 :])
        await until(network, lambda: stream.waiting >= HIGH_WATER)
        assert stream.waiting == HIGH_WATER and stream.transport.is_reading()
        assert await receive_all(network, stream, HIGH_WATER) == sent[2 * HIGH_WATER + 1 :]
        peer.shutdown(socket.SHUT_WR)
        assert await network.receive([stream], None) == [(stream, b"")]
    stream.close()
    network.close()


async def write_more_than_the_kernel_takes(stream: Any, peer: socket.socket) -> int:
    """Send what a peer that does not read cannot take: most stays in the transport's buffer."""
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    size = 16 * 1024 * 1024
    await stream.send_all(bytes(size), None)
    await asyncio.sleep(0)
    assert stream.transport.get_write_buffer_size() > 0
    return size


async def test_the_peers_end_of_file_is_seen_at_once_while_writes_are_stuck(server: socket.socket) -> None:
    # The peer half-closes and reads nothing: the end of file is reported at once to a receive
    # already waiting, though the transport cannot close (its buffer does not drain).
    network = AsyncioNetwork()
    stream, peer = await connected(network, server)
    with peer:
        await write_more_than_the_kernel_takes(stream, peer)
        receiving = asyncio.ensure_future(network.receive([stream], None))
        await asyncio.sleep(0)  # the receive waits
        assert not receiving.done()
        peer.shutdown(socket.SHUT_WR)
        assert await asyncio.wait_for(receiving, 3) == [(stream, b"")]
    network.close()


async def test_after_the_peers_end_of_file_the_connection_closes_itself(server: socket.socket) -> None:
    # Nothing to write: the transport closes on the peer's end of file, before anyone calls close();
    # the peer sees our end, and the network holds the connection no more.
    loop = asyncio.get_running_loop()
    network = AsyncioNetwork()
    stream, peer = await connected(network, server)
    with peer:
        peer.shutdown(socket.SHUT_WR)
        assert await asyncio.wait_for(network.receive([stream], None), 3) == [(stream, b"")]
        assert await asyncio.wait_for(loop.sock_recv(peer, 10), 3) == b""
    await asyncio.wait_for(network.closed(), 3)
    assert not network.open


async def test_a_close_the_peer_does_not_read_is_aborted_after_the_close_wait(server: socket.socket) -> None:
    # closed() waits a second for the connections still writing out, then close() aborts them:
    # the peer gets less than was sent, then the end.
    loop = asyncio.get_running_loop()
    network = AsyncioNetwork()
    stream, peer = await connected(network, server)
    with peer:
        size = await write_more_than_the_kernel_takes(stream, peer)
        stream.close()
        started = loop.time()
        await asyncio.wait_for(network.closed(), 3)
        assert 1.0 <= loop.time() - started < 2  # the close wait, _CLOSE_WAIT (a second)
        assert network.open  # still writing out
        network.close()
        received = 0
        try:
            while chunk := await asyncio.wait_for(loop.sock_recv(peer, 1 << 20), 3):
                received += len(chunk)
        except ConnectionResetError:
            pass
        assert received < size


async def test_a_connect_without_a_deadline_reaches_the_host_named() -> None:
    # Not 127.0.0.1 (which a connect to no host at all would reach): Linux answers on all of 127/8.
    try:
        listening = socket.create_server(("127.0.0.2", 0))
    except OSError:
        pytest.skip("127.0.0.2 is not a local address here")
    with listening:
        port = listening.getsockname()[1]
        network = AsyncioNetwork()
        stream: Any = await network.connect("127.0.0.2", port, None)
        peer, _ = listening.accept()
        with peer:
            assert stream.transport.get_extra_info("peername") == ("127.0.0.2", port)
            peer.sendall(b"hello")
            assert await receive_all(network, stream, 5) == b"hello"
        stream.close()
        network.close()
