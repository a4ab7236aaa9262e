"""The generated references in ``docs/reference/``: every command's ``--help`` and every field of the
experiment configuration. ``python -m dip.cli.reference`` rewrites them; a test fails when they are
out of date.
"""

from __future__ import annotations

import argparse
import os
import sys
from types import UnionType
from typing import Annotated, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from dip.cli.config import OPTION_OF, ExperimentConfig
from dip.cli.main import _all_parsers, _subparsers, build_parser
from dip.io import write_atomic

__all__ = ["cli_reference", "config_reference", "write_references"]

REFERENCE_DIR = os.path.join("docs", "reference")
HELP_WIDTH = "100"


def cli_reference() -> str:
    """Markdown: ``dip --help`` and every sub-command's help, in the order ``dip --help`` lists them."""
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_WIDTH  # argparse wraps help text at this width: the file must not depend on a terminal
    try:
        parser = build_parser()
        parts = [
            "# Command-line reference",
            "",
            "Generated from `--help` by `python -m dip.cli.reference`; do not edit by hand.",
            "",
            "## dip",
            "",
            "```",
            _help(parser),
            "```",
        ]
        for p in _all_parsers(_subparsers(parser)):
            parts += ["", f"## {p.prog}", "", "```", _help(p), "```"]
        return "\n".join(parts) + "\n"
    finally:
        if saved is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved


def _help(parser: argparse.ArgumentParser) -> str:
    return parser.format_help().rstrip()


def config_reference() -> str:
    """Markdown: one table per section of :class:`ExperimentConfig` (field, type, default, option, meaning)."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from the configuration models (`dip.cli.config`) by `python -m dip.cli.reference`; do not",
        "edit by hand. `dip config --print-defaults` prints the same as a commented YAML file; pass one with",
        "`--config FILE` to `dip plan`, `dip simulate`, `dip train` or `dip bench` (flags given on the command",
        "line override it).",
    ]

    def table(model: type[BaseModel], prefix: str) -> None:
        lines.extend(["", "| field | type | default | option | meaning |", "|---|---|---|---|---|"])
        for name, field in model.model_fields.items():
            if isinstance(field.default, BaseModel):
                continue
            path = f"{prefix}{name}"
            dest = OPTION_OF.get(path, ("", None))[0]
            option = f"`--{dest.replace('_', '-')}`" if dest else ""
            bounds = [
                f"{op} {getattr(m, attr)}"
                for m in field.metadata
                for attr, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
                if getattr(m, attr, None) is not None
            ]
            kind = " ".join([_type_name(field.annotation), *bounds])
            lines.append(f"| `{path}` | {kind} | `{field.default!r}` | {option} | {field.description} |")

    lines += ["", "## Top level"]
    table(ExperimentConfig, "")
    for name, field in ExperimentConfig.model_fields.items():
        section = field.annotation
        if isinstance(section, type) and issubclass(section, BaseModel):
            lines += ["", f"## `{name}`", "", (section.__doc__ or "").strip()]
            table(section, f"{name}.")
    return "\n".join(lines) + "\n"


def _type_name(annotation) -> str:
    """Readable type of a config field: ``int >= 1 or null``, ``one of mcts, dfs, random``, ..."""
    origin = get_origin(annotation)
    args = get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is Annotated:
        bounds = [
            f"{op} {getattr(m, attr)}"
            for m in args[1:]
            for attr, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
            if getattr(m, attr, None) is not None
        ]
        return " ".join([_type_name(args[0]), *bounds])
    if origin in (Union, UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin is dict:
        return f"mapping of {_type_name(args[0])} to {_type_name(args[1])}"
    return getattr(annotation, "__name__", str(annotation))


def write_references(root: str = ".") -> list[str]:
    """Write both references under ``root/docs/reference``; the paths written."""
    folder = os.path.join(root, REFERENCE_DIR)
    os.makedirs(folder, exist_ok=True)
    out = []
    for name, text in (("cli.md", cli_reference()), ("config.md", config_reference())):
        path = os.path.join(folder, name)
        write_atomic(path, text)
        out.append(path)
    return out


if __name__ == "__main__":
    for written in write_references(sys.argv[1] if len(sys.argv) > 1 else "."):
        print(written)
