"""Tensor x pipeline x data-parallel training in one process group (one process per rank).

Global rank ``g = (dp_index * pp + pp_rank) * tp + tp_rank`` on the run's device mesh
(:mod:`dip.runtime.parallel`, :mod:`dip.runtime.parallel_state`). The model comes from ``load``
(built-in presets here; the layer above passes its loader of checkpoints and factories) and, with
``cfg.data``, its dataset from ``open_data``. Every rank builds the run's
:class:`~dip.runtime.batches.BatchStream` (the deterministic, sharded data order). Every optimizer
step runs ``grad_accum`` passes; for each pass:

1. global rank 0 obtains the pass's plan (one per replica) from its planner (inline, or the planner
   service that planned it ahead, :mod:`dip.runtime.planner_service`) and publishes it; every other rank
   receives it through the :class:`~dip.runtime.plan_delivery.PlanChannel` and checks its pass number
   and batch fingerprint against its own stream; shapes may change every pass;
2. every rank loads the dataset tensors its chunks consume for its replica's batch through a
   ``DataLoader`` with workers (:mod:`dip.runtime.dataload`; the next pass's are loaded while this one
   runs);
3. every rank lowers its replica's plan, validates the plan and the program, and runs its part with
   the :class:`~dip.runtime.executor.Executor` (loss weighted by the tokens of the step's whole global
   batch, every pass together);

then the copies of tied parameters sum their gradients (:mod:`dip.runtime.ties`), gradients are summed
over the data-parallel group of the rank's pipeline position and TP rank (all-reduce, or FSDP's
reduce-scatter), clipped to the global norm (:mod:`dip.runtime.optim`), AdamW steps (on ZeRO-1 shards
when ``dp > 1``) and the LR schedule advances; with ``check_reference`` rank 0
compares loss, gradients and parameters with a single-process reference
(:mod:`dip.runtime.reference_check`).

Around the steps: a checkpoint every ``checkpoint_every`` steps and at the end
(:mod:`dip.runtime.checkpoint`, ``torch.distributed.checkpoint``), resumption from the latest one
(``resume``, or by itself after torchrun restarted the worker group), a graceful stop on SIGTERM /
SIGINT (the current step finishes, a checkpoint is written, exit 0), injected faults
(:mod:`dip.runtime.faults`), per-step metrics and progress lines (:mod:`dip.runtime.metrics`). With
``save_hf`` the trained parameters are gathered on rank 0 and written by the provider's saver.

Gloo on CPU, NCCL on CUDA, chosen by the device (:func:`choose_backend`). When more ranks than GPUs
share a node (e.g. 2 ranks on one GPU, where NCCL refuses to run), gloo moves the messages through host
memory (``comm_device`` = CPU) while the compute stays on the GPU.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from dip.errors import BadInput
from dip.runtime import planning
from dip.runtime.activations import activation_report
from dip.runtime.affinity import bind_local_rank
from dip.runtime.batches import BatchStream, StreamStart
from dip.runtime.checkpoint import (
    Checkpointer,
    apply_train_state,
    check_resume,
    latest_checkpoint,
    optimizer_states,
    read_meta,
    train_state,
)
from dip.runtime.comm import timed_collective
from dip.runtime.coordinator import Coordinator
from dip.runtime.dataload import StepDataLoader, chunk_data_keys
from dip.runtime.faults import Faults, StopRequest, elastic_restart_count, parse_faults
from dip.runtime.loading import DataOpener, ModelLoader, load_builtin, no_data, open_model
from dip.runtime.metrics import MetricsLog, peak_memory_bytes
from dip.runtime.optim import OptimizerConfig, clip_gradients, make_optimizer, make_scheduler
from dip.runtime.parallel import Layout
from dip.runtime.parallel_state import ParallelOptions, ParallelState
from dip.runtime.plan_delivery import PlanChannel, check_work
from dip.runtime.reference_check import tied_copies
from dip.runtime.saving import save_trained
from dip.runtime.step import StepRunner, gather_actions, layout_of
from dip.runtime.ties import TiedGradients

__all__ = ["BACKENDS", "MIXED_PRECISION", "TrainConfig", "choose_backend", "finish", "init_distributed", "train"]

logger = logging.getLogger(__name__)

MIXED_PRECISION = ("none", "bf16")


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
    online_calibration: bool = True  # correct the cost model with measured action times
    timeline: bool = False  # return every rank's measured action times (benchmarks)
    threads: int | None = None
    bind_cores: str = "auto"  # auto, on or off (dip.runtime.affinity)
    data: str | None = None  # a dataset file or folder (real samples); None: the generated workload
    strict: bool = False  # a bad sample is an error naming file and line (default: skipped and counted)
    context_length: int | None = None  # pack micro-batches up to this many tokens (default: the model's)
    data_workers: int = 2  # DataLoader processes per rank
    save_hf: str | None = None  # write the trained weights as a checkpoint folder here
    # planning
    async_planner: bool = False  # plan ahead in the planner service's processes
    planner_workers: int | None = None  # None: half of the cores left after the node's ranks (at least 1)
    plan_deadline_s: float = 0.02  # the longest a pass waits for its searched plan (not with deterministic)
    plan_ahead: int | None = None  # passes planned ahead (None: max(2, workers + 1))
    plan_budget_s: float | None = None  # search seconds per pass (None: half of workers x step time)
    deterministic: bool = False  # fixed rollout budget, no deadline: a resumed run replans exactly
    # checkpoints and faults
    checkpoint_dir: str | None = None
    checkpoint_every: int | None = None  # None: only at the end of the run (and on SIGTERM / SIGINT)
    keep_last: int = 0  # 0: keep every checkpoint
    resume: bool = False  # continue from the latest checkpoint in checkpoint_dir
    inject_fault: list[str] = field(default_factory=list)
    # optimizer
    lr: float = 1e-3
    min_lr: float | None = None  # None: lr (constant after the warm-up)
    warmup_steps: int = 0
    weight_decay: float = 0.01
    grad_clip: float | None = None  # max global gradient norm (None: no clipping)
    grad_accum: int = 1  # passes (plans) per optimizer step
    mixed_precision: str = "none"  # bf16: bfloat16 compute under autocast, float32 weights and optimizer
    metrics: str | None = None  # append one JSON object per step to this file
    # tensor and sharded data parallelism
    tp: int = 1  # tensor-parallel ranks per stage (with sequence parallelism), dip.runtime.parallel
    fsdp: bool = False  # shard parameters, gradients and optimizer state over dp (FSDP2); default ZeRO-1
    fsdp_reshard_after_forward: bool = False  # FSDP: free gathered parameters after every forward

    def optimizer_config(self) -> OptimizerConfig:
        return OptimizerConfig(
            lr=self.lr,
            weight_decay=self.weight_decay,
            warmup_steps=self.warmup_steps,
            min_lr=self.min_lr,
            total_steps=self.steps,
            grad_clip=self.grad_clip or None,
        )


@dataclass
class Runtime:
    """Process-level state of one rank."""

    rank: int
    world: int
    pp: int
    dp: int
    device: torch.device
    comm_device: torch.device | None = None  # where collectives and messages live (CPU under gloo)
    dp_group: Any = None
    runner: StepRunner | None = None
    optimizer: Any = None
    scheduler: Any = None  # the LR schedule (made with the optimizer)
    ties: TiedGradients | None = None  # tied parameters' gradient sums (made at the first plan)
    feed: StepDataLoader | None = None  # the rank's data loader (real datasets)
    chunk_layout: list | None = None  # every pipeline rank's chunk parts (the first plan's placement)
    tp: int = 1
    par: ParallelState | None = None  # the (dp, pp, tp) device mesh and what runs on it

    @property
    def layout(self) -> Layout:
        return Layout(self.rank, self.tp, self.pp, self.dp)

    @property
    def pp_rank(self) -> int:
        return self.layout.pp_rank

    @property
    def dp_index(self) -> int:
        return self.layout.dp_index

    def global_rank(self, pp_rank: int) -> int:
        return self.layout.global_rank(pp_rank)


def step_seed(seed: int, step: int) -> int:
    return seed * 1_000_003 + step


BACKENDS = ("gloo", "nccl")


def choose_backend(cuda_devices: int, local_world: int, requested: str | None = None) -> str:
    """``nccl`` when every local rank has its own GPU, ``gloo`` otherwise (CPU, or ranks sharing a
    GPU); ``requested`` (environment ``DIP_BACKEND``) overrides."""
    if requested:
        key = requested.strip().lower()
        if key not in BACKENDS:
            raise BadInput(f"DIP_BACKEND must be one of {', '.join(BACKENDS)}, got {requested!r}")
        if key == "nccl" and cuda_devices == 0:
            raise BadInput("DIP_BACKEND=nccl needs a CUDA device; this machine has none (use gloo)")
        return key
    return "nccl" if 0 < local_world <= cuda_devices else "gloo"


def init_distributed(timeout_s: float) -> tuple[int, int, torch.device]:
    """Join the env:// process group; the device is GPU ``LOCAL_RANK mod #GPUs`` when CUDA is there,
    else the CPU; the backend comes from :func:`choose_backend`."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    backend = choose_backend(gpus, local_world, os.environ.get("DIP_BACKEND"))
    if gpus:
        device = torch.device("cuda", local_rank % gpus)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=max(timeout_s, 60.0))
        store = attempt_store(timeout)
        rendezvous = {"store": store} if store is not None else {"init_method": "env://"}
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=timeout, **rendezvous)
    return rank, world, device


