"""Property-based tests of the whole client: chunking never matters, bad bytes only raise RemoteProtocolError.

Whatever the bytes, :func:`feed` checks what the client promises: the events it delivered are
consistent (the text deltas make ``partial_text``), and after an error ``state`` is ``ERROR``,
every stream it opened is closed, the error carries the partial text and more bytes are refused.
"""

from __future__ import annotations

import itertools
import random

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from peer import KEY, Harness, http_response, open_packet, progress, switching_protocols, ws_frame

from plabs_proto.config import ClientConfig
from plabs_proto.errors import LabsError, LocalProtocolError, RemoteProtocolError, ResponseError
from plabs_proto.events import AnswerFinished, AnswerRevised, Closed, Event, TextDelta
from plabs_proto.labs.answer import AnswerDecoder
from plabs_proto.wire.client import ClientState, LabsClient

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _client(transport: str = "upgrade") -> tuple[LabsClient, Harness]:
    client = LabsClient(ClientConfig(server="http://labs.test", transport=transport), rng=random.Random(0))
    return client, Harness(client)


def _websocket_script(outputs: list[str]) -> bytes:
    script = switching_protocols(KEY) + ws_frame("3probe") + ws_frame("6") + ws_frame('40{"sid":"S"}')
    for i, output in enumerate(outputs):
        final = i == len(outputs) - 1
        payload = {"output": output, "final": final}
        if final:
            payload.update(status="completed", citations=["https://x.example"])
        script += ws_frame(progress("sonar", payload))
        if i % 3 == 1:
            script += ws_frame("2")
    return script


def _run_upgrade(script: bytes, cuts: list[int]) -> list[Event]:
    client, h = _client()
    client.connect(0.0)
    client.query("hi", model="sonar", now=0.0)
    h.take(1)
    h.reply(1, http_response(200, open_packet()))
    h.reply(1, http_response(200, "OK"))
    h.take(2)
    points = sorted({c % (len(script) + 1) for c in cuts} | {0, len(script)})
    for start, end in itertools.pairwise(points):
        client.receive_data(2, script[start:end], 0.0)
    return client.events()


texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)


@FAST
@given(parts=st.lists(texts, min_size=1, max_size=6), cuts=st.lists(st.integers(0, 10_000), max_size=30))
def test_any_chunking_gives_the_same_events(parts: list[str], cuts: list[int]) -> None:
    outputs = []
    acc = ""
    for part in parts:
        acc += part
        outputs.append(acc)
    script = _websocket_script(outputs)
    whole = _run_upgrade(script, [])
    final = whole[-1]
    assert isinstance(final, AnswerFinished) and final.text + final.reasoning != ""
    assert _run_upgrade(script, cuts) == whole
    assert _run_upgrade(script, list(range(len(script)))) == whole  # byte by byte


def feed(h: Harness, stream: int, chunks: list[bytes], *, eof: bool = True,
         before: list[Event] | None = None) -> tuple[list[Event], LabsError | None]:
    """Feed ``chunks`` (then EOF) on ``stream``; the events delivered (after ``before``, those already
    taken) and the error, invariants checked."""
    client = h.client
    events: list[Event] = [*(before or []), *client.events()]
    error: LabsError | None = None
    try:
        for chunk in chunks:
            client.receive_data(stream, chunk, 0.0)
            h.pump()
            events += client.events()
        if eof:
            client.receive_data(stream, b"", 0.0)
    except (RemoteProtocolError, ResponseError) as exc:
        error = exc
    h.pump()
    events += client.events()
    event(f"outcome: {type(error).__name__ if error else client.state.name}")
    check(h, events, error)
    return events, error


def check(h: Harness, events: list[Event], error: LabsError | None) -> None:
    client = h.client
    text = ""
    for e in events:
        if isinstance(e, TextDelta):
            text += e.text
        elif isinstance(e, AnswerRevised):
            text = e.text
        elif isinstance(e, AnswerFinished):
            assert e.text == text
            text = ""  # no query streams now: partial_text is empty again
    assert client.partial_text == text, "the events did not deliver partial_text"
    opened = {o.stream_id for o in h.opened}
    if error is not None:
        assert str(error)
        assert client.state is ClientState.ERROR
        assert set(h.closed) == opened, "a stream left open after the error"
        assert error.partial_text == text
        for stream in opened:
            try:
                client.receive_data(stream, b"x", 0.0)
            except LocalProtocolError:
                pass
            else:
                raise AssertionError("bytes accepted after the error")
    else:
        assert client.state is not ClientState.ERROR
    if any(isinstance(e, Closed) for e in events):
        assert client.state is ClientState.CLOSED and set(h.closed) == opened


