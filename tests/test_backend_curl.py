"""The curl backend (``plabs_proto.backends.curl``): LabsSession carried by curl_cffi, end to end.

Against the emulator over real sockets, on all three transports, with ``ask`` and
``connect``/``Session.query``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("curl_cffi")

from conftest import (
    PROXY_PASSWORD,
    EmulatorFactory,
    NodeFactory,
    PerplexityEmulatorFactory,
    ProxyFactory,
    TLSFiles,
)
from curl_cffi import CurlError
from plabs_proto.backends import curl as curl_backend
from plabs_proto.backends.programs.emulator import default_answer, default_reasoning

from plabs_proto.errors import (
    HandshakeError,
    LabsError,
    LocalProtocolError,
    NetworkError,
    ProxyError,
    RemoteProtocolError,
    ResponseError,
    TLSError,
)
from plabs_proto.events import AnswerFinished, TextDelta
from plabs_proto.wire.proxy import ProxyConfig

pytestmark = pytest.mark.anyio

FAST = {"frame_delay": 0.001}
TRANSPORTS = ["upgrade", "websocket", "polling"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def collect(prompt: Any, **options: Any) -> str:
    async with contextlib.aclosing(curl_backend.ask(prompt, **options)) as answer:
        return "".join([text async for text in answer])


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_ask_the_emulator(emulator_factory: EmulatorFactory, transport: str) -> None:
    emulator = emulator_factory(**FAST)
    text = await collect("What is curl?", server=emulator.url, transport=transport, timeout=10)
    assert text == default_answer("r1-1776", "What is curl?")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_session_answers_two_queries(emulator_factory: EmulatorFactory, transport: str) -> None:
    emulator = emulator_factory(**FAST)
    async with curl_backend.connect(server=emulator.url, transport=transport, timeout=10) as session:
        assert session.connected is not None
        for prompt in ("first", "second"):
            events = [event async for event in session.query(prompt, model="sonar")]
            assert isinstance(events[-1], AnswerFinished)
            text = "".join(e.text for e in events if isinstance(e, TextDelta))
            assert text == events[-1].text == default_answer("sonar", prompt)


async def test_a_carrier_that_dies_of_another_error_ends_the_answer_at_once(
    emulator_factory: EmulatorFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # curl_cffi failing with something other than a CurlError (a bug of its own or ours): the
    # answer ends with that error now, not at the session's deadline (60 s here).
    emulator = emulator_factory(**FAST)

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("not a CurlError")

    monkeypatch.setattr(curl_backend.CurlHTTP, "request", broken)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="not a CurlError"):
        await collect("hello", server=emulator.url, transport="polling", timeout=60)
    assert time.monotonic() - started < 10


async def test_refused_connection_is_a_network_error(free_tcp_port: int) -> None:
    with pytest.raises(NetworkError) as caught:
        await collect("hello", server=f"http://127.0.0.1:{free_tcp_port}", timeout=5)
    assert caught.value.port == free_tcp_port
    assert caught.value.host == "127.0.0.1"


async def test_options_are_checked_at_once() -> None:
    with pytest.raises(LocalProtocolError):
        curl_backend.ask("x", impersonate="")
    with pytest.raises(LocalProtocolError) as caught:
        curl_backend.ask("x", ssl_context=ssl.create_default_context())
    assert str(caught.value) == "expected cafile on the curl backend, got ssl_context (curl does its own TLS)"
    with pytest.raises(LocalProtocolError) as caught:
        curl_backend.connect(tls=False)
    assert str(caught.value) == "expected tls left as None on the curl backend, got tls=False"
    with pytest.raises(LocalProtocolError) as caught:
        curl_backend.connect(proxy=ProxyConfig("http", "127.0.0.1", 9))
    assert str(caught.value) == "expected the proxy as a URL str on the curl backend, got a ProxyConfig"
    with pytest.raises(LocalProtocolError, match="expected no user_agent on the curl backend"):
        curl_backend.ask("x", user_agent="Mozilla/5.0")


# -- the Node server, TLS, proxies ------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_ask_the_node_server(node_factory: NodeFactory, transport: str) -> None:
    server = node_factory(**FAST)
    text = await collect("node via curl", server=server.url, transport=transport, model="sonar", timeout=10)
    assert text == default_answer("sonar", "node via curl")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_tls_with_a_private_ca(emulator_factory: EmulatorFactory, tls_files: TLSFiles, transport: str) -> None:
    emulator = emulator_factory(certfile=tls_files.certfile, keyfile=tls_files.keyfile, **FAST)
    assert emulator.url.startswith("https://")
    text = await collect("secure?", server=emulator.url, cafile=Path(tls_files.cafile), transport=transport,
                         model="sonar", timeout=10)
    assert text == default_answer("sonar", "secure?")


async def test_tls_untrusted_certificate_is_a_tls_error(emulator_factory: EmulatorFactory, tls_files: TLSFiles) -> None:
    emulator = emulator_factory(certfile=tls_files.certfile, keyfile=tls_files.keyfile, **FAST)
    with pytest.raises(TLSError) as caught:
        await collect("hello", server=emulator.url, cafile=tls_files.other_cafile, timeout=10)
    assert "certificate" in str(caught.value)
    assert str(caught.value).startswith("expected a TLS connection to 127.0.0.1 that verifies, got: ")
    assert isinstance(caught.value.__cause__, CurlError)  # curl's own words, in the traceback


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
@pytest.mark.parametrize("scheme", ["http", "socks5"])
async def test_through_a_proxy_with_auth(
    scheme: str, tls: bool, proxy_factory: ProxyFactory, emulator_factory: EmulatorFactory, tls_files: TLSFiles
) -> None:
    proxy = proxy_factory(scheme)
    files = {"certfile": tls_files.certfile, "keyfile": tls_files.keyfile} if tls else {}
    emulator = emulator_factory(**files, **FAST)
    text = await collect(f"via {scheme}", server=emulator.url, proxy=proxy.url(),
                         cafile=tls_files.cafile if tls else None, model="sonar", timeout=10)
    assert text == default_answer("sonar", f"via {scheme}")


@pytest.mark.parametrize("scheme", ["http", "socks5"])
async def test_proxy_wrong_password_is_a_proxy_error(
    scheme: str, fresh_proxy: ProxyFactory, emulator_factory: EmulatorFactory
) -> None:
    proxy = fresh_proxy(scheme)
    emulator = emulator_factory(**FAST)
    wrong = "wr0ng-Pa55w0rd"
    with pytest.raises(ProxyError) as caught:
        await collect("hello", server=emulator.url, proxy=proxy.url(password=wrong), timeout=10)
    for text in (str(caught.value), repr(caught.value)):
        assert wrong not in text and PROXY_PASSWORD not in text
    assert str(caught.value) == {
        # a plain http:// request through an HTTP proxy: its 407 is an answer curl hands over
        "http": f"expected the proxy at 127.0.0.1:{proxy.port} to take our credentials, "
        "it answered HTTP 407 (proxy authentication required)",
        # SOCKS5's refusal is curl's error 97 (CURLE_PROXY)
        "socks5": f"expected the proxy at 127.0.0.1:{proxy.port} to carry the connection, it failed (curl error 97)",
    }[scheme]


async def test_unreachable_proxy_is_a_network_error_without_credentials(free_tcp_port: int) -> None:
    proxy = f"http://alice:{PROXY_PASSWORD}@127.0.0.1:{free_tcp_port}"
    with pytest.raises(NetworkError) as caught:
        await collect("hello", server="http://127.0.0.1:9", proxy=proxy, timeout=5)
    assert (caught.value.host, caught.value.port) == ("127.0.0.1", free_tcp_port)
    assert PROXY_PASSWORD not in str(caught.value) and "alice" not in str(caught.value)


# -- failures, heartbeats, concurrency, cleanup -------------------------------------------------------


@pytest.mark.parametrize("kind", ["emulator", "node"])
async def test_server_failure_frame(kind: str, emulator_factory: EmulatorFactory, node_factory: NodeFactory) -> None:
    options = {"fail": "Error in processing query", "fail_after": 3, "chunk_size": 8, **FAST}
    url = (emulator_factory if kind == "emulator" else node_factory)(**options).url
    with pytest.raises(ResponseError) as caught:
        await collect("will fail", server=url, model="sonar", timeout=10)
    assert caught.value.partial_text == default_answer("sonar", "will fail")[:24]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_connection_dropped_mid_answer(emulator_factory: EmulatorFactory, transport: str) -> None:
    emulator = emulator_factory(drop_after=5, chunk_size=8, **FAST)
    with pytest.raises(LabsError) as caught:
        await collect("drop me", server=emulator.url, model="sonar", transport=transport, timeout=10)
    assert default_answer("sonar", "drop me").startswith(caught.value.partial_text)


async def test_pings_during_a_long_answer(node_factory: NodeFactory) -> None:
    server = node_factory(ping_interval=0.2, ping_timeout=0.3, frame_delay=0.05)
    text = await collect("ping me", server=server.url, model="sonar", timeout=20)
    assert text == default_answer("sonar", "ping me")


async def test_fifty_concurrent_asks(emulator_factory: EmulatorFactory) -> None:
    emulator = emulator_factory(**FAST)
    prompts = [f"question {i}" for i in range(50)]
    texts = await asyncio.gather(*(collect(p, server=emulator.url, model="sonar", timeout=30) for p in prompts))
    assert texts == [default_answer("sonar", p) for p in prompts]


async def test_early_break_leaves_no_socket_open(node_factory: NodeFactory, sockets_to: Callable[[int], int]) -> None:
    server = node_factory(frame_delay=0.02)
    got = ""
    async with contextlib.aclosing(curl_backend.ask("break early", server=server.url, model="sonar",
                                                    timeout=10)) as answer:
        async for text in answer:
            got += text
            assert sockets_to(server.port) >= 1
            break
    assert got and default_answer("sonar", "break early").startswith(got)
    for _ in range(50):
        if sockets_to(server.port) == 0:
            break
        await asyncio.sleep(0.01)
    assert sockets_to(server.port) == 0


async def test_cancellation_leaves_no_socket_open(node_factory: NodeFactory, sockets_to: Callable[[int], int]) -> None:
    server = node_factory(frame_delay=0.02)
    got: list[str] = []

    async def read() -> None:
        async with contextlib.aclosing(curl_backend.ask("cancel me", server=server.url, model="sonar",
                                                        timeout=10)) as answer:
            async for text in answer:
                got.append(text)

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(read(), 0.5)
    assert got
    for _ in range(50):
        if sockets_to(server.port) == 0:
            break
        await asyncio.sleep(0.01)
    assert sockets_to(server.port) == 0


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_an_idle_session_answers_pings(emulator_factory: EmulatorFactory, transport: str) -> None:
    emulator = emulator_factory(ping_interval=0.2, ping_timeout=0.2, **FAST)
    async with curl_backend.connect(server=emulator.url, transport=transport, timeout=10) as session:
        for prompt in ("before idling", "after idling"):
            events = [event async for event in session.query(prompt, model="sonar")]
            assert isinstance(events[-1], AnswerFinished)
            assert events[-1].text == default_answer("sonar", prompt)
            await asyncio.sleep(1.0)  # five ping intervals: the server drops a session that misses one


# -- errors named exactly (benchmarks/mutation-backends.md) -------------------------------------------


Answer = bytes | Callable[[bytes], bytes] | None


class Canned:
    """A plain HTTP/1.1 server in a thread answering each request by its method with canned bytes, then
    closing the connection; a method answered None is closed unanswered.  It also serves as an HTTP
    proxy: a plain http:// request through a proxy is an ordinary request with the whole URL."""

    def __init__(self, answers: dict[str, Answer]) -> None:
        self.answers = answers
        self.requests: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            with connection:
                data = b""
                while b"\r\n\r\n" not in data:
                    piece = connection.recv(65536)
                    if not piece:
                        break
                    data += piece
                head = data.partition(b"\r\n\r\n")[0]
                self.requests.append(head)
                answer = self.answers.get(head.split(b" ", 1)[0].decode())
                if callable(answer):
                    answer = answer(head)
                if answer is not None:
                    connection.sendall(answer)
                    if answer.startswith(b"HTTP/1.1 101 "):  # a WebSocket: held open until the client goes
                        connection.settimeout(5)
                        with contextlib.suppress(OSError):
                            while connection.recv(65536):
                                pass

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept (a close alone does not)
        self.sock.close()
        self.thread.join(5)
        assert not self.thread.is_alive()


