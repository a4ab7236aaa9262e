"""The scheduling problem of one batch as flat arrays: tasks, dependencies, candidates, segments.

Built once per batch from a :class:`~dip.planner.partitioner.Partition`:

* the simulator's :class:`~dip.sim.TaskGraph` (task ids, dependency CSR, per-edge p2p delays) with the
  fastest costs, which also gives the order-independent lower bound;
* per stage pair the memory candidates (:mod:`dip.planner.candidates`);
* the *segment items* MCTS orders. A pipeline segment is one pass (F or B) of one unit over the ``P``
  consecutive chunks ``kP .. kP+P-1`` of a module. Segments of one module inside one micro-batch
  (all its sub-microbatches and all ``K_i`` segments) form one item: they share a priority and keep a
  fixed order: the further-along segment first; then, for forwards, smaller sub-microbatches first (a
  short pipeline fill) and, for backwards, larger ones first (a short drain), then unit order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from dip.data.meta import BatchMeta, work_for
from dip.errors import BadInput
from dip.planner.candidates import DEFAULT_CANDIDATES, CandidateBuilder, StageCandidates, pack_candidates
from dip.schedule.ir import Flow, Unit
from dip.schedule.partition import Partition
from dip.schedule.units import linear_stage_graph, uniform_units
from dip.sim import StageCosts, TaskGraph, stage_costs, uniform_stage_costs
from dip.sim.topology import Topology
from dip.spec.hardware import usable_memory_bytes
from dip.spec.model import ModelSpec

__all__ = ["SEQ_SPAN", "UNIFORM_GROUP", "Item", "PlanProblem", "build_problem", "problem_from_costs", "uniform_problem"]

F, B = 0, 1
SEQ_SPAN = 1 << 20


@dataclass(frozen=True)
class Item:
    """A set of segments sharing one priority: pass ``direction`` (0 = F, 1 = B) of ``group`` for ``mb``."""

    group: str
    mb: int
    direction: int

    def __str__(self) -> str:
        return f"{self.group}:{'FB'[self.direction]}{self.mb}"


@dataclass
class PlanProblem:
    """Everything the search needs about one batch, mostly as numpy arrays (see module docstring)."""

    model: ModelSpec | None
    partition: Partition
    batch: BatchMeta | None
    units: dict[str, tuple[Unit, ...]]
    flows: tuple[Flow, ...]
    costs: StageCosts
    tg: TaskGraph
    topology: Topology
    cand: StageCandidates
    static: np.ndarray
    limit: float
    stage_rank: np.ndarray
    succ_delay: np.ndarray
    items: list[Item]
    task_item: np.ndarray
    task_seq: np.ndarray
    default_sequence: np.ndarray
    task_unit_item: np.ndarray | None = None
    task_unit_seq: np.ndarray | None = None
    dp: int = 1
    lower_bound: float = 0.0
    info: dict = field(default_factory=dict)

    @property
    def num_ranks(self) -> int:
        return self.tg.num_ranks

    @property
    def num_tasks(self) -> int:
        return self.tg.num_tasks

    @property
    def cap(self) -> np.ndarray:
        """Activation bytes each rank may hold (limit minus static memory)."""
        return self.limit - self.static

    @property
    def safe_cap(self) -> np.ndarray:
        """:attr:`cap` less a margin far above float rounding, so that planned peaks stay within the
        limit when the simulator sums the same bytes in another order."""
        margin = 1e-9 * abs(self.limit) if np.isfinite(self.limit) else 0.0
        return self.cap - margin

    def priorities(self, sequence: np.ndarray) -> np.ndarray:
        """Per-task priority key (lower runs first) for an item ``sequence`` (item ids, first = highest)."""
        pos = np.empty(len(self.items), np.int64)
        pos[sequence] = np.arange(len(sequence))
        return pos[self.task_item] * SEQ_SPAN + self.task_seq

    @property
    def num_unit_items(self) -> int:
        return int(self.task_unit_item.max()) + 1 if self.task_unit_item is not None and self.num_tasks else 0

    def unit_priorities(self, sequence: np.ndarray) -> np.ndarray:
        """Per-task priority key from a sequence of *unit items* (one pass of one unit: the finer
        granularity of the priority polish)."""
        pos = np.empty(self.num_unit_items, np.int64)
        pos[sequence] = np.arange(len(sequence))
        return pos[self.task_unit_item] * SEQ_SPAN + self.task_unit_seq

    def task_durations(self, choice: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(duration, activation bytes) per task for candidate ``choice[stage]``."""
        f, b, mem = self.cand.pick(choice)
        s, op = self.tg.task_stage, self.tg.task_op
        return np.where(op == F, f[s], b[s]), mem[s]


