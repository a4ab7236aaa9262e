"""Numba helpers of the interleaving kernel: binary heaps in one flat array and Fenwick trees.

Heaps: heap ``h`` occupies ``heap[base[h]:base[h] + size[h]]`` and is ordered by ``(kf[t], ki[t])``
ascending. Fenwick trees: per rank a slice of ``fen`` holding the bytes of forwards in priority order.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["EPS", "INF", "fen_add", "fen_prefix", "less", "pop", "push", "reserve_tree"]

INF = np.inf
EPS = 1e-6


@njit(cache=True, inline="always")
def less(a, b, kf, ki):
    return kf[a] < kf[b] or (kf[a] == kf[b] and ki[a] < ki[b])


@njit(cache=True, inline="always")
def _sift_up(heap, off, pos, kf, ki):
    while pos > 0:
        parent = (pos - 1) >> 1
        if less(heap[off + pos], heap[off + parent], kf, ki):
            heap[off + pos], heap[off + parent] = heap[off + parent], heap[off + pos]
            pos = parent
        else:
            break


@njit(cache=True, inline="always")
def _sift_down(heap, off, n, pos, kf, ki):
    while True:
        left = 2 * pos + 1
        if left >= n:
            break
        child = left
        if left + 1 < n and less(heap[off + left + 1], heap[off + left], kf, ki):
            child = left + 1
        if less(heap[off + child], heap[off + pos], kf, ki):
            heap[off + child], heap[off + pos] = heap[off + pos], heap[off + child]
            pos = child
        else:
            break


@njit(cache=True, inline="always")
def push(heap, base, size, h, item, kf, ki):
    pos = size[h]
    size[h] += 1
    heap[base[h] + pos] = item
    _sift_up(heap, base[h], pos, kf, ki)


@njit(cache=True, inline="always")
def pop(heap, base, size, h, kf, ki):
    off = base[h]
    top = heap[off]
    size[h] -= 1
    n = size[h]
    if n > 0:
        heap[off] = heap[off + n]
        _sift_down(heap, off, n, 0, kf, ki)
    return top


@njit(cache=True, inline="always")
def fen_add(fen, off, size, pos, value):
    i = pos + 1
    while i <= size:
        fen[off + i - 1] += value
        i += i & (-i)


@njit(cache=True, inline="always")
def fen_prefix(fen, off, pos):
    """Sum of entries at positions < pos."""
    total = 0.0
    i = pos
    while i > 0:
        total += fen[off + i - 1]
        i -= i & (-i)
    return total


@njit(cache=True)
def reserve_tree(n_ranks, task_rank, task_op, task_stage, stage_act, prio, reserve):
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
            fen_add(fen, a, b - a, k, stage_act[task_stage[t]])
    return fen, fen_base, fen_pos
