"""``dip data``: real-data tools. ``dip data sample`` writes a small dataset in the real formats."""

from __future__ import annotations

import argparse

from dip.data.sample_data import write_t2v_sample, write_vlm_sample
from dip.errors import BadInput, positive_int
from dip.io import emit

KINDS = ("vlm", "t2v")
FORMATS = ("jsonl", "wds")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "data",
        help="real-data tools (sample datasets)",
        description="Tools for real datasets: LLaVA-style JSONL, WebDataset shards, T2V latents.",
    )
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    s = sub.add_parser(
        "sample",
        help="write a small dataset in the real formats",
        description="Write a small dataset: VLM (LLaVA-style JSONL + PNG/JPEG images of varied sizes, "
        "0..4 images per sample, multi-turn conversations) or T2V (captions JSONL + "
        "per-sample VAE latents in .safetensors). Deterministic for a seed.",
    )
    s.add_argument("--kind", required=True, help=f"dataset kind: {', '.join(KINDS)}")
    s.add_argument("--out", required=True, help="folder to write")
    s.add_argument("--samples", type=int, default=64, help="number of samples (>= 1; default 64)")
    s.add_argument("--seed", type=int, default=0, help="random seed (>= 0)")
    s.add_argument(
        "--format",
        default="jsonl",
        help=f"VLM layout: {', '.join(FORMATS)} (wds: also a WebDataset tar shard); default jsonl",
    )
    s.add_argument("--latent-channels", type=int, default=16, help="T2V latent channels (Wan's VAE: 16)")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=run_sample)
    p.set_defaults(func=lambda args: p.print_help())


def run_sample(args: argparse.Namespace) -> int:
    if args.kind not in KINDS:
        raise BadInput(f"unknown kind {args.kind!r}; valid kinds: {', '.join(KINDS)}")
    if args.format not in FORMATS:
        raise BadInput(f"unknown format {args.format!r}; valid formats: {', '.join(FORMATS)}")
    if args.kind == "t2v" and args.format != "jsonl":
        raise BadInput("format wds is for --kind vlm only")
    positive_int("samples", args.samples)
    positive_int("seed", args.seed, minimum=0)
    positive_int("latent-channels", args.latent_channels)
    if args.kind == "vlm":
        got = write_vlm_sample(args.out, samples=args.samples, seed=args.seed, wds=args.format == "wds")
    else:
        got = write_t2v_sample(args.out, samples=args.samples, seed=args.seed, channels=args.latent_channels)
    out = {
        "kind": args.kind,
        "data": got.data_file,
        "samples": got.samples,
        "media_files": got.media,
        "shards": list(got.extra),
    }
    emit(
        out,
        args.json,
        f"wrote {got.samples} {args.kind} samples ({got.media} media files) to {got.data_file}"
        + "".join(f"\nshard: {s}" for s in got.extra),
    )
    return 0
