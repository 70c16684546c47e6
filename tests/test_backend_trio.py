"""The trio backend's network (``TrioNetwork``) over real sockets: what it reads and writes.

It reads each socket itself (a wait, then ``recv_into`` the thread's shared buffer) and writes
it itself (``send``, waiting for room only when the kernel takes less): these tests hold it to
the bytes a peer sent and received, byte for byte.
"""

from __future__ import annotations

import random
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.abc
import trio.testing
from plabs_proto.backends import trio as trio_backend
from plabs_proto.backends._seam import READ_SIZE, Stream
from plabs_proto.backends.trio import TrioNetwork

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


@pytest.fixture
async def server() -> AsyncIterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listening:
        yield listening


async def connected(network: TrioNetwork, server: socket.socket) -> tuple[Stream, socket.socket]:
    """A stream the network opened to ``server``, and the peer's end of it (a blocking socket)."""
    stream = await network.connect("127.0.0.1", server.getsockname()[1], None)
    assert stream is not None
    peer, _ = server.accept()
    return stream, peer


def by_stream(got: list[tuple[Stream, bytes | OSError]], stream: Stream) -> bytes:
    chunks = [data for source, data in got if source is stream]
    assert all(isinstance(data, bytes) for data in chunks)
    return b"".join(data for data in chunks if isinstance(data, bytes))


async def test_one_receive_takes_every_chunk_waiting(server: socket.socket) -> None:
    network = TrioNetwork()
    stream, peer = await connected(network, server)
    # Room in the kernel for more than two reads' worth (the default leaves less than one).
    stream.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)  # type: ignore[attr-defined]
    data = random.Random(1).randbytes(2 * READ_SIZE + 1000)
    with peer:
        peer.sendall(data)
        peer.shutdown(socket.SHUT_WR)
        got = await network.receive([stream], None)
        # Full reads are followed by another at once; the short one took all there was.
        assert [len(chunk) for _, chunk in got] == [READ_SIZE, READ_SIZE, 1000]
        assert by_stream(got, stream) == data
        assert await network.receive([stream], None) == [(stream, b"")]  # then the end
    stream.close()


async def test_the_shared_buffer_hands_each_stream_its_own_bytes(server: socket.socket) -> None:
    network = TrioNetwork()
    (first, first_peer), (second, second_peer) = [await connected(network, server) for _ in range(2)]
    first_data, second_data = random.Random(2).randbytes(5000), random.Random(3).randbytes(7000)
    with first_peer, second_peer:
        first_peer.sendall(first_data)
        got_first = await network.receive([first], None)
        second_peer.sendall(second_data)
        got_second = await network.receive([second], None)  # read into the same buffer
        assert by_stream(got_first, first) == first_data  # a copy: the second read did not touch it
        assert by_stream(got_second, second) == second_data
        # Both at once (the upgrade's two connections): each chunk is its own stream's.
        first_peer.sendall(second_data)
        second_peer.sendall(first_data)
        got: list[tuple[Stream, bytes | OSError]] = []
        while len(by_stream(got, first)) < len(second_data) or len(by_stream(got, second)) < len(first_data):
            got += await network.receive([first, second], None)
        assert (by_stream(got, first), by_stream(got, second)) == (second_data, first_data)
    first.close()
    second.close()


async def read_all(peer: trio.socket.SocketType, received: bytearray) -> None:
    """Read ``peer`` to its end into ``received``."""
    while chunk := await peer.recv(1 << 16):
        received.extend(chunk)


async def test_send_all_waits_for_room_as_the_peer_reads(server: socket.socket) -> None:
    network = TrioNetwork()
    stream, peer = await connected(network, server)
    data = random.Random(4).randbytes(16 << 20)  # more than the kernel holds for a peer that does not read
    received = bytearray()

    with trio.socket.from_stdlib_socket(peer) as reader:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all, reader, received)
            assert await stream.send_all(data, None) is True
            stream.close()  # the end: the reader stops
    assert received == data


async def test_send_all_stops_at_the_deadline_when_the_peer_does_not_read(server: socket.socket) -> None:
    network = TrioNetwork()
    stream, peer = await connected(network, server)
    with peer:
        assert await stream.send_all(bytes(16 << 20), network.now() + 0.05) is False
        assert await stream.send_all(b"", network.now() - 1) is True  # nothing to write: done at once
    stream.close()


