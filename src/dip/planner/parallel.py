"""Parallel schedule search (paper §6.2): worker processes share the MCTS statistics.

The tree lives in the coordinating process; each round it selects one expansion per worker (virtual
visits keep the workers on different branches), the workers run the rollouts (interleaving, memory
optimisation, simulation) and return their makespans, and the coordinator back-propagates them in a
fixed order. That is the paper's "update the global statistics after each round under a mutex" with
the coordinator as the lock; with a rollout budget the rounds are the same whatever the timing, so
the search stays deterministic. Workers are forked, so they inherit the built problem and the
compiled kernels.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import time

import numpy as np

from dip.planner.evaluate import Evaluator, Schedule, TrackConfig

__all__ = ["default_workers", "run_parallel"]

_WORKER: dict = {}


def default_workers() -> int:
    """At most half of this machine's cores (the paper caps search workers at 50%)."""
    return max(1, (os.cpu_count() or 2) // 2)


def _init(problem, configs) -> None:
    _WORKER["ev"] = Evaluator(problem)
    _WORKER["configs"] = configs


def _rollouts(job: tuple[list[np.ndarray], int, float]) -> tuple[list[float], Schedule | None]:
    seqs, k, incumbent = job
    ev: Evaluator = _WORKER["ev"]
    config: TrackConfig = _WORKER["configs"][k]
    scores, best = [], None
    for seq in seqs:
        sched = ev.evaluate(seq, config)
        scores.append(sched.score)
        if sched.score < incumbent - 1e-12 and (best is None or sched.score < best.score):
            best = sched
    return scores, best


def run_parallel(
    problem, search, configs: list[TrackConfig], state, workers: int, limit: int | None, deadline: float, seed: int
) -> None:
    """Run ``search`` with ``workers`` processes until ``limit`` rollouts or ``deadline``."""
    ctx = mp.get_context("fork")
    with ctx.Pool(workers, initializer=_init, initargs=(problem, configs)) as pool:
        while not search.exhausted:
            if limit is not None and state.rollouts >= limit:
                break
            if limit is None and time.perf_counter() >= deadline:
                break
            batch = []
            for _ in range(workers):
                proposal = search.propose()
                if proposal is None:
                    break
                node, seqs, k = proposal
                if limit is not None:
                    left = limit - state.rollouts - sum(len(s) for _, s, _ in batch)
                    seqs = seqs[: max(left, 0)]
                if not seqs:
                    search.update(node, [], [])
                    break
                batch.append((node, seqs, k))
            if not batch:
                break
            results = pool.map(_rollouts, [(seqs, k, state.best.score) for _, seqs, k in batch])
            for (node, seqs, _), (scores, best) in zip(batch, results):
                state.rollouts += len(seqs)
                if best is not None:
                    state.offer(best)
                    state.remember(best)
                search.update(node, [s if math.isfinite(s) else math.inf for s in scores], seqs)
