"""The Labs application layer: the query request and the answer stream.

The client emits ``perplexity_labs`` with the object :func:`build_request` makes;
the server answers with a stream of ``<model>_query_progress`` payloads, which
:class:`AnswerDecoder` turns into :mod:`plabs_proto.events` events.

Reasoning travels inline in ``output`` as ``<think>...</think>``.  The split
rules, shared by :func:`split_reasoning` and the decoder:

* a ``<think>`` at the very start (after optional whitespace, which is dropped)
  opens the reasoning; the first ``</think>`` after it closes it;
* without that opening tag, the first ``</think>`` anywhere means the text
  before it was reasoning (r1-1776 has been seen omitting the opening tag);
* the answer is the text after ``</think>``, leading whitespace stripped;
  later tags are plain answer text;
* an output with neither tag is all answer, and one whose ``<think>`` was never
  closed is all reasoning.

While an answer streams, the decoder cannot always know which side of the
split text belongs to: for a model in :data:`MODELS_WITHOUT_OPEN_THINK` untagged
output is reported as reasoning until a ``</think>`` comes or the final frame
shows it was the answer; a server may also send an output that does not extend
the last one.  Then an :class:`~plabs_proto.events.AnswerRevised` takes back
only what must be taken back, and the part that still extends what was
reported goes on as deltas.  The rule this gives a consumer: joining the
TextDeltas of a query gives ``AnswerFinished.text`` unless an AnswerRevised
came whose ``text`` differs from the text joined so far; following the
revisions (reset, then append the deltas) is always right.
"""

from __future__ import annotations

import json.decoder
import math
import re
from collections.abc import Callable, Mapping, Sequence
from enum import Enum
from typing import Any, NoReturn

from plabs_proto.errors import LocalProtocolError, RemoteProtocolError, excerpt
from plabs_proto.events import (
    AnswerFinished,
    AnswerRevised,
    Citations,
    Event,
    QueryFailed,
    ReasoningDelta,
    TextDelta,
)
from plabs_proto.jsondepth import too_deep

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_SOURCE",
    "DEFAULT_VERSION",
    "MODELS",
    "MODELS_WITHOUT_OPEN_THINK",
    "PROGRESS_SUFFIX",
    "REQUEST_EVENT",
    "AnswerDecoder",
    "CumulativeFrameReader",
    "build_request",
    "is_progress_event",
    "normalize_messages",
    "progress_event_name",
    "split_reasoning",
]

MODELS: tuple[str, ...] = ("r1-1776", "sonar-pro", "sonar", "sonar-reasoning", "sonar-reasoning-pro")
DEFAULT_MODEL = "r1-1776"
DEFAULT_VERSION = "2.18"
DEFAULT_SOURCE = "default"
REQUEST_EVENT = "perplexity_labs"

#: Models whose output may start without ``<think>`` yet contain ``</think>``:
#: while streaming, their untagged output is reported as reasoning until it is
#: clear it was not.
MODELS_WITHOUT_OPEN_THINK = frozenset({"r1-1776"})

ROLES = ("user", "assistant", "system")

_OPEN = "<think>"
_CLOSE = "</think>"
_WS = re.compile(r"\s*")  # \s is exactly str.isspace(), so this agrees with str.lstrip()


def _skip_space(text: str, pos: int) -> int:
    """The index of the first non-whitespace character at or after ``pos``."""
    match = _WS.match(text, pos)
    return match.end() if match else pos


def _check_model(model: object) -> str:
    if not isinstance(model, str):
        raise LocalProtocolError(
            f"expected the model as a str (a Labs model id such as {DEFAULT_MODEL!r}), got {excerpt(model)}"
        )
    return model or DEFAULT_MODEL


def progress_event_name(model: str) -> str:
    """The Socket.IO event the server streams the answer on: ``<model>_query_progress``.

    An empty model means :data:`DEFAULT_MODEL`, as in :func:`build_request`.
    """
    return f"{_check_model(model)}{PROGRESS_SUFFIX}"


PROGRESS_SUFFIX = "_query_progress"


def is_progress_event(name: str) -> bool:
    """Whether a Socket.IO event named ``name`` carries an answer: ``<model>_query_progress``.

    The server names the event after the request's model (:func:`progress_event_name`); the
    client takes any such event for the query it has in flight, as the clients Labs has
    known do, so a server that spells the model differently still answers.
    """
    return name.endswith(PROGRESS_SUFFIX)


