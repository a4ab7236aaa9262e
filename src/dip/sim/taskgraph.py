"""Compile step: number every compute task of a plan structure and lay its dependencies out as arrays.

The planner builds one :class:`TaskGraph` per batch structure (stage graph, units, flows, which
stages split their backward) and then scores thousands of candidate orders against it::

    tg = TaskGraph.build(graph, units, flows, costs, topology, split=True)   # once per structure
    arrays = tg.orders_to_arrays(order)        # or build order arrays directly from tg.task_id(...)
    fast = simulate_order_arrays(tg, arrays)   # per candidate: makespan, memory peaks, deadlock

Tasks. Stage s = (chunk, unit) has ``F`` and either ``B`` or (split) ``I`` and ``W``; task ids are
dense, stage-major. Dependencies are exactly those of :class:`dip.schedule.deps.DependencyIndex`.
Edge delay: 0 when producer and consumer sit on the same rank, else the topology's point-to-point
time for the message bytes of that edge (:class:`dip.sim.topology.Topology`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from dip.schedule.deps import DependencyIndex
from dip.schedule.ir import Action, Flow, Op, Plan, RankOrder, StageGraph, Unit
from dip.sim.costs import StageCosts
from dip.sim.kernel import critical_path
from dip.sim.topology import Topology, as_topology

__all__ = ["CODE_OPS", "OP_CODES", "OrderArrays", "TaskGraph"]

OP_CODES: dict[Op, int] = {Op.F: 0, Op.B: 1, Op.I: 2, Op.W: 3}
CODE_OPS: tuple[Op, ...] = (Op.F, Op.B, Op.I, Op.W)


@dataclass(frozen=True)
class OrderArrays:
    """A per-rank order as task ids: rank r runs ``tasks[ptr[r]:ptr[r + 1]]`` (int64)."""

    ptr: np.ndarray
    tasks: np.ndarray

    @classmethod
    def from_lists(cls, per_rank: Sequence[Sequence[int]]) -> OrderArrays:
        """From one list of task ids per rank (what a planner builds with :meth:`TaskGraph.task_id`)."""
        lengths = np.fromiter((len(x) for x in per_rank), np.int64, len(per_rank))
        ptr = np.zeros(len(per_rank) + 1, np.int64)
        np.cumsum(lengths, out=ptr[1:])
        tasks = np.fromiter((t for x in per_rank for t in x), np.int64, int(ptr[-1]))
        return cls(ptr, tasks)


@dataclass(repr=False)
class TaskGraph:
    """Tasks of a plan structure with CSR dependency arrays (see module docstring).

    Per task t: ``actions[t]``, ``task_stage``/``task_mb``/``task_op`` (0 F, 1 B, 2 I, 3 W)/``task_rank``,
    ``duration`` (s), ``alloc`` (bytes taken at start), ``free`` (bytes released at end), ``holds``
    (+1 F, -1 the stage's last backward). Predecessors of t: ``pred_idx[pred_ptr[t]:pred_ptr[t + 1]]``
    with ``pred_delay`` (s) and ``pred_bytes`` per edge; ``succ_ptr``/``succ_idx`` is the reverse CSR
    (edges sorted stably by producer; :attr:`succ_delay` gives their delays).
    """

    graph: StageGraph
    units: dict[str, tuple[Unit, ...]]
    costs: StageCosts
    topology: Topology
    actions: list[Action]
    task_stage: np.ndarray
    task_mb: np.ndarray
    task_op: np.ndarray
    task_rank: np.ndarray
    duration: np.ndarray
    alloc: np.ndarray
    free: np.ndarray
    holds: np.ndarray
    pred_ptr: np.ndarray
    pred_idx: np.ndarray
    pred_delay: np.ndarray
    pred_bytes: np.ndarray
    succ_ptr: np.ndarray
    succ_idx: np.ndarray
    split: frozenset

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        graph: StageGraph,
        units: Mapping[str, Sequence[Unit]],
        flows: Sequence[Flow],
        costs: StageCosts,
        topology: Topology | object | None = None,
        split: bool | set[tuple[int, int]] = False,
    ) -> TaskGraph:
        """Number the tasks and compute dependencies, delays, durations and memory deltas.

        ``split``: True (every stage splits its backward into I and W), False (none), or the set of
        (chunk, unit) stages that split. ``topology``: a :class:`Topology`, a ``HardwareSpec`` (placed
        with ``costs.tp``) or None (free transfers).
        """
        topo = as_topology(topology, costs.tp)
        keys = costs.keys
        split_set = frozenset(keys) if split is True else frozenset(split or ())
        deps = DependencyIndex(graph, units, flows, split_set)
        actions: list[Action] = []
        stage_list: list[int] = []
        for s, (chunk, unit) in enumerate(keys):
            ops = (Op.F, Op.I, Op.W) if (chunk, unit) in split_set else (Op.F, Op.B)
            for op in ops:
                actions.append(Action(chunk, op, unit))
                stage_list.append(s)
        stage_of = np.asarray(stage_list, np.int64)
        ids = {a.key: t for t, a in enumerate(actions)}
        ranks = np.asarray(graph.stage_to_rank(), np.int64)
        chunk_of_stage = np.asarray([k[0] for k in keys], np.int64)
        task_rank = ranks[chunk_of_stage[stage_of]]
        pred_lists: list[list[tuple[int, float]]] = []
        for a in actions:
            preds = []
            for key, msg in deps.inputs(a.chunk, a.op, a.unit):
                p = ids.get(key)
                if p is None:
                    c, op, u = key
                    raise ValueError(f"task {a} depends on {c}{op.value}{u}, which the structure lacks")
                nbytes = 0.0 if msg is None else costs.bytes_of(msg.key)
                preds.append((p, nbytes))
            pred_lists.append(preds)
        unit_mb = {(g, u.index): u.mb for g, us in units.items() for u in us}
        task_mb = np.fromiter((unit_mb[(graph.chunks[a.chunk].group, a.unit)] for a in actions), np.int64, len(actions))
        return cls._assemble(
            graph,
            {g: tuple(us) for g, us in units.items()},
            costs,
            topo,
            actions,
            stage_of,
            task_mb,
            task_rank,
            pred_lists,
            split_set,
        )

    @classmethod
    def from_plan(cls, plan: Plan, costs: StageCosts, topology=None) -> TaskGraph:
        """The structure of ``plan``; stages with an ``I`` action in the order split their backward."""
        split = {(a.chunk, a.unit) for acts in plan.order.values() for a in acts if a.op is Op.I}
        return cls.build(plan.graph, plan.units, plan.flows, costs, topology, split)

    @classmethod
    def _assemble(
        cls, graph, units, costs, topo, actions, stage_of, task_mb, task_rank, pred_lists, split_set
    ) -> TaskGraph:
        n = len(actions)
        counts = np.fromiter((len(p) for p in pred_lists), np.int64, n)
        pred_ptr = np.zeros(n + 1, np.int64)
        np.cumsum(counts, out=pred_ptr[1:])
        pred_idx = np.fromiter((p for ps in pred_lists for p, _ in ps), np.int64, int(pred_ptr[-1]))
        pred_bytes = np.fromiter((b for ps in pred_lists for _, b in ps), np.float64, int(pred_ptr[-1]))
        task_op = np.fromiter((OP_CODES[a.op] for a in actions), np.int64, n)
        succ_ptr, succ_idx = _reverse_csr(pred_ptr, pred_idx, n)
        tg = cls(
            graph=graph,
            units=units,
            costs=costs,
            topology=topo,
            actions=actions,
            task_stage=stage_of,
            task_mb=task_mb,
            task_op=task_op,
            task_rank=task_rank,
            duration=np.zeros(n),
            alloc=np.zeros(n),
            free=np.zeros(n),
            holds=np.zeros(n, np.int64),
            pred_ptr=pred_ptr,
            pred_idx=pred_idx,
            pred_delay=np.zeros(len(pred_idx)),
            pred_bytes=pred_bytes,
            succ_ptr=succ_ptr,
            succ_idx=succ_idx,
            split=frozenset(split_set),
        )
        tg._retime(costs, topo)
        return tg

    def kernel_arrays(self, duration=None, alloc=None, free=None, holds=None, pred_delay=None) -> tuple:
        """The arguments of :func:`dip.sim.kernel.simulate_arrays` after ``(ptr, tasks)``:
        ``(duration, pred_ptr, pred_idx, pred_delay, succ_ptr, succ_idx, alloc, free, holds)``, each
        this graph's own unless replaced (e.g. the durations of other memory candidates)."""
        return (
            self.duration if duration is None else duration,
            self.pred_ptr,
            self.pred_idx,
            self.pred_delay if pred_delay is None else pred_delay,
            self.succ_ptr,
            self.succ_idx,
            self.alloc if alloc is None else alloc,
            self.free if free is None else free,
            self.holds if holds is None else holds,
        )

    def with_costs(self, costs: StageCosts, topology: Topology | None = None) -> TaskGraph:
        """The same structure with new stage costs (e.g. other memory strategies); edges are reused.

        Message sizes are kept: they do not depend on memory strategies.
        """
        if list(costs.keys) != list(self.costs.keys):
            raise ValueError("new costs describe other (chunk, unit) stages than this task graph")
        tg = TaskGraph(**{k: getattr(self, k) for k in self.__dataclass_fields__})
        tg.duration, tg.alloc, tg.free = (
            np.zeros_like(self.duration),
            np.zeros_like(self.alloc),
            np.zeros_like(self.free),
        )
        tg.holds, tg.pred_delay = np.zeros_like(self.holds), np.zeros_like(self.pred_delay)
        tg._retime(costs, topology or self.topology)
        return tg

    def _retime(self, costs: StageCosts, topo: Topology) -> None:
        self.costs, self.topology = costs, topo
        s, op = self.task_stage, self.task_op
        f, i, w, act = costs.f[s], costs.i[s], costs.w[s], costs.act_bytes[s]
        self.duration[:] = np.select([op == 0, op == 1, op == 2], [f, i + w, i], w)
        is_f = op == 0
        frees = (op == 1) | (op == 3)
        self.alloc[:] = np.where(is_f, act, 0.0)
        self.free[:] = np.where(frees, act, 0.0)
        self.holds[:] = is_f.astype(np.int64) - frees.astype(np.int64)
        dst = np.repeat(np.arange(len(self.actions)), np.diff(self.pred_ptr))
        src_rank, dst_rank = self.task_rank[self.pred_idx], self.task_rank[dst]
        self.pred_delay[:] = topo.p2p_seconds_array(src_rank, dst_rank, self.pred_bytes)

    def __repr__(self) -> str:
        return (
            f"TaskGraph({len(self.graph.chunks)} chunks, {self.num_ranks} ranks, {self.num_tasks} tasks, "
            f"{len(self.pred_idx)} edges, {len(self.split)} split stages)"
        )

    # -- lookups ----------------------------------------------------------------------------------
    @property
    def num_tasks(self) -> int:
        return len(self.actions)

    @property
    def num_ranks(self) -> int:
        return self.graph.num_ranks

    @property
    def succ_delay(self) -> np.ndarray:
        """Edge delays in successor order: ``succ_idx[e]`` waits ``succ_delay[e]`` after its producer."""
        return self.pred_delay[np.argsort(self.pred_idx, kind="stable")]

    @property
    def task_ids(self) -> dict[Action, int]:
        ids = self.__dict__.get("_ids")
        if ids is None:
            ids = self.__dict__["_ids"] = {a: t for t, a in enumerate(self.actions)}
        return ids

    def task_id(self, chunk: int, op: Op | str, unit: int) -> int:
        """Dense id of compute task ``(chunk, op, unit)``; KeyError if the structure lacks it."""
        return self.task_ids[Action(chunk, Op(op), unit)]

    def orders_to_arrays(self, order: RankOrder) -> OrderArrays:
        """Per-rank compute actions -> :class:`OrderArrays` (one dict lookup per action).

        Raises ValueError for an action the structure lacks (e.g. ``B`` of a split stage) or one
        placed on a rank that does not own its chunk.
        """
        extra = sorted(set(order) - set(range(self.num_ranks)))
        if extra:
            raise ValueError(f"order names ranks {extra}; the stage graph has ranks 0..{self.num_ranks - 1}")
        ids = self.task_ids
        per_rank: list[list[int]] = []
        for r in range(self.num_ranks):
            acts = order.get(r, ())
            try:
                per_rank.append([ids[a] for a in acts])
            except KeyError:
                bad = next(a for a in acts if a not in ids)
                raise ValueError(
                    f"rank {r}: action {bad} is not a compute task of this structure"
                    f"{' (its stage splits the backward)' if bad.op is Op.B else ''}"
                ) from None
        arrays = OrderArrays.from_lists(per_rank)
        owners = np.repeat(np.arange(self.num_ranks), np.diff(arrays.ptr))
        wrong = np.nonzero(self.task_rank[arrays.tasks] != owners)[0]
        if len(wrong):
            t = int(arrays.tasks[wrong[0]])
            raise ValueError(
                f"rank {int(owners[wrong[0]])}: action {self.actions[t]} belongs to rank {int(self.task_rank[t])}"
            )
        return arrays

    def arrays_to_orders(self, arrays: OrderArrays) -> RankOrder:
        """Inverse of :meth:`orders_to_arrays`."""
        return {
            r: [self.actions[int(t)] for t in arrays.tasks[arrays.ptr[r] : arrays.ptr[r + 1]]]
            for r in range(self.num_ranks)
        }

    # -- order-independent lower bounds --------------------------------------------------------
    def busiest_rank_bound(self) -> float:
        """Max over ranks of the total duration of the rank's tasks."""
        return float(np.bincount(self.task_rank, self.duration, minlength=self.num_ranks).max(initial=0.0))

    def critical_path_bound(self) -> float:
        """Longest dependency path (durations + edge delays), ignoring rank serialization."""
        length, _ = critical_path(
            self.duration, self.pred_ptr, self.pred_idx, self.pred_delay, self.succ_ptr, self.succ_idx
        )
        return float(length)


def _reverse_csr(pred_ptr: np.ndarray, pred_idx: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Successor CSR from predecessor CSR."""
    dst = np.repeat(np.arange(n, dtype=np.int64), np.diff(pred_ptr))
    order = np.argsort(pred_idx, kind="stable")
    succ_idx = dst[order].astype(np.int64)
    counts = np.bincount(pred_idx, minlength=n)
    succ_ptr = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=succ_ptr[1:])
    return succ_ptr, succ_idx
