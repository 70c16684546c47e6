"""Byte-exact transcripts of the sans-IO client against a scripted in-memory server."""

from __future__ import annotations

import json
import random
import ssl

import pytest
import trustme
from peer import (
    KEY,
    ClientFrames,
    Harness,
    MemoryTLSServer,
    T,
    chrome_request,
    chrome_upgrade,
    http_response,
    open_packet,
    progress,
    switching_protocols,
    ws_frame,
)

from plabs_proto.config import ClientConfig
from plabs_proto.errors import (
    HandshakeError,
    LabsTimeout,
    LocalProtocolError,
    RemoteProtocolError,
    ResponseError,
)
from plabs_proto.events import (
    AnswerFinished,
    Citations,
    Closed,
    CloseStream,
    Connected,
    OpenStream,
    QueryFailed,
    ReasoningDelta,
    SendBytes,
    TextDelta,
)
from plabs_proto.wire.client import ClientState, LabsClient

QUERY = (
    '42["perplexity_labs",{"version":"2.18","source":"default","model":"sonar",'
    '"messages":[{"role":"user","content":"hi"}]}]'
)
def make(transport: str = "upgrade", server: str = "http://labs.test", **kw: object) -> Harness:
    client = LabsClient(ClientConfig(server=server, transport=transport, **kw), rng=random.Random(0))  # type: ignore[arg-type]
    return Harness(client)


def get(target: str, host: bytes = b"labs.test", site: bytes = b"cross-site") -> bytes:
    return chrome_request("GET", target, host=host, site=site)


def post(target: str, body: bytes, host: bytes = b"labs.test", site: bytes = b"cross-site") -> bytes:
    return chrome_request("POST", target, body, host=host, site=site)


def upgrade_request(target: str, host: bytes = b"labs.test", key: str = KEY) -> bytes:
    return chrome_upgrade(target, key, host=host)


POLL = f"/socket.io/?EIO=4&transport=polling&t={T}"
POLL_SID = POLL + "&sid=SID1"
WS_SID = "/socket.io/?EIO=4&transport=websocket&sid=SID1"


WS = 2  # the upgrade transport's WebSocket connection


def handshake_upgrade(h: Harness, *, ok: bytes = b"OK", ack: bool = True, query: bool = True) -> ClientFrames:
    """Drive the polling handshake and the upgrade; returns the decoder of the client's frames.

    With ``ack`` the server answers the probe and sends the connect ack (python-engineio
    would add a NOOP after it), and the query goes out.
    """
    c = h.client
    c.connect(h.now)
    if query:
        c.query("hi", model="sonar", now=h.now)
    h.pump()
    # Two connections at once: the polling handshake, and the one for the WebSocket.
    assert h.opened == [OpenStream(stream_id=1, host="labs.test", port=80),
                        OpenStream(stream_id=WS, host="labs.test", port=80)]
    assert h.take(1) == get(POLL)
    assert h.take(WS) == b""
    h.reply(1, http_response(200, open_packet()))
    # The CONNECT POST and the upgrade request go out together.
    assert h.take(1) == post(POLL_SID, b'40{"jwt":"anonymous-ask-user"}')
    assert h.take(WS) == upgrade_request(WS_SID)
    h.reply(WS, switching_protocols(KEY))
    assert h.take(WS) == b""  # the probe waits for the POST's answer
    h.reply(1, http_response(200, ok))
    frames = ClientFrames()
    assert frames.feed(h.take(WS)) == ["2probe", "5"]
    assert 1 in h.closed  # the upgrade ends polling
    if ack:
        h.reply(WS, ws_frame("3probe") + ws_frame('40{"sid":"S1"}') + ws_frame("6"))
        assert frames.feed(h.take(WS)) == ([QUERY] if query else [])
    return frames


