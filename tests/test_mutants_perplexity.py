"""Tests that kill the mutants mutmut found alive in the Perplexity service's modules (issue 19).

Each test says what a user or the peer would see go wrong; benchmarks/mutation-perplexity.md lists
the mutants and why the ones still alive are equivalent.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from test_perplexity_session import SSE_HEAD, asked, frame, markdown, ready, session, sse, texts

from plabs_proto.config import SessionConfig
from plabs_proto.errors import (
    AnswerFailedError,
    AnswerRateLimitedError,
    LabsError,
    LabsTimeout,
    LocalProtocolError,
    NetworkError,
    RemoteProtocolError,
    SignInError,
    UnexpectedPageError,
)
from plabs_proto.events import (
    AnswerFinished,
    AnswerRevised,
    Citations,
    Event,
    HTTPRequest,
    ReasoningDelta,
    SearchQueries,
    SourcesRead,
    TextDelta,
    ThreadIdentity,
)
from plabs_proto.jsondepth import MAX_DEPTH
from plabs_proto.perplexity.answer import DEFAULT_MAX_CHUNKS, MAX_POINTER, AnswerDecoder, load_frame
from plabs_proto.perplexity.request import (
    Model,
    ask_body,
    ask_request,
    parse_catalog,
    read_cookies_txt,
    warmup_request,
)
from plabs_proto.perplexity.search import Search, source
from plabs_proto.perplexity.session import ERROR_BODY_LIMIT, PerplexitySession
from plabs_proto.perplexity.shape import excerpt
from plabs_proto.perplexity.sse import SSEDecoder, SSEEvent
from plabs_proto.state import SessionState

# -- sse.py: the event stream's bytes ------------------------------------------------------------------------


def test_the_smallest_limits_are_taken_and_below_them_refused() -> None:
    assert SSEDecoder(max_data=0).feed(b"data\n\n") == [SSEEvent(data="")]
    decoder = SSEDecoder(max_line=1)
    assert decoder.feed(b"\n:\r\nx\n\n") == []  # lines of one character: taken
    with pytest.raises(RemoteProtocolError) as caught:
        decoder.feed(b"ab")
    assert str(caught.value) == "expected a line of at most 1 characters, got 2 or more"
    for limits in ({"max_line": 0}, {"max_data": -1}):
        with pytest.raises(LocalProtocolError) as refused:
            SSEDecoder(**limits)
        assert str(refused.value) == (
            f"expected max_line >= 1 and max_data >= 0, got max_line={limits.get('max_line', 16 * 1024 * 1024 + 1024)}, "
            f"max_data={limits.get('max_data', 16 * 1024 * 1024)}"
        )


def test_every_line_of_a_piece_counts_from_its_own_start() -> None:
    # two lines of exactly the limit in one piece: both taken (the second starts 11 characters in)
    decoder = SSEDecoder(max_line=10)
    assert decoder.feed(b"data: 4567\ndata: 89ab\n\n") == [SSEEvent(data="4567\n89ab")]
    with pytest.raises(RemoteProtocolError) as caught:
        decoder.feed(b"data: 1\ndata: 89abc\n")
    assert str(caught.value) == "expected a line of at most 10 characters, got 11 or more"


def test_a_line_cut_between_pieces_counts_from_its_own_start() -> None:
    # "data: 4567" (10 characters) starts 9 characters into the first piece and ends in the next
    decoder = SSEDecoder(max_line=10)
    assert decoder.feed(b"data: a\n\ndata: 4567") == [SSEEvent(data="a")]
    assert decoder.feed(b"\n\n") == [SSEEvent(data="4567")]
    with pytest.raises(RemoteProtocolError) as caught:
        SSEDecoder(max_line=10).feed(b"data: a\n\ndata: 45678")
    assert str(caught.value) == "expected a line of at most 10 characters, got 11 or more"


def test_a_piece_that_continues_a_line_is_not_taken_for_a_whole_event() -> None:
    # the second piece looks like an event in the service's form, but it ends the line the first began
    decoder = SSEDecoder()
    assert decoder.feed(b"data: ") == []
    assert decoder.feed(b"data: x\r\n\r\n") == [SSEEvent(data="data: x")]
    assert decoder.feed(b"event: ") == []
    assert decoder.feed(b"event: message\r\ndata: y\r\n\r\n") == [SSEEvent(event="event: message", data="y")]


def test_a_piece_that_begins_with_a_line_end_and_ends_with_a_cr() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n") == []
    assert decoder.feed(b"\ndata: b\r") == [SSEEvent(data="a")]  # a blank line first
    assert decoder.feed(b"\n\n") == [SSEEvent(data="b")]  # the LF after the CR, then a blank line


def test_the_data_limit_counts_data_lines_without_a_space_after_the_colon() -> None:
    # "45", "\n" and "6": 4 characters
    assert SSEDecoder(max_data=4).feed(b"data:45\ndata:6\n\n") == [SSEEvent(data="45\n6")]
    with pytest.raises(RemoteProtocolError) as caught:
        SSEDecoder(max_data=3).feed(b"data:45\ndata:6\n\n")
    assert str(caught.value) == "expected an event's data of at most 3 characters, got 4"


def test_nothing_is_taken_after_a_limit_was_passed() -> None:
    for limits, stream in (({"max_line": 4}, b"data: x\n"), ({"max_data": 1}, b"data: xy\n")):
        decoder = SSEDecoder(**limits)
        with pytest.raises(RemoteProtocolError):
            decoder.feed(stream)
        with pytest.raises(LocalProtocolError) as caught:
            decoder.feed(b"\n\n")
        assert str(caught.value) == "expected no feed() after end() or an error, got 2 more bytes"
        with pytest.raises(LocalProtocolError) as ended:
            decoder.end()
        assert str(ended.value) == "expected one end() and no end() after an error, got another"


def test_the_utf8_errors_show_the_bytes_found() -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        SSEDecoder().feed(b"data: \xffabcdef\n\n")
    assert str(caught.value) == "expected UTF-8 in the event stream, got b'\\xffabc' (invalid start byte)"
    decoder = SSEDecoder()
    decoder.feed(b"data: \xe2\x82")
    with pytest.raises(RemoteProtocolError) as cut:
        decoder.end()
    assert str(cut.value) == (
        "expected the event stream to end after a whole UTF-8 sequence, got b'\\xe2\\x82' at its end"
    )


def test_a_second_end_is_refused() -> None:
    decoder = SSEDecoder()
    assert decoder.end() is False
    with pytest.raises(LocalProtocolError) as caught:
        decoder.end()
    assert str(caught.value) == "expected one end() and no end() after an error, got another"


def test_an_unfinished_line_of_one_character_is_an_unfinished_event() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\nx") == [SSEEvent(data="a")]
    assert decoder.end() is True


def test_only_a_bom_at_the_start_of_the_stream_is_dropped_not_one_at_the_start_of_a_piece() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a") == []
    assert decoder.feed(b"\xef\xbb\xbfb\n\n") == [SSEEvent(data="a\ufeffb")]
    decoder = SSEDecoder()
    assert decoder.feed(b"\xef\xbb\xbf") == []
    assert decoder.feed(b"\xef\xbb\xbfdata: c\n\n") == []  # the second BOM is part of the field's name


def test_a_retry_of_18_digits_is_taken_and_one_of_19_ignored() -> None:
    decoder = SSEDecoder()
    assert decoder.retry is None
    assert decoder.feed(b"retry: " + b"9" * 18 + b"\ndata: a\n\n") == [SSEEvent(data="a", retry=10**18 - 1)]
    assert decoder.retry == 10**18 - 1
    assert decoder.feed(b"retry: 1" + b"0" * 18 + b"\ndata: b\n\n") == [SSEEvent(data="b")]
    assert decoder.retry == 10**18 - 1

# -- patch.py: RFC 6902 patches, seen through what they patch ------------------------------------------------


def diff(field: str, *patches: dict[str, Any], usage: str = "ask_text") -> dict[str, Any]:
    """A frame with one diff_block against ``field``."""
    return {"blocks": [{"intended_usage": usage, "diff_block": {"field": field, "patches": list(patches)}}]}


def web(*patches: dict[str, Any]) -> dict[str, Any]:
    return diff("web_result_block", *patches, usage="web_results")


def cited(events: list[Event]) -> list[str]:
    """The URLs of the last Citations event."""
    last = [event for event in events if isinstance(event, Citations)][-1]
    return [citation["url"] for citation in last.citations]


def urls(decoder: AnswerDecoder, *patches: dict[str, Any]) -> list[str]:
    return cited(decoder.feed(web(*patches)))


def start(*results: str, max_chunks: int = DEFAULT_MAX_CHUNKS) -> AnswerDecoder:
    """A decoder whose web results are ``results``."""
    decoder = AnswerDecoder(max_chunks=max_chunks)
    assert urls(decoder, {"op": "replace", "path": "", "value": {"web_results": list(results)}}) == list(results)
    return decoder


def test_add_replace_and_remove_at_each_index_of_an_array() -> None:
    d = start("a", "b")
    assert urls(d, {"op": "add", "path": "/web_results/2", "value": "c"}) == ["a", "b", "c"]  # at the end
    assert urls(d, {"op": "add", "path": "/web_results/0", "value": "z"}) == ["z", "a", "b", "c"]
    assert urls(d, {"op": "add", "path": "/web_results/-", "value": "d"}) == ["z", "a", "b", "c", "d"]
    assert urls(d, {"op": "replace", "path": "/web_results/4", "value": "D"}) == ["z", "a", "b", "c", "D"]
    assert urls(d, {"op": "replace", "path": "/web_results/0", "value": "Z"}) == ["Z", "a", "b", "c", "D"]
    assert urls(d, {"op": "remove", "path": "/web_results/4"}) == ["Z", "a", "b", "c"]
    assert urls(d, {"op": "remove", "path": "/web_results/0"}) == ["a", "b", "c"]
    assert urls(d, {"op": "remove", "path": "/web_results/1", "value": "ignored"}) == ["a", "c"]


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"op": "add", "path": "/web_results/3", "value": "x"},
         "expected the add patch's index in '/web_results/3' of the web_result_block to be at most 2, got 3"),
        ({"op": "replace", "path": "/web_results/2", "value": "x"},
         "expected the replace patch's index in '/web_results/2' of the web_result_block to be at most 1, got 2"),
        ({"op": "remove", "path": "/web_results/2"},
         "expected the remove patch's index in '/web_results/2' of the web_result_block to be at most 1, got 2"),
        ({"op": "remove", "path": "/web_results/-"},
         "expected an array index in the patch path '/web_results/-' of the web_result_block, got '-'"),
        ({"op": "add", "path": "/web_results/" + "9" * 18, "value": "x"},
         "to be at most 2, got 999999999999999999"),  # 18 digits: an index, out of range
        ({"op": "add", "path": "/web_results/" + "1" * 19, "value": "x"},
         "expected an array index in the patch path '/web_results/1111111111111111111'"),  # 19: not one
        ({"op": "add", "path": "/web_results/-1", "value": "x"}, "expected an array index in the patch path"),
        ({"op": "add", "path": "/web_results/1/url", "value": "x"},
         "expected an object or array at the parent of '/web_results/1/url' in the web_result_block, got str: 'b'"),
        ({"op": "add", "path": "/web_results/2/url", "value": "x"},
         "expected an index below 2 at '/web_results/2' in the web_result_block, got '2'"),
        ({"op": "add", "path": "/web_results/01/url", "value": "x"},
         "expected an index below 2 at '/web_results/01' in the web_result_block, got '01'"),
        ({"op": "replace", "path": "/other", "value": "x"},
         "expected the replace patch's path '/other' in the web_result_block, got no member 'other'"),
        ({"op": "remove", "path": "/a~1b"},
         "expected the remove patch's path '/a/b' in the web_result_block, got no member 'a/b'"),
        ({"op": "remove", "path": "/~01"},  # ~1 read after ~0 would make this '/'
         "expected the remove patch's path '/~1' in the web_result_block, got no member '~1'"),
        ({"op": "add", "path": "/x/y", "value": 1},
         "expected the patch path '/x' in the web_result_block, got no member 'x'"),
        ({"op": "move", "path": "/x", "from": "/y"}, "expected a patch 'op' of add, replace or remove, got str: 'move'"),
        ({"path": "/x", "value": 1}, "expected a patch 'op' of add, replace or remove, got NoneType: None"),
        ({"op": "add", "path": 5, "value": 1}, "expected a patch 'path' to be a string, got int: 5"),
        ({"op": "add", "path": "x", "value": 1}, "expected a patch 'path' that is empty or starts with '/', got str: 'x'"),
        ({"op": "replace", "path": "/x"}, "expected a 'value' in an replace patch at '/x', got none"),
        ([], "expected each patch to be a JSON object, got list: []"),
    ],
)
def test_a_patch_that_does_not_fit_is_refused_naming_what_it_found(patch: Any, message: str) -> None:
    d = start("a", "b")
    with pytest.raises(RemoteProtocolError) as caught:
        d.feed(web(patch))
    assert message in str(caught.value) and str(caught.value).startswith("expected ")


def test_a_patch_without_a_path_replaces_the_whole_block() -> None:
    d = start("a")
    assert urls(d, {"op": "add", "value": {"web_results": ["b"]}}) == ["b"]  # no path: the root
    assert d.feed(web({"op": "remove", "path": ""})) == [Citations(citations=())]  # an empty block


def test_the_path_length_limit() -> None:
    assert MAX_POINTER == 32
    deep: dict[str, Any] = {}
    for _ in range(MAX_POINTER - 1):
        deep = {"k": deep}
    d = start("a")
    d.feed(web({"op": "add", "path": "/deep", "value": deep}))
    path = "/deep" + "/k" * (MAX_POINTER - 2)
    assert path.count("/") == MAX_POINTER - 1
    d.feed(web({"op": "add", "path": path + "/k", "value": 1}))  # 32 tokens: taken
    d.feed(web({"op": "replace", "path": path + "/k", "value": 2}))
    with pytest.raises(RemoteProtocolError) as caught:  # 33 tokens: refused, whatever the field
        start("a").feed(diff("unknown_block", {"op": "add", "path": path + "/k/k", "value": 1}))
    assert str(caught.value) == "expected a patch 'path' of at most 32 tokens, got 33"


def test_the_members_limit_of_an_object_and_an_array() -> None:
    # a patch may grow an object or an array to max_chunks members, no more
    d = start("a", max_chunks=3)
    d.feed(web({"op": "add", "path": "/b", "value": 1}, {"op": "add", "path": "/c", "value": 2}))  # 3 members
    d.feed(web({"op": "add", "path": "/b", "value": 3}))  # an existing member: replaced, not a fourth
    with pytest.raises(RemoteProtocolError) as caught:
        d.feed(web({"op": "add", "path": "/d", "value": 4}))
    assert str(caught.value) == "expected at most 3 members in an object, got 4 at '/d'"
    d = start("a", "b", "c", max_chunks=3)
    assert urls(d, {"op": "replace", "path": "/web_results/0", "value": "x"}) == ["x", "b", "c"]
    with pytest.raises(RemoteProtocolError) as caught:
        d.feed(web({"op": "add", "path": "/web_results/0", "value": "y"}))
    assert str(caught.value) == "expected at most 3 members in an array, got 4 at '/web_results/0'"


def answer(*patches: dict[str, Any]) -> dict[str, Any]:
    return diff("markdown_block", *patches)


def test_a_patch_before_the_text_sent_revises_it_and_one_after_only_adds() -> None:
    d = AnswerDecoder()
    assert d.feed(answer({"op": "replace", "path": "", "value": {"chunks": ["ab", "cd"]}})) == [TextDelta(text="abcd")]
    assert d.feed(answer({"op": "add", "path": "/chunks/2", "value": "ef"})) == [TextDelta(text="ef")]
    assert d.feed(answer({"op": "add", "path": "/chunks/-", "value": "gh"})) == [TextDelta(text="gh")]
    assert d.feed(answer({"op": "add", "path": "/chunks/3", "value": "X"})) == [
        AnswerRevised(text="abcdefXgh", reasoning="")
    ]
    # the lowest index of a frame counts, in whatever order its patches come
    assert d.feed(answer({"op": "replace", "path": "/chunks/4", "value": "GH"},
                         {"op": "replace", "path": "/chunks/1", "value": "CD"})) == [
        AnswerRevised(text="abCDefXGH", reasoning="")
    ]
    assert d.feed(answer({"op": "remove", "path": "/chunks/0"})) == [AnswerRevised(text="CDefXGH", reasoning="")]
    assert d.feed(answer({"op": "remove", "path": "/chunks/2"})) == [AnswerRevised(text="CDefGH", reasoning="")]


def test_a_rewrite_budget_set_after_construction_counts() -> None:
    # max_rewrite is a property like the other limits: set on a decoder, it is the one applied (it was
    # read once, at construction, so a budget set later was ignored)
    d = AnswerDecoder()
    d.max_rewrite = 4
    assert d.feed(answer({"op": "replace", "path": "", "value": {"chunks": ["ab", "cd"]}})) == [TextDelta(text="abcd")]
    assert d.feed(answer({"op": "replace", "path": "/chunks/0", "value": "x"})) == [
        AnswerRevised(text="xcd", reasoning="")
    ]  # "abcd" joined again: 4 characters, the budget
    with pytest.raises(RemoteProtocolError) as caught:
        d.feed(answer({"op": "replace", "path": "/chunks/0", "value": "y"}))  # "xcd" again: 7 in all
    assert str(caught.value) == (
        "expected the service to rewrite at most 4 characters of text already sent, in all, got 7"
    )


def test_a_frame_that_changes_a_chunk_sent_and_then_one_not_yet_sent_revises_the_text() -> None:
    d = AnswerDecoder()
    assert d.feed(answer({"op": "replace", "path": "", "value": {"chunks": ["ab", "cd"]}})) == [TextDelta(text="abcd")]
    # chunk 0 (sent) changes, then chunk 2 (new) is added and changed: the text is revised, not extended
    assert d.feed(answer({"op": "replace", "path": "/chunks/0", "value": "AB"},
                         {"op": "add", "path": "/chunks/-", "value": "ef"},
                         {"op": "replace", "path": "/chunks/2", "value": "EF"})) == [
        AnswerRevised(text="ABcdEF", reasoning="")
    ]


def test_removing_a_whole_block_leaves_an_empty_object_to_patch() -> None:
    d = AnswerDecoder()
    assert d.feed(answer({"op": "replace", "path": "", "value": {"chunks": ["ab"]}})) == [TextDelta(text="ab")]
    assert d.feed(answer({"op": "remove", "path": ""})) == []
    assert d.feed(answer({"op": "add", "path": "/chunks", "value": ["new"]})) == [AnswerRevised(text="new", reasoning="")]


def test_the_depth_limit_of_a_frame_and_of_its_text() -> None:
    assert MAX_DEPTH == 100
    deepest: Any = []
    for _ in range(MAX_DEPTH - 1):
        deepest = [deepest]
    assert load_frame("[" * 100 + "]" * 100) == deepest  # 100 deep: taken
    with pytest.raises(RemoteProtocolError) as caught:
        load_frame("[" * 101 + "]" * 101)
    assert str(caught.value).startswith("expected an answer frame nested at most 100 deep, got deeper nesting in")
    with pytest.raises(RemoteProtocolError) as shape:  # 100 deep: read, and refused for its shape
        AnswerDecoder().feed({"text": "[" * 100 + "]" * 100})
    assert str(shape.value) == "expected a step in 'text' to be a JSON object, got list: [[[...]]]"
    with pytest.raises(RemoteProtocolError) as deep:
        AnswerDecoder().feed({"text": "[" * 101 + "]" * 101})
    assert str(deep.value).startswith("expected the frame's 'text' nested at most 100 deep, got deeper nesting in")


# -- answer.py: the decoder's frame, its end, its errors -----------------------------------------------------


def test_an_error_at_the_end_of_the_stream_carries_the_text_so_far_and_ends_the_decoder() -> None:
    # the whole answer the service sent (11 characters) is past max_text; the chunks streamed were not
    workflow = {"steps": [{"items": [
        {"payload": {"text_payload": {"variant": "thinking", "chunks": ["r"]}}},
        {"payload": {"text_payload": {"variant": "answer", "chunks": ["ab"], "text": "x" * 11}}},
    ]}]}
    d = AnswerDecoder(max_text=10)
    assert d.feed({"blocks": [{"workflow_block": workflow}]}) == [ReasoningDelta(text="r"), TextDelta(text="ab")]
    with pytest.raises(RemoteProtocolError) as caught:
        d.end_of_stream()
    assert str(caught.value) == "expected the answer to be at most 10 characters, got 11"
    assert (caught.value.partial_text, caught.value.partial_reasoning) == ("ab", "r")
    with pytest.raises(LocalProtocolError) as again:
        d.end_of_stream()
    assert str(again.value) == "expected no end_of_stream() after an error, got one"
    with pytest.raises(LocalProtocolError) as fed:
        d.feed({})
    assert str(fed.value) == "expected no feed() after an error, got dict: {}"


@pytest.mark.parametrize("key", ["backend_uuid", "read_write_token", "thread_url_slug"])
def test_a_thread_field_that_is_not_a_string_is_named_with_what_came(key: str) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        AnswerDecoder().feed({key: 5})
    assert str(caught.value) == f"expected {key!r} to be a string, got int: 5"


def test_an_error_in_a_frame_carries_the_reasoning_so_far() -> None:
    d = AnswerDecoder()
    thinking = {"steps": [{"items": [{"payload": {"text_payload": {"variant": "thinking", "chunks": ["hm"]}}}]}]}
    assert d.feed({"blocks": [{"workflow_block": thinking}]}) == [ReasoningDelta(text="hm")]
    with pytest.raises(RemoteProtocolError) as caught:
        d.feed({"blocks": 5})
    assert (caught.value.partial_text, caught.value.partial_reasoning) == ("", "hm")


def test_a_thread_field_a_frame_leaves_out_is_kept_from_the_frames_before() -> None:
    d = AnswerDecoder()
    assert d.feed({"backend_uuid": "b1", "read_write_token": "t1", "thread_url_slug": "s1"}) == [
        ThreadIdentity(backend_uuid="b1", read_write_token="t1", thread_url_slug="s1")
    ]
    assert d.feed({"backend_uuid": "b1", "read_write_token": "t2"}) == [
        ThreadIdentity(backend_uuid="b1", read_write_token="t2", thread_url_slug="s1")
    ]
    assert d.feed({"backend_uuid": "b1", "thread_url_slug": "s2"}) == [
        ThreadIdentity(backend_uuid="b1", read_write_token="t2", thread_url_slug="s2")
    ]
    assert d.feed({"backend_uuid": "b1", "read_write_token": "", "thread_url_slug": None}) == []


def test_an_empty_or_odd_display_model_does_not_replace_the_one_named() -> None:
    d = AnswerDecoder(model="given")
    d.feed({"display_model": "turbo"})
    d.feed({"display_model": ""})
    d.feed({"display_model": 5})
    assert d.feed({"status": "COMPLETED"}) == [AnswerFinished(model="turbo", text="", reasoning="")]


def test_the_frames_top_level_web_results_are_the_citations() -> None:
    d = AnswerDecoder()
    blocks = [{"intended_usage": "web_results", "web_result_block": {"web_results": ["https://b.test/"]}}]
    assert d.feed({"web_results": ["https://a.test/"], "blocks": blocks}) == [
        Citations(citations=({"url": "https://a.test/", "title": ""},))
    ]


def test_an_error_code_that_is_not_a_string_is_shown_as_json_in_100_characters() -> None:
    with pytest.raises(AnswerFailedError) as caught:
        AnswerDecoder().feed({"error_code": 5001})
    assert (caught.value.error_code, str(caught.value)) == (
        "5001", "the ask service reported a failure for the query: 5001"
    )
    with pytest.raises(AnswerFailedError) as long:
        AnswerDecoder().feed({"error_code": {"k": "v" * 200}})
    assert long.value.error_code == '{"k": "' + "v" * 93  # the JSON cut to 100 characters, no more


def test_an_error_message_that_is_not_a_string_is_passed_over_for_the_text() -> None:
    with pytest.raises(AnswerFailedError) as caught:
        AnswerDecoder().feed({"status": "failed", "error_message": ["x"], "text": "boom"})
    assert (caught.value.error_code, caught.value.server_text) == (None, "boom")
    assert str(caught.value) == "the ask service reported a failure for the query: boom"


@pytest.mark.parametrize(
    ("frame", "error", "message", "code", "words"),
    [
        ({"status": "failed"}, AnswerFailedError, "reported a failure for the query: (no text)", None, ""),
        # the text of a frame that did not fail is answer text, not the failure's words
        ({"error_code": "X", "text": "partial"}, AnswerFailedError, "reported a failure for the query: X", "X", ""),
        ({"error_code": "E" * 150}, AnswerFailedError, "reported a failure for the query: " + "E" * 97 + "...",
         "E" * 97 + "...", ""),  # a code is cut to 100 characters
        ({"error_code": "FREE_TIER_RATE_LIMITED", "error_message": "slow down"}, AnswerRateLimitedError,
         "refused the query for a quota: slow down (FREE_TIER_RATE_LIMITED)", "FREE_TIER_RATE_LIMITED", "slow down"),
    ],
)
def test_the_failures_words_and_code(
    frame: dict[str, Any], error: type[LabsError], message: str, code: str | None, words: str
) -> None:
    with pytest.raises(error) as caught:
        AnswerDecoder().feed(frame)
    assert str(caught.value) == "the ask service " + message
    assert (caught.value.error_code, caught.value.server_text) == (code, words)  # type: ignore[attr-defined]


def test_a_model_that_is_not_a_string_is_refused_and_no_thread_before_one_is_named() -> None:
    with pytest.raises(LocalProtocolError) as caught:
        AnswerDecoder(model=5)  # type: ignore[arg-type]
    assert str(caught.value) == "expected the model as a str, got int: 5"
    assert AnswerDecoder().thread is None


# -- blocks.py: the blocks and workflow shapes ---------------------------------------------------------------


def workflow(steps: Any) -> dict[str, Any]:
    return {"blocks": [{"intended_usage": "workflow_root", "workflow_block": {"steps": steps}}]}


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        ({"blocks": [{"intended_usage": "plan", "plan_block": 5}]}, "expected a plan_block to be a JSON object, got int: 5"),
        ({"blocks": [{"intended_usage": "plan", "plan_block": {"steps": [5]}}]},
         "expected a plan step to be a JSON object, got int: 5"),
        ({"blocks": [{"intended_usage": "plan", "plan_block": {"steps": [{"search_web_content": 5}]}}]},
         "expected 'search_web_content' to be a JSON object, got int: 5"),
        ({"blocks": [{"intended_usage": "plan", "plan_block": {"steps": [{"read_results_content": 5}]}}]},
         "expected 'read_results_content' to be a JSON object, got int: 5"),
        ({"blocks": [{"intended_usage": "ask_text", "markdown_block": 5}]},
         "expected 'markdown_block' to be a JSON object, got int: 5"),
        ({"blocks": [{"intended_usage": "ask_text", "markdown_block": {"chunks": "abc"}}]},
         "expected 'chunks' to be a list in a markdown_block, got str: 'abc'"),
        ({"blocks": [{"intended_usage": "ask_text", "markdown_block": {"chunks": ["a"], "chunk_starting_offset": 2}}]},
         "expected 'chunk_starting_offset' 0 in the first markdown_block, got int: 2"),
        (diff("workflow_block", {"op": "replace", "path": "", "value": 5}, usage="workflow_root"),
         "expected the workflow_block to be a JSON object, got int: 5"),
        (workflow([5]), "expected a workflow step to be a JSON object, got int: 5"),
        (workflow([{"items": 5}]), "expected items in a workflow step to be a list, got int: 5"),
        (workflow([{"items": [5]}]), "expected a workflow item to be a JSON object, got int: 5"),
        (workflow([{"items": [{"payload": 5}]}]), "expected an item's 'payload' to be a JSON object, got int: 5"),
        ({"blocks": [{"workflow_block": 5}]}, "expected 'workflow_block' to be a JSON object, got int: 5"),
        ({"blocks": [{"intended_usage": "ask_text", "diff_block": {"field": 3, "patches": []}}]},
         "expected the diff_block's 'field' to be a string, got int: 3"),
        ({"blocks": [{"intended_usage": "ask_text", "diff_block": {"field": "markdown_block", "patches": {}}}]},
         "expected 'patches' to be a list, got dict: {}"),
        (workflow([{"items": [{"payload": {"queries_payload": 5}}]}]),
         "expected 'queries_payload' to be a JSON object, got int: 5"),
        (workflow([{"items": [{"payload": {"sources_payload": 5}}]}]),
         "expected 'sources_payload' to be a JSON object, got int: 5"),
        (workflow([{"items": [{"payload": {"text_payload": 5}}]}]), "expected a 'text_payload' to be a JSON object, got int: 5"),
    ],
)
def test_a_block_of_the_wrong_shape_is_refused_naming_the_part(frame: dict[str, Any], message: str) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        AnswerDecoder().feed(frame)
    assert str(caught.value) == message


def md_frame(chunks: list[str] | None = None, offset: int | None = None, **more: Any) -> dict[str, Any]:
    block: dict[str, Any] = dict(more)
    if chunks is not None:
        block["chunks"] = chunks
    if offset is not None:
        block["chunk_starting_offset"] = offset
    return {"blocks": [{"intended_usage": "ask_text", "markdown_block": block}]}


def test_a_markdown_block_without_chunks_keeps_the_chunks_held() -> None:
    d = AnswerDecoder()
    assert d.feed(md_frame(["ab"])) == [TextDelta(text="ab")]
    assert d.feed(md_frame(progress="DONE")) == []
    assert d.feed(md_frame(["cd"], 1)) == [TextDelta(text="cd")]


def test_chunks_from_an_offset_are_compared_with_the_chunks_held_from_that_offset() -> None:
    d = AnswerDecoder()
    assert d.feed(md_frame(["b", "a", "c"])) == [TextDelta(text="bac")]
    # from chunk 1: "a" is the same, "b" replaces "c"
    assert d.feed(md_frame(["a", "b"], 1)) == [AnswerRevised(text="bab", reasoning="")]
    # chunks the same from the offset on, then one more: only added, nothing joined again
    d = AnswerDecoder(max_rewrite=0)
    assert d.feed(md_frame(["x", "b", "c"])) == [TextDelta(text="xbc")]
    assert d.feed(md_frame(["b", "c", "d"], 1)) == [TextDelta(text="d")]


def test_the_answer_tracks_limit_counts_whole_markdown_blocks_too() -> None:
    d = AnswerDecoder(max_blocks=1)
    assert d.feed(md_frame(["a"])) == [TextDelta(text="a")]
    assert d.feed(md_frame(["a", "b"])) == [TextDelta(text="b")]  # the same track again: taken
    with pytest.raises(RemoteProtocolError) as caught:
        d.feed({"blocks": [{"intended_usage": "ask_text_1_markdown", "markdown_block": {"chunks": ["x"]}}]})
    assert str(caught.value) == "expected at most 1 answer tracks (markdown usages), got 2"


def test_which_blocks_are_answer_text_and_which_are_not() -> None:
    # a markdown block of another usage (no "markdown" in it, not ask_text) is not answer text, whole or patched
    other = {"blocks": [{"intended_usage": "summary", "markdown_block": {"chunks": ["zzz"]}}]}
    assert AnswerDecoder().feed(other) == []
    assert AnswerDecoder().feed(diff("markdown_block", {"op": "replace", "path": "", "value": {"chunks": ["zzz"]}},
                                     usage="summary")) == []
    # a diff_block without a field patches the block its usage implies: markdown for the answer's usages...
    no_field = {"blocks": [{"intended_usage": "ask_text", "diff_block": {
        "patches": [{"op": "replace", "path": "", "value": {"chunks": ["hi"]}}]}}]}
    assert AnswerDecoder().feed(no_field) == [TextDelta(text="hi")]
    # ...the workflow for workflow_root, and nothing for any other usage
    d = AnswerDecoder()
    assert d.feed(workflow([{"items": [{"payload": {"text_payload": {"variant": "answer", "chunks": ["a"]}}}]}])) == [
        TextDelta(text="a")
    ]
    path = "/steps/0/items/0/payload/text_payload/chunks/-"
    assert d.feed({"blocks": [{"intended_usage": "other", "diff_block": {
        "patches": [{"op": "add", "path": path, "value": "x"}]}}]}) == []
    assert d.feed({"blocks": [{"intended_usage": "workflow_root", "diff_block": {
        "patches": [{"op": "add", "path": path, "value": "b"}]}}]}) == [TextDelta(text="b")]
    # a diff_block without patches changes nothing
    assert d.feed({"blocks": [{"intended_usage": "workflow_root", "diff_block": {"field": "workflow_block"}}]}) == []
    # the sources of sources_mode_block are citations as web_result_block's are
    assert AnswerDecoder().feed({"blocks": [{"sources_mode_block": {"web_results": ["https://s.test/"]}}]}) == [
        Citations(citations=({"url": "https://s.test/", "title": ""},))
    ]


def test_a_track_or_plan_already_kept_is_not_one_more_at_the_limit() -> None:
    d = AnswerDecoder(max_blocks=1)
    assert d.feed(md_frame()) == []  # an empty ask_text block: the one track
    assert d.feed(answer({"op": "add", "path": "/chunks", "value": ["a"]})) == [TextDelta(text="a")]
    d = AnswerDecoder(max_blocks=1)
    plan = {"blocks": [{"intended_usage": "plan", "plan_block": {"steps": []}}]}
    d.feed(plan)
    d.feed(plan)
    d.feed(diff("plan_block", {"op": "add", "path": "/steps/-", "value": {}}, usage="plan"))  # patched: the same plan
    with pytest.raises(RemoteProtocolError) as caught:
        d.feed({"blocks": [{"intended_usage": "plan2", "plan_block": {"steps": []}}]})
    assert str(caught.value) == "expected at most 1 plans, got 2"


def test_a_plan_or_web_block_may_begin_with_a_patch() -> None:
    d = AnswerDecoder(max_blocks=1)
    steps = [{"search_web_content": {"queries": ["q"]}}]
    assert d.feed(diff("plan_block", {"op": "add", "path": "/steps", "value": steps}, usage="plan")) == [
        SearchQueries(queries=("q",))
    ]
    with pytest.raises(RemoteProtocolError) as caught:
        d.feed(diff("plan_block", {"op": "add", "path": "/steps", "value": []}, usage="plan2"))
    assert str(caught.value) == "expected at most 1 plans, got 2"
    for field in ("web_result_block", "sources_mode_block"):
        assert AnswerDecoder().feed(diff(field, {"op": "add", "path": "/web_results", "value": ["https://w.test/"]},
                                         usage="sources")) == [Citations(citations=({"url": "https://w.test/", "title": ""},))]


def test_a_patch_deep_in_a_search_step_or_one_replacing_a_payload_is_read() -> None:
    d = AnswerDecoder()
    assert d.feed(workflow([{"items": [
        {"payload": {"queries_payload": {"queries": ["q1"]}}},
        {"payload": {"sources_payload": {"sources": []}}},
        {"payload": {"text_payload": {"variant": "answer", "chunks": ["a"]}}},
    ]}])) == [SearchQueries(queries=("q1",)), TextDelta(text="a")]
    add = {"op": "add", "path": "/steps/0/items/0/payload/queries_payload/queries/-", "value": "q2"}
    assert d.feed(diff("workflow_block", add, usage="workflow_root")) == [SearchQueries(queries=("q2",))]
    add = {"op": "add", "path": "/steps/0/items/1/payload/sources_payload/sources/-", "value": "https://s.test/"}
    assert d.feed(diff("workflow_block", add, usage="workflow_root")) == [
        SourcesRead(sources=({"url": "https://s.test/", "title": ""},))
    ]
    # a path of five tokens replaces an item's payload: the payloads are read again
    payload = {"text_payload": {"variant": "answer", "chunks": ["b"]}}
    assert d.feed(diff("workflow_block", {"op": "replace", "path": "/steps/0/items/2/payload", "value": payload},
                       usage="workflow_root")) == [AnswerRevised(text="b", reasoning="")]


# -- legacy.py: the steps shape's limits -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ({"chunks": ["a", "b"]}, "expected at most 2 'chunks', got 3"),
        ({"structured_answer": [{"text": "a"}, {"text": "b"}]}, "expected at most 2 'structured_answer', got 3"),
    ],
)
def test_the_chunk_limit_of_an_answer_object(answer: dict[str, list[Any]], message: str) -> None:
    assert AnswerDecoder(max_chunks=2).feed({"text": json.dumps(answer)}) == [TextDelta(text="ab")]
    (key, parts), = answer.items()
    with pytest.raises(RemoteProtocolError) as caught:
        AnswerDecoder(max_chunks=2).feed({"text": json.dumps({key: [*parts, parts[0]]})})
    assert str(caught.value) == message
    d = AnswerDecoder(max_chunks=2)  # chunks sent in pieces count together
    d.feed({"text": json.dumps({"chunks": ["a"]})})
    with pytest.raises(RemoteProtocolError) as grown:
        d.feed({"text": json.dumps({"chunks": ["b", "c"]})})
    assert str(grown.value) == "expected at most 2 chunks in a text, got 3"


# -- text.py: the answer's limit as it streams -----------------------------------------------------------------


def test_an_answer_streamed_chunk_by_chunk_counts_every_chunk_against_its_limit() -> None:
    d = AnswerDecoder(max_text=5)
    assert texts(d.feed(frame(blocks=[markdown(["ab"])]))) == "ab"
    assert d.feed(frame(blocks=[markdown(["ab", "cd"])])) == [TextDelta(text="cd")]
    assert d.feed(frame(blocks=[markdown(["e"], offset=2)])) == [TextDelta(text="e")]  # 5: the limit, taken
    with pytest.raises(RemoteProtocolError) as caught:
        d.feed(frame(blocks=[markdown(["f"], offset=3)]))
    assert str(caught.value) == "expected the answer to be at most 5 characters, got 6"
    with pytest.raises(RemoteProtocolError) as bad:
        AnswerDecoder().feed(frame(blocks=[markdown(["a", 5])]))  # type: ignore[list-item]
    assert str(bad.value) == "expected the answer's chunks to be strings, got int: 5"


# -- shape.py: what an error shows of a string -----------------------------------------------------------------


@pytest.mark.parametrize("size", [59, 60, 61])
def test_an_error_shows_60_characters_of_a_string_and_says_when_there_were_more(size: int) -> None:
    value = "".join(chr(ord("a") + n % 26) for n in range(size))
    assert excerpt(value) == f"str: {value[:60]!r}" + ("..." if size > 60 else "")
    with pytest.raises(RemoteProtocolError) as caught:
        AnswerDecoder().feed({"text": "[" + value})
    assert str(caught.value).startswith(f"expected the frame's 'text' to be JSON, got str: {('[' + value)[:60]!r}"
                                        + ("..." if size >= 60 else " ("))


# -- search.py: sources and queries of the wrong shape ---------------------------------------------------------


def test_a_source_takes_name_or_title_and_one_without_a_url_is_not_reported() -> None:
    assert source({"url": "https://a.test", "title": "A"}) == {"url": "https://a.test", "title": "A"}
    assert source({"url": "https://a.test", "name": "N", "title": "A"}) == {"url": "https://a.test", "title": "N"}
    assert source({"title": "A"}) == {"url": "", "title": "A"}
    events: list[Event] = []
    Search().read([{"title": "A"}, "https://b.test"], events)
    assert events == [SourcesRead(sources=({"url": "https://b.test", "title": ""},))]


@pytest.mark.parametrize(("call", "message"), [
    (lambda: Search().searched(5, []), "expected queries to be a list, got int: 5"),
    (lambda: Search().read(5, []), "expected sources to be a list, got int: 5"),
    (lambda: source(5), "expected a source to be a URL or a JSON object, got int: 5"),
    (lambda: source({"url": 5, "name": "n"}),
     "expected a source's 'url' and 'name' to be strings, got dict: {'name': 'n', 'url': 5}"),
])
def test_queries_and_sources_of_the_wrong_shape_are_refused_naming_what_came(call: Any, message: str) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        call()
    assert str(caught.value) == message


# -- request.py and session.py: their limits at the edges ----------------------------------------------------


def test_a_cookie_expiry_of_18_digits_is_taken_and_one_of_19_refused() -> None:
    line = ".perplexity.ai\tTRUE\t/\tTRUE\t{}\tname\tvalue"
    (cookie,) = read_cookies_txt(line.format("9" * 18), now=1e9)
    assert (cookie.name, cookie.value, cookie.expires) == ("name", "value", 10**18 - 1)
    with pytest.raises(LocalProtocolError) as caught:
        read_cookies_txt(line.format("1" + "0" * 18))
    assert str(caught.value) == (
        "cookies.txt line 1: expected the expiry as a whole number of seconds (at most 18 digits), "
        "got '1000000000000000000'"
    )


def test_a_line_of_the_session_stream_may_be_1024_characters_longer_than_an_event() -> None:
    # the session's SSE decoder takes lines of max_message_size + 1024 characters (room for "data: "
    # and the field name around an event at the limit), not one more
    limit = 1000
    for extra, ok in ((1024, True), (1025, False)):
        s = ready(max_message_size=limit)
        asked(s)
        s.receive_http_head(2, 200, SSE_HEAD, 1.1)
        comment = b":" + b"x" * (limit + extra - 1) + b"\n"
        if ok:
            s.receive_http_body(2, comment + sse(frame("COMPLETED", blocks=[markdown(["x"])])), 1.2)
            assert texts(s.events()) == "x"
        else:
            with pytest.raises(RemoteProtocolError) as caught:
                s.receive_http_body(2, comment, 1.2)
            assert str(caught.value) == "expected a line of at most 2024 characters, got 2025 or more"


# -- request.py: the ask, the catalog and cookies.txt, as the service and the caller see them -----------------


def test_a_server_is_cut_only_of_its_trailing_slashes() -> None:
    assert warmup_request("http://SANDBOX/").url == "http://SANDBOX/api/auth/session"
    assert warmup_request("http://a.test//").url == "http://a.test/api/auth/session"


def test_the_ask_goes_to_the_server_given_with_its_origin_and_as_utf8_json() -> None:
    request = ask_request("Ça va? 日本", rng=random.Random(7), server="http://127.0.0.1:1")
    assert dict(request.headers)["Origin"] == "http://127.0.0.1:1"
    assert dict(request.headers)["Referer"] == "http://127.0.0.1:1/"
    # as the web app's JSON.stringify sends it: the characters in UTF-8, not \u escapes
    assert request.body.startswith('{"query_str":"Ça va? 日本","params":'.encode())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "expected a query with some text, got only whitespace"),
        ({"language": 5}, "expected the language to be a str, got int"),
        ({"timezone": None}, "expected the timezone to be a str, got NoneType"),
        ({"search_focus": b"web"}, "expected the search focus to be a str, got bytes"),
        ({"attachments": [1.5]}, "expected an attachment to be a str, got float"),
        ({"follow_up": {"backend_uuid": "x"}}, "expected follow_up to be a ThreadIdentity with a backend_uuid, got dict"),
    ],
)
def test_each_option_of_the_wrong_type_is_refused_by_its_name(options: dict[str, Any], message: str) -> None:
    with pytest.raises(LocalProtocolError) as caught:
        ask_body(" \t" if not options else "q", rng=random.Random(0), **options)
    assert str(caught.value) == message


def test_the_catalogs_default_search_model_is_the_one_anonymous_use_gets() -> None:
    catalog = {"models": {"turbo": {}, "experimental": {}}, "default_models": {"search": "experimental"}}
    assert parse_catalog(catalog) == (Model(id="turbo", signed_in=True), Model(id="experimental", signed_in=False))


def test_the_catalog_shows_60_characters_of_what_it_refuses() -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        parse_catalog({"models": "m" * 61})
    assert str(caught.value) == f"expected 'models' to be an object or a list in the model catalog, got {'m' * 60!r}"
    with pytest.raises(RemoteProtocolError) as entry:
        parse_catalog({"models": {"k" * 61: []}})
    assert str(entry.value) == f"expected model {'k' * 60!r} to be a JSON object in the model catalog, got list"


def test_the_catalog_takes_1000_models_by_default_and_labels_of_200_characters() -> None:
    assert len(parse_catalog({"models": {str(n): {} for n in range(1000)}})) == 1000
    with pytest.raises(RemoteProtocolError) as caught:
        parse_catalog({"models": {str(n): {} for n in range(1001)}})
    assert str(caught.value) == "expected at most 1000 models in the catalog, got 1001"
    (model,) = parse_catalog({"models": {"m": {"label": "L" * 201, "description": "D" * 200}}})
    assert (model.label, model.description) == ("L" * 200, "D" * 200)


COOKIE = ".perplexity.ai\tTRUE\t{path}\tTRUE\t{expires}\tname\t{value}"


def test_cookies_txt_values_and_paths_are_taken_as_written() -> None:
    text = "\n".join([
        "  # an indented comment",
        COOKIE.format(path="", expires=0, value="endsX"),
        COOKIE.format(path="/x", expires=0, value="v1 "),
    ])
    assert [(c.path, c.value) for c in read_cookies_txt(text)] == [("/", "endsX"), ("/x", "v1 ")]


def test_cookies_txt_for_a_domain_given_with_a_dot_and_capitals_but_not_a_lookalike() -> None:
    text = "\n".join([
        COOKIE.format(path="/", expires=0, value="a"),
        "Perplexity.AI\tFALSE\t/\tFALSE\t0\tb\tb",
        "perplexity.ai.\tFALSE\t/\tFALSE\t0\tdot\tno",
        " perplexity.ai\tFALSE\t/\tFALSE\t0\tspace\tno",
    ])
    assert [c.value for c in read_cookies_txt(text, domain=".Perplexity.AI")] == ["a", "b"]
    assert [c.value for c in read_cookies_txt(text)] == ["a", "b"]


def test_a_cookie_expiring_at_now_is_left_out_and_one_a_second_later_kept() -> None:
    text = COOKIE.format(path="/", expires=1_700_000_000, value="v")
    assert read_cookies_txt(text, now=1_700_000_000) == ()
    assert [c.expires for c in read_cookies_txt(text, now=1_699_999_999)] == [1_700_000_000]


def test_cookies_txt_errors_show_at_most_10_20_characters_of_a_field_and_the_type_of_no_text() -> None:
    flags = ".perplexity.ai\t{}\t/\t{}\t0\tname\tsecret"
    with pytest.raises(LocalProtocolError) as caught:
        read_cookies_txt(flags.format("Y" * 11, "N" * 11))
    assert str(caught.value) == (
        "cookies.txt line 1: expected TRUE or FALSE in the include-subdomains and secure fields, "
        f"got {'Y' * 10!r} and {'N' * 10!r}"
    )
    with pytest.raises(LocalProtocolError) as expiry:
        read_cookies_txt(COOKIE.format(path="/", expires="9" * 21, value="secret"))
    assert str(expiry.value) == (
        "cookies.txt line 1: expected the expiry as a whole number of seconds (at most 18 digits), "
        f"got {'9' * 20!r}"
    )
    with pytest.raises(LocalProtocolError) as wrong:
        read_cookies_txt(b"x")  # type: ignore[arg-type]
    assert str(wrong.value) == "expected the cookies.txt text as a str, got bytes"


# -- session.py: what the caller and the service see of the session --------------------------------------------


def whole(s: PerplexitySession, status: int, headers: list[tuple[str, str]], *pieces: bytes) -> LabsError:
    """The error of the ask's response ``status`` with a body of ``pieces``, handed over as they came."""
    s.receive_http_head(2, status, headers, 1.1)
    for piece in pieces:
        s.receive_http_body(2, piece, 1.2)
    with pytest.raises(LabsError) as caught:
        s.receive_http_end(2, 1.3)
    assert s.state is SessionState.ERROR
    return caught.value


