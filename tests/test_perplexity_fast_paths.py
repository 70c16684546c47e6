"""The answer decoder's fast paths give what its general paths give, for any input.

The common frame of the blocks shape (a ``diff_block`` that appends one chunk to the
answer) is taken by shorter paths: :func:`~plabs_proto.perplexity.patch.append_chunk`
instead of :func:`~plabs_proto.perplexity.patch.apply`, and the answer's delta read
without comparing texts.  Each property here runs the same input through both.  The
SSE decoder takes an event in the service's form whole: compared with the
specification's algorithm and checked at its limits.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_sse import reference, split

from plabs_proto.errors import LabsError, RemoteProtocolError
from plabs_proto.events import Event, TextDelta
from plabs_proto.perplexity.answer import AnswerDecoder
from plabs_proto.perplexity.frames import FrameLoader, load_frame
from plabs_proto.perplexity.patch import append_chunk, apply
from plabs_proto.perplexity.shape import Limits
from plabs_proto.perplexity.sse import SSEDecoder, SSEEvent
from plabs_proto.perplexity.text import Text, Texts


class Patch(dict):  # type: ignore[type-arg]
    """A patch as a dict of another type: the fast path declines it, the general path takes it the same."""


chunk = st.text(alphabet="ab\u00e9\U0001f600 ", max_size=3)
member = st.one_of(chunk, st.none(), st.integers(), st.lists(chunk, max_size=2))
path = st.one_of(
    st.builds(lambda n: f"/chunks/{n}", st.integers(min_value=0, max_value=6)),
    st.sampled_from(["/chunks/-", "/chunks/01", "/chunks/", "/chunks", "/chunks/-1", "/chunks/1/0", "/chunkz/0",
                     "/chunks/~0", "", "/answer", "chunks/0"]),
)
patch = st.one_of(
    st.fixed_dictionaries({"op": st.sampled_from(["add", "replace", "remove", "move"]), "path": path},
                          optional={"value": member}),
    member,
)
root = st.one_of(
    st.fixed_dictionaries({"chunks": st.lists(chunk, max_size=5)}, optional={"answer": chunk}),
    st.fixed_dictionaries({"chunks": st.one_of(st.none(), chunk, st.dictionaries(chunk, chunk, max_size=2))}),
    st.lists(chunk, max_size=2),
    st.none(),
)


def outcome(call: Any, *args: Any) -> tuple[str, Any]:
    """``("ok", what call(*args) returned)``, or the type and words of the LabsError it raised."""
    try:
        return "ok", call(*args)
    except LabsError as exc:
        return type(exc).__name__, str(exc)


@settings(max_examples=500, deadline=None)
@given(root=root, patch=patch, most=st.integers(min_value=0, max_value=7))
def test_append_chunk_does_what_apply_does_or_nothing(root: Any, patch: Any, most: int) -> None:
    fast, general = copy.deepcopy(root), copy.deepcopy(root)
    touched: dict[int, int] = {}
    if append_chunk(fast, patch, most):
        done, (patched, _) = outcome(apply, general, patch, "markdown_block", most, touched)
        assert done == "ok" and patched is general
        assert fast == general and touched == {}
    else:
        assert fast == root  # declined: nothing changed


operation = st.one_of(
    st.tuples(st.just("append"), chunk),  # at /chunks/<n>: the fast path's patch
    st.tuples(st.just("dash"), chunk),  # at /chunks/-
    st.tuples(st.just("insert"), st.integers(min_value=0, max_value=8), chunk),
    st.tuples(st.just("replace"), st.integers(min_value=0, max_value=8), chunk),
    st.tuples(st.just("remove"), st.integers(min_value=0, max_value=8)),
    st.tuples(st.just("whole"), st.lists(chunk, max_size=4)),
    st.tuples(st.just("answer"), chunk),
    st.tuples(st.just("track"), st.integers(min_value=0, max_value=8), st.lists(chunk, max_size=3)),
    st.tuples(st.just("thread"), st.sampled_from(["b1", "b2", ""]), st.sampled_from(["t1", None, 7])),
)


def frames_of(groups: list[list[Any]], make: type[dict]) -> list[dict[str, Any]]:  # type: ignore[type-arg]
    """One frame per group of operations on the ask_text track (and a second track); ``make`` builds each patch."""
    frames: list[dict[str, Any]] = [{"status": "PENDING", "backend_uuid": "b1", "read_write_token": "t1",
                                     "blocks": [{"intended_usage": "ask_text", "diff_block": {
                                         "field": "markdown_block",
                                         "patches": [make(op="replace", path="", value={"chunks": []})]}}]}]
    size = 0  # the chunks the ask_text track holds (as far as the patches go)
    for group in groups:
        patches: list[Any] = []
        frame: dict[str, Any] = {"status": "PENDING", "backend_uuid": "b1", "read_write_token": "t1"}
        blocks: list[Any] = [{"intended_usage": "ask_text", "diff_block": {"field": "markdown_block",
                                                                           "patches": patches}}]
        for op in group:
            kind = op[0]
            if kind == "append":
                patches.append(make(op="add", path=f"/chunks/{size}", value=op[1]))
                size += 1
            elif kind == "dash":
                patches.append(make(op="add", path="/chunks/-", value=op[1]))
                size += 1
            elif kind == "insert":
                patches.append(make(op="add", path=f"/chunks/{op[1]}", value=op[2]))
                size += op[1] <= size
            elif kind == "replace":
                patches.append(make(op="replace", path=f"/chunks/{op[1]}", value=op[2]))
            elif kind == "remove":
                patches.append(make(op="remove", path=f"/chunks/{op[1]}"))
                size -= op[1] < size
            elif kind == "whole":
                patches.append(make(op="replace", path="/chunks", value=list(op[1])))
                size = len(op[1])
            elif kind == "answer":
                patches.append(make(op="add", path="/answer", value=op[1]))
            elif kind == "track":
                blocks.append({"intended_usage": "ask_text_0_markdown", "markdown_block": {
                    "chunks": list(op[2]), "chunk_starting_offset": op[1]}})
            else:
                frame["backend_uuid"], frame["read_write_token"] = op[1], op[2]
        frame["blocks"] = blocks
        frames.append(frame)
    return [*frames, {"status": "COMPLETED", "backend_uuid": "b1"}]


def decoded(frames: list[dict[str, Any]]) -> tuple[list[Event], tuple[str, str, str] | None]:
    """The events of the frames, and the error that stopped them (its type and words), if any."""
    decoder = AnswerDecoder(max_chunks=6)
    events: list[Event] = []
    try:
        for frame in frames:
            events += decoder.feed(frame)
    except LabsError as exc:
        return events, (type(exc).__name__, str(exc), exc.partial_text)
    return events, None


@settings(max_examples=400, deadline=None)
@given(groups=st.lists(st.lists(operation, max_size=4), max_size=10))
def test_the_fast_paths_give_the_general_paths_events(groups: list[list[Any]]) -> None:
    """The same frames, with each patch a plain dict (the fast paths take the appends) and a dict of
    another type (only the general paths take them): the same events, and the same error if any."""
    assert decoded(frames_of(groups, dict)) == decoded(frames_of(groups, Patch))


# The blocks of the common frame are taken by a short path (Blocks.take) that reads their members directly;
# a block with a member more (one the decoder does not read) goes the general path.  Blocks at the short
# path's edges (an index or offset one off, a member missing or of another type, the chunk and patch limits)
# decode the same both ways.
near_usage = st.sampled_from(["ask_text"] * 24 + ["ask_text_0_markdown"] * 12 + ["", None, "web_results", 5])
near_append = st.tuples(
    st.just("append"), near_usage, st.one_of(chunk, chunk, chunk, member),
    st.sampled_from(["next"] * 40 + ["dash", "before", "after", "01", "none"]),
    st.sampled_from(["ok"] * 40 + ["tuple", "two", "nofield", "plan", "subclass", "notdict", "replace", "novalue"]),
)
near_track = st.tuples(
    st.just("track"), near_usage, st.lists(chunk, max_size=2),
    st.sampled_from(["next"] * 40 + ["back", "zero", "after", "true", "float", "none", "missing"]),
    st.sampled_from(["ok"] * 40 + ["nochunks", "strchunks", "answer", "badanswer", "notdict", "plan"]),
)
near_op = st.one_of(
    *[near_append] * 5, *[near_track] * 4,
    st.tuples(st.just("chunks"), near_usage, st.sampled_from([{"0": "x"}, "x", 5])),  # a track's chunks not a list
    st.tuples(st.just("workflow"), st.none(), st.lists(chunk, max_size=2)),
)


def near_frames(groups: list[list[Any]], more: bool) -> list[Any]:
    """Frames of these operations on the answer tracks, after a frame that starts both (``more``: a member
    more in each block that is an object), and a COMPLETED frame."""
    size: dict[Any, int] = {"ask_text": 0, "ask_text_0_markdown": 0}  # the chunks each track holds, if all went well
    frames: list[Any] = [{"status": "PENDING", "backend_uuid": "b1", "blocks": [
        {"intended_usage": "ask_text", "diff_block": {"field": "markdown_block", "patches": [
            {"op": "replace", "path": "", "value": {"chunks": []}}]}},
        {"intended_usage": "ask_text_0_markdown", "markdown_block": {"chunks": [], "chunk_starting_offset": 0}}]}]
    for group in copy.deepcopy(groups):  # (the decoder keeps and changes what it is given)
        blocks: list[Any] = []
        for op in group:
            usage, held = op[1], size.get(op[1], 0)
            if op[0] == "workflow":  # (its answer item, when it has one, is the answer)
                blocks.append({"intended_usage": "workflow_root", "workflow_block": {"steps": [{"items": [
                    {"payload": {"text_payload": {"text": "".join(op[2])}}}]}]}})
            elif op[0] == "chunks":
                blocks.append({"intended_usage": usage, "diff_block": {"field": "markdown_block", "patches": [
                    {"op": "replace", "path": "/chunks", "value": op[2]}]}})
                size[usage] = len(op[2]) if isinstance(op[2], (dict, str)) else held
            elif op[0] == "append":
                _, _, value, where, form = op
                index = {"next": held, "before": held - 1, "after": held + 1}.get(where, 0)
                path = {"dash": "/chunks/-", "01": "/chunks/01"}.get(where, f"/chunks/{index}")
                patch: Any = {"op": "replace" if form == "replace" else "add", "path": path, "value": value}
                if where == "none":
                    del patch["path"]
                if form == "novalue":
                    del patch["value"]
                patches: Any = [Patch(patch) if form == "subclass" else patch]
                if form == "tuple":
                    patches = tuple(patches)
                elif form == "two":
                    patches.append({"op": "add", "path": f"/chunks/{held + 1}", "value": "z"})
                elif form == "notdict":
                    patches = [value]
                diff: dict[str, Any] = {"field": "plan_block" if form == "plan" else "markdown_block", "patches": patches}
                if form == "nofield":
                    del diff["field"]
                blocks.append({"intended_usage": usage, "diff_block": diff})
                if where in ("next", "dash"):
                    size[usage] = held + 1 + (form == "two")
            else:
                _, _, chunks, where, form = op
                offset: Any = {"next": held, "back": max(held - 1, 0), "zero": 0, "after": held + 1, "true": True,
                               "float": float(held), "none": None}.get(where)
                block: Any = {"chunks": list(chunks), "chunk_starting_offset": offset}
                if where == "missing":
                    del block["chunk_starting_offset"]
                if form == "nochunks":
                    del block["chunks"]
                elif form == "strchunks":
                    block["chunks"] = "ab"
                elif form == "answer":
                    block["answer"] = "".join(chunks)
                elif form == "badanswer":
                    block["answer"] = 5
                elif form == "notdict":
                    block = list(chunks)
                blocks.append({"intended_usage": usage, "plan_block" if form == "plan" else "markdown_block": block})
                if type(offset) is int:
                    size[usage] = offset + len(chunks)
        if more:
            blocks = [{**block, "note": 0} if isinstance(block, dict) else block for block in blocks]
        frames.append({"status": "PENDING", "backend_uuid": "b1", "blocks": blocks})
    return [*frames, {"status": "COMPLETED", "backend_uuid": "b1"}]


def appends(usage: str, count: int, form: str = "ok") -> list[Any]:
    return [("append", usage, "a", "next", form)] * count


def tracks(usage: str, *chunks: list[str], where: str = "next", form: str = "ok") -> list[Any]:
    return [("track", usage, list(piece), where, form) for piece in chunks]


SIDE = "ask_text_0_markdown"


@settings(max_examples=300, deadline=None)
@example(groups=[appends("ask_text", 3), appends("ask_text", 1)], most=(3, 10))  # the chunk limit at its edge
@example(groups=[appends(SIDE, 2), tracks(SIDE, ["a"]), tracks(SIDE, ["b"])], most=(3, 10))
@example(groups=[tracks(SIDE, ["a", "b"]), tracks(SIDE, ["c", "d"])], most=(3, 10))
@example(groups=[appends("ask_text", 2), appends("ask_text", 3)], most=(6, 2))  # the patch limit
@example(groups=[appends("ask_text", 1, "plan")], most=(6, 10))
@example(groups=[appends("ask_text", 1), appends("ask_text", 1, "replace")], most=(6, 10))
@example(groups=[appends("ask_text", 1), [("append", "ask_text", "b", "before", "replace"), *appends("ask_text", 1)]],
         most=(6, 10))  # a chunk reported changed, then one added: a revision
@example(groups=[[*tracks("ask_text", ["a"], form="badanswer"), *appends("ask_text", 1)]], most=(6, 10))
@example(groups=[[*tracks("ask_text", ["a"], form="answer"), *appends("ask_text", 1)], appends("ask_text", 1)],
         most=(6, 10))
@example(groups=[appends("ask_text", 1), [("chunks", SIDE, {"0": "x"})], appends(SIDE, 1), tracks(SIDE, ["b"])],
         most=(6, 10))
@example(groups=[appends("ask_text", 1), [("chunks", SIDE, "x")], tracks(SIDE, ["b"])], most=(6, 10))
@example(groups=[tracks(SIDE, ["a"]), tracks(SIDE, ["b"], where="true")], most=(6, 10))
@example(groups=[appends("ask_text", 4), appends("ask_text", 1), appends("ask_text", 1)], most=(1000, 10, 5))
@example(groups=[tracks(SIDE, ["a"]), tracks(SIDE, [], form="strchunks")], most=(6, 10))
@example(groups=[appends("ask_text", 1), [("workflow", None, ["a"])], appends("ask_text", 1)], most=(6, 10))
@example(groups=[tracks(SIDE, ["a"]), tracks(SIDE, ["b"], where="float")], most=(6, 10))
@given(groups=st.lists(st.lists(near_op, max_size=4), max_size=12),
       most=st.sampled_from([(3, 10), (6, 2), (1000, 10), (1000, 10, 5)]))
def test_the_short_path_of_blocks_gives_the_general_paths_events(groups: list[list[Any]], most: Any) -> None:
    """The same frames, each block as it is and with a member more (the general path): the same events,
    and the same error if any (``most``: the chunk, patch and text limits)."""
    def decode(frames: list[Any]) -> tuple[list[Event], tuple[str, str, str] | None]:
        decoder = AnswerDecoder(max_chunks=most[0], max_patches=most[1], max_text=most[2] if most[2:] else 1000)
        events: list[Event] = []
        try:
            for frame in frames:
                events += decoder.feed(frame)
        except LabsError as exc:
            return events, (type(exc).__name__, str(exc), exc.partial_text)
        return events, None

    assert decode(near_frames(groups, False)) == decode(near_frames(groups, True))


def general_update(texts: Texts, events: list[Event], answer: Any, thinking: list[Any], touched: dict[int, int]) -> None:
    """What Texts.update does when its fast path does not apply: compare each text with what was reported."""
    chunks, whole = answer
    texts._emit(events, texts._change(texts.answer, chunks, whole, "answer", touched), texts._thinking(thinking, touched))


text_step = st.one_of(
    st.tuples(st.just("grow"), st.lists(st.one_of(chunk, st.none()), max_size=3)),
    st.tuples(st.just("touch"), st.integers(min_value=0, max_value=6), chunk),
    st.tuples(st.just("new"), st.lists(chunk, max_size=4)),
    st.tuples(st.just("whole"), chunk),
    st.tuples(st.just("think"), chunk),
    st.tuples(st.just("limit"), st.integers(min_value=0, max_value=12)),  # max_text changed between frames
)


@settings(max_examples=400, deadline=None)
@given(steps=st.lists(text_step, max_size=12), most=st.integers(min_value=0, max_value=12))
def test_the_answers_fast_update_is_the_general_one(steps: list[Any], most: int) -> None:
    """Texts.update (whose fast path takes a chunk list that only grew) against the general comparison
    it skips, on the same chunk lists: the same events, the same texts, the same error."""
    limits = [Limits(text=most, blocks=10, steps=10, patches=10, chunks=10, rewrite=4 * most) for _ in "ab"]
    fast, general = Texts(limits[0]), Texts(limits[1])
    chunks: list[Any] = []
    for step in steps:
        touched: dict[int, int] = {}
        thinking: list[Any] = []
        whole = None
        if step[0] == "grow":
            chunks.extend(step[1])
        elif step[0] == "touch" and step[1] < len(chunks):
            chunks[step[1]] = step[2]
            touched[id(chunks)] = step[1]
        elif step[0] == "new":
            chunks = list(step[1])
        elif step[0] == "whole":
            whole = step[1]
        elif step[0] == "think":
            thinking = [(None, step[1])]
        elif step[0] == "limit":
            limits[0].text = limits[1].text = step[1]
        fast_events: list[Event] = []
        general_events: list[Event] = []
        got = outcome(fast.update, fast_events, (chunks, whole), thinking, touched)
        want = outcome(general_update, general, general_events, (chunks, whole), thinking, touched)
        assert (got, fast_events) == (want, general_events)
        if got[0] != "ok":
            break
        assert fast.answer.text() == general.answer.text() and fast.reasoning.text() == general.reasoning.text()
        assert (fast.answer.ref is chunks) == (general.answer.ref is chunks)
        assert fast.answer.count == general.answer.count


def test_a_text_follows_its_chunk_list() -> None:
    """The fast path in one example: each frame's new chunk is one TextDelta; a changed chunk is a revision."""
    texts = Texts(Limits(text=100, blocks=10, steps=10, patches=10, chunks=10, rewrite=100))
    chunks = ["Hel"]
    events: list[Event] = []
    texts.update(events, (chunks, None), [], {})
    chunks.append("lo")
    texts.update(events, (chunks, None), [], {})
    chunks[0] = "Jel"
    texts.update(events, (chunks, None), [], {id(chunks): 0})
    assert [type(event).__name__ for event in events] == ["TextDelta", "TextDelta", "AnswerRevised"]
    assert texts.answer.text() == "Jello" and isinstance(texts.answer, Text)


