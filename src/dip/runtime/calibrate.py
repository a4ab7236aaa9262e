"""Online calibration: measured action times correct the cost model used for the next steps.

The shipped CPU calibration is profiled once, in one setting (threads, load); a rank of ``dip train``
runs in another. After every step, rank 0 compares each compute action's measured time (its waits for
messages excluded) with the simulator's time for the same action and keeps one factor per
``(module, pass)`` (``f`` for forwards, ``b`` for backward passes: ``B``, ``I``, ``W``). The next step
is planned and predicted with :class:`ScaledCostModel`: the cost model with its times multiplied by
those factors. Step ``k``'s prediction thus only uses measurements of steps ``< k``. A compute
action's measured time runs until the next compute action starts, so the executor's per-action
overhead (posting its sends and receives) is part of what the factors absorb.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

from dip.cost import ChunkCost, CostModel, PassTimes

PASS_OF = {"F": "f", "B": "b", "I": "b", "W": "b"}


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

    def cost_model(self) -> CostModel:
        return ScaledCostModel(self.base, self.factors) if self.factors else self.base

    def update(self, predicted: Mapping[int, Sequence[tuple]], measured: Sequence[Sequence[tuple]]) -> None:
        """``predicted[rank]``: simulated ``(action, start, end, modules)``; ``measured[rank]``: the step's
        ``(action, start, end, wait)``. Both for the same plan (made with the current factors)."""
        sim: dict[tuple[int, str], tuple[float, str]] = {}
        for r, rows in predicted.items():
            for a, s, e, modules in rows:
                sim[(int(r), a)] = (e - s, modules)
        sums: dict[tuple[str, str], list[float]] = {}
        for r, rows in enumerate(measured):
            for a, busy in _busy_times(rows):
                got = sim.get((r, a))
                kind = PASS_OF.get(_op(a))
                if got is None or kind is None or got[0] <= 0:
                    continue
                for module in got[1].split("+"):
                    acc = sums.setdefault((module, kind), [0.0, 0.0])
                    acc[0] += busy
                    acc[1] += got[0]
        for key, (meas, pred) in sums.items():
            if meas <= 0 or pred <= 0:
                continue
            ratio = meas / pred
            old = self.factors.get(key)
            new = ratio * (old or 1.0)
            self.factors[key] = new if old is None else math.exp(
                (1 - self.weight) * math.log(old) + self.weight * math.log(new))

    def summary(self) -> dict[str, float]:
        return {f"{m} {k}": round(v, 4) for (m, k), v in sorted(self.factors.items())}


def _busy_times(rows: Sequence[tuple]) -> list[tuple[str, float]]:
    """``(action, busy seconds)`` of every compute action of one rank: from its start to the next compute
    action's start (so the sends and receives it posts count as its overhead), minus its waits."""
    rows = sorted(rows, key=lambda x: x[1])
    compute = [i for i, x in enumerate(rows) if PASS_OF.get(_op(x[0]))]
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
