"""``python -m plabs_proto``: the ``plabs`` command line (:func:`plabs_proto.backends.programs.cli.main`)."""

from __future__ import annotations

import importlib


def _main() -> int:
    # Imported by name: the backends are installed as plabs_proto.backends but live in backends/.
    cli = importlib.import_module("plabs_proto.backends.programs.cli")
    status: int = cli.main()
    return status


if __name__ == "__main__":
    raise SystemExit(_main())
