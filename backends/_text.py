"""What a text-only API (every backend's ``ask``) yields of one query, and the promise it keeps."""

from __future__ import annotations

from plabs_proto.errors import AnswerRewrittenError
from plabs_proto.events import AnswerFinished, AnswerRevised, Event, TextDelta

__all__ = ["AnswerText"]


class AnswerText:
    """What a text-only API (``ask``) yields of one query: the answer text, and only it.

    Feed it the query's ``TextDelta`` and ``AnswerRevised`` events with
    :meth:`take` and yield what it returns; at ``AnswerFinished`` yield what
    :meth:`finish` returns.  The promise: the text yielded joins to
    ``AnswerFinished.text``, or :meth:`finish` raises
    :class:`~plabs_proto.errors.AnswerRewrittenError`.

    A TextDelta is yielded as it comes.  An ``AnswerRevised`` whose text begins
    with what was yielded (the decoder repeats the text unchanged when only the
    reasoning was rewritten, as for ``r1-1776``) yields the rest of it.  One
    that rewrites yielded text cannot be followed: nothing more is yielded
    until a later revision or the final answer begins with the yielded text
    again, and :meth:`finish` raises when the final answer does not.
    """

    __slots__ = ("_following", "_parts")

    def __init__(self) -> None:
        self._parts: list[str] = []  # what was yielded
        self._following = True  # False after a revision that rewrote yielded text

    @property
    def yielded(self) -> str:
        """The text yielded so far."""
        if len(self._parts) > 1:
            self._parts[:] = ["".join(self._parts)]
        return self._parts[0] if self._parts else ""

    def take(self, event: Event) -> str:
        """The text to yield for ``event`` (``""``: nothing)."""
        if isinstance(event, TextDelta):
            if self._following and event.text:
                self._parts.append(event.text)
                return event.text
            return ""
        return self._catch_up(event.text) if isinstance(event, AnswerRevised) else ""

    def finish(self, finished: AnswerFinished) -> str:
        """The rest of the final answer to yield (usually ``""``), or raise AnswerRewrittenError."""
        rest = self._catch_up(finished.text)
        if self._following:
            return rest
        yielded, final = self.yielded, finished.text
        pairs = enumerate(zip(yielded, final, strict=False))
        same = next((i for i, (a, b) in pairs if a != b), min(len(yielded), len(final)))
        raise AnswerRewrittenError(
            f"expected the final answer to begin with the {len(yielded)} characters already yielded, "
            f"but the server rewrote the answer after they were yielded: its final text "
            f"({len(final)} characters) differs from them at character {same}; "
            "the final answer is in the error's text",
            text=final,
            reasoning=finished.reasoning,
            yielded=yielded,
        )

    def _catch_up(self, text: str) -> str:
        yielded = self.yielded
        if not text.startswith(yielded):
            self._following = False
            return ""
        self._following = True
        rest = text[len(yielded) :]
        if rest:
            self._parts.append(rest)
        return rest
