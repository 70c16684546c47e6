"""plabs-proto: a sans-IO Perplexity client (Perplexity Labs: Socket.IO v5 over Engine.IO v4).

The core (this package) parses and emits every byte of a session and does no
I/O; the backends in ``plabs_proto.backends`` carry it over real sockets.

Glossary (one word per concept, in the code, the tests and the README):

session
    A service's protocol state machine at the message level: it asks for HTTP
    requests and WebSocket messages and takes what came back
    (:class:`LabsSession`; beneath it, the Engine.IO layer's
    :class:`~plabs_proto.labs.engineio_session.EngineIOSession`; the ask
    endpoint's :class:`PerplexitySession`).  It knows no
    byte of HTTP or WebSocket.
client
    The byte level: a session carried over streams (:class:`~plabs_proto.wire.client.Client`,
    :class:`LabsClient`, :class:`PerplexityClient`): HTTP/1.1, WebSocket, TLS, proxy tunnels, cookies.
carrier
    Whatever carries a session's instructions and reports back: the client,
    the curl backend, or your own aiohttp/httpx code.
stream
    One TCP connection of the client (``OpenStream``, ``SendBytes``,
    ``CloseStream``, ``stream_id``).
connection
    What a backend's ``connect()`` returns: one session, opened, for several
    queries (``plabs_proto.backends.asyncio.Connection`` and its siblings).
backend, driver, network
    A backend is the I/O of one kind of program (asyncio, trio, blocking, curl);
    its driver runs the client over a network (the seam: open, write, wait).
answer, query
    What ``ask()`` yields (the text) and what ``Connection.query()`` yields (the events).
event, instruction
    What a session or client hands up (``TextDelta``...) and what it asks its
    carrier to do (``HTTPRequest``..., ``OpenStream``...): frozen dataclasses.

The layers: ``events``, ``errors``, ``config``, ``state`` and ``refusal`` are
the vocabulary every layer shares; ``labs/`` is the Labs service (the Engine.IO
codec and session, the Socket.IO codec, the answer, :class:`LabsSession`);
``perplexity/`` is the ask service (the SSE decoder, the answer, the requests,
:class:`PerplexitySession`);
``wire/`` is the byte level.  A layer calls down and reads events back; none
calls up, and none reads another's private names.

One answer frame, from the socket to the user's text (asyncio; trio and sync
differ only in step 1):

1. the stream's protocol keeps the bytes; ``AsyncioNetwork.receive`` hands them to the driver;
2. ``Driver`` calls ``Client.receive_data(stream_id, data, now)``;
3. ``StreamStack.receive_data`` (TLS over MemoryBIO) gives the bytes above TLS;
4. ``WebSocketChannel.receive_data`` gives the messages (``Utf8Text``, not decoded);
5. ``LabsSession.receive_websocket_messages`` hands them to
   ``EngineIOSession.receive_websocket_messages``, then reads
   ``EngineIOSession.next_event()``: a ``Message`` (the ``4...`` text, undecoded);
6. ``CumulativeFrameReader.read_bytes`` reads the Socket.IO event by the bytes it
   shares with the previous frame, and ``AnswerDecoder.feed`` gives a ``TextDelta``,
   kept in the session's queue (the one place events wait);
7. ``AsyncAnswer.next_item`` takes it with ``Client.next_event()`` (the session's
   ``next_event()``), or awaits ``Driver.next_event()``, which pumps until there is one;
8. ``AnswerText.take`` gives the text that is new to the user.
"""

from plabs_proto.config import SERVICES, TRANSPORTS, ClientConfig, SessionConfig
from plabs_proto.errors import (
    AnswerFailedError,
    AnswerRateLimitedError,
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
    SignInError,
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
    SearchQueries,
    SendBytes,
    SessionInstruction,
    SourcesRead,
    TextDelta,
    ThreadIdentity,
    TransportSwitched,
    WebSocketClose,
    WebSocketConnect,
    WebSocketSend,
)
from plabs_proto.labs.answer import DEFAULT_MODEL, MODELS
from plabs_proto.labs.session import LabsSession
from plabs_proto.perplexity.session import PerplexitySession
from plabs_proto.state import SessionState
from plabs_proto.wire.client import Client, ClientState, LabsClient, PerplexityClient

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "MODELS",
    "SERVICES",
    "TRANSPORTS",
    "AnswerFailedError",
    "AnswerFinished",
    "AnswerRateLimitedError",
    "AnswerRevised",
    "AnswerRewrittenError",
    "ChallengeError",
    "Citations",
    "Client",
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
    "PerplexityClient",
    "PerplexitySession",
    "ProxyError",
    "QueryFailed",
    "RateLimitedError",
    "ReasoningDelta",
    "RedirectError",
    "RemoteProtocolError",
    "ResponseError",
    "SearchQueries",
    "SendBytes",
    "SessionConfig",
    "SessionInstruction",
    "SessionState",
    "SignInError",
    "SourcesRead",
    "TLSError",
    "TextDelta",
    "ThreadIdentity",
    "TransportSwitched",
    "UnexpectedPageError",
    "WebSocketClose",
    "WebSocketConnect",
    "WebSocketSend",
    "__version__",
]
