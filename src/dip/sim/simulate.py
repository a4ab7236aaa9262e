"""Timing and memory simulation of a :class:`dip.schedule.ir.Plan`.

Two entry points:

* :func:`simulate` (plan -> :class:`SimResult`): iteration time, bubbles, MFU, per-rank memory peaks
  and OOMs, lower bounds, per-task times for traces. Builds the :class:`TaskGraph` unless given one.
* :func:`simulate_order_arrays` (task graph + :class:`OrderArrays` -> :class:`FastResult`): the thin
  per-candidate call of the planner; it runs the numba kernel and converts nothing. Callers that need
  per-task start/end times can call :func:`dip.sim.kernel.simulate_arrays` with the same arguments.

The step ends with a data-parallel gradient all-reduce when ``dp > 1``: a ring all-reduce of each
rank's gradient bytes over ``dp`` replicas, not overlapped with the pipeline (the slowest rank's
reduction is added to the makespan, and to the lower bound).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from dip.schedule.ir import Action, Plan
from dip.sim.costs import StageCosts
from dip.sim.kernel import DEADLOCK, OK, STATUS_NAMES, simulate_arrays
from dip.sim.taskgraph import OrderArrays, TaskGraph
from dip.sim.topology import Topology, as_topology

__all__ = ["FastResult", "SimResult", "simulate", "simulate_order_arrays"]


class FastResult(NamedTuple):
    """What the planner needs per candidate: status (``kernel.OK`` ...), makespan (inf on deadlock),
    per-rank activation peaks (bytes, count of stages holding activations) and stuck positions."""

    status: int
    makespan: float
    peak_bytes: np.ndarray
    peak_held: np.ndarray
    stuck_pos: np.ndarray


def simulate_order_arrays(tg: TaskGraph, arrays: OrderArrays) -> FastResult:
    """Simulate one candidate order of ``tg``'s structure (no Python work per task)."""
    status, makespan, _, _, _, _, peak_bytes, _, peak_held, stuck = simulate_arrays(
        arrays.ptr, arrays.tasks, *tg.kernel_arrays()
    )
    return FastResult(status, makespan, peak_bytes, peak_held, stuck)


