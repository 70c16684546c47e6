"""``plabs serve``, the OpenAI-compatible gateway, end to end.

Every test starts ``plabs serve`` as a subprocess (one per distinct command
line, shared by the module and stopped with SIGINT at its end, which must exit
0) in front of the emulator or the Node.js server, and talks to it the way users
do: the official ``openai`` package (sync and async), httpx, and curl.  Answers
are compared with what the Labs server sends (the emulator's deterministic
default texts), byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import EmulatorFactory, NodeFactory, TLSFiles
from plabs_proto.backends.programs.emulator import SONAR_CITATIONS, default_answer, default_reasoning
from servers import read_until

from plabs_proto.labs.answer import DEFAULT_MODEL, MODELS

SCRIPT = Path(sys.executable).with_name("plabs")
PLABS = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "plabs_proto"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONWARNINGS": "error"}
KEY = "sk-gateway-test-0123456789"  # a distinctive string: no output may contain it
PROMPT = "Say something about sans-IO"
MULTIBYTE = "Grüße, 世界! 🚀 Ünïcödé: ∑ a·b ≠ 😀 — “quoted” \u0301e " * 7


@dataclass
class Gateway:
    process: subprocess.Popen[bytes]
    base_url: str  # http://127.0.0.1:PORT/v1
    root: str  # http://127.0.0.1:PORT

    def client(self, api_key: str = "unused", **options: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url, api_key=api_key, max_retries=0, timeout=60, **options)

    def async_client(self, api_key: str = "unused") -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=api_key, max_retries=0, timeout=60)


def start_gateway(*args: str) -> Gateway:
    process = subprocess.Popen(
        [*PLABS, "serve", "--port", "0", *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV,
    )
    try:
        line = read_until(process, rb"http://127\.0\.0\.1:\d+/v1\n", timeout=20.0)
    except BaseException:
        process.kill()
        _, err = process.communicate(timeout=10)
        raise AssertionError(f"plabs serve did not start: {err.decode(errors='replace')[-2000:]}") from None
    # the first line of stdout is the base URL alone, as the emulator prints its URL
    match = re.fullmatch(rb"http://127\.0\.0\.1:\d+/v1\n", line)
    assert match is not None, line
    base = match.group().decode().strip()
    return Gateway(process, base, base[: -len("/v1")])


def stop_gateway(gateway: Gateway, timeout: float = 10.0, interrupt: bool = True) -> tuple[int, str]:
    """SIGINT (Ctrl-C) unless ``interrupt`` is False (sent already), then the exit status and stderr."""
    process = gateway.process
    if interrupt and process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        _, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate(timeout=timeout)
        raise AssertionError(f"plabs serve did not stop within {timeout} s of SIGINT") from None
    return process.returncode, err.decode(errors="replace")


GatewayFactory = Callable[..., Gateway]


@pytest.fixture(scope="module")
def gateway_factory() -> Iterator[GatewayFactory]:
    running: dict[tuple[str, ...], Gateway] = {}

    def start(*args: str) -> Gateway:
        gateway = running.get(args)
        if gateway is None:
            gateway = running[args] = start_gateway(*args)
        return gateway

    yield start
    failures = []
    for args, gateway in running.items():
        status, err = stop_gateway(gateway)
        if status != 0 or "Traceback" in err or KEY in err:
            failures.append(f"{args}: exit {status}, stderr {err[-1500:]!r}")
    assert not failures, failures


@pytest.fixture(params=["emulator", "node"])
def labs_url(request: pytest.FixtureRequest, emulator_factory: EmulatorFactory) -> str:
    """The URL of a default Labs server: the emulator, or the Node.js server."""
    if request.param == "emulator":
        return emulator_factory().url
    node_factory: NodeFactory = request.getfixturevalue("node_factory")
    return node_factory().url


def established_to(port: int) -> int:
    """Established TCP connections of any process on this host to ``port`` (Linux /proc)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                    count += 1
    return count


def wait_for(condition: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``condition()`` held; AssertionError after ``timeout``."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"not within {timeout} s"
        time.sleep(0.01)
    return time.monotonic() - started


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].rstrip("/"))


def stream_parts(stream: Any) -> tuple[str, str, list[Any], list[Any]]:
    """Joined content and reasoning_content, the citations, and the finish reasons of a streamed reply."""
    text, reasoning, citations, finishes = [], [], [], []
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        delta = chunk.choices[0].delta
        text.append(delta.content or "")
        reasoning.append(getattr(delta, "reasoning_content", None) or "")
        if chunk.choices[0].finish_reason is not None:
            finishes.append(chunk.choices[0].finish_reason)
            citations = getattr(chunk, "citations", None) or []
    return "".join(text), "".join(reasoning), citations, finishes


# -- models, health, the happy paths ------------------------------------------------------------------


