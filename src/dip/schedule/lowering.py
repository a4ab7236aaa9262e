"""Lowering: pure passes from a compute-only :class:`~dip.schedule.ir.Plan` to per-rank programs.

Pipeline (each pass is a small pure function over ``dict[rank, list[Action]]``)::

    plan.order --merge_bw/split_bw--> order --add_reduce_grad--> order
      --add_send_recv(plan, "early" | "late")--> Program --defer_recvs--> Program
      (:func:`lower` runs them in this order)

* :func:`add_send_recv` adds one SEND after the producing compute action and one RECV on the
  receiver for every cross-rank :class:`~dip.schedule.deps.Message`. Producer and consumer chunks on
  the same rank hand the tensor over locally: no SEND/RECV.
* :func:`defer_recvs` moves RECVs towards their consumers (rank-parity or stream-order rule).
* :func:`comm_batches` says which consecutive SEND/RECVs the runtime issues together.

[Note: message order] On every directed rank pair the sender's SENDs and the receiver's RECVs name
the same messages in the same order (NCCL point-to-point is tagless and matches same-peer operations
first in, first out). Every pass here keeps that invariant; :mod:`dip.schedule.validate` checks it.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal, Mapping, Sequence, overload

from dip.schedule.deps import DependencyIndex, Message
from dip.schedule.errors import ScheduleError
from dip.schedule.ir import Action, Op, Plan, RankOrder, StageGraph

SENDS = frozenset((Op.SEND_F, Op.SEND_B))
RECVS = frozenset((Op.RECV_F, Op.RECV_B))
COMM = SENDS | RECVS
COMPUTE = frozenset((Op.F, Op.B, Op.I, Op.W))
BACKWARD = frozenset((Op.B, Op.I, Op.W))
RecvPlacement = Literal["early", "late"]
DeferRule = Literal["parity", "stream"]


# --------------------------------------------------------------------------- messages and programs

def message_of(graph: StageGraph, action: Action) -> Message:
    """The message a SEND or RECV action carries (``kind`` from the graph's channel, else ``activation``)."""
    if action.op not in COMM:
        raise ValueError(f"{action} is not a SEND/RECV action")
    if action.peer_chunk is None or action.unit is None:
        raise ValueError(f"{action} does not name its peer (expected e.g. '7SEND_F2:8.1')")
    backward = action.op in (Op.SEND_B, Op.RECV_B)
    if action.op in SENDS:
        src, su, dst, du = action.chunk, action.unit, action.peer_chunk, action.peer_unit
    else:
        src, su, dst, du = action.peer_chunk, action.peer_unit, action.chunk, action.unit
    fwd_src, fwd_dst = (dst, src) if backward else (src, dst)
    return Message(src, su, dst, du, backward, _channel_kinds(graph).get((fwd_src, fwd_dst), "activation"))


def _channel_kinds(graph: StageGraph) -> dict[tuple[int, int], str]:
    kinds = graph.__dict__.get("_channel_kind_cache")
    if kinds is None:
        kinds = {(c.src, c.dst): c.kind for c in graph.channels}
        object.__setattr__(graph, "_channel_kind_cache", kinds)
    return kinds


def message_id(msg: Message) -> tuple[int, int, int, int, bool]:
    """Identity of a message regardless of its channel kind."""
    return (msg.src_chunk, msg.src_unit, msg.dst_chunk, msg.dst_unit, msg.backward)


@dataclass(frozen=True, slots=True)
class Comm:
    """Routing of one SEND or RECV: the message, both ranks, and ``seq``, the message's position on
    the directed rank pair ``src_rank -> dst_rank`` in the sender's order (``-1`` for a RECV whose
    message is never sent). The runtime may use ``seq`` as the tag."""

    message: Message
    src_rank: int
    dst_rank: int
    seq: int

    def peer(self, rank: int) -> int:
        return self.dst_rank if rank == self.src_rank else self.src_rank


@dataclass(frozen=True)
class Program:
    """Lowered per-rank programs plus the routing of every SEND/RECV.

    Build with :meth:`Program.build`; ``comms`` is derived from ``actions`` (a SEND/RECV action names
    its message, so it is unique within the whole program).
    """

    graph: StageGraph
    actions: dict[int, list[Action]]
    comms: dict[Action, Comm]

    @staticmethod
    def build(graph: StageGraph, actions: Mapping[int, Sequence[Action]]) -> "Program":
        acts = {r: list(actions.get(r, ())) for r in range(graph.num_ranks)}
        for r in actions:
            if r not in acts:
                raise ScheduleError(f"rank {r} outside 0..{graph.num_ranks - 1}", actions, r)
        rank_of = graph.stage_to_rank()
        comms: dict[Action, Comm] = {}
        counters: dict[tuple[int, int], int] = {}
        sent: dict[tuple, int] = {}

        def routed(r: int, i: int, a: Action) -> Message:
            try:
                msg = message_of(graph, a)
                rank_of[msg.src_chunk], rank_of[msg.dst_chunk]  # both chunks exist
            except (ValueError, IndexError) as e:
                raise ScheduleError(f"malformed communication action: {e}", acts, r, i, a) from None
            return msg

        for r in sorted(acts):
            for i, a in enumerate(acts[r]):
                if a.op in SENDS:
                    msg = routed(r, i, a)
                    dst = rank_of[msg.dst_chunk]
                    seq = counters.get((r, dst), 0)
                    counters[(r, dst)] = seq + 1
                    sent[message_id(msg)] = seq
                    comms[a] = Comm(msg, r, dst, seq)
        for r in sorted(acts):
            for i, a in enumerate(acts[r]):
                if a.op in RECVS:
                    msg = routed(r, i, a)
                    comms[a] = Comm(msg, rank_of[msg.src_chunk], r, sent.get(message_id(msg), -1))
        return Program(graph, acts, comms)

    @property
    def num_ranks(self) -> int:
        return self.graph.num_ranks

    def peer(self, action: Action) -> int:
        """Peer rank of a SEND/RECV."""
        c = self.comms[action]
        return c.dst_rank if action.op in SENDS else c.src_rank

    def seq(self, action: Action) -> int:
        return self.comms[action].seq

    def compute_order(self) -> RankOrder:
        """The compute (and REDUCE_GRAD) actions only."""
        return {r: [a for a in acts if a.op not in COMM] for r, acts in self.actions.items()}

    def text(self) -> dict[int, str]:
        return {r: " ".join(map(str, acts)) for r, acts in sorted(self.actions.items())}

    def num_actions(self) -> int:
        return sum(len(v) for v in self.actions.values())


CommModel = Literal["rank", "pair", "edge", "op"]
COMM_MODELS: tuple[str, ...] = ("rank", "pair", "edge", "op")


@dataclass(frozen=True, slots=True)
class CommBatch:
    """SEND/RECVs of one rank issued together with one ``batch_isend_irecv`` on one ``stream``.

    ``indices`` are the actions' positions in the rank's program (consecutive for the ``"rank"``
    model); ``stream`` names the communicator the batch runs on (see :func:`comm_batches`)."""

    stream: tuple[int, ...]
    indices: tuple[int, ...]
    actions: tuple[Action, ...]

    @property
    def start(self) -> int:
        return self.indices[0]


def comm_batches(program: Program, rank: int, comm_model: CommModel = "rank") -> list[CommBatch]:
    """The communication batches of ``rank``'s program, in issue order.

    [Note: batching rule] A *run* is a maximal sequence of consecutive SEND/RECV actions; any other
    action (compute, REDUCE_GRAD) ends it. The runtime issues a run when it reaches its first action,
    as one ``batch_isend_irecv`` per communicator the run touches, and before a compute action waits
    for every batch that holds one of the RECVs the action consumes. Batches on one communicator run
    one after another in issue order. ``comm_model`` says which communicator an operation uses:

    * ``"rank"``: one for all point-to-point traffic of the rank (a single pipeline process group);
      the whole run is one batch. The strictest model: a program that passes it passes the others.
    * ``"pair"``: one per unordered rank pair (both directions share it; NCCL's per-peer
      communicators): one batch per peer.
    * ``"edge"``: one per directed rank pair (a process group per pipeline edge): one batch per peer
      and direction.
    * ``"op"``: every SEND/RECV on its own (gloo: operations complete independently, matched by
      tag): one batch per operation, nothing queues behind another.

    The deadlock dry run in :mod:`dip.schedule.validate` assumes exactly this.
    """
    if comm_model not in COMM_MODELS:
        raise ValueError(f"unknown comm_model {comm_model!r}; valid: {', '.join(COMM_MODELS)}")
    acts = program.actions.get(rank, ())
    out: list[CommBatch] = []
    run: dict[tuple[int, ...], list[int]] = {}

    def close() -> None:
        for stream, idx in run.items():
            out.append(CommBatch(stream, tuple(idx), tuple(acts[i] for i in idx)))
        run.clear()

    for i, a in enumerate(acts):
        if a.op in COMM:
            stream = (rank, -1 - i) if comm_model == "op" else stream_of(program, rank, a, comm_model)
            run.setdefault(stream, []).append(i)
        else:
            close()
    close()
    return out


def stream_of(program: Program, rank: int, action: Action, comm_model: CommModel) -> tuple[int, ...]:
    if comm_model == "rank":
        return (rank,)
    c = program.comms[action]
    if comm_model == "pair":
        return (min(c.src_rank, c.dst_rank), max(c.src_rank, c.dst_rank))
    if comm_model == "edge":
        return (c.src_rank, c.dst_rank)
    raise ValueError(f"unknown comm_model {comm_model!r}; valid: {', '.join(COMM_MODELS)}")


# --------------------------------------------------------------------------- the whole pipeline

def lower(plan: Plan, recv_placement: RecvPlacement = "early", defer: DeferRule | None = None,
          reduce_grad: bool = False) -> Program:
    """``plan`` -> :class:`Program`: :func:`add_send_recv`, then optionally :func:`defer_recvs` with
    rule ``defer`` and :func:`add_reduce_grad`. Validate the result with
    :func:`dip.schedule.validate.validate_program`."""
    program = add_send_recv(plan, recv_placement)
    if defer is not None:
        program = defer_recvs(program, defer)
    return add_reduce_grad(program) if reduce_grad else program


# --------------------------------------------------------------------------- add_send_recv

def add_send_recv(plan: Plan, recv_placement: RecvPlacement = "early") -> Program:
    """Add SEND/RECV for every cross-rank message of ``plan.order``.

    ``"early"`` follows torch's ``_add_send_recv``: ranks take turns in rank order, each scheduling its
    next action once its inputs are available (a RECV already placed, or the local producer done); a
    SEND goes right after the producing action and its RECV is appended to the receiver **at that
    moment**, so every directed pair sees one global message order. ``"late"`` then moves each RECV
    just before its consumer (keeping per-pair order, without the rank-parity rule; see
    :func:`defer_recvs`). Raises :class:`ScheduleError` when no rank can progress.
    """
    if recv_placement not in ("early", "late"):
        raise ValueError(f"unknown recv_placement {recv_placement!r}; valid: early, late")
    graph = plan.graph
    deps = DependencyIndex(plan)
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
            if (key not in done[r]) if here else (message_id(msg) not in received[r]):
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
                        received[dst].add(message_id(msg))
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
            raise ScheduleError(f"RECVs without a consumer on rank {r}: {' '.join(map(str, deferred))}",
                                program.actions, r, len(acts) - 1)
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
