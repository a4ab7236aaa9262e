"""The incumbent of a search: the best schedule so far, how it improved, and the pool of good starts.

The search phases (:mod:`dip.planner.tuning`, :mod:`dip.planner.polish`, :mod:`dip.planner.parallel`)
read and offer schedules through :class:`Incumbent`; :class:`SearchState` is the implementation the
driver uses.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Protocol

from dip.planner.evaluate import Schedule

__all__ = ["Incumbent", "SearchState"]


class Incumbent(Protocol):
    """What a search phase needs: the best schedule, the phase name, and a way to offer a schedule."""

    best: Schedule
    phase: str

    def offer(self, sched: Schedule) -> bool:
        """Keep ``sched`` when it beats the best; True if it did."""
        ...


@dataclass
class SearchState:
    """Incumbent tracking shared by the search phases."""

    t0: float
    best: Schedule
    initial: Schedule
    curve: list[tuple[float, float]] = field(default_factory=list)
    rollouts: int = 0
    time_to_best: float = 0.0
    _phase: str = "initial"
    gains: dict[str, float] = field(default_factory=dict)
    phase_start: dict[str, float] = field(default_factory=dict)
    pool: dict[str, Schedule] = field(default_factory=dict)

    @property
    def phase(self) -> str:
        return self._phase

    @phase.setter
    def phase(self, name: str) -> None:
        self._phase = name
        self.phase_start.setdefault(name, time.perf_counter() - self.t0)

    def remember(self, sched: Schedule) -> None:
        """Keep the best schedule per tracking configuration: diverse starting points for polishing."""
        key = str(sched.config)
        if sched.feasible and (key not in self.pool or sched.score < self.pool[key].score):
            self.pool[key] = sched

    def offer(self, sched: Schedule) -> bool:
        if sched.score < self.best.score - 1e-12:
            if math.isfinite(self.best.score):
                self.gains[self.phase] = self.gains.get(self.phase, 0.0) + self.best.score - sched.score
            self.best = sched
            self.time_to_best = time.perf_counter() - self.t0
            self.curve.append((self.time_to_best, sched.makespan))
            return True
        return False
