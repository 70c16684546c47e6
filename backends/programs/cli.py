"""The ``plabs`` command line.

Commands::

    plabs ask [options] [PROMPT...]   stream an answer (no PROMPT, or "-": read standard input)
    plabs replay [--json] FILE        print the events of a recorded trace again
    plabs models                      the known models, default first (--live: the service's own catalog)
    plabs emulator [options]          run the local Labs emulator in the foreground (prints its URL)
    plabs serve [options]             serve an OpenAI-compatible API backed by Labs

``ask`` prints the answer on standard output as it arrives, the reasoning on
standard error (dimmed on a terminal; ``--no-reasoning`` hides it) and the
citations after the answer.  ``--json`` prints one JSON object per event
instead, one per line::

    {"event": "reasoning", "text": "..."}
    {"event": "text", "text": "..."}
    {"event": "citations", "citations": [...]}
    {"event": "revised", "text": "...", "reasoning": "..."}
    {"event": "finished", "model": "...", "text": "...", "reasoning": "...", "citations": [...],
     "elapsed_time": 1.2, "tokens_streamed": 42}
    {"event": "error", "error": "LabsTimeout", "message": "..."}

While nothing has arrived yet, a terminal on standard error shows a small
waiting indicator (not with ``--json``, not when standard error is piped); the
first printed text erases it.

The prompt is read as UTF-8, from the arguments or from standard input.  Bytes
that are not UTF-8 (a Latin-1 file, say) are refused with one usage error line
naming the first bad byte, rather than guessed at: convert the text first
(``iconv -f latin1 -t utf-8``).  A ``--model`` outside the known list is sent
as given (the service adds models) after one warning line on standard error.

Errors end with one line ``plabs: error: <message>`` on standard error and exit
status 1 (2 for a usage error); what was already printed stays.  Ctrl-C exits
with status 130.  What a moved or guarded service answered has a status of its
own, for scripts to act on (the ``--json`` error object adds the fields named)::

    3  RedirectError        the service moved ("location")
    4  RateLimitedError     rate limited: wait "retry_after" seconds (null: unknown)
    5  ChallengeError       Cloudflare's challenge or block page ("title")
    6  UnexpectedPageError  an HTML page (a login page...) instead of Engine.IO ("title")
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any

from plabs_proto.config import DEFAULT_SERVER
from plabs_proto.errors import (
    ChallengeError,
    HandshakeError,
    LabsError,
    RateLimitedError,
    RedirectError,
    UnexpectedPageError,
)
from plabs_proto.events import (
    AnswerFinished,
    AnswerRevised,
    Citations,
    Event,
    QueryFailed,
    ReasoningDelta,
    TextDelta,
)
from plabs_proto.labs.answer import DEFAULT_MODEL, MODELS
from plabs_proto.perplexity import request as _ask_service
from plabs_proto.wire.trace import TraceError, TraceRecorder, config_header, replay

from . import arguments

__all__ = ["EventPrinter", "build_parser", "main"]

BACKENDS = ("asyncio", "trio", "sync", "curl")
TRANSPORTS = ("upgrade", "websocket", "polling")
_DIM, _UNDIM = "\x1b[2m", "\x1b[22m"
_ERASE_LINE = "\r\x1b[K"  # back to the start of the line, erase to its end
_EMULATOR_LOGGERS = ("aiohttp.access", "aiohttp.server", "aiohttp.web", "engineio.server", "socketio.server")
#: ``BaseExceptionGroup`` (Python 3.11+; ``()`` matches nothing before).
_EXCEPTION_GROUP: Any = getattr(builtins, "BaseExceptionGroup", ())
#: The exit status of each kind of refusal by a moved or guarded service (the others exit 1).
EXIT_STATUSES: tuple[tuple[type[HandshakeError], int], ...] = (
    (RedirectError, 3),
    (RateLimitedError, 4),
    (ChallengeError, 5),
    (UnexpectedPageError, 6),
)
#: The handshake steps the emulator's guard switches take (its ``GUARD_STEPS``: the emulator is
#: imported only when it runs, as it needs the ``emulator`` extra).
_GUARD_STEPS = ("polling", "post", "poll", "upgrade", "all")
#: The same for the Perplexity emulator (its ``GUARD_STEPS``), and its answer shapes (``SHAPES``).
_SSE_GUARD_STEPS = ("session", "ask", "catalog", "all")
_ALL_GUARD_STEPS = (*_GUARD_STEPS[:-1], *_SSE_GUARD_STEPS)
_SHAPES = ("steps", "blocks", "workflow")
_CURL_NO_TRACE = "--trace records our own bytes; with --backend curl, curl keeps them (drop --trace)"


class _UsageError(Exception):
    """A bad argument found after parsing (exit status 2)."""


class _InputError(_UsageError):
    """No prompt text, or text that cannot be read as UTF-8 (exit status 2, one line without the usage)."""


class _Failure(Exception):
    """Something the CLI itself could not do (one error line, exit status 1)."""


class EventPrinter:
    """Prints answer events, as text or as JSON lines (see the module docstring).

    ``dim`` wraps reasoning in ANSI dim/normal codes.  :meth:`end_line` ends a
    half-printed line before an error or an interrupt.
    """

    def __init__(
        self, *, json_lines: bool, reasoning: bool, stdout: IO[str], stderr: IO[str], dim: bool = False
    ) -> None:
        self.json_lines = json_lines
        self.reasoning = reasoning
        self.stdout = stdout
        self.stderr = stderr
        self.dim = dim
        self._ascii = not (getattr(stdout, "encoding", None) or "utf-8").lower().replace("-", "").startswith("utf")
        self._text_open = False  # answer text printed, not ended by a newline
        self._reasoning_open = False  # reasoning printed, not ended by a newline
        self._citations: tuple[Any, ...] = ()
        self._printed = ""  # the answer text printed for the current query
        self._waiting = False  # the waiting indicator is on stderr, not erased yet

    # -- events ---------------------------------------------------------------------------------

    def event(self, event: Event) -> None:
        """Print one event (``Connected``/``Closed`` are not printed; ``QueryFailed`` raises)."""
        if isinstance(event, QueryFailed):
            raise event.error()
        if self.json_lines:
            obj = self.event_json(event)
            if obj is not None:
                self._write(self.stdout, json.dumps(obj, ensure_ascii=self._ascii) + "\n")
            return
        if isinstance(event, TextDelta):
            self._answer(event.text)
        elif isinstance(event, ReasoningDelta):
            if self.reasoning and event.text:
                text = f"{_DIM}{event.text}{_UNDIM}" if self.dim else event.text
                self._reasoning_open = not event.text.endswith("\n")  # set first: Ctrl-C may stop the write
                self._write(self.stderr, text)
        elif isinstance(event, Citations):
            self._citations = event.citations
        elif isinstance(event, AnswerRevised):
            # The answer printed so far stands when the revision repeats it (only the reasoning was
            # taken back: r1-1776's untagged answer, shown as reasoning until the end); the rest of
            # the answer follows as TextDeltas.  Only a rewritten answer is printed again in full.
            if event.text != self._printed:
                self.end_line()
                note = "[the server revised the answer; it follows in full]"
                self._write(self.stderr, (f"{_DIM}{note}{_UNDIM}" if self.dim else note) + "\n")
                self._printed = ""
                self._answer(event.text)
            elif self.reasoning:
                self.end_line()
                note = "[the server revised its reasoning; the answer follows]"
                self._write(self.stderr, (f"{_DIM}{note}{_UNDIM}" if self.dim else note) + "\n")
        elif isinstance(event, AnswerFinished):
            self._printed = ""
            self.end_line()
            citations = event.citations or self._citations
            if citations:
                lines = [f"[{n}] {_citation_text(c)}" for n, c in enumerate(citations, 1)]
                self._write(self.stdout, "\nCitations:\n" + "\n".join(lines) + "\n")

    def event_json(self, event: Event) -> dict[str, Any] | None:
        """The JSON object printed for ``event`` in ``--json`` mode (None: not printed)."""
        if isinstance(event, TextDelta):
            return {"event": "text", "text": event.text}
        if isinstance(event, ReasoningDelta):
            return {"event": "reasoning", "text": event.text} if self.reasoning else None
        if isinstance(event, Citations):
            return {"event": "citations", "citations": list(event.citations)}
        if isinstance(event, AnswerRevised):
            return {"event": "revised", "text": event.text, "reasoning": event.reasoning}
        if isinstance(event, AnswerFinished):
            return {
                "event": "finished",
                "model": event.model,
                "text": event.text,
                "reasoning": event.reasoning,
                "citations": list(event.citations),
                "elapsed_time": event.elapsed_time,
                "tokens_streamed": event.tokens_streamed,
            }
        return None

    def error(self, exc: BaseException, message: str) -> None:
        """Report an error: end the half-printed line, a JSON ``error`` object, then ``plabs: error:``."""
        if self.json_lines:
            obj = {"event": "error", "error": type(exc).__name__, "message": message, **_error_fields(exc)}
            with contextlib.suppress(OSError, ValueError):
                self._write(self.stdout, json.dumps(obj, ensure_ascii=self._ascii) + "\n")
        else:
            self.end_line()
        _print_error(message, self.stderr)

    def show_waiting(self) -> None:
        """Put the waiting indicator on stderr; the next thing printed (or :meth:`end_line`) erases it.

        Only for a terminal: callers check that stderr is one and that output is not JSON.
        """
        note = "waiting for the answer..."
        self._write(self.stderr, f"{_DIM}{note}{_UNDIM}" if self.dim else note)
        self._waiting = True

    def clear_waiting(self) -> None:
        """Erase the waiting indicator if it is still shown (carriage return, erase the line)."""
        if self._waiting:
            self._waiting = False
            with contextlib.suppress(OSError, ValueError):
                self.stderr.write(_ERASE_LINE)
                self.stderr.flush()

    def end_line(self) -> None:
        """End a half-printed answer (stdout) or reasoning (stderr) line; erase the waiting indicator."""
        self.clear_waiting()
        with contextlib.suppress(OSError, ValueError):
            if self._reasoning_open:
                self._reasoning_open = False
                self._write(self.stderr, "\n")
            if self._text_open:
                self._text_open = False
                self._write(self.stdout, "\n")

    # -- internals ------------------------------------------------------------------------------

    def _answer(self, text: str) -> None:
        if not text:
            return
        if self._reasoning_open:
            self._reasoning_open = False
            self._write(self.stderr, "\n")
        self._text_open = not text.endswith("\n")  # set first: Ctrl-C may stop the write
        self._printed += text
        self._write(self.stdout, text)

    def _write(self, stream: IO[str], text: str) -> None:
        if self._waiting:
            self.clear_waiting()
        stream.write(text)
        stream.flush()


def _citation_text(citation: Any) -> str:
    if isinstance(citation, str):
        return citation
    if isinstance(citation, dict):
        url = citation.get("url") or citation.get("link")
        title = citation.get("title") or citation.get("name")
        if isinstance(url, str):
            return f"{title} <{url}>" if isinstance(title, str) and title else url
    return json.dumps(citation, ensure_ascii=False)


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (OSError, ValueError):
        return False


def _print_note(line: str, stderr: IO[str]) -> None:
    with contextlib.suppress(OSError, ValueError):
        stderr.write(f"plabs: {line}\n")
        stderr.flush()


def _print_warning(message: str, stderr: IO[str]) -> None:
    _print_note(f"warning: {message}", stderr)


def _error_fields(exc: BaseException) -> dict[str, Any]:
    """The fields of a refused handshake worth a script's reading, for the JSON ``error`` object."""
    if not isinstance(exc, HandshakeError):
        return {}
    fields: dict[str, Any] = {"status": exc.status}
    if isinstance(exc, RedirectError):
        fields["location"] = exc.location
    elif isinstance(exc, RateLimitedError):
        fields["retry_after"] = exc.retry_after
    elif isinstance(exc, ChallengeError | UnexpectedPageError):
        fields["title"] = exc.title
    return fields