@pytest.fixture
def canned() -> Iterator[Callable[[dict[str, Answer]], Canned]]:
    servers: list[Canned] = []

    def start(answers: dict[str, Answer]) -> Canned:
        servers.append(Canned(answers))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


WARMUP = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nSet-Cookie: __cf_bm=bm1; Path=/; HttpOnly\r\n"
          b"Content-Length: 2\r\nConnection: close\r\n\r\n{}")
PROXY_407 = (b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"p\"\r\n"
             b"Content-Length: 0\r\nConnection: close\r\n\r\n")


def failed(where: str, port: int, code: int) -> Callable[[str], bool]:
    """The message of a NetworkError for curl's error ``code`` on the way to ``where`` (server or proxy)."""
    return lambda message: message.startswith(
        f"expected to reach the {where} at 127.0.0.1:{port}, but the connection failed ("
    ) and f", curl: ({code}) " in message


async def ask_service(url: str, **options: Any) -> str:
    return await collect("Hi", server=url, service="perplexity", timeout=5, **options)


async def test_an_ask_whose_request_fails_below_http_is_a_network_error(
    canned: Callable[[dict[str, Answer]], Canned],
) -> None:
    # The warm-up is answered; the ask's POST is closed unanswered (curl: empty reply from server).
    server = canned({"GET": WARMUP, "POST": None})
    with pytest.raises(NetworkError) as caught:
        await ask_service(server.url)
    assert (caught.value.host, caught.value.port, caught.value.errno) == ("127.0.0.1", server.port, None)
    assert failed("server", server.port, 52)(str(caught.value))
    assert isinstance(caught.value.__cause__, CurlError)