def test_the_probe_and_the_upgrade_go_out_in_one_write_before_polling_closes() -> None:
    # Both orders of the two answers: the switch writes 2probe and 5 at once, then closes the polling connection.
    for first in (1, WS):
        h = make()
        c = h.client
        c.connect(h.now)
        h.pump()
        h.reply(1, http_response(200, open_packet()))
        h.take(1), h.take(WS)
        answers = {1: http_response(200, b"OK"), WS: switching_protocols(KEY)}
        h.reply(first, answers.pop(first))
        [(last, answer)] = answers.items()
        c.receive_data(last, answer, h.now)
        [write, close] = c.transmit()
        assert isinstance(write, SendBytes) and write.stream_id == WS
        assert ClientFrames().feed(write.data) == ["2probe", "5"]
        assert close == CloseStream(stream_id=1)


def test_upgrade_transcript_python_flavour() -> None:
    h = make()
    frames = handshake_upgrade(h, ack=False)
    assert h.events() == []
    # python-engineio: 3probe, then what it had queued for the poll (the ack, a NOOP).
    h.reply(WS, ws_frame("3probe") + ws_frame('40{"sid":"S1"}') + ws_frame("6"))
    assert frames.feed(h.take(WS)) == [QUERY]
    assert h.events() == [Connected(engine_sid="SID1", socket_sid="S1", transport="upgrade")]
    assert h.client.state is ClientState.QUERYING
    h.reply(WS, ws_frame(progress("sonar", {"output": "Hel", "final": False})))
    h.reply(WS, ws_frame(progress("sonar", {"output": "Hello!", "final": False})))
    h.reply(WS, ws_frame("2"))
    assert frames.feed(h.take(WS)) == ["3"]
    final = {"output": "Hello!", "final": True, "status": "completed", "citations": ["https://a.example"],
             "elapsed_time": 0.7, "tokens_streamed": 3}
    h.reply(WS, ws_frame(progress("sonar", final)))
    assert h.events() == [
        TextDelta(text="Hel"),
        TextDelta(text="lo!"),
        Citations(citations=("https://a.example",)),
        AnswerFinished(model="sonar", text="Hello!", reasoning="", citations=("https://a.example",),
                       elapsed_time=0.7, tokens_streamed=3),
    ]
    assert h.client.state is ClientState.READY
    h.client.close(h.now)
    assert frames.feed(h.take(WS)) == ["41", "1", b"<close>"]
    assert h.closed == [1, WS]
    assert h.events() == [Closed(reason="closed by the client")]


def test_upgrade_transcript_node_flavour_ack_on_websocket() -> None:
    """Node: 'ok' in lower case, the ack flushed onto the WebSocket, no NOOP."""
    h = make()
    frames = handshake_upgrade(h, ok=b"ok", ack=False)
    assert h.events() == []
    h.reply(WS, ws_frame("3probe") + ws_frame("2") + ws_frame('40{"sid":"S1"}'))
    assert frames.feed(h.take(WS)) == ["3", QUERY]
    assert h.events() == [Connected(engine_sid="SID1", socket_sid="S1", transport="upgrade")]


def test_websocket_transport_transcript() -> None:
    h = make("websocket")
    c = h.client
    c.connect(0.0)
    c.query("hi", model="sonar", now=0.0)
    assert h.take(1) == upgrade_request("/socket.io/?EIO=4&transport=websocket", key=KEY)
    h.reply(1, switching_protocols(KEY) + ws_frame(open_packet(upgrades=())))
    frames = ClientFrames()
    assert frames.feed(h.take(1)) == ['40{"jwt":"anonymous-ask-user"}']
    h.reply(1, ws_frame('40{"sid":"S9"}'))
    assert frames.feed(h.take(1)) == [QUERY]
    h.reply(1, ws_frame(progress("sonar", {"output": "ok", "final": True, "citations": []})))
    assert h.events() == [
        Connected(engine_sid="SID1", socket_sid="S9", transport="websocket"),
        TextDelta(text="ok"),
        AnswerFinished(model="sonar", text="ok", reasoning="", citations=()),
    ]


