"""``dip cost``: per-layer latency and activation memory of every module of a model on a hardware."""

from __future__ import annotations

import argparse
import math

from dip.cli.memory_args import add_memory_arguments, memory_overrides
from dip.cost import STRATEGIES, CostModel, layer_flops
from dip.data.meta import ModuleWork
from dip.errors import BadInput, positive_int
from dip.io import emit
from dip.spec.hardware import get_hardware, usable_memory_bytes
from dip.spec.presets import load_model
from dip.spec.validate import with_overrides

DEFAULT_T2V_TEXT_TOKENS = 512


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cost",
        help="per-layer time and activation memory of each module (cost model)",
        description="Per-GPU forward / backward-input / backward-weight time and activation "
        "memory (per memory strategy) of one layer of every module, for one sample.",
    )
    p.add_argument("--model", required=True, help="model preset (see dip models) or model file")
    p.add_argument("--hardware", default="H800", help="hardware preset or calibration JSON (default H800)")
    p.add_argument("--tp", type=int, help="tensor parallel degree (default: the model's)")
    add_memory_arguments(p, limit=False)
    p.add_argument("--images", type=int, help="images run by the ViT (default 8 for VLMs)")
    p.add_argument(
        "--text-tokens",
        type=int,
        help=f"LM sequence length of the sample (default: context length for VLMs, "
        f"{DEFAULT_T2V_TEXT_TOKENS} otherwise); also the DiT's caption length",
    )
    p.add_argument("--clips", type=int, help="video clips run by the DiT (default 1 for T2V)")
    p.add_argument("--clip-seconds", type=float, help="seconds per clip (default: the model's maximum)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def sample_work(module, images: int, text_tokens: int, clips: int, clip_seconds: float):
    """ModuleWork of one sample: ``images`` ViT images, one LM sequence, ``clips`` DiT clips."""
    if module.kind == "vit":
        return ModuleWork(seq_lens=(module.patches_per_image,) * images, instances=images)
    if module.kind == "decoder":
        return ModuleWork(seq_lens=(text_tokens,) if text_tokens else (), instances=1)
    if module.kind == "dit":
        tokens = module.clip_tokens(clip_seconds)
        return ModuleWork(seq_lens=(tokens,) * clips, cond_lens=(text_tokens,) * clips, instances=clips)
    raise BadInput(f"unknown module kind {module.kind!r}")


def cost_report(
    model,
    hardware,
    tp: int | None = None,
    images: int | None = None,
    text_tokens: int | None = None,
    clips: int | None = None,
    clip_seconds: float | None = None,
    memory_reserve_gib: float | None = None,
) -> dict:
    """The ``dip cost`` JSON for ``model`` on ``hardware`` (a HardwareSpec or name/path).

    Data parallelism, sequence parallelism and the distributed optimizer come from ``model.parallel``.
    """
    tp = int(tp or model.parallel.tp)
    images = model.is_vlm * 8 if images is None else images
    text_tokens = (
        (model.context_length if model.is_vlm else DEFAULT_T2V_TEXT_TOKENS) if text_tokens is None else text_tokens
    )
    clips = int(model.is_t2v) if clips is None else clips
    clip_seconds = model.max_video_seconds if clip_seconds is None else clip_seconds
    for field, value in (("--images", images), ("--text-tokens", text_tokens), ("--clips", clips)):
        positive_int(field, value, minimum=0)
    if not (math.isfinite(clip_seconds) and clip_seconds > 0):
        raise BadInput(f"--clip-seconds must be a finite number > 0, got {clip_seconds}")
    hardware = get_hardware(hardware)
    limit = usable_memory_bytes(hardware, memory_reserve_gib)
    cm = CostModel(model, hardware, tp=tp)
    rows = []
    for m in model.modules:
        work = sample_work(m, images, text_tokens, clips, clip_seconds)
        t = cm.layer_times(m, work)
        fwd_flops, bwd_flops = layer_flops(m, work)
        rows.append(
            {
                "name": m.name,
                "kind": m.kind,
                "layers": m.layers,
                "tokens": work.tokens,
                "layer_fwd_s": t.f,
                "layer_bwd_s": t.b,
                "layer_bwd_input_s": t.i,
                "layer_bwd_weight_s": t.w,
                "layer_activation_bytes": cm.layer_activation_bytes(m, work, "none"),
                "activation_bytes_by_strategy": {s: cm.layer_activation_bytes(m, work, s) for s in STRATEGIES},
                "recompute_s_by_strategy": {s: cm.recompute_seconds(m, work, s) for s in STRATEGIES},
                "layer_flops": fwd_flops + bwd_flops,
                "layer_mfu": cm.layer_efficiency(m, work),
                "pre_s": vars(cm.pre_times(m, work)),
                "post_s": vars(cm.post_times(m, work)),
                "layer_params_per_gpu": cm.gpu_params(m, 0, 1, False, False),
                "layer_static_bytes": cm.static_bytes(m, 0, 1, False, False),
                "layer_grad_bytes": cm.grad_bytes(m, 0, 1, False, False),
            }
        )
    opts = cm.options
    return {
        "model": model.name,
        "hardware": cm.hardware.name,
        "tp": tp,
        "dp": opts.dp,
        "sequence_parallel": opts.sequence_parallel,
        "distributed_optimizer": opts.distributed_optimizer,
        "bytes_per_param": opts.param_state_bytes,
        "memory_capacity_bytes": float(cm.hardware.mem_bytes),
        "memory_limit_bytes": limit,
        "images": images,
        "text_tokens": text_tokens,
        "clips": clips,
        "clip_seconds": clip_seconds,
        "modules": rows,
    }


def _text(report: dict) -> str:
    inputs = [f"{report['text_tokens']} text tokens"]
    if report["images"]:
        inputs.insert(0, f"{report['images']} images")
    if report["clips"]:
        inputs.append(f"{report['clips']} clips x {report['clip_seconds']:g} s")
    gib = 2**30
    lines = [
        f"{report['model']} on {report['hardware']}, tp {report['tp']} dp {report['dp']}: {', '.join(inputs)} "
        f"(per GPU, one layer)",
        f"sequence parallel {'on' if report['sequence_parallel'] else 'off'}, distributed optimizer "
        f"{'on' if report['distributed_optimizer'] else 'off'} ({report['bytes_per_param']:g} bytes per "
        f"parameter), usable memory {report['memory_limit_bytes'] / gib:.1f} of "
        f"{report['memory_capacity_bytes'] / gib:.1f} GiB",
    ]
    lines.append(
        f"{'module':<10} {'kind':<8} {'tokens':>8} {'fwd ms':>8} {'bwd ms':>8} {'(I':>7} {'W)':>7} "
        f"{'f+b ms':>8} {'act MB':>9} {'full MB':>8} {'static MB':>9} {'MFU':>6}"
    )
    for r in report["modules"]:
        lines.append(
            f"{r['name']:<10} {r['kind']:<8} {r['tokens']:>8} {r['layer_fwd_s'] * 1e3:>8.3f} "
            f"{r['layer_bwd_s'] * 1e3:>8.3f} {r['layer_bwd_input_s'] * 1e3:>7.3f} "
            f"{r['layer_bwd_weight_s'] * 1e3:>7.3f} {(r['layer_fwd_s'] + r['layer_bwd_s']) * 1e3:>8.3f} "
            f"{r['layer_activation_bytes'] / 1e6:>9.1f} "
            f"{r['activation_bytes_by_strategy']['full'] / 1e6:>8.1f} "
            f"{r['layer_static_bytes'] / 1e6:>9.1f} {r['layer_mfu']:>6.3f}"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    model = load_model(args.model)
    if args.clips is not None and not model.is_t2v:
        raise BadInput(f"--clips: model {model.name} runs no video clips (clips are for text-to-video models)")
    if args.clip_seconds is not None and not model.is_t2v:
        raise BadInput(f"--clip-seconds: model {model.name} runs no video clips (for text-to-video models)")
    if args.images is not None and not model.is_vlm:
        raise BadInput(f"--images: model {model.name} has no vision encoder (images are for vision-language models)")
    tp = positive_int("--tp", args.tp) if args.tp is not None else None
    model = with_overrides(model, tp=tp, **memory_overrides(args))
    hardware = get_hardware(args.hardware)
    report = cost_report(
        model,
        hardware,
        model.parallel.tp,
        args.images,
        args.text_tokens,
        args.clips,
        args.clip_seconds,
        args.memory_reserve_gib,
    )
    emit(report, args.json, _text(report))
    return 0
