"""``dip plan``: search DIP plans for generated batches and compare them with every baseline.

Model mode: ``dip plan --model VLM-S --batches 8 --seed 1 --budget 2 --json`` plans each batch (offline
partition, then per-batch search), simulates DIP and the baselines on the same batch and prints per-batch
and mean times, lower bounds, speedups and search statistics. ``--exact`` adds the CP-SAT optimum
(small instances only). Uniform mode: ``dip plan --pp 4 --microbatches 8 --uniform-costs 1:1:1``
searches an order for one chain with equal pass costs.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from dip.cli.cmd_simulate import parse_costs
from dip.cli.memory_args import add_memory_arguments, memory_limit_bytes, memory_overrides
from dip.cost.options import CostOptions
from dip.errors import BadInput, positive_int
from dip.io import check_writable, emit
from dip.progress import tracked
from dip.schedule.baselines import build_uniform_plan
from dip.spec.hardware import get_hardware
from dip.spec.presets import load_model
from dip.spec.validate import with_overrides

GIB = 2**30
STRATEGY_CHOICES = ("mcts", "dfs", "random")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "plan",
        help="search DIP plans for generated batches and compare with the baselines",
        description="Plan each generated batch with DIP (modality-aware partition, MCTS segment reordering, "
        "dual-queue interleaving, per-layer memory optimisation), simulate it next to every "
        "baseline and report times, lower bounds and search statistics.",
    )
    p.add_argument("--model", help="model preset name or model file, e.g. VLM-S, T2V-S")
    p.add_argument("--manifest", metavar="FILE", help="plan the batches of this sample manifest (JSONL or Parquet)")
    p.add_argument("--batches", type=int, default=1, help="global batches to plan (default 1)")
    p.add_argument("--seed", type=int, default=0, help="workload and search seed (default 0)")
    p.add_argument("--microbatches", type=int, default=64, help="micro-batches per global batch (default 64)")
    p.add_argument("--hardware", default="H800", help="hardware preset or calibration JSON (default H800)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--budget", type=float, help="search seconds per batch (default 2)")
    budget.add_argument("--rollouts", type=int, help="rollouts per batch: a deterministic search")
    p.add_argument(
        "--workers", type=int, help="search processes sharing MCTS statistics (default: half of this machine's cores)"
    )
    p.add_argument("--strategy", default="mcts", choices=STRATEGY_CHOICES, help="search strategy (default mcts)")
    p.add_argument("--exact", action="store_true", help="also solve the exact optimum with CP-SAT (small instances)")
    p.add_argument("--exact-time-limit", type=float, default=120.0, help="CP-SAT seconds per batch (default 120)")
    add_memory_arguments(p)
    p.add_argument(
        "--sub-microbatch",
        nargs="+",
        metavar="MODULE=B",
        default=[],
        help="override sub-microbatch sizes B_i, e.g. vit=12",
    )
    p.add_argument(
        "--segments", nargs="+", metavar="MODULE=K", default=[], help="override segment counts K_i, e.g. vit=2"
    )
    p.add_argument("--no-baselines", action="store_true", help="skip the baseline schedules")
    p.add_argument("--tp", type=int, help="tensor-parallel degree (default: the model's)")
    p.add_argument("--pp", type=int, help="pipeline ranks (default: the model's; uniform mode 4)")
    p.add_argument("--chunks", type=int, help="uniform mode: chunks per rank (default 1)")
    p.add_argument("--uniform-costs", metavar="F:I:W", help="schedule-only mode with equal per-chunk pass costs")
    p.add_argument("--trace", metavar="FILE", help="write a Chrome/Perfetto trace of the first batch's plan")
    p.add_argument("--gantt", metavar="FILE.png", help="write a Gantt chart (PNG) of the first batch's plan")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def parse_overrides(items: list[str], field: str) -> dict[str, int]:
    """``["vit=12", "dit=2"]`` -> ``{"vit": 12, "dit": 2}``."""
    out: dict[str, int] = {}
    for item in items:
        name, sep, value = str(item).partition("=")
        try:
            number = int(value)
        except ValueError:
            number = 0
        if not sep or not name or number < 1:
            raise BadInput(f"{field} entries must be MODULE=N with N >= 1, got {item!r}")
        out[name] = number
    return out


def run(args: argparse.Namespace) -> int:
    for path, field in ((args.trace, "--trace"), (args.gantt, "--gantt")):
        if path:
            check_writable(path, field)
    if args.rollouts is not None and args.rollouts < 0:
        raise BadInput(f"--rollouts must be >= 0, got {args.rollouts}")
    if args.budget is not None and not (math.isfinite(args.budget) and args.budget > 0):
        raise BadInput(f"--budget must be a finite number of seconds > 0, got {args.budget}")
    if not (math.isfinite(args.exact_time_limit) and args.exact_time_limit > 0):
        raise BadInput(f"--exact-time-limit must be a finite number of seconds > 0, got {args.exact_time_limit}")
    if args.uniform_costs and (args.model or args.manifest):
        raise BadInput("--uniform-costs plans a schedule-only chain; it does not take --model or --manifest")
    if not args.uniform_costs and args.chunks is not None:
        raise BadInput("--chunks is for --uniform-costs; on a model DIP's chunks follow its segments (--segments)")
    if args.workers is None:
        from dip.planner.parallel import default_workers  # numba planner (about a second to load)

        args.workers = default_workers()
    positive_int("workers", args.workers)
    if args.uniform_costs:
        out, plan, result = run_uniform(args)
        text = (
            f"dip (uniform): pp {out['pp']} x {out['chunks']} chunks, {out['microbatches']} micro-batches: "
            f"iteration time {out['iteration_time']:g}, lower bound {out['lower_bound']:g}"
        )
    else:
        out, plan, result = run_model(args)
        text = format_text(out)
    if args.trace:
        from dip.viz.trace import write_chrome_trace  # numba simulator (about a second to load)

        write_chrome_trace(args.trace, plan, result)
    if args.gantt:
        from dip.viz.gantt import write_gantt_png  # matplotlib and the simulator (seconds to load)

        write_gantt_png(args.gantt, plan, result, label=f"dip {out.get('model', 'uniform')}")
    emit(out, args.json, text)
    return 0


def run_uniform(args: argparse.Namespace) -> tuple[dict[str, Any], Any, Any]:
    # numba-compiled planner and simulator (about a second to load): imported only when planning
    from dip.planner.options import SearchOptions
    from dip.planner.uniform import plan_uniform
    from dip.planner.warmup import warm_up
    from dip.sim import simulate, uniform_stage_costs

    f, i, w = parse_costs(args.uniform_costs)
    pp = positive_int("pp", args.pp if args.pp is not None else 4)
    m = positive_int("microbatches", args.microbatches)
    v = positive_int("chunks", args.chunks if args.chunks is not None else 1)
    warm_up()
    options = SearchOptions(budget_s=args.budget, rollouts=args.rollouts, seed=args.seed, strategy=args.strategy)
    plan, result, lb, stats = plan_uniform(pp, m, v, f, i, w, options=options)
    baselines = {}
    for name in ("1f1b", "gpipe", "interleaved", "zb-h1"):
        try:
            base = build_uniform_plan(name, pp, m, v if name == "interleaved" else 1)
        except BadInput:
            continue
        costs = uniform_stage_costs(base.graph, base.units, f, i, w)
        baselines[name] = simulate(base, costs, None).iteration_time
    out = {
        "schedule": "dip",
        "pp": pp,
        "chunks": v,
        "microbatches": m,
        "costs": [f, i, w],
        "iteration_time": result.iteration_time,
        "lower_bound": lb,
        "baselines": baselines,
        "search_time_s": stats.search_time_s,
        "rollouts": stats.rollouts,
        "order": {str(r): " ".join(str(a) for a in acts) for r, acts in plan.order.items()},
    }
    return out, plan, result


def run_model(args: argparse.Namespace) -> tuple[dict[str, Any], Any, Any]:
    from dip.planner.report import PlanRequest, plan_batches  # numba planner (about a second to load)

    if not args.model:
        raise BadInput("give --model (e.g. VLM-S) or --uniform-costs F:I:W")
    tp = positive_int("--tp", args.tp) if args.tp is not None else None
    pp = positive_int("--pp", args.pp) if args.pp is not None else None
    model = with_overrides(load_model(args.model), tp=tp, pp=pp, **memory_overrides(args))
    hardware = get_hardware(args.hardware)
    limit = memory_limit_bytes(hardware, args.memory_limit_gib, args.memory_reserve_gib)
    request = PlanRequest(
        model=model,
        batches=positive_int("batches", args.batches),
        seed=positive_int("seed", args.seed, minimum=0),
        microbatches=positive_int("microbatches", args.microbatches),
        hardware=args.hardware,
        budget_s=args.budget,
        rollouts=args.rollouts,
        workers=args.workers,
        strategy=args.strategy,
        exact=args.exact,
        exact_time_limit_s=args.exact_time_limit,
        memory_limit_bytes=limit,
        sub_microbatch=parse_overrides(args.sub_microbatch, "--sub-microbatch"),
        segments=parse_overrides(args.segments, "--segments"),
        baselines=not args.no_baselines,
        manifest=args.manifest,
    )
    with tracked("planning", request.batches) as advance:
        out, first = plan_batches(request, on_batch=advance)
    opts = CostOptions.from_parallel(model.parallel)
    out.update(
        tp=opts.tp,
        dp=opts.dp,
        sequence_parallel=opts.sequence_parallel,
        distributed_optimizer=opts.distributed_optimizer,
        memory_capacity_bytes=float(hardware.mem_bytes),
        memory_limit_bytes=limit,
    )
    return out, first.plan, first.sim


def format_text(out: dict[str, Any]) -> str:
    mean = out["mean"]
    lines = [
        f"dip on {out['model']} ({out['microbatches']} micro-batches, {len(out['per_batch'])} batches): "
        f"mean {mean['dip_time_s']:.3f} s, lower bound {mean['lower_bound_s']:.3f} s, "
        f"search {mean['search_time_s']:.2f} s"
    ]
    for name, t in mean["baselines"].items():
        if t is None:  # over the memory limit in some batch: no time, no speedup
            lines.append(f"  {name:<16}      OOM   (over the usable memory in some batch)")
        else:
            lines.append(f"  {name:<16} {t:8.3f} s   dip speedup {mean['speedup_vs'][name]:.3f}x")
    fitting = {name: t for name, t in mean["baselines"].items() if t is not None}
    if fitting:
        fastest = min(fitting, key=fitting.get)
        lines.append(f"  fastest fitting baseline: {fastest} ({fitting[fastest]:.3f} s)")
    for k, row in enumerate(out["per_batch"]):
        peak = " ".join(f"{b / GIB:.1f}" for b in row["peak_memory_bytes"])
        extra = f", exact {row['exact_time_s']:.3f} s ({row['exact_status']})" if "exact_time_s" in row else ""
        lines.append(
            f"  batch {k}: dip {row['dip_time_s']:.3f} s, lower bound {row['lower_bound_s']:.3f} s{extra}, "
            f"{row['rollouts']} rollouts, peak GiB [{peak}]"
        )
    return "\n".join(lines)
