"""The planner service: plans for the upcoming passes, made in separate low-priority CPU processes while
the current step trains (``dip train --async-planner``).

Rank 0 owns it. ``W`` worker processes (:mod:`dip.runtime.planner_worker`) plan the passes of a window
of ``lookahead`` passes past the one the ranks need now, reading each pass's batch metadata from the
run's :class:`~dip.runtime.batches.BatchStream`; a thread of rank 0 (the dispatcher) hands out the
work, collects the plans and publishes every searched plan through the
:class:`~dip.runtime.plan_delivery.PlanChannel` as soon as it arrives, so the other ranks find the next
plan waiting when they finish a step.

When the ranks need pass ``i`` (:meth:`PlannerService.take`), rank 0 waits at most ``deadline_s`` for
its searched plan; past it, it runs the best plan a worker has sent for ``i`` so far (an earlier search
phase: ``best-so-far``), or computes the fallback (the dual-queue interleaving without search) when
there is none, and says so in the returned :class:`PlanInfo`. ``--deterministic`` runs have no deadline:
every pass runs its searched plan (fixed rollout budget), so a resumed run replans exactly.

A worker that exits or crashes, or that works on one pass longer than ``hang_timeout_s``, is replaced
by a new process (logged, counted in :attr:`PlannerService.restarts`); its pass goes to the next free
worker. Workers die with rank 0 (``PR_SET_PDEATHSIG``, and the end of their input pipe).
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from typing import Any

from dip.planner import DEFAULT_BUDGET_S
from dip.runtime.batches import BatchStream
from dip.runtime.plan_delivery import PlanChannel, decode, encode, encode_error
from dip.runtime.planner_worker import PlannerSetup, PlanRequest
from dip.runtime.planning import MIN_BUDGET_S, StepWork

__all__ = ["PlanInfo", "PlannerService", "default_workers"]

logger = logging.getLogger(__name__)

POLL_S = 0.05  # how often the dispatcher looks at dead or hung workers
STEP_TIME_WEIGHT = 0.3  # share of the newest pass in the averages that size the search budget
BUDGET_SHARE = 0.5  # a worker searches at most half of (workers x pass time): the service stays ahead
JIT_MARGIN = 0.8  # a search ends by this share of the time left until its pass is expected to be needed
MAX_FAILURES = 3  # workers lost on one pass before that pass is a planning error


@dataclass
class PlanInfo:
    """How a pass's plan was obtained on rank 0."""

    wait_s: float  # seconds the rank waited for it
    latency_s: float | None  # from the start of planning the batch to this plan
    source: str  # searched, best-so-far or fallback
    late: bool  # the searched plan was not there when the pass was needed

    @property
    def fallback(self) -> bool:
        return self.source == "fallback"


