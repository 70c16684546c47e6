"""The browser profile on the byte level: Chrome's headers in Chrome's order, cookies, options.

Byte-exact transcripts against the scripted in-memory peer of ``peer.py``; the
expected request heads are spelled out there (``chrome_request``, ``chrome_upgrade``).
"""

from __future__ import annotations

import json
import random

import pytest
from peer import (
    CHROME_CH_UA,
    CHROME_UA,
    KEY,
    ORIGIN,
    ClientFrames,
    Harness,
    T,
    chrome_request,
    chrome_upgrade,
    http_response,
    open_packet,
    switching_protocols,
    ws_frame,
)
from plabs_proto.backends._config import parse_options

from plabs_proto.config import ClientConfig
from plabs_proto.errors import LocalProtocolError
from plabs_proto.wire.browser import CHROME, fetch_site, merge_headers
from plabs_proto.wire.client import LabsClient
from plabs_proto.wire.trace import TraceError, make_header, parse_header

POLL = f"/socket.io/?EIO=4&transport=polling&t={T}"
POLL_SID = POLL + "&sid=SID1"
WS_SID = "/socket.io/?EIO=4&transport=websocket&sid=SID1"
CONNECT = b'40{"jwt":"anonymous-ask-user"}'


def make(transport: str = "upgrade", **kw: object) -> Harness:
    config = ClientConfig(server="http://labs.test", transport=transport, **kw)  # type: ignore[arg-type]
    return Harness(LabsClient(config, rng=random.Random(0)))


# -- cookies -----------------------------------------------------------------------------------------------


def test_polling_cookies_go_back_on_every_later_request_in_chromes_place() -> None:
    """A cookie from the open packet's response and one from a later POST's answer ride on every
    later GET and POST, last of the headers, as Chrome places ``Cookie``."""
    h = make("polling")
    c = h.client
    c.connect(0.0)
    assert h.take(1) == chrome_request("GET", POLL)
    h.reply(1, http_response(200, open_packet(), headers={"Set-Cookie": "__cf_bm=abc.123; Path=/; HttpOnly"}))
    assert h.take(2) == chrome_request("POST", POLL_SID, CONNECT, cookie=b"__cf_bm=abc.123")
    assert h.take(1) == chrome_request("GET", POLL_SID, cookie=b"__cf_bm=abc.123")
    h.reply(2, http_response(200, "ok", headers={"Set-Cookie": "lb=b2; Secure; SameSite=None"}))
    h.reply(1, http_response(200, '40{"sid":"S1"}\x1e2'))
    both = b"__cf_bm=abc.123; lb=b2"
    assert h.take(2) == chrome_request("POST", POLL_SID, b"3", cookie=both)  # the pong
    assert h.take(1) == chrome_request("GET", POLL_SID, cookie=both)
    # A new value for a kept name replaces it in place.
    h.reply(2, http_response(200, "ok", headers={"Set-Cookie": "__cf_bm=new"}))
    h.reply(1, http_response(200, "2"))
    assert h.take(2) == chrome_request("POST", POLL_SID, b"3", cookie=b"__cf_bm=new; lb=b2")
    assert h.take(1) == chrome_request("GET", POLL_SID, cookie=b"__cf_bm=new; lb=b2")
    assert c.cookies == {"__cf_bm": "new", "lb": "b2"}


def test_the_upgrade_carries_the_polling_cookie_and_the_101s_cookie_is_kept() -> None:
    h = make()
    c = h.client
    c.connect(0.0)
    h.pump()
    assert h.take(1) == chrome_request("GET", POLL)
    h.reply(1, http_response(200, open_packet(), headers={"Set-Cookie": "__cf_bm=abc.123; Path=/"}))
    assert h.take(1) == chrome_request("POST", POLL_SID, CONNECT, cookie=b"__cf_bm=abc.123")
    assert h.take(2) == chrome_upgrade(WS_SID, KEY, cookie=b"__cf_bm=abc.123")
    accept = switching_protocols(KEY)
    h.reply(2, accept[:-2] + b"Set-Cookie: ws=on-the-101; Path=/\r\n\r\n")
    h.reply(1, http_response(200, "OK"))
    assert ClientFrames().feed(h.take(2)) == ["2probe", "5"]
    # No HTTP request follows a 101 in a session; the cookie is kept for the ones a client would send.
    assert c.cookies == {"__cf_bm": "abc.123", "ws": "on-the-101"}


