import json

import numpy as np
import pytest
import torch

from cost_fixtures import DIT, QWEN, VIT
from dip.cost.ops import layer_ops
from dip.cost.profile import Measurement, calibrate, fit, predict, work_item
from dip.cost.profile_layers import build_block, scale_module
from dip.spec.hardware import GemmCurve, HardwareSpec, calibration_path, default_alphas, get_hardware


@pytest.mark.parametrize("module", [VIT, QWEN, DIT])
def test_blocks_run_forward_and_backward(module):
    small = scale_module(module, 1 / 16)
    assert small.head_dim == module.head_dim and small.heads % small.kv_heads == 0
    work = work_item(small, 96, 32)
    block = build_block(small)
    x = torch.randn(work.tokens, small.hidden, requires_grad=True)
    cond = torch.randn(len(work.seq_lens), work.cond_lens[0], small.hidden) if work.cond_lens else None
    y = block(x, len(work.seq_lens), cond=cond)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    n_params = sum(p.numel() for p in block.parameters())
    from dip.spec.params import layer_params

    assert n_params == layer_params(small.with_(cond_hidden=small.hidden) if small.kind == "dit" else small)


def test_decoder_block_is_causal():
    small = scale_module(QWEN, 1 / 20)
    block = build_block(small)
    x = torch.randn(16, small.hidden)
    y1 = block(x, 1)
    x2 = x.clone()
    x2[10:] += 1.0
    y2 = block(x2, 1)
    assert torch.allclose(y1[:10], y2[:10], atol=1e-5) and not torch.allclose(y1[10:], y2[10:])


def test_fit_recovers_synthetic_times():
    base = HardwareSpec("synthetic", 1e11, 1e10, 1e9, 1e9, 1e-5, 1e9, 1e-5, 1e9)
    truth = base.with_(
        alphas=default_alphas(gemm=2.0, attention=3.0, elementwise=1.5),
        gemm_curve=GemmCurve(100.0, 40.0, 30.0),
        attn_s0=64.0,
        kernel_overhead_s=2e-5,
    )
    meas = []
    for m in (VIT, QWEN, DIT):
        small = scale_module(m, 1 / 8)
        for tokens in (64, 128, 256, 512, 1024, 2048):
            w = work_item(small, tokens, 512)
            f, b = predict(truth, layer_ops(small, w, 1, 4))
            meas.append(Measurement(small, w, f, b))
    hw, info = fit(meas, base, 4)
    assert info["rms_log_error"] < 0.02
    for m in meas:
        f, b = predict(hw, layer_ops(m.module, m.work, 1, 4))
        assert np.isclose(f, m.fwd_s, rtol=0.05) and np.isclose(b, m.bwd_s, rtol=0.05)


def test_calibrate_writes_a_loadable_spec(tmp_path):
    hw, record = calibrate(
        modules=(VIT, QWEN),
        sizes=(32, 64),
        hidden_scale=1 / 16,
        block=32,
        name="tiny-cpu",
        min_time=0.005,
        rounds=1,
        threads=1,
    )
    assert hw.name == "tiny-cpu" and hw.peak_flops > 0 and len(record["measurements"]) == 4
    path = tmp_path / "cal.json"
    hw.save(str(path), extra=record)
    back = get_hardware(str(path))
    assert back == hw
    raw = json.loads(path.read_text())
    assert raw["fit"]["device"] == "cpu" and raw["measurements"][0]["fwd_s"] > 0


def test_shipped_h100_calibration_still_predicts_its_measurements():
    """``h100.json`` holds bf16 layer timings of ViT-5B, Llama3-8B and DiT-5B (TP 1) measured on an H100 by
    ``dip profile --device cuda``; the current cost model with the fitted parameters must reproduce them."""
    from dataclasses import replace

    from dip.spec.presets import MODULE_PRESETS

    hw = get_hardware("h100")
    raw = json.loads(open(calibration_path("h100")).read())
    assert raw["fit"]["device"] == "cuda" and raw["fit"]["dtype"] == "bfloat16"
    assert 300e12 < hw.peak_flops < 1000e12 and hw.mem_bytes > 70 * 2**30
    assert {m["module"] for m in raw["measurements"]} == {"ViT-5B", "Llama3-8B", "DiT-5B"}
    errors = []
    for m in raw["measurements"]:
        spec = MODULE_PRESETS[m["module"]]
        if spec.kind == "dit":
            spec = replace(spec, cond_hidden=4096)
        f, b = predict(hw, layer_ops(spec, work_item(spec, m["tokens"], m["block"]), 1, 2))
        errors += [abs(np.log(f / m["fwd_s"])), abs(np.log(b / m["bwd_s"]))]
    assert max(errors) < 0.25 and float(np.sqrt(np.mean(np.square(errors)))) < 0.1
