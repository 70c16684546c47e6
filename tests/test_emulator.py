"""Sanity tests of the two Labs test servers, driven by clients we did not write.

* "python": ``plabs_proto.backends.programs.emulator`` (python-socketio + aiohttp, the production flavour:
  ``OK`` and a NOOP after the upgrade probe).
* "node": ``tests/node_server/server.js`` on the official Node.js ``socket.io`` 4.8.4
  (``ok`` and no NOOP after the upgrade).

The clients are python-socketio's ``AsyncClient`` and raw HTTP/WebSocket requests made with
aiohttp and ``http.client``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.client
import json
import ssl
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import servers
import socketio
import trustme
from conftest import NPM_CI, prepare_node_server, require_node_server
from plabs_proto.backends.programs.emulator import (
    ALLOWED_ORIGIN,
    SONAR_CITATIONS,
    Emulator,
    EmulatorConfig,
    EmulatorThread,
    build_output,
    default_answer,
    default_reasoning,
    validate_request,
)
from servers import NodeServerError, start_node_server

AUTH = {"jwt": "anonymous-ask-user"}
HEADERS = {"Origin": ALLOWED_ORIGIN}
FLAVOURS = ["python", "node"]
TRANSPORTS = ["websocket", "polling"]
FAST = {"frame_delay": 0.002}
PARTIAL_KEYS = {"output", "final", "elapsed_time", "tokens_streamed"}
FINAL_KEYS = {"output", "final", "status", "citations", "elapsed_time", "tokens_streamed"}


@pytest.fixture(autouse=True)
def _node_flavour_needs_node(request: pytest.FixtureRequest) -> None:
    """A test run on the "node" flavour first makes the Node.js server runnable (see ``node_ready``)."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("flavour") == "node":
        request.getfixturevalue("node_ready")


def run_async(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test body on a fresh asyncio loop (the servers are asyncio-only)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(fn(*args, **kwargs), 30))

    return wrapper


def labs_request(model: str = "sonar", prompt: str = "hi", **changes: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "version": "2.18",
        "source": "default",
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
    }
    request.update(changes)
    return request


def wire_query(request: dict[str, Any]) -> str:
    return "42" + json.dumps(["perplexity_labs", request], separators=(",", ":"))


@contextlib.asynccontextmanager
async def serving(flavour: str, **options: Any) -> AsyncIterator[str]:
    """Start one server of ``flavour``; yields its base URL."""
    if flavour == "python":
        certfile = options.pop("certfile", None)
        keyfile = options.pop("keyfile", None)
        emulator = Emulator(EmulatorConfig(**options))
        url = await emulator.start(certfile=certfile, keyfile=keyfile)
        try:
            yield url
        finally:
            await emulator.stop()
    else:
        with start_node_server(**options) as node:
            yield node.url


class LabsClient:
    """python-socketio's AsyncClient collecting every event it receives."""

    def __init__(self, **kwargs: Any) -> None:
        self.sio = socketio.AsyncClient(reconnection=False, handle_sigint=False, **kwargs)
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.sio.on("*", self._on_any)

    async def _on_any(self, event: str, *args: Any) -> None:
        await self.events.put((event, args[0] if len(args) == 1 else list(args)))

    async def ask(self, request: dict[str, Any], timeout: float = 5.0) -> list[tuple[str, Any]]:
        """Emit a query and return the frames up to the final or failed one."""
        await self.sio.emit("perplexity_labs", request)
        frames = []
        while True:
            event, data = await asyncio.wait_for(self.events.get(), timeout)
            frames.append((event, data))
            if isinstance(data, dict) and (data.get("final") is True or data.get("status") == "failed"):
                return frames


