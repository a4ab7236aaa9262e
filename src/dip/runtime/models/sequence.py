"""Sequence parallelism inside a tensor-parallel group (Megatron-LM's SP, written with DTensor).

Between the tensor-parallel regions of a block (attention, MLP) every rank of a TP group holds only
its rows of the packed sequence: the norms, residuals and modulations run on ``1/tp`` of the tokens,
and the pipeline messages between chunks carry each rank's rows only. A packed sequence of ``T``
tokens is padded with ``pad = -T mod tp`` zero rows at the end, so every rank holds ``(T + pad) / tp``
rows (DTensor's even ``Shard(0)``, which torch's tensor-parallel styles assume); the padding rows are
a document of their own in attention, never reach a loss and so get exactly zero gradient.

:class:`SequenceShard` is what a part needs at run time (the unit's data carries it as ``data.shard``):

* :meth:`~SequenceShard.scatter` enters the SP region from a replicated tensor (forward: keep the
  local rows; backward: all-gather the gradient);
* :meth:`~SequenceShard.gather` leaves it (forward: all-gather; backward: keep the local rows);
* :meth:`~SequenceShard.copy_in` marks a replicated tensor used on the local rows only (forward:
  identity; backward: all-reduce of the partial gradients, Megatron's ``copy_to_tensor_parallel_region``);
* :meth:`~SequenceShard.reduce` sums a partial result (a loss over the local rows) over the group.

All four are DTensor redistributions (``from_local`` / ``redistribute`` / ``to_local``), so the
collectives and their gradients are torch's own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard
from torch.distributed.tensor.parallel import loss_parallel

__all__ = ["SequenceShard", "cross_entropy_sum"]


@dataclass(frozen=True, eq=False)
class SequenceShard:
    """The sequence split of one tensor-parallel group (``mesh``: its 1-D device mesh)."""

    mesh: DeviceMesh

    @property
    def size(self) -> int:
        return self.mesh.size()

    @property
    def rank(self) -> int:
        return self.mesh.get_local_rank()

    def padding(self, tokens: int) -> int:
        """Zero rows appended to a sequence of ``tokens`` rows so that every rank holds as many."""
        return -tokens % self.size

    def rows(self, tokens: int) -> int:
        """Rows of a ``tokens``-row sequence that each rank holds."""
        return (tokens + self.padding(tokens)) // self.size

    def bounds(self, tokens: int) -> tuple[int, int]:
        """``[lo, hi)``: this rank's rows of the padded sequence."""
        n = self.rows(tokens)
        return self.rank * n, (self.rank + 1) * n

    def real_rows(self, tokens: int) -> int:
        """How many of this rank's rows are real tokens (the padding sits at the end)."""
        lo, hi = self.bounds(tokens)
        return max(0, min(hi, tokens) - lo)

    def local(self, t: Tensor, fill: float | int = 0) -> Tensor:
        """This rank's rows of a per-token tensor every rank holds whole (indices, targets; no gradient)."""
        tokens = t.shape[0]
        pad = self.padding(tokens)
        if pad:
            t = torch.cat([t, t.new_full((pad, *t.shape[1:]), fill)])
        lo, hi = self.bounds(tokens)
        return t[lo:hi]

    def scatter(self, x: Tensor) -> Tensor:
        """``x [T, ...]`` (the same on every rank) -> this rank's rows of the padded sequence."""
        pad = self.padding(x.shape[0])
        if pad:
            x = F.pad(x, (0, 0) * (x.dim() - 1) + (0, pad))
        dt = DTensor.from_local(x, self.mesh, [Replicate()], run_check=False)
        return dt.redistribute(self.mesh, [Shard(0)]).to_local()

    def gather(self, x: Tensor, tokens: int) -> Tensor:
        """This rank's rows -> the whole ``[tokens, ...]`` sequence on every rank."""
        full = DTensor.from_local(x, self.mesh, [Shard(0)], run_check=False).full_tensor()
        return full[:tokens]

    def copy_in(self, t: Tensor) -> Tensor:
        """``t`` unchanged; its gradient (partial on every rank) is summed over the group."""
        dt = DTensor.from_local(t, self.mesh, [Replicate()], run_check=False)
        return dt.to_local(grad_placements=[Partial()])

    def reduce(self, t: Tensor) -> Tensor:
        """The sum of ``t`` over the group; the gradient reaches every rank's ``t`` unchanged."""
        return DTensor.from_local(t, self.mesh, [Partial()], run_check=False).full_tensor()


def cross_entropy_sum(logits: Tensor, labels: Tensor) -> Tensor:
    """Summed token cross-entropy; ``logits`` sharded over the vocabulary (a DTensor from a
    column-parallel LM head) use torch's vocabulary-parallel loss (``loss_parallel``; its backward
    must run under the same context, which the executor's backward handlers enter)."""
    if not isinstance(logits, DTensor):
        return F.cross_entropy(logits, labels, reduction="sum")
    with loss_parallel():
        return F.cross_entropy(logits, labels, reduction="sum").to_local()