async def test_an_ask_cut_mid_answer_is_a_network_error_with_the_partial_answer(
    perplexity_emulator_factory: PerplexityEmulatorFactory,
) -> None:
    # The event stream is chunked: a connection closed mid-stream is curl's "partial file", not an end.
    emulator = perplexity_emulator_factory(answer="Several words of an answer.", chunk_size=4, drop_after=3)
    with pytest.raises(NetworkError) as caught:
        await ask_service(emulator.url)
    assert caught.value.partial_text and "Several words of an answer.".startswith(caught.value.partial_text)
    assert (caught.value.host, caught.value.port) == ("127.0.0.1", emulator.port)
    assert failed("server", emulator.port, 18)(str(caught.value))


async def test_a_407_on_the_ask_is_a_proxy_error_only_from_a_proxy(
    canned: Callable[[dict[str, Answer]], Canned],
) -> None:
    proxy = canned({"GET": WARMUP, "POST": PROXY_407})
    with pytest.raises(ProxyError) as caught:
        await ask_service("http://127.0.0.1:9", proxy=proxy.url)
    assert str(caught.value) == (
        f"expected the proxy at 127.0.0.1:{proxy.port} to take our credentials, "
        "it answered HTTP 407 (proxy authentication required)"
    )
    assert proxy.requests[0].startswith(b"GET http://127.0.0.1:9/api/auth/session HTTP/1.1\r\n")
    server = canned({"GET": WARMUP, "POST": PROXY_407})  # a server's 407, no proxy: a refusal like any other
    with pytest.raises(LabsError) as refused:
        await ask_service(server.url)
    assert not isinstance(refused.value, ProxyError) and "407" in str(refused.value)


