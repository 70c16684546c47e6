"""Size limits in the sans-IO client, byte for byte against the scripted peer.

Two limits, one in each direction:

* what we take from the server is bounded by ``ClientConfig.max_message_size`` (ours, 64 MiB by
  default); the server's ``maxPayload`` never lowers or raises it;
* what we send is bounded by the server's ``maxPayload`` (its open packet): a larger query is
  refused with ``LocalProtocolError`` before it is sent, and polling batches are split by it.
"""

from __future__ import annotations

import json
import random
import re
import tracemalloc

import pytest
from peer import ClientFrames, http_response, open_packet, progress, switching_protocols, ws_frame
from test_client import KEY, POLL, POLL_SID, QUERY, WS, WS_SID, get, make, post, upgrade_request

from plabs_proto.config import DEFAULT_MAX_MESSAGE_SIZE, ClientConfig
from plabs_proto.errors import HandshakeError, LocalProtocolError, RemoteProtocolError
from plabs_proto.events import AnswerFinished, Closed, Connected, TextDelta
from plabs_proto.wire.client import ClientState, LabsClient

TRANSPORTS = ["upgrade", "websocket", "polling"]
AUTH = b'40{"jwt":"anonymous-ask-user"}'
MAIN = {"upgrade": WS, "websocket": 1, "polling": 1}  # where the server's packets come


class Session:
    """A connected session on one transport, with the server's side reduced to Engine.IO packets."""

    def __init__(self, transport: str, *, max_payload: int = 1_000_000, **config: object) -> None:
        self.transport = transport
        self.h = h = make(transport, **config)
        self.frames = ClientFrames()
        c = h.client
        c.connect(0.0)
        if transport == "websocket":
            assert h.take(1) == upgrade_request("/socket.io/?EIO=4&transport=websocket")
            h.reply(1, switching_protocols(KEY) + ws_frame(open_packet(upgrades=(), max_payload=max_payload)))
            assert self.frames.feed(h.take(1)) == [AUTH.decode()]
            h.reply(1, ws_frame('40{"sid":"S1"}'))
        elif transport == "upgrade":
            assert h.take(1) == get(POLL)
            h.reply(1, http_response(200, open_packet(max_payload=max_payload)))
            assert h.take(1) == post(POLL_SID, AUTH)
            assert h.take(WS) == upgrade_request(WS_SID)
            h.reply(WS, switching_protocols(KEY))
            h.reply(1, http_response(200, "ok"))
            assert self.frames.feed(h.take(WS)) == ["2probe", "5"]
            h.reply(WS, ws_frame("3probe") + ws_frame('40{"sid":"S1"}'))
        else:
            assert h.take(1) == get(POLL)
            h.reply(1, http_response(200, open_packet(max_payload=max_payload)))
            assert h.take(2) == post(POLL_SID, AUTH)
            assert h.take(1) == get(POLL_SID)
            h.reply(2, http_response(200, "ok"))
            h.reply(1, http_response(200, '40{"sid":"S1"}'))
            assert h.take(1) == get(POLL_SID)
        assert h.events() == [Connected(engine_sid="SID1", socket_sid="S1", transport=transport)]
        assert c.state is ClientState.READY

    def deliver(self, *packets: str) -> None:
        """The server sends these Engine.IO packets (one WebSocket frame each, or one poll body)."""
        if self.transport == "polling":
            self.h.reply(1, http_response(200, "\x1e".join(packets)))
            assert self.h.take(1) == get(POLL_SID)  # the next long-poll
        else:
            self.h.reply(MAIN[self.transport], b"".join(ws_frame(p) for p in packets))

    def sent(self) -> list[bytes]:
        """What the client sent since the last call: WebSocket messages, or POST bodies (each answered 'ok')."""
        h = self.h
        if self.transport != "polling":
            return [m if isinstance(m, bytes) else m.encode() for m in self.frames.feed(h.take(MAIN[self.transport]))]
        bodies = []
        while request := h.take(2):
            head, _, body = request.partition(b"\r\n\r\n")
            assert head.startswith(b"POST " + POLL_SID.encode())
            bodies.append(body)
            h.reply(2, http_response(200, "ok"))
        return bodies


