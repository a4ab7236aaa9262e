"""What global rank 0 does besides its own pipeline work: batches and plans for every step (the planner's
layer partition fixed after the first step, predictions corrected by the online calibration), the
single-process reference, the report and the trace."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from dip.data.meta import BatchMeta, lm_sequence_lens
from dip.data.packing import DocumentMeta
from dip.errors import BadInput
from dip.planner import check_schedule
from dip.runtime import planning
from dip.runtime.calibrate import OnlineCalibration
from dip.runtime.executor import ActionTime
from dip.runtime.reference_check import ReferenceChecker
from dip.runtime.step import layout_of
from dip.schedule.ir import Plan
from dip.sim import SimulatedPlan
from dip.spec.model import ModelSpec
from dip.viz.trace import write_chrome_trace

__all__ = ["Coordinator", "predicted_rows", "tokens_of", "write_trace"]

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


class Coordinator:
    """Rank 0's state across the steps of one training run (``cfg`` is a ``TrainConfig``).

    Args:
        cfg: the run's options.
        model: the model's spec (the planner's view, with its parallel sizes).
        dp: data-parallel replicas.
        device: where the reference model lives.
        documents: per-sample metadata of a real dataset (packed into the steps' batches); ``None``
            draws batches from the model's generated workload.
        reference: builds the reference checker's own full model provider (with ``check_reference``).
    """

    def __init__(
        self,
        cfg,
        model: ModelSpec,
        dp: int,
        device=None,
        *,
        documents: Sequence[DocumentMeta] | None = None,
        reference: Callable[[], Any] | None = None,
    ):
        self.cfg, self.model = cfg, model
        self.cost_model, self.hardware = planning.cost_setup(model, cfg.dtype, cfg.hardware)
        self.calibration = OnlineCalibration(self.cost_model) if cfg.online_calibration else None
        self.epochs: int | None = None
        if documents is not None:
            self.batches, self.epochs = planning.dataset_step_batches(
                model, documents, cfg.steps, dp, cfg.microbatches, cfg.seed
            )
        else:
            self.batches = planning.make_step_batches(model, cfg.steps, dp, cfg.microbatches, cfg.seed, cfg.workload)
        self.partition = None
        self.sims: list[SimulatedPlan] = []
        self.checker = None
        if cfg.check_reference:
            self.checker = ReferenceChecker(reference() if reference else model, cfg.seed, cfg.dtype, device)
        self.reports: list[dict] = []
        self.timelines: list = []
        self.predicted: list = []
        self.last_trace: tuple | None = None

    def plan(self, step: int) -> Any:
        """The step's ``StepWork`` to broadcast, or ``(kind, message)`` when planning failed."""
        try:
            check_schedule(self.cfg.schedule, self.model)
            predict = self.calibration.cost_model() if self.calibration else None
            work, self.sims = planning.plan_step(
                step,
                self.cfg.schedule,
                self.model,
                self.batches[step],
                self.cost_model,
                self.hardware,
                self.cfg.seed,
                predict,
                self.partition,
            )
            self.partition = self.sims[0].partition or self.partition
            if step + 1 < len(self.batches):
                work.next_batches = self.batches[step + 1]
            pp = self.model.parallel.pp
            if len({tuple(layout_of(p, r) for r in range(pp)) for p in work.plans}) > 1:
                raise RuntimeError("data-parallel replicas got plans with different layer placements")
            return work
        except BadInput as exc:
            return ("BadInput", str(exc))
        except Exception as exc:
            return ("Error", f"{type(exc).__name__}: {exc}")

    def measured(self, work, rows: Sequence[Sequence[ActionTime]]) -> None:
        """Every rank's measured actions of replica 0: calibration, trace, timeline."""
        pred = predicted_rows(work.plans[0], self.sims[0])
        if self.calibration is not None:
            self.calibration.update(work.plans[0], work.batches[0], rows)
        if self.cfg.timeline:
            self.timelines.append([[(str(t.action), t.start, t.end, t.wait) for t in acts] for acts in rows])
            self.predicted.append(pred)
        self.last_trace = (work.plans[0], self.sims[0], rows)

    def add_report(
        self, step: int, work, loss: float, loss_tokens: int, times: tuple[float, float], extra: dict
    ) -> None:
        gb = work.global_batch
        self.reports.append(
            {
                "step": step,
                "loss": loss,
                "step_time_s": times[1],
                "pipeline_time_s": times[0],
                "predicted_step_time_s": work.predicted_s,
                "predicted_pipeline_time_s": work.predicted_makespan_s,
                "predicted_pipeline_time_shipped_calibration_s": work.predicted_static_makespan_s,
                "tokens": tokens_of(self.model, gb),
                "samples": sum(mb.samples for mb in gb.microbatches),
                "images": sum(mb.images for mb in gb.microbatches),
                "loss_tokens": loss_tokens,
                "microbatches": len(gb.microbatches),
                **extra,
            }
        )

    def result(self, world: int, pp: int, dp: int) -> dict[str, Any]:
        cfg = self.cfg
        if cfg.trace and self.last_trace is not None:
            write_trace(cfg.trace, *self.last_trace)
        out: dict[str, Any] = {
            "steps": self.reports,
            "schedule": cfg.schedule,
            "model": self.model.name,
            "nproc": world,
            "pp": pp,
            "dp": dp,
            "dtype": cfg.dtype,
            "microbatches": cfg.microbatches,
        }
        if self.epochs is not None:
            out["data_epochs"] = self.epochs
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
