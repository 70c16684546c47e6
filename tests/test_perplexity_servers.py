"""The two test servers of Perplexity's SSE ask endpoint, checked against protocol.md §10.

The Python emulator (``plabs_proto.backends.programs.emulator_perplexity``) and the Node.js
server (``tests/node_server/perplexity.js``) were written apart from each other; each test here
runs against both (conftest's ``perplexity_server``) with a plain HTTP client (httpx), for every answer
shape and failure mode: the frames parse as §10 says, the answer streamed and the COMPLETED
frame's answer equal the configured text, follow-ups stay in their thread.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from plabs_proto.backends.programs.cli import main
from plabs_proto.backends.programs.emulator_perplexity import (
    CATALOG,
    PerplexityEmulator,
    PerplexityEmulatorConfig,
    PerplexityEmulatorThread,
)
from servers import NodeServerError, read_until, start_perplexity_node

ASK = "/rest/sse/perplexity_ask"
SESSION = "/api/auth/session"
ANSWER = "Café, 東京 and a rocket 🚀: the answer [1] in pieces.\nSecond line."
SHAPES = ("steps", "blocks", "workflow")
#: What every message frame repeats (§10.3).
COMMON = ("backend_uuid", "read_write_token", "thread_url_slug", "context_uuid", "display_model", "status",
          "final", "final_sse_message", "text_completed")
SCRIPT = Path(sys.executable).with_name("plabs")
PLABS = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "plabs_proto"]

Serve = Callable[..., str]


# -- the few lines of SSE and JSON Patch a test needs ---------------------------------------------


def sse(body: bytes) -> list[tuple[str, Any]]:
    """(event, parsed data) of each SSE event in ``body`` (the specification's rules, briefly)."""
    events: list[tuple[str, Any]] = []
    name, data = "message", []
    for line in re.split(r"\r\n|\n", body.decode("utf-8")):
        if line == "":
            if data:
                events.append((name, json.loads("\n".join(data))))
            name, data = "message", []
        elif not line.startswith(":"):
            key, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if key == "event":
                name = value
            elif key == "data":
                data.append(value)
    return events


def patch(document: Any, operations: list[dict[str, Any]]) -> Any:
    """``document`` after the RFC 6902 ``add``/``replace`` operations (the servers send no others)."""
    for operation in operations:
        assert operation["op"] in ("add", "replace"), operation
        if operation["path"] == "":
            document = operation["value"]
            continue
        *parents, last = operation["path"][1:].split("/")
        target = document
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if isinstance(target, list) and operation["op"] == "add":
            target.insert(int(last), operation["value"])
        elif isinstance(target, list):
            target[int(last)] = operation["value"]
        else:
            target[last] = operation["value"]
    return document


class Reader:
    """The answer so far, as a client following one track of the frames' shape would see it."""

    def __init__(self, shape: str) -> None:
        self.shape = shape
        self.steps_text = ""
        self.tracks: dict[str, list[str]] = {}  # blocks: intended_usage -> chunks
        self.workflow: Any = None

    def feed(self, frame: dict[str, Any]) -> None:
        if self.shape == "steps":
            self.steps_text = steps_answer(frame) or self.steps_text
            return
        for block in frame.get("blocks", []):
            usage = block.get("intended_usage", "")
            if self.shape == "blocks" and usage.startswith("ask_text"):
                chunks = self.tracks.setdefault(usage, [])
                if "markdown_block" in block:
                    markdown = block["markdown_block"]
                    offset = markdown.get("chunk_starting_offset", 0)
                    chunks[offset:] = markdown["chunks"]
                else:
                    assert block["diff_block"]["field"] == "markdown_block"
                    state = patch({"chunks": list(chunks)}, block["diff_block"]["patches"])
                    chunks[:] = state["chunks"]
            elif self.shape == "workflow" and "workflow_block" in block:
                self.workflow = block["workflow_block"]
            elif self.shape == "workflow" and "diff_block" in block:
                assert block["diff_block"]["field"] == "workflow_block"
                self.workflow = patch(self.workflow, block["diff_block"]["patches"])

    @property
    def text(self) -> str:
        if self.shape == "steps":
            return self.steps_text
        if self.shape == "blocks":
            texts = {"".join(chunks) for chunks in self.tracks.values()}
            assert len(texts) <= 1, f"the ask_text tracks disagree: {texts}"  # both tracks, same text
            return texts.pop() if texts else ""
        return workflow_answer(self.workflow) if self.workflow is not None else ""


def steps_answer(frame: dict[str, Any]) -> str | None:
    """The FINAL step's answer of a steps frame: ``text`` is JSON, FINAL's ``answer`` JSON again."""
    if "text" not in frame:
        return None
    steps = json.loads(frame["text"])
    assert isinstance(steps, list), steps
    for step in steps:
        if step["step_type"] == "FINAL":
            inner = json.loads(step["content"]["answer"])
            assert inner["answer"] == "".join(inner["chunks"])
            return str(inner["answer"])
    return None


def workflow_answer(workflow: dict[str, Any]) -> str:
    answers = [item["payload"]["text_payload"] for step in workflow["steps"] for item in step["items"]
               if item["type"] == "WORKFLOW_ITEM_TEXT" and item["payload"]["text_payload"]["variant"] == "answer"]
    assert len(answers) <= 1, workflow
    if not answers:
        return ""  # not yet
    assert answers[0]["text"] == "".join(answers[0]["chunks"])
    return str(answers[0]["text"])


def completed_answer(shape: str, frame: dict[str, Any]) -> str:
    """The whole answer from the COMPLETED frame alone, in its shape's place (§10.4)."""
    assert frame["status"] == "COMPLETED" and frame["final"] is True and frame["final_sse_message"] is True
    reader = Reader(shape)
    reader.feed(frame)
    return reader.text


# -- asking -------------------------------------------------------------------------------------------


def body_of(query: str = "What is SSE?", **params: Any) -> dict[str, Any]:
    return {"query_str": query, "params": {"version": "2.18", "mode": "concise", "model_preference": "turbo",
                                           "frontend_uuid": "00000000-0000-4000-8000-000000000001",
                                           "language": "en-US", "sources": ["web"], **params}}


def ask(client: httpx.Client, query: str = "What is SSE?", **params: Any) -> tuple[httpx.Response, bytes]:
    """POST the ask and read its body as it streams."""
    with client.stream("POST", ASK, json=body_of(query, **params),
                       headers={"Accept": "text/event-stream"}) as response:
        return response, b"".join(response.iter_bytes())


@contextlib.contextmanager
def warm(url: str, **kwargs: Any) -> Iterator[httpx.Client]:
    """A client that has been through the warm-up (it holds the anonymous cookies)."""
    with httpx.Client(base_url=url, timeout=10, **kwargs) as client:
        assert client.get(SESSION).status_code == 200
        yield client


def check_frames(shape: str, events: list[tuple[str, Any]], answer: str, *, early_final: bool = False) -> list[Any]:
    """The §10.3 order and fields, and the answer both streamed and in the COMPLETED frame."""
    assert events[-1] == ("end_of_stream", {})
    frames = [data for name, data in events[:-1]]
    assert all(name == "message" for name, _ in events[:-1])
    for frame in frames:
        assert set(COMMON) <= frame.keys(), set(COMMON) - frame.keys()
        assert (frame["backend_uuid"], frame["read_write_token"], frame["thread_url_slug"]) == (
            frames[0]["backend_uuid"], frames[0]["read_write_token"], frames[0]["thread_url_slug"])
        assert ("blocks" in frame) == (shape != "steps")
    statuses = [frame["status"] for frame in frames]
    assert statuses == ["PENDING"] * (len(frames) - 1) + ["COMPLETED"]
    finals = [frame["final"] for frame in frames]
    assert finals == [False] * (len(frames) - 2) + [True, True]  # a PENDING final, then COMPLETED
    assert [frame["final_sse_message"] for frame in frames] == [False] * (len(frames) - 1) + [True]
    reader = Reader(shape)
    for frame in frames[:-2]:
        reader.feed(frame)
        assert answer.startswith(reader.text)
    reader.feed(frames[-2])
    if early_final:  # the trap: text is still missing when final first turns true
        assert len(reader.text) < len(answer) and answer.startswith(reader.text)
        assert frames[-2]["text_completed"] is False
    else:
        assert reader.text == answer
    reader.feed(frames[-1])
    assert reader.text == answer
    assert completed_answer(shape, frames[-1]) == answer
    return frames


# -- the warm-up and the catalog ------------------------------------------------------------------


def test_warm_up_sets_the_anonymous_cookies(perplexity_server: Serve) -> None:
    url = perplexity_server()
    with httpx.Client(base_url=url) as client:
        response = client.get(SESSION)
        assert response.status_code == 200 and response.json() == {}
        assert {"__cf_bm", "next-auth.csrf-token"} <= set(client.cookies.keys())
        assert "%7C" in client.cookies["next-auth.csrf-token"]
        page = client.get("/search/new", params={"q": "hi"})
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "__cf_bm" in page.headers["set-cookie"]


def test_model_catalog(perplexity_server: Serve) -> None:
    with httpx.Client(base_url=perplexity_server()) as client:
        catalog = client.get("/rest/models/config/v2").json()
    assert catalog["default_models"]["search"] == "turbo"
    assert catalog["default_models"]["search"] in catalog["models"]
    for entry in catalog["config"]:
        assert entry["non_reasoning_model"] in catalog["models"], entry
        assert entry["subscription_tier"] in ("free", "pro", "max")


def test_unknown_path_and_method(perplexity_server: Serve) -> None:
    with httpx.Client(base_url=perplexity_server()) as client:
        assert client.get("/nowhere").status_code == 404
        refused = client.get(ASK)
        assert refused.status_code == 405
        assert refused.headers["allow"] == "POST"


# -- the three shapes -------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_shape_streams_the_answer_and_completes_with_it(perplexity_server: Serve, shape: str) -> None:
    with warm(perplexity_server(shape=shape, answer=ANSWER)) as client:
        response, body = ask(client)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert b"\n" not in body.replace(b"\r\n", b""), "every line ends with CRLF"
    assert b"[DONE]" not in body
    assert body.endswith(b"event: end_of_stream\r\ndata: {}\r\n\r\n")
    assert re.fullmatch(rb"(event: \w+\r\ndata: [^\r\n]*\r\n\r\n)+", body)  # one data line per frame
    frames = check_frames(shape, sse(body), ANSWER)
    assert frames[0]["display_model"] == "turbo"
    assert len(frames) > len(ANSWER) // 8  # streamed in pieces of 8 characters


def test_steps_shape_double_encodes_the_final_answer(perplexity_server: Serve) -> None:
    with warm(perplexity_server(shape="steps", answer=ANSWER)) as client:
        _, body = ask(client, "double?")
    frames = [data for _, data in sse(body)[:-1]]
    steps = json.loads(frames[-1]["text"])
    kinds = [step["step_type"] for step in steps]
    assert kinds[0] == "INITIAL_QUERY" and kinds[-1] == "FINAL"
    assert "SEARCH_WEB" in kinds and "SEARCH_RESULTS" in kinds
    search = next(step for step in steps if step["step_type"] == "SEARCH_WEB")
    assert search["content"]["queries"][0]["query"] == "double?"
    final = steps[-1]["content"]["answer"]
    assert isinstance(final, str)  # a JSON string inside the JSON string
    inner = json.loads(final)
    assert inner["answer"] == ANSWER
    assert all(result["url"].startswith("https://") for result in inner["web_results"])
    assert "FINAL" not in json.dumps(json.loads(frames[0]["text"]))  # the first frame has no answer yet


def test_blocks_shape_sources_plan_and_both_tracks(perplexity_server: Serve) -> None:
    with warm(perplexity_server(shape="blocks", answer=ANSWER)) as client:
        _, body = ask(client)
    frames = [data for _, data in sse(body)[:-1]]
    blocks = [block for frame in frames for block in frame["blocks"]]
    usages = {block["intended_usage"] for block in blocks}
    assert {"ask_text", "ask_text_0_markdown", "web_results", "pro_search_steps"} <= usages
    assert any("diff_block" in block and block["diff_block"]["field"] == "markdown_block" for block in blocks)
    assert any("markdown_block" in block and block["markdown_block"].get("chunk_starting_offset", 0) > 0
               for block in blocks)  # incremental markdown blocks too
    web = next(block for block in blocks if block["intended_usage"] == "web_results")["web_result_block"]
    assert web["web_results"] and {"name", "url", "snippet"} <= web["web_results"][0].keys()
    completed = {block["intended_usage"]: block for block in frames[-1]["blocks"]}
    for usage in ("ask_text", "ask_text_0_markdown"):
        markdown = completed[usage]["markdown_block"]
        assert markdown["progress"] == "DONE" and markdown["answer"] == ANSWER
        assert "".join(markdown["chunks"]) == ANSWER


def test_workflow_shape_patches_one_block(perplexity_server: Serve) -> None:
    with warm(perplexity_server(shape="workflow", answer=ANSWER)) as client:
        _, body = ask(client, "flow?")
    frames = [data for _, data in sse(body)[:-1]]
    first = frames[0]["blocks"][0]
    assert first["intended_usage"] == "workflow_root" and "workflow_block" in first
    paths = [operation["path"] for frame in frames[1:-1] for block in frame["blocks"]
             for operation in block["diff_block"]["patches"]]
    assert any(re.fullmatch(r"/steps/\d+", path) for path in paths)
    assert any(re.fullmatch(r"/steps/\d+/items/\d+/payload/text_payload/chunks/\d+", path) for path in paths)
    assert any(path.endswith("/text_payload/text") for path in paths)
    reader = Reader("workflow")
    for frame in frames:
        reader.feed(frame)
    items = [item for step in reader.workflow["steps"] for item in step["items"]]
    kinds = {item["type"] for item in items}
    assert {"WORKFLOW_ITEM_QUERIES", "WORKFLOW_ITEM_SOURCES", "WORKFLOW_ITEM_TEXT"} <= kinds
    variants = {item["payload"]["text_payload"]["variant"] for item in items if item["type"] == "WORKFLOW_ITEM_TEXT"}
    assert variants == {"answer", "thinking"}  # the thinking text is not the answer
    assert reader.workflow["status"] == "WORKFLOW_COMPLETED"
    queries = next(item for item in items if item["type"] == "WORKFLOW_ITEM_QUERIES")
    assert queries["payload"]["queries_payload"]["queries"][0]["query"] == "flow?"


@pytest.mark.parametrize("shape", SHAPES)
def test_early_final_trap(perplexity_server: Serve, shape: str) -> None:
    """A PENDING frame with final: true arrives while half of the answer is still missing."""
    with warm(perplexity_server(shape=shape, answer=ANSWER, early_final=True)) as client:
        _, body = ask(client)
    check_frames(shape, sse(body), ANSWER, early_final=True)


@pytest.mark.parametrize("shape", SHAPES)
def test_lf_line_endings_and_sse_extras(perplexity_server: Serve, shape: str) -> None:
    with warm(perplexity_server(shape=shape, answer=ANSWER, line_ending="lf", extras=True)) as client:
        _, body = ask(client)
    assert b"\r" not in body
    assert body.startswith(b"retry: ")
    assert re.search(rb"\n:[^\n]*\nevent: message\n", body)  # a comment before a frame
    assert re.search(rb"\ndata:[^\n]*\ndata:", body)  # one event's data over several lines
    check_frames(shape, sse(body), ANSWER)


def test_one_character_pieces_and_an_empty_answer(perplexity_server: Serve) -> None:
    with warm(perplexity_server(shape="blocks", answer="ab🚀", chunk_size=1)) as client:
        _, body = ask(client)
    frames = check_frames("blocks", sse(body), "ab🚀")
    streamed = [block for frame in frames[:-2] for block in frame["blocks"] if block["intended_usage"] == "ask_text"]
    assert len(streamed) == 3  # one frame per character, the rocket whole
    with warm(perplexity_server(shape="workflow", answer="")) as client:
        _, body = ask(client)
    check_frames("workflow", sse(body), "")


def test_a_long_answer(perplexity_server: Serve) -> None:
    long = "".join(f"Sentence {number} of a long answer. " for number in range(3000))  # ~100 KB
    with warm(perplexity_server(shape="steps", answer=long, chunk_size=20000)) as client:
        _, body = ask(client)
    check_frames("steps", sse(body), long)


def raw_chunks(url: str, payload: dict[str, Any]) -> tuple[bytes, list[bytes]]:
    """The response head and the HTTP chunks of the body, read from a plain socket."""
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps(payload).encode()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST " + ASK.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Connection: close\r\nContent-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
        raw = b""
        while piece := sock.recv(65536):
            raw += piece
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower(), head
    chunks = []
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return head, chunks
        chunks.append(rest[:size])
        assert rest[size : size + 2] == b"\r\n"
        rest = rest[size + 2 :]


def test_one_byte_writes(perplexity_server: Serve) -> None:
    url = perplexity_server(shape="workflow", answer="Byte by byte.", write_size=1)
    head, chunks = raw_chunks(url, body_of())
    assert head.startswith(b"HTTP/1.1 200")
    assert {len(chunk) for chunk in chunks} == {1}
    check_frames("workflow", sse(b"".join(chunks)), "Byte by byte.")


# -- gzip ----------------------------------------------------------------------------------------------


def test_gzip_when_the_client_accepts_it(perplexity_server: Serve) -> None:
    url = perplexity_server(shape="steps", answer=ANSWER, gzip=True)
    with warm(url) as client, client.stream("POST", ASK, json=body_of()) as response:
        raw = b"".join(response.iter_raw())
    assert response.headers["content-encoding"] == "gzip"
    check_frames("steps", sse(gzip.decompress(raw)), ANSWER)
    with warm(url, headers={"Accept-Encoding": "identity"}) as client:
        response, body = ask(client)
    assert "content-encoding" not in response.headers
    check_frames("steps", sse(body), ANSWER)


def test_gzip_is_flushed_per_frame(perplexity_server: Serve) -> None:
    """Cut after three frames, the compressed bytes that arrived still hold three whole frames."""
    url = perplexity_server(shape="blocks", answer=ANSWER, gzip=True, drop_after=3)
    raw = b""
    with warm(url) as client, client.stream("POST", ASK, json=body_of()) as response:
        assert response.headers["content-encoding"] == "gzip"
        with pytest.raises(httpx.RemoteProtocolError):
            for piece in response.iter_raw():
                raw += piece
    events = sse(zlib.decompressobj(wbits=31).decompress(raw))
    assert [name for name, _ in events] == ["message"] * 3


# -- failures -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_status_failed_with_error_code(perplexity_server: Serve, shape: str) -> None:
    url = perplexity_server(shape=shape, fail="Error in processing query.", error_code="SOMETHING_BROKE", fail_after=2)
    with warm(url) as client:
        response, body = ask(client)
    assert response.status_code == 200
    events = sse(body)
    assert [name for name, _ in events] == ["message"] * 3 + ["end_of_stream"]
    failed = events[2][1]
    assert failed["status"] == "failed" and failed["error_code"] == "SOMETHING_BROKE"
    assert failed["text"] == failed["error_message"] == "Error in processing query."
    assert [data["status"] for _, data in events[:2]] == ["PENDING", "PENDING"]


def test_free_tier_rate_limited_is_the_default_error_code(perplexity_server: Serve) -> None:
    with warm(perplexity_server(fail="Upgrade to continue.")) as client:
        _, body = ask(client)
    events = sse(body)
    assert events[0][1]["error_code"] == "FREE_TIER_RATE_LIMITED" and events[0][1]["status"] == "failed"


def test_http_429_with_retry_after(perplexity_server: Serve) -> None:
    with warm(perplexity_server(rate_limit="ask", retry_after="7")) as client:
        response, _ = ask(client)
    assert response.status_code == 429 and response.headers["retry-after"] == "7"
    with warm(perplexity_server(rate_limit="ask", retry_after=None)) as client:
        response, _ = ask(client)
    assert response.status_code == 429 and "retry-after" not in response.headers
    with httpx.Client(base_url=perplexity_server(rate_limit="session")) as client:
        assert client.get(SESSION).status_code == 429
        assert ask(client)[0].status_code == 200  # only the warm-up is limited


@pytest.mark.parametrize("step", ["ask", "session", "all"])
def test_cloudflare_challenge_page(perplexity_server: Serve, step: str) -> None:
    with httpx.Client(base_url=perplexity_server(cloudflare=step)) as client:
        warm_up = client.get(SESSION)
        response, body = ask(client)
    challenged = [response] if step == "ask" else [warm_up] if step == "session" else [warm_up, response]
    for page in challenged:
        assert page.status_code == 403
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers["cf-mitigated"] == "challenge"
    if step == "session":
        assert response.status_code == 200  # only the warm-up is challenged
    else:
        assert b"Just a moment..." in body


def test_required_cookie(perplexity_server: Serve) -> None:
    url = perplexity_server(require_cookie=True)
    with httpx.Client(base_url=url) as client:
        response, body = ask(client)
        assert response.status_code == 403
        assert "__cf_bm" in json.loads(body)["detail"] and "none" in json.loads(body)["detail"]
        client.cookies.set("__cf_bm", "forged")
        response, body = ask(client)
        assert response.status_code == 403 and "'forged'" in json.loads(body)["detail"].replace('"', "'")
    with warm(url) as client:
        response, body = ask(client)
    assert response.status_code == 200
    assert sse(body)[-1] == ("end_of_stream", {})


@pytest.mark.parametrize("step", ["session", "ask"])
def test_redirect(perplexity_server: Serve, step: str) -> None:
    url = perplexity_server(redirect=step, redirect_status=301, redirect_to="https://www.perplexity.ai/moved")
    with httpx.Client(base_url=url) as client:
        warm_up = client.get(SESSION)
        response, _ = ask(client)
    moved, kept = (warm_up, response) if step == "session" else (response, warm_up)
    assert moved.status_code == 301 and moved.headers["location"] == "https://www.perplexity.ai/moved"
    assert kept.status_code == 200
    with httpx.Client(base_url=perplexity_server(redirect="all")) as client:
        response, _ = ask(client)
    assert response.status_code == 302 and response.headers["location"] == "https://www.perplexity.ai/"


def test_session_token(perplexity_server: Serve) -> None:
    url = perplexity_server(session_token="token-abc")
    with warm(url) as client:
        response, body = ask(client)
        assert response.status_code == 401
        assert "__Secure-next-auth.session-token" in json.loads(body)["detail"]
        assert "missing or expired" in json.loads(body)["detail"]
        client.cookies.set("__Secure-next-auth.session-token", "token-old")
        response, body = ask(client)
        assert response.status_code == 401 and "token-old" not in body.decode()  # the server does not echo it
    with warm(url, cookies={"__Secure-next-auth.session-token": "token-abc"}) as client:
        response, body = ask(client)
    assert response.status_code == 200 and sse(body)[-1] == ("end_of_stream", {})


def test_frame_delay(perplexity_server: Serve) -> None:
    with warm(perplexity_server(shape="steps", answer="Slow.", frame_delay=0.05)) as client:
        started = time.monotonic()
        _, body = ask(client)
        elapsed = time.monotonic() - started
    frames = check_frames("steps", sse(body), "Slow.")
    assert elapsed >= 0.05 * len(frames) * 0.9, (elapsed, len(frames))


@pytest.mark.parametrize("after", [0, 3])
def test_drop_mid_stream(perplexity_server: Serve, after: int) -> None:
    received = b""
    with warm(perplexity_server(shape="steps", answer=ANSWER, drop_after=after)) as client, \
            client.stream("POST", ASK, json=body_of()) as response:
        assert response.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            for piece in response.iter_bytes():
                received += piece
    events = sse(received)
    assert len(events) == after and all(name == "message" for name, _ in events)
    assert b"end_of_stream" not in received


# -- the request checks ------------------------------------------------------------------------------


def test_request_checks(perplexity_server: Serve) -> None:
    with warm(perplexity_server()) as client:
        def post(content: bytes, content_type: str = "application/json") -> httpx.Response:
            return client.post(ASK, content=content, headers={"Content-Type": content_type})

        refused = post(json.dumps(body_of()).encode(), "text/plain")
        assert refused.status_code == 415 and "expected Content-Type application/json" in refused.json()["detail"]
        for content, words in [
            (b"{not json", "expected a JSON"),
            (b"[1, 2]", "expected a JSON object"),
            (json.dumps({"params": {"version": "2.18"}}).encode(), "expected query_str"),
            (json.dumps({"query_str": "", "params": {"version": "2.18"}}).encode(), "expected query_str"),
            (json.dumps({"query_str": "q"}).encode(), "expected params"),
            (json.dumps({"query_str": "q", "params": {}}).encode(), "expected params.version"),
            (json.dumps({"query_str": "q", "params": {"version": 2.18}}).encode(), "expected params.version"),
            (json.dumps(body_of(model_preference=3)).encode(), "expected params.model_preference"),
        ]:
            answer = post(content)
            assert answer.status_code == 400, (content, answer.text)
            assert words in answer.json()["detail"], (content, answer.text)


# -- follow-ups ----------------------------------------------------------------------------------------


def identity(body: bytes) -> dict[str, Any]:
    frame = sse(body)[0][1]
    return {key: frame[key] for key in ("backend_uuid", "read_write_token", "thread_url_slug", "context_uuid")}


@pytest.mark.parametrize("shape", SHAPES)
def test_follow_up_stays_in_the_thread(perplexity_server: Serve, shape: str) -> None:
    with warm(perplexity_server(shape=shape, answer="Follow me.")) as client:
        _, body = ask(client, "First question")
        first = identity(body)
        assert first["thread_url_slug"].startswith("first-question")
        _, body = ask(client, "Second question", last_backend_uuid=first["backend_uuid"],
                      read_write_token=first["read_write_token"], query_source="followup")
        second = identity(body)
        check_frames(shape, sse(body), "Follow me.")
        # helallao's form: last_backend_uuid alone, no token, no query_source.
        _, body = ask(client, "Third question", last_backend_uuid=second["backend_uuid"])
        third = identity(body)
        _, body = ask(client, "Elsewhere", last_backend_uuid=None)  # a new thread
        other = identity(body)
    assert len({first["backend_uuid"], second["backend_uuid"], third["backend_uuid"]}) == 3  # a new answer each
    for later in (second, third):
        for key in ("thread_url_slug", "read_write_token", "context_uuid"):
            assert later[key] == first[key]
    assert other["thread_url_slug"] != first["thread_url_slug"]
    assert other["read_write_token"] != first["read_write_token"]


def test_follow_up_checks(perplexity_server: Serve) -> None:
    with warm(perplexity_server()) as client:
        _, body = ask(client, "Start")
        first = identity(body)
        unknown, text = ask(client, "Next", last_backend_uuid="00000000-0000-4000-8000-00000000dead",
                            query_source="followup")
        assert unknown.status_code == 400 and "expected last_backend_uuid" in json.loads(text)["detail"]
        wrong, text = ask(client, "Next", last_backend_uuid=first["backend_uuid"], read_write_token="not-it",
                          query_source="followup")
        assert wrong.status_code == 403 and "read_write_token" in json.loads(text)["detail"]
        home, text = ask(client, "Next", last_backend_uuid=first["backend_uuid"], query_source="home")
        assert home.status_code == 400 and 'query_source "followup"' in json.loads(text)["detail"]
        orphan, text = ask(client, "Next", query_source="followup")
        assert orphan.status_code == 400 and "expected last_backend_uuid" in json.loads(text)["detail"]


# -- TLS ----------------------------------------------------------------------------------------------


def test_tls(request: pytest.FixtureRequest, perplexity_server: Serve, tls_files: Any) -> None:
    url = perplexity_server(shape="blocks", answer="Over TLS.", certfile=tls_files.certfile, keyfile=tls_files.keyfile)
    assert url.startswith("https://")
    with warm(url, verify=ssl.create_default_context(cafile=tls_files.cafile)) as client:
        _, body = ask(client)
    check_frames("blocks", sse(body), "Over TLS.")


# -- the emulator's own API, and perplexity.js's config ---------------------------------------------


def test_emulator_config_limits() -> None:
    PerplexityEmulatorConfig(chunk_size=1, write_size=1, drop_after=0, fail_after=0)  # the edges are taken
    for options, words in [
        ({"chunk_size": 0}, "chunk_size must be at least 1, got 0"),
        ({"write_size": 0}, "write_size must be None or at least 1, got 0"),
        ({"drop_after": -1}, "drop_after must be None or >= 0, got -1"),
        ({"fail_after": -1}, "fail_after must be >= 0, got -1"),
        ({"frame_delay": -0.1}, "frame_delay must be >= 0, got -0.1"),
        ({"shape": "tree"}, "shape must be one of ('steps', 'blocks', 'workflow'), got 'tree'"),
        ({"line_ending": "cr"}, "line_ending must be one of ('crlf', 'lf'), got 'cr'"),
        ({"rate_limit": "poll"}, "rate_limit must be None or one of ('session', 'ask', 'catalog', 'all'), got 'poll'"),
        ({"retry_after": "1\r\nX: y"}, "retry_after must be one header line"),
        ({"redirect_to": "https://a/\r\n"}, "redirect_to must be one header line"),
        ({"redirect_status": 304}, "redirect_status must be one of (301, 302, 303, 307, 308), got 304"),
        ({"redirect": "upgrade"}, "redirect must be None or one of ('session', 'ask', 'catalog', 'all'), got 'upgrade'"),
        ({"session_token": "a b"}, "session_token must be a cookie value (cookie-octets), got 'a b'"),
    ]:
        with pytest.raises(ValueError, match=re.escape(words)):
            PerplexityEmulatorConfig(**options)
    with pytest.raises(AttributeError):
        PerplexityEmulatorConfig().shape = "steps"  # type: ignore[misc]  # frozen


def test_emulator_catalog_is_the_module_constant(perplexity_emulator_factory: Any) -> None:
    with httpx.Client(base_url=perplexity_emulator_factory().url) as client:
        assert client.get("/rest/models/config/v2").json() == CATALOG


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_emulator_on_the_callers_loop() -> None:
    async with PerplexityEmulator(PerplexityEmulatorConfig(shape="steps", answer="In the loop.")) as emulator:
        async with httpx.AsyncClient(base_url=emulator.url) as client:
            assert (await client.get(SESSION)).status_code == 200
            response = await client.post(ASK, json=body_of())
        check_frames("steps", sse(response.content), "In the loop.")
    with pytest.raises(RuntimeError, match="not running"):
        emulator.url  # noqa: B018


def test_emulator_thread_start_stop() -> None:
    thread = PerplexityEmulatorThread(PerplexityEmulatorConfig(answer="Threaded."))
    url = thread.start()
    try:
        with warm(url) as client:
            _, body = ask(client)
        check_frames("blocks", sse(body), "Threaded.")
        with pytest.raises(RuntimeError, match="already running"):
            thread.start()
    finally:
        thread.stop()
    thread.stop()  # idempotent
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + SESSION, timeout=2)


