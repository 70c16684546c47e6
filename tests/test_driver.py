"""The one driver of the socket backends (asyncio, trio and sync), on the in-memory network seam
and its fake clock.

No sockets and no sleeps: the clock jumps to whatever is due next, so every time
asserted here is exact.  The server is played by :class:`WebSocketServer`.
"""

from __future__ import annotations

import errno
import random

import pytest
from memory_network import MemoryNetwork, MemoryStream
from peer import ClientFrames, open_packet, progress, switching_protocols, ws_frame
from plabs_proto.backends._driver import CLOSE_WAIT, Driver
from plabs_proto.backends._seam import GRACE, run_blocking

from plabs_proto.config import ClientConfig
from plabs_proto.errors import LabsTimeout, LocalProtocolError, NetworkError, RemoteProtocolError
from plabs_proto.events import Closed, Connected, ReasoningDelta, TextDelta
from plabs_proto.wire.client import LabsClient

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


def start(network: MemoryNetwork, proxy: str | None = None) -> Driver:
    config = ClientConfig(server="http://labs.test", transport="websocket", connect_timeout=10.0, proxy=proxy)
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


def test_connect_and_first_write_get_the_target_and_the_connect_deadline() -> None:
    network, _, _ = open_session()
    assert network.connects == [("labs.test", 80, 10.0)]
    [stream] = network.streams
    # the upgrade request and the connect ack's CONNECT, both before the connect deadline
    assert stream.sends == [10.0, 10.0]


@pytest.mark.parametrize("early", [0.0, 0.0005])
def test_connect_that_stalls_fails_at_the_connect_deadline(early: float) -> None:
    # The network gives up at the deadline (or a moment before it, as a coarse clock may): the
    # client's connect deadline fires all the same.
    network = MemoryNetwork(lambda stream: WebSocketServer(stream), stall_connect=early)
    driver = start(network)
    with pytest.raises(LabsTimeout) as caught:
        run_blocking(driver.next_event())
    assert caught.value.deadline == "connect"
    assert network.clock == 10.0 - early and network.connects == [("labs.test", 80, 10.0)]
    assert driver.finished and network.streams == []


def test_write_that_stalls_fails_at_the_connect_deadline() -> None:
    def serve(stream: MemoryStream) -> WebSocketServer:
        stream.stall_sends = True
        return WebSocketServer(stream)

    network = MemoryNetwork(serve)
    driver = start(network)
    with pytest.raises(LabsTimeout) as caught:
        run_blocking(driver.next_event())
    assert caught.value.deadline == "connect"
    [stream] = network.streams
    assert network.clock == 10.0 and stream.sends == [10.0] and stream.written == []
    assert driver.finished and stream.closed


def test_failed_write_is_a_network_error_with_the_partial_answer() -> None:
    network, driver, [server] = open_session()
    driver.command(driver.client.query, "hi", model="sonar")
    stream = server.stream
    stream.push(ws_frame(progress("sonar", {"output": "<think>Hmm</think>Hel", "final": False})), at=1.0)
    stream.push(ws_frame("2"), at=2.0)  # a ping: its pong is the write that fails
    assert run_blocking(driver.next_event()) == ReasoningDelta(text="Hmm")
    assert run_blocking(driver.next_event()) == TextDelta(text="Hel")
    broken = BrokenPipeError(errno.EPIPE, "Broken pipe")
    stream.send_error = broken
    with pytest.raises(NetworkError) as caught:
        run_blocking(driver.next_event())
    error = caught.value
    assert network.clock == 2.0
    assert str(error) == (
        "expected to send to the server at labs.test:80, but the connection failed after 3 characters "
        "of the answer (BrokenPipeError: [Errno 32] Broken pipe)"
    )
    assert (error.host, error.port, error.errno) == ("labs.test", 80, errno.EPIPE)
    assert (error.partial_text, error.partial_reasoning) == ("Hel", "Hmm")
    assert error.__cause__ is broken
    assert driver.finished and stream.closed


def test_refused_proxy_is_named_as_the_proxy() -> None:
    network = MemoryNetwork(lambda stream: WebSocketServer(stream), refuse=True)
    driver = start(network, proxy="http://bob:s3cret@proxy.test:3128")
    with pytest.raises(NetworkError) as caught:
        run_blocking(driver.next_event())
    assert network.connects == [("proxy.test", 3128, 10.0)]
    assert (caught.value.host, caught.value.port) == ("proxy.test", 3128)
    assert str(caught.value) == (
        "expected to connect to the proxy at proxy.test:3128, but the connection failed "
        "(ConnectionRefusedError: [Errno 111] Connection refused)"
    )


def test_server_disconnect_closes_the_connection_then_nothing_is_left_to_read() -> None:
    network, driver, [server] = open_session()
    server.stream.push(ws_frame("41"), at=10.0)  # Socket.IO disconnect, between queries
    assert run_blocking(driver.next_event()) == Closed(reason="Socket.IO namespace disconnected by the server")
    with pytest.raises(RemoteProtocolError) as caught:
        run_blocking(driver.next_event())
    error = caught.value
    assert str(error) == "expected the answer to finish, but the session ended: no connection is left to read from"
    assert (error.partial_text, error.partial_reasoning) == ("", "")
    assert network.clock == 10.0 and server.stream.closed and driver.finished


