"""Pipeline x data-parallel training in one process group (one process per rank).

Global rank ``g = dp_index * pp + pp_rank``. Every step:

1. global rank 0 builds the step's global batch (one slice per data-parallel replica) and one plan per
   replica, and broadcasts them (``broadcast_object_list``); shapes may change every step;
2. every rank lowers its replica's plan, validates the plan and the program, and runs its part with
   the :class:`~dip.runtime.executor.Executor` (loss weighted by the whole global batch's tokens);
3. gradients are all-reduced over the data-parallel group of the rank's pipeline position (one group
   per ``pp_rank``), then AdamW steps;
4. with ``check_reference``, rank 0 compares loss, gradients and parameters with a single-process
   reference (:mod:`dip.runtime.reference_check`).

Gloo on CPU, NCCL on CUDA, chosen by the device.
"""
from __future__ import annotations

import datetime
import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from dip.errors import BadInput
from dip.runtime import planning
from dip.runtime.comm import timed_collective
from dip.runtime.executor import Executor, StepResult, lower
from dip.runtime.stage import StageChunk
from dip.schedule.ir import Plan


@dataclass
class TrainConfig:
    """Options of ``dip train`` (see ``docs/runtime.md``)."""

    model: str
    schedule: str
    steps: int = 3
    nproc: int = 2
    pp: int | None = None
    dp: int | None = None
    microbatches: int = 8
    seed: int = 0
    dtype: str = "float32"
    check_reference: bool = False
    trace: str | None = None
    timeout_s: float = 120.0
    hardware: str = planning.CPU_HARDWARE
    workload: str = "default"  # or "dynamic" (VLM: rising and falling image counts)
    timeline: bool = False  # return every rank's measured action times (benchmarks)
    threads: int | None = None


@dataclass
class Runtime:
    """Process-level state of one rank."""

    rank: int
    world: int
    pp: int
    dp: int
    device: torch.device
    dp_group: Any = None
    stages: dict[tuple, StageChunk] = field(default_factory=dict)
    layout: tuple | None = None
    optimizer: Any = None

    @property
    def pp_rank(self) -> int:
        return self.rank % self.pp

    @property
    def dp_index(self) -> int:
        return self.rank // self.pp

    def global_rank(self, pp_rank: int) -> int:
        return self.dp_index * self.pp + pp_rank


def step_seed(seed: int, step: int) -> int:
    return seed * 1_000_003 + step


def tokens_of(model, batch) -> int:
    """Tokens of a global batch: decoder sequence tokens (text + merged image tokens) plus DiT tokens."""
    from dip.data.meta import lm_sequence_lens

    return int(sum(sum(lm_sequence_lens(model, mb)) + sum(mb.clip_tokens) for mb in batch.microbatches))