def test_node_server_refuses_a_bad_config() -> None:
    if sys.platform == "win32":  # pragma: no cover
        pytest.skip("POSIX only")
    for settings, words in [({"shape": "tree"}, "shape: expected steps, blocks or workflow, got tree"),
                            ({"colour": 1}, "unknown config key colour"),
                            ({"chunk_size": 0}, "chunk_size: expected an integer >= 1, got 0")]:
        try:
            started = start_perplexity_node(**settings)
        except NodeServerError as exc:
            assert words in str(exc), exc
        else:  # pragma: no cover
            started.stop()
            pytest.fail(f"perplexity.js started with {settings}")


# -- plabs emulator --service perplexity ------------------------------------------------------------


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
            process.communicate(timeout=10)


@pytest.mark.parametrize("shape", SHAPES)
def test_cli_serves_each_shape(shape: str, processes: list[subprocess.Popen[bytes]]) -> None:
    process = subprocess.Popen(
        [*PLABS, "emulator", "--service", "perplexity", "--shape", shape, "--answer", "From the CLI.",
         "--line-ending", "lf", "--early-final", "--require-cookie"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    processes.append(process)
    url = read_until(process, rb"\n").decode().strip()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url), url
    with httpx.Client(base_url=url) as client:
        assert ask(client)[0].status_code == 403  # --require-cookie
        assert client.get(SESSION).status_code == 200
        _, body = ask(client)
    assert b"\r" not in body
    check_frames(shape, sse(body), "From the CLI.", early_final=True)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=10)
    assert process.returncode == 0, err
    assert err.decode().startswith(f"plabs: the Perplexity emulator serves {url} until Ctrl-C")


