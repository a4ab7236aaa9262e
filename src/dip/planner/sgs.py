"""Serial schedule generation (beyond the paper): a second decoder from priorities to orders.

The dual-queue interleaving builds *non-delay* schedules: a rank never idles while it has a stage it
may run. Some optimal pipelines are not non-delay (e.g. a rank waits for a short critical stage
instead of starting a long one). The serial scheme builds *active* schedules, a set that contains an
optimum: stages are taken in priority order among those whose predecessors are placed, and each is
inserted into the earliest idle gap of its rank that is long enough and starts after its inputs
arrive. Memory is not tracked here; callers check the resulting order with the simulator.
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def serial_schedule(n_ranks, task_rank, duration, prio, pred_ptr, pred_idx, pred_delay, succ_ptr, succ_idx):
    """Returns ``(ptr, tasks)`` per-rank orders (by start time) of the active schedule for ``prio``
    (lower first)."""
    n = task_rank.shape[0]
    remaining = np.empty(n, np.int64)
    for t in range(n):
        remaining[t] = pred_ptr[t + 1] - pred_ptr[t]
    # eligible set as a binary heap on prio
    heap = np.empty(n, np.int64)
    size = 0
    for t in range(n):
        if remaining[t] == 0:
            size = _push(heap, size, t, prio)
    counts = np.zeros(n_ranks + 1, np.int64)
    for t in range(n):
        counts[task_rank[t] + 1] += 1
    for r in range(n_ranks):
        counts[r + 1] += counts[r]
    # per rank: placed tasks sorted by start (slots counts[r] .. counts[r] + used[r])
    slot_task = np.empty(n, np.int64)
    used = np.zeros(n_ranks, np.int64)
    start = np.zeros(n)
    end = np.zeros(n)
    while size > 0:
        t, size = _pop(heap, size, prio)
        ready = 0.0
        for e in range(pred_ptr[t], pred_ptr[t + 1]):
            v = end[pred_idx[e]] + pred_delay[e]
            if v > ready:
                ready = v
        r = task_rank[t]
        base = counts[r]
        k = used[r]
        # earliest gap: before placed task j, after task j-1
        pos = k
        s = ready
        prev_end = 0.0
        for j in range(k):
            q = slot_task[base + j]
            gap_start = max(prev_end, ready)
            if gap_start + duration[t] <= start[q] + 1e-15:
                pos = j
                s = gap_start
                break
            prev_end = end[q]
        if pos == k:
            s = max(prev_end, ready)
        for j in range(k, pos, -1):
            slot_task[base + j] = slot_task[base + j - 1]
        slot_task[base + pos] = t
        used[r] = k + 1
        start[t] = s
        end[t] = s + duration[t]
        for e in range(succ_ptr[t], succ_ptr[t + 1]):
            u = succ_idx[e]
            remaining[u] -= 1
            if remaining[u] == 0:
                size = _push(heap, size, u, prio)
    return counts, slot_task


@njit(cache=True)
def _push(heap, size, item, key):
    pos = size
    heap[pos] = item
    while pos > 0:
        parent = (pos - 1) >> 1
        if key[heap[pos]] < key[heap[parent]]:
            heap[pos], heap[parent] = heap[parent], heap[pos]
            pos = parent
        else:
            break
    return size + 1


@njit(cache=True)
def _pop(heap, size, key):
    top = heap[0]
    size -= 1
    heap[0] = heap[size]
    pos = 0
    while True:
        left = 2 * pos + 1
        if left >= size:
            break
        child = left
        if left + 1 < size and key[heap[left + 1]] < key[heap[left]]:
            child = left + 1
        if key[heap[child]] < key[heap[pos]]:
            heap[child], heap[pos] = heap[pos], heap[child]
            pos = child
        else:
            break
    return top, size