# -- the SSE decoder's whole events ---------------------------------------------------------------------

# An event as the service sends it ([event: TYPE CRLF] data: DATA CRLF CRLF) is taken at once; anything
# else in it (a lone CR or LF, a comment, an id, a second data line) goes line by line.
event_line = st.sampled_from(["", "event: message\r\n", "event: end_of_stream\r\n", "event: \r\n", "event:x\r\n",
                              "event: a\rb\r\n", "event: a\nb\r\n", ": c\r\n", "id: 7\r\n", "retry: 5\r\n"])
data_text = st.text(alphabet='{}"ab:\r\n \u00e9', max_size=8)
sse_event = st.builds(
    lambda head, data, more, end: f"{head}data: {data}\r\n{more}{end}",
    event_line, data_text, st.sampled_from(["", "data: x\r\n", ": c\r\n"]), st.sampled_from(["\r\n", "\n", "\r"]),
)


@settings(max_examples=200, deadline=None)
@given(
    events=st.lists(sse_event, max_size=6),
    tail=st.sampled_from(["", "event: message\r\ndata: cut", "event: message\r\ndata: cut\r\n", "data: x\r\n\r"]),
    cuts=st.lists(st.integers(min_value=0), max_size=6),
)
def test_whole_events_decode_as_the_specification_says(events: list[str], tail: str, cuts: list[int]) -> None:
    data = ("".join(events) + tail).encode()
    decoder = SSEDecoder()
    got: list[SSEEvent] = []
    for piece in split(data, cuts):
        got += decoder.feed(piece)
    assert (got, decoder.end()) == reference(data)