def test_models_and_health(gateway_factory: GatewayFactory, emulator_factory: EmulatorFactory) -> None:
    gateway = gateway_factory("--server", emulator_factory().url)
    with gateway.client() as client:
        listed = list(client.models.list())
        ids = [model.id for model in listed]
        sonar = client.models.retrieve("sonar")
        with pytest.raises(openai.NotFoundError, match="gpt-4o"):
            client.models.retrieve("gpt-4o")
    assert ids[0] == DEFAULT_MODEL and sorted(ids) == sorted(MODELS)
    assert all(model.owned_by == "perplexity" and model.created > 1.7e9 for model in listed)
    assert (sonar.id, sonar.object, sonar.created) == ("sonar", "model", 1738195200)
    health = httpx.get(gateway.root + "/health")
    assert health.status_code == 200 and health.json() == {"status": "ok", "active": 0, "warm": 0}


@pytest.mark.parametrize("model", ["sonar", "sonar-reasoning", "r1-1776"])
def test_openai_sync_client_streamed_and_not(gateway_factory: GatewayFactory, labs_url: str, model: str) -> None:
    gateway = gateway_factory("--server", labs_url)
    messages: Any = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]
    answer, reasoning = default_answer(model, PROMPT), default_reasoning(model, PROMPT)
    citations = SONAR_CITATIONS if model.startswith("sonar") else []
    expected_reasoning = reasoning if model != "sonar" else ""
    with gateway.client() as client:
        text, streamed_reasoning, streamed_citations, finishes = stream_parts(
            client.chat.completions.create(model=model, messages=messages, stream=True)
        )
        assert text == answer
        assert streamed_reasoning == expected_reasoning
        assert streamed_citations == list(citations) and finishes == ["stop"]

        whole = client.chat.completions.create(model=model, messages=messages, temperature=0.2, max_tokens=5)
    assert whole.object == "chat.completion" and whole.model == model
    assert whole.choices[0].message.content == answer and whole.choices[0].finish_reason == "stop"
    assert getattr(whole.choices[0].message, "reasoning_content", None) == (expected_reasoning or None)
    assert getattr(whole, "citations", None) == list(citations)
    assert whole.usage is not None and whole.usage.completion_tokens > 0  # Labs's tokens_streamed
    prompt_bytes = len("\n\n".join(m["content"] for m in messages).encode())
    assert whole.usage.prompt_tokens == -(-prompt_bytes // 4)  # estimated: one token per 4 bytes, rounded up
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens


def test_openai_async_client_list_content(gateway_factory: GatewayFactory, labs_url: str) -> None:
    gateway = gateway_factory("--server", labs_url)
    parts: Any = [{"type": "text", "text": "Say something"}, {"type": "text", "text": "about sans-IO"}]
    prompt = "Say something\nabout sans-IO"

    async def main() -> tuple[str, str]:
        async with gateway.async_client() as client:
            stream = await client.chat.completions.create(
                model=DEFAULT_MODEL, messages=[{"role": "user", "content": parts}], stream=True
            )
            pieces = [chunk.choices[0].delta.content or "" async for chunk in stream]
            whole = await client.chat.completions.create(
                model=DEFAULT_MODEL, messages=[{"role": "user", "content": parts}]
            )
            return "".join(pieces), whole.choices[0].message.content or ""

    streamed, whole = asyncio.run(main())
    assert streamed == whole == default_answer(DEFAULT_MODEL, prompt)


def test_multibyte_answer_byte_for_byte(gateway_factory: GatewayFactory, emulator_factory: EmulatorFactory,
                                        node_factory: NodeFactory) -> None:
    for url in (emulator_factory(answer=MULTIBYTE, chunk_size=3, frame_delay=0).url,
                node_factory(answer=MULTIBYTE, chunk_size=3).url):
        gateway = gateway_factory("--server", url)
        with gateway.client() as client:
            text, _, _, _ = stream_parts(
                client.chat.completions.create(model="sonar", messages=[{"role": "user", "content": "hi"}], stream=True)
            )
            whole = client.chat.completions.create(model="sonar", messages=[{"role": "user", "content": "hi"}])
        assert text.encode() == MULTIBYTE.encode()
        assert (whole.choices[0].message.content or "").encode() == MULTIBYTE.encode()


@pytest.mark.parametrize("server", ["emulator", "node"])
def test_one_mib_answer(
    gateway_factory: GatewayFactory, emulator_factory: EmulatorFactory, node_factory: NodeFactory, server: str
) -> None:
    """1 MiB of UTF-8, byte for byte, from both server families (server.js reads it from a file)."""
    big = ("0123456789abcdef" * 65536)[: 1024 * 1024 - 3] + "€"  # 1 MiB of UTF-8
    assert len(big.encode()) == 1024 * 1024
    if server == "emulator":
        url = emulator_factory(answer=big, chunk_size=65536, frame_delay=0).url
    else:
        url = node_factory(answer=big, chunk_size=65536, frame_delay=0).url
    gateway = gateway_factory("--server", url)
    with gateway.client() as client:
        text, _, _, finishes = stream_parts(
            client.chat.completions.create(model="sonar", messages=[{"role": "user", "content": "big"}], stream=True)
        )
        assert text == big and finishes == ["stop"]
        whole = client.chat.completions.create(model="sonar", messages=[{"role": "user", "content": "big"}])
    assert whole.choices[0].message.content == big


def test_curl_streams_and_answers(gateway_factory: GatewayFactory, emulator_factory: EmulatorFactory) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    gateway = gateway_factory("--server", emulator_factory().url)
    body = json.dumps({"model": "sonar", "messages": [{"role": "user", "content": PROMPT}], "stream": True})
    result = subprocess.run(
        [curl, "-sS", "-N", gateway.base_url + "/chat/completions", "-H", "Content-Type: application/json",
         "-d", body], capture_output=True, timeout=30, check=True,
    )
    events = [line[len(b"data: "):] for line in result.stdout.split(b"\n\n") if line.startswith(b"data: ")]
    assert events[-1] == b"[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == default_answer("sonar", PROMPT)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["citations"] == list(SONAR_CITATIONS)
    whole = subprocess.run(
        [curl, "-sS", gateway.base_url + "/chat/completions", "-d", body.replace('"stream": true', '"stream": false')],
        capture_output=True, timeout=30, check=True,
    )
    assert json.loads(whole.stdout)["choices"][0]["message"]["content"] == default_answer("sonar", PROMPT)


def test_an_answer_without_reasoning_from_r1_is_all_content(
    gateway_factory: GatewayFactory, emulator_factory: EmulatorFactory
) -> None:
    """r1-1776 without </think>: streamed as reasoning, revised to the answer at the end; content is exact."""
    gateway = gateway_factory("--server", emulator_factory(no_reasoning=True, answer="Short and plain.").url)
    with gateway.client() as client:
        chunks = list(client.chat.completions.create(
            model="r1-1776", messages=[{"role": "user", "content": "hi"}], stream=True
        ))
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert text == "Short and plain."
    final = chunks[-1]
    assert getattr(final, "reasoning_revised", None) is True and getattr(final, "reasoning_content_final", None) == ""


def test_a_rewritten_answer_ends_the_stream_with_an_error(
    gateway_factory: GatewayFactory, emulator_factory: EmulatorFactory
) -> None:
    emulator = emulator_factory(answer="The first version of the answer.", final_output="Another text entirely.",
                                no_reasoning=True)
    gateway = gateway_factory("--server", emulator.url)
    with gateway.client() as client:
        stream = client.chat.completions.create(model="sonar", messages=[{"role": "user", "content": "hi"}], stream=True)
        got = []
        with pytest.raises(openai.APIError) as caught:
            for chunk in stream:
                got.append(chunk.choices[0].delta.content or "")
        assert "".join(got) and "The first version of the answer.".startswith("".join(got))
        assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "answer_rewritten"
        assert caught.value.body["final_text"] == "Another text entirely."
        whole = client.chat.completions.create(model="sonar", messages=[{"role": "user", "content": "hi"}])
    assert whole.choices[0].message.content == "Another text entirely."


# -- errors --------------------------------------------------------------------------------------------


def hi(**fields: Any) -> bytes:
    """A chat completion request body: model sonar, one user message, and ``fields``."""
    return json.dumps({"model": "sonar", "messages": [{"role": "user", "content": "hi"}], **fields}).encode()


def assert_openai_error(response: httpx.Response, status: int, code: str | None, param: str | None) -> str:
    """``response`` is OpenAI's error shape with these values; its message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"]
    error = body["error"]
    assert {"message", "type", "param", "code"} <= set(error), error
    assert (error["code"], error["param"]) == (code, param), error
    assert error["type"] == ("invalid_request_error" if status < 429 else error["type"])
    assert isinstance(error["message"], str) and error["message"]
    return str(error["message"])


@pytest.mark.parametrize(
    ("body", "needle", "code", "param"),
    [
        (b"{not json", "invalid JSON", "invalid_json", None),
        (b'{"model": "sonar", "x": NaN}', "NaN is not JSON", "invalid_json", None),
        (b'{"model": "sonar\xff"}', "UTF-8, got the byte 0xff at offset 16", "invalid_json", None),
        (b"[]", "JSON object", None, None),
        (json.dumps({"model": "sonar"}).encode(), "messages", None, "messages"),
        (json.dumps({"model": "sonar", "messages": [{"role": "robot", "content": "hi"}]}).encode(),
         "'system', 'developer', 'user', 'assistant'", None, "messages"),
        (json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode(), "must provide a model", None, "model"),
        (hi(model=""), "must provide a model", None, "model"),
        (hi(model=7), "'model' as a string", None, "model"),
        (hi(n=2), "'n' must be 1", "unsupported_parameter", "n"),
        (hi(tools=[{"type": "function"}]), "tools", "unsupported_parameter", "tools"),
        (hi(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]),
         "text only", "unsupported_content", "messages"),
        (hi(stream="yes"), "stream", None, "stream"),
        (hi(stream_options="yes"), "stream_options", None, "stream_options"),
        (hi(model="sonar\ud800"), "UTF-8", None, "model"),
    ],
)
def test_bad_requests_are_400(gateway_factory: GatewayFactory, emulator_factory: EmulatorFactory,
                              body: bytes, needle: str, code: str | None, param: str | None) -> None:
    gateway = gateway_factory("--server", emulator_factory().url, "--any-model")
    response = httpx.post(gateway.base_url + "/chat/completions", content=body,
                          headers={"content-type": "application/json"})
    assert needle in assert_openai_error(response, 400, code, param)


def test_models_are_checked_unless_any_model(gateway_factory: GatewayFactory,
                                             emulator_factory: EmulatorFactory) -> None:
    url = emulator_factory().url
    strict = gateway_factory("--server", url)
    with strict.client() as client, pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "model_not_found"
    assert "gpt-4o" in caught.value.message and "sonar" in caught.value.message
    missing = httpx.post(strict.base_url + "/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert_openai_error(missing, 400, None, "model")
    lenient = gateway_factory("--server", url, "--any-model")
    with lenient.client() as client:
        whole = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert whole.choices[0].message.content == default_answer("gpt-4o", "hi")  # Labs got the id as given


def test_unknown_paths_and_methods_answer_in_the_same_shape(gateway_factory: GatewayFactory,
                                                            emulator_factory: EmulatorFactory) -> None:
    gateway = gateway_factory("--server", emulator_factory().url)
    message = assert_openai_error(httpx.post(gateway.base_url + "/embeddings", json={}), 404, "unknown_url", None)
    assert message.startswith("Invalid URL (POST /v1/embeddings)")
    got = httpx.get(gateway.base_url + "/chat/completions")
    assert_openai_error(got, 405, "method_not_allowed", None)
    assert got.headers["allow"] == "POST"
    assert_openai_error(httpx.get(gateway.base_url + "/models/gpt-4o"), 404, "model_not_found", "model")


def test_n_above_one_is_refused_through_openai(gateway_factory: GatewayFactory, emulator_factory: EmulatorFactory) -> None:
    gateway = gateway_factory("--server", emulator_factory().url)
    with gateway.client() as client, pytest.raises(openai.BadRequestError, match="'n' must be 1"):
        client.chat.completions.create(model="sonar", messages=[{"role": "user", "content": "hi"}], n=2)


def test_api_key(gateway_factory: GatewayFactory, emulator_factory: EmulatorFactory) -> None:
    gateway = gateway_factory("--server", emulator_factory().url, "--api-key", KEY)
    messages: Any = [{"role": "user", "content": PROMPT}]
    with gateway.client(api_key="sk-wrong") as client, pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model="sonar", messages=messages)
    assert caught.value.status_code == 401 and KEY not in str(caught.value)
    missing = httpx.post(gateway.base_url + "/chat/completions", json={"model": "sonar", "messages": messages})
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(gateway.base_url + "/models").status_code == 401
    with gateway.client(api_key=KEY) as client:
        whole = client.chat.completions.create(model="sonar", messages=messages)
    assert whole.choices[0].message.content == default_answer("sonar", PROMPT)


def test_429_when_the_sessions_are_busy(gateway_factory: GatewayFactory, emulator_factory: EmulatorFactory) -> None:
    emulator = emulator_factory(answer="slow " * 40, chunk_size=5, frame_delay=0.05)
    gateway = gateway_factory("--server", emulator.url, "--max-sessions", "1")
    messages: Any = [{"role": "user", "content": "hi"}]
    with gateway.client() as client:
        stream = client.chat.completions.create(model="sonar", messages=messages, stream=True)
        first = next(iter(stream))
        assert first.choices[0].delta.content
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model="sonar", messages=messages)
        assert caught.value.status_code == 429 and caught.value.response.headers["retry-after"] == "1"
        assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "rate_limit_exceeded"
        rest = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
        assert (first.choices[0].delta.content or "") + rest == "slow " * 40
        again = client.chat.completions.create(model="sonar", messages=messages)  # the slot is free again
    assert again.choices[0].message.content == "slow " * 40


def test_429_with_retry_after_when_labs_rate_limits(gateway_factory: GatewayFactory,
                                                    emulator_factory: EmulatorFactory) -> None:
    gateway = gateway_factory("--server", emulator_factory(rate_limit="polling", retry_after="7").url)
    with gateway.client() as client:
        for stream in (False, True):
            with pytest.raises(openai.RateLimitError) as caught:
                client.chat.completions.create(model="sonar", messages=[{"role": "user", "content": "hi"}],
                                               stream=stream)
            assert caught.value.status_code == 429
            assert caught.value.response.headers["retry-after"] == "7"
            assert isinstance(caught.value.body, dict)
            assert caught.value.body["code"] == "labs_rate_limited" and caught.value.body["retry_after"] == 7


def test_502_keeps_the_labs_text(gateway_factory: GatewayFactory, labs_url: str,
                                 emulator_factory: EmulatorFactory, request: pytest.FixtureRequest) -> None:
    if "emulator" in request.node.callspec.id:
        url = emulator_factory(fail="Error in processing query").url
    else:
        url = request.getfixturevalue("node_factory")(fail="Error in processing query").url
    gateway = gateway_factory("--server", url)
    messages: Any = [{"role": "user", "content": "hi"}]
    with gateway.client() as client:
        for stream in (False, True):
            with pytest.raises(openai.APIStatusError) as caught:
                client.chat.completions.create(model="sonar", messages=messages, stream=stream)
            assert caught.value.status_code == 502
            assert "Error in processing query" in caught.value.message
            assert isinstance(caught.value.body, dict) and caught.value.body["labs_text"] == "Error in processing query"


def test_a_failure_after_the_stream_started_is_an_error_event(
    gateway_factory: GatewayFactory, emulator_factory: EmulatorFactory
) -> None:
    gateway = gateway_factory("--server", emulator_factory(fail="Error in processing query", fail_after=3).url)
    with gateway.client() as client:
        stream = client.chat.completions.create(model="sonar", messages=[{"role": "user", "content": "hi"}], stream=True)
        got = []
        with pytest.raises(openai.APIError, match="Error in processing query"):
            for chunk in stream:
                got.append(chunk.choices[0].delta.content or "")
    assert "".join(got) == default_answer("sonar", "hi")[: 3 * 8]


def test_504_on_a_labs_timeout(gateway_factory: GatewayFactory, emulator_factory: EmulatorFactory) -> None:
    gateway = gateway_factory("--server", emulator_factory(silent=True).url, "--timeout", "0.5")
    with gateway.client() as client:
        for stream in (False, True):
            with pytest.raises(openai.APIStatusError) as caught:
                client.chat.completions.create(model="sonar", messages=[{"role": "user", "content": "hi"}],
                                               stream=stream)
            assert caught.value.status_code == 504 and "timed out" in caught.value.message


def test_502_when_labs_is_unreachable(gateway_factory: GatewayFactory) -> None:
    gateway = gateway_factory("--server", "http://127.0.0.1:9")
    with gateway.client() as client, pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="sonar", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 502 and "127.0.0.1:9" in caught.value.message


# -- load, disconnects, shutdown, the warm pool ------------------------------------------------------------


def test_fifty_concurrent_streams(gateway_factory: GatewayFactory, labs_url: str) -> None:
    gateway = gateway_factory("--server", labs_url)

    async def one(client: openai.AsyncOpenAI, n: int) -> bool:
        prompt = f"question {n}"
        stream = await client.chat.completions.create(
            model="sonar", messages=[{"role": "user", "content": prompt}], stream=True
        )
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream])
        return text == default_answer("sonar", prompt)

    async def main() -> list[bool]:
        async with openai.AsyncOpenAI(
            base_url=gateway.base_url, api_key="x", max_retries=0, timeout=60,
            http_client=openai.DefaultAsyncHttpxClient(limits=httpx.Limits(max_connections=100)),
        ) as client:
            return await asyncio.gather(*(one(client, n) for n in range(50)))

    assert all(asyncio.run(main()))


def test_a_client_that_leaves_closes_its_labs_session(
    gateway_factory: GatewayFactory, emulator_factory: EmulatorFactory, node_factory: NodeFactory
) -> None:
    for server in (emulator_factory(answer="long " * 400, chunk_size=5, frame_delay=0.02),
                   node_factory(answer="long " * 400, chunk_size=5, frame_delay=0.02)):
        gateway = gateway_factory("--server", server.url)
        port = port_of(server.url)
        body = {"model": "sonar", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        with httpx.Client(timeout=30) as client, client.stream(
            "POST", gateway.base_url + "/chat/completions", json=body
        ) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            assert next(lines).startswith("data: ")
            assert established_to(port) >= 1
        # the client left: the gateway's Labs connection must go within a second
        assert wait_for(lambda port=port: established_to(port) == 0, 1.0) < 1.0  # type: ignore[misc]
        # the same for a request that is not streamed: the client gives up waiting for the whole answer
        with httpx.Client(timeout=0.5) as client, pytest.raises(httpx.ReadTimeout):
            client.post(gateway.base_url + "/chat/completions", json={**body, "stream": False})
        assert wait_for(lambda port=port: established_to(port) == 0, 1.0) < 1.0  # type: ignore[misc]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_ctrl_c_with_streams_open(emulator_factory: EmulatorFactory, own_gateways: list[Gateway], backend: str) -> None:
    emulator = emulator_factory(answer="forever " * 500, chunk_size=8, frame_delay=0.05)
    gateway = start_gateway("--server", emulator.url, "--backend", backend)
    own_gateways.append(gateway)
    port = port_of(emulator.url)
    errors: list[BaseException] = []
    streaming: list[asyncio.Event] = []

    async def one(client: openai.AsyncOpenAI, first_chunk: asyncio.Event) -> None:
        stream = await client.chat.completions.create(
            model="sonar", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        try:
            async for _ in stream:
                first_chunk.set()
        except openai.APIError as exc:
            errors.append(exc)

    async def main() -> float:
        async with gateway.async_client() as client:
            streaming.extend(asyncio.Event() for _ in range(3))
            tasks = [asyncio.create_task(one(client, event)) for event in streaming]
            # Ctrl-C once every stream has its first chunk (a request still waiting for
            # its first one gets a 503 status instead, which create() raises)
            await asyncio.wait_for(asyncio.gather(*(event.wait() for event in streaming)), 20)
            assert established_to(port) >= 3
            gateway.process.send_signal(signal.SIGINT)
            started = time.monotonic()
            await asyncio.wait_for(asyncio.gather(*tasks), 10)
            return time.monotonic() - started

    took = asyncio.run(main())
    assert took < 3.0
    assert len(errors) == 3 and all("shutting down" in str(exc) for exc in errors)
    status, err = stop_gateway(gateway, interrupt=False)
    assert status == 0 and "Traceback" not in err, err
    assert established_to(port) == 0


def test_warm_sessions_skip_the_handshake_and_are_reused(
    gateway_factory: GatewayFactory, emulator_factory: EmulatorFactory
) -> None:
    emulator = emulator_factory(ping_interval=0.3, ping_timeout=0.3, frame_delay=0.002)
    port = port_of(emulator.url)
    gateway = gateway_factory("--server", emulator.url, "--warm", "2", "--transport", "websocket")
    wait_for(lambda: httpx.get(gateway.root + "/health").json()["warm"] == 2, 10)
    time.sleep(1.0)  # several heartbeats: idle sessions answer them and stay
    assert httpx.get(gateway.root + "/health").json()["warm"] == 2
    assert established_to(port) == 2
    with gateway.client() as client:
        for n in range(4):
            whole = client.chat.completions.create(model="sonar", messages=[{"role": "user", "content": f"q{n}"}])
            assert whole.choices[0].message.content == default_answer("sonar", f"q{n}")
    wait_for(lambda: httpx.get(gateway.root + "/health").json()["warm"] == 2, 5)
    assert established_to(port) == 2  # reused or replaced, never more


def test_trio_backend_under_hypercorn(gateway_factory: GatewayFactory, labs_url: str) -> None:
    pytest.importorskip("hypercorn")
    gateway = gateway_factory("--server", labs_url, "--backend", "trio")
    with gateway.client() as client:
        text, reasoning, citations, _ = stream_parts(client.chat.completions.create(
            model="sonar-reasoning", messages=[{"role": "user", "content": PROMPT}], stream=True
        ))
    assert text == default_answer("sonar-reasoning", PROMPT)
    assert reasoning == default_reasoning("sonar-reasoning", PROMPT) and citations == list(SONAR_CITATIONS)


def test_trio_backend_with_a_warm_pool(gateway_factory: GatewayFactory, emulator_factory: EmulatorFactory) -> None:
    pytest.importorskip("hypercorn")
    emulator = emulator_factory(frame_delay=0.001)
    gateway = gateway_factory("--server", emulator.url, "--backend", "trio", "--warm", "1")
    wait_for(lambda: httpx.get(gateway.root + "/health").json()["warm"] == 1, 10)
    with gateway.client() as client:
        for n in range(3):
            whole = client.chat.completions.create(model="sonar", messages=[{"role": "user", "content": f"t{n}"}])
            assert whole.choices[0].message.content == default_answer("sonar", f"t{n}")
    wait_for(lambda: httpx.get(gateway.root + "/health").json()["warm"] == 1, 5)
    assert established_to(port_of(emulator.url)) == 1


def connections_to(port: int) -> set[int]:
    """The local ports of this host's established TCP connections to ``port`` (Linux /proc)."""
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_trio_warm_session_answers_pings_while_idle(
    gateway_factory: GatewayFactory, emulator_factory: EmulatorFactory
) -> None:
    # The server gives up pingInterval + pingTimeout = 0.4 s after a ping without a pong: the pooled
    # session lives through three ping intervals only if it answers pings while idle, and the
    # request is then answered on that same connection.
    pytest.importorskip("hypercorn")
    emulator = emulator_factory(ping_interval=0.2, ping_timeout=0.2, frame_delay=0.001)
    port = port_of(emulator.url)
    gateway = gateway_factory("--server", emulator.url, "--backend", "trio", "--warm", "1", "--transport", "websocket")
    wait_for(lambda: httpx.get(gateway.root + "/health").json()["warm"] == 1, 10)
    before = connections_to(port)
    assert len(before) == 1
    time.sleep(0.6)
    assert connections_to(port) == before
    with gateway.client() as client:
        whole = client.chat.completions.create(model="sonar", messages=[{"role": "user", "content": "after"}])
    assert whole.choices[0].message.content == default_answer("sonar", "after")
    time.sleep(0.6)  # idle again, after a query
    assert connections_to(port) == before
    assert httpx.get(gateway.root + "/health").json()["warm"] == 1


def test_tls_server_with_cafile(gateway_factory: GatewayFactory, emulator_factory: EmulatorFactory,
                                tls_files: TLSFiles) -> None:
    emulator = emulator_factory(certfile=tls_files.certfile, keyfile=tls_files.keyfile)
    gateway = gateway_factory("--server", emulator.url, "--cafile", tls_files.cafile)
    with gateway.client() as client:
        whole = client.chat.completions.create(model="sonar", messages=[{"role": "user", "content": PROMPT}])
    assert whole.choices[0].message.content == default_answer("sonar", PROMPT)
    untrusted = gateway_factory("--server", emulator.url)  # the system CAs do not know the test CA
    with untrusted.client() as client, pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="sonar", messages=[{"role": "user", "content": PROMPT}])
    assert caught.value.status_code == 502 and "certificate" in caught.value.message


