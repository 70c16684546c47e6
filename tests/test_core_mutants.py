"""Cases a mutation tester showed no test pinned down (mutmut over the core: the codecs, the session, ...).

Each test names the behaviour it guards; benchmarks/RESULTS.md has the counts before and after.
"""

from __future__ import annotations

import json

import pytest
from test_session import BASE, POST_HEADERS, T, connected, on_websocket, open_packet, progress, session

from plabs_proto.errors import (
    HandshakeError,
    LocalProtocolError,
    NetworkError,
    RemoteProtocolError,
    ResponseError,
)
from plabs_proto.events import (
    AnswerFinished,
    Closed,
    HTTPRequest,
    TextDelta,
    TransportSwitched,
    WebSocketClose,
    WebSocketConnect,
    WebSocketSend,
)
from plabs_proto.labs import engineio, socketio
from plabs_proto.labs.answer import CumulativeFrameReader, normalize_messages
from plabs_proto.labs.session import LabsSession
from plabs_proto.state import SessionState
from plabs_proto.wire.websocket import Utf8Text

# -- engineio -------------------------------------------------------------------------------------------


def test_encode_payload_of_nothing_says_so() -> None:
    with pytest.raises(LocalProtocolError, match=r"^expected at least one packet in a polling payload, got none$"):
        engineio.encode_payload([])


def test_open_packet_messages_say_what_arrived() -> None:
    with pytest.raises(RemoteProtocolError, match=r"^expected JSON data in the Engine\.IO open packet, got none$"):
        engineio.parse_open_packet(None)
    with pytest.raises(RemoteProtocolError, match=r"^expected JSON text in the Engine\.IO open packet, got bytes$"):
        engineio.parse_open_packet(b'{"sid":"x"}')  # type: ignore[arg-type]


def test_open_packet_takes_the_smallest_positive_interval() -> None:
    info = engineio.parse_open_packet('{"sid":"x","pingInterval":1,"pingTimeout":1,"maxPayload":1}')
    assert (info.ping_interval, info.ping_timeout, info.max_payload) == (1, 1, 1)
    with pytest.raises(RemoteProtocolError, match=r"expected an integer 'pingInterval' in 1\.\.2147483647"):
        engineio.parse_open_packet('{"sid":"x","pingInterval":0}')


def test_legacy_payload_with_a_lone_surrogate_is_read_not_a_unicode_error() -> None:
    """v3 lengths count UTF-16 code units; a lone surrogate is one unit and must not raise."""
    assert engineio.decode_payload("2:4\ud800") == [engineio.Packet(engineio.PacketType.MESSAGE, "\ud800")]
    assert engineio.decode_payload("3:4\U0001f600") == [engineio.Packet(engineio.PacketType.MESSAGE, "\U0001f600")]


# -- socketio -------------------------------------------------------------------------------------------


def test_error_excerpts_show_sixty_characters_whole() -> None:
    sixty = "9" + "x" * 59
    with pytest.raises(RemoteProtocolError) as info:
        socketio.decode_packet(sixty)
    assert str(info.value).endswith(repr(sixty))
    with pytest.raises(RemoteProtocolError) as info:
        socketio.decode_packet(sixty + "y")
    assert str(info.value).endswith(f"{sixty!r}... (61 chars)")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_json_constants_are_refused(constant: str) -> None:
    with pytest.raises(RemoteProtocolError, match="invalid payload"):
        socketio.decode_packet(f'2["x",{constant}]')
    with pytest.raises(ValueError, match=f"^{constant} is not JSON$"):
        socketio._decoder.decode(constant)


def test_too_deep_binary_data_is_a_local_error_with_a_message() -> None:
    data: object = [b"x"]
    for _ in range(100_000):
        data = [data]
    packet = socketio.Packet(socketio.PacketType.EVENT, data=["x", data])
    with pytest.raises(LocalProtocolError, match=r"^expected packet data of reasonable depth, got too deep nesting$"):
        socketio.encode_binary_packet(packet)


def test_decoder_reset_drops_buffers_and_decodes_again() -> None:
    decoder = socketio.PacketDecoder()
    assert decoder.feed('51-["x",{"_placeholder":true,"num":0}]') is None
    decoder.reset()
    assert decoder.awaiting_attachments == 0
    assert decoder.feed('51-["y",{"_placeholder":true,"num":0}]') is None
    packet = decoder.feed(b"\x01\x02")
    assert packet is not None and packet.data == ["y", b"\x01\x02"]


# -- labs -----------------------------------------------------------------------------------------------


