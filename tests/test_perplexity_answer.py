"""The ask service's answer decoder: every shape, the end rule, errors, limits, hostile JSON, cost.

Frames marked "from <client>" are the ones that client's own tests or comments show, as
read in its repository (protocol.md §10 names the versions read).
"""

from __future__ import annotations

import copy
import json
import re
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plabs_proto.errors import (
    AnswerFailedError,
    AnswerRateLimitedError,
    LabsError,
    LocalProtocolError,
    RateLimitedError,
    RemoteProtocolError,
    ResponseError,
)
from plabs_proto.events import (
    AnswerFinished,
    AnswerRevised,
    Citations,
    Event,
    ReasoningDelta,
    SearchQueries,
    SourcesRead,
    TextDelta,
    ThreadIdentity,
)
from plabs_proto.perplexity.answer import (
    DEFAULT_MAX_BLOCKS,
    DEFAULT_MAX_CHUNKS,
    DEFAULT_MAX_PATCHES,
    DEFAULT_MAX_STEPS,
    DEFAULT_MAX_TEXT,
    END_OF_STREAM,
    MESSAGE,
    AnswerDecoder,
    load_frame,
)
from plabs_proto.perplexity.sse import SSEDecoder


def run(frames: list[Any], decoder: AnswerDecoder | None = None, *, end: bool = False) -> list[Event]:
    decoder = decoder or AnswerDecoder()
    events: list[Event] = []
    for frame in frames:
        events += decoder.feed(frame)
    if end:
        events += decoder.end_of_stream()
    return events


def text_of(events: list[Event]) -> str:
    return "".join(event.text for event in events if isinstance(event, TextDelta))


def finished(events: list[Event]) -> AnswerFinished:
    last = events[-1]
    assert isinstance(last, AnswerFinished)
    return last


def followed(events: list[Event]) -> tuple[str, str]:
    """The text and reasoning a consumer that follows revisions holds at the end."""
    text = reasoning = ""
    for event in events:
        if isinstance(event, AnswerRevised):
            text, reasoning = event.text, event.reasoning
        elif isinstance(event, TextDelta):
            text += event.text
        elif isinstance(event, ReasoningDelta):
            reasoning += event.text
    return text, reasoning


def md(usage: str, **block: Any) -> dict[str, Any]:
    return {"intended_usage": usage, "markdown_block": block}


def diff(usage: str | None, field: str | None, *patches: dict[str, Any]) -> dict[str, Any]:
    block: dict[str, Any] = {"diff_block": {"patches": list(patches)}}
    if field is not None:
        block["diff_block"]["field"] = field
    if usage is not None:
        block["intended_usage"] = usage
    return block


def add(path: str, value: Any) -> dict[str, Any]:
    return {"op": "add", "path": path, "value": value}


def replace(path: str, value: Any) -> dict[str, Any]:
    return {"op": "replace", "path": path, "value": value}


def test_from_bytes_to_events() -> None:
    """How a session joins the pieces: SSE events, their data decoded by load_frame, end_of_stream."""
    body = (
        b'event: message\r\ndata: {"backend_uuid":"b1","status":"PENDING","blocks":[{"intended_usage":"ask_text",'
        b'"markdown_block":{"chunks":["Hi"]}}]}\r\n\r\n'
        b'event: message\r\ndata: {"backend_uuid":"b1","status":"PENDING","final":true}\r\n\r\n'
        b"event: end_of_stream\r\ndata: {}\r\n\r\n"
    )
    sse, decoder = SSEDecoder(), AnswerDecoder(model="turbo")
    events: list[Event] = []
    for byte in range(len(body)):
        for event in sse.feed(body[byte : byte + 1]):
            if event.event == MESSAGE:
                events += decoder.feed(load_frame(event.data))
            elif event.event == END_OF_STREAM:
                events += decoder.end_of_stream()
    assert sse.end() is False
    assert events == [
        ThreadIdentity(backend_uuid="b1"),
        TextDelta(text="Hi"),
        AnswerFinished(model="turbo", text="Hi", reasoning=""),
    ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("{", "expected an answer frame of JSON, got str: '{'"),
        ('{"a": NaN}', "NaN is not JSON"),
        ("[" * 101 + "]" * 101, "expected an answer frame nested at most 100 deep"),
    ],
)
def test_load_frame_refuses_what_is_not_json(data: str, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=re.escape(message)):
        load_frame(data)


# -- the workflow shape (2026-08 on) --------------------------------------------------------------------

# from henrique-coder/perplexity-webui-scraper tests/test_parser.py,
# test_process_sse_data_handles_schematized_workflow_and_diffs (status/final flags added as in §10.3)
WORKFLOW_FIRST = {
    "blocks": [
        {
            "intended_usage": "workflow_root",
            "workflow_block": {
                "status": "WORKFLOW_EXECUTING_STEPS",
                "steps": [{"items": [{"payload": {"text_payload": {"text": "", "chunks": ["Pong! How can I help you to"]}}}]}],
            },
        }
    ],
    "text_completed": False,
    "final_sse_message": False,
}
WORKFLOW_UPDATE = {
    "blocks": [
        {
            "diff_block": {
                "field": "workflow_block",
                "patches": [
                    {"op": "replace", "path": "/status", "value": "WORKFLOW_COMPLETED"},
                    {
                        "op": "replace",
                        "path": "/steps/0/items/0/payload/text_payload/text",
                        "value": "Pong! How can I help you today?",
                    },
                    {"op": "add", "path": "/steps/0/items/0/payload/text_payload/chunks/1", "value": "day?"},
                ],
            }
        }
    ],
    "text_completed": True,
    "final_sse_message": False,
}


def test_the_workflow_shape() -> None:
    decoder = AnswerDecoder()
    # copies: the decoder keeps and patches the blocks it is given
    first, update = copy.deepcopy(WORKFLOW_FIRST), copy.deepcopy(WORKFLOW_UPDATE)
    assert decoder.feed({**first, "status": "PENDING"}) == [TextDelta(text="Pong! How can I help you to")]
    assert decoder.feed({**update, "status": "PENDING", "final": True}) == [TextDelta(text="day?")]
    assert not decoder.finished  # final on a PENDING frame does not end the answer
    events = decoder.feed({"status": "COMPLETED", "final": True, "final_sse_message": True})
    assert events == [AnswerFinished(model="", text="Pong! How can I help you today?", reasoning="")]
    assert decoder.finished and decoder.partial_text == "Pong! How can I help you today?"
    assert decoder.feed({"status": "COMPLETED", "blocks": []}) == []  # frames after the end give nothing
    assert decoder.end_of_stream() == []


