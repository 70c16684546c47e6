"""StreamStack: TLS inside HTTP CONNECT and SOCKS5 tunnels, all in memory; passthrough; EOF."""

from __future__ import annotations

import ssl
from collections.abc import Callable

import pytest
import trustme
from peer import MemoryTLSServer

from plabs_proto.errors import LocalProtocolError, ProxyError, TLSError
from plabs_proto.wire.proxy import HTTPConnectTunnel, SOCKS5Tunnel
from plabs_proto.wire.stack import Layer, StreamStack
from plabs_proto.wire.tls import TLSLayer, make_ssl_context

HOST = "labs.example"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def cafile(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def server(ca: trustme.CA) -> MemoryTLSServer:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(HOST).configure_cert(context)
    context.set_alpn_protocols(["http/1.1"])
    return MemoryTLSServer(context)


def feed(stack: StreamStack, data: bytes, bytewise: bool) -> bytes:
    if not bytewise:
        return stack.receive_data(data)
    return b"".join(stack.receive_data(data[i : i + 1]) for i in range(len(data)))


def relay(stack: StreamStack, server: MemoryTLSServer, bytewise: bool = False) -> bytes:
    """The proxy, once the tunnel is up: carry bytes both ways until both sides are quiet."""
    up = bytearray()
    while True:
        to_server = stack.data_to_send()
        if to_server:
            server.receive_data(to_server)
        to_client = server.data_to_send()
        if to_client:
            up += feed(stack, to_client, bytewise)
        if not to_server and not to_client:
            return bytes(up)


def connect_tunnel(stack: StreamStack, bytewise: bool) -> None:
    """Play an HTTP proxy that accepts the CONNECT."""
    assert stack.data_to_send() == f"CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n\r\n".encode()
    assert feed(stack, b"HTTP/1.1 200 Connection established\r\n\r\n", bytewise) == b""


def socks_tunnel(stack: StreamStack, bytewise: bool) -> None:
    """Play a SOCKS5 proxy with user/password authentication that accepts the CONNECT."""
    assert stack.data_to_send() == b"\x05\x02\x00\x02"
    assert feed(stack, b"\x05\x02", bytewise) == b""
    assert stack.data_to_send() == b"\x01\x04user\x04pass"
    assert feed(stack, b"\x01\x00", bytewise) == b""
    assert stack.data_to_send() == b"\x05\x01\x00\x03\x0clabs.example\x01\xbb"
    assert feed(stack, b"\x05\x00\x00\x01\x0a\x00\x00\x01\x30\x39", bytewise) == b""


TUNNELS: dict[str, tuple[Callable[[], Layer], Callable[[StreamStack, bool], None]]] = {
    "http-connect": (lambda: HTTPConnectTunnel(HOST, 443), connect_tunnel),
    "socks5": (lambda: SOCKS5Tunnel(HOST, 443, username="user", password="pass"), socks_tunnel),
}


def tls_stack(kind: str, cafile: str) -> tuple[StreamStack, TLSLayer]:
    make_tunnel, _ = TUNNELS[kind]
    tls = TLSLayer(make_ssl_context(cafile), HOST)
    return StreamStack([make_tunnel(), tls]), tls


@pytest.mark.parametrize("kind", sorted(TUNNELS))
@pytest.mark.parametrize("bytewise", [False, True])
def test_tls_inside_tunnel_round_trip(
    kind: str, bytewise: bool, cafile: str, server: MemoryTLSServer
) -> None:
    stack, tls = tls_stack(kind, cafile)
    stack.send(b"GET / HTTP/1.1\r\n")  # held until TLS is up, which waits for the tunnel
    stack.start()
    assert not stack.established
    TUNNELS[kind][1](stack, bytewise)  # the proxy's part: only tunnel bytes so far, no ClientHello
    assert not stack.established
    stack.send(b"Host: labs.example\r\n\r\n")

    assert relay(stack, server, bytewise) == b""
    assert stack.established
    assert tls.alpn_protocol == "http/1.1"
    assert bytes(server.received) == b"GET / HTTP/1.1\r\nHost: labs.example\r\n\r\n"

    server.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    assert relay(stack, server, bytewise) == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
    stack.send(b"more")
    assert relay(stack, server, bytewise) == b""
    assert bytes(server.received).endswith(b"\r\n\r\nmore")
    assert not stack.eof


@pytest.mark.parametrize("kind", sorted(TUNNELS))
def test_close_notify_through_tunnel_is_eof(kind: str, cafile: str, server: MemoryTLSServer) -> None:
    stack, _tls = tls_stack(kind, cafile)
    stack.start()
    TUNNELS[kind][1](stack, False)
    relay(stack, server)
    server.send(b"bye")
    server.close_notify()
    # The data and the close_notify arrive in one TCP read.
    assert stack.receive_data(server.data_to_send()) == b"bye"
    assert stack.eof
    # The TCP EOF that follows changes nothing.
    assert stack.receive_data(b"") == b""
    assert stack.eof


@pytest.mark.parametrize("kind", sorted(TUNNELS))
def test_tcp_eof_through_tunnel_is_eof(kind: str, cafile: str, server: MemoryTLSServer) -> None:
    stack, tls = tls_stack(kind, cafile)
    stack.start()
    TUNNELS[kind][1](stack, False)
    relay(stack, server)
    assert not stack.eof
    assert stack.receive_data(b"") == b""
    assert stack.eof
    assert tls.eof
    assert stack.layers[0].eof
    assert stack.receive_data(b"") == b""
    with pytest.raises(LocalProtocolError, match="after TCP EOF"):
        stack.receive_data(b"late")


@pytest.mark.parametrize("kind", sorted(TUNNELS))
def test_tcp_eof_during_tls_handshake_in_tunnel(kind: str, cafile: str, server: MemoryTLSServer) -> None:
    stack, _tls = tls_stack(kind, cafile)
    stack.start()
    TUNNELS[kind][1](stack, False)
    hello = stack.data_to_send()
    assert hello[:1] == b"\x16"
    with pytest.raises(TLSError, match="closed during the TLS handshake"):
        stack.receive_data(b"")


@pytest.mark.parametrize("kind", sorted(TUNNELS))
def test_tcp_eof_during_tunnel_negotiation(kind: str, cafile: str) -> None:
    stack, _tls = tls_stack(kind, cafile)
    stack.start()
    stack.data_to_send()
    with pytest.raises(ProxyError, match="closed the connection before"):
        stack.receive_data(b"")


def test_tunnel_refusal_comes_through_the_stack(cafile: str) -> None:
    stack, _tls = tls_stack("http-connect", cafile)
    stack.start()
    stack.data_to_send()
    with pytest.raises(
        ProxyError, match=r"^HTTP proxy refused the tunnel to labs\.example:443: 403 Forbidden$"
    ):
        stack.receive_data(b"HTTP/1.1 403 Forbidden\r\n\r\n")


def test_wrong_certificate_through_tunnel(ca: trustme.CA, cafile: str) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("other.example").configure_cert(context)
    server = MemoryTLSServer(context)
    stack, _tls = tls_stack("socks5", cafile)
    stack.start()
    socks_tunnel(stack, False)
    with pytest.raises(
        TLSError, match=r"^TLS certificate for 'labs\.example' was not accepted: Hostname mismatch"
    ):
        relay(stack, server)


def test_http_connect_inside_socks5_then_tls(cafile: str, server: MemoryTLSServer) -> None:
    """Layers compose: SOCKS5 to an HTTP proxy, CONNECT through it, then TLS."""
    tls = TLSLayer(make_ssl_context(cafile), HOST)
    stack = StreamStack([SOCKS5Tunnel("10.0.0.1", 3128), HTTPConnectTunnel(HOST, 443), tls])
    stack.start()
    stack.send(b"app")
    assert stack.data_to_send() == b"\x05\x01\x00"
    assert stack.receive_data(b"\x05\x00") == b""
    assert stack.data_to_send() == b"\x05\x01\x00\x01\x0a\x00\x00\x01\x0c\x38"
    assert stack.receive_data(b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00") == b""
    assert stack.data_to_send() == b"CONNECT labs.example:443 HTTP/1.1\r\nHost: labs.example:443\r\n\r\n"
    assert stack.receive_data(b"HTTP/1.1 200 OK\r\n\r\n") == b""
    assert relay(stack, server) == b""
    assert stack.established
    assert bytes(server.received) == b"app"


# -- tunnels without TLS, and the passthrough stack --------------------------------------------


def test_bytes_after_the_tunnel_reply_reach_the_top() -> None:
    stack = StreamStack([SOCKS5Tunnel("example.com", 80)])
    stack.start()
    stack.send(b"GET / HTTP/1.1\r\n\r\n")
    assert stack.data_to_send() == b"\x05\x01\x00"
    assert stack.receive_data(b"\x05\x00") == b""
    assert stack.data_to_send() == b"\x05\x01\x00\x03\x0bexample.com\x00\x50"
    assert not stack.established
    assert stack.receive_data(b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00HTTP/1.1 200 OK\r\n") == (
        b"HTTP/1.1 200 OK\r\n"
    )
    assert stack.established
    assert stack.data_to_send() == b"GET / HTTP/1.1\r\n\r\n"
    assert stack.receive_data(b"\r\n") == b"\r\n"
    assert stack.receive_data(b"") == b""
    assert stack.eof


def test_passthrough_stack() -> None:
    stack = StreamStack()
    assert stack.layers == ()
    assert stack.established
    stack.start()
    assert stack.data_to_send() == b""
    stack.send(b"one ")
    stack.send(b"")
    stack.send(b"two")
    assert stack.data_to_send() == b"one two"
    assert stack.data_to_send() == b""
    stack.send(b"three")
    assert stack.data_to_send() == b"three"
    assert stack.receive_data(b"incoming") == b"incoming"
    assert not stack.eof
    assert stack.receive_data(b"") == b""
    assert stack.eof
    assert stack.receive_data(b"") == b""
    with pytest.raises(LocalProtocolError, match="after TCP EOF: expected nothing more, got b'late'"):
        stack.receive_data(b"late")


def test_passthrough_returns_the_same_objects() -> None:
    """The hot path copies nothing."""
    stack = StreamStack([])
    chunk = b"x" * 4096
    assert stack.receive_data(chunk) is chunk
    stack.send(chunk)
    assert stack.data_to_send() is chunk
