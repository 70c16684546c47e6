"""RFC 6902 patches (add, replace, remove) applied in place to the blocks of an answer.

The service patches its blocks with ``diff_block {field, patches}``; :func:`apply`
takes one patch.  Where a patch changes or removes a list's member, or inserts one
before the end, the lowest index changed is noted in ``touched`` (keyed by the
list's ``id``), so the text that follows that list knows it must be joined again.
"""

from __future__ import annotations

import re
from typing import Any

from plabs_proto.perplexity.shape import excerpt, fail

__all__ = ["MAX_POINTER", "append_chunk", "apply", "parse", "touch"]

MAX_POINTER = 32
"""Most tokens in a patch's path."""

_INDEX = re.compile(r"0|[1-9][0-9]{0,17}")
_OPS = ("add", "replace", "remove")


def touch(touched: dict[int, int], container: list[Any], index: int) -> None:
    """Note that ``container`` changed at ``index`` (the lowest index is kept)."""
    key = id(container)
    if index < touched.get(key, index + 1):
        touched[key] = index


def parse(patch: object) -> tuple[str, list[str], Any]:
    """``(op, path tokens, value)`` of one patch, checked."""
    if not isinstance(patch, dict):
        fail(f"expected each patch to be a JSON object, got {excerpt(patch)}")
    op = patch.get("op")
    if op not in _OPS:
        fail(f"expected a patch 'op' of add, replace or remove, got {excerpt(op)}")
    path = patch.get("path", "")
    if not isinstance(path, str):
        fail(f"expected a patch 'path' to be a string, got {excerpt(path)}")
    if path and path[0] != "/":
        fail(f"expected a patch 'path' that is empty or starts with '/', got {excerpt(path)}")
    if path.count("/") > MAX_POINTER:
        fail(f"expected a patch 'path' of at most {MAX_POINTER} tokens, got {path.count('/')}")
    tokens = path.split("/")[1:]
    if "~" in path:
        tokens = [token.replace("~1", "/").replace("~0", "~") for token in tokens]
    if op != "remove" and "value" not in patch:
        fail(f"expected a 'value' in an {op} patch at {path!r}, got none")
    return op, tokens, patch.get("value")


def append_chunk(root: Any, patch: object, max_members: int) -> bool:
    """Apply ``patch`` if it adds a member at the end of ``root["chunks"]``; say whether it did.

    The common patch of an answer streaming in a markdown block (``{"op": "add",
    "path": "/chunks/<n>"}`` with ``n`` the chunks held, or ``/chunks/-``), taken
    without parsing its path: when it is one, ``root`` ends as :func:`apply` would
    leave it (nothing is touched: the list only grew); otherwise (anything else,
    an error included) ``root`` is left as it was and False says to :func:`apply` it.
    """
    if type(patch) is not dict or type(root) is not dict or patch.get("op") != "add":
        return False
    path = patch.get("path")
    if type(path) is not str or path[:8] != "/chunks/" or "value" not in patch:
        return False
    chunks = root.get("chunks")
    if type(chunks) is not list:
        return False
    size = len(chunks)
    key = path[8:]
    if size >= max_members or (key != "-" and key != str(size)):
        return False
    chunks.append(patch["value"])
    return True


def apply(
    root: Any, patch: object, field: str, max_members: int, touched: dict[int, int]
) -> tuple[Any, list[str]]:
    """Apply one patch to ``root`` (the block named ``field``); return the new root and the path.

    An object or array may grow to ``max_members`` members, no more.
    """
    op, tokens, value = parse(patch)
    if not tokens:
        return ({} if op == "remove" else value), tokens
    target = root
    last = len(tokens) - 1
    for depth in range(last):
        token = tokens[depth]
        kind = type(target)
        if kind is dict or (kind is not list and isinstance(target, dict)):
            if token not in target:
                fail(f"expected the patch path {_where(tokens, depth)!r} in the {field}, got no member {token!r}")
            target = target[token]
        elif kind is list or isinstance(target, list):
            if not _INDEX.fullmatch(token) or int(token) >= len(target):
                fail(f"expected an index below {len(target)} at {_where(tokens, depth)!r} in the {field}, got {token!r}")
            target = target[int(token)]
        else:
            fail(f"expected an object or array at {_where(tokens, depth)!r} in the {field}, got {excerpt(target)}")
    key = tokens[last]
    if isinstance(target, dict):
        if op == "add":
            if key not in target and len(target) >= max_members:
                fail(
                    f"expected at most {max_members} members in an object, got {len(target) + 1} "
                    f"at {_where(tokens, last)!r}"
                )
            target[key] = value
        elif key not in target:
            fail(f"expected the {op} patch's path {_where(tokens, last)!r} in the {field}, got no member {key!r}")
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
            fail(f"expected an array index in the patch path {_where(tokens, last)!r} of the {field}, got {key!r}")
        if index > size or (op != "add" and index == size):
            fail(
                f"expected the {op} patch's index in {_where(tokens, last)!r} of the {field} to be at most "
                f"{size if op == 'add' else size - 1}, got {index}"
            )
        if op == "add":
            if size >= max_members:
                fail(f"expected at most {max_members} members in an array, got {size + 1} at {_where(tokens, last)!r}")
            if index < size:
                touch(touched, target, index)
                target.insert(index, value)
            else:
                target.append(value)
        else:
            touch(touched, target, index)
            if op == "replace":
                target[index] = value
            else:
                del target[index]
    else:
        fail(
            f"expected an object or array at the parent of {_where(tokens, last)!r} in the {field}, "
            f"got {excerpt(target)}"
        )
    return root, tokens


def _where(tokens: list[str], depth: int) -> str:
    """The path down to ``tokens[depth]``, for an error message."""
    return "/" + "/".join(tokens[: depth + 1])

