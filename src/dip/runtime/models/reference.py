"""Single-process reference: the whole model (one chunk per module) trained without a pipeline.

The loss of a step is token-weighted over the whole global batch:
``loss = sum_mb loss_sum(mb) / sum_mb loss_tokens(mb)`` (not a mean of micro-batch means).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from dip.data.meta import BatchMeta, MicroBatchMeta
from dip.data.tensors import Unit
from dip.runtime.models.chunk import ChunkModule
from dip.runtime.models.provider import ModelProvider, as_provider
from dip.runtime.ties import sum_tied_grads
from dip.spec.model import ModelSpec


class ReferenceModel:
    """Every module of ``model`` built in one process through the same chunk builder (layers 0..L)."""

    def __init__(
        self,
        model: ModelSpec | ModelProvider,
        seed: int = 0,
        dtype: torch.dtype | str = torch.float32,
        device: torch.device | str | None = None,
    ):
        self.provider = as_provider(model, seed, dtype, device)
        self.spec = self.provider.spec
        self.chunks: dict[str, ChunkModule] = {
            m.name: self.provider.build_chunk(m.name, 0, m.layers) for m in self.spec.modules
        }

    def canonical_named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        for chunk in self.chunks.values():
            yield from chunk.canonical_named_parameters()

    def microbatch_loss_sum(self, mb: MicroBatchMeta, mb_index: int, step_seed: int) -> Tensor | None:
        """Summed loss of one micro-batch (None when the loss module has nothing to do)."""
        p = self.provider
        produced: dict[str, tuple[Unit, dict[str, Tensor]]] = {}
        for m in self.spec.modules:
            if p.instances(m.name, mb) == 0:
                continue
            unit = Unit(m.name, mb_index)
            received = []
            for edge in self.spec.producers(m.name):
                if edge.src in produced:
                    src_unit, src_out = produced[edge.src]
                    received.append((edge, src_unit, p.edge_tensors(edge, src_out, src_unit, unit, mb)))
            inputs = p.assemble_inputs(m.name, mb, received)
            data = p.unit_data(mb, mb_index, m.name, 0, 0, step_seed)
            produced[m.name] = (unit, self.chunks[m.name](inputs, data))
        got = produced.get(p.loss_module())
        return None if got is None else got[1]["loss_sum"]


def reference_step(ref: ReferenceModel, batch: BatchMeta, step_seed: int) -> tuple[Tensor, dict[str, Tensor]]:
    """Loss and gradients (by canonical parameter name) of one global batch; gradients are zeroed first."""
    params = dict(ref.canonical_named_parameters())
    for prm in params.values():
        prm.grad = None
    total = sum(ref.provider.loss_tokens(mb) for mb in batch.microbatches)
    if total <= 0:
        raise ValueError("the global batch has no loss tokens")
    sums = [ref.microbatch_loss_sum(mb, k, step_seed) for k, mb in enumerate(batch.microbatches)]
    sums = [s for s in sums if s is not None]
    loss = torch.stack(sums).sum() / total
    loss.backward()
    sum_tied_grads(params, getattr(ref.provider, "tied_groups", tuple)())
    grads = {
        n: (prm.grad.detach().clone() if prm.grad is not None else torch.zeros_like(prm)) for n, prm in params.items()
    }
    return loss.detach(), grads
