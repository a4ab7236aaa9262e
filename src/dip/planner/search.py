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

``rollouts`` makes the search deterministic (no wall-clock dependence) and takes precedence over
``budget_s``. ``workers > 1`` runs rollouts in processes that share the MCTS statistics
(:mod:`dip.planner.parallel`).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from dip.data.meta import BatchMeta
from dip.errors import BadInput, Infeasible
from dip.planner.evaluate import (DEFAULT_CONFIGS, LARGE_CONFIGS, PAPER_CONFIG, Evaluator, Schedule, TrackConfig,
                                  active_items)
from dip.planner.mcts import (DEFAULT_ALPHA, DEFAULT_BETA, DEFAULT_ROLLOUTS_PER_EXPANSION, DEFAULT_WINDOW, STRATEGIES,
                              Portfolio)
from dip.planner.partitioner import Partition
from dip.planner.polish import polish, refine
from dip.planner.problem import PlanProblem, build_problem
from dip.planner.result import PlanResult, SearchStats, build_result, default_partition
from dip.planner.tuning import tune_base
from dip.planner.uniform import warm_up
from dip.spec.hardware import get_hardware
from dip.spec.model import ModelSpec

DEFAULT_BUDGET_S = 2.0
SMALL_ITEMS = 48
SMALL_WINDOWS = (3, 6, 12)
POLISH_STARTS = 3
POLISH_START_S = 2.0  # polishing seconds that justify one more start in budget mode
LARGE_SEARCH_CONFIGS = 3
POLISH_SHARE = 0.4  # of the time left after tuning: polishing the best schedule pays more than more rollouts
GIB = 2**30


@dataclass
class SearchState:
    """Incumbent tracking shared by the search phases."""

    t0: float
    best: Schedule
    initial: Schedule
    curve: list[tuple[float, float]] = field(default_factory=list)
    rollouts: int = 0
    time_to_best: float = 0.0
    _phase: str = "initial"
    gains: dict[str, float] = field(default_factory=dict)
    phase_start: dict[str, float] = field(default_factory=dict)
    pool: dict[str, Schedule] = field(default_factory=dict)

    @property
    def phase(self) -> str:
        return self._phase

    @phase.setter
    def phase(self, name: str) -> None:
        self._phase = name
        self.phase_start.setdefault(name, time.perf_counter() - self.t0)

    def remember(self, sched: Schedule) -> None:
        """Keep the best schedule per tracking configuration: diverse starting points for polishing."""
        key = str(sched.config)
        if sched.feasible and (key not in self.pool or sched.score < self.pool[key].score):
            self.pool[key] = sched

    def offer(self, sched: Schedule) -> bool:
        if sched.score < self.best.score - 1e-12:
            if math.isfinite(self.best.score):
                self.gains[self.phase] = self.gains.get(self.phase, 0.0) + self.best.score - sched.score
            self.best = sched
            self.time_to_best = time.perf_counter() - self.t0
            self.curve.append((self.time_to_best, sched.makespan))
            return True
        return False


def plan_batch(model: ModelSpec, batch: BatchMeta, cost_model=None, hardware=None, partition: Partition | None = None,
               budget_s: float | None = None, rollouts: int | None = None, workers: int = 1, seed: int = 0,
               memory_limit_bytes: float | None = None, alpha: float = DEFAULT_ALPHA, beta: float = DEFAULT_BETA,
               strategy: str = "mcts", **options) -> PlanResult:
    """Search a DIP plan for ``batch`` (see module docstring). Raises :class:`Infeasible` when no plan
    fits ``memory_limit_bytes`` (default: the hardware's memory). ``options`` go to :func:`search_problem`.

    The clock (``search_time_s``, the budget) starts after the one-time per-process work: loading the
    compiled kernels and the offline partition."""
    if cost_model is None:
        from dip.cost import CostModel

        cost_model = CostModel(model, hardware or "H800")
    hardware = get_hardware(hardware or cost_model.hardware)
    partition = partition or default_partition(model, cost_model)
    warm_up()
    t0 = time.perf_counter()
    problem = build_problem(model, partition, batch, cost_model, hardware, memory_limit_bytes)
    state, stats = search_problem(problem, budget_s, rollouts, workers, seed, alpha, beta, strategy, t0=t0, **options)
    return build_result(problem, state.best, state.initial, stats, cost_model, hardware)


