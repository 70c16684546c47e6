"""The Engine.IO session alone: what it asks the carrier for, and the events it hands up.

Byte-exact instructions and events, with no Socket.IO above it: the layer above is these
tests, which call it down and read its events back, as ``LabsSession`` does.
"""

from __future__ import annotations

import json
import random

import pytest

from plabs_proto.config import SessionConfig
from plabs_proto.errors import LabsTimeout, LocalProtocolError, RemoteProtocolError
from plabs_proto.events import HTTPRequest, TransportSwitched, WebSocketClose, WebSocketConnect, WebSocketSend
from plabs_proto.labs.engineio_session import Closed, EngineIOSession, Message, Opened, Upgraded
from plabs_proto.wire.http import HTTPResponse
from plabs_proto.wire.websocket import Utf8Text

BASE = "http://labs.test/socket.io/?EIO=4"
T = "&t=d82c07cd"  # the cache buster random.Random(0) gives
ORIGIN = (("Origin", "https://labs.perplexity.ai"), ("Referer", "https://labs.perplexity.ai/"))
POST_HEADERS = (*ORIGIN, ("Content-Type", "text/plain;charset=UTF-8"))
OPEN = "0" + json.dumps({"sid": "E1", "upgrades": ["websocket"], "pingInterval": 25000, "pingTimeout": 20000,
                         "maxPayload": 1000}, separators=(",", ":"))


def engine(transport: str) -> EngineIOSession:
    return EngineIOSession(SessionConfig(server="http://labs.test", transport=transport), rng=random.Random(0))


def ok(body: bytes | str) -> HTTPResponse:
    return HTTPResponse(200, "OK", (), body.encode() if isinstance(body, str) else body)


def on_websocket() -> tuple[EngineIOSession, int]:
    """A websocket-transport session, open, its CONNECT (queued before the open) sent."""
    e = engine("websocket")
    e.open(0.0)
    e.send("0")  # what the layer above sends first: it waits for the open packet
    (connect,) = e.transmit()
    assert connect == WebSocketConnect(ws_id=1, url=f"{BASE}&transport=websocket".replace("http", "ws"), headers=ORIGIN)
    e.receive_websocket_open(1, 0.1)
    assert e.transmit() == []
    e.receive_websocket_messages(1, [OPEN], 0.2)
    assert list(e.events()) == [Opened(sid="E1", max_payload=1000)]
    assert e.transmit() == [WebSocketSend(ws_id=1, data="40")]
    return e, 1


def test_websocket_messages_go_up_whole_with_their_start() -> None:
    e, ws = on_websocket()
    raw = Utf8Text(b'42["x",1]')
    e.receive_websocket_messages(ws, [raw, '42["y"]', b"\x01\x02"], 0.3)
    events = list(e.events())
    assert events == [Message(raw, 1), Message('42["y"]', 1), Message(b"\x01\x02", 0)]
    assert events[0].data is raw  # handed up undecoded and uncopied
    assert e.get_timer() == 0.2 + 45.0


def test_a_ping_is_answered_below_and_moves_the_heartbeat() -> None:
    e, ws = on_websocket()
    e.receive_websocket_messages(ws, ["2", "2"], 10.0)
    assert list(e.events()) == []
    assert e.transmit() == [WebSocketSend(ws_id=ws, data="3")]  # one pong answers both
    assert e.get_timer() == 10.0 + 45.0
    with pytest.raises(LabsTimeout, match=r"a ping from the server at least every 45 s") as caught:
        e.handle_timer(55.0)
    assert caught.value.deadline == "heartbeat"


def test_what_follows_the_event_the_reader_stopped_at_is_never_read() -> None:
    """The layer above ends on a message (a Socket.IO disconnect, say) and aborts: the ping after it
    gets no pong, as a byte-by-byte reader would have it."""
    e, ws = on_websocket()
    e.receive_websocket_messages(ws, ["41", "2"], 1.0)
    events = e.events()
    assert next(events) == Message("41", 1)
    e.abort()
    assert list(events) == []
    assert e.transmit() == [WebSocketClose(ws_id=ws)]  # dropped: no close frame


def test_next_event_reads_one_at_a_time() -> None:
    e, ws = on_websocket()
    e.receive_websocket_messages(ws, ["4a", "2", "4b"], 1.0)
    assert e.next_event() == Message("4a", 1)
    assert e.transmit() == []  # the ping is not read yet
    assert e.next_event() == Message("4b", 1)
    assert e.transmit() == [WebSocketSend(ws_id=ws, data="3")]
    assert e.next_event() is None


def test_an_engineio_close_packet_is_the_closed_event_and_ends_the_session() -> None:
    e, ws = on_websocket()
    e.receive_websocket_messages(ws, ["1", "2"], 1.0)
    assert list(e.events()) == [
        Closed(reason="Engine.IO session closed by the server", cut="got an Engine.IO close packet")
    ]
    assert e.transmit() == [WebSocketClose(ws_id=ws)]  # nothing after the close is read: no pong
    with pytest.raises(LocalProtocolError, match="has ended"):
        e.send("4x")


