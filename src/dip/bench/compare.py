"""Several schedules measured side by side: the same batches, step by step, in one process group.

Every step runs each schedule's plan of that step's batch back to back, ``repeats`` times (alternating
which goes first), so all schedules see the same machine load; a step's time is its fastest run (the
least disturbed by other work on the machine); only the pipeline is timed (no optimizer). Per schedule,
rank 0 keeps an online calibration (:mod:`dip.runtime.calibrate`) fed by that schedule's measured
actions, and records each step's predicted time (corrected by earlier steps) and the prediction of the
shipped calibration alone.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed as dist

from dip.integrations import load_model, open_data
from dip.runtime import planning
from dip.runtime.calibrate import OnlineCalibration
from dip.runtime.comm import timed_collective
from dip.runtime.dataload import StepDataLoader, chunk_data_keys
from dip.runtime.executor import ActionTime
from dip.runtime.loading import open_model
from dip.runtime.spawn import spawn
from dip.runtime.step import StepRunner, gather_actions

__all__ = ["compare_rank", "compare_schedules"]


def _timed_run(
    runner: StepRunner, work, rank: int, world: int, provider, step: int, timeout_s: float, feed=None
) -> tuple[float, list[list[ActionTime]] | None]:
    """Run one plan once: (pipeline seconds of the slowest rank, every rank's actions on rank 0); a real
    dataset's tensors (``feed``) are loaded before the timed region."""
    plan, batch = work.plans[0], work.batches[0]
    prepared = runner.prepare(plan, batch)
    if feed is not None:
        feed.ready(chunk_data_keys(provider, runner.parts(), batch))
    runner.zero_grad()
    total = sum(provider.loss_tokens(mb) for mb in batch.microbatches)
    timed_collective(dist.barrier, "the comparison barrier", rank, timeout_s)
    t0 = time.perf_counter()
    res = runner.run(prepared, step_seed=step, loss_scale=1.0 / total)
    elapsed = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
    timed_collective(dist.all_reduce, "the comparison all-reduce", rank, timeout_s, elapsed, op=dist.ReduceOp.MAX)
    return float(elapsed[0]), gather_actions(res, rank, world)


def compare_rank(
    rank: int,
    world: int,
    model_name: str,
    schedules: list[str],
    steps: int,
    microbatches: int,
    seed: int,
    dtype: str,
    workload: str,
    timeout_s: float,
    repeats: int = 3,
    hardware: str = planning.CPU_HARDWARE,
    observations: bool = False,
    data: str | None = None,
) -> dict[str, Any] | None:
    """One rank of :func:`compare_schedules` (``RANK``/``WORLD_SIZE`` and env:// already set)."""
    dist.init_process_group("gloo", init_method="env://")
    provider, dataset = open_model(model_name, load=load_model, open_data=open_data, seed=seed, dtype=dtype, data=data)
    provider.spec = model = planning.with_parallel(provider.spec, world, 1)
    runners = {s: StepRunner(rank, provider, timeout_s=timeout_s, fixed_layout=False) for s in schedules}
    # the ranks are daemonic processes (no children): the dataset's tensors are loaded in-process
    feed = StepDataLoader(dataset, workers=0) if dataset is not None and hasattr(dataset, "prime") else None
    out: dict[str, dict[str, list]] = {s: {"measured": [], "predicted": [], "shipped": []} for s in schedules}
    if rank == 0:
        cm, hw = planning.cost_setup(model, dtype, hardware)
        if dataset is not None:
            batches, _ = planning.dataset_step_batches(model, dataset.documents(), steps, 1, microbatches, seed)
        else:
            batches = planning.make_step_batches(model, steps, 1, microbatches, seed, workload)
        calib = {s: OnlineCalibration(cm, keep_observations=observations) for s in schedules}
        partitions: dict[str, Any] = {}
    for step in range(-1, steps):  # step -1: an untimed warm-up on the first batch
        k = max(step, 0)
        box = [None]
        if rank == 0:
            works = {}
            for s in schedules:
                works[s], sims = planning.plan_step(
                    k, s, model, batches[k], cm, hw, seed, calib[s].cost_model(), partitions.get(s)
                )
                partitions[s] = sims[0].partition or partitions.get(s)
            box = [works]
        dist.broadcast_object_list(box, src=0)
        works = box[0]
        best: dict[str, tuple[float, list]] = {}
        for rep in range(repeats if step >= 0 else 1):
            for s in schedules if (step + rep) % 2 == 0 else schedules[::-1]:
                t, rows = _timed_run(runners[s], works[s], rank, world, provider, k, timeout_s, feed)
                if s not in best or t < best[s][0]:
                    best[s] = (t, rows)
        if rank == 0 and step >= 0:
            for s in schedules:
                t, rows = best[s]
                calib[s].update(works[s].plans[0], works[s].batches[0], rows)
                out[s]["measured"].append(t)
                out[s]["predicted"].append(works[s].predicted_makespan_s)
                out[s]["shipped"].append(works[s].predicted_static_makespan_s)
    dist.barrier()
    if rank != 0:
        return None
    for s in schedules:
        out[s]["calibration_factors"] = calib[s].summary()
        if observations:
            out[s]["observations"] = calib[s].observations
    return out


def compare_schedules(
    model: str,
    schedules: list[str],
    steps: int,
    microbatches: int = 8,
    seed: int = 0,
    dtype: str = "float32",
    workload: str = "default",
    nproc: int = 2,
    timeout_s: float = 120.0,
    repeats: int = 3,
    hardware: str = planning.CPU_HARDWARE,
    observations: bool = False,
    data: str | None = None,
) -> dict[str, Any]:
    """Run :func:`compare_rank` on ``nproc`` local processes; per schedule the measured (fastest of
    ``repeats`` runs), predicted and shipped-calibration pipeline seconds of every step, and the
    calibration factors. ``model``: anything ``dip train --model`` accepts (preset, spec file, factory,
    checkpoint folder), loaded the same way on every rank; ``data``: a dataset the steps' batches are
    packed from (required by checkpoint models; default: the model's generated workload);
    ``hardware``: the calibration the plans and predictions use; ``observations``: also every compute
    action's modelled and measured seconds (:class:`OnlineCalibration`)."""
    got = spawn(
        compare_rank,
        nproc,
        model,
        list(schedules),
        steps,
        microbatches,
        seed,
        dtype,
        workload,
        timeout_s,
        repeats,
        hardware,
        observations,
        data,
        timeout_s=timeout_s * (steps * len(schedules) * repeats + 5),
    )
    bad = [v for ok, v in got if not ok]
    if bad:
        raise RuntimeError(f"schedule comparison failed: {bad[0]}")
    return got[0][1]