ASK = "the ask (POST /rest/sse/perplexity_ask)"


def ready_at(server: str) -> PerplexitySession:
    """A session of ``server`` after its warm-up."""
    s = PerplexitySession(SessionConfig(server=server, service="perplexity"), rng=random.Random(0))
    s.connect(0.0)
    s.transmit()
    s.receive_http_response(1, 200, [], b"{}", 0.5)
    return s


def test_a_session_made_without_a_config_asks_perplexity() -> None:
    s = PerplexitySession(rng=random.Random(0))
    assert s.config == SessionConfig(service="perplexity")
    s.connect(0.0)
    assert [r.url for r in s.transmit()] == ["https://www.perplexity.ai/api/auth/session"]  # type: ignore[union-attr]


def test_the_ask_goes_to_a_server_whose_name_ends_in_x_with_the_model_asked_for() -> None:
    s = ready_at("http://SANDBOX/")
    s.query("Hi", model="pplx_pro", now=1.0)
    (request,) = s.transmit()
    assert isinstance(request, HTTPRequest) and request.url == "http://SANDBOX/rest/sse/perplexity_ask"
    assert json.loads(request.body)["params"]["model_preference"] == "pplx_pro"


def test_a_follow_up_of_a_conversation_sends_only_its_last_user_message() -> None:
    s = ready()
    asked(s)
    s.receive_http_head(2, 200, SSE_HEAD, 1.1)
    s.receive_http_body(2, sse(frame("COMPLETED", blocks=[markdown(["Hi."])])), 1.2)
    conversation = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi."},
                    {"role": "user", "content": "And then?"}, {"role": "assistant", "content": "..."}]
    s.query(conversation, now=2.0)
    (follow,) = s.transmit()
    assert json.loads(follow.body)["query_str"] == "And then?"  # type: ignore[union-attr]