@contextlib.asynccontextmanager
async def labs_client(
    url: str, transports: list[str] | None = None, **kwargs: Any
) -> AsyncIterator[LabsClient]:
    client = LabsClient(**kwargs)
    await client.sio.connect(url, auth=AUTH, headers=HEADERS, transports=transports, wait_timeout=5)
    try:
        yield client
    finally:
        await client.sio.disconnect()


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_stream(
    frames: list[tuple[str, Any]], model: str, full: str, chunk: int, citations: list[Any]
) -> None:
    """Partial frames carry cumulative prefixes of ``full``; the final one carries it all."""
    assert {event for event, _ in frames} == {f"{model}_query_progress"}
    partials = [data for _, data in frames[:-1]]
    expected = [full[: (i + 1) * chunk] for i in range(-(-len(full) // chunk))]
    assert [p["output"] for p in partials] == expected
    for i, partial in enumerate(partials, 1):
        assert set(partial) == PARTIAL_KEYS
        assert partial["final"] is False
        assert partial["tokens_streamed"] == i
        assert is_number(partial["elapsed_time"])
    final = frames[-1][1]
    assert set(final) == FINAL_KEYS
    assert final["output"] == full
    assert final["final"] is True
    assert final["status"] == "completed"
    assert final["citations"] == citations
    assert final["tokens_streamed"] == len(expected)
    assert is_number(final["elapsed_time"]) and final["elapsed_time"] >= partials[-1]["elapsed_time"]


async def polling_open(
    session: aiohttp.ClientSession, url: str, **headers: str
) -> tuple[str, dict[str, Any]]:
    """Raw Engine.IO polling handshake; returns (base polling URL with sid, open packet)."""
    base = f"{url}/socket.io/?EIO=4&transport=polling&t=0a1b2c3d"
    async with session.get(base, headers=headers) as response:
        body = await response.text()
        assert response.status == 200, body[:200]
    assert body.startswith("0{"), body[:60]
    opened = json.loads(body[1:])
    return f"{base}&sid={opened['sid']}", opened


async def polling_connect(session: aiohttp.ClientSession, url: str) -> tuple[str, str, str]:
    """Handshake, CONNECT with the jwt and drain the ack; returns (polling URL, POST body, ack)."""
    polling, _opened = await polling_open(session, url)
    async with session.post(polling, data='40{"jwt":"anonymous-ask-user"}') as response:
        post_body = await response.text()
        assert response.status == 200
    async with session.get(polling) as response:
        ack = await response.text()
    return polling, post_body, ack


async def websocket_upgrade(
    session: aiohttp.ClientSession, url: str, polling: str
) -> aiohttp.ClientWebSocketResponse:
    sid = polling.rsplit("sid=", 1)[1]
    ws_url = url.replace("http", "ws", 1) + f"/socket.io/?EIO=4&transport=websocket&sid={sid}"
    ws = await session.ws_connect(ws_url)
    await ws.send_str("2probe")
    assert await ws.receive_str(timeout=5) == "3probe"
    await ws.send_str("5")
    return ws


async def ws_text(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0) -> aiohttp.WSMessage:
    """The next message that is not an Engine.IO ping (pings are answered)."""
    while True:
        message = await ws.receive(timeout)
        if message.type == aiohttp.WSMsgType.TEXT and message.data == "2":
            await ws.send_str("3")
            continue
        return message


def split_payload(body: str) -> list[str]:
    return [packet for packet in body.split("\x1e") if packet]


def progress_data(packet: str) -> Any:
    assert packet.startswith("42"), packet[:60]
    event, data = json.loads(packet[2:])
    assert event.endswith("_query_progress")
    return data


# --------------------------------------------------------------------------------------------
# Answers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("flavour", FLAVOURS)
@run_async
async def test_plain_answer_streams_cumulative_frames(flavour: str, transport: str) -> None:
    answer = "Grüße! 🙂 Labs emulator: cumulative frames, never a split character. 東京"
    async with (
        serving(flavour, answer=answer, chunk_size=3, **FAST) as url,
        labs_client(url, transports=[transport]) as client,
    ):
        frames = await client.ask(labs_request("llama-3.1-70b-instruct"))
        assert client.sio.transport() == transport
    check_stream(frames, "llama-3.1-70b-instruct", answer, 3, [])


@pytest.mark.parametrize("flavour", FLAVOURS)
@run_async
async def test_sonar_gets_default_answer_and_citations(flavour: str) -> None:
    prompt = "What is   Engine.IO?\nBriefly."
    async with serving(flavour, **FAST) as url, labs_client(url) as client:
        frames = await client.ask(labs_request("sonar-pro", prompt))
    check_stream(frames, "sonar-pro", default_answer("sonar-pro", prompt), 8, list(SONAR_CITATIONS))
    assert "What is Engine.IO? Briefly." in frames[-1][1]["output"]


@pytest.mark.parametrize("model", ["sonar-reasoning", "sonar-reasoning-pro"])
@pytest.mark.parametrize("flavour", FLAVOURS)
@run_async
async def test_reasoning_model_wraps_thinking_in_think_tags(flavour: str, model: str) -> None:
    async with (
        serving(flavour, answer="Paris.", reasoning="Capital of France?", chunk_size=5, **FAST) as url,
        labs_client(url) as client,
    ):
        frames = await client.ask(labs_request(model))
    full = "<think>Capital of France?</think>\n\nParis."
    assert build_output(model, "Paris.", "Capital of France?") == full
    check_stream(frames, model, full, 5, list(SONAR_CITATIONS))


@pytest.mark.parametrize("flavour", FLAVOURS)
@run_async
async def test_r1_1776_omits_the_opening_think_tag(flavour: str) -> None:
    async with (
        serving(flavour, answer="Paris.", reasoning="Capital of France?", chunk_size=7, **FAST) as url,
        labs_client(url) as client,
    ):
        frames = await client.ask(labs_request("r1-1776"))
    check_stream(frames, "r1-1776", "Capital of France?</think>\n\nParis.", 7, [])


@pytest.mark.parametrize("flavour", FLAVOURS)
@run_async
async def test_no_reasoning_switch_sends_the_bare_answer(flavour: str) -> None:
    async with (
        serving(flavour, answer="Paris.", reasoning="unused", no_reasoning=True, chunk_size=4, **FAST) as url,
        labs_client(url) as client,
    ):
        frames = await client.ask(labs_request("r1-1776"))
    check_stream(frames, "r1-1776", "Paris.", 4, [])


@pytest.mark.parametrize("flavour", FLAVOURS)
@run_async
async def test_final_output_switch_rewrites_the_last_frame(flavour: str) -> None:
    async with (
        serving(flavour, answer="Paris.", final_output="Lyon.", chunk_size=4, **FAST) as url,
        labs_client(url) as client,
    ):
        frames = await client.ask(labs_request("sonar"))
    assert [data["output"] for _, data in frames] == ["Pari", "Paris.", "Lyon."]
    assert frames[-1][1]["final"] is True


@pytest.mark.parametrize("flavour", FLAVOURS)
@run_async
async def test_citations_switch(flavour: str) -> None:
    cites = ["https://a.example/1", "https://b.example/2"]
    async with serving(flavour, answer="x", citations=cites, **FAST) as url, labs_client(url) as client:
        frames = await client.ask(labs_request("r1-1776"))
    assert frames[-1][1]["citations"] == cites


@pytest.mark.parametrize("flavour", FLAVOURS)
@run_async
async def test_queries_one_after_another_on_one_connection(flavour: str) -> None:
    async with (
        serving(flavour, answer="abcdefghij", chunk_size=4, **FAST) as url,
        labs_client(url) as client,
    ):
        for model in ["sonar", "r1-1776", "sonar"]:
            frames = await client.ask(labs_request(model))
            assert frames[-1][1]["final"] is True
            assert frames[-1][0] == f"{model}_query_progress"
            assert frames[-1][1]["output"].endswith("abcdefghij")


@pytest.mark.parametrize("flavour", FLAVOURS)
@run_async
async def test_queries_sent_back_to_back_are_answered_in_order(flavour: str) -> None:
    async with (
        serving(flavour, answer="0123456789", chunk_size=3, **FAST) as url,
        labs_client(url) as client,
    ):
        await client.sio.emit("perplexity_labs", labs_request("sonar"))
        await client.sio.emit("perplexity_labs", labs_request("r1-1776"))
        events = []
        finals = 0
        while finals < 2:
            event, data = await asyncio.wait_for(client.events.get(), 5)
            events.append(event)
            finals += data.get("final") is True
    assert events == ["sonar_query_progress"] * 5 + ["r1-1776_query_progress"] * len(events[5:])
    assert len(events[5:]) > 5


@pytest.mark.parametrize("flavour", FLAVOURS)
@run_async
async def test_failure_frame_after_some_output(flavour: str) -> None:
    async with (
        serving(
            flavour, answer="0123456789", chunk_size=2, fail="Error in processing query", fail_after=2, **FAST
        ) as url,
        labs_client(url) as client,
    ):
        frames = await client.ask(labs_request("sonar-reasoning-pro"))
        # the connection stays usable after a failed query
        again = await client.ask(labs_request("sonar"))
    assert [(data["output"], data["tokens_streamed"]) for _, data in frames[:-1]] == [("<t", 1), ("<thi", 2)]
    assert frames[-1] == (
        "sonar-reasoning-pro_query_progress",
        {"status": "failed", "text": "Error in processing query"},
    )
    assert again[-1][1] == {"status": "failed", "text": "Error in processing query"}


@pytest.mark.parametrize("flavour", FLAVOURS)
@run_async
async def test_failure_frame_before_any_output(flavour: str) -> None:
    async with serving(flavour, answer="abc", fail="boom", **FAST) as url, labs_client(url) as client:
        frames = await client.ask(labs_request("sonar"))
    assert frames == [("sonar_query_progress", {"status": "failed", "text": "boom"})]


@pytest.mark.parametrize(
    ("request_changes", "expected_start"),
    [
        (
            {"messages": [{"role": "user", "text": "hi"}]},
            "Invalid request: messages[0].content must be a string",
        ),
        ({"messages": []}, "Invalid request: 'messages' must be a non-empty list"),
        (
            {"messages": [{"role": "robot", "content": "hi"}]},
            "Invalid request: messages[0].role must be one of",
        ),
        ({"version": 2.18}, "Invalid request: 'version' must be a non-empty string"),
        ({"source": None}, "Invalid request: 'source' must be a non-empty string"),
    ],
)
@pytest.mark.parametrize("flavour", FLAVOURS)
@run_async
async def test_bad_request_gets_a_failed_frame(
    flavour: str, request_changes: dict[str, Any], expected_start: str
) -> None:
    async with serving(flavour, **FAST) as url, labs_client(url) as client:
        frames = await client.ask(labs_request("sonar", **request_changes))
    assert len(frames) == 1
    event, data = frames[0]
    assert event == "sonar_query_progress"
    assert set(data) == {"status", "text"} and data["status"] == "failed"
    assert data["text"].startswith(expected_start), data["text"]


def test_validate_request() -> None:
    good = labs_request("sonar", "hi")
    assert validate_request((good,)) == ("sonar", good["messages"])
    del good["version"]
    assert validate_request((good,)) == "Invalid request: missing field 'version'"
    assert validate_request(()) == "Invalid request: expected one request object, got 0 arguments"
    assert validate_request(("x",)) == "Invalid request: expected a JSON object, got 'x'"


@pytest.mark.parametrize("flavour", FLAVOURS)
@run_async
async def test_silent_server_never_answers_but_keeps_pinging(flavour: str) -> None:
    async with (
        serving(flavour, silent=True, ping_interval=0.1, ping_timeout=0.5) as url,
        aiohttp.ClientSession(headers=HEADERS) as session,
    ):
        polling, _, _ = await polling_connect(session, url)
        ws = await websocket_upgrade(session, url, polling)
        await ws.send_str(wire_query(labs_request("sonar")))
        seen: list[str] = []
        deadline = time.monotonic() + 1.0  # >= 3 pings at 0.1 s even on a loaded machine
        while (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                message = await ws.receive(left)
                assert message.type == aiohttp.WSMsgType.TEXT, message
                seen.append(message.data)
                if message.data == "2":
                    await ws.send_str("3")
        await ws.close()
    assert seen.count("2") >= 3
    assert set(seen) <= {"2", "6"}  # pings (and the python flavour's NOOP), never an answer


# --------------------------------------------------------------------------------------------
# Connection checks: jwt, Origin, heartbeat
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("auth", [{"jwt": "wrong"}, None, {"token": "anonymous-ask-user"}])
@pytest.mark.parametrize("flavour", FLAVOURS)
@run_async
async def test_wrong_jwt_is_refused(flavour: str, auth: Any) -> None:
    async with serving(flavour) as url:
        client = socketio.AsyncClient(reconnection=False, handle_sigint=False)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.connect(url, auth=auth, headers=HEADERS, transports=["websocket"], wait_timeout=5)
        await client.disconnect()
        async with aiohttp.ClientSession(headers=HEADERS) as session:
            polling, _ = await polling_open(session, url)
            async with session.post(polling, data='40{"jwt":"wrong"}') as response:
                assert response.status == 200
            async with session.get(polling) as response:
                refusal = await response.text()
    assert refusal.startswith("44{"), refusal
    assert "not authorized" in json.loads(refusal[2:])["message"]


@pytest.mark.parametrize("flavour", FLAVOURS)
@run_async
async def test_foreign_origin_is_refused_and_missing_origin_allowed(flavour: str) -> None:
    async with serving(flavour) as url, aiohttp.ClientSession() as session:
        handshake = f"{url}/socket.io/?EIO=4&transport=polling"
        async with session.get(handshake, headers={"Origin": "https://evil.example"}) as response:
            assert response.status in (400, 403)
            assert not (await response.text()).startswith("0{")
        async with session.get(handshake) as response:  # no Origin header at all
            assert response.status == 200
            assert (await response.text()).startswith("0{")
        client = socketio.AsyncClient(reconnection=False, handle_sigint=False)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.connect(url, auth=AUTH, headers={"Origin": "https://evil.example"}, wait_timeout=5)
        await client.disconnect()


@pytest.mark.parametrize("flavour", FLAVOURS)
@run_async
async def test_origin_check_can_be_switched_off(flavour: str) -> None:
    async with (
        serving(flavour, check_origin=False) as url,
        aiohttp.ClientSession() as session,
        session.get(
            f"{url}/socket.io/?EIO=4&transport=polling", headers={"Origin": "https://x.example"}
        ) as r,
    ):
        assert r.status == 200


@pytest.mark.parametrize("flavour", FLAVOURS)
@run_async
async def test_short_ping_interval_is_advertised_and_kept(flavour: str) -> None:
    async with serving(flavour, ping_interval=0.2, ping_timeout=0.3, max_payload=4096, **FAST) as url:
        async with aiohttp.ClientSession(headers=HEADERS) as session:
            _, opened = await polling_open(session, url)
        assert opened["pingInterval"] == 200
        assert opened["pingTimeout"] == 300
        assert opened["maxPayload"] == 4096
        assert opened["upgrades"] == ["websocket"]
        async with labs_client(url) as client:
            await asyncio.sleep(1.0)  # several heartbeats, answered by the client
            assert client.sio.connected
            frames = await client.ask(labs_request("sonar"))
            assert frames[-1][1]["final"] is True


# --------------------------------------------------------------------------------------------
# Flavours: OK vs ok, NOOP after the upgrade
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("flavour", "reply"), [("python", "OK"), ("node", "ok")])
@run_async
async def test_post_reply_and_connect_ack(flavour: str, reply: str) -> None:
    async with serving(flavour) as url, aiohttp.ClientSession(headers=HEADERS) as session:
        _, post_body, ack = await polling_connect(session, url)
    assert post_body == reply
    assert ack.startswith('40{"sid":"'), ack


def test_node_server_answers_lowercase_ok_over_http_client(node_ready: None) -> None:
    with start_node_server() as node:
        conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=5)
        try:
            conn.request("GET", "/socket.io/?EIO=4&transport=polling&t=0a1b2c3d", headers=HEADERS)
            response = conn.getresponse()
            body = response.read().decode()
            assert response.status == 200 and body.startswith("0{")
            sid = json.loads(body[1:])["sid"]
            conn.request(
                "POST",
                f"/socket.io/?EIO=4&transport=polling&t=0a1b2c3d&sid={sid}",
                body=b'40{"jwt":"anonymous-ask-user"}',
                headers={**HEADERS, "Content-Type": "text/plain;charset=UTF-8"},
            )
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, b"ok")
        finally:
            conn.close()


@pytest.mark.parametrize("flavour", FLAVOURS)
@run_async
async def test_noop_after_upgrade_only_in_python_flavour(flavour: str) -> None:
    async with (
        serving(flavour, answer="hello", **FAST) as url,
        aiohttp.ClientSession(headers=HEADERS) as session,
    ):
        polling, _, _ = await polling_connect(session, url)
        ws = await websocket_upgrade(session, url, polling)
        if flavour == "python":
            first = await ws_text(ws)
            assert first.data == "6"
        await ws.send_str(wire_query(labs_request("sonar")))
        first_answer = await ws_text(ws)
        assert first_answer.data.startswith('42["sonar_query_progress",'), first_answer.data
        await ws.close()


@pytest.mark.parametrize("flavour", FLAVOURS)
@run_async
async def test_websocket_only_connection(flavour: str) -> None:
    async with (
        serving(flavour, answer="hey", **FAST) as url,
        aiohttp.ClientSession(headers=HEADERS) as session,
    ):
        ws = await session.ws_connect(url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket")
        opened = await ws_text(ws)
        assert opened.data.startswith('0{"sid":')
        await ws.send_str('40{"jwt":"anonymous-ask-user"}')
        assert (await ws_text(ws)).data.startswith('40{"sid":')
        await ws.send_str(wire_query(labs_request("sonar")))
        outputs = []
        while True:
            data = progress_data((await ws_text(ws)).data)
            outputs.append(data["output"])
            if data["final"]:
                break
        await ws.close()
    assert outputs == ["hey", "hey"]


# --------------------------------------------------------------------------------------------
# Dropping the connection mid-answer
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", FLAVOURS)
@run_async
async def test_drop_after_aborts_websocket_without_close_frame(flavour: str) -> None:
    async with (
        serving(flavour, answer="abcdefghijklmnop", chunk_size=2, drop_after=3, **FAST) as url,
        aiohttp.ClientSession(headers=HEADERS) as session,
    ):
        polling, _, _ = await polling_connect(session, url)
        ws = await websocket_upgrade(session, url, polling)
        await ws.send_str(wire_query(labs_request("sonar")))
        texts: list[str] = []
        while True:
            message = await ws_text(ws)
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            texts.append(message.data)
        # no close frame (that would be CLOSE), the TCP connection just ended
        assert message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR), message
        await ws.close()
        # the session is gone: a request for its sid gets its connection cut as well
        with pytest.raises(aiohttp.ClientError):
            async with session.get(polling) as response:
                await response.read()
    texts = [t for t in texts if t != "6"]
    assert [progress_data(t)["output"] for t in texts] == ["ab", "abcd", "abcdef"]
    assert "1" not in texts  # no Engine.IO close packet either


@pytest.mark.parametrize("flavour", FLAVOURS)
@run_async
async def test_drop_after_aborts_polling_session(flavour: str) -> None:
    async with (
        serving(flavour, answer="abcdefghijklmnop", chunk_size=2, drop_after=2, **FAST) as url,
        aiohttp.ClientSession(headers=HEADERS) as session,
    ):
        polling, _, _ = await polling_connect(session, url)
        async with session.post(polling, data=wire_query(labs_request("sonar"))) as response:
            assert response.status == 200
        packets: list[str] = []
        with pytest.raises(aiohttp.ClientError):
            for _ in range(20):
                async with session.get(polling) as response:
                    assert response.status == 200
                    packets += split_payload(await response.text())
    frames = [progress_data(p) for p in packets if p.startswith("42")]
    assert [f["output"] for f in frames] == ["ab", "abcd"]
    assert "1" not in packets


@run_async
async def test_drop_after_zero_drops_before_any_frame() -> None:
    async with (
        serving("python", drop_after=0, **FAST) as url,
        aiohttp.ClientSession(headers=HEADERS) as session,
    ):
        polling, _, _ = await polling_connect(session, url)
        ws = await websocket_upgrade(session, url, polling)
        assert (await ws_text(ws)).data == "6"
        await ws.send_str(wire_query(labs_request("sonar")))
        message = await ws_text(ws)
        assert message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR), message
        await ws.close()


