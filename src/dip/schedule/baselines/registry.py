"""Every schedule by name: the baselines of the paper, textbook schedules, and DIP's planner.

* :func:`get_generator` -> :class:`Schedule` (BadInput listing the valid names for an unknown one);
* :func:`build_baseline_plan` -> the :class:`Plan` of one batch on a real model, memory strategy chosen;
* :func:`simulate_schedule` -> the plan with its stage costs and simulation result (what ``dip simulate`` needs);
* :func:`build_uniform_plan` -> a schedule-only plan: one chain of ``pp * chunks`` chunks, ``m`` units.

``"dip"`` is offered when :mod:`dip.planner` provides ``plan_batch``; its plans carry their own
per-layer memory strategies.
"""
from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Callable

from dip.data.meta import BatchMeta
from dip.errors import BadInput, choices_error
from dip.schedule.baselines.common import Chain, chain_of
from dip.schedule.baselines.gpipe import gpipe_order
from dip.schedule.baselines.interleaved import interleaved_order
from dip.schedule.baselines.megatron import megatron_plan
from dip.schedule.baselines.memory import SimulatedPlan, fit_uniform_memory, simulate_plan
from dip.schedule.baselines.nnscaler import nnscaler_plan
from dip.schedule.baselines.one_f_one_b import one_f_one_b_order
from dip.schedule.baselines.optimus import encoder_and_lm, optimus_plan
from dip.schedule.baselines.plans import chunks_per_rank, mixed_plan
from dip.schedule.baselines.zero_bubble import zb_h1_order
from dip.schedule.ir import Plan, RankOrder
from dip.schedule.units import linear_stage_graph, uniform_units
from dip.spec.model import ModelSpec

UNIFORM_GROUP = "model"
BuildFn = Callable[[ModelSpec, BatchMeta, object, object, "int | None"], Plan]


@dataclass(frozen=True)
class Schedule:
    """A named schedule: how it builds a real-model plan and (optionally) a uniform chain's order."""

    name: str
    summary: str
    build: BuildFn
    uniform_order: Callable[[Chain], RankOrder] | None = None
    fits_memory: bool = True  # choose a uniform memory strategy after building
    check_model: Callable[[ModelSpec], object] | None = None  # raises BadInput for unsupported models
    plan_and_simulate: Callable[..., SimulatedPlan] | None = None  # a planner that simulates its own plan

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
    Schedule("1f1b", "one-forward-one-backward (PipeDream-Flush)", _textbook(one_f_one_b_order, "1f1b", 1),
             one_f_one_b_order),
    Schedule("interleaved", "Megatron interleaved 1F1B, 2 chunks per rank by default",
             _textbook(interleaved_order, "interleaved", 2), interleaved_order),
    Schedule("zb-h1", "Zero Bubble ZB-H1: split backward, deferred weight passes",
             _textbook(zb_h1_order, "zb-h1", 1), zb_h1_order),
    Schedule("megatron", "Megatron-LM: interleaved 1F1B over parameter-balanced mixed chunks",
             lambda model, batch, cm, hw, chunks=None: megatron_plan(model, batch, chunks), interleaved_order),
    Schedule("nnscaler", "nnScaler*: static time-balanced 1F1B plan from a representative workload",
             lambda model, batch, cm, hw, chunks=None: nnscaler_plan(model, batch, cm), one_f_one_b_order),
    Schedule("optimus", "Optimus: encoder forwards, LM interleaved 1F1B, encoder backwards",
             lambda model, batch, cm, hw, chunks=None: optimus_plan(model, batch, chunks),
             check_model=encoder_and_lm),
)
SCHEDULES: tuple[str, ...] = tuple(s.name for s in _BASELINES)


def _planner_fn() -> Callable | None:
    try:
        mod = importlib.import_module("dip.planner")
    except ImportError:
        return None
    return getattr(mod, "plan_batch", None)