def test_a_websocket_close_before_it_carried_the_session_is_an_error_event() -> None:
    e = engine("upgrade")
    e.open(0.0)
    (get,) = e.transmit()
    assert isinstance(get, HTTPRequest)
    e.receive_http_response(get.request_id, ok(OPEN), 0.1)
    assert list(e.events()) == [Opened(sid="E1", max_payload=1000)]
    (connect,) = e.transmit()  # nothing to POST: the WebSocket alone
    assert isinstance(connect, WebSocketConnect)
    e.receive_websocket_close(connect.ws_id, 1009, 0.2, "too big")
    (closed,) = e.events()
    assert closed == Closed(
        reason="WebSocket closed by the server (1009 too big); 1009 means message too big: the server refused "
        "a message we sent (its maxPayload is 1000 bytes)",
        cut="got a WebSocket close (1009 'too big')",
        error="expected the WebSocket to stay open for the session, but the server closed it (1009 too big)",
        note="; 1009 means message too big: the server refused a message we sent (its maxPayload is 1000 bytes)",
    )


def test_the_upgrade_switches_after_the_connect_post_and_the_probe() -> None:
    e = engine("upgrade")
    e.open(0.0)
    e.send('0{"jwt":"j"}')
    (get,) = e.transmit()
    assert get == HTTPRequest(request_id=1, method="GET", url=f"{BASE}&transport=polling{T}", headers=ORIGIN, body=b"")
    e.receive_http_response(1, ok(OPEN), 0.1)
    assert list(e.events()) == [Opened(sid="E1", max_payload=1000)]
    assert e.transmit() == [
        HTTPRequest(request_id=2, method="POST", url=f"{BASE}&transport=polling{T}&sid=E1", headers=POST_HEADERS,
                    body=b'40{"jwt":"j"}'),
        WebSocketConnect(ws_id=3, url="ws://labs.test/socket.io/?EIO=4&transport=websocket&sid=E1", headers=ORIGIN),
    ]
    e.receive_websocket_open(3, 0.2)
    e.send("2[]")  # queued: polling carries the session until the switch
    assert e.transmit() == []
    e.receive_http_response(2, ok("ok"), 0.3)
    assert e.transmit() == [
        WebSocketSend(ws_id=3, data="2probe"),
        TransportSwitched(ws_id=3),
        WebSocketSend(ws_id=3, data="5"),
        WebSocketSend(ws_id=3, data="42[]"),
    ]
    e.receive_websocket_messages(3, ["3probe", '40{"sid":"S"}'], 0.4)
    assert list(e.events()) == [Upgraded(ws_id=3), Message('40{"sid":"S"}', 1)]
    e.close("1")  # the layer above's last word, then the Engine.IO close
    assert e.transmit() == [WebSocketSend(ws_id=3, data="41"), WebSocketSend(ws_id=3, data="1"),
                            WebSocketClose(ws_id=3, code=1000)]


def test_a_wrong_probe_answer_is_refused() -> None:
    e = engine("upgrade")
    e.open(0.0)
    e.send("0")
    e.transmit()
    e.receive_http_response(1, ok(OPEN), 0.1)
    list(e.events())
    e.transmit()
    e.receive_websocket_open(3, 0.2)
    e.receive_http_response(2, ok("ok"), 0.3)
    e.transmit()
    e.receive_websocket_messages(3, ["3prob"], 0.4)
    with pytest.raises(RemoteProtocolError, match=r"expected '3probe' in answer to the upgrade probe, got '3prob'"):
        list(e.events())


def test_polling_hands_up_each_packet_and_polls_again() -> None:
    e = engine("polling")
    e.open(0.0)
    e.send("0")
    e.transmit()
    e.receive_http_response(1, ok(OPEN), 0.1)
    assert list(e.events()) == [Opened(sid="E1", max_payload=1000)]
    post, poll = e.transmit()
    assert post == HTTPRequest(request_id=2, method="POST", url=f"{BASE}&transport=polling{T}&sid=E1",
                               headers=POST_HEADERS, body=b"40", lane=1)  # beside the long-polling GET
    assert poll == HTTPRequest(request_id=3, method="GET", url=f"{BASE}&transport=polling{T}&sid=E1",
                               headers=ORIGIN, body=b"", lane=0)
    e.receive_http_response(3, ok('40{"sid":"S"}\x1e2\x1ebAQI='), 0.2)
    assert list(e.events()) == [Message('0{"sid":"S"}'), Message(b"\x01\x02")]  # no type digit: start 0
    # The ping's pong waits for the POST out; the next long-polling GET is out again.
    assert e.transmit() == [HTTPRequest(request_id=4, method="GET", url=f"{BASE}&transport=polling{T}&sid=E1",
                                        headers=ORIGIN, body=b"")]
    e.receive_http_response(2, ok("ok"), 0.3)
    assert e.transmit() == [HTTPRequest(request_id=5, method="POST", url=f"{BASE}&transport=polling{T}&sid=E1",
                                        headers=POST_HEADERS, body=b"3", lane=1)]


def test_messages_before_the_websocket_opened_are_a_local_error() -> None:
    e = engine("websocket")
    e.open(0.0)
    e.transmit()
    with pytest.raises(LocalProtocolError, match="expected receive_websocket_open for WebSocket 1 before its messages"):
        e.receive_websocket_messages(1, ["2"], 0.1)
    with pytest.raises(LocalProtocolError, match="expected the id of the WebSocket this session opened, got 7"):
        e.receive_websocket_messages(7, ["2"], 0.1)
