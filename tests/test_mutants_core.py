"""Cases mutmut over the message level showed no test pinned down (issue 19, benchmarks/mutation-core.md).

The Engine.IO session, the Labs session, the byte-level client, the configuration and the state
table: each test feeds what a peer would send and checks what a user or the carrier would see.
"""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path
from typing import Any

import pytest
from peer import ClientFrames, Harness, http_response, switching_protocols, ws_frame
from peer import open_packet as open_packet_bytes
from test_client import KEY, make
from test_client import POLL_SID as CLIENT_POLL_SID
from test_client import post as post_bytes
from test_engineio_session import OPEN, ORIGIN, POST_HEADERS, engine, ok
from test_perplexity_client import WARMUP_RESPONSE, sent
from test_perplexity_client import ready as perplexity_ready
from test_session import BASE, T, connected, open_packet, session

from plabs_proto.config import ClientConfig, SessionConfig, split_server
from plabs_proto.errors import (
    AnswerFailedError,
    AnswerRateLimitedError,
    HandshakeError,
    LabsError,
    LabsTimeout,
    LocalProtocolError,
    NetworkError,
    RateLimitedError,
    RemoteProtocolError,
    ResponseError,
)
from plabs_proto.events import (
    AnswerFinished,
    AnswerRevised,
    Citations,
    Connected,
    EventQueue,
    HTTPRequest,
    QueryFailed,
    ReasoningDelta,
    TextDelta,
    TransportSwitched,
    WebSocketConnect,
    WebSocketSend,
)
from plabs_proto.events import Closed as ClosedEvent
from plabs_proto.labs import engineio, socketio
from plabs_proto.labs.answer import AnswerDecoder, normalize_messages
from plabs_proto.labs.engineio_session import BODY_SLACK, Closed, EngineIOSession, Message, Opened
from plabs_proto.labs.session import LabsSession
from plabs_proto.messages import HTTPResponse
from plabs_proto.state import SessionState
from plabs_proto.wire.client import Client, LabsClient, PerplexityClient
from plabs_proto.wire.websocket import Utf8Text

POLL_SID = f"{BASE}&transport=polling{T}&sid=E1"

# -- limits at their edges: the Engine.IO session ---------------------------------------------------------


def polling_engine() -> EngineIOSession:
    """A polling Engine.IO session, open (maxPayload 1000), its first POST ("40", id 2) and GET (id 3) out."""
    e = engine("polling")
    e.open(0.0)
    e.send("0")
    e.transmit()
    e.receive_http_response(1, ok(OPEN), 0.1)
    assert list(e.events()) == [Opened(sid="E1", max_payload=1000)]
    post, _poll = e.transmit()
    assert isinstance(post, HTTPRequest) and post.request_id == 2
    return e


def post(request_id: int, body: bytes) -> HTTPRequest:
    return HTTPRequest(request_id=request_id, method="POST", url=POLL_SID, headers=POST_HEADERS, body=body, lane=1)


@pytest.mark.parametrize("size", [999, 1000])
def test_a_post_body_stays_below_max_payload(size: int) -> None:
    """Packets that wait are batched into one POST while its body stays below the server's maxPayload
    (1000 here): a body of 999 bytes goes as one POST, one of 1000 as two."""
    e = polling_engine()
    first, second = "a" * 400, "b" * (size - 403)  # "4" + first, "\x1e", "4" + second
    e.send(first)
    e.send(second)
    assert e.transmit() == []  # one POST at a time
    e.receive_http_response(2, ok("ok"), 0.2)
    if size == 999:
        assert e.transmit() == [post(4, f"4{first}\x1e4{second}".encode())]
        return
    assert e.transmit() == [post(4, f"4{first}".encode())]
    e.receive_http_response(4, ok("ok"), 0.3)
    assert e.transmit() == [post(5, f"4{second}".encode())]


def test_one_packet_larger_than_max_payload_still_goes_alone() -> None:
    """The server refuses it or not; the session does not hold it back (the layer above checks the query)."""
    e = polling_engine()
    e.send("a" * 1200)
    e.send("b")
    e.receive_http_response(2, ok("ok"), 0.2)
    assert e.transmit() == [post(4, b"4" + b"a" * 1200)]
    e.receive_http_response(4, ok("OK\n"), 0.3)  # any case, any blank around it
    assert e.transmit() == [post(5, b"4b")]


def test_the_heartbeat_deadline_fires_at_its_time_not_before() -> None:
    e = polling_engine()  # opened at 0.1: pingInterval 25 s + pingTimeout 20 s
    assert e.get_timer() == 45.1
    e.handle_timer(45.09)
    with pytest.raises(LabsTimeout) as info:
        e.handle_timer(45.1)
    assert str(info.value) == "expected a ping from the server at least every 45 s (pingInterval + pingTimeout), got none"
    assert info.value.deadline == "heartbeat"