@pytest.mark.parametrize(
    "data",
    [
        b"event: a\rb\r\ndata: x\r\n\r\n",  # a lone CR ends the event line: its type is "a"
        b"event: message\r\ndata: x\ry\r\n\r\n",  # ... and the data line: its data is "x"
        b"event: message\r\ndata: x\r\n\r\r\n",  # a blank line ended by a lone CR
        b"event: message\r\ndata: x\r\n\n",  # ... and by a lone LF
        b"event: message\r\ndata: x\n\r\n",
        b"data: x\r\n\r\nevent: \r\ndata: \r\n\r\n",  # no type; an empty type and empty data
        b"event: message\r\ndata:x\r\n\r\n",  # no space after the colon
        # near misses, each taken line by line (the names are case-sensitive; a field's value is no data)
        b"data: a\r\n\r\nid: 12345\r\n\r\ndata: b\r\n\r\n",  # "data: " at the text's start, not the line's
        b"DATA: x\r\n\r\nXXdata: XXy\r\n\r\n",
        b"EVENT: x\r\ndata: y\r\n\r\nXXevent: XX\r\ndata: y\r\n\r\n",
        b"event: ab\rXdata: 123456\r\n\r\n",  # a lone CR in the event line, "data: " after it
        b"data: a\r\n\r\nevent: b\rX",  # an event line with no LF after it
        b"event: xy\ndata: z\r\n\r\n",  # an event line ended by LF alone
        b"data: a\r\n\r\nevent: x\r\nid: 123456\r\n\r\n",  # an event line, then no data line
        b"event: x\r\nXXdata: XXy\r\n\r\nevent: x\r\nDATA: y\r\n\r\n",
        b"event: x\r\nid: 12345678data: y\r\n\r\n",  # "data: " further in the next line
        b"data: a\r\nx\r\n",  # a data line, then a field line, not a blank one: no event yet
        b"data: xid\r\n\r\ndata: y\r\n\r\n",  # a whole event whose data ends with a field's name
    ],
)
def test_events_almost_in_the_services_form(data: bytes) -> None:
    decoder = SSEDecoder()
    assert (decoder.feed(data), decoder.end()) == reference(data)


