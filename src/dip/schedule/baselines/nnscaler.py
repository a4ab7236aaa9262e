"""nnScaler* baseline: one static plan, pre-generated from a representative workload and reused.

nnScaler needs minutes per plan and a restart to change it, so the paper pre-generates one plan: 1F1B
(its only schedule), all modules in one segment (``pp`` mixed chunks), chunks balanced by *time* for
a representative micro-batch. Here the representative micro-batch is the mean of a fixed batch drawn
with a fixed seed from the model's default workload: each layer's weight is its mean pass time
(``f + i + w``, pre/post parts on the module's first/last layer) over that batch's micro-batches. The
partition never looks at the batch being scheduled.
"""

from __future__ import annotations

from dip.data.meta import BatchMeta, work_for
from dip.data.workload import generate_batches
from dip.schedule.baselines.one_f_one_b import one_f_one_b_order
from dip.schedule.baselines.plans import mixed_plan
from dip.schedule.ir import Plan
from dip.schedule.partition import mixed_partition
from dip.spec.model import ModelSpec

REPRESENTATIVE_SEED = 20240417
_PARTITIONS: dict[tuple, object] = {}


def representative_layer_weights(model: ModelSpec, cost_model, microbatches: int) -> list[float]:
    """Per-layer mean pass seconds over a representative batch (fixed seed, default workload)."""
    batch = generate_batches(model, 1, REPRESENTATIVE_SEED, microbatches=microbatches)[0]
    weights: list[float] = []
    for m in model.modules:
        layer = pre = post = 0.0
        for mb in batch.microbatches:
            work = work_for(model, m, mb)
            if work.empty:
                continue
            layer += cost_model.layer_times(m, work).total
            pre += cost_model.pre_times(m, work).total
            post += cost_model.post_times(m, work).total
        n = max(len(batch.microbatches), 1)
        for i in range(m.layers):
            w = layer / n
            if i == 0:
                w += pre / n
            if i == m.layers - 1:
                w += post / n
            weights.append(w)
    return weights


def static_graph(model: ModelSpec, cost_model, microbatches: int):
    """The time-balanced partition, computed once per (model, hardware, tp, micro-batch count)."""
    key = (model, cost_model.hardware.name, cost_model.tp, microbatches)
    graph = _PARTITIONS.get(key)
    if graph is None:
        weights = representative_layer_weights(model, cost_model, microbatches)
        graph = _PARTITIONS[key] = mixed_partition(model, model.parallel.pp, 1, weights)
    return graph


def nnscaler_plan(model: ModelSpec, batch: BatchMeta, cost_model, schedule: str = "nnscaler") -> Plan:
    """1F1B of ``batch`` over the static, time-balanced partition."""
    graph = static_graph(model, cost_model, len(batch))
    return mixed_plan(
        model,
        batch,
        one_f_one_b_order,
        schedule,
        v=1,
        graph=graph,
        meta={"weights": "representative-time", "representative_seed": REPRESENTATIVE_SEED},
    )
