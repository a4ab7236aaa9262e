"""Tensor specs of every message of a step: what a receive buffer is allocated from.

Both ends of a message derive the same specs from the plan and the batch metadata, so no shape ever
travels. Built-in models use the schedule's shape plan (:func:`dip.schedule.shapes.shape_plan`);
other model providers (bring-your-own) answer through their own ``output_specs``: within a group a
message is the producer chunk's boundary output, across groups the channel's tensors (the producer's
final outputs, unless the provider defines ``edge_specs``). A backward message carries the gradients
of its forward message's tensors, with the same specs.
"""
from __future__ import annotations

from typing import Any

from dip.data.meta import BatchMeta
from dip.schedule.deps import Message
from dip.schedule.ir import Plan
from dip.spec.tensors import TensorSpec


def message_key(msg: Message) -> tuple[int, int, int, int, bool]:
    return (msg.src_chunk, msg.src_unit, msg.dst_chunk, msg.dst_unit, msg.backward)


def step_specs(plan: Plan, batch: BatchMeta, provider: Any):
    """``specs(key) -> tuple[TensorSpec, ...]`` for the messages of one step."""
    from dip.runtime.models import SpecModel

    if isinstance(provider, SpecModel):
        from dip.runtime.models.seeding import dtype_name
        from dip.schedule.shapes import shape_plan

        return _Lookup(shape_plan(plan, provider.spec, batch, dtype_name(provider.dtype)).specs)
    return MessageSpecs(plan, batch, provider)


class _Lookup:
    def __init__(self, specs: dict):
        self.specs = specs

    def __call__(self, key: tuple) -> tuple[TensorSpec, ...]:
        try:
            return self.specs[key]
        except KeyError:
            raise KeyError(f"the shape plan has no message {key}") from None


def forward_key(key: tuple) -> tuple[int, int, int, int, bool]:
    """The forward message a (backward) message key belongs to."""
    src, su, dst, du, backward = key
    return (dst, du, src, su, False) if backward else key


class MessageSpecs:
    """Specs of the messages of one step (computed on first use, then cached)."""

    def __init__(self, plan: Plan, batch: BatchMeta, provider: Any):
        self.plan, self.batch, self.provider = plan, batch, provider
        self.model = provider.spec
        self._cache: dict[tuple, tuple[TensorSpec, ...]] = {}

    def __call__(self, key: tuple) -> tuple[TensorSpec, ...]:
        fkey = forward_key(key)
        got = self._cache.get(fkey)
        if got is None:
            got = self._cache[fkey] = self._compute(*fkey[:4])
        return got

    def _compute(self, src: int, su: int, dst: int, du: int) -> tuple[TensorSpec, ...]:
        graph = self.plan.graph
        sc, dc = graph.chunks[src], graph.chunks[dst]
        s_unit = self.plan.units[sc.group][su]
        d_unit = self.plan.units[dc.group][du]
        mb = self.batch.microbatches[s_unit.mb]
        last = sc.parts[-1]
        if sc.group == dc.group:
            return tuple(self.provider.output_specs(last.module, last.layer_end, mb, s_unit.start, s_unit.stop))
        first = dc.parts[0].module
        edge = next((e for e in self.model.edges if e.src == last.module and e.dst == first), None)
        if edge is None:
            raise ValueError(f"no model edge {last.module} -> {first} for the channel chunk {src} -> chunk {dst}")
        custom = getattr(self.provider, "edge_specs", None)
        if custom is not None:
            return tuple(custom(edge, s_unit, d_unit, mb))
        # bring-your-own models: the producer's final outputs travel unchanged
        return tuple(self.provider.output_specs(last.module, last.layer_end, mb, s_unit.start, s_unit.stop))
