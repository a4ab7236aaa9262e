"""``dip bench runtime``: the executor measured side by side in one run, on 2 processes (gloo, CPU).

(a) Our executor against ``torch.distributed.pipelining``'s ``Schedule1F1B`` (public API:
    ``PipelineStage`` with static shapes, ``Schedule1F1B``) on the same static-shape model (a stack of
    tiny decoder blocks, :mod:`dip.bench.static_stack`), the same 1F1B plan and the same parameters;
    each round times both engines back to back, plus our executor a second time (the order rotates);
    ``torch_step_time_ratio`` = ours / torch of each engine's fastest-quartile step time, the least
    disturbed by other work on the machine (target <= 1.00); ``..._median_of_rounds`` is the median of
    the per-round ratios. ``executor_self_ratio`` (second run of ours / first, same estimators) is the
    measurement's noise floor: a difference to torch smaller than its distance from 1 is noise.
    ``executor_main_thread_cpu_ms`` / ``torch_main_thread_cpu_ms`` and ``..._preemptions_per_step``:
    per step, the CPU time and involuntary context switches of each rank's main thread (medians over
    rounds, mean over ranks; Linux), which separate work an engine does from time it loses to waiting;
    ``executor_process_cpu_ms`` / ``torch_process_cpu_ms``: the same for the whole process (every
    thread), the fair measure of work: with receives posted early our sends are written by the main
    thread, while torch's mostly wait for the receiver and are written by gloo's I/O thread.
    Before every timed step Python's garbage is collected (outside the timing): the executor pauses
    the cyclic GC during a step, which would otherwise push its collections into torch's next step.
    ``executor_overhead_ms_per_action`` / ``torch_overhead_ms_per_action``: what each engine adds per
    compute action to a plain forward/backward loop over the same blocks (one process, one stage, a
    tiny stack so that the engines' own work dominates; median of alternating runs).
(b) DIP against 1F1B on ``tiny-vlm`` with batches that change every step, float32: every step runs
    both schedules' plans of that step's batch back to back (:mod:`dip.bench.compare`), so both see
    the same machine load; ``dip_speedup_vs_1f1b`` = median over steps (after an untimed warm-up step,
    step 0 dropped: it has no calibration yet)
    of 1F1B / DIP pipeline time, and the simulator's accuracy on those runs,
    ``sim_accuracy = mean(1 - |predicted - measured| / measured)`` of the pipeline times. Predictions
    use the CPU calibration corrected online by earlier steps' measured action times
    (:mod:`dip.runtime.calibrate`); ``sim_accuracy_shipped_calibration`` is the same measure with the
    shipped calibration alone, and ``calibration_factors`` (measured / shipped per module and pass)
    say how far off the shipped calibration is.

Pipelines only overlap when the ranks get their own cores: ``effective_cores_start`` / ``_end``
(2 x one busy process alone / two at once) say how many cores the 2 ranks actually had; with 1, a
balanced schedule such as DIP cannot gain from overlapping and pays for its finer granularity.
"""

from __future__ import annotations

import gc
import resource
import statistics
import time
from dataclasses import asdict
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.pipelining import PipelineStage, Schedule1F1B

from dip.bench.compare import compare_schedules
from dip.bench.static_stack import MODULE, StackShape, TorchStage, stack_batch, stack_inputs, stack_model, stack_plan
from dip.errors import positive_int
from dip.io import emit
from dip.runtime.comm import timed_collective
from dip.runtime.spawn import spawn
from dip.runtime.step import StepRunner

__all__ = ["dip_vs_1f1b", "effective_cores", "engine_overheads", "executor_vs_torch", "run"]


# --------------------------------------------------------------------------- (a) executor vs torch


