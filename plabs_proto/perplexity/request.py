"""What a client of the ask service sends: the warm-up, the ask, the catalog request; models; cookies.

* :func:`warmup_request`: ``GET /api/auth/session``, which sets the anonymous
  cookies (``__cf_bm``, ``next-auth.csrf-token``) the ask needs; anonymous, it
  answers ``{}``.
* :func:`ask_request`: ``POST /rest/sse/perplexity_ask`` with the JSON body the web
  app sends (:func:`ask_body`) and its headers; a follow-up in the same thread
  sends the previous answer's ``backend_uuid`` and the thread's ``read_write_token``
  (from a :class:`~plabs_proto.events.ThreadIdentity`).
* :data:`MODELS`: the built-in models (anonymous use gets :data:`DEFAULT_MODEL`
  only); :func:`catalog_request` and :func:`parse_catalog` read the service's own
  list.
* :func:`read_cookies_txt`: the perplexity.ai cookies of a browser's cookies.txt
  export (the session token :data:`SESSION_COOKIE` among them), for signed-in use.

Pure: no I/O, no clock; randomness (the UUIDs) comes from the ``random.Random`` given.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from plabs_proto.errors import LocalProtocolError, RemoteProtocolError
from plabs_proto.events import ThreadIdentity

__all__ = [
    "API_VERSION",
    "ASK_PATH",
    "BASE_URL",
    "CATALOG_PATH",
    "DEFAULT_MODE",
    "DEFAULT_MODEL",
    "MODELS",
    "MODES",
    "SESSION_COOKIE",
    "WARMUP_PATH",
    "Cookie",
    "Model",
    "Request",
    "ask_body",
    "ask_headers",
    "ask_request",
    "catalog_request",
    "cookie_header",
    "parse_catalog",
    "read_cookies_txt",
    "warmup_request",
]

BASE_URL = "https://www.perplexity.ai"
WARMUP_PATH = "/api/auth/session"
ASK_PATH = "/rest/sse/perplexity_ask"
CATALOG_PATH = "/rest/models/config/v2"
"""The service's model catalog (jacob-bd/perplexity-web-mcp reads ``/rest/models/config?config_schema=v1``,
which has the same shape)."""
API_VERSION = "2.18"
"""``params.version`` and ``x-app-apiversion``: a stale version is answered 400."""
SESSION_COOKIE = "__Secure-next-auth.session-token"
"""The cookie that holds a signed-in session."""
MODES = ("copilot", "concise")
"""``params.mode``: the web app posts ``copilot`` (OmniRoute, gpt4free 2026); ``concise`` is the older quick mode."""
DEFAULT_MODE = MODES[0]
"""The mode of an ask that names none."""
DEFAULT_MODEL = "turbo"
"""The model anonymous use gets (and ``pplx_pro`` is the signed-in "Best")."""

_TOO_LONG = 100_000
"""Longest query taken, in characters (the web app's limit is lower; this only bounds the request)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Model:
    """One model of the ask service.

    ``id`` is what ``params.model_preference`` takes, ``label`` the name the web
    app shows, ``kind`` the app's mode for it (``"search"``, ``"research"``...),
    ``signed_in`` whether it needs a signed-in session.
    """

    id: str
    label: str = ""
    description: str = ""
    kind: str = "search"
    signed_in: bool = True


MODELS: tuple[Model, ...] = (
    Model(id="turbo", label="Best", description="The default model, anonymous use included", signed_in=False),
    Model(id="pplx_pro", label="Best (Pro)", description="Picks the best model for the query"),
    Model(id="experimental", label="Sonar", description="Perplexity's in-house model"),
    Model(id="pplx_reasoning", label="Reasoning", description="Picks a reasoning model"),
    Model(id="pplx_alpha", label="Deep Research", description="Long research reports", kind="research"),
    Model(id="pplx_beta", label="Labs", description="Create files and apps", kind="studio"),
    Model(id="r1", label="R1", description="DeepSeek R1, post-trained by Perplexity"),
    Model(id="gpt5", label="GPT-5", description="OpenAI's model"),
    Model(id="gpt5_thinking", label="GPT-5 Thinking", description="OpenAI's model with thinking"),
    Model(id="claude45sonnet", label="Claude Sonnet 4.5", description="Anthropic's model"),
    Model(id="claude45sonnetthinking", label="Claude Sonnet 4.5 Thinking", description="with thinking"),
)
"""The built-in models (protocol.md §10.2; lists drift: the catalog is the service's own word)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """One HTTP request to make: ``method`` to the absolute ``url`` with ``headers`` and ``body``.

    The headers are the ones the web app sends for it; the carrier adds its own
    (Host, User-Agent, Cookie, Content-Length...).
    """

    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes = field(default=b"", repr=False)


def _server(server: str) -> str:
    if not isinstance(server, str) or not server.startswith(("http://", "https://")):
        raise LocalProtocolError(f"expected the server as an http:// or https:// URL, got {server!r}")
    return server.rstrip("/")


def _json_get(server: str, path: str) -> Request:
    base = _server(server)
    return Request(method="GET", url=base + path, headers=(("Accept", "application/json"), ("Referer", base + "/")))


def warmup_request(server: str = BASE_URL) -> Request:
    """``GET /api/auth/session``: the request that gets the anonymous cookies before the ask."""
    return _json_get(server, WARMUP_PATH)


def catalog_request(server: str = BASE_URL) -> Request:
    """``GET /rest/models/config/v2``: the service's model catalog (read it with :func:`parse_catalog`)."""
    return _json_get(server, CATALOG_PATH)


def ask_headers(server: str = BASE_URL, *, thread_url_slug: str | None = None) -> tuple[tuple[str, str], ...]:
    """The headers the web app sends with the ask.

    A follow-up's Referer is the thread's page (``/search/<slug>``), as the browser's is.
    """
    base = _server(server)
    referer = f"{base}/search/{thread_url_slug}" if thread_url_slug else base + "/"
    return (
        ("Content-Type", "application/json"),
        ("Accept", "text/event-stream"),
        ("Origin", base),
        ("Referer", referer),
        ("x-app-apiclient", "default"),
        ("x-app-apiversion", API_VERSION),
    )


def _uuid4(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise LocalProtocolError(f"expected {what} to be a str, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(
            f"expected {what} that can be sent as UTF-8, got a lone surrogate at position {exc.start}"
        ) from None
    return value


def ask_body(
    query: str,
    *,
    rng: random.Random,
    model: str = DEFAULT_MODEL,
    mode: str = DEFAULT_MODE,
    language: str = "en-US",
    timezone: str = "UTC",
    sources: Iterable[str] = ("web",),
    search_focus: str = "internet",
    incognito: bool = True,
    schematized: bool = True,
    follow_up: ThreadIdentity | None = None,
    attachments: Iterable[str] = (),
) -> dict[str, Any]:
    """The JSON body of the ask: ``{"query_str": query, "params": {...}}``, as the web app sends it.

    ``follow_up`` (the previous answer's :class:`~plabs_proto.events.ThreadIdentity`)
    makes it a follow-up in that thread: ``last_backend_uuid``, ``read_write_token``
    and ``query_source: "followup"``.  ``schematized`` asks for the blocks shapes
    (``use_schematized_api``); ``incognito`` keeps the thread out of the account's library.
    """
    query = _text(query, "the query")
    if not query.strip():
        raise LocalProtocolError("expected a query with some text, got only whitespace")
    if len(query) > _TOO_LONG:
        raise LocalProtocolError(f"expected a query of at most {_TOO_LONG} characters, got {len(query)}")
    if mode not in MODES:
        raise LocalProtocolError(f"expected the mode to be one of {', '.join(MODES)}, got {mode!r}")
    model = _text(model, "the model") or DEFAULT_MODEL
    source_list = [_text(source, "a source") for source in sources]
    params: dict[str, Any] = {
        "version": API_VERSION,
        "mode": mode,
        "model_preference": model,
        "frontend_uuid": _uuid4(rng),
        "frontend_context_uuid": _uuid4(rng),
        "language": _text(language, "the language"),
        "timezone": _text(timezone, "the timezone"),
        "sources": source_list,
        "search_focus": _text(search_focus, "the search focus"),
        "is_incognito": bool(incognito),
        "use_schematized_api": bool(schematized),
        "send_back_text_in_streaming_api": False,
        "prompt_source": "user",
        "query_source": "home",
        "attachments": [_text(url, "an attachment") for url in attachments],
    }
    if follow_up is not None:
        if not isinstance(follow_up, ThreadIdentity) or not follow_up.backend_uuid:
            raise LocalProtocolError(
                f"expected follow_up to be a ThreadIdentity with a backend_uuid, got {type(follow_up).__name__}"
            )
        params["last_backend_uuid"] = follow_up.backend_uuid
        if follow_up.read_write_token:
            params["read_write_token"] = follow_up.read_write_token
        params["query_source"] = "followup"
    return {"query_str": query, "params": params}


def ask_request(query: str, *, rng: random.Random, server: str = BASE_URL, **options: Any) -> Request:
    """``POST /rest/sse/perplexity_ask``: :func:`ask_body` (``options`` go to it) as compact JSON, with :func:`ask_headers`."""
    body = ask_body(query, rng=rng, **options)
    follow_up = options.get("follow_up")
    slug = follow_up.thread_url_slug if isinstance(follow_up, ThreadIdentity) else None
    return Request(
        method="POST",
        url=_server(server) + ASK_PATH,
        headers=ask_headers(server, thread_url_slug=slug),
        body=json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8"),
    )


# -- the service's catalog -----------------------------------------------------------------------------


def _catalog_error(what: str, got: object) -> RemoteProtocolError:
    shown = type(got).__name__ if not isinstance(got, str) else repr(got[:60])
    return RemoteProtocolError(f"expected {what} in the model catalog, got {shown}")


def parse_catalog(data: object, *, max_models: int = 1000) -> tuple[Model, ...]:
    """The models of the service's catalog (the decoded JSON of :func:`catalog_request`'s answer).

    Takes ``{"models": {id: {label, description, mode, ...}}, "default_models":
    {mode: id}}`` (the v1 schema) and ``{"models": [{"id"|"model"|"model_preference",
    ...}]}``.  A model is marked ``signed_in`` unless it is the default of the
    ``search`` mode (what anonymous use gets).  Entries that are not objects, or
    whose id is not a string, are refused with :class:`RemoteProtocolError`; fields
    of the wrong type are left empty.
    """
    if not isinstance(data, dict):
        raise _catalog_error("a JSON object", data)
    models = data.get("models")
    defaults = data.get("default_models")
    anonymous = {DEFAULT_MODEL}
    if isinstance(defaults, dict) and isinstance(defaults.get("search"), str):
        anonymous = {defaults["search"]}
    entries: list[tuple[object, object]]
    if isinstance(models, dict):
        entries = list(models.items())
    elif isinstance(models, list):
        entries = []
        for entry in models:
            if not isinstance(entry, dict):
                raise _catalog_error("each model to be a JSON object", entry)
            key = entry.get("id", entry.get("model", entry.get("model_preference")))
            entries.append((key, entry))
    else:
        raise _catalog_error("'models' to be an object or a list", models)
    if len(entries) > max_models:
        raise RemoteProtocolError(f"expected at most {max_models} models in the catalog, got {len(entries)}")
    found: list[Model] = []
    for key, entry in entries:
        if not isinstance(key, str) or not key:
            raise _catalog_error("each model's id to be a non-empty string", key)
        if not isinstance(entry, Mapping):
            raise _catalog_error(f"model {key[:60]!r} to be a JSON object", entry)
        found.append(
            Model(
                id=key,
                label=_field(entry, "label"),
                description=_field(entry, "description"),
                kind=_field(entry, "mode") or "search",
                signed_in=key not in anonymous,
            )
        )
    return tuple(found)


def _field(entry: Mapping[str, Any], name: str) -> str:
    value = entry.get(name)
    return value[:200] if isinstance(value, str) else ""


# -- cookies.txt -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Cookie:
    """One cookie of a cookies.txt export.  Its ``value`` is never shown in a repr."""

    name: str
    value: str = field(repr=False)
    domain: str
    path: str = "/"
    secure: bool = False
    expires: int = 0
    """Seconds since the epoch; 0 for a session cookie."""


_FLAGS = {"TRUE": True, "FALSE": False}


def read_cookies_txt(text: str, *, now: float | None = None, domain: str = "perplexity.ai") -> tuple[Cookie, ...]:
    """The cookies for ``domain`` (and its subdomains) in a browser's cookies.txt export (Netscape format).

    Each line is ``domain, include-subdomains, path, secure, expires, name, value``
    separated by tabs; ``#`` starts a comment, except ``#HttpOnly_`` before a
    domain; blank lines are skipped; a line of six fields has an empty value.  With
    ``now`` (seconds since the epoch), cookies that expired by then are left out.
    A malformed line raises :class:`LocalProtocolError` naming its number and what
    was wrong, never its value.
    """
    if not isinstance(text, str):
        raise LocalProtocolError(f"expected the cookies.txt text as a str, got {type(text).__name__}")
    wanted = domain.lower().lstrip(".")
    found: list[Cookie] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.rstrip("\r")
        if line.startswith("#HttpOnly_"):
            line = line[len("#HttpOnly_") :]
        elif not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) == 6:
            fields.append("")
        if len(fields) != 7:
            raise LocalProtocolError(
                f"cookies.txt line {number}: expected 7 tab-separated fields (domain, include-subdomains, "
                f"path, secure, expires, name, value), got {len(fields)}"
            )
        host, subdomains, path, secure, expires, name, value = fields
        if subdomains.upper() not in _FLAGS or secure.upper() not in _FLAGS:
            raise LocalProtocolError(
                f"cookies.txt line {number}: expected TRUE or FALSE in the include-subdomains and secure fields, "
                f"got {subdomains[:10]!r} and {secure[:10]!r}"
            )
        if not expires.strip().isdigit() or len(expires.strip()) > 18:
            raise LocalProtocolError(
                f"cookies.txt line {number}: expected the expiry as a whole number of seconds (at most 18 "
                f"digits), got {expires[:20]!r}"
            )
        if not name or not host:
            raise LocalProtocolError(f"cookies.txt line {number}: expected a domain and a cookie name, got an empty one")
        bare = host.lower().lstrip(".")
        if bare != wanted and not bare.endswith("." + wanted):
            continue
        stamp = int(expires.strip())
        if now is not None and stamp and stamp <= now:
            continue
        found.append(
            Cookie(
                name=name,
                value=value,
                domain=host,
                path=path or "/",
                secure=_FLAGS[secure.upper()],
                expires=stamp,
            )
        )
    return tuple(found)


def cookie_header(cookies: Iterable[Cookie]) -> str:
    """The ``Cookie`` header value for these cookies (a later cookie of the same name wins)."""
    jar: dict[str, str] = {}
    for cookie in cookies:
        jar[cookie.name] = cookie.value
    return "; ".join(f"{name}={value}" for name, value in jar.items())