async def test_closing_a_stream_ends_the_receive_waiting_on_it(server: socket.socket) -> None:
    network = TrioNetwork()
    stream, peer = await connected(network, server)
    got: list[tuple[Stream, bytes | OSError]] = []

    async def wait() -> None:
        got.extend(await network.receive([stream], None))

    with peer:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()
            stream.close()
        [(source, error)] = got
        assert source is stream and isinstance(error, OSError)
        assert str(error) == "ClosedResourceError: another task closed this fd"  # trio's type and words
        stream.close()  # twice: nothing more


class TwoAddresses(trio.abc.HostnameResolver):
    """Every name has two addresses: 127.0.0.2, where nothing listens, then 127.0.0.1."""

    async def getaddrinfo(self, host: bytes | None, port: bytes | str | int | None, family: int = 0,
                          type: int = 0, proto: int = 0, flags: int = 0) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, int(port or 0)))
                for address in ("127.0.0.2", "127.0.0.1")]

    async def getnameinfo(self, sockaddr: tuple[str, int] | tuple[str, int, int, int], flags: int) -> tuple[str, str]:
        raise NotImplementedError


# -- deadlines and wake() without a cancel scope per wait (the run's timers) ----------------------------


async def test_a_wait_ends_at_its_deadline_and_the_stream_reads_on(server: socket.socket) -> None:
    network = TrioNetwork()
    stream, peer = await connected(network, server)
    with peer, trio.fail_after(5):
        deadline = network.now() + 0.05
        assert await network.receive([stream], deadline) == []
        assert network.now() >= deadline
        assert await network.receive([stream], deadline) == []  # the same deadline again: passed, so at once
        peer.sendall(b"still open")
        assert await network.receive([stream], network.now() + 5) == [(stream, b"still open")]
    stream.close()


async def test_each_network_waits_for_its_own_deadline(server: socket.socket) -> None:
    networks = [TrioNetwork(), TrioNetwork()]
    pairs = [await connected(network, server) for network in networks]
    ended: dict[int, float] = {}

    async def wait(index: int, deadline: float) -> None:
        assert await networks[index].receive([pairs[index][0]], deadline) == []
        ended[index] = networks[index].now()

    start = networks[0].now()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait, 0, start + 0.2)
            nursery.start_soon(wait, 1, start + 0.05)  # the earlier deadline, handed over second
    assert start + 0.05 <= ended[1] < start + 0.2 <= ended[0]
    for stream, peer in pairs:
        stream.close()
        peer.close()


async def test_wake_ends_a_wait_without_deadline(server: socket.socket) -> None:
    network = TrioNetwork()
    stream, peer = await connected(network, server)
    got: list[list[tuple[Stream, bytes | OSError]]] = []

    async def wait() -> None:
        got.append(await network.receive([stream], None))

    with peer, trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()
            network.wake()
        assert got == [[]]
        peer.sendall(b"after the wake")
        assert await network.receive([stream], None) == [(stream, b"after the wake")]
    stream.close()


def test_a_wait_without_deadline_outlives_the_deadline_before_it() -> None:
    # On trio's mock clock, which jumps to the next deadline whenever every task waits.
    async def main() -> None:
        network = TrioNetwork()
        with socket.create_server(("127.0.0.1", 0)) as listening:
            stream, peer = await connected(network, listening)
        with peer:
            peer.sendall(b"first")
            assert await network.receive([stream], network.now() + 1) == [(stream, b"first")]  # 1 s to spare
            with trio.move_on_after(10) as scope:
                await network.receive([stream], None)  # the second that deadline was, it waits on
            assert scope.cancelled_caught
        stream.close()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_sleep_until_ends_at_its_deadline_or_at_a_wake() -> None:
    network = TrioNetwork()
    with trio.fail_after(5):
        deadline = network.now() + 0.05
        await network.sleep_until(deadline)
        assert network.now() >= deadline
        network.wake()  # no wait under way: nothing to end
        async with trio.open_nursery() as nursery:
            nursery.start_soon(network.sleep_until, network.now() + 60)
            await trio.testing.wait_all_tasks_blocked()
            network.wake()  # ends the sleep at once (else fail_after fires)
        network.wake()


