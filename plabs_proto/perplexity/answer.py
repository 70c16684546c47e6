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
is walked again only when its structure changes.  The common frame of the blocks
shape (one chunk added to ``ask_text`` by a ``diff_block``, the second track's whole
``markdown_block`` starting just after its chunks) takes a short path that reads only
those members and leaves everything as the general path would, errors included.
Every count is bounded (the ``max_*`` arguments): blocks per frame, answer tracks
and plans kept, steps, items, patches per frame, chunks per text, characters of
answer and of reasoning.

The decoder calls down into its parts: :mod:`~plabs_proto.perplexity.blocks` (the
blocks and workflow shapes, patched by :mod:`~plabs_proto.perplexity.patch`),
:mod:`~plabs_proto.perplexity.legacy` (the steps shape),
:mod:`~plabs_proto.perplexity.search` (search steps and citations) and
:mod:`~plabs_proto.perplexity.text` (the texts reported).
"""

from __future__ import annotations

import json
from typing import Any

from plabs_proto.errors import (
    AnswerFailedError,
    AnswerRateLimitedError,
    LabsError,
    LocalProtocolError,
)
from plabs_proto.events import AnswerFinished, Event, ThreadIdentity
from plabs_proto.perplexity.blocks import Blocks
from plabs_proto.perplexity.frames import load_frame as load_frame
from plabs_proto.perplexity.legacy import Legacy
from plabs_proto.perplexity.patch import MAX_POINTER as MAX_POINTER
from plabs_proto.perplexity.search import Search
from plabs_proto.perplexity.shape import Limits, excerpt, fail
from plabs_proto.perplexity.text import Texts
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
        "_blocks",
        "_broken",
        "_finished",
        "_legacy",
        "_limits",
        "_model",
        "_plain",
        "_search",
        "_status",
        "_texts",
        "_thread",
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
            raise LocalProtocolError(f"expected the model as a str, got {excerpt(model)}")
        self._model = model
        self._limits = Limits(
            text=max_text,
            blocks=max_blocks,
            steps=max_steps,
            patches=max_patches,
            chunks=max_chunks,
            rewrite=16 * max_text if max_rewrite is None else max_rewrite,
        )
        self._texts = Texts(self._limits)
        self._blocks = Blocks(self._limits)
        self._legacy = Legacy(self._limits)
        self._search = Search()
        self._thread: tuple[str, str | None, str | None] | None = None
        self._status: object = None  # the last status seen that is a string neither failed nor COMPLETED
        self._finished = False
        self._broken = False
        self._plain = False  # the last frame was taken whole, with no legacy 'text' nor 'web_results' member

    # -- the limits (kept where the decoder's parts read them) ------------------------------------------

    @property
    def max_text(self) -> int:
        """Longest answer (and longest reasoning), in characters."""
        return self._limits.text

    @max_text.setter
    def max_text(self, value: int) -> None:
        self._limits.text = value

    @property
    def max_blocks(self) -> int:
        """Most blocks in one frame, and most answer tracks and plans kept."""
        return self._limits.blocks

    @max_blocks.setter
    def max_blocks(self, value: int) -> None:
        self._limits.blocks = value

    @property
    def max_steps(self) -> int:
        """Most steps in a steps list, a plan or a workflow, and most items in a whole workflow."""
        return self._limits.steps

    @max_steps.setter
    def max_steps(self, value: int) -> None:
        self._limits.steps = value

    @property
    def max_patches(self) -> int:
        """Most patches in one frame."""
        return self._limits.patches

    @max_patches.setter
    def max_patches(self, value: int) -> None:
        self._limits.patches = value

    @property
    def max_chunks(self) -> int:
        """Most chunks in one text (and most members a patch may add to one list)."""
        return self._limits.chunks

    @max_chunks.setter
    def max_chunks(self, value: int) -> None:
        self._limits.chunks = value

    @property
    def max_rewrite(self) -> int:
        """Most characters joined again, in all, because a patch changed text already reported."""
        return self._limits.rewrite

    @max_rewrite.setter
    def max_rewrite(self, value: int) -> None:
        self._limits.rewrite = value

    # -- what was decoded so far --------------------------------------------------------------------

    @property
    def model(self) -> str:
        """The model the service named (``display_model``), or the one given."""
        return self._model

    @property
    def partial_text(self) -> str:
        """The answer text reported so far (the whole answer once finished)."""
        return self._texts.answer.text()

    @property
    def partial_reasoning(self) -> str:
        """The reasoning text reported so far."""
        return self._texts.reasoning.text()

    @property
    def citations(self) -> tuple[Any, ...]:
        """The citations last reported: dicts ``{"url", "title"}``."""
        return self._search.citations

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

    def feed(self, frame: object, changed: str | None = None) -> list[Event]:
        """Take one ``message`` frame (its decoded JSON); return the events it brings.

        ``changed``: :attr:`FrameLoader.changed <plabs_proto.perplexity.frames.FrameLoader.changed>`
        for this frame, when every frame loaded is fed here in order: the member in which it differs
        from the frame fed before it.  When that is ``blocks``, only the blocks are read again (the
        other members were checked in the frame before, and would check the same).
        """
        if self._broken:
            raise LocalProtocolError(f"expected no feed() after an error, got {excerpt(frame)}")
        if self._finished:
            return []
        try:
            if changed == "blocks" and self._plain and type(frame) is dict:
                # (the members but the blocks were checked in the last frame, which was taken whole:
                # checking them again would change nothing, so only the blocks are read)
                events: list[Event] = []
                blocks = self._blocks
                citations = blocks.take(frame.get("blocks"))
                grown = blocks.grown
                if grown is None or citations is not None or not self._texts.grew(events, grown):
                    self._follow(citations, events)
                return events
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

    # -- one frame ----------------------------------------------------------------------------------

    def _frame(self, frame: object) -> list[Event]:
        if type(frame) is not dict and not isinstance(frame, dict):
            fail(f"expected a JSON object as the frame, got {excerpt(frame)}")
        status = frame.get("status")
        if status is not self._status or "error_code" in frame or "error_message" in frame:
            self._check_failure(frame)  # (a status seen before, the same object, is known not to be "failed")
        events: list[Event] = []
        old = self._thread
        if (
            old is None
            or frame.get("backend_uuid") != old[0]
            or frame.get("read_write_token") != old[1]
            or frame.get("thread_url_slug") != old[2]
        ):
            self._identity(frame, events)
        model = frame.get("display_model")
        if model is not self._model and isinstance(model, str) and model:
            self._model = model
        citations = self._blocks.take(frame.get("blocks"))
        plain = False
        if "text" in frame or "web_results" in frame:
            legacy = frame.get("text")
            if legacy is not None and legacy != "":
                legacy_citations = self._legacy.read(legacy, self._search, events)
                if legacy_citations is not None:
                    citations = legacy_citations
            top = frame.get("web_results")
            if isinstance(top, list):
                citations = top
        else:
            plain = True
        grown = self._blocks.grown
        if grown is None or citations is not None or not self._texts.grew(events, grown):
            # (the common frame, only chunks added to ask_text, takes the shorter way of Texts.grew)
            self._follow(citations, events)
        self._plain = plain
        if status is not self._status and isinstance(status, str):
            if status.upper() == "COMPLETED":
                events.extend(self._finish())
            else:
                self._status = status  # (FrameLoader hands the same object again while the status stays)
        return events

    def _follow(self, citations: list[Any] | None, events: list[Event]) -> None:
        """After the blocks (and the legacy members) of a frame: the search and the texts followed."""
        blocks = self._blocks
        if blocks.stale:
            blocks.steps(self._search, events)
        if citations is not None:
            self._search.cite(citations, events)
        answer, thinking = blocks.texts(self._legacy)
        self._texts.update(events, answer, thinking, blocks.touched)

    def _check_failure(self, frame: dict[str, Any]) -> None:
        status = frame.get("status")
        code = frame.get("error_code")
        if code is None and "error_message" not in frame and type(status) is str and status.lower() != "failed":
            return  # (the common frame: no failure reported)
        if status is not None and not isinstance(status, str):
            fail(f"expected 'status' to be a string, got {excerpt(status)}")
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
        old = self._thread
        if (
            old is not None
            and frame.get("backend_uuid") == old[0]
            and frame.get("read_write_token") == old[1]
            and frame.get("thread_url_slug") == old[2]
        ):
            return  # the thread named again, as every frame of an answer does
        values: list[str | None] = []
        for key in ("backend_uuid", "read_write_token", "thread_url_slug"):
            value = frame.get(key)
            if value is not None and not isinstance(value, str):
                fail(f"expected {key!r} to be a string, got {excerpt(value)}")
            values.append(value or None)
        backend_uuid, token, slug = values
        if backend_uuid is None:
            return
        old = self._thread
        thread = (backend_uuid, token or (old[1] if old else None), slug or (old[2] if old else None))
        if thread != old:
            self._thread = thread
            events.append(ThreadIdentity(backend_uuid=thread[0], read_write_token=thread[1], thread_url_slug=thread[2]))

    def _finish(self) -> list[Event]:
        events: list[Event] = []
        answer, thinking = self._blocks.texts(self._legacy)
        text, reasoning = self._texts.finish(events, answer, thinking)
        self._finished = True
        events.append(
            AnswerFinished(model=self._model, text=text, reasoning=reasoning, citations=self._search.citations)
        )
        return events
