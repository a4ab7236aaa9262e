"""The DIP planner's driver: partition -> problem -> searched interleaving -> memory -> Plan.

:func:`plan_batch` runs the three-phase loop of the paper (Fig. 7) for one batch:

1. the dual-queue interleaving of the default segment order with the paper's tracking (most
   memory-efficient candidates) is the first incumbent, and is never lost;
2. the tracking configuration (:class:`~dip.planner.evaluate.TrackConfig`), the micro-batch order and
   a coarse shift of each module's segment priorities are tuned (:mod:`dip.planner.tuning`, a few
   rollouts);
3. MCTS (or DFS / random search) reorders segments, every rollout scored by interleaving + memory
   optimisation + simulation (the time left is shared with step 4 by ``POLISH_SHARE``);
4. polishing (:mod:`dip.planner.polish`), beyond the paper: the best schedule of every tracking
   configuration is re-interleaved with its own candidates; then the incumbent (and, on small
   problems or long budgets, a few other starts) goes through a finer priority search over unit
   passes, the per-rank memory ILP and an iterated local search on the rank orders.

:class:`~dip.planner.options.SearchOptions` holds every knob: ``rollouts`` makes the search
deterministic (no wall-clock dependence) and takes precedence over ``budget_s``; ``workers > 1`` runs
rollouts in processes that share the MCTS statistics (:mod:`dip.planner.parallel`).
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np

from dip.cost import CostModel
from dip.data.meta import BatchMeta
from dip.errors import Infeasible
from dip.planner.evaluate import (
    DEFAULT_CONFIGS,
    LARGE_CONFIGS,
    PAPER_CONFIG,
    Evaluator,
    Schedule,
    TrackConfig,
    active_items,
)
from dip.planner.mcts import DEFAULT_WINDOW, STRATEGIES, Portfolio
from dip.planner.options import SearchOptions
from dip.planner.parallel import run_parallel
from dip.planner.polish import polish, refine
from dip.planner.problem import PlanProblem, build_problem
from dip.planner.result import PlanResult, SearchStats, build_result, default_partition
from dip.planner.state import SearchState
from dip.planner.tuning import tune_base
from dip.planner.warmup import warm_up
from dip.schedule.partition import Partition
from dip.spec.hardware import get_hardware
from dip.spec.model import ModelSpec

__all__ = ["plan_batch", "search_problem"]

logger = logging.getLogger(__name__)

SMALL_ITEMS = 48
SMALL_WINDOWS = (3, 6, 12)
POLISH_STARTS = 3
# Deterministic searches of small problems polish from more starts: on 12 small batches (VLM-S and
# T2V-S, 4 micro-batches, seeds 0 and 2, 300 rollouts) 6 starts were never worse than 3 and better on 5
# (by 0.1-1.3%) for 20-40% more search time; 12 starts gained a further 0.1-1% for twice the time.
SMALL_DETERMINISTIC_POLISH_STARTS = 6
POLISH_START_S = 2.0  # polishing seconds that justify one more start in budget mode
LARGE_SEARCH_CONFIGS = 3
POLISH_SHARE = 0.4  # of the time left after tuning: polishing the best schedule pays more than more rollouts
GIB = 2**30


def plan_batch(
    model: ModelSpec,
    batch: BatchMeta,
    cost_model: CostModel | None = None,
    hardware=None,
    *,
    partition: Partition | None = None,
    memory_limit_bytes: float | None = None,
    options: SearchOptions = SearchOptions(),
) -> PlanResult:
    """Search a DIP plan for ``batch`` (see module docstring).

    The clock (``search_time_s``, the budget) starts after the one-time per-process work: loading the
    compiled kernels and the offline partition.

    Args:
        model: the model, with its parallel layout.
        batch: the global batch's micro-batch metadata.
        cost_model: pass times and memory (default: the cost model of ``hardware``, else H800).
        hardware: hardware preset, calibration file or spec (default: the cost model's).
        partition: the offline partition to reuse (default: profiled once per process).
        memory_limit_bytes: usable memory per GPU (default: the hardware's).
        options: how to search (budget or rollouts, seed, strategy, ...).

    Returns:
        The :class:`PlanResult`; raises :class:`Infeasible` when no plan fits the memory limit.
    """
    if cost_model is None:
        cost_model = CostModel(model, hardware or "H800")
    hardware = get_hardware(hardware or cost_model.hardware)
    partition = partition or default_partition(model, cost_model)
    warm_up()
    t0 = time.perf_counter()
    problem = build_problem(model, partition, batch, cost_model, hardware, memory_limit_bytes)
    state, stats = search_problem(problem, options, t0=t0)
    logger.debug(
        "planned batch %s: %.6g s after %d rollouts (initial %.6g s, tracking %s)",
        batch.index,
        state.best.makespan,
        state.rollouts,
        state.initial.makespan,
        state.best.config,
    )
    return build_result(problem, state.best, state.initial, stats, cost_model, hardware)


def search_problem(
    problem: PlanProblem, options: SearchOptions = SearchOptions(), *, t0: float | None = None
) -> tuple[SearchState, SearchStats]:
    """The search phases on a built problem; returns the final state (best and initial schedules).

    ``options.window`` / ``options.search_configs`` default by size: small problems (few segment items,
    e.g. a handful of micro-batches) tune and search every tracking configuration with several windows,
    large ones tune ``LARGE_CONFIGS`` and search the best three with one narrow window."""
    t0 = time.perf_counter() if t0 is None else t0
    o = options
    budget = o.budget
    deadline = math.inf if budget is None else t0 + budget
    ev = Evaluator(problem, passes=o.passes)
    initial = ev.evaluate(problem.default_sequence, PAPER_CONFIG)
    state = SearchState(t0, initial, initial, [(time.perf_counter() - t0, initial.makespan)])
    if not initial.feasible:
        _feasible_fallback(ev, problem, state)
    for ptr, tasks, choice in o.seeds:
        seq = np.asarray(tasks, np.int64)
        state.offer(
            ev.simulate(
                seq, np.asarray(ptr, np.int64), seq, np.asarray(choice, np.int64), state.best.config, state.best.items
            )
        )
    ranked, base = [state.best.config], problem.default_sequence
    state.phase = "tune"
    small = len(problem.items) <= SMALL_ITEMS
    if o.tune:
        ranked, base = tune_base(
            ev, problem, state, o.configs or (DEFAULT_CONFIGS if small else LARGE_CONFIGS), deadline
        )
    search_configs = o.search_configs
    if search_configs is None:
        search_configs = len(ranked) if small else LARGE_SEARCH_CONFIGS
    window = o.window
    if window is None:
        window = SMALL_WINDOWS if small else DEFAULT_WINDOW
    ranked = ranked[: max(int(search_configs), 1)]
    if not state.best.feasible:
        raise _infeasible(problem, state.best)
    polish_reserve = 0.0
    if budget is not None and o.polish:
        polish_reserve = POLISH_SHARE * max(deadline - time.perf_counter(), 0.0)
    windows = (window,) if isinstance(window, int) else tuple(window)
    rngs = np.random.default_rng(o.seed).spawn(len(windows))
    active = [active_items(problem, cfg) for cfg in ranked]
    search = Portfolio(
        [
            STRATEGIES[o.strategy](
                base,
                state.best.makespan,
                rng,
                alpha=o.alpha,
                beta=o.beta,
                window=w,
                rollouts_per_expansion=o.rollouts_per_expansion,
                configs=len(ranked),
                active=active,
            )
            for w, rng in zip(windows, rngs)
        ]
    )
    limit = o.rollouts
    state.phase = o.strategy
    if o.workers > 1:
        run_parallel(problem, search, ranked, state, o.workers, limit, deadline - polish_reserve, o.seed)
    else:
        _run_serial(ev, search, ranked, state, limit, deadline - polish_reserve)
    if o.polish:
        _polish_pool(ev, problem, state, deadline, o.rollouts, o.seed, small)
    stats = SearchStats(
        strategy=o.strategy,
        rollouts=state.rollouts,
        time_to_best_s=state.time_to_best,
        search_time_s=time.perf_counter() - t0,
        curve=state.curve,
        config=str(state.best.config),
        initial_time_s=state.initial.makespan,
        workers=o.workers,
        evaluations=ev.calls,
        gains=dict(state.gains),
        phase_start=dict(state.phase_start),
    )
    return state, stats


def _run_serial(
    ev: Evaluator, search, configs: list[TrackConfig], state: SearchState, limit: int | None, deadline: float
) -> None:
    while not search.exhausted:
        if limit is not None and state.rollouts >= limit:
            break
        if limit is None and time.perf_counter() >= deadline:
            break
        proposal = search.propose()
        if proposal is None:
            break
        node, seqs, k = proposal
        config = configs[k]
        if limit is not None:
            seqs = seqs[: max(limit - state.rollouts, 0)]
        scores = []
        for seq in seqs:
            sched = ev.evaluate(seq, config)
            state.rollouts += 1
            state.offer(sched)
            state.remember(sched)
            scores.append(sched.score)
            if limit is None and time.perf_counter() >= deadline:
                break
        search.update(node, scores, seqs[: len(scores)])


def _polish_pool(
    ev: Evaluator,
    problem: PlanProblem,
    state: SearchState,
    deadline: float,
    rollouts: int | None,
    seed: int,
    small: bool,
) -> None:
    """Polish the incumbent and, on small problems or with a few seconds to spare, also the best
    schedules of other tracking configurations (local searches from diverse starts), sharing the time.
    Every configuration's best schedule is first refined (cheap), which may change the incumbent."""
    state.phase = "restarts"
    for start in sorted(state.pool.values(), key=lambda s: s.score):
        if start is state.best or (math.isfinite(deadline) and time.perf_counter() >= deadline):
            continue
        local = SearchState(state.t0, start, state.initial)
        refine(ev, problem, local, deadline, not math.isfinite(deadline))
        state.pool[str(start.config)] = local.best
        state.offer(local.best)
    starts = [state.best]
    if math.isfinite(deadline):
        extra = min(POLISH_STARTS - 1, int(max(deadline - time.perf_counter(), 0.0) / POLISH_START_S))
    else:
        extra = SMALL_DETERMINISTIC_POLISH_STARTS - 1 if small else 0
    others = sorted((s for s in state.pool.values() if s is not state.best), key=lambda s: s.score)
    starts += others[:extra]
    for k, start in enumerate(starts):
        now = time.perf_counter()
        share = deadline if not math.isfinite(deadline) else now + (deadline - now) / (len(starts) - k)
        if k == 0:
            polish(ev, problem, state, share, rollouts, seed)
            continue
        local = SearchState(state.t0, start, state.initial)
        polish(ev, problem, local, share, rollouts, seed + k)
        state.phase = "restarts"
        state.offer(local.best)


def _feasible_fallback(ev: Evaluator, problem: PlanProblem, state: SearchState) -> Schedule:
    """When the paper's tracking overflows (forced forwards), try tracking with reserved memory."""
    for cfg in (TrackConfig(0.0, "memory", 1.0), TrackConfig(0.0, "fast", 1.0)):
        sched = ev.evaluate(problem.default_sequence, cfg)
        if sched.feasible:
            state.best = state.initial = sched
            return sched
    return state.initial


def _infeasible(problem: PlanProblem, sched: Schedule) -> Infeasible:
    """The error naming the rank that misses the limit by the most, even with full recomputation."""
    over = np.asarray(sched.overflow, float)
    if over.size == 0 or over.max() <= 0:
        over = (problem.static + sched.peak_bytes) - problem.limit
    r = int(np.argmax(over))
    need = problem.limit + max(float(over[r]), 0.0)
    return Infeasible(
        f"rank {r} needs {need / GIB:.1f} GiB, {over[r] / GIB:.1f} GiB over the "
        f"{problem.limit / GIB:.1f} GiB limit even with full recompute "
        f"({problem.static[r] / GIB:.1f} GiB parameters and optimizer state)"
    )