@pytest.mark.parametrize(
    ("server", "transport", "port"),
    [("http://127.0.0.1", "polling", 80), ("https://127.0.0.1", "polling", 443), ("https://127.0.0.1", "websocket", 443)],
)
async def test_a_refused_connection_names_the_schemes_default_port(server: str, transport: str, port: int) -> None:
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            pytest.skip(f"something listens on 127.0.0.1:{port} here")
    with pytest.raises(NetworkError) as caught:
        await collect("hello", server=server, transport=transport, timeout=5)
    assert (caught.value.host, caught.value.port) == ("127.0.0.1", port)
    assert failed("server", port, 7)(str(caught.value))


async def test_an_unreachable_proxy_is_named_as_the_proxy(free_tcp_port: int) -> None:
    with pytest.raises(NetworkError) as caught:
        await collect("hello", server="http://127.0.0.1:9", proxy=f"http://127.0.0.1:{free_tcp_port}", timeout=5)
    assert failed("proxy", free_tcp_port, 7)(str(caught.value))


def websocket(*frames: bytes) -> Callable[[bytes], bytes]:
    """The answer to a WebSocket handshake: 101, then ``frames`` (whole frames, as bytes)."""

    def answer(head: bytes) -> bytes:
        key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key:"))
        accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n" + b"".join(frames))

    return answer


