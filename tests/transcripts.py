"""Valid server-side transcripts of whole sessions, a runner that replays them, and the invariants it checks.

A transcript is what a well-behaved server sends, step by step, to one :class:`LabsClient` session
on each of the three transports (``upgrade``, ``websocket``, ``polling``), optionally through an
HTTP or SOCKS5 proxy and over TLS.  A step is the bytes one stream receives at one moment, built
from *units* (an HTTP response, a WebSocket frame, a proxy reply, or raw bytes) so a fuzzer can
change a unit's meaning (inject a hostile packet) as well as its bytes (flip, insert, delete, splice).

:func:`run` replays steps into a client through the in-memory peer of ``peer.py`` (TLS is
encrypted after the mutation, so the client's HTTP and Engine.IO layers meet the hostile bytes,
not only its TLS layer), in any chunking, and checks after every call what the client promises
whatever a server sends:

* only :class:`LabsError` escapes (a :class:`LocalProtocolError` only for a use the client
  refused: bytes after it failed);
* after an error: ``state`` is ``ERROR``, every opened stream got a ``CloseStream``, the error's
  ``partial_text`` is the client's, and more bytes are refused;
* the events are consistent: the text delivered (deltas, revisions) is ``partial_text``, an
  ``AnswerFinished`` carries exactly the text delivered, a ``Closed`` leaves ``state`` ``CLOSED``
  with every stream closed;
* no single call takes more than :data:`CALL_LIMIT` seconds of CPU.
"""

from __future__ import annotations

import dataclasses
import json
import random
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cache

import trustme
from peer import (
    KEY,
    Harness,
    MemoryTLSServer,
    http_response,
    open_packet,
    progress,
    switching_protocols,
    ws_frame,
)

from plabs_proto.config import ClientConfig
from plabs_proto.errors import LabsError, LocalProtocolError
from plabs_proto.events import (
    AnswerFinished,
    AnswerRevised,
    Closed,
    Connected,
    Event,
    QueryFailed,
    TextDelta,
)
from plabs_proto.wire.client import ClientState, LabsClient

TRANSPORTS = ("upgrade", "websocket", "polling")
PROXIES = (None, "http", "socks5")
#: The most CPU time any one call into the client may take, in seconds: generous, far below what
#: a quadratic loop over a hostile input would take.  CPU time of this thread, not wall time: a
#: long run at ``nice 19`` on a loaded machine is descheduled for seconds at a time.
CALL_LIMIT = 2.0

HTTP_PROXY_REPLY = b"HTTP/1.1 200 Connection established\r\n\r\n"
SOCKS5_REPLIES = (b"\x05\x02", b"\x01\x00", b"\x05\x00\x00\x01\x7f\x00\x00\x01\x04\x38")