def attempt_store(timeout: datetime.timedelta) -> dist.Store | None:
    """Under torchrun's agent store, the store of this attempt of the worker group: the agent keeps one
    store across restarts, so a restarted group could read the previous attempt's connection keys
    (pytorch/pytorch#135712); a prefix per restart keeps the attempts apart. ``None`` elsewhere (env://)."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != str(True):
        return None
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    agent = dist.TCPStore(host, port, int(os.environ["WORLD_SIZE"]), is_master=False, timeout=timeout)
    return dist.PrefixStore(f"dip/attempt_{elastic_restart_count()}/", agent)


def comm_device_for(device: torch.device, backend: str) -> torch.device:
    """Where messages and collectives live: the device itself, except CPU for gloo (host staging)."""
    return torch.device("cpu") if backend == "gloo" else device


def sync_gradients(rt: Runtime, timeout_s: float) -> None:
    """Fill missing gradients with zeros, sum tensor-parallel partial ones and reduce them over the
    data-parallel group (all-reduce, or FSDP's reduce-scatter)."""
    rt.par.sync_gradients(rt.runner, timeout_s)


def _gather(obj: Any, rt: Runtime) -> list[Any] | None:
    out = [None] * rt.world if rt.rank == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def train(cfg: TrainConfig, *, load: ModelLoader = load_builtin, open_data: DataOpener = no_data) -> dict | None:
    """Run steps ``resumed step .. cfg.steps - 1`` on this rank (``RANK``/``WORLD_SIZE`` from the
    environment); rank 0 returns the report, the other ranks ``None``.

    Args:
        cfg: the run's options.
        load: turns ``cfg.model`` into a model provider (``spec, *, seed, dtype, device``); the default
            knows the built-in presets and spec files, ``dip train`` passes ``dip.integrations.load_model``
            (checkpoint folders, factories).
        open_data: opens ``cfg.data`` for the provider (``provider, path, *, strict``).

    Returns:
        Rank 0's report (``steps[]`` with ``loss``, ``samples``, ``images``, times, plan statistics;
        ``fallback_steps``, ``resumed_from_step``, ``skipped_samples``; the reference errors with
        ``check_reference``), ``None`` on the other ranks.
    """
    stop = StopRequest().install()
    try:
        return _train(cfg, load, open_data, stop)
    finally:
        stop.restore()


def _train(cfg: TrainConfig, load: ModelLoader, open_data: DataOpener, stop: StopRequest) -> dict | None:
    local_rank = int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    all_cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    cores = bind_local_rank(
        cfg.bind_cores,
        local_rank,
        local_world,
        uses_gpu=torch.cuda.is_available(),
        external_launcher=not os.environ.get("DIP_WORKER"),
    )
    rank, world, device = init_distributed(cfg.timeout_s)
    if cfg.threads or cores:
        torch.set_num_threads(len(cores) if cores else cfg.threads)
    faults = parse_faults(cfg.inject_fault, world)

    def open_provider() -> tuple[Any, Any]:
        return open_model(
            cfg.model,
            load=load,
            open_data=open_data,
            seed=cfg.seed,
            dtype=cfg.dtype,
            device=device,
            data=cfg.data,
            strict=cfg.strict,
            context_length=cfg.context_length,
        )

    provider, dataset = open_provider()
    rt = _runtime(cfg, provider, rank, world, device)
    model = provider.spec
    resume = _resume_point(cfg, model.name, rt.pp)
    first_step = resume[0] if resume else 0
    start = StreamStart(first_step * cfg.grad_accum, resume[2]["data"]["microbatches"] if resume else 0)
    stream = BatchStream(
        model,
        dp=rt.dp,
        microbatches=cfg.microbatches,
        seed=cfg.seed,
        workload=cfg.workload,
        documents=dataset.documents() if dataset is not None else None,
        start=start,
    )
    if dataset is not None and hasattr(dataset, "prime"):
        rt.feed = StepDataLoader(dataset, workers=cfg.data_workers, timeout_s=cfg.timeout_s)
    channel = PlanChannel.create(rank, cfg.timeout_s)
    coord = None
    if rank == 0:
        coord = Coordinator(
            cfg,
            model,
            device,
            stream=stream,
            channel=channel,
            passes=range(first_step * cfg.grad_accum, cfg.steps * cfg.grad_accum),
            reference=lambda: open_provider()[0],
            faults=faults,
            cores=all_cores,
            local_ranks=local_world,
            optimizer=cfg.optimizer_config(),
        )
    ckpt = Checkpointer(cfg.checkpoint_dir, rank=rank, keep_last=cfg.keep_last, timeout_s=cfg.timeout_s)
    loop = _Loop(cfg, rt, provider, coord, stream, channel, faults, stop, ckpt if cfg.checkpoint_dir else None)
    loop.pending_resume = resume
    metrics = MetricsLog(cfg.metrics, cfg.steps) if rank == 0 else None
    try:
        if coord is not None:
            coord.start()
        if loop.ckpt is not None:
            loop.ckpt.prepare()
        loop.run(first_step, metrics)
        if cfg.save_hf:
            _save_checkpoint(cfg.save_hf, rt, provider)
    finally:
        if rt.feed is not None:
            rt.feed.close()
        if coord is not None:
            coord.close()
        if metrics is not None:
            metrics.close()
    mine = {}
    if dataset is not None:  # what this rank read: through the data loader, and directly (not prefetched)
        mine = {"loader": rt.feed.summary() if rt.feed else {}, "direct": dict(getattr(dataset, "direct_loads", {}))}
    loads = _gather(mine, rt)
    if not coord:
        return None
    out = coord.result(world, rt.pp, rt.dp)
    out.update(loop.summary())
    out.update(rt.par.report())
    out["bind_cores"] = cfg.bind_cores
    out["rank0_cores"] = sorted(os.sched_getaffinity(0)) if cores else None  # read back: what the OS applies
    out.update({"device": device.type, "backend": dist.get_backend(), "hardware": cfg.hardware})
    out.update(_data_report(cfg, dataset, loads))
    return out


def _resume_point(cfg: TrainConfig, model_name: str, pp: int) -> tuple[int, str, dict] | None:
    """``(step, path, meta)`` of the checkpoint this run continues from: the latest in
    ``checkpoint_dir`` with ``resume``, or after torchrun restarted the worker group; ``None`` for a new run."""
    if not cfg.checkpoint_dir or not (cfg.resume or elastic_restart_count() > 0):
        return None
    found = latest_checkpoint(cfg.checkpoint_dir)
    if found is None:
        logger.warning("no complete checkpoint in %s: training from step 0", cfg.checkpoint_dir)
        return None
    step, path = found
    meta = read_meta(path)
    check_resume(meta, path, model=model_name, pp=pp)
    if cfg.check_reference:
        raise BadInput("check_reference trains its reference from the initial weights; it cannot resume a checkpoint")
    return step, path, meta


class _Loop:
    """The step loop of one rank: plans, passes, gradients, optimizer, checkpoints, stop requests."""

    def __init__(
        self,
        cfg: TrainConfig,
        rt: Runtime,
        provider,
        coord: Coordinator | None,
        stream: BatchStream,
        channel: PlanChannel,
        faults: Faults,
        stop: StopRequest,
        ckpt: Checkpointer | None,
    ):
        self.cfg, self.rt, self.provider, self.coord = cfg, rt, provider, coord
        self.stream, self.channel, self.faults, self.stop, self.ckpt = stream, channel, faults, stop, ckpt
        self.pending_resume: tuple[int, str, dict] | None = None
        self.resumed_from: int | None = None
        self.checkpoints: list[str] = []
        self.stopped_at: int | None = None
        self.saved_step: int | None = None
        self.autocast = _autocast(cfg.mixed_precision, rt.device)

    def run(self, first_step: int, metrics: MetricsLog | None) -> None:
        cfg = self.cfg
        last_end = time.perf_counter()
        step = first_step
        for step in range(first_step, cfg.steps):
            self.faults.exit_if_due(self.rt.rank, step)
            row = self.step(step)
            if row is None:  # stopped by a signal before this step
                self.stopped_at = step
                break
            now = time.perf_counter()
            if self.coord is not None:
                row["iteration_time_s"] = now - last_end
                row["tokens_per_s"] = row["tokens"] / row["iteration_time_s"] if row["iteration_time_s"] > 0 else 0.0
                self.coord.add_report(row)
                if metrics is not None:
                    metrics.step(row)
            last_end = now
            if self.ckpt is not None and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0:
                self.save(step + 1)
        else:
            step = cfg.steps
        if self.ckpt is not None and self.saved_step != step and self.rt.optimizer is not None:
            self.save(step)

    def summary(self) -> dict[str, Any]:
        return {
            "resumed_from_step": self.resumed_from,
            "checkpoints": self.checkpoints,
            "stopped_at_step": self.stopped_at,
            "stopped_by": None if self.stop.signal is None else _signal_name(self.stop.signal),
        }

    # ---- one step -------------------------------------------------------------------------------------

    def fetch(self, index: int) -> tuple[planning.StepWork, float, Any]:
        """Pass ``index``'s plan on this rank, the seconds waited for it, and (rank 0) how it was made."""
        info = None
        if self.coord is not None:
            work, info = self.coord.take(index)
            waited = info.wait_s
        else:
            work, waited = self.channel.receive(index)
        check_work(work, index, self.stream.fingerprint(index), self.rt.rank)
        return work, waited, info

    def step(self, step: int) -> dict[str, Any] | None:
        """One optimizer step on this rank (``grad_accum`` passes); rank 0 returns its report row, the
        others ``{}``; ``None`` when a stop request ended the run before the step."""
        cfg, rt, provider = self.cfg, self.rt, self.provider
        runner = rt.runner
        passes = [step * cfg.grad_accum + a for a in range(cfg.grad_accum)]
        if self.coord is not None and step >= 2:  # every rank has left the passes of two steps ago
            for index in range((step - 2) * cfg.grad_accum, (step - 1) * cfg.grad_accum):
                if index >= self.stream.start.pass_index:
                    self.channel.discard(index)
        batches = [self.stream.replicas(i) for i in passes]
        total = sum(provider.loss_tokens(mb) for bs in batches for b in bs for mb in b.microbatches)
        works, infos, results = [], [], []
        plan_wait = pipeline_s = 0.0
        runner.zero_grad()
        for a, index in enumerate(passes):
            work, waited, info = self.fetch(index)
            plan_wait += waited
            works.append(work)
            infos.append(info)
            plan, batch = work.plans[rt.dp_index], batches[a][rt.dp_index]
            prepared = runner.prepare(plan, batch)
            self._first_plan(plan)
            if rt.feed is not None:
                rt.feed.ready(chunk_data_keys(provider, runner.parts(), batch))
                following = index + 1
                if following < cfg.steps * cfg.grad_accum:
                    rt.feed.prefetch(
                        chunk_data_keys(provider, runner.parts(), self.stream.replicas(following)[rt.dp_index])
                    )
            if a == 0:
                rt.par.check_plans(work.plans, batches[a], provider.instances)
                if self._stop_requested(step):
                    return None
                rt.par.begin_step(runner)  # (FSDP: gather the stage's parameters once per step)
            t0 = time.perf_counter()
            with self.autocast:
                res = runner.run(
                    prepared,
                    step_seed=step_seed(cfg.seed, index),
                    loss_scale=1.0 / total,
                    mb_offset=rt.dp_index * cfg.microbatches,
                )
            pipeline_s += time.perf_counter() - t0
            results.append(res)
        t0 = time.perf_counter()
        params = runner.named_parameters()
        rt.ties.reduce(params, rt.pp_rank, rt.comm_device)
        sync_gradients(rt, cfg.timeout_s)  # (FSDP: the gradients are now sharded DTensors)
        params = runner.named_parameters()
        t_grads = time.perf_counter() - t0
        loss_t = torch.tensor([sum(r.loss_sum for r in results)], dtype=torch.float64, device=rt.comm_device)
        timed_collective(dist.all_reduce, "the loss all-reduce", rt.rank, cfg.timeout_s, loss_t)
        loss = float(loss_t[0]) / total
        extra: dict[str, Any] = {}
        # replica 0's first TP rank speaks for its stage (identical gradients after the all-reduce)
        mine = rt.layout.speaks
        # the gradients before clipping, compared after the timed part (the reference's step on rank 0
        # would otherwise be waited for in the gradient-norm all-reduce and counted as step time)
        grads = _gather(rt.par.full_grads(runner), rt) if cfg.check_reference else None
        t1 = time.perf_counter()
        lr = rt.scheduler.get_last_lr()[0]
        grad_norm = clip_gradients(
            params,
            cfg.grad_clip,
            skip=tied_copies(provider),
            counts=rt.par.counts_gradient,
            reduce=self._sum_over_world,
        )
        rt.optimizer.step()
        rt.scheduler.step()
        times = torch.tensor(
            [pipeline_s, t_grads + pipeline_s + time.perf_counter() - t1, plan_wait, peak_memory_bytes(rt.device)],
            dtype=torch.float64,
            device=rt.comm_device,
        )
        timed_collective(
            dist.all_reduce, "the step-time all-reduce", rt.rank, cfg.timeout_s, times, op=dist.ReduceOp.MAX
        )
        if cfg.check_reference:
            if self.coord:
                checker = self.coord.checker
                seeds = [(w.global_batch, step_seed(cfg.seed, i)) for w, i in zip(works, passes)]
                extra.update(checker.step(seeds, loss, {k: v for d in grads for k, v in d.items()}))
            got = _gather(rt.par.full_params(runner), rt)
            if self.coord:
                extra["param_rel_err"] = self.coord.checker.compare_params({k: v for d in got for k, v in d.items()})
        rows = gather_actions(results[-1] if mine else None, rt.rank, rt.world)
        if self.coord is None:
            return {}
        replica0 = [rows[rt.layout.global_rank(r, 0, 0)] for r in range(rt.pp)]
        self.coord.measured(works[-1], replica0)
        extra["activation_memory"] = activation_report(
            works[-1].plans[0], batches[-1][0], self.coord.model, self.coord.cost_model, replica0, rt.device.type
        )
        row = self.coord.step_row(step, works, infos, total)
        row.update(
            {
                "loss": loss,
                "lr": lr,
                "grad_norm": grad_norm,
                "step_time_s": float(times[1]),
                "pipeline_time_s": float(times[0]),
                "plan_wait_s": float(times[2]),
                "max_memory_bytes": int(times[3]),
                **extra,
            }
        )
        return row

    def _first_plan(self, plan) -> None:
        """At the first plan: optimizer, LR schedule, tied-gradient groups, the checkpoint to resume."""
        rt = self.rt
        if rt.optimizer is None:
            opt = self.cfg.optimizer_config()
            rt.optimizer = rt.par.make_optimizer(rt.runner, lambda params: make_optimizer(params, opt))
            rt.scheduler = make_scheduler(getattr(rt.optimizer, "inner", rt.optimizer), opt)  # (ZeRO-1: its AdamW)
        if rt.ties is None:  # once, on every rank in the same order (collective)
            layouts = {r: [p for _, parts in layout_of(plan, r) for p in parts] for r in range(rt.pp)}
            lay = rt.layout
            rt.ties = TiedGradients.create(
                self.provider,
                layouts,
                pp_rank=lay.pp_rank,
                pp=rt.pp,
                dp=rt.dp,
                dp_index=lay.dp_index,
                tp=rt.tp,
                tp_rank=lay.tp_rank,
            )
            rt.chunk_layout = [[list(p) for _, parts in layout_of(plan, r) for p in parts] for r in range(rt.pp)]
        if self.pending_resume is not None:
            step, path, meta = self.pending_resume
            self.pending_resume = None
            check_resume(meta, path, model=self.provider.spec.name, pp=rt.pp, layout=rt.chunk_layout)
            params = rt.runner.named_parameters()
            apply_train_state(path, params, optimizer_states(rt.optimizer, params), rt.scheduler, rt.rank)
            if hasattr(rt.optimizer, "refresh"):  # ZeRO-1: its main shards from the loaded parameters
                rt.optimizer.refresh()
            if self.coord is not None and self.coord.calibration is not None:
                saved = (meta.get("planner") or {}).get("calibration") or []
                self.coord.calibration.factors.update({(m, k): v for m, k, v in saved})
            self.resumed_from = step
            logger.info("rank %d resumed from %s (step %d)", rt.rank, path, step)

    def _stop_requested(self, step: int) -> bool:
        """Whether any rank got SIGTERM / SIGINT (the barrier before the step: every rank takes part)."""
        flag = torch.tensor([1.0 if self.stop.requested else 0.0], dtype=torch.float64, device=self.rt.comm_device)
        what = f"the barrier before step {step}"
        timed_collective(dist.all_reduce, what, self.rt.rank, self.cfg.timeout_s, flag, op=dist.ReduceOp.MAX)
        return bool(flag[0] > 0)

    def _sum_over_world(self, square: torch.Tensor) -> None:
        """Sum the ranks' squared gradient norms (each rank counts the gradients it alone holds,
        :meth:`~dip.runtime.parallel_state.ParallelState.counts_gradient`)."""
        if self.rt.world == 1:
            return
        t = square.to(self.rt.comm_device)
        timed_collective(dist.all_reduce, "the gradient-norm all-reduce", self.rt.rank, self.cfg.timeout_s, t)
        square.copy_(t.cpu())

    def save(self, step: int) -> None:
        """Write checkpoint ``step`` (``step`` optimizer steps done) on every rank."""
        rt, cfg = self.rt, self.cfg
        next_pass = step * cfg.grad_accum
        meta = {
            "model": self.provider.spec.name,
            "schedule": cfg.schedule,
            "pp": rt.pp,
            "dp": rt.dp,
            "tp": rt.tp,
            "fsdp": cfg.fsdp,
            "world": rt.world,
            "layout": rt.chunk_layout,
            "seed": cfg.seed,
            "microbatches": cfg.microbatches,
            "grad_accum": cfg.grad_accum,
            "deterministic": cfg.deterministic,
            "data": {"pass": next_pass, "microbatches": self.stream.consumed(next_pass)},
            "planner": {"calibration": self._calibration()},
        }
        state = train_state_of(rt)
        path = self.ckpt.save(step, state, meta)
        self.checkpoints.append(path)
        self.saved_step = step

    def _calibration(self) -> list:
        cal = self.coord.calibration if self.coord is not None else None
        return [[m, k, v] for (m, k), v in sorted(cal.factors.items())] if cal is not None else []


def train_state_of(rt: Runtime) -> dict[str, Any]:
    params = rt.runner.named_parameters()
    return train_state(params, optimizer_states(rt.optimizer, params), rt.scheduler, rt.rank)


def _autocast(mode: str, device: torch.device):
    """bfloat16 compute for ``bf16`` (parameters, gradients and AdamW stay in their own dtype)."""
    if mode == "none":
        return contextlib.nullcontext()
    if mode == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise BadInput(f"unknown mixed-precision {mode!r}; valid values: {', '.join(MIXED_PRECISION)}")


def _signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def _runtime(cfg: TrainConfig, provider, rank: int, world: int, device: torch.device) -> Runtime:
    """This rank's state: parallel sizes (the provider's spec gets them), data-parallel groups, step runner."""
    pp, dp = planning.check_parallel(provider.spec, world, cfg.pp, cfg.dp, cfg.tp)
    provider.spec = planning.with_parallel(provider.spec, pp, dp, cfg.tp)
    rt = Runtime(rank, world, pp, dp, device, comm_device_for(device, dist.get_backend()), tp=cfg.tp)
    options = ParallelOptions(cfg.tp, cfg.fsdp, cfg.fsdp_reshard_after_forward)
    rt.par = ParallelState(rt.layout, device, options, rt.comm_device)  # the device mesh (collective)
    rt.dp_group = rt.par.dp_group
    rt.runner = StepRunner(
        rt.pp_rank,
        rt.par.wrap(provider),
        backend=dist.get_backend(),
        rank_map=rt.global_rank,
        timeout_s=cfg.timeout_s,
        device=device,
        comm_device=rt.comm_device,
        counts_loss=rt.layout.tp_rank == 0,
        measure_activations=True,
    )
    return rt


def _data_report(cfg: TrainConfig, dataset, loads: list | None) -> dict[str, Any]:
    """The report's data fields: skipped samples, and with a dataset what it held and every rank loaded."""
    out: dict[str, Any] = {"skipped_samples": dataset.skipped.total if dataset is not None else 0}
    if dataset is not None:
        out["data"] = {
            "path": cfg.data,
            "samples": len(dataset),
            "skipped_by_kind": dict(dataset.skipped.by_kind),
            "skipped_examples": list(dataset.skipped.examples),
            "loaded_per_rank": loads,
        }
    if cfg.save_hf:
        out["saved_checkpoint"] = cfg.save_hf
    return out


def _save_checkpoint(out: str, rt: Runtime, provider) -> None:
    """Gather replica 0's parameters (canonical names) on rank 0 and write them with the provider's saver."""
    got = _gather(rt.par.full_params(rt.runner), rt)
    if rt.rank == 0:
        save_trained(provider, out, {k: v for d in got for k, v in d.items()})


def finish(timeout_s: float) -> None:
    """Final barrier, so no rank leaves while another still communicates."""
    if dist.is_initialized():
        timed_collective(dist.barrier, "the final barrier", dist.get_rank(), timeout_s)
