"""Plans of the baselines on real models: one mixed group over a layer partition, one unit per micro-batch."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from dip.data.meta import BatchMeta
from dip.schedule.baselines.common import Chain, chain_of
from dip.schedule.ir import Plan, RankOrder, StageGraph
from dip.schedule.partition import MIXED_GROUP, max_chunks_per_rank, mixed_partition, model_layers
from dip.schedule.units import build_units
from dip.spec.model import ModelSpec

OrderFn = Callable[[Chain], RankOrder]


def chunks_per_rank(model: ModelSpec, chunks: int | None, default: int, microbatches: int) -> int:
    """``chunks`` when given; else the largest ``v <= default`` the layers allow, 1 when there are fewer
    micro-batches than pipeline ranks (Megatron then runs plain 1F1B)."""
    if chunks is not None:
        return int(chunks)
    pp = model.parallel.pp
    if microbatches < pp:
        return 1
    return max_chunks_per_rank(len(model_layers(model)), pp, default)


def mixed_plan(
    model: ModelSpec,
    batch: BatchMeta,
    order_fn: OrderFn,
    schedule: str,
    v: int = 1,
    weights: str | Sequence[float] = "params",
    graph: StageGraph | None = None,
    meta: dict | None = None,
) -> Plan:
    """``order_fn`` over a mixed partition of ``pp * v`` chunks (balancing ``weights``), whole micro-batches."""
    graph = graph or mixed_partition(model, model.parallel.pp, v, weights)
    units, flows = build_units(model, graph, batch)
    order = order_fn(chain_of(graph, MIXED_GROUP, units[MIXED_GROUP]))
    info = {
        "partition": "mixed",
        "weights": weights if isinstance(weights, str) else "custom",
        "chunks_per_rank": v,
        "batch": batch.index,
    }
    info.update(meta or {})
    return Plan(graph, units, flows, order, schedule=schedule, meta=info)
