"""CumulativeFrameReader: the prefix fast path always agrees with json.loads, or steps aside."""

from __future__ import annotations

import json

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from plabs_proto.errors import RemoteProtocolError
from plabs_proto.labs import socketio
from plabs_proto.labs.answer import CumulativeFrameReader


def frame(output: str, *, ascii_only: bool = False, spaces: bool = False, **extra: object) -> str:
    payload = {"output": output, **extra}
    separators = (", ", ": ") if spaces else (",", ":")
    return "42" + json.dumps(["sonar_query_progress", payload], ensure_ascii=ascii_only, separators=separators)


def full(text: str) -> tuple[str, dict[str, object]]:
    args = json.loads(text[2:])
    return args[0], args[1]


def test_second_frame_takes_the_prefix_path() -> None:
    reader = CumulativeFrameReader()
    first = frame("Hello", final=False)
    assert reader.read(first, 1) == full(first)
    second = frame("Hello, world \u00e9\U0001f600", final=False, elapsed_time=0.5)
    assert reader.read(second, 1) == full(second)
    # The state now holds the whole output: a third frame extends it.
    third = frame("Hello, world \u00e9\U0001f600!", final=True, citations=["https://a.example"])
    assert reader.read(third, 1) == full(third)


@pytest.mark.parametrize(
    "text",
    [
        '42["x",{"final":false,"output":"a"}]',  # output not first: full decoding
        '42["x",{"output":"a"},"extra"]',  # more arguments
        '42["x",{"output":"a","output":"b"}]',  # a duplicate key: the last one wins in JSON
        '42["x",{"output":"a"}',  # cut short
        '42["x",{"output":"a\x01"}]',  # a raw control character is not JSON
        '42["x\\u0041",{"output":"a"}]',  # an escaped name
        '42["x",{"output":"a"}]\x1e',  # junk after the array
    ],
)
def test_shapes_it_steps_aside_for(text: str) -> None:
    assert CumulativeFrameReader().read(text, 1) is None


def test_output_that_does_not_extend_falls_back_to_the_head() -> None:
    reader = CumulativeFrameReader()
    reader.read(frame("Hello world"), 1)
    shorter = frame("Hello")
    assert reader.read(shorter, 1) == full(shorter)


def test_split_surrogate_pair_is_not_joined_wrongly() -> None:
    reader = CumulativeFrameReader()
    first = '42["x",{"output":"a\\ud83d"}]'
    assert reader.read(first, 1) == ("x", {"output": "a\ud83d"})
    second = '42["x",{"output":"a\\ud83d\\ude00"}]'
    assert reader.read(second, 1) is None  # the caller's json.loads joins the pair
    assert json.loads(second[2:])[1]["output"] == "a\U0001f600"


texts = st.text(max_size=30)


