"""What the runtime needs from a model, as one interface: chunk builder, local unit data, shape plan
rules, cross-module channels and the loss denominator.

:class:`SpecModel` serves the built-in kinds (vit / decoder / dit) from a :class:`ModelSpec`;
:class:`dip.runtime.byo.ByoModel` serves a bring-your-own model through the same methods.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from dip.data import tensors
from dip.data.meta import MicroBatchMeta
from dip.data.tensors import TensorSpec, UnitLike
from dip.runtime.models import edges
from dip.runtime.models.chunk import ChunkModule, build_chunk
from dip.runtime.models.data import make_unit_data
from dip.runtime.models.seeding import dtype_name, torch_dtype
from dip.spec.model import Edge, ModelSpec


class ModelProvider(Protocol):
    """The model side of a pipelined step (every method is deterministic and rank-local); its
    ``spec``, ``output_specs`` and ``edge_specs`` are the :class:`dip.schedule.shapes.ShapeRules` the
    step's shape plan is computed from."""

    spec: ModelSpec

    def build_chunk(self, module_name: str, layer_start: int, layer_end: int) -> ChunkModule: ...

    def unit_data(
        self, mb: MicroBatchMeta, mb_index: int, module_name: str, start: int, stop: int, step_seed: int
    ) -> Any: ...

    def instances(self, module_name: str, mb: MicroBatchMeta) -> int: ...

    def loss_module(self) -> str: ...

    def loss_tokens(self, mb: MicroBatchMeta) -> int: ...

    def input_specs(
        self, module_name: str, layer_start: int, mb: MicroBatchMeta, start: int, stop: int
    ) -> tuple[TensorSpec, ...]: ...

    def output_specs(
        self, module_name: str, layer_end: int, mb: MicroBatchMeta, start: int, stop: int
    ) -> tuple[TensorSpec, ...]: ...

    def edge_specs(
        self, edge: Edge, producer: UnitLike, consumer: UnitLike, mb: MicroBatchMeta
    ) -> tuple[TensorSpec, ...]: ...

    def edge_tensors(
        self,
        edge: Edge,
        producer_outputs: dict[str, Tensor],
        producer: UnitLike,
        consumer: UnitLike,
        mb: MicroBatchMeta,
    ) -> dict[str, Tensor]: ...

    def assemble_inputs(
        self, module_name: str, mb: MicroBatchMeta, received: Sequence[tuple[Edge, UnitLike, dict[str, Tensor]]]
    ) -> dict[str, Tensor]: ...


class SpecModel:
    """The built-in models (:mod:`dip.runtime.models`) of ``spec``, seeded by ``seed``."""

    def __init__(
        self,
        spec: ModelSpec,
        seed: int = 0,
        dtype: torch.dtype | str = torch.float32,
        device: torch.device | str | None = None,
    ):
        self.spec, self.seed, self.dtype, self.device = spec, seed, torch_dtype(dtype), device

    def build_chunk(self, module_name: str, layer_start: int, layer_end: int) -> ChunkModule:
        return build_chunk(self.spec, module_name, layer_start, layer_end, self.seed, self.dtype, self.device)

    def unit_data(self, mb, mb_index, module_name, start, stop, step_seed):
        return make_unit_data(self.spec, mb, mb_index, module_name, start, stop, step_seed, self.dtype, self.device)

    def instances(self, module_name: str, mb: MicroBatchMeta) -> int:
        return tensors.instance_count(self.spec.module(module_name), mb)

    def loss_module(self) -> str:
        return tensors.loss_module(self.spec)

    def loss_tokens(self, mb: MicroBatchMeta) -> int:
        return tensors.loss_tokens(self.spec, mb)

    def input_specs(self, module_name, layer_start, mb, start, stop):
        return tensors.chunk_input_specs(self.spec, module_name, layer_start, mb, start, stop, dtype_name(self.dtype))

    def output_specs(self, module_name, layer_end, mb, start, stop):
        return tensors.chunk_output_specs(self.spec, module_name, layer_end, mb, start, stop, dtype_name(self.dtype))

    def edge_specs(self, edge, producer, consumer, mb):
        return tensors.edge_specs(self.spec, edge, producer, consumer, mb, dtype_name(self.dtype))

    def edge_tensors(self, edge, producer_outputs, producer, consumer, mb):
        return edges.edge_tensors(self.spec, edge, producer_outputs, producer, consumer, mb)

    def assemble_inputs(self, module_name, mb, received):
        return edges.assemble_inputs(self.spec, module_name, mb, received)


def as_provider(
    model: ModelSpec | ModelProvider,
    seed: int = 0,
    dtype: torch.dtype | str = torch.float32,
    device: torch.device | str | None = None,
) -> ModelProvider:
    """A :class:`ModelSpec` becomes a :class:`SpecModel`; a provider passes through."""
    return SpecModel(model, seed, dtype, device) if isinstance(model, ModelSpec) else model
