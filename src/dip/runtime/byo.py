"""Bring your own model: run your own ``nn.Module`` blocks through the DIP planner and runtime.

Describe the model twice, once for each side of DIP:

1. a :class:`~dip.spec.model.ModelSpec` (module names, layer counts, sizes and edges): the planner's
   cost proxy; pick the closest built-in kind (a module that must never be split into
   sub-microbatches should use ``kind="decoder"``);
2. a :class:`ByoModule` per module saying how to build its parts:

   * ``make_pre() -> nn.Module`` with ``forward(inputs: dict[str, Tensor], data)`` (first chunk)
     returning ``hidden`` or ``(hidden, side)``;
   * ``make_block(layer_index) -> nn.Module`` with ``forward(hidden, data) -> hidden`` (every layer);
     ``forward(hidden, data, side) -> hidden`` when the module has side tensors;
   * ``make_post() -> nn.Module`` with ``forward(hidden, data[, side]) -> dict[str, Tensor]`` (last
     chunk; ``{"loss_sum": scalar}`` for the loss module, summed over its loss terms);
   * ``hidden_shape(mb, start, stop)``: shape of the ``hidden`` tensor between chunks, or
     ``boundary(mb, start, stop) -> {name: shape}`` for **any number of named tensors** between
     chunks: ``hidden`` plus *side tensors* (a timestep embedding, a modulation vector, projected
     conditioning) that every block reads and that travel, with their gradients, from chunk to chunk.

Plus, for the whole model, ``make_data(ByoUnit) -> data`` (the rank-local inputs of a unit; must depend
only on the unit, never on how a micro-batch is split) and ``loss_tokens(mb)`` (loss terms of a
micro-batch: the step's loss is ``sum(loss_sum) / sum(loss_tokens)``).

Across modules:

* the tensors a producer unit sends to a consumer unit are its last chunk's outputs, unchanged, or
  what a :class:`ByoEdge` cuts from them (e.g. the caption rows of the clips a DiT unit holds);
* a consumer receiving the same tensor name from several producer units (every image sub-microbatch
  sends ``image_embeds``) gets their **concatenation in unit order**, never just the last one;
* **tied parameters** (input embedding = LM head) are declared as groups of canonical names
  (``ties=[("llm.pre.embed.weight", "llm.post.head.weight")]``): every copy starts from the first
  member's value, and :mod:`dip.runtime.ties` sums the copies' gradients between their holders each
  step (as Megatron does for word embeddings), so the copies stay equal;
* **real samples** reach ``make_data``: :meth:`ByoModel.use_data` attaches a data source, and
  :meth:`ByoUnit.samples` returns the loaded samples of the unit's micro-batch (``mb.sample_ids``);
  ``ByoModule.loads(mb, start, stop, layer_start, layer_end)`` names the source's keys a chunk reads
  (e.g. pixels only for the first chunk of a vision tower), so that the trainer loads exactly those
  ahead of the step through a ``DataLoader`` (:mod:`dip.runtime.dataload`; the source offers
  ``load(key)`` and ``prime(loaded)``).

:class:`ByoModel` then serves the same :class:`~dip.runtime.models.provider.ModelProvider` interface as
the built-in models: chunks are :class:`~dip.runtime.models.chunk.ChunkModule` s (memory strategies,
split backward and canonical parameter names ``<module>.layers.<i>.<your name>`` included), and
:class:`~dip.runtime.models.reference.ReferenceModel` accepts it for a single-process reference.

Each part is constructed under ``torch.random.fork_rng`` seeded by ``(seed, module, part)``, so your
constructors' default initialisation is the same on every rank and in every chunking. Modules run whole
micro-batches (``instances`` = 1) unless you give ``instances``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from dip.data.meta import MicroBatchMeta
from dip.data.tensors import TensorSpec, UnitLike
from dip.runtime.models.chunk import ChunkModule, PartProtocol
from dip.runtime.models.seeding import dtype_name, stable_seed, torch_dtype
from dip.spec.model import Edge, ModelSpec

__all__ = ["ByoEdge", "ByoModel", "ByoModule", "ByoUnit", "SampleSource", "merge_received"]

Shapes = Mapping[str, tuple[int, ...]]
SpecFn = Callable[[MicroBatchMeta, int, int], "tuple[TensorSpec, ...] | Shapes"]


class SampleSource(Protocol):
    """Where real samples come from: ``sample(index)`` loads the dataset's sample ``index``."""

    def sample(self, index: int) -> Any: ...


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
    source: SampleSource | None = None

    @property
    def sample_ids(self) -> tuple[int, ...]:
        """Dataset indices of the micro-batch's samples (empty for generated workloads)."""
        return self.mb.sample_ids

    def samples(self) -> list[Any]:
        """The real samples of the unit's micro-batch, in micro-batch order."""
        if self.source is None:
            raise RuntimeError(f"{self.module}: no data source attached (call ByoModel.use_data first)")
        if len(self.mb.sample_ids) != self.mb.samples:
            raise RuntimeError(f"{self.module}: the micro-batch has no dataset sample ids (generated workload?)")
        return [self.source.sample(i) for i in self.mb.sample_ids]


