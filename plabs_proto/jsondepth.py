"""A bound on how deeply the JSON a peer sends may nest, checked the same way everywhere.

Python's ``json`` decoder recurses once per level of nesting, so a peer that
sends ``[[[[...`` a hundred thousand deep makes it raise ``RecursionError``
(and where exactly that happens depends on how deep the caller's stack already
is).  Every JSON text that comes from a peer is checked with
:func:`check_depth` (or :func:`too_deep`, where a reader gives up quietly and
falls back to a full decoding) before it is decoded: nesting beyond
:data:`MAX_DEPTH` is refused with :class:`~plabs_proto.errors.RemoteProtocolError`.

The check is cheap for ordinary text: when the text holds at most
:data:`MAX_DEPTH` opening brackets in all, it cannot nest deeper, and two
``str.count`` calls tell.  Only otherwise are the brackets outside strings
counted one by one.
"""

from __future__ import annotations

import re

from plabs_proto.errors import RemoteProtocolError

__all__ = ["MAX_DEPTH", "check_depth", "too_deep"]

MAX_DEPTH = 100
"""Deepest nesting of arrays and objects accepted in JSON from a peer (Labs sends 3 or 4 levels)."""

# A JSON string (closed or running to the end of the text) or one bracket.
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{}]', re.DOTALL)


def too_deep(text: str, start: int = 0) -> bool:
    """Whether the JSON at ``text[start:]`` opens more than :data:`MAX_DEPTH` arrays/objects at once."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:  # (what precedes start only adds to the bound)
        return False
    depth = 0
    for match in _TOKEN.finditer(text, start):
        char = text[match.start()]
        if char == "[" or char == "{":
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif char != '"' and depth:
            depth -= 1
    return False


def check_depth(text: str, what: str, start: int = 0) -> None:
    """Raise RemoteProtocolError when the JSON ``what`` at ``text[start:]`` nests too deep.

    The message shows the start of ``text`` (the whole packet, say, not only its JSON).
    """
    if too_deep(text, start):
        shown = repr(text) if len(text) <= 60 else f"{text[:60]!r}... ({len(text)} chars)"
        raise RemoteProtocolError(f"expected {what} nested at most {MAX_DEPTH} deep, got deeper nesting in {shown}")
