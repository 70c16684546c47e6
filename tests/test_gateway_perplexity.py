"""``plabs serve --service perplexity``: the gateway in front of the SSE ask endpoint, end to end.

The gateway runs as a subprocess in front of the Perplexity emulator and is driven by the
``openai`` package.  The emulator answers ``default_answer(query_str)``, so an answer shows
the question the gateway sent: the last user message alone on a follow-up in the thread (the
emulator refuses a follow-up whose ``last_backend_uuid`` names no answer of its own), the whole
history folded into one question (:func:`fold_history`) on a new thread.  The thread cache's
limits are tested at their edges here, in process, without a clock.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from conftest import NodeFactory, PerplexityEmulatorFactory
from plabs_proto.backends.programs.emulator_perplexity import WEB_RESULTS, default_answer
from plabs_proto.backends.programs.gateway import (
    LABS_MODELS,
    PERPLEXITY_MODELS,
    GatewayConfig,
    GatewayError,
    ThreadCache,
    create_app,
    fold_history,
    thread_key,
)
from test_gateway import (
    Gateway,
    established_to,
    port_of,
    start_gateway,
    stop_gateway,
    wait_for,
)

from plabs_proto.perplexity.request import DEFAULT_MODEL, MODELS, parse_catalog

PROMPT = "What is sans-IO?"
FOLLOW_UP = "Why does it help testing?"
CITATIONS = [{"url": result["url"], "title": result["name"]} for result in WEB_RESULTS]

Messages = list[dict[str, str]]


@pytest.fixture(scope="module")
def gateway(perplexity_emulator_factory: PerplexityEmulatorFactory) -> Iterator[Gateway]:
    emulator = perplexity_emulator_factory(frame_delay=0.001)
    started = start_gateway("--service", "perplexity", "--server", emulator.url)
    yield started
    status, err = stop_gateway(started)
    assert status == 0 and "Traceback" not in err, err


def ask(client: openai.OpenAI, messages: Messages, *, stream: bool = False, model: str = DEFAULT_MODEL) -> str:
    """The answer's text, streamed (joined from the deltas) or not."""
    if not stream:
        whole = client.chat.completions.create(model=model, messages=messages)
        assert whole.choices[0].message.content is not None
        return whole.choices[0].message.content
    chunks = list(client.chat.completions.create(model=model, messages=messages, stream=True))
    assert chunks[-1].choices[0].finish_reason == "stop"
    return "".join(chunk.choices[0].delta.content or "" for chunk in chunks)


def turn(messages: Messages, answer: str, question: str) -> Messages:
    """The conversation's next request: the answer given, then the next question."""
    return [*messages, {"role": "assistant", "content": answer}, {"role": "user", "content": question}]


# -- models and single answers ------------------------------------------------------------------------


def test_the_models_are_the_services_own(gateway: Gateway) -> None:
    with gateway.client() as client:
        listed = list(client.models.list())
        card = client.models.retrieve("pplx_pro")
        with pytest.raises(openai.NotFoundError) as caught:
            client.models.retrieve("sonar")  # a Labs model: not served here
    ids = [model.id for model in listed]
    assert ids[0] == DEFAULT_MODEL and sorted(ids) == sorted(model.id for model in MODELS)
    assert all(model.owned_by == "perplexity" and model.created == 1759276800 for model in listed)
    assert (card.id, card.object, card.owned_by, card.created) == ("pplx_pro", "model", "perplexity", 1759276800)
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "model_not_found"
    assert "turbo" in caught.value.message


def test_chat_streamed_and_not(gateway: Gateway) -> None:
    messages: Messages = [{"role": "user", "content": PROMPT}]
    with gateway.client() as client:
        whole = client.chat.completions.create(model="turbo", messages=messages)
        chunks = list(client.chat.completions.create(
            model="turbo", messages=messages, stream=True, stream_options={"include_usage": True},
        ))
    assert whole.choices[0].message.content == default_answer(PROMPT)
    assert whole.model_extra is not None and whole.model_extra["citations"] == CITATIONS
    *answer, usage = chunks
    assert "".join(chunk.choices[0].delta.content or "" for chunk in answer) == default_answer(PROMPT)
    assert answer[-1].model_extra is not None and answer[-1].model_extra["citations"] == CITATIONS
    assert usage.choices == [] and usage.usage is not None and usage.usage.total_tokens > 0


# -- modes and the service's own catalog ---------------------------------------------------------------