def test_the_curl_backend_serves(gateway_factory: GatewayFactory, emulator_factory: EmulatorFactory) -> None:
    pytest.importorskip("curl_cffi")
    emulator = emulator_factory(frame_delay=0.001)
    gateway = gateway_factory("--server", emulator.url, "--backend", "curl")
    with gateway.client() as client:
        text, _, _, finishes = stream_parts(
            client.chat.completions.create(model="sonar", messages=[{"role": "user", "content": PROMPT}], stream=True)
        )
        whole = client.chat.completions.create(model="sonar", messages=[{"role": "user", "content": PROMPT}])
    assert text == whole.choices[0].message.content == default_answer("sonar", PROMPT)
    assert finishes == ["stop"]


def test_a_lent_warm_session_opens_no_replacement(
    gateway_factory: GatewayFactory, emulator_factory: EmulatorFactory
) -> None:
    """A request that takes the warm session does not make the pool open another one beside it
    (its handshake would compete with the request); the session comes back after a clean finish."""
    emulator = emulator_factory(answer="warm " * 30, chunk_size=5, frame_delay=0.05)
    port = port_of(emulator.url)
    gateway = gateway_factory("--server", emulator.url, "--warm", "1")
    wait_for(lambda: httpx.get(gateway.root + "/health").json()["warm"] == 1, 10)
    with gateway.client() as client:
        stream = client.chat.completions.create(model="sonar", messages=[{"role": "user", "content": "w"}], stream=True)
        pieces = [next(iter(stream)).choices[0].delta.content or ""]
        time.sleep(1.2)  # longer than the pool's check period
        assert established_to(port) == 1
        pieces += [chunk.choices[0].delta.content or "" for chunk in stream]
    assert "".join(pieces) == "warm " * 30
    wait_for(lambda: httpx.get(gateway.root + "/health").json()["warm"] == 1, 5)
    assert established_to(port) == 1


