"""plabs-proto: a sans-IO Perplexity Labs client."""

from .errors import (
    HandshakeError,
    LabsError,
    LabsTimeout,
    LocalProtocolError,
    ProxyError,
    RemoteProtocolError,
    ResponseError,
    TLSError,
)

__all__ = [
    "HandshakeError",
    "LabsError",
    "LabsTimeout",
    "LocalProtocolError",
    "ProxyError",
    "RemoteProtocolError",
    "ResponseError",
    "TLSError",
]
