"""Proxy tunnels as sans-IO :class:`~plabs_proto.wire.stack.Layer` objects, and proxy URLs.

* :class:`HTTPConnectTunnel`: ``CONNECT host:port`` through an HTTP proxy (h11, client role).
* :class:`SOCKS5Tunnel`: SOCKS5 ``CONNECT`` (socksio encodes the requests; replies are
  buffered here until complete, since socksio expects one whole reply per call).
* :class:`ProxyConfig` / :func:`parse_proxy_url`: ``http://`` and ``socks5://`` URLs.

Proxy passwords never appear in a repr, a str or an error message.
"""

from __future__ import annotations

import base64
import ipaddress
from abc import ABC, abstractmethod
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import quote, unquote

import h11
from socksio import socks5

from plabs_proto.errors import LocalProtocolError, ProxyError
from plabs_proto.wire.stack import take_all

__all__ = ["HTTPConnectTunnel", "ProxyConfig", "SOCKS5Tunnel", "parse_proxy_url"]

_DEFAULT_PORTS = {"http": 8080, "socks5": 1080}
_SCHEMES = {"http": "http", "socks5": "socks5", "socks5h": "socks5"}
# Longest response head accepted from an HTTP proxy before the tunnel is up.
_MAX_RESPONSE_HEAD = 16384
_BAD_HOST_CHARS = frozenset(" \t\r\n/\\?#@[]:%<>\"'`{}|^")