def test_a_query_while_one_streams_or_the_catalog_is_fetched_and_after_the_end_is_refused_by_name() -> None:
    s = ready()
    asked(s)
    with pytest.raises(LocalProtocolError) as streaming:
        s.query("Again", now=1.5)
    assert str(streaming.value) == (
        "cannot start a query while another one is still streaming on this session: queries run one after another")
    s = ready()
    s.request_catalog(now=1.0)
    with pytest.raises(LocalProtocolError) as fetching:
        s.query("Hello", now=1.0)
    assert str(fetching.value) == "cannot start a query while the model catalog is being fetched: wait for Catalog"
    for end in ("close", "fail"):  # what the session held in flight is dropped: the state speaks
        s = ready()
        s.request_catalog(now=1.0)
        if end == "close":
            s.close(1.5)
        else:
            s.fail(RemoteProtocolError("gone"))
        state = "closed" if end == "close" else "error"
        with pytest.raises(LocalProtocolError) as after:
            s.query("Hello", now=2.0)
        assert str(after.value).startswith(f"cannot query when the session is {state}")
        with pytest.raises(LocalProtocolError) as catalog:
            s.request_catalog(now=2.0)
        assert str(catalog.value) == (
            f"expected a ready session (connected, no query streaming) to ask for the catalog, but it is {state}")
    s = ready()
    asked(s)
    s.receive_http_head(2, 200, SSE_HEAD, 1.1)
    s.receive_http_body(2, sse(frame(blocks=[markdown(["x"])]), end=False), 1.2)
    s.fail(RemoteProtocolError("gone"))
    with pytest.raises(LocalProtocolError) as failed:
        s.query("Hello", now=2.0)
    assert str(failed.value).startswith("cannot query when the session is error")