def test_the_app_runs_in_process_without_a_lifespan(emulator_factory: EmulatorFactory) -> None:
    """create_app() is a plain ASGI app: httpx's ASGITransport (which runs no lifespan) can drive it."""
    from plabs_proto.backends.programs.gateway import create_app

    app = create_app(server=emulator_factory().url)

    async def main() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            body = {"model": "sonar", "messages": [{"role": "user", "content": PROMPT}]}
            whole = await client.post("/v1/chat/completions", json=body)
            streamed = await client.post("/v1/chat/completions", json={**body, "stream": True})
            return whole, streamed

    whole, streamed = asyncio.run(main())
    assert whole.json()["choices"][0]["message"]["content"] == default_answer("sonar", PROMPT)
    chunks = [json.loads(line[6:]) for line in streamed.text.split("\n\n") if line.startswith("data: {")]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == default_answer("sonar", PROMPT)
    assert streamed.text.endswith("data: [DONE]\n\n")


def test_chat_route_mounted_under_a_root_path_and_other_methods(emulator_factory: EmulatorFactory) -> None:
    """The chat completion paths answer POST below a root path too (the app mounted in another app),
    other methods get OpenAI's 405, and a path that only ends like them is not theirs."""
    from plabs_proto.backends.programs.gateway import create_app
    from starlette.applications import Starlette
    from starlette.routing import Mount

    outer = Starlette(routes=[Mount("/api", app=create_app(server=emulator_factory().url))])

    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=outer)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            body = {"model": "sonar", "messages": [{"role": "user", "content": PROMPT}]}
            return [
                await client.post("/api/v1/chat/completions", json=body),
                await client.post("/api/chat/completions", json={**body, "stream": True}),
                await client.get("/api/v1/chat/completions"),
                await client.post("/api/v1/chat/completionsx", json=body),
            ]

    whole, streamed, got, other = asyncio.run(main())
    assert whole.json()["choices"][0]["message"]["content"] == default_answer("sonar", PROMPT)
    assert streamed.text.endswith("data: [DONE]\n\n")
    assert got.status_code == 405 and got.json()["error"]["type"] == "invalid_request_error"
    assert other.status_code == 404 and other.json()["error"]["code"] == "unknown_url"


