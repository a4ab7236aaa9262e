"""``dip bench NAME``: benchmarks that print ratios measured side by side in one run.

Each benchmark lives in ``dip.bench.<name>`` and defines ``register(subparsers)``.
"""
from __future__ import annotations

import importlib

BENCHMARKS: tuple[str, ...] = ("sim", "planner", "runtime")


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="run a benchmark (sim, planner, runtime)",
                              description="Benchmarks; each prints ratios measured side by side in one run.")
    sub = p.add_subparsers(dest="bench", metavar="BENCHMARK", parser_class=type(p))
    for name in BENCHMARKS:
        try:
            mod = importlib.import_module(f"dip.bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"dip.bench.{name}":
                continue
            raise
        mod.register(sub)
    p.set_defaults(func=lambda args: p.print_help())