def _exit_status(exc: BaseException) -> int:
    """3 to 6 for the refusals of :data:`EXIT_STATUSES`, else 1."""
    for kind, status in EXIT_STATUSES:
        if isinstance(exc, kind):
            return status
    return 1


def _print_error(message: str, stderr: IO[str] | None = None) -> None:
    stream = stderr if stderr is not None else sys.stderr
    line = " ".join(message.split()) or "unknown error"
    with contextlib.suppress(OSError, ValueError):
        stream.write(f"plabs: error: {line}\n")
        stream.flush()


# -- the parser ------------------------------------------------------------------------------------


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("plabs-proto")
    except Exception:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``plabs``."""
    parser = argparse.ArgumentParser(
        prog="plabs",
        description="A Perplexity Labs client (sans-IO core, asyncio/trio/blocking backends).",
    )
    parser.add_argument("--version", action="version", version=f"plabs {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def output_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--json", action="store_true", help="print one JSON object per event, one per line")
        sub.add_argument("--no-reasoning", action="store_true", help="do not print the model's reasoning")

    ask = commands.add_parser(
        "ask",
        help="ask Labs and stream the answer",
        description="Ask Perplexity Labs and stream the answer: text on stdout, reasoning on stderr.",
    )
    ask.add_argument(
        "prompt",
        nargs="*",
        metavar="PROMPT",
        help='the question (words are joined); "-", or none with stdin not a terminal, reads stdin. '
        "It must be UTF-8: other bytes are refused (exit 2), not replaced",
    )
    ask.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"the model (default {DEFAULT_MODEL}; see `plabs models`; another name is sent after a warning)",
    )
    ask.add_argument("--server", default=None, metavar="URL", help=f"the Labs server (default {DEFAULT_SERVER})")
    ask.add_argument("--proxy", type=arguments.proxy, default=None, metavar="URL",
                     help="http://[user:pass@]host:port or socks5://...")
    ask.add_argument("--transport", default="upgrade", choices=TRANSPORTS, help="default: upgrade")
    ask.add_argument("--backend", default=None, choices=BACKENDS,
                     help="default: curl for the live site when curl_cffi is installed (Chrome's TLS and HTTP/2 "
                          "fingerprint: the best chance against Cloudflare), else asyncio")
    ask.add_argument(
        "--impersonate",
        default=None,
        metavar="TARGET",
        help="with --backend curl: the browser curl speaks as (a curl_cffi target; default chrome)",
    )
    ask.add_argument("--cafile", default=None, metavar="PEM", help="trust these CA certificates instead")
    ask.add_argument("--timeout", type=arguments.seconds, default=None, metavar="S", help="overall deadline in seconds")
    ask.add_argument("--trace", default=None, metavar="FILE", help="record the bytes of the session (JSON lines)")
    ask.add_argument("--emulator", action="store_true", help="ask a local emulator started in-process")
    ask.add_argument(
        "--service",
        choices=("labs", "perplexity"),
        default="labs",
        help="labs (default): the Labs Socket.IO endpoint, retired in 2025; perplexity: the ask endpoint "
        f"that answers today (POST /rest/sse/perplexity_ask; model {_ask_service.DEFAULT_MODEL} unless --model "
        "says; signs in with PLABS_SESSION_TOKEN or PLABS_COOKIES_FILE when set)",
    )
    ask.add_argument("--mode", default=None, choices=_ask_service.MODES,
                     help="with --service perplexity: the ask's mode (default copilot)")
    output_options(ask)
    ask.set_defaults(run=_cmd_ask, parser=ask, model=None)  # --model's default: the service's

    rep = commands.add_parser(
        "replay",
        help="print the events of a recorded trace again",
        description="Feed a trace recorded with `plabs ask --trace` back through the client and print the events.",
    )
    rep.add_argument("file", metavar="FILE", help='the trace ("-" reads stdin)')
    output_options(rep)
    rep.set_defaults(run=_cmd_replay, parser=rep)

    models = commands.add_parser("models", help="list the known models, default first")
    models.add_argument("--service", choices=("labs", "perplexity"), default="labs",
                        help="whose models: labs (default) or perplexity (the ask endpoint's built-in list)")
    models.add_argument("--live", action="store_true",
                        help="with --service perplexity: ask the server for its own catalog "
                        "(GET /rest/models/config/v2) instead of printing the built-in list")
    models.add_argument("--server", default=None, metavar="URL",
                        help=f"with --live: the server to ask (default {DEFAULT_SERVER})")
    models.add_argument("--backend", default=None, choices=BACKENDS,
                        help="with --live: as for `plabs ask` (default: curl for the live site when installed)")
    models.add_argument("--cafile", default=None, metavar="PEM", help="with --live: trust these CA certificates instead")
    models.add_argument("--timeout", type=arguments.seconds, default=None, metavar="S",
                        help="with --live: overall deadline in seconds")
    models.set_defaults(run=_cmd_models, parser=models)

    emu = commands.add_parser(
        "emulator",
        help="run a local emulator of Labs or of the Perplexity ask endpoint in the foreground",
        description="Serve the Labs protocol (--service labs, the default) or Perplexity's SSE ask endpoint "
        "(--service perplexity) locally until Ctrl-C; its URL is the first line on stdout.",
    )
    emu.add_argument("--service", choices=("labs", "perplexity"), default="labs",
                     help="labs (default): the Socket.IO service; perplexity: POST /rest/sse/perplexity_ask")
    emu.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1")
    emu.add_argument("--port", type=arguments.port, default=0, help="default: 0 (a free port)")
    emu.add_argument("--certfile", default=None, metavar="PEM", help="serve TLS with this certificate")
    emu.add_argument("--keyfile", default=None, metavar="PEM", help="the certificate's private key")
    emu.add_argument("--answer", default=None, metavar="TEXT", help="the answer text (default: built from the prompt)")
    emu.add_argument("--reasoning", default=None, metavar="TEXT", help="the reasoning text of reasoning models (labs)")
    emu.add_argument("--frame-delay", type=arguments.delay, default=None, metavar="S", help="seconds between answer frames")
    emu.add_argument("--ping-interval", type=arguments.seconds, default=None, metavar="S", help="Engine.IO ping interval (labs)")
    emu.add_argument("--fail", default=None, metavar="TEXT", help="answer every query with this failure text")
    emu.add_argument("--drop-after", type=arguments.count, default=None, metavar="N", help="drop the connection after N frames")
    emu.add_argument("--silent", action="store_true", help="never answer a query (labs)")
    sse = emu.add_argument_group("perplexity", "how --service perplexity answers (protocol.md §10)")
    sse.add_argument("--shape", choices=_SHAPES, default=None,
                     help="the answer shape: steps (legacy text), blocks (markdown blocks, the default), workflow")
    sse.add_argument("--line-ending", choices=("crlf", "lf"), default=None, help="the SSE line ending (default: crlf)")
    sse.add_argument("--chunk-size", type=arguments.count, default=None, metavar="N",
                     help="answer characters per frame (default: 8)")
    sse.add_argument("--write-size", type=arguments.count, default=None, metavar="N",
                     help="send the body in writes of N bytes (1: byte by byte)")
    sse.add_argument("--early-final", action="store_true",
                     help="the trap: a PENDING frame with final: true before the answer is complete")
    sse.add_argument("--error-code", default=None, metavar="CODE",
                     help="the failed frame's error_code with --fail (default: FREE_TIER_RATE_LIMITED)")
    sse.add_argument("--require-cookie", action="store_true",
                     help="refuse an ask without the cookie of GET /api/auth/session (403)")
    sse.add_argument("--session-token", default=None, metavar="TOKEN",
                     help="refuse an ask without the cookie __Secure-next-auth.session-token=TOKEN (401)")
    sse.add_argument("--gzip", action="store_true", help="gzip the SSE body when the client accepts it")
    sse.add_argument("--extras", action="store_true",
                     help="SSE extras: a retry: line, comments, data over several lines")
    guard = emu.add_argument_group(
        "guards", "answer a step as a moved or guarded service would (STEP, labs: polling = the opening GET, "
        "post, poll = the later GETs, upgrade, all; perplexity: session = the warm-up, ask, all)"
    )
    guard.add_argument("--redirect", choices=_ALL_GUARD_STEPS, default=None, metavar="STEP",
                       help="a redirect to --redirect-to")
    guard.add_argument("--redirect-to", default=None, metavar="URL",
                       help="the redirect's Location (default: https://www.perplexity.ai/)")
    guard.add_argument("--redirect-status", type=int, choices=(301, 302, 303, 307, 308), default=None,
                       metavar="CODE", help="301, 302 (default), 303, 307 or 308")
    guard.add_argument("--rate-limit", choices=_ALL_GUARD_STEPS, default=None, metavar="STEP",
                       help="429 Too Many Requests")
    guard.add_argument("--rate-limit-page", choices=("plain", "cloudflare"), default=None,
                       help="the 429's body: a line of text (default) or Cloudflare's error 1015 page (labs)")
    guard.add_argument("--retry-after", default=None, metavar="VALUE",
                       help="the 429's Retry-After: seconds or an HTTP date (default: 30; \"\": none)")
    guard.add_argument("--cloudflare", choices=_ALL_GUARD_STEPS, default=None, metavar="STEP",
                       help="Cloudflare's 403 \"Just a moment...\" challenge page")
    guard.add_argument("--login-page", choices=_GUARD_STEPS, default=None, metavar="STEP",
                       help="200 with an HTML login page (labs)")
    emu.set_defaults(run=_cmd_emulator, parser=emu)

    from .serve import (
        add_serve_command,  # the OpenAI-compatible gateway (issue 11)
    )

    add_serve_command(commands)
    return parser


# -- commands --------------------------------------------------------------------------------------


def _printer(args: argparse.Namespace) -> EventPrinter:
    dim = _is_terminal(sys.stderr) and not os.environ.get("NO_COLOR")
    return EventPrinter(
        json_lines=args.json, reasoning=not args.no_reasoning, stdout=sys.stdout, stderr=sys.stderr, dim=dim
    )


def _utf8(data: bytes, where: str) -> str:
    """``data`` decoded as UTF-8, or a usage error naming the first byte that is not."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = data[exc.start : exc.start + 1]
        raise _InputError(
            f"expected UTF-8 text {where}, got the byte 0x{bad.hex()} at offset {exc.start} "
            "(convert the text to UTF-8 first, e.g. with iconv)"
        ) from None


