"""The argparse types of the ``plabs`` commands (``ask``, ``emulator``, ``serve``): each refuses a bad value
with the reason, in argparse's usage-error form."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import TypeVar

from plabs_proto.errors import LocalProtocolError
from plabs_proto.wire.proxy import parse_proxy_url

__all__ = ["count", "delay", "number", "port", "proxy", "seconds"]

N = TypeVar("N", int, float)


def number(text: str, convert: Callable[[str], N], what: str, ok: Callable[[N], bool], bound: str) -> N:
    """An argparse type: ``text`` as ``convert`` reads it, when ``ok``; else "expected <what> <bound>"."""
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"expected {what} {bound}, got {text!r}")
    return value


def seconds(text: str) -> float:
    return number(text, float, "a number of seconds", lambda value: 0 < value < math.inf, "> 0")


def delay(text: str) -> float:
    return number(text, float, "a number of seconds", lambda value: 0 <= value < math.inf, ">= 0")


def count(text: str) -> int:
    return number(text, int, "a whole number", lambda value: value >= 0, ">= 0")


def port(text: str) -> int:
    value = count(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {text!r}")
    return value


def proxy(text: str) -> str:
    """A proxy URL (``http://[user:pass@]host:port`` or ``socks5://...``), checked before anything starts."""
    try:
        parse_proxy_url(text)
    except LocalProtocolError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text