async def test_the_timers_task_is_named_for_whoever_lists_the_run_s_tasks(server: socket.socket) -> None:
    # One system task per run ends the waits at their deadlines; a debugger's task tree names it.
    network = TrioNetwork()
    stream, peer = await connected(network, server)
    with peer:
        try:
            assert await network.receive([stream], network.now() + 0.01) == []
        finally:
            stream.close()

    def names(task: trio.lowlevel.Task) -> list[str]:
        return [task.name] + [name for nursery in task.child_nurseries
                              for child in nursery.child_tasks for name in names(child)]

    root = trio.lowlevel.current_root_task()
    assert root is not None
    assert names(root).count("plabs_proto.backends.trio timers") == 1


async def test_a_reset_connection_is_its_os_error(server: socket.socket) -> None:
    network = TrioNetwork()
    stream, peer = await connected(network, server)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()  # an RST, not a FIN
    try:
        with trio.fail_after(5):
            [(source, error)] = await network.receive([stream], None)
    finally:
        stream.close()
    assert source is stream and isinstance(error, ConnectionResetError)


def test_a_stream_closed_after_its_run_closes_its_socket() -> None:
    # An answer collected after trio.run returned: no trio to tell, the socket closes all the same.
    async def main() -> tuple[Stream, socket.socket]:
        with socket.create_server(("127.0.0.1", 0)) as listening:
            return await connected(TrioNetwork(), listening)

    stream, peer = trio.run(main)
    with peer:
        stream.close()
        assert stream.sock.fileno() == -1  # type: ignore[attr-defined]
        assert peer.recv(10) == b""  # the peer sees the end


async def test_send_all_into_a_full_socket_sends_every_byte_in_order(server: socket.socket) -> None:
    network = TrioNetwork()
    stream, peer = await connected(network, server)
    sock = stream.sock  # type: ignore[attr-defined]
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    filled = bytearray()
    try:
        while True:  # until the kernel takes nothing: send_all's first send then fails too
            filled += bytes([len(filled) % 251]) * sock.send(bytes([len(filled) % 251]) * 4096)
    except BlockingIOError:
        pass
    data = random.Random(5).randbytes(100_000)
    received = bytearray()

    with trio.socket.from_stdlib_socket(peer) as reader, trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all, reader, received)
            assert await stream.send_all(data, None) is True
            stream.close()
    assert received == filled + data


async def test_the_last_send_goes_out_even_after_its_deadline(server: socket.socket) -> None:
    # The polite close's last bytes: what the kernel takes at once is sent, without a wait.
    network = TrioNetwork()
    stream, peer = await connected(network, server)
    with peer:
        await network.send_last(stream, b"goodbye", network.now() - 1)
        stream.close()
        assert peer.recv(100) == b"goodbye"


async def test_closing_a_stream_ends_a_send_waiting_for_room(server: socket.socket) -> None:
    network = TrioNetwork()
    stream, peer = await connected(network, server)
    errors: list[OSError] = []

    async def send() -> None:
        try:
            await stream.send_all(bytes(16 << 20), None)  # more than the kernel holds: it waits for room
        except OSError as exc:
            errors.append(exc)

    with peer, trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            await trio.testing.wait_all_tasks_blocked()
            stream.close()
    [error] = errors
    assert "ClosedResourceError" in str(error)


