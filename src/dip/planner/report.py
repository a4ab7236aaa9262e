"""Plan several generated batches and compare DIP with the baselines on each (``dip plan``, benchmarks).

The fits rule: a baseline plan over the usable memory is no time. Per batch, ``baselines[name]`` is its
iteration time when it fits and ``None`` when it does not (``baselines_fit[name]`` false, the simulated
time kept in ``baselines_over_limit_s``); in ``mean``, ``baselines[name]`` and ``speedup_vs[name]`` are
``None`` for a baseline that does not fit in some batch (``baselines_fit[name]`` false).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from dip.cost import CostModel
from dip.data.manifest import manifest_batches
from dip.data.workload import generate_batches
from dip.errors import BadInput
from dip.planner.exact import solve_exact
from dip.planner.options import SearchOptions
from dip.planner.partitioner import partition_model
from dip.planner.result import CALIBRATION_SEED, PlanResult, default_partition
from dip.planner.schedules import check_schedule, plan_schedule
from dip.planner.search import plan_batch
from dip.spec.hardware import get_hardware
from dip.spec.presets import load_model

__all__ = ["BASELINES", "PlanRequest", "baseline_times", "plan_batches"]

logger = logging.getLogger(__name__)

BASELINES = ("megatron", "nnscaler", "optimus", "1f1b", "interleaved", "zb-h1", "gpipe")


@dataclass
class PlanRequest:
    """What to plan: a model, generated batches and the search settings."""

    model: object
    batches: int = 1
    seed: int = 0
    microbatches: int = 64
    hardware: str = "H800"
    budget_s: float | None = None
    rollouts: int | None = None
    workers: int = 1
    strategy: str = "mcts"
    exact: bool = False
    exact_time_limit_s: float = 120.0
    memory_limit_bytes: float | None = None
    sub_microbatch: dict[str, int] = field(default_factory=dict)
    segments: dict[str, int] = field(default_factory=dict)
    baselines: bool = True
    baseline_names: tuple[str, ...] = BASELINES
    search_options: dict = field(default_factory=dict)  # further SearchOptions fields
    manifest: str | None = None  # plan the first ``batches`` batches of this manifest instead of generated ones

    def search(self, batch_index: int) -> SearchOptions:
        """The search options of batch ``batch_index`` (each batch its own seed)."""
        return SearchOptions(
            budget_s=self.budget_s,
            rollouts=self.rollouts,
            workers=self.workers,
            seed=self.seed * 1000 + batch_index,
            strategy=self.strategy,
            **self.search_options,
        )


def resolve_model(model):
    return load_model(model) if isinstance(model, str) else model


def make_partition(model, cost_model, request: PlanRequest):
    """The offline partition (cached) or one with the requested B_i / K_i overrides."""
    if not request.sub_microbatch and not request.segments:
        return default_partition(model, cost_model)
    sample = generate_batches(model, 1, CALIBRATION_SEED)
    return partition_model(
        model,
        cost_model,
        sample=sample,
        sub_microbatch=request.sub_microbatch or None,
        segments=request.segments or None,
    )


def baseline_times(model, batch, cost_model, hardware, limit: float | None, names) -> dict[str, dict]:
    """Every applicable baseline on ``batch``: ``baselines`` (time, ``None`` when over the limit),
    ``baselines_fit``, ``baselines_over_limit_s``, ``baselines_strategy`` and ``baselines_peak_memory_bytes``."""
    out: dict[str, dict] = {
        "baselines": {},
        "baselines_fit": {},
        "baselines_over_limit_s": {},
        "baselines_strategy": {},
        "baselines_peak_memory_bytes": {},
    }
    for name in names:
        try:
            check_schedule(name, model)
        except BadInput as exc:
            logger.debug("baseline %s skipped: %s", name, exc)
            continue
        sim = plan_schedule(name, model, batch, cost_model, hardware, memory_limit_bytes=limit)
        t = float(sim.result.iteration_time)
        out["baselines"][name] = t if sim.fits else None
        out["baselines_fit"][name] = sim.fits
        if not sim.fits:
            out["baselines_over_limit_s"][name] = t
        out["baselines_strategy"][name] = sim.plan.meta.get("memory_strategy")
        out["baselines_peak_memory_bytes"][name] = [float(x) for x in sim.result.peak_memory_bytes]
    return out


def plan_batches(request: PlanRequest, on_batch: Callable[[str], None] | None = None) -> tuple[dict, PlanResult]:
    """Plan every batch; returns the ``dip plan --json`` object and the first batch's result."""
    model = resolve_model(request.model)
    hardware = get_hardware(request.hardware)
    cost_model = CostModel(model, hardware)
    partition = make_partition(model, cost_model, request)
    if request.manifest:
        batches = manifest_batches(model, request.manifest, request.microbatches)[: request.batches]
    else:
        batches = generate_batches(model, request.batches, request.seed, microbatches=request.microbatches)
    rows, first = [], None
    for k, batch in enumerate(batches):
        res = plan_batch(
            model,
            batch,
            cost_model,
            hardware,
            partition=partition,
            memory_limit_bytes=request.memory_limit_bytes,
            options=request.search(k),
        )
        first = first or res
        row = res.summary()
        row["dip_fits"] = not res.sim.oom
        if request.exact:
            ex = solve_exact(res.problem, time_limit_s=request.exact_time_limit_s, hint=res)
            row.update(ex.summary())
        if request.baselines:
            row.update(
                baseline_times(model, batch, cost_model, hardware, res.memory_limit_bytes, request.baseline_names)
            )
        rows.append(row)
        if on_batch is not None:
            on_batch(f"planned batch {k + 1} of {len(batches)}")
    return summarize(model, request, partition, rows), first