def _argument(text: str, what: str) -> str:
    """A command-line argument as real text.

    Python decodes ``argv`` bytes that are not UTF-8 to lone surrogates
    (``surrogateescape``); those bytes are recovered and refused.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _utf8(os.fsencode(text), f"in {what}")
    return text


def _read_stdin() -> str:
    stream = sys.stdin
    if stream is None:
        raise _UsageError("expected a prompt on standard input, but there is no standard input")
    binary = getattr(stream, "buffer", None)
    if binary is not None:
        return _utf8(binary.read(), "on standard input")
    return _argument(stream.read(), "standard input")  # a text stream (tests); may still hold surrogates


def _stdin_is_terminal() -> bool:
    try:
        return sys.stdin is None or sys.stdin.isatty()
    except (OSError, ValueError):  # closed
        return True


def _read_prompt(words: Sequence[str]) -> str:
    """The prompt: the words joined, or standard input for ``-`` or no words on a non-terminal stdin."""
    words = list(words)
    if words[:1] == ["-"] and len(words) > 1:
        raise _UsageError(
            f'"-" reads the prompt from standard input and takes no other words, got {len(words) - 1} more: '
            f"{' '.join(words[1:])!r}"
        )
    if words == ["-"] or (not words and not _stdin_is_terminal()):
        prompt = _read_stdin().strip()
        if not prompt:
            raise _InputError("expected a prompt on standard input, got nothing")
        return prompt
    if not words:
        raise _UsageError("expected a PROMPT (or a prompt on standard input, or \"-\")")
    prompt = _argument(" ".join(words), "the prompt").strip()
    if not prompt:
        raise _InputError("expected a prompt, got an empty one")
    return prompt


def _cmd_ask(args: argparse.Namespace, printer: EventPrinter) -> int:
    if args.emulator and args.server is not None:
        raise _UsageError("--emulator and --server cannot be used together")
    perplexity = args.service == "perplexity"
    if args.mode is not None and not perplexity:
        raise _UsageError("--mode needs --service perplexity (Labs has no modes)")
    model = _argument(args.model, "--model") if args.model is not None else (
        _ask_service.DEFAULT_MODEL if perplexity else DEFAULT_MODEL)
    known = [m.id for m in _ask_service.MODELS] if perplexity else list(MODELS)
    for name in ("server", "proxy"):  # URLs: text sent on the wire (file names may be any bytes)
        if getattr(args, name) is not None:
            setattr(args, name, _argument(getattr(args, name), f"--{name}"))
    prompt = _read_prompt(args.prompt)
    if model not in known:
        _print_warning(f"{model!r} is not a known model ({', '.join(known)}); sending it anyway", printer.stderr)
    if args.cafile is not None:
        try:
            open(args.cafile, "rb").close()  # only checks that it can be read
        except OSError as exc:
            raise _Failure(f"cannot read the CA file {args.cafile!r}: {exc.strerror or exc}") from None
    trace_file: IO[str] | None = None
    if args.trace is not None:
        if choose_backend(args.backend, live=False, traced=True, impersonate=args.impersonate) == "curl":
            raise _Failure(_CURL_NO_TRACE)  # refused before the file is opened (and an old trace emptied)
        try:
            trace_file = open(args.trace, "w", encoding="utf-8")  # noqa: SIM115 - closed in the finally below
        except OSError as exc:
            raise _Failure(f"cannot write the trace to {args.trace!r}: {exc.strerror or exc}") from None
    recorder = TraceRecorder({}) if trace_file is not None else None
    emulator: Any = None
    try:
        server = args.server or DEFAULT_SERVER
        if args.emulator:
            emulator = _start_perplexity_emulator() if perplexity else _start_emulator()
            server = emulator.url
        options: dict[str, Any] = {
            "server": server,
            "proxy": args.proxy,
            "transport": args.transport,
            "cafile": args.cafile,
            "tracer": recorder,
            "service": args.service,
        }
        if args.mode is not None:
            options["mode"] = args.mode
        if args.timeout is not None:
            options["timeout"] = args.timeout
        args.backend = choose_backend(args.backend, live=server == DEFAULT_SERVER, traced=recorder is not None,
                                      impersonate=args.impersonate)
        if args.backend == "curl":
            options["impersonate"] = args.impersonate or "chrome"
        elif args.impersonate is not None:
            raise _Failure("--impersonate needs --backend curl (only curl speaks as a browser)")
        runner = {"asyncio": _ask_asyncio, "trio": _ask_trio, "sync": _ask_sync, "curl": _ask_curl}[args.backend]
        if not args.json and _is_terminal(printer.stderr):
            printer.show_waiting()
        runner(prompt, model, options, recorder, printer)
    finally:
        printer.clear_waiting()
        if emulator is not None:
            emulator.stop()
        if trace_file is not None and recorder is not None:
            with trace_file:
                if "plabs_trace" in recorder.header:
                    trace_file.write("".join(line + "\n" for line in recorder.lines()))
    return 0


def _start_emulator() -> Any:
    try:
        from .emulator import EmulatorConfig, EmulatorThread
    except ImportError as exc:
        raise _Failure(
            f"the emulator needs python-socketio and aiohttp (pip install 'plabs-proto[emulator]'): {exc}"
        ) from None
    # The in-process emulator is a demo server: its request logs (python-engineio reports a
    # poll that races with the session's close, for one) would only clutter our stderr.
    for name in _EMULATOR_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)
    emulator = EmulatorThread(EmulatorConfig(), host="127.0.0.1", port=0)
    emulator.start()
    return emulator


def _start_perplexity_emulator() -> Any:
    try:
        from .emulator_perplexity import PerplexityEmulatorConfig, PerplexityEmulatorThread
    except ImportError as exc:
        raise _Failure(f"the emulator needs aiohttp (pip install 'plabs-proto[emulator]'): {exc}") from None
    emulator = PerplexityEmulatorThread(PerplexityEmulatorConfig())
    emulator.start()
    return emulator


def _set_header(recorder: TraceRecorder | None, session: Any, prompt: str, model: str) -> None:
    if recorder is not None:
        recorder.header.update(config_header(session.client.config, model=model, messages=prompt, seed=session.seed))


async def _stream(
    backend: Any, prompt: str, model: str, options: dict[str, Any], recorder: TraceRecorder | None,
    printer: EventPrinter,
) -> None:
    """One query on an async backend's session (asyncio, trio, curl), its events printed."""
    session = backend.connect(**options)
    _set_header(recorder, session, prompt, model)
    async with session, contextlib.aclosing(session.query(prompt, model=model)) as events:
        async for event in events:
            printer.event(event)


