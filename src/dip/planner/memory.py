"""Per-layer memory optimisation per pipeline rank (paper §5.3).

With the interleaving fixed, each rank picks one candidate per stage pair (forward + backward of one
(chunk, unit)), minimising the extra (recomputation) time under the memory limit at every instant.
A rank runs its stages sequentially, so the pairs alive when forward ``k`` starts are exactly those
whose forward comes at or before ``k`` and whose backward comes after it in the rank's order: the
live sets depend on the order only, not on the durations the candidates change. Pair ``s`` is alive
for the contiguous range ``[first[s], last[s]]`` of forward positions.

* :func:`greedy_select` (numba): start from the most memory-efficient candidates and repeatedly take
  the upgrade with the best time saved per byte that keeps every constraint satisfied. Also the
  warm start of the ILP.
* :func:`ilp_select` (HiGHS): the ILP of §7.3, ``min sum o_sj (t_sj - t_s,fastest)`` s.t. one candidate
  per pair and, at every forward position where memory can bind, the live pairs' bytes stay within the
  rank's capacity; warm-started, relative gap 5%, a time limit per solve.
"""

from __future__ import annotations

import os
import sys

import highspy
import numpy as np
from numba import njit

from dip.planner.heaps import pop, push

__all__ = ["EPS_BYTES", "greedy_select", "ilp_select", "live_ranges", "new_highs"]

EPS_BYTES = 1e-6
_HIGHS_READY = False


def new_highs():
    """A silent HiGHS instance (its one-time banner is written to fd 1, which would corrupt JSON output)."""
    global _HIGHS_READY
    if not _HIGHS_READY:
        sys.stdout.flush()
        saved = os.dup(1)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 1)
            h = highspy.Highs()
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            os.close(devnull)
        _HIGHS_READY = True
    else:
        h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    return h


@njit(cache=True)
def live_ranges(ptr, tasks, task_op, task_stage, n_stages, r):
    """For rank ``r``: its stages in forward order, and per stage the first/last forward position alive."""
    first = np.full(n_stages, -1, np.int64)
    last = np.full(n_stages, -1, np.int64)
    stages = np.empty(ptr[r + 1] - ptr[r], np.int64)
    nf = 0
    for k in range(ptr[r], ptr[r + 1]):
        t = tasks[k]
        s = task_stage[t]
        if task_op[t] == 0:
            first[s] = nf
            stages[nf] = s
            nf += 1
        else:
            last[s] = nf - 1
    return stages[:nf], first, last


@njit(cache=True)
def _loads(stages, first, last, mem, choice, nf):
    diff = np.zeros(nf + 1)
    for s in stages:
        m = mem[s, choice[s]]
        diff[first[s]] += m
        diff[last[s] + 1] -= m
    load = np.empty(nf)
    acc = 0.0
    for i in range(nf):
        acc += diff[i]
        load[i] = acc
    return load


@njit(cache=True)
def _best_upgrade(s, j, cand_t, mem, count):
    best_j = -1
    best_ratio = -1.0
    for k in range(j + 1, count[s]):
        dm = mem[s, k] - mem[s, j]
        dt = cand_t[s, j] - cand_t[s, k]
        ratio = dt / dm if dm > EPS_BYTES else 1e30
        if ratio > best_ratio:
            best_ratio = ratio
            best_j = k
    return best_j, best_ratio


@njit(cache=True)
def greedy_select(ptr, tasks, task_op, task_stage, cand_t, mem, count, cap):
    """Greedy candidate choice for every rank. Returns ``(choice per stage, min-memory overflow per rank)``;
    an overflow > 0 means the order does not fit even with the most memory-efficient candidates."""
    n_stages = cand_t.shape[0]
    n_ranks = ptr.shape[0] - 1
    choice = np.zeros(n_stages, np.int64)
    overflow = np.zeros(n_ranks)
    for r in range(n_ranks):
        stages, first, last = live_ranges(ptr, tasks, task_op, task_stage, n_stages, r)
        nf = stages.shape[0]
        if nf == 0:
            continue
        for s in stages:
            choice[s] = count[s] - 1
        load = _loads(stages, first, last, mem, choice, nf)
        if load.max() <= cap[r] + EPS_BYTES:
            continue
        for s in stages:
            choice[s] = 0
        load = _loads(stages, first, last, mem, choice, nf)
        worst = load.max() - cap[r]
        if worst > EPS_BYTES:
            overflow[r] = worst
            continue
        # a max-heap of stages by upgrade ratio: the shared heap (planner.heaps) is a min-heap on
        # (neg_ratio, tie); every tie key is 0, so equal ratios keep the heap's own order
        heap = np.empty(nf, np.int64)
        base = np.zeros(1, np.int64)
        size = np.zeros(1, np.int64)
        neg_ratio = np.zeros(n_stages)
        tie = np.zeros(n_stages, np.int64)
        for s in stages:
            if count[s] > 1:
                k, ratio = _best_upgrade(s, 0, cand_t, mem, count)
                neg_ratio[s] = -ratio
                push(heap, base, size, 0, s, neg_ratio, tie)
        while size[0] > 0:
            s = pop(heap, base, size, 0, neg_ratio, tie)
            j = choice[s]
            room = cap[r] + EPS_BYTES
            top = -1e300
            for i in range(first[s], last[s] + 1):
                if load[i] > top:
                    top = load[i]
            k, ratio = _best_upgrade(s, j, cand_t, mem, count)
            if top + mem[s, k] - mem[s, j] > room:
                k = -1
                for kk in range(count[s] - 1, j, -1):  # the fastest upgrade that still fits
                    if top + mem[s, kk] - mem[s, j] <= room:
                        k = kk
                        break
                if k < 0:
                    continue
                dm = mem[s, k] - mem[s, j]
                for i in range(first[s], last[s] + 1):
                    load[i] += dm
                choice[s] = k
                continue
            dm = mem[s, k] - mem[s, j]
            for i in range(first[s], last[s] + 1):
                load[i] += dm
            choice[s] = k
            if k < count[s] - 1:
                _k2, ratio2 = _best_upgrade(s, k, cand_t, mem, count)
                neg_ratio[s] = -ratio2
                push(heap, base, size, 0, s, neg_ratio, tie)
    return choice, overflow


