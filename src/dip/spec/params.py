"""Exact parameter counts computed from the architecture hyper-parameters of a :class:`ModuleSpec`.

A module is ``pre`` (lives in its first pipeline chunk) + ``layers`` identical blocks + ``post``
(lives in its last chunk):

* ``vit`` (Qwen2-VL-style): pre = patch-embedding Conv with bias (no learned position embedding,
  RoPE-2D); block = 2 LayerNorms, Q, V and output projections with biases (keys none), GELU MLP with biases;
  post = merger: LayerNorm(hidden), Linear(hidden * merge^2 -> out_hidden), GELU,
  Linear(out_hidden -> out_hidden).
* ``decoder`` (Llama / Qwen2-style): pre = token embeddings; block = 2 RMSNorms, GQA projections and a
  SwiGLU MLP, no biases; post = final RMSNorm plus an untied LM head when ``lm_head``.
* ``dit`` (MovieGen / PixArt-style): pre = latent patch embedding, text-conditioning projection,
  timestep MLP (256-d sinusoid -> hidden -> hidden) and the shared adaLN-single Linear(hidden -> 6h);
  block = 3 LayerNorms without affine, a 6 x hidden modulation table, self-attention and
  cross-attention with biases (keys none), GELU MLP with biases; post = final norm modulation (2 x hidden) and
  Linear(hidden -> latent patch).
"""

from __future__ import annotations

from dip.spec.model import ModelSpec, ModuleSpec

__all__ = ["TIMESTEP_FREQ_DIM", "layer_params", "model_params", "module_params", "post_params", "pre_params"]

TIMESTEP_FREQ_DIM = 256


def _linear(fan_in: int, fan_out: int, bias: bool = True) -> int:
    return fan_in * fan_out + (fan_out if bias else 0)


def _kv_width(m: ModuleSpec) -> int:
    return m.kv_heads * m.head_dim


def _vit_out_hidden(m: ModuleSpec) -> int:
    return m.out_hidden or m.hidden


def _dit_patch_dim(m: ModuleSpec) -> int:
    return m.latent_channels * m.patch_t * m.patch_hw * m.patch_hw


def _attention(m: ModuleSpec, bias: bool) -> int:
    """Self-attention q, k, v and output projections (query width ``heads * head_dim``)."""
    q_width = m.heads * m.head_dim
    kv = _kv_width(m)
    return (
        _linear(m.hidden, q_width, bias)
        + _linear(m.hidden, kv, False)
        + _linear(m.hidden, kv, bias)
        + _linear(q_width, m.hidden, bias)
    )  # keys carry no bias (softmax ignores it)


def layer_params(m: ModuleSpec) -> int:
    """Parameters of one transformer block of ``m``."""
    h, f = m.hidden, m.ffn_hidden
    if m.kind == "vit":
        return 2 * 2 * h + _attention(m, bias=True) + _linear(h, f) + _linear(f, h)
    if m.kind == "decoder":
        return 2 * h + _attention(m, bias=False) + 3 * h * f
    if m.kind == "dit":
        modulation = 6 * h
        cross = _attention(m, bias=True)  # k, v read the hidden-width text conditioning
        return modulation + _attention(m, bias=True) + cross + _linear(h, f) + _linear(f, h)
    raise ValueError(f"unknown module kind {m.kind!r}")


def pre_params(m: ModuleSpec) -> int:
    """Parameters in front of the first block (embeddings, patch embedding, conditioning inputs)."""
    h = m.hidden
    if m.kind == "vit":
        return _linear(m.in_channels * m.patch_size * m.patch_size, h)
    if m.kind == "decoder":
        return m.vocab_size * h
    if m.kind == "dit":
        patch = _linear(_dit_patch_dim(m), h)
        cond = _linear(m.cond_hidden, h) if m.cond_hidden else 0
        timestep = _linear(TIMESTEP_FREQ_DIM, h) + _linear(h, h)
        adaln_single = _linear(h, 6 * h)
        return patch + cond + timestep + adaln_single
    raise ValueError(f"unknown module kind {m.kind!r}")


def post_params(m: ModuleSpec) -> int:
    """Parameters after the last block (merger / projector, final norm, LM head, DiT final layer)."""
    h = m.hidden
    if m.kind == "vit":
        out = _vit_out_hidden(m)
        merged = h * m.spatial_merge * m.spatial_merge
        return 2 * h + _linear(merged, out) + _linear(out, out)
    if m.kind == "decoder":
        return h + (m.vocab_size * h if m.lm_head else 0)
    if m.kind == "dit":
        return 2 * h + _linear(h, _dit_patch_dim(m))
    raise ValueError(f"unknown module kind {m.kind!r}")


def module_params(m: ModuleSpec) -> int:
    """All parameters of one module."""
    return pre_params(m) + m.layers * layer_params(m) + post_params(m)


def model_params(model: ModelSpec) -> int:
    """All parameters of a model (sum over its modules)."""
    return sum(module_params(m) for m in model.modules)
