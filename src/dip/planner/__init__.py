"""The DIP planner: modality-aware partitioner, dual-queue interleaving, MCTS segment reordering,
per-layer memory optimisation, search driver and exact reference solver, and the one entry point that
plans a batch under any named schedule (:mod:`dip.planner.schedules`).

Owns the per-batch search; imports ``dip.viz``, ``dip.sim``, ``dip.schedule`` and the layers below,
never ``torch`` (planning runs in plain CPU processes).
"""

from dip.planner.options import DEFAULT_BUDGET_S, SearchOptions
from dip.planner.partitioner import partition_model
from dip.planner.result import PlanResult, SearchStats, default_partition
from dip.planner.schedules import check_schedule, plan_schedule, schedule_names
from dip.planner.search import plan_batch
from dip.schedule.partition import Partition

__all__ = [
    "DEFAULT_BUDGET_S",
    "Partition",
    "PlanResult",
    "SearchOptions",
    "SearchStats",
    "check_schedule",
    "default_partition",
    "partition_model",
    "plan_batch",
    "plan_schedule",
    "schedule_names",
]
