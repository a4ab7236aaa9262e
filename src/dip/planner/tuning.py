"""Before the tree search: tuning the starting point (the base sequence MCTS explores around).

:func:`tune_base` ranks the tracking configurations (:class:`~dip.planner.evaluate.TrackConfig`) on
the default sequence, then tries a few micro-batch orders (:func:`microbatch_orders`) with the best
configurations, and finally shifts each (module, direction)'s segment priorities by whole micro-batches
(e.g. LM backwards ahead of earlier encoder backwards) by coordinate descent.

Why micro-batch orders: every micro-batch is one long dependency chain through all ranks, and with
data-dependent sizes the order decides the pipeline fill and drain. A few small micro-batches first
bring the first backwards (which free memory) back early, so the warm-up does not stall on memory;
the remaining ones largest first leave short chains for the drain.
"""

from __future__ import annotations

import time

import numpy as np

from dip.planner.evaluate import Evaluator, TrackConfig
from dip.planner.problem import PlanProblem

__all__ = [
    "ORDER_CONFIGS",
    "RERANK",
    "SHIFTS",
    "SMALL_FIRST",
    "microbatch_orders",
    "microbatch_work",
    "shifted_sequence",
    "tune_base",
]

SHIFTS = (0, 1, 2, 4, 8)
ORDER_CONFIGS = 3  # best-ranked configurations each micro-batch order is tried with
RERANK = 4  # configurations ranked again on the tuned base
SMALL_FIRST = (0.5, 1.0, 2.0)  # small micro-batches up front, in multiples of the pipeline ranks


def shifted_sequence(
    problem: PlanProblem, shift: dict[tuple[str, int], int], mb_order: np.ndarray | None = None
) -> np.ndarray:
    """The default item order (micro-batches in ``mb_order``, default: as given) with (group, direction)
    items moved ``shift`` micro-batches earlier."""
    groups = list(problem.tg.graph.groups)
    items = problem.items
    n_mb = max(it.mb for it in items) + 1
    pos = np.arange(n_mb) if mb_order is None else np.argsort(mb_order)

    def key(i: int) -> tuple[int, int, int, int]:
        it = items[i]
        gp = groups.index(it.group)
        return (
            int(pos[it.mb]) - shift.get((it.group, it.direction), 0),
            it.direction,
            gp if it.direction == 0 else len(groups) - gp,
            int(pos[it.mb]),
        )

    return np.asarray(sorted(range(len(items)), key=key), np.int64)


def microbatch_work(problem: PlanProblem) -> np.ndarray:
    """Per micro-batch, the total compute seconds of its stages with their fastest candidates."""
    duration, _ = problem.task_durations(problem.cand.fastest.astype(np.int64))
    n_mb = max(it.mb for it in problem.items) + 1
    return np.bincount(problem.tg.task_mb, duration, minlength=n_mb)


def microbatch_orders(problem: PlanProblem) -> list[np.ndarray]:
    """Candidate micro-batch orders: as given, largest first, and ``k`` smallest (ascending) then the
    rest largest first, for ``k`` in ``SMALL_FIRST`` times the number of ranks. Duplicates removed."""
    work = microbatch_work(problem)
    n_mb = len(work)
    desc = list(np.argsort(-work, kind="stable"))
    orders = [np.arange(n_mb), np.asarray(desc)]
    for factor in SMALL_FIRST:
        k = round(factor * problem.num_ranks)
        if 0 < k < n_mb:
            orders.append(np.asarray(desc[n_mb - k :][::-1] + desc[: n_mb - k]))
    unique: list[np.ndarray] = []
    for order in orders:
        if not any(np.array_equal(order, u) for u in unique):
            unique.append(order.astype(np.int64))
    return unique


def tune_base(
    ev: Evaluator, problem: PlanProblem, state, configs: tuple[TrackConfig, ...], deadline: float
) -> tuple[list[TrackConfig], np.ndarray]:
    """Tracking configurations ranked on the tuned base sequence, and that base sequence."""
    base = problem.default_sequence
    ranked = _rank(ev, state, configs, base, deadline)
    if not ranked:
        return [state.best.config], base
    config, best_score = ranked[0]
    mb_order = None
    for order in microbatch_orders(problem)[1:]:
        seq = shifted_sequence(problem, {}, order)
        for cfg, _ in ranked[:ORDER_CONFIGS]:
            if time.perf_counter() >= deadline:
                break
            sched = ev.evaluate(seq, cfg)
            state.offer(sched)
            if sched.score < best_score - 1e-9:
                best_score, config, mb_order, base = sched.score, cfg, order, seq
    base, moved = _tune_shifts(ev, problem, state, config, mb_order, base, best_score, deadline)
    order = [cfg for cfg, _ in ranked]
    if moved or mb_order is not None:  # re-rank the leaders on the new base; the others keep their places
        top = [cfg for cfg, _ in _rank(ev, state, order[:RERANK], base, deadline)]
        order = top + [cfg for cfg in order if cfg not in top]
    return order, base


def _tune_shifts(
    ev: Evaluator,
    problem: PlanProblem,
    state,
    config: TrackConfig,
    mb_order: np.ndarray | None,
    base: np.ndarray,
    best_score: float,
    deadline: float,
) -> tuple[np.ndarray, bool]:
    """Coordinate descent over whole-micro-batch shifts per (group, direction); returns the best
    sequence and whether any shift improved on ``base``."""
    shift: dict[tuple[str, int], int] = {}
    coords = [(g, d) for g in problem.tg.graph.groups for d in (0, 1)]
    improved = True
    while improved:
        improved = False
        for coord in coords:
            for value in SHIFTS:
                if value == shift.get(coord, 0) or time.perf_counter() >= deadline:
                    continue
                trial = {**shift, coord: value}
                seq = shifted_sequence(problem, trial, mb_order)
                sched = ev.evaluate(seq, config)
                state.offer(sched)
                if sched.score < best_score - 1e-9:
                    best_score, shift, base, improved = sched.score, trial, seq, True
    return base, bool(shift)


def _rank(ev: Evaluator, state, configs, base: np.ndarray, deadline: float) -> list[tuple[TrackConfig, float]]:
    scored = []
    for cfg in configs:
        if time.perf_counter() >= deadline:
            break
        sched = ev.evaluate(base, cfg)
        state.offer(sched)
        scored.append((sched.score, str(cfg), cfg))
    scored.sort(key=lambda x: (x[0], x[1]))
    return [(cfg, score) for score, _, cfg in scored]