def summarize(model, request: PlanRequest, partition, rows: list[dict]) -> dict:
    n = len(rows)

    def mean(key: str) -> float:
        return sum(r[key] for r in rows) / n

    mean_row = {
        key: mean(key)
        for key in (
            "dip_time_s",
            "lower_bound_s",
            "lower_bound_fastest_s",
            "initial_time_s",
            "search_time_s",
            "time_to_best_s",
            "rollouts",
        )
    }
    if rows and "exact_time_s" in rows[0]:
        mean_row["exact_time_s"] = mean("exact_time_s")
    mean_row["dip_fits"] = all(r["dip_fits"] for r in rows)
    ranks = len(rows[0]["peak_memory_bytes"]) if rows else 0
    mean_row["dip_peak_memory_bytes"] = [max(r["peak_memory_bytes"][k] for r in rows) for k in range(ranks)]
    mean_row.update(mean_baselines(request.baseline_names, rows, mean_row["dip_time_s"]))
    return {
        "model": model.name,
        "hardware": request.hardware,
        "microbatches": request.microbatches,
        "batches": n,
        "seed": request.seed,
        "strategy": request.strategy,
        "workers": request.workers,
        "budget_s": request.budget_s,
        "rollouts": request.rollouts,
        "mean": mean_row,
        "per_batch": rows,
        "partition": partition.summary(),
    }


def mean_baselines(names, rows: list[dict], dip_time_s: float) -> dict[str, dict]:
    """``baselines`` (mean time), ``baselines_fit`` and ``speedup_vs`` over ``rows``: ``None`` time and
    speedup for a baseline that does not fit in some batch."""
    present = [name for name in names if rows and name in rows[0].get("baselines_fit", {})]
    fit = {name: all(r["baselines_fit"][name] for r in rows) for name in present}
    times = {name: sum(r["baselines"][name] for r in rows) / len(rows) if fit[name] else None for name in present}
    speedup = {name: t / dip_time_s if t is not None else None for name, t in times.items()}
    return {"baselines": times, "baselines_fit": fit, "speedup_vs": speedup}
