"""Lowering: pure passes from a compute-only :class:`~dip.schedule.ir.Plan` to per-rank programs, and
:func:`lower`, the one place that picks the validated program a transport runs.

Passes (each a small pure function over ``dict[rank, list[Action]]`` or a :class:`Program`)::

    plan.order --merge_bw/split_bw--> order
      --add_send_recv(plan, "early" | "late")--> Program --defer_recvs--> Program
      --post_recvs_ahead (gloo)--> Program --add_reduce_grad--> Program

* :func:`add_send_recv` adds one SEND after the producing compute action and one RECV on the
  receiver for every cross-rank :class:`~dip.schedule.deps.Message`. Producer and consumer chunks on
  the same rank hand the tensor over locally: no SEND/RECV.
* :func:`defer_recvs` moves RECVs towards their consumers (rank-parity or stream-order rule).
* :func:`dip.schedule.recv_ahead.post_recvs_ahead` moves a RECV one compute action ahead (gloo).
* :func:`dip.schedule.program.comm_batches` says which consecutive SEND/RECVs the runtime issues together.

Every pass keeps the message order on each directed rank pair (see :mod:`dip.schedule.program`).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Literal, overload

from dip.schedule.deps import DependencyIndex
from dip.schedule.errors import ScheduleError
from dip.schedule.ir import Action, Op, Plan, RankOrder
from dip.schedule.program import BACKWARD, COMM, COMPUTE, RECVS, SENDS, Program
from dip.schedule.recv_ahead import post_recvs_ahead
from dip.schedule.validate import validate_program

__all__ = ["BACKENDS", "add_reduce_grad", "add_send_recv", "defer_recvs", "lower", "merge_bw", "split_bw"]

logger = logging.getLogger(__name__)

RecvPlacement = Literal["early", "late"]
DeferRule = Literal["parity", "stream"]
BACKENDS: tuple[str, ...] = ("gloo", "nccl")


# --------------------------------------------------------------------------- the program a transport runs


def lower(plan: Plan, backend: str = "gloo", *, deps: DependencyIndex | None = None) -> Program:
    """The validated program that ``backend`` (``"gloo"`` or ``"nccl"``) executes for ``plan``.

    Candidates, the first that passes :func:`~dip.schedule.validate.validate_program` wins (after
    ``REDUCE_GRAD`` follows each chunk's last backward):

    * gloo: receives as early as possible (torch's placement), then every receive that its consumer
      immediately follows moved one compute action ahead (:func:`~dip.schedule.recv_ahead.post_recvs_ahead`):
      gloo writes a message from the sender's thread at once only when the receiver has already
      posted its receive (otherwise a send-ready / receive-ready handshake through both I/O threads
      comes first). The early placement must pass the strictest communication model; the moved
      receives then keep its deadlock freedom because gloo's operations complete independently
      (checked again under ``comm_model="op"``). Measured on the static 1F1B benchmark: receives
      ahead 2-5% faster than the early placement alone, which was 4-8% faster than deferred receives
      (medians of paired rounds, 2 processes);
    * gloo: the early placement alone;
    * receives deferred under the rank-parity rule (:func:`defer_recvs`): posted early enough that the
      transfer overlaps the compute before its consumer, without holding buffers (and, with NCCL,
      stream slots) for long; the first choice for NCCL;
    * gloo only: receives right before their consumers (``"late"``: a gradient send and the next
      activation receive form one batch, as in torch's fused 1F1B);
    * receives as early as possible for NCCL, last.

    Args:
        plan: the step's plan (compute order).
        backend: the transport the program is for.
        deps: the plan's dependency index, when the caller already built it.

    Returns:
        The lowered, validated :class:`Program`. Raises the last candidate's :class:`ScheduleError`
        when none passes.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    deps = deps or DependencyIndex.of_plan(plan)
    raw = add_send_recv(plan, deps=deps)
    early = add_reduce_grad(raw)
    if backend == "gloo":
        candidates = [
            ("early", early),
            ("deferred", add_reduce_grad(defer_recvs(raw))),
            ("late", add_reduce_grad(add_send_recv(plan, "late", deps))),
        ]
    else:
        candidates = [("deferred", add_reduce_grad(defer_recvs(raw))), ("early", early)]
    error: ScheduleError | None = None
    for name, program in candidates:
        try:
            validate_program(plan, program, deps=deps)
        except ScheduleError as exc:
            logger.debug("lowering for %s: the %s placement fails validation: %s", backend, name, exc.reason)
            error = exc
            continue
        if backend == "gloo" and program is early:
            ahead = post_recvs_ahead(early)
            try:
                validate_program(plan, ahead, "op", deps=deps)
                logger.debug("lowering for %s: receives ahead", backend)
                return ahead
            except ScheduleError as exc:
                logger.debug("lowering for %s: receives ahead fail validation: %s", backend, exc.reason)
        logger.debug("lowering for %s: %s placement", backend, name)
        return program
    assert error is not None
    raise error


# --------------------------------------------------------------------------- add_send_recv


def add_send_recv(plan: Plan, recv_placement: RecvPlacement = "early", deps: DependencyIndex | None = None) -> Program:
    """Add SEND/RECV for every cross-rank message of ``plan.order``.

    ``"early"`` follows torch's ``_add_send_recv``: ranks take turns in rank order, each scheduling its
    next action once its inputs are available (a RECV already placed, or the local producer done); a
    SEND goes right after the producing action and its RECV is appended to the receiver **at that
    moment**, so every directed pair sees one global message order. ``"late"`` then moves each RECV
    just before its consumer (keeping per-pair order, without the rank-parity rule; see
    :func:`defer_recvs`). Raises :class:`ScheduleError` when no rank can progress. ``deps``: the plan's
    dependency index when the caller already has it.
    """
    if recv_placement not in ("early", "late"):
        raise ValueError(f"unknown recv_placement {recv_placement!r}; valid: early, late")
    graph = plan.graph
    deps = deps or DependencyIndex.of_plan(plan)
    rank_of = graph.stage_to_rank()
    ranks = range(graph.num_ranks)
    for r, acts in plan.order.items():
        if r not in ranks:
            raise ScheduleError(f"rank {r} outside 0..{graph.num_ranks - 1}", plan.order, r)
        for i, a in enumerate(acts):
            if a.op in COMM:
                raise ScheduleError("plan.order must be compute-only", plan.order, r, i, a)
            if not 0 <= a.chunk < len(rank_of) or rank_of[a.chunk] != r:
                raise ScheduleError(f"chunk {a.chunk} does not live on rank {r}", plan.order, r, i, a)
    todo = {r: deque(plan.order.get(r, ())) for r in ranks}
    out: dict[int, list[Action]] = {r: [] for r in ranks}
    done: dict[int, set] = {r: set() for r in ranks}
    received: dict[int, set] = {r: set() for r in ranks}

    def missing(r: int, a: Action) -> list:
        if a.op not in COMPUTE:
            return []
        lost = []
        for key, msg in deps.inputs(a.chunk, a.op, a.unit):
            here = msg is None or rank_of[msg.src_chunk] == r
            if (key not in done[r]) if here else (msg.key not in received[r]):
                lost.append(key)
        return lost

    while any(todo.values()):
        progress = False
        for r in ranks:
            if not todo[r]:
                continue
            a = todo[r][0]
            if missing(r, a):
                continue
            out[r].append(a)
            if a.op in COMPUTE:
                done[r].add(a.key)
                for msg in deps.outputs(a.chunk, a.op, a.unit):
                    dst = rank_of[msg.dst_chunk]
                    if dst != r:
                        out[r].append(msg.send_action())
                        out[dst].append(msg.recv_action())
                        received[dst].add(msg.key)
            todo[r].popleft()
            progress = True
        if not progress:
            _raise_stuck(plan, todo, missing, rank_of)
    program = Program.build(graph, out)
    return _defer(program, "none") if recv_placement == "late" else program


def _raise_stuck(plan: Plan, todo, missing, rank_of) -> None:
    waits = []
    first = None
    for r in sorted(todo):
        if not todo[r]:
            continue
        a = todo[r][0]
        step = len(plan.order[r]) - len(todo[r])
        first = first or (r, step, a)
        need = ", ".join(f"{k[0]}{k[1].value}{k[2]} (rank {rank_of[k[0]]})" for k in missing(r, a))
        waits.append(f"rank {r} waits at step {step} ({a}) for {need}")
    r, step, a = first
    raise ScheduleError("no rank can progress: " + "; ".join(waits), plan.order, r, step, a)


# --------------------------------------------------------------------------- receive placement


def defer_recvs(program: Program, rule: DeferRule = "parity") -> Program:
    """Move each RECV towards the compute action that consumes it (to just before it, at the latest).

    Always: a RECV moves together with every earlier, still-deferred RECV from the same peer, so the
    receiver's order on each directed pair does not change. Then ``rule``:

    * ``"parity"`` (torch's ``_defer_recv_ops``, pytorch#172668): before a SEND to a higher-numbered
      peer, every deferred RECV from that peer is posted first; the lower rank of a pair thus posts
      RECV before SEND. This is deadlock-free when each directed rank pair has its own communicator
      (``comm_model="edge"``); with shared communicators a deferred RECV can end up queued behind a
      SEND whose receiver waits on it (the dry run of :mod:`dip.schedule.validate` reports those).
    * ``"stream"``: RECVs only move past compute actions, never past another SEND or RECV, so every
      communicator sees the operations in the order of the input program. From an early placement
      the result passed the dry run under every ``comm_model`` in all our tests (torch's schedules,
      random executable orders of linear, V and multimodal plans); ``"parity"`` passed under
      ``"edge"`` only.
    """
    if rule not in ("parity", "stream"):
        raise ValueError(f"unknown defer rule {rule!r}; valid: parity, stream")
    return _defer(program, rule)


def _defer(program: Program, rule: str) -> Program:
    result: dict[int, list[Action]] = {}
    for r, acts in program.actions.items():
        new: list[Action] = []
        deferred: list[Action] = []
        for a in acts:
            if a.op in RECVS:
                deferred.append(a)
                continue
            flush = [False] * len(deferred)
            if a.op in SENDS and rule == "stream":
                flush = [True] * len(deferred)
            elif a.op in SENDS and rule == "parity" and r < program.peer(a):
                peer = program.peer(a)
                flush = [program.peer(d) == peer for d in deferred]
            elif a.op in COMPUTE and a.op is not Op.W:
                want = Op.RECV_F if a.op is Op.F else Op.RECV_B
                needed = [j for j, d in enumerate(deferred) if d.op is want and (d.chunk, d.unit) == (a.chunk, a.unit)]
                if needed and rule == "stream":
                    flush = [j <= max(needed) for j in range(len(deferred))]
                elif needed:
                    last = {}
                    for j in needed:
                        last[program.peer(deferred[j])] = j
                    flush = [j <= last.get(program.peer(d), -1) for j, d in enumerate(deferred)]
            new += [d for d, f in zip(deferred, flush) if f]
            deferred = [d for d, f in zip(deferred, flush) if not f]
            new.append(a)
        if deferred:
            raise ScheduleError(
                f"RECVs without a consumer on rank {r}: {' '.join(map(str, deferred))}",
                program.actions,
                r,
                len(acts) - 1,
            )
        result[r] = new
    return Program.build(program.graph, result)


# --------------------------------------------------------------------------- backward merge / split


def merge_bw(order: Mapping[int, Sequence[Action]]) -> RankOrder:
    """Merge each ``I`` immediately followed by ``W`` of the same chunk and unit into one ``B``."""
    out: RankOrder = {}
    for r, acts in order.items():
        merged: list[Action] = []
        i = 0
        while i < len(acts):
            a = acts[i]
            nxt = acts[i + 1] if i + 1 < len(acts) else None
            if a.op is Op.I and nxt is not None and nxt.op is Op.W and (nxt.chunk, nxt.unit) == (a.chunk, a.unit):
                merged.append(Action(a.chunk, Op.B, a.unit))
                i += 2
            else:
                merged.append(a)
                i += 1
        out[r] = merged
    return out


def split_bw(order: Mapping[int, Sequence[Action]]) -> RankOrder:
    """Replace each ``B`` by ``I`` immediately followed by ``W`` (inverse of :func:`merge_bw`)."""
    out: RankOrder = {}
    for r, acts in order.items():
        split: list[Action] = []
        for a in acts:
            if a.op is Op.B:
                split += [Action(a.chunk, Op.I, a.unit), Action(a.chunk, Op.W, a.unit)]
            else:
                split.append(a)
        out[r] = split
    return out


# --------------------------------------------------------------------------- gradient reduction


@overload
def add_reduce_grad(x: Program) -> Program: ...
@overload
def add_reduce_grad(x: Plan | Mapping[int, Sequence[Action]]) -> RankOrder: ...


def add_reduce_grad(x):
    """Insert ``REDUCE_GRAD`` for each chunk right after its last backward action (B or W, or I when
    no W follows) on its rank. In a lowered :class:`Program` it goes after the SENDs that directly
    follow that action, so the gradient send is issued first. Chunks that already have one are kept.

    Takes a Plan (returns its new order), a rank order, or a Program (returns a Program).
    """
    if isinstance(x, Program):
        return Program.build(x.graph, _reduce_grad_order(x.actions))
    order = x.order if isinstance(x, Plan) else x
    return _reduce_grad_order(order)


def _reduce_grad_order(order: Mapping[int, Sequence[Action]]) -> RankOrder:
    out: RankOrder = {}
    for r, acts in order.items():
        have = {a.chunk for a in acts if a.op is Op.REDUCE_GRAD}
        last: dict[int, int] = {}
        for i, a in enumerate(acts):
            if a.op in BACKWARD and a.chunk not in have:
                last[a.chunk] = i
        after: dict[int, list[int]] = {}
        for chunk, i in last.items():
            j = i
            while j + 1 < len(acts) and acts[j + 1].op in SENDS and acts[j + 1].chunk == chunk:
                j += 1
            after.setdefault(j, []).append(chunk)
        new: list[Action] = []
        for i, a in enumerate(acts):
            new.append(a)
            for chunk in after.get(i, ()):
                new.append(Action(chunk, Op.REDUCE_GRAD))
        out[r] = new
    return out