def test_a_text_part_with_a_wrong_text_says_what_it_got() -> None:
    with pytest.raises(LocalProtocolError, match=r"expected 'text' to be a str in a text part, got int: 5$"):
        normalize_messages([{"role": "user", "content": [{"type": "text", "text": 5}]}])


def frame(output: str, tail: str = "}]") -> str:
    return '42["x",{"output":' + json.dumps(output) + tail


@pytest.mark.parametrize("tail", [
    ',"b":1}]X',  # junk after the array: not JSON
    ',"b":1}X]',  # junk between the object and the bracket
    ',"b":1}\x0c]',  # a form feed is not JSON white space
    ',"b":1} {"c":2}]',  # two objects
])
def test_tails_that_are_not_json_step_aside(tail: str) -> None:
    reader = CumulativeFrameReader()
    reader.read(frame("a"), 1)
    text = frame("ab", tail)
    assert reader.read(text, 1) is None
    assert reader.read_bytes(text.encode(), 1) is None


@pytest.mark.parametrize("tail", ['}]\n ', ',"b":1}\n]', ',"b":1} \t]\r\n'])
def test_json_white_space_around_the_tail_takes_the_prefix_path(tail: str) -> None:
    reader = CumulativeFrameReader()
    reader.read(frame("a"), 1)
    text = frame("ab", tail)
    expected = ("x", json.loads(text[2:])[1])
    assert reader.read(text, 1) == expected
    assert reader.read_bytes(frame("abc", tail).encode(), 1) == ("x", json.loads(frame("abc", tail)[2:])[1])


def test_bytes_path_needs_the_whole_previous_prefix() -> None:
    """A frame as long as the previous one but with another output is not an extension."""
    reader = CumulativeFrameReader()
    reader.read(frame("abc"), 1)
    changed = frame("abd" + "ef")
    assert reader.read_bytes(changed.encode(), 1) is None
    assert reader.read(changed, 1) == ("x", {"output": "abdef"})


@pytest.mark.parametrize("pair", ["\ud800\udc00", "\udbff\udfff", "\ud83d\ude00"])
def test_split_pair_at_the_ends_of_the_low_surrogate_range(pair: str) -> None:
    """U+10000 and U+10FFFF: the low halves \\udc00 and \\udfff are the edges of the guard's range."""
    high_only = '42["x",{"output":' + json.dumps("a" + pair[0]) + "}]"
    both = '42["x",{"output":' + json.dumps("a" + pair) + "}]"
    reader = CumulativeFrameReader()
    reader.read(high_only, 1)
    assert reader.read(both, 1) is None
    reader = CumulativeFrameReader()
    reader.read('42["x",{"output":"a"}]', 1)
    reader.read_bytes(high_only.encode(), 1)
    assert reader.read_bytes(both.encode(), 1) is None


def test_bytes_path_after_a_text_with_a_raw_lone_surrogate_does_not_raise() -> None:
    """The text path may see a lone surrogate as a character (not an escape); the bytes path then
    compares UTF-8 bytes against it and must step aside, not raise UnicodeEncodeError."""
    reader = CumulativeFrameReader()
    assert reader.read('42["x",{"output":"a\ud800"}]', 1) == ("x", {"output": "a\ud800"})
    assert reader.read_bytes(b'42["x",{"output":"ab"}]', 1) is None


# -- session (the message level) ------------------------------------------------------------------------


def test_a_utf8_ping_restarts_the_heartbeat_at_its_own_time() -> None:
    s, ws_id = on_websocket()
    s.receive_websocket_utf8(ws_id, Utf8Text(b"2"), 7.0)
    assert s.transmit() == [WebSocketSend(ws_id=ws_id, data="3")]
    assert s.get_timer() == 7.0 + 45.0


def test_the_server_closing_a_websocket_session_with_a_query_waiting_is_a_clean_end() -> None:
    """A query made while connecting is not streaming yet: the close is the end, not a cut answer."""
    s = session("websocket")
    s.connect(0.0)
    s.query("hi", model="sonar", now=0.0)
    (connect,) = s.transmit()
    assert isinstance(connect, WebSocketConnect)
    s.receive_websocket_open(connect.ws_id, 0.1)
    s.receive_websocket_close(connect.ws_id, 1000, 0.2)
    assert s.events() == [Closed(reason="WebSocket closed by the server (1000)")]
    assert s.state is SessionState.CLOSED


