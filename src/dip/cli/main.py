"""The ``dip`` command: one sub-command per module in :data:`COMMANDS`.

Each command module defines ``register(subparsers)`` which adds its parser and sets
``func(args) -> int | None``; it imports only the light layers at load time (spec, data, cost,
schedule), so ``dip --help`` stays fast, and the heavy ones (the numba planner, torch) when it runs.
:class:`dip.errors.BadInput` (and argparse usage errors) end the process with exit code 2 and a
one-line message on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from dip.cli import (
    cmd_bench,
    cmd_config,
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
from dip.cli.config import (
    CONFIG_COMMANDS,
    ExperimentConfig,
    apply_config,
    config_path_beside,
    load_config,
    resolved_config,
    write_resolved,
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
    cmd_config,
    cmd_bench,
    cmd_demo,
)


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are one line naming the sub-command, with exit code 2 (and,
    under ``--json``, one JSON object ``{"error": ...}`` on stdout)."""

    def error(self, message: str):
        report_error(self.prog, message, "--json" in self.command_line)
        sys.exit(2)

    command_line: tuple[str, ...] = ()  # the arguments being parsed (set by main)


def report_error(where: str, message: str, as_json: bool) -> None:
    """``where: error: message`` on stderr; with ``--json`` also ``{"error": message}`` on stdout."""
    sys.stderr.write(f"{where}: error: {message}\n")
    if as_json:
        sys.stdout.write(json.dumps({"error": message, "command": where}) + "\n")


LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_ENV = "DIP_LOG_LEVEL"  # rank processes started by `dip train` inherit the level through it


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dip", description="DIP: dynamic interleaved pipelines for multimodal model training.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for command in COMMANDS:
        command.register(sub)
    for command_parser in _all_parsers(sub):
        command_parser.set_defaults(prog_name=command_parser.prog)
        if command_parser.prog.split()[1] in CONFIG_COMMANDS and not _has_subcommands(command_parser):
            command_parser.add_argument(
                "--config",
                metavar="FILE.yaml",
                help="experiment configuration (dip config --print-defaults); flags given here override it",
            )
        command_parser.add_argument(
            "--log-level",
            default=os.environ.get(LOG_ENV, "warning"),
            choices=LOG_LEVELS,
            help="log records at this level and above on stderr (default warning)",
        )
    return parser


def _relax_required(parser: argparse.ArgumentParser) -> dict[str, list[argparse.Action]]:
    """Options a config file may provide are not required on the command line (checked after the file
    is applied, :func:`_check_required`). Returns the relaxed actions by parser prog."""
    out: dict[str, list[argparse.Action]] = {}
    for p in _all_parsers(_subparsers(parser)):
        for a in p._actions:
            if a.required and a.option_strings:
                a.required = False
                out.setdefault(p.prog, []).append(a)
    return out


def _check_required(args: argparse.Namespace, required: dict[str, list[argparse.Action]]) -> None:
    missing = [
        a.option_strings[0]
        for a in required.get(getattr(args, "prog_name", ""), ())
        if getattr(args, a.dest, None) is None
    ]
    if missing:
        raise BadInput(
            f"the following arguments are required (on the command line or in the config file): {', '.join(missing)}"
        )


def _has_subcommands(parser: argparse.ArgumentParser) -> bool:
    return any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)


def _given(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The option destinations that ``argv`` sets explicitly (parsed again with every default suppressed)."""
    parsers = [parser, *_all_parsers(_subparsers(parser))]
    saved = [(a, a.default, a.required) for p in parsers for a in p._actions]
    saved_defaults = [(p, dict(p._defaults)) for p in parsers]
    try:
        for a, _, _ in saved:
            a.default, a.required = argparse.SUPPRESS, False
        for p, _ in saved_defaults:
            p._defaults.clear()
        ns, _ = parser.parse_known_args(argv)
    finally:
        for a, default, required in saved:
            a.default, a.required = default, required
        for p, defaults in saved_defaults:
            p._defaults.update(defaults)
    return set(vars(ns))


def _with_config(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str]) -> ExperimentConfig:
    """Apply ``--config FILE`` to ``args`` (flags given on the command line win); the loaded config."""
    config = load_config(args.config)
    parsers = {p.prog: p for p in _all_parsers(_subparsers(parser))}
    apply_config(config, args, parsers[args.prog_name], _given(parser, argv))
    return config


def _write_resolved_config(args: argparse.Namespace, config: ExperimentConfig | None) -> None:
    """Beside a configured run's outputs (``--trace``, ``--gantt``, ``--out``): the configuration it ran with."""
    outputs = [getattr(args, d) for d in ("trace", "gantt") if getattr(args, d, None)]
    out_dir = getattr(args, "out", None)
    if config is None or (not outputs and not (out_dir and os.path.isdir(out_dir))):
        return
    target = config_path_beside(outputs[0]) if outputs else os.path.join(out_dir, "config.yaml")
    write_resolved(resolved_config(config, args), target)


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


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
    _Parser.command_line = tuple(sys.argv[1:] if argv is None else argv)
    required = _relax_required(parser) if "--config" in _Parser.command_line else {}
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # reported by the sub-command's parser, so the message names it
        parsers = {p.prog: p for p in _all_parsers(_subparsers(parser))}
        parsers.get(getattr(args, "prog_name", ""), parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    configure_logging(getattr(args, "log_level", None) or os.environ.get(LOG_ENV, "warning"))
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    config = None
    try:
        if getattr(args, "config", None):
            config = _with_config(parser, args, list(_Parser.command_line))
        _check_required(args, required)
        rc = args.func(args)
        if not rc:
            _write_resolved_config(args, config)
    except BadInput as exc:
        msg = " ".join(str(exc).split("\n")[0].split())
        report_error(getattr(args, "prog_name", "dip"), msg, bool(getattr(args, "json", False)))
        return 2
    except KeyboardInterrupt:
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
