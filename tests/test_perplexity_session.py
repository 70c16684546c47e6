"""PerplexitySession alone, at the message level: no HTTP bytes, no byte stack.

Every test plays the service by hand: it reads the session's instructions from
``transmit()`` and answers with ``receive_*`` at exact ``now`` values.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plabs_proto.config import ClientConfig, SessionConfig
from plabs_proto.errors import (
    AnswerFailedError,
    AnswerRateLimitedError,
    ChallengeError,
    LabsError,
    LabsTimeout,
    LocalProtocolError,
    NetworkError,
    RateLimitedError,
    RedirectError,
    RemoteProtocolError,
    SignInError,
    UnexpectedPageError,
)
from plabs_proto.events import (
    AnswerFinished,
    Citations,
    Closed,
    Connected,
    Event,
    HTTPRequest,
    TextDelta,
    ThreadIdentity,
)
from plabs_proto.perplexity.session import ERROR_BODY_LIMIT, PerplexitySession
from plabs_proto.state import SessionState

SERVER = "https://pplx.test"
WARMUP = HTTPRequest(
    request_id=1, method="GET", url=f"{SERVER}/api/auth/session",
    headers=(("Accept", "application/json"), ("Referer", f"{SERVER}/")), body=b"",
)
ASK_HEADERS = (
    ("Content-Type", "application/json"),
    ("Accept", "text/event-stream"),
    ("Origin", SERVER),
    ("Referer", f"{SERVER}/"),
    ("x-app-apiclient", "default"),
    ("x-app-apiversion", "2.18"),
)
#: The ask body random.Random(0) gives (the UUIDs are its first draws), byte for byte.
ASK_BODY = (
    b'{"query_str":"Hello","params":{"version":"2.18","mode":"copilot","model_preference":"turbo",'
    b'"frontend_uuid":"e3e70682-c209-4cac-a29f-6fbed82c07cd",'
    b'"frontend_context_uuid":"f728b4fa-4248-4e3a-8a5d-2f346baa9455",'
    b'"language":"en-US","timezone":"UTC","sources":["web"],"search_focus":"internet","is_incognito":true,'
    b'"use_schematized_api":true,"send_back_text_in_streaming_api":false,"prompt_source":"user",'
    b'"query_source":"home","attachments":[]}}'
)
SSE_HEAD = [("Content-Type", "text/event-stream; charset=utf-8")]


def frame(status: str = "PENDING", *, blocks: list[Any] | None = None, final: bool = False,
          backend: str = "b-1", **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"backend_uuid": backend, "read_write_token": "rw-1", "thread_url_slug": "hello-x1",
                           "context_uuid": "c-1", "display_model": "turbo", "status": status,
                           "final": final or status == "COMPLETED", "final_sse_message": status == "COMPLETED",
                           "text_completed": status == "COMPLETED"}
    if blocks is not None:
        out["blocks"] = blocks
    out.update(extra)
    return out


def markdown(chunks: list[str], offset: int = 0) -> dict[str, Any]:
    return {"intended_usage": "ask_text",
            "markdown_block": {"progress": "IN_PROGRESS", "chunks": chunks, "chunk_starting_offset": offset}}


def sse(*frames: dict[str, Any], end: bool = True, eol: str = "\r\n") -> bytes:
    text = "".join(f"event: message{eol}data: {json.dumps(f)}{eol}{eol}" for f in frames)
    if end:
        text += f"event: end_of_stream{eol}data: {{}}{eol}{eol}"
    return text.encode()


ANSWER_FRAMES = (
    frame(blocks=[markdown(["Hel"])]),
    frame(blocks=[markdown(["lo "], 1)], final=True),  # the trap: final on a PENDING frame
    frame(blocks=[markdown(["world"], 2),
                  {"intended_usage": "web_results",
                   "web_result_block": {"web_results": [{"name": "One", "url": "https://one.test/"}]}}]),
    frame("COMPLETED", blocks=[markdown(["Hel", "lo ", "world"])]),
)


def session(**config: Any) -> PerplexitySession:
    return PerplexitySession(SessionConfig(server=SERVER, service="perplexity", **config), rng=random.Random(0))


def ready(**config: Any) -> PerplexitySession:
    s = session(**config)
    s.connect(0.0)
    (warmup,) = s.transmit()
    assert isinstance(warmup, HTTPRequest)
    s.receive_http_response(warmup.request_id, 200, [("content-type", "application/json")], b"{}", 0.5)
    assert s.events() == [Connected(engine_sid="", socket_sid="", transport="sse")]
    return s


def asked(s: PerplexitySession, now: float = 1.0, query: str = "Hello") -> HTTPRequest:
    s.query(query, now=now)
    (request,) = s.transmit()
    assert isinstance(request, HTTPRequest)
    return request


def texts(events: list[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


# -- the transcript -----------------------------------------------------------------------------------


def test_connect_is_the_warm_up_and_ready_on_its_200() -> None:
    s = session()
    assert s.state is SessionState.IDLE and s.max_connections == 1 and s.get_timer() is None
    s.connect(0.0)
    assert s.state is SessionState.CONNECTING
    assert s.transmit() == [WARMUP]
    assert s.get_timer() == 30.0
    s.receive_http_response(1, 200, [("Set-Cookie", "__cf_bm=x")], b"{}", 0.25)
    assert s.state is SessionState.READY
    assert s.events() == [Connected(engine_sid="", socket_sid="", transport="sse")]
    assert s.get_timer() is None and s.transmit() == []


def test_the_ask_byte_for_byte_and_its_answer_in_one_byte_pieces() -> None:
    s = ready()
    request = asked(s)
    assert request == HTTPRequest(request_id=2, method="POST", url=f"{SERVER}/rest/sse/perplexity_ask",
                                  headers=ASK_HEADERS, body=ASK_BODY, lane=0, incremental=True)
    assert s.state is SessionState.QUERYING and s.get_timer() == 61.0
    s.receive_http_head(2, 200, SSE_HEAD, 1.1, reason="OK")
    events: list[Event] = []
    body = sse(*ANSWER_FRAMES)
    for index in range(len(body)):
        s.receive_http_body(2, body[index : index + 1], 1.2)
        events += s.events()
        if any(isinstance(e, AnswerFinished) for e in events):
            break
    assert texts(events) == "Hello world"
    finish = events[-1]
    assert finish == AnswerFinished(model="turbo", text="Hello world", reasoning="",
                                    citations=({"url": "https://one.test/", "title": "One"},))
    assert ThreadIdentity(backend_uuid="b-1", read_write_token="rw-1", thread_url_slug="hello-x1") in events
    assert any(isinstance(e, Citations) for e in events)
    assert s.state is SessionState.READY and s.get_timer() is None and s.partial_text == ""
    s.receive_http_body(2, body[index + 1 :], 1.3)  # end_of_stream after COMPLETED: nothing more
    s.receive_http_end(2, 1.3)
    assert s.events() == [] and s.state is SessionState.READY


def test_final_on_a_pending_frame_does_not_end_the_answer() -> None:
    s = ready()
    asked(s)
    s.receive_http_head(2, 200, SSE_HEAD, 1.1)
    s.receive_http_body(2, sse(*ANSWER_FRAMES[:2], end=False), 1.2)
    assert s.state is SessionState.QUERYING
    assert texts(s.events()) == "Hello " and s.partial_text == "Hello "


def test_end_of_stream_ends_an_answer_that_had_no_completed_frame() -> None:
    s = ready()
    asked(s)
    s.receive_http_head(2, 200, SSE_HEAD, 1.1)
    s.receive_http_body(2, sse(*ANSWER_FRAMES[:2], eol="\n"), 1.2)
    events = s.events()
    assert events[-1] == AnswerFinished(model="turbo", text="Hello ", reasoning="")
    assert s.state is SessionState.READY


def test_a_second_query_is_a_follow_up_in_the_thread() -> None:
    s = ready()
    asked(s)
    s.receive_http_head(2, 200, SSE_HEAD, 1.1)
    s.receive_http_body(2, sse(*ANSWER_FRAMES), 1.2)
    s.receive_http_end(2, 1.2)
    s.events()
    assert s.thread == ThreadIdentity(backend_uuid="b-1", read_write_token="rw-1", thread_url_slug="hello-x1")
    follow = asked(s, 2.0, query="And then?")
    body = json.loads(follow.body)
    assert body["query_str"] == "And then?"
    params = body["params"]
    assert (params["last_backend_uuid"], params["read_write_token"], params["query_source"]) == (
        "b-1", "rw-1", "followup")
    assert dict(follow.headers)["Referer"] == f"{SERVER}/search/hello-x1"
    assert follow.request_id == 3


def test_a_conversation_is_sent_as_one_query_and_a_follow_up_as_its_last_user_message() -> None:
    s = ready()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    s.query(messages, now=1.0)
    (request,) = s.transmit()
    assert json.loads(request.body)["query_str"] == "System: Be brief.\nUser: Hi"  # type: ignore[union-attr]


def test_a_query_while_connecting_goes_out_after_the_warm_up() -> None:
    s = session()
    s.connect(0.0)
    s.query("Hello", now=0.1)
    assert s.transmit() == [WARMUP] and s.state is SessionState.CONNECTING
    s.receive_http_response(1, 200, [], b"{}", 0.5)
    (request,) = s.transmit()
    assert request == HTTPRequest(request_id=2, method="POST", url=f"{SERVER}/rest/sse/perplexity_ask",
                                  headers=ASK_HEADERS, body=ASK_BODY, incremental=True)
    assert s.state is SessionState.QUERYING
    with pytest.raises(LocalProtocolError, match="queries run one after another"):
        s.query("Again", now=0.6)


def test_misuse_is_refused_by_the_state_table() -> None:
    s = session()
    with pytest.raises(LocalProtocolError, match="cannot query when the session is idle; call connect"):
        s.query("Hello", now=0.0)
    s.connect(0.0)
    with pytest.raises(LocalProtocolError, match="a session connects once"):
        s.connect(0.0)
    with pytest.raises(LocalProtocolError, match="expected the mode to be one of copilot, concise, got 'fast'"):
        s.query("Hello", mode="fast", now=0.0)
    assert s.state is SessionState.CONNECTING and s.transmit() == [WARMUP]
    with pytest.raises(LocalProtocolError, match="no WebSocket"):
        s.receive_websocket_open(1, 0.0)


def test_a_whole_response_from_a_carrier_that_cannot_stream() -> None:
    s = ready()
    asked(s)
    s.receive_http_response(2, 200, SSE_HEAD, sse(*ANSWER_FRAMES), 1.5)
    assert s.events()[-1] == AnswerFinished(model="turbo", text="Hello world", reasoning="",
                                            citations=({"url": "https://one.test/", "title": "One"},))


def test_close_ends_the_session_and_late_answers_are_dropped() -> None:
    s = ready()
    asked(s)
    s.close(2.0)
    assert s.events() == [Closed(reason="closed by the client")] and s.state is SessionState.CLOSED
    s.receive_http_head(2, 200, SSE_HEAD, 2.1)
    s.receive_http_body(2, sse(*ANSWER_FRAMES), 2.1)
    assert s.events() == [] and s.get_timer() is None
    s.close(3.0)  # nothing happens


# -- the end and the errors ---------------------------------------------------------------------------


def test_a_body_that_ends_before_the_end_keeps_the_partial_text() -> None:
    s = ready()
    asked(s)
    s.receive_http_head(2, 200, SSE_HEAD, 1.1)
    s.receive_http_body(2, sse(*ANSWER_FRAMES[:2], end=False) + b"event: message\r\ndata: {", 1.2)
    with pytest.raises(RemoteProtocolError) as info:
        s.receive_http_end(2, 1.3)
    assert str(info.value) == ("expected the answer to end with a COMPLETED frame or end_of_stream, but the "
                               "response body ended mid-event after 6 characters of it")
    assert info.value.partial_text == "Hello "
    assert s.state is SessionState.ERROR


def test_status_failed_is_an_answer_failed_error_with_its_code() -> None:
    s = ready()
    asked(s)
    s.receive_http_head(2, 200, SSE_HEAD, 1.1)
    failed = frame("failed", text="Something broke", error_code="INTERNAL_ERROR")
    with pytest.raises(AnswerFailedError) as info:
        s.receive_http_body(2, sse(ANSWER_FRAMES[0], failed), 1.2)
    assert info.value.error_code == "INTERNAL_ERROR" and info.value.partial_text == "Hel"
    assert "Something broke (INTERNAL_ERROR)" in str(info.value)
    assert s.state is SessionState.ERROR


def test_a_free_tier_rate_limit_in_the_stream() -> None:
    s = ready()
    asked(s)
    s.receive_http_head(2, 200, SSE_HEAD, 1.1)
    with pytest.raises(AnswerRateLimitedError) as info:
        s.receive_http_body(2, sse(frame("failed", error_code="FREE_TIER_RATE_LIMITED")), 1.2)
    assert info.value.error_code == "FREE_TIER_RATE_LIMITED" and info.value.retry_after is None


def refused(status: int, headers: list[tuple[str, str]], body: bytes, *, step: str = "ask",
            **config: Any) -> LabsError:
    s = ready(**config) if step == "ask" else session(**config)
    if step == "ask":
        asked(s)
        s.receive_http_head(2, status, headers, 1.1)
        s.receive_http_body(2, body, 1.2)
        call = lambda: s.receive_http_end(2, 1.3)  # noqa: E731
    else:
        s.connect(0.0)
        s.transmit()
        call = lambda: s.receive_http_response(1, status, headers, body, 0.5)  # noqa: E731
    with pytest.raises(LabsError) as info:
        call()
    assert s.state is SessionState.ERROR
    return info.value


def test_http_429_with_retry_after() -> None:
    exc = refused(429, [("Retry-After", "30"), ("Content-Type", "application/json")], b'{"detail":"slow"}')
    assert isinstance(exc, RateLimitedError) and exc.retry_after == 30.0 and exc.status == 429
    assert "retry in 30 s" in str(exc)


CHALLENGE = (b'<!DOCTYPE html><html><head><title>Just a moment...</title></head>'
             b'<body><div id="cf-please-wait"></div></body></html>')


@pytest.mark.parametrize("step", ["ask", "warmup"])
def test_cloudflare_is_a_challenge_error(step: str) -> None:
    exc = refused(403, [("Server", "cloudflare"), ("cf-mitigated", "challenge"), ("Content-Type", "text/html")],
                  CHALLENGE, step=step)
    assert isinstance(exc, ChallengeError) and exc.title == "Just a moment..."


@pytest.mark.parametrize("status", [401, 403])
def test_another_401_or_403_is_a_sign_in_error(status: int) -> None:
    exc = refused(status, [("Content-Type", "application/json")], b'{"detail":"expired"}', session_token="tok")
    assert isinstance(exc, SignInError) and exc.status == status
    assert "session token (cookie __Secure-next-auth.session-token) is missing or expired" in str(exc)
    assert "tok" not in str(exc).replace("token", "")


def test_a_redirect_is_a_redirect_error() -> None:
    exc = refused(302, [("Location", "https://www.perplexity.ai/")], b"", step="warmup")
    assert isinstance(exc, RedirectError) and exc.location == "https://www.perplexity.ai/"


def test_an_html_page_answered_200_where_the_stream_was_expected() -> None:
    exc = refused(200, [("Content-Type", "text/html")], b"<html><title>Sign in</title></html>")
    assert isinstance(exc, UnexpectedPageError) and exc.title == "Sign in"


def test_the_refused_body_is_kept_up_to_its_limit() -> None:
    for size, raises_early in ((ERROR_BODY_LIMIT, False), (ERROR_BODY_LIMIT + 1, True)):
        s = ready()
        asked(s)
        s.receive_http_head(2, 500, [], 1.1)
        if raises_early:
            with pytest.raises(LabsError, match="HTTP 500"):
                s.receive_http_body(2, b"x" * size, 1.2)
        else:
            s.receive_http_body(2, b"x" * size, 1.2)
            with pytest.raises(LabsError, match="HTTP 500"):
                s.receive_http_end(2, 1.3)


def test_an_event_at_the_receive_limit_is_taken_and_one_past_it_refused() -> None:
    data = json.dumps(frame(blocks=[markdown(["x"])]))
    for limit, ok in ((len(data), True), (len(data) - 1, False)):
        s = ready(max_message_size=limit)
        asked(s)
        s.receive_http_head(2, 200, SSE_HEAD, 1.1)
        body = f"data: {data}\n\n".encode()
        if ok:
            s.receive_http_body(2, body, 1.2)
            assert texts(s.events()) == "x"
        else:
            with pytest.raises(RemoteProtocolError, match=f"at most {limit} characters, got {len(data)}"):
                s.receive_http_body(2, body, 1.2)


def test_a_transport_error_is_a_network_error_with_the_text_so_far() -> None:
    s = ready()
    asked(s)
    s.receive_http_head(2, 200, SSE_HEAD, 1.1)
    s.receive_http_body(2, sse(ANSWER_FRAMES[0], end=False), 1.2)
    with pytest.raises(NetworkError) as info:
        s.receive_transport_error(2, "connection reset", 1.3)
    assert (info.value.host, info.value.port, info.value.partial_text) == ("pplx.test", 443, "Hel")
    assert "connection reset" in str(info.value)


# -- deadlines ------------------------------------------------------------------------------------------


def test_the_connect_deadline() -> None:
    s = session(connect_timeout=5)
    s.connect(10.0)
    assert s.get_timer() == 15.0
    s.handle_timer(14.9)
    with pytest.raises(LabsTimeout, match="within 5 s") as info:
        s.handle_timer(15.0)
    assert info.value.deadline == "connect" and s.state is SessionState.ERROR


def test_the_first_text_and_query_deadlines() -> None:
    s = ready(first_text_timeout=10, query_timeout=100)
    asked(s, now=1.0)
    assert s.get_timer() == 11.0
    s.receive_http_head(2, 200, SSE_HEAD, 2.0)
    s.receive_http_body(2, sse(ANSWER_FRAMES[0], end=False), 3.0)
    assert s.get_timer() == 101.0
    with pytest.raises(LabsTimeout) as info:
        s.handle_timer(101.0)
    assert info.value.deadline == "query" and info.value.partial_text == "Hel"


# -- signed in ----------------------------------------------------------------------------------------

COOKIES_TXT = (
    "# Netscape HTTP Cookie File\n"
    "#HttpOnly_.perplexity.ai\tTRUE\t/\tTRUE\t0\t__Secure-next-auth.session-token\tfrom-file\n"
    ".perplexity.ai\tTRUE\t/\tTRUE\t0\tpplx.visitor-id\tv1\n"
    ".example.com\tTRUE\t/\tFALSE\t0\tother\tnope\n"
)


def test_a_session_token_and_a_cookies_txt_go_in_one_cookie_header() -> None:
    s = session(session_token="tok-1", cookies_txt=COOKIES_TXT)
    assert s.signed_in
    s.connect(0.0)
    (warmup,) = s.transmit()
    assert warmup.headers[-1] == (  # type: ignore[union-attr]
        "Cookie", "__Secure-next-auth.session-token=tok-1; pplx.visitor-id=v1")
    config = ClientConfig(session_token="secret-1", cookies_txt=COOKIES_TXT, service="perplexity")
    assert "secret-1" not in repr(config) and "from-file" not in repr(config)


@pytest.mark.parametrize("token", ["a b", "a;b", "", "é", 5])
def test_a_token_that_cannot_be_sent_is_refused_without_showing_it(token: object) -> None:
    with pytest.raises(LocalProtocolError, match="expected session_token as a cookie value") as info:
        SessionConfig(session_token=token)  # type: ignore[arg-type]
    if isinstance(token, str) and token:
        assert repr(token) not in str(info.value)


def test_a_malformed_cookies_txt_is_refused() -> None:
    with pytest.raises(LocalProtocolError, match=r"cookies\.txt line 1: expected 7 tab-separated fields"):
        SessionConfig(cookies_txt="only\ttwo")
    with pytest.raises(LocalProtocolError, match="sendable in a Cookie header, got cookie 'x'"):
        SessionConfig(cookies_txt=".perplexity.ai\tTRUE\t/\tTRUE\t0\tx\tsecret value")
    with pytest.raises(LocalProtocolError, match="expected a service among labs, perplexity, got 'bing'"):
        SessionConfig(service="bing")


def test_anonymous_requests_carry_no_cookie() -> None:
    s = session()
    s.connect(0.0)
    assert all(name != "Cookie" for name, _ in s.transmit()[0].headers)  # type: ignore[union-attr]
    assert not s.signed_in


# -- hostile bytes ----------------------------------------------------------------------------------------

_PIECES = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"data: ", b"event: end_of_stream\r\n", b"event: message\n", b"\r\n", b"\n\n", b"\r",
                     b": comment\n", b"retry: 99\n", b"data: {}\n\n", b'data: {"status":"COMPLETED"}\n\n',
                     b'data: {"blocks":[{"diff_block":{"field":"markdown_block","patches":[{"op":"add",'
                     b'"path":"/chunks/0","value":"x"}]}}]}\n\n', b"data: [[[[[[[[[[[[\n\n",
                     b'data: {"status":"failed"}\n\n', b"\xff\xfe", b"data: " + b"[" * 5000 + b"\n\n"]),
    st.builds(lambda f: f"data: {json.dumps(f)}\n\n".encode(), st.sampled_from(ANSWER_FRAMES)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pieces=st.lists(_PIECES, max_size=20), end=st.booleans())
def test_hostile_sse_bytes_raise_only_named_errors_in_bounded_time(pieces: list[bytes], end: bool) -> None:
    s = ready(max_message_size=4096)
    asked(s)
    s.receive_http_head(2, 200, SSE_HEAD, 1.1)
    started = time.process_time()
    try:
        for piece in pieces:
            s.receive_http_body(2, piece, 1.2)
            if s.state is not SessionState.QUERYING:
                break
        if end and s.state is SessionState.QUERYING:
            s.receive_http_end(2, 1.3)
    except LocalProtocolError:  # pragma: no cover - a local error here is a bug
        raise
    except LabsError as exc:
        assert s.state is SessionState.ERROR
        assert isinstance(exc.partial_text, str)
    assert time.process_time() - started < 1.0
    if s.state is SessionState.READY:
        assert isinstance(s.events()[-1], AnswerFinished)


def test_the_token_is_never_shown_in_an_instruction() -> None:
    s = session(session_token="tok-secret")
    s.connect(0.0)
    (warmup,) = s.transmit()
    assert "tok-secret" not in repr(warmup) and "('Cookie', '[redacted]')" in repr(warmup)
    assert repr(WARMUP) == (
        "HTTPRequest(request_id=1, method='GET', url='https://pplx.test/api/auth/session', "
        "headers=(('Accept', 'application/json'), ('Referer', 'https://pplx.test/')), body=<0 bytes>, lane=0, "
        "incremental=False)"
    )