OPEN = b'0{"sid":"s1","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}'


async def test_a_websocket_message_of_invalid_utf8_or_binary_fails_the_session(
    canned: Callable[[dict[str, Answer]], Canned],
) -> None:
    # A text frame whose bytes are not UTF-8; then Engine.IO's open packet sent as a binary frame.
    server = canned({"GET": websocket(b"\x81\x02\xff\xfe")})
    with pytest.raises(LabsError) as caught:
        await collect("hi", server=server.url, transport="websocket", timeout=5, headers={"X-Extra": "1"})
    assert str(caught.value) == (
        f"expected the WebSocket to 127.0.0.1 port {server.port} to go through, but it failed below HTTP: "
        "invalid UTF-8 in a text message"
    )
    head = server.requests[0].decode().lower()
    assert "\r\norigin: https://labs.perplexity.ai\r\n" in head and "\r\nx-extra: 1\r\n" in head
    server = canned({"GET": websocket(b"\x82" + bytes([len(OPEN)]) + OPEN)})
    started = time.monotonic()
    with pytest.raises(LabsError) as binary:
        await collect("hi", server=server.url, transport="websocket", timeout=5)
    assert time.monotonic() - started < 3
    assert f"expected a text frame, got {len(OPEN)} bytes" in str(binary.value)


@pytest.mark.parametrize(
    ("transport", "error", "words"),
    [("polling", NetworkError, "expected to reach the server at 127.0.0.1:"),
     ("websocket", RemoteProtocolError, "expected the rest of the answer, but the server closed the connection"),
     ("upgrade", RemoteProtocolError, "expected the rest of the answer, but the server closed the connection")],
)
async def test_a_connection_dropped_mid_reasoning_is_named_at_once_with_the_reasoning(
    emulator_factory: EmulatorFactory, transport: str, error: type[LabsError], words: str
) -> None:
    emulator = emulator_factory(drop_after=3, chunk_size=8, **FAST)
    started = time.monotonic()
    with pytest.raises(LabsError) as caught:
        await collect("drop me", server=emulator.url, model="r1-1776", transport=transport, timeout=5)
    assert time.monotonic() - started < 3
    assert type(caught.value) is error and str(caught.value).startswith(words)
    assert caught.value.partial_text == ""
    assert caught.value.partial_reasoning == default_reasoning("r1-1776", "drop me")[:24]