def test_a_workflow_with_thinking_queries_and_sources() -> None:
    # the items of §10.4 (henrique-coder 1.1.4, OmniRoute PR #10259): queries, sources, thinking, answer
    workflow = {
        "status": "WORKFLOW_EXECUTING_STEPS",
        "steps": [
            {"items": [{"type": "WORKFLOW_ITEM_QUERIES", "payload": {"queries_payload": {"queries": ["sky colour", {"query": "rayleigh"}]}}}]},
        ],
    }
    frames = [
        {"status": "PENDING", "blocks": [{"intended_usage": "workflow_root", "workflow_block": workflow}]},
        {"status": "PENDING", "blocks": [diff("workflow_root", "workflow_block", add("/steps/1", {"items": [
            {"type": "WORKFLOW_ITEM_SOURCES", "payload": {"sources_payload": {"sources": [
                {"url": "https://a.example", "name": "A"}, {"url": "https://b.example"}]}}},
            {"type": "WORKFLOW_ITEM_TEXT", "payload": {"text_payload": {"variant": "thinking", "text": "", "chunks": ["Hmm, "]}}},
        ]}))]},
        {"status": "PENDING", "blocks": [diff("workflow_root", None,
            add("/steps/1/items/1/payload/text_payload/chunks/1", "light scatters."),
            add("/steps/2", {"items": [{"type": "WORKFLOW_ITEM_TEXT", "payload": {"text_payload": {
                "variant": "answer", "text": "", "chunks": ["Blue", ","], "is_streaming": True}}}]}),
            add("/steps/0/items/0/payload/queries_payload/queries/-", "rayleigh"),  # a query once
            add("/steps/0/items/0/payload/queries_payload/queries/-", "blue sky"),
        )]},
        {"status": "PENDING", "blocks": [diff("workflow_root", "workflow_block",
            add("/steps/2/items/0/payload/text_payload/chunks/2", " because..."),
            replace("/steps/2/items/0/payload/text_payload/is_streaming", False),
        )]},
        {"status": "COMPLETED", "blocks": [diff("workflow_root", "workflow_block", replace("/status", "WORKFLOW_COMPLETED"))]},
    ]
    events = run(frames)
    assert events == [
        SearchQueries(queries=("sky colour", "rayleigh")),
        SourcesRead(sources=({"url": "https://a.example", "title": "A"}, {"url": "https://b.example", "title": ""})),
        ReasoningDelta(text="Hmm, "),
        SearchQueries(queries=("blue sky",)),
        ReasoningDelta(text="light scatters."),
        TextDelta(text="Blue,"),
        TextDelta(text=" because..."),
        AnswerFinished(model="", text="Blue, because...", reasoning="Hmm, light scatters."),
    ]


# -- the blocks shape -------------------------------------------------------------------------------------


def test_markdown_blocks_and_web_results() -> None:
    # from henrique-coder tests/test_parser.py, test_process_sse_data_merges_markdown_chunks_and_web_results
    # (intended_usage added as OmniRoute and jacob-bd show it)
    frames = [
        {"status": "PENDING", "blocks": [
            {"intended_usage": "web_results", "web_result_block": {
                "progress": "IN_PROGRESS",
                "web_results": [{"name": "Example", "url": "https://example.com", "snippet": "Source"}]}},
            md("ask_text", progress="IN_PROGRESS", chunks=["P"], chunk_starting_offset=0),
        ]},
        {"status": "COMPLETED", "text_completed": True, "blocks": [
            md("ask_text", progress="DONE", chunks=["P", "ONG."], chunk_starting_offset=0, answer="PONG."),
        ]},
    ]
    cited = ({"url": "https://example.com", "title": "Example"},)
    assert run(frames) == [
        Citations(citations=cited),
        TextDelta(text="P"),
        TextDelta(text="ONG."),
        AnswerFinished(model="", text="PONG.", reasoning="", citations=cited),
    ]


def test_blocks_only_frames() -> None:
    # from jacob-bd/perplexity-web-mcp tests/test_core.py, test_blocks_only_frames_update_state
    frames = [
        {"status": "PENDING", "blocks": []},
        {
            "thread_title": "Blocks response",
            "status": "COMPLETED",
            "final": True,
            "blocks": [
                {"intended_usage": "ask_text",
                 "markdown_block": {"progress": "DONE", "answer": "Answer [1]", "chunks": ["Answer [1]"]}},
                {"intended_usage": "web_results",
                 "web_result_block": {"progress": "DONE", "web_results": [
                     {"name": "Source", "url": "https://example.com", "snippet": "Snippet"}]}},
            ],
        },
    ]
    cited = ({"url": "https://example.com", "title": "Source"},)
    assert run(frames) == [
        Citations(citations=cited),
        TextDelta(text="Answer [1]"),
        AnswerFinished(model="", text="Answer [1]", reasoning="", citations=cited),
    ]


def test_markdown_chunks_without_an_offset() -> None:
    # from jacob-bd tests/test_core.py, test_blocks_only_chunks_accumulate_across_frames: chunks that do not
    # extend the ones held come after them...
    frames = [
        {"blocks": [md("ask_text", chunks=["Answer"])]},
        {"final": True, "blocks": [md("ask_text", chunks=[" text"])]},
    ]
    events = run(frames, end=True)
    assert text_of(events) == finished(events).text == "Answer text"
    # ...and chunks that extend them are the whole list again (OmniRoute replaces the chunks)
    frames = [
        {"blocks": [md("ask_text", chunks=["Answer"])]},
        {"blocks": [md("ask_text", chunks=["Answer", " text"])]},
        {"status": "COMPLETED", "blocks": [md("ask_text", chunks=["Answer", " text", "!"], progress="DONE")]},
    ]
    events = run(frames)
    assert events[:-1] == [TextDelta(text="Answer"), TextDelta(text=" text"), TextDelta(text="!")]
    assert finished(events).text == "Answer text!"


def test_markdown_chunk_starting_offset() -> None:
    decoder = AnswerDecoder()
    assert decoder.feed({"blocks": [md("ask_text", chunks=["a", "b"], chunk_starting_offset=0)]}) == [
        TextDelta(text="ab")]
    assert decoder.feed({"blocks": [md("ask_text", chunks=["c", "d"], chunk_starting_offset=2)]}) == [
        TextDelta(text="cd")]
    assert decoder.feed({"blocks": [md("ask_text", chunks=["d", "e"], chunk_starting_offset=3)]}) == [
        TextDelta(text="e")]  # a chunk sent again is not text again
    # an offset below the chunks reported rewrites them
    assert decoder.feed({"blocks": [md("ask_text", chunks=["X"], chunk_starting_offset=1)]}) == [
        AnswerRevised(text="aX", reasoning="")]
    with pytest.raises(RemoteProtocolError, match=r"expected 'chunk_starting_offset' to be an index from 0 to the "
                                                  r"2 chunks held, got int: 3"):
        decoder.feed({"blocks": [md("ask_text", chunks=["Y"], chunk_starting_offset=3)]})
    with pytest.raises(LocalProtocolError, match="after an error"):
        decoder.feed({})


def test_a_first_patch_may_add_chunks_at_once() -> None:
    # OmniRoute's applyMarkdownDiff starts each usage with no chunks: /chunks/0 needs no replace "" before it
    events = run([{"blocks": [diff("ask_text", "markdown_block", add("/chunks/0", "a"))]}], end=True)
    assert text_of(events) == finished(events).text == "a"