def test_a_request_names_its_mode(gateway: Gateway) -> None:
    """Without a mode the web app's (copilot) is asked; ``mode`` in the request (the openai package's
    ``extra_body``) asks another, on both APIs, streamed or not (the emulator's answer names it)."""
    messages: Messages = [{"role": "user", "content": PROMPT}]
    concise = {"mode": "concise"}
    with gateway.client() as client:
        plain = ask(client, messages)
        whole = client.chat.completions.create(model="turbo", messages=messages, extra_body=concise)
        chunks = list(client.chat.completions.create(model="turbo", messages=messages, stream=True,
                                                     extra_body=concise))
        response = client.responses.create(model="turbo", input=PROMPT, extra_body=concise)
        copilot = client.responses.create(model="turbo", input=PROMPT, extra_body={"mode": "copilot"})
    assert plain == default_answer(PROMPT) == copilot.output_text
    assert whole.choices[0].message.content == default_answer(PROMPT, "concise") != plain
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == default_answer(PROMPT, "concise")
    assert response.output_text == default_answer(PROMPT, "concise")


def test_the_gateways_mode_and_the_live_catalog(perplexity_server: Any, own_gateways: list[Gateway],
                                                request: pytest.FixtureRequest) -> None:
    """``--live-models``: the models served are the server's own catalog (the anonymous one first),
    on the emulator and on the Node.js server, whose catalogs differ; a built-in id the catalog lacks
    is 404.  ``--mode concise``: asked when a request names no mode (the emulator shows it)."""
    url = perplexity_server()
    catalog = parse_catalog(httpx.get(url + "/rest/models/config/v2").json())
    expected = [m.id for m in catalog if not m.signed_in] + [m.id for m in catalog if m.signed_in]
    assert "r1" not in expected and DEFAULT_MODEL in expected
    gateway = start_gateway("--service", "perplexity", "--server", url, "--live-models", "--mode", "concise")
    own_gateways.append(gateway)
    messages: Messages = [{"role": "user", "content": PROMPT}]
    with gateway.client() as client:
        assert [model.id for model in client.models.list()] == expected
        assert client.models.retrieve(expected[-1]).owned_by == "perplexity"
        with pytest.raises(openai.NotFoundError) as caught:
            client.chat.completions.create(model="r1", messages=messages)  # built in, not in this catalog
        answer = ask(client, messages)
        asked = client.chat.completions.create(model="turbo", messages=messages, extra_body={"mode": "copilot"})
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "model_not_found"
    if request.node.callspec.params["perplexity_server"] == "python":  # (the Node.js server's answer names no mode)
        assert answer == default_answer(PROMPT, "concise")
        assert asked.choices[0].message.content == default_answer(PROMPT)
    status, err = stop_gateway(gateway)
    assert status == 0 and "Traceback" not in err, err


def test_a_catalog_the_service_refuses(perplexity_emulator_factory: PerplexityEmulatorFactory,
                                       own_gateways: list[Gateway]) -> None:
    """A catalog the service will not give: the gateway still starts (and says so on stderr); what
    needs the models is answered 502 ``catalog_unavailable`` with the service's words, and asks
    again each time."""
    emulator = perplexity_emulator_factory(rate_limit="catalog")
    gateway = start_gateway("--service", "perplexity", "--server", emulator.url, "--live-models")
    own_gateways.append(gateway)
    for _ in range(2):
        listed = httpx.get(gateway.base_url + "/models", timeout=10)
        chat = httpx.post(gateway.base_url + "/chat/completions", timeout=10,
                          json={"model": "turbo", "messages": [{"role": "user", "content": PROMPT}]})
        for response in (listed, chat):
            assert response.status_code == 502, response.text
            error = response.json()["error"]
            assert (error["type"], error["code"]) == ("api_error", "catalog_unavailable")
            assert error["message"].startswith("expected Perplexity's model catalog (live_models), got an error: ")
            assert "429" in error["message"] or "rate" in error["message"].lower()
    status, err = stop_gateway(gateway)
    assert status == 0 and "Traceback" not in err, err
    assert "expected Perplexity's model catalog (live_models), got an error" in err


# -- conversations ------------------------------------------------------------------------------------


def test_a_conversation_through_the_gateway_continues_its_thread(gateway: Gateway) -> None:
    """Each later turn is a follow-up: only its question goes out, in the thread of the answer before."""
    first: Messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}]
    with gateway.client() as client:
        answer = ask(client, first)
        assert answer == default_answer(fold_history(first))  # a new thread: the history folded in
        second = turn(first, answer, FOLLOW_UP)
        answer2 = ask(client, second, stream=True)
        assert answer2 == default_answer(FOLLOW_UP)
        third = turn(second, answer2, "And the third turn?")
        assert ask(client, third, model="pplx_pro") == default_answer("And the third turn?")


