"""``dip init-model FAMILY --tiny --out DIR``: a random-init checkpoint folder, as downloaded ones look."""

from __future__ import annotations

import argparse

from dip.errors import BadInput, positive_int
from dip.io import emit

FAMILY_HELP = {
    "qwen2-vl": "transformers Qwen2VLForConditionalGeneration (vision tower + Qwen2 LM, tied embeddings), "
    "tokenizer with chat template, image processor",
    "wan": "diffusers Wan pipeline: WanTransformer3DModel + UMT5 text encoder, tokenizer, flow-matching scheduler",
}


def register(subparsers) -> None:
    families = "; ".join(f"{k}: {v}" for k, v in FAMILY_HELP.items())
    p = subparsers.add_parser(
        "init-model",
        help="write a tiny random-init checkpoint (qwen2-vl, wan)",
        description=f"Write a random-init checkpoint folder. Families: {families}.",
    )
    p.add_argument("family", help=f"model family: {', '.join(FAMILY_HELP)}")
    p.add_argument("--tiny", action="store_true", help="a tiny configuration (a few layers, small widths); required")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights and the tokenizer (>= 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dip.integrations.init_model import FAMILIES, init_model  # torch (seconds to load): only this command

    if args.family not in FAMILIES:
        raise BadInput(f"unknown family {args.family!r}; valid families: {', '.join(FAMILIES)}")
    positive_int("seed", args.seed, minimum=0)
    out = init_model(args.family, out=args.out, seed=args.seed, tiny=args.tiny)
    emit({"family": args.family, "out": out}, args.json, f"wrote a tiny {args.family} checkpoint to {out}")
    return 0
