"""``python -m plabs_proto`` and the ``plabs`` command: :func:`plabs_proto.backends.programs.cli.main`.

The command line is imported here, inside :func:`main`, so that a Ctrl-C during its imports
(a few hundred milliseconds) ends the command quietly, with the status 130 of an interrupt,
rather than with a traceback; the package itself imports nothing until it is used.
"""

from __future__ import annotations

import importlib


def main() -> int:
    """Run the ``plabs`` command; exit status 130 when interrupted while it starts."""
    try:
        # Imported by name: the backends are installed as plabs_proto.backends but live in backends/.
        cli = importlib.import_module("plabs_proto.backends.programs.cli")
    except KeyboardInterrupt:
        return 130
    status: int = cli.main()
    return status


if __name__ == "__main__":
    raise SystemExit(main())