def ilp_select(
    ptr: np.ndarray,
    tasks: np.ndarray,
    task_op: np.ndarray,
    task_stage: np.ndarray,
    cand_t: np.ndarray,
    mem: np.ndarray,
    count: np.ndarray,
    cap: np.ndarray,
    rank: int,
    warm: np.ndarray,
    gap: float = 0.05,
    time_limit: float | None = 0.5,
    node_limit: int | None = None,
    max_columns: int | None = None,
) -> np.ndarray | None:
    """Solve rank ``rank``'s ILP with HiGHS, warm-started from ``warm`` (a full per-stage choice).

    Returns the improved per-stage choice (only this rank's stages change), or None when HiGHS found
    nothing better than the warm start. ``node_limit`` without ``time_limit`` keeps the solve deterministic;
    ``max_columns`` skips models with more binary variables (their root solve alone can take seconds)."""
    n_stages = cand_t.shape[0]
    stages, first, last = live_ranges(ptr, tasks, task_op, task_stage, n_stages, rank)
    nf = len(stages)
    if nf == 0:
        return None
    fastest = count - 1
    fast_load = _loads(stages, first, last, mem, fastest, nf)
    binding = np.zeros(nf, bool)
    binding[last[stages]] = True  # positions right before a pair is freed dominate their neighbours
    binding &= fast_load > cap[rank] + EPS_BYTES
    rows = np.nonzero(binding)[0]
    if len(rows) == 0:
        return None
    prefix = np.concatenate(([0], np.cumsum(binding)))
    involved = [s for s in stages if prefix[last[s] + 1] - prefix[first[s]] > 0 and count[s] > 1]
    if not involved:
        return None
    if max_columns is not None and sum(int(count[s]) for s in involved) > max_columns:
        return None
    row_of = {int(i): k for k, i in enumerate(rows)}
    h = new_highs()
    h.setOptionValue("mip_rel_gap", float(gap))
    if time_limit is not None:
        h.setOptionValue("time_limit", float(time_limit))
    if node_limit is not None:
        h.setOptionValue("mip_max_nodes", int(node_limit))
    h.setOptionValue("threads", 1)
    cols_cost, col_stage, col_cand = [], [], []
    for s in involved:
        for j in range(count[s]):
            cols_cost.append(cand_t[s, j] - cand_t[s, fastest[s]])
            col_stage.append(s)
            col_cand.append(j)
    ncol = len(cols_cost)
    inf = highspy.kHighsInf
    h.addVars(ncol, np.zeros(ncol), np.ones(ncol))
    h.changeColsCost(ncol, np.arange(ncol, dtype=np.int32), np.asarray(cols_cost, float))
    h.changeColsIntegrality(ncol, np.arange(ncol, dtype=np.int32), np.full(ncol, highspy.HighsVarType.kInteger))
    # rows: one selection row per involved pair, one memory row per binding position
    fixed = np.zeros(len(rows))
    inv = {int(s) for s in involved}
    for s in stages:
        if int(s) in inv:
            continue
        for i in range(first[s], last[s] + 1):
            if binding[i]:
                fixed[row_of[i]] += mem[s, fastest[s]]
    mem_rows: list[list[tuple[int, float]]] = [[] for _ in rows]
    scale = max(abs(float(cap[rank])), 1.0)  # rows in units of the capacity
    col = 0
    for s in involved:
        idx = list(range(col, col + count[s]))
        h.addRow(1.0, 1.0, len(idx), np.asarray(idx, np.int32), np.ones(len(idx)))
        for i in range(first[s], last[s] + 1):
            if binding[i]:
                for j in range(count[s]):
                    mem_rows[row_of[i]].append((col + j, mem[s, j]))
        col += count[s]
    for k, entries in enumerate(mem_rows):
        if not entries:
            continue
        idx = np.asarray([c for c, _ in entries], np.int32)
        val = np.asarray([v for _, v in entries], float) / scale
        h.addRow(-inf, (cap[rank] - fixed[k]) / scale - 2e-7, len(idx), idx, val)  # HiGHS tolerance 1e-7
    start = np.zeros(ncol)
    col = 0
    for s in involved:
        start[col + warm[s]] = 1.0
        col += count[s]
    sol = highspy.HighsSolution()
    sol.col_value = list(start)
    sol.value_valid = True
    h.setSolution(sol)
    h.run()
    info = h.getInfo()
    if info.primal_solution_status != 2:  # kSolutionStatusFeasible
        return None
    values = np.asarray(h.getSolution().col_value)
    choice = warm.copy()
    col = 0
    for s in involved:
        choice[s] = int(np.argmax(values[col : col + count[s]]))
        col += count[s]
    return choice
