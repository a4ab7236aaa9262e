"""``dip bench runtime``: the executor measured side by side in one run, on 2 processes (gloo, CPU).

(a) Our executor against ``torch.distributed.pipelining``'s ``Schedule1F1B`` (public API:
    ``PipelineStage`` with static shapes, ``Schedule1F1B``) on the same static-shape model (a stack of
    tiny decoder blocks, :mod:`dip.runtime.static_stack`), the same 1F1B plan and the same parameters;
    each round times both engines back to back (alternating which goes first):
    ``torch_step_time_ratio`` = median over rounds of ours / torch (target <= 1.00).
    ``executor_overhead_ms_per_action``: one rank running a tiny stack through the executor versus a
    plain forward/backward loop over the same chunk.
(b) DIP against 1F1B on ``tiny-vlm`` with batches that change every step (``dip train`` machinery,
    float32, the first step of every run dropped as warm-up): ``dip_speedup_vs_1f1b = 1F1B / DIP``
    pipeline time, and the simulator's accuracy on those runs,
    ``sim_accuracy = mean(1 - |predicted - measured| / measured)`` of the pipeline times. Predictions
    use the CPU calibration corrected online by earlier steps' measured action times
    (:mod:`dip.runtime.calibrate`); ``sim_accuracy_shipped_calibration`` is the same measure with the
    shipped calibration alone, and ``calibration_factors`` (measured / shipped per module and pass)
    say how far off the shipped calibration is.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict
from typing import Any

from dip.cli.common import emit, positive_int

ROUNDS = 2


def register(subparsers) -> None:
    p = subparsers.add_parser("runtime", help="executor vs torch pipelining; DIP vs 1F1B measured; simulator accuracy",
                              description="Measure the runtime on 2 local processes (see dip.bench.runtime).")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--repeats", type=int, default=40, help="timed steps per engine in part (a) (default 40)")
    p.add_argument("--steps", type=int, default=4, help="steps per training run in part (b) (default 4)")
    p.add_argument("--rounds", type=int, default=ROUNDS, help="alternating DIP / 1F1B runs in part (b) (default 2)")
    p.add_argument("--model", default="tiny-vlm", help="model of part (b) (default tiny-vlm)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


# --------------------------------------------------------------------------- (a) executor vs torch

def _engines_rank(rank: int, world: int, shape_fields: dict, repeats: int, timeout_s: float) -> dict:
    import torch
    import torch.distributed as dist
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B

    from dip.runtime.comm import timed_collective
    from dip.runtime.executor import Executor, lower
    from dip.runtime.stage import StageChunk
    from dip.runtime.static_stack import (MODULE, StackShape, TorchStage, stack_batch, stack_inputs, stack_model,
                                          stack_plan)

    dist.init_process_group("gloo", init_method="env://")
    shape = StackShape(**shape_fields)
    model = stack_model(shape)
    plan = stack_plan(shape, world)
    program = lower(plan, "gloo")
    batch = stack_batch(shape)
    total = sum(model.loss_tokens(mb) for mb in batch.microbatches)
    stages = {c.id: StageChunk(c, model) for c in plan.graph.rank_chunks(rank)}
    ours = Executor(rank, model, stages, timeout_s=timeout_s)
    (chunk,) = plan.graph.rank_chunks(rank)
    part = chunk.parts[0]
    torch_module = TorchStage(model.build_chunk(MODULE, part.layer_start, part.layer_end))
    x, y = stack_inputs(model, shape, step_seed=1)
    example = x[:1]
    received = example.clone().requires_grad_(rank > 0)  # activations from the previous stage need gradients
    stage = PipelineStage(torch_module, rank, world, torch.device("cpu"), input_args=(received,),
                          output_args=(example,), output_grads=(example,),
                          input_grads=(None,) if rank == 0 else (example,))
    sched = Schedule1F1B(stage, shape.microbatches, loss_fn=lambda out, tgt: (out - tgt).pow(2).sum() / total,
                         scale_grads=False)
    our_params = [p for s in stages.values() for p in s.params]
    torch_params = list(torch_module.parameters())

    def run_ours() -> None:
        ours.run_step(plan, program, batch, step_seed=1, loss_scale=1.0 / total)

    def run_torch() -> None:
        if rank == 0:
            sched.step(x)
        elif rank == world - 1:
            sched.step(target=y, losses=[])
        else:
            sched.step()

    def timed(fn, params) -> float:
        for p in params:
            p.grad = None
        timed_collective(dist.barrier, "the benchmark barrier", rank, timeout_s)
        t0 = time.perf_counter()
        fn()
        t = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
        timed_collective(dist.all_reduce, "the benchmark all-reduce", rank, timeout_s, t, op=dist.ReduceOp.MAX)
        return float(t[0])

    times: dict[str, list[float]] = {"ours": [], "torch": []}
    for i in range(repeats + 2):
        pairs = [("ours", run_ours, our_params), ("torch", run_torch, torch_params)]
        for name, fn, params in (pairs if i % 2 == 0 else pairs[::-1]):
            t = timed(fn, params)
            if i >= 2:  # two warm-up rounds
                times[name].append(t)
    same = all(torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6) for a, b in zip(our_params, torch_params))
    dist.destroy_process_group()
    return {"times": times, "same_gradients": bool(same)}


def executor_vs_torch(repeats: int, shape=None, timeout_s: float = 120.0) -> dict[str, Any]:
    """Part (a): median step times of both engines and their ratio."""
    from dip.runtime.launch import spawn
    from dip.runtime.static_stack import StackShape

    shape = shape or StackShape()
    got = spawn(_engines_rank, 2, asdict(shape), repeats, timeout_s, timeout_s=20 * timeout_s)
    bad = [v for ok, v in got if not ok]
    if bad:
        raise RuntimeError(f"executor benchmark failed: {bad[0]}")
    res = got[0][1]
    t_ours, t_torch = res["times"]["ours"], res["times"]["torch"]
    ours, theirs = statistics.median(t_ours), statistics.median(t_torch)
    # each round times both engines back to back: the median of the per-round ratios cancels load drift
    ratio = statistics.median(a / b for a, b in zip(t_ours, t_torch))
    return {"torch_step_time_ratio": ratio, "executor_step_s": ours, "torch_pipelining_step_s": theirs,
            "same_gradients": res["same_gradients"] and got[1][1]["same_gradients"],
            "static_model": asdict(shape), "repeats": repeats}


def executor_overhead(repeats: int = 100) -> float:
    """Milliseconds the executor adds per compute action on one rank (tiny static stack, no comm)."""
    import torch

    from dip.runtime.executor import Executor, lower
    from dip.runtime.stage import StageChunk
    from dip.runtime.static_stack import MODULE, StackShape, stack_batch, stack_model, stack_plan

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        shape = StackShape(layers=2, hidden=8, heads=2, tokens=4, microbatches=8)
        model, plan = stack_model(shape), stack_plan(shape, 1)
        program, batch = lower(plan), stack_batch(shape)
        total = sum(model.loss_tokens(mb) for mb in batch.microbatches)
        ex = Executor(0, model, {c.id: StageChunk(c, model) for c in plan.graph.rank_chunks(0)})
        chunk = model.build_chunk(MODULE, 0, shape.layers)
        data = [model.unit_data(mb, k, MODULE, 0, 0, 1) for k, mb in enumerate(batch.microbatches)]

        def plain() -> None:
            for d in data:
                loss = chunk({}, d)["loss_sum"]
                torch.autograd.backward([loss], [torch.full_like(loss, 1.0 / total)])

        def ours() -> None:
            ex.run_step(plan, program, batch, step_seed=1, loss_scale=1.0 / total)

        times: dict = {plain: [], ours: []}
        for i in range(repeats):
            for fn in (plain, ours) if i % 2 else (ours, plain):
                t0 = time.perf_counter()
                fn()
                times[fn].append(time.perf_counter() - t0)
        actions = 2 * shape.microbatches
        return 1e3 * (statistics.median(times[ours]) - statistics.median(times[plain])) / actions
    finally:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------- (b) DIP vs 1F1B

def dip_vs_1f1b(model: str, steps: int, rounds: int, seed: int) -> dict[str, Any]:
    """Part (b): alternating DIP / 1F1B trainings on 2 processes; speedup and simulator accuracy."""
    from dip.runtime.launch import launch_many
    from dip.runtime.trainer import TrainConfig

    cfgs = [TrainConfig(model=model, schedule=sched, steps=steps, nproc=2, pp=2, dp=1, seed=seed, dtype="float32")
            for _ in range(rounds) for sched in ("dip", "1f1b")]
    outs = launch_many(cfgs)
    measured: dict[str, list[float]] = {"dip": [], "1f1b": []}
    accuracy: dict[str, list[float]] = {"dip": [], "1f1b": []}
    shipped: list[float] = []
    factors: dict[str, dict] = {}
    for out in outs:
        sched = out["schedule"]
        factors[sched] = out.get("calibration_factors", {})
        for s in out["steps"][1:]:  # the first step warms up (and has no measurement to calibrate from)
            meas = s["pipeline_time_s"]
            measured[sched].append(meas)
            for pred, acc in ((s["predicted_pipeline_time_s"], accuracy[sched]),
                              (s.get("predicted_pipeline_time_shipped_calibration_s"), shipped)):
                if pred is not None:
                    acc.append(1.0 - abs(pred - meas) / meas)
    dip_s, base_s = statistics.mean(measured["dip"]), statistics.mean(measured["1f1b"])
    all_acc = accuracy["dip"] + accuracy["1f1b"]
    return {
        "dip_speedup_vs_1f1b": base_s / dip_s,
        "dip_step_s": dip_s, "one_f_one_b_step_s": base_s,
        "sim_accuracy": statistics.mean(all_acc) if all_acc else None,
        "sim_accuracy_by_schedule": {k: statistics.mean(v) for k, v in accuracy.items() if v},
        "sim_accuracy_shipped_calibration": statistics.mean(shipped) if shipped else None,
        "calibration_factors": factors,
        "model": model, "steps_per_run": steps, "rounds": rounds,
    }


def run(args) -> int:
    positive_int("repeats", args.repeats)
    positive_int("steps", args.steps, minimum=2)
    positive_int("rounds", args.rounds)
    t0 = time.perf_counter()
    out: dict[str, Any] = {}
    out.update(executor_vs_torch(args.repeats))
    out["executor_overhead_ms_per_action"] = executor_overhead()
    out.update(dip_vs_1f1b(args.model, args.steps, args.rounds, args.seed))
    out["nproc"] = 2
    out["wall_s"] = time.perf_counter() - t0
    text = (f"executor / torch Schedule1F1B step time: {out['torch_step_time_ratio']:.3f} "
            f"({out['executor_step_s'] * 1e3:.1f} ms vs {out['torch_pipelining_step_s'] * 1e3:.1f} ms)\n"
            f"DIP speedup over 1F1B on {args.model}: {out['dip_speedup_vs_1f1b']:.3f} "
            f"({out['dip_step_s']:.3f} s vs {out['one_f_one_b_step_s']:.3f} s)\n"
            f"simulator accuracy: {out['sim_accuracy']}")
    emit(out, args.json, text=text)
    return 0
