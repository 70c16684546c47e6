"""The README's sans-IO example runs as written and prints what it says it prints."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_sans_io_example_runs() -> None:
    (block,) = [b for b in _python_blocks() if "LabsClient(" in b]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, "README.md", "exec"), {})
    printed = out.getvalue()
    for comment in re.findall(r"^# (\w+\(.*)$", block, flags=re.M):
        head = comment.split("...")[0]
        assert head in printed, f"the README says {comment!r} is printed, got:\n{printed}"
    assert "OpenStream(stream_id=1, host='labs.test', port=80)" in printed


def test_readme_names_the_test_command_ci_runs() -> None:
    text = README.read_text(encoding="utf-8")
    command = re.search(r"The test command:\n\n```sh\n(.+)\n```", text)
    assert command is not None
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert command.group(1) in ci.splitlines()