def polling_body(size: int) -> bytes:
    """A long-polling body of ``size`` bytes (even, at least 4) of noops: no packet over 1 byte of data."""
    return "\x1e".join(["6"] * (size // 2 - 1) + ["6x"]).encode()


def test_a_polling_body_at_the_limit_and_64_kib_is_read_one_byte_more_refused() -> None:
    """The body bound of a carrier of our own: one packet of max_message_size and 64 KiB of small ones."""
    s, _ = connected("polling", max_message_size=100)
    s.receive_http_response(4, 200, [], polling_body(100 + BODY_SLACK), 2.0)
    assert s.state is SessionState.READY
    (get,) = s.transmit()
    assert isinstance(get, HTTPRequest)
    with pytest.raises(RemoteProtocolError) as info:
        s.receive_http_response(get.request_id, 200, [], polling_body(100 + BODY_SLACK) + b"x", 3.0)
    assert str(info.value) == (
        f"expected an HTTP body of at most {100 + 65536} bytes (max_message_size and 64 KiB), got one of {100 + 65537}"
    )
    assert s.state is SessionState.ERROR


# -- limits at their edges: the Labs session --------------------------------------------------------------


def on_websocket_with_max_payload(max_payload: int) -> tuple[LabsSession, int]:
    s = session("websocket")
    s.connect(0.0)
    (ws,) = s.transmit()
    assert isinstance(ws, WebSocketConnect)
    s.receive_websocket_open(ws.ws_id, 0.1)
    s.receive_websocket_message(ws.ws_id, open_packet(max_payload=max_payload), 0.2)
    s.receive_websocket_message(ws.ws_id, '40{"sid":"S1"}', 0.3)
    s.transmit()
    return s, ws.ws_id


def request_size(prompt_length: int) -> int:
    """The size of the request of a query of ``prompt_length`` ASCII characters, as the refusal names it."""
    s, _ = on_websocket_with_max_payload(1)
    with pytest.raises(LocalProtocolError) as info:
        s.query("x" * prompt_length, model="sonar", now=1.0)
    return int(str(info.value).split("its request is ")[1].split(" bytes")[0])


def test_a_query_one_byte_under_max_payload_is_sent_and_at_max_payload_refused() -> None:
    """Engine.IO takes a message of exactly maxPayload, but aiohttp's check is >=: what we send stays below."""
    base = request_size(100) - 100
    assert request_size(101) == base + 101  # one byte a character
    limit = 500
    s, _ = on_websocket_with_max_payload(limit)
    with pytest.raises(LocalProtocolError) as info:
        s.query("x" * (limit - base), model="sonar", now=1.0)
    assert str(info.value) == (
        f"cannot send the query: its request is {limit} bytes, but the server's maxPayload (in its Engine.IO open "
        f"packet) is {limit} bytes and a request must be smaller; shorten the prompt"
    )
    assert s.state is SessionState.READY and s.transmit() == []
    s.query("x" * (limit - base - 1), model="sonar", now=1.0)
    (send,) = s.transmit()
    assert isinstance(send, WebSocketSend) and len(str(send.data).encode()) == limit - 1
    assert s.state is SessionState.QUERYING


@pytest.mark.parametrize("under", [1, 0])
def test_a_query_made_before_the_open_packet_is_checked_against_its_max_payload(under: int) -> None:
    base = request_size(100) - 100
    limit = 500
    s = session("websocket")
    s.connect(0.0)
    s.query("x" * (limit - base - under), model="sonar", now=0.0)
    (ws,) = s.transmit()
    assert isinstance(ws, WebSocketConnect)
    s.receive_websocket_open(ws.ws_id, 0.1)
    if under:
        s.receive_websocket_message(ws.ws_id, open_packet(max_payload=limit), 0.2)
        s.receive_websocket_message(ws.ws_id, '40{"sid":"S1"}', 0.3)
        assert s.state is SessionState.QUERYING
        return
    with pytest.raises(LocalProtocolError) as info:
        s.receive_websocket_message(ws.ws_id, open_packet(max_payload=limit), 0.2)
    assert str(info.value) == (
        f"cannot send the query: its request is {limit} bytes, but the server's maxPayload (in its Engine.IO open "
        f"packet) is {limit} bytes and a request must be smaller; shorten the prompt (the query was made before "
        "the server's limit was known: the session is closed)"
    )
    assert s.state is SessionState.ERROR


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("connect", "expected the Labs session to be connected within 5 s, it was not"),
        ("first_text", "expected the first answer text within 5 s of the query, got none"),
        ("query", "expected the whole answer within 5 s of the query, it was not complete"),
    ],
)
def test_each_deadline_fires_at_its_time_not_before(name: str, message: str) -> None:
    config: dict[str, Any] = {"connect_timeout": None, "first_text_timeout": None, "query_timeout": None}
    config[f"{name}_timeout"] = 5.0
    if name == "connect":
        s = session("websocket", **config)
        s.connect(1.0)
    else:
        s, _ = connected("websocket", **config)
        s.query("hi", model="sonar", now=1.0)
    assert s.get_timer() == 6.0
    s.handle_timer(5.999)
    assert s.state is not SessionState.ERROR
    with pytest.raises(LabsTimeout) as info:
        s.handle_timer(6.0)
    assert str(info.value) == message
    assert info.value.deadline == name
    assert s.state is SessionState.ERROR


# -- the Engine.IO session: survivors of mutmut -----------------------------------------------------------


def websocket_engine(*, opened: bool = True) -> tuple[EngineIOSession, int]:
    """A websocket-transport Engine.IO session, its WebSocket open; ``opened``: the open packet came."""
    e = engine("websocket")
    e.open(0.0)
    (connect,) = e.transmit()
    assert isinstance(connect, WebSocketConnect)
    e.receive_websocket_open(connect.ws_id, 0.1)
    if opened:
        e.receive_websocket_messages(connect.ws_id, [OPEN], 0.2)
        assert list(e.events()) == [Opened(sid="E1", max_payload=1000)]
    return e, connect.ws_id


def test_a_1009_before_the_open_packet_names_no_max_payload() -> None:
    e, ws = websocket_engine(opened=False)
    e.receive_websocket_close(ws, 1009, 0.3)
    assert list(e.events()) == [
        Closed(
            reason="WebSocket closed by the server (1009); 1009 means message too big: the server refused a message "
            "we sent",
            cut="got a WebSocket close (1009 '')",
            note="; 1009 means message too big: the server refused a message we sent",
        )
    ]


def test_a_websocket_close_without_a_reason_shows_the_code_alone() -> None:
    e, ws = websocket_engine()
    e.receive_websocket_close(ws, 1001, 0.3)
    assert list(e.events()) == [
        Closed(reason="WebSocket closed by the server (1001)", cut="got a WebSocket close (1001 '')")
    ]
    assert e.transmit() == []  # closed by the peer: no close of ours


def test_a_failed_websocket_is_reported_once_and_its_session_never_falls_back_to_http() -> None:
    """The WebSocket fails below HTTP: one NetworkError (no detail unless given); later news of it is
    ignored, and a websocket-transport session has no goodbye POST to make."""
    e, ws = websocket_engine()
    with pytest.raises(NetworkError) as info:
        e.receive_transport_error(ws, "connection reset", 0.3)
    assert str(info.value) == (
        "expected the WebSocket to labs.test port 80 to go through, but it failed below HTTP: connection reset"
    )
    e.receive_transport_error(ws, "connection reset again", 0.4)  # the same WebSocket: already reported
    e.close("1")
    assert e.transmit() == []


def test_news_of_a_refused_websocket_after_the_refusal_is_ignored() -> None:
    e = engine("websocket")
    e.open(0.0)
    (connect,) = e.transmit()
    assert isinstance(connect, WebSocketConnect)
    with pytest.raises(HandshakeError):
        e.receive_websocket_refused(connect.ws_id, HTTPResponse(403, "Forbidden", (), b""), 0.1)
    e.receive_transport_error(connect.ws_id, "connection reset", 0.2)
    e.receive_websocket_close(connect.ws_id, None, 0.2)
    assert e.next_event() is None


def test_next_event_is_none_when_nothing_came_and_after_what_came_ran_out() -> None:
    e, ws = websocket_engine()
    assert e.next_event() is None
    assert e.next_event() is None
    e.receive_websocket_messages(ws, ["4a"], 0.3)
    assert e.next_event() == Message("4a", 1)
    assert e.next_event() is None
    assert e.next_event() is None


def test_next_event_after_a_close_packet_in_a_polling_body_is_none() -> None:
    """The packets after the close belong to no session: next_event gives the Closed, then None, as events() would."""
    e = polling_engine()
    e.receive_http_response(3, ok("1\x1e4late\x1e2"), 0.2)
    assert e.next_event() == Closed(reason="Engine.IO session closed by the server", cut="got an Engine.IO close packet")
    assert e.next_event() is None
    assert e.next_event() is None
    assert e.transmit() == []  # no pong, no further GET


def test_the_engine_alone_measures_websocket_messages_unless_told_the_carrier_did() -> None:
    e = EngineIOSession(SessionConfig(server="http://labs.test", transport="websocket", max_message_size=10),
                        rng=random.Random(0))
    e.open(0.0)
    (connect,) = e.transmit()
    assert isinstance(connect, WebSocketConnect)
    e.receive_websocket_open(connect.ws_id, 0.1)
    e.receive_websocket_messages(connect.ws_id, ["4" + "x" * 20], 0.2, limited=True)
    assert list(e.events()) == [Message("4" + "x" * 20, 1)]
    e.receive_websocket_messages(connect.ws_id, ["4" + "x" * 10], 0.3)
    with pytest.raises(RemoteProtocolError) as info:
        list(e.events())
    assert str(info.value) == "expected a WebSocket message of at most 10 bytes (max_message_size), got one of 11"