@dataclass(frozen=True)
class ByoModule:
    """Part builders and shape rules of one bring-your-own module (see the module docstring)."""

    make_block: Callable[[int], nn.Module]
    hidden_shape: Callable[[MicroBatchMeta, int, int], tuple[int, ...]] | None = None
    make_pre: Callable[[], nn.Module] | None = None
    make_post: Callable[[], nn.Module] | None = None
    first_inputs: SpecFn | None = None  # cross-module tensors the first chunk receives
    last_outputs: SpecFn | None = None  # tensors the last chunk sends (none for the loss module)
    instances: Callable[[MicroBatchMeta], int] | None = None
    boundary: Callable[[MicroBatchMeta, int, int], Shapes] | None = None  # named tensors between chunks
    # dataset keys the chunk [layer_start, layer_end) reads for instances [start, stop) of a micro-batch:
    # loads(mb, start, stop, layer_start, layer_end) -> keys of the data source's load(key)
    loads: Callable[[MicroBatchMeta, int, int, int, int], Iterable[Hashable]] | None = None

    def __post_init__(self):
        if (self.hidden_shape is None) == (self.boundary is None):
            raise ValueError("give exactly one of hidden_shape and boundary")

    def boundary_shapes(self, mb: MicroBatchMeta, a: int, b: int) -> dict[str, tuple[int, ...]]:
        if self.boundary is not None:
            shapes = dict(self.boundary(mb, a, b))
            if "hidden" not in shapes:
                raise ValueError(f"boundary tensors {sorted(shapes)} must include 'hidden'")
            return shapes
        return {"hidden": tuple(self.hidden_shape(mb, a, b))}

    @property
    def has_side(self) -> bool:
        return self.boundary is not None


@dataclass(frozen=True)
class ByoEdge:
    """What crosses a model edge from a producer unit to a consumer unit.

    ``tensors(producer_outputs, producer, consumer, mb) -> {name: tensor}`` (differentiable in the
    producer's outputs; empty when the units do not meet) and ``shapes(producer, consumer, mb) ->
    {name: shape}`` (the shape plan of the same channel).
    """

    tensors: Callable[[dict[str, Tensor], UnitLike, UnitLike, MicroBatchMeta], dict[str, Tensor]]
    shapes: Callable[[UnitLike, UnitLike, MicroBatchMeta], Shapes]


class ByoProtocol(PartProtocol):
    """Calls user parts: ``pre(inputs, data)``, ``block(hidden, data[, side])``, ``post(hidden, data[, side])``."""

    supports_selective = False  # "selective" falls back to recomputing the whole block

    def __init__(self, with_side: bool = False):
        self.with_side = with_side

    def call_pre(self, pre, inputs, data):
        got = pre(inputs, data)
        if isinstance(got, tuple):
            hidden, side = got
            return hidden, dict(side)
        return got, {}

    def call_block(self, block, hidden, side, data, recompute_attention=False):
        return block(hidden, data, side) if self.with_side else block(hidden, data)

    def call_post(self, post, hidden, side, data):
        return post(hidden, data, side) if self.with_side else post(hidden, data)