def test_whole_events_at_the_line_and_data_limits() -> None:
    # the data line "data: 4567" is 10 characters: taken at 10, refused at 9 (as line by line)
    assert SSEDecoder(max_line=10).feed(b"event: m\r\ndata: 4567\r\n\r\n") == [SSEEvent(event="m", data="4567")]
    with pytest.raises(RemoteProtocolError, match="expected a line of at most 9 characters, got 10 or more"):
        SSEDecoder(max_line=9).feed(b"event: m\r\ndata: 4567\r\n\r\n")
    # the event line "event: abc" is 10 characters
    assert SSEDecoder(max_line=10).feed(b"event: abc\r\ndata: 4\r\n\r\n") == [SSEEvent(event="abc", data="4")]
    with pytest.raises(RemoteProtocolError, match="expected a line of at most 9 characters, got 10 or more"):
        SSEDecoder(max_line=9).feed(b"event: abc\r\ndata: 4\r\n\r\n")
    assert SSEDecoder(max_data=4).feed(b"data: 4567\r\n\r\n") == [SSEEvent(data="4567")]
    with pytest.raises(RemoteProtocolError, match="expected an event's data of at most 3 characters, got 4"):
        SSEDecoder(max_data=3).feed(b"data: 4567\r\n\r\n")


def test_whole_events_carry_the_id_and_the_retry_set_before_them() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"id: 7\r\nretry: 50\r\n\r\nevent: message\r\ndata: a\r\n\r\ndata: b\r\n\r\n") == [
        SSEEvent(data="a", id="7", retry=50),
        SSEEvent(data="b", id="7"),
    ]
    assert decoder.feed_raw(b"event: end_of_stream\r\ndata: {}\r\n\r\n") == [("end_of_stream", "{}", "7", None)]