# --------------------------------------------------------------------------------------------
# HTTP-level faults (python emulator)
# --------------------------------------------------------------------------------------------


@run_async
async def test_cloudflare_page_on_polling_handshake() -> None:
    async with (
        serving("python", cloudflare="polling") as url,
        aiohttp.ClientSession(headers=HEADERS) as session,
    ):
        async with session.get(f"{url}/socket.io/?EIO=4&transport=polling&t=0a1b2c3d") as response:
            body = await response.text()
            assert response.status == 403
            assert response.headers["Content-Type"].startswith("text/html")
            assert response.headers["Server"] == "cloudflare"
        assert "<title>Just a moment...</title>" in body
        assert "cf-please-wait" in body
        # the WebSocket-only handshake still works in "polling" mode
        ws = await session.ws_connect(url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket")
        assert (await ws_text(ws)).data.startswith("0{")
        await ws.close()


@run_async
async def test_cloudflare_page_on_websocket_upgrade() -> None:
    async with (
        serving("python", cloudflare="upgrade") as url,
        aiohttp.ClientSession(headers=HEADERS) as session,
    ):
        polling, post_body, _ = await polling_connect(session, url)  # polling is fine
        assert post_body == "OK"
        sid = polling.rsplit("sid=", 1)[1]
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await session.ws_connect(
                url.replace("http", "ws", 1) + f"/socket.io/?EIO=4&transport=websocket&sid={sid}"
            )
        assert info.value.status == 403
        async with session.get(
            f"{url}/socket.io/?EIO=4&transport=websocket&sid={sid}",
            headers={
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            },
        ) as response:
            assert response.status == 403
            assert "<title>Just a moment...</title>" in await response.text()


@run_async
async def test_cloudflare_all_and_not_found() -> None:
    async with serving("python", cloudflare="all") as url, aiohttp.ClientSession(headers=HEADERS) as session:
        async with session.get(f"{url}/socket.io/?EIO=4&transport=polling") as response:
            assert response.status == 403
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await session.ws_connect(url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket")
    async with (
        serving("python", not_found=True) as url,
        aiohttp.ClientSession(headers=HEADERS) as session,
        session.get(f"{url}/socket.io/?EIO=4&transport=polling") as response,
    ):
        assert response.status == 404


def test_emulator_thread_serves_plain_http_clients() -> None:
    with EmulatorThread(EmulatorConfig(cloudflare="polling")) as blocked:
        assert blocked.url == f"http://127.0.0.1:{blocked.port}"
        conn = http.client.HTTPConnection("127.0.0.1", blocked.port, timeout=5)
        try:
            conn.request("GET", "/socket.io/?EIO=4&transport=polling&t=0a1b2c3d", headers=HEADERS)
            response = conn.getresponse()
            body = response.read().decode()
        finally:
            conn.close()
        assert response.status == 403
        assert "<title>Just a moment...</title>" in body
    thread = EmulatorThread()
    url = thread.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", thread.port, timeout=5)
        try:
            conn.request("GET", "/socket.io/?EIO=4&transport=polling&t=0a1b2c3d", headers=HEADERS)
            response = conn.getresponse()
            body = response.read().decode()
            assert response.status == 200 and body.startswith("0{")
            sid = json.loads(body[1:])["sid"]
            conn.request(
                "POST",
                f"/socket.io/?EIO=4&transport=polling&t=0a1b2c3d&sid={sid}",
                body=b'40{"jwt":"anonymous-ask-user"}',
                headers=HEADERS,
            )
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, b"OK")
        finally:
            conn.close()
    finally:
        thread.stop()
    assert url.startswith("http://127.0.0.1:")
    with pytest.raises(ConnectionRefusedError):
        socket_probe = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=2)
        try:
            socket_probe.request("GET", "/")
        finally:
            socket_probe.close()


