"""Hostile input meets only LabsError: bad bytes from the server, odd arguments from the caller.

Each entry point that reads what the server chose (JSON, numbers, the sid, cookies,
event names, reason phrases) and each that takes the caller's text is fed what Python's
own codecs and recursion choke on: deep nesting, huge numbers, control characters,
non-ASCII, lone surrogates.  Only RemoteProtocolError (the server's fault) or
LocalProtocolError (ours) may come out, never a bare RecursionError, OverflowError or
UnicodeError.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import pytest
from conftest import EmulatorFactory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from peer import (
    KEY,
    ClientFrames,
    Harness,
    T,
    chrome_request,
    chrome_upgrade,
    http_response,
    open_packet,
    progress,
    switching_protocols,
    ws_frame,
)
from plabs_proto.backends import sync as sync_backend

from plabs_proto.config import ClientConfig, SessionConfig
from plabs_proto.errors import HandshakeError, LabsError, LocalProtocolError, RemoteProtocolError
from plabs_proto.events import AnswerFinished, TextDelta
from plabs_proto.jsondepth import MAX_DEPTH, check_depth, too_deep
from plabs_proto.labs import engineio, socketio
from plabs_proto.labs.answer import AnswerDecoder, CumulativeFrameReader, build_request
from plabs_proto.wire.client import ClientState, LabsClient

DEEP = "[" * 100_000
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make(transport: str = "upgrade", **kw: Any) -> Harness:
    return Harness(LabsClient(ClientConfig(server="http://labs.test", transport=transport, **kw),
                              rng=random.Random(0)))


def post(target: str, body: bytes, cookie: bytes | None = None) -> bytes:
    return chrome_request("POST", target, body, cookie=cookie)


def upgrade_request(target: str) -> bytes:
    return chrome_upgrade(target, KEY)


def streaming(h: Harness) -> ClientFrames:
    """Connect on the upgrade transport and send a query: the answer may start."""
    h.client.connect(h.now)
    h.client.query("hi", model="sonar", now=h.now)
    h.pump()
    h.take(1)
    h.reply(1, http_response(200, open_packet()))
    h.reply(1, http_response(200, "ok"))
    assert h.take(2).startswith(b"GET /socket.io/?EIO=4&transport=websocket&sid=SID1 ")
    h.reply(2, switching_protocols(KEY) + ws_frame("3probe") + ws_frame('40{"sid":"S1"}'))
    frames = ClientFrames()
    assert frames.feed(h.take(2))[-1].startswith('42["perplexity_labs"')  # type: ignore[union-attr]
    return frames


# -- the depth bound ---------------------------------------------------------------------------------


def nested(depth: int, opener: str = "[") -> str:
    closer = "]" if opener == "[" else "}"
    inner = '{"a":' if opener == "{" else "["
    return inner * depth + "1" + closer * depth


@pytest.mark.parametrize("opener", ["[", "{"])
def test_the_depth_bound_is_exact(opener: str) -> None:
    assert not too_deep(nested(MAX_DEPTH, opener))
    assert too_deep(nested(MAX_DEPTH + 1, opener))
    assert json.loads(nested(MAX_DEPTH, opener))  # what passes decodes


def test_brackets_in_strings_do_not_count() -> None:
    text = json.dumps(["[" * 500, "{" * 500, '\\"[[[' * 100, "]" * 50 + "[" * 500])
    assert not too_deep(text)
    # side by side is not nested
    assert not too_deep("[" + ",".join(["[[]]"] * 500) + "]")
    assert too_deep('["\\"", ' + nested(MAX_DEPTH) + "]")  # an escaped quote does not end the string


def test_check_depth_names_what_and_shows_the_text() -> None:
    with pytest.raises(RemoteProtocolError, match=r"expected the thing nested at most 100 deep, got deeper "
                                                  r"nesting in '42\[\[\[.*\.\.\. \(100002 chars\)"):
        check_depth("42" + DEEP, "the thing", 2)


def test_a_deep_tail_after_a_known_prefix_is_left_to_the_full_decoding() -> None:
    reader = CumulativeFrameReader()
    first = '2["sonar_query_progress",{"output":"a","x":1}]'
    assert reader.read(first, 0) == ("sonar_query_progress", {"output": "a", "x": 1})
    deep = '2["sonar_query_progress",{"output":"ab","x":' + DEEP + "}]"
    assert reader.read(deep, 0) is None
    assert reader.read_bytes(deep.encode(), 0) is None
    assert CumulativeFrameReader().read(deep, 0) is None


@pytest.mark.parametrize(
    "frame",
    [
        "42" + DEEP,  # the Socket.IO event fast path
        '42["sonar_query_progress",{"output":"x","a":' + DEEP + "}]",  # a progress frame's other fields
        '42["sonar_query_progress",{"output":"x","a":' + nested(MAX_DEPTH) + "}]",
        '42/x,["a",' + DEEP + "]",  # the Socket.IO decoder
        "44" + '{"message":' * 20_000,
    ],
)
def test_deep_json_in_the_answer_stream_is_the_servers_fault(frame: str) -> None:
    h = make()
    streaming(h)
    h.reply(2, ws_frame(progress("sonar", {"output": "Hel", "final": False})))
    with pytest.raises(RemoteProtocolError, match="nested at most 100 deep") as info:
        h.reply(2, ws_frame(frame))
    assert info.value.partial_text == "Hel"
    assert h.client.state is ClientState.ERROR


def test_a_deep_frame_after_a_known_prefix_is_refused_too() -> None:
    """The prefix reader gives up on the deep tail; the full decoding refuses it."""
    h = make()
    streaming(h)
    h.reply(2, ws_frame(progress("sonar", {"output": "Hel", "final": False})))
    with pytest.raises(RemoteProtocolError, match="nested at most 100 deep"):
        h.reply(2, ws_frame('42["sonar_query_progress",{"output":"Hello","a":' + DEEP + "}]"))


def test_a_refused_handshake_with_a_deep_body_is_a_handshake_error() -> None:
    h = make()
    h.client.connect(0.0)
    h.pump()
    with pytest.raises(HandshakeError, match=r"expected HTTP 200, got HTTP 400 Bad Request: '\[\[\[") as info:
        h.reply(1, http_response(400, DEEP))
    assert info.value.status == 400


def test_a_refused_handshake_still_names_the_engineio_error() -> None:
    h = make()
    h.client.connect(0.0)
    h.pump()
    with pytest.raises(HandshakeError, match=r"\(Engine.IO error 3: Bad request\)"):
        h.reply(1, http_response(400, '{"code":3,"message":"Bad request"}'))


@pytest.mark.parametrize("transport", ["upgrade", "polling"])
@pytest.mark.parametrize("body", ["0:", "6", "40"])
def test_a_handshake_without_an_open_packet_is_the_servers_fault(transport: str, body: str) -> None:
    h = make(transport)
    h.client.connect(0.0)
    h.pump()
    with pytest.raises(RemoteProtocolError, match=r"expected the Engine\.IO open packet first in the handshake GET"):
        h.reply(1, http_response(200, body))
    assert h.client.state is ClientState.ERROR


# -- numbers -------------------------------------------------------------------------------------------


def test_an_absurd_ping_interval_is_refused_before_any_arithmetic() -> None:
    h = make()
    h.client.connect(0.0)
    h.pump()
    with pytest.raises(RemoteProtocolError, match=r"'pingInterval' in 1\.\.2147483647 .*got 1000000000"):
        h.reply(1, http_response(200, '0{"sid":"S","pingInterval":1e308,"pingTimeout":1}'))
    assert h.client.state is ClientState.ERROR


def test_the_longest_ping_a_javascript_timer_takes_is_accepted() -> None:
    info = engineio.parse_open_packet('{"sid":"S","pingInterval":2147483647,"pingTimeout":2147483647.0}')
    assert (info.ping_interval, info.ping_timeout) == (2**31 - 1, 2**31 - 1)


@pytest.mark.parametrize("elapsed", ["9" * 400, "1e400", "-1e400"])
def test_an_elapsed_time_too_large_for_a_float_is_none(elapsed: str) -> None:
    h = make()
    frames = streaming(h)
    final = (f'42["sonar_query_progress",{{"output":"Hi","final":true,"status":"completed",'
             f'"elapsed_time":{elapsed},"tokens_streamed":{"7" * 400}}}]')
    h.reply(2, ws_frame(final))
    assert h.events()[-1] == AnswerFinished(model="sonar", text="Hi", reasoning="", citations=(),
                                            elapsed_time=None, tokens_streamed=int("7" * 400))
    assert frames.feed(h.take(2)) == []
    decoder = AnswerDecoder("sonar")
    assert decoder.feed({"output": "x", "final": True, "elapsed_time": 10**400})[-1] == AnswerFinished(
        model="sonar", text="x", reasoning="", citations=(), elapsed_time=None, tokens_streamed=None)


# -- the sid ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sid", "escaped"),
    [
        ("a b", "a%20b"),
        ("é/ü", "%C3%A9%2F%C3%BC"),
        ("x&sid=y#z", "x%26sid%3Dy%23z"),
        ("ab+/cd==", "ab%2B%2Fcd%3D%3D"),
        ("Az09-_.~", "Az09-_.~"),
    ],
)
def test_the_sid_is_escaped_in_every_request(sid: str, escaped: str) -> None:
    h = make()
    h.client.connect(0.0)
    h.pump()
    h.take(1)
    h.reply(1, http_response(200, open_packet(sid=sid)))
    body = b'40{"jwt":"anonymous-ask-user"}'
    target = f"/socket.io/?EIO=4&transport=polling&t={T}&sid={escaped}"
    assert h.take(1) == post(target, body)
    assert h.take(2) == upgrade_request(f"/socket.io/?EIO=4&transport=websocket&sid={escaped}")
    assert h.client.session.engine_sid == sid


@pytest.mark.parametrize(
    ("sid", "match"),
    [
        ("a\r\nb", r"got '\\r' at position 1"),
        ("", "non-empty string 'sid'"),
        ("\x00", r"got '\\x00' at position 0"),
        ("a\udce9", r"got '\\udce9' at position 1"),
        ("s" * 257, "at most 256 characters in the Engine.IO open packet, got one of 257"),
    ],
)
def test_an_unusable_sid_is_the_servers_fault(sid: str, match: str) -> None:
    h = make()
    h.client.connect(0.0)
    h.pump()
    h.take(1)
    with pytest.raises(RemoteProtocolError, match=match):
        h.reply(1, http_response(200, open_packet(sid=sid)))
    assert h.client.state is ClientState.ERROR
    assert h.take(1) == b""  # nothing went out with it


def test_an_unusable_sid_on_the_websocket_transport_too() -> None:
    h = make("websocket")
    h.client.connect(0.0)
    h.pump()
    h.reply(1, switching_protocols(KEY))
    with pytest.raises(RemoteProtocolError, match="printable characters"):
        h.reply(1, ws_frame(open_packet(sid="a\x7fb")))


# -- cookies -----------------------------------------------------------------------------------------


def test_cookies_that_cannot_be_sent_back_are_ignored() -> None:
    h = make()
    h.client.connect(0.0)
    h.pump()
    h.take(1)
    raw = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=UTF-8\r\n"
        b"Set-Cookie: good=abc; Path=/\r\n"
        b"Set-Cookie: utf8=caf\xc3\xa9; Path=/\r\n"  # non-ASCII bytes in the value
        b"Set-Cookie: caf\xc3\xa9=1\r\n"  # and in the name
        b"Set-Cookie: ctl=a\x01b\r\n"  # a control character
        b"Set-Cookie: spaced = a b \r\n"
        b"Set-Cookie: big=" + b"x" * 5000 + b"\r\n"
        b"Content-Length: " + str(len(open_packet())).encode() + b"\r\n\r\n" + open_packet().encode()
    )
    h.reply(1, raw)
    body = b'40{"jwt":"anonymous-ask-user"}'
    assert h.take(1) == post(f"/socket.io/?EIO=4&transport=polling&t={T}&sid=SID1", body,
                             cookie=b"good=abc; spaced=a b")


def test_at_most_fifty_cookies_are_kept() -> None:
    h = make()
    h.client.connect(0.0)
    h.pump()
    h.take(1)
    cookies = b"".join(b"Set-Cookie: c%d=%d\r\n" % (i, i) for i in range(60))
    raw = (b"HTTP/1.1 200 OK\r\n" + cookies + b"Set-Cookie: c0=new\r\nContent-Length: "
           + str(len(open_packet())).encode() + b"\r\n\r\n" + open_packet().encode())
    h.reply(1, raw)
    sent = h.take(1)
    line = next(x for x in sent.split(b"\r\n") if x.startswith(b"Cookie: "))
    assert line == b"Cookie: c0=new; " + b"; ".join(b"c%d=%d" % (i, i) for i in range(1, 50))


# -- the caller's text -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "kw", "match"),
    [
        ("caf\udce9", {}, r"message 0: expected text that can be sent as UTF-8, got a lone surrogate "
                          r"'\\udce9' at position 3 \(.*sys.argv or stdin.*errors='replace'\)"),
        ([{"role": "user", "content": "ok"}, {"role": "assistant", "content": "\ud800"}], {},
         r"message 1: .* '\\ud800' at position 0"),
        ([{"role": "user", "content": ["a", {"type": "text", "text": "xy\udfff"}]}], {},
         r"message 0, part 1: .* '\\udfff' at position 2"),
        ("hi", {"model": "son\udce9r"}, r"model: .*lone surrogate"),
        ("hi", {"version": "\udce9"}, r"version: .*lone surrogate"),
        ("hi", {"source": "\udce9"}, r"source: .*lone surrogate"),
    ],
)
def test_a_lone_surrogate_in_the_request_is_local_misuse(messages: Any, kw: dict[str, str], match: str) -> None:
    with pytest.raises(LocalProtocolError, match=match):
        build_request(messages, **kw)


def test_a_query_with_a_lone_surrogate_is_refused_before_anything_is_sent() -> None:
    h = make()
    frames = streaming(h)
    h.reply(2, ws_frame(progress("sonar", {"output": "Hi", "final": True, "status": "completed"})))
    assert h.client.state is ClientState.READY
    with pytest.raises(LocalProtocolError, match="lone surrogate"):
        h.client.query("caf\udce9", model="sonar", now=0.0)
    assert h.client.state is ClientState.READY
    assert frames.feed(h.take(2)) == []
    h.client.query("café", model="sonar", now=0.0)  # a real é is fine
    assert [json.loads(f[2:])[1]["messages"] for f in frames.feed(h.take(2)) if isinstance(f, str)] == [
        [{"role": "user", "content": "café"}]
    ]


def test_ask_with_a_lone_surrogate_raises_local_protocol_error(emulator_factory: EmulatorFactory) -> None:
    url = emulator_factory(frame_delay=0.001).url
    with pytest.raises(LocalProtocolError, match=r"message 0: .*'\\udce9' at position 3"):
        list(sync_backend.ask("caf\udce9", server=url, model="sonar", timeout=10))
    # and the server is fine: a proper prompt still gets its answer
    assert list(sync_backend.ask("café", server=url, model="sonar", timeout=10))


# -- the caller's configuration: refused when the config is made -------------------------------------------

_SERVER_PORT = r"expected a valid port in the server URL, got "
_SECONDS = r"as a number of seconds > 0 or None, got "

#: Bad values of the fields a SessionConfig and a ClientConfig share (the message level's).
SHARED_FIELDS = [
    ({"transport": "pigeon"}, "expected a transport among upgrade, websocket, polling, got 'pigeon'"),
    ({"transport": ["polling"]}, r"expected a transport among .*, got \['polling'\]"),
    ({"max_message_size": 0}, r"expected max_message_size as an int >= 1 \(bytes\), got 0"),
    ({"max_message_size": True}, r"expected max_message_size as an int >= 1 \(bytes\), got True"),
    ({"max_message_size": 1.5}, r"expected max_message_size as an int >= 1 \(bytes\), got 1.5"),
    ({"server": "ftp://labs.test"}, "expected an http:// or https:// server URL, got 'ftp://labs.test'"),
    ({"server": "http://"}, "expected an http:// or https:// server URL, got 'http://'"),
    ({"server": "http://[::1"}, "expected an http:// or https:// server URL, got 'http://\\[::1'"),
    ({"server": 5}, "expected an http:// or https:// server URL, got 5"),
    ({"server": b"http://labs.test"}, "expected an http:// or https:// server URL, got b'http://labs.test'"),
    ({"server": "http://labs.test:99999"}, _SERVER_PORT + "'http://labs.test:99999'"),
    ({"server": "http://labs.test:http"}, _SERVER_PORT + "'http://labs.test:http'"),
    ({"server": "http://labs.test/caf\u00e9"}, "expected the server path as ASCII text without CR or LF"),
    ({"path": None}, "expected the path as a str, got None"),
    ({"path": "/s\u00f6cket.io/"}, "expected the server path as ASCII text without CR or LF"),
    ({"origin": 5}, "expected origin as a str, got 5"),
    ({"origin": "https://a.test\r\nX-Evil: 1"}, "expected origin as ASCII text without CR or LF"),
    ({"jwt": None}, "expected jwt as a str, got None"),
    ({"version": 2.18}, "expected version as a str, got 2.18"),
    ({"connect_timeout": "1"}, "expected connect_timeout " + _SECONDS + "'1'"),
    ({"first_text_timeout": 0}, "expected first_text_timeout " + _SECONDS + "0"),
    ({"query_timeout": -1.5}, "expected query_timeout " + _SECONDS + "-1.5"),
    ({"query_timeout": True}, "expected query_timeout " + _SECONDS + "True"),
    ({"connect_timeout": float("nan")}, "expected connect_timeout " + _SECONDS + "nan"),
]


@pytest.mark.parametrize(("kw", "match"), SHARED_FIELDS)
def test_a_session_config_checks_every_field_when_it_is_made(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(LocalProtocolError, match=match):
        SessionConfig(**kw)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        *SHARED_FIELDS,
        ({"proxy": 8080}, "expected the proxy as a URL str or a ProxyConfig, got int"),
        ({"proxy": "ftp://proxy.test"}, "expected a proxy URL starting with http://, socks5:// or socks5h://"),
        ({"ssl_context": object()}, "expected an ssl.SSLContext, got object"),
        ({"cafile": 5}, r"expected cafile as a path \(str or os.PathLike\) or None, got 5"),
        ({"tls": "yes"}, "expected tls as True, False or None, got 'yes'"),
        ({"browser": "chrome"}, "expected browser as a BrowserProfile or None, got 'chrome'"),
        ({"user_agent": 5}, "expected user_agent as a str, got 5"),
        ({"user_agent": "b\u00e9ta"}, "expected user_agent as ASCII text"),
        ({"accept_encoding": 1}, "expected accept_encoding as True or False, got 1"),
        ({"permessage_deflate": None}, "expected permessage_deflate as True or False, got None"),
        ({"headers": 5}, r"expected headers as a tuple of \(name, value\) tuples, got 5"),
        ({"headers": (("X-Name",),)}, r"expected each of headers as a \(name, value\) tuple, got \('X-Name',\)"),
        ({"headers": (("X-Name", 1),)}, "expected the 'X-Name' header as ASCII text"),
        ({"headers": (("X-Name", "caf\u00e9"),)}, "expected the 'X-Name' header as ASCII text"),
        ({"headers": (("X-N\u00e4me", "v"),)}, "expected a header name as ASCII text"),
        ({"server": "http://b\u00fccher.test"}, "expected the server host as ASCII text"),
    ],
)
def test_a_client_config_checks_every_field_when_it_is_made(kw: dict[str, Any], match: str) -> None:
    """Every field is checked by ``ClientConfig`` itself: a carrier of ``session_config()`` (curl) gets only good ones."""
    with pytest.raises(LocalProtocolError, match=match):
        ClientConfig(**kw)


def test_good_configs_are_taken() -> None:
    SessionConfig(server="https://[::1]:8443/base", path="sio", connect_timeout=None, query_timeout=2,
                  first_text_timeout=0.5, max_message_size=1)
    ClientConfig(server="http://labs.test:80", proxy="socks5://proxy.test", cafile="ca.pem", tls=False,
                 headers=[("X-A", "1")], browser=None, user_agent="ua", query_timeout=float("inf"))


# -- properties: any hostile string from the server ----------------------------------------------------

hostile_text = st.one_of(
    st.text(max_size=40),  # any code point, lone surrogates included
    st.sampled_from(["\r\n", "\x00", "a b", "\udce9", "é", "\u2028", "&sid=x", "%00", "[" * 200]),
    st.integers(1, 400).map(lambda n: "[" * n),
)
hostile_json = st.recursive(
    st.one_of(st.none(), st.booleans(), hostile_text,
              st.integers(-(10**400), 10**400), st.floats(allow_nan=False)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(hostile_text, inner, max_size=3),
    max_leaves=10,
)
raw_json = st.one_of(
    hostile_json.map(lambda v: json.dumps(v)),
    st.integers(1, 3000).map(lambda n: "[" * n + "]" * n),
    st.integers(1, 3000).map(lambda n: '{"a":' * n + "1" + "}" * n),
    st.sampled_from(["1e308", "1e400", "9" * 400, "-" + "9" * 5000, "NaN", "Infinity", '"\\udce9"']),
)


def only_labs_errors(action: Callable[[], object]) -> None:
    try:
        action()
    except LabsError:
        pass


@FAST
@given(fields=st.dictionaries(st.sampled_from(["sid", "upgrades", "pingInterval", "pingTimeout", "maxPayload",
                                               "x"]), raw_json, max_size=5))
def test_any_open_packet_gives_a_usable_one_or_remote_protocol_error(fields: dict[str, str]) -> None:
    text = "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in fields.items()) + "}"
    try:
        info = engineio.parse_open_packet(text)
    except RemoteProtocolError:
        return
    # what was accepted can be used: the sid goes in a request, the times in arithmetic
    assert 0 < (info.ping_interval + info.ping_timeout) / 1000.0 < 5e6
    h = make("polling")
    h.client.connect(0.0)
    h.pump()
    h.reply(1, http_response(200, "0" + text))
    assert h.take(2).startswith(b"POST ")


@FAST
@given(name=hostile_text, data=raw_json, reason=hostile_text, cookie=st.binary(max_size=30))
def test_any_server_strings_in_a_session_give_events_or_remote_protocol_error(
    name: str, data: str, reason: str, cookie: bytes
) -> None:
    """Event names, JSON, citations, close reasons, reason phrases, cookies: all from the server."""
    h = make()
    h.client.connect(0.0)
    h.client.query("hi", model="sonar", now=0.0)
    h.pump()
    script: list[tuple[int, bytes]] = [
        (1, http_response(200, open_packet(), headers={"Set-Cookie": cookie.decode("latin-1").replace("\r", "")
                                                                     .replace("\n", "")})),
        (1, http_response(200, "ok")),
        (2, switching_protocols(KEY) + ws_frame("3probe") + ws_frame('40{"sid":' + json.dumps(name) + "}")),
        (2, ws_frame("42" + json.dumps([name, data]))),
        (2, ws_frame("42[" + json.dumps(name) + "," + data + "]")),
        (2, ws_frame('42["sonar_query_progress",{"output":"a","citations":[' + data + "]}]")),
        (2, ws_frame('42["sonar_query_progress",{"output":"ab","x":' + data + "}]")),
        (2, ws_frame('42["sonar_query_progress",{"output":"abc","final":true,"elapsed_time":' + data + "}]")),
        (2, ws_frame("44" + data)),
        (2, ws_frame('44{"message":' + data + "}")),
        (2, ws_frame(b"\x03\xe8" + reason.encode("utf-8", "replace")[:120], opcode=8)),
    ]
    try:
        for stream, chunk in script:
            h.reply(stream, chunk)
            h.events()
    except LabsError:
        assert h.client.state is ClientState.ERROR


@FAST
@given(status_reason=hostile_text, body=raw_json)
def test_any_refusal_gives_a_handshake_error(status_reason: str, body: str) -> None:
    h = make()
    h.client.connect(0.0)
    h.pump()
    reason = status_reason.encode("utf-8", "replace").replace(b"\r", b"").replace(b"\n", b"")
    raw = (b"HTTP/1.1 403 " + reason + b"\r\nContent-Length: " + str(len(body.encode())).encode()
           + b"\r\n\r\n" + body.encode())
    with pytest.raises(RemoteProtocolError):
        h.reply(1, raw)


@FAST
@given(text=raw_json, prefix=st.sampled_from(["2", "3", "0", "4", "2/a,", "21", "51-", "6" + "1-"]))
def test_socketio_decoding_of_any_json_raises_only_remote_protocol_error(text: str, prefix: str) -> None:
    decoder = socketio.PacketDecoder()
    try:
        decoder.feed(prefix + text)
        decoder.feed(b"\x00")
    except RemoteProtocolError:
        pass


@FAST
@given(data=raw_json)
def test_the_answer_decoder_takes_any_json_payload(data: str) -> None:
    if too_deep(data):
        return  # refused where the JSON is read: the decoder never sees it
    try:
        payload = json.loads(data)
    except ValueError:
        return  # not JSON (too many digits, say): refused where it is read
    decoder = AnswerDecoder("sonar")
    for item in ({"output": "x", "citations": [payload]}, payload,
                 {"output": "y", "final": True, "elapsed_time": payload, "tokens_streamed": payload}):
        try:
            events = decoder.feed(item)
        except LabsError:
            continue
        for event in events:
            repr(event)
            if isinstance(event, TextDelta):
                assert event.text


@FAST
@given(prompt=st.text(max_size=20), model=st.text(max_size=8))
def test_any_prompt_gives_a_request_or_local_protocol_error(prompt: str, model: str) -> None:
    try:
        request = build_request(prompt, model=model)
    except LocalProtocolError:
        return
    json.dumps(request, ensure_ascii=False).encode("utf-8")


@FAST
@given(first=raw_json, second=raw_json)
def test_the_frame_reader_gives_what_json_gives_or_leaves_it_to_the_full_decoding(first: str, second: str) -> None:
    reader = CumulativeFrameReader()
    for output, tail in (("a", first), ("ab", second)):
        frame = '2["sonar_query_progress",{"output":' + json.dumps(output) + ',"x":' + tail + "}]"
        for got in (reader.read(frame, 0), CumulativeFrameReader().read(frame, 0)):
            if got is not None:  # compared as JSON text: NaN is not equal to itself
                expected = json.loads(frame[1:])[1]
                assert got[0] == "sonar_query_progress"
                assert json.dumps(got[1], sort_keys=True) == json.dumps(expected, sort_keys=True)
        try:
            reader.read_bytes(frame.encode("utf-8", "surrogatepass"), 0)
        except LabsError:
            pass