def test_a_history_not_from_this_gateway_starts_a_new_thread(gateway: Gateway) -> None:
    first: Messages = [{"role": "user", "content": "Where does the history come from?"}]
    with gateway.client() as client:
        answer = ask(client, first)
        for history in (
            turn(first, "An answer this gateway never gave.", FOLLOW_UP),
            turn([{"role": "user", "content": "Another question"}], answer, FOLLOW_UP),
        ):
            assert ask(client, history) == default_answer(fold_history(history))
        # the thread of the answer given is still there for the conversation that holds it
        assert ask(client, turn(first, answer, FOLLOW_UP), stream=True) == default_answer(FOLLOW_UP)


def test_threads_are_kept_per_api_key(gateway: Gateway) -> None:
    first: Messages = [{"role": "user", "content": "Whose thread is this?"}]
    with gateway.client(api_key="sk-first") as client:
        answer = ask(client, first)
    history = turn(first, answer, FOLLOW_UP)
    with gateway.client(api_key="sk-second") as other:
        assert ask(other, history) == default_answer(fold_history(history))
    with gateway.client(api_key="sk-first") as client:
        assert ask(client, history) == default_answer(FOLLOW_UP)


def test_the_responses_api_continues_a_thread_too(gateway: Gateway) -> None:
    with gateway.client() as client:
        first = client.responses.create(model="turbo", input="A question for the Responses API")
        assert first.output_text == default_answer("A question for the Responses API")
        second = client.responses.create(model="turbo", input=[
            {"role": "user", "content": "A question for the Responses API"},
            {"role": "assistant", "content": first.output_text},
            {"role": "user", "content": FOLLOW_UP},
        ])
    assert second.output_text == default_answer(FOLLOW_UP)


def test_the_thread_limit_at_its_edge_end_to_end(own_gateways: list[Gateway]) -> None:
    """With --max-threads 2 (and the emulator started in-process): two conversations both continue;
    a third pushes the oldest out, whose next turn then starts a new thread."""
    gateway = start_gateway("--service", "perplexity", "--emulator", "--max-threads", "2")
    own_gateways.append(gateway)
    with gateway.client() as client:
        a: Messages = [{"role": "user", "content": "Conversation A"}]
        b: Messages = [{"role": "user", "content": "Conversation B"}]
        a = turn(a, ask(client, a), "A, again")
        b = turn(b, ask(client, b), "B, again")
        assert httpx.get(gateway.root + "/health").json()["threads"] == 2
        answer_a, answer_b = ask(client, a), ask(client, b)  # two kept: both continue
        assert (answer_a, answer_b) == (default_answer("A, again"), default_answer("B, again"))
        c: Messages = [{"role": "user", "content": "Conversation C"}]
        ask(client, c)  # the third: A's thread (the oldest) goes
        assert httpx.get(gateway.root + "/health").json()["threads"] == 2
        a, b = turn(a, answer_a, "A, third"), turn(b, answer_b, "B, third")
        assert ask(client, b) == default_answer("B, third")
        assert ask(client, a) == default_answer(fold_history(a))
    status, err = stop_gateway(gateway)
    assert status == 0 and "Traceback" not in err, err


@pytest.mark.parametrize(("backend", "needs"), [("trio", "hypercorn"), ("curl", "curl_cffi")])
def test_a_follow_up_on_the_other_backends(perplexity_emulator_factory: PerplexityEmulatorFactory,
                                          own_gateways: list[Gateway], backend: str, needs: str) -> None:
    """Under trio a kept session is held alive by a task of the gateway's; curl keeps its own."""
    pytest.importorskip(needs)
    emulator = perplexity_emulator_factory(frame_delay=0.001)
    gateway = start_gateway("--service", "perplexity", "--server", emulator.url, "--backend", backend)
    own_gateways.append(gateway)
    first: Messages = [{"role": "user", "content": f"On {backend}"}]
    with gateway.client() as client:
        answer = ask(client, first, stream=True)
        assert answer == default_answer(f"On {backend}")
        assert ask(client, turn(first, answer, FOLLOW_UP)) == default_answer(FOLLOW_UP)
    status, err = stop_gateway(gateway)
    assert status == 0 and "Traceback" not in err, err


