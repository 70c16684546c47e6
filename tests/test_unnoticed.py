"""Behaviours no other test pinned down (issue 7): each test here fails with the bug it names planted.

* a 4-byte character whose JSON escape is split across two progress frames, on the bytes path;
* two packets batched in one polling POST, which need the ``\\x1e`` separator;
* the deadline reported when two are overdue at once: the earliest one;
* a proxy user name with an empty password still logs in (``Proxy-Authorization``).
"""

from __future__ import annotations

import json
import random

import pytest
from peer import ClientFrames, Harness, http_response, open_packet, switching_protocols, ws_frame
from test_client import KEY, POLL, POLL_SID, QUERY, WS, get, handshake_upgrade, make, post

from plabs_proto.config import ClientConfig
from plabs_proto.errors import LabsTimeout
from plabs_proto.events import AnswerFinished, Closed, Connected, OpenStream, TextDelta
from plabs_proto.labs.answer import CumulativeFrameReader
from plabs_proto.wire.client import ClientState, LabsClient
from plabs_proto.wire.proxy import HTTPConnectTunnel, parse_proxy_url


def ascii_progress(output: str, **extra: object) -> str:
    """A progress frame with every non-ASCII character escaped, as Python's json.dumps writes it."""
    return "42" + json.dumps(["sonar_query_progress", {"output": output, **extra}], separators=(",", ":"))


# -- a surrogate pair split across two frames -------------------------------------------------------------


def test_bytes_path_does_not_glue_a_split_escape_pair() -> None:
    """Frame 1 ends in the escape of a high surrogate, frame 2 adds the low one: JSON joins them."""
    reader = CumulativeFrameReader()
    first = '42["x",{"output":"a\\ud83d"}]'
    assert reader.read(first, 1) == ("x", {"output": "a\ud83d"})
    second = '42["x",{"output":"a\\ud83d\\ude00"}]'
    # The prefix path would give "a\ud83d" + "\ude00": two lone surrogates, not the emoji.
    assert reader.read_bytes(second.encode("ascii"), 1) is None
    # And after a frame read on the bytes path, too.
    reader = CumulativeFrameReader()
    reader.read('42["x",{"output":"a"}]', 1)
    assert reader.read_bytes(first.encode("ascii"), 1) == ("x", {"output": "a\ud83d"})
    assert reader.read_bytes(second.encode("ascii"), 1) is None


def test_client_joins_an_escape_pair_split_across_websocket_frames() -> None:
    """End to end on the WebSocket: the answer holds the emoji, whatever the frames cut."""
    h = make("websocket")
    h.client.connect(0.0)
    h.client.query("hi", model="sonar", now=0.0)
    h.take(1)
    h.reply(1, switching_protocols(KEY) + ws_frame(open_packet(upgrades=())) + ws_frame('40{"sid":"S9"}'))
    frames = ClientFrames()
    assert frames.feed(h.take(1)) == ['40{"jwt":"anonymous-ask-user"}', QUERY]
    for output in ("Hi ", "Hi \ud83d", "Hi \U0001f600", "Hi \U0001f600!"):
        h.reply(1, ws_frame(ascii_progress(output, final=False)))
    h.reply(1, ws_frame(ascii_progress("Hi \U0001f600!", final=True, citations=[])))
    events = h.events()
    assert events[0] == Connected(engine_sid="SID1", socket_sid="S9", transport="websocket")
    assert events[-1] == AnswerFinished(model="sonar", text="Hi \U0001f600!", reasoning="", citations=())
    delivered = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert "\U0001f600" in delivered
    assert "\ude00" not in delivered


# -- polling: two packets in one POST -----------------------------------------------------------------------