@pytest.fixture(params=["epoll", "nursery"])
def several(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """A wait on several connections as it runs on Linux (one epoll set) and elsewhere (a nursery)."""
    monkeypatch.setattr(trio_backend, "_EPOLL", request.param == "epoll")
    return str(request.param)


async def test_a_wait_on_two_streams_ends_at_its_deadline(server: socket.socket, several: str) -> None:
    # The upgrade's two connections at once: one epoll set under the run's timers (or a nursery under a cancel scope).
    network = TrioNetwork()
    (first, first_peer), (second, second_peer) = [await connected(network, server) for _ in range(2)]
    with first_peer, second_peer, trio.fail_after(5):
        deadline = network.now() + 0.05
        assert await network.receive([first, second], deadline) == []
        assert network.now() >= deadline
        second_peer.sendall(b"later")
        assert await network.receive([first, second], None) == [(second, b"later")]
    first.close()
    second.close()


class OneName(trio.abc.HostnameResolver):
    """``one-address.test`` is 127.0.0.1 (one address: connected without happy eyeballs); other names are unknown."""

    async def getaddrinfo(self, host: bytes | None, port: bytes | str | int | None, family: int = 0,
                          type: int = 0, proto: int = 0, flags: int = 0) -> list[Any]:
        if host != b"one-address.test":
            raise socket.gaierror(socket.EAI_NONAME, f"unknown name: {host!r}")
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", int(port or 0)))]

    async def getnameinfo(self, sockaddr: tuple[str, int] | tuple[str, int, int, int], flags: int) -> tuple[str, str]:
        raise NotImplementedError


@pytest.mark.parametrize(
    ("resolver", "host"), [(OneName(), "one-address.test"), (TwoAddresses(), "two-addresses.test")], ids=["one", "two"]
)
async def test_a_name_connects_to_an_address_that_answers(
    server: socket.socket, resolver: trio.abc.HostnameResolver, host: str
) -> None:
    # One address: connected directly; several (127.0.0.2, where nothing listens, first): trio's happy eyeballs.
    network = TrioNetwork()
    trio.socket.set_custom_hostname_resolver(resolver)
    try:
        stream = await network.connect(host, server.getsockname()[1], network.now() + 5)
    finally:
        trio.socket.set_custom_hostname_resolver(None)
    assert stream is not None
    peer, _ = server.accept()
    with peer:
        peer.sendall(b"hello")
        assert await network.receive([stream], None) == [(stream, b"hello")]
    stream.close()


class Silent(trio.abc.HostnameResolver):
    """A name service that never answers."""

    async def getaddrinfo(self, host: bytes | None, port: bytes | str | int | None, family: int = 0,
                          type: int = 0, proto: int = 0, flags: int = 0) -> list[Any]:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def getnameinfo(self, sockaddr: tuple[str, int] | tuple[str, int, int, int], flags: int) -> tuple[str, str]:
        raise NotImplementedError


async def test_a_connect_ends_at_its_deadline() -> None:
    network = TrioNetwork()
    trio.socket.set_custom_hostname_resolver(Silent())
    try:
        with trio.fail_after(5):
            deadline = network.now() + 0.05
            assert await network.connect("silent.test", 443, deadline) is None
            assert network.now() >= deadline
    finally:
        trio.socket.set_custom_hostname_resolver(None)


async def test_a_refused_connection_is_its_os_error(server: socket.socket) -> None:
    port = server.getsockname()[1]
    server.close()  # nothing listens there now
    network = TrioNetwork()
    with pytest.raises(ConnectionRefusedError):  # one address: connected directly
        await network.connect("127.0.0.1", port, network.now() + 5)
    trio.socket.set_custom_hostname_resolver(TwoAddresses())
    try:
        with pytest.raises(ConnectionRefusedError):  # several: the first cause, not trio's summary
            await network.connect("two-addresses.test", port, network.now() + 5)
    finally:
        trio.socket.set_custom_hostname_resolver(None)


async def test_the_last_send_is_shielded_and_bounded_by_its_deadline(server: socket.socket) -> None:
    network = TrioNetwork()
    stream, peer = await connected(network, server)
    data = random.Random(6).randbytes(16 << 20)  # more than the kernel holds: it waits for room
    received = bytearray()

    with trio.socket.from_stdlib_socket(peer) as reader, trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all, reader, received)
            with trio.CancelScope() as cancelled:
                cancelled.cancel()  # a consumer cancelled: the polite close still goes out whole
                await network.send_last(stream, data, network.now() + 5)
            stream.close()
    assert received == data


async def test_the_last_send_stops_at_its_deadline_and_swallows_errors(server: socket.socket) -> None:
    network = TrioNetwork()
    stream, peer = await connected(network, server)
    with peer, trio.fail_after(5):
        deadline = network.now() + 0.05
        await network.send_last(stream, bytes(16 << 20), deadline)  # the peer does not read
        assert network.now() >= deadline
    stream.close()
    stream, peer = await connected(network, server)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()  # reset: the send fails, and send_last says nothing
    await trio.sleep(0.01)
    await network.send_last(stream, bytes(1 << 20), network.now() + 5)
    stream.close()


