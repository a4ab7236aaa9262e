"""Per-layer weights of the baselines' layer splits, from the cost model on a representative batch.

A Megatron-LM user balances pipeline stages by measured time: they profile a few batches of their
workload and move layers (``--decoder-first-pipeline-num-layers``, the encoder's placement) until the
stages take about as long. Here that measurement is the cost model's forward + backward seconds of
each layer on one *representative batch*: a batch drawn with a fixed seed from the model's default
workload, never the batch being scheduled. A module's pre part (patch embedding, text embedding)
counts on its first layer, its post part (merger, LM head and loss) on its last.

The static bytes of each layer (weights, gradients, optimizer state on one GPU) bound a chunk so
that a cheap but large module (the T2V text encoder) is not packed onto one rank beyond its memory.
"""

from __future__ import annotations

from dip.data.meta import BatchMeta, work_for
from dip.data.workload import generate_batches
from dip.spec.model import ModelSpec

__all__ = ["REPRESENTATIVE_SEED", "layer_static_bytes", "representative_batch", "representative_layer_weights"]

REPRESENTATIVE_SEED = 20240417


def representative_batch(model: ModelSpec, microbatches: int) -> BatchMeta:
    """The fixed batch (seed :data:`REPRESENTATIVE_SEED`, default workload) the static splits are tuned on."""
    return generate_batches(model, 1, REPRESENTATIVE_SEED, microbatches=microbatches)[0]


def representative_layer_weights(model: ModelSpec, cost_model, microbatches: int) -> list[float]:
    """Per-layer mean pass seconds (``f + i + w``) over the representative batch, layers of
    :func:`dip.schedule.partition.model_layers` order."""
    batch = representative_batch(model, microbatches)
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


def layer_static_bytes(model: ModelSpec, cost_model) -> list[float]:
    """Static bytes of each layer on one GPU (pre part on a module's first layer, post on its last)."""
    out: list[float] = []
    for m in model.modules:
        for i in range(m.layers):
            out.append(float(cost_model.static_bytes(m.name, i, i + 1, i == 0, i == m.layers - 1)))
    return out
