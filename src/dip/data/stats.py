"""Per-micro-batch workload statistics: sizes and model FLOPs, with min/mean/max summaries.

FLOPs come from :func:`dip.cost.flops.microbatch_flops` when the cost package provides it; otherwise
from :func:`estimate_flops`, a plain transformer count used only as a stand-in.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dip.data.meta import BatchMeta, MicroBatchMeta, work_for
from dip.data.samples import tokens_per_image
from dip.spec.model import ModelSpec, ModuleSpec

FIELDS: tuple[str, ...] = ("text_tokens", "images", "image_tokens", "clips", "video_seconds", "flops")


def microbatch_flops(model: ModelSpec, mb: MicroBatchMeta) -> float:
    """Training FLOPs of one micro-batch (the cost model's, else :func:`estimate_flops`)."""
    try:
        from dip.cost.flops import microbatch_flops as cost_flops
    except ImportError:
        return estimate_flops(model, mb)
    return float(cost_flops(model, mb))


def _layer_params(m: ModuleSpec) -> int:
    """Weights per block touched by every token (self-attention, MLP, cross-attention q/o)."""
    h = m.hidden
    if m.kind == "vit":
        return 4 * h * h + 2 * h * m.ffn_hidden
    if m.kind == "decoder":
        kv = m.kv_heads * m.head_dim
        return 2 * h * h + 2 * h * kv + 3 * h * m.ffn_hidden
    return 6 * h * h + 2 * h * m.ffn_hidden  # dit: self-attn, cross q/o, GELU MLP


def estimate_flops(model: ModelSpec, mb: MicroBatchMeta) -> float:
    """Forward + backward (3x forward) FLOPs: GEMMs, block-diagonal attention, cross-attention."""
    total = 0.0
    for m in model.modules:
        w = work_for(model, m, mb)
        if w.empty:
            continue
        pairs = w.attn_pairs / 2 if m.kind == "decoder" else w.attn_pairs
        fwd = 2 * _layer_params(m) * w.tokens + 4 * m.hidden * pairs
        if m.kind == "dit":
            fwd += 4 * m.cond_hidden * m.hidden * w.cond_tokens + 4 * m.hidden * w.cross_pairs
        fwd *= m.layers
        if m.kind == "decoder" and m.lm_head:
            fwd += 2 * m.hidden * m.vocab_size * w.tokens
        total += 3 * fwd
    return float(total)


def microbatch_row(model: ModelSpec, mb: MicroBatchMeta) -> dict[str, Any]:
    """Sizes and FLOPs of one micro-batch (the fields of :data:`FIELDS`)."""
    return {
        "text_tokens": mb.text_tokens,
        "images": mb.images,
        "image_tokens": mb.images * tokens_per_image(model),
        "clips": mb.clips,
        "video_seconds": round(mb.video_seconds, 4),
        "flops": microbatch_flops(model, mb),
    }


def batch_rows(model: ModelSpec, batch: BatchMeta) -> list[dict[str, Any]]:
    return [microbatch_row(model, mb) for mb in batch.microbatches]


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """min / mean / max of every field over ``rows`` and the heaviest / lightest FLOPs ratio."""
    out: dict[str, Any] = {"microbatches": len(rows)}
    for name in FIELDS:
        values = [float(r[name]) for r in rows] or [0.0]
        out[name] = {"min": min(values), "mean": sum(values) / len(values), "max": max(values)}
    lo = out["flops"]["min"]
    out["flops_ratio"] = out["flops"]["max"] / lo if lo > 0 else None
    return out
