"""PerplexityClient at the byte level: real HTTP/1.1 bytes in, every byte out checked.

No sockets: the test reads ``transmit()`` and feeds the response bytes a server would send,
in whole and in 1-byte pieces, chunked and not, CRLF and LF bodies, gzip; and a property over
mutated responses in any split (only named errors, every stream closed after one).
"""

from __future__ import annotations

import gzip
import json
import random
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plabs_proto.config import ClientConfig
from plabs_proto.errors import LabsError, LocalProtocolError, RemoteProtocolError
from plabs_proto.events import (
    AnswerFinished,
    AnswerRevised,
    CloseStream,
    Connected,
    Event,
    Instruction,
    OpenStream,
    SendBytes,
    TextDelta,
)
from plabs_proto.state import SessionState
from plabs_proto.wire.client import PerplexityClient

WARMUP_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    b"Set-Cookie: __cf_bm=bm1; Path=/; HttpOnly\r\nSet-Cookie: next-auth.csrf-token=c1; Path=/\r\n"
    b"Content-Length: 2\r\n\r\n{}"
)


def frame(status: str, chunks: list[str], offset: int = 0, **extra: Any) -> dict[str, Any]:
    return {"backend_uuid": "b-1", "read_write_token": "rw-1", "thread_url_slug": "s-1", "status": status,
            "final": status == "COMPLETED", "display_model": "turbo",
            "blocks": [{"intended_usage": "ask_text",
                        "markdown_block": {"chunks": chunks, "chunk_starting_offset": offset}}], **extra}


FRAMES = [frame("PENDING", ["Caf"]), frame("PENDING", ["é 東京"], 1), frame("PENDING", [" 🚀"], 2),
          frame("COMPLETED", ["Caf", "é 東京", " 🚀"])]
ANSWER = "Café 東京 🚀"


def sse_body(eol: str = "\r\n", *, end: bool = True, frames: list[dict[str, Any]] = FRAMES) -> bytes:
    text = "".join(f"event: message{eol}data: {json.dumps(f, ensure_ascii=False)}{eol}{eol}" for f in frames)
    if end:
        text += f"event: end_of_stream{eol}data: {{}}{eol}{eol}"
    return text.encode()


def chunked(body: bytes, size: int = 50) -> bytes:
    out = b"".join(b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size]) for i in range(0, len(body), size))
    return out + b"0\r\n\r\n"


def sse_response(body: bytes, *, encoding: str | None = None, framing: str = "chunked") -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
    if encoding:
        head += b"Content-Encoding: " + encoding.encode() + b"\r\n"
    if framing == "chunked":
        return head + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(body)
    if framing == "length":
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    return head + b"Connection: close\r\n\r\n" + body  # ends at end of file


def sent(instructions: list[Instruction]) -> bytes:
    return b"".join(i.data for i in instructions if isinstance(i, SendBytes))


def client(**config: Any) -> PerplexityClient:
    cfg = ClientConfig(server="http://pplx.test", service="perplexity", browser=None, **config)
    return PerplexityClient(cfg, rng=random.Random(0))


def ready(**config: Any) -> PerplexityClient:
    c = client(**config)
    c.connect(0.0)
    out = c.transmit()
    assert out[0] == OpenStream(stream_id=1, host="pplx.test", port=80)
    cookie = b"Cookie: __Secure-next-auth.session-token=%s\r\n" % config["session_token"].encode() if config else b""
    assert sent(out) == (b"GET /api/auth/session HTTP/1.1\r\nHost: pplx.test\r\nAccept: application/json\r\n"
                         b"Referer: http://pplx.test/\r\nAccept-Encoding: gzip, deflate\r\n" + cookie + b"\r\n")
    c.receive_data(1, WARMUP_RESPONSE, 0.1)
    assert c.events() == [Connected(engine_sid="", socket_sid="", transport="sse")]
    assert c.cookies == {"__cf_bm": "bm1", "next-auth.csrf-token": "c1"}
    return c


def ask(c: PerplexityClient, now: float = 1.0) -> bytes:
    c.query("Hello", now=now)
    out = c.transmit()
    assert all(not isinstance(i, OpenStream) for i in out)  # the warm-up's connection, kept alive
    return sent(out)


def feed(c: PerplexityClient, data: bytes, piece: int) -> list[Event]:
    events: list[Event] = []
    for start in range(0, len(data), piece):
        c.receive_data(1, data[start : start + piece], 1.5)
        events += c.events()
    return events


def test_the_ask_request_bytes_carry_the_warm_up_cookies() -> None:
    c = ready()
    request = ask(c)
    head, _, body = request.partition(b"\r\n\r\n")
    assert head.split(b"\r\n") == [
        b"POST /rest/sse/perplexity_ask HTTP/1.1", b"Host: pplx.test", b"Accept: text/event-stream",
        b"Origin: http://pplx.test", b"Referer: http://pplx.test/", b"x-app-apiclient: default",
        b"x-app-apiversion: 2.18", b"Accept-Encoding: gzip, deflate",
        b"Cookie: __cf_bm=bm1; next-auth.csrf-token=c1", b"Content-Type: application/json",
        b"Content-Length: %d" % len(body),
    ]
    assert json.loads(body)["query_str"] == "Hello"


@pytest.mark.parametrize("eol", ["\r\n", "\n"])
@pytest.mark.parametrize("framing", ["chunked", "length", "close"])
@pytest.mark.parametrize("piece", [1, 7, 100_000])
def test_the_answer_over_http_bytes(eol: str, framing: str, piece: int) -> None:
    c = ready()
    ask(c)
    events = feed(c, sse_response(sse_body(eol), framing=framing), piece)
    if framing == "close":
        c.receive_data(1, b"", 1.6)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == ANSWER
    assert any(e == AnswerFinished(model="turbo", text=ANSWER, reasoning="") for e in events)
    assert c.state is SessionState.READY