def _ask_asyncio(
    prompt: str, model: str, options: dict[str, Any], recorder: TraceRecorder | None, printer: EventPrinter
) -> None:
    import asyncio

    from .. import asyncio as backend

    asyncio.run(_stream(backend, prompt, model, options, recorder, printer))


def _ask_curl(
    prompt: str, model: str, options: dict[str, Any], recorder: TraceRecorder | None, printer: EventPrinter
) -> None:
    import asyncio

    assert recorder is None  # _cmd_ask refuses --trace with curl before opening the file
    try:
        from .. import curl as backend
    except ImportError as exc:
        raise _Failure(f"the curl backend needs curl_cffi (pip install 'plabs-proto[impersonate]'): {exc}") from None
    options = {name: value for name, value in options.items() if name != "tracer"}
    asyncio.run(_stream(backend, prompt, model, options, None, printer))


def _ask_trio(
    prompt: str, model: str, options: dict[str, Any], recorder: TraceRecorder | None, printer: EventPrinter
) -> None:
    try:
        import trio

        from .. import trio as backend
    except ImportError as exc:
        raise _Failure(f"the trio backend needs trio (pip install 'plabs-proto[trio]'): {exc}") from None

    trio.run(_stream, backend, prompt, model, options, recorder, printer)


def _ask_sync(
    prompt: str, model: str, options: dict[str, Any], recorder: TraceRecorder | None, printer: EventPrinter
) -> None:
    from .. import sync as backend

    session = backend.connect(**options)
    _set_header(recorder, session, prompt, model)
    with session, contextlib.closing(session.query(prompt, model=model)) as events:
        for event in events:
            printer.event(event)


