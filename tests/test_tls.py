"""TLSLayer against an in-memory TLS server (ssl.SSLObject over MemoryBIOs): no sockets."""

from __future__ import annotations

import random
import re
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from peer import MemoryTLSServer

from plabs_proto.config import ClientConfig
from plabs_proto.errors import LocalProtocolError, TLSError
from plabs_proto.wire.client import LabsClient
from plabs_proto.wire.tls import TLSLayer, check_ssl_context, make_ssl_context


def chunks(data: bytes, size: int | None) -> Iterator[bytes]:
    if size is None:
        if data:
            yield data
        return
    for i in range(0, len(data), size):
        yield data[i : i + size]


def pump(client: TLSLayer, server: MemoryTLSServer, chunk_size: int | None = None) -> bytes:
    """Move bytes both ways until neither side has anything to send; return the client's plaintext."""
    plaintext = bytearray()
    while True:
        to_server = client.data_to_send()
        for piece in chunks(to_server, chunk_size):
            server.receive_data(piece)
        to_client = server.data_to_send()
        for piece in chunks(to_client, chunk_size):
            plaintext += client.receive_data(piece)
        if not to_server and not to_client:
            return bytes(plaintext)


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def cafile(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def server_context(ca: trustme.CA, *hosts: str, max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*(hosts or ("localhost", "127.0.0.1"))).configure_cert(context)
    context.set_alpn_protocols(["h2", "http/1.1"])
    if max_version is not None:
        context.maximum_version = max_version
    return context


@pytest.fixture(scope="module")
def server_ctx(ca: trustme.CA) -> ssl.SSLContext:
    return server_context(ca)


def connected(
    cafile: str, server_ctx: ssl.SSLContext, host: str = "localhost"
) -> tuple[TLSLayer, MemoryTLSServer]:
    client = TLSLayer(make_ssl_context(cafile), host)
    server = MemoryTLSServer(server_ctx)
    client.start()
    assert pump(client, server) == b""
    assert client.established and server.handshake_done
    return client, server


# -- make_ssl_context / check_ssl_context ---------------------------------------------------


def test_make_ssl_context_verifies_and_requires_tls12(cafile: str) -> None:
    context = make_ssl_context(cafile)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    check_ssl_context(context)  # does not raise


# -- what the ClientHello offers ---------------------------------------------------------------


def client_hello_fields(record: bytes) -> tuple[list[int], dict[int, bytes]]:
    """The cipher suites and the extensions (type: data) of a TLS record holding a ClientHello."""
    assert record[0] == 0x16 and record[5] == 0x01, "expected a handshake record with a ClientHello"
    body = record[5:]
    at = 4 + 2 + 32  # handshake header, legacy version, random
    at += 1 + body[at]  # session id
    size = int.from_bytes(body[at : at + 2], "big")
    suites = [int.from_bytes(body[i : i + 2], "big") for i in range(at + 2, at + 2 + size, 2)]
    at += 2 + size
    at += 1 + body[at]  # compression methods
    end = at + 2 + int.from_bytes(body[at : at + 2], "big")
    at += 2
    extensions: dict[int, bytes] = {}
    while at < end:
        kind, length = int.from_bytes(body[at : at + 2], "big"), int.from_bytes(body[at + 2 : at + 4], "big")
        extensions[kind] = body[at + 4 : at + 4 + length]
        at += 4 + length
    return suites, extensions


def test_the_tls12_suites_are_chromes_in_chromes_order_after_the_tls13_ones(cafile: str) -> None:
    offered = [(c["protocol"], c["name"]) for c in make_ssl_context(cafile).get_ciphers()]
    assert [name for protocol, name in offered if protocol == "TLSv1.2"] == [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ]
    assert [protocol for protocol, _ in offered[:3]] == ["TLSv1.3"] * 3


def test_the_client_hello_offers_tls13_first_x25519_first_and_http11(cafile: str) -> None:
    client = TLSLayer(make_ssl_context(cafile), "localhost")
    client.start()
    suites, extensions = client_hello_fields(client.data_to_send())
    # TLS 1.3's three (OpenSSL's order), Chrome's six for TLS 1.2, the renegotiation SCSV.
    assert suites == [0x1302, 0x1303, 0x1301, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8, 0x00FF]
    assert extensions[43][1:3] == b"\x03\x04"  # supported_versions: TLS 1.3 first
    assert extensions[10][2:4] == b"\x00\x1d"  # supported_groups: X25519 first
    assert extensions[16] == b"\x00\x09\x08http/1.1"  # ALPN: HTTP/1.1 alone


@pytest.mark.parametrize(
    ("key_type", "suite"),
    [(trustme.KeyType.ECDSA, "ECDHE-ECDSA-AES128-GCM-SHA256"), (trustme.KeyType.RSA, "ECDHE-RSA-AES128-GCM-SHA256")],
)
def test_a_tls12_server_picks_chromes_first_suite_for_its_key(
    key_type: trustme.KeyType, suite: str, tmp_path: Path
) -> None:
    ca = trustme.CA(key_type=key_type)
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", key_type=key_type).configure_cert(server_ctx)
    server_ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    server_ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE  # the server follows the client's order
    client, server = connected(str(cafile), server_ctx)
    assert client.version == "TLSv1.2"
    cipher = server.ssl.cipher()
    assert cipher is not None and cipher[0] == suite


def test_a_callers_own_context_is_left_as_it_is(ca: trustme.CA) -> None:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    before = [c["name"] for c in context.get_ciphers()]
    LabsClient(ClientConfig(server="https://localhost", ssl_context=context), rng=random.Random(0))
    assert [c["name"] for c in context.get_ciphers()] == before


def test_cert_none_context_is_refused(cafile: str) -> None:
    context = make_ssl_context(cafile)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with pytest.raises(LocalProtocolError, match="verify_mode == CERT_NONE: certificate verification cannot"):
        check_ssl_context(context)
    with pytest.raises(LocalProtocolError, match="CERT_NONE"):
        TLSLayer(context, "localhost")


def test_context_without_hostname_check_is_refused(cafile: str) -> None:
    context = make_ssl_context(cafile)
    context.check_hostname = False
    assert context.verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(LocalProtocolError, match="check_hostname == False: host name checking cannot"):
        TLSLayer(context, "localhost")


def test_server_context_is_refused(server_ctx: ssl.SSLContext) -> None:
    with pytest.raises(LocalProtocolError, match=re.escape("client-side ssl.SSLContext")):
        TLSLayer(server_ctx, "localhost")


def test_empty_server_hostname_is_refused(cafile: str) -> None:
    with pytest.raises(LocalProtocolError, match="expected a server host name"):
        TLSLayer(make_ssl_context(cafile), "")


# -- handshake and data ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_version", "expected_version"),
    [(None, "TLSv1.3"), (ssl.TLSVersion.TLSv1_2, "TLSv1.2")],
)
def test_handshake_and_data_both_ways(
    ca: trustme.CA, cafile: str, max_version: ssl.TLSVersion | None, expected_version: str
) -> None:
    client, server = connected(cafile, server_context(ca, "localhost", max_version=max_version))
    assert client.version == expected_version
    assert client.alpn_protocol == "http/1.1"
    assert server.ssl.selected_alpn_protocol() == "http/1.1"
    assert not client.eof

    client.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert pump(client, server) == b""
    assert bytes(server.received) == b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"

    server.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert pump(client, server) == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_handshake_state_before_completion(cafile: str, server_ctx: ssl.SSLContext) -> None:
    client = TLSLayer(make_ssl_context(cafile), "localhost")
    assert not client.established
    assert client.version is None
    assert client.alpn_protocol is None
    assert client.data_to_send() == b""
    client.start()
    hello = client.data_to_send()
    assert hello[:1] == b"\x16"  # a handshake record: the ClientHello
    assert client.data_to_send() == b""
    assert client.server_hostname == "localhost"


