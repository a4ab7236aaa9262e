"""One search rollout: segment priorities -> interleaving -> memory optimisation -> simulation.

:class:`Evaluator` scores an item sequence (segment priorities) under a :class:`TrackConfig`: which
durations the interleaver plans with and which activation bytes it tracks against the memory limit.
The paper's setting is the most memory-efficient candidate for both (``TrackConfig(0.0, "memory")``);
tracking bytes of faster candidates (``level`` > 0) lets the interleaver keep fewer stages in flight
instead of recomputing, and planning with the fastest durations matches the final timeline better.
``backward="tail"`` orders the ready backwards critical path first (the longest dependency path still
ahead, :func:`tail_keys`) instead of by the searched priorities, and ``drain`` runs forwards first in
the pipeline drain (:func:`~dip.planner.interleave.interleave`): with micro-batches of very different
sizes these shorten the drain, where the last micro-batches' long chains otherwise leave ranks idle.
Every score is the simulator's makespan of the final order with the chosen candidates. With
``passes > 1`` a rollout interleaves again with the bytes and durations of the candidates the memory
phase chose, while that improves the score (the search uses 3 passes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from dip.planner.interleave import interleave, rank_orders
from dip.planner.memory import greedy_select, ilp_select
from dip.planner.problem import PlanProblem
from dip.sim.kernel import OK, critical_path, simulate_arrays

__all__ = [
    "DEFAULT_CONFIGS",
    "LARGE_CONFIGS",
    "PAPER_CONFIG",
    "Evaluator",
    "Schedule",
    "TrackConfig",
    "active_items",
    "tail_keys",
]


@dataclass(frozen=True)
class TrackConfig:
    """``level``: tracked bytes between the most memory-efficient (0) and the fastest (1) candidate;
    ``durations``: "memory" (most memory-efficient candidate) or "fast" (fastest candidate);
    ``reserve``, ``alternate``, ``drain``: options of :func:`~dip.planner.interleave.interleave`;
    ``backward``: "sequence" (backwards ordered by the searched priorities) or "tail" (the backward
    with the longest dependency path still ahead of it first, with the planning durations)."""

    level: float = 0.0
    durations: str = "memory"
    reserve: float = 0.0
    alternate: bool = True
    backward: str = "sequence"
    drain: bool = False

    def __str__(self) -> str:
        extra = (",backward=tail" if self.backward == "tail" else "") + (",drain" if self.drain else "")
        return (
            f"level={self.level:g},durations={self.durations},reserve={self.reserve:g},"
            f"{'alternate' if self.alternate else 'priority'}{extra}"
        )


PAPER_CONFIG = TrackConfig(0.0, "memory")
DEFAULT_CONFIGS: tuple[TrackConfig, ...] = (
    TrackConfig(0.0, "memory"),
    TrackConfig(0.0, "fast"),
    TrackConfig(0.5, "fast"),
    TrackConfig(1.0, "fast"),
    TrackConfig(0.0, "fast", alternate=False),
    TrackConfig(1.0, "fast", alternate=False),
    TrackConfig(0.0, "memory", backward="tail", drain=True),
    TrackConfig(0.0, "fast", backward="tail", drain=True),
    TrackConfig(0.5, "fast", backward="tail", drain=True),
    TrackConfig(0.0, "memory", backward="tail"),
    TrackConfig(0.0, "fast", backward="tail"),
)
# large problems skip the configurations that never came within 0.3% of the best on the presets' batches
LARGE_CONFIGS: tuple[TrackConfig, ...] = tuple(c for c in DEFAULT_CONFIGS if c.alternate and c.level < 1.0)


@dataclass
class Schedule:
    """A scored candidate: per-rank order, per-stage memory candidate and simulated times."""

    makespan: float
    sequence: np.ndarray
    ptr: np.ndarray
    tasks: np.ndarray
    choice: np.ndarray
    start: np.ndarray
    end: np.ndarray
    peak_bytes: np.ndarray
    feasible: bool
    config: TrackConfig
    items: np.ndarray
    overflow: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ilp_ranks: int = 0

    @property
    def score(self) -> float:
        return self.makespan if self.feasible else math.inf


def active_items(problem: PlanProblem, config: TrackConfig) -> np.ndarray | None:
    """Mask of the items whose priorities can change the interleaving under ``config`` (None: all).
    With ``backward="tail"`` and the 1F1B alternation the backward items' priorities are never read."""
    if config.backward == "tail" and config.alternate:
        return np.asarray([it.direction == 0 for it in problem.items], bool)
    return None


def tail_keys(problem: PlanProblem, duration: np.ndarray) -> np.ndarray:
    """Per task an int64 priority key, lower for a longer dependency path from the task's start to the
    end of the step (durations + p2p delays): critical-path-first order."""
    tg = problem.tg
    _, tail = critical_path(duration, tg.succ_ptr, tg.succ_idx, problem.succ_delay, tg.pred_ptr, tg.pred_idx)
    return -np.round(tail * 1e9).astype(np.int64)