def test_polling_transport_transcript_uses_two_streams() -> None:
    h = make("polling")
    c = h.client
    c.connect(0.0)
    c.query("hi", model="sonar", now=0.0)
    assert h.take(1) == get(POLL)
    # The POST connection opens at once, so its handshakes run beside the first GET.
    assert [o.stream_id for o in h.opened] == [1, 2]
    assert h.take(2) == b""
    h.reply(1, http_response(200, open_packet()))
    # The CONNECT goes on the second connection while the first one long-polls.
    assert h.take(2) == post(POLL_SID, b'40{"jwt":"anonymous-ask-user"}')
    assert h.take(1) == get(POLL_SID)
    h.reply(2, http_response(200, "ok"))
    h.reply(1, http_response(200, '40{"sid":"S1"}\x1e2'))
    # The ack sends the query; the pong waits for that POST to finish (one POST at a time).
    assert h.take(2) == post(POLL_SID, QUERY.encode())
    assert h.take(1) == get(POLL_SID)
    h.reply(2, http_response(200, "ok"))
    assert h.take(2) == post(POLL_SID, b"3")
    h.reply(1, http_response(200, progress("sonar", {"output": "a\u00e9", "final": False})))
    assert h.take(1) == get(POLL_SID)
    h.reply(2, http_response(200, "ok"))
    h.reply(1, http_response(200, progress("sonar", {"output": "a\u00e9!", "final": True, "citations": []})))
    assert h.events() == [
        Connected(engine_sid="SID1", socket_sid="S1", transport="polling"),
        TextDelta(text="a\u00e9"),
        TextDelta(text="!"),
        AnswerFinished(model="sonar", text="a\u00e9!", reasoning="", citations=()),
    ]
    h.client.close(0.0)
    assert h.take(2) == post(POLL_SID, b"41\x1e1")
    assert sorted(h.closed) == [1, 2]


def test_keep_alive_refused_opens_a_new_connection() -> None:
    h = make()
    h.client.connect(0.0)
    assert h.take(1) == get(POLL)
    h.reply(1, http_response(200, open_packet(), close=True))
    assert h.closed == [1]
    assert h.opened[-1] == OpenStream(stream_id=3, host="labs.test", port=80)
    assert h.take(3) == post(POLL_SID, b'40{"jwt":"anonymous-ask-user"}')
    assert h.take(WS) == upgrade_request(WS_SID)


def test_upgrade_falls_back_to_polling_when_not_offered() -> None:
    h = make()
    h.client.connect(0.0)
    h.take(1)
    h.reply(1, http_response(200, open_packet(upgrades=())))
    assert h.client.session.transport == "polling"
    # The connection opened for the WebSocket carries the POSTs instead.
    assert h.take(2) == post(POLL_SID, b'40{"jwt":"anonymous-ask-user"}')
    assert h.take(1) == get(POLL_SID)


# -- TLS and proxies -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def tls_pair(ca: trustme.CA, hostname: str = "www.perplexity.ai") -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(hostname).configure_cert(server)
    server.set_alpn_protocols(["http/1.1"])
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


def test_tls_transcript(ca: trustme.CA) -> None:
    server_ctx, client_ctx = tls_pair(ca)
    h = make(server="https://www.perplexity.ai", ssl_context=client_ctx)
    h.tls_context = server_ctx
    h.client.connect(0.0)
    h.pump()
    assert h.opened == [OpenStream(stream_id=1, host="www.perplexity.ai", port=443),
                        OpenStream(stream_id=2, host="www.perplexity.ai", port=443)]
    assert h.take(1) == get(POLL, host=b"www.perplexity.ai", site=b"same-site")
    h.reply(1, http_response(200, open_packet()))
    assert h.take(1) == post(POLL_SID, b'40{"jwt":"anonymous-ask-user"}', host=b"www.perplexity.ai", site=b"same-site")