def query_frame(prompt: str, model: str = "sonar") -> bytes:
    """The bytes of the request frame ``query(prompt)`` sends."""
    request = {"version": "2.18", "source": "default", "model": model,
               "messages": [{"role": "user", "content": prompt}]}
    return ("42" + json.dumps(["perplexity_labs", request], separators=(",", ":"), ensure_ascii=False)).encode()


def test_query_frame_matches_the_transcripts() -> None:
    assert query_frame("hi") == QUERY.encode()


# -- what we receive: our own limit ----------------------------------------------------------------------


def test_default_receive_limit_is_64_mib() -> None:
    assert DEFAULT_MAX_MESSAGE_SIZE == ClientConfig().max_message_size == 64 * 1024 * 1024


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_small_max_payload_does_not_limit_what_we_receive(transport: str) -> None:
    # engine.io's maxPayload bounds what the *client* sends; a 1 MiB answer must still come in.
    s = Session(transport, max_payload=1000)
    s.h.client.query("hi", model="sonar", now=0.0)
    assert s.sent() == [QUERY.encode()]
    text = ("x" * 1023 + "\n") * 1024
    s.deliver(progress("sonar", {"output": text, "final": False}))
    s.deliver(progress("sonar", {"output": text, "final": True, "citations": []}))
    assert s.h.events() == [TextDelta(text=text), AnswerFinished(model="sonar", text=text, reasoning="", citations=())]


@pytest.mark.parametrize("transport", ["upgrade", "websocket"])
def test_a_huge_max_payload_does_not_raise_what_we_receive(transport: str) -> None:
    # An open packet announcing maxPayload 10**12 must not let a frame announcing 1 GiB be buffered:
    # it is refused from its header against our own limit.
    s = Session(transport, max_payload=10**12)
    s.h.client.query("hi", model="sonar", now=0.0)
    header = b"\x81\x7f" + (2**30).to_bytes(8, "big")
    expected = f"at most {DEFAULT_MAX_MESSAGE_SIZE} bytes (max_message_size), got one of at least {2**30} bytes"
    with pytest.raises(RemoteProtocolError, match=re.escape(expected)):
        s.h.reply(MAIN[transport], header + b"4" * 1000)
    assert s.h.client.state is ClientState.ERROR