def test_emulator_thread_reports_a_busy_port() -> None:
    with EmulatorThread() as first:
        second = EmulatorThread(port=first.port)
        with pytest.raises(OSError):
            second.start()
        second.stop()  # nothing to stop, no error


# --------------------------------------------------------------------------------------------
# TLS, lifecycle, configuration
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", FLAVOURS)
@run_async
async def test_tls(flavour: str, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    async with serving(flavour, answer="secure", certfile=str(certfile), keyfile=str(keyfile), **FAST) as url:
        assert url.startswith("https://127.0.0.1:")
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as http_session,
            labs_client(url, http_session=http_session) as client,
        ):
            frames = await client.ask(labs_request("r1-1776"))
            assert client.sio.transport() == "websocket"
    assert frames[-1][1]["output"].endswith("</think>\n\nsecure")


@run_async
async def test_stop_with_connected_clients_leaves_nothing_behind() -> None:
    before = asyncio.all_tasks()
    emulator = Emulator(EmulatorConfig(silent=True, ping_interval=0.1, ping_timeout=0.5))
    url = await emulator.start()
    assert emulator.url == url == f"http://127.0.0.1:{emulator.port}"
    async with aiohttp.ClientSession(headers=HEADERS) as session:
        polling, _, _ = await polling_connect(session, url)
        ws = await websocket_upgrade(session, url, polling)
        await ws.send_str(wire_query(labs_request("sonar")))  # a query that never ends
        other, _, _ = await polling_connect(session, url)
        pending_poll = asyncio.ensure_future(session.get(other))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await emulator.stop()
        assert time.monotonic() - started < 2.0
        seen = []
        while (message := await ws.receive(5)).type == aiohttp.WSMsgType.TEXT:
            seen.append(message.data)
        assert seen[-1] == "1"  # an orderly Engine.IO close ...
        assert message.type == aiohttp.WSMsgType.CLOSE  # ... and a WebSocket close frame
        await ws.close()
        async with await pending_poll as response:
            assert split_payload(await response.text())[-1] == "1"
    assert asyncio.all_tasks() == before
    with pytest.raises(RuntimeError):
        emulator.url  # noqa: B018
    await emulator.stop()  # idempotent