def test_a_connection_ended_without_a_close_frame_says_what_was_expected() -> None:
    s, ws_id = on_websocket()
    with pytest.raises(RemoteProtocolError) as info:
        s.receive_websocket_close(ws_id, None, 3.0)
    assert str(info.value) == "expected the WebSocket connection to stay open, but the server closed it"
    s, ws_id = on_websocket()
    s.query("hi", model="sonar", now=2.0)
    s.receive_websocket_message(ws_id, progress("Hel"), 2.5)
    with pytest.raises(RemoteProtocolError) as info:
        s.receive_websocket_close(ws_id, None, 3.0)
    assert str(info.value) == (
        "expected the rest of the answer, but the server closed the connection after 3 characters of it"
    )
    assert info.value.partial_text == "Hel"


def test_the_upgrade_websocket_closed_before_the_switch_fails_the_session() -> None:
    """Polling still carries the session, but the upgrade it waits for is gone: an error, not an end."""
    s = session("upgrade")
    s.connect(0.0)
    s.transmit()
    s.receive_http_response(1, 200, [], open_packet().encode(), 0.5)
    post, ws = s.transmit()
    assert isinstance(post, HTTPRequest) and isinstance(ws, WebSocketConnect)
    s.receive_websocket_open(ws.ws_id, 0.6)
    with pytest.raises(RemoteProtocolError) as info:
        s.receive_websocket_close(ws.ws_id, 1000, 0.7, "bye")
    assert str(info.value) == "expected the WebSocket to stay open for the session, but the server closed it (1000 bye)"
    assert s.state is SessionState.ERROR and s.events() == []


def test_a_refused_websocket_handshake_in_full() -> None:
    """The message names status and reason; the excerpt is the body; the WebSocket needs no close."""
    s = session("websocket")
    s.connect(0.0)
    s.transmit()
    with pytest.raises(HandshakeError) as info:
        s.receive_websocket_refused(1, 403, [], b"forbidden", 0.1)
    assert str(info.value) == (
        "the server refused the WebSocket upgrade: expected HTTP 101, got HTTP 403: 'forbidden'"
    )
    assert (info.value.status, info.value.body_excerpt, info.value.cloudflare) == (403, "forbidden", False)
    assert s.state is SessionState.ERROR
    assert s.transmit() == []  # it never opened: nothing to close
    s = session("websocket")
    s.connect(0.0)
    s.transmit()
    with pytest.raises(HandshakeError, match=r"expected HTTP 101, got HTTP 503 Service Unavailable: ''$"):
        s.receive_websocket_refused(1, 503, [], b"", 0.1, reason="Service Unavailable")


def test_a_refused_websocket_handshake_from_cloudflare_is_told_by_its_header() -> None:
    s = session("websocket")
    s.connect(0.0)
    s.transmit()
    with pytest.raises(HandshakeError, match=r"^Cloudflare blocked the WebSocket upgrade") as info:
        s.receive_websocket_refused(1, 403, [("CF-Mitigated", "challenge")], b"", 0.1)
    assert info.value.cloudflare


def test_a_failed_websocket_names_it_and_the_text_so_far() -> None:
    s, ws_id = on_websocket()
    s.query("hi", model="sonar", now=2.0)
    s.receive_websocket_message(ws_id, progress("Hel"), 3.0)
    with pytest.raises(NetworkError) as info:
        s.receive_transport_error(ws_id, "connection reset", 4.0)
    assert str(info.value) == (
        "expected the WebSocket to labs.test port 80 to go through, but it failed below HTTP: connection reset "
        "(after 3 characters of the answer)"
    )
    s, ws_id = on_websocket()
    with pytest.raises(NetworkError) as info:
        s.receive_transport_error(ws_id, "connection reset", 4.0)
    assert str(info.value) == (
        "expected the WebSocket to labs.test port 80 to go through, but it failed below HTTP: connection reset"
    )


def test_a_refused_handshake_shows_200_characters_of_its_body() -> None:
    s = session("polling")
    s.connect(0.0)
    s.transmit()
    body = "a" * 150 + " " + "b" * 150
    with pytest.raises(HandshakeError) as info:
        s.receive_http_response(1, 500, [], body.encode(), 0.5)
    excerpt = info.value.body_excerpt
    assert len(excerpt) == 200 and excerpt.startswith("a" * 150 + " bbb")
    assert str(info.value) == (
        f"the server refused the Engine.IO handshake (polling GET): expected HTTP 200, got HTTP 500: "
        f"{info.value.body_excerpt!r}"
    )


