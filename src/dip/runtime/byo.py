"""Bring your own model: run your own ``nn.Module`` blocks through the DIP planner and runtime.

Describe the model twice, once for each side of DIP:

1. a :class:`~dip.spec.model.ModelSpec` (module names, layer counts, sizes and edges): the planner's
   cost proxy; pick the closest built-in kind (a module that must never be split into
   sub-microbatches should use ``kind="decoder"``);
2. a :class:`ByoModule` per module saying how to build its parts:

   * ``make_pre() -> nn.Module`` with ``forward(inputs: dict[str, Tensor], data) -> hidden`` (first chunk);
   * ``make_block(layer_index) -> nn.Module`` with ``forward(hidden, data) -> hidden`` (every layer);
   * ``make_post() -> nn.Module`` with ``forward(hidden, data) -> dict[str, Tensor]`` (last chunk;
     ``{"loss_sum": scalar}`` for the loss module, summed over its loss terms);
   * ``hidden_shape(mb, start, stop)``: shape of the ``hidden`` tensor between chunks (shape plan).

Plus, for the whole model, ``make_data(ByoUnit) -> data`` (the rank-local inputs of a unit; must depend
only on the unit, never on how a micro-batch is split) and ``loss_tokens(mb)`` (loss terms of a
micro-batch: the step's loss is ``sum(loss_sum) / sum(loss_tokens)``).

:class:`ByoModel` then serves the same :class:`~dip.runtime.models.provider.ModelProvider` interface as
the built-in models: chunks are :class:`~dip.runtime.models.chunk.ChunkModule` s (memory strategies,
split backward and canonical parameter names ``<module>.layers.<i>.<your name>`` included), and
:class:`~dip.runtime.models.reference.ReferenceModel` accepts it for a single-process reference.

Each part is constructed under ``torch.random.fork_rng`` seeded by ``(seed, module, part)``, so your
constructors' default initialisation is the same on every rank and in every chunking. Modules run whole
micro-batches (``instances`` = 1) unless you give ``instances``; across an edge the producer's last
outputs are the consumer's first inputs, unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from dip.data.meta import MicroBatchMeta
from dip.runtime.models.chunk import ChunkModule, PartProtocol
from dip.runtime.models.seeding import dtype_name, stable_seed, torch_dtype
from dip.spec.model import Edge, ModelSpec
from dip.data.tensors import TensorSpec, UnitLike

SpecFn = Callable[[MicroBatchMeta, int, int], tuple[TensorSpec, ...]]


@dataclass(frozen=True)
class ByoUnit:
    """What ``make_data`` is asked for: instances ``[start, stop)`` of micro-batch ``mb_index``."""

    module: str
    mb: MicroBatchMeta
    mb_index: int
    start: int
    stop: int
    step_seed: int
    dtype: torch.dtype
    device: torch.device | str | None


@dataclass(frozen=True)
class ByoModule:
    """Part builders and shape rules of one bring-your-own module (see the module docstring)."""

    make_block: Callable[[int], nn.Module]
    hidden_shape: Callable[[MicroBatchMeta, int, int], tuple[int, ...]]
    make_pre: Callable[[], nn.Module] | None = None
    make_post: Callable[[], nn.Module] | None = None
    first_inputs: SpecFn | None = None  # cross-module tensors the first chunk receives
    last_outputs: SpecFn | None = None  # tensors the last chunk sends (none for the loss module)
    instances: Callable[[MicroBatchMeta], int] | None = None


class ByoProtocol(PartProtocol):
    """Calls user parts: ``pre(inputs, data)``, ``block(hidden, data)``, ``post(hidden, data)``."""

    supports_selective = False  # "selective" falls back to recomputing the whole block

    def call_pre(self, pre, inputs, data):
        return pre(inputs, data), {}

    def call_block(self, block, hidden, side, data, recompute_attention=False):
        return block(hidden, data)

    def call_post(self, post, hidden, side, data):
        return post(hidden, data)


class ByoModel:
    """A :class:`~dip.runtime.models.provider.ModelProvider` over user-defined modules."""

    def __init__(self, spec: ModelSpec, modules: Mapping[str, ByoModule], make_data: Callable[[ByoUnit], Any],
                 loss_tokens: Callable[[MicroBatchMeta], int], loss_module: str | None = None, seed: int = 0,
                 dtype: torch.dtype | str = torch.float32, device: torch.device | str | None = None):
        missing = [m.name for m in spec.modules if m.name not in modules]
        if missing:
            raise ValueError(f"no ByoModule for module(s) {', '.join(missing)}")
        self.spec, self.modules, self.make_data = spec, dict(modules), make_data
        self._loss_tokens, self._loss_module = loss_tokens, loss_module or spec.modules[-1].name
        self.seed, self.dtype, self.device = seed, torch_dtype(dtype), device

    def _part(self, module_name: str, part: str, factory: Callable[[], nn.Module]) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stable_seed(self.seed, module_name, part))
            return factory()

    def build_chunk(self, module_name: str, layer_start: int, layer_end: int) -> ChunkModule:
        spec, byo = self.spec.module(module_name), self.modules[module_name]
        if not 0 <= layer_start < layer_end <= spec.layers:
            raise ValueError(f"bad layer range [{layer_start}, {layer_end}) for {module_name} "
                             f"with {spec.layers} layers")
        pre = self._part(module_name, "pre", byo.make_pre) if layer_start == 0 and byo.make_pre else None
        blocks = [self._part(module_name, f"layers.{i}", lambda i=i: byo.make_block(i))
                  for i in range(layer_start, layer_end)]
        last = layer_end == spec.layers
        post = self._part(module_name, "post", byo.make_post) if last and byo.make_post else None
        chunk = ChunkModule(module_name, layer_start, layer_end, spec.layers, pre, blocks, post, ByoProtocol())
        return chunk.to(device=self.device, dtype=self.dtype)

    def instances(self, module_name: str, mb: MicroBatchMeta) -> int:
        fn = self.modules[module_name].instances
        return fn(mb) if fn else 1

    def _range(self, module_name: str, mb: MicroBatchMeta, start: int, stop: int) -> tuple[int, int]:
        n = self.instances(module_name, mb)
        return (0, n) if (start, stop) == (0, 0) or self.modules[module_name].instances is None else (start, stop)

    def unit_data(self, mb, mb_index, module_name, start, stop, step_seed):
        a, b = self._range(module_name, mb, start, stop)
        return self.make_data(ByoUnit(module_name, mb, mb_index, a, b, step_seed, self.dtype, self.device))

    def loss_module(self) -> str:
        return self._loss_module

    def loss_tokens(self, mb: MicroBatchMeta) -> int:
        return self._loss_tokens(mb)

    def input_specs(self, module_name, layer_start, mb, start, stop):
        a, b = self._range(module_name, mb, start, stop)
        byo = self.modules[module_name]
        if layer_start > 0:
            return (TensorSpec("hidden", tuple(byo.hidden_shape(mb, a, b)), dtype_name(self.dtype)),)
        return byo.first_inputs(mb, a, b) if byo.first_inputs else ()

    def output_specs(self, module_name, layer_end, mb, start, stop):
        a, b = self._range(module_name, mb, start, stop)
        byo = self.modules[module_name]
        if layer_end < self.spec.module(module_name).layers:
            return (TensorSpec("hidden", tuple(byo.hidden_shape(mb, a, b)), dtype_name(self.dtype)),)
        return byo.last_outputs(mb, a, b) if byo.last_outputs else ()

    def edge_specs(self, edge: Edge, producer: UnitLike, consumer: UnitLike,
                   mb: MicroBatchMeta) -> tuple[TensorSpec, ...]:
        """Across modules the producer's final outputs travel unchanged."""
        return self.output_specs(edge.src, self.spec.module(edge.src).layers, mb, producer.start, producer.stop)

    def edge_tensors(self, edge: Edge, producer_outputs: dict[str, Tensor], producer: UnitLike,
                     consumer: UnitLike, mb: MicroBatchMeta) -> dict[str, Tensor]:
        return dict(producer_outputs) if producer.mb == consumer.mb else {}

    def assemble_inputs(self, module_name: str, mb: MicroBatchMeta,
                        received: Sequence[tuple[Edge, UnitLike, dict[str, Tensor]]]) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for _, _, tensors in received:
            out.update(tensors)
        return out
