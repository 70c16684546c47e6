"""LabsSession alone, at the message level: no HTTP or WebSocket bytes, no byte stack.

Every test plays the server by hand: it reads the session's instructions from
``transmit()`` and answers with ``receive_*`` at exact ``now`` values.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plabs_proto.config import SessionConfig
from plabs_proto.errors import (
    HandshakeError,
    LabsError,
    LabsTimeout,
    LocalProtocolError,
    NetworkError,
    RemoteProtocolError,
    ResponseError,
)
from plabs_proto.events import (
    AnswerFinished,
    Closed,
    Connected,
    HTTPRequest,
    SessionInstruction,
    TextDelta,
    TransportSwitched,
    WebSocketClose,
    WebSocketConnect,
    WebSocketSend,
)
from plabs_proto.labs.session import LabsSession
from plabs_proto.state import SessionState
from plabs_proto.wire.websocket import Utf8Text

BASE = "http://labs.test/socket.io/?EIO=4"
T = "&t=d82c07cd"  # the cache buster random.Random(0) gives
ORIGIN = (("Origin", "https://labs.perplexity.ai"), ("Referer", "https://labs.perplexity.ai/"))
POST_HEADERS = (*ORIGIN, ("Content-Type", "text/plain;charset=UTF-8"))
AUTH = '40{"jwt":"anonymous-ask-user"}'


def open_packet(sid: str = "E1", *, interval: int = 25000, timeout: int = 20000, max_payload: int = 1000000,
                upgrades: tuple[str, ...] = ("websocket",)) -> str:
    fields = {"sid": sid, "upgrades": list(upgrades), "pingInterval": interval, "pingTimeout": timeout,
              "maxPayload": max_payload}
    return "0" + json.dumps(fields, separators=(",", ":"))


def progress(output: str, *, final: bool = False) -> str:
    payload: dict[str, Any] = {"output": output, "final": final}
    if final:
        payload["status"] = "completed"
    return "42" + json.dumps(["sonar_query_progress", payload], separators=(",", ":"))


def session(transport: str, **config: Any) -> LabsSession:
    return LabsSession(SessionConfig(server="http://labs.test", transport=transport, **config), rng=random.Random(0))


def connected(transport: str, **config: Any) -> tuple[LabsSession, int | None]:
    """A session through its handshake at now=1.0; the id of its WebSocket (None on polling)."""
    s = session(transport, **config)
    s.connect(0.0)
    (first,) = s.transmit()
    if transport == "websocket":
        assert isinstance(first, WebSocketConnect)
        s.receive_websocket_open(first.ws_id, 0.5)
        s.receive_websocket_message(first.ws_id, open_packet(), 0.5)
        s.receive_websocket_message(first.ws_id, '40{"sid":"S1"}', 1.0)
        assert s.transmit() == [WebSocketSend(ws_id=first.ws_id, data=AUTH)]
        ws_id: int | None = first.ws_id
    else:
        assert isinstance(first, HTTPRequest)
        s.receive_http_response(first.request_id, 200, [], open_packet().encode(), 0.5)
        post, second = s.transmit()
        assert isinstance(post, HTTPRequest)
        s.receive_http_response(post.request_id, 200, [], b"ok", 0.6)
        if transport == "upgrade":
            assert isinstance(second, WebSocketConnect)
            s.receive_websocket_open(second.ws_id, 0.6)
            s.receive_websocket_message(second.ws_id, "3probe", 0.7)
            s.receive_websocket_message(second.ws_id, '40{"sid":"S1"}', 1.0)
            assert s.transmit() == [WebSocketSend(ws_id=second.ws_id, data="2probe"),
                                    TransportSwitched(ws_id=second.ws_id),
                                    WebSocketSend(ws_id=second.ws_id, data="5")]
            ws_id = second.ws_id
        else:
            assert isinstance(second, HTTPRequest)
            s.transmit()
            s.receive_http_response(second.request_id, 200, [], b'40{"sid":"S1"}', 1.0)
            assert s.transmit() == [HTTPRequest(request_id=4, method="GET", url=f"{BASE}&transport=polling{T}&sid=E1",
                                                headers=ORIGIN, body=b"")]
            ws_id = None
    assert s.events() == [Connected(engine_sid="E1", socket_sid="S1", transport=transport)]
    assert s.state is SessionState.READY
    return s, ws_id


# -- handshakes -----------------------------------------------------------------------------------


def on_websocket(**config: Any) -> tuple[LabsSession, int]:
    """:func:`connected` on the WebSocket transport, with its WebSocket's id."""
    s, ws_id = connected("websocket", **config)
    assert ws_id is not None
    return s, ws_id


