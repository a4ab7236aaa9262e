"""Tensor x pipeline x data-parallel training in one process group (one process per rank).

Global rank ``g = (dp_index * pp + pp_rank) * tp + tp_rank`` on the run's device mesh
(:mod:`dip.runtime.parallel`, :mod:`dip.runtime.parallel_state`). The model comes from ``load``
(built-in presets here; the layer above passes its loader of checkpoints and factories) and, with
``cfg.data``, its dataset from ``open_data``. Every step:

1. global rank 0 builds the step's global batch (one slice per data-parallel replica: packed from the
   dataset's metadata, or drawn from the generated workload) and one plan per replica, and broadcasts
   them (``broadcast_object_list``); shapes may change every step;
2. every rank loads the dataset tensors its chunks consume for its replica's batch through a
   ``DataLoader`` with workers (:mod:`dip.runtime.dataload`; the next step's are loaded while this one
   runs);
3. every rank lowers its replica's plan, validates the plan and the program, and runs its part with
   the :class:`~dip.runtime.executor.Executor` (loss weighted by the whole global batch's tokens);
4. the copies of tied parameters sum their gradients between their holders
   (:mod:`dip.runtime.ties`), gradients are summed over the data-parallel group of the rank's
   pipeline position and TP rank (all-reduce, or FSDP's reduce-scatter), then AdamW steps (on ZeRO-1
   shards when ``dp > 1``);
5. with ``check_reference``, rank 0 compares loss, gradients and parameters with a single-process
   reference (:mod:`dip.runtime.reference_check`) built from the same model string and data.

With ``save_hf`` the trained parameters are gathered on rank 0 and written by the provider's saver.

Gloo on CPU, NCCL on CUDA, chosen by the device (:func:`choose_backend`). When more ranks than GPUs
share a node (e.g. 2 ranks on one GPU, where NCCL refuses to run), gloo moves the messages through host
memory (``comm_device`` = CPU) while the compute stays on the GPU.
"""

from __future__ import annotations

import datetime
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from dip.errors import BadInput
from dip.runtime import planning
from dip.runtime.activations import activation_report
from dip.runtime.affinity import bind_local_rank
from dip.runtime.comm import timed_collective
from dip.runtime.coordinator import Coordinator
from dip.runtime.dataload import StepDataLoader, chunk_data_keys
from dip.runtime.loading import DataOpener, ModelLoader, load_builtin, no_data, open_model
from dip.runtime.parallel import Layout
from dip.runtime.parallel_state import ParallelOptions, ParallelState
from dip.runtime.reference_check import make_optimizer
from dip.runtime.saving import save_trained
from dip.runtime.step import StepRunner, gather_actions, layout_of
from dip.runtime.ties import TiedGradients

__all__ = ["BACKENDS", "TrainConfig", "choose_backend", "finish", "init_distributed", "train"]

logger = logging.getLogger(__name__)


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
    tp: int = 1  # tensor-parallel ranks per stage (with sequence parallelism), dip.runtime.parallel
    fsdp: bool = False  # shard parameters, gradients and optimizer state over dp (FSDP2); default ZeRO-1
    fsdp_reshard_after_forward: bool = False  # FSDP: free gathered parameters after every forward


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
    ties: TiedGradients | None = None  # tied parameters' gradient sums (made at the first plan)
    feed: StepDataLoader | None = None  # the rank's data loader (real datasets)
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
        dist.init_process_group(
            backend,
            init_method="env://",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=max(timeout_s, 60.0)),
        )
    return rank, world, device


def comm_device_for(device: torch.device, backend: str) -> torch.device:
    """Where messages and collectives live: the device itself, except CPU for gloo (host staging)."""
    return torch.device("cpu") if backend == "gloo" else device


def _broadcast(obj: Any, rt: Runtime) -> Any:
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=rt.comm_device if rt.comm_device.type == "cuda" else None)
    return box[0]


def sync_gradients(rt: Runtime, timeout_s: float) -> None:
    """Fill missing gradients with zeros, sum tensor-parallel partial ones and reduce them over the
    data-parallel group (all-reduce, or FSDP's reduce-scatter)."""
    rt.par.sync_gradients(rt.runner, timeout_s)


def _gather(obj: Any, rt: Runtime) -> list[Any] | None:
    out = [None] * rt.world if rt.rank == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def train(cfg: TrainConfig, *, load: ModelLoader = load_builtin, open_data: DataOpener = no_data) -> dict | None:
    """Run ``cfg.steps`` steps on this rank (``RANK``/``WORLD_SIZE`` from the environment); rank 0
    returns the report, the other ranks ``None``.

    Args:
        cfg: the run's options.
        load: turns ``cfg.model`` into a model provider (``spec, *, seed, dtype, device``); the default
            knows the built-in presets and spec files, ``dip train`` passes ``dip.integrations.load_model``
            (checkpoint folders, factories).
        open_data: opens ``cfg.data`` for the provider (``provider, path, *, strict``).

    Returns:
        Rank 0's report (``steps[]`` with ``loss``, ``samples``, ``images``, times; ``skipped_samples``;
        the reference errors with ``check_reference``), ``None`` on the other ranks.
    """
    cores = bind_local_rank(
        cfg.bind_cores,
        int(os.environ.get("LOCAL_RANK", os.environ["RANK"])),
        int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"])),
        uses_gpu=torch.cuda.is_available(),
        external_launcher=not os.environ.get("DIP_WORKER"),
    )
    rank, world, device = init_distributed(cfg.timeout_s)
    if cfg.threads or cores:
        torch.set_num_threads(len(cores) if cores else cfg.threads)

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
    if dataset is not None and hasattr(dataset, "prime"):
        rt.feed = StepDataLoader(dataset, workers=cfg.data_workers, timeout_s=cfg.timeout_s)
    coord = None
    if rank == 0:
        documents = dataset.documents() if dataset is not None else None
        coord = Coordinator(cfg, model, rt.dp, device, documents=documents, reference=lambda: open_provider()[0])
    try:
        for step in range(cfg.steps):
            work = _broadcast(coord.plan(step) if coord else None, rt)
            if isinstance(work, tuple):
                kind, msg = work
                raise BadInput(msg) if kind == "BadInput" else RuntimeError(f"planning on rank 0 failed: {msg}")
            _train_step(cfg, rt, provider, coord, step, work)
        if cfg.save_hf:
            _save_checkpoint(cfg.save_hf, rt, provider)
    finally:
        if rt.feed is not None:
            rt.feed.close()
    mine = {}
    if dataset is not None:  # what this rank read: through the data loader, and directly (not prefetched)
        mine = {"loader": rt.feed.summary() if rt.feed else {}, "direct": dict(getattr(dataset, "direct_loads", {}))}
    loads = _gather(mine, rt)
    if not coord:
        return None
    out = coord.result(world, rt.pp, rt.dp)
    out.update(rt.par.report())
    out["bind_cores"] = cfg.bind_cores
    out["rank0_cores"] = sorted(os.sched_getaffinity(0)) if cores else None  # read back: what the OS applies
    out.update({"device": device.type, "backend": dist.get_backend()})
    out.update(_data_report(cfg, dataset, loads))
    return out


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


