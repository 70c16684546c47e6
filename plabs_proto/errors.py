"""The exceptions of plabs-proto.

Every error says what was expected and what arrived.  Errors raised while an
answer was streaming carry the text received so far in ``partial_text`` (and
``partial_reasoning``), so a broken stream never loses what already came.

Hierarchy::

    LabsError
    +-- LocalProtocolError      our caller used the API in a way the protocol forbids
    +-- RemoteProtocolError     bytes from the peer broke the protocol
    |   +-- HandshakeError      the server refused the handshake (HTTP status, body excerpt)
    |   |   +-- RedirectError        it answered a redirect (3xx): ``location``
    |   |   +-- RateLimitedError     it answered 429 or Cloudflare error 1015: ``retry_after``
    |   |   +-- ChallengeError       Cloudflare answered a challenge or block page (``cloudflare``)
    |   |   +-- UnexpectedPageError  an HTML page (a login page...) came where Engine.IO was expected
    |   |   +-- SignInError          the ask service wants a signed-in session (401/403, no Cloudflare page)
    |   +-- ProxyError          the proxy refused or broke the tunnel
    |   +-- TLSError            TLS failed (certificate not trusted, wrong host, ...)
    +-- ResponseError           the server reported a failure for a query (its text)
    +-- LabsTimeout             a deadline passed (connect, first text, query, heartbeat)
    +-- AnswerRewrittenError    the server rewrote answer text ``ask`` had already yielded
    +-- NetworkError            a socket failed below the protocol (refused, reset, unreachable...)

The core never raises :class:`NetworkError` (it does no I/O); the backends raise
it ``from`` the :class:`OSError` they met, so the cause stays in the traceback.

What a moved or guarded service answers, at any step of the handshake (the
polling GET that opens the session, the POSTs, the long-polling GETs, the
WebSocket upgrade), comes out as a :class:`HandshakeError` subclass of its own,
so a caller can tell "the service moved" from "come back later" from "a browser
is needed" without reading messages:

* :class:`RedirectError`: a 3xx answer.  Its ``location`` is the ``Location``
  header; the redirect is never followed (the new place may not speak Labs, or
  may be a login page): point ``server`` there yourself if you trust it.
* :class:`RateLimitedError`: 429 Too Many Requests, or Cloudflare's error 1015
  page ("You are being rate limited", also sent with 403); ``retry_after`` is
  the wait in seconds the ``Retry-After`` header asks for.
* :class:`ChallengeError`: Cloudflare's "Just a moment..." challenge (or one of
  its block pages), which only a browser gets through; ``cloudflare`` is True,
  as on every HandshakeError before these subclasses existed.
* :class:`UnexpectedPageError`: an HTML page (a login page, a portal, a site's
  home page) answered with 2xx where an Engine.IO packet, ``ok`` or a 101 was
  expected; ``title`` is the page's ``<title>``.

The values in these errors come from the server, so they are cleaned before
they are stored or shown: control and format characters removed, whitespace
runs made one space, and each cut to a bounded length (``...`` marks a cut).
"""

from __future__ import annotations

import reprlib
from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:  # typing.Unpack is Python 3.11+; only type checkers read it here
    from typing import Unpack

__all__ = [
    "AnswerFailedError",
    "AnswerRateLimitedError",
    "AnswerRewrittenError",
    "ChallengeError",
    "HandshakeError",
    "LabsError",
    "LabsTimeout",
    "LocalProtocolError",
    "NetworkError",
    "ProxyError",
    "RateLimitedError",
    "RedirectError",
    "RemoteProtocolError",
    "ResponseError",
    "SignInError",
    "TLSError",
    "UnexpectedPageError",
    "excerpt",
]

_REPR = reprlib.Repr()
_REPR.maxstring = 60
_REPR.maxother = 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = 4
_REPR.maxlevel = 2


def excerpt(value: object) -> str:
    """How an error message shows a value that arrived: ``type: repr``, cut short (60 characters of a string)."""
    if isinstance(value, str):
        return f"str: {value[:60]!r}" + ("..." if len(value) > 60 else "")
    return f"{type(value).__name__}: {_REPR.repr(value)}"