# A frame that repeats the last one's members but its blocks (FrameLoader.changed says "blocks") is fed with
# only its blocks read: the failure, the thread, the model and the status were checked in the frame before.
# The same JSON texts decoded by FrameLoader (its `changed` passed on, as the session does) and by load_frame
# (no `changed`: every member checked) give the same events and the same error.
head_change = st.one_of(
    st.tuples(st.just("status"), st.sampled_from(["PENDING", "pending", "IN_PROGRESS", "FAILED", "COMPLETED", None, 5])),
    st.tuples(st.just("error_code"), st.sampled_from(["E1", "RATE_LIMIT_HIT", None, 0, 3])),
    st.tuples(st.just("error_message"), st.sampled_from(["went wrong", "", None])),
    st.tuples(st.just("backend_uuid"), st.sampled_from(["b1", "b2", "", None, 7])),
    st.tuples(st.just("read_write_token"), st.sampled_from(["t1", "t2", None, []])),
    st.tuples(st.just("thread_url_slug"), st.sampled_from(["s1", "s2", None])),
    st.tuples(st.just("display_model"), st.sampled_from(["m1", "m2", "", None, 5])),
    st.tuples(st.just("text"), st.sampled_from(["", "legacy", '{"answer": "x"}', None, 5])),
    st.tuples(st.just("web_results"), st.sampled_from([[{"url": "https://a.test"}], [], "x", None])),
    st.tuples(st.just("after"), st.sampled_from([("final", False), ("status", "COMPLETED"), ("blocks", None),
                                                  ("error_code", "E2"), ("display_model", "m3")])),
    st.just(("drop",)),
)