def test_upgrade_handshake_instructions() -> None:
    s = session("upgrade")
    s.connect(0.0)
    assert s.transmit() == [HTTPRequest(request_id=1, method="GET", url=f"{BASE}&transport=polling{T}",
                                        headers=ORIGIN, body=b"")]
    s.receive_http_response(1, 200, [("Content-Type", "text/plain")], open_packet().encode(), 0.5)
    # The CONNECT POST and the WebSocket go out together, as the byte level's second connection wants.
    assert s.transmit() == [
        HTTPRequest(request_id=2, method="POST", url=f"{BASE}&transport=polling{T}&sid=E1",
                    headers=POST_HEADERS, body=AUTH.encode()),
        WebSocketConnect(ws_id=3, url="ws://labs.test/socket.io/?EIO=4&transport=websocket&sid=E1", headers=ORIGIN),
    ]
    s.receive_websocket_open(3, 0.6)
    assert s.transmit() == []  # the probe waits for the CONNECT POST's answer
    s.receive_http_response(2, 200, [], b"ok", 0.7)
    # The probe carries the session from here on: the session says so (the carrier may let polling's
    # connection go).
    assert s.transmit() == [WebSocketSend(ws_id=3, data="2probe"), TransportSwitched(ws_id=3),
                            WebSocketSend(ws_id=3, data="5")]
    s.receive_websocket_message(3, "3probe", 0.8)
    s.receive_websocket_message(3, '40{"sid":"S1"}', 0.9)
    assert s.events() == [Connected(engine_sid="E1", socket_sid="S1", transport="upgrade")]
    assert s.state is SessionState.READY and s.get_timer() == 0.5 + 45.0


def test_https_server_gives_wss() -> None:
    s = LabsSession(SessionConfig(server="https://labs.test:8443/base", transport="websocket"), rng=random.Random(0))
    s.connect(0.0)
    (connect,) = s.transmit()
    assert connect == WebSocketConnect(
        ws_id=1, url="wss://labs.test:8443/base/socket.io/?EIO=4&transport=websocket", headers=ORIGIN
    )


@pytest.mark.parametrize("transport", ["upgrade", "websocket", "polling"])
def test_query_streams_the_answer(transport: str) -> None:
    s, ws_id = connected(transport)
    s.query("hi", model="sonar", now=2.0)
    request = ('42["perplexity_labs",{"version":"2.18","source":"default","model":"sonar",'
               '"messages":[{"role":"user","content":"hi"}]}]')
    frames = [progress("Hel"), progress("Hello"), progress("Hello!", final=True)]
    if ws_id is None:
        # Polling: the query goes by POST (id 5) while the poll GET (id 4) is out; the poll's answer
        # brings every frame in one body.
        assert s.transmit() == [HTTPRequest(request_id=5, method="POST", url=f"{BASE}&transport=polling{T}&sid=E1",
                                            headers=POST_HEADERS, body=request.encode(), lane=1)]
        s.receive_http_response(4, 200, [], "\x1e".join(frames).encode(), 3.0)
        assert [x.method for x in s.transmit() if isinstance(x, HTTPRequest)] == ["GET"]  # the next poll
    else:
        assert s.transmit() == [WebSocketSend(ws_id=ws_id, data=request)]
        for i, frame in enumerate(frames):
            s.receive_websocket_message(ws_id, frame, 3.0 + i)
    evs = s.events()
    assert [e.text for e in evs if isinstance(e, TextDelta)] == ["Hel", "lo", "!"]
    assert isinstance(evs[-1], AnswerFinished) and evs[-1].text == "Hello!"
    assert s.state is SessionState.READY and s.partial_text == ""