def _train_step(cfg: TrainConfig, rt: Runtime, provider, coord, step: int, work) -> None:
    """One step on this rank: load its data, execute its plan, sum tied gradients, synchronise
    gradients, AdamW, compare, measure."""
    runner = rt.runner
    plan, batch = work.plans[rt.dp_index], work.batches[rt.dp_index]
    rt.par.check_plans(work.plans, work.batches, provider.instances)
    prepared = runner.prepare(plan, batch)
    if rt.optimizer is None:
        rt.optimizer = rt.par.make_optimizer(runner, make_optimizer)
    if rt.ties is None:  # once, on every rank in the same order (collective)
        layouts = {r: [p for _, parts in layout_of(plan, r) for p in parts] for r in range(rt.pp)}
        lay = rt.layout
        rt.ties = TiedGradients.create(
            provider,
            layouts,
            pp_rank=lay.pp_rank,
            pp=rt.pp,
            dp=rt.dp,
            dp_index=lay.dp_index,
            tp=rt.tp,
            tp_rank=lay.tp_rank,
        )
    if rt.feed is not None:
        rt.feed.ready(chunk_data_keys(provider, runner.parts(), batch))
        if work.next_batches is not None:
            rt.feed.prefetch(chunk_data_keys(provider, runner.parts(), work.next_batches[rt.dp_index]))
    global_batch = work.global_batch
    total = sum(provider.loss_tokens(mb) for mb in global_batch.microbatches)
    runner.zero_grad()
    seed = step_seed(cfg.seed, step)
    timed_collective(dist.barrier, f"the barrier before step {step}", rt.rank, cfg.timeout_s)
    t0 = time.perf_counter()
    rt.par.begin_step(runner)
    res = runner.run(prepared, step_seed=seed, loss_scale=1.0 / total, mb_offset=rt.dp_index * cfg.microbatches)
    rt.ties.reduce(runner.named_parameters(), rt.pp_rank, rt.comm_device)
    sync_gradients(rt, cfg.timeout_s)
    t_grads = time.perf_counter() - t0
    loss_t = torch.tensor([res.loss_sum], dtype=torch.float64, device=rt.comm_device)
    timed_collective(dist.all_reduce, "the loss all-reduce", rt.rank, cfg.timeout_s, loss_t)
    loss = float(loss_t[0]) / total
    extra: dict[str, Any] = {}
    # replica 0's first TP rank speaks for its stage (identical gradients after the all-reduce)
    mine = rt.layout.speaks
    if cfg.check_reference:
        got = _gather(rt.par.full_grads(runner), rt)
        if coord:
            extra.update(coord.checker.step(global_batch, seed, loss, {k: v for d in got for k, v in d.items()}))
    t1 = time.perf_counter()
    rt.optimizer.step()
    times = torch.tensor(
        [res.elapsed_s, t_grads + time.perf_counter() - t1], dtype=torch.float64, device=rt.comm_device
    )
    timed_collective(dist.all_reduce, "the step-time all-reduce", rt.rank, cfg.timeout_s, times, op=dist.ReduceOp.MAX)
    if cfg.check_reference:
        got = _gather(rt.par.full_params(runner), rt)
        if coord:
            extra["param_rel_err"] = coord.checker.compare_params({k: v for d in got for k, v in d.items()})
    rows = gather_actions(res if mine else None, rt.rank, rt.world)
    if coord:
        replica0 = [rows[rt.layout.global_rank(r, 0, 0)] for r in range(rt.pp)]
        coord.measured(work, replica0)
        extra["activation_memory"] = activation_report(
            work.plans[0], work.batches[0], coord.model, coord.cost_model, replica0, rt.device.type
        )
        coord.add_report(step, work, loss, total, (float(times[0]), float(times[1])), extra)


def _save_checkpoint(out: str, rt: Runtime, provider) -> None:
    """Gather replica 0's parameters (canonical names) on rank 0 and write them with the provider's saver."""
    got = _gather(rt.par.full_params(rt.runner), rt)
    if rt.rank == 0:
        save_trained(provider, out, {k: v for d in got for k, v in d.items()})


def finish(timeout_s: float) -> None:
    """Final barrier, so no rank leaves while another still communicates."""
    if dist.is_initialized():
        timed_collective(dist.barrier, "the final barrier", dist.get_rank(), timeout_s)