def test_diff_blocks_on_a_markdown_block() -> None:
    # the patches of §10.4 and OmniRoute's applyMarkdownDiff: replace "" the whole block, add /chunks/<n>,
    # replace /progress; then the COMPLETED frame's whole markdown_block
    frames = [
        {"status": "PENDING", "blocks": [diff("ask_text", "markdown_block", replace("", {"progress": "IN_PROGRESS", "chunks": []}))]},
        {"status": "PENDING", "blocks": [diff("ask_text", "markdown_block", add("/chunks/0", "The "))]},
        {"status": "PENDING", "blocks": [diff("ask_text", "markdown_block", add("/chunks/1", "sky"), add("/chunks/-", " is"))]},
        {"status": "PENDING", "final": True, "blocks": [diff("ask_text", "markdown_block", replace("/progress", "DONE"))]},
        {"status": "COMPLETED", "final": True, "final_sse_message": True, "blocks": [
            md("ask_text", progress="DONE", chunks=["The ", "sky", " is"], answer="The sky is blue.")]},
    ]
    events = run(frames)
    assert events == [
        TextDelta(text="The "),
        TextDelta(text="sky is"),
        TextDelta(text=" blue."),  # the COMPLETED frame's whole answer, checked against the text streamed
        AnswerFinished(model="", text="The sky is blue.", reasoning=""),
    ]


def test_both_answer_tracks_give_the_text_once() -> None:
    # §10.4: ask_text and ask_text_0_markdown stream the same text; OmniRoute follows one
    frames = [
        {"blocks": [diff("ask_text_0_markdown", "markdown_block", replace("", {"chunks": ["Hi"]}))]},
        {"blocks": [
            diff("ask_text", "markdown_block", replace("", {"chunks": ["Hi"]})),
            diff("ask_text_0_markdown", "markdown_block", add("/chunks/1", " there")),
        ]},
        {"blocks": [
            diff("ask_text_0_markdown", "markdown_block", add("/chunks/2", "!")),
            diff("ask_text", "markdown_block", add("/chunks/1", " there"), add("/chunks/2", "!")),
        ]},
        {"status": "COMPLETED"},
    ]
    events = run(frames)
    assert text_of(events) == finished(events).text == "Hi there!"
    assert not any(isinstance(event, AnswerRevised) for event in events)


def test_the_order_of_blocks_does_not_matter() -> None:
    blocks = [
        {"intended_usage": "pro_search_steps", "plan_block": {"steps": [
            {"step_type": "SEARCH_WEB", "search_web_content": {"queries": [{"query": "q1"}]}},
            {"step_type": "READ_RESULTS", "read_results_content": {"urls": ["https://r.example"]}}]}},
        {"intended_usage": "web_results", "web_result_block": {"web_results": [{"name": "W", "url": "https://w.example"}]}},
        md("ask_text", chunks=["x"]),
        {"intended_usage": "answer_modes", "answer_tabs_block": {"modes": [{"answer_mode_type": "ANSWER"}]}},
    ]
    forward = run([{"blocks": blocks}, {"status": "COMPLETED"}])
    backward = run([{"blocks": blocks[::-1]}, {"status": "COMPLETED"}])
    assert forward == backward == [
        SearchQueries(queries=("q1",)),
        SourcesRead(sources=({"url": "https://r.example", "title": ""},)),
        Citations(citations=({"url": "https://w.example", "title": "W"},)),
        TextDelta(text="x"),
        AnswerFinished(model="", text="x", reasoning="", citations=({"url": "https://w.example", "title": "W"},)),
    ]


def test_plan_blocks_patched() -> None:
    frames = [
        {"blocks": [{"intended_usage": "pro_search_steps", "plan_block": {"steps": []}}]},
        {"blocks": [diff("pro_search_steps", "plan_block", add("/steps/0", {
            "step_type": "SEARCH_WEB", "search_web_content": {"queries": [{"query": "a"}]}}))]},
        {"blocks": [diff("pro_search_steps", "plan_block",
                         add("/steps/0/search_web_content/queries/1", {"query": "b"}))]},
    ]
    assert run(frames) == [SearchQueries(queries=("a",)), SearchQueries(queries=("b",))]


# -- the steps shape (legacy) -----------------------------------------------------------------------------


def steps_frame(answer: str, *, status: str = "PENDING", web: list[Any] | None = None) -> dict[str, Any]:
    inner = {"answer": answer, "chunks": [answer], "web_results": web or []}
    steps = [
        {"step_type": "INITIAL_QUERY", "content": {"query": "sky"}, "uuid": "1"},
        {"step_type": "SEARCH_WEB", "content": {"queries": [{"query": "why is the sky blue"}]}, "uuid": "2"},
        {"step_type": "SEARCH_RESULTS", "content": {"web_results": web or []}, "uuid": "3"},
        {"step_type": "FINAL", "content": {"answer": json.dumps(inner)}, "uuid": "4"},
    ]
    return {"status": status, "backend_uuid": "b1", "text": json.dumps(steps)}


def test_the_steps_shape() -> None:
    web = [{"name": "NASA", "url": "https://nasa.example", "snippet": "..."}]
    frames = [steps_frame("Ray"), steps_frame("Rayleigh", web=web), steps_frame("Rayleigh scattering.", status="COMPLETED", web=web)]
    cited = ({"url": "https://nasa.example", "title": "NASA"},)
    assert run(frames) == [
        ThreadIdentity(backend_uuid="b1"),
        SearchQueries(queries=("why is the sky blue",)),
        TextDelta(text="Ray"),
        Citations(citations=cited),
        TextDelta(text="leigh"),
        TextDelta(text=" scattering."),
        AnswerFinished(model="", text="Rayleigh scattering.", reasoning="", citations=cited),
    ]