def test_tls_wrong_host_is_refused(ca: trustme.CA) -> None:
    from plabs_proto.errors import TLSError

    server_ctx, client_ctx = tls_pair(ca, hostname="other.example")
    h = make(server="https://www.perplexity.ai", ssl_context=client_ctx)
    h.tls_context = server_ctx
    h.client.connect(0.0)
    with pytest.raises(TLSError, match=r"www\.perplexity\.ai"):
        h.take(1)
    assert h.client.state is ClientState.ERROR
    h.pump()
    assert h.closed == [1, 2]


def test_http_connect_proxy_then_tls(ca: trustme.CA) -> None:
    server_ctx, client_ctx = tls_pair(ca)
    h = make(server="https://www.perplexity.ai", ssl_context=client_ctx, proxy="http://bob:s3cret@proxy.test:3128")
    h.client.connect(0.0)
    h.pump()
    assert [o.host for o in h.opened] == ["proxy.test", "proxy.test"]
    assert h.opened[0] == OpenStream(stream_id=1, host="proxy.test", port=3128)
    assert h.take_raw(1) == (
        b"CONNECT www.perplexity.ai:443 HTTP/1.1\r\nHost: www.perplexity.ai:443\r\n"
        b"Proxy-Authorization: Basic Ym9iOnMzY3JldA==\r\n\r\n"
    )
    h.client.receive_data(1, b"HTTP/1.1 200 Connection established\r\n\r\n", 0.0)
    h.tls_context = server_ctx
    h.tls[1] = MemoryTLSServer(server_ctx)
    assert h.take(1) == get(POLL, host=b"www.perplexity.ai", site=b"same-site")


