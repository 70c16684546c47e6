"""A first contact without a stumble: what a new user of ``plabs`` meets before any answer.

* Ctrl-C while the command is still starting (building its parser, reading its
  version, starting the emulator, importing the gateway) exits 130 without a traceback.
  The interrupt is a real SIGINT, sent by the process to itself the moment the named
  function is entered (a profile hook), so the test does not depend on timing.
* An empty prompt is one error line (exit 2), not a usage dump.
* A malformed ``--proxy`` is a usage error (exit 2) of ``plabs ask`` and ``plabs serve``,
  found before anything starts; the password is not shown.
* Importing ``plabs_proto.backends.trio`` without trio says which extra installs it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1", "PYTHONWARNINGS": "error"}

INTERRUPT_AT = textwrap.dedent("""
    import os, signal, sys
    from plabs_proto.backends.programs import cli

    target, fired = sys.argv[1], []

    def hook(frame, event, arg):
        if event == "call" and frame.f_code.co_name == target and not fired:
            fired.append(True)
            os.kill(os.getpid(), signal.SIGINT)

    sys.setprofile(hook)
    status = cli.main(sys.argv[2:])
    sys.setprofile(None)
    print("fired" if fired else "not fired", file=sys.stderr)
    sys.exit(status)
""")


def run(*args: str, code: str | None = None, stdin: str = "") -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "plabs_proto", *args]
    return subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=30, env=ENV,
                          encoding="utf-8")


@pytest.mark.parametrize(
    ("where", "args"),
    [
        ("build_parser", ["ask", "--emulator", "hi"]),
        ("_version", ["ask", "--emulator", "hi"]),  # importlib.metadata, slow on a cold cache
        ("parse_args", ["ask", "--emulator", "hi"]),
        ("_start_emulator", ["ask", "--emulator", "hi"]),
        ("_cmd_serve", ["serve", "--emulator", "--port", "0"]),
        ("_listen", ["serve", "--emulator", "--port", "0"]),
    ],
)
def test_ctrl_c_while_starting_exits_130_without_a_traceback(where: str, args: list[str]) -> None:
    result = run(where, *args, code=INTERRUPT_AT)
    assert result.stderr.endswith("fired\n"), result.stderr
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == "", result.stderr


INTERRUPT_IMPORT = textwrap.dedent("""
    import importlib, os, signal, sys
    from plabs_proto import __main__ as entry  # the plabs command's entry point; the package imports nothing yet

    fired = []

    def hook(frame, event, arg):  # Ctrl-C the moment the command line's module starts to run
        if event == "call" and frame.f_code.co_filename.endswith("cli.py") and not fired:
            fired.append(True)
            os.kill(os.getpid(), signal.SIGINT)

    sys.setprofile(hook)
    status = entry.main()
    sys.setprofile(None)
    print("fired" if fired else "not fired", file=sys.stderr)
    sys.exit(status)
""")


def test_ctrl_c_while_the_command_is_imported_exits_130_without_a_traceback() -> None:
    """The plabs entry point imports the command line inside main(): an interrupt among its imports
    (the slowest part of starting) is the quiet 130 of any other Ctrl-C."""
    result = run(code=INTERRUPT_IMPORT)
    assert result.stderr.endswith("fired\n"), result.stderr
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == "", result.stderr


@pytest.mark.parametrize(("args", "stdin"), [(["ask", ""], ""), (["ask", "  ", " "], ""), (["ask", "-"], " \n")])
def test_an_empty_prompt_is_one_line(args: list[str], stdin: str) -> None:
    result = run(*args, stdin=stdin)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("plabs ask: error: expected a prompt")


@pytest.mark.parametrize("command", [["ask", "hi"], ["serve", "--port", "0"]])
@pytest.mark.parametrize(
    ("proxy", "message"),
    [
        ("bogus://127.0.0.1:1", "expected a proxy URL starting with http://, socks5:// or socks5h://, got "
                                "'bogus://127.0.0.1:1'"),
        ("http://user:s3cret@127.0.0.1:99999", "expected a proxy port between 1 and 65535, got "
                                               "'http://user:***@127.0.0.1:99999'"),
    ],
)
def test_a_malformed_proxy_is_a_usage_error(command: list[str], proxy: str, message: str) -> None:
    result = run(command[0], "--proxy", proxy, *command[1:])
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.endswith(f"plabs {command[0]}: error: argument --proxy: {message}\n"), result.stderr
    assert "s3cret" not in result.stderr


def test_importing_the_trio_backend_without_trio_names_the_extra() -> None:
    code = textwrap.dedent("""
        import sys
        sys.modules["trio"] = None  # as if trio were not installed
        try:
            import plabs_proto.backends.trio
        except ModuleNotFoundError as exc:
            print(exc)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, env=ENV)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("plabs_proto.backends.trio needs trio: pip install 'plabs-proto[trio]' (")