def test_the_double_encoded_final_answer() -> None:
    # from helallao/perplexity-ai tests/test_utils.py, test_parse_nested_json_response (case 2)
    nested = json.dumps([
        {"step_type": "SEARCH", "content": {}},
        {"step_type": "FINAL", "content": {"answer": json.dumps({"answer": "42", "chunks": ["chunk1"]})}},
    ])
    events = run([{"text": nested, "status": "COMPLETED"}])
    assert events == [TextDelta(text="42"), AnswerFinished(model="", text="42", reasoning="")]
    # from OmniRoute protocol.ts, extractAnswerFromFinalText ("Live shape (Jul 2026 browser capture)")
    capture = '[{"step_type":"FINAL","content":{"answer":"{\\"answer\\":\\"Hi\\",\\"chunks\\":[\\"Hi\\"]}"}}]'
    assert finished(run([{"text": capture, "status": "COMPLETED"}])).text == "Hi"
    # from jacob-bd tests/test_core.py, test_list_with_final_step (content is the object itself) and
    # test_list_final_with_json_string_in_answer
    final_content = {"answer": "Final answer", "web_results": [{"name": "R", "url": "u", "snippet": "s"}]}
    events = run([{"text": json.dumps([{"step_type": "FINAL", "content": final_content}]), "status": "COMPLETED"}])
    assert finished(events).text == "Final answer" and finished(events).citations == ({"url": "u", "title": "R"},)
    inner = json.dumps({"answer": "Parsed", "thread_title": "TT"})
    assert finished(run([{"text": json.dumps([{"step_type": "FINAL", "content": {"answer": inner}}]),
                          "status": "COMPLETED"}])).text == "Parsed"
    # OmniRoute: a FINAL content that is plain text, and an inner object with only chunks or structured_answer
    assert finished(run([{"text": '[{"step_type":"FINAL","content":"plain"}]'}], end=True)).text == "plain"
    only_chunks = json.dumps([{"step_type": "FINAL", "content": {"answer": json.dumps({"answer": "", "chunks": ["a", "b"]})}}])
    assert finished(run([{"text": only_chunks}], end=True)).text == "ab"
    # chunks without the whole answer: the whole list again (OmniRoute), or only the new ones (jacob-bd)
    def chunked(*chunks: str) -> dict[str, Any]:
        return {"text": json.dumps([{"step_type": "FINAL", "content": {"answer": json.dumps({"chunks": list(chunks)})}}])}

    events = run([chunked("a"), chunked("a", "b"), chunked("c"), chunked("a", "b", "c", "d")], end=True)
    assert text_of(events) == finished(events).text == "abcd"
    structured = json.dumps([{"step_type": "FINAL", "content": {"answer": json.dumps(
        {"structured_answer": [{"type": "markdown", "text": "s1"}, {"text": "s2"}]})}}])
    assert finished(run([{"text": structured}], end=True)).text == "s1s2"
    # an answer that starts with "{" but is not JSON is plain text (OmniRoute: "treat as plain markdown")
    braces = json.dumps([{"step_type": "FINAL", "content": {"answer": "{x} is a set"}}])
    assert finished(run([{"text": braces}], end=True)).text == "{x} is a set"


def test_the_older_concise_object_and_plain_text() -> None:
    # from jacob-bd tests/test_core.py, test_dict_text_updates_state: the answer object directly in `text`
    frame = {"thread_title": "T", "text": '{"answer": "Hi", "web_results": [{"name":"S", "url":"u", "snippet":"s"}]}'}
    events = run([frame], end=True)
    assert events == [
        Citations(citations=({"url": "u", "title": "S"},)),
        TextDelta(text="Hi"),
        AnswerFinished(model="", text="Hi", reasoning="", citations=({"url": "u", "title": "S"},)),
    ]
    # helallao: `text` already decoded (a list); OmniRoute: plain text that is not JSON is the answer
    assert finished(run([{"text": [{"step_type": "FINAL", "content": {"answer": {"answer": "L"}}}]}], end=True)).text == "L"
    assert finished(run([{"text": "plain answer"}, {"text": "plain answer, longer"}], end=True)).text == (
        "plain answer, longer")


def test_blocks_win_over_the_steps_text_of_the_same_frames() -> None:
    # schematized frames carry the steps text too (OmniRoute: "not user-facing"): one answer, not two
    frames = [
        {"blocks": [md("ask_text", chunks=["A"])], "text": json.dumps([{"step_type": "FINAL", "content": {"answer": "A"}}])},
        {"status": "COMPLETED", "blocks": [md("ask_text", chunks=["A", "B"], answer="AB")],
         "text": json.dumps([{"step_type": "FINAL", "content": {"answer": json.dumps({"answer": "AB"})}}])},
    ]
    events = run(frames)
    assert events == [TextDelta(text="A"), TextDelta(text="B"), AnswerFinished(model="", text="AB", reasoning="")]
    # and when the blocks brought no text, the FINAL step is the answer (OmniRoute's safety net)
    frames = [{"status": "COMPLETED", "blocks": [], "text": json.dumps(
        [{"step_type": "FINAL", "content": {"answer": json.dumps({"answer": "from steps"})}}])}]
    assert finished(run(frames)).text == "from steps"


# -- the end (§10.3) ---------------------------------------------------------------------------------------


def test_final_on_a_pending_frame_does_not_end_the_answer() -> None:
    decoder = AnswerDecoder()
    decoder.feed({"status": "PENDING", "blocks": [md("ask_text", chunks=["Part"])]})
    assert decoder.feed({"status": "PENDING", "final": True, "text_completed": True}) == []
    assert not decoder.finished
    events = decoder.feed({"status": "COMPLETED", "final": True, "blocks": [
        md("ask_text", chunks=["Part", " two"], answer="Part two", progress="DONE")]})
    assert events == [TextDelta(text=" two"), AnswerFinished(model="", text="Part two", reasoning="")]


def test_end_of_stream_finishes_with_what_came() -> None:
    decoder = AnswerDecoder(model="turbo")
    decoder.feed({"status": "PENDING", "final": True, "blocks": [md("ask_text", chunks=["So far"])]})
    assert decoder.end_of_stream() == [AnswerFinished(model="turbo", text="So far", reasoning="")]
    assert AnswerDecoder().end_of_stream() == [AnswerFinished(model="", text="", reasoning="")]


def test_a_completed_answer_that_differs_is_a_revision() -> None:
    frames = [
        {"blocks": [md("ask_text", chunks=["Draft [1]"])]},
        {"status": "COMPLETED", "blocks": [md("ask_text", chunks=["Draft [1]"], answer="Final text")]},
    ]
    events = run(frames)
    assert events == [
        TextDelta(text="Draft [1]"),
        AnswerRevised(text="Final text", reasoning=""),
        AnswerFinished(model="", text="Final text", reasoning=""),
    ]
    assert followed(events) == ("Final text", "")


def test_the_model_and_the_thread() -> None:
    decoder = AnswerDecoder(model="turbo")
    first = {"backend_uuid": "b1", "read_write_token": "rw", "thread_url_slug": "s", "display_model": "turbo",
             "context_uuid": "c", "status": "PENDING"}
    assert decoder.feed(first) == [ThreadIdentity(backend_uuid="b1", read_write_token="rw", thread_url_slug="s")]
    assert decoder.feed(first) == []  # every frame repeats it: handed out once
    assert decoder.feed({**first, "read_write_token": None}) == []  # a missing token keeps the one known
    assert decoder.feed({**first, "backend_uuid": "b2", "display_model": "pplx_pro"}) == [
        ThreadIdentity(backend_uuid="b2", read_write_token="rw", thread_url_slug="s")]
    assert decoder.thread == ThreadIdentity(backend_uuid="b2", read_write_token="rw", thread_url_slug="s")
    assert finished(decoder.feed({"status": "COMPLETED"})).model == "pplx_pro"


# -- errors ---------------------------------------------------------------------------------------------------


