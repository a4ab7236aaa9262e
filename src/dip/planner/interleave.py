"""Dual-queue greedy pipeline stage interleaving (paper §5.2), a numba kernel.

Per rank: ``t_last`` (end of its last scheduled stage), a forward and a backward queue of *released*
stages (all predecessors scheduled) ordered by priority (segment priority, then the fixed in-segment
order), and ``t_min``, the earliest time the rank can start anything. Each step:

1. pick the rank with the smallest ``t_min``;
2. if a forward and a backward are both ready by ``t_last``, alternate 1F1B-style: a backward after a
   forward, a forward after a backward;
3. otherwise take the ready stage of the kind that is ready (highest priority), or, when nothing is
   ready, the released stage with the smallest earliest start (bubble filling);
4. schedule it at ``max(t_last, t_start)`` and release its successors (``t_start`` = end + p2p delay).

Memory is tracked per rank in real time (activations of forwards whose backward has not run, with the
bytes of a chosen candidate per stage); while the next forward would exceed the rank's capacity the
forward queue is disabled, except for a released forward not yet ready that fits and outranks the
blocked one: the rank then waits for it (without this, a blocked low-priority forward could hide
it until every rank stalls). If every rank is blocked the earliest forward is forced and the result
is flagged (``forced``): memory cannot be met by this order.

Beyond the paper, ``alternate=False`` replaces the 1F1B alternation by the segment priorities (the
higher-priority of the two ready stages runs), so the searched order also decides forward against
backward; ``reserve`` (0 = off) keeps memory for higher-priority forwards: a forward may only
start if its bytes plus ``reserve`` times the bytes of the rank's not yet scheduled forwards of higher
priority still fit (a Fenwick tree over the rank's forwards in priority order), so bubble-filling
forwards of later micro-batches cannot take the memory the current micro-batch needs; and ``drain``
drops the alternation once every source stage (the first stage of each micro-batch) has run: in the
pipeline drain a ready forward goes first, so the last micro-batches start their backward chains
early instead of each forward waiting behind a backward of an earlier micro-batch.

Complexity: O(p) per step for the rank choice plus O(log n) heap work, O(p·n + n log n) overall (the
scan for a fitting released forward touches only a blocked rank's released, not yet ready forwards).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from dip.planner.heaps import EPS, INF, fen_add, fen_prefix, pop, push, reserve_tree

__all__ = ["interleave", "rank_orders"]


@njit(cache=True, inline="always")
def _fits(u, mem_r, cap_r, act, reserve, fen, fen_off, fen_pos):
    """Whether forward ``u`` (``act`` bytes) may start on its rank now."""
    need = mem_r + act
    if reserve > 0.0:
        need += reserve * fen_prefix(fen, fen_off, fen_pos[u])
    return need <= cap_r + EPS


@njit(cache=True)
def _pending_forward(
    heap, off, n, blocked, t_start, prio, task_stage, stage_act, mem_r, cap_r, reserve, fen, fen_off, fen_pos
):
    """The released, not yet ready forward of earliest release that fits and, once released, heads the
    ready queue: it outranks the blocked ready forward ``blocked`` (if >= 0) and every forward
    released no later than it; -1 if none."""
    best = -1
    for k in range(n):
        u = heap[off + k]
        if blocked >= 0 and prio[u] >= prio[blocked]:
            continue
        if best >= 0 and (t_start[u] > t_start[best] or (t_start[u] == t_start[best] and prio[u] > prio[best])):
            continue
        if not _fits(u, mem_r, cap_r, stage_act[task_stage[u]], reserve, fen, fen_off, fen_pos):
            continue
        heads = True
        for j in range(n):
            v = heap[off + j]
            if t_start[v] <= t_start[u] and prio[v] < prio[u]:
                heads = False
                break
        if heads:
            best = u
    return best


@njit(cache=True)
def interleave(
    n_ranks,
    task_rank,
    task_op,
    task_stage,
    duration,
    stage_act,
    cap,
    prio,
    pred_ptr,
    succ_ptr,
    succ_idx,
    succ_delay,
    reserve=0.0,
    alternate=True,
    drain=False,
):
    """Greedy dual-queue interleaving.

    ``task_op``: 0 forward, 1 backward; ``stage_act[s]``: bytes a forward of stage ``s`` holds until
    its backward; ``cap[r]``: activation bytes rank ``r`` may hold; ``prio``: int64 key per task
    (lower runs first); ``drain``: forwards first once every source stage ran (module docstring).
    Returns ``(sequence, start, end, peak, forced)``: tasks in scheduling order (a topological order;
    filter by rank for per-rank orders), their times, per-rank activation peaks and the number of
    forwards scheduled over capacity.
    """
    n = task_rank.shape[0]
    # heap h = 4 * r + kind; kind 0/1 = ready F/B (by priority), 2/3 = pending F/B (by t_start)
    counts = np.zeros(4 * n_ranks, np.int64)
    for t in range(n):
        counts[4 * task_rank[t] + task_op[t]] += 1
        counts[4 * task_rank[t] + 2 + task_op[t]] += 1
    base = np.zeros(4 * n_ranks, np.int64)
    base[1:] = np.cumsum(counts)[:-1]
    heap = np.empty(counts.sum(), np.int64)
    size = np.zeros(4 * n_ranks, np.int64)
    zero = np.zeros(n)
    t_start = np.zeros(n)
    remaining = np.empty(n, np.int64)
    for t in range(n):
        remaining[t] = pred_ptr[t + 1] - pred_ptr[t]
        if remaining[t] == 0:
            push(heap, base, size, 4 * task_rank[t] + 2 + task_op[t], t, t_start, prio)
    sources = 0
    for t in range(n):
        if pred_ptr[t + 1] == pred_ptr[t]:
            sources += 1
    t_last = np.zeros(n_ranks)
    last_op = np.ones(n_ranks, np.int64)
    mem = np.zeros(n_ranks)
    peak = np.zeros(n_ranks)
    start = np.zeros(n)
    end = np.zeros(n)
    sequence = np.empty(n, np.int64)
    forced = 0
    fen, fen_base, fen_pos = reserve_tree(n_ranks, task_rank, task_op, task_stage, stage_act, prio, reserve)
    fits = np.ones(n_ranks, np.bool_)
    pend_t = np.full(n_ranks, -1, np.int64)  # the pending forward a rank may run once released
    tmin = np.full(n_ranks, INF)
    dirty = np.ones(n_ranks, np.bool_)  # t_min is recomputed only for ranks whose state changed
    step = 0
    while step < n:
        best_r = -1
        best_t = INF
        for r in range(n_ranks):
            if dirty[r]:
                dirty[r] = False
                for kind in range(2):
                    hp = 4 * r + 2 + kind
                    while size[hp] > 0 and t_start[heap[base[hp]]] <= t_last[r]:
                        t = pop(heap, base, size, hp, t_start, prio)
                        push(heap, base, size, 4 * r + kind, t, zero, prio)
                nxt_f = heap[base[4 * r]] if size[4 * r] > 0 else -1
                f_ok = nxt_f < 0 or _fits(
                    nxt_f, mem[r], cap[r], stage_act[task_stage[nxt_f]], reserve, fen, fen_base[r], fen_pos
                )
                fits[r] = f_ok
                pend_t[r] = -1
                if size[4 * r + 2] > 0 and not (f_ok and nxt_f >= 0):
                    top = heap[base[4 * r + 2]]  # the earliest released heads the queue if it fits
                    if (nxt_f < 0 or prio[top] < prio[nxt_f]) and _fits(
                        top, mem[r], cap[r], stage_act[task_stage[top]], reserve, fen, fen_base[r], fen_pos
                    ):
                        pend_t[r] = top
                    else:
                        pend_t[r] = _pending_forward(
                            heap,
                            base[4 * r + 2],
                            size[4 * r + 2],
                            nxt_f,
                            t_start,
                            prio,
                            task_stage,
                            stage_act,
                            mem[r],
                            cap[r],
                            reserve,
                            fen,
                            fen_base[r],
                            fen_pos,
                        )
                if size[4 * r + 1] > 0 or (f_ok and size[4 * r] > 0):
                    tm = t_last[r]
                else:
                    tm = t_start[pend_t[r]] if pend_t[r] >= 0 else INF
                    if size[4 * r + 3] > 0 and t_start[heap[base[4 * r + 3]]] < tm:
                        tm = t_start[heap[base[4 * r + 3]]]
                    tm = max(tm, t_last[r])
                tmin[r] = tm
            if tmin[r] < best_t:
                best_t = tmin[r]
                best_r = r
        allow_over = False
        if best_r < 0:  # every rank waits on memory: force the earliest forward
            allow_over = True
            for r in range(n_ranks):
                tm = INF
                if size[4 * r] > 0:
                    tm = t_last[r]
                elif size[4 * r + 2] > 0:
                    tm = max(t_last[r], t_start[heap[base[4 * r + 2]]])
                if tm < best_t:
                    best_t = tm
                    best_r = r
            if best_r < 0:
                break  # dependency cycle (cannot happen for valid structures)
        r = best_r
        dirty[r] = True
        has_f = (allow_over or fits[r]) and size[4 * r] > 0
        has_b = size[4 * r + 1] > 0
        if has_f and has_b:
            if drain and sources == 0:
                kind = 0
            elif alternate:
                kind = 1 if last_op[r] == 0 else 0
            else:
                kind = 0 if prio[heap[base[4 * r]]] < prio[heap[base[4 * r + 1]]] else 1
        elif has_b:
            kind = 1
        elif has_f:
            kind = 0
        else:
            kind = 3
            tb = t_start[heap[base[4 * r + 3]]] if size[4 * r + 3] > 0 else INF
            tf = t_start[pend_t[r]] if pend_t[r] >= 0 else INF
            if allow_over and size[4 * r + 2] > 0:
                tf = t_start[heap[base[4 * r + 2]]]
            if tf < tb:
                kind = 2
                if not allow_over and (heap[base[4 * r + 2]] != pend_t[r] or size[4 * r] > 0):
                    t_last[r] = max(t_last[r], tf)  # idle until that forward is released, then take it
                    continue
        if kind < 2:
            t = pop(heap, base, size, 4 * r + kind, zero, prio)
        else:
            t = pop(heap, base, size, 4 * r + kind, t_start, prio)
        s = max(t_last[r], t_start[t])
        e = s + duration[t]
        start[t] = s
        end[t] = e
        t_last[r] = e
        last_op[r] = task_op[t]
        sequence[step] = t
        step += 1
        if pred_ptr[t + 1] == pred_ptr[t]:
            sources -= 1
        act = stage_act[task_stage[t]]
        if task_op[t] == 0:
            if reserve > 0.0:
                fen_add(fen, fen_base[r], fen_base[r + 1] - fen_base[r], fen_pos[t], -act)
            if mem[r] + act > cap[r] + EPS:
                forced += 1
            mem[r] += act
            peak[r] = max(peak[r], mem[r])
        else:
            mem[r] -= act
        for k in range(succ_ptr[t], succ_ptr[t + 1]):
            u = succ_idx[k]
            v = e + succ_delay[k]
            if v > t_start[u]:
                t_start[u] = v
            remaining[u] -= 1
            if remaining[u] == 0:
                push(heap, base, size, 4 * task_rank[u] + 2 + task_op[u], u, t_start, prio)
                dirty[task_rank[u]] = True
    return sequence, start, end, peak, forced


@njit(cache=True)
def rank_orders(sequence, task_rank, n_ranks):
    """Split a global scheduling sequence into per-rank orders: ``(ptr, tasks)`` as in the simulator."""
    n = sequence.shape[0]
    ptr = np.zeros(n_ranks + 1, np.int64)
    for k in range(n):
        ptr[task_rank[sequence[k]] + 1] += 1
    for r in range(n_ranks):
        ptr[r + 1] += ptr[r]
    fill = ptr[:-1].copy()
    tasks = np.empty(n, np.int64)
    for k in range(n):
        t = sequence[k]
        r = task_rank[t]
        tasks[fill[r]] = t
        fill[r] += 1
    return ptr, tasks
