"""Helpers that start Labs test servers for the tests (no fixtures here).

* :func:`start_node_server` runs ``tests/node_server/server.js`` (the official Node.js
  ``socket.io`` package, "Node flavour": ``ok`` and no NOOP after the upgrade) as a
  subprocess and returns a :class:`NodeServer`.
* :func:`start_perplexity_node` runs ``tests/node_server/perplexity.js`` (a server of the SSE ask
  endpoint on plain Node ``http``, written from protocol.md §10 independently of the Python one) and
  returns a :class:`NodeServer`.
* The python-socketio emulator lives in ``plabs_proto.backends.programs.emulator``, the Python
  server of the SSE ask endpoint in ``plabs_proto.backends.programs.emulator_perplexity``.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import re
import select
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

__all__ = [
    "NODE_SERVER_DIR",
    "NodeServer",
    "NodeServerError",
    "free_port",
    "start_node_server",
    "start_perplexity_node",
]

NODE_SERVER_DIR = Path(__file__).resolve().parent / "node_server"
SERVER_JS = NODE_SERVER_DIR / "server.js"
PERPLEXITY_JS = NODE_SERVER_DIR / "perplexity.js"


class NodeServerError(RuntimeError):
    """The Node test server could not be started."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind to port 0 and close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def stalled_listener() -> Iterator[socket.socket]:
    """A listening socket on 127.0.0.1 whose accept queue is full: it drops new SYNs, so a TCP
    connect to it stalls (until the socket is closed: then the next SYN is refused)."""
    server = socket.socket()
    fillers = [socket.socket() for _ in range(3)]
    try:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        for filler in fillers:
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
        yield server
    finally:
        for filler in fillers:
            filler.close()
        server.close()


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
            return int(ranges.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def reserved_port(host: str = "127.0.0.1") -> int:
    """A TCP port free now that stays free for a long while: below the ephemeral range, where the
    kernel never picks the local port of an outgoing connection or of a bind to port 0 (a port from
    :func:`free_port` kept for minutes can be taken by any such socket in the meantime), in a band of
    its own for each pytest-xdist worker."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    band = 1000 * (int(worker) % 8 if worker.isdigit() else 0)
    low = max(1024, _ephemeral_low() - 8000) + band
    for _ in range(200):
        port = random.randrange(low, low + 1000)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise AssertionError(f"expected a free port in {low}..{low + 999}, got none in 200 tries")


class Silent:
    """A server that never answers: a listening socket nobody accepts on (a client that opened a
    session would leave a connection waiting there); ``connections()`` counts and closes what came
    since it was last asked."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def connections(self) -> int:
        count = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return count
            conn.close()
            count += 1


class NodeServer:
    """A running ``node server.js`` process; stop it with :meth:`stop` or ``with``."""

    def __init__(
        self, process: subprocess.Popen[bytes], port: int, scheme: str, host: str, stderr: IO[bytes]
    ):
        self.process = process
        self.port = port
        self.host = host
        self.url = f"{scheme}://{host}:{port}"
        self._stderr = stderr

    @property
    def stderr_text(self) -> str:
        """What the server wrote to stderr so far."""
        if self._stderr.closed:
            return ""
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the process, wait for it and close its pipes (idempotent)."""
        proc = self.process
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        if not self._stderr.closed:
            self._stderr.close()

    def __enter__(self) -> NodeServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"NodeServer(url={self.url!r}, pid={self.process.pid})"


def _ms(seconds: float) -> str:
    return str(max(0, round(seconds * 1000)))


def start_node_server(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    answer: str | None = None,
    reasoning: str | None = None,
    no_reasoning: bool = False,
    final_output: str | None = None,
    chunk_size: int | None = None,
    frame_delay: float | None = None,
    ping_interval: float | None = None,
    ping_timeout: float | None = None,
    max_payload: int | None = None,
    fail: str | None = None,
    fail_after: int | None = None,
    drop_after: int | None = None,
    silent: bool = False,
    citations: Sequence[Any] | None = None,
    jwt: str | None = None,
    check_origin: bool = True,
    certfile: str | os.PathLike[str] | None = None,
    keyfile: str | os.PathLike[str] | None = None,
    extra_args: Sequence[str] = (),
    startup_timeout: float = 15.0,
) -> NodeServer:
    """Start the Node.js Labs server; options mirror ``EmulatorConfig`` (times in seconds).

    ``answer`` goes to the server through a temporary file (removed once the server has
    started), so it may be longer than a command line allows.  ``extra_args`` are appended
    to the command line as they are.  Raises :class:`NodeServerError`
    if Node.js or ``tests/node_server/node_modules`` is missing, if the server exits early or if
    it does not print its port within ``startup_timeout`` seconds.
    """
    node = shutil.which("node")
    if node is None:
        raise NodeServerError(
            "Node.js ('node') is not on PATH; it is needed for the Node.js Labs test server"
        )
    if not (NODE_SERVER_DIR / "node_modules" / "socket.io").is_dir():
        raise NodeServerError(
            f"{NODE_SERVER_DIR / 'node_modules'} is missing: run `npm ci` in {NODE_SERVER_DIR} "
            "to install the pinned socket.io package"
        )
    args: list[str] = [node, str(SERVER_JS), "--host", host, "--port", str(port)]
    if reasoning is not None:
        args += ["--reasoning", reasoning]
    if no_reasoning:
        args.append("--no-reasoning")
    if final_output is not None:
        args += ["--final-output", final_output]
    if chunk_size is not None:
        args += ["--chunk-size", str(chunk_size)]
    if frame_delay is not None:
        args += ["--frame-delay-ms", _ms(frame_delay)]
    if ping_interval is not None:
        args += ["--ping-interval-ms", _ms(ping_interval)]
    if ping_timeout is not None:
        args += ["--ping-timeout-ms", _ms(ping_timeout)]
    if max_payload is not None:
        args += ["--max-payload", str(max_payload)]
    if fail is not None:
        args += ["--fail", fail]
    if fail_after is not None:
        args += ["--fail-after", str(fail_after)]
    if drop_after is not None:
        args += ["--drop-after", str(drop_after)]
    if silent:
        args.append("--silent")
    if citations is not None:
        args += ["--citations", json.dumps(list(citations))]
    if jwt is not None:
        args += ["--jwt", jwt]
    if not check_origin:
        args.append("--no-check-origin")
    if certfile is not None:
        args += ["--certfile", os.fspath(certfile)]
    if keyfile is not None:
        args += ["--keyfile", os.fspath(keyfile)]
    args += extra_args
    answer_file = None
    if answer is not None:
        # Through a file, read by server.js at startup: a command-line argument holds at most 128 KiB.
        answer_file = tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".txt", delete=False)  # noqa: SIM115
        with answer_file:
            answer_file.write(answer)
        args += ["--answer-file", answer_file.name]
    try:
        return _start(args, port, "https" if certfile is not None else "http", host, startup_timeout)
    finally:
        if answer_file is not None:
            os.unlink(answer_file.name)  # read at startup (or never: the server did not start)


def start_perplexity_node(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    certfile: str | os.PathLike[str] | None = None,
    keyfile: str | os.PathLike[str] | None = None,
    startup_timeout: float = 15.0,
    frame_delay: float | None = None,
    **settings: Any,
) -> NodeServer:
    """Start ``perplexity.js``; ``settings`` are its JSON config keys (see the file's header:
    shape, answer, chunk_size, line_ending, extras, write_size, early_final, fail, error_code,
    fail_after, rate_limit, retry_after, cloudflare, redirect, redirect_to, redirect_status,
    require_cookie, session_token, drop_after, gzip), the names of ``PerplexityEmulatorConfig``;
    ``frame_delay`` is in seconds, as there.

    The config goes through a temporary file (removed once the server has started), so the
    answer may be longer than a command line allows.  It needs only Node.js, no npm package.
    """
    node = shutil.which("node")
    if node is None:
        raise NodeServerError("Node.js ('node') is not on PATH; it is needed for perplexity.js")
    args: list[str] = [node, str(PERPLEXITY_JS), "--host", host, "--port", str(port)]
    if certfile is not None:
        args += ["--certfile", os.fspath(certfile)]
    if keyfile is not None:
        args += ["--keyfile", os.fspath(keyfile)]
    if frame_delay is not None:
        settings["frame_delay_ms"] = int(_ms(frame_delay))
    config_file = tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".json", delete=False)  # noqa: SIM115
    with config_file:
        json.dump(settings, config_file)
    args += ["--config-file", config_file.name]
    try:
        return _start(args, port, "https" if certfile is not None else "http", host, startup_timeout)
    finally:
        os.unlink(config_file.name)


def _start(args: list[str], port: int, scheme: str, host: str, startup_timeout: float) -> NodeServer:
    stderr = tempfile.TemporaryFile()  # noqa: SIM115  (a file, not a pipe: it can never fill up and block node)
    try:
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, cwd=NODE_SERVER_DIR
        )
    except BaseException:
        stderr.close()
        raise
    server = NodeServer(proc, port, scheme, host, stderr)
    try:
        line = _read_line(proc, startup_timeout)
        try:
            server.port = int(json.loads(line)["port"])
        except (ValueError, KeyError, TypeError):
            raise NodeServerError(
                f'expected a line like {{"port": N}} from server.js, got {line[:60]!r}'
            ) from None
    except NodeServerError as exc:
        detail = server.stderr_text[-2000:]
        server.stop()
        raise NodeServerError(f"{exc}; server.js stderr: {detail!r}") from None
    except BaseException:
        server.stop()
        raise
    server.url = f"{scheme}://{host}:{server.port}"
    return server


def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """The first stdout line of ``proc``, or :class:`NodeServerError` after ``timeout`` seconds."""
    stdout = proc.stdout
    assert stdout is not None
    lines: queue.Queue[bytes] = queue.Queue()
    reader = threading.Thread(
        target=lambda: lines.put(stdout.readline()), name="node-port-reader", daemon=True
    )
    reader.start()
    try:
        raw = lines.get(timeout=timeout)
    except queue.Empty:
        proc.kill()
        proc.wait()
        reader.join()
        raise NodeServerError(f"server.js printed no port line within {timeout} s") from None
    reader.join()
    if not raw:
        proc.wait()
        raise NodeServerError(f"server.js exited with code {proc.returncode} before printing its port")
    return raw.decode("utf-8", "replace").strip()


def read_until(process: subprocess.Popen[bytes], pattern: bytes, timeout: float = 10.0) -> bytes:
    """Read ``process.stdout`` until ``pattern`` (a regex) matches what was read."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    got = b""
    deadline = time.monotonic() + timeout
    while not re.search(pattern, got):
        left = deadline - time.monotonic()
        assert left > 0, f"expected {pattern!r} on stdout within {timeout} s, got {got!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            assert chunk, f"stdout ended before {pattern!r}: {got!r}"
            got += chunk
    return got