# -- units and steps ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    """One thing a server sends: ``kind`` is ``http`` (a response; ``body`` its body), ``ws`` (a
    text frame; ``body`` its payload), ``wsbin`` (a binary frame), or ``raw`` (bytes as they are)."""

    kind: str
    body: bytes | str
    status: int = 200

    def render(self) -> bytes:
        if self.kind == "http":
            return http_response(self.status, self.body)
        if self.kind == "ws":
            return ws_frame(self.body if isinstance(self.body, str) else self.body.decode("utf-8", "replace"))
        if self.kind == "wsbin":
            return ws_frame(self.body if isinstance(self.body, bytes) else self.body.encode())
        return self.body if isinstance(self.body, bytes) else self.body.encode("utf-8")


@dataclass(frozen=True)
class Step:
    """What stream ``stream`` receives at one moment.  ``tunnel``: a proxy's reply, below TLS
    (``"last"`` for the reply that opens the tunnel).
    ``data`` replaces the rendered units once a byte-level mutation touched them; ``eof``: the
    server closes the stream after the data."""

    stream: int
    units: tuple[Unit, ...] = ()
    tunnel: str = ""
    data: bytes | None = None
    eof: bool = False

    def render(self) -> bytes:
        return self.data if self.data is not None else b"".join(u.render() for u in self.units)


@dataclass
class Transcript:
    transport: str
    proxy: str | None
    tls: bool
    steps: list[Step]
    text: str  # the answer the unmutated transcript delivers
    citations: tuple[str, ...] = ()


def build(transport: str, outputs: Sequence[str], *, proxy: str | None = None, tls: bool = False,
          ascii_escapes: bool = False, pings: int = 1) -> Transcript:
    """The server's side of a session asking one question whose answer grows through ``outputs``."""
    assert outputs
    frames: list[str] = []
    for i, output in enumerate(outputs):
        final = i == len(outputs) - 1
        payload: dict[str, object] = {"output": output, "final": final}
        if final:
            payload.update(status="completed", citations=["https://a.example"], elapsed_time=0.5)
        if ascii_escapes:
            frames.append("42" + json.dumps(["sonar_query_progress", payload], separators=(",", ":")))
        else:
            frames.append(progress("sonar", payload))
    steps: list[Step] = []
    if transport == "upgrade":
        steps += [
            Step(1, (Unit("http", open_packet()),)),
            Step(2, (Unit("raw", switching_protocols(KEY)),)),
            Step(1, (Unit("http", "OK"),)),
            Step(2, (Unit("ws", "3probe"), Unit("ws", '40{"sid":"S1"}'), Unit("ws", "6"))),
        ]
        for i, text in enumerate(frames):
            units = [Unit("ws", text)]
            if i < pings:
                units.append(Unit("ws", "2"))
            steps.append(Step(2, tuple(units)))
    elif transport == "websocket":
        steps += [
            Step(1, (Unit("raw", switching_protocols(KEY)), Unit("ws", open_packet(upgrades=())))),
            Step(1, (Unit("ws", '40{"sid":"S9"}'),)),
        ]
        for i, text in enumerate(frames):
            units = [Unit("ws", text)]
            if i < pings:
                units.append(Unit("ws", "2"))
            steps.append(Step(1, tuple(units)))
    elif transport == "polling":
        steps += [
            Step(1, (Unit("http", open_packet()),)),
            Step(2, (Unit("http", "ok"),)),  # the CONNECT POST
            Step(1, (Unit("http", '40{"sid":"S1"}' + "\x1e2" * min(pings, 1)),)),
            Step(2, (Unit("http", "ok"),)),  # the query POST
        ]
        if pings:
            steps.append(Step(2, (Unit("http", "ok"),)))  # the pong POST
        for text in frames:
            steps.append(Step(1, (Unit("http", text),)))
    else:
        raise ValueError(transport)
    if proxy is not None:
        replies = (HTTP_PROXY_REPLY,) if proxy == "http" else SOCKS5_REPLIES
        opened = (1,) if transport == "websocket" else (1, 2)
        tunnels = [
            Step(s, (Unit("raw", reply),), tunnel="last" if i == len(replies) - 1 else "part")
            for s in opened
            for i, reply in enumerate(replies)
        ]
        steps = tunnels + steps
    return Transcript(transport, proxy, tls, steps, outputs[-1], ("https://a.example",))


# -- TLS ----------------------------------------------------------------------------------------------


@cache
def _ca() -> trustme.CA:
    return trustme.CA()


@cache
def _server_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _ca().issue_cert("labs.test").configure_cert(context)
    return context


@cache
def _client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    _ca().configure_trust(context)
    return context


# -- the runner and the invariants ----------------------------------------------------------------------


@dataclass
class Outcome:
    events: list[Event] = field(default_factory=list)
    error: LabsError | None = None
    state: ClientState = ClientState.IDLE
    partial_text: str = ""
    slowest: float = 0.0


Splitter = Callable[[bytes], list[bytes]]


def whole(data: bytes) -> list[bytes]:
    return [data]


def make_client(t: Transcript, *, max_message_size: int | None = None) -> tuple[LabsClient, Harness]:
    server = ("https" if t.tls else "http") + "://labs.test"
    proxy = None if t.proxy is None else f"{t.proxy}://bob:pw@proxy.test:{3128 if t.proxy == 'http' else 1080}"
    config = ClientConfig(server=server, transport=t.transport, proxy=proxy,
                          ssl_context=_client_context() if t.tls else None)
    if max_message_size is not None:
        config = dataclasses.replace(config, max_message_size=max_message_size)
    client = LabsClient(config, rng=random.Random(0))
    h = Harness(client)
    if t.tls and t.proxy is None:
        h.tls_context = _server_context()
    return client, h


