"""Shared building blocks: norms, rotary embeddings, document segments, attention and MLPs.

Attention over packed documents (samples, images, clips) never materialises a ``[T, T]`` mask: a
:class:`Segments` lists the documents' query and key lengths, and :func:`attention_core` runs SDPA per
document (documents of equal lengths batched into one call), so memory grows with the documents'
squared lengths, not with the packed length squared. :func:`block_mask` / :func:`cross_mask` remain
as the reference definition of who attends to whom (tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


class _RMSNormFunction(torch.autograd.Function):
    """``x * rsqrt(mean(x^2) + eps) * weight`` keeping only ``x`` and the per-row ``rstd`` for the
    backward (as fused RMSNorm kernels do), not the intermediate products autograd would keep."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, rstd, weight)
        return x * rstd * weight

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, rstd, weight = ctx.saved_tensors
        xhat = x * rstd
        grad_weight = (grad * xhat).sum(dim=tuple(range(grad.dim() - 1))) if ctx.needs_input_grad[1] else None
        gx_hat = grad * weight
        grad_x = rstd * (gx_hat - xhat * (gx_hat * xhat).mean(-1, keepdim=True))
        return grad_x, grad_weight, None


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned scale."""

    is_norm = True

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return _RMSNormFunction.apply(x, self.weight, self.eps)


def segment_ids(seq_lens: Sequence[int], device: torch.device | None = None) -> Tensor:
    """``[sum(seq_lens)]`` index of the block each position belongs to."""
    lens = torch.as_tensor(list(seq_lens), dtype=torch.long, device=device)
    return torch.repeat_interleave(torch.arange(len(lens), device=device), lens)


def positions_in_blocks(seq_lens: Sequence[int], device: torch.device | None = None) -> Tensor:
    """Positions restarting at 0 at the start of every block."""
    return (
        torch.cat([torch.arange(n, device=device) for n in seq_lens])
        if seq_lens
        else torch.zeros(0, dtype=torch.long, device=device)
    )


def block_mask(seq_lens: Sequence[int], causal: bool, device: torch.device | None = None) -> Tensor:
    """Boolean ``[T, T]`` mask (True = attend): full (or causal) within each block, nothing across."""
    seg = segment_ids(seq_lens, device)
    mask = seg[:, None] == seg[None, :]
    if causal:
        idx = torch.arange(len(seg), device=device)
        mask &= idx[:, None] >= idx[None, :]
    return mask


def cross_mask(q_lens: Sequence[int], kv_lens: Sequence[int], device: torch.device | None = None) -> Tensor:
    """Boolean ``[Tq, Tk]`` mask: query block i attends to key block i only."""
    if any(n <= 0 for n in kv_lens):
        raise ValueError("every query block needs at least one key (a clip with an empty caption?)")
    return segment_ids(q_lens, device)[:, None] == segment_ids(kv_lens, device)[None, :]


@dataclass(frozen=True)
class Segments:
    """Packed documents of an attention call: query document ``i`` (``q_lens[i]`` rows) attends to key
    document ``i`` (``kv_lens[i]`` rows) only, causally when ``causal`` (self-attention)."""

    q_lens: tuple[int, ...]
    kv_lens: tuple[int, ...]
    causal: bool = False

    @classmethod
    def self_attention(cls, seq_lens: Sequence[int], causal: bool) -> Segments:
        lens = tuple(int(n) for n in seq_lens)
        return cls(lens, lens, causal)

    @classmethod
    def cross_attention(cls, q_lens: Sequence[int], kv_lens: Sequence[int]) -> Segments:
        if any(n <= 0 for n in kv_lens):
            raise ValueError("every query block needs at least one key (a clip with an empty caption?)")
        return cls(tuple(int(n) for n in q_lens), tuple(int(n) for n in kv_lens), False)


def rope_tables(positions: Tensor, head_dim: int, dtype: torch.dtype, base: float = 10000.0) -> tuple[Tensor, Tensor]:
    """(cos, sin) ``[T, head_dim]`` for rotate-half rotary embeddings."""
    half = head_dim // 2
    inv = 1.0 / (base ** (torch.arange(half, dtype=torch.float64, device=positions.device) / half))
    ang = positions.to(torch.float64)[:, None] * inv[None, :]
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x [heads, T, head_dim]``."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def aligned_attention_inputs(
    k: Tensor, v: Tensor, mask: Tensor, dtype: torch.dtype, multiple: int = 16
) -> tuple[Tensor, Tensor, Tensor]:
    """``k, v [.., Tk, D]`` zero-padded to a multiple of ``multiple`` keys, and an additive bias
    ``[Tq, Tk']`` (0 = attend, -inf = not, padding never attended) equal to boolean ``mask [Tq, Tk]``.

    CUDA's memory-efficient attention kernels need every stride of the bias 16-byte aligned (a
    cross-attention over 10 caption tokens, or 159 packed tokens, fails otherwise)."""
    tq, tk = mask.shape[-2:]
    pad = (-tk) % multiple
    if pad:
        k, v = F.pad(k, (0, 0, 0, pad)), F.pad(v, (0, 0, 0, pad))
    bias = torch.full((tq, tk + pad), float("-inf"), dtype=dtype, device=mask.device)
    bias[:, :tk].masked_fill_(mask, 0.0)
    return k, v, bias


def attention_core(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | Segments) -> Tensor:
    """SDPA of ``q [H, Tq, D]`` over ``k, v [KV, Tk, D]`` per document of a :class:`Segments` (no
    ``[Tq, Tk]`` mask; grouped-query heads by SDPA itself, so only the KV heads are kept for the
    backward), or under a boolean ``mask`` (kv heads repeated)."""
    if isinstance(mask, Segments):
        return segmented_attention(q, k, v, mask)
    if k.shape[0] != q.shape[0]:
        rep = q.shape[0] // k.shape[0]
        k, v = k.repeat_interleave(rep, dim=0), v.repeat_interleave(rep, dim=0)
    if mask.is_cuda and mask.dtype == torch.bool:
        k, v, mask = aligned_attention_inputs(k, v, mask, q.dtype)
    return F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=mask)[0]


def segmented_attention(q: Tensor, k: Tensor, v: Tensor, seg: Segments) -> Tensor:
    """Attention of each document on its own keys; documents of equal (query, key) lengths run as one
    batched SDPA call. ``q [H, Tq, D]``, ``k, v [KV, Tk, D]`` (``KV`` divides ``H``) -> ``[H, Tq, D]``.
    A document without keys (the sequence-parallel padding in cross-attention) gets zeros."""
    if sum(seg.q_lens) != q.shape[1] or sum(seg.kv_lens) != k.shape[1]:
        raise ValueError(
            f"segments cover {sum(seg.q_lens)} queries / {sum(seg.kv_lens)} keys, "
            f"the tensors have {q.shape[1]} / {k.shape[1]}"
        )
    qs, ks, vs = q.split(seg.q_lens, dim=1), k.split(seg.kv_lens, dim=1), v.split(seg.kv_lens, dim=1)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, shape in enumerate(zip(seg.q_lens, seg.kv_lens)):
        if shape[0] and shape[1]:
            groups.setdefault(shape, []).append(i)
    out: list[Tensor | None] = [
        q.new_zeros(q.shape[0], n, v.shape[-1]) if n == 0 or m == 0 else None for n, m in zip(seg.q_lens, seg.kv_lens)
    ]
    for idx in groups.values():
        got = F.scaled_dot_product_attention(
            torch.stack([qs[i] for i in idx]),
            torch.stack([ks[i] for i in idx]),
            torch.stack([vs[i] for i in idx]),
            is_causal=seg.causal,
            enable_gqa=k.shape[0] != q.shape[0],
        )
        for i, o in zip(idx, got.unbind(0)):
            out[i] = o
    return torch.cat(out, dim=1) if out else q.new_zeros(q.shape[0], 0, v.shape[-1])


class Attention(nn.Module):
    """Multi-head attention with grouped-query heads, optional RoPE and optional cross-attention."""

    def __init__(self, hidden: int, heads: int, kv_heads: int, kv_dim: int | None = None, bias: bool = False):
        super().__init__()
        if hidden % heads or heads % kv_heads:
            raise ValueError(f"hidden {hidden}, heads {heads}, kv_heads {kv_heads} do not divide")
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, hidden // heads
        kv_dim = kv_dim or hidden
        self.q = nn.Linear(hidden, heads * self.head_dim, bias=bias)
        # no key bias: it shifts all scores of a query row equally, so softmax ignores it (its gradient
        # is exactly zero and in floating point only rounding noise)
        self.k = nn.Linear(kv_dim, kv_heads * self.head_dim, bias=False)
        self.v = nn.Linear(kv_dim, kv_heads * self.head_dim, bias=bias)
        self.o = nn.Linear(heads * self.head_dim, hidden, bias=bias)

    def forward(
        self,
        x: Tensor,
        mask: Tensor | Segments,
        rope: tuple[Tensor, Tensor] | None = None,
        kv: Tensor | None = None,
        recompute_core: bool = False,
    ) -> Tensor:
        src = x if kv is None else kv
        # heads from the projections' widths: under tensor parallelism a rank holds heads / tp of them
        q, k, v = self._heads(self.q(x)), self._heads(self.k(src)), self._heads(self.v(src))
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if recompute_core:
            out = checkpoint(attention_core, q, k, v, mask, use_reentrant=False)
        else:
            out = attention_core(q, k, v, mask)
        return self.o(out.transpose(0, 1).reshape(q.shape[1], -1))

    def _heads(self, t: Tensor) -> Tensor:
        """``[T, n * head_dim]`` -> ``[n, T, head_dim]``."""
        return t.view(t.shape[0], -1, self.head_dim).transpose(0, 1)


class GeluMLP(nn.Module):
    """fc1 -> GELU (tanh) -> fc2."""

    def __init__(self, dim: int, hidden: int, out: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, out or dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class _SwiGLUFunction(torch.autograd.Function):
    """``silu(g) * u`` keeping only ``g`` and ``u`` for the backward (as Megatron's fused SwiGLU does)."""

    @staticmethod
    def forward(ctx, g: Tensor, u: Tensor) -> Tensor:
        ctx.save_for_backward(g, u)
        return F.silu(g) * u

    @staticmethod
    def backward(ctx, grad: Tensor):
        g, u = ctx.saved_tensors
        sig = torch.sigmoid(g)
        silu = g * sig
        return grad * u * sig * (1 + g * (1 - sig)), grad * silu


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x))."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(_SwiGLUFunction.apply(self.gate(x), self.up(x)))


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding ``[n, dim]`` of timesteps ``t [n]`` (scaled to 0..1000)."""
    half = dim // 2
    freqs = torch.exp(
        -torch.log(torch.tensor(max_period, dtype=torch.float64)) * torch.arange(half, dtype=torch.float64) / half
    ).to(device=t.device, dtype=t.dtype)
    args = (t * 1000.0)[:, None] * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