def test_a_refused_long_polling_get_is_a_handshake_error() -> None:
    s, _ = connected("polling")
    with pytest.raises(HandshakeError) as info:
        s.receive_http_response(4, 400, [], b'{"code":1,"message":"Session ID unknown"}', 2.0, reason="Bad Request")
    assert str(info.value) == (
        "the server refused a long-polling GET: expected HTTP 200, got HTTP 400 Bad Request "
        "(Engine.IO error 1: Session ID unknown): '{\"code\":1,\"message\":\"Session ID unknown\"}'"
    )
    assert info.value.status == 400 and s.state is SessionState.ERROR


def upgrade_opened() -> tuple[LabsSession, HTTPRequest, WebSocketConnect]:
    """An upgrade session after its handshake GET: the CONNECT POST and the WebSocket are out."""
    s = session("upgrade")
    s.connect(0.0)
    s.transmit()
    s.receive_http_response(1, 200, [], open_packet().encode(), 0.5)
    post, ws = s.transmit()
    assert isinstance(post, HTTPRequest) and isinstance(ws, WebSocketConnect)
    return s, post, ws


@pytest.mark.parametrize(
    ("status", "body", "error", "message"),
    [
        (400, b"no", HandshakeError,
         "the server refused the Socket.IO CONNECT POST: expected HTTP 200, got HTTP 400: 'no'"),
        (413, b"", HandshakeError,
         "the server refused the Socket.IO CONNECT POST (413: the body was larger than the server accepts, its "
         "maxPayload being 1000000 bytes): expected HTTP 200, got HTTP 413: ''"),
        (200, b"nope", RemoteProtocolError,
         "expected 'ok' (any case) in answer to the Socket.IO CONNECT POST, got b'nope'"),
    ],
)
def test_a_refused_connect_post_says_which_post(status: int, body: bytes, error: type[Exception], message: str) -> None:
    s, post, _ = upgrade_opened()
    with pytest.raises(error) as info:
        s.receive_http_response(post.request_id, status, [], body, 0.6)
    assert str(info.value) == message


def test_the_probe_waits_for_the_websocket_to_open() -> None:
    s, post, ws = upgrade_opened()
    s.receive_http_response(post.request_id, 200, [], b"ok", 0.6)
    assert s.transmit() == []
    s.receive_websocket_open(ws.ws_id, 0.7)
    assert s.transmit() == [WebSocketSend(ws_id=ws.ws_id, data="2probe"), TransportSwitched(ws_id=ws.ws_id),
                            WebSocketSend(ws_id=ws.ws_id, data="5")]


def test_a_pong_queued_during_the_upgrade_follows_the_probe() -> None:
    s = session("upgrade")
    s.connect(0.0)
    s.transmit()
    s.receive_http_response(1, 200, [], (open_packet() + "\x1e2").encode(), 0.5)
    post, ws = s.transmit()
    assert isinstance(post, HTTPRequest) and isinstance(ws, WebSocketConnect)
    s.receive_websocket_open(ws.ws_id, 0.6)
    s.receive_http_response(post.request_id, 200, [], b"ok", 0.7)
    assert s.transmit() == [WebSocketSend(ws_id=ws.ws_id, data="2probe"), TransportSwitched(ws_id=ws.ws_id),
                            WebSocketSend(ws_id=ws.ws_id, data="5"), WebSocketSend(ws_id=ws.ws_id, data="3")]


def test_close_before_the_websocket_opens_only_closes_it() -> None:
    """Nothing can go over a WebSocket not open yet, and there is no Engine.IO session to POST to."""
    s = session("websocket")
    s.connect(0.0)
    (connect,) = s.transmit()
    assert isinstance(connect, WebSocketConnect)
    s.close(0.1)
    assert s.transmit() == [WebSocketClose(ws_id=connect.ws_id)]
    s = session("polling")
    s.connect(0.0)
    s.transmit()
    s.close(0.1)
    assert s.transmit() == []  # no sid yet: no goodbye POST
    assert s.events() == [Closed(reason="closed by the client")]


def test_close_while_the_upgrade_websocket_is_open_but_unused_posts_the_goodbye() -> None:
    s, _, ws = upgrade_opened()
    s.receive_websocket_open(ws.ws_id, 0.6)  # open, but the CONNECT POST is not answered: polling carries
    s.close(0.7)
    assert s.transmit() == [
        HTTPRequest(request_id=4, method="POST", url=f"{BASE}&transport=polling{T}&sid=E1", headers=POST_HEADERS,
                    body=b"41\x1e1"),
        WebSocketClose(ws_id=ws.ws_id),
    ]


def test_a_message_of_another_type_names_its_type() -> None:
    s, ws_id = on_websocket()
    with pytest.raises(LocalProtocolError) as info:
        s.receive_websocket_message(ws_id, 3, 3.0)  # type: ignore[arg-type]
    assert str(info.value) == "expected a WebSocket message as str (text) or bytes (binary), got int"