def build_problem(
    model: ModelSpec,
    partition: Partition,
    batch: BatchMeta,
    cost_model,
    hardware,
    memory_limit_bytes: float | None = None,
    candidates: int = DEFAULT_CANDIDATES,
    dp: int | None = None,
    uniform: str | None = None,
) -> PlanProblem:
    """Units, costs, task graph, candidates and segment items of ``batch`` under ``partition``.
    ``uniform`` restricts every stage to one candidate: all its layers with that strategy."""
    graph = partition.graph
    units, flows = partition.units(model, batch)
    if not any(units.values()):
        raise BadInput("the batch has no micro-batches to schedule")
    costs = stage_costs(graph, units, flows, model, cost_model, batch)
    topo = Topology.from_hardware(hardware, tp=costs.tp)
    builder = CandidateBuilder(cost_model, candidates, uniform)
    unit_of = {g: {u.index: u for u in us} for g, us in units.items()}
    mbs = batch.microbatches
    per_stage = []
    works: dict[tuple[str, int], object] = {}
    for chunk, unit in costs.keys:
        c = graph.chunks[chunk]
        work = works.get((c.parts[0].module, unit))
        if work is None:
            u = unit_of[c.group][unit]
            module = model.module(c.parts[0].module)
            work = works[(module.name, unit)] = work_for(
                model, module, mbs[u.mb], slice(u.start, u.stop) if u.stop > u.start else None
            )
        per_stage.append(builder.for_stage(c, work))
    limit = float(usable_memory_bytes(hardware) if memory_limit_bytes is None else memory_limit_bytes)
    return problem_from_costs(
        partition,
        units,
        flows,
        costs,
        topo,
        pack_candidates(per_stage),
        limit,
        int(dp or model.parallel.dp or 1),
        model,
        batch,
    )


UNIFORM_GROUP = "model"  # the one group of a schedule-only chain


def problem_from_costs(
    partition: Partition,
    units,
    flows,
    costs: StageCosts,
    topology: Topology,
    cand: StageCandidates,
    limit: float,
    dp: int = 1,
    model: ModelSpec | None = None,
    batch: BatchMeta | None = None,
) -> PlanProblem:
    """A problem from ready-made stage costs and candidates (also schedule-only studies)."""
    graph = partition.graph
    tg = TaskGraph.build(graph, units, flows, costs, topology, split=False)
    ranks = np.asarray(graph.stage_to_rank(), np.int64)
    stage_rank = ranks[np.asarray([k[0] for k in costs.keys], np.int64)]
    order = np.argsort(tg.pred_idx, kind="stable")
    succ_delay = tg.pred_delay[order].astype(np.float64)
    items, task_item, task_seq, default = _segment_items(graph, units, tg, costs)
    unit_item, unit_seq = _unit_items(graph, tg)
    lb = max(tg.busiest_rank_bound(), tg.critical_path_bound())
    static = np.asarray(costs.static_bytes, float)
    if static.shape != (graph.num_ranks,):
        static = np.zeros(graph.num_ranks)
    return PlanProblem(
        model=model,
        partition=partition,
        batch=batch,
        units=units,
        flows=tuple(flows),
        costs=costs,
        tg=tg,
        topology=topology,
        cand=cand,
        static=static,
        limit=float(limit),
        stage_rank=stage_rank,
        succ_delay=succ_delay,
        items=items,
        task_item=task_item,
        task_seq=task_seq,
        default_sequence=default,
        task_unit_item=unit_item,
        task_unit_seq=unit_seq,
        dp=dp,
        lower_bound=float(lb),
    )


