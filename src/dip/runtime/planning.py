"""What each training pass runs: the plan of every data-parallel replica's batch under the chosen
schedule, with the simulator's predicted step time, and the search options of each planning mode.

Global rank 0 (inline planning) or the planner service's processes (:mod:`dip.runtime.planner_service`)
call these; the plans reach every rank through :mod:`dip.runtime.plan_delivery`. Nothing here imports
torch: the planner's processes import this module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from dip.cost import CostModel
from dip.data.meta import BatchMeta
from dip.data.packing import DocumentMeta
from dip.errors import BadInput
from dip.planner import DEFAULT_BUDGET_S, SearchOptions, plan_schedule
from dip.runtime.batches import WORKLOADS, BatchStream, text_only
from dip.schedule.ir import Plan
from dip.schedule.partition import Partition
from dip.sim import SimulatedPlan, simulate_plan
from dip.spec.hardware import HardwareSpec, get_hardware
from dip.spec.model import ModelSpec
from dip.spec.validate import validate_parallel

CPU_HARDWARE = "cpu"
DIP_ROLLOUTS = 24  # planner rollouts per batch: deterministic plans, a second or so per step
# the dual-queue interleaving of the default segment order, without any search: the fallback plan
FAST_SEARCH = SearchOptions(rollouts=0, tune=False, polish=False)
# tuning and tree search without polishing: milliseconds on small batches, most of the search's gain
QUICK_SEARCH = SearchOptions(rollouts=DIP_ROLLOUTS, polish=False)
MIN_BUDGET_S = 0.05  # the shortest search the planner service runs (a budget adapted to short steps)


@dataclass
class StepWork:
    """One step: the replicas' batches (replica ``d`` holds global micro-batches ``d*M .. d*M+M-1``),
    their plans and the simulator's predicted step time (the slowest replica)."""

    step: int
    batches: list[BatchMeta]
    plans: list[Plan]
    predicted_s: float | None
    predicted_makespan_s: float | None = None
    predicted_static_makespan_s: float | None = None  # with the shipped calibration only
    fingerprint: str = ""  # of ``batches`` (dip.runtime.batches.fingerprint): checked by every rank
    source: str = "searched"  # searched, best-so-far (an earlier search phase's plan) or fallback
    late: bool = False  # the searched plan was not ready when the step needed it
    plan_latency_s: float | None = None  # from the start of planning this batch to the plan used

    @property
    def global_batch(self) -> BatchMeta:
        mbs = tuple(mb for b in self.batches for mb in b.microbatches)
        return BatchMeta(mbs, index=self.step)


def make_step_batches(
    model: ModelSpec, steps: int, dp: int, microbatches: int, seed: int, workload: str = "default"
) -> list[list[BatchMeta]]:
    """``steps`` global batches of ``dp * microbatches`` micro-batches, cut into ``dp`` replica batches:
    the first passes of :class:`~dip.runtime.batches.BatchStream` over the generated workload.

    ``default``: the model's workload mixture; ``dynamic`` (VLM): image counts per micro-batch that rise
    and fall over the steps (the paper's Fig. 8b). Batches differ from step to step (image counts, text
    lengths, clip counts); a VLM run's first batch always contains a text-only micro-batch."""
    stream = BatchStream(model, dp=dp, microbatches=microbatches, seed=seed, workload=workload)
    return [stream.replicas(s) for s in range(steps)]


def dataset_step_batches(
    model: ModelSpec, documents: Sequence[DocumentMeta], steps: int, dp: int, microbatches: int, seed: int
) -> tuple[list[list[BatchMeta]], int]:
    """``steps`` global batches of ``dp * microbatches`` micro-batches packed from a real dataset, cut
    into ``dp`` replica batches, and the number of epochs they span (see
    :class:`~dip.runtime.batches.BatchStream`: every epoch visits every sample once in an order drawn
    from ``(seed, epoch)``, packed whole up to the model's context length and image / clip limits; a step
    may span two epochs, as Megatron's blended index does). Only metadata is used: nothing is loaded."""
    stream = BatchStream(model, dp=dp, microbatches=microbatches, seed=seed, documents=documents)
    out = [stream.replicas(s) for s in range(steps)]
    return out, stream.epochs


def check_parallel(model: ModelSpec, nproc: int, pp: int | None, dp: int | None, tp: int = 1) -> tuple[int, int]:
    """``(pp, dp)`` for ``nproc`` processes, ``tp`` of them per pipeline stage; BadInput when they do
    not fit the model (``tp`` must divide every module's heads, key/value heads and widths)."""
    layers = sum(m.layers for m in model.modules)
    if nproc < 1:
        raise BadInput(f"nproc must be an integer >= 1, got {nproc}")
    if tp < 1:
        raise BadInput(f"tp must be an integer >= 1, got {tp}")
    if nproc % tp:
        raise BadInput(f"nproc {nproc} is not a multiple of tp {tp} (nproc = tp x pp x dp)")
    validate_parallel(model, replace(model.parallel, tp=tp, pp=1, dp=1, segments=()))
    total, nproc = nproc, nproc // tp
    what = f"nproc {total} / tp {tp} = {nproc}" if tp > 1 else f"nproc {nproc}"
    if pp is None and dp is None:
        pp, dp = nproc, 1
    elif pp is None:
        if dp < 1 or nproc % dp:
            raise BadInput(f"{what} is not a multiple of dp {dp}")
        pp = nproc // dp
    elif dp is None:
        if pp < 1 or nproc % pp:
            raise BadInput(f"{what} is not a multiple of pp {pp}")
        dp = nproc // pp
    if pp < 1 or dp < 1:
        raise BadInput(f"pp and dp must be >= 1, got pp {pp}, dp {dp}")
    if pp * dp != nproc:
        if tp > 1:
            raise BadInput(f"nproc {total} must equal tp x pp x dp = {tp} x {pp} x {dp} = {tp * pp * dp}")
        raise BadInput(f"nproc {nproc} must equal pp x dp = {pp} x {dp} = {pp * dp}")
    if pp > layers:
        raise BadInput(
            f"nproc {nproc} is more processes than model {model.name} can use: pipeline size {pp} "
            f"exceeds its {layers} layers (pp must be <= layers, nproc = pp x dp)"
        )
    return pp, dp