def test_query_waits_for_the_connect_ack_then_follows_the_probe() -> None:
    s = session("upgrade")
    s.connect(0.0)
    s.query("hi", model="sonar", now=0.1)
    assert s.state is SessionState.CONNECTING
    s.transmit()
    s.receive_http_response(1, 200, [], open_packet().encode(), 0.5)
    s.transmit()
    s.receive_http_response(2, 200, [], b"ok", 0.6)
    s.receive_websocket_open(3, 0.6)
    s.receive_websocket_message(3, "3probe", 0.7)
    s.receive_websocket_message(3, '40{"sid":"S1"}', 0.8)
    out = s.transmit()
    assert [x.data for x in out if isinstance(x, WebSocketSend)][:2] == ["2probe", "5"]
    assert str(out[-1].data).startswith('42["perplexity_labs"') if isinstance(out[-1], WebSocketSend) else False
    assert s.state is SessionState.QUERYING


def test_no_upgrade_offered_stays_on_polling() -> None:
    s = session("upgrade")
    s.connect(0.0)
    s.transmit()
    s.receive_http_response(1, 200, [], open_packet(upgrades=()).encode(), 0.5)
    out = s.transmit()
    assert [(x.method, x.body) for x in out if isinstance(x, HTTPRequest)] == [("POST", AUTH.encode()), ("GET", b"")]
    assert s.transport == "polling"


# -- heartbeats and deadlines -------------------------------------------------------------------


def test_one_pong_answers_a_flood_of_pings() -> None:
    s, ws_id = on_websocket()
    for i in range(5):
        s.receive_websocket_message(ws_id, "2", 10.0 + i)
    assert s.transmit() == [WebSocketSend(ws_id=ws_id, data="3")]
    assert s.get_timer() == 14.0 + 45.0  # the last ping moved the heartbeat deadline
    s.receive_websocket_message(ws_id, "2", 20.0)
    assert s.transmit() == [WebSocketSend(ws_id=ws_id, data="3")]


def test_polling_pings_in_one_body_get_one_pong_post() -> None:
    s, _ = connected("polling")
    s.receive_http_response(4, 200, [], b"2\x1e2\x1e6", 2.0)
    posts = [x for x in s.transmit() if isinstance(x, HTTPRequest) and x.method == "POST"]
    assert [p.body for p in posts] == [b"3"]


def test_heartbeat_deadline_fails_the_session_and_closes_the_websocket() -> None:
    s, ws_id = connected("websocket")
    assert s.get_timer() == 0.5 + 45.0
    s.handle_timer(45.4)  # not due: nothing happens
    assert s.state is SessionState.READY
    with pytest.raises(LabsTimeout, match="at least every 45 s") as info:
        s.handle_timer(45.5)
    assert info.value.deadline == "heartbeat"
    assert s.state is SessionState.ERROR and s.get_timer() is None
    assert s.transmit() == [WebSocketClose(ws_id=ws_id)]  # type: ignore[arg-type]


def test_connect_and_first_text_deadlines() -> None:
    s = session("polling", connect_timeout=5.0)
    s.connect(1.0)
    assert s.get_timer() == 6.0
    with pytest.raises(LabsTimeout) as info:
        s.handle_timer(6.0)
    assert info.value.deadline == "connect"
    s, ws_id = connected("upgrade", first_text_timeout=10.0, query_timeout=30.0)
    assert ws_id is not None
    s.query("hi", model="sonar", now=2.0)
    assert s.get_timer() == 12.0
    s.receive_websocket_message(ws_id, progress("He"), 3.0)
    assert s.get_timer() == 32.0  # the first text cleared its deadline; the query's stays
    with pytest.raises(LabsTimeout, match="whole answer within 30 s") as info:
        s.handle_timer(32.0)
    assert info.value.partial_text == "He"


# -- errors --------------------------------------------------------------------------------------


def test_refused_handshake_is_a_handshake_error_with_status() -> None:
    s = session("polling")
    s.connect(0.0)
    s.transmit()
    with pytest.raises(HandshakeError, match="expected HTTP 200, got HTTP 403") as info:
        s.receive_http_response(1, 403, [("cf-mitigated", "challenge")], b"<html>Just a moment</html>", 0.5)
    assert info.value.status == 403 and info.value.cloudflare
    assert s.state is SessionState.ERROR


