"""The optimizer side of training: AdamW, the learning-rate schedule (linear warm-up, then cosine decay to
a floor) and global gradient-norm clipping, shared by the pipeline ranks and the single-process reference.

* :func:`make_optimizer`: ``torch.optim.AdamW`` (betas 0.9 / 0.999, eps 1e-8) with the run's LR and
  weight decay;
* :func:`make_scheduler`: ``torch.optim.lr_scheduler.LambdaLR`` over :class:`WarmupCosine`: step ``t``
  (0-based) runs at ``lr * (t + 1) / warmup`` during the warm-up, then decays from ``lr`` to ``min_lr``
  along half a cosine until the last step (``min_lr = lr``: constant after the warm-up);
* :func:`clip_gradients`: the L2 norm over every parameter of the model (each tied parameter once), the
  squares summed over the pipeline ranks by an all-reduce (``reduce``), then every gradient scaled by
  ``min(1, max_norm / norm)`` (``torch.nn.utils.clip_grads_with_norm_``), as Megatron clips.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor

__all__ = ["DEFAULT_OPTIMIZER", "OptimizerConfig", "WarmupCosine", "clip_gradients", "make_optimizer", "make_scheduler"]

BETAS = (0.9, 0.999)
EPS = 1e-8


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW and its schedule (``dip train --lr --min-lr --warmup-steps --weight-decay --grad-clip``)."""

    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 0
    min_lr: float | None = None  # None: lr (no decay)
    total_steps: int = 1
    grad_clip: float | None = None  # None or 0: no clipping


DEFAULT_OPTIMIZER = OptimizerConfig()


class WarmupCosine:
    """``LambdaLR`` factor of step ``t``: linear warm-up over ``warmup_steps``, then half a cosine from 1
    to ``min_ratio`` at step ``total_steps - 1``."""

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float):
        self.warmup_steps, self.total_steps, self.min_ratio = warmup_steps, total_steps, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = self.total_steps - 1 - self.warmup_steps
        progress = min(max((step - self.warmup_steps) / span, 0.0), 1.0) if span > 0 else 1.0
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_optimizer(params: Iterable[Tensor], opt: OptimizerConfig = OptimizerConfig()) -> torch.optim.AdamW:
    """AdamW over ``params`` (the per-parameter loop, so results do not depend on how parameters group)."""
    return torch.optim.AdamW(
        list(params), lr=opt.lr, betas=BETAS, eps=EPS, weight_decay=opt.weight_decay, foreach=False
    )


def make_scheduler(optimizer: torch.optim.Optimizer, opt: OptimizerConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """The warm-up + cosine schedule of ``opt`` on ``optimizer`` (step it after every optimizer step)."""
    min_lr = opt.lr if opt.min_lr is None else opt.min_lr
    ratio = min_lr / opt.lr if opt.lr > 0 else 1.0
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(opt.warmup_steps, opt.total_steps, ratio))


def clip_gradients(
    params: Mapping[str, Tensor],
    max_norm: float | None,
    *,
    skip: Iterable[str] = (),
    counts: Callable[[Tensor], bool] | None = None,
    reduce: Callable[[Tensor], None] | None = None,
) -> float:
    """The global L2 norm of the gradients of ``params`` (names in ``skip`` not counted: the other copies
    of tied parameters; ``counts(grad)`` false: a copy another rank counts, such as a data-parallel
    replica's; ``reduce`` sums the squared norm in place over the ranks that hold the rest of the model),
    and, with ``max_norm``, every gradient scaled by ``min(1, max_norm / (norm + 1e-6))`` as
    ``torch.nn.utils.clip_grads_with_norm_`` does. DTensor gradients (tensor-parallel, FSDP) count the
    rank's local part. Returns the norm before clipping."""
    skip = set(skip)
    grads = [
        _local(p.grad)
        for n, p in sorted(params.items())
        if n not in skip and p.grad is not None and (counts is None or counts(p.grad))
    ]
    local = torch.nn.utils.get_total_norm(grads, 2.0) if grads else torch.zeros(())
    square = (local.double() ** 2).reshape(1).cpu()
    if reduce is not None:
        reduce(square)
    norm = float(square[0]) ** 0.5
    if max_norm:
        coef = min(max_norm / (norm + 1e-6), 1.0)
        with torch.no_grad():
            for p in params.values():
                if p.grad is not None:
                    p.grad.mul_(coef)  # (a DTensor scales its own local part)
    return norm


def _local(t: Tensor) -> Tensor:
    """The rank's part of a DTensor (the tensor itself otherwise)."""
    return t.to_local() if isinstance(t, DTensor) else t
