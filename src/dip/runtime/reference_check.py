"""``--check-reference``: the same global batches through the whole model in one process.

Rank 0 keeps a :class:`~dip.runtime.models.ReferenceModel` with its own AdamW (same hyper-parameters).
Each step it compares the pipelined loss, every parameter's gradient (gathered by canonical name) and,
after both optimizers stepped, every parameter.

Error measures (max over parameters and steps):

* ``max_grad_rel_err``  = ``||g - g_ref||_inf / (||g_ref||_inf + 1e-6)``
* ``max_param_rel_err`` = ``||p - p_ref||_inf / (||p_ref||_inf + 1e-6)``
* ``max_loss_abs_err``  = ``|loss - loss_ref|``
* ``max_grad_allclose_ratio`` = max over elements of ``|g - g_ref| / (1e-6 + 1e-5 |g_ref|)``: at most 1
  when every gradient passes ``allclose(rtol=1e-5, atol=1e-6)`` (the float32 criterion; the relative
  measure above is dominated by rounding noise on parameters whose true gradient is zero)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from dip.data.meta import BatchMeta
from dip.runtime import optim
from dip.runtime.models import ReferenceModel, reference_step
from dip.runtime.ties import sum_tied_grads

EPS = 1e-6


def make_optimizer(params, opt: optim.OptimizerConfig = optim.DEFAULT_OPTIMIZER) -> torch.optim.Optimizer:
    """The optimizer of both the pipeline and the reference (:func:`dip.runtime.optim.make_optimizer`)."""
    return optim.make_optimizer(params, opt)


def tied_copies(provider) -> list[str]:
    """Canonical names of the second and later copies of every tied parameter (counted once in norms)."""
    return [n for group in getattr(provider, "tied_groups", tuple)() for n in list(group)[1:]]


def reference_passes(ref: ReferenceModel, passes: Sequence[tuple[BatchMeta, int]]) -> tuple[Tensor, dict[str, Tensor]]:
    """Loss and gradients of one optimizer step made of several passes (gradient accumulation): each
    pass's micro-batches with its own step seed, the loss weighted by the tokens of all of them."""
    if len(passes) == 1:
        return reference_step(ref, *passes[0])
    params = dict(ref.canonical_named_parameters())
    for prm in params.values():
        prm.grad = None
    total = sum(ref.provider.loss_tokens(mb) for b, _ in passes for mb in b.microbatches)
    sums = [ref.microbatch_loss_sum(mb, k, seed) for b, seed in passes for k, mb in enumerate(b.microbatches)]
    loss = torch.stack([s for s in sums if s is not None]).sum() / total
    loss.backward()
    sum_tied_grads(params, getattr(ref.provider, "tied_groups", tuple)())
    grads = {n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)) for n, p in params.items()}
    return loss.detach(), grads


def rel_err(x: Tensor, ref: Tensor) -> float:
    return float((x.double() - ref.double()).abs().max() / (ref.double().abs().max() + EPS)) if ref.numel() else 0.0


def allclose_ratio(
    got: Mapping[str, Tensor], ref: Mapping[str, Tensor], rtol: float = 1e-5, atol: float = 1e-6
) -> float:
    """max ``|g - r| / (atol + rtol |r|)`` over all elements (<= 1: allclose)."""
    worst = 0.0
    for name, r in ref.items():
        if r.numel():
            d = (got[name].to(r.device).double() - r.double()).abs() / (atol + rtol * r.double().abs())
            worst = max(worst, float(d.max()))
    return worst


def max_rel_err(got: Mapping[str, Tensor], ref: Mapping[str, Tensor], what: str) -> tuple[float, str]:
    """Largest relative error over ``ref``'s names and the name where it occurs (a missing name fails)."""
    missing = sorted(set(ref) - set(got))
    extra = sorted(set(got) - set(ref))
    if missing or extra:
        raise RuntimeError(
            f"{what}: the pipeline and the reference hold different parameters "
            f"(missing {missing[:5]}, unexpected {extra[:5]})"
        )
    worst, where = math.nan, ""  # NaN: nothing compared
    for name, r in ref.items():
        e = rel_err(got[name].to(r.device), r)
        if not where or e > worst:
            worst, where = e, name
    return worst, where


@dataclass
class ReferenceChecker:
    """Single-process reference on rank 0 (model built from the same seed and dtype, on the ranks'
    device: the same kernels, so float32 differences are the pipeline's, not the hardware's)."""

    model: object
    seed: int
    dtype: str
    device: object = None
    optimizer: optim.OptimizerConfig = field(default_factory=optim.OptimizerConfig)
    # NaN until a step was compared: a report never shows "no error" for a comparison that did not happen
    errors: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("grad", "loss", "param", "allclose"), math.nan)
    )
    worst: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        self.ref = ReferenceModel(self.model, self.seed, self.dtype, self.device)
        self.params = dict(self.ref.canonical_named_parameters())
        self.opt = make_optimizer(self.params.values(), self.optimizer)
        self.sched = optim.make_scheduler(self.opt, self.optimizer)
        self.skip = tied_copies(self.ref.provider)

    def step(
        self, passes: Sequence[tuple[BatchMeta, int]], loss: float, grads: Mapping[str, Tensor]
    ) -> dict[str, float]:
        """Reference step on ``passes`` (each pass's global batch and step seed); compares the loss and
        gradients, then clips and steps the reference optimizer."""
        ref_loss, ref_grads = reference_passes(self.ref, passes)
        g_err, g_at = max_rel_err(grads, ref_grads, "gradients")
        self._note("allclose", allclose_ratio(grads, ref_grads), g_at)
        l_err = abs(loss - float(ref_loss))
        for name, p in self.params.items():
            p.grad = ref_grads[name].to(p.dtype)
        optim.clip_gradients(self.params, self.optimizer.grad_clip, skip=self.skip)
        self.opt.step()
        self.sched.step()
        self._note("grad", g_err, g_at)
        self._note("loss", l_err, "loss")
        return {"grad_rel_err": g_err, "loss_abs_err": l_err, "reference_loss": float(ref_loss)}

    def compare_params(self, params: Mapping[str, Tensor]) -> float:
        got = {n: p.detach() for n, p in params.items()}
        err, at = max_rel_err(got, {n: p.detach() for n, p in self.params.items()}, "parameters")
        self._note("param", err, at)
        return err

    def _note(self, kind: str, err: float, where: str) -> None:
        if math.isnan(self.errors[kind]) or err >= self.errors[kind]:
            self.errors[kind] = err
            self.worst[kind] = where