def test_transport_error_fails_the_session() -> None:
    s, ws_id = connected("upgrade")
    assert ws_id is not None
    s.query("hi", model="sonar", now=2.0)
    s.receive_websocket_message(ws_id, progress("Hel"), 3.0)
    s.transmit()
    with pytest.raises(NetworkError, match=r"labs\.test port 80 to go through, but it failed below HTTP: connection "
                       "reset") as info:
        s.receive_transport_error(ws_id, "connection reset", 4.0)
    assert info.value.partial_text == "Hel"
    assert (info.value.host, info.value.port, info.value.errno) == ("labs.test", 80, None)
    assert s.state is SessionState.ERROR and s.transmit() == []  # the WebSocket is gone already


@pytest.mark.parametrize(
    ("server", "host", "port"),
    [("https://labs.test", "labs.test", 443), ("http://127.0.0.1:8123/", "127.0.0.1", 8123),
     ("https://[::1]:9443", "::1", 9443)],
)
def test_a_failed_request_is_a_network_error_naming_the_server(server: str, host: str, port: int) -> None:
    s = LabsSession(SessionConfig(server=server, transport="polling"), rng=random.Random(0))
    s.connect(0.0)
    (first,) = s.transmit()
    assert isinstance(first, HTTPRequest)
    with pytest.raises(NetworkError, match=r"expected the HTTP request \(open\) to .* but it failed below HTTP: "
                       "connection refused") as info:
        s.receive_transport_error(first.request_id, "connection refused", 0.5)
    assert (info.value.host, info.value.port, info.value.errno) == (host, port, None)
    assert info.value.partial_text == ""
    assert s.state is SessionState.ERROR and s.transmit() == [] and s.get_timer() is None
    s.receive_transport_error(first.request_id, "late news", 0.6)  # nobody waits for it: ignored
    assert s.state is SessionState.ERROR


def test_websocket_1009_during_a_query_names_the_servers_limit() -> None:
    s, ws_id = on_websocket()
    s.query("hi", model="sonar", now=2.0)
    with pytest.raises(RemoteProtocolError, match=r"1009 means message too big.*maxPayload is 1000000 bytes"):
        s.receive_websocket_close(ws_id, 1009, 3.0)
    assert s.state is SessionState.ERROR


def test_server_close_when_ready_is_a_clean_end() -> None:
    s, ws_id = on_websocket()
    s.receive_websocket_close(ws_id, 1000, 3.0)
    assert s.events() == [Closed(reason="WebSocket closed by the server (1000)")]
    assert s.state is SessionState.CLOSED and s.transmit() == []
    s2, ws2 = connected("upgrade")
    assert ws2 is not None
    s2.receive_websocket_close(ws2, 1001, 3.0, "going away")
    assert s2.events() == [Closed(reason="WebSocket closed by the server (1001 going away)")]
    s3, ws3 = on_websocket()
    with pytest.raises(RemoteProtocolError, match="connection to stay open"):
        s3.receive_websocket_close(ws3, None, 3.0)  # the connection ended without a close frame


def test_engineio_close_cuts_an_answer() -> None:
    s, ws_id = connected("upgrade")
    assert ws_id is not None
    s.query("hi", model="sonar", now=2.0)
    s.receive_websocket_message(ws_id, progress("abc"), 3.0)
    with pytest.raises(RemoteProtocolError, match="close packet after 3 characters") as info:
        s.receive_websocket_message(ws_id, "1", 4.0)
    assert info.value.partial_text == "abc"
    assert s.transmit()[-1] == WebSocketClose(ws_id=ws_id)


def test_query_too_big_is_refused_and_the_session_goes_on() -> None:
    s, _ws_id = connected("websocket")
    with pytest.raises(LocalProtocolError, match=r"maxPayload .* is 1000000 bytes"):
        s.query("x" * 1_000_000, now=2.0)
    assert s.state is SessionState.READY and s.transmit() == []
    s.query("small", now=2.0)
    assert s.state is SessionState.QUERYING


def test_pending_query_too_big_fails_at_the_open_packet() -> None:
    s = session("websocket")
    s.connect(0.0)
    s.query("x" * 2000, now=0.0)
    (ws,) = s.transmit()
    assert isinstance(ws, WebSocketConnect)
    s.receive_websocket_open(ws.ws_id, 0.1)
    with pytest.raises(LocalProtocolError, match="before the server's limit was known"):
        s.receive_websocket_message(ws.ws_id, open_packet(max_payload=1000), 0.2)
    assert s.state is SessionState.ERROR and s.transmit() == [WebSocketClose(ws_id=ws.ws_id)]