@run_async
async def test_start_twice_is_an_error_and_restart_works() -> None:
    emulator = Emulator()
    await emulator.start()
    try:
        with pytest.raises(RuntimeError):
            await emulator.start()
    finally:
        await emulator.stop()
    async with emulator, aiohttp.ClientSession(headers=HEADERS) as session:
        _, opened = await polling_open(session, emulator.url)
    assert (
        opened["pingInterval"] == 25000
        and opened["pingTimeout"] == 20000
        and opened["maxPayload"] == 1_000_000
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"chunk_size": 0},
        {"frame_delay": -1.0},
        {"ping_interval": 0},
        {"fail_after": -1},
        {"drop_after": -2},
        {"cloudflare": "sometimes"},
        {"redirect": "handshake"},
        {"rate_limit": "polling", "rate_limit_page": "json"},
        {"login_page": "every"},
        {"redirect_status": 200},
        {"redirect_to": "https://a.test/\r\nSet-Cookie: x=1"},
        {"retry_after": "30\nX: y"},
    ],
)
def test_config_rejects_bad_values(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        EmulatorConfig(**bad)


def test_start_node_server_without_node_modules_says_run_npm_ci(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(servers, "NODE_SERVER_DIR", tmp_path)
    with pytest.raises(NodeServerError, match="npm ci"):
        start_node_server()


def fake_npm(tmp_path: Path, body: str) -> str:
    """An executable ``npm`` standing in for the registry client (the thing tested is what
    ``prepare_node_server`` does with it): it logs its directory and arguments, then runs ``body``
    (Python, with ``os`` and ``sys`` imported)."""
    script = tmp_path / "bin" / "npm"
    script.parent.mkdir()
    log = str(tmp_path / "npm.log")
    script.write_text(
        f"#!{sys.executable}\nimport os, sys\n"
        f"with open({log!r}, 'a') as log:\n    log.write(os.getcwd() + ' ' + ' '.join(sys.argv[1:]) + '\\n')\n"
        f"{body}\n",
        encoding="utf-8",
    )
    script.chmod(0o755)
    return str(script)


def test_prepare_node_server_runs_npm_ci_once_when_node_modules_is_missing(tmp_path: Path) -> None:
    server_dir = tmp_path / "node_server"
    server_dir.mkdir()
    npm = fake_npm(tmp_path, "os.makedirs('node_modules/socket.io')")
    assert prepare_node_server(server_dir, node="/usr/bin/node", npm=npm) is None
    assert prepare_node_server(server_dir, node="/usr/bin/node", npm=npm) is None  # installed: npm not run again
    assert (tmp_path / "npm.log").read_text(encoding="utf-8") == f"{server_dir} {' '.join(NPM_CI)}\n"


def test_prepare_node_server_says_why_it_cannot(tmp_path: Path) -> None:
    npm = fake_npm(tmp_path, "sys.exit('npm error code ENOTFOUND')")
    assert prepare_node_server(tmp_path, node=None, npm=npm) == (
        "Node.js ('node') is not on PATH; the Node.js Labs test server needs it"
    )
    assert prepare_node_server(tmp_path, node="/usr/bin/node", npm=None) == (
        f"{tmp_path / 'node_modules'} is missing and npm is not on PATH to install it (`npm ci` in {tmp_path})"
    )
    assert prepare_node_server(tmp_path, node="/usr/bin/node", npm=npm) == (
        f"{tmp_path / 'node_modules'} is missing and `npm ci` in {tmp_path} could not install it "
        "(exit status 1): npm error code ENOTFOUND"
    )


def test_a_node_server_that_cannot_run_skips_but_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    require_node_server(None)  # nothing wrong: the test goes on
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="npm is not on PATH"):
        require_node_server("npm is not on PATH")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="npm is not on PATH"):
        require_node_server("npm is not on PATH")