def test_next_event_hands_out_events_one_at_a_time() -> None:
    s, ws_id = connected("websocket")
    assert ws_id is not None and s.next_event() is None
    s.query("hi", model="sonar", now=2.0)
    s.receive_websocket_messages(ws_id, [progress("He"), progress("Hello", final=True)], 3.0)
    first, second = s.next_event(), s.next_event()
    assert first == TextDelta(text="He") and second == TextDelta(text="llo")
    assert isinstance(s.next_event(), AnswerFinished) and s.next_event() is None


@pytest.mark.parametrize("transport", ["websocket", "polling"])
def test_a_progress_event_with_a_binary_attachment_is_read(transport: str) -> None:
    """Socket.IO's binary events: the placeholder's bytes come as the next message (b64 on polling)."""
    s, ws_id = connected(transport)
    s.query("hi", model="sonar", now=2.0)
    s.transmit()
    head = '451-["sonar_query_progress",{"output":"Hi","final":false,"blob":{"_placeholder":true,"num":0}}]'
    if ws_id is not None:
        s.receive_websocket_messages(ws_id, [head], 3.0)
        assert s.events() == []
        s.receive_websocket_messages(ws_id, [b"\x00\x01"], 3.0)
    else:
        s.receive_http_response(4, 200, [], f"{head}\x1ebAAE=".encode(), 3.0)
    assert s.events() == [TextDelta(text="Hi")]
    assert s.partial_text == "Hi"


def test_a_binary_message_nobody_announced_fails_the_session() -> None:
    s, ws_id = on_websocket()
    with pytest.raises(RemoteProtocolError):
        s.receive_websocket_messages(ws_id, [b"\x00"], 3.0)
    assert s.state is SessionState.ERROR


def test_the_answer_reads_only_progress_events_of_the_query_in_flight() -> None:
    """Frames before the query went out, other events, and events with no name are not the answer."""
    s = session("websocket")
    s.connect(0.0)
    s.query("hi", model="sonar", now=0.0)  # waits for the connect ack
    s.transmit()
    s.receive_websocket_open(1, 0.1)
    s.receive_websocket_messages(1, [open_packet(), progress("stale")], 0.2)
    assert s.events() == [] and s.state is SessionState.CONNECTING
    s.receive_websocket_message(1, '40{"sid":"S1"}', 0.3)
    s.events()
    s.receive_websocket_messages(1, ['42["other_event",{"output":"no"}]', '42[5,{"output":"no"}]'], 0.4)
    assert s.events() == [] and s.partial_text == ""
    s.receive_websocket_message(1, progress("yes"), 0.5)
    assert s.events() == [TextDelta(text="yes")]


def test_a_progress_event_without_a_payload_says_so() -> None:
    s, ws_id = on_websocket()
    s.query("hi", model="sonar", now=2.0)
    with pytest.raises(RemoteProtocolError, match=r"^expected a JSON object as the progress payload, got NoneType: None$"):
        s.receive_websocket_message(ws_id, '42["sonar_query_progress"]', 3.0)


def test_reasoning_counts_as_the_first_text() -> None:
    s, ws_id = on_websocket(first_text_timeout=5.0)
    s.query("hi", model="sonar", now=2.0)
    assert s.get_timer() == 7.0
    s.receive_websocket_message(ws_id, progress("<think>hmm"), 3.0)
    assert s.get_timer() == 0.5 + 45.0  # only the heartbeat is left
    s.handle_timer(8.0)
    assert s.state is SessionState.QUERYING


@pytest.mark.parametrize("output", ["", "Hi"])
def test_an_answer_that_ends_leaves_no_query_deadline(output: str) -> None:
    """An empty answer ends without a first text: its first-text deadline goes all the same."""
    s, ws_id = on_websocket(first_text_timeout=5.0, query_timeout=10.0)
    s.query("hi", model="sonar", now=2.0)
    s.receive_websocket_message(ws_id, progress(output, final=True), 3.0)
    assert isinstance(s.events()[-1], AnswerFinished)
    assert s.get_timer() == 0.5 + 45.0
    s.handle_timer(13.0)
    assert s.state is SessionState.READY


def test_a_connect_ack_without_a_sid_shows_what_came() -> None:
    s = session("websocket")
    s.connect(0.0)
    s.transmit()
    s.receive_websocket_open(1, 0.1)
    s.receive_websocket_message(1, open_packet(), 0.2)
    with pytest.raises(RemoteProtocolError) as info:
        s.receive_websocket_message(1, "40{}", 0.3)
    assert str(info.value) == "expected a Socket.IO connect ack with a sid ('40{\"sid\":...}'), got {}"


