"""The seed provider's flow (gpt4free PerplexityLabs, 2025 form, g4f@05784da8) written with aiohttp.

Step by step, as /work/shared/protocol.md §1.2 describes it:

1. GET  ``/socket.io/?EIO=4&transport=polling&t=<8 hex>``     -> ``0{"sid": ...}``
2. POST ``...&sid=SID`` body ``40{"jwt":"anonymous-ask-user"}`` -> ``OK``
3. GET  ``...&sid=SID``                                        -> ``40{"sid": ...}``
4. a WebSocket to ``/socket.io/?EIO=4&transport=websocket&sid=SID`` (through the same
   ``ClientSession``, as the provider does; aiohttp may reuse the pooled keep-alive connection)
5. send ``2probe``, wait ``3probe``; send ``5``, wait ``6``
6. send ``42["perplexity_labs", {...}]``; read frames, answer ``2`` with ``3``, yield the new
   part of each cumulative ``output`` until ``final``.

Origin and Referer are ``https://labs.perplexity.ai``.  ``python benchmarks/seed_client.py URL``
asks once and prints the answer.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import sys
from collections.abc import AsyncIterator

import aiohttp

ORIGIN = "https://labs.perplexity.ai"
JWT = "anonymous-ask-user"


class SeedError(RuntimeError):
    pass


async def seed_ask(
    server: str,
    prompt: str,
    *,
    model: str = "sonar",
    ssl_context: ssl.SSLContext | None = None,
    session: aiohttp.ClientSession | None = None,
) -> AsyncIterator[str]:
    """Ask once over the seed's flow; yield the answer text in pieces."""
    base = server.rstrip("/") + "/socket.io/"
    ws_base = "ws" + base[4:] if base.startswith("http") else base
    own = session is None
    if session is None:
        session = aiohttp.ClientSession(
            headers={"Origin": ORIGIN, "Referer": f"{ORIGIN}/"},
            connector=aiohttp.TCPConnector(ssl=ssl_context if ssl_context is not None else True),
        )
    try:
        t = format(random.getrandbits(32), "08x")
        async with session.get(f"{base}?EIO=4&transport=polling&t={t}") as response:
            response.raise_for_status()
            text = await response.text()
        if not text.startswith("0"):
            raise SeedError(f"expected the open packet, got {text[:60]!r}")
        sid = json.loads(text[1:])["sid"]
        post_data = "40" + json.dumps({"jwt": JWT}, separators=(",", ":"))
        async with session.post(f"{base}?EIO=4&transport=polling&t={t}&sid={sid}", data=post_data) as response:
            response.raise_for_status()
            if await response.text() != "OK":
                raise SeedError("expected OK to the connect POST")
        async with session.get(f"{base}?EIO=4&transport=polling&t={t}&sid={sid}") as response:
            response.raise_for_status()
            text = await response.text()
        if not text.startswith("40"):
            raise SeedError(f"expected the connect ack, got {text[:60]!r}")
        async with session.ws_connect(f"{ws_base}?EIO=4&transport=websocket&sid={sid}", autoping=False) as ws:
            await ws.send_str("2probe")
            if await ws.receive_str() != "3probe":
                raise SeedError("expected 3probe")
            await ws.send_str("5")
            if await ws.receive_str() != "6":
                raise SeedError("expected 6")
            request = {"version": "2.18", "source": "default", "model": model,
                       "messages": [{"role": "user", "content": prompt}]}
            await ws.send_str("42" + json.dumps(["perplexity_labs", request]))
            last = 0
            while True:
                message = await ws.receive_str()
                if message == "2":
                    if last == 0:
                        raise SeedError("Unknown error")  # the provider's ping-before-output rule
                    await ws.send_str("3")
                    continue
                if not message.startswith("42"):
                    continue
                try:
                    name, data = json.loads(message[2:])[:2]
                except (ValueError, TypeError) as exc:
                    raise SeedError(f"Message: {message[:60]}") from exc
                if name.endswith("_query_progress") and data.get("status") == "failed":
                    raise SeedError(f"API Error: {data.get('text')}")
                if "output" not in data:
                    continue
                output = data["output"]
                yield output[last:]
                last = len(output)
                if data["final"]:
                    break
    finally:
        if own:
            await session.close()


async def _main(server: str) -> None:
    async for text in seed_ask(server, "What is sans-IO?"):
        print(text, end="", flush=True)
    print()


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000"))