def test_access_log_one_line_per_request_and_quiet(emulator_factory: EmulatorFactory,
                                                  own_gateways: list[Gateway]) -> None:
    """Method, path, status, seconds and model on stderr, never the key or the prompt; none with --quiet."""
    url = emulator_factory().url
    secret_prompt = "a prompt that must not be logged"
    logged = start_gateway("--server", url, "--api-key", KEY)
    quiet = start_gateway("--server", url, "--api-key", KEY, "--quiet")
    own_gateways += [logged, quiet]
    for gateway in (logged, quiet):
        with gateway.client(api_key=KEY) as client:
            client.chat.completions.create(model="sonar", messages=[{"role": "user", "content": secret_prompt}])
            list(client.chat.completions.create(model="sonar", messages=[{"role": "user", "content": "hi"}],
                                                stream=True))
        httpx.get(gateway.base_url + "/models")  # no key: 401
    status, err = stop_gateway(logged)
    assert status == 0
    lines = err.splitlines()
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"
    assert re.fullmatch(stamp + r" POST /v1/chat/completions 200 \d+\.\d{3}s model=sonar", lines[0]), lines
    assert re.fullmatch(stamp + r" POST /v1/chat/completions 200 \d+\.\d{3}s model=sonar", lines[1]), lines
    assert re.fullmatch(stamp + r" GET /v1/models 401 \d+\.\d{3}s", lines[2]), lines
    assert len(lines) == 3 and KEY not in err and secret_prompt not in err
    status, err = stop_gateway(quiet)
    assert (status, err) == (0, "")


