"""A baseline configured as its users would configure it, for one batch (docs/baselines.md).

* Mixed baselines (``megatron``, ``interleaved``, ``1f1b``, ``zb-h1``, ``gpipe``, ``nnscaler``): the
  time-balanced layer split (:func:`dip.schedule.baselines.plans.layer_split`), chosen once per
  model, schedule and memory limit on the representative batch; when a rank does not fit there even
  with full recompute because its chunks' weights and optimizer state are too large (the T2V text
  encoder packed onto one rank), the split is redone with a cap on each chunk's static bytes, lowered
  until the representative batch fits. Then, on the batch itself, the per-rank memory rule
  (:func:`dip.sim.plans.fit_memory`). ``megatron-params`` keeps the parameter-balanced split.
* ``optimus``: without a bound on in-flight encoder micro-batches when that plan fits under the memory
  rule, else the largest bound that fits (bisection between the smallest bound the LM pipeline allows
  and no bound); when none fits, the plan with the smallest bound is returned with ``fits`` false and
  a ``notice`` in ``plan.meta`` saying so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from dip.data.meta import BatchMeta
from dip.errors import BadInput
from dip.schedule.baselines import Schedule
from dip.schedule.baselines.common import chain_of
from dip.schedule.baselines.optimus import encoder_and_lm, min_inflight, pass_times
from dip.schedule.baselines.plans import layer_split
from dip.schedule.baselines.weights import layer_static_bytes, representative_batch
from dip.schedule.ir import Plan, StageGraph
from dip.schedule.partition import chunk_ranges
from dip.sim.plans import SimulatedPlan, fit_memory
from dip.spec.hardware import usable_memory_bytes
from dip.spec.model import ModelSpec

__all__ = ["MAX_CAP_STEPS", "plan_baseline", "tuned_split"]

logger = logging.getLogger(__name__)

MAX_CAP_STEPS = 8
_SPLITS: dict[tuple, StageGraph] = {}

Check = Callable[[Plan], None] | None


def plan_baseline(
    sched: Schedule,
    model: ModelSpec,
    batch: BatchMeta,
    cost_model,
    hardware,
    *,
    chunks: int | None = None,
    memory_limit_bytes: float | None = None,
    check: Check = None,
) -> SimulatedPlan:
    """The simulated plan of ``batch`` under baseline ``sched`` (module docstring).

    Args:
        sched: the baseline (:func:`dip.schedule.baselines.get_generator`).
        model: the model with its parallel layout.
        batch: the batch's micro-batch metadata.
        cost_model: pass times and memory.
        hardware: the hardware spec.
        chunks: chunks per rank (default: the schedule's).
        memory_limit_bytes: usable memory per GPU (default: the hardware's).
        check: called on every plan before it is simulated (e.g. the plan validator).

    Returns:
        The plan with the memory rule applied and its simulation.
    """
    limit = float(usable_memory_bytes(hardware) if memory_limit_bytes is None else memory_limit_bytes)
    if not sched.mixed:
        return _optimus(sched, model, batch, cost_model, hardware, chunks, limit, check)
    v = sched.chunks_for(model, chunks, len(batch))
    graph = tuned_split(sched, model, cost_model, hardware, v, len(batch), limit)
    plan = sched.build(model, batch, cost_model, chunks=v, graph=graph)
    if check is not None:
        check(plan)
    return fit_memory(plan, model, cost_model, batch, hardware, limit)


def tuned_split(
    sched: Schedule, model: ModelSpec, cost_model, hardware, v: int, microbatches: int, limit: float
) -> StageGraph:
    """``sched``'s layer split with ``v`` chunks per rank, capped so that the representative batch fits
    (cached per model, hardware, schedule order, ``v``, micro-batches and limit)."""
    key = (model, cost_model.hardware.name, cost_model.tp, sched.order, sched.split, v, microbatches, limit)
    graph = _SPLITS.get(key)
    if graph is None:
        graph = _SPLITS[key] = _fit_split(sched, model, cost_model, hardware, v, microbatches, limit)
    return graph


def _fit_split(sched: Schedule, model, cost_model, hardware, v: int, microbatches: int, limit: float) -> StageGraph:
    graph = layer_split(model, sched.split, v, cost_model, microbatches)
    if sched.split != "time":
        return graph
    rep = representative_batch(model, microbatches)
    static = layer_static_bytes(model, cost_model)
    candidate = graph
    for _ in range(MAX_CAP_STEPS):
        sim = fit_memory(sched.build(model, rep, cost_model, graph=candidate), model, cost_model, rep, hardware, limit)
        if sim.fits:
            if candidate is not graph:
                logger.info("%s on %s: chunk static bytes capped so that the split fits", sched.name, model.name)
            return candidate
        result = sim.result
        over = {r for r in range(candidate.num_ranks) if result.peak_memory_bytes[r] > limit}
        ranges = chunk_ranges(candidate)
        heaviest = max(sum(static[slice(*ranges[c.index])]) for c in candidate.chunks if c.rank in over)
        overflow = max(result.peak_memory_bytes[r] - limit for r in over)
        cap = min(heaviest - overflow, 0.95 * heaviest)
        try:
            candidate = layer_split(model, sched.split, v, cost_model, microbatches, max_chunk_static_bytes=cap)
        except BadInput:
            break
    logger.info(
        "%s on %s: no split fits the representative batch; keeping the time-balanced one", sched.name, model.name
    )
    return graph


def _optimus(sched: Schedule, model, batch, cost_model, hardware, chunks, limit: float, check: Check) -> SimulatedPlan:
    def run(bound: int | None) -> SimulatedPlan:
        plan = sched.build(model, batch, cost_model, chunks=chunks, inflight=bound)
        if check is not None:
            check(plan)
        return fit_memory(plan, model, cost_model, batch, hardware, limit)

    best = run(None)
    if best.fits:
        best.plan.meta["encoder_bound"] = None
        return best
    plan = best.plan
    vit, llm = encoder_and_lm(model)
    enc_units = list(plan.units[vit])
    duration = pass_times(model, plan.graph, plan.units, batch, cost_model)
    lo = min_inflight(
        chain_of(plan.graph, vit, plan.units[vit]), chain_of(plan.graph, llm, plan.units[llm]), enc_units, duration
    )
    smallest = run(lo)
    if not smallest.fits:
        smallest.plan.meta["encoder_bound"] = lo
        smallest.plan.meta["notice"] = (
            f"optimus: no bound on in-flight encoder micro-batches fits in {limit / 2**30:.1f} GiB "
            f"(the smallest bound the LM pipeline allows, {lo}, is over the limit)"
        )
        logger.info("%s", smallest.plan.meta["notice"])
        return smallest
    best, hi = smallest, len(enc_units) - 1
    while lo < hi:  # the largest bound that fits: lo fits, everything above hi does not
        mid = (lo + hi + 1) // 2
        sim = run(mid)
        if sim.fits:
            best, lo = sim, mid
        else:
            hi = mid - 1
    best.plan.meta["encoder_bound"] = lo
    return best
