"""What a moved or guarded service answers, at every step of the handshake, read into its own error.

A redirect, a 429 or Cloudflare's error 1015, Cloudflare's challenge, and an HTML
(login) page where Engine.IO was expected: each is a ``HandshakeError`` subclass
with the server's words in its fields.  First at the message level (``LabsSession``
fed by hand, one answer per step), then byte-exact at the byte level
(``LabsClient``), then as hostile input: whatever the server puts in ``Location``,
``Retry-After``, ``Date`` and a page's ``<title>`` meets only our errors, cleaned
and bounded.
"""

from __future__ import annotations

import random
import unicodedata
from collections.abc import Callable
from email.utils import format_datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from peer import Harness, http_response, open_packet

import plabs_proto
from plabs_proto.config import ClientConfig, SessionConfig
from plabs_proto.errors import (
    ChallengeError,
    HandshakeError,
    RateLimitedError,
    RedirectError,
    RemoteProtocolError,
    UnexpectedPageError,
)
from plabs_proto.events import HTTPRequest, WebSocketConnect
from plabs_proto.labs.session import LabsSession
from plabs_proto.refusal import clean, page_title, retry_after_seconds
from plabs_proto.state import SessionState
from plabs_proto.wire.client import LabsClient

Answer = Callable[[int, list[tuple[str, str]], bytes], None]

#: Each step of the handshake: (transport, the words the error names it by, the status expected).
STEPS = {
    "open": ("polling", "the Engine.IO handshake (polling GET)", 200),
    "connect-post": ("upgrade", "the Socket.IO CONNECT POST", 200),
    "post": ("polling", "a polling POST", 200),
    "poll": ("polling", "a long-polling GET", 200),
    "upgrade": ("upgrade", "the WebSocket upgrade", 101),
    "websocket": ("websocket", "the WebSocket upgrade", 101),
}
OPEN = (b'0{"sid":"E1","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,'
        b'"maxPayload":1000000}')
CHALLENGE = (
    b'<!DOCTYPE html><html lang="en-US"><head><title>Just a moment...</title></head>'
    b"<body><div id='cf-please-wait'>Verifying you are human.</div></body></html>"
)
CLOUDFLARE_1015 = (
    b"<!DOCTYPE html><html><head><title>Access denied | labs.test used Cloudflare to restrict access</title>"
    b'</head><body><h1><span class="cf-error-code">1015</span></h1>'
    b'<h2 class="cf-subheadline">You are being rate limited</h2>'
    b"<p>Cloudflare Ray ID: <strong>8f0e0d0c0b0a0908</strong></p></body></html>"
)
LOGIN = b"<!DOCTYPE html>\n<html><head><title>Sign in &ndash; Perplexity</title></head><body><form></form></body></html>"
HTML = [("Content-Type", "text/html; charset=UTF-8")]


def at_step(step: str) -> tuple[LabsSession, Answer]:
    """A session waiting for the server's answer to ``step``, and the function that gives it."""
    transport = STEPS[step][0]
    s = LabsSession(SessionConfig(server="http://labs.test", transport=transport), rng=random.Random(0))
    s.connect(0.0)
    (first,) = s.transmit()
    if step == "open":
        assert isinstance(first, HTTPRequest)
        return s, lambda status, headers, body: s.receive_http_response(first.request_id, status, headers, body, 1.0)
    if step == "websocket":
        assert isinstance(first, WebSocketConnect)
        return s, lambda status, headers, body: s.receive_websocket_refused(first.ws_id, status, headers, body, 1.0)
    assert isinstance(first, HTTPRequest)
    s.receive_http_response(first.request_id, 200, [], OPEN, 0.5)
    post, second = s.transmit()
    assert isinstance(post, HTTPRequest) and post.method == "POST"
    if step in ("connect-post", "post"):
        return s, lambda status, headers, body: s.receive_http_response(post.request_id, status, headers, body, 1.0)
    if step == "upgrade":
        assert isinstance(second, WebSocketConnect)
        return s, lambda status, headers, body: s.receive_websocket_refused(second.ws_id, status, headers, body, 1.0)
    assert isinstance(second, HTTPRequest) and second.method == "GET"  # the long-polling GET
    s.receive_http_response(post.request_id, 200, [], b"ok", 0.6)
    return s, lambda status, headers, body: s.receive_http_response(second.request_id, status, headers, body, 1.0)