def test_estimate_tokens_is_a_token_per_four_bytes_rounded_up() -> None:
    from plabs_proto.backends.programs.gateway import estimate_tokens

    assert [estimate_tokens(text) for text in ("", "a", "abcd", "abcde", "é", "éé", "ééé", "😀", "世界")] == [
        0, 1, 1, 2, 1, 1, 2, 1, 2]


def test_fold_history_is_the_question_with_the_earlier_turns_first() -> None:
    """The seam for a service that takes one question: a lone user message is itself."""
    from plabs_proto.backends.programs.gateway import fold_history

    assert fold_history([{"role": "user", "content": "What is sans-IO?"}]) == "What is sans-IO?"
    assert fold_history([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is sans-IO?"},
        {"role": "assistant", "content": "I/O-free protocol code."},
        {"role": "user", "content": "Why does it help testing?"},
    ]) == ("system: Be brief.\n\nuser: What is sans-IO?\n\nassistant: I/O-free protocol code.\n\n"
           "Why does it help testing?")


def test_config_from_the_environment_takes_any_model() -> None:
    from plabs_proto.backends.programs.gateway import GatewayConfig, GatewayError

    assert GatewayConfig.from_env({"PLABS_ANY_MODEL": "1"}).any_model is True
    assert GatewayConfig.from_env({"PLABS_ANY_MODEL": "0"}).any_model is False
    assert GatewayConfig.from_env({}).any_model is False
    with pytest.raises(GatewayError, match="expected PLABS_ANY_MODEL as 0 or 1, got 'yes'"):
        GatewayConfig.from_env({"PLABS_ANY_MODEL": "yes"})


