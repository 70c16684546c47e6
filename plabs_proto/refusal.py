"""What a refusal means: the server's answer to a handshake step, read into the right error.

A moved or guarded service does not answer an Engine.IO handshake with a
protocol error, it answers like a web site: a redirect, a 429, Cloudflare's
challenge or rate-limit page, a login page.  :func:`refusal` reads a response
whose status is not the one expected, :func:`unexpected_page` a 2xx response
that is an HTML page where Engine.IO was expected, and both return the
:class:`~plabs_proto.errors.HandshakeError` subclass that says so (see
:mod:`plabs_proto.errors`).  The session raises what they return.

Everything taken from the response is hostile until cleaned (:func:`clean`):
no control or format characters (a terminal escape in a ``<title>`` must not
reach the caller's terminal), one space for any run of whitespace, and a bound
on the length.  Pages are read only in their first :data:`SCAN` bytes, with
plain ``find`` calls, so a huge or crafted page costs linear time at most.
"""

from __future__ import annotations

import email.utils
import html
import json
import re
import unicodedata
from datetime import datetime, timezone

from plabs_proto.errors import (
    ChallengeError,
    HandshakeError,
    RateLimitedError,
    RedirectError,
    UnexpectedPageError,
)
from plabs_proto.jsondepth import too_deep
from plabs_proto.messages import HTTPResponse, looks_like_cloudflare

__all__ = ["SCAN", "clean", "is_page", "page_title", "refusal", "retry_after_seconds", "unexpected_page"]

#: How much of a body is searched for a title or a marker.
SCAN = 64 * 1024
#: Bounds of the values kept from the server.
EXCERPT_LIMIT = 200
TITLE_LIMIT = 200
LOCATION_LIMIT = 2048
HEADER_LIMIT = 100
#: The longest delay-seconds value read (15 digits: about 31 million years).
_MAX_DIGITS = 15
#: The longest HTTP date read ("Sunday, 06-Nov-1994 08:49:37 GMT" is 33 characters).
_MAX_DATE = 64
_DIGITS = re.compile(r"[0-9]+")

#: Cloudflare's error 1015 ("You are being rate limited"), as its HTML and plain-text pages say it.
_RATE_LIMIT_MARKERS = (b"error code: 1015", b'cf-error-code">1015<', b"you are being rate limited")
_HTML_TYPES = ("text/html", "application/xhtml+xml")


def clean(text: str, limit: int) -> str:
    """``text`` made safe to show: no control/format characters, single spaces, at most ``limit`` characters.

    Tabs and line breaks become spaces first; every other character of a
    Unicode category ``C*`` (control, format such as a bidi override,
    surrogate, private use, unassigned) is dropped.  A cut text ends in
    ``...`` (counted in ``limit``).
    """
    text = text[: limit * 4 + 64]  # more than enough to fill limit after cleaning, bounded
    kept = "".join(
        " " if char.isspace() else char for char in text if char.isspace() or unicodedata.category(char)[0] != "C"
    )
    kept = " ".join(kept.split())
    return kept if len(kept) <= limit else kept[: max(limit - 3, 0)] + "..."


def page_title(body: bytes) -> str | None:
    """The cleaned ``<title>`` of an HTML page (its first one, within :data:`SCAN` bytes), or None."""
    head = body[:SCAN]
    lower = head.lower()  # bytes.lower changes ASCII letters only: offsets stay the same
    start = lower.find(b"<title")
    if start < 0:
        return None
    start = lower.find(b">", start)
    if start < 0:
        return None
    end = lower.find(b"</title", start)
    raw = head[start + 1 : end if end >= 0 else start + 1 + 4 * TITLE_LIMIT][: 4 * TITLE_LIMIT]
    title = clean(html.unescape(raw.decode("utf-8", "replace")), TITLE_LIMIT)
    return title or None


def retry_after_seconds(value: str | None, date: str | None) -> float | None:
    """The seconds a ``Retry-After`` of ``value`` asks for, or None when it cannot be read.

    ``value`` is delay-seconds (digits) or an HTTP date (RFC 9110 10.2.3).  A
    date is counted from ``date``, the response's ``Date`` header, as both come
    from the server's clock; without a readable ``date`` it gives None, and a
    date already past gives 0.  Never raises, whatever the strings hold.
    """
    if value is None:
        return None
    value = value.strip()
    if _DIGITS.fullmatch(value[: _MAX_DIGITS + 1]) and len(value) <= _MAX_DIGITS:
        return float(int(value))
    until = _http_date(value)
    now = _http_date(date)
    if until is None or now is None:
        return None
    return max((until - now).total_seconds(), 0.0)


def _http_date(value: str | None) -> datetime | None:
    """An HTTP date (any of the three forms RFC 9110 names) as an aware datetime, or None."""
    if value is None or len(value) > _MAX_DATE:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None  # the stdlib parser's ways of saying "not a date"
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