def upgrading() -> tuple[EngineIOSession, WebSocketConnect]:
    """An upgrade session opened by polling, its WebSocket asked for (the instruction given)."""
    e = engine("upgrade")
    e.open(0.0)
    e.transmit()
    e.receive_http_response(1, ok(OPEN), 0.1)
    list(e.events())
    (connect,) = e.transmit()
    assert isinstance(connect, WebSocketConnect)
    return e, connect


def test_a_websocket_id_given_for_an_http_response_is_a_local_error() -> None:
    e, connect = upgrading()
    with pytest.raises(LocalProtocolError) as info:
        e.receive_http_response(connect.ws_id, ok("ok"), 0.2)
    assert str(info.value) == f"expected the id of an HTTPRequest this session made, got {connect.ws_id}"


def test_an_upgrade_with_nothing_to_post_probes_once_the_websocket_opens() -> None:
    e, connect = upgrading()
    e.receive_websocket_open(connect.ws_id, 0.2)
    assert e.transmit() == [
        WebSocketSend(ws_id=connect.ws_id, data="2probe"),
        TransportSwitched(ws_id=connect.ws_id),
        WebSocketSend(ws_id=connect.ws_id, data="5"),
    ]


def test_no_upgrade_offered_posts_what_waited_and_the_pong_of_the_handshake_together() -> None:
    """The handshake body holds a ping: its pong and the CONNECT queued before the open go in one POST."""
    e = engine("upgrade")
    e.open(0.0)
    e.send("0")
    e.transmit()
    no_upgrade = OPEN.replace('"upgrades":["websocket"]', '"upgrades":[]')
    e.receive_http_response(1, ok(no_upgrade + "\x1e2"), 0.1)
    assert list(e.events()) == [Opened(sid="E1", max_payload=1000)]
    assert e.transport == "polling"
    assert e.transmit() == [
        post(2, b"40\x1e3"),
        HTTPRequest(request_id=3, method="GET", url=POLL_SID, headers=ORIGIN, body=b""),
    ]


def test_a_noop_in_a_polling_body_is_skipped_and_what_follows_it_read() -> None:
    e = polling_engine()
    e.receive_http_response(3, ok("6\x1e4a\x1e6\x1e4b"), 0.2)
    assert list(e.events()) == [Message("a"), Message("b")]


def test_an_empty_v3_payload_in_answer_to_the_handshake_is_refused() -> None:
    e = engine("polling")
    e.open(0.0)
    e.transmit()
    e.receive_http_response(1, ok("0:"), 0.1)
    with pytest.raises(RemoteProtocolError) as info:
        list(e.events())
    assert str(info.value) == "expected the Engine.IO open packet first in the handshake GET, got '0:'"


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (413, "the server refused a polling POST (413: the body was larger than the server accepts, its maxPayload "
              "being 1000 bytes): expected HTTP 200, got HTTP 413: 'too big'"),
        (500, "the server refused a polling POST: expected HTTP 200, got HTTP 500: 'too big'"),
    ],
)
def test_a_refused_polling_post_says_which_post_and_the_servers_limit(status: int, message: str) -> None:
    e = polling_engine()
    with pytest.raises(LabsError) as info:
        e.receive_http_response(2, HTTPResponse(status, "", (), b"too big"), 0.2)
    assert str(info.value) == message


@pytest.mark.parametrize("request_id", [0, 4])
def test_a_request_id_the_session_never_made_is_a_local_error(request_id: int) -> None:
    """Ids run from 1 to the last one made (3 here); an answered one is late news, ignored."""
    e = polling_engine()
    e.receive_http_response(1, ok(OPEN), 0.2)  # the handshake, answered already
    with pytest.raises(LocalProtocolError) as info:
        e.receive_http_response(request_id, ok("ok"), 0.2)
    assert str(info.value) == f"expected the id of an HTTPRequest this session made, got {request_id}"


def test_an_ipv6_server_and_a_sid_with_url_characters_make_well_formed_urls() -> None:
    e = EngineIOSession(SessionConfig(server="http://[::1]:8080", transport="upgrade"), rng=random.Random(0))
    e.open(0.0)
    (get,) = e.transmit()
    assert isinstance(get, HTTPRequest) and get.url == f"http://[::1]:8080/socket.io/?EIO=4&transport=polling{T}"
    e.receive_http_response(get.request_id, ok(OPEN.replace('"sid":"E1"', '"sid":"a/b+c&d"')), 0.1)
    list(e.events())
    (connect,) = e.transmit()
    assert connect == WebSocketConnect(
        ws_id=2, url="ws://[::1]:8080/socket.io/?EIO=4&transport=websocket&sid=a%2Fb%2Bc%26d", headers=ORIGIN
    )


def test_send_after_the_end_says_so() -> None:
    e, _ = websocket_engine()
    e.abort()
    with pytest.raises(LocalProtocolError) as info:
        e.send("x")
    assert str(info.value) == "cannot send on an Engine.IO session that has ended"


def test_next_event_after_events_ran_out_is_none() -> None:
    e, ws = websocket_engine()
    e.receive_websocket_messages(ws, ["4a"], 0.3)
    assert list(e.events()) == [Message("4a", 1)]
    assert e.next_event() is None
    assert list(e.events()) == []


@pytest.mark.parametrize(("origin", "referer"), [("https://labs.test/", "https://labs.test/"), ("https://BOX", "https://BOX/")])
def test_the_referer_is_the_origin_with_one_slash(origin: str, referer: str) -> None:
    e = EngineIOSession(SessionConfig(server="http://labs.test", origin=origin), rng=random.Random(0))
    assert e.sid == ""  # until the open packet
    assert e.next_event() is None
    e.open(0.0)
    (get,) = e.transmit()
    assert isinstance(get, HTTPRequest) and get.headers == (("Origin", origin), ("Referer", referer))


# -- the Labs session: survivors of mutmut ----------------------------------------------------------------


def frame(payload: dict[str, Any]) -> str:
    return "42" + json.dumps(["sonar_query_progress", payload], separators=(",", ":"))


def test_a_status_of_the_wrong_type_is_a_local_error() -> None:
    s, _ = connected("polling")
    with pytest.raises(LocalProtocolError) as info:
        s.receive_http_response(4, "200", [], b"6", 2.0)  # type: ignore[arg-type]
    assert str(info.value) == "expected an int status, a bytes body and a str reason, got str, bytes and str"
    assert s.state is SessionState.READY


def test_the_timer_is_the_heartbeat_when_it_comes_before_every_deadline() -> None:
    s, _ = connected("websocket", first_text_timeout=100.0)  # opened at 0.5: the heartbeat at 45.5
    s.query("hi", model="sonar", now=1.0)
    assert s.get_timer() == 45.5


def test_text_after_the_first_keeps_the_query_deadline() -> None:
    s, ws = connected("websocket", first_text_timeout=None, query_timeout=30.0)
    assert ws is not None
    s.query("hi", model="sonar", now=1.0)
    s.receive_websocket_messages(ws, [frame({"output": "He"}), frame({"output": "Hello"})], 2.0)
    assert [e.text for e in s.events() if isinstance(e, TextDelta)] == ["He", "llo"]
    assert s.get_timer() == 31.0 and s.state is SessionState.QUERYING