def refused(step: str, status: int, headers: list[tuple[str, str]], body: bytes, kind: type[HandshakeError]) -> Any:
    """The error the session raises for this answer at ``step`` (checked to be ``kind``; the session failed)."""
    s, answer = at_step(step)
    with pytest.raises(kind) as caught:
        answer(status, headers, body)
    assert s.state is SessionState.ERROR
    error = caught.value
    assert isinstance(error, HandshakeError) and isinstance(error, RemoteProtocolError)
    assert STEPS[step][1] in str(error)
    return error


# -- redirects -------------------------------------------------------------------------------------


@pytest.mark.parametrize("step", STEPS)
def test_a_redirect_names_its_location_at_every_step(step: str) -> None:
    error = refused(step, 302, [("Location", "https://www.perplexity.ai/")], b"", RedirectError)
    what, expected = STEPS[step][1], STEPS[step][2]
    assert str(error) == (
        f"expected HTTP {expected} for {what}, got HTTP 302 redirecting to 'https://www.perplexity.ai/': the "
        "service moved; redirects are not followed (point server= at the new address if you trust it)"
    )
    assert (error.status, error.location, error.cloudflare) == (302, "https://www.perplexity.ai/", False)


@pytest.mark.parametrize("status", [301, 303, 307, 308])
def test_every_redirect_status_is_a_redirect(status: int) -> None:
    error = refused("open", status, [("location", "/elsewhere/")], b"<html>Moved</html>", RedirectError)
    assert (error.status, error.location) == (status, "/elsewhere/")


def test_a_redirect_without_location_says_so() -> None:
    error = refused("open", 301, [], b"", RedirectError)
    assert error.location is None
    assert "got HTTP 301 redirecting with no Location" in str(error)


# -- rate limits -----------------------------------------------------------------------------------


@pytest.mark.parametrize("step", STEPS)
def test_a_429_carries_retry_after_at_every_step(step: str) -> None:
    error = refused(step, 429, [("Retry-After", "30")], b"Too Many Requests", RateLimitedError)
    what, expected = STEPS[step][1], STEPS[step][2]
    assert str(error) == (
        f"expected HTTP {expected} for {what}, got HTTP 429: rate limited; Retry-After '30': retry in 30 s"
    )
    assert (error.status, error.retry_after, error.retry_after_header, error.cloudflare) == (429, 30.0, "30", False)


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("status", [429, 403])
def test_cloudflare_error_1015_is_a_rate_limit_at_every_step(step: str, status: int) -> None:
    error = refused(step, status, [*HTML, ("Server", "cloudflare")], CLOUDFLARE_1015, RateLimitedError)
    assert "rate limited by Cloudflare (error 1015); no Retry-After" in str(error)
    assert (error.status, error.retry_after, error.retry_after_header, error.cloudflare) == (status, None, None, True)


def test_cloudflare_error_1015_in_plain_text() -> None:
    error = refused("open", 429, [("Retry-After", "5")], b"error code: 1015", RateLimitedError)
    assert error.cloudflare and error.retry_after == 5.0


def test_retry_after_as_a_date_counts_from_the_response_date() -> None:
    headers = [("Date", "Sun, 06 Nov 1994 08:49:37 GMT"), ("Retry-After", "Sun, 06 Nov 1994 08:51:07 GMT")]
    error = refused("open", 429, headers, b"", RateLimitedError)
    assert (error.retry_after, error.retry_after_header) == (90.0, "Sun, 06 Nov 1994 08:51:07 GMT")
    assert "Retry-After 'Sun, 06 Nov 1994 08:51:07 GMT': retry in 90 s" in str(error)


def test_retry_after_as_a_date_without_a_response_date_keeps_the_header() -> None:
    error = refused("open", 429, [("Retry-After", "Sun, 06 Nov 1994 08:51:07 GMT")], b"", RateLimitedError)
    assert (error.retry_after, error.retry_after_header) == (None, "Sun, 06 Nov 1994 08:51:07 GMT")
    assert "Retry-After 'Sun, 06 Nov 1994 08:51:07 GMT' (not a delay we can read)" in str(error)


