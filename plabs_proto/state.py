"""Every state of a Labs session and every move between them, in one table.

The model is h11's ``_state.py``: the session's code asks this table where a
command or a session-level input leads, and a command the state does not allow
is a :class:`~plabs_proto.errors.LocalProtocolError` naming both.  No other
module assigns a state.

========== ============================================ ==========================================
state      what it means                                 moves out of it
========== ============================================ ==========================================
IDLE       created, ``connect()`` not called yet         connect -> CONNECTING, close -> CLOSED
CONNECTING handshake under way (a query may wait)        query -> CONNECTING (it waits),
                                                         connected -> READY (QUERYING if a query
                                                         waited), close / server_closed -> CLOSED
READY      connected, no query in flight                 query -> QUERYING,
                                                         close / server_closed -> CLOSED
QUERYING   a query's answer is streaming                 answer_ended -> READY, close -> CLOSED
CLOSED     ended cleanly (our close or the server's)     close -> CLOSED (nothing happens)
ERROR      ended by an error                             close -> ERROR (nothing happens)
========== ============================================ ==========================================

Any state but CLOSED moves to ERROR on ``failed`` (an error the session
raised).  The server closing while an answer streams is not ``server_closed``
but an error: the answer was cut.
"""

from __future__ import annotations

from enum import Enum

from plabs_proto.errors import LocalProtocolError

__all__ = ["END_STATES", "SessionState", "next_state"]


class SessionState(Enum):
    """Where the session stands."""

    IDLE = "idle"  #: created, ``connect()`` not called yet
    CONNECTING = "connecting"  #: handshake under way
    READY = "ready"  #: connected, no query in flight
    QUERYING = "querying"  #: a query's answer is streaming
    CLOSED = "closed"  #: ended cleanly (our close or the server's)
    ERROR = "error"  #: ended by an error; every WebSocket was closed


IDLE, CONNECTING, READY, QUERYING, CLOSED, ERROR = (
    SessionState.IDLE,
    SessionState.CONNECTING,
    SessionState.READY,
    SessionState.QUERYING,
    SessionState.CLOSED,
    SessionState.ERROR,
)

#: States the session never leaves.
END_STATES = frozenset({CLOSED, ERROR})

#: Commands (what the user calls) ...
CONNECT, QUERY, CLOSE = "connect", "query", "close"
#: ... and session-level inputs (what the server did, as the session reads it).
CONNECTED, ANSWER_ENDED, SERVER_CLOSED, FAILED = "connected", "answer_ended", "server_closed", "failed"

TRANSITIONS: dict[tuple[SessionState, str], SessionState] = {
    (IDLE, CONNECT): CONNECTING,
    (IDLE, CLOSE): CLOSED,
    (CONNECTING, QUERY): CONNECTING,
    (CONNECTING, CONNECTED): READY,
    (CONNECTING, CLOSE): CLOSED,
    (CONNECTING, SERVER_CLOSED): CLOSED,
    (READY, QUERY): QUERYING,
    (READY, CLOSE): CLOSED,
    (READY, SERVER_CLOSED): CLOSED,
    (QUERYING, ANSWER_ENDED): READY,
    (QUERYING, CLOSE): CLOSED,
    (CLOSED, CLOSE): CLOSED,
    (ERROR, CLOSE): ERROR,
    **{(state, FAILED): ERROR for state in (IDLE, CONNECTING, READY, QUERYING, ERROR)},
}

#: What to add to the refusal of a command, for the mistakes people make.
_HINTS: dict[tuple[SessionState, str], str] = {
    (IDLE, QUERY): "; call connect() first",
    (QUERYING, QUERY): ": queries run one after another, and one is still streaming",
    (CONNECTING, CONNECT): ": connect() needs a new client (a session connects once)",
    (READY, CONNECT): ": connect() needs a new client (a session connects once)",
    (QUERYING, CONNECT): ": connect() needs a new client (a session connects once)",
}


def next_state(state: SessionState, move: str) -> SessionState:
    """Where ``move`` (a command or a session-level input) leads from ``state``.

    Raises LocalProtocolError("cannot <move> when the session is <state>") for
    a move the table does not allow.
    """
    try:
        return TRANSITIONS[(state, move)]
    except KeyError:
        raise LocalProtocolError(
            f"cannot {move} when the session is {state.value}{_HINTS.get((state, move), '')}"
        ) from None