def test_citations_in_the_middle_of_an_answer_do_not_end_it() -> None:
    s, ws = connected("websocket")
    assert ws is not None
    s.query("hi", model="sonar", now=1.0)
    s.receive_websocket_messages(ws, [frame({"output": "He", "citations": ["https://a.test"]})], 2.0)
    assert s.events() == [TextDelta(text="He"), Citations(citations=("https://a.test",))]
    assert s.state is SessionState.QUERYING
    assert s.partial_text == "He"


def test_a_failed_answer_ends_the_query_and_its_deadlines() -> None:
    s, ws = connected("websocket", first_text_timeout=5.0, query_timeout=30.0)
    assert ws is not None
    s.query("hi", model="sonar", now=1.0)
    s.receive_websocket_messages(ws, [frame({"status": "failed", "text": "overloaded"})], 2.0)
    assert s.events() == [
        QueryFailed(model="sonar", message="overloaded", partial_text="", partial_reasoning="")
    ]
    assert s.state is SessionState.READY
    assert s.get_timer() == 45.5  # the heartbeat alone
    s.query("again", model="sonar", now=3.0)
    assert s.state is SessionState.QUERYING


@pytest.mark.parametrize(("output", "text", "reasoning"), [("He", "He", ""), ("<think>hmm", "", "hmm")])
def test_an_error_keeps_the_answer_and_the_reasoning_so_far(output: str, text: str, reasoning: str) -> None:
    s, ws = connected("websocket")
    assert ws is not None
    s.query("hi", model="sonar", now=1.0)
    s.receive_websocket_messages(ws, [frame({"output": output})], 2.0)
    with pytest.raises(NetworkError) as info:
        s.receive_transport_error(ws, "connection reset", 3.0)
    assert (info.value.partial_text, info.value.partial_reasoning) == (text, reasoning)


def test_the_socketio_sid_is_empty_until_the_connect_ack() -> None:
    s = session("websocket")
    assert s.socket_sid == ""
    s, _ = connected("websocket")
    assert s.socket_sid == "S1"


# -- the byte-level client: survivors of mutmut -----------------------------------------------------------


def test_a_perplexity_client_by_default_asks_the_perplexity_service() -> None:
    c = PerplexityClient(rng=random.Random(0))
    assert c.config.service == "perplexity" and c.session.state is SessionState.IDLE


def test_the_model_and_mode_of_a_perplexity_query_go_in_the_ask() -> None:
    c = perplexity_ready()
    c.query("Hello", model="pro", mode="concise", now=1.0)
    body = json.loads(sent(c.transmit()).partition(b"\r\n\r\n")[2])
    assert (body["params"]["model_preference"], body["params"]["mode"]) == ("pro", "concise")


