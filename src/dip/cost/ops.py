"""Operator lists of one transformer block and of a module's pre/post parts, per pass.

Passes: ``f`` (forward), ``i`` (backward w.r.t. inputs, incl. the whole attention-core backward) and
``w`` (backward w.r.t. weights). Every :class:`Op` carries FLOPs, HBM bytes and network bytes per GPU
under Megatron tensor parallelism (heads and FFN split ``tp`` ways; one all-reduce after attention and
one after the MLP in forward, two in backward-input). Forward ops also record the activation bytes
they keep for the backward pass (flash attention: no ``s^2`` buffers).

With sequence parallelism (Korthikanti et al. 2022) the ops outside the tensor-parallel regions
(norms, residuals, adaLN modulation, the DiT's final layer) run on ``1/tp`` of the tokens and keep
``1/tp`` of their tensors, and so do the saved inputs of the column-parallel projections (QKV, FC1,
LM head), which Megatron all-gathers again in backward. Each all-reduce becomes an all-gather plus a
reduce-scatter, which move the same bytes in as many ring steps, so the collectives are unchanged.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from dip.data.meta import ModuleWork
from dip.spec import params as P
from dip.spec.model import ModuleSpec
from dip.spec.params import TIMESTEP_FREQ_DIM

__all__ = [
    "ATTN_BWD_FLOP_RATIO",
    "FP32",
    "Op",
    "PassOps",
    "Shard",
    "dit_patch_dim",
    "layer_ops",
    "post_ops",
    "pre_ops",
    "tp_split_params",
]

ATTN_BWD_FLOP_RATIO = 2.5  # flash-attention backward: 5 matmuls (QK^T recomputed) vs 2 forward
FP32 = 4


@dataclass(frozen=True)
class Op:
    """One operator. ``dims``: GEMM (token rows m, n, k); attention (q_len, kv_len, head_dim); else unused."""

    name: str
    op_class: str
    flops: float = 0.0
    mem_bytes: float = 0.0
    net_bytes: float = 0.0
    dims: tuple[int, int, int] = (0, 0, 0)
    group: int = 1  # collectives: participating GPUs
    saved_bytes: float = 0.0  # forward ops: activation bytes kept until backward
    selective_bytes: float = 0.0  # part of saved_bytes dropped (and recomputed) by selective recompute
    attn_core: bool = False
    model_flops: float = 0.0  # forward FLOPs that count towards MFU (GEMMs and attention matmuls)


@dataclass
class PassOps:
    """Operator lists of the three passes of one block or pre/post part."""

    f: list[Op] = field(default_factory=list)
    i: list[Op] = field(default_factory=list)
    w: list[Op] = field(default_factory=list)

    def saved_bytes(self) -> float:
        return sum(op.saved_bytes for op in self.f)

    def model_flops(self) -> float:
        return sum(op.model_flops for op in self.f)


@dataclass(frozen=True)
class Shard:
    """Per-GPU widths of a module under tensor parallelism ``tp`` with ``d``-byte activations."""

    h: int
    f: int  # ffn per GPU
    q: int  # query width per GPU
    kv: int  # key (= value) width per GPU
    heads: int  # query heads per GPU
    head_dim: int
    tp: int
    d: int
    seq: int = 1  # ways the tokens outside the TP regions are split (tp with sequence parallelism)

    @classmethod
    def of(cls, m: ModuleSpec, tp: int, d: int, sequence_parallel: bool = False) -> Shard:
        hd = m.head_dim
        heads = max(1, m.heads // tp)
        kv_heads = max(1, -(-m.kv_heads // tp))  # fewer KV heads than ranks: replicated, as in Megatron
        return cls(
            h=m.hidden,
            f=max(1, m.ffn_hidden // tp),
            q=heads * hd,
            kv=kv_heads * hd,
            heads=heads,
            head_dim=hd,
            tp=tp,
            d=d,
            seq=tp if sequence_parallel and tp > 1 else 1,
        )

    def rows(self, tokens: float) -> float:
        """Tokens one GPU holds outside the tensor-parallel regions (all of them without SP)."""
        return tokens / self.seq


class _Builder:
    """Collects the ops of the three passes; helpers add the forward op and its backward twins."""

    def __init__(self, shard: Shard):
        self.s = shard
        self.ops = PassOps()

    def linear(
        self,
        name: str,
        m: float,
        n_in: int,
        n_out: int,
        save_input: bool = True,
        dx: bool = True,
        saved_rows: float | None = None,
    ) -> None:
        """``saved_rows``: rows of the input kept for backward (default ``m``; a column-parallel
        projection under sequence parallelism keeps its ``1/tp`` shard and all-gathers it again)."""
        d = self.s.d
        if m <= 0:
            return
        flops = 2.0 * m * n_in * n_out
        io = d * (m * n_in + n_in * n_out + m * n_out)
        kept = m if saved_rows is None else saved_rows
        self.ops.f.append(
            Op(
                name,
                "gemm",
                flops,
                io,
                dims=(m, n_out, n_in),
                saved_bytes=d * kept * n_in if save_input else 0.0,
                model_flops=flops,
            )
        )
        if dx:
            self.ops.i.append(Op(name + ".dx", "gemm", flops, io, dims=(m, n_in, n_out)))
        dw_io = d * (m * n_in + m * n_out) + 2 * FP32 * n_in * n_out  # fp32 main-grad accumulate
        # dW reduces over the m token rows; its dims keep tokens in the m slot so that a GEMM and its
        # two backward twins share the token-count penalty of the efficiency curve
        self.ops.w.append(Op(name + ".dw", "gemm", flops, dw_io, dims=(m, n_out, n_in)))

    def elementwise(self, name: str, fwd_elems: float, bwd_elems: float, saved_elems: float = 0.0) -> None:
        """``fwd_elems``/``bwd_elems``: elements read plus written by the forward/backward kernel."""
        d = self.s.d
        if fwd_elems <= 0:
            return
        self.ops.f.append(Op(name, "elementwise", fwd_elems, d * fwd_elems, saved_bytes=d * saved_elems))
        if bwd_elems > 0:
            self.ops.i.append(Op(name + ".bwd", "elementwise", bwd_elems, d * bwd_elems))

    def all_reduce(self, name: str, elems: float, passes: str = "f") -> None:
        tp = self.s.tp
        if tp <= 1 or elems <= 0:
            return
        nbytes = self.s.d * elems
        op = Op(name, "collective", 0.0, 2 * nbytes, net_bytes=2.0 * (tp - 1) / tp * nbytes, group=tp)
        for p in passes:
            getattr(self.ops, p).append(op)

    def attention(self, name: str, q_lens, kv_lens, causal: bool, flash: bool = True) -> None:
        """Attention core over independent blocks (q_len_j attends kv_len_j); grouped by shape."""
        s = self.s
        shapes = Counter((int(q), int(k)) for q, k in zip(q_lens, kv_lens) if q > 0 and k > 0)
        for (q, k), n in sorted(shapes.items()):
            pairs = n * q * k * (0.5 if causal else 1.0)
            flops = 4.0 * pairs * s.head_dim * s.heads
            io = s.d * n * (2 * q * s.q + 2 * k * s.kv)
            lse = FP32 * n * q * s.heads if flash else 0.0  # flash keeps softmax statistics
            out = s.d * n * q * s.q
            probs = 0.0 if flash else s.d * pairs * s.heads  # without flash the softmax output is kept
            io_f = io + (0.0 if flash else 4.0 * s.d * pairs * s.heads)
            saved = io + lse + probs  # Q, K, V, O and the softmax statistics
            self.ops.f.append(
                Op(
                    f"{name}[{q}x{k}]",
                    "attention",
                    flops,
                    io_f,
                    dims=(q, k, s.head_dim),
                    saved_bytes=saved,
                    selective_bytes=out + lse + probs,
                    attn_core=True,
                    model_flops=flops,
                )
            )
            ratio = ATTN_BWD_FLOP_RATIO if flash else 2.0
            self.ops.i.append(
                Op(
                    f"{name}[{q}x{k}].bwd",
                    "attention",
                    ratio * flops,
                    2 * io_f,
                    dims=(q, k, s.head_dim),
                    attn_core=True,
                )
            )


def _self_attention(b: _Builder, t: int, work: ModuleWork, causal: bool, rope: bool, flash: bool) -> None:
    s = b.s
    b.linear("qkv", t, s.h, s.q + 2 * s.kv, saved_rows=s.rows(t))
    if rope:
        b.elementwise("rope", 2 * t * (s.q + s.kv), 2 * t * (s.q + s.kv))
    b.attention("attn", work.seq_lens, work.seq_lens, causal, flash)
    b.linear("proj", t, s.q, s.h, save_input=False)  # its input is the attention output, kept above
    b.all_reduce("attn.allreduce", t * s.h, "f")
    b.all_reduce("qkv.dx.allreduce", t * s.h, "i")


def layer_ops(
    module: ModuleSpec, work: ModuleWork, tp: int = 1, d: int = 2, flash: bool = True, sequence_parallel: bool = False
) -> PassOps:
    """Operators of one block of ``module`` running ``work`` on one of ``tp`` GPUs."""
    s = Shard.of(module, tp, d, sequence_parallel)
    b = _Builder(s)
    t = work.tokens
    if t <= 0:
        return b.ops
    h = s.h
    r = s.rows(t)  # tokens of the norms, residuals and modulations on this GPU
    if module.kind in ("vit", "decoder"):
        causal = module.kind == "decoder"
        b.elementwise("norm1", 2 * r * h, 3 * r * h, saved_elems=r * h)
        _self_attention(b, t, work, causal, True, flash)
        b.elementwise("residual1", 3 * r * h, 3 * r * h)
        b.elementwise("norm2", 2 * r * h, 3 * r * h, saved_elems=r * h)
        if module.kind == "decoder":
            b.linear("gate_up", t, h, 2 * s.f, saved_rows=r)
            b.elementwise("swiglu", 3 * t * s.f, 5 * t * s.f, saved_elems=2 * t * s.f)
        else:
            b.linear("fc1", t, h, s.f, saved_rows=r)
            b.elementwise("gelu", 2 * t * s.f, 3 * t * s.f, saved_elems=t * s.f)
        b.linear("fc2", t, s.f, h)
        b.all_reduce("mlp.allreduce", t * h, "f")
        b.all_reduce("fc1.dx.allreduce", t * h, "i")
        b.elementwise("residual2", 3 * r * h, 3 * r * h)
        return b.ops
    if module.kind == "dit":
        c = work.cond_tokens
        b.elementwise("modulation", 2 * 6 * h * max(work.instances, 1), 2 * 6 * h * max(work.instances, 1))
        b.elementwise("norm1_modulate", 4 * r * h, 6 * r * h, saved_elems=2 * r * h)
        _self_attention(b, t, work, False, True, flash)
        b.elementwise("gate_residual1", 3 * r * h, 4 * r * h, saved_elems=r * h)
        if c > 0:  # cross-attention to the projected text conditioning (shared by all blocks)
            b.elementwise("norm_cross", 2 * r * h, 3 * r * h, saved_elems=r * h)
            b.linear("cross_q", t, h, s.q, saved_rows=r)
            b.linear("cross_kv", c, h, 2 * s.kv, save_input=False)
            b.attention("cross_attn", work.seq_lens, work.cond_lens, False, flash)
            b.linear("cross_proj", t, s.q, h, save_input=False)
            b.all_reduce("cross.allreduce", t * h, "f")
            b.all_reduce("cross_q.dx.allreduce", t * h, "i")
            b.all_reduce("cross_kv.dx.allreduce", c * h, "i")
            b.elementwise("residual2", 3 * r * h, 3 * r * h)
        b.elementwise("norm2_modulate", 4 * r * h, 6 * r * h, saved_elems=2 * r * h)
        b.linear("fc1", t, h, s.f, saved_rows=r)
        b.elementwise("gelu", 2 * t * s.f, 3 * t * s.f, saved_elems=t * s.f)
        b.linear("fc2", t, s.f, h)
        b.all_reduce("mlp.allreduce", t * h, "f")
        b.all_reduce("fc1.dx.allreduce", t * h, "i")
        b.elementwise("gate_residual2", 3 * r * h, 4 * r * h, saved_elems=r * h)
        return b.ops
    raise ValueError(f"unknown module kind {module.kind!r}")


def dit_patch_dim(m: ModuleSpec) -> int:
    return m.latent_channels * m.patch_t * m.patch_hw * m.patch_hw


def pre_ops(module: ModuleSpec, work: ModuleWork, tp: int = 1, d: int = 2) -> PassOps:
    """Operators in front of the first block (replicated across TP except vocab-parallel embeddings).

    They run before the scatter into the sequence-parallel region, so sequence parallelism leaves
    them unchanged.
    """
    s = Shard.of(module, tp, d)
    b = _Builder(s)
    t, h = work.tokens, s.h
    if t <= 0:
        return b.ops
    if module.kind == "vit":
        b.linear("patch_embed", t, module.in_channels * module.patch_size**2, h, dx=False)
    elif module.kind == "decoder":
        b.ops.f.append(Op("embedding", "elementwise", t * h, d * 2 * t * h))
        b.ops.w.append(Op("embedding.dw", "elementwise", t * h, (d + 2 * FP32) * t * h))
        b.all_reduce("embedding.allreduce", t * h, "f")
    elif module.kind == "dit":
        n = max(work.instances, 1)
        b.linear("patch_embed", t, dit_patch_dim(module), h, dx=False)
        if work.cond_tokens and module.cond_hidden:
            b.linear("cond_proj", work.cond_tokens, module.cond_hidden, h, save_input=True)
        b.linear("t_embed1", n, TIMESTEP_FREQ_DIM, h, dx=False)
        b.linear("t_embed2", n, h, h)
        b.linear("adaln_single", n, h, 6 * h)
    else:
        raise ValueError(f"unknown module kind {module.kind!r}")
    return b.ops


def post_ops(module: ModuleSpec, work: ModuleWork, tp: int = 1, d: int = 2, sequence_parallel: bool = False) -> PassOps:
    """Operators after the last block (ViT merger, final norm + LM head + loss, DiT final layer + loss)."""
    s = Shard.of(module, tp, d, sequence_parallel)
    b = _Builder(s)
    t, h = work.tokens, s.h
    if t <= 0:
        return b.ops
    r = s.rows(t)
    if module.kind == "vit":
        merge = module.spatial_merge**2
        out = module.out_hidden or h
        rows = max(1, t // merge)
        b.elementwise("merger_norm", 2 * r * h, 3 * r * h, saved_elems=r * h)
        b.linear("merger_fc1", rows, h * merge, max(1, out // tp), saved_rows=s.rows(rows))  # column parallel
        b.elementwise("merger_gelu", 2 * rows * out / tp, 3 * rows * out / tp, saved_elems=rows * out / tp)
        b.linear("merger_fc2", rows, max(1, out // tp), out)  # row parallel
        b.all_reduce("merger.allreduce", rows * out, "f")
        b.all_reduce("merger.dx.allreduce", t * h, "i")
    elif module.kind == "decoder":
        b.elementwise("final_norm", 2 * r * h, 3 * r * h, saved_elems=r * h)
        if module.lm_head and module.vocab_size:
            v = max(1, module.vocab_size // tp)
            b.linear("lm_head", t, h, v, saved_rows=r)
            logits = FP32 * t * v  # vocab-parallel cross-entropy keeps fp32 softmax
            b.ops.f.append(Op("cross_entropy", "elementwise", 3 * t * v, d * t * v + 2 * logits, saved_bytes=logits))
            b.ops.i.append(Op("cross_entropy.bwd", "elementwise", 2 * t * v, logits + d * t * v))
            b.all_reduce("cross_entropy.allreduce", 3 * t * FP32 / d, "f")
            b.all_reduce("lm_head.dx.allreduce", t * h, "i")
    elif module.kind == "dit":  # replicated final layer: on its sequence shard under SP
        p = dit_patch_dim(module)
        b.elementwise("final_norm_modulate", 4 * r * h, 6 * r * h, saved_elems=2 * r * h)
        b.linear("final_linear", r, h, p)
        b.elementwise("mse_loss", 3 * r * p, 3 * r * p, saved_elems=r * p)
    else:
        raise ValueError(f"unknown module kind {module.kind!r}")
    return b.ops


def tp_split_params(module: ModuleSpec, part: str) -> tuple[int, int]:
    """(params sharded across TP, params replicated on every TP rank) of ``layer``, ``pre`` or ``post``.

    Totals equal :mod:`dip.spec.params`; norms, biases of row-parallel outputs, the ViT/DiT patch
    embeddings and the DiT conditioning/timestep inputs are replicated.
    """
    total = {"layer": P.layer_params, "pre": P.pre_params, "post": P.post_params}[part](module)
    h = module.hidden
    if part == "layer":
        replicated = {"vit": 2 * 2 * h + 2 * h, "decoder": 2 * h, "dit": 6 * h + 3 * h}[module.kind]
    elif part == "pre":
        replicated = 0 if module.kind == "decoder" else total
    else:
        if module.kind == "vit":
            replicated = 2 * h + (module.out_hidden or h)
        elif module.kind == "decoder":
            replicated = h
        else:
            replicated = total
    replicated = min(replicated, total)
    return total - replicated, replicated