def texts_of(groups: list[list[Any]], heads: list[list[Any]]) -> list[str]:
    """The JSON texts of ``frames_of(groups)``, each with the leading members changed by its entry of ``heads``
    (a change stays for the frames after it) and perhaps a member after the blocks."""
    usual = {"status": "PENDING", "backend_uuid": "b1", "read_write_token": "t1"}
    head = dict(usual)
    texts = []
    for n, frame in enumerate(frames_of(groups, dict)):
        blocks = frame.pop("blocks", None)
        tail: dict[str, Any] = {}
        for change in heads[n] if n < len(heads) else []:
            if change[0] == "drop":
                if head:
                    head.popitem()
            elif change[0] == "after":
                tail = dict([change[1]])
            else:
                head[change[0]] = change[1]
        members = {**head, **{key: value for key, value in frame.items() if value != usual.get(key)}}
        text = json.dumps({**members, "blocks": blocks})
        texts.append(text[:-1] + ", " + json.dumps(tail)[1:] if tail else text)
    return texts


def fed(texts: list[str], loader: bool) -> tuple[list[Event], tuple[str, str, str] | None, int]:
    """The events of the texts, decoded by FrameLoader (its `changed` given) or load_frame (none given), the
    error that stopped them (type, words, partial_text), and how many frames came with ``changed`` "blocks"."""
    decoder = AnswerDecoder(max_chunks=6)
    frames = FrameLoader()
    events: list[Event] = []
    repeated = 0
    try:
        for text in texts:
            if loader:
                frame = frames.load(text)
                repeated += frames.changed == "blocks"
                events += decoder.feed(frame, frames.changed)
            else:
                events += decoder.feed(load_frame(text))
    except LabsError as exc:
        return events, (type(exc).__name__, str(exc), exc.partial_text), repeated
    return events, None, repeated