def test_a_failure() -> None:
    decoder = AnswerDecoder()
    decoder.feed({"blocks": [md("ask_text", chunks=["half"])]})
    # from henrique-coder tests/test_parser.py, test_process_sse_data_handles_lowercase_failed_status
    with pytest.raises(AnswerFailedError) as caught:
        decoder.feed({"status": "failed", "text": "Error in processing query."})
    error = caught.value
    assert isinstance(error, ResponseError)
    assert str(error) == "the ask service reported a failure for the query: Error in processing query."
    assert (error.error_code, error.server_text, error.partial_text) == (None, "Error in processing query.", "half")
    with pytest.raises(AnswerFailedError, match=r"oops \(INTERNAL\)") as caught:
        run([{"status": "FAILED", "error_code": "INTERNAL", "error_message": "oops"}])
    assert caught.value.error_code == "INTERNAL"
    with pytest.raises(AnswerFailedError, match=r": BAD$"):
        run([{"status": "PENDING", "error_code": "BAD"}])  # an error_code alone is a failure (OmniRoute)
    assert run([{"status": "PENDING", "error_code": None, "error_message": ""}]) == []


def test_free_tier_rate_limited() -> None:
    # from henrique-coder tests/test_parser.py, test_process_sse_data_raises_rate_limit_for_free_tier_error
    frame = {"error_code": "FREE_TIER_RATE_LIMITED", "experience": "upgrade", "status": "failed", "final_sse_message": True}
    with pytest.raises(AnswerRateLimitedError) as caught:
        run([frame])
    error = caught.value
    assert isinstance(error, RateLimitedError)
    assert (error.error_code, error.status, error.retry_after) == ("FREE_TIER_RATE_LIMITED", 200, None)
    assert str(error) == "the ask service refused the query for a quota: FREE_TIER_RATE_LIMITED"


def test_the_servers_words_are_cleaned() -> None:
    with pytest.raises(AnswerFailedError) as caught:
        run([{"status": "failed", "error_message": "bad\x1b[31m\nthing" + "x" * 2000}])
    assert "\x1b" not in str(caught.value) and len(caught.value.server_text) == 500


MALFORMED: list[tuple[Any, str]] = [
    ([], "expected a JSON object as the frame, got list"),
    ({"status": 3}, "expected 'status' to be a string, got int: 3"),
    ({"backend_uuid": 5}, "expected 'backend_uuid' to be a string"),
    ({"blocks": {}}, "expected 'blocks' to be a list"),
    ({"blocks": [1]}, "expected each block to be a JSON object, got int"),
    ({"blocks": [{"intended_usage": 1}]}, "expected 'intended_usage' to be a string"),
    ({"blocks": [md("ask_text", chunks="abc")]}, "expected 'chunks' to be a list in a markdown_block"),
    ({"blocks": [md("ask_text", chunks=[1])]}, "expected the answer's chunks to be strings, got int: 1"),
    ({"blocks": [{"markdown_block": []}]}, "expected 'markdown_block' to be a JSON object"),
    ({"blocks": [{"diff_block": []}]}, "expected 'diff_block' to be a JSON object"),
    ({"blocks": [diff("ask_text", 3)]}, "expected the diff_block's 'field' to be a string"),
    ({"blocks": [{"intended_usage": "ask_text", "diff_block": {"patches": {}}}]}, "expected 'patches' to be a list"),
    ({"blocks": [diff("ask_text", "markdown_block", 5)]}, "expected each patch to be a JSON object"),
    ({"blocks": [diff("ask_text", "markdown_block", {"op": "copy", "path": "/a", "from": "/b"})]},
     "expected a patch 'op' of add, replace or remove, got str: 'copy'"),
    ({"blocks": [diff("ask_text", "markdown_block", {"op": "add", "path": "/a"})]},
     "expected a 'value' in an add patch at '/a', got none"),
    ({"blocks": [diff("ask_text", "markdown_block", add("chunks", 1))]},
     "expected a patch 'path' that is empty or starts with '/'"),
    ({"blocks": [diff("ask_text_1_markdown", "markdown_block", add("/answer/x", "x"))]},
     "expected the patch path '/answer' in the markdown_block, got no member 'answer'"),
    ({"blocks": [diff("ask_text", "markdown_block", replace("", {"chunks": []}), add("/chunks/1", "x"))]},
     "expected the add patch's index in '/chunks/1' of the markdown_block to be at most 0, got 1"),
    ({"blocks": [diff("ask_text", "markdown_block", replace("", {"chunks": []}), replace("/chunks/0", "x"))]},
     "expected the replace patch's index in '/chunks/0' of the markdown_block to be at most -1, got 0"),
    ({"blocks": [diff("ask_text", "markdown_block", replace("", {"chunks": ["a"]}), add("/chunks/01", "x"))]},
     "expected an array index in the patch path '/chunks/01'"),
    ({"blocks": [diff("ask_text", "markdown_block", replace("/progress", "DONE"))]},
     "expected the replace patch's path '/progress' in the markdown_block, got no member 'progress'"),
    ({"blocks": [diff("ask_text", "markdown_block", replace("", {"chunks": "s"}), add("/chunks/x/y", 1))]},
     "expected an object or array at '/chunks/x' in the markdown_block, got str"),
    ({"blocks": [diff("ask_text", "markdown_block", replace("", [1]))]},
     "expected a patched markdown_block to be a JSON object, got list"),
    ({"blocks": [diff("workflow_root", "workflow_block", add("/steps/0", {}))]},
     "expected the patch path '/steps' in the workflow_block, got no member 'steps'"),
    ({"blocks": [{"workflow_block": {"steps": [{"items": [{"payload": {"text_payload": {"chunks": 7}}}]}]}}]},
     "expected 'chunks' to be a list, got int: 7"),
    ({"blocks": [{"workflow_block": {"steps": "x"}}]}, "expected workflow steps to be a list"),
    ({"blocks": [{"workflow_block": []}]}, "expected 'workflow_block' to be a JSON object"),
    ({"blocks": [{"workflow_block": {"steps": [{"items": [{"payload": {"queries_payload": {"queries": [3]}}}]}]}}]},
     "expected a query to be a string or {'query': str}, got int: 3"),
    ({"blocks": [{"web_result_block": {"web_results": [5]}}]}, "expected a source to be a URL or a JSON object"),
    ({"blocks": [{"web_result_block": {"web_results": {}}}]}, "expected 'web_results' to be a list"),
    ({"text": "[1, 2"}, "expected the frame's 'text' to be JSON, got str: '[1, 2'"),
    ({"text": "[" * 101 + "]" * 101}, "expected the frame's 'text' nested at most 100 deep"),
    ({"text": 5}, "expected 'text' to hold a list of steps or an answer object, got int: 5"),
    ({"text": "[1]"}, "expected a step in 'text' to be a JSON object, got int: 1"),
    ({"text": '[{"step_type":"FINAL","content":{"answer":7}}]'}, "expected 'answer' to be a string, got int: 7"),
    ({"text": '[{"step_type":"FINAL","content":5}]'}, "expected the FINAL step's content to be a JSON object"),
    ({"text": '{"answer": 1}'}, "expected 'answer' to be a string, got int: 1"),
    ({"text": '[{"step_type":"SEARCH_WEB","content":[]}]'}, "expected the content of a SEARCH_WEB step to be a JSON object"),
]


