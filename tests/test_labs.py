"""Tests for plabs_proto.labs.answer: the request builder and the answer decoder."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plabs_proto.errors import LocalProtocolError, RemoteProtocolError, ResponseError
from plabs_proto.events import (
    AnswerFinished,
    AnswerRevised,
    Citations,
    Event,
    QueryFailed,
    ReasoningDelta,
    TextDelta,
)
from plabs_proto.labs.answer import (
    DEFAULT_MODEL,
    DEFAULT_SOURCE,
    DEFAULT_VERSION,
    MODELS,
    MODELS_WITHOUT_OPEN_THINK,
    REQUEST_EVENT,
    AnswerDecoder,
    build_request,
    is_progress_event,
    normalize_messages,
    progress_event_name,
    split_reasoning,
)

# -- helpers ------------------------------------------------------------------------------------------


def replay(events: Sequence[Event], state: tuple[str, str] = ("", "")) -> tuple[str, str]:
    """What a consumer holds after ``events``: (reasoning, text), AnswerRevised being a reset."""
    reasoning, text = state
    for event in events:
        if isinstance(event, ReasoningDelta):
            reasoning += event.text
        elif isinstance(event, TextDelta):
            text += event.text
        elif isinstance(event, AnswerRevised):
            reasoning, text = event.reasoning, event.text
    return reasoning, text


def deltas_only(events: Sequence[Event]) -> tuple[str, str, bool, bool]:
    """What a consumer that reads deltas alone holds: (reasoning, text, reasoning rewritten, text rewritten).

    A "rewritten" flag is set by an AnswerRevised whose text (or reasoning)
    differs from what that consumer joined so far: only then may it be wrong.
    """
    reasoning = text = ""
    rewrote_r = rewrote_t = False
    for event in events:
        if isinstance(event, ReasoningDelta):
            reasoning += event.text
        elif isinstance(event, TextDelta):
            text += event.text
        elif isinstance(event, AnswerRevised):
            rewrote_r = rewrote_r or event.reasoning != reasoning
            rewrote_t = rewrote_t or event.text != text
    return reasoning, text, rewrote_r, rewrote_t


def feed_all(decoder: AnswerDecoder, payloads: Sequence[object]) -> list[Event]:
    events: list[Event] = []
    for payload in payloads:
        events.extend(decoder.feed(payload))
    return events


def stream(model: str, outputs: Sequence[str], final: str | None = None) -> list[Event]:
    """Feed ``outputs`` as partial frames, then ``final`` (default: the last output) as the final frame."""
    decoder = AnswerDecoder(model)
    payloads: list[object] = [{"output": output, "final": False} for output in outputs]
    last = final if final is not None else (outputs[-1] if outputs else "")
    payloads.append({"output": last, "final": True, "status": "completed"})
    return feed_all(decoder, payloads)


_OPEN_RE = re.compile(r"\s*<think>")


def reference_split(output: str, assume_open: bool = False) -> tuple[str, str]:
    """The split rules written out plainly, independently of the module."""
    match = _OPEN_RE.match(output)
    if match:
        reasoning, sep, answer = output[match.end() :].partition("</think>")
        return (reasoning, answer.lstrip()) if sep else (reasoning, "")
    reasoning, sep, answer = output.partition("</think>")
    if sep:
        return reasoning, answer.lstrip()
    return (output, "") if assume_open else ("", output)


# -- constants ----------------------------------------------------------------------------------------


def test_constants() -> None:
    assert MODELS == ("r1-1776", "sonar-pro", "sonar", "sonar-reasoning", "sonar-reasoning-pro")
    assert DEFAULT_MODEL == "r1-1776"
    assert DEFAULT_VERSION == "2.18"
    assert DEFAULT_SOURCE == "default"
    assert REQUEST_EVENT == "perplexity_labs"
    assert frozenset({"r1-1776"}) == MODELS_WITHOUT_OPEN_THINK


@pytest.mark.parametrize(
    ("model", "name"),
    [
        ("sonar", "sonar_query_progress"),
        ("r1-1776", "r1-1776_query_progress"),
        ("/models/LiquidCloud", "/models/LiquidCloud_query_progress"),
        ("", "r1-1776_query_progress"),
    ],
)
def test_progress_event_name(model: str, name: str) -> None:
    assert progress_event_name(model) == name


# -- normalize_messages / build_request ---------------------------------------------------------------

NORMALIZE_CASES: list[tuple[Any, list[dict[str, str]]]] = [
    ("hi", [{"role": "user", "content": "hi"}]),
    ("  spaced  ", [{"role": "user", "content": "  spaced  "}]),
    (
        [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi", "priority": 0, "name": "x"},
        ],
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
    ),
    (
        ({"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}),
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
    ),
    (
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "data:..."}},
                    "plain part",
                    {"type": "text", "text": ""},
                    {"type": "text", "text": "more"},
                ],
            }
        ],
        [{"role": "user", "content": "look\nplain part\nmore"}],
    ),
    (
        [
            {"role": "user", "content": "q"},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
            {"role": "user", "content": ""},
        ],
        [{"role": "user", "content": "q"}],
    ),
    (
        [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a1"},
            {"role": "assistant", "content": "a2"},
            {"role": "assistant", "content": [{"type": "text", "text": "a3"}]},
            {"role": "user", "content": "q2"},
        ],
        [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a1\n\na2\n\na3"},
            {"role": "user", "content": "q2"},
        ],
    ),
    (
        # the message between the assistants carries no text, so they become one run
        [
            {"role": "assistant", "content": "a1"},
            {"role": "user", "content": []},
            {"role": "assistant", "content": "a2"},
        ],
        [{"role": "assistant", "content": "a1\n\na2"}],
    ),
    (
        [{"role": "user", "content": "q1"}, {"role": "user", "content": "q2"}],
        [{"role": "user", "content": "q1"}, {"role": "user", "content": "q2"}],
    ),
    ([{"role": "user", "content": "中文 😀 e\u0301"}], [{"role": "user", "content": "中文 😀 e\u0301"}]),
]


@pytest.mark.parametrize(("messages", "expected"), NORMALIZE_CASES)
def test_normalize_messages(messages: Any, expected: list[dict[str, str]]) -> None:
    assert normalize_messages(messages) == expected


def test_normalize_messages_does_not_touch_its_input() -> None:
    messages = [{"role": "assistant", "content": "a1"}, {"role": "assistant", "content": "a2"}]
    normalize_messages(messages)
    assert messages == [{"role": "assistant", "content": "a1"}, {"role": "assistant", "content": "a2"}]


NORMALIZE_REJECTIONS: list[tuple[Any, str]] = [
    (123, "expected the messages as a str or a sequence of {'role', 'content'} mappings, got int: 123"),
    (b"hi", "expected the messages as a str or a sequence of {'role', 'content'} mappings, got bytes: b'hi'"),
    (
        {"role": "user", "content": "hi"},
        "expected the messages as a str or a sequence of {'role', 'content'} mappings, "
        "got dict: {'content': 'hi', 'role': 'user'}",
    ),
    (
        None,
        "expected the messages as a str or a sequence of {'role', 'content'} mappings, got NoneType: None",
    ),
    ([], "expected at least one message with text, got no messages"),
    ("", "expected at least one message with text, got 1 message(s), none with text"),
    (
        [{"role": "user", "content": ""}, {"role": "user", "content": [{"type": "image_url"}]}],
        "expected at least one message with text, got 2 message(s), none with text",
    ),
    (["hi"], "message 0: expected a mapping with 'role' and 'content', got str: 'hi'"),
    (
        [{"role": "user", "content": "q"}, ("user", "q")],
        "message 1: expected a mapping with 'role' and 'content', got tuple: ('user', 'q')",
    ),
    (
        [{"content": "x"}],
        "message 0: expected 'role' to be 'user', 'assistant' or 'system', got no 'role' key",
    ),
    (
        [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a"},
            {"role": "tool", "content": "x"},
        ],
        "message 2: expected 'role' to be 'user', 'assistant' or 'system', got str: 'tool'",
    ),
    (
        [{"role": "User", "content": "x"}],
        "message 0: expected 'role' to be 'user', 'assistant' or 'system', got str: 'User'",
    ),
    (
        [{"role": None, "content": "x"}],
        "message 0: expected 'role' to be 'user', 'assistant' or 'system', got NoneType: None",
    ),
    (
        [{"role": 1, "content": "x"}],
        "message 0: expected 'role' to be 'user', 'assistant' or 'system', got int: 1",
    ),
    ([{"role": "user"}], "message 0: expected 'content' (a str or a list of parts), got no 'content' key"),
    (
        [{"role": "user", "content": None}],
        "message 0: expected 'content' to be a str or a list of parts, got NoneType: None",
    ),
    (
        [{"role": "user", "content": {"type": "text", "text": "x"}}],
        "message 0: expected 'content' to be a str or a list of parts, got dict: {'text': 'x', 'type': 'text'}",
    ),
    (
        [{"role": "user", "content": 7}],
        "message 0: expected 'content' to be a str or a list of parts, got int: 7",
    ),
    (
        [{"role": "user", "content": ["ok", 5]}],
        "message 0, part 1: expected a str or a mapping with 'type', got int: 5",
    ),
    (
        [{"role": "user", "content": [{"type": "text", "text": None}]}],
        "message 0, part 0: expected 'text' to be a str in a text part, got NoneType: None",
    ),
    (
        [{"role": "user", "content": [{"type": "text"}]}],
        "message 0, part 0: expected 'text' to be a str in a text part, got no 'text' key",
    ),
    (
        ["x" * 100],
        "message 0: expected a mapping with 'role' and 'content', got str: '" + "x" * 60 + "'...",
    ),
]


@pytest.mark.parametrize(("messages", "message"), NORMALIZE_REJECTIONS)
def test_normalize_messages_rejects(messages: Any, message: str) -> None:
    with pytest.raises(LocalProtocolError) as info:
        normalize_messages(messages)
    assert str(info.value) == message


def test_build_request_defaults_and_key_order() -> None:
    request = build_request("hi")
    assert list(request) == ["version", "source", "model", "messages"]
    assert json.dumps(request, separators=(",", ":")) == (
        '{"version":"2.18","source":"default","model":"r1-1776","messages":[{"role":"user","content":"hi"}]}'
    )


def test_build_request_arguments() -> None:
    request = build_request(
        [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a"},
            {"role": "assistant", "content": "b"},
        ],
        model="sonar-pro",
        version="2.16",
        source="other",
    )
    assert request == {
        "version": "2.16",
        "source": "other",
        "model": "sonar-pro",
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a\n\nb"}],
    }


def test_build_request_model_rules() -> None:
    assert build_request("hi", model="")["model"] == DEFAULT_MODEL
    # unknown ids pass: the Labs model list changes over time
    assert build_request("hi", model="llama-3.1-sonar-large-128k-online")["model"] == (
        "llama-3.1-sonar-large-128k-online"
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"model": None},
            "expected the model as a str (a Labs model id such as 'r1-1776'), got NoneType: None",
        ),
        (
            {"model": 3},
            "expected the model as a str (a Labs model id such as 'r1-1776'), got int: 3",
        ),
        ({"version": 2.18}, "expected version as a str, got float: 2.18"),
        ({"source": None}, "expected source as a str, got NoneType: None"),
    ],
)
def test_build_request_rejects(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(LocalProtocolError) as info:
        build_request("hi", **kwargs)
    assert str(info.value) == message


def test_build_request_rejects_bad_messages() -> None:
    with pytest.raises(
        LocalProtocolError, match=r"^expected at least one message with text, got no messages$"
    ):
        build_request([])


# -- split_reasoning ----------------------------------------------------------------------------------

SPLIT_CASES: list[tuple[str, bool, tuple[str, str]]] = [
    ("Hello", False, ("", "Hello")),
    ("Hello", True, ("Hello", "")),
    ("", False, ("", "")),
    ("", True, ("", "")),
    ("<think>plan</think>\n\nAnswer", False, ("plan", "Answer")),
    ("<think>plan</think>\n\nAnswer", True, ("plan", "Answer")),
    ("\n <think>\nplan\n</think>Answer ", False, ("\nplan\n", "Answer ")),
    ("plan</think>\n\nAnswer", False, ("plan", "Answer")),
    ("plan</think>\n\nAnswer", True, ("plan", "Answer")),
    ("<think>still thinking", False, ("still thinking", "")),
    ("<think>a</think>b</think>c<think>d", False, ("a", "b</think>c<think>d")),
    ("<think><think>x</think>y", False, ("<think>x", "y")),
    ("<thi", False, ("", "<thi")),
    ("x <think>y</think>z", False, ("x <think>y", "z")),
    ("<think></think>", False, ("", "")),
    ("</think>", True, ("", "")),
]


@pytest.mark.parametrize(("output", "assume_open", "expected"), SPLIT_CASES)
def test_split_reasoning(output: str, assume_open: bool, expected: tuple[str, str]) -> None:
    assert split_reasoning(output, assume_open=assume_open) == expected
    assert reference_split(output, assume_open) == expected


# -- decoder transcripts ------------------------------------------------------------------------------


def test_plain_answer_transcript() -> None:
    # protocol.md §2.4
    decoder = AnswerDecoder("sonar")
    assert decoder.model == "sonar"
    assert decoder.feed({"output": "Hel", "final": False, "elapsed_time": 0.4, "tokens_streamed": 1}) == [
        TextDelta(text="Hel")
    ]
    assert decoder.feed({"output": "Hello!", "final": False, "elapsed_time": 0.6, "tokens_streamed": 3}) == [
        TextDelta(text="lo!")
    ]
    assert (decoder.text, decoder.reasoning, decoder.finished) == ("Hello!", "", False)
    final = {
        "output": "Hello!",
        "final": True,
        "status": "completed",
        "citations": [],
        "elapsed_time": 0.7,
        "tokens_streamed": 3,
    }
    assert decoder.feed(final) == [
        AnswerFinished(
            model="sonar", text="Hello!", reasoning="", citations=(), elapsed_time=0.7, tokens_streamed=3
        )
    ]
    assert decoder.finished
    assert decoder.text == "Hello!"


def test_reasoning_model_transcript() -> None:
    events = stream(
        "sonar-reasoning",
        [
            "<think>",
            "<think>\nThe user",
            "<think>\nThe user says hi.\n</think>",
            "<think>\nThe user says hi.\n</think>\n\nHi",
        ],
        "<think>\nThe user says hi.\n</think>\n\nHi there.",
    )
    assert events == [
        ReasoningDelta(text="\nThe user"),
        ReasoningDelta(text=" says hi.\n"),
        TextDelta(text="Hi"),
        TextDelta(text=" there."),
        AnswerFinished(model="sonar-reasoning", text="Hi there.", reasoning="\nThe user says hi.\n"),
    ]


def test_r1_without_opening_tag() -> None:
    events = stream(
        "r1-1776",
        [
            "Okay",
            "Okay, the user",
            "Okay, the user greets.</th",
            "Okay, the user greets.</think>\n",
            "Okay, the user greets.</think>\n\nHello",
        ],
        "Okay, the user greets.</think>\n\nHello!",
    )
    assert events == [
        ReasoningDelta(text="Okay"),
        ReasoningDelta(text=", the user"),
        ReasoningDelta(text=" greets."),
        TextDelta(text="Hello"),
        TextDelta(text="!"),
        AnswerFinished(model="r1-1776", text="Hello!", reasoning="Okay, the user greets."),
    ]


def test_r1_with_opening_tag_is_not_doubled() -> None:
    events = stream("r1-1776", ["<th", "<think>Plan", "<think>Plan</think>Go"])
    assert events == [
        ReasoningDelta(text="Plan"),
        TextDelta(text="Go"),
        AnswerFinished(model="r1-1776", text="Go", reasoning="Plan"),
    ]
    assert all("<think>" not in e.text for e in events if isinstance(e, ReasoningDelta))


def test_r1_without_any_think_is_revised_at_the_end() -> None:
    decoder = AnswerDecoder("r1-1776")
    events = feed_all(
        decoder,
        [
            {"output": "Paris is", "final": False},
            {"output": "Paris is the capital.", "final": False},
            {"output": "Paris is the capital.", "final": True, "status": "completed", "citations": []},
        ],
    )
    # Only the reasoning is taken back; the answer text, new, comes as a TextDelta.
    assert events == [
        ReasoningDelta(text="Paris is"),
        ReasoningDelta(text=" the capital."),
        AnswerRevised(text="", reasoning=""),
        TextDelta(text="Paris is the capital."),
        AnswerFinished(model="r1-1776", text="Paris is the capital.", reasoning=""),
    ]
    assert (decoder.reasoning, decoder.text) == ("", "Paris is the capital.")


@pytest.mark.parametrize("frames", [1, 2, 5])
def test_r1_short_answer_reaches_a_text_delta_reader(frames: int) -> None:
    # The default model, an output that never has "</think>": streamed as reasoning,
    # it must still reach a consumer that joins TextDeltas only (ask() is one).
    answer = "Hi! How can I help?"
    cut = len(answer) // frames
    events = stream("r1-1776", [answer[: cut * (n + 1)] for n in range(frames)], answer)
    finished = events[-1]
    assert isinstance(finished, AnswerFinished) and finished.text == answer
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == answer
    assert deltas_only(events)[3] is False  # no rewrite of the text


def test_true_rewrite_of_the_text_is_a_revision_with_the_new_text() -> None:
    events = stream("r1-1776", ["<think>Plan A</think>Paris is big"], "<think>Plan B</think>Lyon is big")
    assert events == [
        ReasoningDelta(text="Plan A"),
        TextDelta(text="Paris is big"),
        AnswerRevised(text="Lyon is big", reasoning="Plan B"),
        AnswerFinished(model="r1-1776", text="Lyon is big", reasoning="Plan B"),
    ]
    assert deltas_only(events) == ("Plan A", "Paris is big", True, True)


def test_rewritten_text_with_growing_reasoning_keeps_the_reasoning() -> None:
    # The symmetric case: the reasoning extends what was reported, the text does not.
    events = stream("sonar-reasoning", ["<think>ab</think>xyz"], "<think>abc</think>uvw")
    assert events == [
        ReasoningDelta(text="ab"),
        TextDelta(text="xyz"),
        AnswerRevised(text="uvw", reasoning="ab"),
        ReasoningDelta(text="c"),
        AnswerFinished(model="sonar-reasoning", text="uvw", reasoning="abc"),
    ]


def test_r1_single_final_frame_without_think_needs_no_revision() -> None:
    assert stream("r1-1776", [], "Hello") == [
        TextDelta(text="Hello"),
        AnswerFinished(model="r1-1776", text="Hello", reasoning=""),
    ]


def test_closing_tag_revises_text_reported_as_answer() -> None:
    # a model outside MODELS_WITHOUT_OPEN_THINK that omits "<think>" anyway
    events = stream("sonar-reasoning", ["Let me", "Let me see</think>\n", "Let me see</think>\nOK"])
    assert events == [
        TextDelta(text="Let me"),
        AnswerRevised(text="", reasoning=""),
        ReasoningDelta(text="Let me see"),
        TextDelta(text="OK"),
        AnswerFinished(model="sonar-reasoning", text="OK", reasoning="Let me see"),
    ]


def test_tags_after_the_reasoning_are_answer_text() -> None:
    output = "<think>x</think>Use <think> and </think> tags."
    events = stream("sonar-reasoning", [output[:20], output])
    assert replay(events) == ("x", "Use <think> and </think> tags.")
    assert not any(isinstance(e, AnswerRevised) for e in events)


SPLIT_TEXT = "  <think>\nstep </thin one\n</think>\n \n Answer: a</think>b <think> c 😀"


@pytest.mark.parametrize("model", ["r1-1776", "sonar-reasoning", "sonar"])
@pytest.mark.parametrize("cut", range(len(SPLIT_TEXT) + 1))
def test_tags_split_across_frames_at_every_offset(model: str, cut: int) -> None:
    events = stream(model, [SPLIT_TEXT[:cut], SPLIT_TEXT])
    expected = ("\nstep </thin one\n", "Answer: a</think>b <think> c 😀")
    assert replay(events) == expected
    assert events[-1] == AnswerFinished(model=model, reasoning=expected[0], text=expected[1])
    assert not any(isinstance(e, AnswerRevised) for e in events)
    # nothing of a tag ever leaks into a delta
    assert "".join(e.text for e in events if isinstance(e, ReasoningDelta)) == expected[0]


@pytest.mark.parametrize("model", ["r1-1776", "sonar-reasoning"])
def test_tags_split_one_character_per_frame(model: str) -> None:
    outputs = [SPLIT_TEXT[:i] for i in range(len(SPLIT_TEXT) + 1)]
    events = stream(model, outputs)
    assert replay(events) == split_reasoning(SPLIT_TEXT)
    assert not any(isinstance(e, AnswerRevised) for e in events)
    deltas = [e for e in events if isinstance(e, (TextDelta, ReasoningDelta))]
    assert all(e.text for e in deltas)


NO_OPEN_TEXT = "Reasoning here</think>\n\nAnswer"
CLOSE_AT = NO_OPEN_TEXT.index("</think>")


@pytest.mark.parametrize("cut", range(len(NO_OPEN_TEXT) + 1))
def test_missing_open_tag_at_every_offset(cut: int) -> None:
    r1 = stream("r1-1776", [NO_OPEN_TEXT[:cut], NO_OPEN_TEXT])
    assert replay(r1) == ("Reasoning here", "Answer")
    assert not any(isinstance(e, AnswerRevised) for e in r1)

    sonar = stream("sonar", [NO_OPEN_TEXT[:cut], NO_OPEN_TEXT])
    assert replay(sonar) == ("Reasoning here", "Answer")
    revisions = [e for e in sonar if isinstance(e, AnswerRevised)]
    # only text already handed out as answer needs taking back
    assert len(revisions) == (1 if 0 < cut < CLOSE_AT + len("</think>") else 0)


def test_shrinking_output_is_revised() -> None:
    decoder = AnswerDecoder("sonar")
    assert decoder.feed({"output": "Hello world"}) == [TextDelta(text="Hello world")]
    assert decoder.feed({"output": "Hello"}) == [AnswerRevised(text="Hello", reasoning="")]
    assert decoder.feed({"output": "Hello there"}) == [TextDelta(text=" there")]
    assert decoder.feed({"output": "Jello there"}) == [AnswerRevised(text="Jello there", reasoning="")]
    assert decoder.feed({"output": "Jello there!", "final": True}) == [
        TextDelta(text="!"),
        AnswerFinished(model="sonar", text="Jello there!", reasoning=""),
    ]


def test_non_extending_final_frame_is_revised() -> None:
    events = stream("sonar-reasoning", ["<think>abc</think>xyz"], "<think>abd</think>xyz")
    assert events == [
        ReasoningDelta(text="abc"),
        TextDelta(text="xyz"),
        AnswerRevised(text="xyz", reasoning="abd"),
        AnswerFinished(model="sonar-reasoning", text="xyz", reasoning="abd"),
    ]


def test_change_in_held_back_part_needs_no_revision() -> None:
    decoder = AnswerDecoder("sonar")
    assert decoder.feed({"output": "abc<"}) == [TextDelta(text="abc")]
    assert decoder.feed({"output": "abcd"}) == [TextDelta(text="d")]


def test_failure_frame_from_gpt4free_2861() -> None:
    decoder = AnswerDecoder("sonar-reasoning-pro")
    assert decoder.feed({"output": "<think>Looking", "final": False}) == [ReasoningDelta(text="Looking")]
    assert decoder.feed({"output": "<think>Looking</think>Part", "final": False}) == [TextDelta(text="Part")]
    frame = json.loads(
        '42["sonar-reasoning-pro_query_progress",{"status":"failed","text":"Error in processing query"}]'[2:]
    )
    assert frame[0] == progress_event_name("sonar-reasoning-pro")
    failed = QueryFailed(
        model="sonar-reasoning-pro",
        message="Error in processing query",
        partial_text="Part",
        partial_reasoning="Looking",
    )
    assert decoder.feed(frame[1]) == [failed]
    assert decoder.finished
    error = failed.error()
    assert isinstance(error, ResponseError)
    assert error.server_text == "Error in processing query"
    assert (error.partial_text, error.partial_reasoning) == ("Part", "Looking")
    with pytest.raises(LocalProtocolError) as info:
        decoder.feed({"output": "more"})
    assert (
        str(info.value)
        == "feed() called after the sonar-reasoning-pro answer had finished, got dict: {'output': 'more'}"
    )


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"status": "failed"}, "(no text)"),
        ({"status": "failed", "text": ""}, "(no text)"),
        ({"status": "failed", "text": None}, "(no text)"),
        ({"status": "failed", "text": {"code": 5}}, "dict: {'code': 5}"),
        ({"status": "failed", "text": "boom", "final": True, "output": 5}, "boom"),
    ],
)
def test_failure_messages(payload: dict[str, Any], message: str) -> None:
    assert AnswerDecoder("sonar").feed(payload) == [QueryFailed(model="sonar", message=message)]


def test_citations() -> None:
    decoder = AnswerDecoder("sonar-pro")
    objects = [{"url": "https://a.example/", "title": "A"}, {"url": "https://b.example/"}]
    assert decoder.feed({"output": "x", "citations": []}) == [TextDelta(text="x")]
    assert decoder.feed({"output": "xy", "citations": ["https://a.example/"]}) == [
        TextDelta(text="y"),
        Citations(citations=("https://a.example/",)),
    ]
    assert decoder.feed({"output": "xy", "citations": ["https://a.example/"]}) == []
    assert decoder.feed({"output": "xy", "citations": None}) == []
    assert decoder.citations == ("https://a.example/",)
    events = decoder.feed({"output": "xyz", "final": True, "citations": objects, "elapsed_time": 2})
    assert events == [
        TextDelta(text="z"),
        Citations(citations=tuple(objects)),
        AnswerFinished(
            model="sonar-pro", text="xyz", reasoning="", citations=tuple(objects), elapsed_time=2.0
        ),
    ]
    cited: tuple[Any, ...] = decoder.citations
    assert cited == tuple(objects)


def test_citations_repeated_on_final_are_not_repeated() -> None:
    decoder = AnswerDecoder("sonar")
    assert decoder.feed({"output": "a", "citations": ["u"]}) == [
        TextDelta(text="a"),
        Citations(citations=("u",)),
    ]
    assert decoder.feed({"output": "a", "final": True, "citations": ["u"]}) == [
        AnswerFinished(model="sonar", text="a", reasoning="", citations=("u",))
    ]


@pytest.mark.parametrize(
    ("extra", "elapsed", "tokens"),
    [
        ({"elapsed_time": 1, "tokens_streamed": 7}, 1.0, 7),
        ({"elapsed_time": 0.25, "tokens_streamed": 0}, 0.25, 0),
        ({"elapsed_time": "1.5", "tokens_streamed": 7.0}, None, None),
        ({"elapsed_time": True, "tokens_streamed": False}, None, None),
        ({"elapsed_time": None, "tokens_streamed": None}, None, None),
        ({"elapsed_time": float("inf"), "tokens_streamed": "7"}, None, None),
        ({}, None, None),
    ],
)
def test_final_numbers(extra: dict[str, Any], elapsed: float | None, tokens: int | None) -> None:
    events = AnswerDecoder("sonar").feed({"output": "a", "final": True, **extra})
    assert events[-1] == AnswerFinished(
        model="sonar", text="a", reasoning="", elapsed_time=elapsed, tokens_streamed=tokens
    )


def test_bare_status_update_gives_nothing() -> None:
    decoder = AnswerDecoder("sonar")
    assert decoder.feed({"status": "pending"}) == []
    assert decoder.feed({}) == []
    assert decoder.feed({"output": "a", "final": False, "status": None}) == [TextDelta(text="a")]
    assert not decoder.finished


def test_completed_status_finishes() -> None:
    assert AnswerDecoder("sonar").feed({"output": "done", "status": "completed"}) == [
        TextDelta(text="done"),
        AnswerFinished(model="sonar", text="done", reasoning=""),
    ]


def test_final_frame_without_output_flushes_what_was_held() -> None:
    decoder = AnswerDecoder("sonar")
    assert decoder.feed({"output": "a <"}) == [TextDelta(text="a ")]
    assert decoder.feed({"final": True}) == [
        TextDelta(text="<"),
        AnswerFinished(model="sonar", text="a <", reasoning=""),
    ]


def test_empty_model_means_default_and_bad_model_is_rejected() -> None:
    assert AnswerDecoder("").model == DEFAULT_MODEL
    with pytest.raises(LocalProtocolError, match=r"^expected the model as a str .*got NoneType: None$"):
        AnswerDecoder(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([1], "expected a JSON object as the progress payload, got list: [1]"),
        ("Hello", "expected a JSON object as the progress payload, got str: 'Hello'"),
        (None, "expected a JSON object as the progress payload, got NoneType: None"),
        (3, "expected a JSON object as the progress payload, got int: 3"),
        ({"output": 5}, "expected 'output' to be a string in the sonar progress payload, got int: 5"),
        (
            {"output": None},
            "expected 'output' to be a string in the sonar progress payload, got NoneType: None",
        ),
        (
            {"output": ["a"], "final": True},
            "expected 'output' to be a string in the sonar progress payload, got list: ['a']",
        ),
        (
            {"output": "ab", "citations": "https://a.example/"},
            "expected 'citations' to be a list in the sonar progress payload, got str: 'https://a.example/'",
        ),
        (
            {"citations": {"url": "u"}},
            "expected 'citations' to be a list in the sonar progress payload, got dict: {'url': 'u'}",
        ),
    ],
)
def test_remote_protocol_errors(payload: object, message: str) -> None:
    decoder = AnswerDecoder("sonar")
    assert decoder.feed({"output": "a"}) == [TextDelta(text="a")]
    with pytest.raises(RemoteProtocolError) as info:
        decoder.feed(payload)
    assert str(info.value) == message
    assert info.value.partial_text == "a"
    # a rejected payload changes nothing
    assert not decoder.finished
    assert decoder.feed({"output": "abc"}) == [TextDelta(text="bc")]


def test_long_payload_excerpt_is_cut() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        AnswerDecoder("sonar").feed("x" * 1000)
    assert str(info.value) == "expected a JSON object as the progress payload, got str: '" + "x" * 60 + "'..."


def test_feed_after_finish_is_local_error() -> None:
    decoder = AnswerDecoder("sonar")
    decoder.feed({"output": "a", "final": True})
    with pytest.raises(LocalProtocolError) as info:
        decoder.feed({"output": "b", "final": True})
    assert str(info.value) == (
        "feed() called after the sonar answer had finished, got dict: {'final': True, 'output': 'b'}"
    )


MULTIBYTE = "Family 👨\u200d👩\u200d👧 家族の写真 e\u0301 n\u0303 a\u0308\u0301 😀 Ⅻ \U0001f1eb\U0001f1f7"


@pytest.mark.parametrize("wrap", [False, True])
def test_multibyte_text_split_at_every_code_point(wrap: bool) -> None:
    text = f"<think>{MULTIBYTE}</think>{MULTIBYTE}" if wrap else MULTIBYTE
    outputs = [text[:i] for i in range(len(text) + 1)]
    events = stream("sonar-reasoning", outputs)
    expected = (MULTIBYTE, MULTIBYTE) if wrap else ("", MULTIBYTE)
    assert replay(events) == expected
    assert events[-1] == AnswerFinished(model="sonar-reasoning", reasoning=expected[0], text=expected[1])
    assert not any(isinstance(e, AnswerRevised) for e in events)


def test_surrogate_pair_split_across_json_frames() -> None:
    # a server cutting its output between UTF-16 code units sends a lone surrogate first
    first = json.loads('{"output": "a\\ud83d"}')
    second = json.loads('{"output": "a\\ud83d\\ude00b"}')
    decoder = AnswerDecoder("sonar")
    assert decoder.feed(first) == [TextDelta(text="a")]
    assert decoder.feed(second) == [TextDelta(text="😀b")]


# -- properties ---------------------------------------------------------------------------------------

FRAGMENTS = [
    "<think>",
    "</think>",
    "<",
    "</",
    "<th",
    "think>",
    ">",
    "/",
    " ",
    "\n",
    "a",
    "bc",
    "é",
    "😀",
    "中",
    "\u0301",
]
outputs_st = st.lists(st.sampled_from(FRAGMENTS), max_size=14).map("".join) | st.text(max_size=30)
models_st = st.sampled_from(MODELS)


def check_stream(model: str, outputs: Sequence[str], final: str) -> None:
    """Feed the outputs and check the invariants after every frame."""
    decoder = AnswerDecoder(model)
    assume_open = model in MODELS_WITHOUT_OPEN_THINK
    view = ("", "")
    frames = [*outputs, final]
    all_events: list[Event] = []
    for index, output in enumerate(frames):
        is_final = index == len(frames) - 1
        events = decoder.feed({"output": output, "final": is_final})
        all_events.extend(events)
        new_view = replay(events, view)
        assert new_view == (decoder.reasoning, decoder.text)
        for event in events:
            if isinstance(event, AnswerRevised):
                # a revision only where the new view does not extend the old one, and it
                # rewrites only the part that does not: the other is repeated unchanged
                keep_r, keep_t = new_view[0].startswith(view[0]), new_view[1].startswith(view[1])
                assert not (keep_r and keep_t)
                assert event.reasoning == (view[0] if keep_r else new_view[0])
                assert event.text == (view[1] if keep_t else new_view[1])
        if not is_final:
            whole_r, whole_t = reference_split(output, assume_open)
            assert whole_r.startswith(new_view[0])
            assert whole_t.startswith(new_view[1])
            held = whole_r[len(new_view[0]) :] + whole_t[len(new_view[1]) :]
            assert len(held.strip()) <= len("</think>") - 1  # at most a partial tag is held back
        view = new_view
    assert isinstance(events[-1], AnswerFinished)
    assert (events[-1].reasoning, events[-1].text) == view == split_reasoning(final) == reference_split(final)
    assert decoder.finished
    # A consumer of deltas alone ends with the final answer unless it was told of a rewrite.
    reasoning, text, rewrote_r, rewrote_t = deltas_only(all_events)
    if not rewrote_t:
        assert text == events[-1].text
    if not rewrote_r:
        assert reasoning == events[-1].reasoning
    # ... and it is told only of true rewrites: when every output extends the one before
    # and its answer text is the start of the final one, the text is never rewritten.
    final_text = split_reasoning(final)[1]
    if all(b.startswith(a) for a, b in itertools.pairwise(frames)) and all(
        final_text.startswith(reference_split(o, assume_open)[1]) for o in outputs
    ):
        assert not rewrote_t


@settings(max_examples=300, deadline=None)
@given(models_st, outputs_st, st.lists(st.integers(min_value=0, max_value=200), max_size=8))
def test_cumulative_prefixes_property(model: str, output: str, cuts: list[int]) -> None:
    prefixes = [output[: min(cut, len(output))] for cut in sorted(cuts)]
    check_stream(model, prefixes, output)


@settings(max_examples=200, deadline=None)
@given(models_st, st.lists(outputs_st, max_size=6), outputs_st)
def test_arbitrary_outputs_property(model: str, outputs: list[str], final: str) -> None:
    check_stream(model, outputs, final)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["r1-1776", "sonar", "sonar-reasoning"]),
    st.text(max_size=3).filter(str.isspace) | st.just(""),
    st.text(alphabet="ab<>/thinké😀 \n", max_size=25).filter(lambda s: "</think>" not in s),
    st.text(alphabet="ab<>/thinké😀 \n", max_size=25),
    st.lists(st.integers(min_value=0, max_value=80), max_size=8),
)
def test_explicit_think_is_never_revised(
    model: str, space: str, reasoning: str, answer: str, cuts: list[int]
) -> None:
    output = f"{space}<think>{reasoning}</think>{answer}"
    events = stream(model, [output[: min(c, len(output))] for c in sorted(cuts)], output)
    assert not any(isinstance(e, AnswerRevised) for e in events)
    assert replay(events) == (reasoning, answer.lstrip())


json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
field_values = json_values | st.sampled_from(["failed", "completed", True, False, [], ["u"]]) | outputs_st
payloads_st = json_values | st.dictionaries(
    st.sampled_from(["output", "final", "status", "citations", "text", "elapsed_time", "tokens_streamed"]),
    field_values,
    max_size=5,
)


@settings(max_examples=300, deadline=None)
@given(models_st, st.lists(payloads_st, max_size=8))
def test_arbitrary_payloads_give_events_or_remote_errors(model: str, payloads: list[object]) -> None:
    decoder = AnswerDecoder(model)
    view = ("", "")
    for payload in payloads:
        if decoder.finished:
            with pytest.raises(LocalProtocolError):
                decoder.feed(payload)
            return
        try:
            events = decoder.feed(payload)
        except RemoteProtocolError:
            assert (decoder.reasoning, decoder.text) == view
            continue
        assert all(isinstance(e, Event) for e in events)
        view = replay(events, view)
        assert view == (decoder.reasoning, decoder.text)
        terminal = [e for e in events if isinstance(e, (AnswerFinished, QueryFailed))]
        assert decoder.finished == bool(terminal)
        if terminal:
            assert terminal == [events[-1]]


def test_progress_events_are_told_by_their_suffix() -> None:
    assert is_progress_event(progress_event_name("sonar"))
    assert is_progress_event("some-new-model_query_progress")
    assert not is_progress_event("sonar_query_progress_extra")
    assert not is_progress_event("query_progress")
