"""``dip train``: pipelined (x data-parallel) training of a model on local processes or under torchrun."""

from __future__ import annotations

import os
import sys

from dip.errors import BadInput, positive_int
from dip.io import check_writable, emit
from dip.runtime.affinity import BIND_MODES
from dip.spec.presets import load_model

DTYPES = ("float32", "float64")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train with a pipeline schedule on N processes (gloo on CPU, NCCL on GPU)",
        description="Train MODEL with a per-step plan of SCHEDULE on N local processes (or the processes torchrun "
        "started). Every step's batch has new shapes; --check-reference compares loss, gradients and "
        "parameters with single-process training of the same batches.",
    )
    p.add_argument("--model", required=True, help="preset name (tiny-vlm, tiny-t2v, ...) or a model YAML/JSON file")
    p.add_argument(
        "--nproc", type=int, default=None, help="processes (default: WORLD_SIZE under torchrun, else pp x dp, else 2)"
    )
    p.add_argument("--pp", type=int, default=None, help="pipeline ranks (default: nproc / dp)")
    p.add_argument("--dp", type=int, default=None, help="data-parallel replicas (default: nproc / pp)")
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
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def _under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and not os.environ.get("DIP_WORKER")


def build_config(args):
    # torch and the numba-compiled planner (seconds to load): imported only when training
    from dip.planner import check_schedule
    from dip.runtime import planning
    from dip.runtime.trainer import TrainConfig

    model = load_model(args.model)
    torchrun = _under_torchrun()
    world = int(os.environ["WORLD_SIZE"]) if torchrun else None
    nproc = args.nproc
    if nproc is None:
        nproc = world or ((args.pp or 1) * (args.dp or 1) if (args.pp or args.dp) else 2)
    positive_int("nproc", nproc)
    if world is not None and nproc != world:
        raise BadInput(f"nproc {nproc} differs from torchrun's WORLD_SIZE {world}")
    pp, dp = planning.check_parallel(model, nproc, args.pp, args.dp)
    check_schedule(args.schedule, planning.with_parallel(model, pp, dp))
    positive_int("steps", args.steps)
    positive_int("microbatches", args.microbatches)
    if args.seed < 0:
        raise BadInput(f"seed must be an integer >= 0, got {args.seed}")
    if not args.timeout_s > 0:
        raise BadInput(f"timeout-s must be > 0, got {args.timeout_s}")
    if args.trace:
        check_writable(args.trace, "trace file")
    return TrainConfig(
        model=args.model,
        schedule=args.schedule.strip().lower(),
        steps=args.steps,
        nproc=nproc,
        pp=pp,
        dp=dp,
        microbatches=args.microbatches,
        seed=args.seed,
        dtype=args.dtype or ("float64" if args.check_reference else "float32"),
        check_reference=args.check_reference,
        trace=args.trace,
        timeout_s=args.timeout_s,
        online_calibration=not args.static_costs,
        bind_cores=args.bind_cores,
    )


def run(args) -> int:
    from dip.runtime.launch import RankFailed, launch  # torch (seconds to load): see build_config
    from dip.runtime.trainer import finish, train

    cfg = build_config(args)
    if _under_torchrun():
        out = train(cfg)
        if out is not None:
            emit(out, args.json, text=summary(out))
        finish(cfg.timeout_s)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # skip process-group teardown (see dip.runtime.launch)
    try:
        out = launch(cfg)
    except RankFailed as exc:
        sys.stderr.write(f"dip train: error: {exc}\n")
        return 1
    emit(out, args.json, text=summary(out))
    return 0


def summary(out: dict) -> str:
    lines = [
        f"{out['model']} {out['schedule']}: {out['nproc']} processes (pp {out['pp']} x dp {out['dp']}), {out['dtype']}"
    ]
    lines.append(f"{'step':>4} {'loss':>10} {'time s':>8} {'pred s':>8} {'tokens':>8}")
    for s in out["steps"]:
        pred = s.get("predicted_step_time_s")
        lines.append(
            f"{s['step']:>4} {s['loss']:>10.5f} {s['step_time_s']:>8.3f} "
            f"{(f'{pred:.3f}' if pred is not None else '-'):>8} {s['tokens']:>8}"
        )
    if "max_grad_rel_err" in out:
        lines.append(
            f"reference: max grad rel err {out['max_grad_rel_err']:.3g}, max loss abs err "
            f"{out['max_loss_abs_err']:.3g}, max param rel err {out['max_param_rel_err']:.3g}"
        )
    return "\n".join(lines)
