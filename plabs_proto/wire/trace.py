"""Byte traces of a session (Labs or the ask service), and their replay through the core.

A trace is JSON lines.  The first line is a header saying how the session was
started::

    {"plabs_trace": 1, "server": "https://www.perplexity.ai", "transport": "upgrade",
     "model": "r1-1776", "messages": [{"role": "user", "content": "hi"}], "seed": 42,
     "origin": "https://labs.perplexity.ai", "jwt": "anonymous-ask-user", "version": "2.18"}

(optional keys: ``service``, ``cookies``, ``mode``, ``path``, ``user_agent``, ``browser``, ``timeouts``, ``headers``,
``accept_encoding``, ``permessage_deflate``: the last two are written always, and a header
without them is from before the client offered compression, so its replay offers none); every other line is
one chunk of bytes the client wrote or received above TLS::

    {"t": 0.012345, "stream": 1, "dir": "in", "b64": "SFRUUC8xLjEgMjAwIE9L..."}

``service`` is ``"labs"`` (the default, and what a trace without the key is) or
``"perplexity"``: the ask service, replayed through
:class:`~plabs_proto.wire.client.PerplexityClient` (``transport``, ``origin``, ``jwt`` and
``version`` are Labs's and unused there).  ``cookies`` names the caller's own cookies of a
signed-in ask session (the session token, a cookies.txt export's), in the order its
``Cookie`` header sends them; their values are never written, and a replay sends each as
``[redacted]``, as the redacted trace does.  ``browser`` names the header profile (:data:`plabs_proto.wire.browser.PROFILES`), ``null`` for
none; a trace without the key predates profiles and is replayed without one, as it was
recorded.  ``t`` is seconds since the session started, ``b64`` the bytes (``""`` on an
``"in"`` line is end of file).  :class:`TraceRecorder` makes traces (it is a
client ``tracer``), :func:`replay` feeds one back through the service's client
(:class:`~plabs_proto.wire.client.LabsClient` or :class:`~plabs_proto.wire.client.PerplexityClient`)
and gives its events again: the seed in the header makes the client's random choices
(cache buster, WebSocket key and masks; the ask's UUIDs) repeat, so a replay also writes
the same bytes as the session did.

Redaction: the values of ``Cookie``, ``Set-Cookie``, ``Authorization`` and
``Proxy-Authorization`` headers are replaced by ``[redacted]`` (cookie names
and ``Set-Cookie`` attributes stay, so a replayed client sends the same,
redacted, ``Cookie`` header).  Only HTTP header values change, never a body, so
the redacted bytes still frame the same way.  Proxy credentials never reach a
trace in the first place: the proxy tunnel is below the tracer.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import random
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from plabs_proto.config import DEFAULT_JWT, DEFAULT_ORIGIN, DEFAULT_SERVER, SERVICES, TRANSPORTS, ClientConfig
from plabs_proto.errors import LocalProtocolError
from plabs_proto.events import Event
from plabs_proto.labs.answer import DEFAULT_MODEL, DEFAULT_VERSION
from plabs_proto.perplexity.session import signed_in_cookie
from plabs_proto.wire.browser import CHROME, PROFILES
from plabs_proto.wire.client import Client, ClientState, LabsClient, PerplexityClient, Tracer

__all__ = [
    "REDACTED",
    "SEED_DIRECTION",
    "TRACE_VERSION",
    "TraceError",
    "TraceHeader",
    "TraceRecord",
    "TraceRecorder",
    "config_header",
    "make_header",
    "parse_header",
    "parse_record",
    "read_trace",
    "record_line",
    "redact_header_value",
    "redact_records",
    "replay",
]

TRACE_VERSION = 1
REDACTED = "[redacted]"
_REDACTED = REDACTED.encode("ascii")
_SENSITIVE = frozenset({b"cookie", b"set-cookie", b"authorization", b"proxy-authorization"})
_TIMEOUT_NAMES = ("connect", "first_text", "query")
#: The characters of a cookie name in a trace header (RFC 6265's token, less what cookies.txt cannot hold).
_COOKIE_NAME = frozenset(chr(c) for c in range(0x21, 0x7F)) - set('"(),/:;<=>?@[\\]{}')
#: The ``direction`` of the tracer call that announces the seed (stream 0, data the decimal seed).
SEED_DIRECTION = "seed"


class TraceError(ValueError):
    """A trace is malformed (the message names the line), or ends before its answer does."""


@dataclass(frozen=True, slots=True)
class TraceRecord:
    """One chunk of bytes: ``t`` seconds after the start, on ``stream``, ``direction`` "in" or "out".

    ``data == b""`` on an "in" record is end of file.
    """

    t: float
    stream: int
    direction: str
    data: bytes


@dataclass(frozen=True, slots=True)
class TraceHeader:
    """The header line: how to start a client that repeats the traced session."""

    server: str
    transport: str
    model: str
    messages: tuple[dict[str, Any], ...]
    seed: int
    origin: str = DEFAULT_ORIGIN
    jwt: str = DEFAULT_JWT
    version: str = DEFAULT_VERSION
    path: str | None = None
    user_agent: str | None = None
    browser: str | None = None
    timeouts: tuple[tuple[str, float | None], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    accept_encoding: bool = False
    permessage_deflate: bool = False
    service: str = "labs"
    cookies: tuple[str, ...] = ()
    mode: str | None = None

    def client_config(self) -> ClientConfig:
        """The :class:`ClientConfig` of the replayed client (plain HTTP: the trace is above TLS)."""
        extra: dict[str, Any] = {}
        if self.path is not None:
            extra["path"] = self.path
        if self.user_agent is not None:
            extra["user_agent"] = self.user_agent
        if self.mode is not None:
            extra["mode"] = self.mode
        for name, value in self.timeouts:
            extra[f"{name}_timeout"] = value
        if self.cookies:
            extra["cookies_txt"] = "".join(
                f".perplexity.ai\tTRUE\t/\tTRUE\t0\t{name}\t{REDACTED}\n" for name in self.cookies
            )
        return ClientConfig(
            service=self.service,
            browser=None if self.browser is None else PROFILES[self.browser],
            server=self.server,
            transport=self.transport,
            tls=False,
            origin=self.origin,
            jwt=self.jwt,
            version=self.version,
            headers=self.headers,
            accept_encoding=self.accept_encoding,
            permessage_deflate=self.permessage_deflate,
            **extra,
        )


def make_header(
    *,
    server: str = DEFAULT_SERVER,
    transport: str = "upgrade",
    model: str = DEFAULT_MODEL,
    messages: str | Sequence[Mapping[str, Any]],
    seed: int | None = None,
    origin: str = DEFAULT_ORIGIN,
    jwt: str = DEFAULT_JWT,
    version: str = DEFAULT_VERSION,
    path: str | None = None,
    user_agent: str | None = None,
    browser: str | None = CHROME.name,
    timeouts: Mapping[str, float | None] | None = None,
    headers: Sequence[tuple[str, str]] = (),
    accept_encoding: bool = True,
    permessage_deflate: bool = True,
    service: str = "labs",
    cookies: Sequence[str] = (),
    mode: str | None = None,
) -> dict[str, Any]:
    """The header dict for :class:`TraceRecorder` (a prompt string becomes one user message).

    ``browser`` is the name of the header profile the session used (``None``: none).
    ``cookies`` are the names (never the values) of a signed-in ask session's own cookies;
    ``mode`` the ask session's configured mode (None: its default, and no key).

    ``seed`` may be left ``None`` when the backend draws it and announces it to the recorder.
    """
    if isinstance(messages, str):
        listed: list[Any] = [{"role": "user", "content": messages}]
    else:
        listed = [dict(message) for message in messages]
    header: dict[str, Any] = {
        "plabs_trace": TRACE_VERSION,
        "service": service,
        "server": server,
        "transport": transport,
        "model": model or DEFAULT_MODEL,
        "messages": listed,
        "seed": seed,
        "origin": origin,
        "jwt": jwt,
        "version": version,
        "accept_encoding": accept_encoding,
        "permessage_deflate": permessage_deflate,
    }
    if path is not None:
        header["path"] = path
    if user_agent is not None:
        header["user_agent"] = user_agent
    header["browser"] = browser
    if timeouts:
        header["timeouts"] = dict(timeouts)
    if headers:
        header["headers"] = [[name, redact_header_value(name, value)] for name, value in headers]
    if cookies:
        header["cookies"] = list(cookies)
    if mode is not None:
        header["mode"] = mode
    return header


def config_header(
    config: ClientConfig,
    *,
    model: str = DEFAULT_MODEL,
    messages: str | Sequence[Mapping[str, Any]],
    seed: int | None = None,
) -> dict[str, Any]:
    """The header for a session of a client made with ``config`` (see :func:`make_header`).

    Extra request headers are kept with sensitive values redacted, as in the
    trace's bytes, so a replay writes the same (redacted) bytes; so are the names
    of a signed-in session's cookies (never their values).
    """
    cookie = signed_in_cookie(config) if config.service == "perplexity" else None
    names = [pair.split("=", 1)[0] for pair in cookie.split("; ")] if cookie is not None else []
    return make_header(
        service=config.service,
        cookies=names,
        mode=config.mode,
        server=config.server,
        transport=config.transport,
        model=model,
        messages=messages,
        seed=seed,
        origin=config.origin,
        jwt=config.jwt,
        version=config.version,
        path=config.path,
        user_agent=config.user_agent,
        browser=None if config.browser is None else config.browser.name,
        timeouts={
            "connect": config.connect_timeout,
            "first_text": config.first_text_timeout,
            "query": config.query_timeout,
        },
        headers=config.headers,
        accept_encoding=config.accept_encoding,
        permessage_deflate=config.permessage_deflate,
    )


# -- recording ----------------------------------------------------------------------------------------


def record_line(record: TraceRecord) -> str:
    """One record as its JSON line (no newline)."""
    return json.dumps(
        {
            "t": record.t,
            "stream": record.stream,
            "dir": record.direction,
            "b64": base64.b64encode(record.data).decode("ascii"),
        },
        separators=(",", ":"),
    )


class TraceRecorder:
    """A client ``tracer`` that keeps every chunk; :meth:`lines` gives the redacted trace.

    The first chunk's ``now`` is the start (``t = 0``).  ``header`` is written as
    the first line (see :func:`make_header`).  A backend that draws the seed
    itself announces it with ``tracer(now, 0, "seed", b"<decimal seed>")``,
    which sets the header's ``seed``.
    """

    def __init__(self, header: Mapping[str, Any]) -> None:
        self.header = dict(header)
        self._t0: float | None = None
        self._records: list[TraceRecord] = []

    def __call__(self, now: float, stream_id: int, direction: str, data: bytes) -> None:
        if direction == SEED_DIRECTION:
            try:
                self.header["seed"] = int(data.decode("ascii"))
            except ValueError:
                raise LocalProtocolError(f"expected a decimal seed, got {data[:60]!r}") from None
            return
        if direction not in ("in", "out"):
            raise LocalProtocolError(f"expected a trace direction 'in', 'out' or 'seed', got {direction!r}")
        if self._t0 is None:
            self._t0 = now
        self._records.append(TraceRecord(round(now - self._t0, 6), stream_id, direction, bytes(data)))

    @property
    def records(self) -> list[TraceRecord]:
        """The chunks as recorded (not redacted)."""
        return list(self._records)

    def redacted_records(self) -> list[TraceRecord]:
        """The chunks with sensitive header values redacted."""
        return redact_records(self._records)

    def lines(self) -> list[str]:
        """The trace: the header line, then one line per redacted chunk (no newlines)."""
        head = json.dumps(self.header, separators=(",", ":"), ensure_ascii=False)
        return [head, *(record_line(record) for record in self.redacted_records())]


# -- redaction ----------------------------------------------------------------------------------------

_LINE_END = re.compile(rb"\r?\n")
_HEAD_END = re.compile(rb"\r?\n\r?\n")


def _redact_value(name: bytes, value: bytes) -> bytes:
    if name == b"cookie":
        pairs = []
        for pair in value.split(b";"):
            key, sep, _ = pair.partition(b"=")
            if sep:
                pairs.append(key + sep + _REDACTED)
            else:
                pairs.append(pair[: len(pair) - len(pair.lstrip())] + _REDACTED)
        return b";".join(pairs)
    if name == b"set-cookie":
        first, sep, attributes = value.partition(b";")
        key, eq, _ = first.partition(b"=")
        return (key + eq + _REDACTED if eq else _REDACTED) + sep + attributes
    return _REDACTED


def redact_header_value(name: str, value: str) -> str:
    """``value`` redacted as the trace redacts header ``name`` (unchanged if it is not sensitive)."""
    key = name.strip().lower().encode("latin-1", "replace")
    if key not in _SENSITIVE or not value:
        return value
    return _redact_value(key, value.encode("latin-1", "replace")).decode("latin-1")


class _Unframed(Exception):
    """The bytes stop looking like HTTP we can frame: leave the rest alone."""


def _head_edits(data: bytes, start: int, end: int, edits: list[tuple[int, int, bytes]]) -> dict[bytes, bytes]:
    """Queue redactions for the header lines in ``data[start:end]``; return the framing headers."""
    framing: dict[bytes, bytes] = {}
    pos = start
    first = True
    while pos < end:
        match = _LINE_END.search(data, pos, end)
        line_end = match.start() if match else end
        if first:
            first = False
        else:
            name, sep, _ = data[pos:line_end].partition(b":")
            key = name.strip().lower()
            if sep:
                value_start = pos + len(name) + 1
                while value_start < line_end and data[value_start] in b" \t":
                    value_start += 1
                value_end = line_end
                while value_end > value_start and data[value_end - 1] in b" \t":
                    value_end -= 1
                value = data[value_start:value_end]
                if key in _SENSITIVE and value:
                    redacted = _redact_value(key, value)
                    if redacted != value:
                        edits.append((value_start, value_end, redacted))
                elif key in (b"content-length", b"transfer-encoding", b"upgrade"):
                    framing[key] = value.lower()
        pos = match.end() if match else end
    return framing


def _skip_chunked(data: bytes, pos: int) -> int:
    while True:
        match = _LINE_END.search(data, pos)
        if match is None:
            raise _Unframed
        size_text = data[pos : match.start()].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise _Unframed from None
        pos = match.end()
        if size == 0:
            blank = _LINE_END.match(data, pos)
            if blank is not None:
                return blank.end()  # no trailers
            trailer = _HEAD_END.search(data, pos)
            if trailer is None:
                raise _Unframed
            return trailer.end()
        pos += size
        match = _LINE_END.match(data, pos)
        if match is None:
            raise _Unframed
        pos = match.end()


def _http_edits(data: bytes, direction: str) -> list[tuple[int, int, bytes]]:
    """The redactions for one direction of one stream (``data`` is all its bytes, in order)."""
    edits: list[tuple[int, int, bytes]] = []
    pos = 0
    try:
        while pos < len(data):
            match = _HEAD_END.search(data, pos)
            head_end = match.start() if match else len(data)
            framing = _head_edits(data, pos, head_end, edits)
            if match is None:
                break
            start_line = _LINE_END.split(data[pos:head_end], 1)[0]
            pos = match.end()
            if direction == "out":
                if b"upgrade" in framing:
                    break  # a WebSocket upgrade: what follows is frames
                has_body = True
            else:
                parts = start_line.split(None, 2)
                if len(parts) < 2 or not parts[1].isdigit():
                    break
                status = int(parts[1])
                if status == 101:
                    break  # switched protocols
                has_body = status >= 200 and status not in (204, 304)
            if not has_body:
                continue
            if b"chunked" in framing.get(b"transfer-encoding", b""):
                pos = _skip_chunked(data, pos)
            elif b"content-length" in framing:
                length = framing[b"content-length"].strip()
                if not length.isdigit():
                    break
                pos += int(length)
            elif direction == "in":
                break  # a body that runs to end of file
    except _Unframed:
        pass
    return edits


def _apply_edits(chunks: list[bytes], edits: list[tuple[int, int, bytes]]) -> list[bytes]:
    """Apply sorted, disjoint ``(start, end, replacement)`` edits to consecutive chunks.

    An edit is placed in the chunk where it starts; bytes it covers in later chunks are dropped.
    """
    out: list[bytes] = []
    base = 0
    index = 0
    skip_until = 0
    for chunk in chunks:
        end = base + len(chunk)
        parts: list[bytes] = []
        pos = max(base, skip_until)
        while index < len(edits) and edits[index][0] < end:
            start, stop, replacement = edits[index]
            parts.append(chunk[pos - base : start - base])
            parts.append(replacement)
            pos = skip_until = stop
            index += 1
        if pos < end:
            parts.append(chunk[pos - base :])
        out.append(b"".join(parts))
        base = end
    return out


def redact_records(records: Sequence[TraceRecord]) -> list[TraceRecord]:
    """``records`` with the values of sensitive HTTP headers replaced by ``[redacted]``.

    Each stream and direction is read as one HTTP/1.1 byte stream (heads,
    bodies framed by Content-Length or chunked, a 101 or an upgrade request
    ends the HTTP part), so header lines split across chunks are found and
    body bytes are never touched.  A chunk left empty by redaction is dropped.
    """
    groups: dict[tuple[int, str], list[int]] = {}
    for position, record in enumerate(records):
        if record.data:
            groups.setdefault((record.stream, record.direction), []).append(position)
    new_data: dict[int, bytes] = {}
    for (_, direction), positions in groups.items():
        chunks = [records[position].data for position in positions]
        edits = _http_edits(b"".join(chunks), direction)
        if edits:
            for position, data in zip(positions, _apply_edits(chunks, edits), strict=True):
                new_data[position] = data
    out: list[TraceRecord] = []
    for position, record in enumerate(records):
        redacted = new_data.get(position)
        if redacted is None:
            out.append(record)
        elif redacted:
            out.append(TraceRecord(record.t, record.stream, record.direction, redacted))
    return out


# -- reading ------------------------------------------------------------------------------------------


def _load(line: str, lineno: int) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except ValueError:
        raise TraceError(f"trace line {lineno}: expected a JSON object, got {line.strip()[:60]!r}") from None
    if not isinstance(value, dict):
        raise TraceError(f"trace line {lineno}: expected a JSON object, got {line.strip()[:60]!r}")
    return value


def _field(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], lineno: int, what: str) -> Any:
    if key not in obj:
        raise TraceError(f"trace line {lineno}: expected {what} in {key!r}, got no {key!r} key")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TraceError(f"trace line {lineno}: expected {what} in {key!r}, got {value!r:.60}")
    return value


def parse_header(line: str, lineno: int = 1) -> TraceHeader:
    """The header line, checked; raises :class:`TraceError` naming ``lineno``."""
    obj = _load(line, lineno)
    if "plabs_trace" not in obj:
        raise TraceError(
            f"trace line {lineno}: expected a plabs trace header (a 'plabs_trace' key), "
            f"got {line.strip()[:60]!r}"
        )
    if obj["plabs_trace"] != TRACE_VERSION or isinstance(obj["plabs_trace"], bool):
        raise TraceError(
            f"trace line {lineno}: expected trace format version {TRACE_VERSION}, "
            f"got {obj['plabs_trace']!r:.60}"
        )
    service = obj.get("service", "labs")  # absent: a trace from before the ask service
    if service not in SERVICES:
        raise TraceError(f"trace line {lineno}: expected a service among {', '.join(SERVICES)}, got {service!r:.60}")
    server = _field(obj, "server", str, lineno, "the server URL")
    transport = _field(obj, "transport", str, lineno, "the transport")
    if transport not in TRANSPORTS:
        raise TraceError(
            f"trace line {lineno}: expected a transport among {', '.join(TRANSPORTS)}, got {transport!r:.60}"
        )
    model = _field(obj, "model", str, lineno, "the model")
    messages = _field(obj, "messages", list, lineno, "a list of messages")
    if not all(isinstance(message, dict) for message in messages):
        raise TraceError(f"trace line {lineno}: expected every message to be an object, got {messages!r:.60}")
    seed = _field(obj, "seed", int, lineno, "an integer seed")
    strings: dict[str, Any] = {}
    for key in ("origin", "jwt", "version", "path", "user_agent", "mode"):
        if key in obj:
            strings[key] = _field(obj, key, str, lineno, "a string")
    browser = obj.get("browser")  # absent: a trace from before header profiles
    if browser is not None and (not isinstance(browser, str) or browser not in PROFILES):
        raise TraceError(
            f"trace line {lineno}: expected a browser profile among {', '.join(sorted(PROFILES))} "
            f"or null in 'browser', got {browser!r:.60}"
        )
    for key in ("accept_encoding", "permessage_deflate"):
        if key in obj:
            if not isinstance(obj[key], bool):
                raise TraceError(f"trace line {lineno}: expected true or false in {key!r}, got {obj[key]!r:.60}")
            strings[key] = obj[key]
    headers: list[tuple[str, str]] = []
    if "headers" in obj:
        for pair in _field(obj, "headers", list, lineno, "a list of [name, value] pairs"):
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
                raise TraceError(f"trace line {lineno}: expected [name, value] pairs in 'headers', got {pair!r:.60}")
            headers.append((pair[0], pair[1]))
    cookies: list[str] = []
    if "cookies" in obj:
        for name in _field(obj, "cookies", list, lineno, "a list of cookie names"):
            if not (isinstance(name, str) and name and set(name) <= _COOKIE_NAME):
                raise TraceError(f"trace line {lineno}: expected cookie names in 'cookies', got {name!r:.60}")
            cookies.append(name)
        if cookies and service != "perplexity":
            raise TraceError(f"trace line {lineno}: expected no 'cookies' on a {service} trace, got {len(cookies)}")
    timeouts: list[tuple[str, float | None]] = []
    if "timeouts" in obj:
        raw = _field(obj, "timeouts", dict, lineno, "an object of timeouts")
        for name, value in raw.items():
            if name not in _TIMEOUT_NAMES:
                raise TraceError(
                    f"trace line {lineno}: expected timeouts among {', '.join(_TIMEOUT_NAMES)}, "
                    f"got {name!r:.60}"
                )
            if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
                raise TraceError(
                    f"trace line {lineno}: expected timeout {name!r} in seconds or null, got {value!r:.60}"
                )
            timeouts.append((name, None if value is None else float(value)))
    return TraceHeader(
        server=server,
        transport=transport,
        model=model,
        messages=tuple(messages),
        seed=seed,
        browser=browser,
        timeouts=tuple(timeouts),
        headers=tuple(headers),
        service=service,
        cookies=tuple(cookies),
        **strings,
    )


def parse_record(line: str, lineno: int) -> TraceRecord:
    """One record line, checked; raises :class:`TraceError` naming ``lineno``."""
    obj = _load(line, lineno)
    t = _field(obj, "t", (int, float), lineno, "a time in seconds")
    if not math.isfinite(t) or t < 0:
        raise TraceError(f"trace line {lineno}: expected a time >= 0 in 't', got {t!r}")
    stream = _field(obj, "stream", int, lineno, "a stream id")
    direction = _field(obj, "dir", str, lineno, "'in' or 'out'")
    if direction not in ("in", "out"):
        raise TraceError(f"trace line {lineno}: expected 'in' or 'out' in 'dir', got {direction!r:.60}")
    b64 = _field(obj, "b64", str, lineno, "base64 data")
    try:
        data = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise TraceError(f"trace line {lineno}: expected base64 data in 'b64', got {b64[:60]!r}") from None
    return TraceRecord(float(t), stream, direction, data)


def read_trace(lines: Iterable[str]) -> tuple[TraceHeader, Iterator[TraceRecord]]:
    """The header of a trace and an iterator over its records (blank lines are skipped).

    Records are checked as they are read; times must not go backwards.
    """
    numbered = ((lineno, line) for lineno, line in enumerate(lines, 1) if line.strip())
    first = next(numbered, None)
    if first is None:
        raise TraceError("trace line 1: expected a plabs trace header, got an empty trace")
    header = parse_header(first[1], first[0])

    def records() -> Iterator[TraceRecord]:
        last = 0.0
        for lineno, line in numbered:
            record = parse_record(line, lineno)
            if record.t < last:
                raise TraceError(
                    f"trace line {lineno}: expected times in order, got t={record.t} after t={last}"
                )
            last = record.t
            yield record

    return header, records()


# -- replay -------------------------------------------------------------------------------------------


def replay(lines: Iterable[str], *, tracer: Tracer | None = None) -> Iterator[Event]:
    """Feed a trace back through the client of its service; yield its events as they come.

    The client (a :class:`LabsClient` or a :class:`PerplexityClient`, as the header's
    ``service`` says) is built from the header (plain HTTP, the header's seed), connects
    and queries at ``t = 0``, then gets every "in" chunk at its time, with
    ``handle_timer`` fired first when a deadline passed.  At the end of the trace
    the client is closed like a backend closes it.  Errors the client raises
    propagate (a failed session fails again); :class:`TraceError` reports a bad
    line, or a trace that ends before its answer did.  ``tracer`` sees the
    replayed client's bytes (its "out" bytes match the trace's).
    """
    header, records = read_trace(lines)
    try:
        config = header.client_config()
        rng = random.Random(header.seed)
        client: Client
        if header.service == "perplexity":
            client = asker = PerplexityClient(config, rng=rng, tracer=tracer)
            asker.connect(0.0)
            asker.query(list(header.messages), model=header.model, now=0.0)
        else:
            client = labs = LabsClient(config, rng=rng, tracer=tracer)
            labs.connect(0.0)
            labs.query(list(header.messages), model=header.model, now=0.0)
    except LocalProtocolError as exc:
        raise TraceError(f"trace line 1: the header does not start a session: {exc}") from None
    client.transmit()
    yield from client.events()
    now = 0.0
    for record in records:
        if record.direction != "in":
            continue
        now = record.t
        deadline = client.get_timer()
        if deadline is not None and deadline <= now:
            client.handle_timer(deadline)
        client.receive_data(record.stream, record.data, now)
        client.transmit()
        yield from client.events()
    if client.state in (ClientState.CONNECTING, ClientState.QUERYING):
        raise TraceError(
            "the trace ends before the answer finished "
            f"({len(client.partial_text)} characters of answer text had arrived)"
        )
    client.close(now)
    client.transmit()
    yield from client.events()
