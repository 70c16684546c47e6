"""The JSON of an answer's frames, decoded again only where a frame differs from the one before.

Every frame of an answer repeats the thread's identity, the query, the model, the
status... (protocol.md §10.3) and changes little else (``blocks``, or ``text``).
:class:`FrameLoader` keeps the start of the previous frame's data up to a member
boundary (its *prefix*: whole members, each with the comma after it) and the members
decoded from it.  A frame whose data starts with the same characters holds the same
members there (a member ends before its comma, so nothing after the prefix can change
one: a number's last digit is never cut), and only its other members are decoded, one
by one, by :mod:`json`'s own scanner.  When the prefix does not match, the longest
run of its leading members that still does is found by bisection.  Only members whose
values are strings, numbers, booleans or null are reused: an array or an object is
decoded anew in every frame, since the answer decoder keeps and patches those.

Anything else (data that is not a JSON object, a member the loop does not take, any
error) goes to :func:`load_frame`, the general path, so the value and every error are
exactly those of a whole decoding (``json.loads`` with the depth check before it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from plabs_proto.errors import RemoteProtocolError
from plabs_proto.jsondepth import MAX_DEPTH, check_depth
from plabs_proto.perplexity.shape import excerpt

__all__ = ["FrameLoader", "load_frame"]


def load_frame(data: str) -> Any:
    """The JSON value of an SSE event's data, for :meth:`AnswerDecoder.feed`.

    Nesting deeper than :data:`plabs_proto.jsondepth.MAX_DEPTH`, text that is not
    JSON, and ``NaN``/``Infinity`` are refused with :class:`RemoteProtocolError`.
    """
    check_depth(data, "an answer frame")
    try:
        if data[:1] == "\ufeff":  # (as json.loads says it)
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", data, 0)
        return _DECODER.decode(data)
    except (ValueError, RecursionError) as exc:
        raise RemoteProtocolError(f"expected an answer frame of JSON, got {excerpt(data)} ({exc})") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# One decoder for every frame: json.loads with parse_constant would build a new one (and its scanner) each time.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)
# What the decoder itself reads with (in C when built; typeshed names neither): one JSON value at an index,
# (value, the index after it); one string's characters after its opening quote, (text, the index after it).
_SCAN: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]
_STRING: Callable[[str, int, bool], tuple[str, int]] = _DECODER.parse_string  # type: ignore[attr-defined]
_SPACE = re.compile(r"[ \t\n\r]*")  # JSON's whitespace, as json.decoder skips it
_SPACES = " \t\n\r"


def _skip(data: str, index: int) -> int:
    """The index of the first character at or after ``index`` that is not JSON's whitespace."""
    match = _SPACE.match(data, index)
    return match.end() if match else index


