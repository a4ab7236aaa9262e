"""The tiny models on a CUDA device: the same numbers as on the CPU, and pipelined training on CUDA
(also tensor-parallel and FSDP-sharded) equal to plain training. Skipped where no GPU is present
(CI); run on a GPU machine with ``pytest -m cuda tests/test_cuda.py``.

With one GPU, 2 ranks share it: NCCL refuses two ranks on one device, so the runtime picks gloo and
stages messages through host memory (:func:`dip.runtime.trainer.choose_backend`); with one GPU per
rank it uses NCCL.
"""

from __future__ import annotations

import pytest
import torch

from dip.runtime.launch import launch_many
from dip.runtime.models import ReferenceModel, reference_step
from model_fixtures import random_batch, tiny_model
from torch_asserts import assert_grads_equal
from train_fixtures import T2V_SCHEDULES, VLM_SCHEDULES, check_matches_reference, train_cfg

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

MODELS = ("tiny-vlm", "tiny-t2v")


@pytest.mark.parametrize("name", MODELS)
def test_cuda_model_equals_cpu_model_in_float64(name):
    model = tiny_model(name)
    batch = random_batch(model, seed=11, microbatches=3)
    cpu_loss, cpu_grads = reference_step(ReferenceModel(model, seed=5, dtype=torch.float64), batch, step_seed=3)
    gpu = ReferenceModel(model, seed=5, dtype=torch.float64, device="cuda")
    assert all(p.is_cuda for _, p in gpu.canonical_named_parameters())
    gpu_loss, gpu_grads = reference_step(gpu, batch, step_seed=3)
    torch.testing.assert_close(gpu_loss.cpu(), cpu_loss, rtol=1e-10, atol=0)
    assert_grads_equal({n: g.cpu() for n, g in gpu_grads.items()}, cpu_grads)


def _cfg(model: str, schedule: str, nproc: int = 2, **kw):
    return train_cfg(model, schedule, nproc, **{"timeout_s": 120.0, **kw})


def _check(out: dict, steps: int = 3) -> None:
    assert out["device"] == "cuda", (out["model"], out["schedule"])
    check_matches_reference(out, steps)


@pytest.mark.multiproc
@pytest.mark.timeout(900)
def test_every_schedule_on_cuda_matches_single_process_training():
    cfgs = [_cfg("tiny-vlm", s) for s in VLM_SCHEDULES] + [_cfg("tiny-t2v", s) for s in T2V_SCHEDULES]
    outs = launch_many(cfgs)
    for out in outs:
        _check(out)
    expected = "nccl" if torch.cuda.device_count() >= 2 else "gloo"
    assert {o["backend"] for o in outs} == {expected}


@pytest.mark.multiproc
@pytest.mark.timeout(600)
def test_cuda_pipeline_by_data_parallel():
    _check(launch_many([_cfg("tiny-vlm", "dip", 4, pp=2, dp=2)])[0])


@pytest.mark.multiproc
@pytest.mark.timeout(600)
def test_cuda_float32_gradients_are_allclose_to_the_reference():
    for out in launch_many(
        [_cfg("tiny-vlm", "dip", dtype="float32", steps=2), _cfg("tiny-t2v", "dip", dtype="float32", steps=2)]
    ):
        assert out["device"] == "cuda"
        # allclose(rtol=1e-5, atol=1e-6) against the fp32 reference on the same GPU (dip.runtime.reference_check);
        # GPU-versus-CPU agreement is the float64 model test above
        assert out["max_grad_allclose_ratio"] <= 1.0, (out["model"], out["max_grad_allclose_ratio"], out["worst"])
        assert out["max_loss_abs_err"] <= 1e-5, (out["model"], out["max_loss_abs_err"])


@pytest.mark.multiproc
@pytest.mark.timeout(900)
def test_cuda_tensor_parallel_and_fsdp_match_single_process_training():
    """TP 2 x PP 2 (both models) and PP 2 x DP 2 with FSDP on the GPUs there are (4 ranks: NCCL with a GPU
    each, else gloo with every message and TP collective staged through host memory)."""
    outs = launch_many(
        [
            _cfg("tiny-vlm", "dip", 4, tp=2, pp=2, steps=2),
            _cfg("tiny-t2v", "1f1b", 4, tp=2, pp=2, steps=2),
            _cfg("tiny-vlm", "dip", 4, pp=2, dp=2, fsdp=True, steps=2),
        ]
    )
    for out in outs:
        _check(out, steps=2)
        for step in out["steps"]:
            mem = step["activation_memory"]
            assert mem["max_rel_err"] <= 0.15, (out["model"], mem)
            assert all(c["allocated_bytes"] > 0 for c in mem["chunks"] if c["measured_bytes"]), mem
    assert [o["tp"] for o in outs] == [2, 2, 1] and outs[2]["optimizer_sharding"] == "fsdp"


@pytest.mark.multiproc
@pytest.mark.timeout(600)
def test_cuda_tensor_parallel_float32_is_allclose_to_the_reference():
    out = launch_many([_cfg("tiny-vlm", "dip", 4, tp=2, pp=2, dtype="float32", steps=2)])[0]
    assert out["device"] == "cuda" and out["tp"] == 2
    assert out["max_grad_allclose_ratio"] <= 1.0, (out["max_grad_allclose_ratio"], out["worst"])
