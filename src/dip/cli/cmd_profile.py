"""``dip profile``: time real torch blocks and write a calibrated hardware JSON for ``--hardware``."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

from dip.errors import BadInput, choices_error, positive_int
from dip.io import check_writable, emit
from dip.spec.hardware import calibration_path, get_hardware, shipped_calibrations
from dip.spec.presets import MODULE_PRESETS, get_model, load_model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "profile",
        help="profile real torch layers and fit the cost model (calibration JSON)",
        description="Time forward/backward of ViT, decoder and DiT blocks over token counts, fit "
        "the cost model's efficiency factors and write a hardware calibration JSON.",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--model", help="model preset whose modules are profiled (default: ViT-5B, Qwen2-32B, DiT-5B)")
    p.add_argument("--modules", nargs="+", help="module names or kinds (vit, decoder, dit) to profile")
    p.add_argument("--sizes", nargs="+", type=int, help="token counts (default cpu: 32..2048, cuda: 1024..16384)")
    p.add_argument("--hidden-scale", type=float, help="narrow the blocks by this factor (default cpu 0.125, cuda 1)")
    p.add_argument("--block", type=int, help="longest attention block in tokens (default cpu 1024, cuda 4096)")
    p.add_argument("--rounds", type=int, default=3, help="round-robin timing passes; fastest kept (default 3)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's default for this machine)")
    p.add_argument("--name", help="hardware name stored in the file (default: the device)")
    p.add_argument("--out", required=True, help="calibration JSON to write")
    p.add_argument(
        "--runtime-models",
        nargs="+",
        metavar="MODEL",
        help="then run these models (e.g. tiny-vlm tiny-t2v) through the executor on 2 local processes "
        "and store measured / modelled action time per module kind and pass (runtime_factors)",
    )
    p.add_argument(
        "--base",
        metavar="CALIBRATION",
        help="with --runtime-models: keep this calibration's block fit (shipped name or JSON) and only "
        "re-measure its runtime factors",
    )
    p.add_argument("--runtime-steps", type=int, default=6, help="steps per model and schedule for --runtime-models")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def _modules(model_name: str | None, selectors: list[str] | None):
    from dip.cost.profile import REFERENCE_MODULES  # torch (several seconds to load): profiling only

    if model_name:
        modules = tuple(get_model(model_name).modules)
    else:
        modules = REFERENCE_MODULES
    if not selectors:
        return modules
    chosen = [m for m in modules if m.name in selectors or m.kind in selectors]
    if not model_name:  # any module preset by name (e.g. Llama3-8B), next to the reference modules
        have = {m.name for m in chosen}
        chosen += [_standalone(MODULE_PRESETS[s]) for s in selectors if s in MODULE_PRESETS and s not in have]
    known = {m.name for m in chosen} | {m.kind for m in chosen}
    unknown = [s for s in selectors if s not in known]
    if unknown:
        names = [*(m.name for m in modules), *(n for n in MODULE_PRESETS if not model_name)]
        raise choices_error("module", unknown[0], [*dict.fromkeys(names), "vit", "decoder", "dit"])
    return tuple(chosen)


def _standalone(module):
    """A module preset profiled outside a model: a ViT projects to and a DiT attends to a 4096-wide LM."""
    if module.kind == "vit" and not module.out_hidden:
        return replace(module, out_hidden=4096)
    if module.kind == "dit" and not module.cond_hidden:
        return replace(module, cond_hidden=4096)
    return module


def run(args: argparse.Namespace) -> int:
    import torch  # heavy (several seconds to load): only profiling needs it

    check_writable(args.out)
    device = args.device.lower()
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise BadInput("device cuda is not available on this machine; use --device cpu")
    elif device != "cpu":
        raise BadInput(f"unknown device {args.device!r}; valid devices: cpu, cuda, cuda:N")
    cuda = device.startswith("cuda")
    sizes = [
        positive_int("--sizes", s)
        for s in (args.sizes or ([1024, 2048, 4096, 8192, 16384] if cuda else [32, 64, 128, 256, 512, 1024, 2048]))
    ]
    block = positive_int("--block", args.block if args.block is not None else (4096 if cuda else 1024))
    rounds = positive_int("--rounds", args.rounds)
    if args.hidden_scale is not None and not 0 < args.hidden_scale <= 1:
        raise BadInput(f"--hidden-scale must be in (0, 1], got {args.hidden_scale}")
    modules = _modules(args.model, args.modules)
    runtime_steps = positive_int("--runtime-steps", args.runtime_steps, minimum=2)
    if args.runtime_models:
        if cuda:
            raise BadInput("--runtime-models measures on 2 local CPU processes; use it with --device cpu")
        for name in args.runtime_models:
            load_model(name)  # a bad name fails before any measuring

    threads = positive_int("--threads", args.threads) if args.threads is not None else None
    if args.base:
        if not args.runtime_models:
            raise BadInput("--base only makes sense with --runtime-models (it skips the block profile)")
        hw, record = _load_base(args.base)
    else:
        from dip.cost.profile import calibrate  # torch (several seconds to load)

        hw, record = calibrate(
            modules, sizes, device, args.hidden_scale, block, args.name, rounds=rounds, threads=threads
        )
    if args.runtime_models:
        hw, record = _with_runtime_factors(hw, record, args.out, args.runtime_models, runtime_steps)
    hw.save(args.out, extra=record)
    fit = record["fit"]
    summary = {
        "out": args.out,
        "name": hw.name,
        "device": device,
        "peak_flops": hw.peak_flops,
        "mem_bw": hw.mem_bw,
        "alphas": dict(hw.alphas),
        "gemm_curve": {"m0": hw.gemm_curve.m0, "n0": hw.gemm_curve.n0, "k0": hw.gemm_curve.k0},
        "attn_s0": hw.attn_s0,
        "kernel_overhead_s": hw.kernel_overhead_s,
        "rms_log_error": fit["rms_log_error"],
        "points": len(record["measurements"]),
        "runtime_factors": hw.runtime_factors,
        "action_overhead_s": hw.action_overhead_s,
    }
    text = (
        f"wrote {args.out}: {hw.name} peak {hw.peak_flops / 1e12:.3f} TFLOP/s, mem {hw.mem_bw / 1e9:.1f} GB/s, "
        f"alpha gemm {hw.alpha('gemm'):.2f} attention {hw.alpha('attention'):.2f} "
        f"elementwise {hw.alpha('elementwise'):.2f}, fit rms log error {fit['rms_log_error']:.3f} "
        f"over {len(record['measurements'])} points"
    )
    emit(summary, args.json, text)
    return 0


def _load_base(name: str):
    """A calibration's spec (without runtime factors) and its measurement record."""
    hw = replace(get_hardware(name), runtime_factors={}, action_overhead_s={})
    path = calibration_path(name.lower()) if name.lower() in shipped_calibrations() else name
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    if "fit" not in raw or "measurements" not in raw:
        raise BadInput(f"--base {name}: not a calibration written by dip profile (no fit and measurements)")
    return hw, {"measurements": raw["measurements"], "fit": raw["fit"]}


def _with_runtime_factors(hw, record: dict, out: str, models: list[str], steps: int):
    """Measure runtime factors and action overheads against the block fit (written to ``out`` first)."""
    from dip.bench.calibration import measure_runtime_factors  # torch (several seconds to load)

    hw.save(out, extra=record)
    factors, overhead, report = measure_runtime_factors(out, models, steps)
    return replace(hw, runtime_factors=factors, action_overhead_s=overhead), {**record, "runtime_calibration": report}