def _trace_lines(path: str) -> Iterator[str]:
    if path == "-":
        yield from sys.stdin
        return
    try:
        handle = open(path, encoding="utf-8")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise _Failure(f"cannot read the trace {path!r}: {exc.strerror or exc}") from None
    with handle:
        try:
            yield from handle
        except UnicodeDecodeError as exc:
            raise TraceError(f"expected a UTF-8 trace file, got undecodable bytes: {exc}") from None


def _cmd_replay(args: argparse.Namespace, printer: EventPrinter) -> int:
    for event in replay(_trace_lines(args.file)):
        printer.event(event)
    return 0


def _cmd_models(args: argparse.Namespace, printer: EventPrinter) -> int:
    live_only = ("server", "backend", "cafile", "timeout")
    if not args.live:
        for name in live_only:
            if getattr(args, name) is not None:
                raise _UsageError(f"--{name} needs --live (without it the built-in list is printed)")
    elif args.service != "perplexity":
        raise _UsageError("--live needs --service perplexity (Labs has no catalog to ask for)")
    if args.live:
        names = _live_models(args)
    elif args.service == "perplexity":
        default = _ask_service.DEFAULT_MODEL
        names = [default, *(m.id for m in _ask_service.MODELS if m.id != default)]
    else:
        names = [DEFAULT_MODEL, *(name for name in MODELS if name != DEFAULT_MODEL)]
    printer.stdout.write("".join(name + "\n" for name in names))
    printer.stdout.flush()
    return 0


