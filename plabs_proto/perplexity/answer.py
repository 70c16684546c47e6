"""The answer of the ask service: the ``data`` of each ``message`` event, decoded into events.

:class:`AnswerDecoder` takes the JSON object of each ``message`` event (already
decoded by the caller, through :mod:`plabs_proto.jsondepth`'s guard) and hands out
the events the Labs service hands out (:class:`~plabs_proto.events.TextDelta`,
:class:`~plabs_proto.events.ReasoningDelta`, :class:`~plabs_proto.events.AnswerRevised`,
:class:`~plabs_proto.events.Citations`, :class:`~plabs_proto.events.AnswerFinished`),
plus the search steps (:class:`~plabs_proto.events.SearchQueries`,
:class:`~plabs_proto.events.SourcesRead`) and the thread
(:class:`~plabs_proto.events.ThreadIdentity`).

The shapes the service has used (protocol.md §10.4), all taken, in any order of blocks:

* **steps** (legacy): ``text`` is a JSON string (or, in some clients' captures, the
  decoded value) holding a list of steps ``{step_type, content}``; the ``FINAL``
  step's ``content.answer`` is itself a JSON string ``{answer, chunks, web_results}``
  (or an object, or plain text).  An older form put that object (or plain answer
  text) in ``text`` directly.  Each frame carries the whole answer so far (or, with
  only ``chunks``, either all of them again or only the new ones).
* **blocks** (schematized): ``blocks[]`` of ``{intended_usage, <kind>_block}`` or
  ``{intended_usage, diff_block: {field, patches}}`` (RFC 6902 patches against the
  block named by ``field``).  The answer is the ``markdown_block`` of usage
  ``ask_text`` (or ``ask_text_<n>_markdown``, or one without a usage: one track is
  followed, ``ask_text`` when there is one); a whole ``markdown_block`` whose
  ``chunk_starting_offset`` is *k* replaces the chunks from *k* on; without an
  offset, chunks that extend the ones held replace them, others are appended.
  Sources: ``web_result_block.web_results`` (or ``sources_mode_block``); search
  steps: ``plan_block.steps``.
* **workflow** (2026-08 on): ``workflow_block {status, steps[{items[]}]}``, patched by
  ``diff_block {field: "workflow_block"}``; the answer is the first text item whose
  ``variant`` is ``"answer"`` (or none); the ``"thinking"`` items are the reasoning
  (joined with a blank line); ``queries_payload`` and ``sources_payload`` items are
  search steps.

The end (§10.3): the answer is finished by a frame whose ``status`` is ``COMPLETED``
(or by :meth:`AnswerDecoder.end_of_stream`), never by ``final: true`` alone, which
the service also sets on a PENDING frame before the last text.  The COMPLETED
frame's whole answer is checked against the text streamed: a
:class:`~plabs_proto.events.TextDelta` for what is missing, or an
:class:`~plabs_proto.events.AnswerRevised` when it differs.

Cost: the text is kept as chunks and only new chunks are joined, so a stream of
small patches costs time linear in the answer; a frame that carries the whole
answer (the steps shape) costs time linear in that frame, which its bytes force.
A patch that changes a chunk already reported makes the text be joined again;
that re-joining is bounded in all by ``max_rewrite`` characters.  Search steps are
read again only from the plans and the workflow a frame changed, and the workflow
is walked again only when its structure changes.  Every count is bounded (the
``max_*`` arguments): blocks per frame, answer tracks and plans kept, steps, items,
patches per frame, chunks per text, characters of answer and of reasoning.
"""

from __future__ import annotations

import json
import re
import reprlib
from typing import Any, NoReturn

from plabs_proto.errors import (
    AnswerFailedError,
    AnswerRateLimitedError,
    LabsError,
    LocalProtocolError,
    RemoteProtocolError,
)
from plabs_proto.events import (
    AnswerFinished,
    AnswerRevised,
    Citations,
    Event,
    ReasoningDelta,
    SearchQueries,
    SourcesRead,
    TextDelta,
    ThreadIdentity,
)
from plabs_proto.jsondepth import check_depth, too_deep
from plabs_proto.refusal import clean

__all__ = [
    "DEFAULT_MAX_BLOCKS",
    "DEFAULT_MAX_CHUNKS",
    "DEFAULT_MAX_PATCHES",
    "DEFAULT_MAX_STEPS",
    "DEFAULT_MAX_TEXT",
    "END_OF_STREAM",
    "MESSAGE",
    "AnswerDecoder",
    "load_frame",
]

MESSAGE = "message"
"""The SSE event type of an answer frame."""
END_OF_STREAM = "end_of_stream"
"""The SSE event type that ends the stream (its data is ``{}``)."""

DEFAULT_MAX_TEXT = 8 * 1024 * 1024
"""Longest answer (and longest reasoning), in characters."""
DEFAULT_MAX_BLOCKS = 1000
"""Most blocks in one frame, and most answer tracks (markdown usages) and plans kept."""
DEFAULT_MAX_STEPS = 1000
"""Most steps in a steps list, a plan or a workflow, and most items in a whole workflow."""
DEFAULT_MAX_PATCHES = 10_000
"""Most patches in one frame (all its ``diff_block`` s together)."""
DEFAULT_MAX_CHUNKS = 1 << 20
"""Most chunks in one text (and most members a patch may add to one list)."""
MAX_POINTER = 32
"""Most tokens in a patch's path."""