def test_message_over_the_receive_limit() -> None:
    s, ws_id = on_websocket(max_message_size=100)
    with pytest.raises(RemoteProtocolError, match="at most 100 bytes"):
        s.receive_websocket_message(ws_id, "4" + "x" * 100, 2.0)


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        (["query"], "cannot query when the session is idle; call connect() first"),
        (["connect", "connect"], "cannot connect when the session is connecting"),
        (["connect", "query", "query"], "cannot start a query while another one is still streaming"),
    ],
)
def test_state_table_refuses_commands_the_state_does_not_allow(steps: list[str], message: str) -> None:
    s = session("polling")
    *first, last = steps
    for step in first:
        s.connect(0.0) if step == "connect" else s.query("hi", model="sonar", now=0.0)
    with pytest.raises(LocalProtocolError) as info:
        s.connect(0.0) if last == "connect" else s.query("hi", model="sonar", now=0.0)
    assert str(info.value).startswith(message)


def test_close_after_close_does_nothing_and_ids_are_checked() -> None:
    s, _ws_id = connected("websocket")
    s.close(5.0)
    assert s.transmit() == [WebSocketSend(ws_id=1, data="41"), WebSocketSend(ws_id=1, data="1"),
                            WebSocketClose(ws_id=1, code=1000)]  # the goodbye went over it: a close frame
    s.close(6.0)
    assert s.transmit() == [] and s.state is SessionState.CLOSED
    with pytest.raises(LocalProtocolError, match="id of an HTTPRequest"):
        s.receive_http_response(99, 200, [], b"", 7.0)


def test_inputs_of_the_wrong_type_are_local_errors() -> None:
    s, ws_id = on_websocket()
    with pytest.raises(LocalProtocolError, match=r"as str .* or bytes"):
        s.receive_websocket_message(ws_id, ValueError("an aiohttp ERROR message"), 2.0)  # type: ignore[arg-type]
    p = session("polling")
    p.connect(0.0)
    p.transmit()
    with pytest.raises(LocalProtocolError, match="bytes body"):
        p.receive_http_response(1, 200, [], "0{}", 0.5)  # type: ignore[arg-type]
    assert s.state is SessionState.READY and p.state is SessionState.CONNECTING


# -- the byte level's fast path agrees with the str path ------------------------------------------


@given(st.lists(st.text(max_size=8), min_size=1, max_size=6))
@settings(max_examples=60, deadline=None)
def test_utf8_fast_path_gives_what_the_str_path_gives(parts: list[str]) -> None:
    outputs = ["".join(parts[: i + 1]) for i in range(len(parts))]
    frames = [progress(o, final=i == len(outputs) - 1) for i, o in enumerate(outputs)]
    results = []
    for fast in (False, True):
        s, ws_id = on_websocket()
        s.query("hi", model="sonar", now=2.0)
        for frame in frames:
            if fast:
                s.receive_websocket_utf8(ws_id, Utf8Text(frame.encode("utf-8", "surrogatepass")), 3.0)
            else:
                s.receive_websocket_message(ws_id, frame, 3.0)
        results.append(s.events())
    assert results[0] == results[1]


# -- any sequence of inputs -------------------------------------------------------------------------

_SERVER_TEXT = st.sampled_from(
    ["3probe", '40{"sid":"S1"}', "2", "6", "1", "41", "44{\"message\":\"no\"}", open_packet(), "0{}", "5", "x",
     progress("a"), progress("ab", final=True), '42["sonar_query_progress",{"output":1}]', "451-[", "4"]
)
_STEP = st.one_of(
    st.tuples(st.just("response"), st.integers(0, 6), st.sampled_from([200, 400, 413, 500]),
              st.sampled_from([b"ok", open_packet().encode(), b"2\x1e6", b'40{"sid":"S1"}', b"", b"\xff"])),
    st.tuples(st.just("open"), st.integers(0, 6)),
    st.tuples(st.just("message"), st.integers(0, 6), _SERVER_TEXT),
    st.tuples(st.just("close"), st.integers(0, 6), st.sampled_from([None, 1000, 1009])),
    st.tuples(st.just("error"), st.integers(0, 6)),
    st.tuples(st.just("timer"), st.floats(0, 200)),
    st.tuples(st.just("query")),
    st.tuples(st.just("bye")),
)