# -- configuration ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, repr=False)
class ProxyConfig:
    """Where the proxy is and how to log in to it.  ``repr``/``str`` hide the password."""

    scheme: str  # "http" or "socks5"
    host: str
    port: int
    username: str | None = None
    password: str | None = None

    def __post_init__(self) -> None:
        if self.scheme not in _DEFAULT_PORTS:
            raise LocalProtocolError(f"expected proxy scheme 'http' or 'socks5', got {self.scheme!r}")
        if not self.host:
            raise LocalProtocolError("expected a proxy host, got an empty one")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise LocalProtocolError(f"expected a proxy port between 1 and 65535, got {self.port!r}")

    @property
    def redacted_url(self) -> str:
        """The proxy URL with the password replaced by ``***``: ``socks5://user:***@host:1080``."""
        userinfo = ""
        if self.username is not None:
            userinfo = quote(self.username, safe="")
            if self.password is not None:
                userinfo += ":***"
            userinfo += "@"
        return f"{self.scheme}://{userinfo}{_host_port(self.host, self.port)}"

    def __repr__(self) -> str:
        password = None if self.password is None else "***"
        return (
            f"ProxyConfig(scheme={self.scheme!r}, host={self.host!r}, port={self.port!r}, "
            f"username={self.username!r}, password={password!r})"
        )

    __str__ = __repr__


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _redact_url(url: str) -> str:
    """``url`` with everything after the first ``:`` of the user info replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    # The last "@" ends the user info, even if the password holds unescaped "/", "?" or "#".
    userinfo, at, hostpart = rest.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        rest = user + (":***" if colon else "") + "@" + hostpart
    return scheme + sep + rest


def parse_proxy_url(url: str) -> ProxyConfig:
    """Parse ``http://[user:pass@]host[:port]`` or ``socks5://...`` (``socks5h://`` too).

    User and password are percent-decoded; IPv6 hosts are written ``[::1]``; the
    default ports are 8080 (http) and 1080 (socks5).  Anything else raises
    :class:`LocalProtocolError`, with the password redacted from the message.
    """
    if not isinstance(url, str):
        raise LocalProtocolError(f"expected the proxy URL as a str, got {type(url).__name__}")
    shown = repr(_redact_url(url)[:200])
    scheme_text, sep, rest = url.partition("://")
    scheme = _SCHEMES.get(scheme_text.lower()) if sep else None
    if scheme is None:
        raise LocalProtocolError(
            f"expected a proxy URL starting with http://, socks5:// or socks5h://, got {shown}"
        )
    userinfo, at, hostport = rest.rpartition("@")
    if hostport.endswith("/"):
        hostport = hostport[:-1]
    if any(ch in hostport for ch in "/?#"):
        raise LocalProtocolError(f"expected a proxy URL without a path, query or fragment, got {shown}")

    username: str | None = None
    password: str | None = None
    if at:
        user_text, colon, password_text = userinfo.partition(":")
        if not user_text:
            raise LocalProtocolError(f"expected a user name before the '@' of the proxy URL, got {shown}")
        try:
            username = unquote(user_text, errors="strict")
            password = unquote(password_text, errors="strict") if colon else None
        except UnicodeDecodeError:
            raise LocalProtocolError(
                f"expected percent-encoded UTF-8 user name and password in the proxy URL, got {shown}"
            ) from None

    if hostport.startswith("["):
        host, bracket, port_part = hostport[1:].partition("]")
        if not bracket:
            raise LocalProtocolError(f"expected ']' after the IPv6 proxy host, got {shown}")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise LocalProtocolError(f"expected an IPv6 address inside '[...]', got {shown}") from None
        if port_part and not port_part.startswith(":"):
            raise LocalProtocolError(f"expected ':port' after the IPv6 proxy host, got {shown}")
        port_text: str | None = port_part[1:] if port_part else None
    else:
        if hostport.count(":") > 1:
            raise LocalProtocolError(f"expected an IPv6 proxy host written inside '[...]', got {shown}")
        host, colon, after = hostport.partition(":")
        port_text = after if colon else None
        if not host:
            raise LocalProtocolError(f"expected a proxy host, got {shown}")
        if any(ch in _BAD_HOST_CHARS or ord(ch) < 32 for ch in host):
            raise LocalProtocolError(f"expected a host name or IP address as the proxy host, got {shown}")

    if port_text is None:
        port = _DEFAULT_PORTS[scheme]
    else:
        if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5):
            raise LocalProtocolError(f"expected a proxy port between 1 and 65535, got {shown}")
        port = int(port_text)
        if not 0 < port < 65536:
            raise LocalProtocolError(f"expected a proxy port between 1 and 65535, got {shown}")
    return ProxyConfig(scheme=scheme, host=host, port=port, username=username, password=password)


# -- shared helpers ----------------------------------------------------------------------


def _target(host: str, port: int) -> tuple[str, str]:
    """Validate a tunnel target; return (host as ASCII without brackets, "host:port" for messages)."""
    if not isinstance(host, str) or not host:
        raise LocalProtocolError(f"expected a target host name, got {host!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise LocalProtocolError(f"expected a target port between 1 and 65535, got {port!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise LocalProtocolError(
                f"expected a target host name that IDNA can encode, got {host!r}"
            ) from None
    if any(ch in " \t\r\n/\\?#@[]" or ord(ch) < 32 for ch in host):
        raise LocalProtocolError(f"expected a target host name or IP address, got {host!r}")
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise LocalProtocolError(f"expected a target host name or IP address, got {host!r}") from None
    return host, _host_port(host, port)


def _credential_bytes(username: str | None, password: str | None) -> tuple[bytes, bytes] | None:
    if username is None and password is None:
        return None
    if username is None:
        raise LocalProtocolError("a proxy password was given without a user name")
    try:
        return username.encode("utf-8"), (password or "").encode("utf-8")
    except UnicodeEncodeError as exc:
        which = "password" if _encodes(username) else "user name"
        raise LocalProtocolError(
            f"expected a proxy {which} that can be sent as UTF-8, got one with a lone surrogate at "
            f"position {exc.start} (decode the bytes it came from with a real encoding)"
        ) from None


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# -- HTTP CONNECT ------------------------------------------------------------------------

_IDLE, _NEGOTIATING, _ESTABLISHED, _FAILED = "idle", "negotiating", "established", "failed"


class _Tunnel(ABC):
    """What both tunnels share: the Layer plumbing around their own negotiation.

    Bytes from above wait in ``_pending`` until the tunnel is established; bytes
    for the proxy collect in ``_out``.  A subclass implements ``_negotiate`` (bytes
    from the proxy before the tunnel is up; returns what comes after its answer)
    and may override ``_negotiation_bytes`` (bytes it still has for the proxy).
    """

    _kind = "proxy"

    def __init__(self) -> None:
        self._state = _IDLE
        self._error: ProxyError | None = None
        self._out: list[bytes] = []
        self._pending: list[bytes] = []
        self._eof = False

    @property
    def established(self) -> bool:
        return self._state == _ESTABLISHED

    @property
    def eof(self) -> bool:
        return self._eof

    def send(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        if not data:
            return
        if self._state == _ESTABLISHED:
            self._out.append(data)
        else:
            self._pending.append(data)

    def data_to_send(self) -> bytes:
        if self._state != _ESTABLISHED:
            negotiation = self._negotiation_bytes()
            if negotiation:
                self._out.append(negotiation)
        return take_all(self._out)

    def receive_data(self, data: bytes) -> bytes:
        state = self._state
        if state == _ESTABLISHED:
            if not data:
                self._eof = True
            elif self._eof:
                raise LocalProtocolError(f"cannot receive data after EOF, got {data[:60]!r}")
            return data
        if self._error is not None:
            raise self._error
        if state == _IDLE:
            raise LocalProtocolError(f"call start() before feeding the {self._kind}'s bytes to the tunnel")
        try:
            return self._negotiate(data)
        except ProxyError as exc:
            self._state = _FAILED
            self._error = exc
            raise

    def _established_now(self) -> None:
        """The tunnel is up: what waited for it goes out."""
        self._state = _ESTABLISHED
        if self._pending:
            self._out.extend(self._pending)
            self._pending = []

    def _negotiation_bytes(self) -> bytes:
        return b""

    @abstractmethod
    def _negotiate(self, data: bytes) -> bytes:
        """Bytes from the proxy before the tunnel is up; returns those that follow its answer."""


class HTTPConnectTunnel(_Tunnel):
    """A tunnel through an HTTP proxy: ``CONNECT host:port HTTP/1.1``.

    A 2xx answer establishes the tunnel; bytes the proxy sent after its answer go up.
    Any other answer, garbage, an oversized answer or an early close raises
    :class:`~plabs_proto.errors.ProxyError` (credentials never appear in it).
    """

    _kind = "HTTP proxy"

    def __init__(
        self, target_host: str, target_port: int, *, username: str | None = None, password: str | None = None
    ) -> None:
        _host, self._target = _target(target_host, target_port)
        credentials = _credential_bytes(username, password)
        self._has_credentials = credentials is not None
        headers = [(b"Host", self._target.encode("ascii"))]
        if credentials is not None:
            user, secret = credentials
            if b":" in user:
                raise LocalProtocolError("an HTTP proxy user name cannot contain ':' (Basic authentication)")
            token = base64.b64encode(user + b":" + secret)
            headers.append((b"Proxy-Authorization", b"Basic " + token))
        try:
            self._request = h11.Request(
                method=b"CONNECT", target=self._target.encode("ascii"), headers=headers
            )
        except h11.LocalProtocolError as exc:
            raise LocalProtocolError(f"cannot build a CONNECT request to {self._target!r}: {exc}") from None
        super().__init__()
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_RESPONSE_HEAD)
        self._received = 0
        self._first_bytes = b""
        self.response: h11.Response | None = None
        """The proxy's 2xx answer, once the tunnel is up."""

    def start(self) -> None:
        """Queue the CONNECT request."""
        if self._state != _IDLE:
            return
        self._out.append(self._h11.send(self._request) or b"")
        self._h11.send(h11.EndOfMessage())
        self._state = _NEGOTIATING

    def _negotiate(self, data: bytes) -> bytes:
        if len(self._first_bytes) < 60:
            self._first_bytes += data[: 60 - len(self._first_bytes)]
        if not data:
            raise ProxyError(
                f"HTTP proxy closed the connection before answering the CONNECT to {self._target}: "
                f"expected an HTTP response, got {self._excerpt()}"
            )
        self._received += len(data)
        self._h11.receive_data(data)
        while True:
            try:
                event = self._h11.next_event()
            except h11.ProtocolError as exc:
                if exc.error_status_hint == 431:  # h11's bound on an unfinished head
                    raise ProxyError(self._too_long()) from None
                raise ProxyError(
                    f"HTTP proxy sent an invalid answer to the CONNECT to {self._target} ({exc}): "
                    f"expected an HTTP response, got {self._excerpt()}"
                ) from None
            if event is h11.NEED_DATA:
                break
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                if 200 <= event.status_code < 300:
                    return self._establish(event)
                raise ProxyError(self._refusal(event))
            # Nothing else can come before the response head; h11 would have raised.
            raise ProxyError(  # pragma: no cover
                f"HTTP proxy sent an unexpected {type(event).__name__} before answering the CONNECT to "
                f"{self._target}: expected an HTTP response, got {self._excerpt()}"
            )
        if self._received > _MAX_RESPONSE_HEAD:  # (with 1xx answers before it: h11 counts only the last)
            raise ProxyError(self._too_long())
        return b""

    def _too_long(self) -> str:
        return (
            f"HTTP proxy's answer to the CONNECT to {self._target} is longer than {_MAX_RESPONSE_HEAD} "
            f"bytes without ending: expected an HTTP response head of at most {_MAX_RESPONSE_HEAD} bytes, "
            f"got {self._received} bytes starting {self._excerpt()}"
        )

    def _establish(self, response: h11.Response) -> bytes:
        self.response = response
        trailing, _closed = self._h11.trailing_data
        self._established_now()
        return bytes(trailing)

    def _refusal(self, response: h11.Response) -> str:
        reason = response.reason.decode("ascii", "replace")[:60]
        if not reason:
            try:
                reason = HTTPStatus(response.status_code).phrase
            except ValueError:
                reason = ""
        message = f"HTTP proxy refused the tunnel to {self._target}: {response.status_code} {reason}".rstrip()
        if response.status_code == 407 and not self._has_credentials:
            message += (
                " (no credentials were given: put them in the proxy URL, http://user:password@host:port)"
            )
        return message

    def _excerpt(self) -> str:
        return repr(self._first_bytes) if self._first_bytes else "nothing"


