"""TLS as a sans-IO :class:`~plabs_proto.wire.stack.Layer`: ``ssl.SSLObject`` over two ``ssl.MemoryBIO``.

Certificate verification is always on: :func:`check_ssl_context` refuses a context
that would skip it.

:func:`make_ssl_context` offers what Chrome offers where Python's ``ssl`` lets us say
it: TLS 1.3 first (then 1.2), Chrome's TLS 1.2 cipher suites in Chrome's order
(:data:`CHROME_TLS12_CIPHERS`), and OpenSSL's default groups, which already put
X25519 first as Chrome does.  What the standard library cannot change, so that the
ClientHello (its JA3/JA4 fingerprint) stays recognisably not Chrome's:

* no GREASE values (RFC 8701), which Chrome puts among its suites, extensions and groups;
* the extension list and its order (Chrome shuffles its own; it also sends
  compress_certificate, application_settings, encrypted_client_hello, which OpenSSL does not);
* the TLS 1.3 suites' order (OpenSSL offers AES-256-GCM first, Chrome AES-128-GCM:
  ``ssl`` has no ``set_ciphersuites``), the groups (Chrome 131 offers X25519MLKEM768
  first; Python 3.11 has no ``set_groups``) and the signature algorithms;
* ALPN: Chrome offers ``h2, http/1.1``; we offer only ``http/1.1``, the one protocol we speak.

For Chrome's ClientHello itself use the curl backend (``--backend curl``).
"""

from __future__ import annotations

import os
import ssl

from plabs_proto.errors import LocalProtocolError, TLSError

__all__ = ["CHROME_TLS12_CIPHERS", "TLSLayer", "check_ssl_context", "make_ssl_context"]

_READ_SIZE = 65536

#: Chrome's TLS 1.2 cipher suites, in Chrome's order: ECDHE with AES-128-GCM, AES-256-GCM and
#: ChaCha20-Poly1305, ECDSA before RSA.  Chrome offers six legacy suites after them (ECDHE with
#: AES-CBC-SHA1, and RSA key exchange without forward secrecy), left out here on purpose: they
#: would weaken a connection for a fingerprint that GREASE and the extension order give away anyway.
CHROME_TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
)


def make_ssl_context(cafile: str | os.PathLike[str] | None = None) -> ssl.SSLContext:
    """A verifying client context: system CAs (or ``cafile``), ALPN ``http/1.1``, TLS 1.2 or newer.

    TLS 1.3 is offered first; for TLS 1.2 the suites are Chrome's, in Chrome's order (see the
    module docstring for what cannot be made Chrome's).  A caller's own ``ssl_context`` is
    used as it is.
    """
    try:
        context = ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        path = cafile if cafile is None else os.fspath(cafile)  # (a Path shown as its path, not its repr)
        raise LocalProtocolError(f"expected a readable PEM CA file at {path!r}, could not load it: {reason}") from exc
    context.set_alpn_protocols(["http/1.1"])  # Chrome offers h2 too; we speak HTTP/1.1 only
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(":".join(CHROME_TLS12_CIPHERS))
    return context


def check_ssl_context(context: ssl.SSLContext) -> None:
    """Raise :class:`LocalProtocolError` unless ``context`` verifies certificates and host names."""
    if not isinstance(context, ssl.SSLContext):
        raise LocalProtocolError(f"expected an ssl.SSLContext, got {type(context).__name__}")
    if context.protocol == ssl.PROTOCOL_TLS_SERVER:
        raise LocalProtocolError(
            "expected a client-side ssl.SSLContext (for example from make_ssl_context()), "
            "got one made with PROTOCOL_TLS_SERVER"
        )
    if context.verify_mode == ssl.CERT_NONE:
        raise LocalProtocolError(
            "the ssl.SSLContext has verify_mode == CERT_NONE: certificate verification cannot be "
            "turned off; to trust a private CA pass its certificate as make_ssl_context(cafile=...)"
        )
    if not context.check_hostname:
        raise LocalProtocolError(
            "the ssl.SSLContext has check_hostname == False: host name checking cannot be turned off; "
            "to trust a private CA pass its certificate as make_ssl_context(cafile=...)"
        )


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith(".") else text + "."


