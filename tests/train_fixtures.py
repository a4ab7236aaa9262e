"""Shared helpers of the training tests (CPU and CUDA): configs and the comparison with plain training."""

from __future__ import annotations

from dip.runtime.trainer import TrainConfig

VLM_SCHEDULES = ("gpipe", "1f1b", "interleaved", "zb-h1", "megatron", "nnscaler", "optimus", "dip")
T2V_SCHEDULES = ("gpipe", "1f1b", "interleaved", "zb-h1", "megatron", "nnscaler", "dip")
FP64_TOL = 1e-9


def train_cfg(model: str, schedule: str, nproc: int = 2, **kw) -> TrainConfig:
    """3 float64 steps of 4 micro-batches with ``--check-reference`` (override any field with ``kw``)."""
    base = dict(steps=3, microbatches=4, dtype="float64", check_reference=True, timeout_s=60.0)
    base.update(kw)
    return TrainConfig(model=model, schedule=schedule, nproc=nproc, **base)


def check_matches_reference(out: dict, steps: int = 3, tol: float = FP64_TOL) -> None:
    """Every step ran a new batch, and loss, gradients and parameters equal plain training to ``tol``."""
    tag = f"{out['model']} {out['schedule']} pp={out['pp']} dp={out['dp']}"
    assert len(out["steps"]) == steps, tag
    assert out["max_grad_rel_err"] <= tol, (tag, out["max_grad_rel_err"], out["worst"])
    assert out["max_param_rel_err"] <= tol, (tag, out["max_param_rel_err"], out["worst"])
    assert out["max_loss_abs_err"] <= tol, (tag, out["max_loss_abs_err"])
    losses = [s["loss"] for s in out["steps"]]
    assert len({round(x, 12) for x in losses}) == steps, (tag, losses)  # every step ran a new batch
    assert all(s["step_time_s"] > 0 and s["predicted_step_time_s"] > 0 for s in out["steps"]), tag
