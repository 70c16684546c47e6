"""The options of ``ask``/``connect``, defined once, and what turns them into a client.

Every backend's ``ask(prompt, **options)`` takes the keyword arguments of :class:`AskOptions`,
``connect(**options)`` those of :class:`SessionOptions`.  The defaults live here
(:data:`DEFAULT_TIMEOUT`, :data:`CONNECT_TIMEOUT`) or in the core (``DEFAULT_MODEL``,
``MODELS``, ``DEFAULT_SERVER``), nowhere else.  :func:`parse_options` maps them onto a
:class:`~plabs_proto.wire.client.ClientConfig`, which checks its own fields.

``timeout`` is the overall deadline of a query, counted from the moment it is asked: ``ask``
starts the connection and the query at the same instant, so it becomes
``ClientConfig.query_timeout`` (which covers connecting too), and caps ``connect_timeout``
(at most :data:`CONNECT_TIMEOUT`).  A ``ClientConfig`` field named outright
(``connect_timeout=``, ``query_timeout=``...) wins over this mapping.
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypedDict

from plabs_proto.config import DEFAULT_SERVER, ClientConfig, check_seconds
from plabs_proto.errors import LocalProtocolError
from plabs_proto.labs.answer import DEFAULT_MODEL, MODELS, normalize_messages
from plabs_proto.perplexity import request as _ask
from plabs_proto.wire.browser import BrowserProfile
from plabs_proto.wire.client import Client, LabsClient, PerplexityClient, Tracer
from plabs_proto.wire.proxy import ProxyConfig
from plabs_proto.wire.trace import SEED_DIRECTION

__all__ = [
    "CONNECT_TIMEOUT", "COOKIES_FILE_VARIABLE", "DEFAULT_MODEL", "DEFAULT_SERVER", "DEFAULT_TIMEOUT", "MODELS",
    "TOKEN_VARIABLE", "AskOptions", "Headers", "Messages", "Options", "SessionOptions", "announce_seed",
    "default_model", "make_client", "make_rng", "parse_options", "to_messages",
]

#: Seconds a whole ``ask`` may take (connecting included); ``None`` means no overall deadline.
DEFAULT_TIMEOUT = 300.0
#: Upper bound of the connect deadline that ``timeout`` implies.
CONNECT_TIMEOUT = 30.0
#: The environment variables a ``service="perplexity"`` session signs in with when given neither
#: ``session_token`` nor ``cookies_txt``: the token itself, or the path of a cookies.txt export.
TOKEN_VARIABLE = "PLABS_SESSION_TOKEN"
COOKIES_FILE_VARIABLE = "PLABS_COOKIES_FILE"

Messages = str | Sequence[Mapping[str, Any]]
Headers = Mapping[str, str] | Iterable[tuple[str, str]] | None

#: The conversation, checked before any connection: a prompt string becomes one user message
#: (see :func:`plabs_proto.labs.answer.normalize_messages`); anything malformed raises LocalProtocolError.
to_messages = normalize_messages


class SessionOptions(TypedDict, total=False):
    """The keyword arguments of every backend's ``connect`` (and ``ask``); all optional.

    ``server`` (default ``DEFAULT_SERVER``), ``proxy`` (``http://[user:pass@]host:port``,
    ``socks5://...`` or a :class:`~plabs_proto.wire.proxy.ProxyConfig`), ``transport``
    (``"upgrade"``, ``"websocket"`` or ``"polling"``), ``ssl_context``, ``cafile``,
    ``timeout`` (seconds, default :data:`DEFAULT_TIMEOUT`; see the module docstring),
    ``headers`` (extra HTTP headers: a mapping or (name, value) pairs), ``tracer`` and ``seed`` (see ``ask``); the rest
    are :class:`~plabs_proto.wire.client.ClientConfig` fields of the same name.  ``service``
    (``"labs"``, the default, or ``"perplexity"``: the ask endpoint that answers today) picks the
    session; a ``"perplexity"`` one given neither ``session_token`` nor ``cookies_txt`` signs in
    with :data:`TOKEN_VARIABLE` or :data:`COOKIES_FILE_VARIABLE` when set (anonymous otherwise).
    ``mode`` (``service="perplexity"`` only: one of :data:`~plabs_proto.perplexity.request.MODES`)
    is the ask's ``params.mode`` of every query; None, the session's default.
    """

    server: str
    proxy: str | ProxyConfig | None
    transport: str
    ssl_context: Any
    cafile: str | os.PathLike[str] | None
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
    service: str
    session_token: str | None
    cookies_txt: str | None
    mode: str | None


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

    def new_client(self) -> tuple[Client, int | None]:
        """A fresh client on this config, and the seed of its randomness (see :func:`make_rng`)."""
        rng, seed = make_rng(self.tracer, self.seed)
        return make_client(self.config, rng, self.tracer), seed


def make_client(config: ClientConfig, rng: random.Random, tracer: Tracer | None) -> Client:
    """The byte-level client of ``config.service``: a :class:`LabsClient` or a :class:`PerplexityClient`."""
    if config.service == "perplexity":
        return PerplexityClient(config, rng=rng, tracer=tracer)
    return LabsClient(config, rng=rng, tracer=tracer)


def default_model(service: str) -> str:
    """The model a query of ``service`` uses when none is named."""
    return _ask.DEFAULT_MODEL if service == "perplexity" else DEFAULT_MODEL


def _signed_in(values: dict[str, Any]) -> None:
    """For the ask service given no token nor cookies: :data:`TOKEN_VARIABLE` or :data:`COOKIES_FILE_VARIABLE`."""
    if values.get("session_token") is not None or values.get("cookies_txt") is not None:
        return
    token = os.environ.get(TOKEN_VARIABLE)
    if token:
        values["session_token"] = token.strip()
    path = os.environ.get(COOKIES_FILE_VARIABLE)
    if path:
        try:
            with open(path, encoding="utf-8") as file:
                values["cookies_txt"] = file.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise LocalProtocolError(
                f"expected {COOKIES_FILE_VARIABLE} to name a readable cookies.txt file, got {path!r:.200} "
                f"({type(exc).__name__})"
            ) from None


def parse_options(options: Mapping[str, Any], *, with_model: bool) -> Options:
    """Check the keyword arguments of ``ask`` (``with_model``) or ``connect`` and apply the defaults.

    A name that is not an option, or a value of the wrong kind, raises
    :class:`~plabs_proto.errors.LocalProtocolError` (before any connection): the
    values of ``ClientConfig`` fields are checked by ``ClientConfig`` itself.
    ``max_message_size=None`` means the default; ``headers`` may be a mapping.
    """
    allowed = (AskOptions if with_model else SessionOptions).__optional_keys__
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise LocalProtocolError(
            f"expected keyword arguments among {', '.join(sorted(allowed))}, got {', '.join(map(repr, unknown))}"
        )
    values = dict(options)
    if values.get("service") == "perplexity":
        _signed_in(values)
    model = values.pop("model", None) or default_model(values.get("service", "labs"))
    tracer = values.pop("tracer", None)
    seed = values.pop("seed", None)
    if not isinstance(model, str):
        raise LocalProtocolError(f"expected the model as a str, got {model!r:.60}")
    if tracer is not None and not callable(tracer):
        raise LocalProtocolError(f"expected tracer as a callable or None, got {tracer!r:.60}")
    overall = values.pop("timeout", DEFAULT_TIMEOUT)
    check_seconds("timeout", overall)
    if values.get("max_message_size", 0) is None:
        del values["max_message_size"]  # the default receive limit
    headers = values.pop("headers", None)
    if isinstance(headers, Mapping):
        headers = tuple(headers.items())
    elif isinstance(headers, Iterable) and not isinstance(headers, str):
        headers = tuple(headers)
    mapped = {
        "query_timeout": overall,
        "connect_timeout": CONNECT_TIMEOUT if overall is None else min(overall, CONNECT_TIMEOUT),
        "headers": () if headers is None else headers,
    }
    config = ClientConfig(**{**mapped, **values})
    return Options(config=config, tracer=tracer, seed=seed, model=model)


#: The randomness of every session without a seed.  One for all: ``SystemRandom`` reads os.urandom
#: and keeps no state of its own, but each instance still allocates ``random.Random``'s Mersenne
#: Twister state (2.5 KB, never used), which was a tenth of an idle session's memory at scale.
_SYSTEM_RANDOM = random.SystemRandom()


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
    return _SYSTEM_RANDOM, None


def announce_seed(tracer: Tracer | None, seed: int | None, now: float) -> None:
    """Tell the tracer the seed: ``tracer(now, 0, "seed", b"<decimal seed>")`` (stream 0 is never a socket)."""
    if tracer is not None and seed is not None:
        tracer(now, 0, SEED_DIRECTION, str(seed).encode("ascii"))