def test_a_refused_ask_shows_the_reason_phrase_of_its_status_line() -> None:
    c = perplexity_ready()
    c.query("Hello", now=1.0)
    c.transmit()
    with pytest.raises(LabsError) as info:
        c.receive_data(1, b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 2\r\n\r\nno", 1.5)
    assert "HTTP 500 Internal Server Error" in str(info.value)


def test_the_tracer_sees_the_goodbye_at_the_time_of_close() -> None:
    seen: list[tuple[float, str]] = []
    client = LabsClient(ClientConfig(server="http://labs.test", transport="websocket"), rng=random.Random(0),
                        tracer=lambda now, stream, direction, data: seen.append((now, direction)))
    h = Harness(client)
    client.connect(0.0)
    h.take(1)
    h.reply(1, switching_protocols(KEY) + ws_frame(open_packet_bytes(upgrades=())))
    h.reply(1, ws_frame('40{"sid":"S9"}'))
    seen.clear()
    client.query("hi", model="sonar", now=3.0)
    client.close(7.0)
    h.pump()
    assert seen == [(3.0, "out"), (7.0, "out")]  # the query; the goodbyes and the close frame in one write


def test_no_goodbye_post_goes_on_a_connection_whose_post_is_still_out() -> None:
    h = make("polling")
    c = h.client
    c.connect(0.0)
    h.take(1)
    h.reply(1, http_response(200, open_packet_bytes()))
    assert h.take(2) == post_bytes(CLIENT_POLL_SID, b'40{"jwt":"anonymous-ask-user"}')  # its answer never comes
    c.close(1.0)
    assert h.take(2) == b""
    assert sorted(h.closed) == [1, 2]


def test_a_ping_and_a_close_frame_in_one_read_end_the_session_cleanly() -> None:
    """The pong the ping asks for has no open WebSocket left to go on: dropped, not an error."""
    h = make("websocket")
    c = h.client
    c.connect(0.0)
    h.take(1)
    h.reply(1, switching_protocols(KEY) + ws_frame(open_packet_bytes(upgrades=())) + ws_frame('40{"sid":"S9"}'))
    h.take(1)
    h.reply(1, ws_frame("2") + ws_frame(b"\x03\xe8", opcode=8))
    assert c.state is SessionState.CLOSED
    assert h.events()[-1] == ClosedEvent(reason="WebSocket closed by the server (1000)")
    echo = h.take(1)
    assert echo[:2] == b"\x88\x82" and len(echo) == 8  # the close frame's echo (1000, masked), and no pong


def test_messages_after_a_binary_one_in_the_same_read_are_read() -> None:
    e, ws = websocket_engine()
    e.receive_websocket_messages(ws, [b"\x01", bytearray(b"\x02"), "4a", Utf8Text(b"4b")], 0.3)
    assert list(e.events()) == [Message(b"\x01"), Message(b"\x02"), Message("4a", 1), Message(Utf8Text(b"4b"), 1)]


def websocket_client() -> Harness:
    """A LabsClient on the WebSocket transport, connected (stream 1)."""
    h = make("websocket")
    h.client.connect(0.0)
    h.take(1)
    h.reply(1, switching_protocols(KEY) + ws_frame(open_packet_bytes(upgrades=())) + ws_frame('40{"sid":"S9"}'))
    h.take(1)
    return h


def test_a_websocket_ping_from_the_server_is_answered_with_a_pong() -> None:
    h = websocket_client()
    h.reply(1, ws_frame(b"hb", opcode=9))
    pong = h.take(1)
    assert pong[:2] == b"\x8a\x82" and len(pong) == 8  # a masked pong of the 2 bytes
    assert bytes(b ^ pong[2 + i % 4] for i, b in enumerate(pong[6:])) == b"hb"


def test_the_reason_of_the_servers_close_frame_is_shown() -> None:
    h = websocket_client()
    h.reply(1, ws_frame(b"\x03\xe9going away", opcode=8))
    assert h.events()[-1] == ClosedEvent(reason="WebSocket closed by the server (1001 going away)")
    assert h.client.state is SessionState.CLOSED


# -- the state table: survivors of mutmut -----------------------------------------------------------------


def test_a_refused_command_without_a_hint_says_exactly_what_and_where() -> None:
    s = session("websocket")
    s.close(0.0)
    with pytest.raises(LocalProtocolError) as info:
        s.query("hi", model="sonar", now=1.0)
    assert str(info.value) == "cannot query when the session is closed"
    with pytest.raises(LocalProtocolError) as info:
        s.connect(1.0)
    assert str(info.value) == "cannot connect when the session is closed"


def test_the_tracer_sees_every_byte_in_with_its_time_and_stream_and_the_end_of_file() -> None:
    seen: list[tuple[float, int, str, bytes]] = []
    client = LabsClient(ClientConfig(server="http://labs.test", transport="websocket"), rng=random.Random(0),
                        tracer=lambda now, stream, direction, data: seen.append((now, stream, direction, data)))
    h = Harness(client)
    client.connect(0.0)
    h.take(1)
    h.now = 0.5
    first = switching_protocols(KEY) + ws_frame(open_packet_bytes(upgrades=()))
    h.reply(1, first)
    assert (0.5, 1, "in", first) in seen
    assert [entry[:3] for entry in seen if entry[2] == "out"] == [(0.0, 1, "out"), (0.5, 1, "out")]  # the upgrade; the CONNECT
    seen.clear()
    h.now = 2.0
    with pytest.raises(RemoteProtocolError):
        h.reply(1, b"")  # dropped without a close frame
    assert seen == [(2.0, 1, "in", b"")]


def test_a_refused_websocket_upgrade_shows_the_reason_phrase() -> None:
    h = make("websocket")
    h.client.connect(0.0)
    h.take(1)
    with pytest.raises(LabsError) as info:
        h.reply(1, b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")
    assert "HTTP 403 Forbidden" in str(info.value)


def test_a_perplexity_client_asks_for_the_catalog_on_its_connection() -> None:
    c = perplexity_ready()
    c.request_catalog(now=1.0)
    assert sent(c.transmit()).startswith(b"GET /rest/models/config/v2 HTTP/1.1\r\n")
    with pytest.raises(LocalProtocolError, match="the catalog is being fetched already"):
        c.request_catalog(now=1.1)


def test_a_plain_client_carries_any_session_and_passes_its_query_on() -> None:
    """``Client`` over a session made by hand (what a carrier of another service does)."""
    config = ClientConfig(server="http://labs.test", transport="websocket")
    seen: list[float] = []
    rng = random.Random(0)  # drawn from as LabsClient draws: the session's cache buster first
    client = Client(LabsSession(config.session_config(), rng=rng), config, rng=rng,
                    tracer=lambda now, stream, direction, data: seen.append(now) if direction == "out" else None)
    h = Harness(client)  # type: ignore[arg-type]
    client.connect(0.0)
    h.take(1)
    h.reply(1, switching_protocols(KEY) + ws_frame(open_packet_bytes(upgrades=())) + ws_frame('40{"sid":"S9"}'))
    h.take(1)
    seen.clear()
    client.query("hi", model="sonar", now=3.0)
    frames = ClientFrames()
    (query,) = frames.feed(h.take(1))
    assert isinstance(query, str) and '"model":"sonar"' in query and '"content":"hi"' in query
    assert seen == [3.0] and client.state is SessionState.QUERYING


def test_stream_ids_run_from_1_to_the_last_opened_and_a_failed_client_takes_no_more_bytes() -> None:
    h = websocket_client()  # one stream: 1
    for stream_id in (0, 2):
        with pytest.raises(LocalProtocolError) as info:
            h.client.receive_data(stream_id, b"x", 1.0)
        assert str(info.value) == f"expected the id of a stream this client opened, got {stream_id}"
    with pytest.raises(RemoteProtocolError):
        h.reply(1, b"")  # dropped without a close frame: the client fails and closes its streams
    with pytest.raises(LocalProtocolError) as info:
        h.client.receive_data(1, b"late", 2.0)
    assert str(info.value) == "cannot receive data: the client already failed and closed its streams"


def test_an_ipv6_server_gets_a_bracketed_host_header_and_tls_false_speaks_plain_http_to_https() -> None:
    h = make("polling", server="http://[::1]:8080", browser=None)
    h.client.connect(0.0)
    assert b"\r\nHost: [::1]:8080\r\n" in h.take(1)
    h = make("polling", server="https://labs.test", tls=False, browser=None)
    h.client.connect(0.0)
    assert h.take(1).startswith(b"GET /socket.io/?EIO=4&transport=polling")
    assert h.opened[0].port == 443


def test_a_client_loads_the_cafile_it_is_given_and_hands_out_its_sessions_events(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(LocalProtocolError, match="expected a readable PEM CA file at"):
        LabsClient(ClientConfig(server="https://labs.test", cafile=missing), rng=random.Random(0))
    h = websocket_client()
    assert h.client.next_event() == Connected(engine_sid="SID1", socket_sid="S9", transport="websocket")
    assert h.client.next_event() is None


def test_an_idle_keep_alive_connection_the_server_lets_go_is_closed_quietly() -> None:
    h = make("polling")
    c = h.client
    c.connect(0.0)
    h.take(1)
    h.reply(1, http_response(200, open_packet_bytes()))
    h.take(2)
    h.reply(2, http_response(200, "ok"))  # the CONNECT POST answered: its connection idles, kept alive
    h.reply(2, b"")
    assert h.closed == [2] and c.state is SessionState.CONNECTING
    h.reply(1, http_response(200, '40{"sid":"S1"}'))
    assert c.state is SessionState.READY


@pytest.mark.parametrize("extra", [0, 1])
def test_an_http_body_of_the_limit_and_64_kib_is_taken_and_one_byte_more_refused_by_name(extra: int) -> None:
    h = make("polling", max_message_size=100)
    h.client.connect(0.0)
    h.take(1)
    body = polling_body(100 + 65536 - 2) + b"\x1e6" + b"x" * extra  # noops: no packet over the limit
    response = http_response(200, body)
    if not extra:
        with pytest.raises(RemoteProtocolError, match=r"expected the Engine\.IO open packet"):
            h.reply(1, response)  # read whole: the noops are no open packet
        return
    with pytest.raises(RemoteProtocolError) as info:
        h.reply(1, response)
    assert str(info.value) == (
        f"expected an HTTP response body of at most {100 + 65536} bytes (max_message_size + 64 KiB), "
        f"got at least {100 + 65537} bytes"
    )


def test_the_tracer_sees_the_catalog_request_at_its_time() -> None:
    seen: list[tuple[float, str]] = []
    c = PerplexityClient(ClientConfig(server="http://pplx.test", service="perplexity", browser=None),
                         rng=random.Random(0), tracer=lambda now, stream, direction, data: seen.append((now, direction)))
    c.connect(0.0)
    c.transmit()
    c.receive_data(1, WARMUP_RESPONSE, 0.1)
    seen.clear()
    c.request_catalog(now=4.0)
    assert seen == [(4.0, "out")]


# -- the configuration: survivors of mutmut ----------------------------------------------------------------

#: Every character RFC 6265 lets a cookie value carry as it is (visible ASCII but '"', ',', ';' and '\').
COOKIE_OCTETS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '",;\\')


def cookies_txt(name: str, value: str) -> str:
    return f".perplexity.ai\tTRUE\t/\tTRUE\t0\t{name}\t{value}\n"


def test_the_server_path_and_the_socketio_path_lose_only_their_outer_slashes() -> None:
    assert split_server("https://x.test/apiX/", "/Xsocket.ioX/") == ("https", "x.test", None, "/apiX/Xsocket.ioX/")
    assert split_server("http://x.test:81", "sio") == ("http", "x.test", 81, "/sio/")


@pytest.mark.parametrize("bad", ["https://a.test\rX: 1", "https://a.test\nX: 1"])
def test_a_carriage_return_or_a_line_feed_alone_is_refused_in_header_text(bad: str) -> None:
    with pytest.raises(LocalProtocolError) as caught:
        SessionConfig(origin=bad)
    assert str(caught.value).startswith("expected origin as ASCII text without CR or LF")
    with pytest.raises(LocalProtocolError, match="expected the 'X-A' header as ASCII text without CR or LF"):
        ClientConfig(headers=(("X-A", bad),))


def test_a_mode_is_taken_on_the_ask_service_only_and_only_a_known_one() -> None:
    assert SessionConfig(service="perplexity", mode="concise").mode == "concise"
    assert SessionConfig(service="perplexity", mode="copilot").mode == "copilot"
    with pytest.raises(LocalProtocolError) as caught:
        SessionConfig(service="labs", mode="copilot")
    assert str(caught.value) == (
        "expected no mode on service 'labs' (modes are the ask service's: service=\"perplexity\"), got mode='copilot'"
    )
    for mode in ("fast", 3):
        with pytest.raises(LocalProtocolError) as caught:
            SessionConfig(service="perplexity", mode=mode)  # type: ignore[arg-type]
        assert str(caught.value) == f"expected the mode to be one of copilot, concise, got {mode!r}"


def test_a_session_token_of_every_cookie_character_is_taken_and_a_bad_one_refused_unseen() -> None:
    assert SessionConfig(service="perplexity", session_token=COOKIE_OCTETS).session_token == COOKIE_OCTETS
    for token, shown in (("a b", "str of 3"), (5, "int of 0")):
        with pytest.raises(LocalProtocolError) as caught:
            SessionConfig(service="perplexity", session_token=token)  # type: ignore[arg-type]
        assert str(caught.value) == (
            "expected session_token as a cookie value (visible ASCII without spaces, quotes, commas, "
            f"semicolons or backslashes), got {shown} characters (not shown)"
        )


def test_cookies_of_every_cookie_character_are_taken_and_a_bad_name_refused_by_its_first_60_characters() -> None:
    good = cookies_txt(COOKIE_OCTETS.replace("=", ""), COOKIE_OCTETS)
    assert SessionConfig(service="perplexity", cookies_txt=good).cookies_txt == good
    for name in ("a" * 60 + " b", "a=b"):
        with pytest.raises(LocalProtocolError) as caught:
            SessionConfig(service="perplexity", cookies_txt=cookies_txt(name, "v"))
        assert str(caught.value) == (
            f"expected the cookies of cookies_txt to be sendable in a Cookie header, got cookie {name[:60]!r} "
            "whose name or value holds a space, a quote, a comma, a semicolon, a backslash or a non-ASCII "
            "character (value not shown)"
        )
    with pytest.raises(LocalProtocolError) as caught:
        SessionConfig(service="perplexity", cookies_txt=5)  # type: ignore[arg-type]
    assert str(caught.value) == "expected cookies_txt as the text of a cookies.txt export, got int"


def test_every_header_is_checked_not_only_the_last() -> None:
    with pytest.raises(LocalProtocolError, match="expected the 'X-A' header as ASCII text"):
        ClientConfig(headers=(("X-A", "caf\u00e9"), ("X-B", "ok")))
    with pytest.raises(LocalProtocolError, match="expected the server host as ASCII text"):
        ClientConfig(server="http://b\u00fccher.test", headers=(("X-B", "ok"),))


def test_the_session_config_of_a_client_config_is_its_message_level_fields() -> None:
    kw: dict[str, Any] = {
        "server": "https://x.test/base", "path": "sio", "transport": "polling", "origin": "https://o.test",
        "jwt": "j", "version": "v", "connect_timeout": 1.0, "first_text_timeout": 2.0, "query_timeout": 3.0,
        "max_message_size": 4, "service": "perplexity", "session_token": "t", "cookies_txt": "", "mode": "concise",
    }
    plain = ClientConfig(**kw, proxy="socks5://proxy.test", browser=None).session_config()
    assert type(plain) is SessionConfig and plain == SessionConfig(**kw)
    same = SessionConfig(**kw)
    assert same.session_config() is same


# -- the Engine.IO codec: survivors of mutmut --------------------------------------------------------------


def packet_error(segment: str) -> str:
    """What decoding ``segment`` alone says is wrong with it."""
    with pytest.raises(RemoteProtocolError) as info:
        engineio.decode_packet(segment)
    return str(info.value)


@pytest.mark.parametrize(
    ("body", "index", "count", "segment"),
    [
        ("b!!!", 1, 1, "b!!!"),
        ("bAQIDBA==x", 1, 1, "bAQIDBA==x"),  # valid but for its last character
        ("b!AQI\x1e4x", 1, 2, "b!AQI"),  # valid but for its first base64 character
        ("4x\x1eb!!!", 2, 2, "b!!!"),
        ("bAQID\x1e4x\x1eb!!!", 3, 3, "b!!!"),  # a good binary packet first does not end the check
    ],
)
def test_a_bad_binary_packet_in_a_payload_is_named_by_its_place_before_any_packet(
    body: str, index: int, count: int, segment: str
) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        engineio.iter_payload(body)  # the call itself, not the first packet read
    assert str(info.value) == f"bad packet #{index} of {count} in payload: {packet_error(segment)}"


@pytest.mark.parametrize("body", ["4x\x1e\x1e4y\x1eb!!!", "4x\x1e\x1e4y\x1e4z"])
def test_the_first_bad_segment_of_a_payload_is_the_one_named(body: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        engineio.iter_payload(body)
    assert str(info.value) == (
        f"expected a packet between record separators, got an empty segment (#2 of 4) in {body!r}"
    )


@pytest.mark.parametrize("size", range(1, 10))
def test_binary_packets_without_base64_padding_are_read(size: int) -> None:
    data = bytes(range(200, 200 + size))
    text = "b" + base64.b64encode(data).decode("ascii").rstrip("=")
    assert engineio.decode_packet(text) == engineio.Packet(engineio.PacketType.MESSAGE, data)
    assert engineio.decode_payload(f"{text}\x1e6") == [
        engineio.Packet(engineio.PacketType.MESSAGE, data),
        engineio.Packet(engineio.PacketType.NOOP),
    ]


def test_what_arrived_is_shown_whole_up_to_60_characters_and_cut_after() -> None:
    expected = "expected an Engine.IO packet starting with a type digit 0-6 or 'b', got "
    assert packet_error("x" * 60) == expected + repr("x" * 60)
    assert packet_error("x" * 61) == expected + repr("x" * 60) + "... (61 chars)"
    assert packet_error("") == "expected an Engine.IO packet (type digit 0-6 or 'b'), got ''"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("0", "0"),
        ('"' + "x" * 58 + '"', repr("x" * 58)),  # a repr of 60 characters, whole
        ('"' + "x" * 59 + '"', repr("x" * 59)[:60] + "... (61 chars)"),
    ],
)
def test_a_bad_number_in_the_open_packet_is_shown_whole_up_to_60_characters(value: str, shown: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        engineio.parse_open_packet('{"sid":"s","pingInterval":' + value + "}")
    assert str(info.value) == (
        f"expected an integer 'pingInterval' in 1..2147483647 in the Engine.IO open packet, got {shown}"
    )


def test_a_sid_of_256_characters_is_taken_and_257_refused_naming_both() -> None:
    assert engineio.parse_open_packet('{"sid":"' + "s" * 256 + '"}').sid == "s" * 256
    with pytest.raises(RemoteProtocolError) as info:
        engineio.parse_open_packet('{"sid":"' + "s" * 257 + '"}')
    assert str(info.value) == (
        "expected a 'sid' of at most 256 characters in the Engine.IO open packet, got one of 257: "
        f"{'s' * 60!r}... (257 chars)"
    )


@pytest.mark.parametrize(("key", "limit"), [("maxPayload", 2**53 - 1), ("pingInterval", 2**31 - 1), ("pingTimeout", 2**31 - 1)])
def test_the_open_packets_numbers_are_taken_up_to_their_limit_and_refused_one_past(key: str, limit: int) -> None:
    field = {"maxPayload": "max_payload", "pingInterval": "ping_interval", "pingTimeout": "ping_timeout"}[key]
    assert getattr(engineio.parse_open_packet(f'{{"sid":"s","{key}":{limit}}}'), field) == limit
    with pytest.raises(RemoteProtocolError) as info:
        engineio.parse_open_packet(f'{{"sid":"s","{key}":{limit + 1}}}')
    assert str(info.value) == (
        f"expected an integer {key!r} in 1..{limit} in the Engine.IO open packet, got {limit + 1}"
    )


def test_a_sid_with_control_characters_names_the_first_one_and_where() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        engineio.parse_open_packet('{"sid":"a\\u0000b\\u0000"}')
    assert str(info.value) == (
        "expected a 'sid' of printable characters in the Engine.IO open packet (it goes back in every "
        "request), got '\\x00' at position 1 of 'a\\x00b\\x00'"
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: engineio.encode_packet(engineio.Packet(engineio.PacketType.PING, b"x")),
         "expected str or None data for a PING packet (binary data is only valid for MESSAGE), got bytes"),
        (lambda: engineio.encode_packet(engineio.Packet(engineio.PacketType.MESSAGE, 5)),  # type: ignore[arg-type]
         "expected str, bytes or None as Engine.IO packet data, got int"),
        (lambda: engineio.decode_packet(5), "expected str or bytes to decode, got int"),  # type: ignore[arg-type]
        (lambda: engineio.iter_payload(b"4x"), "expected the payload as str, got bytes"),  # type: ignore[arg-type]
    ],
)
def test_the_codec_names_the_type_it_was_handed_instead_of_text_or_bytes(call: Any, message: str) -> None:
    with pytest.raises(LocalProtocolError) as info:
        call()
    assert str(info.value) == message