def test_the_websocket_transport_sends_no_cookie_before_it_has_one() -> None:
    h = make("websocket")
    h.client.connect(0.0)
    assert h.take(1) == chrome_upgrade("/socket.io/?EIO=4&transport=websocket", KEY)
    h.reply(1, switching_protocols(KEY) + ws_frame(open_packet(upgrades=())))
    assert ClientFrames().feed(h.take(1)) == [CONNECT.decode()]


# -- the caller's headers and User-Agent ----------------------------------------------------------------------


def test_callers_headers_replace_the_profiles_in_place_and_others_go_last() -> None:
    h = make(headers=(("accept-language", "fr-FR,fr;q=0.9"), ("X-Extra", "1"), ("ORIGIN", "https://elsewhere.test")))
    h.client.connect(0.0)
    expected = (
        chrome_request("GET", POLL)
        .replace(b"Accept-Language: en-US,en;q=0.9\r\n", b"accept-language: fr-FR,fr;q=0.9\r\n")
        .replace(b"Origin: " + ORIGIN + b"\r\n", b"ORIGIN: https://elsewhere.test\r\n")
        .replace(b"\r\n\r\n", b"\r\nX-Extra: 1\r\n\r\n")
    )
    assert h.take(1) == expected


def test_a_user_agent_of_the_callers_drops_the_client_hints() -> None:
    """``user_agent=`` replaces the User-Agent in its place; sec-ch-ua* would contradict it, so they go."""
    h = make(user_agent="Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0")
    h.client.connect(0.0)
    h.pump()
    firefox = b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0\r\n"
    expected = (
        chrome_request("GET", POLL)
        .replace(b'sec-ch-ua-platform: "Windows"\r\n', b"")
        .replace(b"sec-ch-ua: " + CHROME_CH_UA + b"\r\n", b"")
        .replace(b"sec-ch-ua-mobile: ?0\r\n", b"")
        .replace(b"User-Agent: " + CHROME_UA + b"\r\n", firefox)
    )
    assert h.take(1) == expected
    h.reply(1, http_response(200, open_packet()))
    h.take(1)
    assert h.take(2) == chrome_upgrade(WS_SID, KEY).replace(b"User-Agent: " + CHROME_UA + b"\r\n", firefox)


def test_a_user_agent_header_drops_the_client_hints_too() -> None:
    h = make(headers=(("User-Agent", "curl/8.5.0"),))
    h.client.connect(0.0)
    sent = h.take(1)
    assert b"\r\nUser-Agent: curl/8.5.0\r\n" in sent
    assert b"sec-ch-ua" not in sent


def test_the_profiles_own_user_agent_keeps_the_hints() -> None:
    h = make(user_agent=CHROME_UA.decode())
    h.client.connect(0.0)
    assert h.take(1) == chrome_request("GET", POLL)


# -- the WebSocket extension offer and the plain header set -------------------------------------------------


def test_permessage_deflate_is_offered_last_unless_turned_off() -> None:
    offer = b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    for deflate in (True, False):
        h = make(permessage_deflate=deflate)
        h.client.connect(0.0)
        h.pump()
        h.take(1)
        h.reply(1, http_response(200, open_packet()))
        expected = chrome_upgrade(WS_SID, KEY)
        assert expected.endswith(offer + b"\r\n")
        assert h.take(2) == (expected if deflate else expected.replace(offer, b""))


def test_without_a_profile_the_plain_headers_go_out() -> None:
    """``browser=None``: what plabs-proto sent before profiles and compression (old traces replay with it)."""
    h = make(browser=None, user_agent="plabs-proto/0.1", accept_encoding=False, permessage_deflate=False)
    h.client.connect(0.0)
    h.pump()
    common = (b"User-Agent: plabs-proto/0.1\r\nAccept: */*\r\nOrigin: https://labs.perplexity.ai\r\n"
              b"Referer: https://labs.perplexity.ai/\r\n")
    assert h.take(1) == b"GET " + POLL.encode() + b" HTTP/1.1\r\nHost: labs.test\r\n" + common + b"\r\n"
    h.reply(1, http_response(200, open_packet(), headers={"Set-Cookie": "a=1"}))
    assert h.take(1) == (
        b"POST " + POLL_SID.encode() + b" HTTP/1.1\r\nHost: labs.test\r\n" + common
        + b"Cookie: a=1\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: 30\r\n\r\n" + CONNECT
    )
    assert h.take(2) == (
        b"GET " + WS_SID.encode() + b" HTTP/1.1\r\nHost: labs.test\r\n" + common
        + b"Cookie: a=1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        + b"Sec-WebSocket-Key: " + KEY.encode() + b"\r\n\r\n"
    )