# -- SOCKS5 ------------------------------------------------------------------------------

_REPLY_NAMES = {
    0x01: "general SOCKS server failure",
    0x02: "connection not allowed by ruleset",
    0x03: "network unreachable",
    0x04: "host unreachable",
    0x05: "connection refused",
    0x06: "TTL expired",
    0x07: "command not supported",
    0x08: "address type not supported",
}
_METHOD_NAMES = {0x00: "no authentication", 0x02: "username/password"}

_WAIT_METHOD, _WAIT_AUTH, _WAIT_CONNECT = "method selection reply", "username/password reply", "connect reply"


class SOCKS5Tunnel(_Tunnel):
    """A tunnel through a SOCKS5 proxy (``CONNECT``; RFC 1928, user/password per RFC 1929).

    Offers "no authentication", plus "username/password" when credentials are given.
    The target goes to the proxy as a domain name (the proxy resolves it) unless it is
    an IP literal.  Bytes after the connect reply go up.  Every refusal raises
    :class:`~plabs_proto.errors.ProxyError` naming the reply.
    """

    _kind = "SOCKS5 proxy"

    def __init__(
        self, target_host: str, target_port: int, *, username: str | None = None, password: str | None = None
    ) -> None:
        host, self._target = _target(target_host, target_port)
        self._credentials = _credential_bytes(username, password)
        if self._credentials is not None:
            for which, part in zip(("user name", "password"), self._credentials, strict=True):
                if len(part) > 255:
                    raise LocalProtocolError(
                        f"expected a SOCKS5 {which} of at most 255 bytes (UTF-8), got {len(part)} bytes"
                    )
        if self._credentials is not None and not self._credentials[0]:
            raise LocalProtocolError("expected a non-empty SOCKS5 user name")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            encoded = host.encode("ascii")
            if len(encoded) > 255:
                raise LocalProtocolError(
                    f"expected a target host name of at most 255 bytes, got {len(encoded)} bytes"
                ) from None
            atype, addr = socks5.SOCKS5AType.DOMAIN_NAME, encoded
        else:
            if address.version == 4:
                atype = socks5.SOCKS5AType.IPV4_ADDRESS
            else:
                atype = socks5.SOCKS5AType.IPV6_ADDRESS
            addr = address.packed
        self._command = socks5.SOCKS5CommandRequest(
            command=socks5.SOCKS5Command.CONNECT, atype=atype, addr=addr, port=target_port
        )
        super().__init__()
        self._socks = socks5.SOCKS5Connection()
        self._waiting = _WAIT_METHOD
        self._buffer = bytearray()

    def start(self) -> None:
        """Queue the greeting (the offered authentication methods)."""
        if self._state != _IDLE:
            return
        methods = [socks5.SOCKS5AuthMethod.NO_AUTH_REQUIRED]
        if self._credentials is not None:
            methods.append(socks5.SOCKS5AuthMethod.USERNAME_PASSWORD)
        self._socks.send(socks5.SOCKS5AuthMethodsRequest(methods))
        self._state = _NEGOTIATING

    def _negotiation_bytes(self) -> bytes:
        return bytes(self._socks.data_to_send())

    # -- negotiation -----------------------------------------------------------------

    def _negotiate(self, data: bytes) -> bytes:
        buffer = self._buffer
        if not data:
            hint = ""
            if self._waiting == _WAIT_AUTH:
                hint = " (a proxy that closes here has usually rejected the user name and password)"
            raise ProxyError(
                f"SOCKS5 proxy closed the connection before its {self._waiting} for the connection to "
                f"{self._target}: expected {self._expected()}, got {bytes(buffer[:60])!r}{hint}"
            )
        buffer += data
        while self._state != _ESTABLISHED:
            if self._waiting == _WAIT_METHOD:
                if len(buffer) < 2:
                    break
                self._on_method_reply(bytes(buffer[:2]))
                del buffer[:2]
            elif self._waiting == _WAIT_AUTH:
                if len(buffer) < 2:
                    break
                self._on_auth_reply(bytes(buffer[:2]))
                del buffer[:2]
            else:
                length = self._connect_reply_length()
                if length is None or len(buffer) < length:
                    break
                del buffer[:length]
                self._state = _ESTABLISHED
        if self._state != _ESTABLISHED:
            return b""
        # Switch the outgoing side to plain bytes: the command request first, then held data.
        self._out.append(bytes(self._socks.data_to_send()))
        self._established_now()
        rest = bytes(buffer)
        buffer.clear()
        return rest

    def _expected(self) -> str:
        if self._waiting == _WAIT_METHOD:
            return "2 bytes (0x05, method)"
        if self._waiting == _WAIT_AUTH:
            return "2 bytes (0x01, status)"
        return "0x05, reply code, 0x00, address type, address, port"

    def _on_method_reply(self, reply: bytes) -> None:
        if reply[0] != 5:
            raise ProxyError(
                f"SOCKS5 proxy sent an invalid method selection reply for the connection to {self._target}: "
                f"expected version 0x05, got {reply!r} (is it a SOCKS5 proxy?)"
            )
        method = reply[1]
        offered = [0x00] if self._credentials is None else [0x00, 0x02]
        offered_text = ", ".join(_METHOD_NAMES[m] for m in offered)
        if method == 0xFF:
            hint = ""
            if self._credentials is None:
                hint = " (it may want a user name and password in the proxy URL)"
            raise ProxyError(
                f"SOCKS5 proxy refused the connection to {self._target}: it accepts none of the offered "
                f"authentication methods ({offered_text}; reply 0xff){hint}"
            )
        if method not in offered:
            raise ProxyError(
                f"SOCKS5 proxy chose authentication method 0x{method:02x} for the connection to "
                f"{self._target}: expected one of those offered ({offered_text})"
            )
        self._socks.receive_data(reply)  # a method we offered: socksio accepts it
        if method == 0x02:
            assert self._credentials is not None
            user, secret = self._credentials
            self._socks.send(socks5.SOCKS5UsernamePasswordRequest(user, secret))
            self._waiting = _WAIT_AUTH
        else:
            self._socks.send(self._command)
            self._waiting = _WAIT_CONNECT

    def _on_auth_reply(self, reply: bytes) -> None:
        # RFC 1929 says version 0x01; some servers answer 0x05.  Both are accepted.
        if reply[0] not in (0x01, 0x05):
            raise ProxyError(
                f"SOCKS5 proxy sent an invalid username/password reply for the connection to {self._target}: "
                f"expected version 0x01, got {reply!r}"
            )
        if reply[1] != 0:
            raise ProxyError(
                f"SOCKS5 proxy refused the connection to {self._target}: it rejected the user name and "
                f"password (status 0x{reply[1]:02x})"
            )
        self._socks.receive_data(b"\x01\x00")
        self._socks.send(self._command)
        self._waiting = _WAIT_CONNECT

    def _connect_reply_length(self) -> int | None:
        """The length of the connect reply once known (a failure is raised as soon as it is seen)."""
        buffer = self._buffer
        if not buffer:
            return None
        if buffer[0] != 5:
            raise ProxyError(
                f"SOCKS5 proxy sent an invalid connect reply for the connection to {self._target}: "
                f"expected version 0x05, got {bytes(buffer[:60])!r}"
            )
        if len(buffer) < 2:
            return None
        code = buffer[1]
        if code != 0:
            name = _REPLY_NAMES.get(code, "unknown reply code")
            raise ProxyError(
                f"SOCKS5 proxy refused the connection to {self._target}: {name} (reply 0x{code:02x})"
            )
        if len(buffer) < 4:
            return None
        atype = buffer[3]
        if atype == 0x01:
            return 4 + 4 + 2
        if atype == 0x04:
            return 4 + 16 + 2
        if atype == 0x03:
            if len(buffer) < 5:
                return None
            return 4 + 1 + buffer[4] + 2
        raise ProxyError(
            f"SOCKS5 proxy sent an invalid connect reply for the connection to {self._target}: "
            f"expected address type 0x01, 0x03 or 0x04, got 0x{atype:02x} in {bytes(buffer[:60])!r}"
        )
