"""Online calibration: measured action times correct the cost model used for the next steps.

The shipped CPU calibration is profiled once, in one setting (threads, load); a rank of ``dip train``
runs in another. After every step, rank 0 compares each compute action's measured time (its waits for
messages excluded) with the simulator's time for the same action and keeps one factor per
``(module, pass)`` (``f`` for forwards, ``b`` for backward passes: ``B``, ``I``, ``W``). The next step's
plan is simulated with :class:`ScaledCostModel` (the cost model with its times multiplied by those
factors) to predict its time; plans themselves are made with the shipped cost model. Step ``k``'s prediction thus
only uses measurements of steps ``< k`` (with the planner service, of the steps done when it planned ``k``). A compute
action's measured time runs until the next compute action starts, so the executor's per-action
overhead (posting its sends and receives) is part of what the factors absorb.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from dip.cost import ChunkCost, CostModel, PassTimes
from dip.data.meta import BatchMeta, work_for
from dip.schedule.ir import Action, Op, Plan

if TYPE_CHECKING:  # the executor imports torch; the planner's processes import this module without it
    from dip.runtime.executor import ActionTime

__all__ = ["PASS_OF", "OnlineCalibration", "ScaledCostModel", "busy_times"]

logger = logging.getLogger(__name__)

PASS_OF = {Op.F: "f", Op.B: "b", Op.I: "b", Op.W: "b"}


class ScaledCostModel(CostModel):
    """A :class:`CostModel` whose pass times are scaled per ``(module, "f" | "b")``."""

    def __init__(self, base: CostModel, factors: Mapping[tuple[str, str], float]):
        super().__init__(base.model, base.hardware, base.tp, base.dtype_bytes, base.flash_attention)
        self.factors = dict(factors)

    def _k(self, module, kind: str) -> float:
        name = module if isinstance(module, str) else module.name
        return self.factors.get((name, kind), 1.0)

    def _scale(self, module, t: PassTimes) -> PassTimes:
        kf, kb = self._k(module, "f"), self._k(module, "b")
        return PassTimes(t.f * kf, t.i * kb, t.w * kb)

    def layer_times(self, module, work) -> PassTimes:
        return self._scale(module, super().layer_times(module, work))

    def pre_times(self, module, work) -> PassTimes:
        return self._scale(module, super().pre_times(module, work))

    def post_times(self, module, work) -> PassTimes:
        return self._scale(module, super().post_times(module, work))

    def chunk_costs(self, module, work, layer_start: int, layer_end: int, strategies="none") -> ChunkCost:
        c = super().chunk_costs(module, work, layer_start, layer_end, strategies)
        kf, kb = self._k(module, "f"), self._k(module, "b")
        return replace(c, f=c.f * kf, i=c.i * kb, w=c.w * kb, recompute_s=c.recompute_s * kb)


@dataclass
class OnlineCalibration:
    """Factors per ``(module, pass)``, refined after every step (geometric moving average)."""

    base: CostModel
    weight: float = 0.5  # share of the newest step in the (log) factor once a factor exists
    factors: dict[tuple[str, str], float] = field(default_factory=dict)
    keep_observations: bool = False  # keep every (pass, modelled seconds by module kind, busy seconds)
    observations: list[tuple[str, dict[str, float], float]] = field(default_factory=list)

    def cost_model(self) -> CostModel:
        return ScaledCostModel(self.base, self.factors) if self.factors else self.base

    def update(self, plan: Plan, batch: BatchMeta, measured: Sequence[Sequence[ActionTime]]) -> None:
        """Refine the factors with one step: ``measured[rank]`` holds the actions of ``plan`` (run on
        ``batch``) as that rank measured them. Per pass, the measured busy time of each compute action is fitted
        as ``sum over the chunk's modules of factor(module) * base time of that module's part``
        (least squares), so mixed chunks inform every module they hold."""
        rows: dict[str, list[tuple[dict[str, float], float]]] = {"f": [], "b": []}
        for acts in measured:
            for action, busy in busy_times(acts):
                kind = PASS_OF.get(action.op)
                if kind is not None:
                    base = self._base_times(plan, batch, action)
                    rows[kind].append((base, busy))
                    if self.keep_observations:
                        self.observations.append((kind, self._by_kind(base), busy))
        for kind, obs in rows.items():
            for module, k in _fit(obs).items():
                key = (module, kind)
                old = self.factors.get(key)
                self.factors[key] = (
                    k if old is None else math.exp((1 - self.weight) * math.log(old) + self.weight * math.log(k))
                )
        logger.debug("online calibration after batch %s: %s", batch.index, self.summary())

    def _base_times(self, plan: Plan, batch: BatchMeta, action: Action) -> dict[str, float]:
        """Shipped-model seconds of ``action`` per module of its chunk."""
        chunk = plan.graph.chunks[action.chunk]
        unit = plan.units[chunk.group][action.unit]
        mb = batch.microbatches[unit.mb]
        strategies = plan.strategy(action.chunk, action.unit)
        out: dict[str, float] = {}
        offset = 0
        for part in chunk.parts:
            spec = self.base.model.module(part.module)
            inst = slice(unit.start, unit.stop) if unit.stop > unit.start else None
            work = work_for(self.base.model, spec, mb, inst)
            strat = tuple(strategies[offset : offset + part.layers])
            offset += part.layers
            if work.empty:
                continue
            c = self.base.chunk_costs(spec, work, part.layer_start, part.layer_end, strat)
            t = {Op.F: c.f, Op.I: c.i, Op.W: c.w, Op.B: c.i + c.w}[action.op]
            out[part.module] = out.get(part.module, 0.0) + t
        return out

    def _by_kind(self, base: Mapping[str, float]) -> dict[str, float]:
        out: dict[str, float] = {}
        for module, t in base.items():
            kind = self.base.model.module(module).kind
            out[kind] = out.get(kind, 0.0) + t
        return out

    def summary(self) -> dict[str, float]:
        return {f"{m} {k}": round(v, 4) for (m, k), v in sorted(self.factors.items())}


def _fit(obs: Sequence[tuple[dict[str, float], float]]) -> dict[str, float]:
    """Least-squares factors ``k`` with ``busy ~= sum_m k[m] * base[m]``; modules whose factor the data
    cannot pin down (or would make negative) get the ratio of their single-module actions, if any."""
    modules = sorted({m for base, _ in obs for m in base})
    if not modules:
        return {}
    a = np.array([[base.get(m, 0.0) for m in modules] for base, _ in obs])
    y = np.array([busy for _, busy in obs])
    keep = a.sum(axis=1) > 0
    a, y = a[keep], y[keep]
    if not len(y):
        return {}
    k, *_ = np.linalg.lstsq(a, y, rcond=None)
    out = {}
    for j, m in enumerate(modules):
        if np.isfinite(k[j]) and k[j] > 0:
            out[m] = float(k[j])
        else:
            solo = [(b[m], t) for b, t in obs if set(b) == {m} and b[m] > 0]
            if solo:
                out[m] = sum(t for _, t in solo) / sum(b for b, _ in solo)
    return out


def busy_times(rows: Sequence[ActionTime]) -> list[tuple[Action, float]]:
    """``(action, busy seconds)`` of every compute action of one rank: from its start to the next compute
    action's start (so the sends and receives it posts count as its overhead), minus its waits."""
    rows = sorted(rows, key=lambda t: t.start)
    compute = [i for i, t in enumerate(rows) if t.action.op in PASS_OF]
    out = []
    for k, i in enumerate(compute):
        t = rows[i]
        end = rows[compute[k + 1]].start if k + 1 < len(compute) else max(x.end for x in rows[i:])
        out.append((t.action, max(end - t.start - t.wait, 0.0)))
    return out