def test_ip_address_host(ca: trustme.CA, cafile: str) -> None:
    client, _server = connected(cafile, server_context(ca, "127.0.0.1"), host="127.0.0.1")
    assert client.established


def test_data_sent_before_handshake_is_flushed_after(cafile: str, server_ctx: ssl.SSLContext) -> None:
    client = TLSLayer(make_ssl_context(cafile), "localhost")
    server = MemoryTLSServer(server_ctx)
    client.send(b"early ")
    client.start()
    client.send(b"bytes")
    client.send(b"")
    hello = client.data_to_send()
    server.receive_data(hello)
    assert server.received == b""
    assert pump(client, server) == b""
    assert bytes(server.received) == b"early bytes"


def test_large_data_both_ways(cafile: str, server_ctx: ssl.SSLContext) -> None:
    client, server = connected(cafile, server_ctx)
    up = bytes(range(256)) * 1200  # about 300 KB: several TLS records
    down = bytes(reversed(range(256))) * 1300
    client.send(up)
    server.send(down)
    assert pump(client, server, chunk_size=5000) == down
    assert bytes(server.received) == up


def test_byte_by_byte_delivery(cafile: str, server_ctx: ssl.SSLContext) -> None:
    client = TLSLayer(make_ssl_context(cafile), "localhost")
    server = MemoryTLSServer(server_ctx)
    client.send(b"ping")
    client.start()
    assert pump(client, server, chunk_size=1) == b""
    assert client.established
    assert bytes(server.received) == b"ping"
    server.send(b"pong")
    assert pump(client, server, chunk_size=1) == b"pong"


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(min_value=1, max_value=700), min_size=1, max_size=8))
def test_arbitrary_chunking(cafile: str, server_ctx: ssl.SSLContext, sizes: list[int]) -> None:
    client = TLSLayer(make_ssl_context(cafile), "localhost")
    server = MemoryTLSServer(server_ctx)
    client.start()
    plaintext = bytearray()
    step = 0
    greeted = False
    for _ in range(50):
        to_server = client.data_to_send()
        if to_server:
            server.receive_data(to_server)
        if server.handshake_done and not greeted:
            server.send(b"hello from the server")
            greeted = True
        to_client = server.data_to_send()
        while to_client:
            size = sizes[step % len(sizes)]
            step += 1
            plaintext += client.receive_data(to_client[:size])
            to_client = to_client[size:]
        if not to_server and plaintext:
            break
    assert client.established
    assert bytes(plaintext) == b"hello from the server"


