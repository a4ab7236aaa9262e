"""Megatron-LM baseline: interleaved 1F1B (VPP) over chunks with roughly equal parameter counts.

Vision (or text-encoder) and language layers are concatenated and cut into ``pp * v`` chunks, so one
chunk can hold layers of two modules; every micro-batch runs whole through the chain. The same static
partition is applied to each dynamic batch; ``v = 2`` unless ``chunks`` says otherwise.
"""

from __future__ import annotations

from dip.data.meta import BatchMeta
from dip.schedule.baselines.interleaved import default_group, interleaved_order
from dip.schedule.baselines.plans import chunks_per_rank, mixed_plan
from dip.schedule.ir import Plan
from dip.spec.model import ModelSpec

DEFAULT_CHUNKS = 2


def megatron_plan(model: ModelSpec, batch: BatchMeta, chunks: int | None = None, schedule: str = "megatron") -> Plan:
    """Interleaved 1F1B of ``batch`` over a parameter-balanced mixed partition."""
    m, pp = len(batch), model.parallel.pp
    v = chunks_per_rank(model, chunks, DEFAULT_CHUNKS, m)
    meta = {"interleave_group": default_group(pp, m)} if v > 1 else {}
    return mixed_plan(model, batch, interleaved_order, schedule, v=v, meta=meta)
