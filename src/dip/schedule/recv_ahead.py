"""Receives one compute action ahead: a lowering pass for transports whose operations complete
independently (gloo).

[Note: receives ahead] A RECV placed right before its consumer (no compute action between them) is
posted too late for a point-to-point transport that writes a message at once only when the
receiver is already waiting for it: gloo's TCP pair sends the payload from the sender's thread
only after a receive-ready notification; a send that comes first announces itself, and the payload
follows from the sender's I/O thread once the receive is posted, a round trip more on the pipeline's
critical path. In 1F1B the first rank posts the gradient RECV after the next forward, while the
last rank sends that gradient during it. :func:`post_recvs_ahead` moves such RECVs before the
compute action that precedes them, so they are outstanding while it runs.

Only RECVs move, and only earlier. Under independently completing operations a posted RECV never
blocks anything, so the program keeps the deadlock freedom (and the safe drain points of the
executor's send queue) of the program it came from: computes and SENDs stay in place, and every
message is available no later than before. This does not hold when one communicator runs the
operations in issue order (NCCL): a RECV posted early holds back the SENDs queued behind it. The
result must pass :func:`dip.schedule.validate.validate_program` with ``comm_model="op"``.
"""

from __future__ import annotations

from dip.schedule.ir import Action, Op
from dip.schedule.program import COMM, COMPUTE, RECVS, Program

__all__ = ["post_recvs_ahead"]


def _consumes(action: Action, recv: Action) -> bool:
    """Whether compute ``action`` consumes the message of ``recv``."""
    if action.chunk != recv.chunk or action.unit != recv.unit:
        return False
    return action.op is Op.F if recv.op is Op.RECV_F else action.op in (Op.B, Op.I)


def _ahead(acts: list[Action], program: Program) -> list[Action]:
    out: list[Action] = []
    last_compute = -1  # position in ``out`` of the latest compute action
    i = 0
    while i < len(acts):
        if acts[i].op not in COMM:
            if acts[i].op in COMPUTE:
                last_compute = len(out)
            out.append(acts[i])
            i += 1
            continue
        stop = i
        while stop < len(acts) and acts[stop].op in COMM:
            stop += 1
        run = acts[i:stop]
        consumer = acts[stop] if stop < len(acts) else None
        if consumer is not None and consumer.op in COMPUTE and last_compute >= 0:
            moving = [a.op in RECVS and _consumes(consumer, a) for a in run]
            # an earlier RECV from the same peer moves along, so each directed pair keeps its order
            last = {program.peer(a): k for k, (a, m) in enumerate(zip(run, moving)) if m}
            moving = [
                m or (a.op in RECVS and k < last.get(program.peer(a), -1)) for k, (a, m) in enumerate(zip(run, moving))
            ]
            ahead = [a for a, m in zip(run, moving) if m]
            out[last_compute:last_compute] = ahead
            last_compute += len(ahead)
            run = [a for a, m in zip(run, moving) if not m]
        out += run
        i = stop
    return out


def post_recvs_ahead(program: Program) -> Program:
    """Move every RECV that its consumer immediately follows (no compute action between them) to
    just before the preceding compute action (see the module docstring)."""
    return Program.build(program.graph, {r: _ahead(list(acts), program) for r, acts in program.actions.items()})
