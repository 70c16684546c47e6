"""The one driver of the socket backends (asyncio, trio and sync), on the in-memory network seam and its fake clock.

No sockets and no sleeps: the clock jumps to whatever is due next, so every time
asserted here is exact.  The server is played by :class:`WebSocketServer`.
"""

from __future__ import annotations

import errno
import random

import pytest
from memory_network import MemoryNetwork, MemoryStream
from peer import ClientFrames, open_packet, switching_protocols, ws_frame
from plabs_proto.backends._driver import Driver
from plabs_proto.backends._seam import run_blocking

from plabs_proto.client import ClientConfig, LabsClient
from plabs_proto.errors import LabsTimeout, NetworkError
from plabs_proto.events import Connected

PING_INTERVAL, PING_TIMEOUT = 25.0, 20.0


class WebSocketServer:
    """An Engine.IO server on the WebSocket transport: upgrade, open, connect ack; it records pongs."""

    def __init__(self, stream: MemoryStream, pings: tuple[float, ...] = ()) -> None:
        self.stream = stream
        self.pings = pings
        self.frames = ClientFrames()
        self.upgraded = False
        self.pongs: list[float] = []
        self.seen: list[str | bytes] = []

    def received(self, data: bytes) -> None:
        stream = self.stream
        if not self.upgraded:
            self.upgraded = True
            key = next(line.split(b":", 1)[1].strip() for line in data.split(b"\r\n")
                       if line.lower().startswith(b"sec-websocket-key:"))
            opened = open_packet(upgrades=(), ping_interval=int(PING_INTERVAL * 1000),
                                 ping_timeout=int(PING_TIMEOUT * 1000))
            stream.push(switching_protocols(key.decode()) + ws_frame(opened))
            for at in self.pings:
                stream.push(ws_frame("2"), at=at)
            return
        for frame in self.frames.feed(data):
            self.seen.append(frame)
            if isinstance(frame, str) and frame.startswith("40"):
                stream.push(ws_frame('40{"sid":"S9"}'))
            elif frame == "3":
                self.pongs.append(stream.network.clock)


def start(network: MemoryNetwork) -> Driver:
    config = ClientConfig(server="http://labs.test", transport="websocket", connect_timeout=10.0)
    driver = Driver(LabsClient(config, rng=random.Random(0)), network)
    driver.command(driver.client.connect)
    return driver


def open_session(pings: tuple[float, ...] = ()) -> tuple[MemoryNetwork, Driver, list[WebSocketServer]]:
    servers: list[WebSocketServer] = []

    def serve(stream: MemoryStream) -> WebSocketServer:
        servers.append(WebSocketServer(stream, pings))
        return servers[-1]

    network = MemoryNetwork(serve)
    driver = start(network)
    assert type(run_blocking(driver.next_event())) is Connected
    assert network.clock == 0.0
    return network, driver, servers


def test_idle_pumping_answers_every_ping_when_it_comes() -> None:
    # Three ping intervals of idling: each ping is answered at the instant it arrives.
    network, driver, [server] = open_session(pings=(25.0, 50.0, 75.0))
    run_blocking(driver.pump_idle(lambda: network.clock >= 75.0))
    assert server.pongs == [25.0, 50.0, 75.0]
    assert driver.error is None and not driver.finished
    assert not network.streams[0].closed


def test_silent_server_fails_at_exactly_the_heartbeat_deadline() -> None:
    network, driver, _ = open_session()
    with pytest.raises(LabsTimeout) as caught:
        run_blocking(driver.next_event())
    assert caught.value.deadline == "heartbeat"
    assert network.clock == PING_INTERVAL + PING_TIMEOUT
    assert driver.finished and all(stream.closed for stream in network.streams)


def test_idle_pumping_keeps_the_error_for_the_next_call() -> None:
    network, driver, _ = open_session(pings=(25.0,))
    run_blocking(driver.pump_idle(lambda: False))  # ends when the heartbeat deadline fails the session
    assert network.clock == 25.0 + PING_INTERVAL + PING_TIMEOUT
    with pytest.raises(LabsTimeout):
        run_blocking(driver.next_event())


def test_refused_connection_is_a_network_error_chained_to_the_os_error() -> None:
    network = MemoryNetwork(lambda stream: WebSocketServer(stream), refuse=True)
    driver = start(network)
    with pytest.raises(NetworkError) as caught:
        run_blocking(driver.next_event())
    error = caught.value
    assert (error.host, error.port, error.errno) == ("labs.test", 80, errno.ECONNREFUSED)
    assert isinstance(error.__cause__, ConnectionRefusedError)
    assert str(error) == (
        "expected to connect to the server at labs.test:80, but the connection failed "
        "(ConnectionRefusedError: [Errno 111] Connection refused)"
    )


def test_events_before_a_failure_come_first_then_everything_is_closed() -> None:
    servers: list[WebSocketServer] = []

    def serve(stream: MemoryStream) -> WebSocketServer:
        servers.append(WebSocketServer(stream))
        stream.push(ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), at=1.0)
        return servers[-1]

    network = MemoryNetwork(serve)
    driver = start(network)
    assert type(run_blocking(driver.next_event())) is Connected
    with pytest.raises(NetworkError) as caught:
        run_blocking(driver.next_event())
    assert network.clock == 1.0
    assert caught.value.errno == errno.ECONNRESET and "receive from the server at labs.test:80" in str(caught.value)
    assert driver.finished and all(stream.closed for stream in network.streams)
    with pytest.raises(NetworkError):  # the first error stays the answer
        run_blocking(driver.next_event())


def test_polite_close_says_goodbye_then_closes() -> None:
    network, driver, [server] = open_session()
    before = len(server.seen)
    run_blocking(driver.aclose())
    [stream] = network.streams
    assert server.seen[before:] == ["41", "1", b"<close>"]  # Socket.IO disconnect, Engine.IO close, WebSocket close
    assert stream.closed and driver.finished
