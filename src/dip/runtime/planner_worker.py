"""One process of the planner service: plans the passes rank 0 hands it, at the lowest CPU priority.

Started by :class:`dip.runtime.planner_service.PlannerService` as ``python -m dip.runtime.planner_worker
FD_IN FD_OUT PARENT_PID`` (two pipe ends carrying pickled messages). It imports the planner, not torch.
It lowers its priority (``os.nice`` and the idle scheduling class), dies with its parent
(``PR_SET_PDEATHSIG`` on Linux, and at the end of its input), warms the compiled kernels, says
``ready`` and then answers ``plan`` requests:

* outside ``--deterministic`` (DIP): the dual-queue interleaving without search first (``best-so-far``),
  then tuning and tree search without polishing (sent when better), then the full search with the
  budget it was given (``searched``); rank 0 runs the best one it has when a step's deadline passes;
* ``--deterministic`` and the baselines: one plan, with a fixed rollout budget (``searched``).

Messages to the parent: ``("ready", warm_s)``, ``("plan", index, source, payload, makespan, latency_s,
final)`` (``payload``: :func:`dip.runtime.plan_delivery.encode` of the pass's ``StepWork``) and
``("error", index, kind, message)``.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from typing import Any

from dip.errors import BadInput
from dip.planner import default_partition
from dip.planner.warmup import warm_up
from dip.runtime import planning
from dip.runtime.calibrate import ScaledCostModel
from dip.runtime.faults import die_with_parent
from dip.runtime.plan_delivery import encode
from dip.spec.model import ModelSpec

__all__ = ["PlanRequest", "PlannerSetup", "main"]

logger = logging.getLogger(__name__)

NICE = 19  # the lowest priority: the planner uses the CPU time the ranks leave idle
ADAPTIVE_SHARE = 0.5  # without a budget: search for half of the predicted step time


@dataclass(frozen=True)
class PlannerSetup:
    """What every planner process needs once: the model (with its parallel sizes), the schedule and
    cost model inputs, the search mode, and the faults to inject (first process only)."""

    model: ModelSpec
    schedule: str
    dtype: str
    hardware: str
    seed: int
    deterministic: bool
    crash_before: int | None = None  # kill itself before planning this pass (fault injection)
    hang_before: int | None = None  # stop answering before planning this pass (fault injection)
    cores: tuple[int, ...] | None = None  # CPU cores to run on (rank 0 may be bound to its own)


@dataclass(frozen=True)
class PlanRequest:
    """Plan pass ``index`` (its replica batches and their fingerprint), searching ``budget_s`` seconds
    (``None``: adapted to the predicted step time) with the step time predicted by ``factors``."""

    index: int
    batches: list
    fingerprint: str
    budget_s: float | None
    factors: dict


class Planner:
    """The planning state of one worker process."""

    def __init__(self, setup: PlannerSetup):
        self.setup = setup
        self.cost_model, self.hardware = planning.cost_setup(setup.model, setup.dtype, setup.hardware)
        self.dip = setup.schedule == "dip"

    def warm_up(self) -> float:
        """Load (compile on first use) every kernel and profile the layer partition; seconds taken."""
        t0 = time.perf_counter()
        if self.dip:
            warm_up()
            default_partition(self.setup.model, self.cost_model)
        return time.perf_counter() - t0

    def plan(self, req: PlanRequest, send) -> None:
        """Plan ``req``, sending each better plan (the last one ``final``)."""
        t0 = time.perf_counter()
        predict = ScaledCostModel(self.cost_model, req.factors) if req.factors else None
        if not self.dip or self.setup.deterministic:
            stages = [("searched", planning.search_options(seed=self.setup.seed))]
        else:
            stages = [("best-so-far", planning.FAST_SEARCH), ("best-so-far", planning.QUICK_SEARCH), ("searched", None)]
        best = None
        for k, (source, search) in enumerate(stages):
            final = k == len(stages) - 1
            if search is None:  # the full search: the budget given, else half the predicted step time
                budget = req.budget_s
                if budget is None:
                    budget = ADAPTIVE_SHARE * (best if best is not None else 1.0)
                search = planning.search_options(deterministic=False, budget_s=budget, seed=self.setup.seed)
            work, _ = planning.plan_step(
                req.index,
                self.setup.schedule,
                self.setup.model,
                req.batches,
                self.cost_model,
                self.hardware,
                self.setup.seed,
                predict,
                None,
                search,
            )
            span = work.predicted_static_makespan_s
            span = span if span is not None else float("inf")
            if final or best is None or span < best:
                work = replace(work, fingerprint=req.fingerprint)
                send(("plan", req.index, source, encode(work), span, time.perf_counter() - t0, final))
                best = span if best is None else min(best, span)


def lower_priority() -> None:
    """The lowest CPU priority: ``os.nice(19)``, and the idle scheduling class where there is one (Linux),
    so that a rank waking up for a message preempts the planner at once instead of after its time slice."""
    os.nice(NICE)
    if hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError as exc:
            logger.debug("no idle scheduling class: %s", exc)


def _serve(conn_in: Connection, conn_out: Connection) -> None:
    setup: PlannerSetup = conn_in.recv()
    if setup.cores and hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, setup.cores)
        except OSError as exc:
            logger.warning("cannot run on cores %s: %s", setup.cores, exc)
    planner = Planner(setup)
    conn_out.send(("ready", planner.warm_up()))
    while True:
        msg: Any = conn_in.recv()
        if msg == "stop":
            return
        req: PlanRequest = msg
        if setup.crash_before is not None and req.index >= setup.crash_before:
            sys.stderr.write(f"planner: injected fault: the planner process exits before planning pass {req.index}\n")
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        if setup.hang_before is not None and req.index >= setup.hang_before:
            sys.stderr.write(f"planner: injected fault: the planner process hangs before planning pass {req.index}\n")
            sys.stderr.flush()
            while True:
                time.sleep(3600)
        try:
            planner.plan(req, conn_out.send)
        except BadInput as exc:
            conn_out.send(("error", req.index, "BadInput", str(exc)))
        except Exception as exc:
            logger.exception("planning pass %d failed", req.index)
            conn_out.send(("error", req.index, type(exc).__name__, f"{type(exc).__name__}: {exc}"))


def main(argv: list[str]) -> int:
    fd_in, fd_out, parent = (int(x) for x in argv[:3])
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the run through its ranks
    lower_priority()
    logging.basicConfig(level=logging.WARNING, format="planner: %(levelname)s %(name)s: %(message)s")
    conn_in, conn_out = Connection(fd_in, writable=False), Connection(fd_out, readable=False)
    try:
        _serve(conn_in, conn_out)
    except (EOFError, BrokenPipeError):  # rank 0 went away
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