def test_a_huge_max_payload_does_not_raise_the_polling_body_limit() -> None:
    s = Session("polling", max_payload=10**12, max_message_size=1000)
    s.h.client.query("hi", model="sonar", now=0.0)
    s.h.reply(1, b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n" + b"4" * 60_000)
    with pytest.raises(RemoteProtocolError, match=f"at most {1000 + 65536} bytes"):
        s.h.reply(1, b"4" * 10_000)


def test_memory_held_for_an_endless_polling_body_is_bounded_by_the_limit() -> None:
    # A hostile server announces a huge maxPayload and a 1 GB body, and keeps sending: the
    # client holds no more than about its own limit (1 MiB here) before refusing the body.
    limit = 1 << 20
    s = Session("polling", max_payload=10**12, max_message_size=limit)
    s.h.client.query("hi", model="sonar", now=0.0)
    chunk = b"4" * 65536
    fed = 0
    tracemalloc.start()
    try:
        s.h.reply(1, b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n")
        with pytest.raises(RemoteProtocolError, match=f"at most {limit + 65536} bytes"):
            while fed < 100 * limit:
                s.h.reply(1, chunk)
                fed += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert fed <= limit + 65536
    assert peak < 3 * limit


def test_polling_body_holds_one_maximal_packet_and_small_ones() -> None:
    # The body bound is the receive limit plus 64 KiB: one packet of the limit, and the small
    # packets a server batches with it; one byte more is refused.
    s = Session("polling", max_message_size=1000)
    s.h.client.query("hi", model="sonar", now=0.0)
    assert s.sent() == [QUERY.encode()]
    packet = progress("sonar", {"output": "", "final": False})
    packet = progress("sonar", {"output": "y" * (1000 - len(packet)), "final": False})
    assert len(packet) == 1000
    noops = ["6"] * (65536 // 2)  # each "6" and its separator: the body is exactly 1000 + 65536 bytes
    body = "\x1e".join([*noops, packet])
    assert len(body) == 1000 + 65536
    s.deliver(*noops, packet)
    assert s.h.events() == [TextDelta(text="y" * (1000 - len(progress("sonar", {"output": "", "final": False}))))]
    with pytest.raises(RemoteProtocolError, match=f"an HTTP response body of at most {1000 + 65536} bytes"):
        s.h.reply(1, http_response(200, body + "\x1e6" + "\x1e6"))


def test_oversized_packet_in_a_polling_body_names_the_receive_limit() -> None:
    s = Session("polling", max_payload=10**9, max_message_size=100)
    with pytest.raises(RemoteProtocolError, match=r"at most 100 bytes \(max_message_size\) in a long-polling GET"):
        s.deliver("4" + "x" * 150, "2")


@pytest.mark.parametrize("size", [0, -1, True, 1.5, None])
def test_receive_limit_must_be_a_positive_int(size: object) -> None:
    with pytest.raises(LocalProtocolError, match="max_message_size"):
        LabsClient(ClientConfig(server="http://labs.test", max_message_size=size), rng=random.Random(0))  # type: ignore[arg-type]


# -- what we send: the server's maxPayload ----------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_query_below_max_payload_is_sent_one_of_max_payload_is_refused(transport: str) -> None:
    # Below, not up to: python-engineio on aiohttp closes a WebSocket message of exactly maxPayload.
    limit = len(query_frame("x" * 501))
    s = Session(transport, max_payload=limit)
    c = s.h.client
    with pytest.raises(LocalProtocolError) as info:
        c.query("x" * 501, model="sonar", now=0.0)
    assert str(info.value) == (
        f"cannot send the query: its request is {limit} bytes, but the server's maxPayload (in its Engine.IO "
        f"open packet) is {limit} bytes and a request must be smaller; shorten the prompt"
    )
    # Nothing was sent and the session goes on: the query that fits goes out.
    assert s.sent() == []
    assert c.state is ClientState.READY
    c.query("x" * 500, model="sonar", now=0.0)
    assert s.sent() == [query_frame("x" * 500)]
    s.deliver(progress("sonar", {"output": "ok", "final": True, "citations": []}))
    assert s.h.events() == [TextDelta(text="ok"), AnswerFinished(model="sonar", text="ok", reasoning="", citations=())]


def test_request_size_is_counted_in_utf8_bytes() -> None:
    size = len(query_frame("é" * 100))  # 200 bytes of prompt
    s = Session("websocket", max_payload=size - 1)
    with pytest.raises(LocalProtocolError, match=f"its request is {size} bytes, .* is {size - 1} bytes"):
        s.h.client.query("é" * 100, model="sonar", now=0.0)
    assert s.sent() == []


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_query_made_before_the_open_packet_is_checked_when_it_arrives(transport: str) -> None:
    # ask() queries at once, before the server's limit is known: the check runs when the open
    # packet brings it, is raised from that receive_data() call, and ends the session (the caller
    # who waits for the answer sees it).
    h = make(transport)
    c = h.client
    c.connect(0.0)
    c.query("x" * 2000, model="sonar", now=0.0)
    h.take(1)
    size = len(query_frame("x" * 2000))
    opening = open_packet(upgrades=() if transport == "websocket" else ("websocket",), max_payload=1000)
    reply = (switching_protocols(KEY) + ws_frame(opening) if transport == "websocket"
             else http_response(200, opening))
    with pytest.raises(LocalProtocolError) as info:
        h.reply(1, reply)
    assert str(info.value) == (
        f"cannot send the query: its request is {size} bytes, but the server's maxPayload (in its Engine.IO open "
        "packet) is 1000 bytes and a request must be smaller; shorten the prompt (the query was made before the "
        "server's limit was known: the session is closed)"
    )
    assert c.state is ClientState.ERROR
    h.pump()
    assert sorted(h.closed) == ([1] if transport == "websocket" else [1, 2])
    assert h.take(1) == b""  # no CONNECT went out
    if transport != "websocket":
        assert h.take(2) == b""
    with pytest.raises(LocalProtocolError, match="already failed"):
        c.receive_data(1, b"late", 0.0)


def test_query_made_before_the_open_packet_that_fits_is_sent() -> None:
    h = make("websocket")
    c = h.client
    c.connect(0.0)
    c.query("hi", model="sonar", now=0.0)
    h.take(1)
    h.reply(1, switching_protocols(KEY) + ws_frame(open_packet(upgrades=(), max_payload=len(QUERY) + 1)))
    frames = ClientFrames()
    assert frames.feed(h.take(1)) == [AUTH.decode()]
    h.reply(1, ws_frame('40{"sid":"S1"}'))
    assert frames.feed(h.take(1)) == [QUERY]


def test_query_after_the_open_packet_but_before_the_ack_is_refused_at_once() -> None:
    h = make()
    c = h.client
    c.connect(0.0)
    h.take(1)
    h.reply(1, http_response(200, open_packet(max_payload=100)))
    with pytest.raises(LocalProtocolError, match=r"maxPayload .* is 100 bytes"):
        c.query("hi" * 100, model="sonar", now=0.0)
    assert c.state is ClientState.CONNECTING  # the session goes on connecting


@pytest.mark.parametrize(("extra", "bodies"), [(1, [QUERY + "\x1e3"]), (0, [QUERY, "3"])])
def test_polling_batches_are_split_by_max_payload(extra: int, bodies: list[str]) -> None:
    # A body is its packets joined by one separator byte: the query and a pong share one
    # POST when that is one byte below maxPayload, and take two when it is maxPayload bytes.
    h = make("polling")
    c = h.client
    c.connect(0.0)
    c.query("hi", model="sonar", now=0.0)
    h.take(1)
    h.reply(1, http_response(200, open_packet(max_payload=len(QUERY) + 2 + extra)))
    assert h.take(2) == post(POLL_SID, AUTH)
    assert h.take(1) == get(POLL_SID)
    # The ack (which releases the query) and a ping come while the CONNECT POST is in flight.
    h.reply(1, http_response(200, '40{"sid":"S1"}\x1e2'))
    h.reply(2, http_response(200, "ok"))
    for body in bodies:
        assert h.take(2) == post(POLL_SID, body.encode())
        h.reply(2, http_response(200, "ok"))
    assert h.take(2) == b""


# -- the server says our message was too big -------------------------------------------------------------


@pytest.mark.parametrize("transport", ["upgrade", "websocket"])
def test_close_1009_says_message_too_big(transport: str) -> None:
    s = Session(transport, max_payload=5000)
    s.h.client.query("hi", model="sonar", now=0.0)
    with pytest.raises(RemoteProtocolError) as info:
        s.h.reply(MAIN[transport], ws_frame(b"\x03\xf1", opcode=0x8))
    assert str(info.value) == (
        "expected the rest of the answer, got a WebSocket close (1009 '') after 0 characters of it; "
        "1009 means message too big: the server refused a message we sent (its maxPayload is 5000 bytes)"
    )


def test_close_1009_between_queries_says_message_too_big() -> None:
    s = Session("websocket", max_payload=5000)
    s.h.reply(1, ws_frame(b"\x03\xf1", opcode=0x8))
    assert s.h.events() == [Closed(reason="WebSocket closed by the server (1009); 1009 means message too big: "
                                          "the server refused a message we sent (its maxPayload is 5000 bytes)")]


def test_close_1009_before_the_open_packet_names_no_max_payload() -> None:
    h = make("websocket")
    h.client.connect(0.0)
    h.take(1)
    h.reply(1, switching_protocols(KEY) + ws_frame(b"\x03\xf1", opcode=0x8))
    assert h.events() == [Closed(reason="WebSocket closed by the server (1009); 1009 means message too big: "
                                        "the server refused a message we sent")]


def test_polling_post_413_says_too_large() -> None:
    s = Session("polling", max_payload=5000)
    s.h.client.query("hi", model="sonar", now=0.0)
    assert s.h.take(2) == post(POLL_SID, QUERY.encode())
    with pytest.raises(HandshakeError) as info:
        s.h.reply(2, http_response(413, "", reason="Payload Too Large"))
    assert str(info.value) == (
        "the server refused a polling POST (413: the body was larger than the server accepts, its maxPayload "
        "being 5000 bytes): expected HTTP 200, got HTTP 413 Payload Too Large: ''"
    )

