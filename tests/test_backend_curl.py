"""The curl backend (``plabs_proto.backends.curl``): LabsSession carried by curl_cffi, end to end.

Against the emulator over real sockets, on all three transports, with ``ask`` and
``connect``/``Session.query``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

pytest.importorskip("curl_cffi")

from conftest import EmulatorFactory
from plabs_proto.backends import curl as curl_backend
from plabs_proto.backends.emulator import default_answer

from plabs_proto.errors import LocalProtocolError, NetworkError
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