def search_problem(problem: PlanProblem, budget_s: float | None = None, rollouts: int | None = None,
                   workers: int = 1, seed: int = 0, alpha: float = DEFAULT_ALPHA, beta: float = DEFAULT_BETA,
                   strategy: str = "mcts", window: int | tuple[int, ...] | None = None,
                   rollouts_per_expansion: int = DEFAULT_ROLLOUTS_PER_EXPANSION, tune: bool = True,
                   polish_schedules: bool = True, configs: tuple[TrackConfig, ...] | None = None,
                   search_configs: int | None = None, seeds: tuple = (), passes: int = 3,
                   t0: float | None = None
                   ) -> tuple[SearchState, SearchStats]:
    """The search phases on a built problem; returns the final state (best and initial schedules).

    ``seeds``: known schedules ``(ptr, tasks, choice)`` of this problem offered as incumbents up front.
    ``window`` / ``search_configs`` default by size: small problems (few segment items, e.g. a handful of
    micro-batches) tune and search every tracking configuration with several windows, large ones tune
    ``LARGE_CONFIGS`` and search the best three with one narrow window."""
    t0 = time.perf_counter() if t0 is None else t0
    if strategy not in STRATEGIES:
        raise BadInput(f"unknown search strategy {strategy!r}; valid strategies: {', '.join(STRATEGIES)}")
    if rollouts is not None and rollouts < 0:
        raise BadInput(f"rollouts must be >= 0, got {rollouts}")
    if budget_s is not None and budget_s <= 0:
        raise BadInput(f"budget must be > 0 seconds, got {budget_s}")
    deterministic = rollouts is not None
    budget = None if deterministic else float(budget_s if budget_s is not None else DEFAULT_BUDGET_S)
    deadline = math.inf if budget is None else t0 + budget
    ev = Evaluator(problem, passes=passes)
    initial = ev.evaluate(problem.default_sequence, PAPER_CONFIG)
    state = SearchState(t0, initial, initial, [(time.perf_counter() - t0, initial.makespan)])
    if not initial.feasible:
        _feasible_fallback(ev, problem, state)
    for ptr, tasks, choice in seeds:
        seq = np.asarray(tasks, np.int64)
        state.offer(ev.simulate(seq, np.asarray(ptr, np.int64), seq, np.asarray(choice, np.int64), state.best.config,
                                state.best.items))
    ranked, base = [state.best.config], problem.default_sequence
    state.phase = "tune"
    small = len(problem.items) <= SMALL_ITEMS
    if tune:
        ranked, base = tune_base(ev, problem, state, configs or (DEFAULT_CONFIGS if small else LARGE_CONFIGS),
                                 deadline)
    if search_configs is None:
        search_configs = len(ranked) if small else LARGE_SEARCH_CONFIGS
    if window is None:
        window = SMALL_WINDOWS if small else DEFAULT_WINDOW
    ranked = ranked[:max(int(search_configs), 1)]
    if not state.best.feasible:
        raise _infeasible(problem, state.best)
    polish_reserve = 0.0
    if budget is not None and polish_schedules:
        polish_reserve = POLISH_SHARE * max(deadline - time.perf_counter(), 0.0)
    windows = (window,) if isinstance(window, int) else tuple(window)
    rngs = np.random.default_rng(seed).spawn(len(windows))
    active = [active_items(problem, cfg) for cfg in ranked]
    search = Portfolio([STRATEGIES[strategy](base, state.best.makespan, rng, alpha=alpha, beta=beta, window=w,
                                             rollouts_per_expansion=rollouts_per_expansion, configs=len(ranked),
                                             active=active)
                        for w, rng in zip(windows, rngs)])
    limit = rollouts if deterministic else None
    state.phase = strategy
    if workers > 1:
        from dip.planner.parallel import run_parallel

        run_parallel(problem, search, ranked, state, workers, limit, deadline - polish_reserve, seed)
    else:
        _run_serial(ev, search, ranked, state, limit, deadline - polish_reserve)
    if polish_schedules:
        _polish_pool(ev, problem, state, deadline, rollouts, seed, small)
    stats = SearchStats(
        strategy=strategy, rollouts=state.rollouts, time_to_best_s=state.time_to_best,
        search_time_s=time.perf_counter() - t0, curve=state.curve, config=str(state.best.config),
        initial_time_s=state.initial.makespan, workers=workers, evaluations=ev.calls, gains=dict(state.gains),
        phase_start=dict(state.phase_start),
    )
    return state, stats


def _run_serial(ev: Evaluator, search, configs: list[TrackConfig], state: SearchState, limit: int | None,
                deadline: float) -> None:
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
            seqs = seqs[:max(limit - state.rollouts, 0)]
        scores = []
        for seq in seqs:
            sched = ev.evaluate(seq, config)
            state.rollouts += 1
            state.offer(sched)
            state.remember(sched)
            scores.append(sched.score)
            if limit is None and time.perf_counter() >= deadline:
                break
        search.update(node, scores, seqs[:len(scores)])


def _polish_pool(ev: Evaluator, problem: PlanProblem, state: SearchState, deadline: float, rollouts: int | None,
                 seed: int, small: bool) -> None:
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
        extra = POLISH_STARTS - 1 if small else 0
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
    return Infeasible(f"rank {r} needs {need / GIB:.1f} GiB, {over[r] / GIB:.1f} GiB over the "
                      f"{problem.limit / GIB:.1f} GiB limit even with full recompute "
                      f"({problem.static[r] / GIB:.1f} GiB parameters and optimizer state)")