class TLSLayer:
    """The client side of TLS to ``server_hostname`` (SNI and certificate host name).

    The handshake starts with :meth:`start` (ClientHello) and is driven by
    :meth:`receive_data`.  Application data given to :meth:`send` before the handshake
    completes is held and encrypted right after it.  A close_notify from the peer, or a
    TCP EOF after the handshake, sets :attr:`eof` (a truncated stream is left for the
    HTTP framing above to notice).  Failures raise :class:`~plabs_proto.errors.TLSError`.
    """

    def __init__(self, context: ssl.SSLContext, server_hostname: str) -> None:
        check_ssl_context(context)
        if not server_hostname:
            raise LocalProtocolError("expected a server host name for TLS (SNI), got an empty one")
        self._hostname = server_hostname
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        try:
            self._ssl = context.wrap_bio(self._incoming, self._outgoing, server_hostname=server_hostname)
        except (ValueError, TypeError, ssl.SSLError) as exc:  # (TypeError: a NUL byte in the name)
            raise LocalProtocolError(f"cannot start TLS to {server_hostname!r}: {exc}") from exc
        self._established = False
        self._eof = False
        self._closed = False
        self._pending: list[bytes] = []
        # The first bytes the peer sent during the handshake, for error messages.
        self._first_bytes = b""

    # -- properties --------------------------------------------------------------

    @property
    def established(self) -> bool:
        """The handshake is complete (the certificate was verified)."""
        return self._established

    @property
    def eof(self) -> bool:
        """The peer closed its side (close_notify, or TCP EOF after the handshake)."""
        return self._eof

    @property
    def server_hostname(self) -> str:
        return self._hostname

    @property
    def alpn_protocol(self) -> str | None:
        """The ALPN protocol the server selected (``"http/1.1"``), or None."""
        return self._ssl.selected_alpn_protocol()

    @property
    def version(self) -> str | None:
        """The negotiated TLS version (``"TLSv1.3"``), or None before the handshake."""
        return self._ssl.version()

    # -- Layer -------------------------------------------------------------------

    def start(self) -> None:
        """Queue the ClientHello."""
        if not self._established:
            self._do_handshake()

    def receive_data(self, data: bytes) -> bytes:
        """Feed TLS records (``b""`` = TCP EOF); return the plaintext they carried."""
        if not data:
            return self._receive_eof()
        if self._eof:
            # The TLS stream has ended; whatever follows is no longer TLS.  Ignore it.
            return b""
        if not self._established:
            if len(self._first_bytes) < 60:
                self._first_bytes += data[: 60 - len(self._first_bytes)]
            self._incoming.write(data)
            if not self._do_handshake():
                return b""
            if self._pending:
                pending, self._pending = self._pending, []
                for chunk in pending:
                    self._write(chunk)
        else:
            self._incoming.write(data)
        return self._read_all()

    def send(self, data: bytes) -> None:
        """Encrypt application bytes (held until the handshake completes)."""
        if self._closed:
            raise LocalProtocolError(
                f"cannot send on the TLS connection to {self._hostname!r}: close() was called"
            )
        if not data:
            return
        if self._established:
            self._write(data)
        else:
            self._pending.append(data)

    def data_to_send(self) -> bytes:
        """Return (and forget) the TLS records to write below."""
        if self._outgoing.pending:
            return self._outgoing.read()
        return b""

    def close(self) -> None:
        """Queue a close_notify; later :meth:`send` calls are refused."""
        if self._closed:
            return
        self._closed = True
        self._pending = []
        if not self._established:
            return
        try:
            self._ssl.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass  # close_notify is queued; the peer's own is not awaited
        except ssl.SSLError as exc:
            raise self._error(exc) from exc

    # -- internals ---------------------------------------------------------------

    def _do_handshake(self) -> bool:
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            return False
        except ssl.SSLError as exc:
            raise self._error(exc) from exc
        self._established = True
        return True

    def _write(self, data: bytes) -> None:
        try:
            self._ssl.write(data)
        except ssl.SSLError as exc:
            raise self._error(exc) from exc

    def _read_all(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            try:
                chunk = self._ssl.read(_READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self._eof = True
                break
            except ssl.SSLError as exc:
                raise self._error(exc) from exc
            if not chunk:
                self._eof = True
                break
            chunks.append(chunk)
        if len(chunks) == 1:
            return chunks[0]
        return b"".join(chunks)

    def _receive_eof(self) -> bytes:
        if self._eof:
            return b""
        if not self._established:
            got = f"EOF after {self._first_bytes!r}" if self._first_bytes else "EOF before any reply"
            raise TLSError(
                f"the connection to {self._hostname!r} was closed during the TLS handshake: "
                f"expected the server's handshake messages, got {got}"
            )
        self._eof = True
        self._incoming.write_eof()
        # Hand up any plaintext still buffered; a ragged EOF (SSLEOFError) is tolerated there.
        return self._read_all()

    def _error(self, exc: ssl.SSLError) -> TLSError:
        if isinstance(exc, ssl.SSLCertVerificationError):
            reason = exc.verify_message or exc.reason or str(exc)
            return TLSError(f"TLS certificate for {self._hostname!r} was not accepted: {_sentence(reason)}")
        what = "handshake" if not self._established else "connection"
        detail = f"{exc.reason} ({exc})" if exc.reason else str(exc)
        message = f"TLS {what} with {self._hostname!r} failed: {detail}"
        if not self._established:
            message += f"; expected a TLS server's reply, got {self._first_bytes!r}"
        return TLSError(message)
