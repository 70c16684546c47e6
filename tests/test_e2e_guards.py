"""End to end: a moved or guarded service (the emulator's guard switches) meets each backend.

The emulator answers one step of the handshake with a redirect, a 429, Cloudflare's
error 1015, Cloudflare's challenge or a login page; ``ask`` on the asyncio, trio and
blocking backends (and the curl backend, over LabsSession) raises that refusal's
``HandshakeError`` subclass with the server's words in its fields, and the CLI
prints it in one line with its own exit status.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import EmulatorFactory
from test_e2e_matrix import BACKENDS, FAST, run_ask

from plabs_proto.errors import (
    ChallengeError,
    HandshakeError,
    LabsError,
    RateLimitedError,
    RedirectError,
    UnexpectedPageError,
)

#: Each guard: the emulator's switches (the step filled in by the test), the error, its fields.  The
#: redirect points at a loopback port nobody listens on: a client that followed it would fail there.
GUARDS: dict[str, tuple[dict[str, Any], type[HandshakeError], dict[str, Any]]] = {
    "redirect": (
        {"redirect_to": "http://127.0.0.1:9/moved/"},
        RedirectError,
        {"status": 302, "location": "http://127.0.0.1:9/moved/", "cloudflare": False},
    ),
    "rate_limit": (
        {"retry_after": "7"},
        RateLimitedError,
        {"status": 429, "retry_after": 7.0, "retry_after_header": "7", "cloudflare": False},
    ),
    "rate_limit_cloudflare": (
        {"rate_limit_page": "cloudflare", "retry_after": None},
        RateLimitedError,
        {"status": 429, "retry_after": None, "retry_after_header": None, "cloudflare": True},
    ),
    "cloudflare": ({}, ChallengeError, {"status": 403, "title": "Just a moment...", "cloudflare": True}),
    "login_page": (
        {},
        UnexpectedPageError,
        {"status": 200, "title": "Sign in - Perplexity", "content_type": "text/html; charset=UTF-8"},
    ),
}
#: (the emulator's step, the transport that meets it, the words the error names it by)
STEPS = [
    ("polling", "upgrade", "the Engine.IO handshake (polling GET)"),
    ("upgrade", "upgrade", "the WebSocket upgrade"),
    ("upgrade", "websocket", "the WebSocket upgrade"),
    ("post", "polling", "POST"),
    ("poll", "polling", "a long-polling GET"),
]


def switches(guard: str, step: str) -> dict[str, Any]:
    extra, _, _ = GUARDS[guard]
    name = "rate_limit" if guard.startswith("rate_limit") else guard
    return {name: step, **extra, **FAST}


def check(error: LabsError, guard: str, what: str) -> None:
    _, kind, fields = GUARDS[guard]
    assert type(error) is kind
    assert {name: getattr(error, name) for name in fields} == fields
    assert what in str(error)


@pytest.mark.parametrize("guard", GUARDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_each_guard_on_the_opening_get_and_on_the_upgrade(
    backend: str, guard: str, emulator_factory: EmulatorFactory
) -> None:
    for step, transport, what in STEPS[:3]:
        url = emulator_factory(**switches(guard, step)).url
        with pytest.raises(HandshakeError) as caught:
            run_ask(backend, "hello", server=url, transport=transport, timeout=10)
        check(caught.value, guard, what)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("step", "transport", "what"), STEPS[3:])
def test_a_guard_on_the_polling_requests_after_the_handshake(
    backend: str, step: str, transport: str, what: str, emulator_factory: EmulatorFactory
) -> None:
    url = emulator_factory(**switches("rate_limit", step)).url
    with pytest.raises(HandshakeError) as caught:
        run_ask(backend, "hello", server=url, transport=transport, timeout=10)
    check(caught.value, "rate_limit", what)


def run_curl_ask(url: str, transport: str) -> None:
    """Ask on the curl backend (skipped without curl_cffi) and read the answer to its end."""
    curl = pytest.importorskip("plabs_proto.backends.curl")

    async def ask() -> None:
        async with contextlib.aclosing(curl.ask("hello", server=url, transport=transport, timeout=10)) as answer:
            async for _ in answer:
                pass

    asyncio.run(ask())


def test_the_curl_backend_raises_the_same_errors(emulator_factory: EmulatorFactory) -> None:
    for guard in ("redirect", "rate_limit", "login_page"):
        url = emulator_factory(**switches(guard, "polling")).url
        with pytest.raises(HandshakeError) as caught:
            run_curl_ask(url, "polling")
        check(caught.value, guard, "the Engine.IO handshake (polling GET)")


def test_the_curl_backend_names_a_refused_upgrade_by_its_status(emulator_factory: EmulatorFactory) -> None:
    """curl_cffi hides the refusing response's headers: the class comes from the status alone."""
    for guard, kind in (("redirect", RedirectError), ("rate_limit", RateLimitedError)):
        url = emulator_factory(**switches(guard, "upgrade")).url
        with pytest.raises(kind) as caught:
            run_curl_ask(url, "upgrade")
        assert "WebSocket upgrade" in str(caught.value), caught.value
        assert caught.value.status == (302 if guard == "redirect" else 429)


