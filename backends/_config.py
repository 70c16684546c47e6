"""The options of ``ask``/``connect``, defined once, and what turns them into a client.

Every backend's ``ask(prompt, **options)`` takes the keyword arguments of
:class:`AskOptions` and ``connect(**options)`` those of :class:`SessionOptions`;
the defaults live here (:data:`DEFAULT_TIMEOUT`, :data:`CONNECT_TIMEOUT`) or in
the core (``DEFAULT_MODEL`` and ``MODELS`` in :mod:`plabs_proto.labs`,
``DEFAULT_SERVER`` in :mod:`plabs_proto.client`), nowhere else.
:func:`parse_options` checks them and returns :class:`Options`: the
:class:`~plabs_proto.client.ClientConfig`, the model, the tracer and the seed.

* :func:`build_config` turns the connection options into a ``ClientConfig`` (and maps ``timeout``);
* :func:`to_messages` turns a prompt string into one user message;
* :func:`make_rng` picks the randomness (system randomness, or a seeded generator
  when a trace must be replayable) and :func:`announce_seed` tells the tracer.

``timeout`` is the overall deadline of a query, counted from the moment it is
asked.  ``ask`` starts the connection and the query at the same instant, so it
becomes ``ClientConfig.query_timeout``, which covers connecting too;
``connect_timeout`` is capped by it (at most :data:`CONNECT_TIMEOUT`).  A keyword
argument naming a ``ClientConfig`` field (``connect_timeout=``,
``first_text_timeout=``, ``query_timeout=``...) wins over this mapping.
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypedDict

from plabs_proto.browser import BrowserProfile
from plabs_proto.client import DEFAULT_SERVER, ClientConfig, LabsClient, Tracer
from plabs_proto.errors import LocalProtocolError
from plabs_proto.labs import DEFAULT_MODEL, MODELS, normalize_messages
from plabs_proto.proxy import ProxyConfig
from plabs_proto.trace import SEED_DIRECTION

__all__ = [
    "CONNECT_TIMEOUT",
    "DEFAULT_MODEL",
    "DEFAULT_SERVER",
    "DEFAULT_TIMEOUT",
    "MODELS",
    "AskOptions",
    "Headers",
    "Messages",
    "Options",
    "SessionOptions",
    "announce_seed",
    "build_config",
    "make_rng",
    "parse_options",
    "to_messages",
]

#: Seconds a whole ``ask`` may take (connecting included); ``None`` means no overall deadline.
DEFAULT_TIMEOUT = 300.0
#: Upper bound of the connect deadline that ``timeout`` implies.
CONNECT_TIMEOUT = 30.0

Messages = str | Sequence[Mapping[str, Any]]
Headers = Mapping[str, str] | Iterable[tuple[str, str]] | None


class SessionOptions(TypedDict, total=False):
    """The keyword arguments of every backend's ``connect`` (and ``ask``); all optional.

    ``server`` (default ``DEFAULT_SERVER``), ``proxy`` (``http://[user:pass@]host:port``,
    ``socks5://...`` or a :class:`~plabs_proto.proxy.ProxyConfig`), ``transport``
    (``"upgrade"``, ``"websocket"`` or ``"polling"``), ``ssl_context``, ``cafile``,
    ``timeout`` (seconds, default :data:`DEFAULT_TIMEOUT`; see the module docstring),
    ``headers`` (extra HTTP headers), ``tracer`` and ``seed`` (see ``ask``); the rest
    are :class:`~plabs_proto.client.ClientConfig` fields of the same name.
    """

    server: str
    proxy: str | ProxyConfig | None
    transport: str
    ssl_context: Any
    cafile: str | None
    timeout: float | None
    headers: Headers
    tracer: Tracer | None
    seed: int | None
    origin: str
    jwt: str
    version: str
    user_agent: str | None
    browser: BrowserProfile | None
    path: str
    tls: bool | None
    connect_timeout: float | None
    first_text_timeout: float | None
    query_timeout: float | None
    max_message_size: int | None
    accept_encoding: bool
    permessage_deflate: bool


class AskOptions(SessionOptions, total=False):
    """The keyword arguments of every backend's ``ask``: :class:`SessionOptions` and ``model``."""

    model: str


@dataclasses.dataclass(frozen=True, slots=True)
class Options:
    """The checked options: what the client is made of, and the model ``ask`` uses."""

    config: ClientConfig
    tracer: Tracer | None = None
    seed: int | None = None
    model: str = DEFAULT_MODEL

    def new_client(self) -> tuple[LabsClient, int | None]:
        """A fresh client on this config, and the seed of its randomness (see :func:`make_rng`)."""
        rng, seed = make_rng(self.tracer, self.seed)
        return LabsClient(self.config, rng=rng, tracer=self.tracer), seed


def parse_options(options: Mapping[str, Any], *, with_model: bool) -> Options:
    """Check the keyword arguments of ``ask`` (``with_model``) or ``connect`` and apply the defaults.

    A name that is not an option, or a value of the wrong kind, raises
    :class:`~plabs_proto.errors.LocalProtocolError` (before any connection).
    """
    allowed = (AskOptions if with_model else SessionOptions).__optional_keys__
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise LocalProtocolError(
            f"expected keyword arguments among {', '.join(sorted(allowed))}, got {', '.join(map(repr, unknown))}"
        )
    extras = dict(options)
    model = extras.pop("model", DEFAULT_MODEL) if with_model else DEFAULT_MODEL
    tracer = extras.pop("tracer", None)
    seed = extras.pop("seed", None)
    if not isinstance(model, str):
        raise LocalProtocolError(f"expected the model as a str, got {model!r:.60}")
    if tracer is not None and not callable(tracer):
        raise LocalProtocolError(f"expected tracer as a callable or None, got {tracer!r:.60}")
    config = build_config(extras)
    return Options(config=config, tracer=tracer, seed=seed, model=model)


# The options build_config takes: every ClientConfig field, and ``timeout``.
_OPTIONS = frozenset(f.name for f in dataclasses.fields(ClientConfig)) | {"timeout"}
_TIMEOUTS = frozenset({"connect_timeout", "first_text_timeout", "query_timeout"})
_STRINGS = frozenset({"origin", "jwt", "version", "user_agent", "path"})


def _check_seconds(name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise LocalProtocolError(f"expected {name} as a number of seconds > 0 or None, got {value!r:.60}")
    return float(value)


def _headers(headers: Headers) -> tuple[tuple[str, str], ...]:
    if headers is None:
        return ()
    pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    out: list[tuple[str, str]] = []
    for pair in pairs:
        if (
            not isinstance(pair, tuple)
            or len(pair) != 2
            or not isinstance(pair[0], str)
            or not isinstance(pair[1], str)
        ):
            raise LocalProtocolError(
                f"expected headers as a mapping or (name, value) pairs of str, got {pair!r:.60}"
            )
        out.append((pair[0], pair[1]))
    return tuple(out)


def build_config(options: Mapping[str, Any]) -> ClientConfig:
    """The :class:`ClientConfig` for the connection options of ``ask``/``connect``.

    Every name must be a ``ClientConfig`` field or ``timeout`` (see the module
    docstring), else :class:`LocalProtocolError`; the values are checked here.
    """
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        raise LocalProtocolError(
            f"expected keyword arguments among {', '.join(sorted(_OPTIONS))}, got {', '.join(map(repr, unknown))}"
        )
    extras = dict(options)
    server = extras.pop("server", DEFAULT_SERVER)
    proxy = extras.pop("proxy", None)
    if not isinstance(server, str):
        raise LocalProtocolError(f"expected the server URL as a str, got {type(server).__name__}")
    if proxy is not None and not isinstance(proxy, str | ProxyConfig):
        raise LocalProtocolError(f"expected the proxy as a URL str or a ProxyConfig, got {type(proxy).__name__}")
    overall = _check_seconds("timeout", extras.pop("timeout", DEFAULT_TIMEOUT))
    values: dict[str, Any] = {
        "server": server,
        "proxy": proxy,
        "headers": _headers(extras.pop("headers", None)),
        "query_timeout": overall,
        "connect_timeout": CONNECT_TIMEOUT if overall is None else min(overall, CONNECT_TIMEOUT),
    }
    for name, value in extras.items():
        if name in _TIMEOUTS:
            value = _check_seconds(name, value)
        elif name in _STRINGS and not isinstance(value, str) and not (name == "user_agent" and value is None):
            raise LocalProtocolError(f"expected {name} as a str, got {value!r:.60}")
        elif name == "browser" and value is not None and not isinstance(value, BrowserProfile):
            raise LocalProtocolError(f"expected browser as a BrowserProfile or None, got {value!r:.60}")
        elif name == "tls" and value is not None and not isinstance(value, bool):
            raise LocalProtocolError(f"expected tls as True, False or None, got {value!r:.60}")
        elif name in ("accept_encoding", "permessage_deflate") and not isinstance(value, bool):
            raise LocalProtocolError(f"expected {name} as True or False, got {value!r:.60}")
        elif name == "max_message_size":
            if value is None:
                continue  # the default receive limit
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LocalProtocolError(
                    f"expected max_message_size as an int >= 1 (bytes) or None, got {value!r:.60}"
                )
        values[name] = value
    return ClientConfig(**values)


def to_messages(prompt_or_messages: Messages) -> list[dict[str, str]]:
    """The conversation, checked now: a prompt string becomes ``[{"role": "user", "content": prompt}]``.

    Messages are normalised as Labs takes them (see
    :func:`plabs_proto.labs.normalize_messages`); anything malformed raises
    :class:`~plabs_proto.errors.LocalProtocolError` here, before any connection.
    """
    return normalize_messages(prompt_or_messages)


def make_rng(tracer: Tracer | None, seed: int | None) -> tuple[random.Random, int | None]:
    """The generator for ``LabsClient(rng=...)`` and the seed it was made from.

    With a ``seed``, ``random.Random(seed)``.  Without one, ``random.SystemRandom()``;
    but when a ``tracer`` records the session, a fresh 128-bit seed is drawn from
    ``os.urandom`` so that the trace can be replayed (the backend hands it to the
    tracer, see :func:`announce_seed`).
    """
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise LocalProtocolError(f"expected seed as an int or None, got {seed!r:.60}")
        return random.Random(seed), seed
    if tracer is not None:
        seed = int.from_bytes(os.urandom(16), "big")
        return random.Random(seed), seed
    return random.SystemRandom(), None


def announce_seed(tracer: Tracer | None, seed: int | None, now: float) -> None:
    """Tell the tracer the seed: ``tracer(now, 0, "seed", b"<decimal seed>")`` (stream 0 is never a socket)."""
    if tracer is not None and seed is not None:
        tracer(now, 0, SEED_DIRECTION, str(seed).encode("ascii"))