def _engines_rank(rank: int, world: int, shape_fields: dict, repeats: int, timeout_s: float) -> dict:
    dist.init_process_group("gloo", init_method="env://")
    shape = StackShape(**shape_fields)
    model = stack_model(shape)
    plan = stack_plan(shape, world)
    batch = stack_batch(shape)
    total = sum(model.loss_tokens(mb) for mb in batch.microbatches)
    ours = StepRunner(rank, model, timeout_s=timeout_s)
    prepared = ours.prepare(plan, batch)
    (chunk,) = plan.graph.rank_chunks(rank)
    part = chunk.parts[0]
    torch_module = TorchStage(model.build_chunk(MODULE, part.layer_start, part.layer_end))
    x, y = stack_inputs(model, shape, step_seed=1)
    example = x[:1]
    received = example.clone().requires_grad_(rank > 0)  # activations from the previous stage need gradients
    stage = PipelineStage(
        torch_module,
        rank,
        world,
        torch.device("cpu"),
        input_args=(received,),
        output_args=(example,),
        output_grads=(example,),
        input_grads=(None,) if rank == 0 else (example,),
    )
    sched = Schedule1F1B(
        stage, shape.microbatches, loss_fn=lambda out, tgt: (out - tgt).pow(2).sum() / total, scale_grads=False
    )
    our_params = ours.parameters()
    torch_params = list(torch_module.parameters())

    def run_ours() -> None:
        ours.run(prepared, step_seed=1, loss_scale=1.0 / total)

    def run_torch() -> None:
        if rank == 0:
            sched.step(x)
        elif rank == world - 1:
            sched.step(target=y, losses=[])
        else:
            sched.step()

    def timed(fn, params, threads: list) -> float:
        for p in params:
            p.grad = None
        gc.collect()  # each engine starts clean and pays only for its own garbage (ours pauses GC in a step)
        timed_collective(dist.barrier, "the benchmark barrier", rank, timeout_s)
        c0, p0 = _thread_counters(), time.process_time()
        t0 = time.perf_counter()
        fn()
        t = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
        c1, p1 = _thread_counters(), time.process_time()
        if c0 is not None and c1 is not None:
            threads.append((c1[0] - c0[0], c1[1] - c0[1], p1 - p0))
        else:
            threads.append((None, None, p1 - p0))
        timed_collective(dist.all_reduce, "the benchmark all-reduce", rank, timeout_s, t, op=dist.ReduceOp.MAX)
        return float(t[0])

    engines = [
        ("ours", run_ours, our_params),
        ("torch", run_torch, torch_params),
        ("ours_again", run_ours, our_params),
    ]  # a second run of ours: the measurement's noise floor
    times: dict[str, list[float]] = {name: [] for name, _, _ in engines}
    threads: dict[str, list[tuple[float | None, int | None, float]]] = {name: [] for name, _, _ in engines}
    for i in range(repeats + 2):
        for name, fn, params in engines[i % 3 :] + engines[: i % 3]:
            t = timed(fn, params, threads[name] if i >= 2 else [])
            if i >= 2:  # two warm-up rounds
                times[name].append(t)
    same = all(torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6) for a, b in zip(our_params, torch_params))
    dist.destroy_process_group()
    return {"times": times, "threads": threads, "same_gradients": bool(same)}


def _thread_counters() -> tuple[float, int] | None:
    """CPU seconds and involuntary context switches (preemptions) of the calling thread so far, where
    the operating system reports them per thread (Linux), else ``None``."""
    try:
        use = resource.getrusage(resource.RUSAGE_THREAD)
    except (AttributeError, OSError):  # RUSAGE_THREAD is Linux-only
        return None
    return use.ru_utime + use.ru_stime, use.ru_nivcsw


def _thread_summary(per_rank: list[dict], name: str) -> dict[str, float | None]:
    """Per step, medians over rounds averaged over ranks: the main thread's CPU milliseconds and
    preemptions (``None`` where the system has no per-thread counters) and the whole process's CPU
    milliseconds (every thread: the main thread, gloo's I/O threads, intra-op threads)."""
    rows = [r["threads"][name] for r in per_rank if r["threads"][name]]

    def per_step(column: int, scale: float) -> float | None:
        got = [[x[column] for x in r] for r in rows]
        if not got or any(v is None for r in got for v in r):
            return None
        return statistics.mean(statistics.median(r) for r in got) * scale

    return {"cpu_ms": per_step(0, 1e3), "preemptions": per_step(1, 1.0), "process_cpu_ms": per_step(2, 1e3)}


