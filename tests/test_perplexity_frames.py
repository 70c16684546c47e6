"""FrameLoader decodes each frame of a stream exactly as load_frame does, reusing what frames share.

The frames of an answer repeat their first members; :class:`FrameLoader` decodes
only what follows the part a frame shares with the one before.  The properties here
feed it sequences of frames that share prefixes (numbers cut at the edge, strings
holding ``","`` and ``}``, repeated keys, odd whitespace, broken JSON, nesting at the
depth limit) and compare every value, and every error, with :func:`load_frame`'s.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plabs_proto.errors import RemoteProtocolError
from plabs_proto.jsondepth import MAX_DEPTH
from plabs_proto.perplexity.frames import FrameLoader, load_frame
from plabs_proto.perplexity.shape import excerpt

keys = st.sampled_from(["a", "b", "status", "blocks", "x,", '"}', "final", ""])
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-10**6, max_value=10**6),
    st.sampled_from([1, 12, 123, 1.5, 1.25, -0.0, 0.0, 1e5]),
    st.text(alphabet='ab",}{[]:\\ \u00e9\n', max_size=6),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
                      max_leaves=4)
members = st.lists(st.tuples(keys, values), min_size=1, max_size=6)
separators = st.sampled_from([(", ", ": "), (",", ":"), (" ,\t", " :\n"), ("\r\n,", ":")])


def encode(pairs: list[tuple[str, Any]], separator: tuple[str, str], space: str) -> str:
    """A JSON object of ``pairs`` in order (repeated keys kept), with the given separators."""
    comma, colon = separator
    body = comma.join(f"{json.dumps(key)}{colon}{json.dumps(value)}" for key, value in pairs)
    return f"{space}{{{body}}}{space}"


@st.composite
def streams(draw: st.DrawFn) -> list[str]:
    """Frames that share their first members (and sometimes more, or less), some of them broken."""
    pairs = draw(members)
    separator = draw(separators)
    frames = []
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        change = draw(st.sampled_from(["same", "last", "one", "tail", "cut", "append", "separator", "grow"]))
        pairs = list(pairs)
        if change == "last":
            pairs[-1] = (pairs[-1][0], draw(values))
        elif change == "one":
            index = draw(st.integers(min_value=0, max_value=len(pairs) - 1))
            pairs[index] = (pairs[index][0], draw(values))
        elif change == "tail":
            pairs = pairs[: draw(st.integers(min_value=1, max_value=len(pairs)))] + draw(members)
        elif change == "separator":
            separator = draw(separators)
        elif change == "grow":  # a number that gains a digit, a string that gains a character
            index = draw(st.integers(min_value=0, max_value=len(pairs) - 1))
            value = pairs[index][1]
            pairs[index] = (pairs[index][0], value * 10 + 3 if type(value) is int else f"{value}," if
                            isinstance(value, str) else value)
        text = encode(pairs, separator, draw(st.sampled_from(["", "", " ", "\n"])))
        if change == "cut":
            text = text[: draw(st.integers(min_value=0, max_value=len(text)))]
        elif change == "append":
            text += draw(st.sampled_from(["x", "}", ",", " ", "\ufeff", '"']))
        frames.append(text)
    return frames


def outcome(load: Any, text: str) -> tuple[str, str]:
    """What loading ``text`` gives: its JSON again (key order and -0.0 kept), or the error's type and words."""
    try:
        return "ok", json.dumps(load(text))
    except RemoteProtocolError as exc:
        return type(exc).__name__, str(exc)


@settings(max_examples=150, deadline=None)
@given(frames=streams())
def test_a_stream_of_frames_decodes_as_load_frame_decodes_each(frames: list[str]) -> None:
    loader = FrameLoader()
    for text in frames:
        assert outcome(loader.load, text) == outcome(load_frame, text)


def test_the_members_a_frame_shares_are_reused_and_the_rest_decoded() -> None:
    loader = FrameLoader()
    first = loader.load('{"id": "t1", "n": 12, "blocks": [1], "status": "PENDING"}')
    second = loader.load('{"id": "t1", "n": 12, "blocks": [1], "status": "COMPLETED"}')
    assert second == {"id": "t1", "n": 12, "blocks": [1], "status": "COMPLETED"}
    assert second["id"] is first["id"]  # reused, not decoded again
    # arrays and objects are decoded anew even when their text is the same (the answer decoder patches them)
    assert second["blocks"] is not first["blocks"]
    assert loader.load('{"id": "t1", "n": 12, "blocks": [2], "status": "PENDING"}')["blocks"] == [2]
    # a number one digit longer at the prefix's edge, then a change in the first member
    assert loader.load('{"id": "t1", "n": 123, "blocks": [3]}') == {"id": "t1", "n": 123, "blocks": [3]}
    assert loader.load('{"id": "t2", "n": 123, "blocks": [3]}') == {"id": "t2", "n": 123, "blocks": [3]}


def test_a_repeated_key_keeps_its_first_place_and_its_last_value() -> None:
    loader = FrameLoader()
    for text in ('{"a": 1, "b": 2, "a": 3, "c": [1]}', '{"a": 1, "b": 2, "a": 3, "c": [2]}', '{"a": 1, "b": 2, "c": 0}'):
        value = loader.load(text)
        assert list(value.items()) == list(json.loads(text).items())


