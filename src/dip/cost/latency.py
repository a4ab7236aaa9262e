"""Operator latency: ``max(a_f * flops / F, a_m * bytes / B_mem, a_n * net_bytes / B_net)`` + launch cost."""

from __future__ import annotations

import math
from collections.abc import Iterable

from dip.cost.ops import Op
from dip.spec.hardware import HardwareSpec

__all__ = ["op_seconds", "ops_seconds"]


def op_seconds(op: Op, hw: HardwareSpec) -> float:
    """Seconds one operator takes on one GPU of ``hw``."""
    mem_t = hw.alpha("elementwise") * op.mem_bytes / hw.mem_bw
    cls = op.op_class
    if cls == "gemm":
        m, n, k = op.dims
        flop_t = hw.alpha("gemm") * op.flops / hw.peak_flops * hw.gemm_curve.penalty(m, n, k)
        return max(flop_t, mem_t) + hw.kernel_overhead_s
    if cls == "attention":
        q, kv, _ = op.dims
        shape = 1.0 + hw.attn_s0 / max(q, 1) + hw.attn_s0 / max(kv, 1)
        flop_t = hw.alpha("attention") * op.flops / hw.peak_flops * shape
        return max(flop_t, mem_t) + hw.kernel_overhead_s
    if cls == "elementwise":
        return max(op.flops / hw.peak_flops, mem_t) + hw.kernel_overhead_s
    if cls == "collective":
        bw, lat = hw.link(op.group)
        steps = 2 * math.ceil(math.log2(max(op.group, 2)))
        return max(hw.alpha("collective") * op.net_bytes / bw, mem_t) + steps * lat + hw.kernel_overhead_s
    if cls == "p2p":
        bw, lat = hw.link(op.group)
        return hw.alpha("p2p") * op.net_bytes / bw + lat
    raise ValueError(f"unknown operator class {cls!r}")


def ops_seconds(ops: Iterable[Op], hw: HardwareSpec) -> float:
    return sum(op_seconds(op, hw) for op in ops)