def _got(response: HTTPResponse) -> str:
    return f"HTTP {response.status} {clean(response.reason, HEADER_LIMIT)}".rstrip()


def _excerpt(response: HTTPResponse) -> str:
    return clean(response.body[: 4 * EXCERPT_LIMIT + 64].decode("utf-8", "replace"), EXCERPT_LIMIT)


def _header(response: HTTPResponse, name: str, limit: int = HEADER_LIMIT) -> str | None:
    value = response.header(name)
    return None if value is None else clean(value, limit)


def is_page(response: HTTPResponse) -> bool:
    """True when the body is an HTML page rather than Engine.IO.

    Engine.IO bodies start with a digit (a packet type, or a v3 length); a
    body that does not, and starts with ``<`` or comes as ``text/html``, is a
    page.
    """
    body = response.body[:1024].lstrip(b" \t\r\n\xef\xbb\xbf")  # (and a UTF-8 byte order mark)
    if body[:1].isdigit():
        return False
    kind = (response.header("content-type") or "").split(";", 1)[0].strip().lower()
    return body[:1] == b"<" or kind in _HTML_TYPES


def unexpected_page(response: HTTPResponse, what: str, expected: str) -> UnexpectedPageError | None:
    """The error for an HTML page answered where ``expected`` was, or None when the body is no page."""
    if not is_page(response):
        return None
    title = page_title(response.body)
    kind = _header(response, "content-type")
    named = f"titled {title!r}" if title else "with no title"
    shown = f"{_got(response)}, {kind}" if kind else _got(response)
    return UnexpectedPageError(
        f"expected {expected} from {what}, got an HTML page ({shown}) {named}: a login or web page, "
        "not the Engine.IO server (check server= and path=, or whether the service wants a login)",
        status=response.status,
        title=title,
        content_type=kind,
        body_excerpt=_excerpt(response),
    )


def refusal(response: HTTPResponse, what: str, expected: int) -> HandshakeError:
    """The error for ``what`` answered with a status other than ``expected``.

    In this order: a redirect (3xx but 304), Cloudflare's rate limit (error
    1015, whatever the status), a 429, a Cloudflare challenge or block page,
    an HTML page answered with 2xx, and otherwise a plain
    :class:`HandshakeError` (naming the Engine.IO error of a JSON body).
    """
    status = response.status
    got = _got(response)
    excerpt = _excerpt(response)
    if 300 <= status < 400 and status != 304:
        location = _header(response, "location", LOCATION_LIMIT)
        where = f"to {clean(location, EXCERPT_LIMIT)!r}" if location else "with no Location"
        return RedirectError(
            f"expected HTTP {expected} for {what}, got {got} redirecting {where}: the service moved; "
            "redirects are not followed (point server= at the new address if you trust it)",
            status=status,
            location=location,
            body_excerpt=excerpt,
        )
    head = response.body[:SCAN].lower()
    cloudflare_limit = any(marker in head for marker in _RATE_LIMIT_MARKERS)
    if cloudflare_limit or status == 429:
        header = _header(response, "retry-after")
        seconds = retry_after_seconds(response.header("retry-after"), response.header("date"))
        by = " by Cloudflare (error 1015)" if cloudflare_limit else ""
        if header is None:
            wait = "no Retry-After"
        elif seconds is None:
            wait = f"Retry-After {header!r} (not a delay we can read)"
        else:
            wait = f"Retry-After {header!r}: retry in {seconds:g} s"
        return RateLimitedError(
            f"expected HTTP {expected} for {what}, got {got}: rate limited{by}; {wait}",
            status=status,
            retry_after=seconds,
            retry_after_header=header,
            body_excerpt=excerpt,
            cloudflare=cloudflare_limit or looks_like_cloudflare(response),
        )
    if looks_like_cloudflare(response):
        title = page_title(response.body)
        named = f" ({title!r})" if title else ""
        return ChallengeError(
            f"Cloudflare blocked {what}: expected HTTP {expected}, got {got} with a Cloudflare challenge "
            f"page{named}; only a browser-like client gets through (try the curl backend)",
            status=status,
            title=title,
            body_excerpt=excerpt,
        )
    if 200 <= status < 300:
        page = unexpected_page(response, what, f"HTTP {expected}")
        if page is not None:
            return page
    detail = ""
    full = response.text()
    if not too_deep(full):
        try:
            body = json.loads(full)
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("message"), str):
            code = clean(str(body.get("code")), 20)
            detail = f" (Engine.IO error {code}: {clean(body['message'], EXCERPT_LIMIT)})"
    return HandshakeError(
        f"the server refused {what}: expected HTTP {expected}, got {got}{detail}: {excerpt!r}",
        status=status,
        body_excerpt=excerpt,
    )
