"""The DIP planner: modality-aware partitioner, dual-queue interleaving, MCTS segment reordering,
per-layer memory optimisation, search driver and exact reference solver (no torch)."""
from dip.planner.partitioner import Partition, partition_model
from dip.planner.result import PlanResult, SearchStats, default_partition
from dip.planner.search import DEFAULT_BUDGET_S, plan_batch

__all__ = ["DEFAULT_BUDGET_S", "Partition", "PlanResult", "SearchStats", "default_partition", "partition_model",
           "plan_batch"]
