"""The shape plan: for every message of a plan, the tensors it carries.

[Note: no shape handshakes] Receivers allocate buffers just in time from the :class:`ShapePlan`,
computed from the batch metadata, so no message is preceded by a shape exchange (which costs a host
sync per message and, in Megatron, has deadlocked and silently swapped shapes).

A forward message carries the producer chunk's boundary tensors: within a group, the output of the
chunk's **last part** (Megatron-style mixed chunks send what their last module produces); across
groups, the channel's tensors (``image_embeds`` from a ViT unit, ``text_cond`` for a DiT unit). A
backward message carries the gradients of its forward message's tensors: same names, shapes and
dtypes. Which tensors a boundary holds is the model's business (:class:`ShapeRules`): the built-in
models follow :mod:`dip.data.tensors` (:class:`SpecShapes`); a runtime model provider answers the
same two questions for its own modules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from dip.data.meta import BatchMeta, MicroBatchMeta
from dip.data.tensors import TensorSpec, chunk_output_specs, edge_specs
from dip.schedule.deps import DependencyIndex, Message, MessageKey
from dip.schedule.errors import ScheduleError
from dip.schedule.ir import Action, Plan, Unit
from dip.spec.model import Edge, ModelSpec

__all__ = ["ShapePlan", "ShapeRules", "SpecShapes", "shape_plan"]


class ShapeRules(Protocol):
    """What a model says about its boundary tensors (implemented by :class:`SpecShapes` and by the
    runtime's model providers)."""

    spec: ModelSpec

    def output_specs(
        self, module_name: str, layer_end: int, mb: MicroBatchMeta, start: int, stop: int
    ) -> tuple[TensorSpec, ...]:
        """Tensors leaving layer ``layer_end - 1`` of ``module_name`` for instances ``[start, stop)``."""
        ...

    def edge_specs(self, edge: Edge, producer: Unit, consumer: Unit, mb: MicroBatchMeta) -> tuple[TensorSpec, ...]:
        """Tensors the producer unit sends the consumer unit along a cross-module ``edge``."""
        ...


@dataclass(frozen=True)
class SpecShapes:
    """The built-in models' boundary tensors (:mod:`dip.data.tensors`), activations in ``dtype``."""

    spec: ModelSpec
    dtype: str = "bfloat16"

    def output_specs(
        self, module_name: str, layer_end: int, mb: MicroBatchMeta, start: int, stop: int
    ) -> tuple[TensorSpec, ...]:
        return chunk_output_specs(self.spec, module_name, layer_end, mb, start, stop, self.dtype)

    def edge_specs(self, edge: Edge, producer: Unit, consumer: Unit, mb: MicroBatchMeta) -> tuple[TensorSpec, ...]:
        return edge_specs(self.spec, edge, producer, consumer, mb, self.dtype)


class ShapePlan:
    """Tensor specs of the messages of one plan on one batch, computed from ``rules`` on first use
    and kept (a rank asks only for its own messages; :meth:`all` computes every one)."""

    def __init__(
        self,
        plan: Plan,
        rules: ShapeRules,
        batch: BatchMeta | Sequence[MicroBatchMeta],
        deps: DependencyIndex | None = None,
    ):
        self.plan, self.rules = plan, rules
        self.microbatches = batch.microbatches if isinstance(batch, BatchMeta) else tuple(batch)
        self.deps = deps or DependencyIndex.of_plan(plan)
        self._units = {g: {u.index: u for u in us} for g, us in plan.units.items()}
        self._kinds: dict[MessageKey, str] | None = None
        self._forward: dict[MessageKey, tuple[TensorSpec, ...]] = {}

    def get(self, x: MessageKey | Message | Action) -> tuple[TensorSpec, ...]:
        """The tensors of a message (a gradient's are its forward message's)."""
        key = x if isinstance(x, MessageKey) else x.key if isinstance(x, Message) else MessageKey.of(x)
        fwd = key.forward()
        got = self._forward.get(fwd)
        if got is None:
            kind = self._kind_of().get(fwd)
            if kind is None:
                raise KeyError(f"no shapes for message {key} ({x}): the plan has no such message")
            got = self._forward[fwd] = self._compute(fwd, kind)
        return got

    def nbytes(self, x: MessageKey | Message | Action) -> int:
        return sum(s.nbytes for s in self.get(x))

    def all(self) -> dict[MessageKey, tuple[TensorSpec, ...]]:
        """Every message of the plan (both directions) with its tensors."""
        out: dict[MessageKey, tuple[TensorSpec, ...]] = {}
        for fwd in self._kind_of():
            specs = self.get(fwd)
            out[fwd] = specs
            out[fwd.reply()] = specs
        return out

    @property
    def specs(self) -> dict[MessageKey, tuple[TensorSpec, ...]]:
        return self.all()

    def __len__(self) -> int:
        return 2 * len(self._kind_of())

    def _kind_of(self) -> dict[MessageKey, str]:
        if self._kinds is None:
            self._kinds = {m.key: m.kind for m in self.deps.forward_messages()}
        return self._kinds

    def _compute(self, key: MessageKey, kind: str) -> tuple[TensorSpec, ...]:
        graph = self.plan.graph
        src, dst = graph.chunks[key.src_chunk], graph.chunks[key.dst_chunk]
        su, du = self._units[src.group][key.src_unit], self._units[dst.group][key.dst_unit]
        if su.mb >= len(self.microbatches):
            raise ScheduleError(
                f"unit {su.index} of group {src.group!r} is micro-batch {su.mb}; the batch has {len(self.microbatches)}"
            )
        mb = self.microbatches[su.mb]
        last = src.parts[-1]
        if src.group == dst.group:
            return tuple(self.rules.output_specs(last.module, last.layer_end, mb, su.start, su.stop))
        first = dst.parts[0].module
        model = self.rules.spec
        for e in model.edges:
            if e.src == last.module and e.dst == first and e.kind == kind:
                return tuple(self.rules.edge_specs(e, su, du, mb))
        raise ScheduleError(
            f"no {kind} edge {last.module} -> {first} in model {model.name} "
            f"for the message from chunk {src.id} to chunk {dst.id}"
        )


def shape_plan(
    plan: Plan,
    model: ModelSpec,
    batch: BatchMeta | Sequence[MicroBatchMeta],
    dtype: str = "bfloat16",
    deps: DependencyIndex | None = None,
) -> ShapePlan:
    """The shape plan of ``plan`` on ``batch`` for the built-in model ``model`` (activations in ``dtype``)."""
    return ShapePlan(plan, SpecShapes(model, dtype), batch, deps)
