"""The errors a backend raises itself, worded once: a socket's failure (:func:`stream_error`),
a session that ended too early (:func:`closed_error`), and the events that end a query's
stream (:func:`check_event`) or a session's opening (:func:`opened`)."""

from __future__ import annotations

from plabs_proto.errors import NetworkError, RemoteProtocolError
from plabs_proto.events import AnswerFinished, Closed, Connected, Event, QueryFailed

__all__ = ["check_event", "closed_error", "opened", "stream_error"]


def _peer(host: str, port: int, proxied: bool) -> str:
    if not host:
        return "the server"
    shown = f"[{host}]" if ":" in host else host
    return f"the {'proxy' if proxied else 'server'} at {shown}:{port}"


def stream_error(
    exc: BaseException,
    *,
    action: str,
    host: str,
    port: int,
    proxied: bool,
    partial_text: str = "",
    partial_reasoning: str = "",
) -> NetworkError:
    """A :class:`NetworkError` for a connection's failure (``action`` is "connect to", "send to"...).

    It names where the socket went (``host`` ``""``: not known; the proxy when one is used,
    never its credentials), the error with its errno, and how much of the answer came.
    ``exc`` becomes its ``__cause__``, also when the backend keeps the error to raise later.
    """
    what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    got = f" after {len(partial_text)} characters of the answer" if partial_text else ""
    error = NetworkError(
        f"expected to {action} {_peer(host, port, proxied)}, but the connection failed{got} ({what})",
        host=host,
        port=port,
        errno=exc.errno if isinstance(exc, OSError) else None,
        partial_text=partial_text,
        partial_reasoning=partial_reasoning,
    )
    error.__cause__ = exc
    return error


def closed_error(reason: str, *, partial_text: str, partial_reasoning: str) -> RemoteProtocolError:
    """The error for a session that ended (``Closed`` event) while an answer or the connect ack was awaited."""
    return RemoteProtocolError(
        f"expected the answer to finish, but the session ended: {reason}",
        partial_text=partial_text,
        partial_reasoning=partial_reasoning,
    )


def check_event(event: Event, *, partial_text: str, partial_reasoning: str) -> bool:
    """Judge an event met while a query streams: True once the answer is finished.

    ``QueryFailed`` raises its :class:`~plabs_proto.errors.ResponseError`; ``Closed``
    raises :func:`closed_error`.  Anything else is False.
    """
    if type(event) is AnswerFinished:
        return True
    if isinstance(event, QueryFailed):
        raise event.error()
    if isinstance(event, Closed):
        raise closed_error(event.reason, partial_text=partial_text, partial_reasoning=partial_reasoning)
    return False


def opened(event: Event) -> bool:
    """Judge an event met while a session opens: True for ``Connected``; ``Closed`` raises :func:`closed_error`."""
    if isinstance(event, Closed):
        raise closed_error(event.reason, partial_text="", partial_reasoning="")
    return type(event) is Connected
