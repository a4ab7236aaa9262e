"""The baseline schedules by name: the paper's baselines and the textbook schedules.

* :func:`get_generator` -> :class:`Schedule` (BadInput listing the valid names for an unknown one);
* :meth:`Schedule.build` -> the :class:`Plan` of one batch on a real model (memory strategy not chosen
  yet: :func:`dip.sim.plans.fit_uniform_memory` does that by simulation);
* :func:`build_uniform_plan` -> a schedule-only plan: one chain of ``pp * chunks`` chunks, ``m`` units.

DIP's own schedule is searched by :mod:`dip.planner`; :mod:`dip.planner.schedules` plans a batch
under any name, DIP or a baseline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dip.data.meta import BatchMeta
from dip.errors import BadInput, choices_error
from dip.schedule.baselines.common import Chain, chain_of
from dip.schedule.baselines.gpipe import gpipe_order
from dip.schedule.baselines.interleaved import interleaved_order
from dip.schedule.baselines.megatron import megatron_plan
from dip.schedule.baselines.nnscaler import nnscaler_plan
from dip.schedule.baselines.one_f_one_b import one_f_one_b_order
from dip.schedule.baselines.optimus import encoder_and_lm, optimus_plan
from dip.schedule.baselines.plans import chunks_per_rank, mixed_plan
from dip.schedule.baselines.zero_bubble import zb_h1_order
from dip.schedule.ir import Plan, RankOrder
from dip.schedule.units import linear_stage_graph, uniform_units
from dip.spec.model import ModelSpec

__all__ = ["SCHEDULES", "Schedule", "build_uniform_plan", "get_generator"]

UNIFORM_GROUP = "model"
BuildFn = Callable[[ModelSpec, BatchMeta, object, object, "int | None"], Plan]


@dataclass(frozen=True)
class Schedule:
    """A named schedule: how it builds a real-model plan and (optionally) a uniform chain's order."""

    name: str
    summary: str
    build: BuildFn
    uniform_order: Callable[[Chain], RankOrder] | None = None
    check_model: Callable[[ModelSpec], object] | None = None  # raises BadInput for unsupported models

    def supports(self, model: ModelSpec) -> None:
        """Raise :class:`BadInput` when this schedule cannot run ``model`` (cheap; before any work)."""
        if self.check_model is not None:
            self.check_model(model)


def _textbook(order_fn: Callable[[Chain], RankOrder], name: str, default_chunks: int) -> BuildFn:
    def build(model, batch, cost_model, hardware, chunks=None) -> Plan:
        v = chunks_per_rank(model, chunks, default_chunks, len(batch)) if default_chunks > 1 else (chunks or 1)
        return mixed_plan(model, batch, order_fn, name, v=v)

    return build


_BASELINES: tuple[Schedule, ...] = (
    Schedule("gpipe", "all forwards, then all backwards", _textbook(gpipe_order, "gpipe", 1), gpipe_order),
    Schedule(
        "1f1b", "one-forward-one-backward (PipeDream-Flush)", _textbook(one_f_one_b_order, "1f1b", 1), one_f_one_b_order
    ),
    Schedule(
        "interleaved",
        "Megatron interleaved 1F1B, 2 chunks per rank by default",
        _textbook(interleaved_order, "interleaved", 2),
        interleaved_order,
    ),
    Schedule(
        "zb-h1",
        "Zero Bubble ZB-H1: split backward, deferred weight passes",
        _textbook(zb_h1_order, "zb-h1", 1),
        zb_h1_order,
    ),
    Schedule(
        "megatron",
        "Megatron-LM: interleaved 1F1B over parameter-balanced mixed chunks",
        lambda model, batch, cm, hw, chunks=None: megatron_plan(model, batch, chunks),
        interleaved_order,
    ),
    Schedule(
        "nnscaler",
        "nnScaler*: static time-balanced 1F1B plan from a representative workload",
        lambda model, batch, cm, hw, chunks=None: nnscaler_plan(model, batch, cm),
        one_f_one_b_order,
    ),
    Schedule(
        "optimus",
        "Optimus: encoder forwards, LM interleaved 1F1B, encoder backwards",
        lambda model, batch, cm, hw, chunks=None: optimus_plan(model, batch, chunks),
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
