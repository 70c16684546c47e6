"""The curl backend (``plabs_proto.backends.curl``): LabsSession carried by curl_cffi, end to end.

Against the emulator over real sockets, on all three transports, with ``ask`` and
``connect``/``Session.query``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("curl_cffi")

from conftest import PROXY_PASSWORD, EmulatorFactory, NodeFactory, ProxyFactory, TLSFiles
from plabs_proto.backends import curl as curl_backend
from plabs_proto.backends.programs.emulator import default_answer

from plabs_proto.errors import (
    LabsError,
    LocalProtocolError,
    NetworkError,
    ProxyError,
    ResponseError,
    TLSError,
)
from plabs_proto.events import AnswerFinished, TextDelta

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


async def test_refused_connection_is_a_network_error(free_tcp_port: int) -> None:
    with pytest.raises(NetworkError) as caught:
        await collect("hello", server=f"http://127.0.0.1:{free_tcp_port}", timeout=5)
    assert caught.value.port == free_tcp_port
    assert caught.value.host == "127.0.0.1"


async def test_options_are_checked_at_once() -> None:
    with pytest.raises(LocalProtocolError):
        curl_backend.ask("x", impersonate="")
    with pytest.raises(LocalProtocolError):
        curl_backend.ask("x", ssl_context=object())
    with pytest.raises(LocalProtocolError):
        curl_backend.connect(tls=False)
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
    assert "127.0.0.1" in str(caught.value)


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