def test_the_first_ack_connects_a_session_without_a_connect_deadline() -> None:
    s, _ = connected("websocket", connect_timeout=None)
    assert s.get_timer() == 0.5 + 45.0


def test_a_connect_error_keeps_the_servers_text() -> None:
    for packet, text in (('44{"message":"Not authorized"}', "Not authorized"), ('44"nope"', "nope")):
        s = session("websocket")
        s.connect(0.0)
        s.transmit()
        s.receive_websocket_open(1, 0.1)
        s.receive_websocket_message(1, open_packet(), 0.2)
        with pytest.raises(ResponseError) as info:
            s.receive_websocket_message(1, packet, 0.3)
        assert str(info.value) == f"the server refused the Socket.IO connection: {text}"
        assert info.value.server_text == text


def test_a_socketio_disconnect_ends_or_cuts() -> None:
    s, ws_id = on_websocket()
    s.receive_websocket_message(ws_id, "41", 3.0)
    assert s.events() == [Closed(reason="Socket.IO namespace disconnected by the server")]
    assert s.state is SessionState.CLOSED
    s, ws_id = on_websocket()
    s.query("hi", model="sonar", now=2.0)
    s.receive_websocket_message(ws_id, progress("Hel"), 2.5)
    with pytest.raises(RemoteProtocolError) as info:
        s.receive_websocket_message(ws_id, "41", 3.0)
    assert str(info.value) == "expected the rest of the answer, got a Socket.IO disconnect after 3 characters of it"
    # A query still waiting for the connect ack was not answered yet: nothing is cut.
    s = session("websocket")
    s.connect(0.0)
    s.query("hi", model="sonar", now=0.0)
    s.transmit()
    s.receive_websocket_open(1, 0.1)
    s.receive_websocket_messages(1, [open_packet(), "41"], 0.2)
    assert s.events() == [Closed(reason="Socket.IO namespace disconnected by the server")]


def test_messages_after_a_close_in_the_same_read_are_not_read() -> None:
    s, ws_id = on_websocket()
    s.receive_websocket_messages(ws_id, ["1", "not a packet", Utf8Text(b"\xff")], 3.0)
    assert s.state is SessionState.CLOSED


def test_fast_frames_in_one_read_are_all_read() -> None:
    s, ws_id = on_websocket()
    s.query("hi", model="sonar", now=2.0)
    frames = [Utf8Text(progress(text).encode()) for text in ("He", "Hel", "Hell")]
    s.receive_websocket_messages(ws_id, [*frames, Utf8Text(progress("Hello", final=True).encode())], 3.0)
    events = s.events()
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["He", "l", "l", "o"]
    assert isinstance(events[-1], AnswerFinished)


@pytest.mark.parametrize("kind", ["str", "utf8"])
def test_the_receive_limit_is_inclusive_for_text(kind: str) -> None:
    noise = '42["noise","' + "x" * 200 + '"]'
    s, ws_id = connected("websocket", max_message_size=len(noise))
    assert ws_id is not None

    def message(text: str) -> str | Utf8Text:
        return text if kind == "str" else Utf8Text(text.encode())

    s.receive_websocket_messages(ws_id, [message(noise)], 3.0)
    assert s.state is SessionState.READY
    with pytest.raises(RemoteProtocolError) as info:
        s.receive_websocket_messages(ws_id, [message(noise[:-2] + 'x"]')], 3.0)
    assert str(info.value) == (
        f"expected a WebSocket message of at most {len(noise)} bytes (max_message_size), got one of {len(noise) + 1}"
    )


def test_the_receive_limit_is_inclusive_for_binary() -> None:
    head = '451-["noise",{"_placeholder":true,"num":0}]'
    s, ws_id = on_websocket(max_message_size=100)
    s.receive_websocket_messages(ws_id, [head, b"x" * 100], 3.0)
    s.receive_websocket_messages(ws_id, [head], 3.0)
    s.receive_websocket_messages(ws_id, [b"x" * 200], 3.0, limited=True)  # the carrier measured it
    s.receive_websocket_messages(ws_id, [head], 3.0)
    with pytest.raises(RemoteProtocolError) as info:
        s.receive_websocket_messages(ws_id, [b"x" * 101], 3.0)
    assert str(info.value) == "expected a WebSocket message of at most 100 bytes (max_message_size), got one of 101"


