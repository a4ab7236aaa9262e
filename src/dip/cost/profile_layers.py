"""Minimal torch transformer blocks built from a :class:`ModuleSpec`, for profiling the cost model.

They mirror the operator lists of :mod:`dip.cost.ops` (one GPU, no TP): a GELU-MLP ViT block, a
GQA + SwiGLU decoder block and an adaLN DiT block with cross-attention. Inputs are packed token rows
``(tokens, hidden)`` made of equal-length attention blocks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dip.spec.model import ModuleSpec

__all__ = ["BLOCKS", "Attention", "DecoderBlock", "DiTBlock", "ViTBlock", "build_block", "scale_module"]


def scale_module(m: ModuleSpec, scale: float) -> ModuleSpec:
    """A narrower copy of ``m`` (same head_dim, ``scale`` x heads and FFN) for cheap profiling."""
    if scale == 1.0:
        return m
    heads = max(1, round(m.heads * scale))
    kv = max(1, min(heads, round(m.kv_heads * scale)))
    while heads % kv:
        kv -= 1
    hidden = heads * m.head_dim
    ffn = max(8, round(m.ffn_hidden * scale / 8) * 8)
    cond = max(8, round(m.cond_hidden * scale / 8) * 8) if m.cond_hidden else 0
    return m.with_(
        name=f"{m.name}@{scale:g}",
        hidden=hidden,
        ffn_hidden=ffn,
        heads=heads,
        kv_heads=kv,
        cond_hidden=cond,
        out_hidden=hidden,
    )


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1)


class Attention(nn.Module):
    """Self- or cross-attention over ``blocks`` independent equal-length sequences."""

    def __init__(self, m: ModuleSpec, bias: bool, kv_in: int | None = None, rope: bool = True):
        super().__init__()
        self.heads, self.kv_heads, self.hd = m.heads, m.kv_heads, m.head_dim
        self.cross = kv_in is not None
        q_w, kv_w = m.heads * m.head_dim, m.kv_heads * m.head_dim
        if self.cross:
            self.q = nn.Linear(m.hidden, q_w, bias=bias)
            self.kv = nn.Linear(kv_in, 2 * kv_w, bias=False)
        else:
            self.qkv = nn.Linear(m.hidden, q_w + 2 * kv_w, bias=False)
        # biases of q (self-attention) and v only: a key bias does not change softmax attention
        self.qv_bias = nn.Parameter(torch.zeros((0 if self.cross else q_w) + kv_w)) if bias else None
        self.proj = nn.Linear(q_w, m.hidden, bias=bias)
        self.rope = rope and not self.cross

    def forward(self, x: torch.Tensor, blocks: int, causal: bool = False, cond: torch.Tensor | None = None):
        t = x.shape[0]
        s = t // blocks
        q_w, kv_w = self.heads * self.hd, self.kv_heads * self.hd
        if self.cross:
            q = self.q(x)
            k, v = self.kv(cond).split(kv_w, dim=-1)
        else:
            q, k, v = self.qkv(x).split((q_w, kv_w, kv_w), dim=-1)
        if self.qv_bias is not None:
            v = v + self.qv_bias[-kv_w:]
            if not self.cross:
                q = q + self.qv_bias[:q_w]
        q = q.view(blocks, s, self.heads, self.hd).transpose(1, 2)
        k = k.reshape(blocks, -1, self.kv_heads, self.hd).transpose(1, 2)
        v = v.reshape(blocks, -1, self.kv_heads, self.hd).transpose(1, 2)
        if self.rope:
            pos = torch.arange(s, device=x.device, dtype=x.dtype)[:, None]
            freq = torch.exp(
                -math.log(10000.0) * torch.arange(self.hd // 2, device=x.device, dtype=x.dtype) / (self.hd // 2)
            )
            cos, sin = torch.cos(pos * freq), torch.sin(pos * freq)
            q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=self.kv_heads != self.heads)
        return self.proj(o.transpose(1, 2).reshape(t, q_w))


class ViTBlock(nn.Module):
    def __init__(self, m: ModuleSpec):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(m.hidden), nn.LayerNorm(m.hidden)
        self.attn = Attention(m, bias=True)
        self.fc1, self.fc2 = nn.Linear(m.hidden, m.ffn_hidden), nn.Linear(m.ffn_hidden, m.hidden)

    def forward(self, x, blocks: int, cond=None):
        x = x + self.attn(self.norm1(x), blocks)
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x)), approximate="tanh"))


class DecoderBlock(nn.Module):
    def __init__(self, m: ModuleSpec):
        super().__init__()
        self.norm1, self.norm2 = nn.RMSNorm(m.hidden), nn.RMSNorm(m.hidden)
        self.attn = Attention(m, bias=False)
        self.gate_up = nn.Linear(m.hidden, 2 * m.ffn_hidden, bias=False)
        self.down = nn.Linear(m.ffn_hidden, m.hidden, bias=False)

    def forward(self, x, blocks: int, cond=None):
        x = x + self.attn(self.norm1(x), blocks, causal=True)
        gate, up = self.gate_up(self.norm2(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


class DiTBlock(nn.Module):
    """adaLN-single block: modulated self-attention, cross-attention to text, modulated GELU MLP."""

    def __init__(self, m: ModuleSpec):
        super().__init__()
        h = m.hidden
        self.table = nn.Parameter(torch.randn(6, h) / math.sqrt(h))
        self.norm1 = nn.LayerNorm(h, elementwise_affine=False)
        self.norm_cross = nn.LayerNorm(h, elementwise_affine=False)
        self.norm2 = nn.LayerNorm(h, elementwise_affine=False)
        self.attn = Attention(m, bias=True)
        self.cross = Attention(m, bias=True, kv_in=h)
        self.fc1, self.fc2 = nn.Linear(h, m.ffn_hidden), nn.Linear(m.ffn_hidden, h)

    def forward(self, x, blocks: int, cond=None, t_emb=None):
        t, h = x.shape
        s = t // blocks
        if t_emb is None:  # per-block timestep embedding (adaLN-single output), (blocks, 6, h)
            t_emb = x.new_zeros(blocks, 6, h)
        mod = (self.table[None] + t_emb).view(blocks, 1, 6, h)
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.unbind(dim=2)
        xb = x.view(blocks, s, h)
        y = (self.norm1(xb) * (1 + scale1) + shift1).reshape(t, h)
        xb = xb + gate1 * self.attn(y, blocks).view(blocks, s, h)
        x = xb.reshape(t, h)
        if cond is not None:
            x = x + self.cross(self.norm_cross(x), blocks, cond=cond.reshape(-1, h))
        xb = x.view(blocks, s, h)
        y = (self.norm2(xb) * (1 + scale2) + shift2).reshape(t, h)
        return (xb + gate2 * self.fc2(F.gelu(self.fc1(y), approximate="tanh")).view(blocks, s, h)).reshape(t, h)


BLOCKS = {"vit": ViTBlock, "decoder": DecoderBlock, "dit": DiTBlock}


def build_block(m: ModuleSpec, device: str = "cpu", dtype: torch.dtype = torch.float32) -> nn.Module:
    """One transformer block of ``m`` (any size) as a torch module."""
    try:
        cls = BLOCKS[m.kind]
    except KeyError:
        raise ValueError(f"unknown module kind {m.kind!r}") from None
    return cls(m).to(device=device, dtype=dtype)