@pytest.mark.parametrize(
    ("value", "date", "seconds"),
    [
        ("0", None, 0.0),
        (" 120 ", None, 120.0),
        ("999999999999999", None, 999999999999999.0),
        ("9999999999999999", None, None),  # 16 digits: more than we read
        ("1.5", None, None),
        ("-1", None, None),
        ("\u0663", None, None),  # an Arabic-Indic digit is not a delay
        ("soon", None, None),
        ("Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994", 0.0),  # RFC 850 and asctime forms
        ("Sun, 06 Nov 1994 08:49:37 GMT", "Sun, 06 Nov 1994 09:00:00 GMT", 0.0),  # already past
        ("Sun, 06 Nov 1994 08:49:37 GMT", "not a date", None),
        ("Sun, 99 Nov 1994 08:49:37 GMT", "Sun, 06 Nov 1994 08:49:37 GMT", None),
        ("Sun, 06 Nov 99999999999999999999 08:49:37 GMT", "Sun, 06 Nov 1994 08:49:37 GMT", None),
    ],
)
def test_retry_after_values(value: str, date: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(value, date) == seconds


# -- Cloudflare's challenge ------------------------------------------------------------------------


@pytest.mark.parametrize("step", STEPS)
def test_a_cloudflare_challenge_is_a_challenge_error_at_every_step(step: str) -> None:
    error = refused(step, 403, [*HTML, ("cf-mitigated", "challenge")], CHALLENGE, ChallengeError)
    what, expected = STEPS[step][1], STEPS[step][2]
    assert str(error) == (
        f"Cloudflare blocked {what}: expected HTTP {expected}, got HTTP 403 with a Cloudflare challenge page "
        "('Just a moment...'); only a browser-like client gets through (try the curl backend)"
    )
    assert (error.status, error.cloudflare, error.title) == (403, True, "Just a moment...")
    assert error.body_excerpt.startswith("<!DOCTYPE html>")


def test_a_cloudflare_block_page_without_the_header_is_a_challenge_error() -> None:
    body = b"<html><head><title>Attention Required! | Cloudflare</title></head><body>blocked</body></html>"
    error = refused("open", 403, [], body, ChallengeError)
    assert error.title == "Attention Required! | Cloudflare"


# -- HTML pages where Engine.IO was expected -------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        ("open", "the Engine.IO open packet '0{...}'"),
        ("connect-post", "'ok'"),
        ("post", "'ok'"),
        ("poll", "Engine.IO packets"),
        ("upgrade", "HTTP 101"),
        ("websocket", "HTTP 101"),
    ],
)
def test_a_login_page_is_an_unexpected_page_at_every_step(step: str, expected: str) -> None:
    s, answer = at_step(step)
    with pytest.raises(UnexpectedPageError) as caught:
        answer(200, HTML, LOGIN)
    assert s.state is SessionState.ERROR
    error = caught.value
    assert str(error) == (
        f"expected {expected} from {STEPS[step][1]}, got an HTML page (HTTP 200, text/html; charset=UTF-8) "
        "titled 'Sign in \u2013 Perplexity': a login or web page, not the Engine.IO server (check server= and "
        "path=, or whether the service wants a login)"
    )
    assert (error.status, error.title, error.content_type) == (200, "Sign in \u2013 Perplexity", "text/html; charset=UTF-8")


def test_a_page_is_known_by_its_first_byte_or_its_type() -> None:
    untyped = refused("open", 200, [], b"\xef\xbb\xbf  <html><body>hi</body></html>", UnexpectedPageError)
    assert (untyped.title, untyped.content_type) == (None, None)
    assert "got an HTML page (HTTP 200) with no title" in str(untyped)
    typed = refused("poll", 200, HTML, b"Welcome!", UnexpectedPageError)
    assert typed.content_type == "text/html; charset=UTF-8"


def test_text_that_is_no_page_stays_a_protocol_error() -> None:
    _, answer = at_step("open")
    with pytest.raises(RemoteProtocolError, match=r"expected the Engine.IO open packet '0\{...\}' from the "
                       "handshake GET, got 'Welcome!'") as caught:
        answer(200, [("Content-Type", "text/plain")], b"Welcome!")
    assert not isinstance(caught.value, HandshakeError)


def test_other_refusals_stay_plain_handshake_errors() -> None:
    error = refused("open", 404, HTML, b"<html><title>Not Found</title></html>", HandshakeError)
    assert type(error) is HandshakeError
    assert str(error) == (
        "the server refused the Engine.IO handshake (polling GET): expected HTTP 200, got HTTP 404: "
        "'<html><title>Not Found</title></html>'"
    )