@given(st.sampled_from(["upgrade", "websocket", "polling"]), st.lists(_STEP, max_size=25))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_input_sequence_raises_only_labs_errors_and_ends_cleanly(transport: str, steps: list[Any]) -> None:
    s = session(transport)
    s.connect(0.0)
    issued: list[SessionInstruction] = []
    peer_closed: set[int] = set()  # WebSockets the server closed or that failed below: nothing to close
    now = 0.0
    for step in steps:
        issued += s.transmit()
        ids = [x.request_id for x in issued if isinstance(x, HTTPRequest)] + \
              [x.ws_id for x in issued if isinstance(x, WebSocketConnect)]
        kind = step[0]
        now += 0.5
        try:
            if kind in ("response", "open", "message", "close", "error"):
                if not ids:
                    continue
                target = ids[step[1] % len(ids)]
                if kind == "response":
                    s.receive_http_response(target, step[2], [], step[3], now)
                elif kind == "open":
                    s.receive_websocket_open(target, now)
                elif kind == "message":
                    s.receive_websocket_message(target, step[2], now)
                elif kind == "close":
                    peer_closed.add(target)
                    s.receive_websocket_close(target, step[2], now)
                else:
                    peer_closed.add(target)
                    s.receive_transport_error(target, "reset", now)
            elif kind == "timer":
                now = max(now, step[1])
                s.handle_timer(now)
            elif kind == "query":
                s.query("hi", model="sonar", now=now)
            else:
                s.close(now)
        except LocalProtocolError:
            pass  # misuse by this harness (an id of the wrong kind, a query in the wrong state)
        except LabsError:
            assert s.state is SessionState.ERROR
        issued += s.transmit()
        if s.state in (SessionState.CLOSED, SessionState.ERROR):
            break
    issued += s.transmit()
    if s.state in (SessionState.CLOSED, SessionState.ERROR):
        opened = {x.ws_id for x in issued if isinstance(x, WebSocketConnect)}
        closed = {x.ws_id for x in issued if isinstance(x, WebSocketClose)}
        assert opened <= closed | peer_closed
        assert s.get_timer() is None


@pytest.mark.parametrize("fast", [False, True])
def test_a_progress_frame_with_nan_is_refused_as_the_codec_refuses_it(fast: bool) -> None:
    s, ws_id = on_websocket()
    s.query("hi", model="sonar", now=2.0)
    good = progress("He")
    s.receive_websocket_message(ws_id, good, 3.0)
    bad = progress("Hello")[:-2] + ',"elapsed_time":NaN}]'
    with pytest.raises(RemoteProtocolError, match="invalid payload"):
        if fast:
            s.receive_websocket_utf8(ws_id, Utf8Text(bad.encode()), 4.0)
        else:
            s.receive_websocket_message(ws_id, bad, 4.0)
    assert s.state is SessionState.ERROR


def test_close_on_polling_posts_the_goodbye() -> None:
    s, _ = connected("polling")
    s.close(5.0)
    assert s.transmit() == [HTTPRequest(request_id=5, method="POST", url=f"{BASE}&transport=polling{T}&sid=E1",
                                        headers=POST_HEADERS, body=b"41\x1e1", lane=1)]
    assert s.events() == [Closed(reason="closed by the client")]
    s.receive_http_response(5, 200, [], b"ok", 5.1)  # nobody waits for it: ignored
    s.receive_http_response(4, 200, [], b"6", 5.1)  # the poll that was out: ignored too
    assert s.transmit() == [] and s.state is SessionState.CLOSED


def test_close_before_the_probe_posts_and_gives_up_the_websocket() -> None:
    s = session("upgrade")
    s.connect(0.0)
    s.transmit()
    s.receive_http_response(1, 200, [], open_packet().encode(), 0.5)
    s.transmit()  # the CONNECT POST (2) and the WebSocket (3)
    s.close(1.0)
    out = s.transmit()
    assert out == [HTTPRequest(request_id=4, method="POST", url=f"{BASE}&transport=polling{T}&sid=E1",
                               headers=POST_HEADERS, body=b"41\x1e1"), WebSocketClose(ws_id=3)]
    s.receive_websocket_open(3, 1.1)  # late news of a WebSocket given up: ignored
    assert s.transmit() == []