@pytest.mark.parametrize(("frame", "message"), MALFORMED)
def test_malformed_frames_are_remote_protocol_errors(frame: Any, message: str) -> None:
    decoder = AnswerDecoder()
    decoder.feed({"blocks": [md("ask_text", chunks=["kept"])]})
    with pytest.raises(RemoteProtocolError) as caught:
        decoder.feed(frame)
    assert message in str(caught.value)
    assert str(caught.value).startswith("expected ")
    assert caught.value.partial_text == "kept"
    with pytest.raises(LocalProtocolError):
        decoder.end_of_stream()


# -- limits, at their edges ---------------------------------------------------------------------------------


def test_the_defaults() -> None:
    decoder = AnswerDecoder()
    assert (decoder.max_text, decoder.max_blocks, decoder.max_steps, decoder.max_patches, decoder.max_chunks,
            decoder.max_rewrite) == (DEFAULT_MAX_TEXT, DEFAULT_MAX_BLOCKS, DEFAULT_MAX_STEPS, DEFAULT_MAX_PATCHES,
                                     DEFAULT_MAX_CHUNKS, 16 * DEFAULT_MAX_TEXT)


def test_the_block_limit() -> None:
    assert run([{"blocks": [{}] * 3}], AnswerDecoder(max_blocks=3)) == []
    with pytest.raises(RemoteProtocolError, match="expected at most 3 blocks in a frame, got 4"):
        run([{"blocks": [{}] * 4}], AnswerDecoder(max_blocks=3))


def test_the_answer_tracks_and_plans_kept_are_bounded() -> None:
    tracks = [md(f"ask_text_{n}_markdown", chunks=["x"]) for n in range(3)]
    run([{"blocks": tracks}], AnswerDecoder(max_blocks=3))
    with pytest.raises(RemoteProtocolError, match=r"expected at most 3 answer tracks \(markdown usages\), got 4"):
        run([{"blocks": tracks}, {"blocks": [diff("ask_text", "markdown_block", add("/chunks/0", "y"))]}],
            AnswerDecoder(max_blocks=3))
    plans = [{"intended_usage": f"plan{n}", "plan_block": {}} for n in range(3)]
    run([{"blocks": plans}], AnswerDecoder(max_blocks=3))
    with pytest.raises(RemoteProtocolError, match="expected at most 3 plans, got 4"):
        run([{"blocks": plans}, {"blocks": [{"intended_usage": "plan9", "plan_block": {}}]}], AnswerDecoder(max_blocks=3))


def test_the_patch_limit_counts_every_diff_block_of_a_frame() -> None:
    patch = replace("/progress", "x")
    start = {"blocks": [md("ask_text", progress="")]}
    run([start, {"blocks": [diff("ask_text", "markdown_block", patch, patch), diff("other", "x_block", patch)]}],
        AnswerDecoder(max_patches=3))
    with pytest.raises(RemoteProtocolError, match="expected at most 3 patches in a frame, got 4"):
        run([start, {"blocks": [diff("ask_text", "markdown_block", patch, patch), diff("other", "x_block", patch, patch)]}],
            AnswerDecoder(max_patches=3))


def test_the_step_limit() -> None:
    steps = json.dumps([{"step_type": "INITIAL_QUERY", "content": {}}] * 3)
    run([{"text": steps}], AnswerDecoder(max_steps=3))
    with pytest.raises(RemoteProtocolError, match="expected at most 3 steps in 'text', got 4"):
        run([{"text": json.dumps([{"step_type": "INITIAL_QUERY", "content": {}}] * 4)}], AnswerDecoder(max_steps=3))
    workflow = {"steps": [{"items": [{}]}, {"items": [{}, {}]}, {}]}
    run([{"blocks": [{"workflow_block": workflow}]}], AnswerDecoder(max_steps=3))
    with pytest.raises(RemoteProtocolError, match="expected at most 3 workflow steps, got 4"):
        run([{"blocks": [{"workflow_block": {"steps": [{}] * 4}}]}], AnswerDecoder(max_steps=3))
    with pytest.raises(RemoteProtocolError, match="expected at most 3 items in the workflow, got 4"):
        run([{"blocks": [{"workflow_block": {"steps": [{"items": [{}] * 4}]}}]}], AnswerDecoder(max_steps=3))
    with pytest.raises(RemoteProtocolError, match="expected at most 3 items in the workflow, got 4"):
        run([{"blocks": [{"workflow_block": {"steps": [{"items": [{}] * 2}, {"items": [{}] * 2}]}}]}],
            AnswerDecoder(max_steps=3))
    with pytest.raises(RemoteProtocolError, match="expected at most 3 plan steps, got 4"):
        run([{"blocks": [{"plan_block": {"steps": [{}] * 4}}]}], AnswerDecoder(max_steps=3))


def test_the_chunk_limit() -> None:
    grow = [{"blocks": [md("ask_text", chunks=["a", "b"])]}, {"blocks": [md("ask_text", chunks=["c"], chunk_starting_offset=2)]}]
    assert text_of(run(grow, AnswerDecoder(max_chunks=3))) == "abc"
    with pytest.raises(RemoteProtocolError, match="expected at most 2 chunks in a text, got 3"):
        run(grow, AnswerDecoder(max_chunks=2))
    def patched() -> list[Any]:
        return [{"blocks": [diff("ask_text", "markdown_block", replace("", {"chunks": ["a"]}), add("/chunks/-", "b"))]}]

    assert text_of(run(patched(), AnswerDecoder(max_chunks=2))) == "ab"
    with pytest.raises(RemoteProtocolError, match=r"expected at most 1 members in an array, got 2 at '/chunks/-'"):
        run(patched(), AnswerDecoder(max_chunks=1))
    with pytest.raises(RemoteProtocolError, match="expected at most 1 chunks in a text, got 2"):
        run([{"blocks": [{"workflow_block": {"steps": [{"items": [{"payload": {"text_payload": {"chunks": ["a", "b"]}}}]}]}}]}],
            AnswerDecoder(max_chunks=1))


@pytest.mark.parametrize("shape", ["steps", "blocks", "workflow", "whole"])
def test_the_text_limit(shape: str) -> None:
    def frames(text: str) -> list[Any]:
        if shape == "steps":
            return [{"text": json.dumps([{"step_type": "FINAL", "content": {"answer": json.dumps({"answer": text})}}])}]
        if shape == "blocks":
            return [{"blocks": [md("ask_text", chunks=[text[:2]])]}, {"blocks": [md("ask_text", chunks=[text[2:]], chunk_starting_offset=1)]}]
        if shape == "workflow":
            return [{"blocks": [{"workflow_block": {"steps": [{"items": [{"payload": {"text_payload": {"chunks": list(text)}}}]}]}}]}]
        return [{"blocks": [md("ask_text", answer=text)]}]

    assert finished(run(frames("x" * 10), AnswerDecoder(max_text=10), end=True)).text == "x" * 10
    with pytest.raises(RemoteProtocolError, match="at most 10 characters, got 11"):
        run(frames("x" * 11), AnswerDecoder(max_text=10), end=True)


