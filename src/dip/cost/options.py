"""Parallel-training options that change what one GPU holds: Megatron-LM's memory features.

Bytes per parameter follow Megatron-LM's distributed-optimizer documentation for bf16 parameters
with fp32 gradients: bf16 weight (2) + fp32 gradient (4) + AdamW state (12: fp32 master weight and
two fp32 moments) = 18 bytes; with the distributed optimizer (ZeRO-1 over data parallelism) the
optimizer state is sharded over the ``dp`` replicas: ``6 + 12 / dp``. See docs/memory.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from dip.errors import BadInput
from dip.spec.model import ParallelSpec

__all__ = ["GRAD_BYTES", "OPTIMIZER_BYTES", "WEIGHT_BYTES", "CostOptions", "param_state_bytes"]

WEIGHT_BYTES = 2  # bf16 parameter
GRAD_BYTES = 4  # fp32 main gradient (Megatron's default accumulation dtype)
OPTIMIZER_BYTES = 12  # AdamW: fp32 master weight + first and second moments


def param_state_bytes(distributed_optimizer: bool, dp: int) -> float:
    """Bytes one GPU holds per parameter it owns: 18, or ``6 + 12 / dp`` with the distributed optimizer."""
    if distributed_optimizer:
        return WEIGHT_BYTES + GRAD_BYTES + OPTIMIZER_BYTES / dp
    return float(WEIGHT_BYTES + GRAD_BYTES + OPTIMIZER_BYTES)


@dataclass(frozen=True)
class CostOptions:
    """Parallel layout and Megatron memory features the cost model accounts for (per GPU).

    None for ``sequence_parallel`` / ``distributed_optimizer`` resolves to Megatron's defaults for the
    layout; the resolved values are stored, so a built instance always holds booleans.
    """

    tp: int = 1
    """Tensor-parallel degree: heads, FFN columns and vocabulary are split ``tp`` ways."""
    dp: int = 1
    """Data-parallel replicas: shard the optimizer state when ``distributed_optimizer``."""
    sequence_parallel: bool | None = None
    """Megatron's ``--sequence-parallel``: norms, residuals and the inputs of the column-parallel
    projections run on (and keep) ``1/tp`` of the tokens. Default: on when ``tp > 1``; always off at
    ``tp == 1``, where it changes nothing (Megatron turns it off there too)."""
    distributed_optimizer: bool | None = None
    """Megatron's ``--use-distributed-optimizer``: fp32 master weights and Adam moments sharded over
    ``dp``. Default: on when ``dp > 1``."""

    def __post_init__(self) -> None:
        for name in ("tp", "dp"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise BadInput(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("sequence_parallel", "distributed_optimizer"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise BadInput(f"{name} must be true, false or unset, got {value!r}")
        sp = self.tp > 1 if self.sequence_parallel is None else self.sequence_parallel and self.tp > 1
        dist = self.dp > 1 if self.distributed_optimizer is None else self.distributed_optimizer
        object.__setattr__(self, "sequence_parallel", sp)
        object.__setattr__(self, "distributed_optimizer", dist)

    @classmethod
    def from_parallel(cls, parallel: ParallelSpec, tp: int | None = None) -> CostOptions:
        """Options of a model's :class:`ParallelSpec` (``tp`` overrides its tensor-parallel degree)."""
        return cls(
            tp=int(tp or parallel.tp or 1),
            dp=int(parallel.dp or 1),
            sequence_parallel=parallel.sequence_parallel,
            distributed_optimizer=parallel.distributed_optimizer,
        )

    @property
    def sequence_shards(self) -> int:
        """Ways the tokens of TP-replicated activations are split: ``tp`` with SP, else 1."""
        return self.tp if self.sequence_parallel else 1

    @property
    def param_state_bytes(self) -> float:
        """Bytes per owned parameter: weight, gradient and (possibly sharded) optimizer state."""
        return param_state_bytes(bool(self.distributed_optimizer), self.dp)

    @property
    def dp_sync_bytes_per_param(self) -> float:
        """All-reduce-equivalent bytes per parameter of one step's data-parallel synchronisation.

        Without the distributed optimizer the fp32 gradients are all-reduced (4). With it they are
        reduce-scattered (half an all-reduce of 4) and the bf16 weights all-gathered after the step
        (half an all-reduce of 2): an all-reduce of 3 bytes moves as much.
        """
        if self.distributed_optimizer:
            return (GRAD_BYTES + WEIGHT_BYTES) / 2
        return float(GRAD_BYTES)
