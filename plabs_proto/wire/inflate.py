"""Bounded inflation: the one zlib step that HTTP bodies and permessage-deflate share.

A compressed input may inflate to any size (a decompression bomb); each call
here asks zlib for at most one byte more than the room left, so the memory and
time a hostile input costs are bounded by the caller's limit.
"""

from __future__ import annotations

import zlib

from plabs_proto.errors import RemoteProtocolError

__all__ = ["inflate_within"]


def inflate_within(inflater: zlib._Decompress, data: bytes, room: int, *, unreadable: str, too_big: str) -> bytes:
    """What ``data`` inflates to, at most ``room`` bytes.

    Raises :class:`RemoteProtocolError` with ``unreadable`` (followed by zlib's
    words) for bytes zlib cannot inflate, and with ``too_big`` when the output
    would pass ``room``.
    """
    try:
        out = inflater.decompress(data, room + 1)
    except zlib.error as exc:
        raise RemoteProtocolError(f"{unreadable}: {exc}") from None
    if len(out) > room or inflater.unconsumed_tail:
        raise RemoteProtocolError(too_big)
    return out
