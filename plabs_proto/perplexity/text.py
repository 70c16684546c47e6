"""The answer's texts (the answer and the reasoning): what was reported of each, and how a frame changes them.

A text is sent as a list of chunks (the chunks of a block, which patches extend),
as a whole string, or both.  :class:`Texts` compares each frame's texts with what
was reported and adds the events (:class:`~plabs_proto.events.TextDelta`,
:class:`~plabs_proto.events.ReasoningDelta`, :class:`~plabs_proto.events.AnswerRevised`)
that bring the reader up to date.  Only new chunks are joined while a text's chunk
list only grows; a list changed before the chunks reported (``touched``) is joined
again, in all at most ``max_rewrite`` characters.
"""

from __future__ import annotations

from typing import Any

from plabs_proto.events import AnswerRevised, Event, ReasoningDelta, TextDelta
from plabs_proto.perplexity.shape import Limits, excerpt, fail

__all__ = ["Pair", "Text", "Texts", "absorb", "grow", "has_text"]

_UNSET: Any = object()

Pair = tuple[Any, Any]
"""``(chunks, whole)`` of a text as a frame left it (each may be None)."""


class Text:
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


class Texts:
    """The answer and the reasoning reported so far; :meth:`update` and :meth:`finish` add what a frame changed."""

    __slots__ = ("_limits", "_pieces", "_rewritten", "answer", "reasoning")

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._rewritten = 0  # characters of text already sent joined again, in all (at most limits.rewrite)
        self.answer = Text()
        self.reasoning = Text()
        self._pieces: list[Text] = []  # each thinking item's text, followed on its own

    def update(self, events: list[Event], answer: Pair, thinking: list[Pair], touched: dict[int, int]) -> None:
        """Add the events that bring the texts to ``answer`` and ``thinking`` (the pieces of reasoning).

        Each pair is ``(chunks, whole)``: a list (of at most ``max_chunks``) or None, and a string or None.

        ``touched`` says where this frame's patches changed a chunk list (by the list's ``id``).
        """
        chunks, whole = answer
        text = self.answer
        held = text.ref
        if chunks and held is not None and chunks is held and not thinking and not self._pieces:
            # the common frame: the answer's chunk list grew (or stayed), no reasoning; as _change and _emit do it
            count = text.count
            if not touched or touched.get(id(held), count) >= count:
                more = len(held) - count
                delta = held[count] if more == 1 and type(held[count]) is str else self._join(held[count:], "answer")
                self._limit(text.length + len(delta), "answer")
                # (no reasoning to check: with no thinking pieces followed, the reasoning is empty)
                if delta:
                    events.append(TextDelta(text=delta))
                    text.parts.append(delta)
                    text.length += len(delta)
                text.count = count + more
                return
        self._emit(events, self._change(text, chunks, whole, "answer", touched), self._thinking(thinking, touched))

    def grew(self, events: list[Event], chunks: list[Any]) -> bool:
        """Add the events of :meth:`update` for an answer whose chunk list, followed, only grew (no reasoning,
        nothing touched); say whether it was one (else nothing changed: call :meth:`update`)."""
        text = self.answer
        if chunks is not text.ref or self._pieces:
            return False
        count = text.count
        more = len(chunks) - count
        delta = chunks[count] if more == 1 and type(chunks[count]) is str else self._join(chunks[count:], "answer")
        length = text.length + len(delta)
        if length > self._limits.text:
            self._limit(length, "answer")
        if delta:
            events.append(TextDelta(text=delta))
            text.parts.append(delta)
            text.length = length
        text.count = count + more
        return True

    def finish(self, events: list[Event], answer: Pair, thinking: list[Pair]) -> tuple[str, str]:
        """Add the events that bring the texts to their last state; return the whole answer and reasoning."""
        chunks, whole = answer
        final = whole or self._final_text(self.answer, chunks, "answer")
        if thinking or self._pieces:
            parts = [
                rwhole or self._final_text(self._pieces[n] if n < len(self._pieces) else Text(), rchunks, "reasoning")
                for n, (rchunks, rwhole) in enumerate(thinking)
            ]
            rfinal = "\n\n".join(part for part in parts if part)
        else:
            rfinal = self.reasoning.text()
        self._limit(len(final), "answer")
        self._limit(len(rfinal), "reasoning")
        change = rchange = None
        old, rold = self.answer.text(), self.reasoning.text()
        if final != old:
            change = _Change(delta=final[len(old) :]) if final.startswith(old) else _Change(revised=final)
        if rfinal != rold:
            rchange = _Change(delta=rfinal[len(rold) :]) if rfinal.startswith(rold) else _Change(revised=rfinal)
        self._emit(events, change, rchange)
        return final, rfinal

    def _join(self, chunks: list[Any], what: str) -> str:
        for chunk in chunks:
            if not isinstance(chunk, str) and chunk is not None:
                fail(f"expected the {what}'s chunks to be strings, got {excerpt(chunk)}")
        return "".join(chunk for chunk in chunks if chunk)

    def _change(
        self, text: Text, chunks: list[Any] | None, whole: str | None, what: str, touched: dict[int, int]
    ) -> _Change | None:
        if chunks and chunks is text.ref and touched.get(id(chunks), text.count) >= text.count:
            delta = self._join(chunks[text.count :], what)
            self._limit(text.length + len(delta), what)
            return _Change(delta=delta, ref=chunks, count=len(chunks)) if delta or len(chunks) != text.count else None
        if chunks is not None and (chunks or not whole):
            if chunks is text.ref:
                self._rewritten += text.length
                if self._rewritten > self._limits.rewrite:
                    fail(
                        f"expected the service to rewrite at most {self._limits.rewrite} characters of text already "
                        f"sent, in all, got {self._rewritten}"
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

    def _thinking(self, items: list[Pair], touched: dict[int, int]) -> _Change | None:
        """How the reasoning changes: its pieces (the thinking items) each followed as a text of its own,
        joined with a blank line between them.  Growth at or after the last piece with text is a delta;
        any other change rewrites the reasoning."""
        pieces = self._pieces
        while len(pieces) < len(items):
            pieces.append(Text())
        changes = [
            self._change(pieces[n], chunks, whole, "reasoning", touched) for n, (chunks, whole) in enumerate(items)
        ]
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
            self._limit(self.reasoning.length + len(delta), "reasoning")
            return _Change(delta=delta) if delta else None
        whole = "\n\n".join(piece.text() for piece in pieces if piece.length)
        self._limit(len(whole), "reasoning")
        old = self.reasoning.text()
        return _Change(delta=whole[len(old) :]) if whole.startswith(old) else _Change(revised=whole)

    def _final_text(self, text: Text, chunks: list[Any] | None, what: str) -> str:
        """The whole text at the end, from its chunks (an empty list is an empty text)."""
        return text.text() if chunks is None else self._join(chunks, what)

    def _limit(self, size: int, what: str) -> None:
        if size > self._limits.text:
            fail(f"expected the {what} to be at most {self._limits.text} characters, got {size}")

    def _emit(self, events: list[Event], answer: _Change | None, reasoning: _Change | None) -> None:
        if (answer is not None and answer.revised is not None) or (
            reasoning is not None and reasoning.revised is not None
        ):
            events.append(
                AnswerRevised(
                    text=answer.revised if answer is not None and answer.revised is not None else self.answer.text(),
                    reasoning=reasoning.revised
                    if reasoning is not None and reasoning.revised is not None
                    else self.reasoning.text(),
                )
            )
        for change, text, kind in ((reasoning, self.reasoning, ReasoningDelta), (answer, self.answer, TextDelta)):
            if change is None:
                continue
            if change.revised is None and change.delta:
                events.append(kind(text=change.delta))
            _apply(text, change)


def _apply(text: Text, change: _Change) -> None:
    """Take a change into what was reported of a text."""
    if change.revised is not None:
        text.reset(change.revised)
    else:
        text.append(change.delta)
    if change.ref is not _UNSET:
        text.ref = change.ref
        text.count = change.count


def has_text(pair: Pair) -> bool:
    """Whether ``(chunks, whole)`` holds any text."""
    chunks, whole = pair
    return bool(chunks) or bool(whole)


def grow(chunks: list[Any], more: list[Any], limit: int) -> None:
    """Add ``more`` to ``chunks``, which may hold at most ``limit``."""
    if len(chunks) + len(more) > limit:
        fail(f"expected at most {limit} chunks in a text, got {len(chunks) + len(more)}")
    chunks.extend(more)


def absorb(held: list[Any], chunks: list[Any], limit: int) -> None:
    """Add ``chunks`` sent without an offset: chunks that extend the ones held are the whole list
    again (only the new ones are added); others come after them."""
    size = len(held)
    grow(held, chunks[size:] if len(chunks) >= size and chunks[:size] == held else chunks, limit)
