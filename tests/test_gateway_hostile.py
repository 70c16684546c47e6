"""Hostile and odd requests to the gateway: a 4xx in OpenAI's error shape, decided before any session opens.

The gateway runs in-process (httpx's ASGI transport) in front of a Labs "server" that is a
listening socket nobody accepts on: a request that opened a session would leave a connection
waiting there, and none may.  Each size limit is tried at its edge (the value at the limit
taken, one past it refused, the error naming both); hypothesis fuzzes the request parsing
(bytes, JSON of any shape, requests almost right) for 4xx only, in bounded time.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from conftest import EmulatorFactory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from plabs_proto.backends.programs.emulator import default_answer
from plabs_proto.backends.programs.gateway import (
    MAX_MESSAGES,
    MAX_MODEL_ID,
    MAX_PROMPT,
    _Refusal,
    create_app,
    parse_chat_request,
    parse_responses_request,
)
from servers import Silent
from test_gateway import Gateway, assert_openai_error, start_gateway, stop_gateway

from plabs_proto.jsondepth import MAX_DEPTH

USER = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def post(silent: Silent) -> Iterator[Any]:
    """``post(path, body)``: the gateway's response to ``body`` (bytes, or an object sent as JSON)."""
    strict = create_app(server=silent.url, timeout=5)
    loop = asyncio.new_event_loop()

    def send(path: str, body: Any, app: Any = strict) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()

        async def main() -> httpx.Response:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
                return await client.post(path, content=content, headers={"content-type": "application/json"})

        return loop.run_until_complete(main())

    yield send
    loop.close()


def refused(post: Any, silent: Silent, body: Any, status: int, code: str | None, param: str | None,
            path: str = "/v1/chat/completions") -> str:
    message = assert_openai_error(post(path, body), status, code, param)
    assert silent.connections() == 0, "a session was opened for a request refused"
    return message


def test_a_two_mb_prompt(post: Any, silent: Silent) -> None:
    body = {"model": "sonar", "messages": [{"role": "user", "content": "x" * (2 * 1024 * 1024)}]}
    message = refused(post, silent, body, 400, "context_length_exceeded", "messages")
    assert f"at most {MAX_PROMPT} bytes" in message


def test_a_one_mb_model_name(post: Any, silent: Silent) -> None:
    message = refused(post, silent, {"model": "m" * 1024 * 1024, "messages": USER}, 400, "string_above_max_length",
                      "model")
    assert message == f"expected 'model' of at most {MAX_MODEL_ID} characters, got {1024 * 1024}"


def test_a_hundred_thousand_messages(post: Any, silent: Silent) -> None:
    message = refused(post, silent, {"model": "sonar", "messages": USER * 100_000}, 400, "array_above_max_length",
                      "messages")
    assert message == f"expected 'messages' to hold at most {MAX_MESSAGES} messages, got 100000"


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 20_000, 200_000])
def test_json_nested_too_deep(post: Any, silent: Silent, depth: int) -> None:
    for opening, closing in (("[", "]"), ('{"a":', "}")):
        body = ('{"model": "sonar", "messages": ' + opening * depth + "1" + closing * depth + "}").encode()
        message = refused(post, silent, body, 400, "invalid_json", None)
        assert f"nested at most {MAX_DEPTH} deep" in message


def test_json_nested_at_the_limit_is_read(post: Any, silent: Silent) -> None:
    body = ('{"model": "sonar", "messages": ' + "[" * (MAX_DEPTH - 1) + "1" + "]" * (MAX_DEPTH - 1) + "}").encode()
    message = refused(post, silent, body, 400, None, "messages")  # read, then found not to be messages
    assert message.startswith("messages[0]: expected an object")


