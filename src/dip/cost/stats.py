"""Per-micro-batch workload statistics: sizes and model FLOPs (:mod:`dip.cost.flops`), with
min / mean / max summaries."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dip.cost.flops import microbatch_flops
from dip.data.meta import BatchMeta, MicroBatchMeta
from dip.data.samples import tokens_per_image
from dip.spec.model import ModelSpec

__all__ = ["FIELDS", "batch_rows", "microbatch_row", "summarize"]

FIELDS: tuple[str, ...] = ("text_tokens", "images", "image_tokens", "clips", "video_seconds", "flops")


def microbatch_row(model: ModelSpec, mb: MicroBatchMeta) -> dict[str, Any]:
    """Sizes and FLOPs of one micro-batch (the fields of :data:`FIELDS`)."""
    return {
        "text_tokens": mb.text_tokens,
        "images": mb.images,
        "image_tokens": int(sum(mb.image_token_counts(tokens_per_image(model)))),
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