def test_an_empty_payload_is_refused_by_name() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        engineio.iter_payload("")
    assert str(info.value) == "expected an Engine.IO payload of at least one packet, got ''"


def test_a_v3_payload_counts_a_character_beyond_the_bmp_as_two_code_units_however_written() -> None:
    # "3:" then three UTF-16 code units: "4" and the two halves of U+1F600, written as one
    # character or as its two surrogates: the same packet.
    message = engineio.Packet(engineio.PacketType.MESSAGE, "\U0001f600")
    assert engineio.decode_payload("3:4\U0001f600") == [message]
    assert engineio.decode_payload("3:4\ud83d\ude00") == [message]


def test_a_body_that_is_v3_but_for_a_bad_binary_packet_is_read_as_v4() -> None:
    assert engineio.decode_payload("4:b4!!") == [engineio.Packet(engineio.PacketType.MESSAGE, ":b4!!")]


# -- the Socket.IO codec: survivors of mutmut --------------------------------------------------------------

EVENT_RULE = "a non-empty list whose first element is an event name (not reserved) or a number"
BYTES_HINT = "(send binary data with encode_binary_packet, as an EVENT or ACK)"


def test_bytes_are_found_in_event_data_that_holds_one_list_twice() -> None:
    shared: list[Any] = []
    with pytest.raises(LocalProtocolError) as info:
        socketio.encode_packet(socketio.Packet(socketio.PacketType.EVENT, data=["e", b"x", shared, shared]))
    assert str(info.value) == f"expected EVENT data without bytes, got data containing bytes {BYTES_HINT}"


