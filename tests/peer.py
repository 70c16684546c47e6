"""A scripted in-memory peer for the sans-IO client's transcript tests.

No sockets: the test plays the server.  ``Harness`` carries out the client's
``transmit()`` instructions into per-stream buffers; server-side layers
(a proxy script, an in-memory TLS server) turn those raw bytes into the
plaintext a test asserts byte for byte, and wrap the test's replies.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import struct
from typing import Any

from wsproto.frame_protocol import FrameProtocol, Opcode

from plabs_proto.events import CloseStream, Event, OpenStream, SendBytes
from plabs_proto.wire.client import LabsClient

T = "d82c07cd"  # the first draw of random.Random(0), as the `t` cache buster
KEY = "a6qUVePnBoLCCUysYp9vvg=="  # the second: the Sec-WebSocket-Key


def http_response(status: int, body: bytes | str = b"", *, reason: str = "", headers: dict[str, str] | None = None,
                  close: bool = False) -> bytes:
    """An HTTP/1.1 response with a Content-Length."""
    if isinstance(body, str):
        body = body.encode("utf-8")
    reason = reason or {200: "OK", 101: "Switching Protocols", 400: "Bad Request", 403: "Forbidden",
                        404: "Not Found"}.get(status, "Whatever")
    head = f"HTTP/1.1 {status} {reason}\r\n"
    all_headers = {"Content-Type": "text/plain; charset=UTF-8", "Content-Length": str(len(body))}
    all_headers.update(headers or {})
    if close:
        all_headers["Connection"] = "close"
    for key, value in all_headers.items():
        head += f"{key}: {value}\r\n"
    return head.encode("latin-1") + b"\r\n" + body


# -- what the client sends: the Chrome 152 (Windows) profile, byte for byte ----------------------------------

CHROME_UA = (
    b"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    b"Chrome/152.0.0.0 Safari/537.36"
)
CHROME_CH_UA = b'"Chromium";v="152", "Not?A_Brand";v="24", "Google Chrome";v="152"'
ORIGIN = b"https://labs.perplexity.ai"


def chrome_request(method: str, target: str, body: bytes = b"", *, host: bytes = b"labs.test",
                   cookie: bytes | None = None, site: bytes = b"cross-site") -> bytes:
    """A polling GET or POST as the client sends it: Chrome's XHR headers in Chrome's order.

    ``site`` is ``Sec-Fetch-Site``: ``cross-site`` for the tests' ``http://labs.test`` server
    (another scheme and site than the ``https://labs.perplexity.ai`` origin).
    """
    post = method == "POST"
    return (
        method.encode() + b" " + target.encode() + b" HTTP/1.1\r\nHost: " + host + b"\r\n"
        + b"Connection: keep-alive\r\n"
        + (b"Content-Length: " + str(len(body)).encode() + b"\r\n" if post else b"")
        + b'sec-ch-ua-platform: "Windows"\r\n'
        + b"User-Agent: " + CHROME_UA + b"\r\n"
        + b"sec-ch-ua: " + CHROME_CH_UA + b"\r\n"
        + (b"Content-Type: text/plain;charset=UTF-8\r\n" if post else b"")
        + b"sec-ch-ua-mobile: ?0\r\n"
        + b"Accept: */*\r\n"
        + b"Origin: " + ORIGIN + b"\r\n"
        + b"Sec-Fetch-Site: " + site + b"\r\n"
        + b"Sec-Fetch-Mode: cors\r\n"
        + b"Sec-Fetch-Dest: empty\r\n"
        + b"Referer: " + ORIGIN + b"/\r\n"
        + b"Accept-Encoding: gzip, deflate\r\n"
        + b"Accept-Language: en-US,en;q=0.9\r\n"
        + (b"Cookie: " + cookie + b"\r\n" if cookie is not None else b"")
        + b"\r\n" + body
    )


def chrome_upgrade(target: str, key: str, *, host: bytes = b"labs.test", cookie: bytes | None = None) -> bytes:
    """The WebSocket upgrade request as the client sends it: Chrome's handshake headers in Chrome's order."""
    return (
        b"GET " + target.encode() + b" HTTP/1.1\r\nHost: " + host + b"\r\n"
        + b"Connection: Upgrade\r\n"
        + b"Pragma: no-cache\r\n"
        + b"Cache-Control: no-cache\r\n"
        + b"User-Agent: " + CHROME_UA + b"\r\n"
        + b"Upgrade: websocket\r\n"
        + b"Origin: " + ORIGIN + b"\r\n"
        + b"Sec-WebSocket-Version: 13\r\n"
        + b"Accept-Encoding: gzip, deflate\r\n"
        + b"Accept-Language: en-US,en;q=0.9\r\n"
        + (b"Cookie: " + cookie + b"\r\n" if cookie is not None else b"")
        + b"Sec-WebSocket-Key: " + key.encode() + b"\r\n"
        + b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        + b"\r\n"
    )


def switching_protocols(key: str) -> bytes:
    from plabs_proto.wire.websocket import accept_token

    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_token(key)}\r\n\r\n"
    ).encode("ascii")


def ws_frame(payload: str | bytes, *, opcode: int | None = None, fin: bool = True, rsv1: bool = False) -> bytes:
    """An unmasked server frame (``rsv1``: its payload is compressed, RFC 7692)."""
    data = payload.encode("utf-8") if isinstance(payload, str) else payload
    if opcode is None:
        opcode = Opcode.TEXT if isinstance(payload, str) else Opcode.BINARY
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(data)
    if n < 126:
        header = struct.pack("!BB", first, n)
    elif n < 65536:
        header = struct.pack("!BBH", first, 126, n)
    else:
        header = struct.pack("!BBQ", first, 127, n)
    return header + data


def open_packet(sid: str = "SID1", ping_interval: int = 25000, ping_timeout: int = 20000,
                upgrades: tuple[str, ...] = ("websocket",), max_payload: int = 1000000) -> str:
    return "0" + json.dumps(
        {"sid": sid, "upgrades": list(upgrades), "pingInterval": ping_interval, "pingTimeout": ping_timeout,
         "maxPayload": max_payload},
        separators=(",", ":"),
    )


def progress(model: str, payload: dict[str, Any]) -> str:
    return "42" + json.dumps([f"{model}_query_progress", payload], separators=(",", ":"), ensure_ascii=False)


class ClientFrames:
    """Decodes the client's masked WebSocket frames (server side of wsproto)."""

    def __init__(self) -> None:
        self._proto = FrameProtocol(client=False, extensions=[])

    def feed(self, data: bytes) -> list[str | bytes]:
        self._proto.receive_bytes(data)
        out: list[str | bytes] = []
        for frame in self._proto.received_frames():
            if frame.opcode is Opcode.CLOSE:
                out.append(b"<close>")
            elif isinstance(frame.payload, (str, bytes)):
                out.append(frame.payload)
        return out


class MemoryTLSServer:
    """The server side of TLS over two MemoryBIOs; collects what the client sent."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.ssl = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.handshake_done = False
        self.received = bytearray()
        self.peer_closed = False

    def receive_data(self, data: bytes) -> None:
        if data:
            self.incoming.write(data)
        else:
            self.incoming.write_eof()
        if not self.handshake_done:
            try:
                self.ssl.do_handshake()
            except ssl.SSLWantReadError:
                return
            self.handshake_done = True
        while True:
            try:
                chunk = self.ssl.read(65536)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLZeroReturnError:
                self.peer_closed = True
                return
            if not chunk:
                self.peer_closed = True
                return
            self.received += chunk

    def send(self, data: bytes) -> None:
        self.ssl.write(data)

    def close_notify(self) -> None:
        with contextlib.suppress(ssl.SSLWantReadError):
            self.ssl.unwrap()

    def data_to_send(self) -> bytes:
        return self.outgoing.read()


class Harness:
    """Carries out the client's instructions into buffers the test reads."""

    def __init__(self, client: LabsClient) -> None:
        self.client = client
        self.now = 0.0
        self.opened: list[OpenStream] = []
        self.closed: list[int] = []
        self.raw: dict[int, bytearray] = {}
        self.tls: dict[int, MemoryTLSServer] = {}
        self.tls_context: ssl.SSLContext | None = None

    def pump(self) -> None:
        for instruction in self.client.transmit():
            if isinstance(instruction, OpenStream):
                self.opened.append(instruction)
                self.raw[instruction.stream_id] = bytearray()
                if self.tls_context is not None:
                    self.tls[instruction.stream_id] = MemoryTLSServer(self.tls_context)
            elif isinstance(instruction, SendBytes):
                assert instruction.stream_id not in self.closed, "bytes sent on a closed stream"
                self.raw[instruction.stream_id] += instruction.data
            elif isinstance(instruction, CloseStream):
                self.closed.append(instruction.stream_id)

    def take_raw(self, stream_id: int) -> bytes:
        self.pump()
        data = bytes(self.raw[stream_id])
        self.raw[stream_id].clear()
        return data

    def take(self, stream_id: int) -> bytes:
        """Plaintext the client wrote on ``stream_id`` since the last call (TLS handled)."""
        data = self.take_raw(stream_id)
        end = self.tls.get(stream_id)
        if end is None:
            return data
        while data:  # run the TLS handshake to its end, then collect the plaintext
            end.receive_data(data)
            reply = end.data_to_send()
            data = b""
            if reply:
                self.client.receive_data(stream_id, reply, self.now)
                data = self.take_raw(stream_id)
        plain = bytes(end.received)
        end.received.clear()
        return plain

    def reply(self, stream_id: int, data: bytes) -> None:
        end = self.tls.get(stream_id)
        if end is not None:
            end.send(data)
            data = end.data_to_send()
        self.client.receive_data(stream_id, data, self.now)
        self.pump()

    def events(self) -> list[Event]:
        return self.client.events()


def large_progress_event() -> dict[str, object]:
    """A progress event of about 2 KB with citations and nested fields (tests and benchmarks/core.py)."""
    return {
        "output": "The answer is é😀. " * 60,
        "status": "pending",
        "final": False,
        "citations": [f"https://example.com/{i}" for i in range(20)],
        "chunks": [f"chunk {i}" for i in range(30)],
        "model": "sonar",
        "nested": {"a": [1, 2.5, None, True], "b": {"c": "é😀"}},
    }
