"""The per-rank interpreter over a lowered program (see ``docs/runtime.md``).

One :class:`Executor` per process holds its stage chunks (built once) and a handler registry
``op -> handler(action, ctx)``; :meth:`Executor.run_step` walks one step's program:

* a communication batch (consecutive SEND/RECV actions) is prepared action by action and posted at
  once (``BATCH`` handler); receive buffers are allocated there, just in time, from the shape plan;
* a compute action waits for exactly the receives it consumes, just before it runs;
* sends stay outstanding until a bounded point: beyond ``max_outstanding_sends`` the ones posted up
  to the batch a compute just waited on are drained, and every send is drained at the end of the step;
* a message between two chunks of this rank is handed over locally (a detached leaf with
  ``requires_grad``), never sent;
* every wait has a timeout whose error names the rank, the action and the peer.

Every action's start and end (seconds since the step started) are recorded.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from dip.data.meta import BatchMeta
from dip.data.tensors import TensorSpec
from dip.runtime.activations import SavedBytes
from dip.runtime.comm import P2P, TORCH_DTYPES, Poster, SendQueue, direct_posting, numel, unpack, wait
from dip.runtime.handlers import DEFAULT_HANDLERS, Handler
from dip.runtime.stage import PartUnit, StageChunk, UnitState, module_edge
from dip.schedule.deps import DependencyIndex, MessageKey
from dip.schedule.ir import Action, Op, Plan, Unit
from dip.schedule.program import CommBatch, Program, comm_batches
from dip.schedule.shapes import ShapePlan
from dip.spec.model import Edge

__all__ = ["ActionTime", "Executor", "PreparedPlan", "StepContext", "StepResult"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ActionTime:
    """Measured start and end (seconds since the step began) of one action on one rank, the part of it
    spent waiting for messages, and for a forward (when measured) the bytes it saved for its backward
    and, on a GPU, the growth of the allocated memory (:mod:`dip.runtime.activations`)."""

    action: Action
    start: float
    end: float
    wait: float = 0.0
    saved_bytes: int = 0
    allocated_bytes: int = 0


@dataclass(frozen=True, slots=True)
class Route:
    """Everything about one SEND/RECV of a rank that does not change from step to step of a plan:
    the message ``key``, its tensor ``specs`` and element count, the ``peer`` (global rank) and
    ``group_peer`` (rank within the process group, ``None`` when transfers go through
    ``torch.distributed``'s functions), ``tag`` (``-1``: assigned when posted) and the action text."""

    key: MessageKey
    specs: tuple[TensorSpec, ...]
    numel: int
    peer: int
    group_peer: int | None
    tag: int
    what: str


def _routes(
    program: Program,
    rank: int,
    shapes: ShapePlan,
    rank_map: Callable[[int], int],
    group: dist.ProcessGroup | None,
    direct: bool,
) -> dict[Action, Route]:
    out: dict[Action, Route] = {}
    for a in program.actions.get(rank, ()):
        if not a.op.is_comm:
            continue
        comm = program.comms[a]
        key = comm.message.key
        peer = rank_map(program.peer(a))
        group_peer = (peer if group is None else dist.get_group_rank(group, peer)) if direct else None
        msg_specs = shapes.get(key)
        out[a] = Route(key, msg_specs, numel(msg_specs), peer, group_peer, comm.seq, str(a))
    return out


@dataclass
class StepResult:
    """What one rank measured in one step: its summed loss (0 on tensor-parallel ranks other than the
    first, which hold copies) and the timeline of its actions."""

    rank: int
    loss_sum: float
    elapsed_s: float
    actions: list[ActionTime]


@dataclass(frozen=True)
class PreparedPlan:
    """What the executor derives once per plan and batch: dependencies, message shapes, the routing
    of this rank's SEND/RECVs and its communication runs (see :meth:`Executor.prepare`)."""

    plan: Plan
    program: Program
    batch: BatchMeta
    deps: DependencyIndex
    shapes: ShapePlan
    runs: dict[int, tuple[int, list[CommBatch]]]
    routes: dict[Action, Route]


@dataclass
class StepContext:
    """Everything a handler may touch during one step on one rank."""

    rank: int
    plan: Plan
    program: Program
    deps: DependencyIndex
    batch: BatchMeta
    provider: Any
    stages: dict[int, StageChunk]
    shapes: ShapePlan
    routes: dict[Action, Route]
    step_seed: int
    mb_offset: int
    loss_scale: float
    rank_map: Callable[[int], int]
    group: dist.ProcessGroup | None
    timeout_s: float
    device: torch.device
    sends: SendQueue
    comm_device: torch.device | None = None  # where message buffers live (default: ``device``)
    poster: Poster | None = None
    recvs: dict[MessageKey, tuple[P2P | None, tuple[TensorSpec, ...]]] = field(default_factory=dict)
    outbox: dict[MessageKey, dict[str, Tensor]] = field(default_factory=dict)
    local: dict[MessageKey, dict[str, Tensor]] = field(default_factory=dict)
    states: dict[tuple[int, int], UnitState] = field(default_factory=dict)
    pending: list[P2P] = field(default_factory=list)
    batch_no: int = 0
    wait_s: float = 0.0  # time the current action spent waiting for messages
    reduced: set[int] = field(default_factory=set)
    loss_parts: list[Tensor] = field(default_factory=list)
    grad_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    data_cache: dict[tuple, Any] = field(default_factory=dict)
    edges: dict[tuple[int, int], Edge] = field(default_factory=dict)

    def global_rank(self, pp_rank: int) -> int:
        return self.rank_map(pp_rank)

    def take(self, key: MessageKey, action: Action) -> dict[str, Tensor]:
        """The tensors of message ``key`` for ``action``: a local hand-off, or a posted receive (waited on now)."""
        got = self.local.pop(key, None)
        if got is not None:
            return got
        entry = self.recvs.pop(key, None)
        if entry is None:
            raise RuntimeError(
                f"rank {self.rank}: {action} needs message {key.describe()}, "
                f"which was neither received nor handed over locally before it"
            )
        p, specs = entry
        if p is None:
            return {s.name: torch.zeros(s.shape, dtype=TORCH_DTYPES[s.dtype], device=self.device) for s in specs}
        t0 = time.perf_counter()
        wait(p, self.rank, self.timeout_s)
        self.sends.trim(p.batch)
        self.wait_s += time.perf_counter() - t0
        got = unpack(p.buffer, specs)
        if p.buffer.device != self.device:  # host-staged message (gloo with CUDA compute)
            got = [t.to(self.device) for t in got]
        return {s.name: t for s, t in zip(specs, got)}

    def emit(self, key: MessageKey, tensors: dict[str, Tensor]) -> None:
        """Hand ``tensors`` to the consumer of message ``key``: locally on this rank, else to its SEND."""
        if self.plan.graph.chunks[key.dst_chunk].rank == self.rank:
            if key.backward:
                self.local[key] = {n: t.detach() for n, t in tensors.items()}
            else:
                self.local[key] = {n: t.detach().requires_grad_(t.is_floating_point()) for n, t in tensors.items()}
        else:
            self.outbox[key] = tensors

    def pop_state(self, action: Action) -> UnitState:
        state = self.states.pop((action.chunk, action.unit), None)
        if state is None:
            raise RuntimeError(
                f"rank {self.rank}: {action} runs before the forward of chunk {action.chunk} unit {action.unit}"
            )
        return state

    def add_loss(self, loss: Tensor) -> None:
        self.loss_parts.append(loss.detach())

    def edge(self, src_chunk: int, dst_chunk: int) -> Edge:
        key = (src_chunk, dst_chunk)
        got = self.edges.get(key)
        if got is None:
            g = self.plan.graph
            got = self.edges[key] = module_edge(
                self.provider.spec, g.chunks[src_chunk].parts[-1].module, g.chunks[dst_chunk].parts[0].module
            )
        return got

    def strategy(self, chunk: int, unit: int) -> tuple[str, ...]:
        """The plan's per-layer memory strategies; on a CPU device ``offload`` means ``none`` (host
        memory is where the activations already are)."""
        got = self.plan.strategy(chunk, unit)
        if self.device.type == "cpu" and "offload" in got:
            got = tuple("none" if s == "offload" else s for s in got)
        return got

    def part_unit(self, module: str, unit: Unit) -> PartUnit:
        return PartUnit(module, self.mb_offset + unit.mb, unit.start, unit.stop)

    def data_of(self, module: str, pu: PartUnit) -> Any:
        """The unit's local inputs (made once per step and shared by every chunk of the module)."""
        key = (module, pu.mb, pu.start, pu.stop)
        got = self.data_cache.get(key)
        if got is None:
            mb = self.batch.microbatches[pu.mb - self.mb_offset]
            got = self.data_cache[key] = self.provider.unit_data(mb, pu.mb, module, pu.start, pu.stop, self.step_seed)
        return got


def _comm_runs(program: Program, rank: int) -> dict[int, tuple[int, list[CommBatch]]]:
    """``{first index of a run of SEND/RECVs: (index after the run, its communication batches)}``."""
    runs: dict[int, tuple[int, list[CommBatch]]] = {}
    acts = program.actions.get(rank, [])
    batches = comm_batches(program, rank)
    k = 0
    i = 0
    while i < len(acts):
        if not acts[i].op.is_comm:
            i += 1
            continue
        stop = i
        while stop < len(acts) and acts[stop].op.is_comm:
            stop += 1
        mine = []
        while k < len(batches) and batches[k].indices[0] < stop:
            mine.append(batches[k])
            k += 1
        runs[i] = (stop, mine)
        i = stop
    return runs


class Executor:
    """Interpreter of lowered programs on one pipeline rank (``rank`` = its position in the pipeline).

    ``stages`` are this rank's chunks by chunk id; ``rank_map`` turns a pipeline rank into a global
    rank of ``group`` (data-parallel replicas run disjoint pipelines in one process group).
    """

    def __init__(
        self,
        rank: int,
        provider: Any,
        stages: Mapping[int, StageChunk],
        *,
        rank_map: Callable[[int], int] | None = None,
        group: dist.ProcessGroup | None = None,
        timeout_s: float = 120.0,
        device: torch.device | str = "cpu",
        max_outstanding_sends: int = 64,
        handlers: Mapping[str, Handler] | None = None,
        post_in_background: bool = False,
        comm_device: torch.device | str | None = None,
        pause_gc: bool = True,
        counts_loss: bool = True,
        measure_activations: bool = False,
    ):
        self.rank = rank
        self.provider = provider
        self.stages = dict(stages)
        self.rank_map = rank_map or (lambda r: r)
        self.group = group
        self.timeout_s = float(timeout_s)
        self.device = torch.device(device)
        self.comm_device = torch.device(comm_device) if comm_device is not None else self.device
        self.pause_gc = pause_gc
        # tensor-parallel ranks other than the first hold copies of their stage's loss: they report 0
        self.counts_loss = counts_loss
        self.measure_activations = measure_activations
        self.grad_context = getattr(provider, "grad_context", contextlib.nullcontext)
        self.max_outstanding_sends = max_outstanding_sends
        self.handlers: dict[str, Handler] = dict(DEFAULT_HANDLERS)
        self.handlers.update(handlers or {})
        self._direct: bool | None = None  # gloo on host buffers: post on the group object directly
        self.poster = Poster(group) if post_in_background and self.comm_device.type == "cpu" else None

    def register(self, op: str | Op, handler: Handler) -> None:
        """Override the handler of ``op`` (``"F"``, ``"SEND_F"``, ..., or ``"BATCH"`` for posting)."""
        self.handlers[op.value if isinstance(op, Op) else str(op)] = handler

    def prepare(
        self, plan: Plan, program: Program, batch: BatchMeta, deps: DependencyIndex | None = None
    ) -> PreparedPlan:
        """Everything :meth:`run_step` derives from a plan, built now (outside a timed region).

        Args:
            plan: the step's plan.
            program: its lowered program (:func:`dip.schedule.lowering.lower`).
            batch: this replica's batch metadata.
            deps: the plan's dependency index, when the caller already built it.

        Returns:
            The :class:`PreparedPlan` to run (reuse it for every run of the same plan and batch).
        """
        deps = deps or DependencyIndex.of_plan(plan)
        shapes = ShapePlan(plan, self.provider, batch, deps)
        if self._direct is None:
            self._direct = self.comm_device.type == "cpu" and direct_posting(self.group)
        routes = _routes(program, self.rank, shapes, self.rank_map, self.group, self._direct)
        return PreparedPlan(plan, program, batch, deps, shapes, _comm_runs(program, self.rank), routes)

    def context(self, prepared: PreparedPlan, step_seed: int, mb_offset: int, loss_scale: float) -> StepContext:
        p = prepared
        return StepContext(
            rank=self.rank,
            plan=p.plan,
            program=p.program,
            deps=p.deps,
            batch=p.batch,
            provider=self.provider,
            stages=self.stages,
            shapes=p.shapes,
            routes=p.routes,
            step_seed=step_seed,
            mb_offset=mb_offset,
            loss_scale=loss_scale,
            rank_map=self.rank_map,
            group=self.group,
            timeout_s=self.timeout_s,
            device=self.device,
            comm_device=self.comm_device,
            sends=SendQueue(self.rank, self.timeout_s, self.max_outstanding_sends),
            poster=self.poster,
            grad_context=self.grad_context,
        )

    def run_step(self, prepared: PreparedPlan, *, step_seed: int, loss_scale: float, mb_offset: int = 0) -> StepResult:
        """Run this rank's program of one step; the loss gradient is ``loss_sum * loss_scale``.

        Python's cyclic garbage collector is paused during the step (as Megatron's manual GC does):
        a collection in the middle of a pipeline step stalls every rank waiting on this one."""
        paused = self.pause_gc and gc.isenabled()
        if paused:
            gc.disable()
        try:
            return self._run_step(prepared, step_seed, loss_scale, mb_offset)
        finally:
            if paused:
                gc.enable()

    def _run_step(self, prepared: PreparedPlan, step_seed: int, loss_scale: float, mb_offset: int) -> StepResult:
        plan, program = prepared.plan, prepared.program
        missing = sorted({c.id for c in plan.graph.rank_chunks(self.rank)} - set(self.stages))
        if missing:
            raise RuntimeError(f"rank {self.rank}: the plan places chunks {missing} here, but they were not built")
        ctx = self.context(prepared, step_seed, mb_offset, loss_scale)
        acts = program.actions.get(self.rank, [])
        runs = prepared.runs
        handlers = self.handlers
        times: list[ActionTime] = []
        saved = None
        if self.measure_activations:
            saved = SavedBytes.excluding(p for s in self.stages.values() for p in s.params)
        clock = time.perf_counter
        t0 = clock()
        i = 0
        while i < len(acts):
            run = runs.get(i)
            if run is not None:
                stop, batches = run
                start = clock()
                for b in batches:
                    for a in b.actions:
                        handlers[a.op.value](a, ctx)
                    handlers["BATCH"](b.actions, ctx)
                end = clock()
                times += [ActionTime(a, start - t0, end - t0) for a in acts[i:stop]]
                i = stop
                continue
            a = acts[i]
            ctx.wait_s = 0.0
            if saved is not None and a.op is Op.F:
                times.append(self._measured_forward(a, ctx, saved, t0))
                i += 1
                continue
            start = clock()
            handlers[a.op.value](a, ctx)
            times.append(ActionTime(a, start - t0, clock() - t0, ctx.wait_s))
            i += 1
        ctx.sends.drain()
        self._check_finished(ctx)
        loss = float(torch.stack(ctx.loss_parts).sum()) if ctx.loss_parts and self.counts_loss else 0.0
        return StepResult(self.rank, loss, clock() - t0, times)

    def _measured_forward(self, a: Action, ctx: StepContext, saved: SavedBytes, t0: float) -> ActionTime:
        """A forward with its saved-activation bytes (and on a GPU the allocated-memory growth)."""
        cuda = self.device.type == "cuda"
        before = torch.cuda.memory_allocated(self.device) if cuda else 0
        with saved.measure() as total:
            start = time.perf_counter()
            self.handlers[a.op.value](a, ctx)
            end = time.perf_counter()
        grown = torch.cuda.memory_allocated(self.device) - before if cuda else 0
        return ActionTime(a, start - t0, end - t0, ctx.wait_s, total[0], max(0, grown))

    def _check_finished(self, ctx: StepContext) -> None:
        left = []
        if ctx.states:
            left.append(f"units without a finished backward: {sorted(ctx.states)}")
        if ctx.recvs:
            left.append(f"receives nobody consumed: {[k.describe() for k in ctx.recvs]}")
        if ctx.outbox:
            left.append(f"outputs never sent: {[k.describe() for k in ctx.outbox]}")
        if ctx.local:
            left.append(f"local hand-offs nobody consumed: {[k.describe() for k in ctx.local]}")
        if left:
            raise RuntimeError(f"rank {self.rank}: step ended with " + "; ".join(left))