def _segment_items(graph, units, tg: TaskGraph, costs: StageCosts):
    """Items, per-task item id and in-item order, and the default item sequence."""
    pp = graph.num_ranks
    group_pos = {g: k for k, g in enumerate(graph.groups)}
    unit_mb = {(g, u.index): u.mb for g, us in units.items() for u in us}
    unit_size = {(g, u.index): u.instances for g, us in units.items() for u in us}
    ids: dict[tuple[str, int, int], int] = {}
    n = tg.num_tasks
    task_item = np.zeros(n, np.int64)
    keys = []
    for t, a in enumerate(tg.actions):
        c = graph.chunks[a.chunk]
        direction = F if tg.task_op[t] == 0 else B
        key = (c.group, unit_mb[(c.group, a.unit)], direction)
        if key not in ids:
            ids[key] = len(ids)
        task_item[t] = ids[key]
        seg = c.index // pp
        size = unit_size[(c.group, a.unit)]
        if direction == F:
            keys.append((ids[key], -seg, size, a.unit, c.index))
        else:
            keys.append((ids[key], seg, -size, a.unit, c.index))
    order = sorted(range(n), key=lambda t: keys[t])
    task_seq = np.zeros(n, np.int64)
    last_item, k = -1, 0
    for t in order:
        if keys[t][0] != last_item:
            last_item, k = keys[t][0], 0
        task_seq[t] = k
        k += 1
    items = [Item(g, mb, d) for (g, mb, d) in ids]
    ngroups = len(graph.groups)

    def default_key(i: int) -> tuple[int, int, int]:
        it = items[i]
        gp = group_pos[it.group]
        return (it.mb, it.direction, gp if it.direction == F else ngroups - gp)

    default = np.asarray(sorted(range(len(items)), key=default_key), np.int64)
    return items, task_item, task_seq, default


def _unit_items(graph, tg: TaskGraph) -> tuple[np.ndarray, np.ndarray]:
    """Per task: the id of its unit item (group, unit, direction) and its position inside it (forward:
    deeper segments first, backward: shallower first, as for micro-batch items)."""
    pp = graph.num_ranks
    ids: dict[tuple[str, int, int], int] = {}
    n = tg.num_tasks
    item = np.zeros(n, np.int64)
    seq = np.zeros(n, np.int64)
    for t, a in enumerate(tg.actions):
        c = graph.chunks[a.chunk]
        key = (c.group, a.unit, int(tg.task_op[t] != 0))
        item[t] = ids.setdefault(key, len(ids))
        seg = c.index // pp
        seq[t] = (-seg if key[2] == F else seg) * 4096 + c.index
    seq -= seq.min() if n else 0
    return item, seq


def uniform_problem(
    pp: int,
    m: int,
    chunks: int = 1,
    f: float = 1.0,
    i: float = 1.0,
    w: float = 1.0,
    act_bytes: float = 1.0,
    memory_limit_bytes: float = math.inf,
) -> PlanProblem:
    """The problem of one uniform chain (single memory candidate per stage)."""
    graph = linear_stage_graph(pp, chunks, module=UNIFORM_GROUP)
    units = uniform_units(UNIFORM_GROUP, m)
    costs = uniform_stage_costs(graph, units, f, i, w, act_bytes)
    cand = pack_candidates([[(f, i + w, act_bytes, ("none",))] for _ in costs.keys])
    layouts = {UNIFORM_GROUP: tuple((c, c + 1) for c in range(pp * chunks))}
    partition = Partition(graph, {UNIFORM_GROUP: None}, {UNIFORM_GROUP: chunks}, layouts, {"uniform": True})
    return problem_from_costs(partition, units, (), costs, Topology(), cand, memory_limit_bytes)
