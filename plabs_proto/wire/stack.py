"""The byte-stream layers under HTTP, composed for one TCP connection.

A :class:`Layer` turns one byte stream into another: a proxy tunnel
(:class:`~plabs_proto.wire.proxy.HTTPConnectTunnel`,
:class:`~plabs_proto.wire.proxy.SOCKS5Tunnel`) or TLS
(:class:`~plabs_proto.wire.tls.TLSLayer`).  A :class:`StreamStack` stacks them,
bottom (nearest TCP) first, and moves the bytes between them::

    stack = StreamStack([HTTPConnectTunnel("example.com", 443), TLSLayer(ctx, "example.com")])
    stack.start()
    write(stack.data_to_send())             # CONNECT request
    app = stack.receive_data(read())        # "200" -> ClientHello goes out, and so on
    stack.send(b"GET / HTTP/1.1 ...")       # held until TLS is up, then encrypted and tunnelled

With no layers the stack is a plain TCP passthrough that costs one branch per call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from plabs_proto.errors import LocalProtocolError

__all__ = ["Layer", "StreamStack", "take_all"]


class Layer(Protocol):
    """One layer of a byte stream: bytes from below come up, bytes from above go down.

    A layer that is not yet :attr:`established` holds what :meth:`send` gives it and
    writes it out (after its own negotiation bytes) once it is.
    """

    def start(self) -> None:
        """Queue the opening bytes, if any (CONNECT request, SOCKS greeting, ClientHello)."""

    def receive_data(self, data: bytes) -> bytes:
        """Take bytes from the layer below (``b""`` = EOF from below); return bytes for the layer above."""

    def send(self, data: bytes) -> None:
        """Take bytes from the layer above; held until this layer is established."""

    def data_to_send(self) -> bytes:
        """Return (and forget) the bytes for the layer below."""

    @property
    def established(self) -> bool:
        """Negotiation is done and data passes through."""

    @property
    def eof(self) -> bool:
        """No more bytes will come up (the peer closed)."""


def take_all(out: list[bytes]) -> bytes:
    """What ``out`` holds as one bytes object (a lone piece is not copied); ``out`` is emptied."""
    if not out:
        return b""
    result = out[0] if len(out) == 1 else b"".join(out)
    out.clear()
    return result


class StreamStack:
    """Several :class:`Layer` objects stacked on one TCP connection, bottom first.

    ``receive_data`` takes raw TCP bytes (``b""`` for TCP EOF) and returns application
    bytes; ``send`` takes application bytes; ``data_to_send`` returns the raw bytes to
    write to TCP.  Bytes a layer wants to send go down to the layer below; bytes a layer
    lets through go up to the layer above; EOF goes up once a layer reports it.

    Bytes move up during ``receive_data``; they move down (through every layer) when
    ``data_to_send`` is called, which is the only place they can be observed.
    """

    __slots__ = ("_eof_passed", "_layers", "_out", "_tcp_eof")

    def __init__(self, layers: Sequence[Layer] = ()) -> None:
        self._layers: tuple[Layer, ...] = tuple(layers)
        # _eof_passed[i]: EOF was handed up to layer i (for the bottom layer: see _tcp_eof).
        self._eof_passed = [False] * len(self._layers)
        self._out: list[bytes] = []
        self._tcp_eof = False

    @property
    def layers(self) -> tuple[Layer, ...]:
        """The layers, bottom (nearest TCP) first."""
        return self._layers

    @property
    def established(self) -> bool:
        """Every layer has finished its negotiation (always true for plain TCP)."""
        return all(layer.established for layer in self._layers)

    @property
    def eof(self) -> bool:
        """The application-level stream has ended: no more bytes will come up."""
        if not self._layers:
            return self._tcp_eof
        return self._layers[-1].eof

    def start(self) -> None:
        """Start every layer: each one queues its opening bytes (held by the layers below)."""
        for layer in self._layers:
            layer.start()

    def receive_data(self, data: bytes) -> bytes:
        """Feed raw TCP bytes (``b""`` = TCP EOF); return the application bytes they carried.

        Errors from a layer (:class:`~plabs_proto.errors.ProxyError`,
        :class:`~plabs_proto.errors.TLSError`, ...) propagate unchanged.
        """
        if self._tcp_eof:
            if not data:
                return b""
            raise LocalProtocolError(
                f"cannot receive data after TCP EOF: expected nothing more, got {data[:60]!r}"
            )
        layers = self._layers
        if not layers:
            if not data:
                self._tcp_eof = True
            return data
        if not data:
            self._tcp_eof = True
        eof_passed = self._eof_passed
        top = len(layers) - 1
        # ``pieces`` is what goes into the current layer, in order; b"" stands for EOF.
        pieces = [data]
        for index, layer in enumerate(layers):
            outputs: list[bytes] = []
            for piece in pieces:
                out = layer.receive_data(piece)
                if out:
                    outputs.append(out)
            if index < top and layer.eof and not eof_passed[index + 1]:
                eof_passed[index + 1] = True
                outputs.append(b"")
            pieces = outputs
            if not pieces:
                return b""
        if len(pieces) == 1:
            return pieces[0]
        return b"".join(pieces)

    def send(self, data: bytes) -> None:
        """Queue application bytes (encrypted/tunnelled as the layers require)."""
        if not data:
            return
        if self._layers:
            self._layers[-1].send(data)
        else:
            self._out.append(data)

    def data_to_send(self) -> bytes:
        """Return (and forget) the raw bytes to write to TCP."""
        layers = self._layers
        if layers:
            # Top to bottom, so bytes travel all the way down in one pass.
            for index in range(len(layers) - 1, 0, -1):
                chunk = layers[index].data_to_send()
                if chunk:
                    layers[index - 1].send(chunk)
            chunk = layers[0].data_to_send()
            if chunk:
                self._out.append(chunk)
        return take_all(self._out)