def test_a_follow_up_after_the_server_let_the_kept_connection_go(
    perplexity_node_factory: NodeFactory, own_gateways: list[Gateway]
) -> None:
    """In front of perplexity.js (the independent server, which checks follow-ups too and closes a
    connection idle for 5 s): a kept session whose connection the server closed asks on a new one."""
    node = perplexity_node_factory()
    gateway = start_gateway("--service", "perplexity", "--server", node.url)
    own_gateways.append(gateway)
    first: Messages = [{"role": "user", "content": "q1"}]
    with gateway.client() as client:
        answer = ask(client, first)
        assert answer == 'Node\'s answer to "q1" [1]'
        wait_for(lambda: established_to(port_of(node.url)) == 0, 10)
        assert ask(client, turn(first, answer, "q2"), stream=True) == 'Node\'s answer to "q2" [1]'
    status, err = stop_gateway(gateway)
    assert status == 0 and "Traceback" not in err, err


# -- the thread cache, in process ---------------------------------------------------------------------


def test_the_thread_cache_size_at_its_edge() -> None:
    cache = ThreadCache(2, 60.0)
    assert cache.put("a", "session a", 0.0) == []
    assert cache.put("b", "session b", 1.0) == []  # two: at the limit, both kept
    assert len(cache) == 2
    assert cache.put("c", "session c", 2.0) == ["session a"]  # one past it: the oldest goes
    assert cache.take("a", 2.0) is None
    assert (cache.take("b", 2.0), cache.take("c", 2.0)) == ("session b", "session c")
    assert len(cache) == 0 and cache.take("b", 2.0) is None  # taken out: one turn continues a thread once
    nothing = ThreadCache(0, 60.0)
    assert nothing.put("a", "session a", 0.0) == ["session a"] and len(nothing) == 0
    again = ThreadCache(1, 60.0)
    again.put("a", "first", 0.0)
    assert again.put("a", "second", 1.0) == ["first"] and again.take("a", 1.0) == "second"


def test_the_thread_cache_age_at_its_edge() -> None:
    cache = ThreadCache(8, 10.0)
    cache.put("a", "session a", 100.0)
    cache.put("b", "session b", 101.0)
    assert cache.expire(110.0) == []
    assert cache.take("a", 110.0) == "session a"  # exactly 10 s old: taken
    cache.put("a", "session a", 110.0)
    assert cache.take("b", 111.0 + 1e-6) is None  # past the age: refused, left for expire
    assert cache.expire(111.0) == []  # exactly 10 s old: kept
    assert cache.expire(111.0 + 1e-6) == ["session b"]  # past it: out
    assert cache.drain() == ["session a"] and len(cache) == 0


def test_thread_keys_tell_callers_and_histories_apart() -> None:
    history = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    key = thread_key("Bearer k", history)
    assert key == thread_key("Bearer k", [dict(message) for message in history]) and len(key) == 64
    assert key != thread_key("Bearer other", history)
    assert key != thread_key("Bearer k", [history[0], {"role": "assistant", "content": "a "}])
    assert key != thread_key("Bearer k", [{"role": "assistant", "content": "q"}, history[1]])


# -- configuration ------------------------------------------------------------------------------------


def test_the_service_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    config = GatewayConfig.from_env({"PLABS_SERVICE": "perplexity", "PLABS_MAX_THREADS": "3",
                                     "PLABS_THREAD_AGE": "1.5"})
    assert (config.service, config.max_threads, config.thread_age) == ("perplexity", 3, 1.5)
    assert config.cards == PERPLEXITY_MODELS and GatewayConfig().cards == LABS_MODELS
    monkeypatch.setenv("PLABS_SERVICE", "perplexity")
    app: Any = create_app()
    assert app.state.gateway.config.service == "perplexity" and app.state.gateway.threads is not None
    monkeypatch.delenv("PLABS_SERVICE")
    assert create_app().state.gateway.threads is None  # labs: no threads kept
    with pytest.raises(GatewayError, match="expected PLABS_MAX_THREADS as a whole number, got 'many'"):
        GatewayConfig.from_env({"PLABS_MAX_THREADS": "many"})


@pytest.mark.parametrize(("settings", "message"), [
    ({"service": "pplx"}, "expected the service to be one of labs, perplexity, got 'pplx'"),
    ({"service": "labs", "live_models": True},
     "expected live_models on the perplexity service only (Labs has no catalog to ask for), got service 'labs'"),
    ({"live_models": True, "models": PERPLEXITY_MODELS[:1]}, "expected either models or live_models, got both"),
    ({"mode": "fast"}, "expected the mode to be one of copilot, concise, got 'fast'"),
    ({"service": "labs", "mode": "concise"}, "expected no mode on service 'labs'"),
    ({"max_threads": -1}, "expected max_sessions, warm and max_threads >= 0, got 0, 0 and -1"),
    ({"thread_age": 0.0}, "expected thread_age as a number of seconds > 0, got 0.0"),
])
def test_bad_settings_are_refused(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(GatewayError, match=re.escape(message)):
        create_app(**{"service": "perplexity", **settings})