@pytest.mark.parametrize(("arguments", "words"), [
    (["--service", "perplexity", "--reasoning", "hmm"], "--reasoning is not an option of the perplexity emulator"),
    (["--service", "perplexity", "--silent"], "--silent is not an option of the perplexity emulator"),
    (["--shape", "steps"], "--shape is not an option of the labs emulator"),
    (["--gzip"], "--gzip is not an option of the labs emulator"),
    (["--service", "perplexity", "--rate-limit", "polling"],
     "--rate-limit of the perplexity emulator takes one of session, ask, catalog, all, got 'polling'"),
    (["--cloudflare", "ask"], "--cloudflare of the labs emulator takes one of polling, post, poll, upgrade, all"),
    (["--service", "perplexity", "--shape", "tree"], "invalid choice: 'tree'"),
    (["--redirect", "session"], "--redirect of the labs emulator takes one of polling, post, poll, upgrade, all"),
    (["--session-token", "t"], "--session-token is not an option of the labs emulator"),
    (["--service", "perplexity", "--login-page", "all"], "--login-page is not an option of the perplexity emulator"),
    (["--service", "perplexity", "--chunk-size", "0"], "--chunk-size"),
])
def test_cli_refuses_options_of_the_other_service(
    arguments: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["emulator", *arguments])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert words in error, error