def test_a_query_made_while_connecting_leaves_the_session_free_for_the_next() -> None:
    s = session()
    s.connect(0.0)
    s.query("Hello", now=0.1)
    s.transmit()
    s.receive_http_response(1, 200, [], b"{}", 0.5)
    s.transmit()
    s.receive_http_response(2, 200, SSE_HEAD, sse(frame("COMPLETED", blocks=[markdown(["Hi."])])), 1.0)
    s.query("Again", now=2.0)
    assert [r.request_id for r in s.transmit()] == [3]  # type: ignore[union-attr]


def test_the_warm_up_is_answered_without_a_connect_deadline() -> None:
    s = session(connect_timeout=None)
    s.connect(0.0)
    s.transmit()
    s.receive_http_response(1, 200, [], b"{}", 0.5)
    assert s.state is SessionState.READY and s.get_timer() is None


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: s.receive_http_response(2, "200", [], b"", 1.0), "expected an int status and a str reason, got str and str"),
        (lambda s: s.receive_http_response(2, 200, [], b"", 1.0, reason=None),
         "expected an int status and a str reason, got int and NoneType"),
        (lambda s: s.receive_http_response(2, 200, [], "", 1.0), "expected a bytes body, got str"),
        (lambda s: s.receive_http_body(2, b"abc", 1.0), "expected receive_http_head before the body of request 2, got 3 body bytes"),
        (lambda s: s.receive_http_end(2, 1.0), "expected receive_http_head before the end of request 2, got none"),
    ],
)
def test_the_carriers_mistakes_are_refused_by_name_and_leave_the_answer_streaming(call: Any, message: str) -> None:
    s = ready()
    asked(s)
    with pytest.raises(LocalProtocolError) as caught:
        call(s)
    assert str(caught.value) == message
    assert s.state is SessionState.QUERYING