@pytest.mark.parametrize(
    ("body", "code", "param", "needle"),
    [
        (b"", "invalid_json", None, "invalid JSON"),
        (b"\xef\xbb\xbf{}", "invalid_json", None, "invalid JSON"),  # a byte order mark
        (b'{"model": "sonar", "messages": [], "n": Infinity}', "invalid_json", None, "Infinity is not JSON"),
        (b'{"model": "sonar", "n": -Infinity}', "invalid_json", None, "-Infinity is not JSON"),
        (b'{"model": "sonar", "n": ' + b"9" * 5000 + b"}", "invalid_json", None, "invalid JSON"),
        (b'{"model": "sonar", "messages": [{"role": "user", "content": "\\ud800"}]}', None, "messages",
         "lone surrogate"),
        (b'{"model": "\\udfff", "messages": [{"role": "user", "content": "hi"}]}', "model_not_found", "model",
         "does not exist"),
        (b'{"model": "sonar", "messages": [{"role": "user", "content": "hi"}], "n": 1e999}', None, "n",
         "Infinity"),
        (b"12", None, None, "JSON object as the request body, got 12"),
        (b'"text"', None, None, "JSON object"),
        (b"null", None, None, "JSON object as the request body, got null"),
        (b'{"model": "sonar", "messages": [null]}', None, "messages", "messages[0]: expected an object"),
        (b'{"model": "sonar", "messages": [{"role": "user", "content": [{"type": "text"}]}]}', None, "messages",
         "text: expected a string"),
        (b'{"model": "sonar", "messages": [{"role": "user", "content": ""}]}', None, "messages",
         "none with text"),
    ],
)
def test_odd_json(post: Any, silent: Silent, body: bytes, code: str | None, param: str | None, needle: str) -> None:
    assert needle in refused(post, silent, body, 400 if code != "model_not_found" else 404, code, param)


def test_the_responses_api_has_the_same_limits(post: Any, silent: Silent) -> None:
    path = "/v1/responses"
    refused(post, silent, {"model": "sonar", "input": "x" * (MAX_PROMPT + 1)}, 400, "context_length_exceeded",
            "input", path)
    refused(post, silent, {"model": "sonar", "input": USER * (MAX_MESSAGES + 1)}, 400, "array_above_max_length",
            "input", path)
    refused(post, silent, {"model": "sonar", "input": "hi", "instructions": "x" * MAX_PROMPT}, 400,
            "context_length_exceeded", "input", path)
    refused(post, silent, {"model": "sonar", "input": [{"type": "function_call_output", "output": "1"}]}, 400,
            "unsupported_content", "input", path)
    refused(post, silent, {"input": "hi"}, 400, None, "model", path)
    refused(post, silent, {"model": "sonar", "input": "hi", "previous_response_id": "resp_1"}, 400,
            "unsupported_parameter", "previous_response_id", path)
    refused(post, silent, {"model": "sonar", "input": "hi", "instructions": 3}, 400, None, "instructions", path)


# -- the limits at their edges ----------------------------------------------------------------------------


def test_the_prompt_limit_at_its_edge() -> None:
    at = [{"role": "system", "content": "é" * 1000}, {"role": "user", "content": "x" * (MAX_PROMPT - 2000)}]
    assert parse_chat_request({"model": "sonar", "messages": at}).messages == at
    over = [at[0], {"role": "user", "content": "x" * (MAX_PROMPT - 1999)}]
    with pytest.raises(_Refusal, match=f"expected at most {MAX_PROMPT} bytes of text .* got more by messages\\[1\\]"):
        parse_chat_request({"model": "sonar", "messages": over})
    with_instructions = {"model": "sonar", "input": "x" * (MAX_PROMPT - 1), "instructions": "y"}
    assert len(parse_responses_request(with_instructions).messages) == 2
    with pytest.raises(_Refusal, match=f"expected at most {MAX_PROMPT} bytes") as caught:
        parse_responses_request({**with_instructions, "instructions": "yz"})
    assert (caught.value.status, caught.value.code) == (400, "context_length_exceeded")


def test_the_message_count_limit_at_its_edge() -> None:
    many = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}] * (MAX_MESSAGES // 2)
    assert len(parse_chat_request({"model": "sonar", "messages": many}).messages) == MAX_MESSAGES
    with pytest.raises(_Refusal, match=f"at most {MAX_MESSAGES} messages, got {MAX_MESSAGES + 1}"):
        parse_chat_request({"model": "sonar", "messages": [*many, many[0]]})


def test_the_model_id_limit_at_its_edge(post: Any, silent: Silent) -> None:
    from plabs_proto.backends.programs.gateway import GatewayConfig

    lenient = GatewayConfig(any_model=True)
    assert parse_chat_request({"model": "m" * MAX_MODEL_ID, "messages": USER}, lenient).model == "m" * MAX_MODEL_ID
    with pytest.raises(_Refusal, match=f"at most {MAX_MODEL_ID} characters, got {MAX_MODEL_ID + 1}"):
        parse_chat_request({"model": "m" * (MAX_MODEL_ID + 1), "messages": USER}, lenient)
    # without --any-model an id at the limit passes the length check and is then unknown
    refused(post, silent, {"model": "m" * MAX_MODEL_ID, "messages": USER}, 404, "model_not_found", "model")


@pytest.fixture(scope="module")
def gateway(emulator_factory: EmulatorFactory) -> Iterator[Gateway]:
    """``plabs serve`` in front of the emulator."""
    started = start_gateway("--server", emulator_factory(frame_delay=0, chunk_size=65536).url)
    yield started
    status, err = stop_gateway(started)
    assert status == 0 and "Traceback" not in err, err


def test_a_prompt_at_the_limit_is_answered_end_to_end(gateway: Gateway) -> None:
    """The limit holds what the Labs server takes, whatever the text: \\x01 is escaped to 6 bytes of JSON."""
    prompt = "\x01" * MAX_PROMPT
    with gateway.client() as client:
        whole = client.chat.completions.create(model="sonar", messages=[{"role": "user", "content": prompt}])
    assert whole.choices[0].message.content == default_answer("sonar", prompt)


def test_sdks_do_not_retry_what_is_too_big(gateway: Gateway) -> None:
    """A 4xx is the client's to fix: the openai package (which retries 5xx) sends it once."""
    sent: list[httpx.Request] = []
    http = httpx.Client(event_hooks={"request": [sent.append]})
    with openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=3, http_client=http) as client, \
            pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="sonar", messages=[{"role": "user", "content": "x" * 2_000_000}])
    assert len(sent) == 1
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "context_length_exceeded"


