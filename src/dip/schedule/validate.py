"""Static checks of a plan and of its lowered program; every failure is a :class:`ScheduleError`
that prints the whole rank x step grid with the failing step marked.

:func:`validate_plan` (compute order):
  * structure: ranks exist, ops are compute (or REDUCE_GRAD), chunks and units exist, every chunk's
    actions on that chunk's rank;
  * counts: each of :meth:`DependencyIndex.expected_keys` exactly once, nothing else;
  * order on each rank: a prerequisite produced on the same rank (F before I/B before W, local
    hand-offs between chunks) comes earlier in the rank's list; REDUCE_GRAD after the chunk's last
    backward;
  * order globally: a dry run where each rank waits for its remote inputs; a cycle is reported.

:func:`validate_program` (lowered program) adds:
  * exactly one SEND and one RECV for every cross-rank message and none for same-rank hand-offs;
    SEND after its producer, RECV before its consumer;
  * message order: on every directed rank pair, the sender's SENDs and the receiver's RECVs name the
    same messages in the same order (tagless FIFO matching would otherwise swap tensors);
  * :func:`check_deadlock`, a dry run of the communication batches (see its docstring).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from dip.schedule.deps import DependencyIndex, Message, MessageKey
from dip.schedule.errors import ScheduleError
from dip.schedule.ir import Action, Op, Plan
from dip.schedule.program import BACKWARD, COMM, COMPUTE, RECVS, SENDS, CommBatch, CommModel, Program, comm_batches

__all__ = ["check_deadlock", "validate_plan", "validate_program"]

Order = Mapping[int, Sequence[Action]]


def _key_text(key) -> str:
    return f"{key[0]}{key[1].value}{key[2]}"


# --------------------------------------------------------------------------- compute order


def validate_plan(plan: Plan, deps: DependencyIndex | None = None) -> None:
    """Raise :class:`ScheduleError` unless ``plan.order`` is complete, well placed and executable
    (``deps``: the plan's dependency index, when the caller already has it)."""
    deps = deps or DependencyIndex.of_plan(plan)
    _check_compute(plan, plan.order, deps, allow_comm=False)
    _check_progress(plan, deps)


def _check_compute(plan: Plan, order: Order, deps: DependencyIndex, allow_comm: bool) -> dict:
    """Structure, counts and per-rank order of the compute actions of ``order`` (comm actions skipped).
    Returns ``{key: (rank, step)}``."""
    graph = plan.graph
    rank_of = graph.stage_to_rank()
    unit_ids = {g: {u.index for u in us} for g, us in plan.units.items()}

    def err(msg: str, r: int | None = None, i: int | None = None, a: Action | None = None) -> ScheduleError:
        return ScheduleError(msg, order, r, i, a)

    for r in order:
        if not 0 <= r < graph.num_ranks:
            raise err(f"rank {r} outside 0..{graph.num_ranks - 1}")
    where: dict = {}
    reduce_at: dict[int, tuple[int, int]] = {}
    for r in sorted(order):
        for i, a in enumerate(order[r]):
            if a.op in COMM and allow_comm:
                continue
            if not (a.op in COMPUTE or a.op is Op.REDUCE_GRAD):
                raise err(f"{a.op.value} does not belong in a compute order", r, i, a)
            if not 0 <= a.chunk < len(rank_of):
                raise err(f"no chunk {a.chunk} (the graph has {len(rank_of)})", r, i, a)
            if rank_of[a.chunk] != r:
                raise err(f"chunk {a.chunk} lives on rank {rank_of[a.chunk]}, not rank {r}", r, i, a)
            if a.op is Op.REDUCE_GRAD:
                if a.chunk in reduce_at:
                    raise err(f"second REDUCE_GRAD for chunk {a.chunk}", r, i, a)
                reduce_at[a.chunk] = (r, i)
                continue
            group = graph.chunks[a.chunk].group
            if a.unit is None or a.unit not in unit_ids.get(group, ()):
                raise err(f"group {group!r} has no unit {a.unit}", r, i, a)
            if a.key in where:
                pr, pi = where[a.key]
                raise err(f"duplicate {a} (first at rank {pr} step {pi})", r, i, a)
            where[a.key] = (r, i)
    expected = deps.expected_keys()
    for key, (r, i) in sorted(where.items(), key=lambda kv: kv[1]):
        if key not in expected:
            a = order[r][i]
            why = (
                f" (no {a.chunk}I{a.unit} in the plan)"
                if a.op is Op.W
                else (f" (chunk {a.chunk} unit {a.unit} also has I/W)" if a.op is Op.B else "")
            )
            raise err(f"unexpected action {a}{why}", r, i, a)
    lost = sorted(expected - set(where), key=lambda k: (rank_of[k[0]], k[0], k[2], k[1].value))
    if lost:
        names = ", ".join(f"{_key_text(k)} (rank {rank_of[k[0]]})" for k in lost[:8])
        more = f" and {len(lost) - 8} more" if len(lost) > 8 else ""
        raise err(f"missing {len(lost)} action(s): {names}{more}")
    for r in sorted(order):
        for i, a in enumerate(order[r]):
            if a.op not in COMPUTE:
                continue
            for key, _msg in deps.inputs(a.chunk, a.op, a.unit):
                pr, pi = where[key]
                if pr == r and pi > i:
                    raise err(f"{a} needs {_key_text(key)}, which comes later on rank {r} (step {pi})", r, i, a)
    last_bwd: dict[int, int] = {}
    for key, (_, i) in where.items():
        if key[1] in BACKWARD:
            last_bwd[key[0]] = max(last_bwd.get(key[0], -1), i)
    for chunk, (r, i) in reduce_at.items():
        if last_bwd.get(chunk, -1) > i:
            raise err(
                f"REDUCE_GRAD of chunk {chunk} before its last backward (step {last_bwd[chunk]})", r, i, order[r][i]
            )
    return where


def _check_progress(plan: Plan, deps: DependencyIndex) -> None:
    """Run every rank's compute list, each action once its inputs are done anywhere."""
    order = plan.order
    rank_of = plan.graph.stage_to_rank()
    pc = dict.fromkeys(order, 0)
    done: set = set()
    progress = True
    while progress:
        progress = False
        for r, acts in order.items():
            while pc[r] < len(acts):
                a = acts[pc[r]]
                if a.op in COMPUTE and any(k not in done for k, _ in deps.inputs(a.chunk, a.op, a.unit)):
                    break
                done.add(a.key)
                pc[r] += 1
                progress = True
    stuck = {r: pc[r] for r, acts in order.items() if pc[r] < len(acts)}
    if not stuck:
        return
    waits: dict[int, tuple[int, str]] = {}
    for r, i in stuck.items():
        a = order[r][i]
        key = next(k for k, _ in deps.inputs(a.chunk, a.op, a.unit) if k not in done)
        q = rank_of[key[0]]
        waits[r] = (q, f"rank {r} waits at step {i} ({a}) for {_key_text(key)} on rank {q}")
    cycle = _find_cycle({r: q for r, (q, _) in waits.items()}, min(stuck))
    r0 = cycle[0]
    text = "; ".join(waits[r][1] for r in cycle)
    raise ScheduleError(
        f"deadlock, cyclic wait {_cycle_text(cycle)}: {text}", order, r0, stuck[r0], order[r0][stuck[r0]]
    )


def _find_cycle(edges: dict[int, int], start: int) -> list[int]:
    path: list[int] = []
    seen: dict[int, int] = {}
    r = start
    while r in edges and r not in seen:
        seen[r] = len(path)
        path.append(r)
        r = edges[r]
    return path[seen[r] :] if r in seen else path


def _cycle_text(cycle: list[int]) -> str:
    return " -> ".join(f"rank {r}" for r in cycle + cycle[:1])


# --------------------------------------------------------------------------- lowered program


def validate_program(
    plan: Plan, program: Program, comm_model: CommModel = "rank", deps: DependencyIndex | None = None
) -> None:
    """Raise :class:`ScheduleError` unless ``program`` is a correct, deadlock-free lowering of ``plan``.

    The compute actions are checked as a plan (the program may have merged or split backwards, so
    the expected actions follow the program's own I/W use); then messages, per-pair order, deadlock.
    ``deps``: the plan's dependency index, reused when the program splits the same backwards.
    """
    order = program.actions
    split = {(a.chunk, a.unit) for acts in order.values() for a in acts if a.op is Op.I}
    if deps is None or deps.split != split or deps.graph is not plan.graph:
        deps = DependencyIndex(plan.graph, plan.units, plan.flows, split)
    where = _check_compute(plan, order, deps, allow_comm=True)
    _check_messages(plan, program, deps, where)
    _check_pair_order(program)
    check_deadlock(program, comm_model)


def _check_messages(plan: Plan, program: Program, deps: DependencyIndex, where: dict) -> None:
    order = program.actions
    rank_of = plan.graph.stage_to_rank()
    wanted: dict[MessageKey, Message] = {}
    for key in deps.expected_keys():
        for msg in deps.outputs(*key):
            wanted[msg.key] = msg
    seen: dict[tuple[MessageKey, bool], tuple[int, int]] = {}
    for r in sorted(order):
        for i, a in enumerate(order[r]):
            if a.op not in COMM:
                continue
            if rank_of[a.chunk] != r:
                raise ScheduleError(f"chunk {a.chunk} lives on rank {rank_of[a.chunk]}, not rank {r}", order, r, i, a)
            msg = program.comms[a].message
            mid = msg.key
            if mid not in wanted:
                raise ScheduleError(f"{a} carries no message of the plan", order, r, i, a)
            if rank_of[msg.src_chunk] == rank_of[msg.dst_chunk]:
                raise ScheduleError(
                    f"{a}: chunks {msg.src_chunk} and {msg.dst_chunk} share rank {r}; "
                    "a same-rank message is a local hand-off, not a SEND/RECV",
                    order,
                    r,
                    i,
                    a,
                )
            side = (mid, a.op in SENDS)
            if side in seen:
                raise ScheduleError(f"duplicate {a} (first at step {seen[side][1]})", order, r, i, a)
            seen[side] = (r, i)
            if a.op in SENDS:
                prod = (msg.src_chunk, deps.bwd_op(msg.src_chunk, msg.src_unit) if msg.backward else Op.F, msg.src_unit)
                if where[prod][1] > i:
                    raise ScheduleError(
                        f"{a} before its producer {_key_text(prod)} (step {where[prod][1]})", order, r, i, a
                    )
            else:
                cons = (msg.dst_chunk, deps.bwd_op(msg.dst_chunk, msg.dst_unit) if msg.backward else Op.F, msg.dst_unit)
                if where[cons][1] < i:
                    raise ScheduleError(
                        f"{a} after its consumer {_key_text(cons)} (step {where[cons][1]})", order, r, i, a
                    )
    for mid, msg in sorted(wanted.items()):
        if rank_of[msg.src_chunk] == rank_of[msg.dst_chunk]:
            continue
        for is_send, act in ((True, msg.send_action()), (False, msg.recv_action())):
            if (mid, is_send) not in seen:
                r = rank_of[msg.src_chunk] if is_send else rank_of[msg.dst_chunk]
                raise ScheduleError(f"missing {act} on rank {r}", order)


def _check_pair_order(program: Program) -> None:
    order = program.actions
    sends: dict[tuple[int, int], list[tuple[int, Action]]] = {}
    recvs: dict[tuple[int, int], list[tuple[int, Action]]] = {}
    for r in sorted(order):
        for i, a in enumerate(order[r]):
            if a.op in COMM:
                c = program.comms[a]
                (sends if a.op in SENDS else recvs).setdefault((c.src_rank, c.dst_rank), []).append((i, a))
    for pair in sorted(set(sends) | set(recvs)):
        s, d = pair
        ss, rr = sends.get(pair, []), recvs.get(pair, [])
        for k, ((si, sa), (ri, ra)) in enumerate(zip(ss, rr)):
            if program.comms[sa].message.key != program.comms[ra].message.key:
                raise ScheduleError(
                    f"message order differs on rank pair {s}->{d} at message {k}: rank {s} sends {sa} "
                    f"(step {si}) but rank {d} receives {ra} (step {ri}); point-to-point matching is "
                    f"first in, first out per peer, so these tensors would be swapped",
                    order,
                    d,
                    ri,
                    ra,
                )
        if len(ss) != len(rr):
            raise ScheduleError(f"rank pair {s}->{d}: {len(ss)} SENDs but {len(rr)} RECVs", order)


# --------------------------------------------------------------------------- deadlock dry run


def check_deadlock(program: Program, comm_model: CommModel = "rank") -> None:
    """Dry-run the program's communication and raise on a deadlock, naming the cyclic wait.

    Model (the runtime contract of :func:`~dip.schedule.lowering.comm_batches`):

    * a rank's host walks its program; reaching a run of SEND/RECVs posts all its batches at once
      (posting never blocks);
    * a compute action blocks until every batch holding a RECV it consumes has completed (a batch is
      atomic: its RECVs are usable when the whole batch is done);
    * the batches of one communicator run one at a time in issue order: a batch becomes active when
      the previous batch of its communicator has completed;
    * a SEND and a RECV match when both are in active batches; on each directed rank pair the k-th
      SEND matches the k-th RECV (tagless FIFO matching); a batch completes when all its ops matched.
    """
    _DryRun(program, comm_model).run()


class _DryRun:
    def __init__(self, program: Program, comm_model: CommModel):
        self.program = program
        self.order = order = program.actions
        self.ranks = ranks = sorted(order)
        self.batches: list[CommBatch] = []
        self.owner: list[int] = []
        self.batch_at: dict[tuple[int, int], int] = {}
        self.runs: dict[tuple[int, int], tuple[int, list[int]]] = {}  # (rank, run start) -> (stop, batches)
        self.streams: dict[tuple[int, tuple[int, ...]], list[int]] = {}
        for r in ranks:
            for batch in comm_batches(program, r, comm_model):
                b = len(self.batches)
                self.batches.append(batch)
                self.owner.append(r)
                for i in batch.indices:
                    self.batch_at[(r, i)] = b
                self.streams.setdefault((r, batch.stream), []).append(b)
            i = 0
            acts = order[r]
            while i < len(acts):
                if acts[i].op in COMM:
                    j = i
                    while j < len(acts) and acts[j].op in COMM:
                        j += 1
                    self.runs[(r, i)] = (j, sorted({self.batch_at[(r, k)] for k in range(i, j)}))
                    i = j
                else:
                    i += 1
        self.stream_of = {b: (self.owner[b], self.batches[b].stream) for b in range(len(self.batches))}
        self.head = dict.fromkeys(self.streams, 0)
        self.posted = [False] * len(self.batches)
        self.done = [False] * len(self.batches)
        self.matched: set[tuple[int, int]] = set()
        self.partner = self._partners()
        self.needs = self._needs()
        self.pc = dict.fromkeys(ranks, 0)

    def _partners(self) -> dict[tuple[int, int], tuple[int, int] | None]:
        queues: dict[tuple[int, int, bool], list[tuple[int, int]]] = {}
        for r in self.ranks:
            for i, a in enumerate(self.order[r]):
                if a.op in COMM:
                    c = self.program.comms[a]
                    queues.setdefault((c.src_rank, c.dst_rank, a.op in SENDS), []).append((r, i))
        partner: dict[tuple[int, int], tuple[int, int] | None] = {}
        for (s, d, is_send), ops in queues.items():
            other = queues.get((s, d, not is_send), [])
            for k, op in enumerate(ops):
                partner[op] = other[k] if k < len(other) else None
        return partner

    def _needs(self) -> dict[tuple[int, int], list[int]]:
        needs: dict[tuple[int, int], list[int]] = {}
        for r in self.ranks:
            recvs: dict[tuple, list[int]] = {}
            for i, a in enumerate(self.order[r]):
                if a.op in RECVS:
                    recvs.setdefault((a.chunk, a.op, a.unit), []).append(i)
                elif a.op in COMPUTE and a.op is not Op.W:
                    want = Op.RECV_F if a.op is Op.F else Op.RECV_B
                    needs[(r, i)] = recvs.get((a.chunk, want, a.unit), [])
        return needs

    def active(self, b: int) -> bool:
        """Posted and at the head of its communicator's queue."""
        key = self.stream_of[b]
        queue, head = self.streams[key], self.head[key]
        return self.posted[b] and head < len(queue) and queue[head] == b

    def blocker(self, r: int, i: int) -> int | None:
        """First unfinished batch holding a RECV that compute action ``(r, i)`` consumes."""
        for j in self.needs.get((r, i), ()):
            b = self.batch_at[(r, j)]
            if not self.done[b]:
                return b
        return None

    def run(self) -> None:
        changed = True
        while changed:
            changed = False
            for r in self.ranks:
                acts = self.order[r]
                while self.pc[r] < len(acts):
                    i = self.pc[r]
                    if acts[i].op in COMM:
                        stop, bs = self.runs[(r, i)]
                        for b in bs:
                            self.posted[b] = True
                        self.pc[r] = stop
                    elif self.blocker(r, i) is None:
                        self.pc[r] = i + 1
                    else:
                        break
                    changed = True
            for key, queue in self.streams.items():
                while self.head[key] < len(queue):
                    b = queue[self.head[key]]
                    if not self.posted[b]:
                        break
                    r = self.owner[b]
                    for i in self.batches[b].indices:
                        p = self.partner[(r, i)]
                        if (r, i) not in self.matched and p is not None and self.active(self.batch_at[p]):
                            self.matched.add((r, i))
                            self.matched.add(p)
                    if not all((r, i) in self.matched for i in self.batches[b].indices):
                        break
                    self.done[b] = True
                    self.head[key] += 1
                    changed = True
        stuck = [
            r
            for r in self.ranks
            if self.pc[r] < len(self.order[r])
            or any(not self.done[b] for b in range(len(self.batches)) if self.owner[b] == r)
        ]
        if stuck:
            self._raise(stuck)

    def _why_batch(self, b: int) -> tuple[int | None, str]:
        """Why batch ``b`` is unfinished: ``(rank waited on, text)``."""
        order, r = self.order, self.owner[b]
        key = self.stream_of[b]
        queue = self.streams[key]
        parts = []
        h = queue[self.head[key]]
        if h != b:
            parts.append(f"queued behind the unfinished batch at step {self.batches[h].start}")
        for i in self.batches[h].indices:
            if (r, i) in self.matched:
                continue
            p = self.partner[(r, i)]
            if p is None:
                return None, ", ".join(parts + [f"{order[r][i]} (step {i}) has no counterpart"])
            q, j = p
            c = self.batch_at[p]
            if not self.posted[c]:
                at = self.pc[q]
                blocked = f" (rank {q} is blocked at step {at}, {order[q][at]})" if at < len(order[q]) else ""
                parts.append(f"{order[r][i]} (step {i}) waits for rank {q} to issue {order[q][j]} (step {j}){blocked}")
            else:
                qkey = self.stream_of[c]
                qh = self.streams[qkey][self.head[qkey]]
                parts.append(
                    f"{order[r][i]} (step {i}) waits for {order[q][j]} (rank {q} step {j}), queued "
                    f"behind rank {q}'s unfinished batch at step {self.batches[qh].start}"
                )
            return q, ", ".join(parts)
        return None, ", ".join(parts)

    def _raise(self, stuck: list[int]) -> None:
        order = self.order
        waits: dict[int, tuple[int | None, str, int]] = {}
        for r in stuck:
            i = self.pc[r]
            if i < len(order[r]):
                b = self.blocker(r, i)
                recv = next(j for j in self.needs[(r, i)] if self.batch_at[(r, j)] == b)
                q, why = self._why_batch(b)
                text = (
                    f"rank {r} blocks at step {i} ({order[r][i]}) until its batch with {order[r][recv]} "
                    f"completes: {why}"
                )
            else:
                b = next(b for b in range(len(self.batches)) if self.owner[b] == r and not self.done[b])
                i = self.batches[b].start
                q, why = self._why_batch(b)
                text = f"rank {r} ends with the unfinished batch at step {i}: {why}"
            waits[r] = (q, text, i)
        cycle = _find_cycle({r: q for r, (q, _, _) in waits.items() if q is not None}, stuck[0]) or [stuck[0]]
        r0 = cycle[0]
        step = waits[r0][2]
        raise ScheduleError(
            f"deadlock, cyclic wait {_cycle_text(cycle)}: " + "; ".join(waits[r][1] for r in cycle),
            order,
            r0,
            step,
            order[r0][step],
        )
