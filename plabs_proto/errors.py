"""The exceptions of plabs-proto.

Every error says what was expected and what arrived.  Errors raised while an
answer was streaming carry the text received so far in ``partial_text`` (and
``partial_reasoning``), so a broken stream never loses what already came.

Hierarchy::

    LabsError
    +-- LocalProtocolError      our caller used the API in a way the protocol forbids
    +-- RemoteProtocolError     bytes from the peer broke the protocol
    |   +-- HandshakeError      the server refused the handshake (HTTP status, body excerpt)
    |   +-- ProxyError          the proxy refused or broke the tunnel
    |   +-- TLSError            TLS failed (certificate not trusted, wrong host, ...)
    +-- ResponseError           the server reported a failure for a query (its text)
    +-- LabsTimeout             a deadline passed (connect, first text, query, heartbeat)
    +-- AnswerRewrittenError    the server rewrote answer text ``ask`` had already yielded
    +-- NetworkError            a socket failed below the protocol (refused, reset, unreachable...)

The core never raises :class:`NetworkError` (it does no I/O); the backends raise
it ``from`` the :class:`OSError` they met, so the cause stays in the traceback.
"""

from __future__ import annotations

__all__ = [
    "AnswerRewrittenError",
    "HandshakeError",
    "LabsError",
    "LabsTimeout",
    "LocalProtocolError",
    "NetworkError",
    "ProxyError",
    "RemoteProtocolError",
    "ResponseError",
    "TLSError",
]


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