# -- fuzzing the request parsing ----------------------------------------------------------------------------

FIELDS = ["model", "messages", "role", "content", "type", "text", "stream", "n", "stream_options", "include_usage",
          "tools", "input", "instructions"]
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | st.sampled_from(
    ["sonar", "", "user", "system", "developer", "assistant", "text", "input_text", "message"])
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), inner,
                                                                max_size=5),
    max_leaves=25,
)
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "robot"]),
                                           "content": values}), max_size=4)
almost = st.fixed_dictionaries({"model": st.sampled_from(["sonar", "r1-1776", "gpt-4o", ""]) | values,
                                "messages": messages | values},
                               optional={"stream": values, "n": values, "stream_options": values, "tools": values})


def encode(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")


bodies = (st.binary(max_size=300) | values.map(encode) | almost.map(encode)
          | st.tuples(almost.map(encode), st.integers(0, 300), st.binary(max_size=4)).map(
              lambda t: t[0][: t[1]] + t[2] + t[0][t[1]:]))


@pytest.fixture(scope="module")
def unreachable_post(post: Any) -> Any:
    """``post`` to a gateway whose Labs server refuses connections at once (a valid request: 502)."""
    app = create_app(server="http://127.0.0.1:1", timeout=5)
    return lambda path, body: post(path, body, app)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies, path=st.sampled_from(["/v1/chat/completions", "/v1/responses"]))
def test_fuzzed_requests_get_a_4xx_in_openai_shape(unreachable_post: Any, body: bytes, path: str) -> None:
    started = time.monotonic()
    response = unreachable_post(path, body)
    assert time.monotonic() - started < 2.0  # bounded: no request waits on anything
    error = response.json()["error"]
    assert {"message", "type", "param", "code"} <= set(error)
    if response.status_code == 502:  # a valid request, sent on: the parser took it
        assert error["code"] == "labs_unavailable"
        parse = parse_chat_request if path.endswith("completions") else parse_responses_request
        parse(json.loads(body))
    else:
        assert 400 <= response.status_code < 500, (response.status_code, error)
        assert error["type"] == "invalid_request_error"


def test_a_mode_the_service_does_not_have(post: Any, silent: Silent) -> None:
    """``mode`` (the ask service's, an extension of OpenAI's request): refused on Labs, checked on the
    ask service, before any session opens, on both APIs."""
    labs = refused(post, silent, {"model": "sonar", "messages": USER, "mode": "concise"}, 400,
                   "unsupported_parameter", "mode")
    assert labs == ("Perplexity Labs has no ask modes: expected no 'mode', got \"concise\" (modes are the ask "
                    "service's: plabs serve --service perplexity)")
    ask = create_app(server=silent.url, service="perplexity", timeout=5)
    for bad in ("fast", "", "Concise", 1, ["concise"]):
        for path, body in (("/v1/chat/completions", {"model": "turbo", "messages": USER, "mode": bad}),
                           ("/v1/responses", {"model": "turbo", "input": "hi", "mode": bad})):
            message = assert_openai_error(post(path, body, ask), 400, "invalid_value", "mode")
            assert message == f"expected 'mode' to be one of 'copilot', 'concise', got {json.dumps(bad)}"
    assert silent.connections() == 0, "a session was opened for a request refused"
