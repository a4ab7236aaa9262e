"""Lowered programs: per-rank action lists with SEND/RECV, the routing of every message, and the
communication batches the runtime posts together (:func:`comm_batches`).

[Note: message order] On every directed rank pair the sender's SENDs and the receiver's RECVs name
the same messages in the same order (NCCL point-to-point is tagless and matches same-peer operations
first in, first out). Every lowering pass keeps that invariant; :mod:`dip.schedule.validate` checks it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from dip.schedule.deps import Message, MessageKey
from dip.schedule.errors import ScheduleError
from dip.schedule.ir import Action, Op, RankOrder, StageGraph

__all__ = [
    "BACKWARD",
    "COMM",
    "COMM_MODELS",
    "COMPUTE",
    "RECVS",
    "SENDS",
    "Comm",
    "CommBatch",
    "CommModel",
    "Program",
    "comm_batches",
    "message_of",
    "stream_of",
]

SENDS = frozenset((Op.SEND_F, Op.SEND_B))
RECVS = frozenset((Op.RECV_F, Op.RECV_B))
COMM = SENDS | RECVS
COMPUTE = frozenset((Op.F, Op.B, Op.I, Op.W))
BACKWARD = frozenset((Op.B, Op.I, Op.W))


# --------------------------------------------------------------------------- messages and programs


def message_of(graph: StageGraph, action: Action) -> Message:
    """The message a SEND or RECV action carries (``kind`` from the graph's channel, else ``activation``)."""
    if action.op not in COMM:
        raise ValueError(f"{action} is not a SEND/RECV action")
    key = MessageKey.of(action)
    fwd = key.forward()
    return Message(key, _channel_kinds(graph).get((fwd.src_chunk, fwd.dst_chunk), "activation"))


def _channel_kinds(graph: StageGraph) -> dict[tuple[int, int], str]:
    kinds = graph.__dict__.get("_channel_kind_cache")
    if kinds is None:
        kinds = {(c.src, c.dst): c.kind for c in graph.channels}
        object.__setattr__(graph, "_channel_kind_cache", kinds)
    return kinds


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
    def build(graph: StageGraph, actions: Mapping[int, Sequence[Action]]) -> Program:
        acts = {r: list(actions.get(r, ())) for r in range(graph.num_ranks)}
        for r in actions:
            if r not in acts:
                raise ScheduleError(f"rank {r} outside 0..{graph.num_ranks - 1}", actions, r)
        rank_of = graph.stage_to_rank()
        comms: dict[Action, Comm] = {}
        counters: dict[tuple[int, int], int] = {}
        sent: dict[MessageKey, int] = {}

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
                    sent[msg.key] = seq
                    comms[a] = Comm(msg, r, dst, seq)
        for r in sorted(acts):
            for i, a in enumerate(acts[r]):
                if a.op in RECVS:
                    msg = routed(r, i, a)
                    comms[a] = Comm(msg, rank_of[msg.src_chunk], r, sent.get(msg.key, -1))
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