def test_http_connect_proxy_refusal_hides_the_password() -> None:
    from plabs_proto.errors import ProxyError

    h = make(proxy="http://bob:s3cret@proxy.test:3128")
    h.client.connect(0.0)
    h.take_raw(1)
    with pytest.raises(ProxyError) as info:
        h.client.receive_data(1, b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n", 0.0)
    assert "407" in str(info.value)
    assert "s3cret" not in str(info.value) and "s3cret" not in repr(h.client.config)


def test_socks5_proxy_transcript() -> None:
    h = make(proxy="socks5://bob:pw@proxy.test:1080")
    h.client.connect(0.0)
    h.pump()
    assert h.opened[0] == OpenStream(stream_id=1, host="proxy.test", port=1080)
    assert h.take_raw(2) == b"\x05\x02\x00\x02"  # the WebSocket connection tunnels at once too
    assert h.take_raw(1) == b"\x05\x02\x00\x02"
    h.client.receive_data(1, b"\x05\x02", 0.0)
    assert h.take_raw(1) == b"\x01\x03bob\x02pw"
    h.client.receive_data(1, b"\x01\x00", 0.0)
    assert h.take_raw(1) == b"\x05\x01\x00\x03\x09labs.test\x00\x50"
    h.client.receive_data(1, b"\x05\x00\x00\x01\x7f\x00\x00\x01\x04\x38", 0.0)
    assert h.take(1) == get(POLL)


# -- heartbeats and deadlines ----------------------------------------------------------------------------


def test_heartbeat_deadline_driven_by_the_caller() -> None:
    h = make(connect_timeout=5.0, first_text_timeout=None)
    c = h.client
    c.connect(0.0)
    assert c.get_timer() == 5.0
    h.now = 0.1
    h.take(1)
    h.reply(1, http_response(200, open_packet(ping_interval=200, ping_timeout=100)))
    assert c.get_timer() == pytest.approx(0.4)  # heartbeat: 0.1 + 0.2 + 0.1
    h.reply(1, http_response(200, "OK"))
    h.reply(WS, switching_protocols(KEY) + ws_frame("3probe") + ws_frame('40{"sid":"S1"}'))
    h.take(WS)
    assert c.get_timer() == pytest.approx(0.4)  # connected: only the heartbeat is left
    h.now = 0.3
    c.handle_timer(0.3)  # early: nothing happens
    h.reply(WS, ws_frame("2"))
    assert c.get_timer() == pytest.approx(0.6)
    assert ClientFrames().feed(h.take(WS)) == ["3"]
    with pytest.raises(LabsTimeout, match="ping") as info:
        c.handle_timer(0.6)
    assert info.value.deadline == "heartbeat"
    assert c.state is ClientState.ERROR
    h.pump()
    assert h.closed == [1, WS]


def test_first_text_deadline_carries_what_arrived() -> None:
    h = make(first_text_timeout=2.0)
    handshake_upgrade(h)
    assert h.client.get_timer() == 2.0
    with pytest.raises(LabsTimeout) as info:
        h.client.handle_timer(2.5)
    assert info.value.deadline == "first_text"


def test_query_deadline_keeps_partial_text() -> None:
    h = make(query_timeout=3.0, first_text_timeout=None)
    handshake_upgrade(h)
    h.reply(WS, ws_frame(progress("sonar", {"output": "partial", "final": False})))
    with pytest.raises(LabsTimeout) as info:
        h.client.handle_timer(3.0)
    assert info.value.deadline == "query"
    assert info.value.partial_text == "partial"


def test_heartbeat_after_the_answer_carries_no_partial_text() -> None:
    # errors.py: partial_text is empty when no query was streaming.  A finished answer
    # is in its AnswerFinished; an error after it must not pass it off as a partial one.
    h = make(first_text_timeout=None)
    handshake_upgrade(h)
    assert h.client.get_timer() == 45.0  # pingInterval + pingTimeout of open_packet()
    h.reply(WS, ws_frame(progress("sonar", {"output": "Done.", "final": True, "citations": []})))
    finished = h.events()[-1]
    assert isinstance(finished, AnswerFinished) and finished.text == "Done."
    assert (h.client.partial_text, h.client.partial_reasoning) == ("", "")
    with pytest.raises(LabsTimeout, match="ping") as info:
        h.client.handle_timer(45.0)
    assert info.value.deadline == "heartbeat"
    assert (info.value.partial_text, info.value.partial_reasoning) == ("", "")
    h.pump()
    assert h.take(WS) == b"" and WS in h.closed


def test_heartbeat_while_an_answer_streams_carries_it() -> None:
    h = make(first_text_timeout=None)
    handshake_upgrade(h)
    h.reply(WS, ws_frame(progress("sonar", {"output": "<think>Hm</think>Half", "final": False})))
    with pytest.raises(LabsTimeout, match="ping") as info:
        h.client.handle_timer(45.0)
    assert (info.value.partial_text, info.value.partial_reasoning) == ("Half", "Hm")


def test_connection_lost_after_the_answer_carries_no_partial_text() -> None:
    h = make()
    handshake_upgrade(h)
    h.reply(WS, ws_frame(progress("sonar", {"output": "Done.", "final": True})))
    with pytest.raises(RemoteProtocolError, match="WebSocket connection to stay open") as info:
        h.reply(WS, b"")
    assert info.value.partial_text == ""


# -- failures ------------------------------------------------------------------------------------------

CLOUDFLARE_PAGE = (
    "<!DOCTYPE html><html><head><title>Just a moment...</title></head>"
    "<body><div id='cf-please-wait'>Checking your browser</div></body></html>"
)


def test_cloudflare_page_on_the_polling_get() -> None:
    h = make()
    h.client.connect(0.0)
    h.take(1)
    with pytest.raises(HandshakeError, match="Cloudflare") as info:
        h.reply(1, http_response(403, CLOUDFLARE_PAGE, headers={"Content-Type": "text/html"}))
    assert info.value.status == 403 and info.value.cloudflare
    assert "Just a moment" in info.value.body_excerpt


def test_cloudflare_page_on_the_upgrade() -> None:
    h = make("websocket")
    h.client.connect(0.0)
    h.take(1)
    with pytest.raises(HandshakeError, match="WebSocket upgrade") as info:
        h.reply(1, http_response(403, CLOUDFLARE_PAGE))
    assert info.value.cloudflare


def test_unknown_sid_names_the_engineio_error() -> None:
    h = make()
    h.client.connect(0.0)
    h.take(1)
    h.reply(1, http_response(200, open_packet()))
    h.take(1)
    with pytest.raises(HandshakeError, match="Session ID unknown"):
        h.reply(1, http_response(400, '{"code":1,"message":"Session ID unknown"}'))


def test_html_instead_of_open_packet() -> None:
    h = make()
    h.client.connect(0.0)
    h.take(1)
    with pytest.raises(RemoteProtocolError, match="open packet"):
        h.reply(1, http_response(200, "<html><body>hello</body></html>"))


def test_post_answer_must_be_ok() -> None:
    h = make()
    h.client.connect(0.0)
    h.take(1)
    h.reply(1, http_response(200, open_packet()))
    h.take(1)
    with pytest.raises(RemoteProtocolError, match="'ok'"):
        h.reply(1, http_response(200, "nope"))


def test_connection_dropped_mid_answer_keeps_partial_text() -> None:
    h = make()
    handshake_upgrade(h)
    h.reply(WS, ws_frame(progress("sonar", {"output": "Half an ans", "final": False})))
    with pytest.raises(RemoteProtocolError, match="closed the connection") as info:
        h.reply(WS, b"")
    assert info.value.partial_text == "Half an ans"
    assert h.client.partial_text == "Half an ans"


def test_server_failure_frame() -> None:
    h = make()
    handshake_upgrade(h)
    h.reply(WS, ws_frame(progress("sonar", {"output": "x", "final": False})))
    h.reply(WS, ws_frame(progress("sonar", {"status": "failed", "text": "Error in processing query"})))
    events = h.events()
    failed = events[-1]
    assert isinstance(failed, QueryFailed)
    error = failed.error()
    assert isinstance(error, ResponseError)
    assert error.server_text == "Error in processing query" and error.partial_text == "x"
    assert h.client.state is ClientState.READY  # the session survives a failed query


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        ("1", "Engine.IO close"),
        ("41", "Socket.IO disconnect"),
        (ws_frame(b"\x03\xe8bye", opcode=0x8), "WebSocket close"),
    ],
)
def test_server_ends_session_mid_answer(frame: str | bytes, match: str) -> None:
    h = make()
    handshake_upgrade(h)
    h.reply(WS, ws_frame(progress("sonar", {"output": "so far", "final": False})))
    data = frame if isinstance(frame, bytes) else ws_frame(frame)
    with pytest.raises(RemoteProtocolError, match=match) as info:
        h.reply(WS, data)
    assert info.value.partial_text == "so far"