def _live_models(args: argparse.Namespace) -> list[str]:
    """The ids of the service's own catalog, asked of ``--server`` over a session of its own: the
    anonymous model (what needs no sign-in) first, the rest in the catalog's order."""
    server = _argument(args.server, "--server") if args.server is not None else DEFAULT_SERVER
    options: dict[str, Any] = {"server": server, "cafile": args.cafile, "service": "perplexity"}
    if args.timeout is not None:
        options["timeout"] = args.timeout
    backend = choose_backend(args.backend, live=server == DEFAULT_SERVER, traced=False, impersonate=None)
    if backend == "sync":
        from .. import sync

        with sync.connect(**options) as session:
            models = session.catalog()
    else:
        models = _run_async(backend, _catalog, options)
    return [m.id for m in models if not m.signed_in] + [m.id for m in models if m.signed_in]


async def _catalog(backend: Any, options: dict[str, Any]) -> tuple[Any, ...]:
    """The catalog asked on an async backend's session."""
    async with backend.connect(**options) as session:
        return tuple(await session.catalog())


def _run_async(name: str, function: Callable[[Any, dict[str, Any]], Any], options: dict[str, Any]) -> Any:
    """``function(backend, options)`` run on the async backend ``name`` (asyncio, trio or curl)."""
    if name == "trio":
        try:
            import trio

            from .. import trio as trio_backend
        except ImportError as exc:
            raise _Failure(f"the trio backend needs trio (pip install 'plabs-proto[trio]'): {exc}") from None
        return trio.run(function, trio_backend, options)
    import asyncio

    if name == "curl":
        try:
            from .. import curl as curl_backend
        except ImportError as exc:
            raise _Failure(f"the curl backend needs curl_cffi (pip install 'plabs-proto[impersonate]'): {exc}") from None
        return asyncio.run(function(curl_backend, options))
    from .. import asyncio as asyncio_backend

    return asyncio.run(function(asyncio_backend, options))