@pytest.mark.parametrize(
    ("data", "shown"),
    [
        ([], "[]"),
        ("x" * 58, repr("x" * 58)),  # a repr of 60 characters, whole
        ("x" * 59, repr("x" * 59)[:60] + "..."),
    ],
)
def test_bad_event_data_is_refused_with_the_rule_and_60_characters_of_it(data: Any, shown: str) -> None:
    with pytest.raises(LocalProtocolError) as info:
        socketio.encode_packet(socketio.Packet(socketio.PacketType.EVENT, data=data))
    assert str(info.value) == f"expected {EVENT_RULE} as EVENT data, got {shown}"


def test_json_that_cannot_be_written_is_refused_with_the_encoders_reason() -> None:
    for encode in (socketio.encode_packet, socketio.encode_binary_packet):
        with pytest.raises(LocalProtocolError) as info:
            encode(socketio.Packet(socketio.PacketType.EVENT, data=["e", {b"k": 1}]))
        assert str(info.value) == (
            "expected JSON-serialisable packet data, got: keys must be str, int, float, bool or None, not bytes"
        )


def test_only_json_whitespace_may_follow_an_event() -> None:
    assert socketio.decode_packet('2["a"] \t\r\n').data == ["a"]
    for space in ("\x0c", "\x0b", "\xa0", "\u2028"):
        text = f'2["a"]{space}'
        with pytest.raises(RemoteProtocolError) as info:
            socketio.decode_packet(text)
        assert str(info.value) == (
            "invalid payload: expected a non-empty JSON array starting with an event name (not reserved) "
            f"or a number for EVENT, got {text!r}"
        )


def test_an_attachment_count_with_leading_zeros_is_read_as_its_number() -> None:
    # socket.io-parser reads the count with Number(): "0000000000000001" is 1.
    packet = socketio.decode_packet("5" + "0" * 15 + '1-["a",{"_placeholder":true,"num":0}]')
    assert (packet.type, packet.attachments) == (socketio.PacketType.BINARY_EVENT, 1)


def test_only_the_json_of_a_packet_is_measured_for_depth_100_taken_101_refused() -> None:
    assert socketio.decode_packet("3" + "[" * 100 + "]" * 100).type == socketio.PacketType.ACK
    text = "3" + "[" * 101 + "]" * 101
    with pytest.raises(RemoteProtocolError) as info:
        socketio.decode_packet(text)
    assert str(info.value) == (
        "expected the JSON data of a Socket.IO packet nested at most 100 deep, got deeper nesting in "
        f"{text[:60]!r}... (203 chars)"
    )
    # brackets in the namespace are not JSON
    packet = socketio.decode_packet("2/" + "[" * 101 + ',["a"]')
    assert (packet.namespace, packet.data) == ("/" + "[" * 101, ["a"])