def test_connect_error_is_a_response_error() -> None:
    h = make("websocket")
    h.client.connect(0.0)
    h.take(1)
    with pytest.raises(ResponseError, match="Not authorized"):
        h.reply(1, switching_protocols(KEY) + ws_frame(open_packet())
                + ws_frame('44{"message":"Not authorized"}'))


def test_bad_probe_answer() -> None:
    h = make()
    handshake_upgrade(h, ack=False)
    with pytest.raises(RemoteProtocolError, match="3probe"):
        h.reply(WS, ws_frame("3nope"))


def test_wrong_accept_header() -> None:
    h = make("websocket")
    h.client.connect(0.0)
    h.take(1)
    with pytest.raises(RemoteProtocolError, match="Sec-WebSocket-Accept"):
        h.reply(1, switching_protocols("AAAAAAAAAAAAAAAAAAAAAA=="))


def test_endless_websocket_frame_is_bounded() -> None:
    h = make(max_message_size=1000)
    handshake_upgrade(h)
    header = b"\x81\x7f" + (10**12).to_bytes(8, "big")
    with pytest.raises(RemoteProtocolError, match="at most 1000 bytes"):
        h.reply(WS, header + b"4" * 900)  # refused on its header, before any of it is buffered


def test_oversized_http_body_is_bounded() -> None:
    h = make(max_message_size=100)
    h.client.connect(0.0)
    h.take(1)
    # A polling body may batch packets: one of the message limit and 64 KiB of small ones.
    with pytest.raises(RemoteProtocolError, match="at most 65636 bytes"):
        h.reply(1, b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"0" * 65637)


