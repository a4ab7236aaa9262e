"""Order polishing by local search (beyond the paper): swap adjacent stages of a rank's order.

Each move swaps two neighbouring stages on one rank and is kept when the simulated makespan drops and
every rank stays within its memory capacity (same kernel as the simulator; deadlocking moves are
rejected by it). The greedy interleaving decides stage by stage; a few swaps around the critical path
recover what its local decisions lose, most visibly on small batches where pipeline fill and drain
dominate.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from dip.sim.kernel import OK, simulate_arrays


@njit(cache=True)
def swap_descent(ptr, tasks, duration, pred_ptr, pred_idx, pred_delay, succ_ptr, succ_idx, alloc, free, holds,
                 cap, max_evals, offset):
    """First-improvement descent over adjacent swaps, at most ``max_evals`` simulations, scanning from
    position ``offset``. Returns ``(tasks, makespan, evaluations, next offset, improved)``."""
    tasks = tasks.copy()
    n_ranks = ptr.shape[0] - 1
    n = tasks.shape[0]
    status, best, _, _, _, _, _, _, _, _ = simulate_arrays(ptr, tasks, duration, pred_ptr, pred_idx, pred_delay,
                                                            succ_ptr, succ_idx, alloc, free, holds)
    evals = 0
    improved = False
    stale = 0
    k = offset % max(n, 1)
    while evals < max_evals and stale < n:
        r = 0
        while r < n_ranks and ptr[r + 1] <= k:
            r += 1
        if k + 1 < ptr[r + 1]:
            a, b = tasks[k], tasks[k + 1]
            tasks[k], tasks[k + 1] = b, a
            status, span, _, _, _, _, peak, _, _, _ = simulate_arrays(ptr, tasks, duration, pred_ptr, pred_idx,
                                                                       pred_delay, succ_ptr, succ_idx, alloc, free,
                                                                       holds)
            evals += 1
            ok = status == OK and span < best * (1.0 - 1e-12)
            if ok:
                for q in range(n_ranks):
                    if peak[q] > cap[q] * (1.0 + 1e-12) + 1.0:
                        ok = False
                        break
            if ok:
                best = span
                improved = True
                stale = 0
            else:
                tasks[k], tasks[k + 1] = a, b
                stale += 1
        else:
            stale += 1
        k = (k + 1) % n
    return tasks, best, evals, k, improved
