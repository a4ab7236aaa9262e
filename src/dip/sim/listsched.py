"""A greedy list scheduler: a valid order for any structure (tests, benchmarks, planner fallback).

Each rank, whenever it is free, starts the highest-priority task whose inputs have arrived; if none
has, it waits for the earliest one. Priority: backward-input (``B``/``I``) first, then ``F``, then
``W`` (which fills bubbles, as in Zero Bubble); ties go to the lower micro-batch, then the later
chunk. With ``max_inflight`` a rank starts no forward while that many of its stages hold activations,
unless no rank could otherwise proceed. The result is a topological order per rank, hence free of
deadlocks.
"""

from __future__ import annotations

import heapq
import math

import numpy as np

from dip.schedule.ir import RankOrder
from dip.sim.taskgraph import TaskGraph

__all__ = ["list_schedule"]

_OP_CLASS = np.array([1, 0, 0, 2], np.int64)  # F, B, I, W


class _RankQueues:
    """Ready tasks of one rank: forwards and the rest, each as pending (by ready time) and available."""

    def __init__(self):
        self.pending = ([], [])  # [forward, other]: (ready time, priority, task)
        self.avail = ([], [])  # (priority, task)

    def push(self, forward: bool, ready: float, key: tuple, task: int) -> None:
        heapq.heappush(self.pending[0 if forward else 1], (ready, key, task))

    def next_time(self, free: float, kinds: tuple[int, ...]) -> float:
        """When this rank could start its next task of ``kinds`` (inf if none is ready)."""
        if any(self.avail[k] for k in kinds):
            return free
        times = [self.pending[k][0][0] for k in kinds if self.pending[k]]
        return max(free, min(times)) if times else math.inf

    def pop(self, now: float, kinds: tuple[int, ...]) -> int:
        for k in kinds:
            while self.pending[k] and self.pending[k][0][0] <= now:
                _, key, t = heapq.heappop(self.pending[k])
                heapq.heappush(self.avail[k], (key, t))
        best = min((self.avail[k][0], k) for k in kinds if self.avail[k])
        return heapq.heappop(self.avail[best[1]])[1]


def list_schedule(tg: TaskGraph, max_inflight: int | None = None) -> RankOrder:
    """Per-rank compute order built by greedy list scheduling over ``tg``'s durations and delays."""
    n, n_ranks = tg.num_tasks, tg.num_ranks
    succ_delay = tg.succ_delay
    remaining = np.diff(tg.pred_ptr).astype(np.int64)
    ready = np.zeros(n)
    prio_class = _OP_CLASS[tg.task_op]
    chunk = np.fromiter((a.chunk for a in tg.actions), np.int64, n)
    queues = [_RankQueues() for _ in range(n_ranks)]
    free = np.zeros(n_ranks)
    held = np.zeros(n_ranks, np.int64)
    limit = math.inf if max_inflight is None else max_inflight
    out: RankOrder = {r: [] for r in range(n_ranks)}

    def push(t: int) -> None:
        key = (int(prio_class[t]), int(tg.task_mb[t]), -int(chunk[t]))
        queues[tg.task_rank[t]].push(tg.task_op[t] == 0, float(ready[t]), key, t)

    for t in np.nonzero(remaining == 0)[0]:
        push(int(t))
    for _ in range(n):
        best = (math.inf, -1, ())
        for r in range(n_ranks):
            kinds = (0, 1) if held[r] < limit else (1,)
            when = queues[r].next_time(free[r], kinds)
            if when < best[0]:
                best = (when, r, kinds)
        if best[1] < 0:  # every rank is at its limit: let the earliest forward through
            best = min((queues[r].next_time(free[r], (0, 1)), r, (0, 1)) for r in range(n_ranks))
            if not math.isfinite(best[0]):
                raise ValueError("task dependencies contain a cycle")
        when, r, kinds = best
        t = queues[r].pop(when, kinds)
        end = max(free[r], ready[t]) + tg.duration[t]
        free[r] = end
        held[r] += tg.holds[t]
        out[r].append(tg.actions[t])
        for e in range(tg.succ_ptr[t], tg.succ_ptr[t + 1]):
            u = int(tg.succ_idx[e])
            ready[u] = max(ready[u], end + succ_delay[e])
            remaining[u] -= 1
            if remaining[u] == 0:
                push(u)
    return out