def test_oversized_packet_in_a_polling_body_is_refused() -> None:
    h = make("polling", max_message_size=100)
    h.client.connect(0.0)
    h.take(1)
    h.reply(1, http_response(200, open_packet()))
    h.take(1)
    with pytest.raises(RemoteProtocolError, match="at most 100 bytes"):
        h.reply(1, http_response(200, "4" + "x" * 150 + "\x1e2"))


def test_end_of_stream_before_a_response() -> None:
    h = make()
    h.client.connect(0.0)
    h.take(1)
    with pytest.raises(RemoteProtocolError, match="end of stream before a complete response head"):
        h.reply(1, b"")


# -- local misuse and several queries --------------------------------------------------------------------


def test_local_misuse() -> None:
    h = make()
    with pytest.raises(LocalProtocolError, match="connect"):
        h.client.query("hi", now=0.0)
    h.client.connect(0.0)
    with pytest.raises(LocalProtocolError, match="new client"):
        h.client.connect(0.0)
    h.client.query("hi", now=0.0)
    with pytest.raises(LocalProtocolError, match="one after another"):
        h.client.query("again", now=0.0)
    with pytest.raises(LocalProtocolError, match="transport"):
        LabsClient(ClientConfig(transport="carrier-pigeon"), rng=random.Random(0))
    with pytest.raises(LocalProtocolError, match="server URL"):
        LabsClient(ClientConfig(server="ftp://x"), rng=random.Random(0))


def test_several_queries_on_one_session_and_reasoning() -> None:
    h = make()
    frames = handshake_upgrade(h)
    h.reply(WS, ws_frame(progress("sonar", {"output": "one", "final": True, "citations": []})))
    h.client.query([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "one"},
                    {"role": "user", "content": "why?"}], model="r1-1776", now=1.0)
    sent = frames.feed(h.take(WS))
    assert len(sent) == 1 and json.loads(sent[0][2:])[1]["model"] == "r1-1776"
    h.reply(WS, ws_frame(progress("r1-1776", {"output": "Because", "final": False})))
    h.reply(WS, ws_frame(progress("r1-1776", {"output": "Because</think>\n\nSo.", "final": False})))
    h.reply(WS, ws_frame(progress("r1-1776", {"output": "Because</think>\n\nSo.", "final": True, "citations": []})))
    events = h.events()
    assert [type(e) for e in events[:3]] == [Connected, TextDelta, AnswerFinished]
    rest = events[3:]
    assert ReasoningDelta(text="Because") in rest and TextDelta(text="So.") in rest
    final = rest[-1]
    assert isinstance(final, AnswerFinished) and final.text == "So." and final.reasoning == "Because"


def test_bytes_for_a_stream_never_opened_is_local_misuse() -> None:
    h = make()
    h.client.connect(0.0)
    with pytest.raises(LocalProtocolError, match="stream"):
        h.client.receive_data(7, b"x", 0.0)


def test_late_bytes_for_a_closed_stream_are_ignored() -> None:
    h = make()
    h.client.connect(0.0)
    h.take(1)
    h.reply(1, http_response(200, open_packet(), close=True))
    assert 1 in h.closed
    h.client.receive_data(1, b"late", 0.0)  # the caller's read raced our CloseStream


def test_bad_utf8_after_a_known_prefix_is_still_refused() -> None:
    h = make()
    handshake_upgrade(h)
    good = progress("sonar", {"output": "abc", "final": False})
    h.reply(WS, ws_frame(good))
    bad = good.encode()[: good.index("abc") + 3] + b"\xff" + b'","final":false}]'
    with pytest.raises(RemoteProtocolError, match="UTF-8") as info:
        h.reply(WS, ws_frame(bad, opcode=0x1))
    assert info.value.partial_text == "abc"