def test_a_binary_frame_nobody_waits_for_is_shown_by_its_first_20_bytes() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        socketio.PacketDecoder().feed(b"a" * 21)
    assert str(info.value) == (
        "got binary data when not reconstructing a packet: expected a text frame, got 21 bytes "
        + repr(repr(b"a" * 20))
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: socketio.decode_packet(5), "expected str to decode, got int"),  # type: ignore[arg-type]
        (lambda: socketio.PacketDecoder().feed(5), "expected str or bytes to feed, got int"),  # type: ignore[arg-type]
    ],
)
def test_the_socketio_codec_names_the_type_it_was_handed(call: Any, message: str) -> None:
    with pytest.raises(LocalProtocolError) as info:
        call()
    assert str(info.value) == message


# -- the Labs answer: survivors of mutmut ------------------------------------------------------------------


@pytest.mark.parametrize(("role", "shown"), [("x" * 60, repr("x" * 60)), ("x" * 61, repr("x" * 60) + "...")])
def test_a_bad_role_is_shown_whole_up_to_60_characters(role: str, shown: str) -> None:
    with pytest.raises(LocalProtocolError) as info:
        normalize_messages([{"role": role, "content": "c"}])
    assert str(info.value) == (
        f"message 0: expected 'role' to be 'user', 'assistant' or 'system', got str: {shown}"
    )


def test_a_lone_surrogate_in_a_prompt_is_refused_with_where_and_what_to_do() -> None:
    with pytest.raises(LocalProtocolError) as info:
        normalize_messages("a\udce9b")
    assert str(info.value) == (
        "message 0: expected text that can be sent as UTF-8, got a lone surrogate '\\udce9' at position 1 "
        "(Python makes one of each byte it could not decode, as in sys.argv or stdin read with the wrong "
        "encoding: decode those bytes with their real encoding, or with errors='replace')"
    )


@pytest.mark.parametrize("high", ["\ud800", "\udbff"])
def test_a_surrogate_pair_split_across_frames_comes_out_whole(high: str) -> None:
    decoder = AnswerDecoder("sonar")
    assert decoder.feed({"output": "a" + high}) == [TextDelta(text="a")]
    assert decoder.feed({"output": "a" + high + "\udc00"}) == [TextDelta(text=high + "\udc00")]


def test_a_malformed_frame_keeps_the_reasoning_and_the_text_so_far() -> None:
    decoder = AnswerDecoder("sonar")
    decoder.feed({"output": "<think>hmm</think>ans"})
    with pytest.raises(RemoteProtocolError) as info:
        decoder.feed({"output": 5})
    assert (info.value.partial_reasoning, info.value.partial_text) == ("hmm", "ans")


def test_a_final_frame_before_any_output_finishes_an_empty_answer() -> None:
    assert AnswerDecoder("sonar").feed({"final": True}) == [AnswerFinished(model="sonar", text="", reasoning="")]


@pytest.mark.parametrize("model", ["sonar", "r1-1776"])
def test_the_start_of_a_close_tag_at_the_very_start_is_held_back_until_it_is_known(model: str) -> None:
    decoder = AnswerDecoder(model)
    assert decoder.feed({"output": "</th"}) == []
    assert decoder.feed({"output": "</think>Hi"}) == [TextDelta(text="Hi")]


def test_an_output_that_does_not_extend_the_last_is_read_again_as_the_model_reads_it() -> None:
    # r1-1776 may omit <think>: untagged output is reasoning until told otherwise, read afresh too.
    decoder = AnswerDecoder("r1-1776")
    assert decoder.feed({"output": "abc"}) == [ReasoningDelta(text="abc")]
    assert decoder.feed({"output": "xyz"}) == [AnswerRevised(text="", reasoning="xyz")]


# -- the errors: survivors of mutmut ----------------------------------------------------------------------

REQUIRED: dict[type[LabsError], dict[str, Any]] = {
    LocalProtocolError: {},
    RemoteProtocolError: {},
    HandshakeError: {"status": 403},
    RateLimitedError: {"status": 429, "retry_after": None, "retry_after_header": None},
    ResponseError: {},
    LabsTimeout: {"deadline": "query"},
    NetworkError: {"host": "h.test", "port": 443},
    AnswerFailedError: {"error_code": None},
    AnswerRateLimitedError: {"error_code": "FREE_TIER_RATE_LIMITED"},
}


@pytest.mark.parametrize("cls", list(REQUIRED))
def test_every_error_keeps_the_answer_so_far_it_is_given_and_has_none_by_default(cls: type[LabsError]) -> None:
    plain = cls("what went wrong", **REQUIRED[cls])
    assert (str(plain), repr(plain), plain.args) == (
        "what went wrong", f"{cls.__name__}('what went wrong')", ("what went wrong",)
    )
    assert (plain.partial_text, plain.partial_reasoning) == ("", "")
    for name in ("server_text", "body_excerpt"):
        assert getattr(plain, name, "") == ""
    assert getattr(plain, "cloudflare", False) is False
    kept = cls("what went wrong", partial_text="Hel", partial_reasoning="hmm", **REQUIRED[cls])
    assert (kept.partial_text, kept.partial_reasoning) == ("Hel", "hmm")


def test_a_rate_limit_in_the_answer_stream_shows_the_services_text_as_its_body() -> None:
    error = AnswerRateLimitedError("limited", error_code="FREE_TIER_RATE_LIMITED", server_text="slow down")
    assert (error.status, error.server_text, error.body_excerpt, error.retry_after) == (200, "slow down", "slow down", None)
    failed = AnswerFailedError("failed", error_code="INTERNAL_ERROR", server_text="oops")
    assert (failed.server_text, failed.error_code) == ("oops", "INTERNAL_ERROR")


# -- the events: survivors of mutmut -------------------------------------------------------------------------


def test_a_query_failed_event_becomes_the_error_a_backend_raises() -> None:
    error = QueryFailed(model="sonar", message="Error in processing query", partial_text="Hel").error()
    assert str(error) == "Labs server reported a failure for model 'sonar': Error in processing query"
    assert (error.server_text, error.partial_text, error.partial_reasoning) == ("Error in processing query", "Hel", "")


def test_the_repr_of_a_request_hides_its_cookie_and_authorization_values() -> None:
    request = HTTPRequest(
        request_id=3, method="POST", url="https://pplx.test/rest/sse/perplexity_ask",
        headers=(("Cookie", "session=secret"), ("AUTHORIZATION", "Bearer secret"), ("Content-Type", "text/plain")),
        body=b"{}", lane=1, incremental=True,
    )
    assert repr(request) == (
        "HTTPRequest(request_id=3, method='POST', url='https://pplx.test/rest/sse/perplexity_ask', "
        "headers=(('Cookie', '[redacted]'), ('AUTHORIZATION', '[redacted]'), ('Content-Type', 'text/plain')), "
        "body=<2 bytes>, lane=1, incremental=True)"
    )


class HeldQueue(EventQueue):
    """An event queue that says how many events it holds (as a session adds them: ``_events``)."""

    def add(self, *events: Any) -> None:
        self._events.extend(events)

    def held(self) -> int:
        return len(self._events)


def test_an_event_queue_taken_one_by_one_lets_go_of_what_it_handed_out() -> None:
    queue = HeldQueue()
    deltas = [TextDelta(text=str(i)) for i in range(3)]
    queue.add(*deltas)
    assert [queue.next_event(), queue.next_event()] == deltas[:2] and queue.held() == 3
    assert queue.next_event() == deltas[2] and queue.held() == 0
    assert queue.next_event() is None