def test_node_server_reports_startup_failure_with_its_stderr(node_ready: None) -> None:
    with pytest.raises(NodeServerError, match=r'exited with code 2.*unknown flag "--bogus"'):
        start_node_server(extra_args=["--bogus"])


def test_node_server_stops_promptly(node_ready: None) -> None:
    node = start_node_server(ping_interval=0.1)
    started = time.monotonic()
    node.stop()
    assert time.monotonic() - started < 2.0
    assert node.process.returncode == 0


def test_the_installed_engineio_is_in_the_pinned_range_and_has_the_private_hooks() -> None:
    # The emulator subclasses private hooks of python-engineio/python-socketio; pyproject pins the
    # releases they were checked on. An upgrade past the pin must come with a check of these hooks.
    from importlib.metadata import version

    import engineio
    import socketio
    import tomllib
    from packaging.requirements import Requirement

    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    pins = {Requirement(line).name: Requirement(line) for line in pyproject["project"]["optional-dependencies"]["emulator"]}
    for name in ("python-engineio", "python-socketio"):
        assert pins[name].specifier.contains(version(name)), (name, version(name), str(pins[name].specifier))
        assert any(spec.operator == "<" for spec in pins[name].specifier), f"{name} has no upper bound"
    assert callable(engineio.AsyncServer._trigger_event)
    assert callable(socketio.AsyncServer._engineio_server_class)
    # The emulator shares nothing with the client: an honest second opinion.
    source = (Path(__file__).parent.parent / "backends" / "programs" / "emulator.py").read_text()
    assert "plabs_proto" not in source and "from ." not in source


