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
forward queue is disabled. If every rank is blocked that way the earliest forward is forced and the
result is flagged (``forced``): memory cannot be met by this order.

Beyond the paper, ``alternate=False`` replaces the 1F1B alternation by the segment priorities (the
higher-priority of the two ready stages runs), so the searched order also decides forward against
backward; and ``reserve`` (0 = off) keeps memory for higher-priority forwards: a forward may only
start if its bytes plus ``reserve`` times the bytes of the rank's not yet scheduled forwards of higher
priority still fit (a Fenwick tree over the rank's forwards in priority order). Bubble-filling
forwards of later micro-batches then cannot take the memory the current micro-batch needs.

Complexity: O(p) per step for the rank choice plus O(log n) heap work, O(p·n + n log n) overall.
"""
from __future__ import annotations

import numpy as np
from numba import njit

INF = np.inf


@njit(cache=True, inline="always")
def _less(a, b, kf, ki):
    return kf[a] < kf[b] or (kf[a] == kf[b] and ki[a] < ki[b])


@njit(cache=True, inline="always")
def _push(heap, base, size, h, item, kf, ki):
    pos = size[h]
    size[h] += 1
    heap[base[h] + pos] = item
    while pos > 0:
        parent = (pos - 1) >> 1
        a, b = heap[base[h] + pos], heap[base[h] + parent]
        if _less(a, b, kf, ki):
            heap[base[h] + pos], heap[base[h] + parent] = b, a
            pos = parent
        else:
            break


@njit(cache=True, inline="always")
def _pop(heap, base, size, h, kf, ki):
    off = base[h]
    top = heap[off]
    size[h] -= 1
    n = size[h]
    if n > 0:
        heap[off] = heap[off + n]
        pos = 0
        while True:
            left = 2 * pos + 1
            if left >= n:
                break
            child = left
            right = left + 1
            if right < n and _less(heap[off + right], heap[off + left], kf, ki):
                child = right
            if _less(heap[off + child], heap[off + pos], kf, ki):
                heap[off + child], heap[off + pos] = heap[off + pos], heap[off + child]
                pos = child
            else:
                break
    return top


@njit(cache=True)
def interleave(n_ranks, task_rank, task_op, task_stage, duration, stage_act, cap, prio,
               pred_ptr, succ_ptr, succ_idx, succ_delay, reserve=0.0, alternate=True, patience=0.0):
    """Greedy dual-queue interleaving.

    ``task_op``: 0 forward, 1 backward; ``stage_act[s]``: bytes a forward of stage ``s`` holds until
    its backward; ``cap[r]``: activation bytes rank ``r`` may hold; ``prio``: int64 key per task
    (lower runs first). Returns ``(sequence, start, end, peak, forced)``: tasks in scheduling order
    (a topological order; filter by rank for per-rank orders), their times, per-rank activation peaks
    and the number of forwards scheduled over capacity.
    """
    n = task_rank.shape[0]
    # heap h = 4 * r + kind; kind 0/1 = ready F/B (by priority), 2/3 = pending F/B (by t_start)
    counts = np.zeros(4 * n_ranks, np.int64)
    for t in range(n):
        r = task_rank[t]
        counts[4 * r + task_op[t]] += 1
        counts[4 * r + 2 + task_op[t]] += 1
    base = np.zeros(4 * n_ranks, np.int64)
    acc = 0
    for h in range(4 * n_ranks):
        base[h] = acc
        acc += counts[h]
    heap = np.empty(acc, np.int64)
    size = np.zeros(4 * n_ranks, np.int64)
    zero = np.zeros(n)
    t_start = np.zeros(n)
    remaining = np.empty(n, np.int64)
    for t in range(n):
        remaining[t] = pred_ptr[t + 1] - pred_ptr[t]
    for t in range(n):
        if remaining[t] == 0:
            r = task_rank[t]
            _push(heap, base, size, 4 * r + 2 + task_op[t], t, t_start, prio)
    t_last = np.zeros(n_ranks)
    last_op = np.ones(n_ranks, np.int64)
    mem = np.zeros(n_ranks)
    peak = np.zeros(n_ranks)
    start = np.zeros(n)
    end = np.zeros(n)
    sequence = np.empty(n, np.int64)
    forced = 0
    fen, fen_base, fen_pos = _reserve_tree(n_ranks, task_rank, task_op, task_stage, stage_act, prio, reserve)
    fits = np.ones(n_ranks, np.bool_)
    tmin = np.full(n_ranks, INF)
    dirty = np.ones(n_ranks, np.bool_)  # t_min is recomputed only for ranks whose state changed
    warm = np.zeros(n_ranks, np.bool_)  # a backward ran: the warm-up is over
    step = 0
    while step < n:
        best_r = -1
        best_t = INF
        for r in range(n_ranks):
            if not dirty[r]:
                if tmin[r] < best_t:
                    best_t = tmin[r]
                    best_r = r
                continue
            dirty[r] = False
            for kind in range(2):
                hp = 4 * r + 2 + kind
                while size[hp] > 0 and t_start[heap[base[hp]]] <= t_last[r]:
                    t = _pop(heap, base, size, hp, t_start, prio)
                    _push(heap, base, size, 4 * r + kind, t, zero, prio)
            # earliest start of rank r (inline: helper calls with many arrays are slow in numba)
            nxt_f = -1
            if size[4 * r] > 0:
                nxt_f = heap[base[4 * r]]
            elif size[4 * r + 2] > 0:
                nxt_f = heap[base[4 * r + 2]]
            f_ok = True
            if nxt_f >= 0:
                need = mem[r] + stage_act[task_stage[nxt_f]]
                if reserve > 0.0:
                    need += reserve * _fen_prefix(fen, fen_base[r], fen_pos[nxt_f])
                f_ok = need <= cap[r] + 1e-6
            fits[r] = f_ok
            if size[4 * r + 1] > 0 or (f_ok and size[4 * r] > 0):
                tm = t_last[r]
            else:
                tm = INF
                if size[4 * r + 3] > 0:
                    tm = t_start[heap[base[4 * r + 3]]]
                if f_ok and size[4 * r + 2] > 0 and t_start[heap[base[4 * r + 2]]] < tm:
                    tm = t_start[heap[base[4 * r + 2]]]
                if tm < t_last[r]:
                    tm = t_last[r]
            tmin[r] = tm
            if tm < best_t:
                best_t = tm
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
        f_ok = allow_over or fits[r]
        has_f = f_ok and size[4 * r] > 0
        has_b = size[4 * r + 1] > 0
        if has_f and has_b:
            if alternate:
                kind = 1 if last_op[r] == 0 else 0
            else:
                kind = 0 if prio[heap[base[4 * r]]] < prio[heap[base[4 * r + 1]]] else 1
        elif has_b:
            kind = 1
        elif has_f:
            kind = 0
        else:
            kind = 1
            tb = t_start[heap[base[4 * r + 3]]] if size[4 * r + 3] > 0 else INF
            if f_ok and size[4 * r + 2] > 0:
                tf = t_start[heap[base[4 * r + 2]]]
                if tf < tb:
                    kind = 0
            kind += 2
        if patience > 0.0 and not warm[r]:
            cand = heap[base[4 * r + kind]]
            wait = _awaited(heap, base, size, r, cand, max(t_last[r], t_start[cand]), duration, t_start, prio,
                            task_op, task_stage, stage_act, mem[r], cap[r], f_ok, patience)
            if wait > t_last[r]:  # idle until a higher-priority stage arrives (see module docstring)
                t_last[r] = wait
                continue
        if kind < 2:
            t = _pop(heap, base, size, 4 * r + kind, zero, prio)
        else:
            t = _pop(heap, base, size, 4 * r + kind, t_start, prio)
        s = max(t_last[r], t_start[t])
        e = s + duration[t]
        start[t] = s
        end[t] = e
        t_last[r] = e
        last_op[r] = task_op[t]
        sequence[step] = t
        step += 1
        act = stage_act[task_stage[t]]
        if task_op[t] == 0:
            if reserve > 0.0:
                _fen_add(fen, fen_base[r], fen_base[r + 1] - fen_base[r], fen_pos[t], -act)
            if mem[r] + act > cap[r] + 1e-6:
                forced += 1
            mem[r] += act
            if mem[r] > peak[r]:
                peak[r] = mem[r]
        else:
            mem[r] -= act
            warm[r] = True
        for k in range(succ_ptr[t], succ_ptr[t + 1]):
            u = succ_idx[k]
            v = e + succ_delay[k]
            if v > t_start[u]:
                t_start[u] = v
            remaining[u] -= 1
            if remaining[u] == 0:
                _push(heap, base, size, 4 * task_rank[u] + 2 + task_op[u], u, t_start, prio)
                dirty[task_rank[u]] = True
    return sequence, start, end, peak, forced


@njit(cache=True)
def _awaited(heap, base, size, r, cand, s, duration, t_start, prio, task_op, task_stage, stage_act, mem, cap, f_ok,
             patience):
    """The release time of the highest-priority pending stage of rank ``r`` that starting ``cand`` at ``s``
    would delay, if waiting for it costs at most ``patience * duration[cand]`` idle time; else -inf."""
    end = s + duration[cand]
    best = -1
    for kind in range(2):
        h = 4 * r + 2 + kind
        for k in range(size[h]):
            u = heap[base[h] + k]
            if u == cand or t_start[u] >= end or t_start[u] - s > patience * duration[cand]:
                continue
            if prio[u] >= prio[cand] or (best >= 0 and prio[u] >= prio[best]):
                continue
            if task_op[u] == 0 and (not f_ok or mem + stage_act[task_stage[u]] > cap + 1e-6):
                continue
            best = u
    return t_start[best] if best >= 0 else -INF


@njit(cache=True)
def _reserve_tree(n_ranks, task_rank, task_op, task_stage, stage_act, prio, reserve):
    """Per-rank Fenwick trees over forwards sorted by priority, holding their bytes."""
    n = task_rank.shape[0]
    fen_base = np.zeros(n_ranks + 1, np.int64)
    fen_pos = np.zeros(n, np.int64)
    if reserve <= 0.0:
        return np.zeros(1), fen_base, fen_pos
    for t in range(n):
        if task_op[t] == 0:
            fen_base[task_rank[t] + 1] += 1
    for r in range(n_ranks):
        fen_base[r + 1] += fen_base[r]
    fill = fen_base[:-1].copy()
    fwd = np.empty(fen_base[n_ranks], np.int64)
    for t in range(n):
        if task_op[t] == 0:
            fwd[fill[task_rank[t]]] = t
            fill[task_rank[t]] += 1
    fen = np.zeros(fen_base[n_ranks])
    for r in range(n_ranks):
        a, b = fen_base[r], fen_base[r + 1]
        mine = fwd[a:b]
        order = np.argsort(prio[mine], kind="mergesort")
        for k in range(b - a):
            t = mine[order[k]]
            fen_pos[t] = k
            _fen_add(fen, a, b - a, k, stage_act[task_stage[t]])
    return fen, fen_base, fen_pos


@njit(cache=True, inline="always")
def _fen_add(fen, off, size, pos, value):
    i = pos + 1
    while i <= size:
        fen[off + i - 1] += value
        i += i & (-i)


@njit(cache=True, inline="always")
def _fen_prefix(fen, off, pos):
    """Sum of entries at positions < pos."""
    total = 0.0
    i = pos
    while i > 0:
        total += fen[off + i - 1]
        i -= i & (-i)
    return total


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