def run(t: Transcript, steps: Sequence[Step] | None = None, split: Splitter = whole, *,
        close: bool = False) -> Outcome:
    """Replay ``steps`` (default: the transcript's own) into a fresh client and check the invariants."""
    client, h = make_client(t)
    out = Outcome()
    delivered = _Delivered()

    def call(fn: Callable[[], object]) -> bool:
        """Run one client call; False once the client failed."""
        start = time.thread_time()
        try:
            fn()
        except LabsError as exc:
            assert not isinstance(exc, LocalProtocolError), f"a local error from remote bytes: {exc!r}"
            out.error = exc
        finally:
            spent = time.thread_time() - start
            out.slowest = max(out.slowest, spent)
            assert spent < CALL_LIMIT, f"one call took {spent:.2f} s"
        h.pump()
        delivered.take(client, client.events())  # what came before an error is still delivered
        return out.error is None

    ok = call(lambda: (client.connect(0.0), client.query("hi", model="sonar", now=0.0)))
    for step in steps if steps is not None else t.steps:
        if not ok:
            break
        s = step.stream
        h.pump()
        if s not in h.raw:
            continue  # the client never opened that stream (a mutation changed its course)
        if s in h.closed:
            # Late bytes for a stream the client closed: ignored, not an error.
            ok = call(lambda s=s, step=step: client.receive_data(s, step.render() or b"x", 0.0))
            continue
        if step.tunnel:
            h.take_raw(s)  # the CONNECT request or SOCKS greeting
            data = step.render()
            ok = all(call(lambda c=c, s=s: client.receive_data(s, c, 0.0)) for c in split(data) if c)
            if ok and t.tls and step.tunnel == "last" and s not in h.tls and client.state is not ClientState.CLOSED:
                h.tls[s] = MemoryTLSServer(_server_context())
            continue
        end = h.tls.get(s)
        if end is not None:
            try:
                ok = call(lambda s=s: h.take(s))  # finish the TLS handshake
            except ssl.SSLError:
                # The fake server cannot read what the client wrote (a mutated tunnel reply made the
                # harness start TLS before the client did): the server gives up on this step; the
                # client is judged by what it does next.
                continue
            if not ok or s in h.closed or not end.handshake_done:
                continue  # (no handshake yet: a mutation changed the order; the server cannot send)
            end.send(step.render())
            data = end.data_to_send()
        else:
            h.take_raw(s)
            data = step.render()
        for chunk in split(data):
            if chunk and not (ok := call(lambda chunk=chunk, s=s: client.receive_data(s, chunk, 0.0))):
                break
            if s in h.closed:
                break
        if ok and step.eof and s not in h.closed:
            ok = call(lambda s=s: client.receive_data(s, b"", 0.0))
    if ok and close and client.state not in (ClientState.CLOSED, ClientState.ERROR):
        ok = call(lambda: client.close(0.0))
    h.pump()
    out.state = client.state
    out.partial_text = client.partial_text
    out.events = delivered.events
    check(client, h, out, delivered)
    return out


class _Delivered:
    """The answer as the events tell it."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.text = ""
        self.finished: list[AnswerFinished] = []

    def take(self, client: LabsClient, events: list[Event]) -> None:
        for event in events:
            self.events.append(event)
            if isinstance(event, TextDelta):
                self.text += event.text
            elif isinstance(event, AnswerRevised):
                self.text = event.text
            elif isinstance(event, AnswerFinished):
                assert event.text == self.text, "AnswerFinished.text is not the text delivered"
                self.finished.append(event)
                self.text = ""  # no query streams now: partial_text is empty again
            elif isinstance(event, QueryFailed):
                assert event.partial_text == self.text
                self.text = ""
            elif isinstance(event, Closed):
                assert client.state is ClientState.CLOSED


def check(client: LabsClient, h: Harness, out: Outcome, delivered: _Delivered) -> None:
    opened = {o.stream_id for o in h.opened}
    connected = [e for e in out.events if isinstance(e, Connected)]
    assert len(connected) <= 1
    assert client.partial_text == delivered.text, "partial_text is not the text the events delivered"
    if out.error is not None:
        assert client.state is ClientState.ERROR
        assert set(h.closed) == opened, f"streams left open after {out.error!r}"
        assert out.error.partial_text == client.partial_text
        assert str(out.error)  # says what went wrong
        for s in opened:  # more bytes are refused, on any stream
            try:
                client.receive_data(s, b"x", 0.0)
            except LocalProtocolError:
                pass
            else:
                raise AssertionError("bytes accepted after the client failed")
        assert client.transmit() == []
    if client.state is ClientState.CLOSED:
        assert set(h.closed) == opened
        assert any(isinstance(e, Closed) for e in out.events)
    if client.state in (ClientState.CLOSED, ClientState.ERROR):
        assert client.get_timer() is None
    assert set(h.closed) <= opened  # (and the harness asserts that no bytes follow a CloseStream)


# -- mutations ---------------------------------------------------------------------------------------


def mutate_bytes(step: Step, data: bytes) -> Step:
    return replace(step, data=data, units=())


def inject(step: Step, index: int, payload: str) -> Step:
    """``payload`` (an Engine.IO packet) inside ``step``: a frame before unit ``index`` of a WebSocket
    step, or a packet before the body of an HTTP response (a polling payload)."""
    units = list(step.units)
    if not units:
        return step
    index %= len(units)
    unit = units[index]
    if unit.kind == "http":
        body = unit.body if isinstance(unit.body, str) else unit.body.decode("utf-8", "replace")
        units[index] = replace(unit, body=payload + "\x1e" + body if body else payload)
    elif unit.kind in ("ws", "wsbin") or (unit.kind == "raw" and b"101 Switching" in unit.render()):
        units.insert(index + (unit.kind == "raw"), Unit("ws", payload))
    else:
        return step
    return replace(step, units=tuple(units))
