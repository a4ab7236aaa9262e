"""Plans of the baselines on real models: one mixed group over a layer split, one unit per micro-batch.

Two layer splits (:func:`layer_split`): ``time`` balances each layer's forward + backward seconds on
the representative batch (:mod:`.weights`), what Megatron-LM users reach by hand with uneven first and
last stages and the encoder's placement; ``params`` balances parameter counts (``megatron-params``,
and every mixed baseline before the time split existed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from dip.data.meta import BatchMeta
from dip.errors import choices_error
from dip.schedule.baselines.common import Chain, chain_of
from dip.schedule.baselines.weights import layer_static_bytes, representative_layer_weights
from dip.schedule.ir import Plan, RankOrder, StageGraph
from dip.schedule.partition import MIXED_GROUP, RangeCap, max_chunks_per_rank, mixed_partition, model_layers
from dip.schedule.units import build_units
from dip.spec.model import ModelSpec

__all__ = ["SPLITS", "chunks_per_rank", "layer_split", "mixed_plan"]

OrderFn = Callable[[Chain], RankOrder]
SPLITS = ("time", "params")


def chunks_per_rank(model: ModelSpec, chunks: int | None, default: int, microbatches: int) -> int:
    """``chunks`` when given; else the largest ``v <= default`` the layers allow, 1 when there are fewer
    micro-batches than pipeline ranks (Megatron then runs plain 1F1B)."""
    if chunks is not None:
        return int(chunks)
    pp = model.parallel.pp
    if microbatches < pp:
        return 1
    return max_chunks_per_rank(len(model_layers(model)), pp, default)


def layer_split(
    model: ModelSpec,
    split: str,
    chunks_per_rank: int,
    cost_model=None,
    microbatches: int = 64,
    max_chunk_static_bytes: float | None = None,
) -> StageGraph:
    """The mixed stage graph of ``split`` (``time`` or ``params``) with ``pp * chunks_per_rank`` chunks.

    ``time`` needs ``cost_model`` and the micro-batch count of the representative batch; with
    ``max_chunk_static_bytes`` no chunk holds more static bytes (weights, gradients, optimizer state)."""
    pp = model.parallel.pp
    if split == "params":
        return mixed_partition(model, pp, chunks_per_rank, "params")
    if split != "time":
        raise choices_error("layer split", split, SPLITS)
    if cost_model is None:
        raise ValueError("the time-balanced split needs a cost model")
    weights = representative_layer_weights(model, cost_model, microbatches)
    cap = None
    if max_chunk_static_bytes is not None:
        cap = RangeCap(tuple(layer_static_bytes(model, cost_model)), float(max_chunk_static_bytes))
    return mixed_partition(model, pp, chunks_per_rank, weights, cap)


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
    """``order_fn`` over a mixed stage graph, whole micro-batches: ``graph`` when given, else the
    partition of ``pp * v`` chunks balancing ``weights``."""
    graph = graph or mixed_partition(model, model.parallel.pp, v, weights)
    units, flows = build_units(model, graph, batch)
    order = order_fn(chain_of(graph, MIXED_GROUP, units[MIXED_GROUP]))
    info = {"partition": "mixed", "chunks_per_rank": len(graph.chunks) // graph.num_ranks, "batch": batch.index}
    info.update(meta or {})
    return Plan(graph, units, flows, order, schedule=schedule, meta=info)
