"""``dip train``: pipelined (x data-parallel) training of a model on local processes or under torchrun."""

from __future__ import annotations

import math
import os
import sys

from dip.errors import BadInput, choices_error, positive_int
from dip.io import check_writable, emit
from dip.runtime.affinity import BIND_MODES

DTYPES = ("float32", "float64")
MIXED_PRECISION = ("none", "bf16")
WORKLOADS = ("default", "dynamic")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train with a pipeline schedule on N processes (gloo on CPU, NCCL on GPU)",
        description="Train MODEL with a per-step plan of SCHEDULE on N local processes (or the processes torchrun "
        "started). MODEL is a preset, a spec file, a factory or a transformers / diffusers checkpoint folder; "
        "checkpoints train on --data (packed from its metadata, each rank loading only what its chunks consume). "
        "Every step's batch has new shapes; --check-reference compares loss, gradients and parameters with "
        "single-process training of the same batches; --save-hf writes the trained checkpoint.",
    )
    p.add_argument(
        "--model",
        required=True,
        help="preset name (tiny-vlm, tiny-t2v, ...), a model YAML/JSON file, a factory path/to/file.py:function or "
        "package.module:function returning a model, or a transformers / diffusers checkpoint folder",
    )
    p.add_argument(
        "--data",
        default=None,
        metavar="FILE_OR_DIR",
        help="dataset to train on: LLaVA-style JSONL, WebDataset shards or captions+latents JSONL (required by "
        "checkpoint models; default for the others: the model's generated workload)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="a bad sample (missing or corrupt image, too long, malformed line) is an error naming file and line "
        "(default: skipped and counted)",
    )
    p.add_argument(
        "--context-length",
        type=int,
        default=None,
        help="pack micro-batches up to this many tokens (default and maximum: the model's context length)",
    )
    p.add_argument("--data-workers", type=int, default=2, help="DataLoader worker processes per rank (default 2)")
    p.add_argument(
        "--save-hf",
        default=None,
        metavar="DIR",
        help="write the trained weights as a checkpoint folder that transformers / diffusers from_pretrained loads",
    )
    p.add_argument(
        "--nproc",
        type=int,
        default=None,
        help="processes (default: WORLD_SIZE under torchrun, else tp x pp x dp, else 2)",
    )
    p.add_argument(
        "--tp",
        type=int,
        default=None,
        help="tensor-parallel ranks per pipeline stage, with sequence parallelism (default 1; must divide every "
        "module's attention and key/value heads)",
    )
    p.add_argument("--pp", type=int, default=None, help="pipeline ranks (default: nproc / (tp x dp))")
    p.add_argument("--dp", type=int, default=None, help="data-parallel replicas (default: nproc / (tp x pp))")
    p.add_argument(
        "--fsdp",
        action="store_true",
        help="shard parameters, gradients and optimizer state over the dp replicas with FSDP2 (default: gradient "
        "all-reduce with the optimizer state sharded over dp, ZeRO-1)",
    )
    p.add_argument(
        "--fsdp-reshard-after-forward",
        action="store_true",
        help="with --fsdp, free the gathered parameters after every forward and gather them again for the "
        "backward (needs every replica to run the same action sequence; default: gathered once per step)",
    )
    p.add_argument(
        "--schedule", default="dip", help="dip, gpipe, 1f1b, interleaved, zb-h1, megatron, nnscaler, optimus"
    )
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--microbatches", type=int, default=8, help="micro-batches per replica per step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--dtype",
        choices=DTYPES,
        default=None,
        help="parameter and activation dtype (default float32; float64 with --check-reference)",
    )
    p.add_argument(
        "--check-reference",
        action="store_true",
        help="also train the same batches in one process and report the largest differences",
    )
    p.add_argument("--trace", default=None, metavar="FILE", help="write a Perfetto trace of the last step")
    p.add_argument("--timeout-s", type=float, default=120.0, help="timeout of every wait (seconds)")
    p.add_argument(
        "--hardware",
        dest="train_hardware",
        default="auto",
        help="the hardware the planner's cost model assumes: a preset, a shipped calibration or a calibration JSON "
        "from dip profile (default auto: the shipped cpu calibration, or h100 on a CUDA device)",
    )
    p.add_argument(
        "--static-costs",
        action="store_true",
        help="plan and predict with the shipped calibration only (no online correction)",
    )
    p.add_argument(
        "--bind-cores",
        choices=BIND_MODES,
        default="auto",
        help="bind each local rank to its own CPU cores: auto (when dip train starts the ranks, every "
        "rank gets a core and no GPU is used), on, off (default auto)",
    )
    p.add_argument(
        "--workload",
        choices=WORKLOADS,
        default="default",
        help="generated data: the model's workload mixture, or dynamic (VLM: image counts that rise and fall over "
        "the steps, the paper's Fig. 8b)",
    )
    _planning_args(p)
    _checkpoint_args(p)
    _optimizer_args(p)
    p.add_argument("--metrics", default=None, metavar="FILE", help="append one JSON object per step to FILE (JSONL)")
    p.add_argument(
        "--inject-fault",
        action="append",
        default=[],
        metavar="SPEC",
        help="fault injection for tests and chaos runs: planner-crash:STEP (the planner process kills itself before "
        "planning STEP), planner-hang:STEP, rank-exit:RANK:STEP (that rank exits abruptly at STEP; under torchrun "
        "only in the first attempt); repeatable",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def _planning_args(p) -> None:
    g = p.add_argument_group("planning ahead")
    g.add_argument(
        "--async-planner",
        action="store_true",
        help="plan the coming steps in separate low-priority CPU processes while the current step trains "
        "(default: rank 0 plans each step when it starts)",
    )
    g.add_argument(
        "--planner-workers",
        type=int,
        default=None,
        help="planner processes (default: half of the cores left after the ranks, at least 1)",
    )
    g.add_argument(
        "--plan-deadline-s",
        type=float,
        default=0.02,
        help="the longest a step waits for its searched plan; past it, it runs the best plan found so far, or a "
        "fallback without search (default 0.02; no deadline with --deterministic)",
    )
    g.add_argument("--plan-ahead", type=int, default=None, help="steps planned ahead (default: workers + 1, >= 2)")
    g.add_argument(
        "--plan-budget-s",
        type=float,
        default=None,
        help="search seconds per step (default: half of workers x the measured step time, at most 2)",
    )
    g.add_argument(
        "--deterministic",
        action="store_true",
        help="fixed rollout budget and seeds, no deadline: the same plans every run, so a resumed run's "
        "losses are bit-identical to an uninterrupted run's",
    )


def _checkpoint_args(p) -> None:
    g = p.add_argument_group("checkpoints")
    g.add_argument(
        "--checkpoint-dir",
        default=None,
        metavar="DIR",
        help="write checkpoints (torch.distributed.checkpoint, every rank its own shards) as DIR/step-N, each "
        "visible once complete; also written at the end and on SIGTERM / SIGINT",
    )
    g.add_argument("--checkpoint-every", type=int, default=None, metavar="N", help="write a checkpoint every N steps")
    g.add_argument("--keep-last", type=int, default=0, metavar="K", help="keep the newest K checkpoints (0: all)")
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue from the latest checkpoint in --checkpoint-dir (under torchrun a restarted worker group "
        "resumes by itself)",
    )


def _optimizer_args(p) -> None:
    g = p.add_argument_group("optimizer")
    g.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of AdamW (default 1e-3)")
    g.add_argument(
        "--min-lr",
        type=float,
        default=None,
        help="learning rate at the last step, reached by cosine decay (default: --lr)",
    )
    g.add_argument("--warmup-steps", type=int, default=0, help="linear warm-up steps (default 0)")
    g.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (default 0.01)")
    g.add_argument(
        "--grad-clip",
        type=float,
        default=None,
        help="clip gradients to this global L2 norm, over every pipeline and data-parallel rank (default: no clipping)",
    )
    g.add_argument(
        "--grad-accum",
        type=int,
        default=1,
        help="pipeline passes per optimizer step, each with its own batch of --microbatches per replica and its "
        "own plan (default 1)",
    )
    g.add_argument(
        "--mixed-precision",
        choices=MIXED_PRECISION,
        default="none",
        help="bf16: bfloat16 compute under autocast with float32 weights, gradients and optimizer state "
        "(accelerators; default none)",
    )


def _under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and not os.environ.get("DIP_WORKER")


def build_config(args):
    """The run's ``TrainConfig``; every bad input (model, data, sizes, output folders) is a ``BadInput``
    raised here, before any rank starts."""
    # torch, transformers / diffusers (integrations) and the numba-compiled planner (seconds to load):
    # imported only when training
    from dip.integrations import load_model, open_data
    from dip.planner import check_schedule
    from dip.runtime import planning
    from dip.runtime.loading import open_model
    from dip.runtime.parallel import check_tensor_parallel
    from dip.runtime.saving import check_save_target
    from dip.runtime.trainer import TrainConfig

    if args.seed < 0:
        raise BadInput(f"seed must be an integer >= 0, got {args.seed}")
    if args.context_length is not None:
        positive_int("context-length", args.context_length)
    if args.data_workers < 0:
        raise BadInput(f"data-workers must be an integer >= 0, got {args.data_workers}")
    dtype = args.dtype or ("float64" if args.check_reference else "float32")
    provider, dataset = open_model(
        args.model,
        load=load_model,
        open_data=open_data,
        seed=args.seed,
        dtype=dtype,
        data=args.data,
        strict=args.strict,
        context_length=args.context_length,
    )
    model = provider.spec
    if args.save_hf:
        check_save_target(provider, args.save_hf)
    torchrun = _under_torchrun()
    world = int(os.environ["WORLD_SIZE"]) if torchrun else None
    nproc = args.nproc
    tp = positive_int("tp", args.tp) if args.tp is not None else 1
    if nproc is None:
        nproc = world or (tp * (args.pp or 1) * (args.dp or 1) if (args.pp or args.dp or tp > 1) else 2)
    positive_int("nproc", nproc)
    if world is not None and nproc != world:
        raise BadInput(f"nproc {nproc} differs from torchrun's WORLD_SIZE {world}")
    check_tensor_parallel(provider, tp)
    pp, dp = planning.check_parallel(model, nproc, args.pp, args.dp, tp)
    if args.fsdp_reshard_after_forward and not args.fsdp:
        raise BadInput("--fsdp-reshard-after-forward needs --fsdp")
    check_schedule(args.schedule, planning.with_parallel(model, pp, dp, tp))
    positive_int("steps", args.steps)
    positive_int("microbatches", args.microbatches)
    if dataset is not None:
        planning.dataset_step_batches(model, dataset.documents(), 1, 1, 1, args.seed)  # packs: samples fit
    _number("timeout-s", args.timeout_s, above=0)
    hardware = train_hardware(args.train_hardware)
    if args.trace:
        check_writable(args.trace, "trace file")
    _check_loop_args(args, dtype, pp, model.name, nproc)
    return TrainConfig(
        model=args.model,
        schedule=args.schedule.strip().lower(),
        steps=args.steps,
        nproc=nproc,
        pp=pp,
        dp=dp,
        microbatches=args.microbatches,
        seed=args.seed,
        dtype=dtype,
        check_reference=args.check_reference,
        trace=args.trace,
        timeout_s=args.timeout_s,
        online_calibration=not args.static_costs,
        hardware=hardware,
        bind_cores=args.bind_cores,
        data=args.data,
        strict=args.strict,
        context_length=args.context_length,
        data_workers=args.data_workers,
        save_hf=args.save_hf,
        workload=args.workload,
        async_planner=args.async_planner,
        planner_workers=args.planner_workers,
        plan_deadline_s=args.plan_deadline_s,
        plan_ahead=args.plan_ahead,
        plan_budget_s=args.plan_budget_s,
        deterministic=args.deterministic,
        checkpoint_dir=args.checkpoint_dir,
        checkpoint_every=args.checkpoint_every,
        keep_last=args.keep_last,
        resume=args.resume,
        inject_fault=list(args.inject_fault),
        lr=args.lr,
        min_lr=args.min_lr,
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        grad_clip=args.grad_clip,
        grad_accum=args.grad_accum,
        mixed_precision=args.mixed_precision,
        metrics=args.metrics,
        tp=tp,
        fsdp=args.fsdp,
        fsdp_reshard_after_forward=args.fsdp_reshard_after_forward,
    )


def train_hardware(name: str) -> str:
    """The planner's hardware for ``--hardware``: ``auto`` is the shipped ``cpu`` calibration, or ``h100``
    (profiled on an H100) when a CUDA device trains; anything else must name known hardware."""
    import torch  # the CUDA query: only when training

    from dip.spec.hardware import get_hardware

    key = (name or "auto").strip()
    if key.lower() == "auto":
        return "h100" if torch.cuda.is_available() else "cpu"
    get_hardware(key)  # BadInput listing the known names
    return key


def _number(field: str, value: float | None, *, above: float | None = None, at_least: float | None = None) -> None:
    if value is None:
        return
    if (
        not math.isfinite(value)
        or (above is not None and value <= above)
        or (at_least is not None and value < at_least)
    ):
        bound = f"> {above:g}" if above is not None else f">= {at_least:g}"
        raise BadInput(f"{field} must be a finite number {bound}, got {value}")


def _check_loop_args(args, dtype: str, pp: int, model_name: str, nproc: int) -> None:
    """The planning, checkpoint, optimizer and fault options (BadInput before any rank starts)."""
    # torch (the checkpoint reader) and the trainer's modules: imported only when training
    from dip.runtime.checkpoint import check_resume, latest_checkpoint, read_meta
    from dip.runtime.faults import parse_faults

    if args.workload == "dynamic" and args.data:
        raise BadInput("workload dynamic is a generated workload; it cannot be combined with --data")
    if args.planner_workers is not None:
        positive_int("planner-workers", args.planner_workers)
    if args.plan_ahead is not None:
        positive_int("plan-ahead", args.plan_ahead)
    _number("plan-deadline-s", args.plan_deadline_s, at_least=0)
    _number("plan-budget-s", args.plan_budget_s, above=0)
    if args.checkpoint_every is not None:
        positive_int("checkpoint-every", args.checkpoint_every)
    if args.keep_last < 0:
        raise BadInput(f"keep-last must be an integer >= 0, got {args.keep_last}")
    if (args.checkpoint_every is not None or args.resume or args.keep_last) and not args.checkpoint_dir:
        given = "--resume" if args.resume else ("--checkpoint-every" if args.checkpoint_every else "--keep-last")
        raise BadInput(f"{given} needs --checkpoint-dir DIR")
    if args.resume and args.check_reference:
        raise BadInput("--check-reference trains its reference from the initial weights; it cannot follow --resume")
    if args.checkpoint_dir:
        _check_checkpoint_dir(args.checkpoint_dir)
        found = latest_checkpoint(args.checkpoint_dir) if args.resume else None
        if found is not None:
            check_resume(read_meta(found[1]), found[1], model=model_name, pp=pp)
    parse_faults(args.inject_fault, nproc)
    _number("lr", args.lr, above=0)
    _number("min-lr", args.min_lr, at_least=0)
    if args.min_lr is not None and args.min_lr > args.lr:
        raise BadInput(f"min-lr must be <= lr ({args.lr:g}), got {args.min_lr:g}")
    if args.warmup_steps < 0:
        raise BadInput(f"warmup-steps must be an integer >= 0, got {args.warmup_steps}")
    _number("weight-decay", args.weight_decay, at_least=0)
    _number("grad-clip", args.grad_clip, above=0)
    positive_int("grad-accum", args.grad_accum)
    if args.mixed_precision not in MIXED_PRECISION:
        raise choices_error("mixed-precision", args.mixed_precision, MIXED_PRECISION)
    if args.mixed_precision == "bf16" and dtype != "float32":
        raise BadInput(f"mixed-precision bf16 keeps float32 weights: it needs --dtype float32, not {dtype}")
    if args.metrics:
        check_writable(args.metrics, "metrics file")


def _check_checkpoint_dir(path: str) -> None:
    if os.path.exists(path) and not os.path.isdir(path):
        raise BadInput(f"checkpoint-dir {path!r} is a file; give a folder")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(path) and not os.path.isdir(parent):
        raise BadInput(f"checkpoint-dir {path!r}: its parent folder {parent!r} does not exist")
    target = path if os.path.isdir(path) else parent
    if not os.access(target, os.W_OK | os.X_OK):
        raise BadInput(f"checkpoint-dir {path!r}: folder {target!r} is not writable")


def run(args) -> int:
    # torch and transformers / diffusers (seconds to load): see build_config
    from dip.integrations.launch import train_any, worker_command
    from dip.runtime.launch import RankFailed, launch
    from dip.runtime.trainer import finish

    cfg = build_config(args)
    if _under_torchrun():
        out = train_any(cfg)
        if out is not None:
            emit(out, args.json, text=summary(out))
        finish(cfg.timeout_s)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # skip process-group teardown (see dip.runtime.launch)
    try:
        out = launch(cfg, worker=worker_command())
    except RankFailed as exc:
        sys.stderr.write(f"dip train: error: {exc}\n")
        return 1
    emit(out, args.json, text=summary(out))
    return 0


def summary(out: dict) -> str:
    lines = [
        f"{out['model']} {out['schedule']}: {out['nproc']} processes (tp {out.get('tp', 1)} x pp {out['pp']} x dp "
        f"{out['dp']}{', fsdp' if out.get('fsdp') else ''}), {out['dtype']}"
    ]
    if out.get("resumed_from_step") is not None:
        lines.append(f"resumed from the checkpoint of step {out['resumed_from_step']}")
    lines.append(
        f"{'step':>4} {'loss':>10} {'time s':>8} {'pred s':>8} {'wait s':>7} {'plan':>11} {'tokens':>8} "
        f"{'samples':>8} {'images':>7}"
    )
    for s in out["steps"]:
        pred = s.get("predicted_step_time_s")
        lines.append(
            f"{s['step']:>4} {s['loss']:>10.5f} {s['step_time_s']:>8.3f} "
            f"{(f'{pred:.3f}' if pred is not None else '-'):>8} {s['plan_wait_s']:>7.3f} {s['plan_source']:>11} "
            f"{s['tokens']:>8} {s['samples']:>8} {s['images']:>7}"
        )
    planner = out.get("planner") or {}
    lines.append(
        f"plans: {out['fallback_steps']} fallback, {out['late_steps']} late of {len(out['steps'])} steps "
        f"({planner.get('mode', 'inline')} planner, {planner.get('restarts', 0)} restarts)"
    )
    if out.get("checkpoints"):
        lines.append(f"checkpoints: {', '.join(out['checkpoints'])}")
    if out.get("stopped_by"):
        lines.append(f"stopped by {out['stopped_by']} before step {out['stopped_at_step']}")
    if out.get("data"):
        d = out["data"]
        lines.append(
            f"data {d['path']}: {d['samples']} samples, {out['skipped_samples']} skipped {d['skipped_by_kind']}"
        )
    if out.get("saved_checkpoint"):
        lines.append(f"trained checkpoint written to {out['saved_checkpoint']}")
    if "max_grad_rel_err" in out:
        lines.append(
            f"reference: max grad rel err {out['max_grad_rel_err']:.3g}, max loss abs err "
            f"{out['max_loss_abs_err']:.3g}, max param rel err {out['max_param_rel_err']:.3g}"
        )
    return "\n".join(lines)