# -- what the mutation run of emulator.py found untested (benchmarks/mutation-backends.md) --------------


@run_async
async def test_the_prompt_is_the_last_user_message_else_the_last_message() -> None:
    cases = [
        ([("user", "first"), ("assistant", "an answer"), ("user", "second")], "second"),
        ([("user", "the question"), ("assistant", "an answer")], "the question"),
        ([("system", "be brief"), ("system", "be plain"), ("system", "be kind")], "be kind"),
    ]
    async with serving("python", chunk_size=1000, **FAST) as url, labs_client(url) as client:
        for messages, prompt in cases:
            request = labs_request("sonar", messages=[{"role": r, "content": c} for r, c in messages])
            frames = await client.ask(request)
            assert frames[-1][1]["output"] == default_answer("sonar", prompt)


def test_validate_request_names_what_it_got() -> None:
    def checked(**changes: Any) -> Any:
        return validate_request(({**labs_request("sonar"), **changes},))

    assert checked(model=7) == "Invalid request: 'model' must be a non-empty string, got 7"
    assert checked(messages="hi") == "Invalid request: 'messages' must be a non-empty list, got 'hi'"
    assert checked(messages=["hi"]) == "Invalid request: messages[0] must be an object, got 'hi'"
    assert checked(messages=[{"role": "robot", "content": "hi"}]) == (
        "Invalid request: messages[0].role must be one of ['user', 'assistant', 'system'], got 'robot'"
    )
    assert checked(messages=[{"role": "user", "content": 5}]) == (
        "Invalid request: messages[0].content must be a string, got 5"
    )


@run_async
async def test_a_request_with_no_model_is_answered_on_the_unknown_models_event() -> None:
    async with serving("python", **FAST) as url, labs_client(url) as client, labs_client(url) as other:
        for request, text in (
            ("x", "Invalid request: expected a JSON object, got 'x'"),
            (labs_request("", messages=[]), "Invalid request: 'model' must be a non-empty string, got ''"),
        ):
            frames = await client.ask(request)  # type: ignore[arg-type]
            assert frames == [("unknown_query_progress", {"status": "failed", "text": text})]
        await client.ask(labs_request("sonar", "a good one after"))  # the other connection, meanwhile: nothing
        assert other.events.empty()


