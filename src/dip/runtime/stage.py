"""Stage chunks: the torch modules of one plan chunk, chained across the modules it holds.

A plan chunk holds one part per module (``Chunk.parts``); Megatron-style mixed chunks hold several
(``vit[6:8] + llm[0:3]``). :class:`StageChunk` runs the parts one after the other and joins them with
the model's cross-module glue (``edge_tensors`` then ``assemble_inputs``), exactly as the reference
does between whole modules. A part whose module has nothing to do for the unit (a text-only
micro-batch reaching ViT layers) is skipped and yields empty tensors of the planned shapes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from dip.data.meta import MicroBatchMeta
from dip.data.tensors import TensorSpec
from dip.runtime.comm import TORCH_DTYPES
from dip.schedule.ir import Chunk, ChunkPart, Unit
from dip.spec.model import Edge, ModelSpec


def module_edge(model: ModelSpec, src: str, dst: str) -> Edge:
    """The model edge ``src -> dst`` (cross-module glue needs one)."""
    for e in model.edges:
        if e.src == src and e.dst == dst:
            return e
    raise ValueError(f"model {model.name} has no edge {src} -> {dst}, but a chunk chain joins them")


@dataclass(frozen=True, slots=True)
class PartUnit:
    """A unit as one module part sees it (``UnitLike``: micro-batch, instance range)."""

    module: str
    mb: int
    start: int = 0
    stop: int = 0


def empty_outputs(specs: Sequence[TensorSpec], device: torch.device) -> dict[str, Tensor]:
    """Zero-row tensors standing in for the outputs of a part that had nothing to do."""
    return {s.name: torch.zeros(s.shape, dtype=TORCH_DTYPES[s.dtype], device=device) for s in specs}


class StageChunk:
    """The modules of one plan chunk on this rank, built once and reused by every step.

    ``provider`` is a :class:`dip.runtime.models.ModelProvider` (built-in models or bring-your-own).
    """

    def __init__(self, chunk: Chunk, provider: Any, device: torch.device | None = None):
        self.chunk = chunk
        self.provider = provider
        self.device = device or torch.device("cpu")
        self.parts: list[ChunkPart] = list(chunk.parts)
        self.modules: list[nn.Module] = [provider.build_chunk(p.module, p.layer_start, p.layer_end) for p in self.parts]
        self._offsets = []
        off = 0
        for p in self.parts:
            self._offsets.append((off, off + p.layers))
            off += p.layers

    @property
    def params(self) -> list[nn.Parameter]:
        """The trainable parameters registered now (FSDP swaps sharded and unsharded ones)."""
        return [p for m in self.modules for p in m.parameters() if p.requires_grad]

    @property
    def layout(self) -> tuple[tuple[str, int, int], ...]:
        """``((module, layer_start, layer_end), ...)``: what this chunk holds."""
        return tuple((p.module, p.layer_start, p.layer_end) for p in self.parts)

    def canonical_named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        for m in self.modules:
            yield from m.canonical_named_parameters()

    def part_unit(self, part: ChunkPart, unit: Unit, mb_index: int) -> PartUnit:
        return PartUnit(part.module, mb_index, unit.start, unit.stop)

    def instances(self, part: ChunkPart, unit: Unit, mb: MicroBatchMeta) -> int:
        if unit.stop > unit.start:
            return unit.stop - unit.start
        return self.provider.instances(part.module, mb)

    def run(
        self,
        inputs: dict[str, Tensor],
        unit: Unit,
        mb: MicroBatchMeta,
        mb_index: int,
        strategies: Sequence[str],
        data_of,
        handoff_from: str | None = None,
    ) -> dict[str, Tensor]:
        """Forward of the chunk on one unit.

        ``data_of(module, unit)`` gives the unit's local data (cached per step); ``handoff_from`` names
        the module whose final outputs ``inputs`` are (a mixed chain crossing modules at this chunk's
        first layer), so the glue turns them into this module's inputs first.
        """
        x = inputs
        prev: str | None = handoff_from
        prev_empty = False
        for part, module, (a, b) in zip(self.parts, self.modules, self._offsets):
            if prev is not None and prev != part.module:
                x = self._handoff(prev, part, x, unit, mb, mb_index, prev_empty)
            pu = self.part_unit(part, unit, mb_index)
            if self.instances(part, unit, mb) == 0:
                specs = self.provider.output_specs(part.module, part.layer_end, mb, unit.start, unit.stop)
                x, prev_empty = empty_outputs(specs, self.device), True
            else:
                x, prev_empty = module(x, data_of(part.module, pu), strategies[a:b]), False
            prev = part.module
        return x

    def _handoff(
        self,
        src: str,
        part: ChunkPart,
        outputs: dict[str, Tensor],
        unit: Unit,
        mb: MicroBatchMeta,
        mb_index: int,
        src_empty: bool,
    ) -> dict[str, Tensor]:
        edge = module_edge(self.provider.spec, src, part.module)
        received = []
        if not src_empty:
            src_unit = PartUnit(src, mb_index)
            dst_unit = PartUnit(part.module, mb_index)
            received.append((edge, src_unit, self.provider.edge_tensors(edge, outputs, src_unit, dst_unit, mb)))
        return self.provider.assemble_inputs(part.module, mb, received)


@dataclass
class UnitState:
    """What the forward of one (chunk, unit) keeps for its backward.

    ``inputs``: per incoming message, the leaves the forward consumed (their ``.grad`` is the gradient
    to send back); ``outputs``: per outgoing message, the tensors it sent (autograd outputs);
    ``loss``: the summed loss when this is the loss module's last chunk.
    """

    inputs: dict[tuple, dict[str, Tensor]] = field(default_factory=dict)
    outputs: dict[tuple, dict[str, Tensor]] = field(default_factory=dict)
    loss: Tensor | None = None
    # filled by a split backward (I) for the weight pass (W): a splitgrad.WeightJob
    weight_job: Any = None

    def input_leaves(self) -> list[Tensor]:
        return [t for d in self.inputs.values() for t in d.values() if t.requires_grad]
