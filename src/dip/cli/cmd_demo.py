"""``dip demo``: the five-minute tour on embedded defaults.

Runs, and prints before each, the commands a user would type: plan one VLM-S batch with DIP and
compare it with every baseline, draw the DIP plan and Megatron's as Gantt charts (+ Perfetto traces),
then train the tiny VLM on 2 processes with the DIP runtime and check it against plain training.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys

from dip.errors import BadInput, positive_int
from dip.io import check_writable
from dip.spec.presets import get_model


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the default demo (plan, draw, train a tiny model)",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("--out", default="out/demo", help="folder for the charts and traces (default: out/demo)")
    p.add_argument("--model", default="VLM-S", help="model to plan for (default: VLM-S)")
    p.add_argument("--budget", type=float, default=2.0, help="planner search budget per batch in seconds (default: 2)")
    p.add_argument("--steps", type=int, default=3, help="training steps of the tiny model (default: 3)")
    p.add_argument("--skip-train", action="store_true", help="only plan and draw; do not start training processes")
    p.set_defaults(func=run)


def _dip(*args: str) -> dict:
    cmd = [sys.executable, "-m", "dip.cli.main", *args, "--json"]
    print("$ dip " + " ".join(shlex.quote(a) for a in args), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(proc.returncode)
    return json.loads(proc.stdout)


def run(args) -> int:
    # every option is checked before anything is created (a bad option leaves no folder behind)
    get_model(args.model)
    if not (math.isfinite(args.budget) and args.budget > 0):
        raise BadInput(f"--budget must be a finite number of seconds > 0, got {args.budget}")
    positive_int("--steps", args.steps)
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise BadInput(f"--out {args.out!r} is a file; give a folder")
    parent = os.path.dirname(os.path.abspath(args.out))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    check_writable(os.path.join(parent, "x"), "--out")
    os.makedirs(args.out, exist_ok=True)
    out = args.out
    plan = _dip(
        "plan",
        "--model",
        args.model,
        "--batches",
        "1",
        "--seed",
        "0",
        "--budget",
        str(args.budget),
        "--gantt",
        f"{out}/dip.png",
        "--trace",
        f"{out}/dip-trace.json",
    )
    mean = plan["mean"]
    dip_t = mean["dip_time_s"]
    print(f"\n{args.model}: one global batch of {plan.get('microbatches', 64)} micro-batches")
    print(f"  {'schedule':<12} {'iteration (s)':>14} {'DIP speedup':>12}")
    print(f"  {'dip':<12} {dip_t:>14.3f} {'':>12}   (lower bound {mean['lower_bound_s']:.3f} s)")
    fitting = {name: t for name, t in mean["baselines"].items() if t is not None}
    for name, t in sorted(fitting.items(), key=lambda kv: kv[1]):
        print(f"  {name:<12} {t:>14.3f} {t / dip_t:>11.2f}x")
    for name in sorted(set(mean["baselines"]) - set(fitting)):  # over the usable memory: no time
        print(f"  {name:<12} {'OOM':>14} {'':>12}")
    _dip(
        "simulate",
        "--model",
        args.model,
        "--schedule",
        "megatron",
        "--batches",
        "1",
        "--seed",
        "0",
        "--gantt",
        f"{out}/megatron.png",
        "--trace",
        f"{out}/megatron-trace.json",
    )
    print(
        f"\nGantt charts: {out}/dip.png and {out}/megatron.png; Perfetto traces (ui.perfetto.dev): {out}/*-trace.json"
    )
    if args.skip_train:
        return 0
    train = _dip(
        "train",
        "--model",
        "tiny-vlm",
        "--nproc",
        "2",
        "--schedule",
        "dip",
        "--steps",
        str(args.steps),
        "--check-reference",
        "--trace",
        f"{out}/train-trace.json",
    )
    print("\ntiny-vlm on 2 processes, a new DIP plan every step:")
    for s in train["steps"]:
        print(
            f"  step {s.get('step', '?')}: loss {s['loss']:.5f}  measured {s['step_time_s']:.3f} s  "
            f"predicted {s['predicted_step_time_s']:.3f} s  tokens {s['tokens']}"
        )
    print(
        f"  vs plain single-process training: max loss error {train['max_loss_abs_err']:.2e}, "
        f"max relative gradient error {train['max_grad_rel_err']:.2e}"
    )
    return 0
