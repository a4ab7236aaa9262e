"""Fig. 10 (§7.3): rank 0's memory over one iteration of VLM-M.

Four plans of the same batch: Megatron-LM, Optimus (both with the cheapest uniform recomputation
that fits), "DIP (non-adaptive)" — DIP's search with one uniform memory strategy for every layer
(the cheapest that fits) instead of the per-layer memory optimisation — and DIP. A fifth plan, DIP
with Optimus's peak memory as its limit, measures the paper's "at equal peak memory" comparison.
Fluctuation is the time-weighted standard deviation of rank 0's memory over the iteration.
"""

from __future__ import annotations

import math

import numpy as np

from dip.bench.paper.common import GIB, Context, Experiment, Row, Settings, row
from dip.bench.paper.plots import color, new_figure, save
from dip.data.workload import generate_batches
from dip.errors import Infeasible
from dip.planner import SearchOptions, default_partition, plan_schedule
from dip.planner.problem import build_problem
from dip.planner.result import build_result
from dip.planner.search import search_problem
from dip.schedule.baselines.memory import UNIFORM_STRATEGIES
from dip.sim import SimResult, SimulatedPlan
from dip.spec.hardware import usable_memory_bytes

__all__ = ["NAME", "TITLE", "draw", "fluctuation", "non_adaptive_plan", "run", "steps"]

NAME = "memory"
TITLE = "Fig. 10: rank-0 memory over one iteration (VLM-M)"
RANK = 0
NON_ADAPTIVE = "dip (non-adaptive)"
SYSTEMS = ("megatron", "optimus", NON_ADAPTIVE, "dip")


def steps(settings: Settings) -> int:
    return len(SYSTEMS) + 1


def non_adaptive_plan(model, batch, cost_model, hardware, options: SearchOptions) -> SimulatedPlan:
    """DIP's search with every layer at one uniform strategy: the cheapest of ``none``, ``selective``,
    ``full`` with which a plan fits the usable memory."""
    partition = default_partition(model, cost_model)
    limit = usable_memory_bytes(hardware)
    for strategy in UNIFORM_STRATEGIES:
        problem = build_problem(model, partition, batch, cost_model, hardware, limit, uniform=strategy)
        try:
            state, stats = search_problem(problem, options)
        except Infeasible:
            continue
        result = build_result(problem, state.best, state.initial, stats, cost_model, hardware)
        result.plan.meta["memory_strategy"] = strategy
        return result.simulated
    raise Infeasible(f"no uniform memory strategy fits {model.name}'s batch {batch.index} under DIP's partition")


def fluctuation(result: SimResult, rank: int = RANK) -> float:
    """Time-weighted standard deviation of ``rank``'s memory (bytes) over the iteration."""
    times, mem = result.memory_timeline(rank)
    ends = np.append(times[1:], max(result.makespan, times[-1]))
    weights = np.maximum(ends - times, 0.0)
    if weights.sum() <= 0:
        return 0.0
    mean = float(np.average(mem, weights=weights))
    return math.sqrt(float(np.average((mem - mean) ** 2, weights=weights)))


def run(ctx: Context) -> Experiment:
    s = ctx.settings
    model, hardware, cost_model = ctx.cost_setup(s.memory_model)
    batch = generate_batches(model, 1, s.seed, microbatches=s.microbatches)[0]
    plans: dict[str, SimulatedPlan] = {}
    for name in SYSTEMS:
        if name == NON_ADAPTIVE:
            plans[name] = non_adaptive_plan(model, batch, cost_model, hardware, s.search())
        else:
            plans[name] = plan_schedule(name, model, batch, cost_model, hardware, search=s.search())
        ctx.tick(name)
    optimus_peak = float(plans["optimus"].result.peak_memory_bytes.max())
    equal = plan_schedule(
        "dip",
        model,
        batch,
        cost_model,
        hardware,
        memory_limit_bytes=min(optimus_peak, usable_memory_bytes(hardware)),
        search=s.search(),
    )
    ctx.tick("dip at Optimus's peak memory")
    peak = {n: float(p.result.peak_memory_bytes[RANK]) for n, p in plans.items()}
    swing = {n: fluctuation(p.result) for n, p in plans.items()}
    rows: list[Row] = []
    for name, p in plans.items():
        rows.append(row(NAME, f"{name}: iteration time", float(p.result.iteration_time), "s", p.fits))
        rows.append(row(NAME, f"{name}: peak memory, rank 0", peak[name] / GIB, "GiB", p.fits))
        rows.append(row(NAME, f"{name}: memory fluctuation, rank 0", swing[name] / GIB, "GiB"))
    rows.append(row(NAME, "Optimus / Megatron-LM: peak memory, rank 0", peak["optimus"] / peak["megatron"], "x"))
    rows.append(row(NAME, "DIP / Megatron-LM: memory fluctuation, rank 0", swing["dip"] / swing["megatron"], "x"))
    equal_ratio = (
        float(plans["optimus"].result.iteration_time) / float(equal.result.iteration_time)
        if equal.fits and plans["optimus"].fits
        else None
    )
    rows.append(row(NAME, "Optimus / DIP: iteration time at Optimus's peak memory", equal_ratio, "x"))
    timelines = {}
    for name, p in plans.items():
        times, mem = p.result.memory_timeline(RANK)
        timelines[name] = {"time_s": times.tolist(), "bytes": mem.tolist(), "end_s": float(p.result.makespan)}
    exp = Experiment(
        NAME,
        TITLE,
        rows,
        f"{NAME}.png",
        settings={
            "model": s.memory_model,
            "batch": 0,
            "microbatches": s.microbatches,
            "hardware": s.hardware,
            "search": s.search_label(),
            "usable_memory_gib": usable_memory_bytes(hardware) / GIB,
        },
        notes=[
            "Memory strategies: "
            + "; ".join(f"{n}: {p.plan.meta.get('memory_strategy', 'per-layer')}" for n, p in plans.items())
            + ".",
            f"DIP at Optimus's peak memory ({optimus_peak / GIB:.1f} GiB on its fullest rank): "
            f"{equal.result.iteration_time:.2f} s.",
        ],
        data={"timelines": timelines, "usable_memory_bytes": usable_memory_bytes(hardware)},
    )
    draw(exp, ctx.figure_path(exp.figure))
    return exp


def draw(exp: Experiment, path: str) -> None:
    fig, ax = new_figure(9.0, 4.6)
    for name, tl in exp.data["timelines"].items():
        times = [*tl["time_s"], tl["end_s"]]
        mem = [b / GIB for b in tl["bytes"]]
        ax.step(times, [*mem, mem[-1]], where="post", color=color(name), label=name, lw=1.2)
    ax.axhline(exp.data["usable_memory_bytes"] / GIB, color="black", ls="--", lw=0.8, label="usable memory")
    ax.set_xlabel("time in the iteration (s)")
    ax.set_ylabel("rank 0 memory: static + activations (GiB)")
    ax.set_title("Fig. 10: rank 0's memory over one simulated iteration (VLM-M)")
    ax.legend(fontsize=8)
    save(fig, path)
