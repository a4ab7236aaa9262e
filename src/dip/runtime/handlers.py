"""Default action handlers of the executor: ``handler(action, ctx)`` for every op of a lowered program.

* ``F``: take the inputs (local hand-off or posted receive, waited on here), run the stage chunk,
  hand the outputs to their consumers (local leaf or outbox for a SEND);
* ``B``: full backward (``torch.autograd.backward``; parameter gradients accumulate across units);
* ``I`` / ``W``: split backward for zero-bubble schedules: ``I`` computes the input gradients with
  ``torch.autograd.grad`` (graph retained) and saves the gradients where each parameter's branch
  joins the input path; ``W`` backpropagates those into the parameters only (:mod:`.splitgrad`);
* ``RECV_*`` / ``SEND_*``: prepare one transfer each; ``BATCH`` posts a whole communication batch;
* ``REDUCE_GRAD``: marks the chunk's gradients final (the trainer all-reduces them after the step).

Replace any of them with :meth:`dip.runtime.executor.Executor.register`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from dip.runtime import splitgrad
from dip.runtime.comm import P2P, alloc, pack, post_batch
from dip.runtime.stage import UnitState
from dip.schedule.ir import Action, Op

if TYPE_CHECKING:
    from dip.runtime.executor import StepContext

Handler = Callable[[Action, "StepContext"], None]


# --------------------------------------------------------------------------- compute


def forward(action: Action, ctx: StepContext) -> None:
    c, u = action.chunk, action.unit
    plan = ctx.plan
    chunk = plan.graph.chunks[c]
    stage = ctx.stages[c]
    unit = plan.units[chunk.group][u]
    mb = ctx.batch.microbatches[unit.mb]
    mb_index = ctx.mb_offset + unit.mb
    state = UnitState()
    received = []
    for _, msg in ctx.deps.inputs(c, Op.F, u):
        key = msg.key
        leaves = {
            n: (t.requires_grad_() if t.is_floating_point() and not t.requires_grad else t)
            for n, t in ctx.take(key, action).items()
        }
        state.inputs[key] = leaves
        received.append((msg, leaves))
    handoff = None
    if chunk.index == 0:
        glue = []
        for msg, leaves in received:
            src_chunk = plan.graph.chunks[msg.src_chunk]
            src_unit = plan.units[src_chunk.group][msg.src_unit]
            glue.append((ctx.edge(msg.src_chunk, c), ctx.part_unit(src_chunk.parts[-1].module, src_unit), leaves))
        inputs = ctx.provider.assemble_inputs(chunk.parts[0].module, mb, glue)
    else:
        inputs = received[0][1] if received else {}
        prev = plan.graph.chunks[plan.graph.prev_in_group(c)].parts[-1].module
        handoff = prev if prev != chunk.parts[0].module else None
    outputs = stage.run(inputs, unit, mb, mb_index, ctx.strategy(c, u), ctx.data_of, handoff)
    loss = outputs.pop("loss_sum", None)
    if loss is not None:
        state.loss = loss
        ctx.add_loss(loss)
    for msg in ctx.deps.outputs(c, Op.F, u):
        key = msg.key
        dst = plan.graph.chunks[msg.dst_chunk]
        if dst.group == chunk.group:
            payload = outputs
        else:
            dst_unit = plan.units[dst.group][msg.dst_unit]
            payload = ctx.provider.edge_tensors(
                ctx.edge(c, msg.dst_chunk),
                outputs,
                ctx.part_unit(chunk.parts[-1].module, unit),
                ctx.part_unit(dst.parts[0].module, dst_unit),
                mb,
            )
        state.outputs[key] = payload
        ctx.emit(key, payload)
    ctx.states[(c, u)] = state


def _roots(action: Action, ctx: StepContext, state: UnitState) -> tuple[list[Tensor], list[Tensor]]:
    """Autograd roots of a unit's backward and their incoming gradients."""
    roots: list[Tensor] = []
    grads: list[Tensor] = []
    if state.loss is not None and state.loss.requires_grad:
        roots.append(state.loss)
        grads.append(torch.full_like(state.loss, ctx.loss_scale))
    for key, payload in state.outputs.items():
        got = ctx.take(key.reply(), action)
        for name, t in payload.items():
            if t.requires_grad:
                roots.append(t)
                grads.append(got[name])
    return roots, grads