def _cmd_emulator(args: argparse.Namespace, printer: EventPrinter) -> int:
    if args.keyfile is not None and args.certfile is None:
        raise _UsageError("--keyfile needs --certfile")
    if args.service == "perplexity":
        config, factory = _perplexity_emulator(args)
        note = "the Perplexity emulator serves {url} until Ctrl-C: `plabs ask --service perplexity --server {url} \"...\"`"
    else:
        config, factory = _labs_emulator(args)
        note = 'the Labs emulator serves {url} until Ctrl-C: `plabs ask --server {url} "..."`'
    try:
        _serve_emulator(factory, config, note, args.host, args.port, args.certfile, args.keyfile, printer)
    except OSError as exc:
        files = f" with certfile {args.certfile!r}" if args.certfile else ""
        raise _Failure(
            f"cannot start the emulator on {args.host}:{args.port}{files}: {exc.strerror or exc}"
        ) from None
    return 0


def _refuse_options(args: argparse.Namespace, names: tuple[str, ...], service: str) -> None:
    """A usage error for an option of the other service's emulator."""
    for name in names:
        if getattr(args, name) not in (None, False):
            raise _UsageError(f"--{name.replace('_', '-')} is not an option of the {service} emulator")


def _emulator_settings(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, Any]:
    settings: dict[str, Any] = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    if args.retry_after == "":
        settings["retry_after"] = None  # no Retry-After header
    return settings


def choose_backend(backend: str | None, *, live: bool, traced: bool, impersonate: str | None) -> str:
    """The backend of ``plabs ask``: the one named, else curl for the live site when curl_cffi is installed
    (it speaks with Chrome's TLS and HTTP/2 fingerprint, the best chance against Cloudflare; it keeps no
    byte trace, so not with ``--trace``) or when ``--impersonate`` asks for it, else asyncio."""
    if backend is not None:
        return backend
    if impersonate is not None or (live and not traced and importlib.util.find_spec("curl_cffi") is not None):
        return "curl"
    return "asyncio"


