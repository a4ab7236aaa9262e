"""Attention over packed documents scales with the tokens, not their square: one layer's memory (the
activations saved for backward, and the largest tensor any operation creates) grows about linearly
with the tokens of a packed micro-batch of fixed-length documents."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dip.runtime.models.layers import Segments, attention_core, block_mask

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor (bytes) produced by any operation."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


def _measure(step) -> tuple[int, int]:
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), LargestTensor() as mode:
        step()
    return sum(saved), mode.largest


def _builtin_decoder_layer(docs: int, doc_len: int = 64):
    from dip.data.meta import MicroBatchMeta
    from dip.runtime.models import build_chunk, make_unit_data
    from dip.spec.presets import get_model

    spec = get_model("tiny-vlm")
    mb = MicroBatchMeta((doc_len,) * docs, (0,) * docs)
    chunk = build_chunk(spec, "llm", 1, 2)
    data = make_unit_data(spec, mb, 0, "llm", 0, 0, step_seed=1)
    hidden = torch.randn(mb.text_tokens, spec.module("llm").hidden, requires_grad=True)
    return lambda: chunk({"hidden": hidden}, data)["hidden"].sum()


@pytest.mark.parametrize("make", ["builtin", "transformers"])
def test_one_layer_memory_grows_linearly_with_packed_tokens(make):
    sizes = (8, 16, 32)
    got = []
    for docs in sizes:
        step = _builtin_decoder_layer(docs) if make == "builtin" else _hf_layer(docs)
        got.append(_measure(step))
    for (s0, l0), (s1, l1) in itertools.pairwise(got):
        assert 1.8 <= s1 / s0 <= 2.2, got  # saved activations: linear in tokens
        assert l1 / l0 <= 2.2, got  # no tensor grows with the square of the tokens
    t = sizes[-1] * 64
    assert got[-1][1] < t * t * 4  # below one float32 [T, T] score matrix


def _hf_layer(docs: int, doc_len: int = 64):
    from transformers import Qwen2VLTextConfig
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLDecoderLayer, Qwen2VLRotaryEmbedding

    from dip.integrations.attention import register_packed_attention

    cfg = Qwen2VLTextConfig(
        vocab_size=32,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]},
    )
    cfg._attn_implementation = register_packed_attention()
    layer = Qwen2VLDecoderLayer(cfg, 0)
    t = docs * doc_len
    pos = torch.arange(doc_len).repeat(docs)[None, None].expand(3, 1, t)
    x = torch.randn(1, t, 64, requires_grad=True)
    rope = Qwen2VLRotaryEmbedding(cfg)(x, pos)
    return lambda: layer(x, attention_mask=None, position_embeddings=rope, dip_doc_lens=(doc_len,) * docs).sum()


def test_segmented_attention_equals_the_masked_definition():
    torch.manual_seed(0)
    lens, kv = (3, 5, 3, 1), (2, 4, 2, 3)
    q = torch.randn(2, sum(lens), 8, dtype=torch.float64)
    k, v = torch.randn(2, sum(kv), 8, dtype=torch.float64), torch.randn(2, sum(kv), 8, dtype=torch.float64)
    from dip.runtime.models.layers import cross_mask

    want = attention_core(q, k, v, cross_mask(lens, kv))
    torch.testing.assert_close(attention_core(q, k, v, Segments.cross_attention(lens, kv)), want)
    kq = torch.randn(2, sum(lens), 8, dtype=torch.float64)
    want = attention_core(q, kq, kq, block_mask(lens, True))
    torch.testing.assert_close(attention_core(q, kq, kq, Segments.self_attention(lens, True)), want)
