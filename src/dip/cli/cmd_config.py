"""``dip config``: print a complete commented experiment configuration, or check one.

``dip config --print-defaults > exp.yaml`` writes every option with its default and a comment; edit it
and pass it to ``dip plan``, ``dip simulate``, ``dip train`` or ``dip bench`` with ``--config exp.yaml``
(flags given on the command line override the file). ``dip config --check exp.yaml`` validates a file
and prints it resolved (every default filled in).
"""

from __future__ import annotations

import argparse

import yaml

from dip.cli.config import defaults_yaml, load_config
from dip.errors import BadInput
from dip.io import emit


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "config",
        help="print a commented experiment configuration (--print-defaults) or check one (--check FILE)",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    what = p.add_mutually_exclusive_group()
    what.add_argument("--print-defaults", action="store_true", help="print a complete commented example")
    what.add_argument("--check", metavar="FILE.yaml", help="validate FILE and print it with every default filled in")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.check:
        config = load_config(args.check).model_dump()
        emit(config, args.json, yaml.safe_dump(config, sort_keys=False).rstrip())
        return 0
    if not args.print_defaults:
        raise BadInput("give --print-defaults or --check FILE")
    if args.json:
        emit({"config": defaults_yaml()}, True)
    else:
        print(defaults_yaml(), end="")
    return 0
