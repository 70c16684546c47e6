"""What the client benchmarks share: child processes, certificates, the burst answer, tables.

Every benchmark runs its servers (and, where CPU or memory is measured, its clients) in
child processes started with :class:`Child`.  A child prints ``READY <words>`` on stdout once
it listens and exits when it gets SIGTERM or when its stdin closes (so it also goes away if
the benchmark itself is killed).  Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import random
import select
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = sys.executable
HOST = "127.0.0.1"

MODEL = "sonar"
PROMPT = "What is sans-IO?"
ORIGIN = "https://labs.perplexity.ai"
JWT = "anonymous-ask-user"
VERSION = "2.18"

_WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "Perplexity", "Labs",
          "streams", "its", "answer"]


def child_env() -> dict[str, str]:
    """The environment for a child: the repository and this folder importable."""
    env = dict(os.environ)
    paths = [str(ROOT), str(HERE)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("PYTHONHASHSEED", "0")
    return env


class Child:
    """A child Python process running ``script args...``; ``ready`` holds the words after ``READY``."""

    def __init__(self, script: str, *args: str, timeout: float = 20.0) -> None:
        self.args = [PYTHON, str(HERE / script), *args]
        self.proc = subprocess.Popen(
            self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=child_env(), text=True
        )
        try:
            self.ready = self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> list[str]:
        stdout = self.proc.stdout
        assert stdout is not None
        readable, _, _ = select.select([stdout], [], [], timeout)
        if not readable:
            raise RuntimeError(f"{' '.join(self.args[1:])}: no READY line within {timeout} s")
        line = stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError(f"{' '.join(self.args[1:])}: expected a READY line, got {line[:200]!r}")
        return line.split()[1:]

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; always reaped."""
        proc = self.proc
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class NodeChild(Child):
    """The Node.js Labs server (tests/node_server/server.js, socket.io) with ``args``; ``ready`` holds its URL.

    It prints ``{"port": N}`` once it listens and exits on SIGTERM.  Its packages must be
    installed (``npm ci`` in tests/node_server; ``./run-tests`` does it).
    """

    def __init__(self, *args: str, timeout: float = 20.0) -> None:
        server = ROOT / "tests" / "node_server" / "server.js"
        if not (server.parent / "node_modules" / "socket.io").is_dir():
            raise RuntimeError(f"{server.parent / 'node_modules'} is missing: run `npm ci` in {server.parent}")
        self.args = ["node", str(server), *args]
        self.proc = subprocess.Popen(self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            self.ready = self._wait_port(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_port(self, timeout: float) -> list[str]:
        stdout = self.proc.stdout
        assert stdout is not None
        readable, _, _ = select.select([stdout], [], [], timeout)
        line = stdout.readline() if readable else ""
        if not line.startswith('{"port"'):
            raise RuntimeError(f"server.js: expected {{\"port\": N}} within {timeout} s, got {line[:200]!r}")
        return [f"http://{HOST}:{json.loads(line)['port']}"]


def run_worker(script: str, *args: str, timeout: float = 150.0) -> dict[str, Any]:
    """Run ``script args...`` to completion in a child; its last stdout line is a JSON result."""
    proc = subprocess.run(
        [PYTHON, str(HERE / script), *args],
        stdin=subprocess.DEVNULL, capture_output=True, env=child_env(), text=True, timeout=timeout,
    )
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"worker {script} {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    if proc.stderr.strip():
        sys.stderr.write(proc.stderr)
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def serve_until_stopped() -> Any:
    """In a child's asyncio loop: an awaitable that ends on SIGTERM or when stdin closes."""
    import asyncio

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    fd = sys.stdin.fileno()

    def on_stdin() -> None:
        try:
            data = os.read(fd, 4096)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
            stop.set()

    with contextlib.suppress(OSError, ValueError):
        os.set_blocking(fd, False)
        loop.add_reader(fd, on_stdin)
    return stop.wait()


def ready(*words: object) -> None:
    print("READY", *words, flush=True)


# -- certificates ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Certs:
    cafile: str
    certfile: str
    keyfile: str


@contextlib.contextmanager
def certificates() -> Iterator[Certs]:
    """A throwaway CA and a server certificate for 127.0.0.1 and localhost (trustme), as files."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert(HOST, "localhost")
    with tempfile.TemporaryDirectory(prefix="plabs-bench-") as tmp:
        cafile = os.path.join(tmp, "ca.pem")
        certfile = os.path.join(tmp, "server.pem")
        keyfile = os.path.join(tmp, "server.key")
        ca.cert_pem.write_to_path(cafile)
        cert.cert_chain_pems[0].write_to_path(certfile)
        for pem in cert.cert_chain_pems[1:]:
            pem.write_to_path(certfile, append=True)
        cert.private_key_pem.write_to_path(keyfile)
        yield Certs(cafile, certfile, keyfile)


def client_ssl_context(cafile: str) -> ssl.SSLContext:
    """A verifying client context trusting ``cafile`` (for aiohttp and python-socketio)."""
    return ssl.create_default_context(cafile=cafile)


def tls_version(port: int, cafile: str) -> str:
    """The TLS version a plain client negotiates with the server on ``port``."""
    import socket

    context = client_ssl_context(cafile)
    with socket.create_connection((HOST, port), timeout=5) as raw, context.wrap_socket(
        raw, server_hostname=HOST
    ) as tls:
        return str(tls.version())


# -- the burst answer -------------------------------------------------------------------------------


def burst_outputs(frames: int, step: int) -> list[str]:
    """The cumulative ``output`` of each of ``frames`` progress frames, growing by ``step`` characters."""
    rng = random.Random(7)
    text = ""
    words: list[str] = []
    size = 0
    need = frames * step
    while size < need:
        word = rng.choice(_WORDS) + " "
        words.append(word)
        size += len(word)
    text = "".join(words)[:need]
    return [text[: (i + 1) * step] for i in range(frames)]


def progress_messages(model: str, outputs: Sequence[str]) -> list[str]:
    """Socket.IO event texts ``42["<model>_query_progress",{...}]`` for the outputs (the last one final),
    in python-socketio's compact JSON."""
    messages = []
    last = len(outputs) - 1
    event = f"{model}_query_progress"
    for i, output in enumerate(outputs):
        payload: dict[str, Any] = {"output": output, "final": i == last, "elapsed_time": round(i * 0.001, 3),
                                   "tokens_streamed": i + 1}
        if i == last:
            payload["status"] = "completed"
            payload["citations"] = []
        messages.append("42" + json.dumps([event, payload], separators=(",", ":")))
    return messages


def query_message(model: str = MODEL, prompt: str = PROMPT) -> str:
    request = {"version": VERSION, "source": "default", "model": model,
               "messages": [{"role": "user", "content": prompt}]}
    return "42" + json.dumps(["perplexity_labs", request])


# -- reporting --------------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    out = {}
    for dist in ("plabs-proto", "h11", "wsproto", "trio", "aiohttp", "python-socketio", "python-engineio"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "-"
    return out


def git_revision() -> str:
    """The commit, and whether the library's files (plabs_proto/, backends/) differ from it."""
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
        changed = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "plabs_proto", "backends"],
                                 capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return f"{rev}{' + uncommitted library files' if changed else ''}" if rev else "?"


def machine() -> str:
    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 2**20:.0f} GiB"
                break
    return f"{os.cpu_count()} cores ({cpu}), {mem}, {platform.system()} {platform.release()}"


def header(title: str) -> str:
    v = versions()
    lines = [
        f"# {title}",
        f"date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}; machine: {machine()}",
        f"CPython {platform.python_version()}, {ssl.OPENSSL_VERSION}; plabs-proto {v['plabs-proto']} "
        f"(git {git_revision()}), h11 {v['h11']}, wsproto {v['wsproto']}, trio {v['trio']}, "
        f"aiohttp {v['aiohttp']}, python-socketio {v['python-socketio']}, python-engineio {v['python-engineio']}",
    ]
    return "\n".join(lines)


def table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A fixed-width text table: first column left-aligned, the others right-aligned."""
    cells = [[str(c) for c in columns]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    out = []
    for n, row in enumerate(cells):
        parts = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        out.append("  ".join(parts).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT MET"
