"""Optimus baseline (coarse-grained bubble scheduling): encoder work sequenced around the LM pipeline.

Separated groups: the vision encoder cut into ``pp`` chunks (one segment) and the LM into ``pp * v``
chunks, both with near-equal layer counts. Each rank runs all encoder forwards of all micro-batches
first, then the LM's interleaved 1F1B, then all encoder backwards. Units are whole micro-batches; a
micro-batch without images has no encoder unit. Vision-language models only.
"""

from __future__ import annotations

from dip.data.meta import BatchMeta
from dip.errors import BadInput
from dip.schedule.baselines.common import Chain, bwd, chain_of, fwd
from dip.schedule.baselines.interleaved import default_group, interleaved_order
from dip.schedule.ir import Plan, RankOrder
from dip.schedule.partition import max_chunks_per_rank, separated_even_partition
from dip.schedule.units import build_units
from dip.spec.model import ModelSpec

DEFAULT_LM_CHUNKS = 2


def encoder_and_lm(model: ModelSpec) -> tuple[str, str]:
    """Names of the vision encoder and the LM; BadInput for models without a vision encoder."""
    vits, lms = model.modules_of_kind("vit"), model.modules_of_kind("decoder")
    if not vits or not lms or len(model.modules) != 2:
        raise BadInput(
            f"schedule optimus supports vision-language models only; model {model.name} has no vision encoder"
        )
    return vits[0].name, lms[0].name


def optimus_order(encoder: Chain, lm: Chain) -> RankOrder:
    """Per rank: encoder forwards, the LM's interleaved 1F1B, encoder backwards."""
    lm_order = interleaved_order(lm)
    order: RankOrder = {}
    for r in range(lm.pp):
        chunk = encoder.chunk(r, 0)
        order[r] = [fwd(chunk, u) for u in encoder.units] + lm_order[r] + [bwd(chunk, u) for u in encoder.units]
    return order


def optimus_plan(model: ModelSpec, batch: BatchMeta, chunks: int | None = None, schedule: str = "optimus") -> Plan:
    """The Optimus plan of ``batch``."""
    vit, llm = encoder_and_lm(model)
    pp, m = model.parallel.pp, len(batch)
    if chunks is not None:
        v = int(chunks)
    else:
        v = 1 if m < pp else max_chunks_per_rank(model.module(llm).layers, pp, DEFAULT_LM_CHUNKS)
    graph = separated_even_partition(model, pp, {vit: 1, llm: v})
    units, flows = build_units(model, graph, batch)
    order = optimus_order(chain_of(graph, vit, units[vit]), chain_of(graph, llm, units[llm]))
    meta = {"partition": "separated-even", "chunks_per_rank": v, "batch": batch.index}
    if v > 1:
        meta["interleave_group"] = default_group(pp, m)
    return Plan(graph, units, flows, order, schedule=schedule, meta=meta)
