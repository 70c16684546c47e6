"""What a client of the ask service sends: the warm-up, the ask, the catalog; models; cookies.txt."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plabs_proto.errors import LocalProtocolError, RemoteProtocolError
from plabs_proto.events import ThreadIdentity
from plabs_proto.perplexity.request import (
    API_VERSION,
    DEFAULT_MODEL,
    MODELS,
    SESSION_COOKIE,
    Cookie,
    Model,
    Request,
    ask_body,
    ask_headers,
    ask_request,
    catalog_request,
    cookie_header,
    parse_catalog,
    read_cookies_txt,
    warmup_request,
)


def test_the_warmup_and_the_catalog_requests() -> None:
    assert warmup_request() == Request(
        method="GET",
        url="https://www.perplexity.ai/api/auth/session",
        headers=(("Accept", "application/json"), ("Referer", "https://www.perplexity.ai/")),
    )
    assert warmup_request("http://127.0.0.1:8765/").url == "http://127.0.0.1:8765/api/auth/session"
    assert catalog_request().url == "https://www.perplexity.ai/rest/models/config/v2"
    with pytest.raises(LocalProtocolError, match="expected the server as an http:// or https:// URL, got 'ftp://x'"):
        warmup_request("ftp://x")


def test_the_ask_as_the_web_app_sends_it() -> None:
    request = ask_request("Why is the sky blue?", rng=random.Random(7))
    assert request.method == "POST"
    assert request.url == "https://www.perplexity.ai/rest/sse/perplexity_ask"
    assert request.headers == (
        ("Content-Type", "application/json"),
        ("Accept", "text/event-stream"),
        ("Origin", "https://www.perplexity.ai"),
        ("Referer", "https://www.perplexity.ai/"),
        ("x-app-apiclient", "default"),
        ("x-app-apiversion", "2.18"),
    )
    # the body byte for byte (the UUIDs are version 4, from rng.getrandbits(128): Random(7) gives these)
    assert request.body == (
        b'{"query_str":"Why is the sky blue?","params":{"version":"2.18","mode":"copilot",'
        b'"model_preference":"turbo","frontend_uuid":"6513270e-269e-4d37-b2a7-4de452e6b438",'
        b'"frontend_context_uuid":"d23f0824-128b-4f33-8c5c-7fd0a6a3a450",'
        b'"language":"en-US","timezone":"UTC","sources":["web"],"search_focus":"internet","is_incognito":true,'
        b'"use_schematized_api":true,"send_back_text_in_streaming_api":false,"prompt_source":"user",'
        b'"query_source":"home","attachments":[]}}'
    )
    params = json.loads(request.body)["params"]
    for key in ("frontend_uuid", "frontend_context_uuid"):
        value = params[key]
        assert len(value) == 36 and value[14] == "4" and value[19] in "89ab"
    assert ask_request("Why is the sky blue?", rng=random.Random(7)) == request  # pure: same rng, same bytes
    assert ask_request("Why is the sky blue?", rng=random.Random(8)).body != request.body


def test_a_follow_up_in_the_same_thread() -> None:
    thread = ThreadIdentity(backend_uuid="b-1", read_write_token="rw-1", thread_url_slug="why-is-the-sky-blue-x1")
    request = ask_request("And at sunset?", rng=random.Random(1), follow_up=thread, model="pplx_pro")
    params = json.loads(request.body)["params"]
    assert (params["last_backend_uuid"], params["read_write_token"], params["query_source"]) == (
        "b-1", "rw-1", "followup")
    assert params["model_preference"] == "pplx_pro"
    assert dict(request.headers)["Referer"] == "https://www.perplexity.ai/search/why-is-the-sky-blue-x1"
    without_token = ask_body("q", rng=random.Random(1), follow_up=ThreadIdentity(backend_uuid="b-2"))["params"]
    assert without_token["last_backend_uuid"] == "b-2" and "read_write_token" not in without_token
    first = ask_body("q", rng=random.Random(1))["params"]
    assert "last_backend_uuid" not in first and first["query_source"] == "home"


def test_the_options() -> None:
    body = ask_body("q", rng=random.Random(0), mode="concise", language="de-DE", timezone="Europe/Berlin",
                    sources=["web", "scholar"], search_focus="writing", incognito=False, schematized=False,
                    attachments=["https://files.example/a.pdf"])
    params = body["params"]
    assert (params["mode"], params["language"], params["timezone"], params["sources"], params["search_focus"],
            params["is_incognito"], params["use_schematized_api"], params["attachments"]) == (
        "concise", "de-DE", "Europe/Berlin", ["web", "scholar"], "writing", False, False,
        ["https://files.example/a.pdf"])
    assert ask_body("q", rng=random.Random(0), model="")["params"]["model_preference"] == DEFAULT_MODEL
    headers = ask_headers("http://127.0.0.1:1", thread_url_slug="s")
    assert ("Origin", "http://127.0.0.1:1") in headers and ("Referer", "http://127.0.0.1:1/search/s") in headers


@pytest.mark.parametrize(
    ("query", "options", "message"),
    [
        ("", {}, "expected a query with some text, got only whitespace"),
        (" \n", {}, "expected a query with some text"),
        (b"q", {}, "expected the query to be a str, got bytes"),
        ("a\udcff", {}, "expected the query that can be sent as UTF-8, got a lone surrogate at position 1"),
        ("q", {"mode": "pro"}, "expected the mode to be one of copilot, concise, got 'pro'"),
        ("q", {"model": 5}, "expected the model to be a str, got int"),
        ("q", {"sources": [None]}, "expected a source to be a str, got NoneType"),
        ("q", {"follow_up": {"backend_uuid": "x"}}, "expected follow_up to be a ThreadIdentity with a backend_uuid"),
        ("q", {"follow_up": ThreadIdentity(backend_uuid="")}, "expected follow_up to be a ThreadIdentity"),
    ],
)
def test_what_the_caller_gets_wrong(query: Any, options: dict[str, Any], message: str) -> None:
    with pytest.raises(LocalProtocolError) as caught:
        ask_body(query, rng=random.Random(0), **options)
    assert message in str(caught.value)


def test_the_query_length_limit() -> None:
    assert ask_body("x" * 100_000, rng=random.Random(0))["query_str"] == "x" * 100_000
    with pytest.raises(LocalProtocolError, match="expected a query of at most 100000 characters, got 100001"):
        ask_body("x" * 100_001, rng=random.Random(0))


def test_the_built_in_models() -> None:
    assert MODELS[0] == Model(id="turbo", label="Best", description="The default model, anonymous use included",
                              kind="search", signed_in=False)
    assert [model.id for model in MODELS if not model.signed_in] == [DEFAULT_MODEL] == ["turbo"]
    ids = [model.id for model in MODELS]
    assert len(set(ids)) == len(ids)
    assert {"pplx_pro", "experimental", "pplx_reasoning", "pplx_alpha", "r1", "gpt5", "claude45sonnet"} <= set(ids)
    assert API_VERSION == "2.18"


# -- the catalog ---------------------------------------------------------------------------------------------

# The shape of jacob-bd/perplexity-web-mcp scripts/reference_model_config.json (config_schema v1), cut down
CATALOG = {
    "config_schema": "v1",
    "models": {
        "turbo": {"label": "Best", "description": "Adapts to each query", "mode": "search", "provider": "PERPLEXITY"},
        "pplx_pro": {"label": "Best", "description": "Automatically selects the best model based on the query",
                     "mode": "search", "provider": None},
        "gpt5_thinking": {"label": "GPT-5 Thinking", "description": "OpenAI's latest model with thinking",
                          "mode": "search", "provider": "OPENAI"},
        "pplx_alpha": {"label": "Research", "description": None, "mode": "research"},
    },
    "config": [{"label": "Sonar 2", "non_reasoning_model": "experimental", "subscription_tier": "pro"}],
    "default_models": {"search": "turbo", "research": "pplx_alpha"},
}


def test_the_catalog() -> None:
    assert parse_catalog(CATALOG) == (
        Model(id="turbo", label="Best", description="Adapts to each query", kind="search", signed_in=False),
        Model(id="pplx_pro", label="Best", description="Automatically selects the best model based on the query",
              kind="search", signed_in=True),
        Model(id="gpt5_thinking", label="GPT-5 Thinking", description="OpenAI's latest model with thinking",
              kind="search", signed_in=True),
        Model(id="pplx_alpha", label="Research", description="", kind="research", signed_in=True),
    )
    listed = {"models": [{"id": "a", "label": "A"}, {"model": "b", "mode": 3}, {"model_preference": "turbo"}]}
    assert parse_catalog(listed) == (
        Model(id="a", label="A"), Model(id="b"), Model(id="turbo", signed_in=False))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "expected a JSON object in the model catalog, got list"),
        ({}, "expected 'models' to be an object or a list in the model catalog, got NoneType"),
        ({"models": [1]}, "expected each model to be a JSON object in the model catalog, got int"),
        ({"models": [{"label": "x"}]}, "expected each model's id to be a non-empty string in the model catalog, got NoneType"),
        ({"models": {"": {}}}, "expected each model's id to be a non-empty string in the model catalog, got ''"),
        ({"models": {"a": []}}, "expected model 'a' to be a JSON object in the model catalog, got list"),
    ],
)
def test_a_malformed_catalog(data: Any, message: str) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        parse_catalog(data)
    assert str(caught.value) == message


def test_the_catalog_limit() -> None:
    assert len(parse_catalog({"models": {str(n): {} for n in range(5)}}, max_models=5)) == 5
    with pytest.raises(RemoteProtocolError, match="expected at most 5 models in the catalog, got 6"):
        parse_catalog({"models": {str(n): {} for n in range(6)}}, max_models=5)


json_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=6)),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.sampled_from(["models", "id", "label", "mode", "default_models",
                                                                "search", "model", "turbo"]), children, max_size=4)),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(data=json_value)
def test_a_hostile_catalog_meets_only_remote_protocol_errors(data: Any) -> None:
    try:
        for model in parse_catalog(data):
            assert isinstance(model.id, str) and isinstance(model.label, str) and isinstance(model.kind, str)
    except RemoteProtocolError as exc:
        assert str(exc).startswith("expected ")


# -- cookies.txt ---------------------------------------------------------------------------------------------

# A browser export as the "Get cookies.txt" extensions and curl write it (the values are made up)
COOKIES_TXT = (
    "# Netscape HTTP Cookie File\n"
    "# This is a generated file! Do not edit.\n"
    "\n"
    "#HttpOnly_.perplexity.ai\tTRUE\t/\tTRUE\t1800000000\t__Secure-next-auth.session-token\tsecret-session\n"
    ".perplexity.ai\tTRUE\t/\tTRUE\t1700000000\t__cf_bm\texpired-bm\n"
    "www.perplexity.ai\tFALSE\t/\tFALSE\t0\tnext-auth.csrf-token\tcsrf%7Cvalue\r\n"
    ".example.com\tTRUE\t/\tFALSE\t0\tother\tnot-ours\n"
    "notperplexity.ai\tFALSE\t/\tFALSE\t0\tlook\talike\n"
    "perplexity.ai\tFALSE\t/\tFALSE\t0\tempty\n"
)


def test_cookies_txt() -> None:
    cookies = read_cookies_txt(COOKIES_TXT)
    assert [(c.name, c.value, c.domain, c.secure, c.expires) for c in cookies] == [
        (SESSION_COOKIE, "secret-session", ".perplexity.ai", True, 1800000000),
        ("__cf_bm", "expired-bm", ".perplexity.ai", True, 1700000000),
        ("next-auth.csrf-token", "csrf%7Cvalue", "www.perplexity.ai", False, 0),
        ("empty", "", "perplexity.ai", False, 0),
    ]
    fresh = read_cookies_txt(COOKIES_TXT, now=1750000000)
    assert [c.name for c in fresh] == [SESSION_COOKIE, "next-auth.csrf-token", "empty"]
    assert cookie_header(fresh) == (
        "__Secure-next-auth.session-token=secret-session; next-auth.csrf-token=csrf%7Cvalue; empty=")
    assert "secret-session" not in repr(cookies[0])
    assert read_cookies_txt("") == ()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (".perplexity.ai\tTRUE\t/\tTRUE\t0\tname", None),  # six fields: an empty value, taken
        (".perplexity.ai TRUE / TRUE 0 name secret-value",
         "cookies.txt line 2: expected 7 tab-separated fields (domain, include-subdomains, path, secure, expires, "
         "name, value), got 1"),
        (".perplexity.ai\tYES\t/\tTRUE\t0\tname\tsecret-value",
         "cookies.txt line 2: expected TRUE or FALSE in the include-subdomains and secure fields, got 'YES' and 'TRUE'"),
        (".perplexity.ai\tTRUE\t/\tTRUE\tsoon\tname\tsecret-value",
         "cookies.txt line 2: expected the expiry as a whole number of seconds (at most 18 digits), got 'soon'"),
        (".perplexity.ai\tTRUE\t/\tTRUE\t0\t\tsecret-value",
         "cookies.txt line 2: expected a domain and a cookie name, got an empty one"),
        (".perplexity.ai\tTRUE\t/\tTRUE\t0\tname\tsecret-value\textra",
         "cookies.txt line 2: expected 7 tab-separated fields (domain, include-subdomains, path, secure, expires, "
         "name, value), got 8"),
    ],
)
def test_a_malformed_cookies_txt_line_never_shows_a_value(line: str, message: str | None) -> None:
    text = "# Netscape HTTP Cookie File\n" + line + "\n"
    if message is None:
        assert read_cookies_txt(text) == (Cookie(name="name", value="", domain=".perplexity.ai", secure=True),)
        return
    with pytest.raises(LocalProtocolError) as caught:
        read_cookies_txt(text)
    assert str(caught.value) == message
    assert "secret" not in str(caught.value)


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet="\t\n\r #.aTRUEFALS0123456789_-=perplexity", max_size=200))
def test_any_cookies_txt_text_meets_only_local_protocol_errors(text: str) -> None:
    try:
        for cookie in read_cookies_txt(text):
            assert cookie.domain.lower().lstrip(".").endswith("perplexity.ai")
    except LocalProtocolError as exc:
        assert str(exc).startswith("cookies.txt line ")