@pytest.mark.parametrize("piece", [1, 1000])
def test_a_gzip_body_is_inflated_piece_by_piece(piece: int) -> None:
    c = ready()
    ask(c)
    deflater = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
    body = b"".join(deflater.compress(f) + deflater.flush(zlib.Z_SYNC_FLUSH)
                    for f in [sse_body(end=False, frames=[one]) for one in FRAMES]) + deflater.flush()
    assert gzip.decompress(body) == sse_body(end=False)
    events = feed(c, sse_response(body, encoding="gzip"), piece)
    assert events[-1] == AnswerFinished(model="turbo", text=ANSWER, reasoning="")


def test_a_follow_up_goes_on_the_same_connection() -> None:
    c = ready()
    ask(c)
    feed(c, sse_response(sse_body()), 100_000)
    request = ask(c, 2.0)
    body = json.loads(request.partition(b"\r\n\r\n")[2])
    assert body["params"]["last_backend_uuid"] == "b-1" and body["params"]["query_source"] == "followup"
    assert b"Referer: http://pplx.test/search/s-1\r\n" in request


def test_a_drop_mid_stream_keeps_the_partial_text() -> None:
    c = ready()
    ask(c)
    data = sse_response(sse_body(end=False, frames=FRAMES[:2]))[:-5]  # without the last chunk
    feed(c, data, 100_000)
    assert c.partial_text == "Café 東京"
    with pytest.raises(RemoteProtocolError) as info:
        c.receive_data(1, b"", 2.0)
    assert info.value.partial_text == "Café 東京"
    assert c.state is SessionState.ERROR
    assert c.transmit() == [CloseStream(stream_id=1)]


def test_a_close_delimited_body_cut_before_the_end_is_an_error_with_the_text() -> None:
    c = ready()
    ask(c)
    feed(c, sse_response(sse_body(end=False, frames=FRAMES[:1]), framing="close"), 3)
    with pytest.raises(RemoteProtocolError, match="COMPLETED frame or end_of_stream") as info:
        c.receive_data(1, b"", 2.0)
    assert info.value.partial_text == "Caf"


def test_a_signed_in_session_sends_one_cookie_header_with_the_jar() -> None:
    c = ready(session_token="tok")
    request = ask(c)
    assert request.count(b"Cookie:") == 1
    assert b"Cookie: __Secure-next-auth.session-token=tok; __cf_bm=bm1; next-auth.csrf-token=c1\r\n" in request


def test_with_the_browser_profile_one_cookie_header_and_same_origin() -> None:
    c = PerplexityClient(ClientConfig(server="http://pplx.test", service="perplexity", session_token="tok"),
                         rng=random.Random(0))
    c.connect(0.0)
    warmup = sent(c.transmit())
    assert b"Sec-Fetch-Site: same-origin\r\n" in warmup
    assert b"Cookie: __Secure-next-auth.session-token=tok\r\n" in warmup
    c.receive_data(1, WARMUP_RESPONSE, 0.1)
    c.query("Hello", now=1.0)
    request = sent(c.transmit())
    assert request.count(b"Cookie:") == 1 and b"Origin: http://pplx.test\r\n" in request
    assert b"Cookie: __Secure-next-auth.session-token=tok; __cf_bm=bm1; next-auth.csrf-token=c1\r\n" in request


def test_a_trace_never_holds_the_session_token() -> None:
    from plabs_proto.wire.trace import TraceRecorder

    recorder = TraceRecorder({"plabs_trace": 1})
    cfg = ClientConfig(server="http://pplx.test", service="perplexity", session_token="tok-secret-9")
    c = PerplexityClient(cfg, rng=random.Random(0), tracer=recorder)
    c.connect(0.0)
    c.transmit()
    c.receive_data(1, WARMUP_RESPONSE, 0.1)
    c.query("Hello", now=1.0)
    c.transmit()
    assert any(b"tok-secret-9" in record.data for record in recorder.records)  # what went out
    assert all("tok-secret-9" not in line for line in recorder.lines())
    assert sum(b"Cookie: __Secure-next-auth.session-token=[redacted]; __cf_bm=[redacted]" in r.data
               for r in recorder.redacted_records()) == 1


# -- hostile bytes at the byte level ----------------------------------------------------------------------

_VALID = sse_response(sse_body())


@st.composite
def _mutated(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    data = bytearray(_VALID)
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        else:
            del data[at:]
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=8)))
    return bytes(data), cuts


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_mutated(), eof=st.booleans())
def test_hostile_response_bytes_raise_only_named_errors(case: tuple[bytes, list[int]], eof: bool) -> None:
    data, cuts = case
    c = ready()
    ask(c)
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True) if b > a]
    try:
        for piece in pieces:
            c.receive_data(1, piece, 1.5)
        if eof:
            c.receive_data(1, b"", 1.6)
    except LocalProtocolError:  # pragma: no cover - no byte from a server is a misuse of ours
        raise
    except LabsError as exc:
        assert c.state is SessionState.ERROR and isinstance(exc.partial_text, str)
        assert CloseStream(stream_id=1) in c.transmit()
    events = c.events()
    finished = [e for e in events if isinstance(e, AnswerFinished)]
    if finished:
        assert "".join(e.text for e in events if isinstance(e, TextDelta)) == finished[0].text or any(
            isinstance(e, AnswerRevised) for e in events)