async def test_background_work_runs_only_in_an_open_nursery() -> None:
    async def work() -> None:
        ran.append(True)

    ran: list[bool] = []
    coroutine = work()
    assert TrioNetwork().start(coroutine) is None  # no nursery: not run, and closed (no warning)
    assert coroutine.cr_frame is None
    async with trio.open_nursery() as nursery:
        wait = TrioNetwork(lambda: nursery).start(work())
        assert wait is not None
        await wait()
    assert ran == [True]
    coroutine = work()
    assert TrioNetwork(lambda: nursery).start(coroutine) is None  # the nursery closed
    assert coroutine.cr_frame is None and ran == [True]


# -- the upgrade's two connections in one wait (Linux: one epoll set; elsewhere: a nursery) ------------


async def test_either_connection_ends_a_wait_on_both_and_both_read_on(server: socket.socket, several: str) -> None:
    network = TrioNetwork()
    (first, first_peer), (second, second_peer) = [await connected(network, server) for _ in range(2)]
    with first_peer, second_peer, trio.fail_after(5):
        for _ in range(3):  # each wait's set is gone before the next one's
            second_peer.sendall(b"to the second")
            assert await network.receive([first, second], None) == [(second, b"to the second")]
        first_peer.sendall(b"to the first")
        assert await network.receive([first, second], None) == [(first, b"to the first")]
        first_peer.sendall(b"both: first")
        second_peer.sendall(b"both: second")
        await trio.sleep(0.05)  # both there before the wait: one wait reads both (the nursery: at least one)
        got = await network.receive([first, second], network.now() + 5)
        if several == "epoll":
            assert got == [(first, b"both: first"), (second, b"both: second")]
        got += [] if len(got) == 2 else await network.receive([first, second], network.now() + 5)
        assert sorted(got, key=lambda item: item[0] is second) == [(first, b"both: first"), (second, b"both: second")]
        # Each alone again: nothing of the wait on both is left registered on either socket.
        second_peer.sendall(b"second alone")
        assert await network.receive([second], network.now() + 5) == [(second, b"second alone")]
        first_peer.sendall(b"first alone")
        assert await network.receive([first], network.now() + 5) == [(first, b"first alone")]
        second_peer.shutdown(socket.SHUT_WR)  # the end of one connection ends a wait on both
        assert await network.receive([first, second], None) == [(second, b"")]
    first.close()
    second.close()


async def test_a_wait_on_both_ends_at_its_deadline_or_on_wake(server: socket.socket, several: str) -> None:
    network = TrioNetwork()
    (first, first_peer), (second, second_peer) = [await connected(network, server) for _ in range(2)]
    got: list[list[tuple[Stream, bytes | OSError]]] = []

    async def wait() -> None:
        got.append(await network.receive([first, second], None))

    with first_peer, second_peer, trio.fail_after(5):
        deadline = network.now() + 0.05
        assert await network.receive([first, second], deadline) == []
        assert network.now() >= deadline
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()
            network.wake()
        assert got == [[]]
        second_peer.sendall(b"after")
        assert await network.receive([second], None) == [(second, b"after")]
    first.close()
    second.close()


async def test_closing_either_connection_ends_a_wait_on_both(server: socket.socket, several: str) -> None:
    network = TrioNetwork()
    (first, first_peer), (second, second_peer) = [await connected(network, server) for _ in range(2)]
    got: list[list[tuple[Stream, bytes | OSError]]] = []

    async def wait() -> None:
        got.append(await network.receive([first, second], None))

    with first_peer, second_peer, trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()
            second.close()
        [[(source, error)]] = got
        assert source is second and isinstance(error, OSError)
        assert str(error) == "ClosedResourceError: another task closed this fd"  # as a wait on one says it
        first_peer.sendall(b"first still open")
        assert await network.receive([first], None) == [(first, b"first still open")]
    first.close()


async def test_a_connection_closed_before_a_wait_on_both_ends_it(server: socket.socket) -> None:
    # (epoll) Its socket is gone: there is no descriptor to put in the set; the wait ends at once.
    network = TrioNetwork()
    (first, first_peer), (second, second_peer) = [await connected(network, server) for _ in range(2)]
    second.close()
    with first_peer, second_peer, trio.fail_after(5):
        [(source, error)] = await network.receive([first, second], None)
        assert source is second and isinstance(error, OSError)
        assert str(error) == "ClosedResourceError: another task closed this fd"
        first_peer.sendall(b"first still open")
        assert await network.receive([first], None) == [(first, b"first still open")]
    first.close()
