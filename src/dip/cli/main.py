"""The ``dip`` command: one sub-command per module in :data:`COMMANDS`.

Each command module defines ``register(subparsers)`` which adds its parser and sets
``func(args) -> int | None``; it imports only the light layers at load time (spec, data, cost,
schedule), so ``dip --help`` stays fast, and the heavy ones (the numba planner, torch) when it runs.
:class:`dip.errors.BadInput` (and argparse usage errors) end the process with exit code 2 and a
one-line message on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from dip.cli import (
    cmd_bench,
    cmd_cost,
    cmd_data,
    cmd_demo,
    cmd_init_model,
    cmd_models,
    cmd_plan,
    cmd_profile,
    cmd_simulate,
    cmd_train,
    cmd_viz,
    cmd_workload,
)
from dip.errors import BadInput

# The commands in the order ``dip --help`` lists them; each module's ``register(subparsers)`` adds its parser.
COMMANDS = (
    cmd_models,
    cmd_workload,
    cmd_cost,
    cmd_profile,
    cmd_simulate,
    cmd_plan,
    cmd_train,
    cmd_data,
    cmd_init_model,
    cmd_viz,
    cmd_bench,
    cmd_demo,
)


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are one line with exit code 2."""

    def error(self, message: str):
        sys.stderr.write(
            f"dip {self.prog.split(' ', 1)[-1] if ' ' in self.prog else ''}: error: {message}\n".replace("  ", " ")
        )
        sys.exit(2)


LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_ENV = "DIP_LOG_LEVEL"  # rank processes started by `dip train` inherit the level through it


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dip", description="DIP: dynamic interleaved pipelines for multimodal model training.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for command in COMMANDS:
        command.register(sub)
    for command_parser in _all_parsers(sub):
        command_parser.add_argument(
            "--log-level",
            default=os.environ.get(LOG_ENV, "warning"),
            choices=LOG_LEVELS,
            help="log records at this level and above on stderr (default warning)",
        )
    return parser


def _all_parsers(sub: argparse._SubParsersAction) -> list[argparse.ArgumentParser]:
    """Every sub-command's parser, nested ones (``dip bench sim``) included."""
    out = []
    for p in dict.fromkeys(sub.choices.values()):
        out.append(p)
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                out += _all_parsers(action)
    return out


def configure_logging(level: str) -> None:
    """One stderr handler for the ``dip`` loggers (other libraries keep their own settings); stdout
    stays free for the command's output."""
    root = logging.getLogger("dip")
    root.setLevel(getattr(logging, level.upper()))
    if not any(getattr(h, "dip_cli", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.dip_cli = True
        root.addHandler(handler)
        root.propagate = False
    os.environ[LOG_ENV] = level


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(getattr(args, "log_level", None) or os.environ.get(LOG_ENV, "warning"))
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        rc = args.func(args)
    except BadInput as exc:
        msg = " ".join(str(exc).split("\n")[0].split())
        sys.stderr.write(f"dip {args.command}: error: {msg}\n")
        return 2
    except KeyboardInterrupt:
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