@pytest.mark.parametrize("querying", [False, True])
@pytest.mark.parametrize("kind", ["str", "utf8"])
def test_text_while_a_binary_attachment_is_awaited_is_refused(querying: bool, kind: str) -> None:
    s, ws_id = on_websocket()
    if querying:
        s.query("hi", model="sonar", now=2.0)
    s.receive_websocket_messages(ws_id, ['451-["noise",{"_placeholder":true,"num":0}]'], 3.0)
    frame = progress("Hi")
    with pytest.raises(RemoteProtocolError, match="got plaintext data when reconstructing a packet"):
        s.receive_websocket_messages(ws_id, [frame if kind == "str" else Utf8Text(frame.encode())], 3.0)


def test_a_frame_in_place_of_the_probes_answer_is_refused() -> None:
    """A query waits (made while connecting); what comes before '3probe' is not its answer."""
    s, post, ws = upgrade_opened()
    s.query("hi", model="sonar", now=0.5)
    s.receive_websocket_open(ws.ws_id, 0.6)
    s.receive_http_response(post.request_id, 200, [], b"ok", 0.7)
    frame = progress("x" * 70)
    with pytest.raises(RemoteProtocolError) as info:
        s.receive_websocket_messages(ws.ws_id, [Utf8Text(frame.encode())], 0.8)
    assert str(info.value) == f"expected '3probe' in answer to the upgrade probe, got {frame[:60]!r}"


def test_websocket_calls_check_the_id_and_the_order() -> None:
    s = session("websocket")
    s.connect(0.0)
    s.transmit()
    with pytest.raises(LocalProtocolError) as info:
        s.receive_websocket_message(7, "2", 0.1)
    assert str(info.value) == "expected the id of the WebSocket this session opened, got 7"
    with pytest.raises(LocalProtocolError) as info:
        s.receive_websocket_message(1, "2", 0.1)
    assert str(info.value) == "expected receive_websocket_open for WebSocket 1 before its messages, got a message first"
    s.receive_websocket_open(1, 0.1)
    with pytest.raises(LocalProtocolError) as info:
        s.receive_websocket_open(1, 0.2)
    assert str(info.value) == "expected one receive_websocket_open for WebSocket 1, got a second one"
    assert s.state is SessionState.CONNECTING


def test_a_query_while_one_streams_says_why_and_the_version_is_sent() -> None:
    s, _ = on_websocket(version="9.9")
    s.query("hi", model="sonar", now=2.0)
    (send,) = s.transmit()
    assert isinstance(send, WebSocketSend) and '"version":"9.9"' in str(send.data)
    with pytest.raises(LocalProtocolError) as info:
        s.query("again", model="sonar", now=2.5)
    assert str(info.value) == (
        "cannot start a query while another one is still streaming on this session: queries run one after another"
    )


def test_a_polling_packet_of_exactly_the_limit_is_read_and_noops_are_skipped() -> None:
    s, _ = connected("polling", max_message_size=50)
    event = '2["noise","' + "x" * 37 + '"]'  # 50 characters
    s.receive_http_response(4, 200, [], ("4" + event + "\x1e6" + "y" * 80).encode(), 2.0)
    assert s.state is SessionState.READY
    (get,) = s.transmit()
    assert isinstance(get, HTTPRequest)
    with pytest.raises(RemoteProtocolError) as info:
        s.receive_http_response(get.request_id, 200, [], ("4" + event + " ").encode(), 3.0)
    assert str(info.value) == (
        "expected Engine.IO packets of at most 50 bytes (max_message_size) in a long-polling GET, got one of 51"
    )


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ("4", "unknown packet type: expected a digit 0-6 first, got ''"),  # a message with nothing in it
        ("0", "expected a JSON object in the Engine.IO open packet, got ''"),  # an open packet with nothing
    ],
)
def test_empty_packets_say_they_are_empty(message: str, error: str) -> None:
    s = session("websocket")
    s.connect(0.0)
    s.transmit()
    s.receive_websocket_open(1, 0.1)
    with pytest.raises(RemoteProtocolError) as info:
        s.receive_websocket_message(1, message, 0.2)
    assert str(info.value) == error


def test_a_second_open_packet_is_shown() -> None:
    s, ws_id = on_websocket()
    with pytest.raises(RemoteProtocolError) as info:
        s.receive_websocket_message(ws_id, open_packet("E2"), 3.0)
    assert str(info.value) == f"expected one Engine.IO open packet, got a second one: {open_packet('E2')[1:]!r}"