def default_workers(cores: int, local_ranks: int) -> int:
    """At most half of the cores left after the node's ranks, at least one."""
    return max(1, (cores - local_ranks) // 2)


@dataclass
class _Candidate:
    payload: bytes
    source: str
    makespan: float
    latency_s: float
    final: bool
    arrived: float  # time.perf_counter() when rank 0 received it


@dataclass
class _Worker:
    wid: int
    generation: int
    proc: subprocess.Popen
    to_child: Connection
    from_child: Connection
    ready: bool = False
    task: int | None = None
    task_started: float = 0.0
    alive: bool = True


@dataclass
class _Published:
    info: PlanInfo
    payload: bytes
    work: StepWork | None = None


class PlannerService:
    """Plans passes ahead in worker processes; see the module docstring.

    Args:
        setup: what every worker needs (model, schedule, search mode, faults to inject).
        stream: the run's batches (the workers plan exactly what the ranks will run).
        channel: where plans are published for the other ranks.
        passes: the passes of this run (``range(first, end)``).
        fallback: computes pass ``i``'s fallback plan on rank 0 (no search).
        workers: worker processes.
        lookahead: passes planned ahead of the one needed now.
        deadline_s: the longest a pass waits for its searched plan (ignored when ``setup.deterministic``).
        budget_s: search seconds per pass (``None``: adapted, see :meth:`_budget`).
        hang_timeout_s: a worker busy this long on one pass is replaced.
    """

    def __init__(
        self,
        setup: PlannerSetup,
        stream: BatchStream,
        channel: PlanChannel,
        passes: range,
        fallback: Callable[[int], StepWork],
        *,
        workers: int = 1,
        lookahead: int = 2,
        deadline_s: float = 0.02,
        budget_s: float | None = None,
        hang_timeout_s: float = 120.0,
    ):
        self.setup, self.stream, self.channel, self.passes = setup, stream, channel, passes
        self.fallback = fallback
        self.n_workers, self.lookahead, self.deadline_s = workers, max(lookahead, 1), deadline_s
        self.budget_s, self.hang_timeout_s = budget_s, hang_timeout_s
        self.cond = threading.Condition()
        self.workers: list[_Worker] = []
        self.claimed = passes.start - 1  # the pass the ranks asked for last (none yet)
        self.candidates: dict[int, _Candidate] = {}
        self.published: dict[int, _Published] = {}
        self.errors: dict[int, tuple[str, str]] = {}
        self.inflight: set[int] = set()
        self.failures: dict[int, int] = {}  # workers lost per pass
        self.factors: dict = {}
        self.pass_time_s: float | None = None  # average wall time of a pass (iteration time / passes)
        self.timed_steps = 0
        self.overhead_s: float | None = None  # average planning time beyond the search budget
        self.claimed_at = time.perf_counter()  # when the ranks asked for pass `claimed`
        self.budgets: dict[int, float | None] = {}  # search budget sent with each pass in flight
        self.restarts = 0
        self.events: list[dict[str, Any]] = []
        self.warmup_s: float | None = None
        self._closing = False
        self._thread: threading.Thread | None = None

    # ---- life cycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker processes (they warm their kernels) and the dispatcher thread."""
        for wid in range(self.n_workers):
            self.workers.append(self._spawn(wid, 0))
        self._thread = threading.Thread(target=self._run, name="dip-planner-service", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout_s: float) -> float:
        """Block until a worker has warmed its kernels; the seconds waited."""
        t0 = time.perf_counter()
        with self.cond:
            ok = self.cond.wait_for(lambda: any(w.ready for w in self.workers) or self._closing, timeout_s)
        if not ok:
            raise RuntimeError(f"the planner service did not start within {timeout_s:g} s")
        self.warmup_s = time.perf_counter() - t0
        return self.warmup_s

    def close(self) -> None:
        """Stop the dispatcher and every worker."""
        with self.cond:
            self._closing = True
            self.cond.notify_all()
        if self._thread is not None:
            self._thread.join(5.0)
        for w in self.workers:
            self._stop(w)

    # ---- rank 0's main thread -----------------------------------------------------------------------

    def take(self, index: int) -> tuple[StepWork, PlanInfo]:
        """Pass ``index``'s plan, published to every rank, and how it was obtained."""
        t0 = time.perf_counter()
        deadline = math.inf if self.setup.deterministic else t0 + self.deadline_s
        need_fallback = False
        with self.cond:
            if index > self.claimed:
                self.claimed, self.claimed_at = index, t0
            self.cond.notify_all()
            while True:
                done = self.published.get(index)
                if done is not None:
                    break
                if index in self.errors:
                    payload = encode_error(*self.errors[index])
                    self.channel.publish(index, payload)
                    decode(payload)  # raises the planning error on rank 0 too
                cand = self.candidates.get(index)
                now = time.perf_counter()
                if cand is not None and cand.final:
                    done = self._publish(index, cand, late=cand.arrived > t0)
                    break
                if now >= deadline:
                    if cand is not None:
                        done = self._publish(index, cand, late=True)
                    else:
                        need_fallback = True
                    break
                if self._closing:
                    raise RuntimeError("the planner service was closed")
                self.cond.wait(min(deadline - now, 1.0))
        if need_fallback:
            done = self._run_fallback(index, t0)
        work = done.work if done.work is not None else decode(done.payload)
        info = replace(done.info, wait_s=time.perf_counter() - t0)
        with self.cond:  # drop what the ranks no longer need
            for table in (self.candidates, self.published):
                for old in [k for k in table if k < index]:
                    del table[old]
        return work, info

    def set_calibration(self, factors: dict) -> None:
        """Predict the step time of later plans with these online-calibration factors."""
        with self.cond:
            self.factors = dict(factors)

    def note_pass_time(self, seconds: float) -> None:
        """The measured wall time of one pass (iteration time / passes per step): sizes the search budget.
        The run's first step is left out (it includes the start-up: first allocations, the first plan)."""
        with self.cond:
            self.timed_steps += 1
            if self.timed_steps > 1:
                self.pass_time_s = _average(self.pass_time_s, seconds)

    def summary(self) -> dict[str, Any]:
        return {
            "workers": self.n_workers,
            "lookahead": self.lookahead,
            "deadline_s": None if self.setup.deterministic else self.deadline_s,
            "budget_s": self.budget_s,
            "warmup_s": self.warmup_s,
            "restarts": self.restarts,
            "events": list(self.events),
        }

    def _run_fallback(self, index: int, t0: float) -> _Published:
        logger.info("pass %d: no plan from the planner after %.3f s; running the fallback", index, self.deadline_s)
        t = time.perf_counter()
        work = self.fallback(index)
        payload = encode(work)
        info = PlanInfo(0.0, time.perf_counter() - t, "fallback", True)
        with self.cond:
            done = self.published[index] = _Published(info, payload, work)
            self.channel.publish(index, payload)
        return done

    def _publish(self, index: int, cand: _Candidate, late: bool) -> _Published:
        """Publish ``cand`` as pass ``index``'s plan (caller holds the lock)."""
        info = PlanInfo(0.0, cand.latency_s, cand.source if not cand.final else "searched", late)
        done = self.published[index] = _Published(info, cand.payload)
        self.channel.publish(index, cand.payload)
        return done

    # ---- the dispatcher thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self.cond:
                if self._closing:
                    return
                conns = {w.from_child: w for w in self.workers if w.alive}
            ready = wait(list(conns), timeout=POLL_S) if conns else []
            for conn in ready:
                w = conns[conn]
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    self._replace(w, "exited")
                    continue
                self._handle(w, msg)
            now = time.monotonic()
            for w in list(self.workers):
                if not w.alive:
                    continue
                if w.proc.poll() is not None:
                    self._replace(w, f"exited (code {w.proc.returncode})")
                elif w.task is not None and now - w.task_started > self.hang_timeout_s:
                    w.proc.kill()
                    self._replace(w, f"hung: no plan for pass {w.task} after {self.hang_timeout_s:g} s")
            self._assign()

    def _handle(self, w: _Worker, msg: tuple) -> None:
        kind = msg[0]
        with self.cond:
            if kind == "ready":
                w.ready = True
                logger.debug("planner worker %d (generation %d) ready after %.2f s", w.wid, w.generation, msg[1])
            elif kind == "plan":
                _, index, source, payload, span, latency, final = msg
                old = self.candidates.get(index)
                if index not in self.published and (old is None or final or span < old.makespan):
                    self.candidates[index] = _Candidate(payload, source, span, latency, final, time.perf_counter())
                if final:
                    w.task = None
                    self.inflight.discard(index)
                    budget = self.budgets.pop(index, None)
                    if budget is not None:
                        self.overhead_s = _average(self.overhead_s, max(latency - budget, 0.0))
                    if index > self.claimed and index not in self.published:  # ahead: publish now
                        self._publish(index, self.candidates[index], late=False)
            elif kind == "error":
                _, index, err_kind, message = msg
                self.errors[index] = (err_kind, message)
                w.task = None
                self.inflight.discard(index)
            self.cond.notify_all()

    def _assign(self) -> None:
        with self.cond:
            idle = [w for w in self.workers if w.alive and w.ready and w.task is None]
            if not idle or self._closing:
                return
            window = range(
                max(self.claimed, self.passes.start), min(self.claimed + self.lookahead + 1, self.passes.stop)
            )
            todo = [
                i
                for i in window
                if i not in self.published
                and i not in self.inflight
                and i not in self.errors
                and not (i in self.candidates and self.candidates[i].final)
            ]
            jobs = [(w, i, self._budget(i)) for w, i in zip(idle, todo)]
            for w, i, budget in jobs:
                w.task, w.task_started = i, time.monotonic()
                self.inflight.add(i)
                self.budgets[i] = budget
            factors = dict(self.factors)
        for w, i, budget in jobs:
            req = PlanRequest(i, self.stream.replicas(i), self.stream.fingerprint(i), budget, factors)
            try:
                w.to_child.send(req)
            except (OSError, ValueError):
                self._replace(w, "stopped reading its input")

    def _budget(self, index: int) -> float | None:
        """Search seconds for pass ``index`` (caller holds the lock): ``budget_s`` when given; else half of
        ``workers`` x the average pass time (the service plans twice as fast as the ranks train), and at
        most what still ends, with the usual planning overhead, before the pass is expected to be needed;
        between ``MIN_BUDGET_S`` and ``DEFAULT_BUDGET_S``. ``None`` before the first pass was timed (the
        worker then searches for half of its predicted pass time)."""
        if self.budget_s is not None:
            return self.budget_s
        if self.pass_time_s is None:
            return None
        share = BUDGET_SHARE * self.n_workers * self.pass_time_s
        due = self.claimed_at + (index - self.claimed) * self.pass_time_s - time.perf_counter()
        left = JIT_MARGIN * due - (self.overhead_s or 0.0)
        return min(max(min(share, left), MIN_BUDGET_S), DEFAULT_BUDGET_S)

    def _replace(self, w: _Worker, why: str) -> None:
        """Replace a dead or hung worker by a new process; its pass goes back to the pool."""
        with self.cond:
            if not w.alive or self._closing:
                return
            w.alive = False
            task = w.task
            if task is not None:
                self.inflight.discard(task)
                self.failures[task] = self.failures.get(task, 0) + 1
                if self.failures[task] >= MAX_FAILURES:
                    why_all = f"the planner failed {MAX_FAILURES} times on pass {task} (last: {why})"
                    self.errors[task] = ("Error", why_all)
            self.restarts += 1
            self.events.append(
                {"worker": w.wid, "generation": w.generation, "reason": why, "pass": task, "claimed": self.claimed}
            )
        logger.warning(
            "planner worker %d %s%s; starting a new one (restart %d); steps go on with the plans at hand",
            w.wid,
            why,
            f" while planning pass {task}" if task is not None else "",
            self.restarts,
        )
        self._stop(w)
        fresh = self._spawn(w.wid, w.generation + 1)
        with self.cond:
            self.workers[self.workers.index(w)] = fresh
            self.cond.notify_all()

    def _spawn(self, wid: int, generation: int) -> _Worker:
        setup = self.setup if generation == 0 else replace(self.setup, crash_before=None, hang_before=None)
        r_in, w_in = os.pipe()
        r_out, w_out = os.pipe()
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        cmd = [sys.executable, "-m", "dip.runtime.planner_worker", str(r_in), str(w_out), str(os.getpid())]
        try:
            proc = subprocess.Popen(cmd, pass_fds=(r_in, w_out), env=env)
        finally:
            os.close(r_in)
            os.close(w_out)
        w = _Worker(wid, generation, proc, Connection(w_in, readable=False), Connection(r_out, writable=False))
        w.to_child.send(setup)
        return w

    @staticmethod
    def _stop(w: _Worker) -> None:
        w.alive = False
        if w.proc.poll() is None:
            try:
                w.to_child.send("stop")
            except (OSError, ValueError):
                pass
            try:
                w.proc.wait(1.0)
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
        for conn in (w.to_child, w.from_child):
            conn.close()


def _average(old: float | None, new: float) -> float:
    return new if old is None else (1 - STEP_TIME_WEIGHT) * old + STEP_TIME_WEIGHT * new
