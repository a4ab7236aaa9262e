"""Per-layer memory-strategy candidates of every stage pair (paper §5.3, offline candidate generation).

A *stage pair* is the forward and the backward of one (chunk, unit). Every layer of the chunk picks a
strategy: ``none`` (keep all activations), ``selective`` (recompute the attention core), ``full``
(keep only the layer input, recompute the layer) or ``offload`` (only where the host link hides the
transfer better than full recomputation). A multiple-choice knapsack over the layers gives the
time/memory Pareto front of the pair; we keep at most ``S`` candidates: the fastest, the most
memory-efficient and the fastest one inside each of ``S - 2`` equal memory buckets between them.
Every candidate's times and bytes come from ``cost_model.chunk_costs`` with its strategy tuple, the
same call the simulator makes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dip.data.meta import ModuleWork
from dip.schedule.ir import Chunk

__all__ = [
    "BASE_STRATEGIES",
    "DEFAULT_CANDIDATES",
    "CandidateBuilder",
    "StageCandidates",
    "layer_options",
    "pack_candidates",
    "pareto_front",
    "select_candidates",
]

DEFAULT_CANDIDATES = 10
BASE_STRATEGIES = ("none", "selective", "full")


@dataclass
class StageCandidates:
    """Candidates of every stage, sorted by activation bytes ascending (index 0 = most memory-efficient,
    ``count[s] - 1`` = fastest). Arrays are ``(stages, S)``; unused slots repeat the last candidate."""

    f: np.ndarray
    b: np.ndarray
    mem: np.ndarray
    count: np.ndarray
    strategies: list[list[tuple[str, ...]]]

    @property
    def fastest(self) -> np.ndarray:
        return self.count - 1

    def pick(self, choice: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(f, b, mem) per stage for ``choice[s]``."""
        rows = np.arange(len(choice))
        return self.f[rows, choice], self.b[rows, choice], self.mem[rows, choice]

    def at_level(self, level: float) -> np.ndarray:
        """Per stage, the fastest candidate whose bytes stay within ``min + level * (max - min)``."""
        lo = self.mem[np.arange(len(self.count)), 0]
        hi = self.mem[np.arange(len(self.count)), self.fastest]
        limit = lo + level * (hi - lo) + 1e-6
        ok = self.mem <= limit[:, None]
        ok &= np.arange(self.mem.shape[1])[None, :] < self.count[:, None]
        return (ok.shape[1] - 1 - np.argmax(ok[:, ::-1], axis=1)).astype(np.int64)


def layer_options(cost_model, module: str, work: ModuleWork) -> list[tuple[str, float, float]]:
    """``(strategy, extra backward seconds, activation bytes)`` per allowed strategy of one layer."""
    opts = [
        (s, cost_model.recompute_seconds(module, work, s), cost_model.layer_activation_bytes(module, work, s))
        for s in BASE_STRATEGIES
    ]
    off_t = cost_model.recompute_seconds(module, work, "offload")
    if off_t < cost_model.recompute_seconds(module, work, "full"):
        opts.append(("offload", off_t, cost_model.layer_activation_bytes(module, work, "offload")))
    return opts