def test_the_errors_are_exported() -> None:
    for name in ("RedirectError", "RateLimitedError", "ChallengeError", "UnexpectedPageError"):
        assert getattr(plabs_proto, name) is getattr(plabs_proto.errors, name)
        assert name in plabs_proto.__all__ and name in plabs_proto.errors.__all__
        assert name in (plabs_proto.errors.__doc__ or "")


# -- the byte level ----------------------------------------------------------------------------------


def make(transport: str) -> Harness:
    return Harness(LabsClient(ClientConfig(server="http://labs.test", transport=transport), rng=random.Random(0)))


def test_a_redirect_on_the_polling_get_is_not_followed() -> None:
    h = make("polling")
    h.client.connect(0.0)
    h.pump()
    h.take(1)
    with pytest.raises(RedirectError) as caught:
        h.reply(1, http_response(301, b"", reason="Moved Permanently",
                                 headers={"Location": "https://www.perplexity.ai/socket.io/"}))
    assert caught.value.location == "https://www.perplexity.ai/socket.io/"
    assert "got HTTP 301 Moved Permanently redirecting to 'https://www.perplexity.ai/socket.io/'" in str(caught.value)
    h.pump()
    assert {(o.host, o.port) for o in h.opened} == {("labs.test", 80)}  # nothing went to the new place
    assert h.take(1) == h.take(2) == b"" and {1, 2} <= set(h.closed)


def test_cloudflare_1015_on_the_websocket_upgrade() -> None:
    h = make("websocket")
    h.client.connect(0.0)
    h.pump()
    h.take(1)
    with pytest.raises(RateLimitedError) as caught:
        h.reply(1, http_response(429, CLOUDFLARE_1015, reason="Too Many Requests",
                                 headers={"Content-Type": "text/html", "Retry-After": "60"}))
    error = caught.value
    assert (error.status, error.retry_after, error.cloudflare) == (429, 60.0, True)
    assert str(error) == (
        "expected HTTP 101 for the WebSocket upgrade, got HTTP 429 Too Many Requests: rate limited by Cloudflare "
        "(error 1015); Retry-After '60': retry in 60 s"
    )


def test_a_login_page_on_the_long_polling_get() -> None:
    h = make("polling")
    h.client.connect(0.0)
    h.pump()
    h.take(1)
    h.reply(1, http_response(200, open_packet()))
    assert h.take(2).startswith(b"POST ") and h.take(1).startswith(b"GET ")  # the CONNECT, the long poll
    h.reply(2, http_response(200, "ok"))
    with pytest.raises(UnexpectedPageError, match="from a long-polling GET, got an HTML page") as caught:
        h.reply(1, http_response(200, LOGIN, headers={"Content-Type": "text/html"}))
    assert caught.value.title == "Sign in \u2013 Perplexity"


def test_control_bytes_in_headers_never_reach_the_message() -> None:
    # h11 lets bytes 0x80-0xFF through in header values: read as Latin-1, 0x9B is the one-byte
    # CSI that starts a terminal escape, 0x85 a line break.
    h = make("polling")
    h.client.connect(0.0)
    h.pump()
    h.take(1)
    raw = (b"HTTP/1.1 302 Found\r\nLocation: https://evil.test/\x9b31m\x85x\r\nContent-Length: 0\r\n\r\n")
    with pytest.raises(RedirectError) as caught:
        h.reply(1, raw)
    assert caught.value.location == "https://evil.test/31m x"
    assert "\x9b" not in str(caught.value) and "\x85" not in str(caught.value)


# -- hostile input -------------------------------------------------------------------------------------


def shown(text: str | None, limit: int) -> None:
    """``text`` is safe to show: bounded, no control or format characters, no line breaks."""
    if text is None:
        return
    assert len(text) <= limit
    assert all(unicodedata.category(char)[0] != "C" for char in text), repr(text)
    assert text == " ".join(text.split())


def test_long_and_controlled_values_are_cleaned_and_bounded() -> None:
    title = "\x1b[31mRed\u202e" + "x" * 10_000
    body = f"<html><head><title>{title}</title></head></html>".encode()
    page = refused("open", 200, HTML, body, UnexpectedPageError)
    assert page.title == "[31mRed" + "x" * 190 + "..."
    redirect = refused("open", 302, [("Location", "https://a.test/" + "p" * 5000)], b"", RedirectError)
    assert len(redirect.location) == 2048 and redirect.location.endswith("...")
    assert len(str(redirect)) < 400  # the message shows 200 characters of it
    limited = refused("open", 429, [("Retry-After", "\x00" + "9" * 1000)], b"", RateLimitedError)
    assert limited.retry_after is None and limited.retry_after_header == "9" * 97 + "..."
    for error in (page, redirect, limited):
        shown(str(error), 1000)
        shown(error.body_excerpt, 200)