def test_the_reasoning_limit() -> None:
    def frame(text: str) -> dict[str, Any]:
        return {"blocks": [{"workflow_block": {"steps": [{"items": [{"payload": {"text_payload": {
            "variant": "thinking", "chunks": [text]}}}]}]}}]}

    assert run([frame("r" * 5)], AnswerDecoder(max_text=5)) == [ReasoningDelta(text="r" * 5)]
    with pytest.raises(RemoteProtocolError, match="expected the reasoning to be at most 5 characters, got 6"):
        run([frame("r" * 6)], AnswerDecoder(max_text=5))


def test_the_rewrite_budget() -> None:
    # each replace of chunk 0 makes the text (4 characters) be joined again
    frames = [{"blocks": [diff("ask_text", "markdown_block", replace("", {"chunks": ["ab", "cd"]}))]}]
    frames += [{"blocks": [diff("ask_text", "markdown_block", replace("/chunks/0", f"x{n}"))]} for n in range(3)]
    events = run(frames, AnswerDecoder(max_rewrite=12))
    assert followed(events) == ("x2cd", "")
    with pytest.raises(RemoteProtocolError, match="expected the service to rewrite at most 11 characters of text "
                                                  "already sent, in all, got 12"):
        run(frames, AnswerDecoder(max_rewrite=11))


# -- cost: a 1 MiB answer in each shape --------------------------------------------------------------------

MIB = 1024 * 1024


def answer_frames(shape: str, size: int, piece: int) -> Iterator[dict[str, Any]]:
    """Frames that stream ``size`` characters of answer, ``piece`` at a time, made one at a time."""
    text = "abcdefghij" * (size // 10) + "k" * (size % 10)
    if shape == "steps":
        for end in range(piece, size + piece, piece):
            inner = json.dumps({"answer": text[:end]})
            yield {"status": "PENDING", "text": json.dumps([{"step_type": "FINAL", "content": {"answer": inner}}])}
    elif shape == "blocks":
        yield {"blocks": [diff("ask_text", "markdown_block", replace("", {"chunks": []}))]}
        for n, start in enumerate(range(0, size, piece)):
            yield {"status": "PENDING", "blocks": [diff("ask_text", "markdown_block", add(f"/chunks/{n}", text[start : start + piece]))]}
    else:
        yield {"blocks": [{"intended_usage": "workflow_root", "workflow_block": {"steps": [{"items": [
            {"payload": {"queries_payload": {"queries": ["q"]}}},
            {"payload": {"text_payload": {"variant": "answer", "text": "", "chunks": []}}}]}]}}]}
        for n, start in enumerate(range(0, size, piece)):
            yield {"status": "PENDING", "blocks": [diff("workflow_root", "workflow_block",
                   add(f"/steps/0/items/1/payload/text_payload/chunks/{n}", text[start : start + piece]))]}
    yield {"status": "COMPLETED"}


def decode_time(shape: str, size: int, piece: int) -> float:
    """CPU seconds spent in the decoder for one answer (the frames are built outside the count)."""
    decoder = AnswerDecoder()
    frames = list(answer_frames(shape, size, piece))
    started = time.process_time()
    for frame in frames:
        events = decoder.feed(frame)
    spent = time.process_time() - started
    assert finished(events).text == decoder.partial_text and len(decoder.partial_text) == size
    return spent


def decode_peak(shape: str, size: int, piece: int) -> int:
    """The peak memory of decoding one answer whose frames are made one at a time."""
    decoder = AnswerDecoder()
    tracemalloc.start()
    try:
        for frame in answer_frames(shape, size, piece):
            decoder.feed(frame)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(("shape", "piece"), [("steps", 32 * 1024), ("blocks", 256), ("workflow", 256)])
def test_a_1_mib_answer_costs_linear_time_and_memory(shape: str, piece: int) -> None:
    # the steps shape re-sends the whole answer in each frame: its time is the frames' size (forced by the
    # bytes), so it is measured with fewer, larger pieces; the patch shapes send each piece once
    small = min(decode_time(shape, MIB // 4, piece) for _ in range(2))
    big = min(decode_time(shape, MIB, piece) for _ in range(2))
    # a quarter of the answer in a quarter of the frames: linear work is about 4 times less (16 for the steps
    # shape, whose frames are also a quarter as long); quadratic work would be 16 (64) times less
    assert big / max(small, 1e-3) < (32 if shape == "steps" else 9), (shape, small, big)
    # memory: the answer, its chunks and the frame being read (1 MiB of 256-character chunks is 4096
    # strings of about 300 bytes, 1.2 MiB; the steps shape's last frames hold the answer three times)
    assert decode_peak(shape, MIB, piece) < 12 * MIB


# -- properties ----------------------------------------------------------------------------------------------

chunk = st.text(alphabet="ab\u00e9\U0001f600 ", max_size=4)
operation = st.one_of(
    st.tuples(st.just("add"), chunk),
    st.tuples(st.just("replace"), st.integers(min_value=0, max_value=20), chunk),
    st.tuples(st.just("remove"), st.integers(min_value=0, max_value=20)),
    st.tuples(st.just("whole"), st.lists(chunk, max_size=5)),
    st.tuples(st.just("answer"), chunk),
)


@settings(max_examples=300, deadline=None)
@given(operations=st.lists(st.lists(operation, max_size=4), max_size=12), final=st.one_of(st.none(), chunk),
       shape=st.sampled_from(["markdown_block", "workflow_block"]))
def test_the_deltas_always_join_to_the_final_text(operations: list[list[Any]], final: str | None, shape: str) -> None:
    """Any patches, in any frames: following revisions gives the final text, and without a revision the
    TextDeltas alone do."""
    if shape == "markdown_block":
        usage, prefix, frames = "ask_text", "", [{"blocks": [diff("ask_text", shape, replace("", {"chunks": []}))]}]
    else:
        usage, prefix = "workflow_root", "/steps/0/items/0/payload/text_payload"
        frames = [{"blocks": [{"intended_usage": usage, "workflow_block": {"steps": [{"items": [{"payload": {
            "text_payload": {"text": "", "chunks": []}}}]}]}}]}]
    model: list[str] = []
    whole = ""
    for group in operations:
        patches = []
        for op in group:
            if op[0] == "add":
                patches.append(add(f"{prefix}/chunks/-", op[1]))
                model.append(op[1])
            elif op[0] in ("replace", "remove") and op[1] < len(model):
                if op[0] == "replace":
                    patches.append(replace(f"{prefix}/chunks/{op[1]}", op[2]))
                    model[op[1]] = op[2]
                else:
                    patches.append({"op": "remove", "path": f"{prefix}/chunks/{op[1]}"})
                    del model[op[1]]
            elif op[0] == "whole":
                patches.append(replace(f"{prefix}/chunks", op[1]))
                model = list(op[1])
            elif op[0] == "answer":
                key = "text" if prefix else "answer"
                patches.append(add(f"{prefix}/{key}", op[1]))
                whole = op[1]
        frames.append({"status": "PENDING", "blocks": [diff(usage, shape, *patches)]})
    closing: dict[str, Any] = {"status": "COMPLETED"}
    expected = whole or "".join(model)
    if final is not None:
        key = "text" if prefix else "answer"
        closing["blocks"] = [diff(usage, shape, add(f"{prefix}/{key}", final))]
        expected = final or "".join(model)
    events = run([*frames, closing])
    assert finished(events).text == expected
    assert followed(events) == (expected, "")
    if not any(isinstance(event, AnswerRevised) for event in events):
        assert text_of(events) == expected


json_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8),
              st.sampled_from(["ask_text", "workflow_root", "markdown_block", "workflow_block", "COMPLETED",
                               "FINAL", "/chunks/0", "/steps/0", "add", "replace", "remove", "", "failed"])),
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(
        st.sampled_from(["blocks", "text", "status", "intended_usage", "markdown_block", "diff_block",
                         "workflow_block", "field", "patches", "op", "path", "value", "chunks", "steps", "items",
                         "payload", "text_payload", "answer", "step_type", "content", "web_results",
                         "chunk_starting_offset", "plan_block", "queries", "backend_uuid"]),
        children, max_size=5)),
    max_leaves=30,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.lists(json_value, max_size=5))