class Evaluator:
    """Scores item sequences for one :class:`PlanProblem` (see module docstring)."""

    def __init__(self, problem: PlanProblem, ilp: bool = False, ilp_time_limit: float = 0.2, passes: int = 2):
        self.p = problem
        self.ilp = ilp
        self.passes = max(int(passes), 1)
        self.ilp_time_limit = ilp_time_limit
        tg, cand = problem.tg, problem.cand
        self.cand_t = cand.f + cand.b
        self.cap = problem.safe_cap.astype(np.float64)
        self.min_mem = np.zeros(len(cand.count), np.int64)
        self.fastest = cand.fastest.astype(np.int64)
        self.is_f = tg.task_op == 0
        self.holds = np.where(self.is_f, 1, -1).astype(np.int64)
        self._tracks: dict[TrackConfig, tuple[np.ndarray, np.ndarray]] = {}
        self.calls = 0

    def _track(self, config: TrackConfig) -> tuple[np.ndarray, np.ndarray]:
        hit = self._tracks.get(config)
        if hit is None:
            dur_choice = self.fastest if config.durations == "fast" else self.min_mem
            duration, _ = self.p.task_durations(dur_choice)
            act_choice = self.p.cand.at_level(config.level)
            act = self.p.cand.mem[np.arange(len(act_choice)), act_choice]
            hit = self._tracks[config] = (duration, act.astype(np.float64))
        return hit

    def evaluate(self, items: np.ndarray, config: TrackConfig = PAPER_CONFIG, ilp: bool | None = None) -> Schedule:
        """Interleave with priorities from ``items``, choose memory candidates, simulate."""
        self.calls += 1
        p = self.p
        prio = p.priorities(items)
        duration, act = self._track(config)
        sequence, ptr, tasks = self._interleave(prio, duration, act, config)
        sched = self.finish(sequence, ptr, tasks, config, items, self.ilp if ilp is None else ilp)
        for _ in range(self.passes - 1):  # re-plan with the bytes and durations the memory phase chose
            if not sched.feasible:
                break
            rows = np.arange(len(sched.choice))
            duration, _ = p.task_durations(sched.choice)
            again = self.evaluate_tracked(
                items, duration, p.cand.mem[rows, sched.choice].astype(np.float64), config, prio=prio
            )
            self.calls -= 1
            if again.score >= sched.score:
                break
            sched = again
        return sched

    def evaluate_tracked(
        self,
        items: np.ndarray,
        duration: np.ndarray,
        act: np.ndarray,
        config: TrackConfig,
        ilp: bool = False,
        prio: np.ndarray | None = None,
    ) -> Schedule:
        """Like :meth:`evaluate` with explicit planning durations (per task) and tracked bytes (per stage);
        ``prio`` (per task) overrides the priorities derived from ``items``."""
        self.calls += 1
        prio = self.p.priorities(items) if prio is None else prio
        sequence, ptr, tasks = self._interleave(prio, duration, act, config)
        return self.finish(sequence, ptr, tasks, config, items, ilp)

    def _interleave(self, prio: np.ndarray, duration: np.ndarray, act: np.ndarray, config: TrackConfig):
        """The dual-queue interleaving of ``config``; returns ``(sequence, ptr, tasks)``."""
        p, tg = self.p, self.p.tg
        if config.backward == "tail":
            prio = np.where(self.is_f, prio, tail_keys(p, duration))
        sequence, _, _, _, _ = interleave(
            p.num_ranks,
            tg.task_rank,
            tg.task_op,
            tg.task_stage,
            duration,
            act,
            self.cap,
            prio,
            tg.pred_ptr,
            tg.succ_ptr,
            tg.succ_idx,
            p.succ_delay,
            float(config.reserve),
            bool(config.alternate),
            bool(config.drain),
        )
        ptr, tasks = rank_orders(sequence, tg.task_rank, p.num_ranks)
        return sequence, ptr, tasks

    def finish(self, sequence, ptr, tasks, config: TrackConfig, items, ilp: bool) -> Schedule:
        """Memory optimisation and simulation of a fixed order."""
        p, cand = self.p, self.p.cand
        choice, overflow = greedy_select(
            ptr, tasks, p.tg.task_op, p.tg.task_stage, self.cand_t, cand.mem, cand.count, self.cap
        )
        ilp_ranks = 0
        if ilp and overflow.max() <= 0:
            for r in range(p.num_ranks):
                better = ilp_select(
                    ptr,
                    tasks,
                    p.tg.task_op,
                    p.tg.task_stage,
                    self.cand_t,
                    cand.mem,
                    cand.count,
                    self.cap,
                    r,
                    choice,
                    time_limit=self.ilp_time_limit,
                )
                if better is not None:
                    choice = better
                    ilp_ranks += 1
        return self.simulate(sequence, ptr, tasks, choice, config, items, overflow, ilp_ranks)

    def simulate(self, sequence, ptr, tasks, choice, config, items, overflow=None, ilp_ranks=0) -> Schedule:
        p, tg = self.p, self.p.tg
        duration, act = p.task_durations(choice)
        alloc = np.where(self.is_f, act, 0.0)
        free = np.where(self.is_f, 0.0, act)
        status, makespan, start, end, _, _, peak, _, _, _ = simulate_arrays(
            ptr, tasks, *tg.kernel_arrays(duration, alloc, free, self.holds)
        )
        fits = bool(np.all(peak <= self.cap + 1e-6))
        feasible = status == OK and fits
        return Schedule(
            float(makespan),
            sequence,
            ptr,
            tasks,
            choice,
            start,
            end,
            peak,
            feasible,
            config,
            np.asarray(items),
            overflow if overflow is not None else np.zeros(p.num_ranks),
            ilp_ranks,
        )