# -- the request --------------------------------------------------------------------------------------


def _check_utf8(text: str, where: str) -> str:
    """``text`` if it can be sent as UTF-8; LocalProtocolError naming a lone surrogate otherwise."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise LocalProtocolError(
                f"{where}: expected text that can be sent as UTF-8, got a lone surrogate "
                f"{text[exc.start]!r} at position {exc.start} (Python makes one of each byte it could "
                "not decode, as in sys.argv or stdin read with the wrong encoding: decode those bytes "
                "with their real encoding, or with errors='replace')"
            ) from None
    return text


def _content_text(index: int, message: Mapping[Any, Any]) -> str:
    if "content" not in message:
        raise LocalProtocolError(
            f"message {index}: expected 'content' (a str or a list of parts), got no 'content' key"
        )
    content = message["content"]
    if isinstance(content, str):
        return _check_utf8(content, f"message {index}")
    if not isinstance(content, list):
        raise LocalProtocolError(
            f"message {index}: expected 'content' to be a str or a list of parts, got {excerpt(content)}"
        )
    texts: list[str] = []
    for part_index, part in enumerate(content):
        if isinstance(part, str):
            text = part
        elif isinstance(part, Mapping):
            if part.get("type") != "text":
                continue  # image and other non-text parts: Labs takes text only
            value = part.get("text")
            if not isinstance(value, str):
                got = excerpt(value) if "text" in part else "no 'text' key"
                raise LocalProtocolError(
                    f"message {index}, part {part_index}: "
                    f"expected 'text' to be a str in a text part, got {got}"
                )
            text = value
        else:
            raise LocalProtocolError(
                f"message {index}, part {part_index}: expected a str or a mapping with 'type', "
                f"got {excerpt(part)}"
            )
        if text:
            texts.append(_check_utf8(text, f"message {index}, part {part_index}"))
    return "\n".join(texts)


def normalize_messages(messages: str | Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """The conversation as Labs takes it: a list of ``{"role", "content"}`` dicts of str.

    A str is one user message.  List contents keep only their text parts
    (joined with ``"\\n"``); messages left without text are dropped; a run of
    assistant messages becomes one (joined with ``"\\n\\n"``).  Raises
    :class:`LocalProtocolError` for anything malformed or when no message is left.
    """
    items: Sequence[object]
    if isinstance(messages, str):
        items = [{"role": "user", "content": messages}]
    elif isinstance(messages, (bytes, bytearray, Mapping)) or not isinstance(messages, Sequence):
        raise LocalProtocolError(
            "expected the messages as a str or a sequence of {'role', 'content'} mappings, "
            f"got {excerpt(messages)}"
        )
    else:
        items = messages
    result: list[dict[str, str]] = []
    for index, message in enumerate(items):
        if not isinstance(message, Mapping):
            raise LocalProtocolError(
                f"message {index}: expected a mapping with 'role' and 'content', got {excerpt(message)}"
            )
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            got = excerpt(role) if "role" in message else "no 'role' key"
            raise LocalProtocolError(
                f"message {index}: expected 'role' to be 'user', 'assistant' or 'system', got {got}"
            )
        content = _content_text(index, message)
        if not content:
            continue
        if role == "assistant" and result and result[-1]["role"] == "assistant":
            result[-1]["content"] += "\n\n" + content
        else:
            result.append({"role": role, "content": content})
    if not result:
        got = "no messages" if not items else f"{len(items)} message(s), none with text"
        raise LocalProtocolError(f"expected at least one message with text, got {got}")
    return result


def build_request(
    messages: str | Sequence[Mapping[str, Any]],
    *,
    model: str = DEFAULT_MODEL,
    version: str = DEFAULT_VERSION,
    source: str = DEFAULT_SOURCE,
) -> dict[str, Any]:
    """The ``perplexity_labs`` event argument: ``{"version", "source", "model", "messages"}``.

    An empty ``model`` means :data:`DEFAULT_MODEL`; model ids outside
    :data:`MODELS` are sent as given (Labs changes its list over time).
    Every string must be sendable as UTF-8: a lone surrogate (what Python
    makes of undecodable bytes in ``sys.argv`` or stdin) raises
    :class:`LocalProtocolError` naming the message and position.
    """
    model = _check_utf8(_check_model(model), "model")
    for name, value in (("version", version), ("source", source)):
        if not isinstance(value, str):
            raise LocalProtocolError(f"expected {name} as a str, got {excerpt(value)}")
        _check_utf8(value, name)
    return {"version": version, "source": source, "model": model, "messages": normalize_messages(messages)}


# -- the answer ---------------------------------------------------------------------------------------


def split_reasoning(output: str, *, assume_open: bool = False) -> tuple[str, str]:
    """Split an output into ``(reasoning, answer)`` by its ``<think>`` tags (rules in the module doc).

    For a complete output leave ``assume_open`` False.  ``assume_open=True``
    reads an output the way the decoder does mid-stream for a model in
    :data:`MODELS_WITHOUT_OPEN_THINK`: text with no tag at all counts as
    reasoning (the ``</think>`` may be yet to come).
    """
    start = _skip_space(output, 0)
    if output.startswith(_OPEN, start):
        body = start + len(_OPEN)
        close = output.find(_CLOSE, body)
        if close < 0:
            return output[body:], ""
        return output[body:close], output[close + len(_CLOSE) :].lstrip()
    close = output.find(_CLOSE)
    if close >= 0:
        return output[:close], output[close + len(_CLOSE) :].lstrip()
    return (output, "") if assume_open else ("", output)


class _Phase(Enum):
    START = "start"  # only whitespace, or the beginning of "<think>", so far
    THINK = "think"  # inside the reasoning
    ANSWER = "answer"  # answer text, but a "</think>" may still turn it into reasoning
    AFTER = "after"  # past "</think>": all answer


def _hold_surrogate(output: str, start: int, end: int) -> int:
    """Hold back a trailing lone high surrogate: its pair may come in the next frame."""
    if end > start and "\ud800" <= output[end - 1] <= "\udbff":
        return end - 1
    return end


class _Scan:
    """Incremental split of a growing output.

    ``raw[r0:r1]`` is the reasoning and ``raw[a0:a1]`` the answer reported so
    far; ``raw[done:]`` is not consumed yet (a partial tag held back, or text a
    later frame will bring).  Each call to :meth:`advance` only looks at the new
    part of the output.
    """

    __slots__ = ("a0", "a1", "assume_open", "done", "phase", "r0", "r1", "raw", "strip")

    def __init__(self, assume_open: bool) -> None:
        self.assume_open = assume_open
        self.raw = ""
        self.done = 0
        self.phase = _Phase.START
        self.r0 = self.r1 = self.a0 = self.a1 = 0
        self.strip = False

    def advance(self, output: str) -> None:
        """Consume ``output``, which must extend ``raw[:done]``, as far as is safe."""
        self.raw = output
        end = len(output)
        while True:
            phase = self.phase
            if phase is _Phase.START:
                start = _skip_space(output, self.done)
                self.done = start
                if output.startswith(_OPEN, start):
                    self.phase = _Phase.THINK
                    self.r0 = self.r1 = self.done = start + len(_OPEN)
                    continue
                if end - start < len(_OPEN) and _OPEN.startswith(output[start:]):
                    return  # whitespace only, or a partial "<think>": wait for more
                self.done = 0  # no opening tag: the leading whitespace is content
                self.phase = _Phase.THINK if self.assume_open else _Phase.ANSWER
                continue
            if phase is _Phase.AFTER:
                if self.strip:
                    start = _skip_space(output, self.done)
                    self.a0 = self.a1 = self.done = start
                    if start == end:
                        return
                    self.strip = False
                self.a1 = self.done = _hold_surrogate(output, self.done, end)
                return
            # THINK or ANSWER: only "</think>" matters, searched for in the unconsumed part
            close = output.find(_CLOSE, self.done)
            if close >= 0:
                # in ANSWER (no "<think>") r0 is still 0: all text before "</think>" was reasoning
                self.r1 = close
                self.phase = _Phase.AFTER
                self.a0 = self.a1 = self.done = close + len(_CLOSE)
                self.strip = True
                continue
            safe = end
            lt = output.rfind("<", max(self.done, end - len(_CLOSE) + 1), end)
            if lt >= 0 and _CLOSE.startswith(output[lt:]):
                safe = lt  # a "</think>" may be split across frames
            safe = _hold_surrogate(output, self.done, safe)
            self.done = safe
            if phase is _Phase.THINK:
                self.r1 = safe
            else:
                self.a1 = safe
            return

    def view(self) -> tuple[str, str]:
        return self.raw[self.r0 : self.r1], self.raw[self.a0 : self.a1]


def _grown(raw: str, old0: int, old1: int, new0: int, new1: int) -> str | None:
    """The delta when ``raw[new0:new1]`` plainly extends ``raw[old0:old1]``, else None."""
    if old0 == old1:
        return raw[new0:new1]
    if new0 == old0 and new1 >= old1:
        return raw[old1:new1]
    return None


def _diff(old: tuple[str, str], new: tuple[str, str]) -> list[Event]:
    """The events that take a consumer from the ``(reasoning, text)`` reported to ``new``.

    Deltas when both extend what was reported.  Otherwise one AnswerRevised
    first, which rewrites only what must be rewritten: when the text still
    extends the text reported (from ``""`` too) the revision repeats that text
    unchanged and the rest of it follows as a TextDelta, so a consumer of
    TextDeltas alone misses nothing; the same for the reasoning.
    """
    (old_r, old_t), (new_r, new_t) = old, new
    keep_r = new_r.startswith(old_r)
    keep_t = new_t.startswith(old_t)
    events: list[Event] = []
    if not (keep_r and keep_t):
        events.append(AnswerRevised(text=old_t if keep_t else new_t, reasoning=old_r if keep_r else new_r))
    if keep_r and len(new_r) > len(old_r):
        events.append(ReasoningDelta(text=new_r[len(old_r) :]))
    if keep_t and len(new_t) > len(old_t):
        events.append(TextDelta(text=new_t[len(old_t) :]))
    return events


def _float_or_none(value: object) -> float | None:
    """A JSON number as a finite float; None for anything else, NaN, infinities and integers too
    large for a float (``elapsed_time`` is informational: an absurd one is dropped, not fatal)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            return None
        return number if math.isfinite(number) else None
    return None


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class AnswerDecoder:
    """Turns the ``<model>_query_progress`` payloads of one query into events.

    Feed each payload (already JSON-decoded) to :meth:`feed`; it returns
    :class:`TextDelta`, :class:`ReasoningDelta`, :class:`Citations`,
    :class:`AnswerRevised`, then :class:`AnswerFinished` or
    :class:`QueryFailed`.  ``output`` is cumulative: the deltas are its new
    suffix.  Concatenating the deltas (restarting from an AnswerRevised) gives
    :attr:`text` and :attr:`reasoning` at every step; an AnswerRevised changes
    the ``text`` (or ``reasoning``) it carries only when the new one does not
    extend the one reported (see the module docstring).

    Per frame the cost is proportional to the new text only (plus one C-level
    ``startswith`` over the known prefix); the final frame is split whole once.
    """

    __slots__ = ("_assume_open", "_citations", "_final_view", "_finished", "_model", "_scan")

    def __init__(self, model: str) -> None:
        self._model = _check_model(model)
        self._assume_open = self._model in MODELS_WITHOUT_OPEN_THINK
        self._scan = _Scan(self._assume_open)
        self._citations: tuple[Any, ...] = ()
        self._finished = False
        self._final_view: tuple[str, str] | None = None

    @property
    def model(self) -> str:
        return self._model

    @property
    def text(self) -> str:
        """The answer text reported so far."""
        return self._view()[1]

    @property
    def reasoning(self) -> str:
        """The reasoning text reported so far."""
        return self._view()[0]

    @property
    def citations(self) -> tuple[Any, ...]:
        """The citations last reported (``()`` if none)."""
        return self._citations

    @property
    def finished(self) -> bool:
        """True once AnswerFinished or QueryFailed was returned."""
        return self._finished

    def _view(self) -> tuple[str, str]:
        return self._final_view if self._final_view is not None else self._scan.view()

    def _error(self, message: str) -> RemoteProtocolError:
        reasoning, text = self._view()
        return RemoteProtocolError(message, partial_text=text, partial_reasoning=reasoning)

    def feed(self, payload: object) -> list[Event]:
        """Take one progress payload; return the events it brings (possibly none).

        Raises :class:`RemoteProtocolError` for a malformed payload (the decoder
        is left as it was) and :class:`LocalProtocolError` once finished.
        """
        if self._finished:
            raise LocalProtocolError(
                f"feed() called after the {self._model} answer had finished, got {excerpt(payload)}"
            )
        if not isinstance(payload, dict):
            raise self._error(f"expected a JSON object as the progress payload, got {excerpt(payload)}")
        status = payload.get("status")
        if status == "failed":
            return [self._fail(payload.get("text"))]
        has_output = "output" in payload
        output = payload.get("output")
        if has_output and not isinstance(output, str):
            raise self._error(
                f"expected 'output' to be a string in the {self._model} progress payload, "
                f"got {excerpt(output)}"
            )
        citations = payload.get("citations")
        if citations is not None and not isinstance(citations, list):
            raise self._error(
                f"expected 'citations' to be a list in the {self._model} progress payload, "
                f"got {excerpt(citations)}"
            )
        final = bool(payload.get("final")) or status == "completed"

        events: list[Event]
        if final:
            # the final output is split whole; a final frame without one closes what we have
            events = self._finish(output if isinstance(output, str) else self._scan.raw)
        elif isinstance(output, str):
            events = self._advance(output)
        else:
            events = []
        if citations is not None:
            cited = tuple(citations)
            if cited != self._citations:
                self._citations = cited
                events.append(Citations(citations=cited))
        if final:
            self._finished = True
            reasoning, text = self._view()
            events.append(
                AnswerFinished(
                    model=self._model,
                    text=text,
                    reasoning=reasoning,
                    citations=self._citations,
                    elapsed_time=_float_or_none(payload.get("elapsed_time")),
                    tokens_streamed=_int_or_none(payload.get("tokens_streamed")),
                )
            )
        return events

    def _advance(self, output: str) -> list[Event]:
        scan = self._scan
        if output.startswith(scan.raw):  # the usual case: the output grew
            r0, r1, a0, a1 = scan.r0, scan.r1, scan.a0, scan.a1
            scan.advance(output)
            reasoning = _grown(output, r0, r1, scan.r0, scan.r1)
            text = _grown(output, a0, a1, scan.a0, scan.a1)
            if reasoning is not None and text is not None:
                events: list[Event] = []
                if reasoning:
                    events.append(ReasoningDelta(text=reasoning))
                if text:
                    events.append(TextDelta(text=text))
                return events
            return _diff((output[r0:r1], output[a0:a1]), scan.view())
        # the output does not extend the last one: split it afresh and compare what was reported
        fresh = _Scan(self._assume_open)
        fresh.advance(output)
        old = scan.view()
        self._scan = fresh
        return _diff(old, fresh.view())

    def _finish(self, output: str) -> list[Event]:
        old = self._view()
        self._final_view = split_reasoning(output)
        return _diff(old, self._final_view)

    def _fail(self, text: object) -> QueryFailed:
        if isinstance(text, str):
            message = text or "(no text)"
        else:
            message = "(no text)" if text is None else excerpt(text)
        self._final_view = self._view()
        self._finished = True
        reasoning, partial = self._final_view
        return QueryFailed(
            model=self._model, message=message, partial_text=partial, partial_reasoning=reasoning
        )