def _check_guard_steps(args: argparse.Namespace, steps: Sequence[str], service: str) -> None:
    """Refuse a guard step (``--rate-limit STEP``...) the emulator of ``service`` does not have."""
    for name in ("rate_limit", "cloudflare", "redirect"):
        step = getattr(args, name)
        if step is not None and step not in steps:
            raise _UsageError(f"--{name.replace('_', '-')} of the {service} emulator takes one of "
                              f"{', '.join(steps)}, got {step!r}")


def _labs_emulator(args: argparse.Namespace) -> tuple[Any, Any]:
    try:
        from .emulator import Emulator, EmulatorConfig
    except ImportError as exc:
        raise _Failure(
            f"the emulator needs python-socketio and aiohttp (pip install 'plabs-proto[emulator]'): {exc}"
        ) from None
    _refuse_options(args, ("shape", "line_ending", "chunk_size", "write_size", "early_final", "error_code",
                           "require_cookie", "session_token", "gzip", "extras"), "labs")
    _check_guard_steps(args, _GUARD_STEPS, "labs")
    settings = _emulator_settings(args, (
        "answer", "reasoning", "frame_delay", "ping_interval", "fail", "drop_after", "cloudflare", "redirect",
        "redirect_to", "redirect_status", "rate_limit", "rate_limit_page", "retry_after", "login_page"))
    settings["silent"] = args.silent
    try:
        return EmulatorConfig(**settings), Emulator
    except ValueError as exc:
        raise _UsageError(str(exc)) from None


def _perplexity_emulator(args: argparse.Namespace) -> tuple[Any, Any]:
    try:
        from .emulator_perplexity import PerplexityEmulator, PerplexityEmulatorConfig
    except ImportError as exc:
        raise _Failure(f"the emulator needs aiohttp (pip install 'plabs-proto[emulator]'): {exc}") from None
    _refuse_options(args, ("reasoning", "ping_interval", "silent", "rate_limit_page", "login_page"), "perplexity")
    _check_guard_steps(args, _SSE_GUARD_STEPS, "perplexity")
    settings = _emulator_settings(args, (
        "answer", "frame_delay", "fail", "drop_after", "cloudflare", "rate_limit", "retry_after", "shape",
        "line_ending", "chunk_size", "write_size", "error_code", "redirect", "redirect_to", "redirect_status",
        "session_token"))
    for name in ("early_final", "require_cookie", "gzip", "extras"):
        settings[name] = getattr(args, name)
    try:
        return PerplexityEmulatorConfig(**settings), PerplexityEmulator
    except ValueError as exc:
        raise _UsageError(str(exc)) from None


def _serve_emulator(
    factory: Any, config: Any, note: str, host: str, port: int, certfile: str | None, keyfile: str | None,
    printer: EventPrinter,
) -> None:
    """Serve until Ctrl-C: the URL alone on the first line of stdout (for scripts and
    copying), how to use it (``note`` with ``{url}``) on stderr."""
    import asyncio

    async def serve() -> None:
        emulator = factory(config)
        url = await emulator.start(host, port, certfile=certfile, keyfile=keyfile)
        try:
            printer.stdout.write(url + "\n")
            printer.stdout.flush()
            _print_note(note.format(url=url) + f', or server="{url}" in Python', printer.stderr)
            await asyncio.Event().wait()
        finally:
            await emulator.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


# -- main ------------------------------------------------------------------------------------------


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, or ``[exc]``."""
    if isinstance(exc, _EXCEPTION_GROUP):
        subs: tuple[BaseException, ...] = exc.exceptions
        return [leaf for sub in subs for leaf in _leaves(sub)]
    return [exc]


def _describe(exc: BaseException, service: str | None = None) -> str | None:
    """The message for an error the CLI reports in one line, or None for a bug (traceback).

    A redirect met by ``plabs ask`` on the Labs service says where the service answers today.
    """
    if isinstance(exc, RedirectError) and service == "labs":
        return (f"{exc}; Perplexity Labs was retired in 2025: --service perplexity reaches the current endpoint "
                "(POST /rest/sse/perplexity_ask)")
    if isinstance(exc, LabsError | TraceError | _Failure):
        return str(exc)
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    return None


def _quiet_stdout() -> None:
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``plabs``; returns the exit status (``SystemExit`` 2 for usage errors)."""
    printer = EventPrinter(json_lines=False, reasoning=False, stdout=sys.stdout, stderr=sys.stderr)
    service: str | None = None  # plabs ask's, once parsed
    try:  # from the start: a Ctrl-C while the command is still starting is an interrupt like any other
        args = build_parser().parse_args(argv)
        if args.command in ("ask", "replay"):
            printer = _printer(args)
        if args.command == "ask":
            service = args.service
        run: Callable[[argparse.Namespace, EventPrinter], int] = args.run
        return run(args, printer)
    except _UsageError as exc:
        sub: argparse.ArgumentParser = args.parser
        if isinstance(exc, _InputError):
            sub.exit(2, f"{sub.prog}: error: {exc}\n")
        sub.error(str(exc))
    except BaseException as exc:  # sorted out below; bugs are re-raised
        leaves = _leaves(exc)
        if any(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
            printer.end_line()
            return 130
        if any(isinstance(leaf, BrokenPipeError) for leaf in leaves):
            _quiet_stdout()
            return 1
        for leaf in leaves:
            message = _describe(leaf, service)
            if message is not None:
                printer.error(leaf, message)
                return _exit_status(leaf)
        raise