def test_the_models_served_are_checked_at_startup() -> None:
    from plabs_proto.backends.programs.gateway import LABS_MODELS, GatewayError, ModelCard, create_app

    extra = ModelCard(id="another", owned_by="someone", created=1, service="other")
    assert [card.id for card in create_app(models=(*LABS_MODELS, extra)).state.gateway.config.models][-1] == "another"
    for models in ((), (*LABS_MODELS, LABS_MODELS[0]), ("sonar",)):
        with pytest.raises(GatewayError, match="expected the models as ModelCards with distinct ids"):
            create_app(models=models)


def test_the_responses_api_reports_failures(gateway_factory: GatewayFactory,
                                            emulator_factory: EmulatorFactory) -> None:
    """Before the stream starts: the HTTP status; after: a response.failed event with the error."""
    gateway = gateway_factory("--server", emulator_factory(fail="Error in processing query", fail_after=3).url)
    with gateway.client() as client:
        events = list(client.responses.create(model="sonar", input="hi", stream=True))
    assert events[-1].type == "response.failed"
    failed = events[-1].response
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.code == "labs_error" and "Error in processing query" in failed.error.message
    deltas = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert deltas == default_answer("sonar", "hi")[: 3 * 8]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    at_once = gateway_factory("--server", emulator_factory(fail="Error in processing query").url)
    with at_once.client() as client, pytest.raises(openai.APIStatusError) as caught:
        client.responses.create(model="sonar", input="hi")
    assert caught.value.status_code == 502 and "Error in processing query" in caught.value.message