# -- reading successive progress frames by their shared prefix ------------------------------------------

# A progress event as servers write it: 2["<name>",{"output":"<string>  (JSON whitespace allowed between tokens)
_PROGRESS_HEAD = re.compile(r'2\[[ \t\n\r]*"([^"\\\x00-\x1f]*)"[ \t\n\r]*,[ \t\n\r]*\{[ \t\n\r]*"output"[ \t\n\r]*:[ \t\n\r]*"')


class CumulativeFrameReader:
    """Reads ``<model>_query_progress`` event text cheaply, by what it shares with the previous frame.

    Because ``output`` is cumulative, frame *n+1* of an answer normally starts
    with every character of frame *n* up to the end of its output string.
    :meth:`read` checks that prefix with one ``str.startswith`` (a memory
    compare) and decodes only the new part of the output and the small tail of
    the object, instead of JSON-decoding the whole frame.  Whenever the frame
    is not of that shape (``output`` not the first key, the output does not
    extend the previous one, the tail is not a plain object...) it returns
    ``None`` and the caller decodes the frame in full, so the result is always
    what ``json.loads`` would give.
    """

    __slots__ = ("_bprefix", "_name", "_output", "_prefix", "_start")

    def __init__(self) -> None:
        self._prefix = ""  # the previous frame's text up to the end of its output ("" = unknown)
        self._bprefix: memoryview | None = None  # the same as UTF-8 bytes (None = not computed yet)
        self._start = -1
        self._output = ""
        self._name = ""

    def read(self, text: str, start: int) -> tuple[str, dict[str, Any]] | None:
        """``(event name, payload)`` for the Socket.IO event at ``text[start:]``, or None.

        ``text[start:]`` must be a Socket.IO packet (``2[...``); ``text[:start]``
        is whatever came before it in the same message (the Engine.IO type).
        """
        prefix = self._prefix
        if prefix and start == self._start and text.startswith(prefix):
            try:
                new, end = _scanstring(text, len(prefix))
            except ValueError:
                return None
            if new and "\udc00" <= new[0] <= "\udfff":
                return None  # a surrogate pair split across frames: JSON decoding would join it
            output = self._output + new
            name = self._name
        else:
            match = _PROGRESS_HEAD.match(text, start)
            if match is None:
                return None
            try:
                output, end = _scanstring(text, match.end())
            except ValueError:
                return None
            name = match.group(1)
        payload = _tail(text, end)
        if payload is None:
            return None
        payload["output"] = output
        self._prefix = text[: end - 1]
        self._bprefix = None
        self._start = start
        self._output = output
        self._name = name
        return name, payload

    def read_bytes(self, data: bytes, start: int) -> tuple[str, dict[str, Any]] | None:
        """:meth:`read` for a WebSocket text frame's undecoded UTF-8 payload, or None.

        It only takes the prefix path: when ``data`` begins with the bytes of the
        previous frame up to the end of its output, only the bytes after them are
        decoded (and so checked as UTF-8; the rest were checked in that frame).
        None means: decode the frame and use :meth:`read` or a full decoding.
        """
        bprefix = self._bprefix
        if bprefix is None:
            if not self._prefix or start != self._start:
                return None
            bprefix = self._bprefix = memoryview(self._prefix.encode("utf-8", "surrogatepass"))
        if start != self._start or not data.startswith(bprefix):
            return None
        try:
            rest = data[len(bprefix) :].decode("utf-8")
            new, end = _scanstring(rest, 0)
        except ValueError:  # UnicodeDecodeError too: the caller's full decoding reports it
            return None
        if new and "\udc00" <= new[0] <= "\udfff":
            return None  # a surrogate pair split across frames: JSON decoding would join it
        payload = _tail(rest, end)
        if payload is None:
            return None
        output = self._output + new
        payload["output"] = output
        # A view of this frame's bytes, not a copy: the frame is kept alive instead.
        self._bprefix = memoryview(data)[: len(bprefix) + len(rest[: end - 1].encode("utf-8"))]
        self._prefix = ""  # the text form is not kept on this path
        self._output = output
        return self._name, payload