@pytest.mark.parametrize(
    ("after", "message"),
    [
        ('{"id": "t1", "blocks": [1], }', "Expecting property name enclosed in double quotes"),
        ('{"id": "t1", "blocks": NaN}', "NaN is not JSON"),
        ('{"id": "t1", "blocks": [1]} x', "Extra data"),
        ('{"id": "t1", "blocks": [1]', "Expecting ',' delimiter"),
        ('{"id": "t1", "blocks": ' + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "}", "nested at most 100 deep"),
        ('{"id": "t1", "blocks": ' + '{"a": ' * MAX_DEPTH + "1" + "}" * MAX_DEPTH + "}", "nested at most 100 deep"),
        ('{"id": "t1", "bl\tocks": [1]}', "Invalid control character at"),  # a raw tab in a key
        ('{"id": "t1", "blocks": [1]}x', "Extra data"),
        ('{"id": "t1", "blocks" [1]}', "Expecting ':' delimiter"),
        ('\ufeff{"id": "t1", "blocks": [1]}', "Unexpected UTF-8 BOM"),
    ],
)
def test_errors_after_the_shared_members_are_load_frames_own(after: str, message: str) -> None:
    loader = FrameLoader()
    loader.load('{"id": "t1", "blocks": []}')
    with pytest.raises(RemoteProtocolError, match=message) as caught:
        loader.load(after)
    with pytest.raises(RemoteProtocolError) as general:
        load_frame(after)
    assert str(caught.value) == str(general.value)


def test_nesting_at_the_limit_is_taken_after_the_shared_members() -> None:
    loader = FrameLoader()
    first = loader.load('{"id": "t[1", "blocks": []}')
    deepest = '{"id": "t[1", "blocks": ' + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "}"  # 100 deep in all
    frame = loader.load(deepest)
    assert frame == json.loads(deepest)
    # still reused: only the brackets after the shared members count (not the frame's "{", nor a "[" in "t[1")
    assert frame["id"] is first["id"]


def test_a_frame_with_a_bom_is_refused_in_json_loads_own_words() -> None:
    data = '\ufeff{"id": "t1", "blocks": []}'
    with pytest.raises(json.JSONDecodeError) as words:
        json.loads(data)
    for load in (load_frame, FrameLoader().load):
        with pytest.raises(RemoteProtocolError) as caught:
            load(data)
        assert str(caught.value) == f"expected an answer frame of JSON, got {excerpt(data)} ({words.value})"


@pytest.mark.parametrize("comma", [", ", ","])
@pytest.mark.parametrize("changed", range(9))
def test_a_frame_reuses_every_leading_member_that_still_matches(changed: int, comma: str) -> None:
    # Eight members the frames share, then an array decoded in every frame.  The next frame changes one
    # member's value (or, for 8, the array's key): every member before it is reused, none after it.
    names = "abcdefgh"
    members = [f'"{name}": "{name} value"' for name in names]
    loader = FrameLoader()
    first = loader.load("{" + comma.join(members) + comma + '"blocks": []}')
    if changed < 8:
        members[changed] = f'"{names[changed]}": "another value"'
    text = "{" + comma.join(members) + comma + ('"blocks": []}' if changed < 8 else '"blockz": []}')
    frame = loader.load(text)
    assert list(frame.items()) == list(json.loads(text).items())
    assert [frame[name] is first[name] for name in names] == [index < changed for index in range(8)]
    again = loader.load(text)  # the same frame again: every member reused, those after the change too
    assert all(again[name] is frame[name] for name in names)


@pytest.mark.parametrize(
    "form",
    [
        ' \n{ "id" :\t"t1" ,\r\n"n" : 12 , "plan" : {"x": 1} , "blocks" : [%d] }\n ',
        '{"id":"t1","n":12,"plan":{"x":1},"blocks":[%d]}',  # and none at all
    ],
)
def test_frames_with_white_space_anywhere_json_allows_it_reuse_their_members_too(form: str) -> None:
    loader = FrameLoader()
    texts = [form % n for n in range(3)]
    frames = [loader.load(text) for text in texts]
    for text, frame in zip(texts, frames, strict=True):
        assert list(frame.items()) == list(json.loads(text).items())
    assert frames[1]["id"] is frames[0]["id"] and frames[2]["id"] is frames[0]["id"]
    # objects and arrays are decoded anew in every frame, even when followed by a comma
    assert frames[1]["plan"] is not frames[0]["plan"] and frames[1]["blocks"] is not frames[0]["blocks"]


def test_changed_names_the_one_member_a_frame_changed_else_none() -> None:
    # FrameLoader.changed: the key of the one member in which a frame differs from the one before (two
    # frames in a row that are the prefix's members and one member after them), else None, never another value.
    frames = FrameLoader()
    assert frames.changed is None
    steps = [
        ('{"a": 1, "b": [1]}', None),  # the first frame
        ('{"a": 1, "b": [2]}', None),  # the prefix and one member, but the frame before was the first
        ('{"a": 1, "b": [3]}', "b"),  # twice in a row
        ('{"a": 1, "b": [4], "c": 2}', None),  # two members after the prefix
        ('{"a": 1, "b": [5]}', None),
        ('{"a": 1, "b": [6]}', "b"),
        ('{"a": 1, "b": [' + "[], " * 100 + "[]]}", None),  # many brackets, not deep: the general path
        ('{"z": 0}', None),  # another start
    ]
    for text, changed in steps:
        assert frames.load(text) == json.loads(text)
        assert frames.changed == changed, text  # ("" is not None)
