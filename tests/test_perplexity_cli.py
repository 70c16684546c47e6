"""``plabs ask --service perplexity`` and ``plabs models --service ...``, in-process against the emulator."""

from __future__ import annotations

import json
from typing import Any

import pytest
from plabs_proto.backends.programs.cli import main
from plabs_proto.backends.programs.emulator_perplexity import WEB_RESULTS

from plabs_proto.perplexity.request import MODELS

ANSWER = "The answer, in pieces [1]."


def test_ask_prints_the_answer_and_its_citations(perplexity_emulator_factory: Any,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    url = perplexity_emulator_factory(answer=ANSWER, shape="blocks").url
    assert main(["ask", "--service", "perplexity", "--server", url, "--backend", "sync", "What", "now?"]) == 0
    out = capsys.readouterr()
    citations = "".join(f"[{n}] {r['name']} <{r['url']}>\n" for n, r in enumerate(WEB_RESULTS, 1))
    assert out.out == ANSWER + "\n\nCitations:\n" + citations
    assert out.err == ""


@pytest.mark.parametrize("backend", ["asyncio", "trio", "curl"])
def test_ask_json_ends_with_finished(perplexity_emulator_factory: Any, capsys: pytest.CaptureFixture[str],
                                     backend: str) -> None:
    if backend == "curl":
        pytest.importorskip("curl_cffi")
    url = perplexity_emulator_factory(answer=ANSWER).url
    assert main(["ask", "--service", "perplexity", "--server", url, "--backend", backend, "--json", "Hi"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert "".join(e["text"] for e in events if e["event"] == "text") == ANSWER
    assert events[-1]["event"] == "finished" and events[-1]["text"] == ANSWER and events[-1]["model"] == "turbo"


def test_ask_with_the_in_process_emulator(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ask", "--service", "perplexity", "--emulator", "--backend", "sync", "Hello"]) == 0
    assert capsys.readouterr().out.startswith("This is the Perplexity emulator's answer to: Hello")


def test_an_unknown_model_is_sent_after_a_warning(perplexity_emulator_factory: Any,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    url = perplexity_emulator_factory(answer=ANSWER).url
    assert main(["ask", "--service", "perplexity", "--server", url, "--backend", "sync", "--model", "nope", "Hi"]) == 0
    out = capsys.readouterr()
    assert "'nope' is not a known model (turbo, pplx_pro" in out.err and out.out.startswith(ANSWER)


def test_a_refusal_is_one_error_line(perplexity_emulator_factory: Any, capsys: pytest.CaptureFixture[str]) -> None:
    url = perplexity_emulator_factory(rate_limit="ask").url
    assert main(["ask", "--service", "perplexity", "--server", url, "--backend", "sync", "Hi"]) != 0
    err = capsys.readouterr().err
    assert "plabs: error:" in err and "429" in err


def test_models_of_each_service(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--service", "perplexity"]) == 0
    assert capsys.readouterr().out.splitlines() == [model.id for model in MODELS]
    assert main(["models"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "r1-1776"


@pytest.mark.parametrize("backend", ["sync", "asyncio"])
def test_trace_then_replay_prints_the_same(perplexity_emulator_factory: Any, capsys: pytest.CaptureFixture[str],
                                           tmp_path: Any, backend: str) -> None:
    url = perplexity_emulator_factory(answer=ANSWER, shape="workflow").url
    trace = str(tmp_path / "t.jsonl")
    assert main(["ask", "--service", "perplexity", "--server", url, "--backend", backend, "--trace", trace, "Hi"]) == 0
    asked = capsys.readouterr()
    assert asked.out.startswith(ANSWER)
    with open(trace, encoding="utf-8") as handle:
        header = json.loads(handle.readline())
    assert header["service"] == "perplexity" and header["model"] == "turbo" and "cookies" not in header
    assert main(["replay", trace]) == 0
    assert capsys.readouterr() == asked


def test_a_redirect_names_the_current_endpoint_only_on_labs(perplexity_emulator_factory: Any,
                                                            emulator_factory: Any,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Labs moved: its redirect's one error line points at --service perplexity; the ask service's does not."""
    hint = "Perplexity Labs was retired in 2025: --service perplexity reaches the current endpoint"
    labs = emulator_factory(redirect="polling", redirect_to="http://127.0.0.1:9/moved/").url
    assert main(["ask", "--server", labs, "--backend", "sync", "--transport", "polling", "Hi"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("plabs: error: expected HTTP 200 for the Engine.IO handshake (polling GET), got HTTP 302")
    assert err.endswith(f"; {hint} (POST /rest/sse/perplexity_ask)\n") and err.count("\n") == 1
    assert main(["ask", "--server", labs, "--backend", "sync", "--transport", "polling", "--json", "Hi"]) == 3
    out = capsys.readouterr()
    assert hint in json.loads(out.out)["message"] and hint in out.err
    ask = perplexity_emulator_factory(redirect="ask").url
    assert main(["ask", "--service", "perplexity", "--server", ask, "--backend", "sync", "Hi"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("plabs: error: expected HTTP 200 for the ask") and "302" in err and hint not in err


def test_the_live_site_is_asked_over_curl_when_it_is_installed() -> None:
    """curl_cffi speaks with Chrome's TLS and HTTP/2 fingerprint: the default for the live site (it keeps
    no byte trace, so --trace falls back to asyncio); a server of your own, or the emulator, gets asyncio."""
    from plabs_proto.backends.programs.cli import choose_backend

    assert choose_backend(None, live=True, traced=False, impersonate=None) == "curl"  # curl_cffi is a dev extra
    assert choose_backend(None, live=True, traced=True, impersonate=None) == "asyncio"
    assert choose_backend(None, live=False, traced=False, impersonate=None) == "asyncio"
    assert choose_backend(None, live=False, traced=False, impersonate="chrome") == "curl"
    assert choose_backend("trio", live=True, traced=False, impersonate=None) == "trio"
