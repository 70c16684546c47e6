"""Fixtures shared by the end-to-end backend tests.

* ``tls_files``: a trustme CA, a server certificate for 127.0.0.1/localhost, one for
  another host name, and a second CA that signed nothing here (files in a temp dir).
* ``emulator_factory(**EmulatorConfig fields, certfile=, keyfile=)``: a running
  :class:`~plabs_proto.backends.programs.emulator.EmulatorThread`; one per distinct set of
  options, shared by the whole run and stopped at its end.
* ``node_factory(**start_node_server options)``: the same for the Node.js server.
  ``node_ready`` (which it uses) makes that server runnable first: when
  ``tests/node_server/node_modules`` is missing and npm is on PATH it runs ``npm ci``
  there once; if Node.js, npm or the install is missing the test is skipped, or, with
  ``CI`` set, fails (CI installs it: a skip there would hide a broken install step).
* ``perplexity_emulator_factory(**PerplexityEmulatorConfig fields, certfile=, keyfile=)``: a
  running :class:`~plabs_proto.backends.programs.emulator_perplexity.PerplexityEmulatorThread`
  (the SSE ask endpoint), and ``perplexity_node_factory(**start_perplexity_node options)`` the
  same for ``tests/node_server/perplexity.js`` (Node.js alone, no npm package; skipped without
  Node.js, failed in CI): one per distinct set of options, shared by the run, stopped at its end.
* ``perplexity_server(**options)``: the base URL of a running server of the SSE ask endpoint with
  those options (the names of ``PerplexityEmulatorConfig``, ``certfile``/``keyfile`` for TLS);
  parametrized, so a test using it runs once on the Python emulator ("python") and once on
  perplexity.js ("node").
* ``proxy_factory(scheme)``: a pproxy subprocess (``http`` or ``socks5``) asking for
  ``PROXY_USER``/``PROXY_PASSWORD``, shared by the run; ``fresh_proxy(scheme)``: a new
  one for this test only (pproxy remembers a client address once it has logged in, so
  a wrong-password test needs a proxy nobody used).
* ``silent``: a :class:`servers.Silent` server for the module, a socket that listens and never
  answers (``silent.connections()`` says whether anything connected).
* ``sockets_to(port)``: how many sockets this process holds open to 127.0.0.1:``port``
  (Linux ``/proc``), to check that a client closed every connection it made.

Hypothesis runs derandomized (the profile ``ci``, the default): every run tries the same
examples, so a failure is the same failure on every machine, and no example database is kept.
``HYPOTHESIS_PROFILE=explore`` searches afresh each run (and prints the seed of a failure,
with the blob to reproduce it).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import IO, Any, Protocol, TypeVar

import pytest
import trustme
from hypothesis import settings
from plabs_proto.backends import asyncio as asyncio_backend
from plabs_proto.backends import trio as trio_backend
from plabs_proto.backends.programs.emulator import EmulatorConfig, EmulatorThread
from plabs_proto.backends.programs.emulator_perplexity import (
    PerplexityEmulatorConfig,
    PerplexityEmulatorThread,
)
from servers import NODE_SERVER_DIR, NodeServer, Silent, free_port, start_node_server, start_perplexity_node

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# A shell starts a background job (`./run-tests &`, a CI step run with `&`) with SIGINT ignored, and
# an ignored signal stays ignored in every process it starts: the tests that press Ctrl-C on a
# `plabs` subprocess would then see it finish or hang. A handler of ours is reset to the default in
# the programs we start, as a terminal would leave it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

PROXY_USER = "alice"
PROXY_PASSWORD = "s3cret-pa55"  # a distinctive string: tests check that no error message contains it


@dataclass(frozen=True)
class TLSFiles:
    """Paths of the PEM files the TLS tests use."""

    cafile: str  # the CA that signed certfile and wrong_host_certfile
    certfile: str  # certificate chain for 127.0.0.1 and localhost
    keyfile: str
    wrong_host_certfile: str  # signed by the CA, but for example.org only
    wrong_host_keyfile: str
    other_cafile: str  # a CA that signed none of these


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    directory = tmp_path_factory.mktemp("tls")
    ca, other = trustme.CA(), trustme.CA()
    good = ca.issue_cert("127.0.0.1", "localhost")
    wrong = ca.issue_cert("example.org")
    paths = {name: str(directory / f"{name}.pem") for name in ("ca", "other", "cert", "key", "wcert", "wkey")}
    ca.cert_pem.write_to_path(paths["ca"])
    other.cert_pem.write_to_path(paths["other"])
    for blob in good.cert_chain_pems:
        blob.write_to_path(paths["cert"], append=True)
    good.private_key_pem.write_to_path(paths["key"])
    for blob in wrong.cert_chain_pems:
        blob.write_to_path(paths["wcert"], append=True)
    wrong.private_key_pem.write_to_path(paths["wkey"])
    return TLSFiles(
        cafile=paths["ca"],
        certfile=paths["cert"],
        keyfile=paths["key"],
        wrong_host_certfile=paths["wcert"],
        wrong_host_keyfile=paths["wkey"],
        other_cafile=paths["other"],
    )


def _key(options: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((name, repr(value)) for name, value in options.items()))


class _Stoppable(Protocol):
    def stop(self) -> None: ...


_S = TypeVar("_S", bound=_Stoppable)


@contextlib.contextmanager
def _one_per_options(make: Callable[..., _S]) -> Iterator[Callable[..., _S]]:
    """A server ``make`` starts, one per distinct set of options, shared by the whole run; all stopped at its end."""
    running: dict[tuple[tuple[str, str], ...], _S] = {}

    def start(**options: Any) -> _S:
        key = _key(options)
        if key not in running:
            running[key] = make(**options)
        return running[key]

    try:
        yield start
    finally:
        for server in running.values():
            server.stop()


EmulatorFactory = Callable[..., EmulatorThread]
NodeFactory = Callable[..., NodeServer]


@pytest.fixture(scope="session")
def emulator_factory() -> Iterator[EmulatorFactory]:
    def make(*, certfile: str | None = None, keyfile: str | None = None, **config: Any) -> EmulatorThread:
        emulator = EmulatorThread(EmulatorConfig(**config), certfile=certfile, keyfile=keyfile)
        emulator.start()
        return emulator

    with _one_per_options(make) as start:
        yield start


NPM_CI = ("ci", "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error")
NPM_TIMEOUT = 300.0


def prepare_node_server(directory: Path, *, node: str | None, npm: str | None) -> str | None:
    """Make the Node.js test server in ``directory`` runnable; None when it is, else why not.

    ``node``/``npm`` are the programs' paths (None: not installed).  When
    ``node_modules/socket.io`` is missing, ``npm ci`` installs the pinned packages of
    ``package-lock.json`` (the registry is asked only for what npm's cache lacks).
    """
    if node is None:
        return "Node.js ('node') is not on PATH; the Node.js Labs test server needs it"
    if (directory / "node_modules" / "socket.io").is_dir():
        return None
    where = directory / "node_modules"
    if npm is None:
        return f"{where} is missing and npm is not on PATH to install it (`npm ci` in {directory})"
    # pytest-xdist's workers may all get here at once: one installs, the others wait for it.
    with open(directory / ".npm-ci.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (directory / "node_modules" / "socket.io").is_dir():
            return None
        return _npm_ci(directory, npm, where)


def _npm_ci(directory: Path, npm: str, where: Path) -> str | None:
    try:
        result = subprocess.run(
            [npm, *NPM_CI], cwd=directory, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=NPM_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return f"{where} is missing and `npm ci` in {directory} did not finish within {NPM_TIMEOUT:g} s"
    if result.returncode != 0 or not (directory / "node_modules" / "socket.io").is_dir():
        said = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:]) or "nothing"
        return (
            f"{where} is missing and `npm ci` in {directory} could not install it "
            f"(exit status {result.returncode}): {said}"
        )
    return None


@functools.cache
def _node_server_problem() -> str | None:
    return prepare_node_server(NODE_SERVER_DIR, node=shutil.which("node"), npm=shutil.which("npm"))


def require_node_server(problem: str | None) -> None:
    """Skip the test for ``problem`` (a reason the Node.js server cannot run), or fail it in CI."""
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(problem)  # CI installs it: a skip there would hide a broken install step
        pytest.skip(problem)


@pytest.fixture(scope="session")
def node_ready() -> None:
    """The Node.js test server can run (``npm ci`` done if needed), else skip (or fail in CI)."""
    require_node_server(_node_server_problem())


@pytest.fixture(scope="session")
def node_factory(node_ready: None) -> Iterator[NodeFactory]:
    with _one_per_options(start_node_server) as start:
        yield start


PerplexityEmulatorFactory = Callable[..., PerplexityEmulatorThread]


@pytest.fixture(scope="session")
def perplexity_emulator_factory() -> Iterator[PerplexityEmulatorFactory]:
    def make(*, certfile: str | None = None, keyfile: str | None = None, **config: Any) -> PerplexityEmulatorThread:
        emulator = PerplexityEmulatorThread(PerplexityEmulatorConfig(**config), certfile=certfile, keyfile=keyfile)
        emulator.start()
        return emulator

    with _one_per_options(make) as start:
        yield start


@pytest.fixture(scope="session")
def perplexity_node_factory() -> Iterator[NodeFactory]:
    require_node_server(
        None if shutil.which("node") else "Node.js ('node') is not on PATH; perplexity.js needs it"
    )
    with _one_per_options(start_perplexity_node) as start:
        yield start


@pytest.fixture(params=["python", "node"])
def perplexity_server(request: pytest.FixtureRequest) -> Callable[..., str]:
    factory = request.getfixturevalue(
        "perplexity_emulator_factory" if request.param == "python" else "perplexity_node_factory"
    )
    return lambda **options: str(factory(**options).url)


# -- pproxy --------------------------------------------------------------------------------------


@dataclass
class Proxy:
    """A pproxy subprocess listening on 127.0.0.1."""

    scheme: str
    port: int
    process: subprocess.Popen[bytes]
    log: IO[bytes]

    def url(self, password: str = PROXY_PASSWORD, user: str = PROXY_USER) -> str:
        return f"{self.scheme}://{user}:{password}@127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.log.close()


def _start_proxy(scheme: str) -> Proxy:
    for _ in range(3):  # the free port may be taken in between: try again
        port = free_port()
        log = tempfile.TemporaryFile()  # noqa: SIM115 - Proxy.stop() closes it
        process = subprocess.Popen(
            [sys.executable, "-m", "pproxy", "-l", f"{scheme}://127.0.0.1:{port}#{PROXY_USER}:{PROXY_PASSWORD}"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        proxy = Proxy(scheme, port, process, log)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and process.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return proxy
            except OSError:
                time.sleep(0.02)
        log.seek(0)
        output = log.read()[-500:]
        proxy.stop()
        if time.monotonic() >= deadline:
            raise RuntimeError(f"pproxy did not listen on {port} within 10 s: {output!r}")
    raise RuntimeError(f"pproxy could not start: {output!r}")


ProxyFactory = Callable[[str], Proxy]


@pytest.fixture(scope="session")
def proxy_factory() -> Iterator[ProxyFactory]:
    running: dict[str, Proxy] = {}

    def start(scheme: str) -> Proxy:
        if scheme not in running:
            running[scheme] = _start_proxy(scheme)
        return running[scheme]

    try:
        yield start
    finally:
        for proxy in running.values():
            proxy.stop()


@pytest.fixture
def fresh_proxy() -> Iterator[ProxyFactory]:
    started: list[Proxy] = []

    def start(scheme: str) -> Proxy:
        proxy = _start_proxy(scheme)
        started.append(proxy)
        return proxy

    try:
        yield start
    finally:
        for proxy in started:
            proxy.stop()


# -- leak checks ---------------------------------------------------------------------------------


def _socket_inodes() -> set[int]:
    inodes = set()
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{name}")
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def _sockets_to(port: int) -> int:
    """Open sockets of this process whose remote end is ``port`` (any address)."""
    mine = _socket_inodes()
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if remote_port == port and int(fields[9]) in mine:
                    count += 1
    return count


@pytest.fixture
def sockets_to() -> Callable[[int], int]:
    if not os.path.isdir("/proc/self/fd") or not os.path.exists("/proc/net/tcp"):
        pytest.skip("needs Linux /proc to list this process's sockets")
    return _sockets_to


@pytest.fixture
def lab(anyio_backend: str) -> ModuleType:
    """The backend module (asyncio or trio) of the loop the anyio test runs on."""
    module: ModuleType = asyncio_backend if anyio_backend == "asyncio" else trio_backend
    return module


@pytest.fixture
def own_gateways() -> Iterator[list[Any]]:
    """Gateways (``test_gateway.Gateway``) a test starts for itself, stopped at its end whatever happened."""
    started: list[Any] = []
    yield started
    for gateway in started:
        if gateway.process.poll() is None:
            gateway.process.kill()
        gateway.process.communicate(timeout=10)


@pytest.fixture(scope="module")
def silent() -> Iterator[Silent]:
    """A :class:`servers.Silent` server for this module."""
    server = Silent()
    yield server
    server.sock.close()
