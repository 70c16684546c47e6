"""The ask service end to end: every socket backend against both servers of the SSE endpoint.

Each test runs twice (conftest's ``perplexity_server``): on the Python emulator and on the Node.js
server written apart from it, over real sockets: the warm-up and its cookies, the answer in each
shape and framing, follow-ups in the thread, TLS, both proxies, and the failures of §10.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import trio
from plabs_proto.backends import asyncio as pasyncio
from plabs_proto.backends import sync as psync
from plabs_proto.backends import trio as ptrio

from plabs_proto.errors import (
    ChallengeError,
    LabsError,
    RateLimitedError,
    RedirectError,
    RemoteProtocolError,
    SignInError,
)
from plabs_proto.events import AnswerFinished, Connected, Event, SearchQueries, TextDelta, ThreadIdentity

ANSWER = "Café, 東京 and a rocket 🚀: the answer [1] in pieces.\nSecond line."
Serve = Callable[..., str]
pytestmark = pytest.mark.timeout(60)


def options(url: str, **extra: Any) -> dict[str, Any]:
    return {"server": url, "service": "perplexity", "timeout": 20, **extra}


async def ask_asyncio(url: str, **extra: Any) -> str:
    return "".join([text async for text in pasyncio.ask("What is up?", **options(url, **extra))])


def ask_sync(url: str, **extra: Any) -> str:
    return "".join(psync.ask("What is up?", **options(url, **extra)))


def ask_trio(url: str, **extra: Any) -> str:
    async def main() -> str:
        return "".join([text async for text in ptrio.ask("What is up?", **options(url, **extra))])

    return trio.run(main)


ASKERS: dict[str, Callable[..., str]] = {
    "asyncio": lambda url, **extra: asyncio.run(ask_asyncio(url, **extra)),
    "trio": ask_trio,
    "sync": ask_sync,
}


@pytest.mark.parametrize("backend", sorted(ASKERS))
def test_ask_on_every_backend(perplexity_server: Serve, backend: str) -> None:
    url = perplexity_server(answer=ANSWER, require_cookie=True)
    assert ASKERS[backend](url) == ANSWER


@pytest.mark.parametrize(
    "settings",
    [
        {"shape": "steps", "line_ending": "lf", "early_final": True},
        {"shape": "workflow", "extras": True, "gzip": True},
        {"shape": "blocks", "write_size": 1, "chunk_size": 3, "early_final": True},
    ],
    ids=["steps-lf-trap", "workflow-extras-gzip", "blocks-1-byte-writes"],
)
def test_every_shape_and_framing(perplexity_server: Serve, settings: dict[str, Any]) -> None:
    url = perplexity_server(answer=ANSWER, **settings)
    assert ask_sync(url) == ANSWER


def test_a_connection_queries_twice_in_one_thread(perplexity_server: Serve) -> None:
    url = perplexity_server(answer=ANSWER)

    async def main() -> list[list[Event]]:
        out: list[list[Event]] = []
        async with pasyncio.connect(**options(url)) as connection:
            assert connection.connected == Connected(engine_sid="", socket_sid="", transport="sse")
            for prompt in ("First?", "And then?"):
                out.append([event async for event in connection.query(prompt)])
        return out

    first, second = asyncio.run(main())
    for events in (first, second):
        finish = events[-1]
        assert isinstance(finish, AnswerFinished) and finish.text == ANSWER
        assert "".join(e.text for e in events if isinstance(e, TextDelta)) == ANSWER
        assert any(isinstance(e, SearchQueries) for e in events)
    one = next(e for e in first if isinstance(e, ThreadIdentity))
    two = next(e for e in second if isinstance(e, ThreadIdentity))
    assert one.thread_url_slug == two.thread_url_slug and one.backend_uuid != two.backend_uuid
    assert one.read_write_token == two.read_write_token


def test_a_follow_up_on_trio_and_sync(perplexity_server: Serve) -> None:
    url = perplexity_server(answer=ANSWER, shape="workflow")

    async def trio_main() -> tuple[str, str]:
        async with ptrio.connect(**options(url)) as connection:
            texts = []
            for prompt in ("First?", "Then?"):
                events = [event async for event in connection.query(prompt)]
                assert isinstance(events[-1], AnswerFinished)
                texts.append(events[-1].text)
        return texts[0], texts[1]

    assert trio.run(trio_main) == (ANSWER, ANSWER)
    with psync.connect(**options(url)) as connection:
        slugs = set()
        for prompt in ("First?", "Then?"):
            events = list(connection.query(prompt))
            assert isinstance(events[-1], AnswerFinished) and events[-1].text == ANSWER
            slugs |= {e.thread_url_slug for e in events if isinstance(e, ThreadIdentity)}
        assert len(slugs) == 1


@pytest.mark.parametrize("backend", sorted(ASKERS))
def test_tls(perplexity_server: Serve, tls_files: Any, backend: str) -> None:
    url = perplexity_server(answer=ANSWER, certfile=tls_files.certfile, keyfile=tls_files.keyfile)
    assert url.startswith("https://")
    assert ASKERS[backend](url, cafile=tls_files.cafile) == ANSWER


@pytest.mark.parametrize("scheme", ["http", "socks5"])
def test_through_a_proxy(perplexity_server: Serve, proxy_factory: Any, tls_files: Any, scheme: str) -> None:
    url = perplexity_server(answer=ANSWER, certfile=tls_files.certfile, keyfile=tls_files.keyfile)
    proxy = proxy_factory(scheme).url()
    assert ask_sync(url, cafile=tls_files.cafile, proxy=proxy) == ANSWER


@pytest.mark.parametrize("backend", sorted(ASKERS))
def test_a_drop_mid_stream_keeps_the_partial_text(perplexity_server: Serve, backend: str) -> None:
    url = perplexity_server(answer=ANSWER, drop_after=5, chunk_size=4)
    with pytest.raises(RemoteProtocolError) as info:
        ASKERS[backend](url)
    assert info.value.partial_text and ANSWER.startswith(info.value.partial_text)
    assert info.value.partial_text != ANSWER


def test_a_failed_answer(perplexity_server: Serve) -> None:
    url = perplexity_server(answer=ANSWER, fail="Something went wrong", error_code="INTERNAL", fail_after=3)
    with pytest.raises(LabsError) as info:
        ask_sync(url)
    assert getattr(info.value, "error_code", None) == "INTERNAL"


def test_a_rate_limit_in_the_stream(perplexity_server: Serve) -> None:
    url = perplexity_server(fail="", fail_after=0)
    with pytest.raises(RateLimitedError) as info:
        ask_sync(url)
    assert getattr(info.value, "error_code", None) == "FREE_TIER_RATE_LIMITED"


def test_http_429(perplexity_server: Serve) -> None:
    url = perplexity_server(rate_limit="ask", retry_after="7")
    with pytest.raises(RateLimitedError) as info:
        ask_sync(url)
    assert info.value.status == 429 and info.value.retry_after == 7.0


@pytest.mark.parametrize("step", ["session", "ask"])
def test_cloudflare(perplexity_server: Serve, step: str) -> None:
    url = perplexity_server(cloudflare=step)
    with pytest.raises(ChallengeError):
        ask_sync(url)


def test_a_redirect(perplexity_server: Serve) -> None:
    url = perplexity_server(redirect="session")
    with pytest.raises(RedirectError) as info:
        ask_sync(url)
    assert info.value.location == "https://www.perplexity.ai/"


def test_a_required_session_token(perplexity_server: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    url = perplexity_server(answer=ANSWER, session_token="tok-123", require_cookie=True)
    monkeypatch.delenv("PLABS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("PLABS_COOKIES_FILE", raising=False)
    with pytest.raises(SignInError) as info:
        ask_sync(url)
    assert info.value.status == 401 and "missing or expired" in str(info.value)
    with pytest.raises(SignInError):
        ask_sync(url, session_token="tok-wrong")
    assert ask_sync(url, session_token="tok-123") == ANSWER
    monkeypatch.setenv("PLABS_SESSION_TOKEN", "tok-123")
    assert ask_sync(url) == ANSWER


def test_a_cookies_txt_signs_in(perplexity_server: Serve, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    url = perplexity_server(answer=ANSWER, session_token="tok-456")
    text = "#HttpOnly_.perplexity.ai\tTRUE\t/\tTRUE\t0\t__Secure-next-auth.session-token\ttok-456\n"
    assert ask_sync(url, cookies_txt=text) == ANSWER
    path = tmp_path / "cookies.txt"
    path.write_text(text)
    monkeypatch.delenv("PLABS_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("PLABS_COOKIES_FILE", str(path))
    assert ask_sync(url) == ANSWER


# -- a server that keeps no connection alive --------------------------------------------------------------

_FRAME = (
    '{"backend_uuid":"b-%d","read_write_token":"rw","thread_url_slug":"s","status":"COMPLETED","final":true,'
    '"blocks":[{"intended_usage":"ask_text","markdown_block":{"chunks":["Done."]}}]}'
)


async def _closing_server(asks: list[bytes]) -> asyncio.Server:
    """Answers every request, then closes the connection (as a server whose keep-alive ran out)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        body = await reader.readexactly(length)
        if head.startswith(b"GET"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
        else:
            asks.append(body)
            data = f"event: message\r\ndata: {_FRAME % len(asks)}\r\n\r\n".encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def test_queries_after_the_server_closed_every_connection() -> None:
    async def main() -> list[bytes]:
        asks: list[bytes] = []
        server = await _closing_server(asks)
        port = server.sockets[0].getsockname()[1]
        async with server, pasyncio.connect(**options(f"http://127.0.0.1:{port}")) as connection:
            await asyncio.sleep(0.1)  # the idle connection has nothing to read: it waits
            for prompt in ("First?", "Then?"):
                events = [event async for event in connection.query(prompt)]
                assert isinstance(events[-1], AnswerFinished) and events[-1].text == "Done."
                await asyncio.sleep(0.1)
        return asks

    asks = asyncio.run(main())
    assert len(asks) == 2 and b'"last_backend_uuid":"b-1"' in asks[1]


# -- the curl backend ----------------------------------------------------------------------------------------


def test_curl_asks_and_follows_up(perplexity_server: Serve, tls_files: Any) -> None:
    curl = pytest.importorskip("plabs_proto.backends.curl")
    url = perplexity_server(answer=ANSWER, require_cookie=True, gzip=True, write_size=7,
                            certfile=tls_files.certfile, keyfile=tls_files.keyfile)

    async def main() -> tuple[str, list[list[Event]]]:
        text = "".join([piece async for piece in curl.ask("What is up?", **options(url, cafile=tls_files.cafile))])
        runs: list[list[Event]] = []
        async with curl.connect(**options(url, cafile=tls_files.cafile)) as connection:
            for prompt in ("First?", "Then?"):
                runs.append([event async for event in connection.query(prompt)])
        return text, runs

    text, runs = asyncio.run(main())
    assert text == ANSWER
    slugs = set()
    for events in runs:
        assert isinstance(events[-1], AnswerFinished) and events[-1].text == ANSWER
        slugs |= {e.thread_url_slug for e in events if isinstance(e, ThreadIdentity)}
    assert len(slugs) == 1


def test_curl_errors(perplexity_server: Serve) -> None:
    curl = pytest.importorskip("plabs_proto.backends.curl")

    async def ask(url: str, **extra: Any) -> str:
        return "".join([piece async for piece in curl.ask("What is up?", **options(url, **extra))])

    with pytest.raises(RateLimitedError) as info:
        asyncio.run(ask(perplexity_server(rate_limit="ask", retry_after="7")))
    assert info.value.retry_after == 7.0
    with pytest.raises(ChallengeError):
        asyncio.run(ask(perplexity_server(cloudflare="ask")))
    with pytest.raises(SignInError):
        asyncio.run(ask(perplexity_server(session_token="tok-1")))
    assert asyncio.run(ask(perplexity_server(answer=ANSWER, session_token="tok-1"), session_token="tok-1")) == ANSWER
    with pytest.raises(LabsError) as dropped:
        asyncio.run(ask(perplexity_server(answer=ANSWER, drop_after=5, chunk_size=4)))
    assert dropped.value.partial_text and ANSWER.startswith(dropped.value.partial_text)
