"""Checks of the shapes of an answer frame's JSON values, shared by the parts of the answer decoder.

Each check raises :class:`~plabs_proto.errors.RemoteProtocolError` saying what was
expected and what arrived (an :func:`excerpt` of it).
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

from plabs_proto.errors import RemoteProtocolError, excerpt
from plabs_proto.jsondepth import check_depth

__all__ = ["Limits", "as_dict", "as_list", "excerpt", "fail", "load"]


def fail(message: str) -> NoReturn:
    """Refuse what the service sent."""
    raise RemoteProtocolError(message)


def as_list(value: object, what: str, limit: int | None = None) -> list[Any]:
    """``value`` as a list (None is an empty one) of at most ``limit`` members."""
    if value is None:
        return []
    if not isinstance(value, list):
        fail(f"expected {what} to be a list, got {excerpt(value)}")
    if limit is not None and len(value) > limit:
        fail(f"expected at most {limit} {what}, got {len(value)}")
    return value


def as_dict(value: object, what: str) -> dict[str, Any]:
    """``value`` as a JSON object (None is an empty one)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        fail(f"expected {what} to be a JSON object, got {excerpt(value)}")
    return value


def load(text: str, what: str) -> Any:
    """The JSON value of a string inside a frame, its depth checked first."""
    check_depth(text, what)
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        fail(f"expected {what} to be JSON, got {excerpt(text)} ({exc})")


class Limits:
    """The answer decoder's limits (its ``max_*`` attributes), shared by its parts."""

    __slots__ = ("blocks", "chunks", "patches", "rewrite", "steps", "text")

    def __init__(self, *, text: int, blocks: int, steps: int, patches: int, chunks: int, rewrite: int) -> None:
        self.text = text
        self.blocks = blocks
        self.steps = steps
        self.patches = patches
        self.chunks = chunks
        self.rewrite = rewrite