# -- certificate failures -------------------------------------------------------------------


def test_wrong_host_is_a_tls_error(ca: trustme.CA, cafile: str) -> None:
    client = TLSLayer(make_ssl_context(cafile), "localhost")
    server = MemoryTLSServer(server_context(ca, "example.org"))
    client.start()
    with pytest.raises(TLSError) as info:
        pump(client, server)
    assert str(info.value) == (
        "TLS certificate for 'localhost' was not accepted: "
        "Hostname mismatch, certificate is not valid for 'localhost'."
    )
    assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)
    assert not client.established


def test_untrusted_ca_is_a_tls_error(tmp_path: Path, server_ctx: ssl.SSLContext) -> None:
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    client = TLSLayer(make_ssl_context(str(other)), "localhost")
    server = MemoryTLSServer(server_ctx)
    client.start()
    with pytest.raises(TLSError) as info:
        pump(client, server)
    message = str(info.value)
    assert message.startswith("TLS certificate for 'localhost' was not accepted: ")
    assert "unable to get local issuer certificate" in message
    assert message.endswith(".")


def test_plain_http_answer_is_a_tls_error(cafile: str) -> None:
    client = TLSLayer(make_ssl_context(cafile), "localhost")
    client.start()
    client.data_to_send()
    with pytest.raises(TLSError) as info:
        client.receive_data(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    message = str(info.value)
    assert message.startswith("TLS handshake with 'localhost' failed: ")
    assert message.endswith(
        "expected a TLS server's reply, got b'HTTP/1.1 400 Bad Request\\r\\nContent-Length: 0\\r\\n\\r\\n'"
    )


# -- EOF and close ----------------------------------------------------------------------------


def test_eof_before_any_reply(cafile: str) -> None:
    client = TLSLayer(make_ssl_context(cafile), "localhost")
    client.start()
    with pytest.raises(TLSError) as info:
        client.receive_data(b"")
    assert str(info.value) == (
        "the connection to 'localhost' was closed during the TLS handshake: "
        "expected the server's handshake messages, got EOF before any reply"
    )


def test_eof_during_handshake(cafile: str, server_ctx: ssl.SSLContext) -> None:
    client = TLSLayer(make_ssl_context(cafile), "localhost")
    server = MemoryTLSServer(server_ctx)
    client.start()
    server.receive_data(client.data_to_send())
    flight = server.data_to_send()
    assert client.receive_data(flight[:10]) == b""
    with pytest.raises(TLSError, match=r"closed during the TLS handshake: .* got EOF after b'\\x16\\x03"):
        client.receive_data(b"")


def test_close_notify_sets_eof(cafile: str, server_ctx: ssl.SSLContext) -> None:
    client, server = connected(cafile, server_ctx)
    server.send(b"last words")
    server.close_notify()
    assert pump(client, server) == b"last words"
    assert client.eof
    # Bytes after close_notify are not TLS data any more; nothing comes up.
    assert client.receive_data(b"junk") == b""
    assert client.receive_data(b"") == b""
    assert client.eof
    # The peer closed its side only: the client can still send.
    client.send(b"half-closed")
    pump(client, server)
    assert bytes(server.received) == b"half-closed"


def test_tcp_eof_after_handshake_sets_eof(cafile: str, server_ctx: ssl.SSLContext) -> None:
    client, server = connected(cafile, server_ctx)
    server.send(b"partial")
    assert pump(client, server) == b"partial"
    assert not client.eof
    assert client.receive_data(b"") == b""
    assert client.eof


def test_ragged_eof_inside_a_record_is_tolerated(cafile: str, server_ctx: ssl.SSLContext) -> None:
    client, server = connected(cafile, server_ctx)
    server.send(b"x" * 1000)
    record = server.data_to_send()
    assert client.receive_data(record[:500]) == b""
    assert client.receive_data(b"") == b""
    assert client.eof


def test_client_close_sends_close_notify(cafile: str, server_ctx: ssl.SSLContext) -> None:
    client, server = connected(cafile, server_ctx)
    client.send(b"bye")
    client.close()
    client.close()  # idempotent
    pump(client, server)
    assert bytes(server.received) == b"bye"
    assert server.peer_closed
    with pytest.raises(LocalProtocolError, match="close\\(\\) was called"):
        client.send(b"more")


def test_close_before_handshake_sends_nothing(cafile: str) -> None:
    client = TLSLayer(make_ssl_context(cafile), "localhost")
    client.send(b"never sent")
    client.close()
    assert client.data_to_send() == b""
    client.start()
    assert client.data_to_send()[:1] == b"\x16"
    with pytest.raises(LocalProtocolError):
        client.send(b"x")


def test_corrupted_record_after_handshake_is_a_tls_error(cafile: str, server_ctx: ssl.SSLContext) -> None:
    client, server = connected(cafile, server_ctx)
    server.send(b"secret payload")
    record = bytearray(server.data_to_send())
    record[-1] ^= 0xFF  # break the authentication tag
    with pytest.raises(TLSError, match=r"^TLS connection with 'localhost' failed: "):
        client.receive_data(bytes(record))


def test_missing_cafile_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(LocalProtocolError, match=r"nope\.pem"):
        make_ssl_context(str(missing))
