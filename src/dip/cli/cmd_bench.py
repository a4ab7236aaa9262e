"""``dip bench NAME``: benchmarks that print ratios measured side by side in one run.

The parsers live here; each benchmark's work lives in ``dip.bench.<name>.run(args)``, imported when
that benchmark runs (they load torch or the numba-compiled planner, seconds that other commands
should not pay).
"""

from __future__ import annotations

import argparse

from dip.errors import positive_int
from dip.spec.presets import load_model

PAPER_MODELS = ("VLM-S", "VLM-M", "VLM-L", "T2V-S", "T2V-L")
# the experiments of ``dip bench paper``, for the help text (the suite checks names against its own list)
PAPER_EXPERIMENTS = (
    "table1",
    "e2e",
    "dynamic",
    "ablation",
    "submb",
    "memory",
    "search",
    "scalability",
    "accuracy",
    "xl",
)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="run a benchmark (sim, planner, runtime, paper)",
        description="Benchmarks; each prints ratios measured side by side in one run.",
    )
    sub = p.add_subparsers(dest="bench", metavar="BENCHMARK", parser_class=type(p))
    _sim(sub)
    _planner(sub)
    _runtime(sub)
    _paper(sub)
    p.set_defaults(func=lambda args: p.print_help())


def _run_sim(args: argparse.Namespace) -> int:
    from dip.bench import sim  # numba-compiled simulator (about a second to load)

    return sim.run(args)


def _run_planner(args: argparse.Namespace) -> int:
    from dip.bench import planner  # numba-compiled planner (about a second to load)

    return planner.run(args)


def _run_runtime(args: argparse.Namespace) -> int:
    # every option is checked before minutes of benchmarking start
    load_model(args.model)
    positive_int("--repeats", args.repeats)
    positive_int("--steps", args.steps, minimum=2)
    positive_int("--seed", args.seed, minimum=0)
    from dip.bench import runtime  # torch (several seconds to load)

    return runtime.run(args)


def _run_paper(args: argparse.Namespace) -> int:
    from dip.bench.paper import suite  # numba planner, matplotlib and (accuracy) torch: seconds to load

    return suite.run(args)


def _sim(sub) -> None:
    p = sub.add_parser(
        "sim",
        help="simulator throughput (simulated actions per second)",
        description="Time the simulator's per-candidate call on a paper-sized plan.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--model", default="VLM-L", help="model preset or file (default VLM-L)")
    p.add_argument("--repeats", type=int, default=200, help="timed simulations (default 200)")
    p.add_argument("--microbatches", type=int, default=64, help="micro-batches per global batch (default 64)")
    p.add_argument("--segments", type=int, default=3, help="pipeline segments per module, K_i (default 3)")
    p.add_argument("--hardware", default="H800", help="hardware preset (default H800)")
    p.add_argument("--seed", type=int, default=0, help="workload seed (default 0)")
    p.set_defaults(func=_run_sim)


def _planner(sub) -> None:
    p = sub.add_parser(
        "planner",
        help="DIP vs the baselines, ablation, lower-bound gap, search efficiency",
        description="Plan generated batches with DIP and every baseline, run the Table-5 "
        "ablation, the time-to-quality curve and MCTS vs DFS vs random.",
    )
    p.add_argument("--models", nargs="+", default=list(PAPER_MODELS), help="model presets (default: the paper's five)")
    p.add_argument("--batches", type=int, help="batches per model (default 50, 3 with --quick)")
    p.add_argument("--budget", type=float, help="search seconds per batch (default 2, 1 with --quick)")
    p.add_argument("--seed", type=int, default=0, help="workload seed (default 0)")
    p.add_argument("--quick", action="store_true", help="few batches and short searches")
    p.add_argument(
        "--skip", nargs="+", default=[], choices=("e2e", "ablation", "curve", "strategies"), help="sections to skip"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_run_planner)


def _runtime(sub) -> None:
    p = sub.add_parser(
        "runtime",
        help="executor vs torch pipelining; DIP vs 1F1B measured; simulator accuracy",
        description="Measure the runtime on 2 local processes (see dip.bench.runtime).",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--repeats", type=int, default=100, help="timed steps per engine in part (a) (default 100)")
    p.add_argument("--steps", type=int, default=8, help="steps (new batch each) in part (b) (default 8)")
    p.add_argument("--model", default="tiny-vlm", help="model of part (b) (default tiny-vlm)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run_runtime)


def _paper(sub) -> None:
    p = sub.add_parser(
        "paper",
        help="every figure and table of the paper, side by side, with a report",
        description="Run the paper's experiments (all by default, in this order: "
        + ", ".join(PAPER_EXPERIMENTS)
        + "); write one PNG per figure, results.json and REPORT.md (ours | paper | ratio, comments where they "
        "differ by more than 20%) into --out. The full suite (100 batches per model, a 10 s search per batch, every "
        "point) takes about three hours on 2 cores and states its running time in the report; --quick runs every "
        "experiment reduced, in a few minutes.",
    )
    p.add_argument(
        "experiments",
        nargs="*",
        metavar="EXPERIMENT",
        help=f"experiments to run (default: all): {', '.join(PAPER_EXPERIMENTS)}",
    )
    p.add_argument("--quick", action="store_true", help="fewer batches and points, shorter searches (minutes)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for results.json, REPORT.md and the figures")
    p.add_argument("--seed", type=int, default=0, help="workload and search seed (default 0)")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    p.add_argument(
        "--headline-into",
        nargs="+",
        default=[],
        metavar="FILE",
        help="also rewrite the headline block (between the paper-headline markers) of these Markdown files",
    )
    p.set_defaults(func=_run_paper)