def _dip_schedule(plan_batch: Callable) -> Schedule:
    accepted = set(inspect.signature(plan_batch).parameters)

    def search(model, batch, cost_model, hardware, memory_limit_bytes=None):
        extra = {"cost_model": cost_model, "hardware": hardware, "memory_limit_bytes": memory_limit_bytes}
        found = plan_batch(model, batch, **{k: v for k, v in extra.items() if k in accepted and v is not None})
        plan = getattr(found, "plan", found)
        plan.schedule = plan.schedule or "dip"
        return found, plan

    def build(model, batch, cost_model, hardware, chunks=None) -> Plan:
        return search(model, batch, cost_model, hardware)[1]

    def plan_and_simulate(model, batch, cost_model, hardware, memory_limit_bytes=None, check=None) -> SimulatedPlan:
        found, plan = search(model, batch, cost_model, hardware, memory_limit_bytes)
        if check is not None:
            check(plan)
        sim, costs = getattr(found, "sim", None), getattr(found, "costs", None)
        if sim is None or costs is None or model.parallel.dp > 1:
            return simulate_plan(plan, model, cost_model, batch, hardware, memory_limit_bytes)
        return SimulatedPlan(plan, costs, sim)

    return Schedule("dip", "DIP: modality-aware partition, searched interleaving, per-layer memory", build,
                    fits_memory=False, plan_and_simulate=plan_and_simulate)


def schedule_names() -> list[str]:
    """Names of the available schedules (``dip`` only when the planner is installed)."""
    return [*SCHEDULES, *(["dip"] if _planner_fn() is not None else [])]


def get_generator(name: str) -> Schedule:
    """The schedule called ``name`` (case-insensitive)."""
    key = str(name).strip().lower()
    for s in _BASELINES:
        if s.name == key:
            return s
    if key == "dip":
        fn = _planner_fn()
        if fn is not None:
            return _dip_schedule(fn)
    raise choices_error("schedule", name, schedule_names())


def simulate_schedule(name: str, model: ModelSpec, batch: BatchMeta, cost_model, hardware, chunks: int | None = None,
                      memory_limit_bytes: float | None = None, check: Callable[[Plan], None] | None = None
                      ) -> SimulatedPlan:
    """Build the plan of ``batch`` under schedule ``name`` and simulate it (baselines: fitting memory).

    ``check`` (e.g. the plan validator) runs on the plan before any simulation."""
    sched = get_generator(name)
    sched.supports(model)
    if sched.plan_and_simulate is not None:
        return sched.plan_and_simulate(model, batch, cost_model, hardware, memory_limit_bytes, check)
    plan = sched.build(model, batch, cost_model, hardware, chunks)
    if check is not None:
        check(plan)
    if sched.fits_memory:
        return fit_uniform_memory(plan, model, cost_model, batch, hardware, memory_limit_bytes)
    return simulate_plan(plan, model, cost_model, batch, hardware, memory_limit_bytes)


def build_baseline_plan(name: str, model: ModelSpec, batch: BatchMeta, cost_model, hardware,
                        chunks: int | None = None, memory_limit_bytes: float | None = None) -> Plan:
    """The plan of ``batch`` under schedule ``name``, with the cheapest uniform memory strategy that fits."""
    return simulate_schedule(name, model, batch, cost_model, hardware, chunks, memory_limit_bytes).plan


def build_uniform_plan(name: str, pp: int, m: int, chunks: int = 1) -> Plan:
    """Schedule-only plan: one chain of ``pp * chunks`` single-layer chunks (loop placement), ``m`` units."""
    sched = get_generator(name)
    if sched.uniform_order is None:
        raise BadInput(f"schedule {sched.name} needs a model (--model); uniform costs support: "
                       f"{', '.join(s.name for s in _BASELINES if s.uniform_order is not None)}")
    if pp < 1 or m < 1 or chunks < 1:
        raise BadInput(f"pp, micro-batches and chunks must be >= 1, got pp {pp}, micro-batches {m}, chunks {chunks}")
    graph = linear_stage_graph(pp, chunks, module=UNIFORM_GROUP)
    units = uniform_units(UNIFORM_GROUP, m)
    order = sched.uniform_order(chain_of(graph, UNIFORM_GROUP, units[UNIFORM_GROUP]))
    return Plan(graph, units, (), order, schedule=sched.name, meta={"uniform": True, "chunks_per_rank": chunks})
