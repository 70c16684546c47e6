"""Proxy tunnels (HTTP CONNECT, SOCKS5) as byte-exact transcripts, and proxy URL parsing."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plabs_proto.errors import LocalProtocolError, ProxyError, RemoteProtocolError
from plabs_proto.wire.proxy import HTTPConnectTunnel, ProxyConfig, SOCKS5Tunnel, parse_proxy_url

USER = "alice-user"
PASSWORD = "hunter2-secret"
# base64(b"alice-user:hunter2-secret")
BASIC = b"YWxpY2UtdXNlcjpodW50ZXIyLXNlY3JldA=="

Tunnel = HTTPConnectTunnel | SOCKS5Tunnel


def feed(tunnel: Tunnel, data: bytes, bytewise: bool) -> bytes:
    """Feed ``data`` whole or one byte at a time; return what came up."""
    if not bytewise:
        return tunnel.receive_data(data)
    return b"".join(tunnel.receive_data(data[i : i + 1]) for i in range(len(data)))


def assert_no_credentials(exc: BaseException) -> None:
    for text in (str(exc), repr(exc)):
        assert PASSWORD not in text
        assert USER not in text
        assert BASIC.decode() not in text


# -- HTTP CONNECT ----------------------------------------------------------------------------


def test_basic_token_constant() -> None:
    import base64

    assert base64.b64encode(f"{USER}:{PASSWORD}".encode()) == BASIC


def test_connect_request_bytes_without_auth() -> None:
    tunnel = HTTPConnectTunnel("example.com", 443)
    assert tunnel.data_to_send() == b""
    tunnel.start()
    assert tunnel.data_to_send() == b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
    assert tunnel.data_to_send() == b""
    tunnel.start()  # a second start queues nothing
    assert tunnel.data_to_send() == b""


def test_connect_request_bytes_with_auth() -> None:
    tunnel = HTTPConnectTunnel("example.com", 443, username=USER, password=PASSWORD)
    tunnel.start()
    assert tunnel.data_to_send() == (
        b"CONNECT example.com:443 HTTP/1.1\r\n"
        b"Host: example.com:443\r\n"
        b"Proxy-Authorization: Basic " + BASIC + b"\r\n"
        b"\r\n"
    )


def test_connect_request_bytes_with_utf8_auth_and_ipv6_target() -> None:
    tunnel = HTTPConnectTunnel("[2001:db8::1]", 8443, username="zoë", password="pässwörd")
    tunnel.start()
    assert tunnel.data_to_send() == (
        b"CONNECT [2001:db8::1]:8443 HTTP/1.1\r\n"
        b"Host: [2001:db8::1]:8443\r\n"
        b"Proxy-Authorization: Basic em/Dqzpww6Rzc3fDtnJk\r\n"
        b"\r\n"
    )


def test_connect_request_for_unicode_host_uses_idna() -> None:
    tunnel = HTTPConnectTunnel("bücher.example", 443)
    tunnel.start()
    assert tunnel.data_to_send().startswith(b"CONNECT xn--bcher-kva.example:443 HTTP/1.1\r\n")


OK_RESPONSES = [
    b"HTTP/1.1 200 Connection established\r\n\r\n",
    # pproxy's answer
    b"HTTP/1.1 200 Connection established\r\nConnection: close\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nProxy-Agent: test\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\n\r\n",
]


@pytest.mark.parametrize("response", OK_RESPONSES)
@pytest.mark.parametrize("bytewise", [False, True])
def test_connect_established_and_trailing_bytes_go_up(response: bytes, bytewise: bool) -> None:
    tunnel = HTTPConnectTunnel("example.com", 443)
    tunnel.start()
    tunnel.data_to_send()
    tunnel.send(b"held ")
    tunnel.send(b"")
    tunnel.send(b"until established")
    assert tunnel.data_to_send() == b""
    assert not tunnel.established
    assert feed(tunnel, response + b"\x16\x03\x03server bytes", bytewise) == b"\x16\x03\x03server bytes"
    assert tunnel.established
    assert tunnel.response is not None and 200 <= tunnel.response.status_code < 300
    assert tunnel.data_to_send() == b"held until established"
    tunnel.send(b"after")
    assert tunnel.data_to_send() == b"after"
    assert tunnel.receive_data(b"more") == b"more"
    assert not tunnel.eof


def test_connect_eof_after_established() -> None:
    tunnel = HTTPConnectTunnel("example.com", 443)
    tunnel.start()
    assert tunnel.receive_data(OK_RESPONSES[0]) == b""
    assert tunnel.receive_data(b"") == b""
    assert tunnel.eof
    assert tunnel.receive_data(b"") == b""
    with pytest.raises(LocalProtocolError, match="after EOF"):
        tunnel.receive_data(b"late")


@pytest.mark.parametrize(
    ("response", "credentials", "message"),
    [
        (
            b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=x\r\n"
            b"Content-Length: 0\r\n\r\n",
            True,
            "HTTP proxy refused the tunnel to example.com:443: 407 Proxy Authentication Required",
        ),
        (
            b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n",
            False,
            "HTTP proxy refused the tunnel to example.com:443: 407 Proxy Authentication Required "
            "(no credentials were given: put them in the proxy URL, http://user:password@host:port)",
        ),
        (
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 9\r\n\r\nforbidden",
            True,
            "HTTP proxy refused the tunnel to example.com:443: 403 Forbidden",
        ),
        (
            b"HTTP/1.1 502 \r\n\r\n",
            True,
            "HTTP proxy refused the tunnel to example.com:443: 502 Bad Gateway",
        ),
        (
            b"HTTP/1.1 599 \r\n\r\n",
            True,
            "HTTP proxy refused the tunnel to example.com:443: 599",
        ),
        (
            b"HTTP/1.1 301 Moved\r\nLocation: http://elsewhere/\r\n\r\n",
            False,
            "HTTP proxy refused the tunnel to example.com:443: 301 Moved",
        ),
    ],
)
@pytest.mark.parametrize("bytewise", [False, True])
def test_connect_refusals(response: bytes, credentials: bool, message: str, bytewise: bool) -> None:
    if credentials:
        tunnel = HTTPConnectTunnel("example.com", 443, username=USER, password=PASSWORD)
    else:
        tunnel = HTTPConnectTunnel("example.com", 443)
    tunnel.start()
    tunnel.data_to_send()
    with pytest.raises(ProxyError) as info:
        feed(tunnel, response, bytewise)
    assert str(info.value) == message
    assert_no_credentials(info.value)
    assert not tunnel.established
    # The failure sticks.
    with pytest.raises(ProxyError) as again:
        tunnel.receive_data(b"x")
    assert again.value is info.value
    with pytest.raises(ProxyError):
        tunnel.send(b"x")


@pytest.mark.parametrize(
    ("received", "message"),
    [
        (
            b"",
            "HTTP proxy closed the connection before answering the CONNECT to example.com:443: "
            "expected an HTTP response, got nothing",
        ),
        (
            b"HTTP/1.1 20",
            "HTTP proxy closed the connection before answering the CONNECT to example.com:443: "
            "expected an HTTP response, got b'HTTP/1.1 20'",
        ),
    ],
)
def test_connect_proxy_closes_early(received: bytes, message: str) -> None:
    tunnel = HTTPConnectTunnel("example.com", 443, username=USER, password=PASSWORD)
    tunnel.start()
    if received:
        assert tunnel.receive_data(received) == b""
    with pytest.raises(ProxyError) as info:
        tunnel.receive_data(b"")
    assert str(info.value) == message
    assert_no_credentials(info.value)


def test_connect_garbage_answer() -> None:
    tunnel = HTTPConnectTunnel("example.com", 443)
    tunnel.start()
    with pytest.raises(ProxyError) as info:
        tunnel.receive_data(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
    message = str(info.value)
    assert message.startswith("HTTP proxy sent an invalid answer to the CONNECT to example.com:443 (")
    assert message.endswith("): expected an HTTP response, got b'SSH-2.0-OpenSSH_9.6\\r\\n\\r\\n'")


@pytest.mark.parametrize("chunk", [100, 20000])
def test_connect_oversized_answer(chunk: int) -> None:
    tunnel = HTTPConnectTunnel("example.com", 443)
    tunnel.start()
    answer = b"HTTP/1.1 200 OK\r\nX-Padding: " + b"a" * 40000
    with pytest.raises(ProxyError, match="HTTP proxy") as info:
        for i in range(0, len(answer), chunk):
            tunnel.receive_data(answer[i : i + chunk])
    assert "example.com:443" in str(info.value)


def test_connect_endless_informational_responses_are_bounded() -> None:
    tunnel = HTTPConnectTunnel("example.com", 443)
    tunnel.start()
    with pytest.raises(ProxyError) as info:
        for _ in range(1000):
            assert tunnel.receive_data(b"HTTP/1.1 100 Continue\r\n\r\n") == b""
    assert str(info.value) == (
        "HTTP proxy's answer to the CONNECT to example.com:443 is longer than 16384 bytes without ending: "
        "expected an HTTP response head of at most 16384 bytes, got 16400 bytes starting "
        "b'HTTP/1.1 100 Continue\\r\\n\\r\\nHTTP/1.1 100 Continue\\r\\n\\r\\nHTTP/1.1 1'"
    )


def test_connect_receive_before_start_is_misuse() -> None:
    tunnel = HTTPConnectTunnel("example.com", 443)
    with pytest.raises(LocalProtocolError, match="call start\\(\\) before"):
        tunnel.receive_data(b"HTTP/1.1 200 OK\r\n\r\n")


# -- SOCKS5 ----------------------------------------------------------------------------------

GREETING_NO_AUTH = b"\x05\x01\x00"
GREETING_AUTH = b"\x05\x02\x00\x02"
CONNECT_EXAMPLE = b"\x05\x01\x00\x03\x0bexample.com\x01\xbb"
REPLY_IPV4 = b"\x05\x00\x00\x01\xc0\x00\x02\x01\x9c\x40"
REPLY_IPV6 = b"\x05\x00\x00\x04" + bytes(range(16)) + b"\x04\x38"
REPLY_DOMAIN = b"\x05\x00\x00\x03\x09proxy.lan\x00\x50"
AUTH_REQUEST = b"\x01\x0aalice-user\x0ehunter2-secret"


def run_socks(tunnel: SOCKS5Tunnel, script: Sequence[tuple[bytes, bytes]], bytewise: bool) -> list[bytes]:
    """Play ``script`` = [(expected client bytes, proxy answer)]; return what came up after each answer."""
    ups = []
    for expected, answer in script:
        assert tunnel.data_to_send() == expected
        ups.append(feed(tunnel, answer, bytewise))
    return ups


@pytest.mark.parametrize("reply", [REPLY_IPV4, REPLY_IPV6, REPLY_DOMAIN])
@pytest.mark.parametrize("bytewise", [False, True])
def test_socks5_no_auth_domain_target(reply: bytes, bytewise: bool) -> None:
    tunnel = SOCKS5Tunnel("example.com", 443)
    tunnel.start()
    tunnel.start()  # a second start queues nothing
    tunnel.send(b"held")
    tunnel.send(b"")
    ups = run_socks(
        tunnel, [(GREETING_NO_AUTH, b"\x05\x00"), (CONNECT_EXAMPLE, reply + b"first bytes")], bytewise
    )
    assert ups == [b"", b"first bytes"]
    assert tunnel.established
    assert tunnel.data_to_send() == b"held"
    tunnel.send(b"data")
    assert tunnel.data_to_send() == b"data"
    assert tunnel.receive_data(b"up") == b"up"


@pytest.mark.parametrize("bytewise", [False, True])
def test_socks5_username_password(bytewise: bool) -> None:
    tunnel = SOCKS5Tunnel("example.com", 443, username=USER, password=PASSWORD)
    tunnel.start()
    ups = run_socks(
        tunnel,
        [
            (GREETING_AUTH, b"\x05\x02"),
            (AUTH_REQUEST, b"\x01\x00"),
            (CONNECT_EXAMPLE, REPLY_IPV4),
        ],
        bytewise,
    )
    assert ups == [b"", b"", b""]
    assert tunnel.established
    assert tunnel.data_to_send() == b""


def test_socks5_auth_reply_with_version_5_is_accepted() -> None:
    tunnel = SOCKS5Tunnel("example.com", 443, username=USER, password=PASSWORD)
    tunnel.start()
    run_socks(
        tunnel,
        [(GREETING_AUTH, b"\x05\x02"), (AUTH_REQUEST, b"\x05\x00"), (CONNECT_EXAMPLE, REPLY_IPV4)],
        False,
    )
    assert tunnel.established


def test_socks5_credentials_offered_but_not_needed() -> None:
    tunnel = SOCKS5Tunnel("example.com", 443, username=USER, password=PASSWORD)
    tunnel.start()
    run_socks(tunnel, [(GREETING_AUTH, b"\x05\x00"), (CONNECT_EXAMPLE, REPLY_DOMAIN)], False)
    assert tunnel.established


def test_socks5_all_replies_in_one_chunk() -> None:
    # A proxy that answers ahead (pipelining) still works: the replies are split here.
    tunnel = SOCKS5Tunnel("example.com", 443, username=USER, password=PASSWORD)
    tunnel.start()
    assert tunnel.data_to_send() == GREETING_AUTH
    assert tunnel.receive_data(b"\x05\x02\x01\x00" + REPLY_IPV6 + b"tail") == b"tail"
    assert tunnel.established
    assert tunnel.data_to_send() == AUTH_REQUEST + CONNECT_EXAMPLE


@pytest.mark.parametrize(
    ("host", "request_bytes"),
    [
        ("192.0.2.10", b"\x05\x01\x00\x01\xc0\x00\x02\x0a\x01\xbb"),
        (
            "2001:db8::1",
            b"\x05\x01\x00\x04" + bytes.fromhex("20010db8000000000000000000000001") + b"\x01\xbb",
        ),
        (
            "[2001:db8::1]",
            b"\x05\x01\x00\x04" + bytes.fromhex("20010db8000000000000000000000001") + b"\x01\xbb",
        ),
        ("www.perplexity.ai", b"\x05\x01\x00\x03\x11www.perplexity.ai\x01\xbb"),
        ("bücher.example", b"\x05\x01\x00\x03\x15xn--bcher-kva.example\x01\xbb"),
    ],
)
def test_socks5_connect_request_encoding(host: str, request_bytes: bytes) -> None:
    tunnel = SOCKS5Tunnel(host, 443)
    tunnel.start()
    run_socks(tunnel, [(GREETING_NO_AUTH, b"\x05\x00"), (request_bytes, REPLY_IPV4)], False)
    assert tunnel.established


REPLY_CODES = [
    (0x01, "general SOCKS server failure"),
    (0x02, "connection not allowed by ruleset"),
    (0x03, "network unreachable"),
    (0x04, "host unreachable"),
    (0x05, "connection refused"),
    (0x06, "TTL expired"),
    (0x07, "command not supported"),
    (0x08, "address type not supported"),
    (0x42, "unknown reply code"),
]


@pytest.mark.parametrize(("code", "name"), REPLY_CODES)
@pytest.mark.parametrize("bytewise", [False, True])
def test_socks5_reply_codes(code: int, name: str, bytewise: bool) -> None:
    tunnel = SOCKS5Tunnel("example.com", 443, username=USER, password=PASSWORD)
    tunnel.start()
    run_socks(tunnel, [(GREETING_AUTH, b"\x05\x02"), (AUTH_REQUEST, b"\x01\x00")], bytewise)
    assert tunnel.data_to_send() == CONNECT_EXAMPLE
    with pytest.raises(ProxyError) as info:
        feed(tunnel, bytes([5, code, 0, 1, 0, 0, 0, 0, 0, 0]), bytewise)
    assert (
        str(info.value)
        == f"SOCKS5 proxy refused the connection to example.com:443: {name} (reply 0x{code:02x})"
    )
    assert_no_credentials(info.value)
    with pytest.raises(ProxyError):
        tunnel.receive_data(b"x")
    with pytest.raises(ProxyError):
        tunnel.send(b"x")


@pytest.mark.parametrize(
    ("credentials", "script", "message"),
    [
        (
            False,
            [(GREETING_NO_AUTH, b"\x05\xff")],
            "SOCKS5 proxy refused the connection to example.com:443: it accepts none of the offered "
            "authentication methods (no authentication; reply 0xff) "
            "(it may want a user name and password in the proxy URL)",
        ),
        (
            True,
            [(GREETING_AUTH, b"\x05\xff")],
            "SOCKS5 proxy refused the connection to example.com:443: it accepts none of the offered "
            "authentication methods (no authentication, username/password; reply 0xff)",
        ),
        (
            True,
            [(GREETING_AUTH, b"\x05\x02"), (AUTH_REQUEST, b"\x01\x01")],
            "SOCKS5 proxy refused the connection to example.com:443: it rejected the user name and "
            "password (status 0x01)",
        ),
        (
            False,
            [(GREETING_NO_AUTH, b"\x05\x02")],
            "SOCKS5 proxy chose authentication method 0x02 for the connection to example.com:443: "
            "expected one of those offered (no authentication)",
        ),
        (
            True,
            [(GREETING_AUTH, b"\x05\x01")],
            "SOCKS5 proxy chose authentication method 0x01 for the connection to example.com:443: "
            "expected one of those offered (no authentication, username/password)",
        ),
        (
            False,
            [(GREETING_NO_AUTH, b"\x04\x00")],
            "SOCKS5 proxy sent an invalid method selection reply for the connection to example.com:443: "
            "expected version 0x05, got b'\\x04\\x00' (is it a SOCKS5 proxy?)",
        ),
        (
            False,
            [(GREETING_NO_AUTH, b"HTTP/1.1 400 Bad Request\r\n")],
            "SOCKS5 proxy sent an invalid method selection reply for the connection to example.com:443: "
            "expected version 0x05, got b'HT' (is it a SOCKS5 proxy?)",
        ),
        (
            True,
            [(GREETING_AUTH, b"\x05\x02"), (AUTH_REQUEST, b"\x02\x00")],
            "SOCKS5 proxy sent an invalid username/password reply for the connection to example.com:443: "
            "expected version 0x01, got b'\\x02\\x00'",
        ),
        (
            False,
            [(GREETING_NO_AUTH, b"\x05\x00"), (CONNECT_EXAMPLE, b"\x04\x00\x00\x01")],
            "SOCKS5 proxy sent an invalid connect reply for the connection to example.com:443: "
            "expected version 0x05, got b'\\x04\\x00\\x00\\x01'",
        ),
        (
            False,
            [(GREETING_NO_AUTH, b"\x05\x00"), (CONNECT_EXAMPLE, b"\x05\x00\x00\x02abcdef")],
            "SOCKS5 proxy sent an invalid connect reply for the connection to example.com:443: "
            "expected address type 0x01, 0x03 or 0x04, got 0x02 in b'\\x05\\x00\\x00\\x02abcdef'",
        ),
    ],
)
def test_socks5_refusals_and_garbage(
    credentials: bool, script: list[tuple[bytes, bytes]], message: str
) -> None:
    if credentials:
        tunnel = SOCKS5Tunnel("example.com", 443, username=USER, password=PASSWORD)
    else:
        tunnel = SOCKS5Tunnel("example.com", 443)
    tunnel.start()
    with pytest.raises(ProxyError) as info:
        run_socks(tunnel, script, bytewise=False)
    assert str(info.value) == message
    assert_no_credentials(info.value)
    assert not tunnel.established


@pytest.mark.parametrize(
    ("script", "stage", "expected", "got"),
    [
        ([], "method selection reply", "2 bytes (0x05, method)", "b''"),
        ([(GREETING_AUTH, b"\x05")], "method selection reply", "2 bytes (0x05, method)", "b'\\x05'"),
        (
            [(GREETING_AUTH, b"\x05\x02")],
            "username/password reply",
            "2 bytes (0x01, status)",
            "b'' (a proxy that closes here has usually rejected the user name and password)",
        ),
        (
            [(GREETING_AUTH, b"\x05\x00"), (CONNECT_EXAMPLE, b"\x05\x00\x00\x03\x09prox")],
            "connect reply",
            "0x05, reply code, 0x00, address type, address, port",
            "b'\\x05\\x00\\x00\\x03\\tprox'",
        ),
    ],
)
def test_socks5_proxy_closes_early(
    script: list[tuple[bytes, bytes]], stage: str, expected: str, got: str
) -> None:
    tunnel = SOCKS5Tunnel("example.com", 443, username=USER, password=PASSWORD)
    tunnel.start()
    run_socks(tunnel, script, bytewise=False)
    with pytest.raises(ProxyError) as info:
        tunnel.receive_data(b"")
    assert str(info.value) == (
        f"SOCKS5 proxy closed the connection before its {stage} for the connection to example.com:443: "
        f"expected {expected}, got {got}"
    )
    assert_no_credentials(info.value)


def test_socks5_eof_after_established() -> None:
    tunnel = SOCKS5Tunnel("example.com", 443)
    tunnel.start()
    run_socks(tunnel, [(GREETING_NO_AUTH, b"\x05\x00"), (CONNECT_EXAMPLE, REPLY_IPV4)], False)
    assert not tunnel.eof
    assert tunnel.receive_data(b"") == b""
    assert tunnel.eof
    with pytest.raises(LocalProtocolError, match="after EOF"):
        tunnel.receive_data(b"late")


def test_socks5_receive_before_start_is_misuse() -> None:
    tunnel = SOCKS5Tunnel("example.com", 443)
    with pytest.raises(LocalProtocolError, match="call start\\(\\) before"):
        tunnel.receive_data(b"\x05\x00")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target_host": "", "target_port": 443}, "expected a target host name"),
        ({"target_host": "example.com", "target_port": 0}, "between 1 and 65535, got 0"),
        ({"target_host": "example.com", "target_port": 65536}, "between 1 and 65535, got 65536"),
        ({"target_host": "exa mple.com", "target_port": 443}, "expected a target host name or IP address"),
        ({"target_host": "a" * 256, "target_port": 443}, "at most 255 bytes"),
        ({"target_host": "example.com", "target_port": 443, "password": "x"}, "without a user name"),
        ({"target_host": "example.com", "target_port": 443, "username": ""}, "non-empty SOCKS5 user name"),
        ({"target_host": "example.com", "target_port": 443, "username": "u" * 256}, "255 bytes"),
    ],
)
def test_socks5_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(LocalProtocolError, match=match):
        SOCKS5Tunnel(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target_host": "example.com", "target_port": -1}, "between 1 and 65535"),
        ({"target_host": "example.com", "target_port": True}, "between 1 and 65535"),
        ({"target_host": "ex\r\nample.com", "target_port": 443}, "expected a target host name or IP address"),
        ({"target_host": "exa:mple", "target_port": 443}, "expected a target host name or IP address"),
        ({"target_host": "[::1", "target_port": 443}, "expected a target host name or IP address"),
        ({"target_host": "example.com", "target_port": 443, "username": "a:b", "password": "c"}, "':'"),
    ],
)
def test_http_connect_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(LocalProtocolError, match=match):
        HTTPConnectTunnel(**kwargs)  # type: ignore[arg-type]


# -- arbitrary proxy bytes ---------------------------------------------------------------------

TUNNELS: dict[str, Callable[[], Tunnel]] = {
    "http": lambda: HTTPConnectTunnel("example.com", 443),
    "http-auth": lambda: HTTPConnectTunnel("example.com", 443, username=USER, password=PASSWORD),
    "socks5": lambda: SOCKS5Tunnel("example.com", 443),
    "socks5-auth": lambda: SOCKS5Tunnel("example.com", 443, username=USER, password=PASSWORD),
}

PREFIXES = [
    b"",
    b"HTTP/1.1 ",
    b"HTTP/1.1 200 OK\r\n",
    b"\x05\x00",
    b"\x05\x02",
    b"\x05\x02\x01\x00",
    b"\x05\x00\x05\x00\x00",
]


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(sorted(TUNNELS)),
    prefix=st.sampled_from(PREFIXES),
    data=st.binary(max_size=80),
    cuts=st.lists(st.integers(min_value=0, max_value=100), max_size=6),
    close=st.booleans(),
)
def test_arbitrary_proxy_bytes(kind: str, prefix: bytes, data: bytes, cuts: list[int], close: bool) -> None:
    tunnel = TUNNELS[kind]()
    tunnel.start()
    tunnel.data_to_send()
    stream = prefix + data
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    pieces = [stream[a:b] for a, b in itertools.pairwise(points) if b > a]
    if close:
        pieces.append(b"")
    up = bytearray()
    try:
        for piece in pieces:
            up += tunnel.receive_data(piece)
            tunnel.data_to_send()
    except ProxyError as exc:
        assert_no_credentials(exc)
        assert not tunnel.established
        return
    except RemoteProtocolError as exc:  # allowed by the contract, but none is expected today
        pytest.fail(f"expected ProxyError, got {exc!r}")
    # No error: either still negotiating (and not closed), or established with bytes passed up.
    if close and not tunnel.established:
        pytest.fail("EOF before the tunnel was up must raise ProxyError")
    if not tunnel.established:
        assert bytes(up) == b""
    else:
        assert bytes(up) == stream[len(stream) - len(up) :]


# -- proxy URLs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://proxy.example:3128", ProxyConfig("http", "proxy.example", 3128)),
        ("http://proxy.example", ProxyConfig("http", "proxy.example", 8080)),
        ("HTTP://Proxy.Example:80/", ProxyConfig("http", "Proxy.Example", 80)),
        ("socks5://127.0.0.1", ProxyConfig("socks5", "127.0.0.1", 1080)),
        ("socks5h://tor.local:9050", ProxyConfig("socks5", "tor.local", 9050)),
        ("socks5://[::1]:9050", ProxyConfig("socks5", "::1", 9050)),
        ("socks5://[2001:db8::1]", ProxyConfig("socks5", "2001:db8::1", 1080)),
        ("http://user:pa%3Ass%40@h:8080", ProxyConfig("http", "h", 8080, "user", "pa:ss@")),
        ("http://user@h", ProxyConfig("http", "h", 8080, "user", None)),
        ("http://us%20er:@h:1", ProxyConfig("http", "h", 1, "us er", "")),
        ("socks5://z%C3%B6e:p%C3%A4ss@h:65535", ProxyConfig("socks5", "h", 65535, "zöe", "päss")),
        ("http://user:p@ss@h:1", ProxyConfig("http", "h", 1, "user", "p@ss")),
    ],
)
def test_parse_proxy_url(url: str, expected: ProxyConfig) -> None:
    assert parse_proxy_url(url) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "https://proxy:443",
            "expected a proxy URL starting with http://, socks5:// or socks5h://, got 'https://proxy:443'",
        ),
        (
            "socks4://proxy:1080",
            "expected a proxy URL starting with http://, socks5:// or socks5h://, got 'socks4://proxy:1080'",
        ),
        (
            "proxy:8080",
            "expected a proxy URL starting with http://, socks5:// or socks5h://, got 'proxy:8080'",
        ),
        ("http://", "expected a proxy host, got 'http://'"),
        ("http://:8080", "expected a proxy host, got 'http://:8080'"),
        ("http://h:0", "expected a proxy port between 1 and 65535, got 'http://h:0'"),
        ("http://h:65536", "expected a proxy port between 1 and 65535, got 'http://h:65536'"),
        ("http://h:abc", "expected a proxy port between 1 and 65535, got 'http://h:abc'"),
        ("http://h:", "expected a proxy port between 1 and 65535, got 'http://h:'"),
        ("http://h:\uff18\uff10", "expected a proxy port between 1 and 65535, got 'http://h:\uff18\uff10'"),
        ("http://[::1", "expected ']' after the IPv6 proxy host, got 'http://[::1'"),
        ("http://[zz]:1", "expected an IPv6 address inside '[...]', got 'http://[zz]:1'"),
        ("http://[::1]x", "expected ':port' after the IPv6 proxy host, got 'http://[::1]x'"),
        ("http://::1:8080", "expected an IPv6 proxy host written inside '[...]', got 'http://::1:8080'"),
        ("http://h:1/path", "expected a proxy URL without a path, query or fragment, got 'http://h:1/path'"),
        ("http://h:1?x=1", "expected a proxy URL without a path, query or fragment, got 'http://h:1?x=1'"),
        ("http://@h", "expected a user name before the '@' of the proxy URL, got 'http://@h'"),
        ("http://h h:1", "expected a host name or IP address as the proxy host, got 'http://h h:1'"),
        (
            "http://u:%ff@h",
            "expected percent-encoded UTF-8 user name and password in the proxy URL, got 'http://u:***@h'",
        ),
    ],
)
def test_parse_proxy_url_errors(url: str, message: str) -> None:
    with pytest.raises(LocalProtocolError) as info:
        parse_proxy_url(url)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"https://{USER}:{PASSWORD}@h:443", f"'https://{USER}:***@h:443'"),
        (f"http://{USER}:{PASSWORD}@h:99999", f"'http://{USER}:***@h:99999'"),
        (f"http://{USER}:hun/ter2#x@h:0", f"'http://{USER}:***@h:0'"),
        (f"{USER}:{PASSWORD}@h:1080", f"'{USER}:***@h:1080'"),
        (f"socks5://{USER}:{PASSWORD}@", f"'socks5://{USER}:***@'"),
    ],
)
def test_parse_proxy_url_errors_redact_the_password(url: str, shown: str) -> None:
    with pytest.raises(LocalProtocolError) as info:
        parse_proxy_url(url)
    assert shown in str(info.value)
    for text in (str(info.value), repr(info.value)):
        assert PASSWORD not in text
        assert "hun/ter2" not in text


def test_proxy_config_hides_the_password() -> None:
    config = parse_proxy_url(f"socks5://{USER}:{PASSWORD}@proxy.example:1080")
    assert config.password == PASSWORD
    assert config.redacted_url == f"socks5://{USER}:***@proxy.example:1080"
    expected = (
        f"ProxyConfig(scheme='socks5', host='proxy.example', port=1080, username='{USER}', password='***')"
    )
    assert repr(config) == expected
    assert str(config) == expected
    assert f"{config}" == expected
    assert PASSWORD not in repr([config])


@pytest.mark.parametrize(
    ("config", "url"),
    [
        (ProxyConfig("http", "h", 8080), "http://h:8080"),
        (ProxyConfig("http", "h", 8080, "us er@x"), "http://us%20er%40x@h:8080"),
        (ProxyConfig("socks5", "::1", 1080, "u", ""), "socks5://u:***@[::1]:1080"),
    ],
)
def test_proxy_config_redacted_url(config: ProxyConfig, url: str) -> None:
    assert config.redacted_url == url
    assert parse_proxy_url(url.replace("***", "pw")).redacted_url == url


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scheme": "ftp", "host": "h", "port": 1}, "expected proxy scheme 'http' or 'socks5', got 'ftp'"),
        ({"scheme": "http", "host": "", "port": 1}, "expected a proxy host"),
        ({"scheme": "http", "host": "h", "port": 0}, "between 1 and 65535, got 0"),
    ],
)
def test_proxy_config_validates(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(LocalProtocolError, match=match):
        ProxyConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("tunnel_cls", [HTTPConnectTunnel, SOCKS5Tunnel])
@pytest.mark.parametrize(
    ("username", "password", "which"),
    [("caf\udce9", "pw", "user name"), ("user", "caf\udce9", "password")],
)
def test_credentials_that_are_not_utf8_are_local_misuse(
    tunnel_cls: type[HTTPConnectTunnel] | type[SOCKS5Tunnel], username: str, password: str, which: str
) -> None:
    # What Python makes of non-UTF-8 bytes in argv: a lone surrogate, which cannot be sent.
    with pytest.raises(LocalProtocolError, match=f"expected a proxy {which} that can be sent as UTF-8"):
        tunnel_cls("example.com", 443, username=username, password=password)