@settings(max_examples=150, deadline=None)
@given(
    parts=st.lists(texts, min_size=1, max_size=8),
    ascii_only=st.booleans(),
    spaces=st.booleans(),
    extra=st.dictionaries(st.sampled_from(["final", "status", "elapsed_time", "citations", "x"]),
                          st.one_of(st.booleans(), st.integers(), st.text(max_size=5), st.none()), max_size=3),
    shrink_at=st.integers(0, 10),
)
def test_agrees_with_json_loads(parts: list[str], ascii_only: bool, spaces: bool, extra: dict[str, object],
                                shrink_at: int) -> None:
    reader = CumulativeFrameReader()
    output = ""
    for i, part in enumerate(parts):
        output = output[: len(output) // 2] if i == shrink_at else output + part
        text = frame(output, ascii_only=ascii_only, spaces=spaces, **extra)
        got = reader.read(text, 1)
        event("prefix path" if got is not None else "stepped aside")
        if got is not None:
            assert got == full(text)


TAILS = ['"}]', '"}]\n', '","final":true,"citations":["x"]}]', '"},"extra"]', '","output":"b"}]', '"}]x',
         '"', '"}', '"}}]', '\\"}]', '"\x01}]', '", "x": [1, {"y": null}]}]', '","n":1e999}]']


@settings(max_examples=200, deadline=None)
@given(
    prefix=st.sampled_from(["", "4"]),
    output=st.text(max_size=40),
    ascii_only=st.booleans(),
    # Half the tails are plain, so the prefix path (and its assertion) runs in a good share of examples.
    tail=st.one_of(st.sampled_from(TAILS[:3]), st.sampled_from(TAILS[:3]), st.sampled_from(TAILS[3:]),
                   st.text(max_size=20)),
    noise=st.one_of(st.none(), st.none(), st.tuples(st.integers(0, 200), st.text(min_size=1, max_size=5))),
)
def test_arbitrary_text_never_raises(prefix: str, output: str, ascii_only: bool, tail: str,
                                     noise: tuple[int, str] | None) -> None:
    """Frames near the plain shape (a JSON string, then a tail, maybe noise anywhere): the reader
    never raises, agrees with json.loads when it answers, and answers every plain frame."""
    text = prefix + '2["a",{"output":' + json.dumps(output, ensure_ascii=ascii_only) + tail[1:]
    if tail[:1] != '"':
        text = prefix + '2["a",{"output":"' + tail
    if noise is not None:
        at = len(prefix) + noise[0] % (len(text) - len(prefix) + 1)
        text = text[:at] + noise[1] + text[at:]
    reader = CumulativeFrameReader()
    got = reader.read(text, len(prefix))
    event("prefix path" if got is not None else "stepped aside")
    try:
        expected = tuple(json.loads(text[len(prefix) + 1 :]))
    except ValueError:
        expected = None
    if got is not None:
        assert got == expected
    if noise is None and tail in ('"}]', '"}]\n', '","final":true,"citations":["x"]}]'):
        assert got == expected  # the plain shapes take the prefix path


def read_either(reader: CumulativeFrameReader, text: str) -> tuple[str, dict[str, object]] | None:
    """What the client does with a WebSocket text frame: the bytes path, else the text path."""
    got = reader.read_bytes(text.encode("utf-8"), 1)
    return got if got is not None else reader.read(text, 1)


def test_bytes_path_takes_over_after_the_text_path() -> None:
    reader = CumulativeFrameReader()
    first = frame("Hé", final=False)
    assert reader.read_bytes(first.encode(), 1) is None  # nothing known yet
    assert reader.read(first, 1) == full(first)
    for output in ("Hé, wo", "Hé, world \U0001f600", "Hé, world \U0001f600 \u4e2d\u6587"):
        text = frame(output, final=False, elapsed_time=0.5)
        assert reader.read_bytes(text.encode(), 1) == full(text)
    shrunk = frame("Hé", final=True)
    assert reader.read_bytes(shrunk.encode(), 1) is None  # not an extension: decode it whole
    assert reader.read(shrunk, 1) == full(shrunk)


def test_bytes_path_leaves_bad_utf8_to_the_full_decoding() -> None:
    reader = CumulativeFrameReader()
    reader.read(frame("ok"), 1)
    bad = frame("ok").encode()[:-3] + b"\xff\xfe" + b'"}]'
    assert reader.read_bytes(bad, 1) is None


@settings(max_examples=150, deadline=None)
@given(
    # Halves of a surrogate pair as parts of their own: a pair split across frames is common.
    parts=st.lists(st.one_of(texts, st.sampled_from(["\ud83d", "\ude00", "\U0001f600"])), min_size=1, max_size=8),
    ascii_only=st.booleans(),
    spaces=st.booleans(),
    shrink_at=st.integers(0, 10),
)
def test_bytes_and_text_paths_agree_with_json_loads(
    parts: list[str], ascii_only: bool, spaces: bool, shrink_at: int
) -> None:
    reader = CumulativeFrameReader()
    output = ""
    for i, part in enumerate(parts):
        output = output[: len(output) // 2] if i == shrink_at else output + part
        text = frame(output, ascii_only=ascii_only, spaces=spaces, final=False)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            continue  # lone surrogates cannot travel in a WebSocket text frame
        got = read_either(reader, text)
        event("read" if got is not None else "stepped aside")
        if got is not None:
            assert got == full(text)


_CONSTANTS = st.sampled_from(["NaN", "Infinity", "-Infinity"])


@given(output=st.text(max_size=20), first=st.booleans(), key=st.sampled_from(["elapsed_time", "x", "final"]),
       constant=_CONSTANTS)
@settings(max_examples=100, deadline=None)
def test_fast_paths_refuse_what_the_codec_refuses(output: str, first: bool, key: str, constant: str) -> None:
    """A NaN or Infinity in a progress frame's tail: the codec refuses it, so the reader steps aside."""
    text = frame(output, final=False)[:-2] + f',"{key}":{constant}}}]'
    with pytest.raises(RemoteProtocolError):
        socketio.decode_packet(text[1:])
    reader = CumulativeFrameReader()
    if not first:  # the prefix path: a previous frame whose output this one extends
        previous = frame(output[:-1] if output else "", final=False)
        assert reader.read(previous, 1) == full(previous)
        assert reader.read_bytes(previous.encode("utf-8", "surrogatepass"), 1) in (None, full(previous))
    assert reader.read(text, 1) is None
    assert reader.read_bytes(text.encode("utf-8", "surrogatepass"), 1) is None