def init_distributed(timeout_s: float) -> tuple[int, int, torch.device]:
    """Join the env:// process group: NCCL on CUDA (device ``LOCAL_RANK``), else gloo on CPU."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank % torch.cuda.device_count())))
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=max(timeout_s, 60.0)))
    return rank, world, device


def _broadcast(obj: Any, rt: Runtime) -> Any:
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=rt.device if rt.device.type == "cuda" else None)
    return box[0]


def _plan_on_rank0(cfg: TrainConfig, model, step: int, step_batches, cost) -> tuple[Any, Any]:
    """(what to broadcast, simulations kept on rank 0). Errors travel to the other ranks as text."""
    try:
        planning.check_schedule(cfg.schedule, model)
        cm, hw = cost
        work, sims = planning.plan_step(step, cfg.schedule, model, step_batches, cm, hw, cfg.seed)
        layouts = {tuple(planning.layout_of(p, r) for r in range(model.parallel.pp)) for p in work.plans}
        if len(layouts) > 1:
            raise RuntimeError("data-parallel replicas got plans with different layer placements")
        return work, sims
    except BadInput as exc:
        return ("BadInput", str(exc)), None
    except Exception as exc:  # noqa: BLE001 - re-raised on every rank below
        return ("Error", f"{type(exc).__name__}: {exc}"), None


def _stages_for(rt: Runtime, plan: Plan, provider, step: int) -> dict[int, StageChunk]:
    """Stage chunks of this rank for ``plan`` (built at the first step, reused after)."""
    out: dict[int, StageChunk] = {}
    for c in plan.graph.rank_chunks(rt.pp_rank):
        key = tuple((p.module, p.layer_start, p.layer_end) for p in c.parts)
        stage = rt.stages.get(key)
        if stage is None:
            if step > 0:
                raise RuntimeError(f"rank {rt.rank}: the plan of step {step} places layers {key} here, which this "
                                   f"rank did not hold before (plans must keep the layer placement)")
            stage = rt.stages[key] = StageChunk(c, provider, rt.device)
        stage.chunk = c
        out[c.id] = stage
    return out


def named_params(rt: Runtime) -> dict[str, torch.nn.Parameter]:
    return {n: p for s in rt.stages.values() for n, p in s.canonical_named_parameters()}


def sync_gradients(rt: Runtime, timeout_s: float) -> None:
    """Fill missing gradients with zeros and all-reduce them over the data-parallel group."""
    params = [p for _, p in sorted(named_params(rt).items())]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if rt.dp > 1 and params:
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        timed_collective(dist.all_reduce, "the data-parallel gradient all-reduce", rt.rank, timeout_s, flat,
                         group=rt.dp_group)
        off = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[off:off + n].view_as(p))
            off += n


def _gather(obj: Any, rt: Runtime, timeout_s: float) -> list[Any] | None:
    out = [None] * rt.world if rt.rank == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def train(cfg: TrainConfig) -> dict | None:
    """Run ``cfg.steps`` steps on this rank (``RANK``/``WORLD_SIZE`` from the environment); rank 0
    returns the report, the other ranks ``None``."""
    from dip.runtime.models import SpecModel
    from dip.schedule.validate import validate_plan
    from dip.spec.presets import load_model

    rank, world, device = init_distributed(cfg.timeout_s)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    pp, dp = planning.check_parallel(load_model(cfg.model), world, cfg.pp, cfg.dp)
    model = planning.with_parallel(load_model(cfg.model), pp, dp)
    rt = Runtime(rank, world, pp, dp, device)
    for r in range(pp):  # every rank creates every group, in the same order
        g = dist.new_group([d * pp + r for d in range(dp)]) if dp > 1 else None
        if r == rt.pp_rank:
            rt.dp_group = g
    provider = SpecModel(model, cfg.seed, cfg.dtype, device)
    executor: Executor | None = None
    checker = None
    cost = batches = None
    if rank == 0:
        cost = planning.cost_setup(model, cfg.dtype, cfg.hardware)
        batches = planning.make_step_batches(model, cfg.steps, dp, cfg.microbatches, cfg.seed, cfg.workload)
        if cfg.check_reference:
            from dip.runtime.reference_check import ReferenceChecker
            checker = ReferenceChecker(model, cfg.seed, cfg.dtype)
    reports: list[dict] = []
    timelines: list[Any] = []
    predicted: list[Any] = []
    last_trace = None
    for step in range(cfg.steps):
        sims = None
        if rank == 0:
            work, sims = _plan_on_rank0(cfg, model, step, batches[step], cost)
        else:
            work = None
        work = _broadcast(work, rt)
        if isinstance(work, tuple):
            kind, msg = work
            raise BadInput(msg) if kind == "BadInput" else RuntimeError(f"planning on rank 0 failed: {msg}")
        plan, batch = work.plans[rt.dp_index], work.batches[rt.dp_index]
        validate_plan(plan)
        program = lower(plan, dist.get_backend())  # validated
        stages = _stages_for(rt, plan, provider, step)
        if executor is None:
            executor = Executor(rt.pp_rank, provider, stages, rank_map=rt.global_rank, timeout_s=cfg.timeout_s,
                                device=device)
            from dip.runtime.reference_check import make_optimizer
            rt.optimizer = make_optimizer(named_params(rt).values())
        executor.stages = stages
        global_batch = work.global_batch
        total = sum(provider.loss_tokens(mb) for mb in global_batch.microbatches)
        for p in named_params(rt).values():
            p.grad = None
        seed = step_seed(cfg.seed, step)
        timed_collective(dist.barrier, f"the barrier before step {step}", rank, cfg.timeout_s)
        t0 = time.perf_counter()
        res: StepResult = executor.run_step(plan, program, batch, step_seed=seed, loss_scale=1.0 / total,
                                            mb_offset=rt.dp_index * cfg.microbatches)
        sync_gradients(rt, cfg.timeout_s)
        t_grads = time.perf_counter() - t0
        loss_t = torch.tensor([res.loss_sum], dtype=torch.float64, device=device)
        timed_collective(dist.all_reduce, "the loss all-reduce", rank, cfg.timeout_s, loss_t)
        loss = float(loss_t[0]) / total
        report: dict[str, Any] = {}
        if cfg.check_reference:
            grads = {n: p.grad.detach().cpu() for n, p in named_params(rt).items()} if rt.dp_index == 0 else {}
            got = _gather(grads, rt, cfg.timeout_s)
            if rank == 0:
                merged = {k: v for d in got for k, v in d.items()}
                report.update(checker.step(global_batch, seed, loss, merged))
        t1 = time.perf_counter()
        rt.optimizer.step()
        t_opt = time.perf_counter() - t1
        times = torch.tensor([res.elapsed_s, t_grads + t_opt], dtype=torch.float64, device=device)
        timed_collective(dist.all_reduce, "the step-time all-reduce", rank, cfg.timeout_s, times,
                         op=dist.ReduceOp.MAX)
        if cfg.check_reference:
            params = {n: p.detach().cpu() for n, p in named_params(rt).items()} if rt.dp_index == 0 else {}
            got = _gather(params, rt, cfg.timeout_s)
            if rank == 0:
                report["param_rel_err"] = checker.compare_params({k: v for d in got for k, v in d.items()})
        if cfg.trace or cfg.timeline:
            mine = [(str(t.action), t.start, t.end) for t in res.actions] if rt.dp_index == 0 else []
            rows = _gather(mine, rt, cfg.timeout_s)
            if rank == 0:
                timelines.append(rows)
                predicted.append(_predicted_rows(work.plans[0], sims[0]) if sims else {})
                last_trace = (work.plans[0], sims[0] if sims else None, rows)
        if rank == 0:
            reports.append({
                "step": step, "loss": loss, "step_time_s": float(times[1]),
                "pipeline_time_s": float(times[0]), "predicted_step_time_s": work.predicted_s,
                "predicted_pipeline_time_s": work.predicted_makespan_s, "tokens": tokens_of(model, global_batch),
                "loss_tokens": total, "microbatches": len(global_batch.microbatches), **report,
            })
    if rank != 0:
        return None
    if cfg.trace and last_trace is not None:
        write_trace(cfg.trace, *last_trace)
    out: dict[str, Any] = {"steps": reports, "schedule": cfg.schedule, "model": model.name, "nproc": world,
                           "pp": pp, "dp": dp, "dtype": cfg.dtype, "microbatches": cfg.microbatches}
    if checker is not None:
        out.update({"max_grad_rel_err": checker.errors["grad"], "max_loss_abs_err": checker.errors["loss"],
                    "max_param_rel_err": checker.errors["param"],
                    "max_grad_allclose_ratio": checker.errors["allclose"], "worst": checker.worst})
    if cfg.timeline:
        out["timelines"] = timelines
        out["predicted_timelines"] = predicted
    return out


def _predicted_rows(plan: Plan, sim: Any) -> dict[int, list]:
    """Simulated ``(action, start, end, modules)`` per rank of one plan."""
    rows = {}
    for r, acts in sim.result.action_times().items():
        rows[r] = [(str(a), s, e, "+".join(plan.graph.chunks[a.chunk].modules)) for a, s, e in acts]
    return rows


def write_trace(path: str, plan: Plan, sim: Any, rows: list) -> None:
    """Chrome/Perfetto trace of the last step: measured compute actions next to the simulated plan."""
    from dip.schedule.ir import Action

    measured = {r: [(act, s, e) for act, s, e in ((Action.parse(a), s, e) for a, s, e in acts) if act.op.is_compute]
                for r, acts in enumerate(rows) if acts}
    try:
        from dip.viz.trace import write_chrome_trace
    except ImportError:
        write_chrome_trace = None
    if write_chrome_trace is not None and sim is not None:
        write_chrome_trace(path, plan, sim.result, sim.costs, measured=measured)
        return
    import json
    events = [{"ph": "X", "name": str(a), "pid": r, "tid": 0, "ts": s * 1e6, "dur": (e - s) * 1e6}
              for r, acts in measured.items() for a, s, e in acts]
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"traceEvents": events}, f)


def finish(timeout_s: float) -> None:
    """Final barrier, so no rank leaves while another still communicates."""
    if dist.is_initialized():
        timed_collective(dist.barrier, "the final barrier", dist.get_rank(), timeout_s)