def test_the_refusals_of_the_warm_up_and_the_ask_say_which_step_and_the_status_and_reason() -> None:
    s = session()
    s.connect(0.0)
    s.transmit()
    with pytest.raises(LabsError) as warmup:
        s.receive_http_response(1, 500, [], b"oops", 0.5)
    assert str(warmup.value) == (
        "the server refused the warm-up (GET /api/auth/session): expected HTTP 200, got HTTP 500: 'oops'")
    s = ready()
    asked(s)
    with pytest.raises(LabsError) as whole_response:
        s.receive_http_response(2, 500, [], b"oops", 1.0, reason="Internal Server Error")
    assert str(whole_response.value) == (
        f"the server refused {ASK}: expected HTTP 200, got HTTP 500 Internal Server Error: 'oops'")
    s = ready()
    asked(s)
    exc = whole(s, 500, [], b"ab", b"cd")  # the refused body in pieces, kept whole
    assert str(exc) == f"the server refused {ASK}: expected HTTP 200, got HTTP 500: 'abcd'"
    assert exc.body_excerpt == "abcd"  # type: ignore[attr-defined]


def test_the_refused_body_is_kept_up_to_its_limit_over_several_pieces() -> None:
    s = ready()
    asked(s)
    s.receive_http_head(2, 500, [], 1.1)
    s.receive_http_body(2, b"x" * (ERROR_BODY_LIMIT - 1), 1.2)
    s.receive_http_body(2, b"x", 1.2)  # the limit: taken
    with pytest.raises(LabsError, match="HTTP 500"):
        s.receive_http_body(2, b"x", 1.2)  # one past it: refused now
    assert s.state is SessionState.ERROR