async def test_connect_takes_the_seed_the_tracer_and_the_browser(
    emulator_factory: EmulatorFactory, canned: Callable[[dict[str, Answer]], Canned]
) -> None:
    url = emulator_factory(**FAST).url
    traced: list[tuple[float, int, str, bytes]] = []
    connection = curl_backend.connect(server=url, timeout=10, seed=5, tracer=lambda *record: traced.append(record))
    assert connection.seed == 5
    async with connection:
        assert traced[0][1:] == (0, "seed", b"5")
    for seed in (5, None):  # an ask tells its tracer the seed, the one given or one drawn for it
        traced.clear()
        await collect("hi", server=url, timeout=10, seed=seed, tracer=lambda *record: traced.append(record))
        assert traced[0][1:3] == (0, "seed") and traced[0][3].isdigit()
        assert seed is None or traced[0][3] == b"5"
    with pytest.raises(LocalProtocolError) as caught:
        curl_backend.connect(model="sonar")  # type: ignore[call-arg]
    assert str(caught.value).endswith(", version, got 'model'")
    with pytest.raises(LocalProtocolError, match="expected impersonate as a curl_cffi target name"):
        curl_backend.connect(impersonate="")
    # The browser curl speaks as, seen in the User-Agent of the first request (left unanswered).
    for browser, words in (("chrome", b"Chrome/"), ("safari", b"Version/")):
        server = canned({"GET": None})
        with pytest.raises(NetworkError):
            async with curl_backend.connect(server=server.url, timeout=5, impersonate=browser):
                pass
        with pytest.raises(NetworkError):
            await collect("hi", server=server.url, timeout=5, impersonate=browser)
        agents = [line for head in server.requests for line in head.split(b"\r\n")
                  if line.lower().startswith(b"user-agent:")]
        assert len(agents) == 2 and all(words in agent for agent in agents)


async def test_a_refused_upgrade_is_named_by_its_status_alone(emulator_factory: EmulatorFactory) -> None:
    # curl_cffi keeps the refusing response's headers and body to itself: the session gets the status only.
    emulator = emulator_factory(cloudflare="upgrade", **FAST)
    with pytest.raises(HandshakeError) as caught:
        await collect("hi", server=emulator.url, transport="upgrade", timeout=5)
    assert str(caught.value) == "the server refused the WebSocket upgrade: expected HTTP 101, got HTTP 403: ''"


async def test_a_websocket_closed_by_the_server_fails_the_session_at_once(
    canned: Callable[[dict[str, Answer]], Canned],
) -> None:
    # Engine.IO's open packet, then a close frame (1000) where the Socket.IO connect ack was awaited.
    server = canned({"GET": websocket(b"\x81" + bytes([len(OPEN)]) + OPEN, b"\x88\x02\x03\xe8")})
    started = time.monotonic()
    with pytest.raises(LabsError) as caught:
        await collect("hi", server=server.url, transport="websocket", timeout=5)
    assert time.monotonic() - started < 3
    assert type(caught.value) is RemoteProtocolError
    assert str(caught.value) == "expected the answer to finish, but the session ended: WebSocket closed by the server (1000)"



async def test_a_websocket_frame_curl_cannot_read_is_a_network_error(
    canned: Callable[[dict[str, Answer]], Canned],
) -> None:
    # Engine.IO's open packet, then a frame with a reserved opcode (0x3): curl's WebSocket reader fails.
    server = canned({"GET": websocket(b"\x81" + bytes([len(OPEN)]) + OPEN, b"\x83\x00")})
    started = time.monotonic()
    with pytest.raises(NetworkError) as caught:
        await collect("hi", server=server.url, transport="websocket", timeout=5)
    assert time.monotonic() - started < 3
    assert (caught.value.host, caught.value.port) == ("127.0.0.1", server.port)
    assert failed("server", server.port, 56)(str(caught.value)) and "invalid opcode" in str(caught.value)
