"""Tensor, pipeline and data parallelism of one run: the device mesh, the tensor-parallel plans of the
built-in blocks, and the model provider whose chunks run tensor-, sequence- and (optionally)
FSDP-sharded.

[Note: mesh] One ``torch.distributed.device_mesh.init_device_mesh`` mesh of shape ``(dp, pp, tp)``
with dimension names ``("dp", "pp", "tp")``: global rank ``g = (d * pp + p) * tp + t``, tensor
parallelism innermost, so the ``tp`` ranks of a stage are consecutive (one node under torchrun).
Pipeline messages go between ranks that differ in ``p`` only (same replica ``d``, same TP rank
``t``); gradients are reduced over ``dp``; the TP collectives run over ``tp``.

[Note: what is sharded] Inside every chunk (``parallelize_module`` with torch's styles, as Megatron
splits them): attention ``q``/``k``/``v`` column-parallel (query and key/value heads split ``tp``
ways), ``o`` row-parallel; MLP up/gate column-parallel, down row-parallel; the decoder's embedding
and LM head vocabulary-parallel (with torch's vocabulary-parallel cross-entropy, ``loss_parallel``);
the ViT merger column- then row-parallel. Between those regions the sequence is split
(``SequenceParallel`` norms, :mod:`dip.runtime.models.sequence`): a chunk's ``hidden`` holds the
rank's rows of the packed sequence, which is what each TP rank sends to the same TP rank of the
next stage. Pre parts (patch embeddings, timestep and caption MLPs) and the cross-module tensors
(image embeddings, caption states, the DiT's ``cond`` and ``t_mod``) are replicated.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    PrepareModuleInput,
    RowwiseParallel,
    SequenceParallel,
    loss_parallel,
    parallelize_module,
)
from torch.distributed.tensor.placement_types import _StridedShard  # fused QKV: torch's doubly split dim

from dip.data.meta import MicroBatchMeta
from dip.data.tensors import TensorSpec
from dip.errors import BadInput
from dip.runtime.models import ChunkModule, SpecModel
from dip.runtime.models.saved import in_recomputed_block, note_saved
from dip.runtime.models.sequence import SequenceShard
from dip.spec.model import ModelSpec
from dip.spec.validate import validate_parallel

__all__ = [
    "GATHERED_INPUTS",
    "MESH_DIMS",
    "FusedColwiseParallel",
    "Layout",
    "ParallelModel",
    "ShardSavedInputs",
    "TpPlan",
    "builtin_tp_plan",
    "check_tensor_parallel",
    "finish_tp_grads",
    "full_tensors",
    "local_tensor",
    "make_mesh",
    "shard_chunk",
]

logger = logging.getLogger(__name__)

MESH_DIMS = ("dp", "pp", "tp")
TpPlan = dict[str, ParallelStyle]


# --------------------------------------------------------------------------- layout and mesh


@dataclass(frozen=True)
class Layout:
    """Parallel sizes of a run and the coordinates of one global ``rank`` in its ``(dp, pp, tp)`` mesh."""

    rank: int
    tp: int = 1
    pp: int = 1
    dp: int = 1

    @property
    def world(self) -> int:
        return self.tp * self.pp * self.dp

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp

    @property
    def pp_rank(self) -> int:
        return (self.rank // self.tp) % self.pp

    @property
    def dp_index(self) -> int:
        return self.rank // (self.tp * self.pp)

    def global_rank(self, pp_rank: int, dp_index: int | None = None, tp_rank: int | None = None) -> int:
        """Global rank of pipeline rank ``pp_rank`` in replica ``dp_index`` at TP rank ``tp_rank``
        (this rank's replica and TP rank by default)."""
        d = self.dp_index if dp_index is None else dp_index
        t = self.tp_rank if tp_rank is None else tp_rank
        return (d * self.pp + pp_rank) * self.tp + t

    @property
    def speaks(self) -> bool:
        """Replica 0's TP rank 0 speaks for its stage (reports, gathered tensors)."""
        return self.dp_index == 0 and self.tp_rank == 0


def make_mesh(layout: Layout, device_type: str) -> DeviceMesh:
    """The run's ``(dp, pp, tp)`` device mesh (collective: every rank calls it)."""
    return init_device_mesh(device_type, (layout.dp, layout.pp, layout.tp), mesh_dim_names=MESH_DIMS)


# --------------------------------------------------------------------------- tensor-parallel plans


def _attention(kv_replicated: bool = False) -> TpPlan:
    """One all-gather of the sequence for q/k/v (column-parallel: heads split), one reduce-scatter
    after ``o`` (row-parallel) back into the sequence-parallel region. ``kv`` (cross-attention's
    caption states) is replicated: one all-reduce of its gradient."""
    kwargs = {"input_kwarg_layouts": {"kv": Replicate()}, "desired_input_kwarg_layouts": {"kv": Replicate()}}
    return {
        "": PrepareModuleInput(
            input_layouts=(Shard(0), None),
            desired_input_layouts=(Replicate(), None),
            **(kwargs if kv_replicated else {}),
        ),
        "q": ColwiseParallel(),
        "k": ColwiseParallel(),
        "v": ColwiseParallel(),
        "o": RowwiseParallel(output_layouts=Shard(0)),
    }


def _mlp(up: Sequence[str], down: str) -> TpPlan:
    plan: TpPlan = {"": PrepareModuleInput(input_layouts=(Shard(0),), desired_input_layouts=(Replicate(),))}
    plan.update({name: ColwiseParallel() for name in up})
    plan[down] = RowwiseParallel(output_layouts=Shard(0))
    return plan


def _prefixed(prefix: str, plan: TpPlan) -> TpPlan:
    return {(f"{prefix}.{k}" if k else prefix): v for k, v in plan.items()}


def _norms(*names: str) -> TpPlan:
    return {n: SequenceParallel(sequence_dim=0, use_local_output=True) for n in names}


class FusedColwiseParallel(ColwiseParallel):
    """``ColwiseParallel`` for a linear layer whose output fuses ``parts`` projections (``qkv``):
    each projection is split by heads (``_StridedShard(0, split_factor=parts)``, the placement torch
    uses for a dimension split twice), so a rank's output holds its heads of every part, in order
    (``[q_r, k_r, v_r]``), and the whole weight keeps the checkpoint's layout."""

    def __init__(self, parts: int, *, dim: int = 1, use_local_output: bool = True):
        # the output stays strided (no redistribution); ``dim``: its feature dimension
        super().__init__(output_layouts=_StridedShard(dim, split_factor=parts), use_local_output=use_local_output)
        self.parts = parts

    def _partition_linear_fn(self, name, module, device_mesh):
        for pname, param in module.named_parameters():
            placement = _StridedShard(0, split_factor=self.parts)
            dist = distribute_tensor(param, device_mesh, [placement], src_data_rank=self.src_data_rank)
            module.register_parameter(pname, nn.Parameter(dist, requires_grad=param.requires_grad))


def builtin_tp_plan(kind: str, part: str, lm_head: bool = True) -> TpPlan:
    """``parallelize_module`` plan of a built-in part (``part``: ``pre``, ``block`` or ``post``)."""
    if part == "block":
        if kind == "vit":
            return {
                **_norms("norm1", "norm2"),
                **_prefixed("attn", _attention()),
                **_prefixed("mlp", _mlp(["fc1"], "fc2")),
            }
        if kind == "decoder":
            return {
                **_norms("input_norm", "post_attn_norm"),
                **_prefixed("attn", _attention()),
                **_prefixed("mlp", _mlp(["gate", "up"], "down")),
            }
        if kind == "dit":
            return {
                **_norms("cross_norm"),
                **_prefixed("attn", _attention()),
                **_prefixed("cross", _attention(kv_replicated=True)),
                **_prefixed("mlp", _mlp(["fc1"], "fc2")),
            }
    elif part == "pre":
        if kind == "decoder":  # vocabulary-parallel embedding (all-reduce of its output)
            return {"embed": RowwiseParallel(input_layouts=Replicate(), output_layouts=Replicate())}
        if kind in ("vit", "dit"):
            return {}
    elif part == "post":
        if kind == "vit":
            return {**_norms("norm"), "fc1": ColwiseParallel(), "fc2": RowwiseParallel(output_layouts=Replicate())}
        if kind == "decoder":
            head = {"head": ColwiseParallel(use_local_output=False)} if lm_head else {}  # logits stay sharded
            return {**_norms("norm"), **head}
        if kind == "dit":  # the replicated final layer on the rank's rows
            return {"out": SequenceParallel(sequence_dim=0, use_local_output=True)}
    raise ValueError(f"no tensor-parallel plan for part {part!r} of a {kind!r} module")


# the submodules whose inputs are gathered replicas of the rank's rows (column-parallel layers), with
# the sequence dimension of those inputs
GATHERED_INPUTS: dict[str, dict[str, int]] = {"block": {"attn": 0, "cross": 0, "mlp": 0}, "post": {"fc1": 0, "head": 0}}


class ShardSavedInputs:
    """Keep only this rank's rows of the replicated inputs that a module's column-parallel layers save
    for the backward, and all-gather them again there (Megatron's sequence parallelism keeps ``1/tp``
    of the QKV, FC1 and LM-head inputs).

    Within the module's forward a ``torch.autograd.graph.saved_tensors_hooks`` pair packs every saved
    DTensor whose placements are all ``Replicate`` as its ``Shard(0)`` rows (one copy per tensor,
    however many layers save it) and unpacks it with ``redistribute`` to ``Replicate``; other saved
    tensors pass unchanged. A block under ``torch.utils.checkpoint`` keeps the checkpoint's hooks
    innermost (it saves nothing to reshard)."""

    def __init__(self, mesh: DeviceMesh, dim: int = 0):
        self.mesh, self.dim = mesh, dim
        self._active: list[Any] = []

    def register(self, module: nn.Module) -> None:
        module.register_forward_pre_hook(self._enter)
        module.register_forward_hook(self._exit)

    def _enter(self, module: nn.Module, args: Any) -> None:
        if in_recomputed_block():
            self._active.append(None)
            return
        cache: dict[int, Any] = {}
        hooks = torch.autograd.graph.saved_tensors_hooks(lambda t: self._pack(t, cache), self._unpack)
        hooks.__enter__()
        self._active.append(hooks)

    def _exit(self, module: nn.Module, args: Any, output: Any) -> None:
        hooks = self._active.pop()
        if hooks is not None:
            hooks.__exit__(None, None, None)

    def _pack(self, t: Tensor, cache: dict[int, Any]) -> Any:
        if not (isinstance(t, DTensor) and t.dim() > self.dim and all(p.is_replicate() for p in t.placements)):
            note_saved(t)
            return t
        got = cache.get(id(t))
        if got is None:
            rows_of = [Shard(self.dim)]
            with torch.no_grad():
                rows = t.detach().redistribute(self.mesh, rows_of).to_local().clone()
            note_saved(rows)
            got = cache[id(t)] = (
                DTensor.from_local(rows, self.mesh, rows_of, run_check=False, shape=t.shape, stride=t.stride()),
            )
        return got

    def _unpack(self, packed: Any) -> Tensor:
        if isinstance(packed, tuple):
            return packed[0].redistribute(self.mesh, [Replicate()])
        return packed


def shard_chunk(
    chunk: ChunkModule,
    plan: Callable[[str], TpPlan],
    mesh: DeviceMesh,
    gathered: Callable[[str], Mapping[str, int]] = lambda part: GATHERED_INPUTS.get(part, {}),
) -> ChunkModule:
    """Apply ``plan(part)`` to the chunk's pre part, every block and its post part, in place, and keep
    only the rank's rows of the saved inputs of the submodules ``gathered(part)`` names (``{path:
    sequence dimension}``: the column-parallel layers' gathered inputs, :class:`ShardSavedInputs`).

    Every rank built the same full values (seeded), so each keeps its own shard without communication
    (``src_data_rank=None``)."""
    reshard: dict[int, ShardSavedInputs] = {}
    parts = [("pre", chunk.pre), *(("block", b) for b in chunk.layers.values()), ("post", chunk.post)]
    for part, module in parts:
        if module is None:
            continue
        styles = plan(part)
        if styles:
            parallelize_module(module, mesh, styles, src_data_rank=None)
        for name, dim in gathered(part).items():
            sub = module.get_submodule(name) if name in styles else None
            if sub is not None:
                reshard.setdefault(dim, ShardSavedInputs(mesh, dim)).register(sub)
    return chunk


def check_tensor_parallel(provider: Any, tp: int) -> None:
    """``BadInput`` unless ``provider``'s modules can be split ``tp`` ways (heads, widths) and it
    supports tensor parallelism at all."""
    if tp == 1:
        return
    own_plan = getattr(provider, "tp_plan", None)
    if own_plan is not None:
        own_plan(provider.spec.modules[0].name, "block")  # a provider without a plan says so now
    elif not isinstance(provider, SpecModel):
        raise BadInput(
            f"model {provider.spec.name} has no tensor-parallel plan: run it with --tp 1 (a provider supports "
            f"--tp with a tp_plan(module, part) method and parts that handle sequence shards, docs/models.md)"
        )
    validate_parallel(provider.spec, replace(provider.spec.parallel, tp=tp, pp=1, segments=()))


# --------------------------------------------------------------------------- the parallel provider


class ParallelModel:
    """A model provider whose chunks run tensor-parallel over ``tp_mesh`` (and, with ``fsdp``, are
    sharded over the data-parallel ranks): everything else is the wrapped provider's.

    Sequence-sharded boundary tensors (``sequence_sharded``, by default ``hidden`` between two chunks
    of a module) hold this rank's rows of the padded sequence, in the shape plan and in the messages.
    """

    def __init__(
        self, inner: Any, tp_mesh: DeviceMesh | None, *, wrap_chunk: Callable[[ChunkModule], ChunkModule] | None = None
    ):
        self.inner = inner
        self.tp_mesh = tp_mesh if tp_mesh is not None and tp_mesh.size() > 1 else None
        self.shard = SequenceShard(self.tp_mesh) if self.tp_mesh is not None else None
        self.wrap_chunk = wrap_chunk
        self.sequence_sharded: tuple[str, ...] = tuple(getattr(inner, "sequence_sharded", ("hidden",)))

    @property
    def spec(self) -> ModelSpec:
        return self.inner.spec

    @spec.setter
    def spec(self, value: ModelSpec) -> None:
        self.inner.spec = value

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def tp_plan(self, module_name: str, part: str) -> TpPlan:
        own = getattr(self.inner, "tp_plan", None)
        if own is not None:
            return own(module_name, part)
        m = self.spec.module(module_name)
        return builtin_tp_plan(m.kind, part, m.lm_head)

    def tp_gathered_inputs(self, module_name: str, part: str) -> Mapping[str, int]:
        own = getattr(self.inner, "tp_gathered_inputs", None)
        return own(module_name, part) if own is not None else GATHERED_INPUTS.get(part, {})

    def build_chunk(self, module_name: str, layer_start: int, layer_end: int) -> ChunkModule:
        chunk = self.inner.build_chunk(module_name, layer_start, layer_end)
        if self.tp_mesh is not None:
            shard_chunk(
                chunk,
                lambda part: self.tp_plan(module_name, part),
                self.tp_mesh,
                lambda part: self.tp_gathered_inputs(module_name, part),
            )
        if self.wrap_chunk is not None:
            chunk = self.wrap_chunk(chunk)
        return chunk

    def unit_data(self, mb: MicroBatchMeta, mb_index: int, module_name: str, start: int, stop: int, step_seed: int):
        data = self.inner.unit_data(mb, mb_index, module_name, start, stop, step_seed)
        if self.shard is not None:
            data.shard = self.shard
        return data

    def input_specs(self, module_name, layer_start, mb, start, stop) -> tuple[TensorSpec, ...]:
        specs = self.inner.input_specs(module_name, layer_start, mb, start, stop)
        return self._local(specs) if layer_start > 0 else specs

    def output_specs(self, module_name, layer_end, mb, start, stop) -> tuple[TensorSpec, ...]:
        specs = self.inner.output_specs(module_name, layer_end, mb, start, stop)
        return self._local(specs) if layer_end < self.spec.module(module_name).layers else specs

    def _local(self, specs: Sequence[TensorSpec]) -> tuple[TensorSpec, ...]:
        if self.shard is None:
            return tuple(specs)
        return tuple(
            replace(s, shape=(self.shard.rows(s.shape[0]), *s.shape[1:])) if s.name in self.sequence_sharded else s
            for s in specs
        )

    def grad_context(self) -> contextlib.AbstractContextManager:
        """The context every backward runs in: torch's vocabulary-parallel loss needs its own."""
        return loss_parallel() if self.tp_mesh is not None else contextlib.nullcontext()


# --------------------------------------------------------------------------- gradients and full tensors


def local_tensor(t: Tensor) -> Tensor:
    """The rank's part of a DTensor (the tensor itself otherwise)."""
    return t.to_local() if isinstance(t, DTensor) else t


def finish_tp_grads(params: Mapping[str, nn.Parameter]) -> None:
    """Give every parameter a gradient in its own placement: zeros where none arrived, the sum over the
    tensor-parallel group where the gradient is partial (replicated weights applied to the rank's rows:
    sequence-parallel norms), the rank's shard where it came back whole (the vocabulary-parallel
    embedding). Collective over TP; every TP rank holds the same names."""
    with torch.no_grad():
        for _, p in sorted(params.items()):
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            g = p.grad
            if isinstance(g, DTensor) and tuple(g.placements) != tuple(p.placements):
                p.grad = g.redistribute(placements=p.placements)


def full_tensors(named: Mapping[str, Tensor], keep: bool = True) -> dict[str, Tensor]:
    """Whole (unsharded) CPU copies of ``named`` (DTensors gathered: collective over their meshes; call
    on every rank of them, with the same names); ``keep=False`` returns ``{}`` after taking part."""
    out = {}
    for name, t in sorted(named.items()):
        full = t.full_tensor() if isinstance(t, DTensor) else t
        if keep:
            out[name] = full.detach().cpu()
    return out


def group_of(mesh: DeviceMesh | None, dim: str) -> dist.ProcessGroup | None:
    """The process group of mesh dimension ``dim`` (``None`` when it has one rank)."""
    if mesh is None or mesh[dim].size() == 1:
        return None
    return mesh.get_group(dim)
