"""Parameter counts from the architecture formulas."""

from __future__ import annotations

import pytest

from dip.spec import ModuleSpec, get_model, get_module_preset, layer_params, module_params, post_params, pre_params


def test_llama3_8b_matches_published_count():
    assert module_params(get_module_preset("Llama3-8B")) == 8_030_261_248


def test_qwen2_72b_without_biases_is_close_to_published():
    # Published 72.71B includes the q/k/v biases (< 0.01B) that the formula leaves out.
    assert module_params(get_module_preset("Qwen2-72B")) / 1e9 == pytest.approx(72.7, rel=0.002)


def test_qwen2_32b_and_llama2_7b():
    assert module_params(get_module_preset("Qwen2-32B")) / 1e9 == pytest.approx(32.76, rel=0.002)
    assert module_params(get_module_preset("Llama2-7B")) == 6_738_415_616


def test_decoder_parts_by_hand():
    m = ModuleSpec("d", "decoder", layers=2, hidden=8, ffn_hidden=16, heads=4, kv_heads=2, vocab_size=10)
    hd = 2
    block = 2 * 8 + 8 * 4 * hd + 2 * 8 * 2 * hd + 4 * hd * 8 + 3 * 8 * 16
    assert layer_params(m) == block
    assert pre_params(m) == 10 * 8
    assert post_params(m) == 8 + 10 * 8
    assert post_params(m.with_(lm_head=False)) == 8
    assert module_params(m) == 80 + 2 * block + 88


def test_vit_parts_by_hand():
    m = ModuleSpec(
        "v",
        "vit",
        layers=1,
        hidden=8,
        ffn_hidden=32,
        heads=2,
        kv_heads=2,
        image_size=28,
        patch_size=14,
        spatial_merge=2,
        out_hidden=12,
    )
    assert pre_params(m) == 3 * 14 * 14 * 8 + 8
    qkv = 8 * 24 + 16  # q and v biases, no key bias
    assert layer_params(m) == 4 * 8 + qkv + (8 * 8 + 8) + (8 * 32 + 32) + (32 * 8 + 8)
    assert post_params(m) == 2 * 8 + (32 * 12 + 12) + (12 * 12 + 12)


def test_dit_parts_by_hand():
    m = ModuleSpec(
        "t",
        "dit",
        layers=1,
        hidden=8,
        ffn_hidden=16,
        heads=2,
        kv_heads=2,
        cond_hidden=6,
        latent_channels=4,
        patch_t=1,
        patch_hw=2,
    )
    attn = (8 * 8 + 8) * 4 - 8  # no key bias
    assert layer_params(m) == 6 * 8 + 2 * attn + (8 * 16 + 16) + (16 * 8 + 8)
    assert pre_params(m) == (16 * 8 + 8) + (6 * 8 + 8) + (256 * 8 + 8) + (8 * 8 + 8) + (8 * 48 + 48)
    assert post_params(m) == 2 * 8 + (8 * 16 + 16)


def test_vit_5b_is_about_4_3b_and_merger_is_small():
    vit = get_model("VLM-S").module("vit")
    assert module_params(vit) / 1e9 == pytest.approx(4.41, abs=0.02)
    assert post_params(vit) < 0.2e9


def test_module_params_sum_to_model_params():
    from dip.spec import model_params

    for name in ("VLM-M", "T2V-L", "tiny-t2v"):
        model = get_model(name)
        assert model_params(model) == sum(module_params(m) for m in model.modules)