def merge_received(
    module_name: str, received: Sequence[tuple[Edge, UnitLike, dict[str, Tensor]]], edge_order: Sequence[Edge] = ()
) -> dict[str, Tensor]:
    """First-chunk inputs from ``(edge, producer unit, tensors)`` triples: a name sent by several
    producer units is their concatenation (dim 0) in (edge, unit start) order, never overwritten."""
    rank = {(e.src, e.dst): k for k, e in enumerate(edge_order)}
    parts: dict[str, list[tuple[tuple[int, int], Tensor]]] = {}
    for edge, unit, tensors in received:
        if edge.dst != module_name:
            raise ValueError(f"channel {edge.src}->{edge.dst} does not feed {module_name}")
        key = (rank.get((edge.src, edge.dst), 0), unit.start)
        for name, t in tensors.items():
            parts.setdefault(name, []).append((key, t))
    out = {}
    for name, items in parts.items():
        keys = [k for k, _ in items]
        if len(set(keys)) != len(keys):
            raise ValueError(f"{module_name}: two producer units sent {name!r} for the same position {keys}")
        items.sort(key=lambda kv: kv[0])
        out[name] = items[0][1] if len(items) == 1 else torch.cat([t for _, t in items])
    return out


class ByoModel:
    """A :class:`~dip.runtime.models.provider.ModelProvider` over user-defined modules."""

    requires_data = False  # trains on generated micro-batches unless a dataset is attached

    def __init__(
        self,
        spec: ModelSpec,
        modules: Mapping[str, ByoModule],
        make_data: Callable[[ByoUnit], Any],
        loss_tokens: Callable[[MicroBatchMeta], int],
        loss_module: str | None = None,
        seed: int = 0,
        dtype: torch.dtype | str = torch.float32,
        device: torch.device | str | None = None,
        *,
        ties: Sequence[Sequence[str]] = (),
        edges: Mapping[tuple[str, str], ByoEdge] | None = None,
    ):
        missing = [m.name for m in spec.modules if m.name not in modules]
        if missing:
            raise ValueError(f"no ByoModule for module(s) {', '.join(missing)}")
        self.spec, self.modules, self.make_data = spec, dict(modules), make_data
        self._loss_tokens, self._loss_module = loss_tokens, loss_module or spec.modules[-1].name
        self.seed, self.dtype, self.device = seed, torch_dtype(dtype), device
        self.ties: tuple[tuple[str, ...], ...] = tuple(tuple(g) for g in ties)
        for group in self.ties:
            if len(group) < 2 or len(set(group)) != len(group):
                raise ValueError(f"a tie needs two or more distinct parameter names, got {group}")
        self.edges = dict(edges or {})
        self.source: SampleSource | None = None

    def use_data(self, source: SampleSource | None) -> None:
        """Attach the data source whose samples :meth:`ByoUnit.samples` loads."""
        self.source = source

    def _part(self, module_name: str, part: str, factory: Callable[[], nn.Module]) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(stable_seed(self.seed, module_name, part))
            return factory()

    def _part_by_name(self, canonical: str) -> tuple[str, str, Callable[[], nn.Module], str]:
        """``(module, part name, factory, parameter name within the part)`` of a canonical name."""
        module_name, rest = canonical.split(".", 1)
        byo = self.modules[module_name]
        if rest.startswith("pre."):
            return module_name, "pre", byo.make_pre, rest[4:]
        if rest.startswith("post."):
            return module_name, "post", byo.make_post, rest[5:]
        _, index, name = rest.split(".", 2)
        return module_name, f"layers.{index}", (lambda i=int(index): byo.make_block(i)), name

    def build_chunk(self, module_name: str, layer_start: int, layer_end: int) -> ChunkModule:
        spec, byo = self.spec.module(module_name), self.modules[module_name]
        if not 0 <= layer_start < layer_end <= spec.layers:
            raise ValueError(
                f"bad layer range [{layer_start}, {layer_end}) for {module_name} with {spec.layers} layers"
            )
        pre = self._part(module_name, "pre", byo.make_pre) if layer_start == 0 and byo.make_pre else None
        blocks = [
            self._part(module_name, f"layers.{i}", lambda i=i: byo.make_block(i)) for i in range(layer_start, layer_end)
        ]
        last = layer_end == spec.layers
        post = self._part(module_name, "post", byo.make_post) if last and byo.make_post else None
        chunk = ChunkModule(
            module_name, layer_start, layer_end, spec.layers, pre, blocks, post, ByoProtocol(byo.has_side)
        )
        self._apply_ties(chunk)
        return chunk.to(device=self.device, dtype=self.dtype)

    @torch.no_grad()
    def _apply_ties(self, chunk: ChunkModule) -> None:
        """Copies of a tied parameter in this chunk take the value of the group's first member."""
        held = dict(chunk.canonical_named_parameters())
        for group in self.ties:
            copies = [n for n in group[1:] if n in held]
            if not copies:
                continue
            first = held.get(group[0])
            if first is None:
                module_name, part, factory, name = self._part_by_name(group[0])
                first = self._part(module_name, part, factory).get_parameter(name)
            for n in copies:
                if held[n].shape != first.shape:
                    raise ValueError(
                        f"tied parameters {group[0]} {tuple(first.shape)} and {n} "
                        f"{tuple(held[n].shape)} differ in shape"
                    )
                held[n].copy_(first)

    def tied_groups(self) -> tuple[tuple[str, ...], ...]:
        """Groups of canonical parameter names that are one parameter (see :mod:`dip.runtime.ties`)."""
        return self.ties

    def instances(self, module_name: str, mb: MicroBatchMeta) -> int:
        fn = self.modules[module_name].instances
        return fn(mb) if fn else 1

    def _range(self, module_name: str, mb: MicroBatchMeta, start: int, stop: int) -> tuple[int, int]:
        n = self.instances(module_name, mb)
        return (0, n) if (start, stop) == (0, 0) or self.modules[module_name].instances is None else (start, stop)

    def unit_data(self, mb, mb_index, module_name, start, stop, step_seed):
        a, b = self._range(module_name, mb, start, stop)
        return self.make_data(ByoUnit(module_name, mb, mb_index, a, b, step_seed, self.dtype, self.device, self.source))

    def data_keys(
        self, module_name: str, layer_start: int, layer_end: int, mb: MicroBatchMeta, start: int, stop: int
    ) -> tuple[Hashable, ...]:
        """The data source's keys that chunk ``[layer_start, layer_end)`` of ``module_name`` reads for
        instances ``[start, stop)`` of ``mb`` (loaded ahead by :mod:`dip.runtime.dataload`)."""
        loads = self.modules[module_name].loads
        if loads is None:
            return ()
        a, b = self._range(module_name, mb, start, stop)
        return tuple(loads(mb, a, b, layer_start, layer_end))

    def loss_module(self) -> str:
        return self._loss_module

    def loss_tokens(self, mb: MicroBatchMeta) -> int:
        return self._loss_tokens(mb)

    def _specs(self, got) -> tuple[TensorSpec, ...]:
        if isinstance(got, Mapping):
            return tuple(TensorSpec(n, tuple(s), dtype_name(self.dtype)) for n, s in got.items())
        return tuple(got)

    def input_specs(self, module_name, layer_start, mb, start, stop):
        a, b = self._range(module_name, mb, start, stop)
        byo = self.modules[module_name]
        if layer_start > 0:
            return self._specs(byo.boundary_shapes(mb, a, b))
        return self._specs(byo.first_inputs(mb, a, b)) if byo.first_inputs else ()

    def output_specs(self, module_name, layer_end, mb, start, stop):
        a, b = self._range(module_name, mb, start, stop)
        byo = self.modules[module_name]
        if layer_end < self.spec.module(module_name).layers:
            return self._specs(byo.boundary_shapes(mb, a, b))
        return self._specs(byo.last_outputs(mb, a, b)) if byo.last_outputs else ()

    def edge_specs(
        self, edge: Edge, producer: UnitLike, consumer: UnitLike, mb: MicroBatchMeta
    ) -> tuple[TensorSpec, ...]:
        """Tensor specs of the channel ``producer -> consumer`` (the shape plan of :meth:`edge_tensors`)."""
        custom = self.edges.get((edge.src, edge.dst))
        if custom is not None:
            return self._specs(custom.shapes(producer, consumer, mb))
        if producer.mb != consumer.mb:
            return ()
        layers = self.spec.module(edge.src).layers
        return tuple(self.output_specs(edge.src, layers, mb, producer.start, producer.stop))

    def edge_tensors(
        self,
        edge: Edge,
        producer_outputs: dict[str, Tensor],
        producer: UnitLike,
        consumer: UnitLike,
        mb: MicroBatchMeta,
    ) -> dict[str, Tensor]:
        custom = self.edges.get((edge.src, edge.dst))
        if custom is not None:
            return custom.tensors(producer_outputs, producer, consumer, mb)
        return dict(producer_outputs) if producer.mb == consumer.mb else {}

    def assemble_inputs(
        self, module_name: str, mb: MicroBatchMeta, received: Sequence[tuple[Edge, UnitLike, dict[str, Tensor]]]
    ) -> dict[str, Tensor]:
        return merge_received(module_name, received, self.spec.producers(module_name))