# -- the command line ------------------------------------------------------------------------------


def test_the_emulator_command_takes_every_guard_step() -> None:
    from plabs_proto.backends.programs import cli, emulator

    assert cli._GUARD_STEPS == emulator.GUARD_STEPS
    result = plabs("emulator", "--help")
    for option in ("--redirect STEP", "--redirect-to URL", "--rate-limit STEP", "--retry-after VALUE",
                   "--rate-limit-page", "--cloudflare STEP", "--login-page STEP"):
        assert option in result.stdout
    result = plabs("emulator", "--rate-limit", "sometimes")
    assert result.returncode == 2 and "invalid choice: 'sometimes'" in result.stderr


PLABS = [str(Path(sys.executable).with_name("plabs"))]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1", "PYTHONWARNINGS": "error"}


def plabs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PLABS, *args], capture_output=True, text=True, timeout=30, env=ENV, encoding="utf-8")


@pytest.mark.parametrize(
    ("guard", "status", "message"),
    [
        ("redirect", 3, "expected HTTP 200 for the Engine.IO handshake (polling GET), got HTTP 302 Found "
                        "redirecting to 'http://127.0.0.1:9/moved/': the service moved; redirects are not "
                        "followed (point server= at the new address if you trust it); Perplexity Labs was retired "
                        "in 2025: --service perplexity reaches the current endpoint (POST /rest/sse/perplexity_ask)"),
        ("rate_limit", 4, "expected HTTP 200 for the Engine.IO handshake (polling GET), got HTTP 429 Too Many "
                          "Requests: rate limited; Retry-After '7': retry in 7 s"),
        ("cloudflare", 5, "Cloudflare blocked the Engine.IO handshake (polling GET): expected HTTP 200, got HTTP "
                          "403 Forbidden with a Cloudflare challenge page ('Just a moment...'); only a browser-like "
                          "client gets through (try the curl backend)"),
        ("login_page", 6, "expected the Engine.IO open packet '0{...}' from the Engine.IO handshake (polling GET), "
                          "got an HTML page (HTTP 200 OK, text/html; charset=UTF-8) titled 'Sign in - Perplexity': "
                          "a login or web page, not the Engine.IO server (check server= and path=, or whether the "
                          "service wants a login)"),
    ],
)
def test_the_cli_prints_one_line_and_exits_with_the_status_of_the_kind(
    guard: str, status: int, message: str, emulator_factory: EmulatorFactory
) -> None:
    url = emulator_factory(**switches(guard, "polling")).url
    result = plabs("ask", "--server", url, "hello")
    assert (result.returncode, result.stdout, result.stderr) == (status, "", f"plabs: error: {message}\n")
    result = plabs("ask", "--json", "--server", url, "hello")
    assert result.returncode == status
    [event] = [json.loads(line) for line in result.stdout.splitlines()]
    assert event["error"] == GUARDS[guard][1].__name__ and event["message"] == message
    fields = GUARDS[guard][2]
    assert event["status"] == fields["status"]
    for name in ("location", "retry_after", "title"):
        if name in fields:
            assert event[name] == fields[name]
