"""Diffusion transformer for video latents (MovieGen / PixArt style) with a flow-matching loss.

Pre: noisy latents ``x_t = (1 - t) x0 + t noise`` are patchified (``patch_t x patch_hw x patch_hw``) and
embedded; the timestep goes through a sinusoidal embedding and an MLP into one shared adaLN-single
modulation ``t_mod [clips, 6H]``; the text conditioning is projected from ``cond_hidden`` to ``H``.
Blocks: modulated LN -> self-attention (full within each clip, RoPE) -> LN -> cross-attention (clip c
attends only to its caption) -> modulated LN -> GELU MLP; each block adds its learned table to
``t_mod``. Post: modulated final LN, linear to latent patches, loss = sum((pred - (noise - x0))^2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dip.data.tensors import T_MOD_PARTS, dit_patch_dim
from dip.runtime.models.data import UnitData
from dip.runtime.models.layers import Attention, GeluMLP, timestep_embedding
from dip.spec.model import ModelSpec, ModuleSpec

FREQ_DIM = 256


def patchify_latent(x: Tensor, pt: int, ph: int) -> Tensor:
    """``[C, F*pt, R*ph, W*ph]`` -> ``[F*R*W, C*pt*ph*ph]`` (frame-major, then rows, then columns)."""
    c, t, h, w = x.shape
    x = x.reshape(c, t // pt, pt, h // ph, ph, w // ph, ph).permute(1, 3, 5, 0, 2, 4, 6)
    return x.reshape((t // pt) * (h // ph) * (w // ph), c * pt * ph * ph)


class DitPre(nn.Module):
    """Noising + patch embedding, timestep MLP + shared modulation, caption projection."""

    def __init__(self, model: ModelSpec, spec: ModuleSpec):
        super().__init__()
        self.spec = spec
        h = spec.hidden
        self.patch = nn.Linear(dit_patch_dim(spec), h)
        self.time = GeluMLP(FREQ_DIM, h, h)
        self.time_mod = nn.Linear(h, T_MOD_PARTS * h)
        self.cond = GeluMLP(spec.cond_hidden or h, h)

    def noisy_tokens(self, data: UnitData) -> Tensor:
        s = self.spec
        clips = [
            patchify_latent((1 - t) * x0 + t * n, s.patch_t, s.patch_hw)
            for x0, n, t in zip(data.latents, data.noise, data.timesteps)
        ]
        return torch.cat(clips) if clips else self.patch.weight.new_zeros(0, dit_patch_dim(s))

    def forward(self, inputs: dict[str, Tensor], data: UnitData) -> tuple[Tensor, dict[str, Tensor]]:
        hidden = self.patch(self.noisy_tokens(data))
        temb = self.time(timestep_embedding(data.timesteps, FREQ_DIM))
        t_mod = self.time_mod(F.silu(temb))
        text = inputs.get("text_cond")
        expected = sum(data.cond_lens)
        if text is None or text.shape[0] != expected:
            got = None if text is None else tuple(text.shape)
            raise ValueError(f"{self.spec.name}: expected text_cond with {expected} rows, got {got}")
        return hidden, {"cond": self.cond(text), "t_mod": t_mod}


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


def _gate(x: Tensor, gate: Tensor) -> Tensor:
    return gate * x


def clip_table(table: Tensor, data: UnitData) -> Tensor:
    """A per-clip table used on this rank's rows (under sequence parallelism its gradient, partial on
    every rank, is summed over the tensor-parallel group)."""
    return table if data.shard is None else data.shard.copy_in(table)


def by_clip(fn, x: Tensor, data: UnitData, *tables: Tensor) -> Tensor:
    """``fn(rows, *table_rows)`` for every run of this rank's rows that belongs to one clip, each table
    (``[clips, H]``) broadcast as its clip's row: nothing per token is materialised (adaLN-single's
    modulation per sample)."""
    pieces = data.clip_pieces()
    if len(pieces) <= 1:
        c = pieces[0][1] if pieces else 0
        return fn(x, *(t[c : c + 1] for t in tables))
    rows = x.split([n for n, _ in pieces])
    return torch.cat([fn(r, *(t[c : c + 1] for t in tables)) for r, (_, c) in zip(rows, pieces)])


class DitBlock(nn.Module):
    """adaLN-single modulated self-attention, cross-attention and MLP."""

    def __init__(self, model: ModelSpec, spec: ModuleSpec):
        super().__init__()
        h = spec.hidden
        self.norm1 = nn.LayerNorm(h, eps=1e-6, elementwise_affine=False)
        self.attn = Attention(h, spec.heads, spec.kv_heads, bias=True)
        self.cross_norm = nn.LayerNorm(h, eps=1e-6)
        self.cross = Attention(h, spec.heads, spec.kv_heads, bias=True)
        self.norm2 = nn.LayerNorm(h, eps=1e-6, elementwise_affine=False)
        self.mlp = GeluMLP(h, spec.ffn_hidden)
        self.mod_table = nn.Parameter(torch.zeros(T_MOD_PARTS, h))

    def forward(self, x: Tensor, side: dict[str, Tensor], data: UnitData, recompute_attention: bool = False) -> Tensor:
        mod = clip_table(side["t_mod"] + self.mod_table.reshape(1, -1), data)
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = mod.chunk(T_MOD_PARTS, dim=-1)
        rope = data.rope(self.attn.head_dim, x.dtype)
        h = by_clip(_modulate, self.norm1(x), data, shift_a, scale_a)
        attn = self.attn(h, data.self_mask(causal=False), rope=rope, recompute_core=recompute_attention)
        x = x + by_clip(_gate, attn, data, gate_a)
        x = x + self.cross(self.cross_norm(x), data.cross_mask(), kv=side["cond"], recompute_core=recompute_attention)
        mlp = self.mlp(by_clip(_modulate, self.norm2(x), data, shift_m, scale_m))
        return x + by_clip(_gate, mlp, data, gate_m)


class DitPost(nn.Module):
    """Modulated final LN, projection to latent patches and the summed flow-matching error."""

    def __init__(self, model: ModelSpec, spec: ModuleSpec):
        super().__init__()
        self.spec = spec
        h = spec.hidden
        self.norm = nn.LayerNorm(h, eps=1e-6, elementwise_affine=False)
        self.final_table = nn.Parameter(torch.zeros(2, h))
        self.out = nn.Linear(h, dit_patch_dim(spec))

    def forward(self, x: Tensor, side: dict[str, Tensor], data: UnitData) -> dict[str, Tensor]:
        h = self.spec.hidden
        mod = clip_table(side["t_mod"][:, : 2 * h] + self.final_table.reshape(1, -1), data)
        shift, scale = mod.chunk(2, dim=-1)
        pred = self.out(by_clip(_modulate, self.norm(x), data, shift, scale))
        s = self.spec
        targets = [patchify_latent(n - x0, s.patch_t, s.patch_hw) for x0, n in zip(data.latents, data.noise)]
        target = torch.cat(targets) if targets else pred.new_zeros((data.tokens, pred.shape[-1]))
        if data.shard is not None:  # this rank's rows, the padding left out
            real = data.shard.real_rows(data.tokens)
            pred, target = pred[:real], data.shard.local(target)[:real]
        acc = torch.promote_types(pred.dtype, torch.float32)  # sum low-precision errors in float32
        loss = (pred.to(acc) - target.to(acc)).pow(2).sum()
        return {"loss_sum": loss if data.shard is None else data.shard.reduce(loss)}
