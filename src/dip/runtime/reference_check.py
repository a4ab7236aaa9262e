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
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from dip.data.meta import BatchMeta
from dip.runtime.models import ReferenceModel, reference_step

EPS = 1e-6
ADAMW = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01}


def make_optimizer(params) -> torch.optim.Optimizer:
    """The optimizer of both the pipeline and the reference (AdamW, :data:`ADAMW`)."""
    return torch.optim.AdamW(list(params), **ADAMW, foreach=False)


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
    # NaN until a step was compared: a report never shows "no error" for a comparison that did not happen
    errors: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(("grad", "loss", "param", "allclose"), math.nan)
    )
    worst: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        self.ref = ReferenceModel(self.model, self.seed, self.dtype, self.device)
        self.params = dict(self.ref.canonical_named_parameters())
        self.opt = make_optimizer(self.params.values())

    def step(self, batch: BatchMeta, step_seed: int, loss: float, grads: Mapping[str, Tensor]) -> dict[str, float]:
        """Reference step on ``batch``; compares the loss and gradients, then steps the reference optimizer."""
        ref_loss, ref_grads = reference_step(self.ref, batch, step_seed)
        g_err, g_at = max_rel_err(grads, ref_grads, "gradients")
        self._note("allclose", allclose_ratio(grads, ref_grads), g_at)
        l_err = abs(loss - float(ref_loss))
        for name, p in self.params.items():
            p.grad = ref_grads[name].to(p.dtype)
        self.opt.step()
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
