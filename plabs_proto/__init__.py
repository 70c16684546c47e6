"""plabs-proto: a sans-IO Perplexity Labs client.

The core (this package) parses and emits every byte of a Labs session (proxy
tunnel, TLS, HTTP/1.1, WebSocket, Engine.IO, Socket.IO, the Labs events) and
does no I/O.  :class:`LabsClient` is the entry point; the backends in
``plabs_proto.backends`` drive it over real sockets.  :class:`LabsSession` is
the level below bytes: the same session over abstract HTTP requests and
WebSocket messages, for any HTTP/WebSocket client to carry.
"""

from plabs_proto.config import TRANSPORTS, ClientConfig, SessionConfig
from plabs_proto.errors import (
    AnswerRewrittenError,
    ChallengeError,
    HandshakeError,
    LabsError,
    LabsTimeout,
    LocalProtocolError,
    NetworkError,
    ProxyError,
    RateLimitedError,
    RedirectError,
    RemoteProtocolError,
    ResponseError,
    TLSError,
    UnexpectedPageError,
)
from plabs_proto.events import (
    AnswerFinished,
    AnswerRevised,
    Citations,
    Closed,
    CloseStream,
    Connected,
    Event,
    HTTPRequest,
    Instruction,
    OpenStream,
    QueryFailed,
    ReasoningDelta,
    SendBytes,
    SessionInstruction,
    TextDelta,
    WebSocketClose,
    WebSocketConnect,
    WebSocketSend,
)
from plabs_proto.labs.answer import DEFAULT_MODEL, MODELS
from plabs_proto.labs.session import LabsSession
from plabs_proto.state import SessionState
from plabs_proto.wire.client import ClientState, LabsClient

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "MODELS",
    "TRANSPORTS",
    "AnswerFinished",
    "AnswerRevised",
    "AnswerRewrittenError",
    "ChallengeError",
    "Citations",
    "ClientConfig",
    "ClientState",
    "CloseStream",
    "Closed",
    "Connected",
    "Event",
    "HTTPRequest",
    "HandshakeError",
    "Instruction",
    "LabsClient",
    "LabsError",
    "LabsSession",
    "LabsTimeout",
    "LocalProtocolError",
    "NetworkError",
    "OpenStream",
    "ProxyError",
    "QueryFailed",
    "RateLimitedError",
    "ReasoningDelta",
    "RedirectError",
    "RemoteProtocolError",
    "ResponseError",
    "SendBytes",
    "SessionConfig",
    "SessionInstruction",
    "SessionState",
    "TLSError",
    "TextDelta",
    "UnexpectedPageError",
    "WebSocketClose",
    "WebSocketConnect",
    "WebSocketSend",
    "__version__",
]
