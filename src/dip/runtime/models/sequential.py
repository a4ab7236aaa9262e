"""A minimal single-process chunked executor: the oracle that cutting modules into chunks and
micro-batches into units changes no math.

Every chunk boundary and every cross-module channel is cut like on a real pipeline: the consumer gets
detached leaves (``requires_grad=True``) and backward walks the recorded chunk calls in reverse,
feeding each producer the gradients its consumers left on those leaves. No schedule, no processes.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from dip.data.meta import BatchMeta
from dip.data.tensors import Unit
from dip.runtime.models.chunk import ChunkModule
from dip.runtime.models.provider import ModelProvider
from dip.runtime.ties import sum_tied_grads


@dataclass
class ChunkCall:
    """One forward of one chunk on one unit, kept for backward (and for shape checks)."""

    chunk: ChunkModule
    unit: Unit
    inputs: dict[str, Tensor]
    outputs: dict[str, Tensor]
    leaves: dict[str, Tensor] = field(default_factory=dict)  # detached copies handed to consumers


def split_range(n: int, parts: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of ``parts`` near-equal pieces of ``n`` (empty pieces dropped)."""
    base, extra = divmod(n, parts)
    out, start = [], 0
    for p in range(parts):
        size = base + (1 if p < extra else 0)
        if size:
            out.append((start, start + size))
        start += size
    return out


def _leaves(outputs: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().requires_grad_(v.is_floating_point()) for k, v in outputs.items() if k != "loss_sum"}


class ChunkedModel:
    """The model cut at ``cuts[module] = [0, c1, ..., L]`` (whole module when missing)."""

    def __init__(self, provider: ModelProvider, cuts: Mapping[str, Sequence[int]] | None = None):
        self.provider = provider
        self.spec = provider.spec
        self.chunks: dict[str, list[ChunkModule]] = {}
        for m in self.spec.modules:
            bounds = list((cuts or {}).get(m.name, (0, m.layers)))
            if bounds[0] != 0 or bounds[-1] != m.layers or sorted(set(bounds)) != bounds:
                raise ValueError(f"cuts of {m.name} must rise from 0 to {m.layers}; got {bounds}")
            self.chunks[m.name] = [provider.build_chunk(m.name, a, b) for a, b in itertools.pairwise(bounds)]

    def canonical_named_parameters(self):
        for chunks in self.chunks.values():
            for c in chunks:
                yield from c.canonical_named_parameters()

    def step(
        self,
        batch: BatchMeta,
        step_seed: int,
        unit_splits: Mapping[str, int] | None = None,
        strategies: Mapping[str, Sequence[str]] | None = None,
        split_backward: bool = False,
        trace: list[Any] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss and canonical gradients of one global batch.

        ``unit_splits[module]``: units per micro-batch of a vit / dit; ``strategies[module]``: one memory
        strategy per layer of the module; ``split_backward``: backward-input then backward-weight via
        ``torch.autograd.grad``; ``trace`` receives every :class:`ChunkCall` and channel in order.
        """
        params = dict(self.canonical_named_parameters())
        for prm in params.values():
            prm.grad = None
        total = sum(self.provider.loss_tokens(mb) for mb in batch.microbatches)
        calls: list[ChunkCall] = []
        for k, mb in enumerate(batch.microbatches):
            calls += self._forward_microbatch(k, mb, step_seed, unit_splits or {}, strategies or {}, trace)
        loss = sum(c.outputs["loss_sum"].detach() for c in calls if "loss_sum" in c.outputs) / total
        for call in reversed(calls):
            self._backward(call, total, split_backward)
        sum_tied_grads(params, getattr(self.provider, "tied_groups", tuple)())
        grads = {
            n: (prm.grad.detach().clone() if prm.grad is not None else torch.zeros_like(prm))
            for n, prm in params.items()
        }
        return loss, grads

    def _forward_microbatch(self, k, mb, step_seed, unit_splits, strategies, trace) -> list[ChunkCall]:
        p = self.provider
        calls: list[ChunkCall] = []
        produced: dict[str, list[tuple[Unit, dict[str, Tensor]]]] = {}
        for m in self.spec.modules:
            n = p.instances(m.name, mb)
            if n == 0:
                continue
            ranges = split_range(n, unit_splits[m.name]) if m.kind != "decoder" and m.name in unit_splits else [(0, n)]
            for a, b in ranges:
                unit = Unit(m.name, k, a, b) if m.kind != "decoder" else Unit(m.name, k)
                received = []
                for edge in self.spec.producers(m.name):
                    for src_unit, src_leaves in produced.get(edge.src, []):
                        sent = p.edge_tensors(edge, src_leaves, src_unit, unit, mb)
                        if sent:
                            received.append((edge, src_unit, sent))
                            if trace is not None:
                                trace.append((edge, src_unit, unit, {n_: tuple(t.shape) for n_, t in sent.items()}))
                inputs = p.assemble_inputs(m.name, mb, received)
                data = p.unit_data(mb, k, m.name, a, b, step_seed)
                layer_strats = strategies.get(m.name)
                for chunk in self.chunks[m.name]:
                    strat = None if layer_strats is None else layer_strats[chunk.layer_start : chunk.layer_end]
                    outputs = chunk(inputs, data, strat)
                    call = ChunkCall(chunk, unit, inputs, outputs, _leaves(outputs))
                    calls.append(call)
                    if trace is not None:
                        trace.append(call)
                    inputs = call.leaves
                produced.setdefault(m.name, []).append((unit, inputs))
        return calls

    @staticmethod
    def _backward(call: ChunkCall, total: int, split_backward: bool) -> None:
        outs, grads = [], []
        for name, out in call.outputs.items():
            if name == "loss_sum":
                outs.append(out)
                grads.append(torch.full_like(out, 1.0 / total))
            elif call.leaves[name].grad is not None:
                outs.append(out)
                grads.append(call.leaves[name].grad)
        if not outs:
            return
        if not split_backward:
            torch.autograd.backward(outs, grads)
            return
        ins = [t for t in call.inputs.values() if t.requires_grad]
        weights = [w for w in call.chunk.parameters() if w.requires_grad]
        g_in = torch.autograd.grad(outs, ins, grads, retain_graph=True, allow_unused=True) if ins else ()
        g_w = torch.autograd.grad(outs, weights, grads, allow_unused=True)
        for w, g in zip(weights, g_w):
            if g is not None:
                w.grad = g if w.grad is None else w.grad + g
        pairs = [(t, g) for t, g in zip(ins, g_in) if g is not None]
        if pairs:
            torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs])