@pytest.mark.parametrize("token", [None, "tok"])
def test_a_sign_in_refusal_says_whether_a_token_was_given_and_what_the_server_said(token: str | None) -> None:
    s = ready(session_token=token)
    asked(s)
    exc = whole(s, 401, [("Content-Type", "application/json")], b'{"detail":"no"}')
    given = "the session token you gave" if token else "no session token was given"
    assert isinstance(exc, SignInError) and exc.body_excerpt == '{"detail":"no"}'
    assert str(exc) == (
        f"{ASK} was refused with HTTP 401: sign-in needed: the session token (cookie "
        f"__Secure-next-auth.session-token) is missing or expired ({given}); sign in with a browser and give "
        "session_token= or cookies_txt= again; the server said '{\"detail\":\"no\"}'"
    )


@pytest.mark.parametrize(
    ("kind", "body", "title"),
    [
        ("text/html; charset=utf-8", b"<html><title>T</title>\xff", "T"),
        ("text/html; charset=utf-8; x=y", b"<p>", None),
        ("application/xhtml+xml", b"<html/>", None),
        ("application/json", b'{"error":"x"}', None),
    ],
)
def test_a_page_or_json_answered_200_instead_of_the_stream(kind: str, body: bytes, title: str | None) -> None:
    s = ready()
    asked(s)
    exc = whole(s, 200, [("Content-Type", kind)], body)
    shown = body.decode("utf-8", "replace")
    named = f" titled {title!r}" if title else ""
    assert isinstance(exc, UnexpectedPageError)
    assert str(exc) == (
        f"expected an event stream (text/event-stream) from {ASK}, got HTTP 200 {kind}{named}: {shown!r}")
    assert (exc.status, exc.title, exc.content_type, exc.body_excerpt) == (200, title, kind, shown)


def test_a_page_answered_200_shows_200_characters_of_its_first_400_bytes() -> None:
    # the message reads the page's first 400 bytes and the excerpt its first 864, each cut to 200 characters
    s = ready()
    asked(s)
    body = b"\x01" * 400 + b"tail"  # control characters are dropped: nothing shown of the first 400 bytes
    exc = whole(s, 200, [("Content-Type", "text/html")], body)
    assert str(exc).endswith("got HTTP 200 text/html: ''") and exc.body_excerpt == "tail"  # type: ignore[attr-defined]
    s = ready()
    asked(s)
    exc = whole(s, 200, [("Content-Type", "text/html")], b"\x01" * 864 + b"tail")
    assert exc.body_excerpt == ""  # type: ignore[attr-defined]
    for size in (200, 201):
        s = ready()
        asked(s)
        exc = whole(s, 200, [("Content-Type", "text/html")], b"p" * size)
        shown = "p" * 200 if size == 200 else "p" * 197 + "..."
        assert str(exc).endswith(f": {shown!r}") and exc.body_excerpt == shown  # type: ignore[attr-defined]


def test_a_late_head_of_another_request_is_ignored() -> None:
    s = ready()
    asked(s)
    s.receive_http_head(1, 500, [], 1.05)  # the warm-up's id: nothing the session waits for
    s.receive_http_head(2, 200, SSE_HEAD, 1.1)
    s.receive_http_head(2, 500, [], 1.15)  # a second head of the ask: ignored
    s.receive_http_body(2, sse(frame("COMPLETED", blocks=[markdown(["Hi."])])), 1.2)
    assert texts(s.events()) == "Hi." and s.state is SessionState.READY


def test_an_event_of_another_type_is_skipped_and_the_events_after_it_read() -> None:
    s = ready()
    asked(s)
    s.receive_http_head(2, 200, SSE_HEAD, 1.1)
    s.receive_http_body(2, b"event: ping\ndata: {}\n\n" + sse(frame("COMPLETED", blocks=[markdown(["Hi."])])), 1.2)
    assert texts(s.events()) == "Hi." and s.state is SessionState.READY


def test_a_whole_response_that_ends_before_the_answer_is_an_error_that_says_so() -> None:
    s = ready()
    asked(s)
    with pytest.raises(RemoteProtocolError) as caught:
        s.receive_http_response(2, 200, SSE_HEAD, sse(frame(blocks=[markdown(["Hel"])]), end=False), 1.2)
    assert str(caught.value) == ("expected the answer to end with a COMPLETED frame or end_of_stream, but the "
                                 "response body ended after 3 characters of it")
    assert caught.value.partial_text == "Hel" and s.state is SessionState.ERROR


def test_the_text_and_reasoning_so_far_go_with_every_error() -> None:
    thinking = {"intended_usage": "workflow_root", "workflow_block": {"steps": [{"items": [
        {"payload": {"text_payload": {"variant": "thinking", "text": "", "chunks": ["Hmm"]}}}]}]}}
    for end in ("body", "timer", "transport"):
        s = ready(query_timeout=100)
        asked(s)
        s.receive_http_head(2, 200, SSE_HEAD, 1.1)
        s.receive_http_body(2, sse(frame(blocks=[thinking, markdown(["Hel"])]), end=False), 1.2)
        with pytest.raises(LabsError) as caught:
            if end == "body":
                s.receive_http_end(2, 1.3)
            elif end == "timer":
                s.handle_timer(101.0)
            else:
                s.receive_transport_error(2, "reset", 1.3)
        assert (caught.value.partial_text, caught.value.partial_reasoning) == ("Hel", "Hmm")


