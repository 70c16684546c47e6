"""The emulator's ``cookie`` switch, and the backends bringing the cookie back end to end.

The emulator sets the cookie on the handshake response and refuses (403) every later
request of the session without it, the WebSocket upgrade included: what Cloudflare's
``__cf_bm`` asks of a client.  First the switch itself, driven by ``http.client``
(which keeps no cookies), then ``ask`` on asyncio and trio over polling and the upgrade.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import ssl
from types import ModuleType

import pytest
from conftest import EmulatorFactory, TLSFiles
from plabs_proto.backends.programs.emulator import ALLOWED_ORIGIN, EmulatorConfig, default_answer

COOKIE = "__cf_bm=Q1w2E3r4.t5Y6-1732838400-1.0.1.1-abc_DEF"
ORIGIN = {"Origin": ALLOWED_ORIGIN}
UPGRADE = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


def request(port: int, method: str, target: str, headers: dict[str, str], body: bytes | None = None
            ) -> tuple[int, list[str], bytes]:
    """One request on a fresh connection: status, Set-Cookie values, body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, target, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.headers.get_all("Set-Cookie") or [], response.read()
    finally:
        conn.close()


def test_the_switch_sets_the_cookie_and_refuses_requests_without_it(emulator_factory: EmulatorFactory) -> None:
    port = emulator_factory(cookie=COOKIE).port
    status, cookies, body = request(port, "GET", "/socket.io/?EIO=4&transport=polling&t=0a1b2c3d", ORIGIN)
    assert status == 200
    assert cookies == [COOKIE + "; Path=/; HttpOnly; SameSite=None"]
    sid = json.loads(body[1:])["sid"]
    target = f"/socket.io/?EIO=4&transport=polling&t=0a1b2c3d&sid={sid}"
    connect = b'40{"jwt":"anonymous-ask-user"}'
    upgrade = f"/socket.io/?EIO=4&transport=websocket&sid={sid}"
    # Without the cookie (or with another value): 403, and the session goes on untouched.
    assert request(port, "POST", target, ORIGIN, connect)[::2] == (403, b"expected the cookie __cf_bm back")
    wrong = {**ORIGIN, "Cookie": "__cf_bm=stale"}
    assert request(port, "POST", target, wrong, connect)[0] == 403
    assert request(port, "GET", upgrade, {**ORIGIN, **UPGRADE})[0] == 403
    # With it: served, and no new cookie on a later response.
    kept = {**ORIGIN, "Cookie": "other=1; " + COOKIE}
    assert request(port, "POST", target, kept, connect) == (200, [], b"OK")
    assert request(port, "GET", target, kept)[:2] == (200, [])


def test_the_cookie_is_set_on_the_101_of_a_websocket_only_session(emulator_factory: EmulatorFactory) -> None:
    port = emulator_factory(cookie=COOKIE).port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/socket.io/?EIO=4&transport=websocket", headers={**ORIGIN, **UPGRADE})
        response = conn.getresponse()
        assert response.status == 101
        assert response.headers.get_all("Set-Cookie") == [COOKIE + "; Path=/; HttpOnly; SameSite=None"]
    finally:
        conn.close()


def test_a_cookie_that_is_not_name_equals_value_is_refused() -> None:
    with pytest.raises(ValueError, match="cookie must be name=value"):
        EmulatorConfig(cookie="a=b; Path=/")


# -- the backends bring it back ----------------------------------------------------------------------------


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.anyio
@pytest.mark.parametrize("transport", ["upgrade", "polling", "websocket"])
async def test_ask_brings_the_cookie_back_on_every_request(
    lab: ModuleType, transport: str, emulator_factory: EmulatorFactory
) -> None:
    emulator = emulator_factory(cookie=COOKIE, frame_delay=0.001)
    async with contextlib.aclosing(lab.ask("Cookies?", model="sonar", server=emulator.url, transport=transport)) as answer:
        text = "".join([piece async for piece in answer])
    assert text == default_answer("sonar", "Cookies?")


def test_a_cookie_whose_value_holds_an_equals_sign_is_taken_whole(emulator_factory: EmulatorFactory) -> None:
    # name=value splits at the first "=": a base64 value's padding belongs to the value.
    port = emulator_factory(cookie="__cf_bm=YWJj=").port
    body = request(port, "GET", "/socket.io/?EIO=4&transport=polling&t=0a1b2c3d", ORIGIN)[2]
    target = f"/socket.io/?EIO=4&transport=polling&t=0a1b2c3d&sid={json.loads(body[1:])['sid']}"
    connect = b'40{"jwt":"anonymous-ask-user"}'
    assert request(port, "POST", target, {**ORIGIN, "Cookie": "__cf_bm=YWJj="}, connect) == (200, [], b"OK")
    assert request(port, "POST", target, {**ORIGIN, "Cookie": "__cf_bm=YWJj"}, connect)[0] == 403


def test_the_cookie_goes_only_on_a_handshake_served_and_is_secure_over_tls(
    emulator_factory: EmulatorFactory, tls_files: TLSFiles
) -> None:
    handshake = "/socket.io/?EIO=4&transport=polling&t=0a1b2c3d"
    assert request(emulator_factory().port, "GET", handshake, ORIGIN)[:2] == (200, [])  # no cookie switch
    refused = emulator_factory(cookie=COOKIE, cloudflare="polling").port
    assert request(refused, "GET", handshake, ORIGIN)[:2] == (403, [])
    secure = emulator_factory(cookie=COOKIE, certfile=tls_files.certfile, keyfile=tls_files.keyfile).port
    context = ssl.create_default_context(cafile=tls_files.cafile)
    conn = http.client.HTTPSConnection("127.0.0.1", secure, timeout=5, context=context)
    try:
        conn.request("GET", handshake, headers=ORIGIN)
        response = conn.getresponse()
        assert response.headers.get_all("Set-Cookie") == [COOKIE + "; Path=/; HttpOnly; Secure; SameSite=None"]
        response.read()
    finally:
        conn.close()