def _tail(text: str, end: int) -> dict[str, Any] | None:
    """The rest of a progress object after its output string (``text[end:]``), or None if it is not plain."""
    tail = text[end:].rstrip(" \t\n\r")
    if tail == "}]":
        return {}
    if not tail.endswith("]"):
        return None
    inner = tail[:-1].rstrip(" \t\n\r")
    if not inner.startswith(","):
        return None
    body = "{" + inner[1:]
    if too_deep(body):
        return None  # the full decoding refuses it, with the reason
    try:
        payload, stop = _scan_json(body, 0)
    except (StopIteration, ValueError, RecursionError):
        return None
    if stop != len(body) or type(payload) is not dict or "output" in payload:
        return None
    return payload


#: ``scanstring(text, index, strict)``: the JSON string starting just after a quote at
#: ``text[index]``, and the index after its closing quote (the C implementation json uses).
_scanstring_c: Callable[[str, int, bool], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


#: ``scan(text, index)``: the JSON value starting at ``text[index]`` and the index after it
#: (json's C scanner, without json.loads's wrappers); StopIteration when there is none.
#: NaN, Infinity and -Infinity raise ValueError, as in the Socket.IO codec: the fast path
#: steps aside for them and the full decoding refuses the frame.
_scan_json: Callable[[str, int], tuple[Any, int]] = json.decoder.JSONDecoder(  # type: ignore[attr-defined]
    parse_constant=_refuse_constant
).scan_once


def _scanstring(text: str, index: int) -> tuple[str, int]:
    return _scanstring_c(text, index, True)