def test_the_first_text_deadline_fires_by_name_and_each_deadline_ends_with_the_answer() -> None:
    s = ready(first_text_timeout=10)
    asked(s)
    with pytest.raises(LabsTimeout) as caught:
        s.handle_timer(11.0)
    assert str(caught.value) == "expected the first answer text within 10 s of the query, got none"
    assert caught.value.deadline == "first_text"
    s = ready(first_text_timeout=10, query_timeout=100)  # two texts, then the end: no deadline left
    asked(s)
    s.receive_http_head(2, 200, SSE_HEAD, 1.1)
    s.receive_http_body(2, sse(frame(blocks=[markdown(["a"])]), frame(blocks=[markdown(["a", "b"])]), end=False), 1.2)
    assert s.get_timer() == 101.0
    s.receive_http_body(2, sse(frame("COMPLETED", blocks=[markdown(["a", "b"])])), 1.3)
    assert s.state is SessionState.READY and s.get_timer() is None
    s = ready(first_text_timeout=10)  # an answer without text: its first-text deadline ends with it
    asked(s)
    s.receive_http_head(2, 200, SSE_HEAD, 1.1)
    s.receive_http_body(2, sse(frame("COMPLETED", blocks=[])), 1.2)
    assert s.state is SessionState.READY and s.get_timer() is None


def test_a_transport_error_says_where_and_how_much_came_and_late_ones_are_ignored() -> None:
    s = ready_at("http://pplx.test")
    asked(s)
    with pytest.raises(NetworkError) as caught:
        s.receive_transport_error(2, "x" * 300, 1.3)
    assert str(caught.value) == f"expected a response from pplx.test:80, but the request failed ({'x' * 300})"
    assert caught.value.port == 80
    s = ready()
    asked(s)
    with pytest.raises(NetworkError) as cut:
        s.receive_transport_error(2, "x" * 301, 1.3)
    assert str(cut.value) == f"expected a response from pplx.test:443, but the request failed ({'x' * 297}...)"
    s = ready()
    s.receive_transport_error(1, "late", 1.0)  # the warm-up, answered already; no request in flight
    asked(s)
    s.receive_transport_error(1, "late", 1.0)
    s.receive_transport_error(99, "never", 1.0)
    assert s.state is SessionState.QUERYING


# -- legacy.py: the steps shape's search steps, citations and spellings ----------------------------------------


def test_the_steps_search_results_read_results_and_their_spellings() -> None:
    steps = [
        {"stepType": "SEARCH_RESULTS", "content": {"web_results": [{"name": "A", "url": "https://a.test"}]}},
        {"step_type": "READ_RESULTS", "content": {"urls": ["https://r.test"]}},
        {"step_type": "READ_RESULTS", "content": {"web_results": [{"name": "W", "url": "https://w.test"}]}},
        {"step_type": "FINAL", "content": {"answer": "\n " + json.dumps({"answer": "Hi"})}},  # JSON after blanks
    ]
    assert AnswerDecoder().feed({"text": "\n " + json.dumps(steps)}) == [  # a steps list after blanks too
        SourcesRead(sources=({"url": "https://r.test", "title": ""},)),
        SourcesRead(sources=({"url": "https://w.test", "title": "W"},)),
        Citations(citations=({"url": "https://a.test", "title": "A"},)),
        TextDelta(text="Hi"),
    ]


def test_steps_and_answer_objects_without_web_results_keep_the_citations() -> None:
    cited = Citations(citations=({"url": "https://a.test", "title": "A"},))
    d = AnswerDecoder()
    web = {"intended_usage": "web_results", "web_result_block": {"web_results": [{"name": "A", "url": "https://a.test"}]}}
    searched = json.dumps([{"step_type": "SEARCH_WEB", "content": {"queries": ["q"]}}])
    assert d.feed({"blocks": [web], "text": searched}) == [SearchQueries(queries=("q",)), cited]
    d = AnswerDecoder()
    assert d.feed({"text": json.dumps({"answer": "Hi", "web_results": [{"name": "A", "url": "https://a.test"}]})}) == [
        cited, TextDelta(text="Hi")]
    assert d.feed({"text": json.dumps({"answer": "Hi there"})}) == [TextDelta(text=" there")]
    assert d.feed({"text": json.dumps([{"step_type": "FINAL", "content": {"answer": "Hi there!"}}])}) == [
        TextDelta(text="!")]
    assert d.citations == cited.citations


@pytest.mark.parametrize(
    "text",
    [
        [{"step_type": "SEARCH_RESULTS", "content": {"web_results": 5}}],
        {"answer": "Hi", "web_results": 5},
    ],
)
def test_web_results_that_are_not_a_list_are_refused_by_name(text: Any) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        AnswerDecoder().feed({"text": json.dumps(text)})
    assert str(caught.value) == "expected 'web_results' to be a list, got int: 5"


# -- text.py: the answer and the reasoning as frames change them ------------------------------------------------

THOUGHT = "/steps/0/items/0/payload/text_payload/chunks"


def thinking(*pieces: list[str], text: str = "") -> dict[str, Any]:
    """A workflow block whose items are thinking pieces of these chunks (and this whole text)."""
    items = [{"payload": {"text_payload": {"variant": "thinking", "text": text, "chunks": list(piece)}}}
             for piece in pieces]
    return {"intended_usage": "workflow_root", "workflow_block": {"steps": [{"items": items}]}}


def workflow_patch(*patches: dict[str, Any]) -> dict[str, Any]:
    return {"intended_usage": "workflow_root", "diff_block": {"field": "workflow_block", "patches": list(patches)}}


def side_track(chunks: list[str], offset: int | None = None) -> dict[str, Any]:
    """A second answer track (a markdown usage other than ask_text), never the answer while ask_text has text."""
    block: dict[str, Any] = {"chunks": chunks}
    if offset is not None:
        block["chunk_starting_offset"] = offset
    return {"intended_usage": "markdown_side", "markdown_block": block}


def test_the_reasoning_limit_counts_every_delta() -> None:
    d = AnswerDecoder(max_text=5)
    assert d.feed({"blocks": [thinking(["ab"])]}) == [ReasoningDelta(text="ab")]
    assert d.feed({"blocks": [thinking(["ab", "cd"])]}) == [ReasoningDelta(text="cd")]
    assert d.feed({"blocks": [thinking(["ab", "cd", "e"])]}) == [ReasoningDelta(text="e")]  # 5: the limit
    with pytest.raises(RemoteProtocolError) as caught:
        d.feed({"blocks": [thinking(["ab", "cd", "e", "f"])]})
    assert str(caught.value) == "expected the reasoning to be at most 5 characters, got 6"


def test_reasoning_that_begins_or_vanishes_while_the_answer_streams_is_reported_in_its_frame() -> None:
    d = AnswerDecoder()
    assert d.feed({"blocks": [markdown(["a"])]}) == [TextDelta(text="a")]
    assert d.feed({"blocks": [markdown(["a", "b"]), thinking(["Hmm"])]}) == [
        ReasoningDelta(text="Hmm"), TextDelta(text="b")]
    no_items = {"intended_usage": "workflow_root", "workflow_block": {"steps": []}}
    assert d.feed({"blocks": [markdown(["a", "b", "c"]), no_items]}) == [
        AnswerRevised(text="ab", reasoning=""), TextDelta(text="c")]


def test_another_answer_track_changed_does_not_stop_the_answer_and_counts_its_own_chunks() -> None:
    d = AnswerDecoder()
    assert d.feed({"blocks": [markdown(["a"]), side_track(["x"])]}) == [TextDelta(text="a")]
    assert d.feed({"blocks": [markdown(["a", "b"]), side_track(["y"], 0)]}) == [TextDelta(text="b")]
    d = AnswerDecoder(max_chunks=2)
    d.feed({"blocks": [markdown(["a"]), side_track(["x"])]})
    with pytest.raises(RemoteProtocolError) as caught:
        d.feed({"blocks": [side_track(["y", "z"], 1)]})  # a track that is not the answer: its limit too
    assert str(caught.value) == "expected at most 2 chunks in a text, got 3"


def test_a_chunk_changed_in_the_frame_that_adds_it_is_no_rewrite() -> None:
    d = AnswerDecoder(max_rewrite=0)
    assert d.feed({"blocks": [thinking(["a"])]}) == [ReasoningDelta(text="a")]
    patches = [{"op": "add", "path": f"{THOUGHT}/-", "value": "b"}, {"op": "replace", "path": f"{THOUGHT}/1", "value": "B"}]
    assert d.feed({"blocks": [workflow_patch(*patches)]}) == [ReasoningDelta(text="B")]


def test_a_thinking_items_whole_text_at_the_end_wins_over_its_chunks_within_the_limit() -> None:
    assert AnswerDecoder().feed({"status": "COMPLETED", "blocks": [thinking(["ab"], text="abcdef")]}) == [
        ReasoningDelta(text="ab"), ReasoningDelta(text="cdef"),
        AnswerFinished(model="", text="", reasoning="abcdef")]
    with pytest.raises(RemoteProtocolError) as caught:
        AnswerDecoder(max_text=5).feed({"status": "COMPLETED", "blocks": [thinking(["ab"], text="abcdef")]})
    assert str(caught.value) == "expected the reasoning to be at most 5 characters, got 6"


def test_a_thinking_item_whose_chunks_are_removed_keeps_the_reasoning_reported() -> None:
    d = AnswerDecoder()
    assert d.feed({"blocks": [thinking(["Hmm"])]}) == [ReasoningDelta(text="Hmm")]
    assert d.feed({"status": "COMPLETED", "blocks": [workflow_patch({"op": "remove", "path": THOUGHT})]}) == [
        AnswerFinished(model="", text="", reasoning="Hmm")]


def test_an_empty_chunk_list_leaves_the_whole_text_or_empties_the_text() -> None:
    whole = {"intended_usage": "ask_text", "markdown_block": {"chunks": [], "answer": "Hi"}}
    assert AnswerDecoder().feed({"blocks": [whole]}) == [TextDelta(text="Hi")]
    d = AnswerDecoder()
    assert d.feed({"blocks": [thinking(["a"])]}) == [ReasoningDelta(text="a")]
    assert d.feed({"blocks": [thinking([])]}) == [AnswerRevised(text="", reasoning="")]


@pytest.mark.parametrize(("budget", "ok"), [(2, True), (1, False)])
def test_a_reasoning_chunk_rewritten_after_it_grew_counts_against_the_rewrite_budget(budget: int, ok: bool) -> None:
    d = AnswerDecoder(max_rewrite=budget)
    d.feed({"blocks": [thinking(["a"])]})
    assert d.feed({"blocks": [workflow_patch({"op": "add", "path": f"{THOUGHT}/-", "value": "b"})]}) == [
        ReasoningDelta(text="b")]
    rewrite = {"blocks": [workflow_patch({"op": "replace", "path": f"{THOUGHT}/0", "value": "A"})]}
    if ok:  # the 2 characters sent ("ab") joined again: at the budget, taken
        assert d.feed(rewrite) == [AnswerRevised(text="", reasoning="Ab")]
        return
    with pytest.raises(RemoteProtocolError) as caught:
        d.feed(rewrite)
    assert str(caught.value) == (
        "expected the service to rewrite at most 1 characters of text already sent, in all, got 2")