def test_closed_while_connecting_closes_the_new_connection() -> None:
    # close() from elsewhere (another task, __del__) while the connect is under way
    drivers: list[Driver] = []

    def serve(stream: MemoryStream) -> WebSocketServer:
        drivers[0].close()
        return WebSocketServer(stream)

    network = MemoryNetwork(serve)
    drivers.append(start(network))
    with pytest.raises(LocalProtocolError) as caught:
        run_blocking(drivers[0].next_event())
    assert str(caught.value) == "cannot wait for an answer: the session is closed"
    [stream] = network.streams
    assert stream.closed and stream.written == [] and network.clock == 0.0


@pytest.mark.parametrize("busy_until", [45.0, 50.0])
def test_overdue_deadline_gets_a_grace_for_waiting_bytes_then_fires(busy_until: float) -> None:
    # The consumer comes back at or after the heartbeat deadline (45): the driver still reads for GRACE.
    network, driver, _ = open_session()
    network.clock = busy_until
    with pytest.raises(LabsTimeout) as caught:
        run_blocking(driver.next_event())
    assert caught.value.deadline == "heartbeat"
    assert network.clock == busy_until + GRACE


def test_overdue_deadline_reads_what_came_before_it_first() -> None:
    # A ping came at 25 while the consumer was away until 50 (past the deadline at 45): it still counts.
    network, driver, [server] = open_session(pings=(25.0,))
    network.clock = 50.0
    with pytest.raises(LabsTimeout) as caught:
        run_blocking(driver.next_event())
    assert server.pongs == [50.0]
    assert caught.value.deadline == "heartbeat" and network.clock == 50.0 + PING_INTERVAL + PING_TIMEOUT


def test_ping_completed_just_after_the_deadline_counts() -> None:
    # Half a ping frame comes at the heartbeat deadline itself, the rest within GRACE: the deadline
    # does not fire between the two reads, and the pong goes out.
    network, driver, [server] = open_session()
    frame = ws_frame("2")
    server.stream.push(frame[:1], at=45.0)
    server.stream.push(frame[1:], at=45.0 + GRACE / 2)
    with pytest.raises(LabsTimeout):
        run_blocking(driver.next_event())
    assert server.pongs == [45.0 + GRACE / 2]
    assert network.clock == 45.0 + GRACE / 2 + PING_INTERVAL + PING_TIMEOUT


def test_idling_in_the_background_answers_pings_until_stopped() -> None:
    network, driver, [server] = open_session(pings=(25.0, 50.0, 75.0))
    driver.start_idling()
    assert network.started == 1
    network.idle(until=60.0)  # the consumer is elsewhere: the background answers
    assert server.pongs == [25.0, 50.0]
    run_blocking(driver.stop_idling())
    assert network.background is None and network.clock == 60.0
    driver.start_idling()  # between the next two queries
    assert network.started == 2
    network.idle(until=80.0)
    run_blocking(driver.stop_idling())
    assert server.pongs == [25.0, 50.0, 75.0]
    assert network.background is None and network.clock == 80.0
    assert driver.error is None and not driver.finished and not server.stream.closed


def test_idling_does_not_start_on_a_closed_session() -> None:
    network, driver, _ = open_session()
    driver.close()
    driver.start_idling()
    assert network.started == 0 and network.background is None


def test_waiting_for_events_while_idling_is_refused() -> None:
    # Events that come while the background idles wait for the consumer, who must stop the idling first.
    network, driver, [server] = open_session()
    driver.command(driver.client.query, "hi", model="sonar")
    server.stream.push(ws_frame(progress("sonar", {"output": "Hel", "final": False})), at=5.0)
    driver.start_idling()
    network.idle(until=10.0)
    assert driver.client.partial_text == "Hel"  # read while idling: its event waits in the client (below)
    with pytest.raises(LocalProtocolError) as caught:
        run_blocking(driver.next_event())
    assert str(caught.value) == "cannot wait for this session's events in two tasks at once"
    run_blocking(driver.stop_idling())
    assert run_blocking(driver.next_event()) == TextDelta(text="Hel")
    assert network.clock == 10.0


def test_polite_close_writes_at_once_within_close_wait() -> None:
    traced: list[tuple[float, str]] = []
    servers: list[WebSocketServer] = []

    def serve(stream: MemoryStream) -> WebSocketServer:
        servers.append(WebSocketServer(stream))
        return servers[-1]

    network = MemoryNetwork(serve)
    config = ClientConfig(server="http://labs.test", transport="websocket", connect_timeout=10.0)
    client = LabsClient(config, rng=random.Random(0),
                        tracer=lambda now, stream_id, direction, data: traced.append((now, direction)))
    driver = Driver(client, network)
    driver.command(client.connect)
    assert type(run_blocking(driver.next_event())) is Connected
    network.clock = 7.5
    before = len(traced)
    run_blocking(driver.aclose())
    assert servers[0].seen[-3:] == ["41", "1", b"<close>"]
    # the three go out in one write, traced at the close's time, bounded by CLOSE_WAIT from then
    assert traced[before:] == [(7.5, "out")]
    assert [(at, deadline) for at, _, deadline in network.goodbyes] == [(7.5, 7.5 + CLOSE_WAIT)]
