"""Hardware-independent model FLOPs (the MFU numerator).

Forward FLOPs are ``2*m*n*k`` per GEMM plus ``4 * q_len * kv_len * head_dim`` per attention head and
block (half the pairs for causal attention); backward counts as twice the forward and recomputation is
not counted. For a decoder block running blocks of lengths ``s_j`` (``T = sum s_j`` tokens):

    fwd + bwd = 6 * N_w * T + 6 * hidden * sum_j s_j^2

where ``N_w`` is the block's weight-matrix parameter count (norm weights and biases excluded).
"""

from __future__ import annotations

from functools import lru_cache

from dip.cost.ops import layer_ops, post_ops, pre_ops
from dip.data.meta import MicroBatchMeta, ModuleWork, work_for
from dip.spec.model import ModelSpec, ModuleSpec

__all__ = ["layer_flops", "microbatch_flops", "module_flops"]


@lru_cache(maxsize=4096)
def _fwd(module: ModuleSpec, work: ModuleWork) -> tuple[float, float, float]:
    return (
        pre_ops(module, work).model_flops(),
        layer_ops(module, work).model_flops(),
        post_ops(module, work).model_flops(),
    )


def layer_flops(module: ModuleSpec, work: ModuleWork) -> tuple[float, float]:
    """(forward, backward) model FLOPs of one block of ``module`` on ``work`` (whole block, no TP split)."""
    fwd = _fwd(module, work)[1]
    return fwd, 2.0 * fwd


def module_flops(module: ModuleSpec, work: ModuleWork) -> float:
    """Forward plus backward model FLOPs of a whole module (pre + all blocks + post)."""
    pre, layer, post = _fwd(module, work)
    return 3.0 * (pre + module.layers * layer + post)


def microbatch_flops(model: ModelSpec, mb: MicroBatchMeta) -> float:
    """Forward plus backward model FLOPs of every module for one micro-batch."""
    return sum(module_flops(m, work_for(model, m, mb)) for m in model.modules)
