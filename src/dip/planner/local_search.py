"""Order polishing by local search (beyond the paper): move stages within a rank's order.

A move takes one stage of a rank's order and re-inserts it up to ``reach`` positions earlier or later
(``reach = 1`` is an adjacent swap). It is kept when it lowers ``(makespan, sum of rank end times)``
lexicographically and every rank stays within its memory capacity; the simulator's kernel times each
move and rejects deadlocking ones. The greedy interleaving decides stage by stage; moves around the
critical path recover what its local decisions lose, most visibly on small batches where pipeline
fill and drain dominate.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from dip.sim.kernel import OK, simulate_arrays

__all__ = ["move_descent", "move_item", "unit_descent"]


@njit(cache=True)
def _score(ptr, tasks, sim):
    """``(makespan, sum of rank end times)`` of an order, inf when it deadlocks or a rank overflows.

    ``sim``: the simulator's arrays ``(duration, pred_ptr, pred_idx, pred_delay, succ_ptr, succ_idx,
    alloc, free, holds)`` and the per-rank activation capacity ``cap``, as one tuple."""
    duration, pred_ptr, pred_idx, pred_delay, succ_ptr, succ_idx, alloc, free, holds, cap = sim
    status, span, _, _, _, rank_end, peak, _, _, _ = simulate_arrays(
        ptr, tasks, duration, pred_ptr, pred_idx, pred_delay, succ_ptr, succ_idx, alloc, free, holds
    )
    if status != OK:
        return np.inf, np.inf
    for q in range(peak.shape[0]):
        if peak[q] > cap[q] + 1e-6:
            return np.inf, np.inf
    return span, rank_end.sum()


@njit(cache=True, inline="always")
def _better(span, span2, best, best2):
    """Lexicographically better ``(makespan, sum of rank ends)``, beyond float noise."""
    return span < best * (1.0 - 1e-12) or (span <= best and span2 < best2 * (1.0 - 1e-12))


@njit(cache=True)
def _move(tasks, src, dst):
    """Move ``tasks[src]`` to position ``dst`` (shifting the ones in between)."""
    t = tasks[src]
    if dst < src:
        for k in range(src, dst, -1):
            tasks[k] = tasks[k - 1]
    else:
        for k in range(src, dst):
            tasks[k] = tasks[k + 1]
    tasks[dst] = t


@njit(cache=True)
def move_descent(ptr, tasks, sim, reach, max_evals, offset):
    """First-improvement descent over insertion moves, at most ``max_evals`` simulations, scanning from
    position ``offset``. Returns ``(tasks, makespan, evaluations, next offset)``; fewer evaluations than
    ``max_evals`` means a local optimum was reached."""
    tasks = tasks.copy()
    n_ranks = ptr.shape[0] - 1
    n = tasks.shape[0]
    best, best2 = _score(ptr, tasks, sim)
    evals = 0
    stale = 0
    k = offset % max(n, 1)
    while evals < max_evals and stale < n:
        r = 0
        while r < n_ranks and ptr[r + 1] <= k:
            r += 1
        lo, hi = ptr[r], ptr[r + 1]
        found = False
        for d in range(1, reach + 1):
            for sign in (-1, 1):
                j = k + sign * d
                if j < lo or j >= hi:
                    continue
                _move(tasks, k, j)
                span, span2 = _score(ptr, tasks, sim)
                evals += 1
                if _better(span, span2, best, best2):
                    best, best2 = span, span2
                    found = True
                    break
                _move(tasks, j, k)
            if found or evals >= max_evals:
                break
        if found:
            stale = 0
        else:
            stale += 1
            k = (k + 1) % n
    return tasks, best, evals, k


@njit(cache=True)
def move_item(trial, ptr, task_unit_item, item, shift):
    """Move every stage of ``item`` ``shift`` places within its rank's order; False if none moved."""
    moved = False
    for r in range(ptr.shape[0] - 1):
        lo, hi = ptr[r], ptr[r + 1]
        # ascending for moves to the front, descending for moves to the back: earlier moves never
        # disturb the positions still to be processed
        k = lo if shift < 0 else hi - 1
        while lo <= k < hi:
            if task_unit_item[trial[k]] == item:
                j = min(max(k + shift, lo), hi - 1)
                if j != k:
                    _move(trial, k, j)
                    moved = True
            k += 1 if shift < 0 else -1
    return moved


@njit(cache=True)
def unit_descent(ptr, tasks, sim, task_unit_item, n_items, reach, max_evals):
    """First-improvement descent over *unit moves*: every stage of one unit item (one pass of one
    sub-microbatch, on all ranks at once) moves up to ``reach`` places earlier or later in its rank's
    order. Returns ``(tasks, makespan, evaluations)``."""
    tasks = tasks.copy()
    best, best2 = _score(ptr, tasks, sim)
    evals = 0
    improved = True
    trial = tasks.copy()
    while improved and evals < max_evals:
        improved = False
        for item in range(n_items):
            for d in range(1, reach + 1):
                for sign in (-1, 1):
                    if evals >= max_evals:
                        return tasks, best, evals
                    trial[:] = tasks
                    if not move_item(trial, ptr, task_unit_item, item, sign * d):
                        continue
                    span, span2 = _score(ptr, trial, sim)
                    evals += 1
                    if _better(span, span2, best, best2):
                        best, best2 = span, span2
                        tasks[:] = trial
                        improved = True
    return tasks, best, evals
