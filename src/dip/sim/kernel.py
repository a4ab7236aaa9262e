"""The simulation kernel: integer arrays in, start/end times and memory peaks out (numba).

Model. Each rank has one compute stream that runs its tasks strictly in the given order. A task
starts at ``max(rank free, max over predecessors p (end[p] + delay(p -> task)))``. Point-to-point
transfers overlap compute and never contend for a link (the delay is a fixed latency + size/bandwidth
per edge). Memory: a task adds ``alloc[t]`` bytes when it starts and removes ``free[t]`` bytes when
it ends (F allocates its activations, the backward that ends the stage frees them).

Algorithm. Event-driven with ready counters, O(tasks + edges): a rank is pushed on a worklist when
its next task has all predecessors finished; popping it fixes that task's times. Because every rank
runs its tasks in order, only a rank's head task can be ready, so the worklist holds at most one entry
per rank. If the worklist empties before all ranks finish, the ranks whose head task still waits are
deadlocked (it waits on a task that can never finish: later on its own rank, or on a stuck rank).

Both kernels release the GIL, so planner threads can simulate candidates in parallel.

Status codes: ``OK``; ``DEADLOCK`` (``stuck_pos[r]`` = the waiting position of rank r, -1 elsewhere);
``DUPLICATE`` / ``BAD_TASK`` (a task id appears twice / is out of range; nothing simulated);
``INCOMPLETE`` (all orders ran to the end but some tasks appear in no order).
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["STATUS_NAMES", "critical_path", "simulate_arrays"]

OK, DEADLOCK, DUPLICATE, BAD_TASK, INCOMPLETE = 0, 1, 2, 3, 4
STATUS_NAMES = {
    OK: "ok",
    DEADLOCK: "deadlock",
    DUPLICATE: "duplicate task",
    BAD_TASK: "unknown task id",
    INCOMPLETE: "tasks missing from the order",
}


@njit(cache=True, nogil=True)
def simulate_arrays(
    order_ptr, order_tasks, duration, pred_ptr, pred_idx, pred_delay, succ_ptr, succ_idx, alloc, free, holds
):
    """Simulate one order.

    Inputs (int64 / float64 arrays): ``order_ptr[r]:order_ptr[r+1]`` slices ``order_tasks`` into rank
    r's sequence of task ids; ``duration[t]``; CSR predecessors ``pred_idx[pred_ptr[t]:pred_ptr[t+1]]``
    with ``pred_delay`` on each edge; CSR successors (same edges, reversed); ``alloc[t]`` bytes taken at
    start, ``free[t]`` bytes released at end; ``holds[t]`` +1 when the task starts holding a stage's
    activations, -1 when it releases them, 0 otherwise.

    Returns ``(status, makespan, start, end, rank_busy, rank_end, peak_bytes, peak_time, peak_held,
    stuck_pos)``; ``peak_bytes`` and ``peak_held`` are activation peaks per rank (static memory not
    included), ``peak_time`` the first time each peak is reached.
    """
    n_tasks = duration.shape[0]
    n_ranks = order_ptr.shape[0] - 1
    start = np.full(n_tasks, np.nan)
    end = np.full(n_tasks, np.nan)
    rank_busy = np.zeros(n_ranks)
    rank_end = np.zeros(n_ranks)
    peak_bytes = np.zeros(n_ranks)
    peak_time = np.zeros(n_ranks)
    peak_held = np.zeros(n_ranks, np.int64)
    stuck_pos = np.full(n_ranks, -1, np.int64)

    slot = np.full(n_tasks, -1, np.int64)
    owner = np.full(n_tasks, -1, np.int64)
    for r in range(n_ranks):
        for k in range(order_ptr[r], order_ptr[r + 1]):
            t = order_tasks[k]
            if t < 0 or t >= n_tasks:
                return BAD_TASK, np.nan, start, end, rank_busy, rank_end, peak_bytes, peak_time, peak_held, stuck_pos
            if slot[t] != -1:
                return DUPLICATE, np.nan, start, end, rank_busy, rank_end, peak_bytes, peak_time, peak_held, stuck_pos
            slot[t] = k
            owner[t] = r
    remaining = np.empty(n_tasks, np.int64)
    for t in range(n_tasks):
        remaining[t] = pred_ptr[t + 1] - pred_ptr[t]
    head = order_ptr[:-1].copy()
    mem = np.zeros(n_ranks)
    held = np.zeros(n_ranks, np.int64)
    stack = np.empty(n_ranks, np.int64)
    top = 0
    for r in range(n_ranks):
        if head[r] < order_ptr[r + 1] and remaining[order_tasks[head[r]]] == 0:
            stack[top] = r
            top += 1
    done = 0
    while top > 0:
        top -= 1
        r = stack[top]
        t = order_tasks[head[r]]
        s = rank_end[r]
        for e in range(pred_ptr[t], pred_ptr[t + 1]):
            ready = end[pred_idx[e]] + pred_delay[e]
            if ready > s:
                s = ready
        d = duration[t]
        start[t] = s
        end[t] = s + d
        rank_end[r] = s + d
        rank_busy[r] += d
        if holds[t] > 0 or alloc[t] != 0.0:
            mem[r] += alloc[t]
            held[r] += max(holds[t], 0)
            if mem[r] > peak_bytes[r]:
                peak_bytes[r] = mem[r]
                peak_time[r] = s
            if held[r] > peak_held[r]:
                peak_held[r] = held[r]
        mem[r] -= free[t]
        held[r] += min(holds[t], 0)
        done += 1
        for e in range(succ_ptr[t], succ_ptr[t + 1]):
            u = succ_idx[e]
            remaining[u] -= 1
            if remaining[u] == 0:
                ru = owner[u]
                if ru >= 0 and head[ru] == slot[u]:
                    stack[top] = ru
                    top += 1
        head[r] += 1
        if head[r] < order_ptr[r + 1] and remaining[order_tasks[head[r]]] == 0:
            stack[top] = r
            top += 1
    makespan = 0.0
    for r in range(n_ranks):
        if rank_end[r] > makespan:
            makespan = rank_end[r]
    status = OK
    if done < order_tasks.shape[0]:
        status = DEADLOCK
        makespan = np.inf
        for r in range(n_ranks):
            if head[r] < order_ptr[r + 1]:
                stuck_pos[r] = head[r] - order_ptr[r]
    elif done < n_tasks:
        status = INCOMPLETE
    return status, makespan, start, end, rank_busy, rank_end, peak_bytes, peak_time, peak_held, stuck_pos


@njit(cache=True, nogil=True)
def critical_path(duration, pred_ptr, pred_idx, pred_delay, succ_ptr, succ_idx):
    """Longest path through the task DAG (durations + edge delays), ignoring rank serialization.

    Returns ``(length, earliest_end)``; ``length`` is ``inf`` if the dependencies contain a cycle.
    """
    n = duration.shape[0]
    remaining = np.empty(n, np.int64)
    queue = np.empty(n, np.int64)
    tail = 0
    for t in range(n):
        remaining[t] = pred_ptr[t + 1] - pred_ptr[t]
        if remaining[t] == 0:
            queue[tail] = t
            tail += 1
    earliest_end = np.zeros(n)
    headq = 0
    longest = 0.0
    while headq < tail:
        t = queue[headq]
        headq += 1
        s = 0.0
        for e in range(pred_ptr[t], pred_ptr[t + 1]):
            v = earliest_end[pred_idx[e]] + pred_delay[e]
            if v > s:
                s = v
        earliest_end[t] = s + duration[t]
        if earliest_end[t] > longest:
            longest = earliest_end[t]
        for e in range(succ_ptr[t], succ_ptr[t + 1]):
            u = succ_idx[e]
            remaining[u] -= 1
            if remaining[u] == 0:
                queue[tail] = u
                tail += 1
    if tail < n:
        return np.inf, earliest_end
    return longest, earliest_end