def test_without_a_profile_the_callers_headers_go_last_as_before() -> None:
    h = make(browser=None, user_agent="plabs-proto/0.1", accept_encoding=False,
             headers=(("user-agent", "Mozilla/5.0 (X11)"), ("X-Extra", "1")))
    h.client.connect(0.0)
    assert h.take(1) == (
        b"GET " + POLL.encode() + b" HTTP/1.1\r\nHost: labs.test\r\nAccept: */*\r\n"
        b"Origin: https://labs.perplexity.ai\r\nReferer: https://labs.perplexity.ai/\r\n"
        b"user-agent: Mozilla/5.0 (X11)\r\nX-Extra: 1\r\n\r\n"
    )


def test_a_browser_that_is_not_a_profile_is_refused() -> None:
    with pytest.raises(LocalProtocolError, match="expected browser as a BrowserProfile or None, got 'chrome'"):
        LabsClient(ClientConfig(browser="chrome"), rng=random.Random(0))  # type: ignore[arg-type]


# -- the rules of the profile ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "server", "site"),
    [
        ("https://labs.perplexity.ai", "https://www.perplexity.ai", "same-site"),
        ("https://labs.perplexity.ai", "https://www.perplexity.ai:443/socket.io/", "same-site"),
        ("https://labs.perplexity.ai", "https://labs.perplexity.ai:443", "same-origin"),
        ("https://labs.perplexity.ai", "https://labs.perplexity.ai:8443", "same-site"),
        ("https://labs.perplexity.ai", "http://www.perplexity.ai", "cross-site"),  # another scheme
        ("https://labs.perplexity.ai", "https://perplexity.example", "cross-site"),
        ("https://labs.perplexity.ai", "http://127.0.0.1:8000", "cross-site"),
        ("http://127.0.0.1:3000", "http://127.0.0.1:8000", "same-site"),
        ("http://10.0.0.1", "http://11.0.0.1", "cross-site"),  # an address is its own site
        ("https://labs.perplexity.ai", "https://[::1", "cross-site"),  # not a URL
    ],
)
def test_sec_fetch_site(origin: str, server: str, site: str) -> None:
    assert fetch_site(origin, server) == site


def test_merge_headers_replaces_every_one_of_a_name_at_the_first_place() -> None:
    base = [("A", "1"), ("Set", "x"), ("B", "2"), ("set", "y")]
    caller = [("c", "3"), ("SET", "p"), ("SET", "q")]
    assert merge_headers(base, caller) == [("A", "1"), ("SET", "p"), ("SET", "q"), ("B", "2"), ("c", "3")]
    assert merge_headers(base, []) == base


# -- traces name the profile ----------------------------------------------------------------------------


def test_a_trace_header_names_the_profile_and_an_old_one_replays_without() -> None:
    header = make_header(server="http://127.0.0.1:9", messages="hi", seed=1)
    assert header["browser"] == "chrome152"
    assert parse_header(json.dumps(header)).client_config().browser is CHROME
    del header["browser"]
    assert parse_header(json.dumps(header)).client_config().browser is None
    header["browser"] = None
    assert parse_header(json.dumps(header)).client_config().browser is None
    header["browser"] = "netscape4"
    with pytest.raises(TraceError, match="trace line 1: expected a browser profile among chrome131-macos, chrome152"):
        parse_header(json.dumps(header))


# -- the backends' options ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"browser": "chrome"}, "expected browser as a BrowserProfile or None, got 'chrome'"),
        ({"permessage_deflate": "yes"}, "expected permessage_deflate as True or False, got 'yes'"),
        ({"user_agent": 5}, "expected user_agent as a str, got 5"),
    ],
)
def test_the_backends_check_the_profile_options(options: dict[str, object], message: str) -> None:
    with pytest.raises(LocalProtocolError, match=message):
        parse_options(options, with_model=False)


def test_the_backends_take_the_profile_options() -> None:
    config = parse_options({"browser": None, "user_agent": None, "permessage_deflate": True}, with_model=False).config
    assert (config.browser, config.user_agent, config.permessage_deflate) == (None, None, True)
