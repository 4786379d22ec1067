"""The ``tether`` command: a thin dispatcher over one module per subcommand.

Each module in ``tether/_cli/`` provides ``register(subparsers)``, which adds its
subparser and sets ``func`` (a callable taking the parsed namespace and returning
the exit status). Modules are imported only when their command runs, so
``tether explain`` never imports the engine.

Exit status: 0 success, 1 the operation failed (e.g. connection refused), 2 bad
usage or input (argparse's convention), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Mapping, Sequence

__all__ = ["COMMANDS", "build_parser", "main"]

#: Subcommand name -> module under tether._cli that implements it.
COMMANDS: dict[str, str] = {
    "codes": "codes",
    "explain": "explain",
    "compare": "compare",
    "bench": "bench",
    "connect": "connect",
    "serve": "serve",
    "probe": "probe",
    "chaos": "chaos",
    "demo": "demo",
}


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error and exit status 2, no usage dump."""

    #: The subcommands' parsers by name (set on the top-level parser only): an
    #: argument no subcommand knows is reported under the subcommand's name.
    subcommands: Mapping[str, argparse.ArgumentParser]

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Build the parser; with ``command``, import only that subcommand's module."""
    parser = _Parser(prog="tether", description="Keep WebSocket connections alive.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    names = [command] if command in COMMANDS else list(COMMANDS)
    for name in names:
        module = importlib.import_module(f"tether._cli.{COMMANDS[name]}")
        module.register(sub)
    parser.subcommands = sub.choices
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tether`` command and return its exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in args_list if not a.startswith("-")), None)
    parser = build_parser(first)
    args, extra = parser.parse_known_args(args_list)
    if extra:
        owner = getattr(parser, "subcommands", {}).get(getattr(args, "command", None), parser)
        owner.error(f"unrecognized arguments: {' '.join(extra)}")
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        status: int = func(args)
    except KeyboardInterrupt:
        return 130
    return status
