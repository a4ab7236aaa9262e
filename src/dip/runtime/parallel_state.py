"""One rank's parallel set-up for training: the ``(dp, pp, tp)`` device mesh, the chunks' tensor-parallel
and FSDP wrapping, gradient synchronisation, the optimizer, and whole tensors for reports.

The trainer holds one :class:`ParallelState` per rank and calls, every step: :meth:`~ParallelState.begin_step`
(FSDP: gather the stage's parameters), the step runner, :meth:`~ParallelState.sync_gradients` (sums of
tensor-parallel partial gradients, then the data-parallel all-reduce, or FSDP's reduce-scatter) and the
optimizer from :meth:`~ParallelState.make_optimizer` (ZeRO-1 when ``dp > 1``, see :mod:`.zero`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from dip.errors import BadInput
from dip.runtime.comm import timed_collective
from dip.runtime.fsdp import FsdpSteps, same_action_sequences, shard_chunk_fsdp
from dip.runtime.parallel import Layout, ParallelModel, finish_tp_grads, full_tensors, group_of, local_tensor, make_mesh
from dip.runtime.zero import ShardedOptimizer

__all__ = ["ParallelOptions", "ParallelState"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParallelOptions:
    """``--tp``, ``--fsdp`` and ``--fsdp-reshard-after-forward`` of ``dip train``."""

    tp: int = 1
    fsdp: bool = False
    reshard_after_forward: bool = False


class ParallelState:
    """The device mesh of a run as one rank sees it, and what the trainer does with it.

    Args:
        layout: the run's sizes and this rank's coordinates.
        device: the rank's compute device (its type names the mesh's device type).
        options: tensor parallelism and FSDP options.
        comm_device: where the data-parallel gradient all-reduce runs (the CPU under gloo).
    """

    def __init__(
        self, layout: Layout, device: torch.device, options: ParallelOptions, comm_device: torch.device | None = None
    ):
        self.layout, self.device, self.options = layout, device, options
        self.comm_device = comm_device or device
        self.mesh = make_mesh(layout, device.type)  # collective: every rank, once
        self.tp_mesh = self.mesh["tp"]
        self.dp_mesh = self.mesh["dp"]
        self.stage_mesh = self.mesh["dp", "tp"]  # this pipeline stage's replicas x its TP group
        self.dp_group = group_of(self.mesh, "dp")
        self.fsdp: FsdpSteps | None = None

    @property
    def zero1(self) -> bool:
        """Whether the optimizer state is sharded over the data-parallel ranks by ZeRO-1."""
        return self.layout.dp > 1 and not self.options.fsdp

    def wrap(self, provider: Any) -> ParallelModel:
        """``provider`` whose chunks are built tensor-parallel (and FSDP units with ``--fsdp``)."""
        wrap_chunk: Callable | None = None
        ties = getattr(provider, "tied_groups", tuple)()
        if self.options.fsdp and self.options.reshard_after_forward and ties:
            raise BadInput(
                f"--fsdp-reshard-after-forward cannot keep the tied parameters of {provider.spec.name} "
                f"({', '.join(ties[0])}) equal: drop the flag (parameters are then gathered once per step)"
            )
        if self.options.fsdp:
            mesh, reshard = self.dp_mesh, self.options.reshard_after_forward

            def wrap_chunk(chunk):
                return shard_chunk_fsdp(chunk, mesh, reshard)

        return ParallelModel(provider, self.tp_mesh, wrap_chunk=wrap_chunk)

    def check_plans(self, plans, batches, instances) -> None:
        """Per-forward resharding needs the replicas' action sequences equal (``BadInput`` otherwise)."""
        if self.options.fsdp and self.options.reshard_after_forward and self.layout.dp > 1:
            same_action_sequences(plans, batches, self.layout.pp_rank, instances)

    def begin_step(self, runner) -> None:
        """Before the pipeline runs (FSDP: gather the stage's parameters, in one fixed order)."""
        if not self.options.fsdp:
            return
        if self.fsdp is None:
            self.fsdp = FsdpSteps(_chunks(runner), self.options.reshard_after_forward)
        self.fsdp.begin()

    def sync_gradients(self, runner, timeout_s: float) -> None:
        """After the step's last backward: every parameter's gradient in its own placement and summed
        over the data-parallel replicas (FSDP: reduce-scattered into its shard)."""
        if self.fsdp is not None:
            self.fsdp.finish()
            finish_tp_grads(runner.named_parameters())  # partial TP sums (sequence-parallel norms) resolved
            return
        params = runner.named_parameters()
        finish_tp_grads(params)
        if self.dp_group is not None:
            allreduce_gradients(params, self.dp_group, self.layout.rank, timeout_s, self.comm_device)

    def make_optimizer(self, runner, make: Callable[[list[nn.Parameter]], Any]) -> Any:
        """The rank's optimizer: ``make`` over the parameters (FSDP shards them already), or over their
        data-parallel shards (ZeRO-1) when ``dp > 1``."""
        params = runner.named_parameters()
        if self.zero1:
            return ShardedOptimizer(params, self.stage_mesh, make)
        return make([p for _, p in sorted(params.items())])

    def counts_gradient(self, grad: Tensor) -> bool:
        """Whether this rank counts ``grad`` in the global gradient norm: every part of every gradient is
        counted on exactly one rank (a replicated copy on the replica / TP rank of index 0, a shard on
        the rank that holds it)."""
        coords = {"dp": self.layout.dp_index, "tp": self.layout.tp_rank}
        names = (grad.device_mesh.mesh_dim_names or ()) if isinstance(grad, DTensor) else ()
        if isinstance(grad, DTensor) and any(p.is_partial() for p in grad.placements):
            raise RuntimeError(f"a gradient is still a partial sum ({grad.placements}): synchronise gradients first")
        for dim, coord in coords.items():
            if coord == 0:
                continue
            if dim not in names or grad.placements[names.index(dim)].is_replicate():  # (FSDP x TP: _StridedShard)
                return False
        return True

    def full_grads(self, runner) -> dict[str, Tensor]:
        """Whole gradients by canonical name on the speaking rank, ``{}`` elsewhere (collective)."""
        return full_tensors({n: p.grad for n, p in runner.named_parameters().items()}, keep=self.layout.speaks)

    def full_params(self, runner) -> dict[str, Tensor]:
        """Whole parameters by canonical name on the speaking rank, ``{}`` elsewhere (collective)."""
        return full_tensors(dict(runner.named_parameters()), keep=self.layout.speaks)

    def report(self) -> dict[str, Any]:
        """What ``dip train --json`` says about the parallel set-up."""
        opts = self.options
        return {
            "tp": self.layout.tp,
            "sequence_parallel": self.layout.tp > 1,
            "fsdp": opts.fsdp,
            "fsdp_reshard_after_forward": opts.fsdp and opts.reshard_after_forward,
            "optimizer_sharding": "fsdp" if opts.fsdp else ("zero1" if self.zero1 else "none"),
        }


def _chunks(runner) -> list[nn.Module]:
    """The rank's chunk modules in an order every replica shares (by layer range)."""
    return [m for _, stage in sorted(runner.built.items()) for m in stage.modules]


def allreduce_gradients(
    params: Mapping[str, nn.Parameter], group: dist.ProcessGroup, rank: int, timeout_s: float, device: torch.device
) -> None:
    """Sum the gradients (the rank's local parts of DTensor gradients) over ``group`` in one flat buffer."""
    grads = [local_tensor(p.grad) for _, p in sorted(params.items())]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads]).to(device)
    timed_collective(dist.all_reduce, "the data-parallel gradient all-reduce", rank, timeout_s, flat, group=group)
    off = 0
    with torch.no_grad():
        for g in grads:
            n = g.numel()
            g.copy_(flat[off : off + n].view_as(g))
            off += n