@run_async
async def test_each_connection_gets_only_its_own_answer() -> None:
    async with (
        serving("python", chunk_size=16, frame_delay=0.005) as url,
        labs_client(url) as first,
        labs_client(url) as second,
    ):
        got = await asyncio.gather(first.ask(labs_request("sonar", "one")), second.ask(labs_request("sonar", "two")))
        assert second.events.empty() and first.events.empty()
    for frames, prompt in zip(got, ("one", "two"), strict=True):
        full = default_answer("sonar", prompt)
        assert [event for event, _ in frames] == ["sonar_query_progress"] * len(frames)
        assert all(full.startswith(data["output"]) for _, data in frames)
        assert frames[-1][1]["output"] == full


@run_async
async def test_a_reasoning_model_thinks_the_default_reasoning_unless_told() -> None:
    async with serving("python", chunk_size=1000, **FAST) as url, labs_client(url) as client:
        frames = await client.ask(labs_request("sonar-reasoning", "why?"))
    reasoning = "The user asked: \u201cwhy?\u201d. I am sonar-reasoning in the emulator, so I will answer briefly and plainly."
    assert default_reasoning("sonar-reasoning", "why?") == reasoning
    assert frames[-1][1]["output"] == f"<think>{reasoning}</think>\n\n{default_answer('sonar-reasoning', 'why?')}"


@run_async
async def test_a_failure_frame_goes_only_to_the_asker() -> None:
    async with serving("python", fail="boom", **FAST) as url, labs_client(url) as client, labs_client(url) as other:
        assert await client.ask(labs_request("sonar")) == [("sonar_query_progress", {"status": "failed", "text": "boom"})]
        await asyncio.sleep(0.05)  # a broadcast frame would have reached the other connection by now
        assert other.events.empty()


@run_async
async def test_frames_are_paced_by_frame_delay_from_the_second_on() -> None:
    # 16 characters in chunks of 8: a frame at once, one after the delay, the final frame after another.
    async with serving("python", answer="x" * 16, no_reasoning=True, frame_delay=0.25) as url, labs_client(url) as client:
        started = time.monotonic()
        await client.sio.emit("perplexity_labs", labs_request("sonar"))
        await asyncio.wait_for(client.events.get(), 5)
        first = time.monotonic() - started
        while not (await asyncio.wait_for(client.events.get(), 5))[1].get("final"):
            pass
        whole = time.monotonic() - started
    assert first < 0.2 and 0.5 <= whole < 1.5


@run_async
async def test_drop_after_aborts_a_websocket_only_connection_without_close_frame() -> None:
    # No request of this session carries its sid: the connection is found through the handshake.
    async with (
        serving("python", answer="abcdefgh", chunk_size=2, drop_after=2, **FAST) as url,
        aiohttp.ClientSession(headers=HEADERS) as session,
    ):
        ws = await session.ws_connect(url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket")
        assert (await ws_text(ws)).data.startswith('0{"sid":')
        await ws.send_str('40{"jwt":"anonymous-ask-user"}')
        assert (await ws_text(ws)).data.startswith('40{"sid":')
        await ws.send_str(wire_query(labs_request("sonar")))
        texts: list[str] = []
        while (message := await ws_text(ws)).type == aiohttp.WSMsgType.TEXT:
            texts.append(message.data)
            last = time.monotonic()
        assert message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR), message
        assert time.monotonic() - last < 0.5  # at once once the frames left, not after the flush's 1 s bound
        await ws.close()
    assert [progress_data(t)["output"] for t in texts] == ["ab", "abcd"]



@run_async
async def test_a_wrong_jwt_is_refused_naming_what_was_expected_and_what_came() -> None:
    async with serving("python", **FAST) as url, aiohttp.ClientSession(headers=HEADERS) as session:
        ws = await session.ws_connect(url.replace("http", "ws", 1) + "/socket.io/?EIO=4&transport=websocket")
        assert (await ws_text(ws)).data.startswith('0{"sid":')
        await ws.send_str('40{"jwt":"wrong"}')
        refused = (await ws_text(ws)).data
        await ws.close()
    assert refused.startswith("44") and json.loads(refused[2:]) == {
        "message": "not authorized: expected auth {'jwt': 'anonymous-ask-user'}, got {'jwt': 'wrong'}"
    }


@pytest.mark.parametrize(("guard", "status"), [("redirect", 302), ("rate_limit", 429), ("login_page", 200)])
@run_async
async def test_a_guard_on_all_steps_answers_the_opening_get_and_the_upgrade(guard: str, status: int) -> None:
    upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    async with serving("python", **{guard: "all"}) as url:
        for target, headers in (("polling", HEADERS), ("websocket", {**HEADERS, **upgrade})):
            conn = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]), timeout=5)
            try:  # http.client follows no redirect: nothing beyond the emulator is asked
                await asyncio.to_thread(conn.request, "GET", f"/socket.io/?EIO=4&transport={target}", headers=headers)
                response = await asyncio.to_thread(conn.getresponse)
                assert response.status == status and not (await asyncio.to_thread(response.read)).startswith(b"0{")
            finally:
                conn.close()