def test_a_title_is_found_in_linear_time() -> None:
    assert page_title(b"<title" * 20_000) is None
    assert page_title(b"<title>" + b"a" * 1_000_000) == "a" * 197 + "..."
    assert page_title(b"<TITLE lang=en>&lt;b&gt; Hi </Title>") == "<b> Hi"
    assert clean("a\tb\r\n\u2028c\u200bd\U000e0041", 10) == "a b cd"  # (U+200B and tags are format characters)


header_text = st.one_of(
    st.text(max_size=80),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.datetimes(timezones=st.sampled_from([None])).map(lambda when: format_datetime(when, usegmt=False)),
    st.from_regex(r"\A[A-Za-z]{3}, [0-9]{1,3} [A-Za-z]{3} [0-9]{1,25} [0-9:]{1,12} [A-Z+\-0-9]{0,6}\Z"),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=st.one_of(st.none(), header_text), date=st.one_of(st.none(), header_text))
def test_retry_after_never_raises(value: str | None, date: str | None) -> None:
    seconds = retry_after_seconds(value, date)
    assert seconds is None or (seconds >= 0 and seconds != float("inf"))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    step=st.sampled_from(sorted(STEPS)),
    status=st.sampled_from([200, 301, 302, 303, 307, 308, 403, 429, 503]),
    retry_after=st.one_of(st.none(), header_text),
    date=st.one_of(st.none(), header_text),
    location=st.one_of(st.none(), st.text(max_size=300)),
    content_type=st.sampled_from([None, "text/html", "text/plain", "application/xhtml+xml; q"]),
    body=st.one_of(
        st.binary(max_size=300),
        st.builds(lambda title, rest: b"<html><title>" + title.encode("utf-8", "surrogatepass") + b"</title>" + rest,
                  st.text(max_size=300), st.binary(max_size=50)),
        st.sampled_from([CHALLENGE, CLOUDFLARE_1015, LOGIN, b"error code: 1015", b"ok", OPEN]),
    ),
)
def test_any_guarded_answer_meets_only_our_errors(
    step: str, status: int, retry_after: str | None, date: str | None, location: str | None,
    content_type: str | None, body: bytes,
) -> None:
    headers = [(name, value) for name, value in (("Retry-After", retry_after), ("Date", date),
               ("Location", location), ("Content-Type", content_type)) if value is not None]
    _, answer = at_step(step)
    try:
        answer(status, headers, body)
    except HandshakeError as caught:
        error = caught
    except RemoteProtocolError:
        return  # a 200 with a body that is no Engine.IO and no page
    else:
        return  # an answer that was what the step expected
    if isinstance(error, RedirectError):
        shown(error.location, 2048)
    elif isinstance(error, RateLimitedError):
        shown(error.retry_after_header, 100)
        assert error.retry_after is None or error.retry_after >= 0
    elif isinstance(error, ChallengeError | UnexpectedPageError):
        shown(error.title, 200)
    else:
        assert type(error) is HandshakeError
    shown(error.body_excerpt, 200)
    assert "\n" not in str(error) and len(str(error)) < 1500


def test_a_rate_limit_in_the_middle_of_an_answer_keeps_its_text() -> None:
    s, answer = at_step("poll")
    answer(200, [], b'40{"sid":"S1"}')
    s.query("hi", model="sonar", now=1.1)
    requests = [i for i in s.transmit() if isinstance(i, HTTPRequest)]
    post, poll = (next(r for r in requests if r.method == method) for method in ("POST", "GET"))
    s.receive_http_response(post.request_id, 200, [], b"ok", 1.2)
    s.receive_http_response(poll.request_id, 200, [], b'42["sonar_query_progress",{"output":"Half","final":false}]',
                            1.3)
    (again,) = [i for i in s.transmit() if isinstance(i, HTTPRequest) and i.method == "GET"]
    with pytest.raises(RateLimitedError, match="a long-polling GET") as caught:
        s.receive_http_response(again.request_id, 429, [("Retry-After", "2")], b"", 1.4)
    assert (caught.value.partial_text, caught.value.retry_after) == ("Half", 2.0)