def executor_vs_torch(repeats: int, shape=None, timeout_s: float = 120.0) -> dict[str, Any]:
    """Part (a): median step times of both engines and their ratio."""

    shape = shape or StackShape()
    got = spawn(_engines_rank, 2, asdict(shape), repeats, timeout_s, timeout_s=20 * timeout_s)
    bad = [v for ok, v in got if not ok]
    if bad:
        raise RuntimeError(f"executor benchmark failed: {bad[0]}")
    res = got[0][1]
    t_ours, t_torch, t_again = res["times"]["ours"], res["times"]["torch"], res["times"]["ours_again"]
    ranks = [v for _, v in got]
    ours_threads, torch_threads = _thread_summary(ranks, "ours"), _thread_summary(ranks, "torch")
    # the fastest quartile of each engine: its own speed, least disturbed by other work on the machine
    ours, theirs = _quartile(t_ours), _quartile(t_torch)
    return {
        "torch_step_time_ratio": ours / theirs,
        "executor_step_s": ours,
        "torch_pipelining_step_s": theirs,
        "torch_step_time_ratio_median_of_rounds": statistics.median(a / b for a, b in zip(t_ours, t_torch)),
        "executor_self_ratio": _quartile(t_again) / ours,
        "executor_self_ratio_median_of_rounds": statistics.median(a / b for a, b in zip(t_again, t_ours)),
        "executor_main_thread_cpu_ms": ours_threads["cpu_ms"],
        "torch_main_thread_cpu_ms": torch_threads["cpu_ms"],
        "executor_process_cpu_ms": ours_threads["process_cpu_ms"],
        "torch_process_cpu_ms": torch_threads["process_cpu_ms"],
        "executor_preemptions_per_step": ours_threads["preemptions"],
        "torch_preemptions_per_step": torch_threads["preemptions"],
        "same_gradients": res["same_gradients"] and got[1][1]["same_gradients"],
        "static_model": asdict(shape),
        "repeats": repeats,
    }


def _quartile(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=4)[0] if len(xs) >= 4 else min(xs)


def _overhead_rank(rank: int, world: int, repeats: int) -> dict[str, float]:
    dist.init_process_group("gloo", init_method="env://")
    shape = StackShape(layers=2, hidden=8, heads=2, tokens=4, microbatches=8)
    model, plan, batch = stack_model(shape), stack_plan(shape, 1), stack_batch(shape)
    total = sum(model.loss_tokens(mb) for mb in batch.microbatches)
    runner = StepRunner(0, model)
    prepared = runner.prepare(plan, batch)
    torch_module = TorchStage(model.build_chunk(MODULE, 0, shape.layers))
    x, y = stack_inputs(model, shape, step_seed=1)
    stage = PipelineStage(torch_module, 0, 1, torch.device("cpu"), input_args=(x[:1],), output_args=(x[:1],))
    sched = Schedule1F1B(
        stage, shape.microbatches, loss_fn=lambda out, tgt: (out - tgt).pow(2).sum() / total, scale_grads=False
    )
    xs, ys = x.split(1), y.split(1)

    def plain() -> None:
        for xk, yk in zip(xs, ys):
            torch.autograd.backward([(torch_module(xk) - yk).pow(2).sum() / total])

    def ours() -> None:
        runner.run(prepared, step_seed=1, loss_scale=1.0 / total)

    def theirs() -> None:
        sched.step(x, target=y, losses=[])

    engines = {"plain": plain, "ours": ours, "torch": theirs}
    times: dict[str, list[float]] = {k: [] for k in engines}
    for i in range(repeats + 2):
        names = list(engines)[i % 3 :] + list(engines)[: i % 3]
        for name in names:
            gc.collect()
            t0 = time.perf_counter()
            engines[name]()
            if i >= 2:
                times[name].append(time.perf_counter() - t0)
    dist.destroy_process_group()
    med = {k: statistics.median(v) for k, v in times.items()}
    actions = 2 * shape.microbatches
    return {
        "executor_overhead_ms_per_action": 1e3 * (med["ours"] - med["plain"]) / actions,
        "torch_overhead_ms_per_action": 1e3 * (med["torch"] - med["plain"]) / actions,
    }


