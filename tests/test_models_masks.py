"""Block-diagonal attention: one sample / image / clip never sees another."""

from __future__ import annotations

import pytest
import torch

from dip.data.meta import MicroBatchMeta
from dip.runtime.models import build_chunk, make_unit_data
from dip.runtime.models.layers import block_mask, cross_mask
from model_fixtures import tiny_model

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_mask_builders():
    m = block_mask((2, 3), causal=True)
    assert m.tolist()[1] == [True, True, False, False, False]
    assert m.tolist()[4] == [False, False, True, True, True]
    assert block_mask((2, 1), causal=False).tolist() == [[True, True, False], [True, True, False], [False, False, True]]
    assert cross_mask((1, 2), (2, 1)).tolist() == [[True, True, False], [False, False, True], [False, False, True]]


def test_decoder_sample_isolation_and_causality():
    model = tiny_model("tiny-t2v")
    mb = MicroBatchMeta(text_lens=(6, 5))
    chunk = build_chunk(model, "llm", 0, 8, seed=0, dtype=F64)
    data = make_unit_data(model, mb, 0, "llm", 0, 1, step_seed=1, dtype=F64)
    base = chunk({}, data)["text_hidden"]
    data.token_ids = data.token_ids.clone()
    data.token_ids[6:] = (data.token_ids[6:] + 1) % 1024  # sample 1
    data.token_ids[5] = (data.token_ids[5] + 1) % 1024  # last token of sample 0
    out = chunk({}, data)["text_hidden"]
    assert torch.equal(out[:5], base[:5])  # sample 0 before its changed token
    assert not torch.allclose(out[5:], base[5:])


def test_vlm_decoder_images_stay_in_their_sample():
    model = tiny_model("tiny-vlm")
    mb = MicroBatchMeta(text_lens=(4, 3), image_counts=(1, 1))
    chunk = build_chunk(model, "llm", 0, 3, seed=0, dtype=F64)
    data = make_unit_data(model, mb, 0, "llm", 0, 1, step_seed=1, dtype=F64)
    images = torch.randn(8, 192, dtype=F64)
    base = chunk({"image_embeds": images}, data)["hidden"]
    changed = images.clone()
    changed[4:] += 1.0  # image of sample 1
    out = chunk({"image_embeds": changed}, data)["hidden"]
    assert torch.equal(out[:8], base[:8]) and not torch.allclose(out[8:], base[8:])


def test_vit_image_isolation():
    model = tiny_model("tiny-vlm")
    mb = MicroBatchMeta(text_lens=(3,), image_counts=(2,))
    chunk = build_chunk(model, "vit", 0, 8, seed=0, dtype=F64)
    data = make_unit_data(model, mb, 0, "vit", 0, 2, step_seed=1, dtype=F64)
    base = chunk({}, data)["image_embeds"]
    data.pixels = data.pixels.clone()
    data.pixels[1] += 0.5
    out = chunk({}, data)["image_embeds"]
    assert torch.equal(out[:4], base[:4]) and not torch.allclose(out[4:], base[4:])


def test_dit_clip_isolation_and_cross_attention_to_own_caption():
    model = tiny_model("tiny-t2v")
    mb = MicroBatchMeta(text_lens=(3, 4), clip_tokens=(16, 32), clip_seconds=(0.5, 1.0), clip_sample=(0, 1))
    chunk = build_chunk(model, "dit", 0, 3, seed=0, dtype=F64)
    data = make_unit_data(model, mb, 0, "dit", 0, 2, step_seed=1, dtype=F64)
    text = torch.randn(7, 128, dtype=F64)
    base = chunk({"text_cond": text}, data)["hidden"]
    caption1 = text.clone()
    caption1[3:] += 1.0  # caption of clip 1
    out = chunk({"text_cond": caption1}, data)["hidden"]
    assert torch.equal(out[:16], base[:16]) and not torch.allclose(out[16:], base[16:])
    data.latents = [data.latents[0], data.latents[1] + 1.0]  # clip 1's latents
    out = chunk({"text_cond": text}, data)["hidden"]
    assert torch.equal(out[:16], base[:16]) and not torch.allclose(out[16:], base[16:])


def test_aligned_attention_inputs_give_the_same_attention_with_aligned_strides():
    import torch.nn.functional as F

    from dip.runtime.models.layers import aligned_attention_inputs, cross_mask

    mask = cross_mask([3, 5], [4, 6])  # 10 key columns: unaligned
    q, k, v = (torch.randn(2, n, 4, dtype=torch.float64, requires_grad=True) for n in (8, 10, 10))
    k2, v2, bias = aligned_attention_inputs(k, v, mask, torch.float64)
    assert bias.shape == (8, 16) and k2.shape == (2, 16, 4) and bias.stride(0) % 16 == 0
    assert torch.equal(bias[:, :10] == 0, mask) and torch.isinf(bias[:, 10:]).all()
    got = F.scaled_dot_product_attention(q, k2, v2, attn_mask=bias)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(got, want)
    g = torch.randn_like(got)
    torch.testing.assert_close(torch.autograd.grad(got, (q, k, v), g), torch.autograd.grad(want, (q, k, v), g))
