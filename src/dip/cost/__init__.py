"""Operator-level cost model: FLOPs, latency, activation memory per strategy (with sequence
parallelism and the distributed optimizer), calibration by profiling, workload statistics.

Owns how long and how much memory a layer takes on a batch. Imports ``dip.data``, ``dip.spec`` and
below; ``dip.cost.profile`` (torch) is imported only by ``dip profile``."""

from dip.cost.flops import layer_flops, microbatch_flops, module_flops
from dip.cost.latency import op_seconds
from dip.cost.model import STRATEGIES, ChunkCost, CostModel, PassTimes
from dip.cost.ops import Op, PassOps, layer_ops, post_ops, pre_ops
from dip.cost.options import CostOptions, param_state_bytes

__all__ = [
    "STRATEGIES",
    "ChunkCost",
    "CostModel",
    "CostOptions",
    "Op",
    "PassOps",
    "PassTimes",
    "layer_flops",
    "layer_ops",
    "microbatch_flops",
    "module_flops",
    "op_seconds",
    "param_state_bytes",
    "post_ops",
    "pre_ops",
]
