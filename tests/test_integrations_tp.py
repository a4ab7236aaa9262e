"""Tensor parallelism on the integrated checkpoints: the tiny Qwen2-VL at TP 2 x PP 2 (4 gloo processes,
float64) equals one-process training and saves a checkpoint transformers loads, still tied; a family
without a tensor-parallel plan (diffusers Wan) is a one-line error before any rank starts."""

from __future__ import annotations

import json
import os

import pytest
import torch

from dip.cli.main import main
from dip.data.sample_data import write_vlm_sample
from dip.integrations.init_model import init_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tp-models"))
    init_model("qwen2-vl", out=os.path.join(root, "qwen2-vl"), seed=0)
    write_vlm_sample(os.path.join(root, "vlm-data"), samples=16, seed=0)
    return os.path.join(root, "qwen2-vl"), os.path.join(root, "vlm-data", "data.jsonl")


@pytest.mark.multiproc
@pytest.mark.timeout(600)
def test_qwen2_vl_at_tp2_pp2_trains_exactly_and_saves(qwen, capsys, tmp_path):
    from transformers import AutoModelForImageTextToText

    ckpt, data = qwen
    saved = tmp_path / "trained"
    argv = ["--model", ckpt, "--data", data, "--nproc", 4, "--tp", 2, "--pp", 2, "--schedule", "dip"]
    argv += ["--steps", 2, "--microbatches", 2, "--context-length", 512, "--dtype", "float64", "--check-reference"]
    rc = main(["train", *map(str, argv), "--save-hf", str(saved), "--json"])
    got = capsys.readouterr()
    assert rc == 0, got.err
    out = json.loads(got.out)
    assert (out["tp"], out["pp"], out["nproc"]) == (2, 2, 4)
    assert out["max_grad_rel_err"] <= 1e-9, out["worst"]
    assert out["max_param_rel_err"] <= 1e-9 and out["max_loss_abs_err"] <= 1e-9
    model = AutoModelForImageTextToText.from_pretrained(str(saved), dtype=torch.float64)
    assert torch.equal(model.lm_head.weight, model.model.language_model.embed_tokens.weight)  # still tied
    base = dict(AutoModelForImageTextToText.from_pretrained(ckpt, dtype=torch.float64).named_parameters())
    # the fused vision qkv, split by heads within q, k and v, comes back in the checkpoint's layout
    name = "model.visual.blocks.0.attn.qkv.weight"
    trained = dict(model.named_parameters())[name]
    assert trained.shape == base[name].shape and (trained - base[name]).abs().max() < 0.05


def test_a_family_without_a_tensor_parallel_plan_is_refused(tmp_path, capsys):
    from dip.data.sample_data import write_t2v_sample

    init_model("wan", out=str(tmp_path / "wan"), seed=0)
    write_t2v_sample(str(tmp_path / "t2v"), samples=4, seed=0)
    argv = ["--model", tmp_path / "wan", "--data", tmp_path / "t2v" / "captions.jsonl", "--nproc", 4, "--tp", 2]
    capsys.readouterr()  # the checkpoint writer's progress
    assert main(["train", *map(str, argv), "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tensor-parallel plan" in err[0] and "--tp 1" in err[0]