def test_a_whole_answer_is_revised_when_it_diverges_and_kept_when_a_block_drops_it() -> None:
    def answer(text: str | None) -> dict[str, Any]:
        block = {"progress": "IN_PROGRESS"} if text is None else {"answer": text}
        return {"blocks": [{"intended_usage": "ask_text", "markdown_block": block}]}

    d = AnswerDecoder(max_text=5)
    assert d.feed(answer("Hello")) == [TextDelta(text="Hello")]
    assert d.feed(answer("Bye")) == [AnswerRevised(text="Bye", reasoning="")]
    assert d.feed(answer(None)) == []  # a block without the answer: the answer reported stays
    assert d.feed({"status": "COMPLETED"}) == [AnswerFinished(model="", text="Bye", reasoning="")]
    with pytest.raises(RemoteProtocolError) as caught:
        AnswerDecoder(max_text=5).feed(answer("abcdef"))
    assert str(caught.value) == "expected the answer to be at most 5 characters, got 6"


def test_chunks_removed_then_added_are_followed_from_where_the_text_stands() -> None:
    d = AnswerDecoder()
    assert d.feed({"blocks": [markdown(["a", "b"])]}) == [TextDelta(text="ab")]
    removed = {"intended_usage": "ask_text",
               "diff_block": {"field": "markdown_block", "patches": [{"op": "remove", "path": "/chunks/0"}]}}
    assert d.feed({"blocks": [removed]}) == [AnswerRevised(text="b", reasoning="")]
    assert d.feed({"blocks": [markdown(["c"], 1)]}) == [TextDelta(text="c")]
    piece = "/steps/0/items/0/payload/text_payload"
    for whole, second in (("ab", ReasoningDelta(text="b")), ("xy", AnswerRevised(text="", reasoning="xy"))):
        d = AnswerDecoder()  # a thinking item's chunks emptied and its whole text taken: new chunks followed again
        assert d.feed({"blocks": [thinking(["a"])]}) == [ReasoningDelta(text="a")]
        assert d.feed({"blocks": [workflow_patch({"op": "remove", "path": f"{piece}/chunks/0"},
                                                 {"op": "replace", "path": f"{piece}/text", "value": whole})]}) == [second]
        assert d.feed({"blocks": [workflow_patch({"op": "add", "path": f"{piece}/chunks/-", "value": "c"})]}) == [
            AnswerRevised(text="", reasoning="c")]


def test_a_thinking_items_whole_text_is_reported_as_it_streams() -> None:
    d = AnswerDecoder()
    assert d.feed({"blocks": [thinking([], text="Hmm")]}) == [ReasoningDelta(text="Hmm")]
    assert d.feed({"blocks": [thinking([], text="Hmm, so")]}) == [ReasoningDelta(text=", so")]


def test_thinking_pieces_join_with_a_blank_line_and_an_earlier_one_changed_revises_the_reasoning() -> None:
    d = AnswerDecoder()
    assert d.feed({"blocks": [thinking(["a"], ["b"])]}) == [ReasoningDelta(text="a\n\nb")]  # two at once
    assert d.feed({"blocks": [thinking(["a"], ["b", "c"])]}) == [ReasoningDelta(text="c")]
    assert d.feed({"blocks": [thinking(["a", "x"], ["b", "c"])]}) == [AnswerRevised(text="", reasoning="ax\n\nbc")]
    d = AnswerDecoder()
    d.feed({"blocks": [thinking(["a"])]})
    assert d.feed({"blocks": [workflow_patch({"op": "replace", "path": f"{THOUGHT}/0", "value": "A"})]}) == [
        AnswerRevised(text="", reasoning="A")]


@pytest.mark.parametrize(
    ("first", "then"),
    [
        ([["ab"], []], [["ab"], ["c"]]),  # a new piece: "ab\n\nc" is 5, the limit, taken
        ([["abc"]], [["abc"], ["d"]]),  # "abc\n\nd" is 6: refused, though each piece is within the limit
        ([["ab"], ["c"]], [["abX"], ["c"]]),  # an earlier piece grown (a revision): "abX\n\nc" is 6, refused
    ],
)
def test_the_reasoning_limit_counts_the_pieces_together_with_their_blank_lines(
    first: list[list[str]], then: list[list[str]]
) -> None:
    d = AnswerDecoder(max_text=5)
    d.feed({"blocks": [thinking(*first)]})
    if then == [["ab"], ["c"]]:
        assert d.feed({"blocks": [thinking(*then)]}) == [ReasoningDelta(text="\n\nc")]
        return
    with pytest.raises(RemoteProtocolError) as caught:
        d.feed({"blocks": [thinking(*then)]})
    assert str(caught.value) == "expected the reasoning to be at most 5 characters, got 6"


def test_an_empty_thinking_piece_dropped_while_another_grows_is_no_revision() -> None:
    d = AnswerDecoder()
    assert d.feed({"blocks": [thinking(["a"], [])]}) == [ReasoningDelta(text="a")]
    assert d.feed({"blocks": [thinking(["a", "b"])]}) == [ReasoningDelta(text="b")]


@pytest.mark.parametrize("block", [{"chunks": ["x"]}, {"answer": "x"}])
def test_blocks_with_answer_text_win_over_a_plain_steps_text(block: dict[str, Any]) -> None:
    frame = {"blocks": [{"intended_usage": "ask_text", "markdown_block": block}], "text": "plain legacy"}
    assert AnswerDecoder().feed(frame) == [TextDelta(text="x")]


def test_a_thinking_piece_with_text_dropped_revises_the_reasoning() -> None:
    d = AnswerDecoder()
    assert d.feed({"blocks": [thinking(["a"], ["b"])]}) == [ReasoningDelta(text="a\n\nb")]
    assert d.feed({"blocks": [thinking(["a"])]}) == [AnswerRevised(text="", reasoning="a")]


@pytest.mark.parametrize("patched", [False, True])
def test_a_reasoning_chunk_that_is_no_string_is_refused_by_name(patched: bool) -> None:
    d = AnswerDecoder()
    d.feed({"blocks": [thinking(["a"])]})
    with pytest.raises(RemoteProtocolError) as caught:  # the chunk list sent again, or the one held patched
        d.feed({"blocks": [workflow_patch({"op": "add", "path": f"{THOUGHT}/-", "value": 5}) if patched
                           else thinking(["a", 5])]})  # type: ignore[list-item]
    assert str(caught.value) == "expected the reasoning's chunks to be strings, got int: 5"


def test_a_reasoning_piece_patched_past_the_limit_is_refused_by_name() -> None:
    d = AnswerDecoder(max_text=3)
    d.feed({"blocks": [thinking(["ab"])]})
    assert d.feed({"blocks": [workflow_patch({"op": "add", "path": f"{THOUGHT}/-", "value": "c"})]}) == [
        ReasoningDelta(text="c")]  # 3: the limit, taken
    with pytest.raises(RemoteProtocolError) as caught:
        d.feed({"blocks": [workflow_patch({"op": "add", "path": f"{THOUGHT}/-", "value": "d"})]})
    assert str(caught.value) == "expected the reasoning to be at most 3 characters, got 4"


# -- blocks.py: the texts' shapes (the end of the run that was stopped) ----------------------------------------


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"intended_usage": "ask_text", "markdown_block": {"answer": 5}}, "expected the whole text to be a string, got int: 5"),
        (thinking(["a"], text=[1]), "expected the whole text to be a string, got list: [1]"),  # type: ignore[arg-type]
    ],
)
def test_a_whole_answer_or_reasoning_text_that_is_no_string_is_refused_by_name(block: dict[str, Any], message: str) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        AnswerDecoder().feed({"blocks": [block]})
    assert str(caught.value) == message


def test_news_of_a_websocket_is_refused_by_name_on_an_ask_session() -> None:
    s = ready()
    calls = [
        (lambda: s.receive_websocket_open(7, 1.0), "expected no WebSocket on an ask session, got news of WebSocket 7"),
        (lambda: s.receive_websocket_message(7, "x", 1.0),
         "expected no WebSocket on an ask session, got a message of WebSocket 7"),
        (lambda: s.receive_websocket_messages(7, ["x"], 1.0),
         "expected no WebSocket on an ask session, got messages of WebSocket 7"),
        (lambda: s.receive_websocket_close(7, 1000, 1.0),
         "expected no WebSocket on an ask session, got the close of WebSocket 7"),
        (lambda: s.receive_websocket_refused(7, 403, [], b"", 1.0),
         "expected no WebSocket on an ask session, got a refusal of WebSocket 7"),
    ]
    for call, message in calls:
        with pytest.raises(LocalProtocolError) as caught:
            call()
        assert str(caught.value) == message
    assert s.state is SessionState.READY


def test_a_transport_error_mid_answer_says_how_much_came() -> None:
    s = ready()
    asked(s)
    s.receive_http_head(2, 200, SSE_HEAD, 1.1)
    s.receive_http_body(2, sse(frame(blocks=[markdown(["Hel"])]), end=False), 1.2)
    with pytest.raises(NetworkError) as caught:
        s.receive_transport_error(2, "reset", 1.3)
    assert str(caught.value) == (
        "expected a response from pplx.test:443, but the request failed after 3 characters of the answer (reset)")


@pytest.mark.parametrize(
    ("body", "shown"),
    [(b"\x01" * 200 + b"tail", ""), (b"y" * 100, "y" * 100), (b"y" * 101, "y" * 97 + "...")],
)
def test_a_catalog_that_is_not_json_shows_100_characters_of_its_first_200(body: bytes, shown: str) -> None:
    s = ready()
    s.request_catalog(now=1.0)
    with pytest.raises(RemoteProtocolError) as caught:
        s.receive_http_response(2, 200, [("Content-Type", "application/json")], body, 1.5)
    assert str(caught.value).startswith(
        f"expected the model catalog (GET /rest/models/config/v2) as JSON, got {shown!r} (Expecting value")