def _decoded(outputs: list[str]) -> str:
    """The answer text so far after ``outputs``: the output, unless it is whitespace or the start of
    ``<think>`` only, which the decoder holds until it knows which it is."""
    decoder = AnswerDecoder("sonar")
    for output in outputs:
        decoder.feed({"output": output, "final": False})
    return decoder.text


def _upgraded(outputs: list[str]) -> tuple[Harness, list[Event]]:
    """A session upgraded to the WebSocket that received progress frames for ``outputs``."""
    client, h = _client()
    client.connect(0.0)
    client.query("hi", model="sonar", now=0.0)
    h.take(1)
    h.reply(1, http_response(200, open_packet()))
    h.reply(1, http_response(200, "OK"))
    script = switching_protocols(KEY) + ws_frame("3probe") + ws_frame('40{"sid":"S"}')
    script += b"".join(ws_frame(progress("sonar", {"output": o, "final": False})) for o in outputs)
    h.reply(2, script)
    return h, client.events()


@FAST
@given(outputs=st.lists(texts, max_size=3).map(lambda ps: list(itertools.accumulate(ps))),
       junk=st.binary(max_size=300), cuts=st.lists(st.integers(0, 400), max_size=5), eof=st.booleans())
def test_any_bytes_after_the_upgrade_give_events_or_remote_protocol_error(
    outputs: list[str], junk: bytes, cuts: list[int], eof: bool
) -> None:
    h, before = _upgraded(outputs)
    assert h.client.partial_text == _decoded(outputs)
    points = sorted({c % (len(junk) + 1) for c in cuts} | {0, len(junk)})
    events, error = feed(h, 2, [junk[a:b] for a, b in itertools.pairwise(points)], eof=eof, before=before)
    if eof and error is None:  # the server closed the WebSocket: fine only after a clean close
        assert h.client.state is ClientState.CLOSED
    # What came before the junk stays delivered, whatever the junk is.
    text = "".join(e.text for e in before if isinstance(e, TextDelta))
    assert text == _decoded(outputs)
    if error is not None and not any(isinstance(e, AnswerRevised) for e in events):
        assert error.partial_text.startswith(text)


PACKETS = ["2", "3", "6", "1", "41", "44", '44{"message":"x"}', "4", '42["sonar_query_progress",',
           '42["sonar_query_progress",{"output":"so far, and more","final":', '42["query_failed",']


@FAST
@given(body=st.one_of(st.text(max_size=200),
                      st.tuples(st.sampled_from(PACKETS), st.text(max_size=40)).map("".join)))
def test_any_websocket_text_gives_events_or_remote_protocol_error(body: str) -> None:
    client, h = _client("websocket")
    client.connect(0.0)
    client.query("hi", model="sonar", now=0.0)
    h.take(1)
    h.reply(1, switching_protocols(KEY) + ws_frame(open_packet()) + ws_frame('40{"sid":"S"}'))
    h.reply(1, ws_frame(progress("sonar", {"output": "so far", "final": False})))
    assert client.state is ClientState.QUERYING  # the handshake is not under test: it must pass
    events, error = feed(h, 1, [ws_frame(body)], eof=False)
    if error is None:
        assert client.state in (ClientState.QUERYING, ClientState.READY, ClientState.CLOSED)
    else:
        assert error.partial_text.startswith("so far") or any(isinstance(e, AnswerRevised) for e in events)


@FAST
@given(response=st.binary(max_size=300), prefix=st.sampled_from([b"", b"HTTP/1.1 200 OK\r\n"]))
def test_any_bytes_as_the_handshake_response(response: bytes, prefix: bytes) -> None:
    client, h = _client()
    client.connect(0.0)
    h.take(1)
    _, error = feed(h, 1, [prefix + response])
    if error is None:  # a response that ended before EOF: an open packet, or an idle connection
        assert client.state is ClientState.CONNECTING


@FAST
@given(body=st.one_of(st.text(max_size=200), st.lists(st.sampled_from(
    ["2", "6", "40", '40{"sid":"S"}', "41", "1", "44", '42["x",{}]', "4hi", "b QUJD", "3"]), max_size=6)
    .map("\x1e".join)))
def test_any_polling_body(body: str) -> None:
    client, h = _client("polling")
    client.connect(0.0)
    h.take(1)
    h.reply(1, http_response(200, open_packet()))
    h.take(1)
    h.take(2)
    h.reply(2, http_response(200, "ok"))
    assert client.state is ClientState.CONNECTING
    feed(h, 1, [http_response(200, body)], eof=False)
