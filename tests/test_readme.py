"""Every example of the README runs as written, against the emulator.

The README names its server once: the first screen starts an emulator and a gateway in the
background and exports ``PLABS_SERVER`` (and ``OPENAI_BASE_URL``/``OPENAI_API_KEY`` for
OpenAI clients); every other example reads those.  Here a :class:`Shell` plays that first
screen line by line as a reader would type it (``export`` lines change its environment,
``... &`` starts a server and waits for its port), then:

* every other shell block runs line by line in that environment: a client command must
  exit 0; a server command (``plabs serve``, ``uvicorn``, ``hypercorn`` without ``&``) must
  start listening, then stop cleanly on Ctrl-C; ``pip install`` lines are checked against
  the extras of pyproject.toml instead of run;
* every Python block runs as a script in that environment and must print an answer of the
  emulator (the sans-IO example, which needs no server, prints what its comments say);
* the first screen holds the three ways in; Quick start and the test command stay the ones
  that work.

The only change made to the text: the ports the README names (8765, 8000-8004) are replaced
by free ports, so that runs beside each other (and a reader's own servers) do not collide.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from conftest import EmulatorFactory
from plabs_proto.backends.programs.emulator import default_answer
from servers import read_until, reserved_port

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BIN = Path(sys.executable).parent  # this run's .venv/bin: plabs, uvicorn, hypercorn, python
PORTS = ("8765", "8000", "8001", "8002", "8003", "8004")
SERVERS = ("plabs emulator", "plabs serve", "uvicorn", "hypercorn")
NOT_RUN = ("pip install", "python3 -m venv", "./run-tests")  # checked, not run


def _text() -> str:
    return README.read_text(encoding="utf-8")


def _blocks(language: str, text: str | None = None) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", _text() if text is None else text, flags=re.S)


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", _text(), flags=re.S | re.M)
    assert match is not None, f"the README has no section {title!r}"
    return match.group(1)


def _first_screen() -> str:
    return _text().split("\n## ", 1)[0]


def _lines(block: str) -> list[str]:
    """The commands of a shell block (continued lines joined)."""
    return [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Shell:
    """The README's shell lines, run one by one in one environment, as a reader would."""

    def __init__(self) -> None:
        self.ports = {name: str(reserved_port()) for name in PORTS}
        self.env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "NO_COLOR": "1",
                    "PYTHONUNBUFFERED": "1"}
        for name in ("PLABS_SERVER", "OPENAI_BASE_URL", "OPENAI_API_KEY", "PLABS_API_KEY"):
            self.env.pop(name, None)
        self.background: list[tuple[subprocess.Popen[bytes], str]] = []

    def local(self, text: str) -> str:
        for name, port in self.ports.items():
            text = re.sub(rf"(?<=[:\s]){name}\b", port, text)
        return text

    def run(self, line: str) -> str:
        """Run one line; its stdout ("" for servers and lines not run)."""
        line = self.local(line)
        words = shlex.split(line, comments=True)
        command = " ".join(words[:2])
        if line.startswith(NOT_RUN) or not words:
            return ""
        if words[0] == "export":
            result = subprocess.run(["bash", "-c", f"{line}\nenv -0"], env=self.env, capture_output=True,
                                    check=True, timeout=10)
            self.env = dict(item.split("=", 1) for item in result.stdout.decode().split("\0") if "=" in item)
            return ""
        if words[-1] == "&":
            self.background.append((self.serve(line.rsplit("&", 1)[0], words), command))
            return ""
        if command.startswith(SERVERS) or words[0] in SERVERS:
            process = self.serve(line, words)
            status = self.stop(process)
            assert status in (0, -signal.SIGINT), f"{line!r} exited {status} on Ctrl-C"
            return ""
        result = subprocess.run(["bash", "-c", line], env=self.env, capture_output=True, text=True, timeout=60,
                                stdin=subprocess.DEVNULL)
        assert result.returncode == 0, f"{line!r} exited {result.returncode}: {result.stderr[-2000:]}"
        return result.stdout

    def serve(self, line: str, words: list[str]) -> subprocess.Popen[bytes]:
        """Start a server line and wait until it is ready: its port accepts connections and, for
        ``plabs``, its URL is the first line of its stdout (it handles Ctrl-C from then on)."""
        port = next(int(word.rsplit(":", 1)[-1]) for i, word in enumerate(words)
                    if words[i - 1] in ("--port", "--bind"))
        process = subprocess.Popen(["bash", "-c", f"exec {line}"], env=self.env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            if words[0] == "plabs":
                line_read = read_until(process, rb"\n", timeout=30)
                assert re.fullmatch(rb"http://127\.0\.0\.1:%d(/v1)?\n" % port, line_read), line_read
            deadline = time.monotonic() + 30
            while not _listening(port):
                assert process.poll() is None, f"{line!r} exited {process.returncode} before listening"
                assert time.monotonic() < deadline, f"{line!r} did not listen on {port} within 30 s"
                time.sleep(0.05)
        except AssertionError as exc:
            # Never leave the server behind, and say what it printed on stderr.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            _, err = process.communicate()
            raise AssertionError(f"{exc}\n{line!r} printed on stderr:\n{err.decode(errors='replace')[-3000:]}") from None
        return process

    @staticmethod
    def stop(process: subprocess.Popen[bytes], *, quiet: bool = True) -> int:
        """Ctrl-C (to the server's process group); its exit status, after checking that it left no
        traceback when ``quiet`` (the emulator's aiohttp logs clients that left mid-handshake)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
        try:
            _, err = process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise AssertionError("a README server did not stop within 15 s of Ctrl-C") from None
        assert not quiet or b"Traceback" not in err, err.decode(errors="replace")[-3000:]
        return process.returncode

    def close(self) -> None:
        for process, command in reversed(self.background):
            if process.poll() is None:
                self.stop(process, quiet=command != "plabs emulator")


@pytest.fixture(scope="module")
def shell() -> Iterator[Shell]:
    """The first screen's shell block, played: the emulator and the gateway run, the variables set."""
    reader = Shell()
    try:
        (block,) = _blocks("sh", _first_screen())
        for line in _lines(block):
            reader.run(line)
        assert reader.env["PLABS_SERVER"] == f"http://127.0.0.1:{reader.ports['8765']}"
        yield reader
    finally:
        reader.close()


# -- the first screen -------------------------------------------------------------------------------------


def test_the_first_screen_holds_the_three_ways_in() -> None:
    screen = _first_screen()
    assert len(screen.splitlines()) <= 45, "the purpose and the three ways in fit on one screen"
    for way in ("1. the command line", "2. an OpenAI-compatible API", "2. any OpenAI client", "3. the library"):
        assert way in screen
    (block,) = _blocks("sh", screen)
    assert "export PLABS_SERVER=" in block and "plabs serve" in block and "plabs ask" in block


def test_every_extra_the_readme_installs_exists() -> None:
    extras = set(importlib.metadata.metadata("plabs-proto").get_all("Provides-Extra") or [])
    named = set()
    for line in re.findall(r"pip install [^`\n]*", _text()):
        for group in re.findall(r"\.\[([\w,-]+)\]", line):
            named.update(group.split(","))
    named.update(re.findall(r"'\.\[([\w-]+)\]'", _text()))
    assert named >= {"gateway", "gateway-trio", "emulator", "trio", "impersonate", "dev"}
    assert named <= extras, f"the README names extras pyproject.toml lacks: {named - extras}"


def test_the_first_screen_python_asks_through_the_gateway_and_the_library(shell: Shell) -> None:
    (block,) = _blocks("python", _first_screen())
    printed = run_python(shell, block)
    prompt = "What is sans-IO?"
    assert printed == default_answer("sonar", prompt) + "\n" + default_answer("r1-1776", prompt)


# -- every other example -------------------------------------------------------------------------------------


def shell_blocks() -> list[tuple[str, str]]:
    sections = re.split(r"^## ", _text(), flags=re.M)
    found = []
    for section in sections[1:]:
        title = section.split("\n", 1)[0]
        for index, block in enumerate(_blocks("sh", section)):
            found.append((f"{title[:30]} #{index}", block))
    return found


@pytest.mark.parametrize(("where", "block"), shell_blocks(), ids=[where for where, _ in shell_blocks()])
def test_shell_examples_run(shell: Shell, where: str, block: str) -> None:
    for line in _lines(block):
        printed = shell.run(line)
        if line.startswith("plabs ask"):
            assert "Labs emulator answering as" in printed, (line, printed)
        elif line.startswith("curl"):
            chunks = [json.loads(event[6:]) for event in printed.split("\n\n") if event.startswith("data: {")]
            text = "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks)
            assert text == default_answer("sonar", "What is sans-IO?"), printed
        elif line.startswith("plabs models"):
            assert printed.split()[0] == "r1-1776"


def run_python(shell: Shell, block: str) -> str:
    """Run a Python block in this process (its imports are made already), in the shell's environment."""
    saved = dict(os.environ)
    os.environ.update({name: shell.env[name] for name in ("PLABS_SERVER", "OPENAI_BASE_URL", "OPENAI_API_KEY")})
    try:
        return _run_block(block)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def python_blocks() -> list[tuple[str, str]]:
    screen = _first_screen()
    found = []
    for section in re.split(r"^## ", _text()[len(screen):], flags=re.M)[1:]:
        title = section.split("\n", 1)[0]
        for index, block in enumerate(_blocks("python", section)):
            if "LabsClient(" not in block:  # the sans-IO example needs no server: test_sans_io_example_runs
                found.append((f"{title[:30]} #{index}", block))
    return found


@pytest.mark.parametrize(("where", "block"), python_blocks(), ids=[where for where, _ in python_blocks()])
def test_python_examples_ask_the_emulator(shell: Shell, where: str, block: str) -> None:
    assert "127.0.0.1" not in block, "examples read the server from the environment"
    printed = run_python(shell, block)
    assert "Labs emulator answering as" in printed or "Labs emulator answering as" in printed.replace("'", ""), printed


def test_bring_your_own_client_example_stays_short() -> None:
    (block,) = [b for b in _blocks("python", _section("Bring your own HTTP and WebSocket client")) if "LabsSession(" in b]
    assert len(block.splitlines()) < 62, "the example is meant to stay about 60 lines"


def _run_block(block: str) -> str:
    out = io.StringIO()
    namespace: dict[str, Any] = {}
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(block, "README.md", "exec"), namespace)
    finally:
        # An example's OpenAI() client keeps its idle connection open until the collector frees it, which
        # would come out as a ResourceWarning in some later test (the script's exit closes it for a user).
        for value in namespace.values():
            if isinstance(value, openai.OpenAI):
                value.close()
    return out.getvalue()