_REPR = reprlib.Repr()
_REPR.maxstring = 60
_REPR.maxother = 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = 4
_REPR.maxlevel = 2

_INDEX = re.compile(r"0|[1-9][0-9]{0,17}")
_OPS = ("add", "replace", "remove")
_UNSET: Any = object()


def _excerpt(value: object) -> str:
    """``type: repr`` of a value, cut short."""
    if isinstance(value, str):
        return f"str: {value[:60]!r}" + ("..." if len(value) > 60 else "")
    return f"{type(value).__name__}: {_REPR.repr(value)}"


def load_frame(data: str) -> Any:
    """The JSON value of an SSE event's data, for :meth:`AnswerDecoder.feed`.

    Nesting deeper than :data:`plabs_proto.jsondepth.MAX_DEPTH`, text that is not
    JSON, and ``NaN``/``Infinity`` are refused with :class:`RemoteProtocolError`.
    """
    check_depth(data, "an answer frame")
    try:
        return json.loads(data, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise RemoteProtocolError(f"expected an answer frame of JSON, got {_excerpt(data)} ({exc})") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _is_answer_usage(usage: str | None) -> bool:
    """Whether a markdown block of this ``intended_usage`` is answer text."""
    return not usage or usage == "ask_text" or "markdown" in usage


class _Text:
    """What was reported of one text (the answer or the reasoning), and which chunk list it follows.

    While ``ref`` is a list, the text reported is exactly ``"".join(ref[:count])``.
    """

    __slots__ = ("count", "length", "parts", "ref", "seen")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.length = 0
        self.ref: list[Any] | None = None
        self.count = 0
        self.seen: str | None = None  # the whole text last compared (the same object: nothing new)

    def text(self) -> str:
        if len(self.parts) > 1:
            self.parts = ["".join(self.parts)]
        return self.parts[0] if self.parts else ""

    def append(self, more: str) -> None:
        if more:
            self.parts.append(more)
            self.length += len(more)

    def reset(self, text: str) -> None:
        self.parts = [text] if text else []
        self.length = len(text)


class _Change:
    """How one text changes in a frame: ``delta`` to append, or ``revised`` to replace it."""

    __slots__ = ("count", "delta", "ref", "revised")

    def __init__(self, *, delta: str = "", revised: str | None = None, ref: Any = _UNSET, count: int = 0) -> None:
        self.delta = delta
        self.revised = revised
        self.ref = ref
        self.count = count


class AnswerDecoder:
    """Turns the ``message`` frames of one ask into events.

    Call :meth:`feed` with each frame's decoded JSON object, in order; it returns
    the events the frame brings.  When the stream's ``end_of_stream`` event comes,
    call :meth:`end_of_stream`.  Frames after the answer finished are taken and
    give nothing.  The decoder keeps parts of the frames it is given (the blocks
    it patches) and changes them: hand it each frame once, and do not use it after.

    Errors: a frame that reports a failure raises
    :class:`~plabs_proto.errors.AnswerRateLimitedError` (``FREE_TIER_RATE_LIMITED``
    and other ``*RATE_LIMIT*`` codes) or :class:`~plabs_proto.errors.AnswerFailedError`
    (``status: "failed"``, any other ``error_code`` or ``error_message``); anything
    malformed or past a limit raises :class:`~plabs_proto.errors.RemoteProtocolError`.
    Each carries ``partial_text`` and ``partial_reasoning``.  After an error the
    decoder takes nothing more (:class:`~plabs_proto.errors.LocalProtocolError`).
    """

    __slots__ = (
        "_answer",
        "_broken",
        "_budget",
        "_citations",
        "_finished",
        "_legacy",
        "_legacy_chunks",
        "_markdown",
        "_model",
        "_payloads",
        "_pieces",
        "_plans",
        "_queries",
        "_reasoning",
        "_sources",
        "_stale_plans",
        "_stale_workflow",
        "_thread",
        "_touched",
        "_web",
        "_workflow",
        "max_blocks",
        "max_chunks",
        "max_patches",
        "max_rewrite",
        "max_steps",
        "max_text",
    )

    def __init__(
        self,
        *,
        model: str = "",
        max_text: int = DEFAULT_MAX_TEXT,
        max_blocks: int = DEFAULT_MAX_BLOCKS,
        max_steps: int = DEFAULT_MAX_STEPS,
        max_patches: int = DEFAULT_MAX_PATCHES,
        max_chunks: int = DEFAULT_MAX_CHUNKS,
        max_rewrite: int | None = None,
    ) -> None:
        if not isinstance(model, str):
            raise LocalProtocolError(f"expected the model as a str, got {_excerpt(model)}")
        self._model = model
        self.max_text = max_text
        self.max_blocks = max_blocks
        self.max_steps = max_steps
        self.max_patches = max_patches
        self.max_chunks = max_chunks
        self.max_rewrite = 16 * max_text if max_rewrite is None else max_rewrite
        """Most characters joined again, in all, because a patch changed text already reported."""
        self._budget = self.max_rewrite
        self._answer = _Text()
        self._reasoning = _Text()
        self._pieces: list[_Text] = []  # each thinking item's text, followed on its own
        self._markdown: dict[str, dict[str, Any]] = {}  # usage ("" for none) -> markdown_block, first seen first
        self._workflow: Any = None
        self._payloads: list[dict[str, Any]] | None = None  # the workflow's item payloads (None: walk again)
        self._plans: dict[str, Any] = {}
        self._web: dict[str, Any] = {}  # block field -> block holding web_results
        self._legacy: str | None = None  # the answer of the steps shape, whole
        self._legacy_chunks: list[Any] = []  # its chunks, when it sends chunks without the whole answer
        self._citations: tuple[Any, ...] = ()
        self._queries: set[str] = set()
        self._sources: set[str] = set()
        self._thread: tuple[str, str | None, str | None] | None = None
        self._touched: dict[int, int] = {}
        self._stale_plans: set[str] = set()  # plans changed in this frame
        self._stale_workflow = False  # the workflow's structure or search steps changed in this frame
        self._finished = False
        self._broken = False

    # -- what was decoded so far --------------------------------------------------------------------

    @property
    def model(self) -> str:
        """The model the service named (``display_model``), or the one given."""
        return self._model

    @property
    def partial_text(self) -> str:
        """The answer text reported so far (the whole answer once finished)."""
        return self._answer.text()

    @property
    def partial_reasoning(self) -> str:
        """The reasoning text reported so far."""
        return self._reasoning.text()

    @property
    def citations(self) -> tuple[Any, ...]:
        """The citations last reported: dicts ``{"url", "title"}``."""
        return self._citations

    @property
    def thread(self) -> ThreadIdentity | None:
        """The thread the answer belongs to, once the service named it."""
        if self._thread is None:
            return None
        backend_uuid, token, slug = self._thread
        return ThreadIdentity(backend_uuid=backend_uuid, read_write_token=token, thread_url_slug=slug)

    @property
    def finished(self) -> bool:
        """True once AnswerFinished was returned."""
        return self._finished

    # -- input ----------------------------------------------------------------------------------------

    def feed(self, frame: object) -> list[Event]:
        """Take one ``message`` frame (its decoded JSON); return the events it brings."""
        if self._broken:
            raise LocalProtocolError(f"expected no feed() after an error, got {_excerpt(frame)}")
        if self._finished:
            return []
        try:
            return self._frame(frame)
        except LabsError as exc:
            self._broken = True
            exc.partial_text = self.partial_text
            exc.partial_reasoning = self.partial_reasoning
            raise

    def end_of_stream(self) -> list[Event]:
        """The stream's ``end_of_stream`` event came: finish the answer with what came (if not finished)."""
        if self._broken:
            raise LocalProtocolError("expected no end_of_stream() after an error, got one")
        if self._finished:
            return []
        try:
            return self._finish()
        except LabsError as exc:
            self._broken = True
            exc.partial_text = self.partial_text
            exc.partial_reasoning = self.partial_reasoning
            raise

    def _fail(self, message: str) -> NoReturn:
        raise RemoteProtocolError(message)

    # -- one frame ----------------------------------------------------------------------------------

    def _frame(self, frame: object) -> list[Event]:
        if not isinstance(frame, dict):
            self._fail(f"expected a JSON object as the frame, got {_excerpt(frame)}")
        self._check_failure(frame)
        events: list[Event] = []
        self._identity(frame, events)
        model = frame.get("display_model")
        if isinstance(model, str) and model:
            self._model = model
        self._touched = {}
        self._stale_plans = set()
        self._stale_workflow = False
        citations: list[Any] | None = None
        if "blocks" in frame and frame["blocks"] is not None:
            citations = self._blocks(frame["blocks"])
        legacy = frame.get("text")
        if legacy is not None and legacy != "":
            legacy_citations = self._steps_text(legacy, events)
            if legacy_citations is not None:
                citations = legacy_citations
        top = frame.get("web_results")
        if isinstance(top, list):
            citations = top
        if self._stale_plans or self._stale_workflow:
            self._block_steps(events)
        if citations is not None:
            self._cite(citations, events)
        self._texts(events)
        status = frame.get("status")
        if isinstance(status, str) and status.upper() == "COMPLETED":
            events.extend(self._finish())
        return events

    def _check_failure(self, frame: dict[str, Any]) -> None:
        status = frame.get("status")
        if status is not None and not isinstance(status, str):
            self._fail(f"expected 'status' to be a string, got {_excerpt(status)}")
        code = frame.get("error_code")
        if not isinstance(code, str):
            code = json.dumps(code)[:100] if code else None
        error_message = frame.get("error_message")
        failed = (status or "").lower() == "failed"
        if not (failed or code or (isinstance(error_message, str) and error_message)):
            return
        text = frame.get("text")
        if isinstance(error_message, str) and error_message:
            words = error_message
        elif isinstance(text, str) and text and failed:
            words = text
        else:
            words = ""
        words = clean(words, 500)
        code = clean(code, 100) if code else None
        said = f"{words} ({code})" if words and code else words or code or "(no text)"
        if code and "RATE_LIMIT" in code.upper():
            raise AnswerRateLimitedError(
                f"the ask service refused the query for a quota: {said}", error_code=code, server_text=words
            )
        raise AnswerFailedError(
            f"the ask service reported a failure for the query: {said}", error_code=code, server_text=words
        )

    def _identity(self, frame: dict[str, Any], events: list[Event]) -> None:
        values: list[str | None] = []
        for key in ("backend_uuid", "read_write_token", "thread_url_slug"):
            value = frame.get(key)
            if value is not None and not isinstance(value, str):
                self._fail(f"expected {key!r} to be a string, got {_excerpt(value)}")
            values.append(value or None)
        backend_uuid, token, slug = values
        if backend_uuid is None:
            return
        old = self._thread
        thread = (backend_uuid, token or (old[1] if old else None), slug or (old[2] if old else None))
        if thread != old:
            self._thread = thread
            events.append(ThreadIdentity(backend_uuid=thread[0], read_write_token=thread[1], thread_url_slug=thread[2]))

    # -- the blocks shape and the workflow shape ----------------------------------------------------

    def _blocks(self, blocks: object) -> list[Any] | None:
        """Take the blocks of a frame; return the web results when they changed."""
        if not isinstance(blocks, list):
            self._fail(f"expected 'blocks' to be a list, got {_excerpt(blocks)}")
        if len(blocks) > self.max_blocks:
            self._fail(f"expected at most {self.max_blocks} blocks in a frame, got {len(blocks)}")
        web_touched = False
        patches_left = self.max_patches
        for block in blocks:
            if not isinstance(block, dict):
                self._fail(f"expected each block to be a JSON object, got {_excerpt(block)}")
            usage = block.get("intended_usage")
            if usage is not None and not isinstance(usage, str):
                self._fail(f"expected 'intended_usage' to be a string, got {_excerpt(usage)}")
            usage = usage or ""
            for field, value in block.items():
                if field == "diff_block":
                    if not isinstance(value, dict):
                        self._fail(f"expected 'diff_block' to be a JSON object, got {_excerpt(value)}")
                    patches_left, kind = self._diff(usage, value, patches_left)
                elif field.endswith("_block"):
                    kind = self._whole(usage, field, value)
                else:
                    continue
                web_touched = web_touched or kind == "web"
        if not web_touched:
            return None
        citations: list[Any] = []
        for holder in self._web.values():
            results = holder.get("web_results") if isinstance(holder, dict) else None
            if results is not None and not isinstance(results, list):
                self._fail(f"expected 'web_results' to be a list, got {_excerpt(results)}")
            if results:
                citations = results
        return citations

    def _whole(self, usage: str, field: str, value: object) -> str:
        """Take a whole ``<kind>_block``; say what it touched ("text", "steps", "web" or "")."""
        if field == "markdown_block":
            if _is_answer_usage(usage):
                self._merge_markdown(usage, value)
                return "text"
            return ""
        if field == "workflow_block":
            if not isinstance(value, dict):
                self._fail(f"expected 'workflow_block' to be a JSON object, got {_excerpt(value)}")
            self._workflow = value
            self._payloads = None
            self._stale_workflow = True
            return "steps"
        if field == "plan_block":
            self._keep(self._plans, usage, "plans")
            self._plans[usage] = value
            self._stale_plans.add(usage)
            return "steps"
        if field in ("web_result_block", "sources_mode_block"):
            self._web[field] = value
            return "web"
        return ""

    def _merge_markdown(self, usage: str, value: object) -> None:
        if not isinstance(value, dict):
            self._fail(f"expected 'markdown_block' to be a JSON object, got {_excerpt(value)}")
        chunks = value.get("chunks")
        if chunks is not None and not isinstance(chunks, list):
            self._fail(f"expected 'chunks' to be a list in a markdown_block, got {_excerpt(chunks)}")
        offset = value.get("chunk_starting_offset")
        self._keep(self._markdown, usage, "answer tracks (markdown usages)")
        doc = dict(value)
        old_doc = self._markdown.get(usage)
        old = old_doc.get("chunks") if isinstance(old_doc, dict) else None
        if chunks is None:
            if isinstance(old, list):
                doc["chunks"] = old
        elif not isinstance(old, list):
            if offset not in (None, 0):
                self._fail(f"expected 'chunk_starting_offset' 0 in the first markdown_block, got {_excerpt(offset)}")
            fresh: list[Any] = []
            self._grow(fresh, chunks)
            doc["chunks"] = fresh
        else:
            if offset is None:
                self._absorb(old, chunks)
            else:
                if type(offset) is not int or not 0 <= offset <= len(old):
                    self._fail(
                        f"expected 'chunk_starting_offset' to be an index from 0 to the {len(old)} chunks held, "
                        f"got {_excerpt(offset)}"
                    )
                same = 0
                limit = min(len(chunks), len(old) - offset)
                while same < limit and old[offset + same] == chunks[same]:
                    same += 1
                if same < len(old) - offset:
                    self._touch(old, offset + same)
                del old[offset + same :]
                self._grow(old, chunks[same:])
            doc["chunks"] = old
        self._markdown[usage] = doc

    def _keep(self, kept: dict[str, Any], usage: str, what: str) -> None:
        if usage not in kept and len(kept) >= self.max_blocks:
            self._fail(f"expected at most {self.max_blocks} {what}, got {len(kept) + 1}")

    def _absorb(self, held: list[Any], chunks: list[Any]) -> None:
        """Add ``chunks`` sent without an offset: chunks that extend the ones held are the whole list
        again (only the new ones are added); others come after them."""
        size = len(held)
        self._grow(held, chunks[size:] if len(chunks) >= size and chunks[:size] == held else chunks)

    def _grow(self, chunks: list[Any], more: list[Any]) -> None:
        if len(chunks) + len(more) > self.max_chunks:
            self._fail(f"expected at most {self.max_chunks} chunks in a text, got {len(chunks) + len(more)}")
        chunks.extend(more)

    def _touch(self, container: list[Any], index: int) -> None:
        key = id(container)
        if index < self._touched.get(key, index + 1):
            self._touched[key] = index

    def _diff(self, usage: str, diff: dict[str, Any], patches_left: int) -> tuple[int, str]:
        field = diff.get("field")
        if field is None:
            field = "markdown_block" if _is_answer_usage(usage) else "workflow_block" if usage == "workflow_root" else ""
        if not isinstance(field, str):
            self._fail(f"expected the diff_block's 'field' to be a string, got {_excerpt(field)}")
        patches = diff.get("patches")
        if patches is None:
            patches = []
        if not isinstance(patches, list):
            self._fail(f"expected 'patches' to be a list, got {_excerpt(patches)}")
        if len(patches) > patches_left:
            self._fail(
                f"expected at most {self.max_patches} patches in a frame, got {self.max_patches - patches_left + len(patches)}"
            )
        patches_left -= len(patches)
        if field == "markdown_block":
            if not _is_answer_usage(usage):
                return patches_left, ""
            # a first patch may add chunks at once (OmniRoute starts every block with no chunks)
            self._keep(self._markdown, usage, "answer tracks (markdown usages)")
            root: Any = self._markdown.get(usage) or {"chunks": []}
            kind = "text"
        elif field == "workflow_block":
            root = {} if self._workflow is None else self._workflow
            kind = "text"
        elif field == "plan_block":
            self._keep(self._plans, usage, "plans")
            root = self._plans.get(usage, {})
            kind = "steps"
        elif field in ("web_result_block", "sources_mode_block"):
            root = self._web.get(field, {})
            kind = "web"
        else:
            for patch in patches:
                self._parse_patch(patch)
            return patches_left, ""
        for patch in patches:
            root, tokens = self._apply(root, patch, field)
            if field == "workflow_block" and (
                len(tokens) <= 5 or "queries_payload" in tokens or "sources_payload" in tokens
            ):
                kind = "steps"  # the structure or the search steps changed
                self._stale_workflow = True
                if len(tokens) <= 5:
                    self._payloads = None
        if field == "markdown_block":
            if not isinstance(root, dict):
                self._fail(f"expected a patched markdown_block to be a JSON object, got {_excerpt(root)}")
            self._markdown[usage] = root
        elif field == "workflow_block":
            self._workflow = root
        elif field == "plan_block":
            self._plans[usage] = root
            self._stale_plans.add(usage)
        else:
            self._web[field] = root
        return patches_left, kind

    def _parse_patch(self, patch: object) -> tuple[str, list[str], Any]:
        if not isinstance(patch, dict):
            self._fail(f"expected each patch to be a JSON object, got {_excerpt(patch)}")
        op = patch.get("op")
        if op not in _OPS:
            self._fail(f"expected a patch 'op' of add, replace or remove, got {_excerpt(op)}")
        path = patch.get("path", "")
        if not isinstance(path, str):
            self._fail(f"expected a patch 'path' to be a string, got {_excerpt(path)}")
        if path and path[0] != "/":
            self._fail(f"expected a patch 'path' that is empty or starts with '/', got {_excerpt(path)}")
        if path.count("/") > MAX_POINTER:
            self._fail(f"expected a patch 'path' of at most {MAX_POINTER} tokens, got {path.count('/')}")
        tokens = [token.replace("~1", "/").replace("~0", "~") for token in path.split("/")[1:]]
        if op != "remove" and "value" not in patch:
            self._fail(f"expected a 'value' in an {op} patch at {path!r}, got none")
        return op, tokens, patch.get("value")

    def _apply(self, root: Any, patch: object, field: str) -> tuple[Any, list[str]]:
        """Apply one RFC 6902 patch (add, replace, remove) to ``root``; return the new root and the path."""
        op, tokens, value = self._parse_patch(patch)
        if not tokens:
            return ({} if op == "remove" else value), tokens
        target = root
        for depth, token in enumerate(tokens[:-1]):
            target = self._step(target, token, tokens[: depth + 1], field)
        key = tokens[-1]
        where = "/" + "/".join(tokens)
        if isinstance(target, dict):
            if op == "add":
                if key not in target and len(target) >= self.max_chunks:
                    self._fail(
                        f"expected at most {self.max_chunks} members in an object, got {len(target) + 1} at {where!r}"
                    )
                target[key] = value
            elif key not in target:
                self._fail(f"expected the {op} patch's path {where!r} in the {field}, got no member {key!r}")
            elif op == "replace":
                target[key] = value
            else:
                del target[key]
        elif isinstance(target, list):
            size = len(target)
            if key == "-" and op == "add":
                index = size
            elif _INDEX.fullmatch(key):
                index = int(key)
            else:
                self._fail(f"expected an array index in the patch path {where!r} of the {field}, got {key!r}")
            if index > size or (op != "add" and index == size):
                self._fail(
                    f"expected the {op} patch's index in {where!r} of the {field} to be at most "
                    f"{size if op == 'add' else size - 1}, got {index}"
                )
            if op == "add":
                if size >= self.max_chunks:
                    self._fail(f"expected at most {self.max_chunks} members in an array, got {size + 1} at {where!r}")
                if index < size:
                    self._touch(target, index)
                target.insert(index, value)
            else:
                self._touch(target, index)
                if op == "replace":
                    target[index] = value
                else:
                    del target[index]
        else:
            self._fail(f"expected an object or array at the parent of {where!r} in the {field}, got {_excerpt(target)}")
        return root, tokens

    def _step(self, target: Any, token: str, tokens: list[str], field: str) -> Any:
        where = "/" + "/".join(tokens)
        if isinstance(target, dict):
            if token not in target:
                self._fail(f"expected the patch path {where!r} in the {field}, got no member {token!r}")
            return target[token]
        if isinstance(target, list):
            if not _INDEX.fullmatch(token) or int(token) >= len(target):
                self._fail(
                    f"expected an index below {len(target)} at {where!r} in the {field}, got {token!r}"
                )
            return target[int(token)]
        self._fail(f"expected an object or array at {where!r} in the {field}, got {_excerpt(target)}")

    # -- search steps, citations ----------------------------------------------------------------------

    def _list(self, value: object, what: str, limit: int | None = None) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            self._fail(f"expected {what} to be a list, got {_excerpt(value)}")
        if limit is not None and len(value) > limit:
            self._fail(f"expected at most {limit} {what}, got {len(value)}")
        return value

    def _dict(self, value: object, what: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self._fail(f"expected {what} to be a JSON object, got {_excerpt(value)}")
        return value

    def _searched(self, queries: object, events: list[Event]) -> None:
        new: list[str] = []
        for query in self._list(queries, "queries"):
            if isinstance(query, dict):
                query = query.get("query")
            if not isinstance(query, str):
                self._fail(f"expected a query to be a string or {{'query': str}}, got {_excerpt(query)}")
            if query and query not in self._queries:
                self._queries.add(query)
                new.append(query)
        if new:
            events.append(SearchQueries(queries=tuple(new)))

    def _read(self, sources: object, events: list[Event]) -> None:
        new: list[dict[str, str]] = []
        for source in self._list(sources, "sources"):
            entry = self._source(source)
            if entry["url"] and entry["url"] not in self._sources:
                self._sources.add(entry["url"])
                new.append(entry)
        if new:
            events.append(SourcesRead(sources=tuple(new)))

    def _source(self, source: object) -> dict[str, str]:
        if isinstance(source, str):
            return {"url": source, "title": ""}
        if not isinstance(source, dict):
            self._fail(f"expected a source to be a URL or a JSON object, got {_excerpt(source)}")
        url = source.get("url")
        title = source.get("name", source.get("title"))
        if url is None:
            url = ""
        if title is None:
            title = ""
        if not isinstance(url, str) or not isinstance(title, str):
            self._fail(f"expected a source's 'url' and 'name' to be strings, got {_excerpt(source)}")
        return {"url": url, "title": title}

    def _cite(self, results: list[Any], events: list[Event]) -> None:
        cited = tuple(self._source(result) for result in results)
        if cited != self._citations:
            self._citations = cited
            events.append(Citations(citations=cited))

    def _block_steps(self, events: list[Event]) -> None:
        """Report the new search steps of the plans and the workflow changed in this frame."""
        for usage in [usage for usage in self._plans if usage in self._stale_plans]:
            plan = self._plans[usage]
            plan = self._dict(plan, "a plan_block")
            for step in self._list(plan.get("steps"), "plan steps", self.max_steps):
                step = self._dict(step, "a plan step")
                search = self._dict(step.get("search_web_content"), "'search_web_content'")
                self._searched(search.get("queries"), events)
                read = self._dict(step.get("read_results_content"), "'read_results_content'")
                self._read(read.get("urls"), events)
        if self._stale_workflow and self._workflow is not None:
            for payload in self._items():
                if "queries_payload" in payload:
                    self._searched(self._dict(payload["queries_payload"], "'queries_payload'").get("queries"), events)
                if "sources_payload" in payload:
                    self._read(self._dict(payload["sources_payload"], "'sources_payload'").get("sources"), events)

    def _items(self) -> list[dict[str, Any]]:
        """The payloads of the workflow's items, in order.

        Kept until a patch changes the workflow's structure (a path of at most five
        tokens: ``/steps/<n>/items/<m>/payload``), so a frame that only adds a
        chunk does not walk the whole workflow again.
        """
        if self._payloads is not None:
            return self._payloads
        found: list[dict[str, Any]] = []
        workflow = self._dict(self._workflow, "the workflow_block")
        for step in self._list(workflow.get("steps"), "workflow steps", self.max_steps):
            step = self._dict(step, "a workflow step")
            items = self._list(step.get("items"), "items in a workflow step")
            if len(found) + len(items) > self.max_steps:
                self._fail(f"expected at most {self.max_steps} items in the workflow, got {len(found) + len(items)}")
            for item in items:
                item = self._dict(item, "a workflow item")
                found.append(self._dict(item.get("payload"), "an item's 'payload'"))
        self._payloads = found
        return found

    # -- the steps shape (``text``) -------------------------------------------------------------------

    def _json(self, text: str, what: str) -> Any:
        check_depth(text, what)
        try:
            return json.loads(text)
        except (ValueError, RecursionError) as exc:
            self._fail(f"expected {what} to be JSON, got {_excerpt(text)} ({exc})")

    def _steps_text(self, value: object, events: list[Event]) -> list[Any] | None:
        """Read the ``text`` of a frame: steps, an answer object or plain text; return its web results."""
        if isinstance(value, str):
            stripped = value.lstrip()
            if stripped[:1] not in ("[", "{"):
                self._set_legacy(value)  # plain answer text
                return None
            value = self._json(value, "the frame's 'text'")
        if isinstance(value, dict):
            return self._answer_object(value)
        if not isinstance(value, list):
            self._fail(f"expected 'text' to hold a list of steps or an answer object, got {_excerpt(value)}")
        if len(value) > self.max_steps:
            self._fail(f"expected at most {self.max_steps} steps in 'text', got {len(value)}")
        citations: list[Any] | None = None
        for step in value:
            step = self._dict(step, "a step in 'text'")
            kind = step.get("step_type", step.get("stepType"))
            content = step.get("content")
            if kind == "FINAL":
                if isinstance(content, str):
                    self._set_legacy(content)
                    found = None
                else:
                    content = self._dict(content, "the FINAL step's content")
                    answer = content.get("answer")
                    inner = self._inner(answer) if isinstance(answer, str) else answer
                    found = self._answer_object(inner if isinstance(inner, dict) else content)
                if found is not None:
                    citations = found
                continue
            content = self._dict(content, f"the content of a {kind} step")
            if kind == "SEARCH_WEB":
                self._searched(content.get("queries"), events)
            elif kind == "SEARCH_RESULTS":
                results = content.get("web_results")
                if results is not None:
                    citations = self._list(results, "'web_results'")
            elif kind == "READ_RESULTS":
                self._read(content.get("urls", content.get("web_results")), events)
        return citations

    def _inner(self, answer: str) -> Any:
        """The FINAL step's answer string decoded, when it is a JSON object; else the string itself.

        Clients disagree on an answer that starts with ``{`` but is not JSON: OmniRoute
        takes it as plain text, which is what it then is.
        """
        if answer.lstrip()[:1] != "{" or too_deep(answer):
            return answer
        try:
            return json.loads(answer)
        except (ValueError, RecursionError):
            return answer

    def _answer_object(self, found: dict[str, Any]) -> list[Any] | None:
        """Take ``{answer, chunks, web_results, structured_answer}``; return its web results (None if none)."""
        answer = found.get("answer")
        if isinstance(answer, str) and answer:
            self._set_legacy(answer)
        elif answer is not None and not isinstance(answer, str):
            self._fail(f"expected 'answer' to be a string, got {_excerpt(answer)}")
        else:
            chunks = self._list(found.get("chunks"), "'chunks'", self.max_chunks)
            if chunks:
                # the whole list again (OmniRoute joins it) or only the new chunks (jacob-bd adds them up)
                self._legacy = None
                self._absorb(self._legacy_chunks, chunks)
            else:
                parts = self._list(found.get("structured_answer"), "'structured_answer'", self.max_chunks)
                texts = [part.get("text") for part in parts if isinstance(part, dict)]
                joined = "".join(text for text in texts if isinstance(text, str))
                if joined:
                    self._set_legacy(joined)
        results = found.get("web_results")
        return None if results is None else self._list(results, "'web_results'")

    def _set_legacy(self, text: str) -> None:
        if len(text) > self.max_text:
            self._fail(f"expected an answer of at most {self.max_text} characters, got {len(text)}")
        self._legacy = text

    # -- the texts ---------------------------------------------------------------------------------------

    def _join(self, chunks: list[Any], what: str) -> str:
        for chunk in chunks:
            if not isinstance(chunk, str) and chunk is not None:
                self._fail(f"expected the {what}'s chunks to be strings, got {_excerpt(chunk)}")
        return "".join(chunk for chunk in chunks if chunk)

    def _sources_now(self) -> tuple[tuple[Any, Any], list[tuple[Any, Any]]]:
        """``(chunks, whole)`` of the answer, and of each piece of reasoning, as they now stand."""
        answer: tuple[Any, Any] = (None, None)
        reasoning: list[tuple[Any, Any]] = []
        if self._workflow is not None:
            for payload in self._items():
                text = payload.get("text_payload")
                if text is None:
                    continue
                text = self._dict(text, "a 'text_payload'")
                variant = text.get("variant")
                pair = (text.get("chunks"), text.get("text"))
                if variant == "thinking":
                    reasoning.append(pair)
                elif variant in (None, "", "answer") and answer == (None, None):
                    answer = pair
        if answer == (None, None) and self._markdown:
            # one track: ask_text when it has text, else the first that has, else ask_text, else the first
            tracks = [(doc.get("chunks"), doc.get("answer")) for doc in self._markdown.values()]
            usages = list(self._markdown)
            ranked = sorted(range(len(usages)), key=lambda n: (not _has_text(tracks[n]), usages[n] != "ask_text", n))
            answer = tracks[ranked[0]]
        if not _has_text(answer) and (self._legacy or self._legacy_chunks):
            answer = (None, self._legacy) if self._legacy else (self._legacy_chunks, None)
        for chunks, whole in (answer, *reasoning):
            if chunks is not None and not isinstance(chunks, list):
                self._fail(f"expected 'chunks' to be a list, got {_excerpt(chunks)}")
            if whole is not None and not isinstance(whole, str):
                self._fail(f"expected the whole text to be a string, got {_excerpt(whole)}")
            if chunks is not None and len(chunks) > self.max_chunks:
                self._fail(f"expected at most {self.max_chunks} chunks in a text, got {len(chunks)}")
        return answer, reasoning

    def _change(self, text: _Text, chunks: list[Any] | None, whole: str | None, what: str) -> _Change | None:
        if chunks and chunks is text.ref and self._touched.get(id(chunks), text.count) >= text.count:
            delta = self._join(chunks[text.count :], what)
            self._limit(text.length + len(delta), what)
            return _Change(delta=delta, ref=chunks, count=len(chunks)) if delta or len(chunks) != text.count else None
        if chunks is not None and (chunks or not whole):
            if chunks is text.ref:
                self._budget -= text.length
                if self._budget < 0:
                    self._fail(
                        f"expected the service to rewrite at most {self.max_rewrite} characters of text already "
                        f"sent, in all, got more"
                    )
            new = self._join(chunks, what)
            self._limit(len(new), what)
            old = text.text()
            if new.startswith(old):
                return _Change(delta=new[len(old) :], ref=chunks, count=len(chunks))
            return _Change(revised=new, ref=chunks, count=len(chunks))
        if whole and whole is not text.seen:
            text.seen = whole
            self._limit(len(whole), what)
            old = text.text()
            if whole.startswith(old):
                return _Change(delta=whole[len(old) :], ref=None) if len(whole) > len(old) else None
            if old.startswith(whole):
                return None  # the whole text lags behind the chunks streamed
            return _Change(revised=whole, ref=None)
        return None

    def _thinking(self, items: list[tuple[Any, Any]]) -> _Change | None:
        """How the reasoning changes: its pieces (the thinking items) each followed as a text of its own,
        joined with a blank line between them.  Growth at or after the last piece with text is a delta;
        any other change rewrites the reasoning."""
        pieces = self._pieces
        while len(pieces) < len(items):
            pieces.append(_Text())
        changes = [self._change(pieces[n], chunks, whole, "reasoning") for n, (chunks, whole) in enumerate(items)]
        last = max((n for n, piece in enumerate(pieces) if piece.length), default=-1)
        simple = len(pieces) == len(items) and all(
            change is None or (change.revised is None and n >= last) for n, change in enumerate(changes)
        )
        added: list[str] = []
        seen_text = last >= 0
        for n, change in enumerate(changes):
            if change is None:
                continue
            if simple and change.delta:
                if seen_text and not pieces[n].length:
                    added.append("\n\n")
                added.append(change.delta)
                seen_text = True
            _apply(pieces[n], change)
        del pieces[len(items) :]
        if simple:
            delta = "".join(added)
            self._limit(self._reasoning.length + len(delta), "reasoning")
            return _Change(delta=delta) if delta else None
        whole = "\n\n".join(piece.text() for piece in pieces if piece.length)
        self._limit(len(whole), "reasoning")
        old = self._reasoning.text()
        return _Change(delta=whole[len(old) :]) if whole.startswith(old) else _Change(revised=whole)

    def _final_text(self, text: _Text, chunks: list[Any] | None, what: str) -> str:
        """The whole text at the end, from its chunks (an empty list is an empty text)."""
        return text.text() if chunks is None else self._join(chunks, what)

    def _limit(self, size: int, what: str) -> None:
        if size > self.max_text:
            self._fail(f"expected the {what} to be at most {self.max_text} characters, got {size}")

    def _texts(self, events: list[Event]) -> None:
        (chunks, whole), thinking = self._sources_now()
        self._emit(events, self._change(self._answer, chunks, whole, "answer"), self._thinking(thinking))

    def _emit(self, events: list[Event], answer: _Change | None, reasoning: _Change | None) -> None:
        if (answer is not None and answer.revised is not None) or (
            reasoning is not None and reasoning.revised is not None
        ):
            events.append(
                AnswerRevised(
                    text=answer.revised if answer is not None and answer.revised is not None else self.partial_text,
                    reasoning=reasoning.revised
                    if reasoning is not None and reasoning.revised is not None
                    else self.partial_reasoning,
                )
            )
        for change, text, kind in ((reasoning, self._reasoning, ReasoningDelta), (answer, self._answer, TextDelta)):
            if change is None:
                continue
            if change.revised is None and change.delta:
                events.append(kind(text=change.delta))
            _apply(text, change)

    def _finish(self) -> list[Event]:
        events: list[Event] = []
        (chunks, whole), thinking = self._sources_now()
        final = whole or self._final_text(self._answer, chunks, "answer")
        if thinking or self._pieces:
            parts = [
                rwhole or self._final_text(self._pieces[n] if n < len(self._pieces) else _Text(), rchunks, "reasoning")
                for n, (rchunks, rwhole) in enumerate(thinking)
            ]
            rfinal = "\n\n".join(part for part in parts if part)
        else:
            rfinal = self.partial_reasoning
        self._limit(len(final), "answer")
        self._limit(len(rfinal), "reasoning")
        answer = reasoning = None
        old, rold = self.partial_text, self.partial_reasoning
        if final != old:
            answer = _Change(delta=final[len(old) :]) if final.startswith(old) else _Change(revised=final)
        if rfinal != rold:
            reasoning = _Change(delta=rfinal[len(rold) :]) if rfinal.startswith(rold) else _Change(revised=rfinal)
        self._emit(events, answer, reasoning)
        self._finished = True
        events.append(
            AnswerFinished(model=self._model, text=final, reasoning=rfinal, citations=self._citations)
        )
        return events


def _apply(text: _Text, change: _Change) -> None:
    """Take a change into what was reported of a text."""
    if change.revised is not None:
        text.reset(change.revised)
    else:
        text.append(change.delta)
    if change.ref is not _UNSET:
        text.ref = change.ref
        text.count = change.count


def _has_text(pair: tuple[Any, Any]) -> bool:
    chunks, whole = pair
    return bool(chunks) or bool(whole)
