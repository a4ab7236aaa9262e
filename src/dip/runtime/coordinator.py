"""What global rank 0 does besides its own pipeline work: the plan of every pass (inline, or from the
planner service), predictions corrected by the online calibration, the single-process reference, the
report and the trace.

Plans come from one of two planners with the same interface (``start``, ``take(index)``, ``close``):

* :class:`InlinePlanner`: rank 0 plans each pass itself when the ranks need it (the ranks wait);
* :class:`~dip.runtime.planner_service.PlannerService` (``--async-planner``): worker processes plan the
  coming passes while the current step trains.

Either way the plan is published to every rank through the :class:`~dip.runtime.plan_delivery.PlanChannel`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from dip.data.meta import BatchMeta, lm_sequence_lens
from dip.errors import BadInput
from dip.planner import SearchOptions, check_schedule, default_partition
from dip.planner.warmup import warm_up
from dip.runtime import planning
from dip.runtime.batches import BatchStream
from dip.runtime.calibrate import OnlineCalibration
from dip.runtime.executor import ActionTime
from dip.runtime.faults import NO_FAULTS, Faults
from dip.runtime.optim import DEFAULT_OPTIMIZER, OptimizerConfig
from dip.runtime.plan_delivery import PlanChannel, encode, encode_error
from dip.runtime.planner_service import PlanInfo, PlannerService, default_workers
from dip.runtime.planner_worker import PlannerSetup
from dip.runtime.reference_check import ReferenceChecker
from dip.runtime.step import layout_of
from dip.schedule.ir import Plan
from dip.sim import SimulatedPlan, simulate_plan
from dip.spec.model import ModelSpec
from dip.viz.trace import write_chrome_trace

__all__ = ["Coordinator", "InlinePlanner", "predicted_rows", "tokens_of", "write_trace"]

logger = logging.getLogger(__name__)


def predicted_rows(plan: Plan, sim: SimulatedPlan) -> dict[int, list]:
    """Simulated ``(action, start, end, modules)`` per rank of one plan."""
    return {
        r: [(str(a), s, e, "+".join(plan.graph.chunks[a.chunk].modules)) for a, s, e in acts]
        for r, acts in sim.result.action_times().items()
    }


def tokens_of(model: ModelSpec, batch: BatchMeta) -> int:
    """Tokens of a global batch: decoder sequence tokens (text + merged image tokens) plus DiT tokens."""
    return int(sum(sum(lm_sequence_lens(model, mb)) + sum(mb.clip_tokens) for mb in batch.microbatches))


def check_replica_layouts(work: planning.StepWork, pp: int) -> None:
    if len({tuple(layout_of(p, r) for r in range(pp)) for p in work.plans}) > 1:
        raise RuntimeError("data-parallel replicas got plans with different layer placements")


class InlinePlanner:
    """Rank 0 plans each pass when the ranks need it (fixed rollout budget) and publishes it."""

    def __init__(self, coord: Coordinator):
        self.coord = coord
        self.partition = None
        self.sims: dict[int, list[SimulatedPlan]] = {}

    def start(self) -> None:
        pass

    def take(self, index: int) -> tuple[planning.StepWork, PlanInfo]:
        c = self.coord
        t0 = time.perf_counter()
        try:
            work, sims = c.plan_pass(index, self.partition)
            self.partition = sims[0].partition or self.partition
        except Exception as exc:
            kind = "BadInput" if isinstance(exc, BadInput) else type(exc).__name__
            c.channel.publish(index, encode_error(kind, str(exc) if kind == "BadInput" else f"{kind}: {exc}"))
            raise
        c.channel.publish(index, encode(work))
        self.sims = {index: sims}
        took = time.perf_counter() - t0
        return work, PlanInfo(took, took, "searched", False)

    def set_calibration(self, factors: dict) -> None:
        pass

    def note_pass_time(self, seconds: float) -> None:
        pass

    def summary(self) -> dict[str, Any]:
        return {"restarts": 0}

    def close(self) -> None:
        pass


class Coordinator:
    """Rank 0's state across the steps of one training run (``cfg`` is a ``TrainConfig``).

    Args:
        cfg: the run's options.
        model: the model's spec (the planner's view, with its parallel sizes).
        device: where the reference model lives.
        stream: the run's batches (what the ranks run and the planner plans).
        channel: where plans are published for every rank.
        passes: the passes this run executes.
        reference: builds the reference checker's own full model provider (with ``check_reference``).
        faults: faults to inject into the planner service.
        cores: CPU cores the planner service's processes may use.
        local_ranks: ranks on this node (the planner's default worker count leaves them their cores).
    """

    def __init__(
        self,
        cfg,
        model: ModelSpec,
        device=None,
        *,
        stream: BatchStream,
        channel: PlanChannel,
        passes: range,
        reference: Callable[[], Any] | None = None,
        faults: Faults = NO_FAULTS,
        cores: Sequence[int] | None = None,
        local_ranks: int = 1,
        optimizer: OptimizerConfig = DEFAULT_OPTIMIZER,
    ):
        self.cfg, self.model, self.stream, self.channel = cfg, model, stream, channel
        self.cost_model, self.hardware = planning.cost_setup(model, cfg.dtype, cfg.hardware)
        self.calibration = OnlineCalibration(self.cost_model) if cfg.online_calibration else None
        self.checker = None
        if cfg.check_reference:
            self.checker = ReferenceChecker(reference() if reference else model, cfg.seed, cfg.dtype, device, optimizer)
        self.reports: list[dict] = []
        self.timelines: list = []
        self.predicted: list = []
        self.last_trace: tuple | None = None
        self.planner: InlinePlanner | PlannerService
        if cfg.async_planner:
            workers = cfg.planner_workers or default_workers(len(cores) if cores else 1, local_ranks)
            setup = PlannerSetup(
                model=model,
                schedule=check_schedule(cfg.schedule),
                dtype=cfg.dtype,
                hardware=cfg.hardware,
                seed=cfg.seed,
                deterministic=cfg.deterministic,
                crash_before=None if faults.planner_crash is None else faults.planner_crash * cfg.grad_accum,
                hang_before=None if faults.planner_hang is None else faults.planner_hang * cfg.grad_accum,
                cores=tuple(cores) if cores else None,
            )
            self.planner = PlannerService(
                setup,
                stream,
                channel,
                passes,
                self.fallback,
                workers=workers,
                lookahead=cfg.plan_ahead or max(2, workers + 1),
                deadline_s=cfg.plan_deadline_s,
                budget_s=cfg.plan_budget_s,
                hang_timeout_s=cfg.timeout_s,
            )
        else:
            self.planner = InlinePlanner(self)
        self.fallback_ready = False

    def start(self) -> None:
        """Start planning; with the service, wait until its kernels are warm and warm rank 0's own
        (the fallback plan) before the first step."""
        check_schedule(self.cfg.schedule, self.model)
        self.planner.start()
        if isinstance(self.planner, PlannerService):
            self.planner.wait_ready(max(self.cfg.timeout_s, 900.0))
            if not self.cfg.deterministic and self.cfg.schedule == "dip":
                warm_up()
                default_partition(self.model, self.cost_model)
            self.fallback_ready = True

    def close(self) -> None:
        self.planner.close()

    def predict_cost_model(self):
        return self.calibration.cost_model() if self.calibration else None

    def take(self, index: int) -> tuple[planning.StepWork, PlanInfo]:
        """Pass ``index``'s plan (published to every rank) and how it was obtained."""
        return self.planner.take(index)

    def fallback(self, index: int) -> planning.StepWork:
        """Pass ``index``'s plan without search (the dual-queue interleaving of the default order)."""
        return self.plan_pass(index, None, planning.FAST_SEARCH)[0]

    def plan_pass(
        self, index: int, partition=None, search: SearchOptions | None = None
    ) -> tuple[planning.StepWork, list]:
        """Pass ``index``'s plans (one per replica, checked to share the pipeline layout, carrying the
        batch fingerprint) and their simulations, made here on rank 0."""
        work, sims = planning.plan_step(
            index,
            self.cfg.schedule,
            self.model,
            self.stream.replicas(index),
            self.cost_model,
            self.hardware,
            self.cfg.seed,
            self.predict_cost_model(),
            partition,
            search,
        )
        check_replica_layouts(work, self.model.parallel.pp)
        return replace(work, fingerprint=self.stream.fingerprint(index)), sims

    def measured(self, work: planning.StepWork, rows: Sequence[Sequence[ActionTime]]) -> None:
        """Every rank's measured actions of replica 0 in one pass: calibration, trace, timeline."""
        if self.calibration is not None:
            self.calibration.update(work.plans[0], work.batches[0], rows)
            self.planner.set_calibration(self.calibration.factors)
        if self.cfg.timeline:
            self.timelines.append([[(str(t.action), t.start, t.end, t.wait) for t in acts] for acts in rows])
            self.predicted.append(predicted_rows(work.plans[0], self._simulation(work)))
        self.last_trace = (work, rows)

    def _simulation(self, work: planning.StepWork) -> SimulatedPlan:
        """Replica 0's simulation of ``work`` (the inline planner's own, else simulated again)."""
        sims = getattr(self.planner, "sims", {}).get(work.step)
        if sims:
            return sims[0]
        cm = self.predict_cost_model() or self.cost_model
        return simulate_plan(work.plans[0], self.model, cm, work.batches[0], self.hardware)

    def add_report(self, row: dict[str, Any]) -> None:
        """Record a finished step (``iteration_time_s``: its wall time, which paces the planner)."""
        self.reports.append(row)
        self.planner.note_pass_time(row["iteration_time_s"] / self.cfg.grad_accum)

    def step_row(
        self, step: int, works: Sequence[planning.StepWork], infos: Sequence[PlanInfo], loss_tokens: int
    ) -> dict[str, Any]:
        """The report fields of one step that rank 0 knows from its plans (the trainer adds the measured ones)."""

        def total(field: str) -> float | None:
            xs = [getattr(w, field) for w in works]
            return sum(xs) if all(x is not None for x in xs) else None

        mbs = [mb for w in works for mb in w.global_batch.microbatches]
        batch = BatchMeta(tuple(mbs), index=step)
        lat = [i.latency_s for i in infos if i.latency_s is not None]
        return {
            "step": step,
            "predicted_step_time_s": total("predicted_s"),
            "predicted_pipeline_time_s": total("predicted_makespan_s"),
            "predicted_pipeline_time_shipped_calibration_s": total("predicted_static_makespan_s"),
            "tokens": tokens_of(self.model, batch),
            "samples": sum(mb.samples for mb in mbs),
            "images": sum(mb.images for mb in mbs),
            "loss_tokens": loss_tokens,
            "microbatches": len(mbs),
            "plan_latency_s": max(lat) if lat else None,
            "plan_late": any(i.late for i in infos),
            "fallback": any(i.fallback for i in infos),
            "plan_source": infos[-1].source if len({i.source for i in infos}) == 1 else "mixed",
        }

    def result(self, world: int, pp: int, dp: int) -> dict[str, Any]:
        cfg = self.cfg
        if cfg.trace and self.last_trace is not None:
            work, rows = self.last_trace
            write_trace(cfg.trace, work.plans[0], self._simulation(work), rows)
        out: dict[str, Any] = {
            "steps": self.reports,
            "schedule": cfg.schedule,
            "model": self.model.name,
            "nproc": world,
            "pp": pp,
            "dp": dp,
            "dtype": cfg.dtype,
            "microbatches": cfg.microbatches,
            "grad_accum": cfg.grad_accum,
            "fallback_steps": sum(1 for r in self.reports if r.get("fallback")),
            "late_steps": sum(1 for r in self.reports if r.get("plan_late")),
            "planner": {"mode": "service" if cfg.async_planner else "inline", **self.planner.summary()},
        }
        if self.stream.documents is not None:
            out["data_epochs"] = self.stream.epochs
        if self.checker is not None:
            e = self.checker.errors
            out.update(
                {
                    "max_grad_rel_err": e["grad"],
                    "max_loss_abs_err": e["loss"],
                    "max_param_rel_err": e["param"],
                    "max_grad_allclose_ratio": e["allclose"],
                    "worst": self.checker.worst,
                }
            )
        if self.calibration is not None:
            out["calibration_factors"] = self.calibration.summary()
        if cfg.timeline:
            out["timelines"] = self.timelines
            out["predicted_timelines"] = self.predicted
        return out


def write_trace(path: str, plan: Plan, sim: SimulatedPlan, rows: Sequence[Sequence[ActionTime]]) -> None:
    """Chrome/Perfetto trace of the last step: measured compute actions next to the simulated plan."""
    measured = {
        r: [(t.action, t.start, t.end) for t in acts if t.action.op.is_compute] for r, acts in enumerate(rows) if acts
    }
    write_chrome_trace(path, plan, sim.result, sim.costs, measured=measured)
