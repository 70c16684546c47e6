"""The Server-Sent Events decoder: the WHATWG rules, any split of the bytes, its limits, hostile bytes."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plabs_proto.errors import LocalProtocolError, RemoteProtocolError
from plabs_proto.perplexity.sse import DEFAULT_MAX_DATA, DEFAULT_MAX_LINE, SSEDecoder, SSEEvent


def decode(data: bytes, *, pieces: int = 0, **limits: int) -> tuple[list[SSEEvent], bool]:
    """All events of ``data`` (fed whole, or in ``pieces``-byte pieces) and what end() said."""
    decoder = SSEDecoder(**limits)
    events: list[SSEEvent] = []
    step = pieces or max(len(data), 1)
    for start in range(0, len(data), step):
        events += decoder.feed(data[start : start + step])
    return events, decoder.end()


def ev(data: str, event: str = "message", id: str | None = None, retry: int | None = None) -> SSEEvent:
    return SSEEvent(event=event, data=data, id=id, retry=retry)


# A stream as the ask endpoint sends it (CRLF, `event: message`, one-line JSON, then end_of_stream), in the
# form helallao/perplexity-ai splits on (b"\r\n\r\n", perplexity/client.py) and diegosouzapw/OmniRoute reads
# (open-sse/executors/perplexity-web/protocol.ts, PPLX_STREAM_EOF_SYMBOL "event: end_of_stream").
ASK_STREAM = (
    b'event: message\r\ndata: {"backend_uuid":"b1","status":"PENDING","final":false}\r\n\r\n'
    b'event: message\r\ndata: {"backend_uuid":"b1","status":"COMPLETED","final":true}\r\n\r\n'
    b"event: end_of_stream\r\ndata: {}\r\n\r\n"
)


@pytest.mark.parametrize("pieces", [0, 1, 2, 3, 7])
def test_the_ask_stream_in_any_pieces(pieces: int) -> None:
    assert decode(ASK_STREAM, pieces=pieces) == (
        [
            ev('{"backend_uuid":"b1","status":"PENDING","final":false}'),
            ev('{"backend_uuid":"b1","status":"COMPLETED","final":true}'),
            ev("{}", event="end_of_stream"),
        ],
        False,
    )


# The examples of the HTML Living Standard, "Server-sent events", 9.2.4/9.2.6 (event stream interpretation).
def test_the_specifications_examples() -> None:
    assert decode(b"data: YHOO\ndata: +2\ndata: 10\n\n")[0] == [ev("YHOO\n+2\n10")]
    stream = b": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n"
    assert decode(stream)[0] == [ev("first event", id="1"), ev("second event", id=""), ev(" third event", id="")]
    assert decode(b"data\n\ndata\ndata\n\ndata:") == ([ev(""), ev("\n")], True)
    assert decode(b"data:test\n\ndata: test\n\n")[0] == [ev("test"), ev("test")]


@pytest.mark.parametrize("end", [b"\r\n", b"\n", b"\r"])
def test_every_line_end(end: bytes) -> None:
    stream = b"event: x" + end + b"data: a" + end + b"data: b" + end + end
    for pieces in (0, 1):
        assert decode(stream, pieces=pieces) == ([ev("a\nb", event="x")], False)


def test_a_cr_ending_one_piece_and_an_lf_starting_the_next_are_one_line_end() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n\r") == [ev("a")]  # CRLF ended the line, then a lone CR: the blank line
    assert decoder.feed(b"\ndata: b\n\n") == [ev("b")]  # that LF belongs to the CR before it
    assert decoder.end() is False
    mixed = b"data: 1\r\rdata: 2\n\ndata: 3\r\n\r\n"
    assert decode(mixed, pieces=1)[0] == [ev("1"), ev("2"), ev("3")]


def test_one_leading_bom_is_dropped_and_only_one() -> None:
    assert decode(b"\xef\xbb\xbfdata: a\n\n", pieces=1)[0] == [ev("a")]
    # a second BOM makes the field name "\ufeffdata", which is ignored
    assert decode(b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\n")[0] == []
    # not at the start: part of the value
    assert decode(b"data: \xef\xbb\xbfa\n\n")[0] == [ev("\ufeffa")]


def test_fields() -> None:
    stream = (
        b":comment\n"
        b"event: first\n"  # forgotten: no data before the blank line
        b"\n"
        b"data\n"  # a field without a colon: empty value
        b"unknown: ignored\n"
        b"retry: 3000\n"
        b"id: 7\n"
        b"\n"
        b"retry: 12x\n"  # not digits: ignored
        b"retry:\n"  # empty: ignored
        b"id: a\x00b\n"  # NUL: ignored
        b"data:no space\n"
        b"data:  two spaces\n"
        b"event:\n"  # empty type: "message"
        b"\n"
    )
    assert decode(stream, pieces=1)[0] == [
        ev("", id="7", retry=3000),
        ev("no space\n two spaces", id="7"),
    ]
    decoder = SSEDecoder()
    decoder.feed(b"retry: 1500\n\n")
    assert decoder.retry == 1500  # kept though no event was dispatched
    decoder.feed(b"retry: " + b"9" * 19 + b"\n")  # more than 18 digits: ignored
    assert decoder.retry == 1500


def test_the_end_says_whether_an_event_was_cut() -> None:
    assert decode(b"data: a\n\n") == ([ev("a")], False)
    assert decode(b"") == ([], False)
    assert decode(b"data: a\n\n: a comment\n") == ([ev("a")], False)
    assert decode(b"data: a\n\n\n\n") == ([ev("a")], False)
    assert decode(b"data: a\n\ndata: b\n") == ([ev("a")], True)  # a data line without its blank line
    assert decode(b"data: a\n\nevent: x\n") == ([ev("a")], True)
    assert decode(b"data: a\n\ndata: b") == ([ev("a")], True)  # an unfinished line
    assert decode(b"data: a\r\n\r") == ([ev("a")], False)  # a CR is a whole line end


def test_bytes_that_are_not_utf8_are_refused() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: ok\n\n")
    with pytest.raises(RemoteProtocolError, match=r"expected UTF-8 in the event stream, got b'\\xff"):
        decoder.feed(b"data: \xff\n\n")
    with pytest.raises(LocalProtocolError, match="expected no feed"):
        decoder.feed(b"data: more\n\n")
    cut = SSEDecoder()
    assert cut.feed(b"data: \xe2\x82") == []  # a sequence cut between pieces is fine...
    assert cut.feed(b"\xac\n\n") == [ev("\u20ac")]
    assert cut.feed(b"data: \xe2\x82") == []
    with pytest.raises(RemoteProtocolError, match="expected the event stream to end after a whole UTF-8 sequence"):
        cut.end()  # ...but not at the end


def test_no_feed_or_end_after_end() -> None:
    decoder = SSEDecoder()
    decoder.end()
    with pytest.raises(LocalProtocolError):
        decoder.feed(b"data: x\n\n")
    with pytest.raises(LocalProtocolError):
        decoder.end()
    with pytest.raises(LocalProtocolError, match="expected max_line >= 1"):
        SSEDecoder(max_line=0)


# -- limits, at their edges -----------------------------------------------------------------------------


def test_the_defaults() -> None:
    decoder = SSEDecoder()
    assert (decoder.max_line, decoder.max_data) == (DEFAULT_MAX_LINE, DEFAULT_MAX_DATA) == (
        16 * 1024 * 1024 + 1024,
        16 * 1024 * 1024,
    )


@pytest.mark.parametrize("pieces", [0, 1, 5])
def test_the_line_limit(pieces: int) -> None:
    # 10 characters of line: taken; 11: refused when the 11th arrives, with or without its line end
    assert decode(b"data: 4567\n\n", pieces=pieces, max_line=10)[0] == [ev("4567")]
    assert decode("data: 4\u20ac67\n\n".encode(), pieces=pieces, max_line=10)[0] == [ev("4\u20ac67")]  # characters
    with pytest.raises(RemoteProtocolError, match="expected a line of at most 10 characters, got 11 or more"):
        decode(b"data: 45678\n\n", pieces=pieces, max_line=10)
    with pytest.raises(RemoteProtocolError, match="expected a line of at most 10 characters, got 11 or more"):
        decode(b"data: 45678", pieces=pieces, max_line=10)
    with pytest.raises(RemoteProtocolError, match="at most 10 characters"):
        decode(b":" + b"x" * 10, pieces=pieces, max_line=10)  # comments count too


def test_the_data_limit() -> None:
    # data "abc\nde": 6 characters with the line break between the lines
    assert decode(b"data: abc\ndata: de\n\n", max_data=6)[0] == [ev("abc\nde")]
    with pytest.raises(RemoteProtocolError, match="expected an event's data of at most 5 characters, got 6"):
        decode(b"data: abc\ndata: de\n\n", max_data=5)
    # the count starts again with each event
    assert decode(b"data: abcde\n\ndata: abcde\n\n", max_data=5)[0] == [ev("abcde"), ev("abcde")]
    assert decode(b"data\ndata\n\n", max_data=1)[0] == [ev("\n")]
    with pytest.raises(RemoteProtocolError, match="at most 0 characters, got 1"):
        decode(b"data\ndata\n\n", max_data=0)


def test_a_long_line_in_small_pieces_costs_linear_time() -> None:
    line = b"data: " + b"x" * (4 * 1024 * 1024) + b"\n\n"
    started = time.process_time()
    events, _ = decode(line, pieces=64)
    small = time.process_time() - started
    assert events == [ev("x" * (4 * 1024 * 1024))]
    started = time.process_time()
    assert decode(b"data: " + b"y" * 200_000 + b"\n\n", pieces=1)[0] == [ev("y" * 200_000)]
    tiny = time.process_time() - started
    # 65 536 and 200 000 feeds: linear work takes well under a second each; re-scanning the line
    # so far at every piece would take minutes
    assert small < 5 and tiny < 5, (small, tiny)


# -- properties -----------------------------------------------------------------------------------------

_LINE_END = re.compile(r"\r\n|\r|\n")


def reference(data: bytes) -> tuple[list[SSEEvent], bool]:
    """The specification's algorithm over the whole body at once, written plainly (not incremental)."""
    text = data.decode("utf-8")
    if text.startswith("\ufeff"):
        text = text[1:]
    pieces = _LINE_END.split(text)
    lines, rest = pieces[:-1], pieces[-1]
    events: list[SSEEvent] = []
    data_buffer, event_type, last_id, retry, pending = "", "", None, None, False
    for line in lines:
        if line == "":
            pending = False
            if data_buffer == "":
                event_type = ""
                continue
            events.append(SSEEvent(event=event_type or "message", data=data_buffer[:-1], id=last_id, retry=retry))
            data_buffer, event_type, retry = "", "", None
            continue
        if line.startswith(":"):
            continue
        pending = True
        if ":" in line:
            name, value = line.split(":", 1)
            value = value[1:] if value.startswith(" ") else value
        else:
            name, value = line, ""
        if name == "event":
            event_type = value
        elif name == "data":
            data_buffer += value + "\n"
        elif name == "id" and "\0" not in value:
            last_id = value
        elif name == "retry" and value and value.isascii() and value.isdigit() and len(value) <= 18:
            retry = int(value)
    return events, pending or rest != ""


