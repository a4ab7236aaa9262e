"""The baseline schedules by name: the paper's baselines and the textbook schedules.

* :func:`get_generator` -> :class:`Schedule` (BadInput listing the valid names for an unknown one);
* :meth:`Schedule.build` -> the :class:`Plan` of one batch on a real model (memory rule not applied
  yet: :func:`dip.sim.plans.fit_memory` does that by simulation; :mod:`dip.planner.baselines` picks the
  memory-feasible layer split and Optimus's bound);
* :func:`build_uniform_plan` -> a schedule-only plan: one chain of ``pp * chunks`` chunks, ``m`` units.

Every mixed baseline uses the same time-balanced layer split and the same memory rule, so the
textbook schedules compare schedules, not partitions; ``megatron-params`` keeps the parameter-balanced
split. docs/baselines.md maps each to the real system's flags. DIP's own schedule is searched by
:mod:`dip.planner`; :mod:`dip.planner.schedules` plans a batch under any name, DIP or a baseline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dip.data.meta import BatchMeta
from dip.errors import BadInput, choices_error
from dip.schedule.baselines.common import Chain, chain_of
from dip.schedule.baselines.gpipe import gpipe_order
from dip.schedule.baselines.interleaved import default_group, interleaved_order
from dip.schedule.baselines.one_f_one_b import one_f_one_b_order
from dip.schedule.baselines.optimus import encoder_and_lm, optimus_plan
from dip.schedule.baselines.plans import chunks_per_rank, layer_split, mixed_plan
from dip.schedule.baselines.zero_bubble import zb_h1_order
from dip.schedule.ir import Plan, RankOrder, StageGraph
from dip.schedule.units import linear_stage_graph, uniform_units
from dip.spec.model import ModelSpec

__all__ = ["SCHEDULES", "Schedule", "build_uniform_plan", "get_generator"]

UNIFORM_GROUP = "model"
OrderFn = Callable[[Chain], RankOrder]


@dataclass(frozen=True)
class Schedule:
    """A named schedule: the order of its mixed chain (``None`` for Optimus's separated groups), its
    layer split, its chunks per rank, and (optionally) a uniform chain's order."""

    name: str
    summary: str
    order: OrderFn | None = None
    split: str = "time"
    default_chunks: int = 1
    takes_chunks: bool = True  # whether ``chunks`` (``--chunks``) applies
    uniform_order: OrderFn | None = None
    check_model: Callable[[ModelSpec], object] | None = None  # raises BadInput for unsupported models

    @property
    def mixed(self) -> bool:
        """True for the schedules over one mixed chain of chunks (all but Optimus)."""
        return self.order is not None

    def supports(self, model: ModelSpec) -> None:
        """Raise :class:`BadInput` when this schedule cannot run ``model`` (cheap; before any work)."""
        if self.check_model is not None:
            self.check_model(model)

    def chunks_for(self, model: ModelSpec, chunks: int | None, microbatches: int) -> int:
        """Chunks per rank: ``chunks`` when given and this schedule takes it, else the default."""
        if not self.takes_chunks:
            return 1
        if self.default_chunks > 1:
            return chunks_per_rank(model, chunks, self.default_chunks, microbatches)
        return int(chunks) if chunks else 1

    def build(
        self,
        model: ModelSpec,
        batch: BatchMeta,
        cost_model=None,
        *,
        chunks: int | None = None,
        graph: StageGraph | None = None,
        inflight: int | None = None,
    ) -> Plan:
        """The plan of ``batch``.

        Args:
            model: the model with its parallel layout.
            batch: the batch's micro-batch metadata.
            cost_model: the cost model the time-balanced split (and Optimus's placement) is timed with.
            chunks: chunks per rank (default: the schedule's).
            graph: mixed schedules: the layer split to use (default: :func:`layer_split` of the
                schedule's split, without a memory cap).
            inflight: Optimus: the bound on in-flight encoder micro-batches (default: none).

        Returns:
            The plan, memory strategies not chosen yet.
        """
        self.supports(model)
        if not self.mixed:
            return optimus_plan(model, batch, chunks, inflight, cost_model, schedule=self.name)
        m = len(batch)
        if graph is None:
            graph = layer_split(model, self.split, self.chunks_for(model, chunks, m), cost_model, m)
        v = len(graph.chunks) // graph.num_ranks
        meta: dict = {"split": self.split}
        if v > 1 and self.order is interleaved_order:
            meta["interleave_group"] = default_group(graph.num_ranks, m)
        return mixed_plan(model, batch, self.order, self.name, graph=graph, meta=meta)


_BASELINES: tuple[Schedule, ...] = (
    Schedule("gpipe", "all forwards, then all backwards", gpipe_order, uniform_order=gpipe_order),
    Schedule("1f1b", "one-forward-one-backward (PipeDream-Flush)", one_f_one_b_order, uniform_order=one_f_one_b_order),
    Schedule(
        "interleaved",
        "Megatron interleaved 1F1B, 2 chunks per rank by default",
        interleaved_order,
        default_chunks=2,
        uniform_order=interleaved_order,
    ),
    Schedule(
        "zb-h1", "Zero Bubble ZB-H1: split backward, deferred weight passes", zb_h1_order, uniform_order=zb_h1_order
    ),
    Schedule(
        "megatron",
        "Megatron-LM: interleaved 1F1B over time-balanced mixed chunks, per-rank recompute",
        interleaved_order,
        default_chunks=2,
        uniform_order=interleaved_order,
    ),
    Schedule(
        "megatron-params",
        "Megatron-LM with the layer split balanced by parameter counts",
        interleaved_order,
        split="params",
        default_chunks=2,
        uniform_order=interleaved_order,
    ),
    Schedule(
        "nnscaler",
        "nnScaler*: static time-balanced 1F1B plan from a representative workload",
        one_f_one_b_order,
        takes_chunks=False,
        uniform_order=one_f_one_b_order,
    ),
    Schedule(
        "optimus",
        "Optimus: encoder work in the LM pipeline's bubbles, in-flight encoder micro-batches bounded",
        check_model=encoder_and_lm,
    ),
)
SCHEDULES: tuple[str, ...] = tuple(s.name for s in _BASELINES)


def get_generator(name: str) -> Schedule:
    """The baseline schedule called ``name`` (case-insensitive)."""
    key = str(name).strip().lower()
    for s in _BASELINES:
        if s.name == key:
            return s
    raise choices_error("schedule", name, SCHEDULES)


def build_uniform_plan(name: str, pp: int, m: int, chunks: int = 1) -> Plan:
    """Schedule-only plan: one chain of ``pp * chunks`` single-layer chunks (loop placement), ``m`` units."""
    sched = get_generator(name)
    if sched.uniform_order is None:
        raise BadInput(
            f"schedule {sched.name} needs a model (--model); uniform costs support: "
            f"{', '.join(s.name for s in _BASELINES if s.uniform_order is not None)}"
        )
    if pp < 1 or m < 1 or chunks < 1:
        raise BadInput(f"pp, micro-batches and chunks must be >= 1, got pp {pp}, micro-batches {m}, chunks {chunks}")
    graph = linear_stage_graph(pp, chunks, module=UNIFORM_GROUP)
    units = uniform_units(UNIFORM_GROUP, m)
    order = sched.uniform_order(chain_of(graph, UNIFORM_GROUP, units[UNIFORM_GROUP]))
    return Plan(graph, units, (), order, schedule=sched.name, meta={"uniform": True, "chunks_per_rank": chunks})