@settings(max_examples=300, deadline=None)
@given(
    groups=st.lists(st.lists(operation, max_size=3), max_size=8),
    heads=st.lists(st.lists(head_change, max_size=2) | st.just([]) | st.just([]) | st.just([]), max_size=10),
)
@example(groups=[[("append", "a")], [("append", "b")], [("append", "c")], [("append", "d")]], heads=[])
@example(  # a failure reported in a frame that repeats the one before but for it
    groups=[[("append", "a")], [("append", "b")], [("append", "c")]], heads=[[], [], [], [("error_code", "E1")]]
)
@example(  # a member after the blocks: not a repeat
    groups=[[("append", "a")], [("append", "b")], [("append", "c")]],
    heads=[[], [], [("after", ("final", False))], [("after", ("final", False))]],
)
@example(  # a failure reported after the blocks of a frame that repeats the one before but for them
    groups=[[("append", "a")], [("append", "b")], [("append", "c")]], heads=[[], [], [], [("after", ("error_code", "E2"))]]
)
@example(  # a member after the blocks that names another thread, then frames without it again
    groups=[[("append", "a")], [("append", "b")], [("append", "c")], [("append", "d")], [("append", "e")]],
    heads=[[], [], [], [("after", ("backend_uuid", "b2"))]],
)
@example(  # the same in a frame that FrameLoader leaves to load_frame (100 brackets in its rest)
    groups=[[("append", "a")], [("append", "b")], [("append", "[" * 100)]],
    heads=[[], [], [], [("after", ("error_code", "E2"))]],
)
def test_frames_that_repeat_the_last_but_blocks_give_the_general_paths_events(
    groups: list[list[Any]], heads: list[list[Any]]
) -> None:
    texts = texts_of(groups, heads)
    fast, general = fed(texts, True), fed(texts, False)
    assert fast[:2] == general[:2]
    assert general[2] == 0