def test_sans_io_example_runs() -> None:
    (block,) = [b for b in _blocks("python") if "LabsClient(" in b]
    printed = _run_block(block)
    for comment in re.findall(r"^# (\w+\(.*)$", block, flags=re.M):
        head = comment.split("...")[0]
        assert head in printed, f"the README says {comment!r} is printed, got:\n{printed}"
    assert "OpenStream(stream_id=1, host='labs.test', port=80)" in printed


# -- Quick start and the test command ------------------------------------------------------------------------


def _quick_start() -> tuple[str, str]:
    first, second = (block.strip() for block in _blocks("sh", _section("Quick start")))
    assert "\n" not in first and "\n" not in second, "each Quick start command is one line"
    return first, second


def test_quick_start_installs_the_emulator_and_asks_it(emulator_factory: EmulatorFactory) -> None:
    first, _ = _quick_start()
    venv, install, ask = (shlex.split(part) for part in first.split(" && "))
    assert venv == ["python3", "-m", "venv", ".venv"]
    assert install == [".venv/bin/pip", "install", "-e", ".[emulator]"]
    emulator_extra = {
        re.split(r"[<>=;\[ ]", requirement)[0]
        for requirement in importlib.metadata.requires("plabs-proto") or []
        if re.search(r"""extra == ["']emulator["']""", requirement)
    }
    assert emulator_extra >= {"python-socketio", "aiohttp"}  # what --emulator imports
    assert ask[:3] == [".venv/bin/plabs", "ask", "--emulator"]
    result = subprocess.run(
        [str(BIN / "plabs"), *ask[1:]], capture_output=True, text=True, timeout=30, encoding="utf-8",
        env={**os.environ, "NO_COLOR": "1"}, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == default_answer("r1-1776", ask[3]) + "\n"


def test_ci_runs_exactly_the_readme_test_command() -> None:
    _, command = _quick_start()
    (in_tests_section,) = _blocks("sh", _section("Tests"))
    assert in_tests_section.strip() == command
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    lines = [line for line in ci.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert lines[-1] == command, f"expected .ci/run to end with the README's test command {command!r}, got {lines[-1]!r}"
    script = ROOT / shlex.split(command)[0]
    assert script.is_file() and os.access(script, os.X_OK), f"{script} is missing or not executable"
