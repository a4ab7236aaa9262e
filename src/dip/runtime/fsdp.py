"""Sharded data parallelism (FSDP2, ``torch.distributed.fsdp.fully_shard``) inside the pipeline's
per-chunk execution.

Every block of a chunk and the chunk itself (its pre and post parts) are FSDP units over the ``dp``
mesh dimension (composed with tensor parallelism: parameters become DTensors on the ``(dp, tp)``
mesh). Between steps each rank holds ``1/dp`` of its stage's parameters, gradients and optimizer state.

[Note: collectives in a fixed order] The replicas of a DIP run execute different plans (their batches
differ), so the order and number of a rank's forwards differ between replicas, while FSDP's
all-gathers and reduce-scatters are collectives over the replicas. By default
(``reshard_after_forward=False``) :class:`FsdpSteps` therefore gathers every unit's parameters once
before the pipeline runs (in one fixed order), lets the actions run without any FSDP collective
(gradients accumulate unsharded, ``set_requires_gradient_sync(False)``), and reduce-scatters the
gradients once after the last backward, again in fixed order (as torch pipelining's ``REDUCE_GRAD``
does: ``post_backward`` per parameter group, then the root's final callback). Gradients are summed,
not averaged (the loss is already scaled by the global batch's tokens). With
``reshard_after_forward=True`` FSDP frees the gathered parameters after every forward and gathers
them again for the backward (ZeRO-3 memory inside the step); that needs every replica to run the same
sequence of chunk forwards and backwards (:func:`same_action_sequences`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, fully_shard

from dip.errors import BadInput
from dip.runtime.models import ChunkModule
from dip.schedule.ir import Plan

__all__ = ["FsdpSteps", "same_action_sequences", "shard_chunk_fsdp"]


def shard_chunk_fsdp(chunk: ChunkModule, mesh: DeviceMesh, reshard_after_forward: bool) -> ChunkModule:
    """Make every block of ``chunk`` and the chunk itself (pre and post parts) FSDP units over ``mesh``."""
    for block in chunk.layers.values():
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(chunk, mesh=mesh, reshard_after_forward=reshard_after_forward)
    for unit in _units(chunk):
        unit.set_gradient_divide_factor(1.0)  # sums: the loss is scaled by the global batch already
        unit.set_force_sum_reduction_for_comms(True)  # plain SUM collectives (gloo has no PREMUL_SUM)
        unit.set_reduce_scatter_unused_params(True, recurse=False)  # a replica's idle chunk joins with zeros
    return chunk


def _units(chunk: nn.Module) -> list[FSDPModule]:
    """The FSDP units of a chunk, blocks first (in layer order), the chunk last."""
    return [m for m in chunk.modules() if isinstance(m, FSDPModule) and m is not chunk] + [chunk]


class FsdpSteps:
    """Per-step control of a rank's FSDP units (see the module docstring).

    ``chunks``: the rank's FSDP-wrapped chunk modules, in an order every replica shares.
    """

    def __init__(self, chunks: Iterable[nn.Module], reshard_after_forward: bool):
        self.units: list[FSDPModule] = [u for c in chunks for u in _units(c)]
        self.reshard_after_forward = reshard_after_forward

    def begin(self) -> None:
        """Before the pipeline runs: no gradient reduction during the step; gather every unit once
        (unless parameters are resharded after each forward)."""
        for u in self.units:
            u.set_requires_gradient_sync(False, recurse=False)
            u.set_reshard_after_backward(self.reshard_after_forward, recurse=False)
            u.set_is_last_backward(False)
        if not self.reshard_after_forward:
            for u in self.units:
                u.unshard()

    def finish(self) -> None:
        """After the last backward: reduce-scatter every unit's gradients (summed over the replicas) and
        reshard, in the fixed unit order."""
        for u in self.units:
            u.set_requires_gradient_sync(True, recurse=False)
            u.set_reshard_after_backward(True, recurse=False)
            u.set_is_last_backward(True)
        roots = []
        for u in self.units:
            state = fully_shard.state(u)
            for group in state._fsdp_param_groups:
                group.post_backward()
            if state._state_ctx.all_states and state not in roots:
                roots.append(state)
        for state in roots:  # wait for the reductions (CUDA streams) and reset per-step state
            state._root_post_backward_final_callback()
        for u in self.units:
            u.reshard()


def same_action_sequences(plans: Sequence[Plan], batches: Sequence[Any], rank: int, instances) -> None:
    """``BadInput`` unless every replica's plan runs the same sequence of chunk compute actions, with
    the same chunk parts doing work, on pipeline rank ``rank`` (what per-forward resharding needs: FSDP
    gathers at every forward and backward of a unit, collectives over the replicas).
    ``instances(module, mb)`` counts a micro-batch's instances of a module (a text-only micro-batch has
    no image for the ViT layers of a mixed chunk)."""

    def sequence(plan: Plan, batch) -> list[tuple]:
        out = []
        for a in plan.order.get(rank, ()):
            if not a.op.is_compute:
                continue
            chunk = plan.graph.chunks[a.chunk]
            unit = plan.units[chunk.group][a.unit]
            mb = batch.microbatches[unit.mb]
            ranged = unit.stop > unit.start
            out.append((a.chunk, a.op, tuple(ranged or instances(p.module, mb) > 0 for p in chunk.parts)))
        return out

    seqs = [sequence(p, b) for p, b in zip(plans, batches)]
    if any(s != seqs[0] for s in seqs[1:]):
        raise BadInput(
            f"--fsdp-reshard-after-forward needs every data-parallel replica to run the same chunk forwards "
            f"and backwards, but on pipeline rank {rank} the replicas' plans differ (their batches differ); "
            f"use a schedule with fixed micro-batches (1f1b, gpipe) on batches of one shape, or drop the flag "
            f"(parameters are then gathered once per step)"
        )