def test_the_frames_of_a_plain_answer_are_repeats_after_the_second() -> None:
    texts = texts_of([[("append", "a")], [("append", "b")], [("append", "c")], [("append", "d")]], [])
    events, error, repeated = fed(texts, True)
    assert error is None and repeated == 3  # the second append's frame on (the first frame starts the track)
    assert "".join(event.text for event in events if isinstance(event, TextDelta)) == "abcd"


def test_a_frame_said_to_repeat_the_last_is_still_checked_to_be_an_object() -> None:
    decoder = AnswerDecoder()
    decoder.feed({"status": "PENDING", "blocks": []})
    with pytest.raises(RemoteProtocolError, match=r"expected a JSON object as the frame, got list: \[\]$"):
        decoder.feed([], "blocks")


def test_a_frame_that_changed_in_another_member_than_blocks_is_read_whole() -> None:
    texts = ['{"backend_uuid": "b1", "blocks": null, "status": "PENDING"}'] * 3
    texts.append('{"backend_uuid": "b1", "blocks": null, "status": "FAILED"}')  # (FrameLoader.changed: "status")
    fast, general = fed(texts, True), fed(texts, False)
    assert fast == (*general[:2], 0)
    assert fast[1] is not None and fast[1][0] == "AnswerFailedError"