def cost_setup(model: ModelSpec, dtype: str, hardware: str = CPU_HARDWARE) -> tuple[CostModel, HardwareSpec]:
    """(cost model, hardware) for planning and prediction (the CPU calibration by default)."""
    hw = get_hardware(hardware)
    dtype_bytes = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}.get(dtype, 4)
    return CostModel(model, hw, dtype_bytes=dtype_bytes), hw  # the model's tp, SP and optimizer sharding


def search_options(*, deterministic: bool = True, budget_s: float | None = None, seed: int = 0) -> SearchOptions:
    """DIP's search for a training pass: a fixed rollout budget (deterministic plans, as every inline
    planned run), or ``budget_s`` seconds (the planner service outside ``--deterministic``)."""
    if deterministic:
        return SearchOptions(rollouts=DIP_ROLLOUTS, seed=seed)
    return SearchOptions(budget_s=max(float(budget_s or DEFAULT_BUDGET_S), MIN_BUDGET_S), seed=seed)


def plan_replica(
    schedule: str,
    model: ModelSpec,
    batch: BatchMeta,
    cost_model: CostModel,
    hardware: HardwareSpec,
    seed: int = 0,
    predict_cost_model: CostModel | None = None,
    partition: Partition | None = None,
    search: SearchOptions | None = None,
) -> SimulatedPlan:
    """The simulated plan of one replica's batch.

    Every schedule plans with ``cost_model`` (``dip``: the planner with ``search``, by default a fixed
    number of rollouts, so every run plans the same way, and the layer ``partition`` when given, so later
    steps keep the first step's placement). The simulation that predicts the step time uses
    ``predict_cost_model`` (e.g. online-calibrated) when given; the result keeps the planner's partition.
    """
    sim = plan_schedule(
        schedule, model, batch, cost_model, hardware, partition=partition, search=search or search_options(seed=seed)
    )
    if predict_cost_model is not None:
        predicted = simulate_plan(sim.plan, model, predict_cost_model, batch, hardware)
        predicted.partition = sim.partition
        sim = predicted
    return sim


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def plan_step(
    step: int,
    schedule: str,
    model: ModelSpec,
    batches: list[BatchMeta],
    cost_model,
    hardware,
    seed: int = 0,
    predict_cost_model=None,
    partition=None,
    search: SearchOptions | None = None,
) -> tuple[StepWork, list]:
    """Plans (one per replica) and the predicted step time of one step (or pass), plus the simulations
    (a DIP simulation carries the planner's ``partition``); ``search``: DIP's search options (default: the
    fixed rollout budget)."""
    sims = [
        plan_replica(schedule, model, b, cost_model, hardware, seed, predict_cost_model, partition, search)
        for b in batches
    ]
    its = [_finite(s.result.iteration_time) for s in sims]
    mss = [_finite(s.result.makespan) for s in sims]
    pred = max(its) if all(x is not None for x in its) else None
    make = max(mss) if all(x is not None for x in mss) else None
    static = make
    if predict_cost_model is not None:
        plain = [
            _finite(simulate_plan(s.plan, model, cost_model, b, hardware).result.makespan)
            for s, b in zip(sims, batches)
        ]
        static = max(plain) if all(x is not None for x in plain) else None
    return StepWork(step, batches, [s.plan for s in sims], pred, make, static), sims


def with_parallel(model: ModelSpec, pp: int, dp: int, tp: int = 1) -> ModelSpec:
    """``model`` with the run's sizes and what the trainer does: sequence parallelism whenever
    ``tp > 1``; the optimizer state sharded over ``dp`` (ZeRO-1, or FSDP, which between a step's first
    forward and its gradient reduce-scatter holds what ZeRO-1 holds)."""
    return model.with_parallel(pp=pp, dp=dp, tp=tp, sequence_parallel=tp > 1, distributed_optimizer=dp > 1)


__all__ = [
    "DIP_ROLLOUTS",
    "FAST_SEARCH",
    "QUICK_SEARCH",
    "WORKLOADS",
    "StepWork",
    "check_parallel",
    "cost_setup",
    "dataset_step_batches",
    "make_step_batches",
    "plan_replica",
    "plan_step",
    "search_options",
    "text_only",
    "with_parallel",
]