field_line = st.one_of(
    st.sampled_from(["", ":", ": comment", "data", "data:", "data: ", "event: end_of_stream", "id: 3",
                     "retry: 10", "retry: x", "id", "event", "bogus: 1"]),
    st.builds(lambda name, text: f"{name}:{text}", st.sampled_from(["data", "event", "id", "retry", "x"]),
              st.text(alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)),
                      max_size=12)),
)
stream = st.builds(
    lambda bom, lines, ends, tail: ("\ufeff" if bom else "")
    + "".join(line + ends[i % len(ends)] for i, line in enumerate(lines))
    + tail,
    st.booleans(),
    st.lists(field_line, max_size=25),
    st.lists(st.sampled_from(["\n", "\r", "\r\n"]), min_size=1, max_size=4),
    st.sampled_from(["", "data: cut", "\r"]),
).map(lambda text: text.encode("utf-8"))


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@settings(max_examples=400, deadline=None)
@given(data=stream, cuts=st.lists(st.integers(min_value=0), max_size=30))
def test_any_split_gives_the_specifications_events(data: bytes, cuts: list[int]) -> None:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for piece in split(data, cuts):
        events += decoder.feed(piece)
    assert (events, decoder.end()) == reference(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(min_value=0), max_size=20))
def test_hostile_bytes_meet_only_named_errors_within_the_limits(data: bytes, cuts: list[int]) -> None:
    decoder = SSEDecoder(max_line=16, max_data=24)
    try:
        for piece in split(data, cuts):
            for event in decoder.feed(piece):
                assert len(event.data) <= 24
            # what is held is bounded by the limits whatever the bytes
            assert sum(map(len, decoder._line)) <= 16 and sum(map(len, decoder._data)) <= 24
        decoder.end()
    except RemoteProtocolError as exc:
        assert str(exc).startswith("expected ")