class LabsError(Exception):
    """Base class of every plabs-proto error.

    ``partial_text`` and ``partial_reasoning`` hold the answer (and reasoning)
    text that had arrived when the error happened; both are empty when no query
    was streaming (an error after an answer finished, a heartbeat timeout
    between queries, carries none: that answer is in its ``AnswerFinished``).
    """

    def __init__(self, message: str, *, partial_text: str = "", partial_reasoning: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.partial_text = partial_text
        self.partial_reasoning = partial_reasoning

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"

    def keep_partial(self, text: str, reasoning: str) -> None:
        """Keep the answer (and reasoning) so far, unless the error already holds some: a session that
        fails because of this error calls it, so that nothing that had arrived is lost."""
        if not self.partial_text:
            self.partial_text = text
        if not self.partial_reasoning:
            self.partial_reasoning = reasoning


class LocalProtocolError(LabsError):
    """The caller asked for something the protocol or the client's state does not allow."""


class RemoteProtocolError(LabsError):
    """The peer sent bytes that break the protocol (or closed the connection too early)."""


class HandshakeError(RemoteProtocolError):
    """The server refused the Engine.IO handshake or the WebSocket upgrade.

    ``status`` is the HTTP status code, ``body_excerpt`` the first bytes of the
    body as text, and ``cloudflare`` tells whether the body is a Cloudflare
    challenge or block page.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        body_excerpt: str = "",
        cloudflare: bool = False,
        partial_text: str = "",
        partial_reasoning: str = "",
    ) -> None:
        super().__init__(message, partial_text=partial_text, partial_reasoning=partial_reasoning)
        self.status = status
        self.body_excerpt = body_excerpt
        self.cloudflare = cloudflare


class _Refused(TypedDict, total=False):
    """The keyword arguments every :class:`HandshakeError` subclass passes on as they are."""

    body_excerpt: str
    partial_text: str
    partial_reasoning: str


class RedirectError(HandshakeError):
    """The server answered a step of the handshake with a redirect (3xx but 304): the service moved.

    ``location`` is the ``Location`` header (cleaned, at most 2048
    characters), or None when the redirect named no place.  The client never
    follows a redirect on its own: the new place may be another service, or a
    login page.  If you trust it, point ``server`` (and ``path``) there.
    """

    def __init__(self, message: str, *, status: int, location: str | None, **common: Unpack[_Refused]) -> None:
        super().__init__(message, status=status, **common)
        self.location = location


class RateLimitedError(HandshakeError):
    """The server (or Cloudflare, error 1015) refused a step of the handshake for too many requests.

    ``retry_after`` is how many seconds the server asks us to wait, from its
    ``Retry-After`` header, or None when it gave none that could be read.
    ``Retry-After`` is either a number of seconds or an HTTP date; a date is
    measured against the response's own ``Date`` header, so both times come
    from the server's clock (the sans-IO core reads no clock), and a date in
    the past means 0.  Without a ``Date`` header a date gives None, and
    ``retry_after_header`` (the header as sent, cleaned, at most 100
    characters; None when there was none) is there for the caller to read
    against a clock of its own.  ``cloudflare`` is True for Cloudflare's
    error 1015 page.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        retry_after: float | None,
        retry_after_header: str | None,
        cloudflare: bool = False,
        **common: Unpack[_Refused],
    ) -> None:
        super().__init__(message, status=status, cloudflare=cloudflare, **common)
        self.retry_after = retry_after
        self.retry_after_header = retry_after_header


class ChallengeError(HandshakeError):
    """Cloudflare answered a step of the handshake with its challenge (or a block page).

    The "Just a moment..." page (``cf-mitigated: challenge``) wants a browser
    to run its JavaScript; a block page ("Attention Required!") refuses the
    client outright.  Either way the client cannot go on: a browser-like
    client (the curl backend), another network or a ``cf_clearance`` cookie
    from a browser may get through.  ``cloudflare`` is always True, so code
    written for a plain :class:`HandshakeError` with ``cloudflare`` keeps
    working; ``title`` is the page's ``<title>`` (cleaned), or None.
    """

    def __init__(self, message: str, *, status: int, title: str | None = None, **common: Unpack[_Refused]) -> None:
        super().__init__(message, status=status, cloudflare=True, **common)
        self.title = title


class UnexpectedPageError(HandshakeError):
    """An HTML page came where the handshake expected Engine.IO (a packet, ``ok``, or a WebSocket).

    A login page, a captive portal or the site's home page, answered with a
    2xx status: the server at ``server``/``path`` is not (or no longer) an
    Engine.IO server, or it wants a login first.  ``title`` is the page's
    ``<title>`` (cleaned, at most 200 characters), or None;
    ``content_type`` is its ``Content-Type`` header (cleaned), or None.
    """

    def __init__(
        self, message: str, *, status: int, title: str | None, content_type: str | None, **common: Unpack[_Refused]
    ) -> None:
        super().__init__(message, status=status, **common)
        self.title = title
        self.content_type = content_type


class SignInError(HandshakeError):
    """The ask service answered 401 or 403 without a Cloudflare page: it wants a signed-in session.

    The session token (the cookie ``__Secure-next-auth.session-token``) is missing
    or expired, or the anonymous cookies of the warm-up did not come back.  Sign in
    with a browser and give its token (``session_token``) or its cookies.txt export
    (``cookies_txt``) again.
    """