def test_hostile_json_meets_only_named_errors(frames: list[Any]) -> None:
    decoder = AnswerDecoder(max_chunks=50, max_steps=20, max_text=500)
    started = time.process_time()
    try:
        for frame in frames:
            decoder.feed(frame)
        decoder.end_of_stream()
    except LabsError as exc:
        assert isinstance(exc, (RemoteProtocolError, ResponseError, RateLimitedError)), exc
        assert str(exc).startswith(("expected ", "the ask service")), exc
    assert time.process_time() - started < 2


small_value = st.recursive(
    st.one_of(st.none(), st.integers(), st.text(max_size=4), st.sampled_from(["thinking", "answer"])),
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(
        st.sampled_from(["steps", "items", "payload", "text_payload", "chunks", "text", "variant"]), children,
        max_size=3)),
    max_leaves=8,
)


def hostile_patch() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({
        "op": st.sampled_from(["add", "replace", "remove"]),
        "path": st.lists(st.sampled_from(["steps", "items", "payload", "text_payload", "chunks", "0", "1", "-",
                                          "text", "variant", "01", "~1"]), max_size=8).map(lambda t: "/" + "/".join(t) if t else ""),
        "value": small_value,
    })


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(patches=st.lists(st.lists(hostile_patch(), max_size=4), max_size=6))
def test_hostile_patches_meet_only_named_errors(patches: list[list[dict[str, Any]]]) -> None:
    decoder = AnswerDecoder(max_chunks=50, max_text=500)
    decoder.feed({"blocks": [{"intended_usage": "workflow_root", "workflow_block": {"steps": [{"items": [
        {"payload": {"text_payload": {"text": "", "chunks": ["a"]}}}]}]}}]})
    try:
        for group in patches:
            decoder.feed({"blocks": [diff("workflow_root", "workflow_block", *group)]})
        events = decoder.end_of_stream()
    except RemoteProtocolError as exc:
        assert str(exc).startswith("expected ")
    else:
        assert finished(events).text == decoder.partial_text


def thinking_frame(*pieces: list[str]) -> dict[str, Any]:
    items = [{"payload": {"text_payload": {"variant": "thinking", "text": "", "chunks": list(piece)}}} for piece in pieces]
    return {"blocks": [{"intended_usage": "workflow_root", "workflow_block": {"steps": [{"items": items}]}}]}


def test_every_thinking_item_is_reasoning() -> None:
    base = "/steps/0/items"
    frames = [
        thinking_frame(["First"]),
        {"blocks": [diff("workflow_root", "workflow_block", add(f"{base}/0/payload/text_payload/chunks/-", " thought."),
                         add(f"{base}/-", {"payload": {"text_payload": {"variant": "thinking", "chunks": []}}}))]},
        {"blocks": [diff("workflow_root", "workflow_block", add(f"{base}/1/payload/text_payload/chunks/0", "Second."))]},
        {"blocks": [diff("workflow_root", "workflow_block", replace(f"{base}/0/payload/text_payload/chunks/0", "1st"))]},
        {"status": "COMPLETED"},
    ]
    assert run(frames) == [
        ReasoningDelta(text="First"),
        ReasoningDelta(text=" thought."),
        ReasoningDelta(text="\n\nSecond."),
        AnswerRevised(text="", reasoning="1st thought.\n\nSecond."),
        AnswerFinished(model="", text="", reasoning="1st thought.\n\nSecond."),
    ]


@settings(max_examples=200, deadline=None)
@given(operations=st.lists(st.tuples(st.integers(min_value=0, max_value=2), operation), max_size=15),
       final=st.lists(st.one_of(st.none(), chunk), min_size=3, max_size=3))
def test_the_reasoning_deltas_join_to_the_final_reasoning(operations: list[Any], final: list[str | None]) -> None:
    """Three thinking items patched in any order: following revisions gives the final reasoning (the items'
    texts joined with a blank line), and without a revision the ReasoningDeltas alone do."""
    models: list[list[str]] = [[], [], []]
    wholes = ["", "", ""]
    frames: list[Any] = [thinking_frame([], [], [])]
    for item, op in operations:
        prefix = f"/steps/0/items/{item}/payload/text_payload"
        model = models[item]
        if op[0] == "add":
            patch = add(f"{prefix}/chunks/-", op[1])
            model.append(op[1])
        elif op[0] == "replace" and op[1] < len(model):
            patch = replace(f"{prefix}/chunks/{op[1]}", op[2])
            model[op[1]] = op[2]
        elif op[0] == "remove" and op[1] < len(model):
            patch = {"op": "remove", "path": f"{prefix}/chunks/{op[1]}"}
            del model[op[1]]
        elif op[0] == "whole":
            patch = replace(f"{prefix}/chunks", op[1])
            models[item] = list(op[1])
        elif op[0] == "answer":
            patch = replace(f"{prefix}/text", op[1])
            wholes[item] = op[1]
        else:
            continue
        frames.append({"blocks": [diff("workflow_root", "workflow_block", patch)]})
    closing = [replace(f"/steps/0/items/{n}/payload/text_payload/text", text) for n, text in enumerate(final) if text is not None]
    for n, text in enumerate(final):
        if text is not None:
            wholes[n] = text
    frames.append({"status": "COMPLETED", "blocks": [diff("workflow_root", "workflow_block", *closing)]})
    expected = "\n\n".join(part for part in (whole or "".join(model) for whole, model in zip(wholes, models, strict=True)) if part)
    events = run(frames)
    assert finished(events).reasoning == expected
    assert followed(events) == ("", expected)
    if not any(isinstance(event, AnswerRevised) for event in events):
        assert "".join(event.text for event in events if isinstance(event, ReasoningDelta)) == expected
