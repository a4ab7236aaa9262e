"""Online calibration: measured action times correct the cost model used for the next steps.

The shipped CPU calibration is profiled once, in one setting (threads, load); a rank of ``dip train``
runs in another. After every step, rank 0 compares each compute action's measured time (its waits for
messages excluded) with the simulator's time for the same action and keeps one factor per
``(module, pass)`` (``f`` for forwards, ``b`` for backward passes: ``B``, ``I``, ``W``). The next step's
plan is simulated with :class:`ScaledCostModel` (the cost model with its times multiplied by those
factors) to predict its time; plans themselves are made with the shipped cost model. Step ``k``'s prediction thus only uses measurements of steps ``< k``. A compute
action's measured time runs until the next compute action starts, so the executor's per-action
overhead (posting its sends and receives) is part of what the factors absorb.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import numpy as np

from dip.cost import ChunkCost, CostModel, PassTimes
from dip.data.meta import BatchMeta, work_for
from dip.schedule.ir import Action, Op, Plan

PASS_OF = {"F": "f", "B": "b", "I": "b", "W": "b"}
PRIOR_WEIGHT = 2.0  # of the runtime-factor fit's priors, in relative-error units


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

    def update(self, plan: Plan, batch: BatchMeta, measured: Sequence[Sequence[tuple]]) -> None:
        """Refine the factors with one step: ``measured[rank]`` holds ``(action, start, end, wait)`` of
        ``plan`` (run on ``batch``). Per pass, the measured busy time of each compute action is fitted
        as ``sum over the chunk's modules of factor(module) * base time of that module's part``
        (least squares), so mixed chunks inform every module they hold."""
        rows: dict[str, list[tuple[dict[str, float], float]]] = {"f": [], "b": []}
        for acts in measured:
            for a, busy in _busy_times(acts):
                action = Action.parse(a)
                kind = PASS_OF.get(action.op.value)
                if kind is not None:
                    base = self._base_times(plan, batch, action)
                    rows[kind].append((base, busy))
                    if self.keep_observations:
                        self.observations.append((kind, self._by_kind(base), busy))
        for kind, obs in rows.items():
            for module, k in _fit(obs).items():
                key = (module, kind)
                old = self.factors.get(key)
                self.factors[key] = k if old is None else math.exp(
                    (1 - self.weight) * math.log(old) + self.weight * math.log(k))

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
            strat = tuple(strategies[offset:offset + part.layers])
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


def _busy_times(rows: Sequence[tuple]) -> list[tuple[str, float]]:
    """``(action, busy seconds)`` of every compute action of one rank: from its start to the next compute
    action's start (so the sends and receives it posts count as its overhead), minus its waits."""
    rows = sorted(rows, key=lambda x: x[1])
    compute = [i for i, x in enumerate(rows) if _op(x[0]) in PASS_OF]
    out = []
    for k, i in enumerate(compute):
        a, s, e, wait = rows[i]
        end = rows[compute[k + 1]][1] if k + 1 < len(compute) else max(x[2] for x in rows[i:])
        out.append((a, max(end - s - wait, 0.0)))
    return out


def _op(action: str) -> str:
    m = _OP.match(action)
    return m.group(1) if m else ""


_OP = re.compile(r"^\d+([A-Z_]+)")


def measure_runtime_factors(hardware: str, models: Sequence[str], steps: int = 6, seed: int = 1,
                            schedules: Sequence[str] = ("dip", "1f1b")) -> tuple[dict, dict, dict]:
    """Runtime factors and per-action overheads for the calibration file ``hardware``.

    The executor runs ``schedules`` on each model (2 local processes,
    :func:`dip.runtime.compare.compare_schedules`); every compute action's busy time is fitted, per pass,
    as ``sum over its module parts of factor(kind) * modelled seconds + overhead * parts`` (non-negative
    least squares on relative errors over all models and schedules together, with weak priors factor 1
    and overhead 0). Returns ``(factors by kind and pass,
    overhead by pass, report)``; the report holds the fit's median relative error per action before and
    after, and the online factors per model and schedule."""
    from scipy.optimize import nnls

    from dip.runtime.compare import compare_schedules

    obs: list[tuple[str, dict[str, float], float]] = []
    online: dict[str, dict] = {}
    for name in models:
        res = compare_schedules(name, list(schedules), steps, seed=seed, hardware=hardware, observations=True)
        online[name] = {s: r["calibration_factors"] for s, r in res.items()}
        obs += [o for r in res.values() for o in r["observations"]]
    factors: dict[str, dict[str, float]] = {}
    overhead: dict[str, float] = {}
    report: dict[str, Any] = {"models": list(models), "steps": steps, "schedules": list(schedules),
                              "online_factors": online, "actions": {}}
    for pass_ in ("f", "b"):
        rows = [(base, busy) for p, base, busy in obs if p == pass_ and base]
        if not rows:
            continue
        kinds = sorted({k for base, _ in rows for k in base})
        a = np.array([[base.get(k, 0.0) for k in kinds] + [len(base)] for base, _ in rows])
        y = np.array([busy for _, busy in rows])
        w = 1.0 / np.maximum(y, 1e-6)  # relative errors: small and large actions count alike
        # weak priors (factor 1, overhead 0 relative to a median action) keep the fit well posed when
        # the data cannot tell a module's factor from the overhead
        prior = np.diag([PRIOR_WEIGHT] * len(kinds) + [PRIOR_WEIGHT / float(np.median(y))])
        x, _ = nnls(np.vstack([a * w[:, None], prior]),
                    np.concatenate([y * w, [PRIOR_WEIGHT] * len(kinds) + [0.0]]))
        for k, v in zip(kinds, x[:-1]):
            if v > 0:
                factors.setdefault(k, {})[pass_] = round(float(v), 4)
        overhead[pass_] = float(x[-1])
        before = np.median(np.abs(a[:, :-1].sum(axis=1) - y) / y)
        after = np.median(np.abs(a @ x - y) / y)
        report["actions"][pass_] = {"count": len(rows), "median_rel_err_before": float(before),
                                    "median_rel_err_after": float(after)}
    return factors, overhead, report