def _send_input_grads(ctx: StepContext, state: UnitState, grads: dict[int, Tensor] | None = None) -> None:
    for key, leaves in state.inputs.items():
        out = {}
        for name, leaf in leaves.items():
            g = grads.get(id(leaf)) if grads is not None else leaf.grad
            out[name] = g if g is not None else torch.zeros_like(leaf)
        ctx.emit(key.reply(), out)


def backward(action: Action, ctx: StepContext) -> None:
    state = ctx.pop_state(action)
    roots, grads = _roots(action, ctx, state)
    if roots:
        with ctx.grad_context():
            torch.autograd.backward(roots, grads)
    _send_input_grads(ctx, state)


def backward_input(action: Action, ctx: StepContext) -> None:
    state = ctx.states.get((action.chunk, action.unit))
    if state is None:
        raise RuntimeError(
            f"rank {ctx.rank}: {action} runs before the forward of chunk {action.chunk} unit {action.unit}"
        )
    roots, grads = _roots(action, ctx, state)
    leaves = state.input_leaves()
    found: dict[int, Tensor] = {}
    if roots:
        with ctx.grad_context():
            got, state.weight_job = splitgrad.backward_input(roots, grads, leaves, ctx.stages[action.chunk].params)
        found = {id(leaf): g for leaf, g in zip(leaves, got) if g is not None}
    _send_input_grads(ctx, state, found)
    state.inputs = {}


def backward_weight(action: Action, ctx: StepContext) -> None:
    state = ctx.pop_state(action)
    if state.weight_job is not None:
        with ctx.grad_context():
            splitgrad.backward_weight(state.weight_job)
        state.weight_job = None


def reduce_grad(action: Action, ctx: StepContext) -> None:
    ctx.reduced.add(action.chunk)


# --------------------------------------------------------------------------- communication


def _tag(ctx: StepContext, seq: int) -> int:
    return seq if seq >= 0 else (1 << 20) + len(ctx.pending)


def recv(action: Action, ctx: StepContext) -> None:
    r = ctx.routes[action]
    if r.numel == 0:
        ctx.recvs[r.key] = (None, r.specs)
        return
    p = P2P(
        False,
        alloc(r.specs, ctx.comm_device or ctx.device),
        r.peer,
        _tag(ctx, r.tag),
        r.what,
        ctx.batch_no,
        r.group_peer,
    )
    ctx.recvs[r.key] = (p, r.specs)
    ctx.pending.append(p)


def send(action: Action, ctx: StepContext) -> None:
    r = ctx.routes[action]
    payload = ctx.outbox.pop(r.key, None)
    if payload is None:
        raise RuntimeError(f"rank {ctx.rank}: {action} before its producer ran (nothing to send)")
    for s in r.specs:
        t = payload.get(s.name)
        if t is None or tuple(t.shape) != tuple(s.shape):
            got = None if t is None else tuple(t.shape)
            raise RuntimeError(
                f"rank {ctx.rank}: {action} sends {s.name} of shape {got}, but the shape plan says {tuple(s.shape)}"
            )
    if r.numel == 0:
        return
    buffer = pack([payload[s.name] for s in r.specs])
    if ctx.comm_device is not None and buffer.device != ctx.comm_device:
        buffer = buffer.to(ctx.comm_device)  # host staging (gloo with CUDA compute)
    p = P2P(True, buffer, r.peer, _tag(ctx, r.tag), r.what, ctx.batch_no, r.group_peer)
    ctx.pending.append(p)
    ctx.sends.add(p)


def post(batch: Sequence[Action], ctx: StepContext) -> None:
    """Post the transfers the batch's SEND/RECV handlers prepared."""
    ops, ctx.pending = ctx.pending, []
    if ctx.poster is not None:
        ctx.poster.submit(ops)
    else:
        post_batch(ops, ctx.group)
    ctx.batch_no += 1


DEFAULT_HANDLERS: dict[str, Handler] = {
    Op.F.value: forward,
    Op.B.value: backward,
    Op.I.value: backward_input,
    Op.W.value: backward_weight,
    Op.REDUCE_GRAD.value: reduce_grad,
    Op.SEND_F.value: send,
    Op.SEND_B.value: send,
    Op.RECV_F.value: recv,
    Op.RECV_B.value: recv,
    "BATCH": post,
}
