"""Plan a batch under any named schedule, DIP or a baseline: the one entry point that ``dip plan``,
``dip simulate``, the trainer and the benchmarks call.

* ``dip``: DIP's per-batch search (:func:`dip.planner.search.plan_batch`) over the offline partition;
  its plans carry their own per-layer memory strategies;
* a baseline (:mod:`dip.schedule.baselines`): configured as its users would (:mod:`dip.planner.baselines`:
  the memory-feasible time-balanced layer split, Optimus's in-flight bound) with the per-rank memory
  rule, the least recompute that fits (:func:`dip.sim.plans.fit_memory`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from dip.cost import CostModel
from dip.data.meta import BatchMeta
from dip.errors import choices_error
from dip.planner.baselines import plan_baseline
from dip.planner.options import SearchOptions
from dip.planner.search import plan_batch
from dip.schedule.baselines import SCHEDULES, get_generator
from dip.schedule.ir import Plan
from dip.schedule.partition import Partition
from dip.sim.plans import SimulatedPlan
from dip.spec.model import ModelSpec

__all__ = ["DIP", "check_schedule", "plan_schedule", "schedule_names"]

logger = logging.getLogger(__name__)

DIP = "dip"


def schedule_names() -> list[str]:
    """Every schedule name: the baselines, then ``dip``."""
    return [*SCHEDULES, DIP]


def check_schedule(name: str, model: ModelSpec | None = None) -> str:
    """The canonical name of schedule ``name``; :class:`~dip.errors.BadInput` listing the valid names
    for an unknown one, or when ``model`` is given and the schedule cannot run it (cheap, before any work)."""
    key = str(name).strip().lower()
    if key == DIP:
        return DIP
    if key not in SCHEDULES:
        raise choices_error("schedule", name, schedule_names())
    sched = get_generator(key)
    if model is not None:
        sched.supports(model)
    return sched.name


def plan_schedule(
    name: str,
    model: ModelSpec,
    batch: BatchMeta,
    cost_model: CostModel,
    hardware,
    *,
    chunks: int | None = None,
    memory_limit_bytes: float | None = None,
    partition: Partition | None = None,
    search: SearchOptions = SearchOptions(),
    check: Callable[[Plan], None] | None = None,
) -> SimulatedPlan:
    """The simulated plan of ``batch`` under schedule ``name``.

    Args:
        name: ``dip`` or a baseline name (case-insensitive).
        model: the model with its parallel layout.
        batch: the batch's micro-batch metadata.
        cost_model: pass times and memory the plan is made and scored with.
        hardware: the hardware spec (placement of ranks, links).
        chunks: chunks per rank of the interleaved baselines (default: theirs).
        memory_limit_bytes: usable memory per GPU (default: the hardware's).
        partition: ``dip`` only: the offline partition to reuse (default: profiled once per process).
        search: ``dip`` only: the search options.
        check: called on every plan before it is simulated (e.g. the plan validator).

    Returns:
        The plan with its stage costs and simulation; for ``dip`` also its partition.
    """
    key = check_schedule(name, model)
    if key == DIP:
        found = plan_batch(
            model,
            batch,
            cost_model,
            hardware,
            partition=partition,
            memory_limit_bytes=memory_limit_bytes,
            options=search,
        )
        found.plan.schedule = found.plan.schedule or DIP
        if check is not None:
            check(found.plan)
        return found.simulated
    sim = plan_baseline(
        get_generator(key),
        model,
        batch,
        cost_model,
        hardware,
        chunks=chunks,
        memory_limit_bytes=memory_limit_bytes,
        check=check,
    )
    logger.debug(
        "%s on batch %s: %.6g s, memory %s%s",
        key,
        batch.index,
        sim.result.iteration_time,
        sim.plan.meta.get("memory_strategy"),
        "" if sim.fits else " (does not fit)",
    )
    return sim