class ProxyError(RemoteProtocolError):
    """The proxy refused the tunnel (bad credentials, unreachable target) or spoke nonsense.

    Proxy credentials never appear in the message.
    """


class TLSError(RemoteProtocolError):
    """The TLS handshake or record layer failed (untrusted certificate, wrong host name, ...)."""


class ResponseError(LabsError):
    """The Labs server reported a failure for a query (``status: "failed"``).

    ``server_text`` is the server's own text, e.g. ``"Error in processing query"``.
    """

    def __init__(
        self, message: str, *, server_text: str = "", partial_text: str = "", partial_reasoning: str = ""
    ) -> None:
        super().__init__(message, partial_text=partial_text, partial_reasoning=partial_reasoning)
        self.server_text = server_text


class LabsTimeout(LabsError):
    """A deadline passed.

    ``deadline`` names which one: ``"connect"``, ``"first_text"``, ``"query"``
    or ``"heartbeat"``.
    """

    def __init__(
        self, message: str, *, deadline: str, partial_text: str = "", partial_reasoning: str = ""
    ) -> None:
        super().__init__(message, partial_text=partial_text, partial_reasoning=partial_reasoning)
        self.deadline = deadline


class AnswerRewrittenError(LabsError):
    """The server rewrote answer text that a text-only API had already yielded.

    ``ask`` (and the ``PerplexityLabs`` provider) yield the answer text as it
    arrives and cannot take any of it back.  When the server's final answer
    does not begin with what was yielded (it revised text it had sent; see
    :class:`~plabs_proto.events.AnswerRevised`), they read the answer to its
    end and raise this rather than end quietly with an answer that is not the
    server's.  Nothing is lost: ``text`` and ``reasoning`` are the server's
    final answer and reasoning (``partial_text`` and ``partial_reasoning`` hold
    them too), ``yielded`` is the text that had been yielded.  Use
    ``connect()`` and ``Session.query`` to follow revisions as they happen.
    """

    def __init__(self, message: str, *, text: str, reasoning: str, yielded: str) -> None:
        super().__init__(message, partial_text=text, partial_reasoning=reasoning)
        self.text = text
        self.reasoning = reasoning
        self.yielded = yielded
class NetworkError(LabsError):
    """A connection failed below the protocol: refused, reset, timed out, unreachable, unresolvable.

    ``host`` and ``port`` name where the socket went (the proxy's, when one is used;
    proxy credentials are never part of the error) and ``errno`` is the
    :class:`OSError`'s ``errno`` (``None`` when there was none).  The backend raises
    it ``from`` that :class:`OSError`, which is its ``__cause__``.
    """

    def __init__(
        self,
        message: str,
        *,
        host: str,
        port: int,
        errno: int | None = None,
        partial_text: str = "",
        partial_reasoning: str = "",
    ) -> None:
        super().__init__(message, partial_text=partial_text, partial_reasoning=partial_reasoning)
        self.host = host
        self.port = port
        self.errno = errno


# -- errors of the Perplexity ask service (plabs_proto.perplexity) -------------------------------------


class AnswerFailedError(ResponseError):
    """The ask service reported a failure for the query (``status: "failed"``, or an ``error_code``).

    ``error_code`` is the service's code (e.g. ``"INTERNAL_ERROR"``), or None when
    it sent none; ``server_text`` is its own message (``error_message`` or ``text``).
    """

    def __init__(
        self,
        message: str,
        *,
        error_code: str | None,
        server_text: str = "",
        partial_text: str = "",
        partial_reasoning: str = "",
    ) -> None:
        super().__init__(
            message, server_text=server_text, partial_text=partial_text, partial_reasoning=partial_reasoning
        )
        self.error_code = error_code


class AnswerRateLimitedError(RateLimitedError):
    """The ask service refused the query in its answer stream for a quota (``FREE_TIER_RATE_LIMITED``).

    The HTTP answer itself was a success (``status`` is 200); the refusal came as
    a frame.  ``error_code`` is the service's code, ``server_text`` its own message
    (often empty), and ``retry_after`` is None: the stream says no time.
    """

    def __init__(
        self,
        message: str,
        *,
        error_code: str,
        server_text: str = "",
        partial_text: str = "",
        partial_reasoning: str = "",
    ) -> None:
        super().__init__(
            message,
            status=200,
            retry_after=None,
            retry_after_header=None,
            body_excerpt=server_text,
            partial_text=partial_text,
            partial_reasoning=partial_reasoning,
        )
        self.error_code = error_code
        self.server_text = server_text