class FrameLoader:
    """Decodes the data of one answer's ``message`` events in order, as :func:`load_frame` does, faster.

    Use one per answer (the frames of one answer share their first members).
    """

    __slots__ = ("_key", "_last", "_members", "_prefix", "_run", "changed")

    def __init__(self) -> None:
        self._prefix = ""  # the previous frame's data: its reused members (each with its comma), then perhaps a key
        self._members: dict[str, Any] = {}  # the members decoded from the prefix
        self._key: str | None = None  # the key the prefix ends with (its value next), or None
        self._run: list[tuple[int, str, Any]] = []  # each member of the prefix: where it ends (after its comma), key, value
        self._last: str | None = None  # the key after the prefix, when the last frame was its members and that one
        self.changed: str | None = None
        """After :meth:`load`: the key of the one member in which the frame differs from the frame loaded
        before it (every other member the same object, in the same order), or None when that is not so or
        not known.  For :meth:`AnswerDecoder.feed`'s ``changed``."""

    def load(self, data: str) -> Any:
        """The JSON value of ``data``; errors as :func:`load_frame` raises them."""
        prefix = self._prefix
        if prefix and data.startswith(prefix):  # (the common frame: decode only what follows the prefix)
            frame = self._members.copy()
            taken = self._rest(data, len(prefix), frame, self._key, None)
            if taken:
                if taken == 1:  # (the prefix's members and one member after them, two frames in a row: changed)
                    self.changed = self._last
                    self._last = self._key
                else:
                    self.changed = self._last = None
                return frame
        else:
            first = self._shorter(data) if prefix else self._first(data)
            if first is not None:
                self.changed = self._last = None
                return first
        self._prefix, self._members, self._key, self._run = "", {}, None, []
        self.changed = self._last = None
        return load_frame(data)

    def _first(self, data: str) -> dict[str, Any] | None:
        """Decode a frame with nothing to reuse, learning its prefix; None if the loop does not take it."""
        start = _skip(data, 0)
        if data[start : start + 1] != "{":
            return None
        frame: dict[str, Any] = {}
        run: list[Any] = []
        if not self._rest(data, start + 1, frame, None, run):
            return None
        self._learn(data, run)
        return frame

    def _shorter(self, data: str) -> dict[str, Any] | None:
        """Decode a frame whose data does not start with the whole prefix: reuse the leading members that
        still match (found by bisection), decode the rest, learn the new prefix."""
        prefix, run = self._prefix, self._run
        ends = [end for end, _, _ in run]
        if ends[-1:] != [len(prefix)]:
            ends.append(len(prefix))  # (the prefix ends with a key)
        low, high = 0, len(ends)  # the first `low` members match; the data does not start with prefix[:ends[high - 1]]
        while high - low > 1:
            middle = (low + high) // 2
            if data.startswith(prefix[: ends[middle - 1]]):
                low = middle
            else:
                high = middle
        if low == 0:
            return self._first(data)
        frame: dict[str, Any] = {}
        for _, key, value in run[:low]:
            frame[key] = value
        more: list[Any] = []
        if not self._rest(data, ends[low - 1], frame, None, more):
            return None
        self._learn(data, run[:low] + more)
        return frame

    def _learn(self, data: str, run: list[Any]) -> None:
        """Keep the prefix of ``data`` made of the members of ``run`` (and the key its last entry may name)."""
        key = None
        end = run[-1][0] if run else 0
        if run and run[-1][2] is _VALUE:  # where the value of the first member not reused starts, and its key
            end, key, _ = run.pop()
        members: dict[str, Any] = {}
        for _, name, value in run:  # (one after another: a repeated key keeps its first place and its last value)
            members[name] = value
        self._prefix = data[:end]
        self._members = members
        self._key = key
        self._run = run

    def _rest(
        self, data: str, index: int, frame: dict[str, Any], key: str | None, run: list[Any] | None
    ) -> int:
        """Decode the members of the object in ``data`` from ``index`` (after its ``{`` or a comma; at the
        value of ``key`` when one is given) into ``frame``, to the end of the object and of ``data``; say
        how many members that took when it went as json would have it, else 0.  ``run``, when given, gets the leading members that may be
        reused (values neither arrays nor objects, each followed by a comma): where each ends (after its
        comma), its key and value; then where the next member's value starts, its key, and ``_VALUE``."""
        if data.count("{", index) + data.count("[", index) >= MAX_DEPTH:
            return 0  # (the general path checks the depth; the rest nests inside the frame's object)
        scan, string, spaces = _SCAN, _STRING, _SPACES
        taken = 0
        try:
            while True:
                if key is None:
                    if data[index] != '"':
                        index = _skip(data, index)
                        if data[index] != '"':
                            return 0
                    key, index = string(data, index + 1, True)
                    if data[index] != ":":
                        index = _skip(data, index)
                        if data[index] != ":":
                            return 0
                    index += 1
                    if data[index] in spaces:
                        index = _skip(data, index)
                    start = index
                else:
                    start = -1  # (at the value of the key the prefix ends with)
                value, index = scan(data, index)
                frame[key] = value
                taken += 1
                char = data[index]
                if char in spaces:
                    index = _skip(data, index)
                    char = data[index]
                if run is not None and start >= 0:
                    if char == "," and type(value) is not dict and type(value) is not list:
                        run.append((index + 1, key, value))
                    else:
                        run.append((start, key, _VALUE))
                        run = None
                key = None
                if char == ",":
                    index += 1
                elif char == "}":
                    index += 1
                    return taken if index == len(data) or _skip(data, index) == len(data) else 0
                else:
                    return 0
        except (ValueError, StopIteration, IndexError):
            return 0


_VALUE: Any = object()  # (in a run: the entry of the member whose value is decoded in every frame)