@dataclass(repr=False)
class SimResult:
    """Everything :func:`simulate` learns about one plan (times in seconds, memory in bytes per GPU)."""

    status: str
    iteration_time: float
    makespan: float
    dp_allreduce_time: float
    busy: np.ndarray
    idle: np.ndarray
    rank_end: np.ndarray
    bubble_fraction: float
    mfu: float
    static_bytes: np.ndarray
    peak_activation_bytes: np.ndarray
    peak_memory_bytes: np.ndarray
    peak_time: np.ndarray
    peak_activations: np.ndarray
    memory_limit_bytes: float
    oom: list[tuple[int, float, float]]
    busiest_rank_bound: float
    critical_path_bound: float
    lower_bound: float
    start: np.ndarray
    end: np.ndarray
    taskgraph: TaskGraph
    stuck: list[tuple[int, int, Action]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == STATUS_NAMES[OK]

    @property
    def deadlock(self) -> bool:
        return self.status == STATUS_NAMES[DEADLOCK]

    def action_times(self) -> dict[int, list[tuple[Action, float, float]]]:
        """Per rank, the simulated (action, start, end) in execution order."""
        tg = self.taskgraph
        out: dict[int, list[tuple[Action, float, float]]] = {r: [] for r in range(tg.num_ranks)}
        for t in np.argsort(self.start, kind="stable"):
            if not math.isnan(self.start[t]):
                out[int(tg.task_rank[t])].append((tg.actions[t], float(self.start[t]), float(self.end[t])))
        return out

    def memory_timeline(self, rank: int) -> tuple[np.ndarray, np.ndarray]:
        """Step function of ``rank``'s memory (static + activations): ``bytes[k]`` holds from ``times[k]``."""
        tg = self.taskgraph
        mine = np.nonzero((tg.task_rank == rank) & ~np.isnan(self.start))[0]
        mine = mine[np.argsort(self.start[mine], kind="stable")]
        times, deltas = [0.0], [float(self.static_bytes[rank])]
        for t in mine:
            if tg.alloc[t]:
                times.append(float(self.start[t]))
                deltas.append(float(tg.alloc[t]))
            if tg.free[t]:
                times.append(float(self.end[t]))
                deltas.append(-float(tg.free[t]))
        return np.asarray(times), np.cumsum(deltas)

    def __repr__(self) -> str:
        return (
            f"SimResult({self.status}, iteration {self.iteration_time:.6g} s, "
            f"bubble {self.bubble_fraction:.3f}, lower bound {self.lower_bound:.6g} s)"
        )

    def summary(self) -> dict:
        """JSON-friendly headline numbers."""
        return {
            "status": self.status,
            "iteration_time_s": self.iteration_time,
            "makespan_s": self.makespan,
            "dp_allreduce_s": self.dp_allreduce_time,
            "bubble_fraction": self.bubble_fraction,
            "mfu": self.mfu,
            "lower_bound_s": self.lower_bound,
            "busiest_rank_bound_s": self.busiest_rank_bound,
            "critical_path_bound_s": self.critical_path_bound,
            "peak_memory_bytes": [float(x) for x in self.peak_memory_bytes],
            "peak_activations": [int(x) for x in self.peak_activations],
            "oom": [{"rank": r, "time_s": t, "over_bytes": b} for r, t, b in self.oom],
            "stuck": [{"rank": r, "position": p, "action": str(a)} for r, p, a in self.stuck],
        }


def simulate(
    plan: Plan,
    costs: StageCosts,
    topology: Topology | object | None = None,
    memory_limit_bytes: float | None = None,
    dp: int = 1,
    dp_grad_bytes_per_rank: np.ndarray | list[float] | None = None,
    taskgraph: TaskGraph | None = None,
) -> SimResult:
    """Simulate ``plan`` with ``costs`` on ``topology`` (Topology, HardwareSpec or None = free links).

    ``memory_limit_bytes`` defaults to the topology's usable GPU memory (inf when unknown).
    ``dp_grad_bytes_per_rank`` defaults to ``costs.grad_bytes``. MFU counts the FLOPs of all ``dp``
    replicas (``dp * costs.flops_total``) over ``tp * pp * dp`` GPUs.
    """
    topo = as_topology(topology, costs.tp)
    tg = taskgraph or TaskGraph.from_plan(plan, costs, topo)
    arrays = tg.orders_to_arrays(plan.order)
    (status, makespan, start, end, busy, rank_end, peak_act, peak_time, peak_held, stuck_pos) = simulate_arrays(
        arrays.ptr, arrays.tasks, *tg.kernel_arrays()
    )
    n_ranks = tg.num_ranks
    stuck = [
        (r, int(stuck_pos[r]), tg.actions[int(arrays.tasks[arrays.ptr[r] + stuck_pos[r]])])
        for r in range(n_ranks)
        if stuck_pos[r] >= 0
    ]
    grads = np.asarray(costs.grad_bytes if dp_grad_bytes_per_rank is None else dp_grad_bytes_per_rank, float)
    dp_time = max((topo.allreduce_seconds(float(g), dp, n_ranks) for g in grads), default=0.0)
    static = costs.static_bytes if len(costs.static_bytes) == n_ranks else np.zeros(n_ranks)
    limit = topo.mem_bytes if memory_limit_bytes is None else float(memory_limit_bytes)
    peak_mem = static + peak_act
    oom = [(r, float(peak_time[r]), float(peak_mem[r] - limit)) for r in range(n_ranks) if peak_mem[r] > limit]
    finite = math.isfinite(makespan)
    iteration = makespan + dp_time if finite else math.inf
    gpus = topo.tp * n_ranks * max(dp, 1)
    mfu = (
        max(dp, 1) * costs.flops_total / (gpus * topo.peak_flops * iteration)
        if finite and iteration > 0 and topo.peak_flops > 0
        else 0.0
    )
    busiest, critical = tg.busiest_rank_bound(), tg.critical_path_bound()
    bubble = 1.0 - float(busy.sum()) / (n_ranks * makespan) if finite and makespan > 0 else 0.0
    return SimResult(
        status=STATUS_NAMES[int(status)],
        iteration_time=iteration,
        makespan=float(makespan),
        dp_allreduce_time=dp_time,
        busy=busy,
        idle=(makespan - busy) if finite else np.full(n_ranks, math.inf),
        rank_end=rank_end,
        bubble_fraction=bubble,
        mfu=mfu,
        static_bytes=static,
        peak_activation_bytes=peak_act,
        peak_memory_bytes=peak_mem,
        peak_time=peak_time,
        peak_activations=peak_held,
        memory_limit_bytes=limit,
        oom=oom,
        busiest_rank_bound=busiest,
        critical_path_bound=critical,
        lower_bound=max(busiest, critical) + dp_time,
        start=start,
        end=end,
        taskgraph=tg,
        stuck=stuck,
    )
