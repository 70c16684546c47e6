"""The README's examples run as written, and its two setup commands stay the ones that work.

* the sans-IO example prints what its comments say;
* the offline Python example (``server=`` the emulator) prints the emulator's answer;
* the LabsSession example, carried by aiohttp, prints the emulator's answer;
* "Quick start": the first command installs the emulator extra and asks ``--emulator``
  (its ``plabs ask`` part is run here); the second is the test command, the one
  command ``.ci/run`` runs, and the one the "Tests" section names.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from conftest import EmulatorFactory
from plabs_proto.backends.programs.emulator import default_answer

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def _text() -> str:
    return README.read_text(encoding="utf-8")


def _blocks(language: str, text: str | None = None) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", _text() if text is None else text, flags=re.S)


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", _text(), flags=re.S | re.M)
    assert match is not None, f"the README has no section {title!r}"
    return match.group(1)


def _run_block(block: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, "README.md", "exec"), {})
    return out.getvalue()


def test_sans_io_example_runs() -> None:
    (block,) = [b for b in _blocks("python") if "LabsClient(" in b]
    printed = _run_block(block)
    for comment in re.findall(r"^# (\w+\(.*)$", block, flags=re.M):
        head = comment.split("...")[0]
        assert head in printed, f"the README says {comment!r} is printed, got:\n{printed}"
    assert "OpenStream(stream_id=1, host='labs.test', port=80)" in printed


def test_offline_python_example_asks_the_emulator(emulator_factory: EmulatorFactory) -> None:
    readme_url = "http://127.0.0.1:8765"
    assert f"`plabs emulator --port {readme_url.rsplit(':', 1)[1]}`" in _section("Ask from Python")
    (block,) = [b for b in _blocks("python", _section("Ask from Python")) if f'server="{readme_url}"' in b]
    emulator = emulator_factory(frame_delay=0.001)
    printed = _run_block(block.replace(readme_url, emulator.url))
    assert printed == default_answer("r1-1776", "What is sans-IO?")


def test_bring_your_own_client_example_asks_the_emulator(emulator_factory: EmulatorFactory) -> None:
    readme_url = "http://127.0.0.1:8765"
    section = _section("Bring your own HTTP and WebSocket client")
    (block,) = [b for b in _blocks("python", section) if "LabsSession(" in b]
    assert len(block.splitlines()) < 60, "the example is meant to stay under 60 lines"
    assert f'server="{readme_url}"' in block
    emulator = emulator_factory(frame_delay=0.001)
    printed = _run_block(block.replace(readme_url, emulator.url))
    assert printed == default_answer("r1-1776", "What is sans-IO?") + "\n"


def _quick_start() -> tuple[str, str]:
    first, second = (block.strip() for block in _blocks("sh", _section("Quick start")))
    assert "\n" not in first and "\n" not in second, "each Quick start command is one line"
    return first, second


def test_quick_start_installs_the_emulator_and_asks_it() -> None:
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
    plabs = Path(sys.executable).with_name("plabs")  # this run's .venv/bin/plabs
    result = subprocess.run(
        [str(plabs), *ask[1:]], capture_output=True, text=True, timeout=30, encoding="utf-8",
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
