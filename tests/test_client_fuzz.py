"""Property-based tests of the whole client: chunking never matters, bad bytes only raise RemoteProtocolError."""

from __future__ import annotations

import itertools
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from peer import Harness, http_response, open_packet, progress, switching_protocols, ws_frame

from plabs_proto.client import ClientConfig, LabsClient
from plabs_proto.errors import RemoteProtocolError
from plabs_proto.events import AnswerFinished, Event

KEY = "a6qUVePnBoLCCUysYp9vvg=="
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


@FAST
@given(junk=st.binary(max_size=300), cuts=st.lists(st.integers(0, 400), max_size=5))
def test_any_bytes_after_the_upgrade_give_events_or_remote_protocol_error(junk: bytes, cuts: list[int]) -> None:
    client, h = _client()
    client.connect(0.0)
    client.query("hi", model="sonar", now=0.0)
    h.take(1)
    h.reply(1, http_response(200, open_packet()))
    h.reply(1, http_response(200, "OK"))
    h.reply(2, switching_protocols(KEY) + ws_frame("3probe") + ws_frame('40{"sid":"S"}'))
    points = sorted({c % (len(junk) + 1) for c in cuts} | {0, len(junk)})
    try:
        for start, end in itertools.pairwise(points):
            client.receive_data(2, junk[start:end], 0.0)
        client.receive_data(2, b"", 0.0)
    except RemoteProtocolError:
        pass
    client.events()


@FAST
@given(body=st.text(max_size=200))
def test_any_websocket_text_gives_events_or_remote_protocol_error(body: str) -> None:
    client, h = _client("websocket")
    client.connect(0.0)
    client.query("hi", model="sonar", now=0.0)
    h.take(1)
    try:
        h.reply(1, switching_protocols(KEY) + ws_frame(open_packet()) + ws_frame('40{"sid":"S"}'))
        h.reply(1, ws_frame(body))
    except RemoteProtocolError:
        pass


@FAST
@given(response=st.binary(max_size=300))
def test_any_bytes_as_the_handshake_response(response: bytes) -> None:
    client, h = _client()
    client.connect(0.0)
    h.take(1)
    try:
        client.receive_data(1, response, 0.0)
        client.receive_data(1, b"", 0.0)
    except RemoteProtocolError:
        pass


@FAST
@given(body=st.text(max_size=200))
def test_any_polling_body(body: str) -> None:
    client, h = _client("polling")
    client.connect(0.0)
    h.take(1)
    h.reply(1, http_response(200, open_packet()))
    h.take(1)
    try:
        h.reply(1, http_response(200, body))
    except RemoteProtocolError:
        pass