def pareto_front(layers: int, options: list[tuple[str, float, float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Time/memory Pareto front of ``layers`` identical layers, each choosing one of ``options``
    (the multiple-choice knapsack over layers, solved exactly by enumerating how many layers take
    each option). Returns ``(extra seconds, bytes, counts per option)`` sorted by bytes ascending."""
    counts = _compositions(layers, len(options))
    t = counts @ np.array([o[1] for o in options])
    m = counts @ np.array([o[2] for o in options])
    idx = np.lexsort((t, m))
    ts = t[idx]
    prev_best = np.concatenate(([np.inf], np.minimum.accumulate(ts)[:-1]))
    keep = idx[ts < prev_best - 1e-15]
    return t[keep], m[keep], counts[keep]


_COMPOSITIONS: dict[tuple[int, int], np.ndarray] = {}


def _compositions(total: int, parts: int) -> np.ndarray:
    """All non-negative integer vectors of length ``parts`` summing to ``total`` (rows)."""
    key = (total, parts)
    hit = _COMPOSITIONS.get(key)
    if hit is None:
        if parts == 1:
            hit = np.array([[total]], np.int64)
        else:
            rows = []
            for k in range(total + 1):
                sub = _compositions(total - k, parts - 1)
                rows.append(np.concatenate([np.full((len(sub), 1), k, np.int64), sub], axis=1))
            hit = np.concatenate(rows, axis=0)
        _COMPOSITIONS[key] = hit
    return hit


def select_candidates(secs: np.ndarray, mem: np.ndarray, s: int = DEFAULT_CANDIDATES) -> list[int]:
    """Indices into a front sorted by bytes: the most memory-efficient, the fastest, and the fastest
    point inside each of ``s - 2`` equal memory buckets between them."""
    n = len(mem)
    if n <= s:
        return list(range(n))
    keep = {0, n - 1}
    buckets = max(s - 2, 0)
    edges = np.linspace(mem[0], mem[-1], buckets + 1)
    for k in range(buckets):
        inside = [int(i) for i in np.nonzero((mem >= edges[k]) & (mem <= edges[k + 1]))[0] if int(i) not in keep]
        if inside:
            keep.add(min(inside, key=lambda i: secs[i]))
    return sorted(keep)


class CandidateBuilder:
    """Builds and caches candidates per (module, work, layer range)."""

    def __init__(self, cost_model, s: int = DEFAULT_CANDIDATES, uniform: str | None = None):
        self.cost_model = cost_model
        self.s = s
        self.uniform = uniform  # one candidate per stage: every layer with this strategy (ablations)
        self._cache: dict = {}

    def for_stage(self, chunk: Chunk, work: ModuleWork) -> list[tuple[float, float, float, tuple[str, ...]]]:
        """``(f, b, act_bytes, strategies)`` candidates of ``chunk`` running ``work``."""
        if len(chunk.parts) != 1:
            raise ValueError("DIP chunks hold layers of exactly one module")
        part = chunk.parts[0]
        key = (part.module, work, part.layer_start, part.layer_end)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._cache[key] = self._build(part.module, work, part.layer_start, part.layer_end)
        return hit

    def _build(self, module: str, work: ModuleWork, start: int, stop: int):
        cm = self.cost_model
        base = cm.chunk_costs(module, work, start, stop, "none")
        layers = stop - start
        if work.empty or layers == 0:
            return [(base.f, base.i + base.w, base.act_bytes, ("none",) * layers)]
        if self.uniform is not None:
            cc = cm.chunk_costs(module, work, start, stop, self.uniform)
            return [(cc.f, cc.i + cc.w, cc.act_bytes, (self.uniform,) * layers)]
        options = layer_options(cm, module, work)
        secs, mem, counts = pareto_front(layers, options)
        act_none = cm.layer_activation_bytes(module, work, "none")
        keep = set(select_candidates(secs, mem, self.s))
        keep |= {k for k in range(len(mem)) if np.count_nonzero(counts[k]) == 1}  # uniform points on the front
        out = []
        for k in sorted(keep):
            strat = tuple(name for (name, _, _), c in zip(options, counts[k]) for _ in range(int(c)))
            act = base.act_bytes - layers * act_none + float(mem[k])
            out.append((base.f, base.i + base.w + float(secs[k]), act, _canonical(strat)))
        out.sort(key=lambda c: (c[2], c[1]))
        return out


def _canonical(strat: tuple[str, ...]) -> tuple[str, ...]:
    """Identical layers: list the recomputed layers first (order does not change cost)."""
    rank = {"full": 0, "offload": 1, "selective": 2, "none": 3}
    return tuple(sorted(strat, key=lambda x: rank[x]))


def pack_candidates(per_stage: list[list[tuple[float, float, float, tuple[str, ...]]]]) -> StageCandidates:
    """Pad per-stage candidate lists into ``(stages, S)`` arrays."""
    n = len(per_stage)
    width = max((len(c) for c in per_stage), default=1)
    f, b, mem = (np.zeros((n, width)) for _ in range(3))
    count = np.zeros(n, np.int64)
    strategies: list[list[tuple[str, ...]]] = []
    for s, cands in enumerate(per_stage):
        count[s] = len(cands)
        for j in range(width):
            cf, cb, cm_, _ = cands[min(j, len(cands) - 1)]
            f[s, j], b[s, j], mem[s, j] = cf, cb, cm_
        strategies.append([c[3] for c in cands])
    return StageCandidates(f, b, mem, count, strategies)