def engine_overheads(repeats: int = 200) -> dict[str, float]:
    """Milliseconds each engine adds per compute action to a plain forward/backward loop over the same
    blocks: one process, one stage, a tiny static stack (so the engine's own work dominates)."""

    ((ok, got),) = spawn(_overhead_rank, 1, repeats, timeout_s=600)
    if not ok:
        raise RuntimeError(f"engine overhead benchmark failed: {got}")
    return got


def _busy_loop() -> float:
    torch.set_num_threads(1)
    a = torch.randn(256, 256)
    t0 = time.perf_counter()
    for _ in range(400):
        a = torch.tanh(a @ a)
    return time.perf_counter() - t0


def _busy_rank(rank: int, world: int) -> float:
    return _busy_loop()


def effective_cores() -> float:
    """How many cores two ranks really get: 2 x (one process alone) / (two processes at once)."""

    alone = min(_busy_loop() for _ in range(2))
    both = max(v for ok, v in spawn(_busy_rank, 2, timeout_s=120) if ok)
    return 2.0 * alone / both


# --------------------------------------------------------------------------- (b) DIP vs 1F1B


def dip_vs_1f1b(model: str, steps: int, seed: int, repeats: int = 5) -> dict[str, Any]:
    """Part (b): DIP and 1F1B step by step on the same batches (:mod:`dip.bench.compare`)."""

    res = compare_schedules(model, ["dip", "1f1b"], steps, seed=seed, repeats=repeats)
    dip, base = res["dip"], res["1f1b"]
    pairs = list(zip(base["measured"], dip["measured"]))[1:]  # step 0 has no calibration yet
    accuracy: dict[str, list[float]] = {}
    shipped: list[float] = []
    for name, r in res.items():
        for meas, pred, plain in list(zip(r["measured"], r["predicted"], r["shipped"]))[1:]:
            if pred is not None:
                accuracy.setdefault(name, []).append(1.0 - abs(pred - meas) / meas)
            if plain is not None:
                shipped.append(1.0 - abs(plain - meas) / meas)
    all_acc = [a for v in accuracy.values() for a in v]
    return {
        "dip_speedup_vs_1f1b": statistics.median(b / d for b, d in pairs),
        "dip_step_s": statistics.median(d for _, d in pairs),
        "one_f_one_b_step_s": statistics.median(b for b, _ in pairs),
        "sim_accuracy": statistics.mean(all_acc) if all_acc else None,
        "sim_accuracy_by_schedule": {k: statistics.mean(v) for k, v in accuracy.items()},
        "sim_accuracy_shipped_calibration": statistics.mean(shipped) if shipped else None,
        "calibration_factors": {k: r["calibration_factors"] for k, r in res.items()},
        "measured_s": {k: r["measured"] for k, r in res.items()},
        "predicted_s": {k: r["predicted"] for k, r in res.items()},
        "model": model,
        "steps": steps,
    }


def run(args) -> int:
    positive_int("repeats", args.repeats)
    positive_int("steps", args.steps, minimum=2)
    t0 = time.perf_counter()
    out: dict[str, Any] = {"effective_cores_start": effective_cores()}
    out.update(executor_vs_torch(args.repeats))
    out.update(engine_overheads())
    out.update(dip_vs_1f1b(args.model, args.steps, args.seed))
    out["effective_cores_end"] = effective_cores()
    out["nproc"] = 2
    out["wall_s"] = time.perf_counter() - t0
    text = (
        f"executor / torch Schedule1F1B step time: {out['torch_step_time_ratio']:.3f} "
        f"({out['executor_step_s'] * 1e3:.1f} ms vs {out['torch_pipelining_step_s'] * 1e3:.1f} ms; "
        f"noise floor, ours / ours: {out['executor_self_ratio']:.3f})\n"
        f"DIP speedup over 1F1B on {args.model}: {out['dip_speedup_vs_1f1b']:.3f} "
        f"({out['dip_step_s']:.3f} s vs {out['one_f_one_b_step_s']:.3f} s)\n"
        f"simulator accuracy: {out['sim_accuracy']}"
    )
    emit(out, args.json, text=text)
    return 0
