"""``dip workload``: generate (or read) a training workload and show its packed micro-batches."""

from __future__ import annotations

import argparse
from typing import Any

from dip.cost.stats import FIELDS, batch_rows, summarize
from dip.data.manifest import manifest_batches
from dip.data.meta import BatchMeta
from dip.data.sources import source_names
from dip.data.workload import generate_batches, generate_dynamic_batches
from dip.errors import BadInput, positive_int
from dip.io import emit
from dip.spec.model import ModelSpec
from dip.spec.presets import get_model

DEFAULT_DYNAMIC_ITERATIONS = 40


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "workload",
        help="generate or read a workload and show its packed micro-batches",
        description="Generate global batches from the paper's data sources (or pack a manifest) for a "
        "model and print, per micro-batch, text tokens, images, clips, video seconds and FLOPs.",
    )
    p.add_argument("--model", required=True, help="model preset name, e.g. VLM-S, T2V-S, tiny-vlm")
    p.add_argument(
        "--batches",
        type=int,
        default=None,
        help="number of global batches (>= 1; default 1, or 40 iterations with --dynamic, "
        "or the whole manifest with --manifest)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (>= 0); batch i depends only on (seed, i)")
    p.add_argument("--microbatches", type=int, default=64, help="micro-batches per global batch M (default 64)")
    p.add_argument(
        "--manifest",
        metavar="FILE",
        help="pack the samples of this JSONL (or Parquet) manifest instead of generating them",
    )
    p.add_argument(
        "--mix",
        "--source",
        dest="source",
        metavar="NAME",
        help=f"data mixture or single source (default: vlm-default / t2v-default / text-default by "
        f"the model's workload): {', '.join(source_names())}",
    )
    p.add_argument(
        "--dynamic",
        action="store_true",
        help="Fig. 8b rise-and-fall image-count workload (VLM models; one batch per iteration)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=run)


def load_model(name: str) -> ModelSpec:
    """The preset ``name``."""
    return get_model(name)


def build_batches(model: ModelSpec, args: argparse.Namespace) -> list[BatchMeta]:
    if args.batches is not None:
        positive_int("batches", args.batches)
    positive_int("microbatches", args.microbatches)
    positive_int("seed", args.seed, minimum=0)
    if args.manifest:
        if args.source or args.dynamic:
            raise BadInput("--manifest cannot be combined with --mix or --dynamic")
        batches = manifest_batches(model, args.manifest, args.microbatches)
        return batches[: args.batches] if args.batches else batches
    if args.dynamic:
        if args.source:
            raise BadInput("--dynamic uses its own VLM mixture; it cannot be combined with --mix")
        return generate_dynamic_batches(model, args.seed, args.microbatches, args.batches or DEFAULT_DYNAMIC_ITERATIONS)
    return generate_batches(model, args.batches or 1, args.seed, args.microbatches, args.source)


def report(model: ModelSpec, batches: list[BatchMeta], microbatches: int) -> dict[str, Any]:
    out_batches, all_rows = [], []
    for b in batches:
        rows = batch_rows(model, b)
        all_rows += rows
        entry: dict[str, Any] = {"index": b.index, "microbatches": rows, "flops": sum(r["flops"] for r in rows)}
        for key in ("source", "iteration", "image_bounds"):
            if key in b.extra:
                entry[key] = list(b.extra[key]) if isinstance(b.extra[key], tuple) else b.extra[key]
        out_batches.append(entry)
    return {
        "model": model.name,
        "workload": model.workload,
        "microbatches_per_batch": microbatches,
        "batches": out_batches,
        "summary": summarize(all_rows),
    }


def human_flops(x: float) -> str:
    """FLOPs with an SI prefix, e.g. ``2.66 PFLOP``."""
    for scale, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {prefix}FLOP"
    return f"{x:.0f} FLOP"


def render(result: dict[str, Any]) -> str:
    """Short text: one line per batch, then min / mean / max per field."""
    lines = [
        f"model {result['model']} ({result['workload']}), {len(result['batches'])} batch(es) of "
        f"up to {result['microbatches_per_batch']} micro-batches"
    ]
    lines.append(
        f"{'batch':>5} {'mbs':>4} {'text_tok':>9} {'images':>6} {'clips':>5} {'video_s':>8} "
        f"{'FLOPs':>14} {'heavy/light':>11}"
    )
    for b in result["batches"]:
        rows = b["microbatches"]
        flops = [r["flops"] for r in rows]
        ratio = f"{max(flops) / min(flops):.2f}" if rows and min(flops) > 0 else "-"
        lines.append(
            f"{b['index']:>5} {len(rows):>4} {sum(r['text_tokens'] for r in rows):>9} "
            f"{sum(r['images'] for r in rows):>6} {sum(r['clips'] for r in rows):>5} "
            f"{sum(r['video_seconds'] for r in rows):>8.1f} {human_flops(b['flops']):>14} {ratio:>11}"
        )
    s = result["summary"]
    lines.append(f"per micro-batch over {s['microbatches']} micro-batches (min / mean / max):")
    for name in FIELDS:
        v = s[name]
        fmt = human_flops if name == "flops" else (lambda x: f"{x:.1f}")
        lines.append(f"  {name:<14} {fmt(v['min']):>14} {fmt(v['mean']):>14} {fmt(v['max']):>14}")
    ratio = s["flops_ratio"]
    lines.append(f"  heaviest / lightest micro-batch FLOPs: {ratio:.2f}" if ratio else "  heaviest / lightest: -")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    model = load_model(args.model)
    batches = build_batches(model, args)
    result = report(model, batches, args.microbatches)
    emit(result, args.json, render(result))
    return 0
