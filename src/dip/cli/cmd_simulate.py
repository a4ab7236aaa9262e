"""``dip simulate``: build a schedule's plan for generated batches (or a uniform chain) and simulate it.

Model mode: ``dip simulate --model VLM-S --schedule megatron --batches 3`` prints per-batch and mean
iteration time, bubble fraction, MFU, per-rank peak memory and the lower bound.
Uniform mode: ``dip simulate --uniform-costs 1:1:1 --pp 4 --microbatches 8 --schedule 1f1b`` times a
schedule with equal per-chunk pass costs ``F:I:W`` and free communication.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from dip.cli.memory_args import add_memory_arguments, memory_limit_bytes, memory_overrides
from dip.cost import CostModel
from dip.cost.options import CostOptions
from dip.data.manifest import manifest_batches
from dip.data.workload import generate_batches
from dip.errors import BadInput, positive_int
from dip.io import check_writable, emit
from dip.progress import tracked
from dip.schedule.baselines import build_uniform_plan
from dip.schedule.export import to_torch_csv
from dip.schedule.ir import Plan
from dip.schedule.validate import validate_plan
from dip.spec.hardware import get_hardware
from dip.spec.presets import load_model as load_preset
from dip.spec.validate import with_overrides

GIB = 2**30
DEFAULT_UNIFORM_PP = 4


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="simulate a schedule (dip or a baseline) on generated batches or uniform costs",
        description="Build the plan of a schedule for each generated batch of a model (or for a uniform "
        "chain with --uniform-costs), validate it and simulate it: iteration time, bubble "
        "fraction, MFU, per-rank peak memory, lower bound.",
    )
    p.add_argument("--model", help="model preset name or model file, e.g. VLM-S, T2V-S")
    p.add_argument(
        "--schedule",
        required=True,
        help="schedule: gpipe, 1f1b, interleaved, zb-h1, megatron, megatron-params, nnscaler, optimus (and dip)",
    )
    p.add_argument("--manifest", metavar="FILE", help="simulate the batches of this sample manifest (JSONL or Parquet)")
    p.add_argument("--batches", type=int, default=1, help="global batches to simulate (default 1)")
    p.add_argument("--seed", type=int, default=0, help="workload seed (default 0)")
    p.add_argument("--microbatches", type=int, default=64, help="micro-batches per global batch (default 64)")
    p.add_argument("--hardware", default="H800", help="hardware preset or calibration JSON (default H800)")
    p.add_argument("--tp", type=int, help="tensor parallel degree (default: the model's)")
    p.add_argument("--pp", type=int, help="pipeline parallel degree (default: the model's; uniform mode: 4)")
    add_memory_arguments(p)
    p.add_argument("--chunks", type=int, help="chunks per rank (interleaved schedules; default 2 where allowed)")
    p.add_argument(
        "--uniform-costs",
        metavar="F:I:W",
        help="schedule-only mode: every chunk pass costs F (forward), I (backward-input), W (weight)",
    )
    p.add_argument("--trace", metavar="FILE", help="write a Chrome/Perfetto trace of the first batch")
    p.add_argument("--gantt", metavar="FILE.png", help="write a Gantt chart (PNG) of the first batch")
    p.add_argument(
        "--export-torch", metavar="FILE.csv", help="write the first plan as a torch pipelining CSV (linear chains only)"
    )
    p.add_argument("--strict", action="store_true", help="exit with code 1 when a plan does not fit the usable memory")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for path, field in ((args.trace, "--trace"), (args.gantt, "--gantt"), (args.export_torch, "--export-torch")):
        if path:
            check_writable(path, field)
    # numba-compiled planner and simulator (about a second to load): imported once the options are checked
    from dip.planner.schedules import check_schedule

    args.schedule = check_schedule(args.schedule)  # unknown names fail before any work
    if args.uniform_costs and (args.model or args.manifest):
        raise BadInput("--uniform-costs simulates a schedule-only chain; it does not take --model or --manifest")
    if args.uniform_costs:
        out, plan, result = run_uniform(args)
        text = (
            f"{out['schedule']}: pp {out['pp']} x {out['chunks']} chunks, {out['microbatches']} micro-batches: "
            f"iteration time {out['iteration_time']:g}, bubble {out['bubble_fraction']:.3f}, "
            f"peak activations {out['peak_activations']}"
        )
    else:
        out, plan, result = run_model(args)
        text = format_text(out)
    write_outputs(args, plan, result)
    emit(out, args.json, text)
    if args.strict and not out.get("fits", True):
        sys.stderr.write(f"dip simulate: the {out['schedule']} plan does not fit the usable memory\n")
        return 1
    return 0


# -- uniform mode ---------------------------------------------------------------------------------
def parse_costs(text: str) -> tuple[float, float, float]:
    parts = str(text).split(":")
    try:
        values = tuple(float(x) for x in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or any(not math.isfinite(v) or v < 0 for v in values):
        raise BadInput(f"--uniform-costs must be F:I:W with three finite non-negative numbers, got {text!r}")
    return values  # type: ignore[return-value]


def run_uniform(args: argparse.Namespace) -> tuple[dict[str, Any], Plan, Any]:
    from dip.sim import simulate, uniform_stage_costs  # numba (heavy): see run()

    f, i, w = parse_costs(args.uniform_costs)
    if args.schedule == "dip":
        raise BadInput("schedule dip searches its own order: run `dip plan --uniform-costs F:I:W` for uniform costs")
    pp = positive_int("pp", args.pp if args.pp is not None else DEFAULT_UNIFORM_PP)
    m = positive_int("microbatches", args.microbatches)
    v = positive_int("chunks", args.chunks if args.chunks is not None else 1)
    plan = build_uniform_plan(args.schedule, pp, m, v)
    validate_plan(plan)
    costs = uniform_stage_costs(plan.graph, plan.units, f, i, w)
    result = simulate(plan, costs, None, args.memory_limit_gib * GIB if args.memory_limit_gib else None)
    check_completed(result, plan)
    out = {
        "schedule": plan.schedule,
        "pp": pp,
        "chunks": v,
        "microbatches": m,
        "costs": [f, i, w],
        "iteration_time": result.iteration_time,
        "bubble_fraction": result.bubble_fraction,
        "peak_activations": [int(x) for x in result.peak_activations],
        "lower_bound": result.lower_bound,
    }
    return out, plan, result


# -- model mode -----------------------------------------------------------------------------------
def load_model(args: argparse.Namespace):
    if not args.model:
        raise BadInput("give --model (e.g. VLM-S) or --uniform-costs F:I:W")
    return with_overrides(load_preset(args.model), tp=args.tp, pp=args.pp, **memory_overrides(args))


def run_model(args: argparse.Namespace) -> tuple[dict[str, Any], Plan, Any]:
    from dip.planner.schedules import check_schedule, plan_schedule  # numba (heavy): see run()

    model = load_model(args)
    name = check_schedule(args.schedule, model)
    batches_n = positive_int("batches", args.batches)
    m = positive_int("microbatches", args.microbatches)
    positive_int("seed", args.seed, minimum=0)
    chunks = positive_int("chunks", args.chunks) if args.chunks is not None else None
    if args.export_torch and len(model.modules) > 1:
        raise BadInput(
            f"--export-torch needs a linear chain (a one-module model or --uniform-costs); "
            f"model {model.name} has {len(model.modules)} modules"
        )
    hardware = get_hardware(args.hardware)
    limit = memory_limit_bytes(hardware, args.memory_limit_gib, args.memory_reserve_gib)
    cost_model = CostModel(model, hardware, model.parallel.tp)
    if args.manifest:
        batches = manifest_batches(model, args.manifest, m)[:batches_n]
    else:
        batches = generate_batches(model, batches_n, args.seed, microbatches=m)
    per_batch, first = [], None
    with tracked(f"simulating {name}", len(batches)) as advance:
        for batch in batches:
            sim = plan_schedule(
                name, model, batch, cost_model, hardware, chunks=chunks, memory_limit_bytes=limit, check=validate_plan
            )
            check_completed(sim.result, sim.plan)
            per_batch.append(batch_row(sim))
            first = first or sim
            advance()
    out = summarize(name, model, m, limit, hardware, per_batch)
    return out, first.plan, first.result


def batch_row(sim) -> dict[str, Any]:
    r = sim.result
    meta = sim.plan.meta
    row = {
        "iteration_time_s": r.iteration_time,
        "bubble_fraction": r.bubble_fraction,
        "mfu": r.mfu,
        "peak_memory_bytes": [float(x) for x in r.peak_memory_bytes],
        "lower_bound_s": r.lower_bound,
        "strategy": meta.get("memory_strategy", "per-layer"),
        "strategy_per_rank": meta.get("memory_strategy_per_rank"),
        "fits": not r.oom,
        "fits_memory": not r.oom,
        "chunks_per_rank": meta.get("chunks_per_rank"),
    }
    for key in ("split", "encoder_bound", "notice"):
        if key in meta:
            row[key] = meta[key]
    return row


def summarize(schedule: str, model, m: int, limit: float, hardware, rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(rows)

    def mean(key: str) -> float:
        return sum(r[key] for r in rows) / n

    ranks = len(rows[0]["peak_memory_bytes"])
    opts = CostOptions.from_parallel(model.parallel)
    out = {
        "schedule": schedule,
        "model": model.name,
        "hardware": hardware.name,
        "tp": model.parallel.tp,
        "pp": model.parallel.pp,
        "dp": model.parallel.dp,
        "sequence_parallel": opts.sequence_parallel,
        "distributed_optimizer": opts.distributed_optimizer,
        "microbatches": m,
        "batches": n,
        "iteration_time_s": mean("iteration_time_s"),
        "bubble_fraction": mean("bubble_fraction"),
        "mfu": mean("mfu"),
        "peak_memory_bytes": [max(r["peak_memory_bytes"][k] for r in rows) for k in range(ranks)],
        "lower_bound_s": mean("lower_bound_s"),
        "memory_capacity_bytes": float(hardware.mem_bytes),
        "memory_limit_bytes": limit,
        "fits": all(r["fits"] for r in rows),
        "strategy": rows[0]["strategy"] if all(r["strategy"] == rows[0]["strategy"] for r in rows) else "per batch",
        "per_batch": rows,
    }
    notices = [r["notice"] for r in rows if "notice" in r]
    if notices:
        out["notice"] = notices[0]
    return out


def format_text(out: dict[str, Any]) -> str:
    lines = [
        f"{out['schedule']} on {out['model']} ({out['hardware']}, tp {out['tp']} pp {out['pp']} dp {out['dp']}, "
        f"{out['microbatches']} micro-batches): mean iteration {out['iteration_time_s']:.3f} s, "
        f"lower bound {out['lower_bound_s']:.3f} s, bubble {out['bubble_fraction']:.3f}, MFU {out['mfu']:.3f}"
    ]
    for k, r in enumerate(out["per_batch"]):
        mem = " ".join(f"{b / GIB:.1f}" for b in r["peak_memory_bytes"])
        lines.append(
            f"  batch {k}: {r['iteration_time_s']:.3f} s, bubble {r['bubble_fraction']:.3f}, "
            f"MFU {r['mfu']:.3f}, memory {r['strategy']}, peak GiB per rank [{mem}]"
            + ("" if r["fits"] else "  (OOM: over the usable memory)")
        )
    if "notice" in out:
        lines.append(f"  {out['notice']}")
    return "\n".join(lines)


# -- shared ---------------------------------------------------------------------------------------
def check_completed(result, plan: Plan) -> None:
    if getattr(result, "ok", True):
        return
    stuck = ", ".join(f"rank {r} at {a}" for r, _, a in getattr(result, "stuck", [])[:4])
    raise BadInput(f"schedule {plan.schedule} did not complete in simulation ({result.status}; {stuck})")


def write_outputs(args: argparse.Namespace, plan: Plan, result) -> None:
    if args.trace:
        from dip.viz.trace import write_chrome_trace  # numba simulator (about a second to load)

        write_via_temp(args.trace, lambda tmp: write_chrome_trace(tmp, plan, result))
    if args.gantt:
        from dip.viz.gantt import write_gantt_png  # matplotlib (about a second to load)

        write_via_temp(args.gantt, lambda tmp: write_gantt_png(tmp, plan, result), suffix=".png")
    if args.export_torch:
        if len(plan.graph.groups) != 1 or plan.flows or any(len(c.parts) != 1 for c in plan.graph.chunks):
            raise BadInput(
                f"--export-torch needs a linear chain of single-module chunks; "
                f"the {plan.schedule} plan has groups {', '.join(plan.graph.groups)}"
            )
        write_via_temp(args.export_torch, lambda tmp: to_torch_csv(plan, tmp), suffix=".csv")


def write_via_temp(path: str, writer: Callable[[str], object], suffix: str = ".json") -> None:
    """Run ``writer`` on a temporary file next to ``path``, then move it into place (never half-written)."""
    d = os.path.dirname(os.path.abspath(path)) or "."
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".dip-tmp-", suffix=suffix)
    os.close(fd)
    try:
        writer(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