def test_connect_error_is_a_response_error() -> None:
    s = session("websocket")
    s.connect(0.0)
    s.transmit()
    s.receive_websocket_open(1, 0.1)
    s.receive_websocket_message(1, open_packet(), 0.2)
    with pytest.raises(ResponseError, match=r"refused the Socket\.IO connection: Not authorized"):
        s.receive_websocket_message(1, '44{"message":"Not authorized"}', 0.3)
    assert s.state is SessionState.ERROR and s.transmit()[-1] == WebSocketClose(ws_id=1)


def test_websocket_refused_with_an_http_status() -> None:
    s = session("websocket")
    s.connect(0.0)
    s.transmit()
    with pytest.raises(HandshakeError, match="refused the WebSocket upgrade: expected HTTP 101, got HTTP 403") as info:
        s.receive_websocket_refused(1, 403, [], b"forbidden", 0.1)
    assert info.value.status == 403 and s.state is SessionState.ERROR


# -- the calls the byte level makes -------------------------------------------------------------------


def test_a_reason_phrase_is_shown_after_the_status() -> None:
    s = session("polling")
    s.connect(0.0)
    s.transmit()
    with pytest.raises(HandshakeError, match=r"expected HTTP 200, got HTTP 403 Forbidden: 'nope'"):
        s.receive_http_response(1, 403, [], b"nope", 0.5, reason="Forbidden")
    s2 = session("polling")
    s2.connect(0.0)
    s2.transmit()
    with pytest.raises(LocalProtocolError, match="a str reason, got int, bytes and bytes"):
        s2.receive_http_response(1, 403, [], b"nope", 0.5, reason=b"Forbidden")  # type: ignore[arg-type]
    assert s2.state is SessionState.CONNECTING


def test_messages_of_one_read_in_one_call() -> None:
    s, ws_id = on_websocket()
    s.query("hi", model="sonar", now=2.0)
    s.transmit()
    s.receive_websocket_messages(
        ws_id, ["2", Utf8Text(progress("Hel").encode()), Utf8Text(progress("Hello", final=True).encode()),
                progress("ignored")], 3.0,
    )
    assert s.transmit() == [WebSocketSend(ws_id=ws_id, data="3")]
    events = s.events()
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Hel", "lo"]
    assert isinstance(events[-1], AnswerFinished) and s.state is SessionState.READY
    # The same limit as one message at a time, unless the carrier says it measured them already.
    big = '42["noise","' + "x" * 300 + '"]'  # an event nobody waits for
    s2, ws2 = on_websocket(max_message_size=200)
    s2.receive_websocket_messages(ws2, [big, Utf8Text(big.encode())], 4.0, limited=True)
    assert s2.state is SessionState.READY
    with pytest.raises(RemoteProtocolError, match="at most 200 bytes"):
        s2.receive_websocket_messages(ws2, ["2", Utf8Text(big.encode())], 4.0)
    assert s2.state is SessionState.ERROR


def test_messages_after_the_end_of_the_session_are_dropped() -> None:
    s, ws_id = on_websocket()
    s.receive_websocket_messages(ws_id, ["1", "2", b"\x00"], 3.0)
    assert s.events() == [Closed(reason="Engine.IO session closed by the server")]
    assert s.transmit() == [WebSocketClose(ws_id=ws_id)]  # no pong: the ping came after the close


def test_a_message_of_another_type_is_refused() -> None:
    s, ws_id = on_websocket()
    with pytest.raises(LocalProtocolError, match="str \\(text\\), bytes \\(binary\\) or Utf8Text, got int"):
        s.receive_websocket_messages(ws_id, [3], 3.0)  # type: ignore[list-item]


def test_a_second_connect_ack_is_ignored_in_any_connected_state() -> None:
    s, ws_id = on_websocket()
    s.receive_websocket_message(ws_id, '40{"sid":"S2"}', 1.5)  # re-sent, as on a new transport
    assert s.events() == [] and s.state is SessionState.READY and s.socket_sid == "S1"
    s.query("hi", model="sonar", now=2.0)
    s.receive_websocket_message(ws_id, '40{"sid":"S3"}', 2.5)
    assert s.events() == [] and s.state is SessionState.QUERYING and s.socket_sid == "S1"
