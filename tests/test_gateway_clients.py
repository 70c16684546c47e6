"""``plabs serve`` driven by the clients its users use, each in front of the emulator.

* the ``openai`` package: sync and async chat completions, streamed with
  ``include_usage``, ``models.retrieve``, ``responses.create`` (whole and streamed);
* ``langchain-openai``'s ``ChatOpenAI``: ``invoke`` and ``stream``;
* the ``openai`` npm package from Node.js (``tests/node_server/openai_client.js``).

Answers are compared with the emulator's deterministic texts, byte for byte.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from conftest import EmulatorFactory, require_node_server
from plabs_proto.backends.programs.emulator import default_answer, default_reasoning
from plabs_proto.backends.programs.gateway import estimate_tokens
from servers import NODE_SERVER_DIR
from test_gateway import Gateway, start_gateway, stop_gateway

PROMPT = "What is sans-IO?"
MODEL = "sonar-reasoning"
ANSWER = default_answer(MODEL, PROMPT)


@pytest.fixture(scope="module")
def gateway(emulator_factory: EmulatorFactory) -> Iterator[Gateway]:
    started = start_gateway("--server", emulator_factory(frame_delay=0.001).url)
    yield started
    status, err = stop_gateway(started)
    assert status == 0 and "Traceback" not in err, err


def test_openai_chat_streamed_with_usage_last(gateway: Gateway) -> None:
    with gateway.client() as client:
        chunks = list(client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": PROMPT}], stream=True,
            stream_options={"include_usage": True},
        ))
    *answer, last = chunks
    assert last.choices == [] and last.usage is not None  # OpenAI's own shape: a last chunk of its own
    assert all(chunk.usage is None for chunk in answer)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in answer) == ANSWER
    assert answer[-1].choices[0].finish_reason == "stop"
    assert last.usage.prompt_tokens == estimate_tokens(PROMPT)
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens > 0


def test_openai_sync_and_async_agree(gateway: Gateway) -> None:
    messages: Any = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": PROMPT}]
    with gateway.client() as client:
        whole = client.chat.completions.create(model=MODEL, messages=messages)

    async def main() -> str:
        async with gateway.async_client() as client:
            stream = await client.chat.completions.create(model=MODEL, messages=messages, stream=True)
            return "".join([chunk.choices[0].delta.content or "" async for chunk in stream])

    assert whole.choices[0].message.content == asyncio.run(main()) == ANSWER
    assert whole.usage is not None and whole.usage.prompt_tokens == estimate_tokens("Be brief.\n\n" + PROMPT)


def test_openai_models_retrieve(gateway: Gateway) -> None:
    with gateway.client() as client:
        card = client.models.retrieve(MODEL)
        with pytest.raises(openai.NotFoundError) as caught:
            client.models.retrieve("gpt-4o")
    assert (card.id, card.object, card.owned_by) == (MODEL, "model", "perplexity")
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "model_not_found"


def test_openai_responses_whole(gateway: Gateway) -> None:
    with gateway.client() as client:
        response = client.responses.create(model=MODEL, input=PROMPT, instructions="Be brief.")
        items = client.responses.create(model=MODEL, input=[
            {"role": "user", "content": [{"type": "input_text", "text": "Earlier question"}]},
            {"role": "assistant", "content": [{"type": "output_text", "text": "Earlier answer"}]},
            {"role": "user", "content": PROMPT},
        ])
    assert response.status == "completed" and response.output_text == ANSWER
    assert response.usage is not None and response.usage.input_tokens == estimate_tokens("Be brief.\n\n" + PROMPT)
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert response.usage.output_tokens_details.reasoning_tokens == estimate_tokens(default_reasoning(MODEL, PROMPT))
    assert items.output_text == ANSWER  # the emulator answers the last user message


def test_openai_responses_streamed_events(gateway: Gateway) -> None:
    with gateway.client() as client:
        events = list(client.responses.create(model=MODEL, input=PROMPT, stream=True))
    kinds = [event.type for event in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert "".join(event.delta for event in events if event.type == "response.output_text.delta") == ANSWER
    completed = events[-1]
    assert completed.type == "response.completed" and completed.response.output_text == ANSWER


def test_openai_responses_stream_helper(gateway: Gateway) -> None:
    """The package's own accumulating helper (``responses.stream``) checks the event order strictly."""
    with gateway.client() as client, client.responses.stream(model=MODEL, input=PROMPT) as stream:
        for _ in stream:
            pass
        final = stream.get_final_response()
    assert final.output_text == ANSWER


def test_langchain_chat_openai_invoke_and_stream(gateway: Gateway) -> None:
    langchain_openai = pytest.importorskip("langchain_openai")
    chat = langchain_openai.ChatOpenAI(base_url=gateway.base_url, api_key="unused", model=MODEL, max_retries=0,
                                       timeout=60)
    reply = chat.invoke(PROMPT)
    assert reply.content == ANSWER
    assert reply.usage_metadata is not None and reply.usage_metadata["input_tokens"] == estimate_tokens(PROMPT)
    pieces = [chunk.content for chunk in chat.stream(PROMPT)]
    assert "".join(str(piece) for piece in pieces) == ANSWER


def test_openai_npm_package_from_node(gateway: Gateway) -> None:
    node = shutil.which("node")
    problem = None
    if node is None:
        problem = "Node.js is not installed"
    elif not (NODE_SERVER_DIR / "node_modules" / "openai").is_dir():
        problem = f"the openai npm package is missing: run `npm ci` in {NODE_SERVER_DIR}"
    require_node_server(problem)
    assert node is not None
    result = subprocess.run(
        [node, str(NODE_SERVER_DIR / "openai_client.js"), gateway.base_url, MODEL, PROMPT],
        capture_output=True, text=True, timeout=60, cwd=NODE_SERVER_DIR,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    got = json.loads(result.stdout)
    assert got["streamed"] == got["whole"] == got["response"] == got["responseStreamed"] == ANSWER
    assert got["finish"] == "stop"
    assert got["usage"]["prompt_tokens"] == estimate_tokens(PROMPT) == got["wholeUsage"]["prompt_tokens"]
    assert got["types"][0] == "response.created" and got["types"][-1] == "response.completed"
    assert got["model"]["id"] == MODEL and got["model"]["owned_by"] == "perplexity"
    assert got["missing"] == {"name": "NotFoundError", "status": 404, "code": "model_not_found"}
