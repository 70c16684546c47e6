"""plabs-proto: a sans-IO Perplexity client, two services on one core: Perplexity Labs (Socket.IO v5 over
Engine.IO v4, retired in 2025, still the default) and the ask endpoint the web app uses today (Server-Sent Events).

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

The layers: ``events``, ``errors``, ``config``, ``messages``, ``state`` and
``refusal`` are the vocabulary every layer shares; ``labs/`` is the Labs service (the Engine.IO
codec and session, the Socket.IO codec, the answer, :class:`LabsSession`);
``perplexity/`` is the ask service (the SSE decoder, the answer, the requests,
:class:`PerplexitySession`);
``wire/`` is the byte level.  A layer calls down and reads events back; none
calls up, and none reads another's private names.

One Labs answer frame, from the socket to the user's text (asyncio; trio and sync
differ only in step 1; an ask-service event takes steps 1 to 3, then ``HTTPChannel.receive_pieces``
and ``PerplexitySession.receive_http_body``, ``SSEDecoder.feed_raw``, ``FrameLoader.load`` (which decodes
only what follows the members a frame shares with the one before) and ``AnswerDecoder.feed``, then 6 to 8):

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

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers see; at run time __getattr__ imports on first use
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

_EXPORTS: dict[str, str] = {  # name -> the module it comes from
    "SERVICES": "plabs_proto.config",
    "TRANSPORTS": "plabs_proto.config",
    "ClientConfig": "plabs_proto.config",
    "SessionConfig": "plabs_proto.config",
    "AnswerFailedError": "plabs_proto.errors",
    "AnswerRateLimitedError": "plabs_proto.errors",
    "AnswerRewrittenError": "plabs_proto.errors",
    "ChallengeError": "plabs_proto.errors",
    "HandshakeError": "plabs_proto.errors",
    "LabsError": "plabs_proto.errors",
    "LabsTimeout": "plabs_proto.errors",
    "LocalProtocolError": "plabs_proto.errors",
    "NetworkError": "plabs_proto.errors",
    "ProxyError": "plabs_proto.errors",
    "RateLimitedError": "plabs_proto.errors",
    "RedirectError": "plabs_proto.errors",
    "RemoteProtocolError": "plabs_proto.errors",
    "ResponseError": "plabs_proto.errors",
    "SignInError": "plabs_proto.errors",
    "TLSError": "plabs_proto.errors",
    "UnexpectedPageError": "plabs_proto.errors",
    "AnswerFinished": "plabs_proto.events",
    "AnswerRevised": "plabs_proto.events",
    "Citations": "plabs_proto.events",
    "Closed": "plabs_proto.events",
    "CloseStream": "plabs_proto.events",
    "Connected": "plabs_proto.events",
    "Event": "plabs_proto.events",
    "HTTPRequest": "plabs_proto.events",
    "Instruction": "plabs_proto.events",
    "OpenStream": "plabs_proto.events",
    "QueryFailed": "plabs_proto.events",
    "ReasoningDelta": "plabs_proto.events",
    "SearchQueries": "plabs_proto.events",
    "SendBytes": "plabs_proto.events",
    "SessionInstruction": "plabs_proto.events",
    "SourcesRead": "plabs_proto.events",
    "TextDelta": "plabs_proto.events",
    "ThreadIdentity": "plabs_proto.events",
    "TransportSwitched": "plabs_proto.events",
    "WebSocketClose": "plabs_proto.events",
    "WebSocketConnect": "plabs_proto.events",
    "WebSocketSend": "plabs_proto.events",
    "DEFAULT_MODEL": "plabs_proto.labs.answer",
    "MODELS": "plabs_proto.labs.answer",
    "LabsSession": "plabs_proto.labs.session",
    "PerplexitySession": "plabs_proto.perplexity.session",
    "SessionState": "plabs_proto.state",
    "Client": "plabs_proto.wire.client",
    "ClientState": "plabs_proto.wire.client",
    "LabsClient": "plabs_proto.wire.client",
    "PerplexityClient": "plabs_proto.wire.client",
}


def __getattr__(name: str) -> Any:
    """The names of ``__all__`` and the submodules, imported when first used (PEP 562).

    ``import plabs_proto`` then costs next to nothing, so a program built on it (the ``plabs``
    command) starts its own code, and its Ctrl-C handling, before the heavy imports.
    """
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
    else:
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


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
