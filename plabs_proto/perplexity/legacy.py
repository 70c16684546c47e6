"""The legacy steps shape of an answer frame: its ``text``, a list of steps, an answer object or plain text.

``text`` is a JSON string (or the decoded value) holding a list of steps
``{step_type, content}``; the ``FINAL`` step's ``content.answer`` is itself a JSON
string ``{answer, chunks, web_results}`` (or an object, or plain text).  An older
form put that object (or plain answer text) in ``text`` directly.
"""

from __future__ import annotations

import json
from typing import Any

from plabs_proto.events import Event
from plabs_proto.jsondepth import too_deep
from plabs_proto.perplexity.search import Search
from plabs_proto.perplexity.shape import Limits, as_dict, as_list, excerpt, fail, load
from plabs_proto.perplexity.text import Pair, absorb

__all__ = ["Legacy"]


class Legacy:
    """The answer the steps shape sent so far: whole (``text``), or as chunks."""

    __slots__ = ("_chunks", "_limits", "_text")

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._text: str | None = None  # the answer, whole
        self._chunks: list[Any] = []  # its chunks, when it sends chunks without the whole answer

    def answer(self) -> Pair | None:
        """``(chunks, whole)`` of the answer, or None when there is none."""
        if self._text:
            return None, self._text
        return (self._chunks, None) if self._chunks else None

    def read(self, value: object, search: Search, events: list[Event]) -> list[Any] | None:
        """Read the ``text`` of a frame (its search steps reported to ``search``); return its web results."""
        if isinstance(value, str):
            stripped = value.lstrip()
            if stripped[:1] not in ("[", "{"):
                self._set(value)  # plain answer text
                return None
            value = load(value, "the frame's 'text'")
        if isinstance(value, dict):
            return self._answer_object(value)
        if not isinstance(value, list):
            fail(f"expected 'text' to hold a list of steps or an answer object, got {excerpt(value)}")
        if len(value) > self._limits.steps:
            fail(f"expected at most {self._limits.steps} steps in 'text', got {len(value)}")
        citations: list[Any] | None = None
        for step in value:
            step = as_dict(step, "a step in 'text'")
            kind = step.get("step_type", step.get("stepType"))
            content = step.get("content")
            if kind == "FINAL":
                if isinstance(content, str):
                    self._set(content)
                    found = None
                else:
                    content = as_dict(content, "the FINAL step's content")
                    answer = content.get("answer")
                    inner = _inner(answer) if isinstance(answer, str) else answer
                    found = self._answer_object(inner if isinstance(inner, dict) else content)
                if found is not None:
                    citations = found
                continue
            content = as_dict(content, f"the content of a {kind} step")
            if kind == "SEARCH_WEB":
                search.searched(content.get("queries"), events)
            elif kind == "SEARCH_RESULTS":
                results = content.get("web_results")
                if results is not None:
                    citations = as_list(results, "'web_results'")
            elif kind == "READ_RESULTS":
                search.read(content.get("urls", content.get("web_results")), events)
        return citations

    def _answer_object(self, found: dict[str, Any]) -> list[Any] | None:
        """Take ``{answer, chunks, web_results, structured_answer}``; return its web results (None if none)."""
        answer = found.get("answer")
        if isinstance(answer, str) and answer:
            self._set(answer)
        elif answer is not None and not isinstance(answer, str):
            fail(f"expected 'answer' to be a string, got {excerpt(answer)}")
        else:
            chunks = as_list(found.get("chunks"), "'chunks'", self._limits.chunks)
            if chunks:
                # the whole list again (OmniRoute joins it) or only the new chunks (jacob-bd adds them up)
                self._text = None
                absorb(self._chunks, chunks, self._limits.chunks)
            else:
                parts = as_list(found.get("structured_answer"), "'structured_answer'", self._limits.chunks)
                texts = [part.get("text") for part in parts if isinstance(part, dict)]
                joined = "".join(text for text in texts if isinstance(text, str))
                if joined:
                    self._set(joined)
        results = found.get("web_results")
        return None if results is None else as_list(results, "'web_results'")

    def _set(self, text: str) -> None:
        if len(text) > self._limits.text:
            fail(f"expected an answer of at most {self._limits.text} characters, got {len(text)}")
        self._text = text


def _inner(answer: str) -> Any:
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