def test_a_post_answered_with_a_long_body_shows_sixty_bytes() -> None:
    s, post, _ = upgrade_opened()
    with pytest.raises(RemoteProtocolError) as info:
        s.receive_http_response(post.request_id, 200, [], b"n" * 70, 0.6)
    assert str(info.value) == f"expected 'ok' (any case) in answer to the Socket.IO CONNECT POST, got {b'n' * 60!r}"


def test_a_packet_only_clients_send_is_named() -> None:
    s, ws_id = on_websocket()
    with pytest.raises(RemoteProtocolError) as info:
        s.receive_websocket_message(ws_id, "5x", 3.0)
    assert str(info.value) == (
        "expected an Engine.IO packet a server sends (open, close, ping, message, noop), got upgrade 'x'"
    )


def test_an_engineio_close_before_the_query_went_out_is_a_clean_end() -> None:
    s = session("websocket")
    s.connect(0.0)
    s.query("hi", model="sonar", now=0.0)  # waits for the connect ack
    s.transmit()
    s.receive_websocket_open(1, 0.1)
    s.receive_websocket_messages(1, [open_packet(), "1"], 0.2)
    assert s.events() == [Closed(reason="Engine.IO session closed by the server")]
    assert s.state is SessionState.CLOSED


def test_nothing_goes_on_the_upgrade_websocket_before_the_probe() -> None:
    """A ping the server sends on the new WebSocket early is answered after the probe and the switch."""
    s, post, ws = upgrade_opened()
    s.receive_websocket_open(ws.ws_id, 0.6)
    s.receive_websocket_message(ws.ws_id, "2", 0.65)
    assert s.transmit() == []
    s.receive_http_response(post.request_id, 200, [], b"ok", 0.7)
    assert s.transmit() == [WebSocketSend(ws_id=ws.ws_id, data="2probe"), TransportSwitched(ws_id=ws.ws_id),
                            WebSocketSend(ws_id=ws.ws_id, data="5"), WebSocketSend(ws_id=ws.ws_id, data="3")]


def handshake_error(body: str) -> str:
    """The message of the error a polling handshake answered 200 with ``body`` raises."""
    s = session("polling")
    s.connect(0.0)
    s.transmit()
    with pytest.raises(RemoteProtocolError) as info:
        s.receive_http_response(1, 200, [], body.encode(), 0.5)
    return str(info.value)


@pytest.mark.parametrize("digit", "123456789")
def test_a_handshake_body_starting_with_a_digit_is_read_as_a_payload(digit: str) -> None:
    """Any digit may start a payload (v3 bodies start with a length): the payload decides."""
    body = digit + "x" * 70
    if digit in "789":
        assert handshake_error(body) == (
            "bad packet #1 of 1 in payload: expected an Engine.IO packet starting with a type digit 0-6 or 'b', "
            f"got {body[:60]!r}... (71 chars)"
        )
    else:
        assert handshake_error(body) == f"expected the Engine.IO open packet first in the handshake GET, got {body[:60]!r}"
    assert handshake_error(" 9").startswith("bad packet #1 of 1 in payload")  # white space first is not the hint


def test_a_handshake_body_that_is_not_engineio_shows_what_came() -> None:
    assert handshake_error("hello") == "expected the Engine.IO open packet '0{...}' from the handshake GET, got 'hello'"
    assert handshake_error("x" * 70) == (
        f"expected the Engine.IO open packet '0{{...}}' from the handshake GET, got {'x' * 60!r}"
    )


@pytest.mark.parametrize("kind", ["str", "utf8"])
def test_text_while_an_attachment_is_awaited_is_refused_on_the_fast_path_too(kind: str) -> None:
    """Mid-answer, a frame that shares the previous frame's prefix still waits its turn behind the attachment."""
    s, ws_id = on_websocket()
    s.query("hi", model="sonar", now=2.0)

    def message(text: str) -> str | Utf8Text:
        return text if kind == "str" else Utf8Text(text.encode())

    s.receive_websocket_messages(ws_id, [message(progress("He"))], 3.0)
    s.receive_websocket_messages(ws_id, ['451-["noise",{"_placeholder":true,"num":0}]'], 3.0)
    with pytest.raises(RemoteProtocolError, match="got plaintext data when reconstructing a packet"):
        s.receive_websocket_messages(ws_id, [message(progress("Hel"))], 3.0)
    assert s.partial_text == "He"


def test_an_empty_message_packet_on_polling_says_it_is_empty() -> None:
    s, _ = connected("polling")
    with pytest.raises(RemoteProtocolError) as info:
        s.receive_http_response(4, 200, [], b"4", 2.0)
    assert str(info.value) == "unknown packet type: expected a digit 0-6 first, got ''"