def test_polling_batches_queued_packets_with_the_record_separator() -> None:
    """A ping and the connect ack arrive while the CONNECT POST is in flight: the pong and the query
    wait, then go in the next POST together, joined by \\x1e."""
    h = make("polling")
    c = h.client
    c.connect(0.0)
    c.query("hi", model="sonar", now=0.0)
    assert h.take(1) == get(POLL)
    h.reply(1, http_response(200, open_packet()))
    assert h.take(2) == post(POLL_SID, b'40{"jwt":"anonymous-ask-user"}')  # in flight
    assert h.take(1) == get(POLL_SID)
    h.reply(1, http_response(200, '2\x1e40{"sid":"S1"}'))  # a ping, then the connect ack
    assert h.take(2) == b""  # one POST at a time
    h.reply(2, http_response(200, "ok"))
    assert h.take(2) == post(POLL_SID, b"3\x1e" + QUERY.encode())


# -- two deadlines overdue at once --------------------------------------------------------------------------


def test_the_earliest_of_two_overdue_deadlines_is_reported() -> None:
    h = make(first_text_timeout=2.0, query_timeout=3.0)
    handshake_upgrade(h)
    assert h.client.get_timer() == 2.0  # the earlier of the two
    h.client.handle_timer(1.0)  # neither is due
    with pytest.raises(LabsTimeout) as info:
        h.client.handle_timer(10.0)  # both are overdue
    assert info.value.deadline == "first_text"
    assert "first answer text within 2 s" in str(info.value)
    assert h.client.state is ClientState.ERROR


def test_the_earliest_overdue_deadline_whatever_the_names() -> None:
    """The query deadline before the first-text one: the query is reported (order by time, not name)."""
    h = make(first_text_timeout=5.0, query_timeout=4.0)
    handshake_upgrade(h)
    assert h.client.get_timer() == 4.0
    with pytest.raises(LabsTimeout) as info:
        h.client.handle_timer(9.0)
    assert info.value.deadline == "query"


# -- a proxy user with an empty password --------------------------------------------------------------------


@pytest.mark.parametrize("password", ["", None])
def test_http_proxy_user_with_empty_password_sends_credentials(password: str | None) -> None:
    tunnel = HTTPConnectTunnel("example.com", 443, username="alice", password=password)
    tunnel.start()
    # base64(b"alice:")
    assert tunnel.data_to_send() == (
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n"
        b"Proxy-Authorization: Basic YWxpY2U6\r\n\r\n"
    )


@pytest.mark.parametrize("url", ["http://alice:@proxy.test:3128", "http://alice@proxy.test:3128"])
def test_client_through_proxy_with_empty_password_sends_credentials(url: str) -> None:
    config = parse_proxy_url(url)
    assert config.username == "alice"
    client = LabsClient(ClientConfig(server="http://labs.test", proxy=url), rng=random.Random(0))
    h = Harness(client)
    client.connect(0.0)
    h.pump()
    assert h.opened[0] == OpenStream(stream_id=1, host="proxy.test", port=3128)
    assert h.take_raw(1) == (
        b"CONNECT labs.test:80 HTTP/1.1\r\nHost: labs.test:80\r\nProxy-Authorization: Basic YWxpY2U6\r\n\r\n"
    )
    assert h.take_raw(WS).startswith(b"CONNECT labs.test:80 HTTP/1.1\r\n")


# -- found by the property tests ------------------------------------------------------------------------------


def test_packets_after_a_close_packet_in_a_polling_payload_are_ignored() -> None:
    """``1`` (close) then more packets in one payload: the session ended at the close, as on a WebSocket."""
    h = make("polling")
    h.client.connect(0.0)
    h.take(1)
    h.reply(1, http_response(200, open_packet()))
    h.take(1)
    h.take(2)
    h.reply(2, http_response(200, "ok"))
    h.reply(1, http_response(200, "1\x1e0\x1e40"))  # no error: the rest is not read
    assert h.client.state is ClientState.CLOSED
    assert h.events() == [Closed(reason="Engine.IO session closed by the server")]
    assert sorted(h.closed) == [1, 2]
