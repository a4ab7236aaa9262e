"""The shape plan: for every message of a plan, the tensors it carries.

[Note: no shape handshakes] Receivers allocate buffers just in time from the :class:`ShapePlan`,
computed ahead of time from the batch metadata, so no message is preceded by a shape exchange (which
costs a host sync per message and, in Megatron, has deadlocked and silently swapped shapes).

A forward message carries the producer chunk's boundary tensors (:mod:`dip.spec.tensors`): within a
group, the output of the chunk's **last part** (Megatron-style mixed chunks send what their last
module produces); across groups, the channel's tensors (``image_embeds`` from a ViT unit,
``text_cond`` for a DiT unit). A backward message carries the gradients of its forward message's
tensors: same names, shapes and dtypes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from dip.data.meta import BatchMeta, MicroBatchMeta
from dip.schedule.deps import DependencyIndex, Message
from dip.schedule.errors import ScheduleError
from dip.schedule.ir import Action, Op, Plan, Unit
from dip.spec.model import ModelSpec
from dip.spec.tensors import TensorSpec, chunk_output_specs, edge_specs

MessageKey = tuple[int, int, int, int, bool]  # src_chunk, src_unit, dst_chunk, dst_unit, backward

DTYPE_BYTES = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2, "int64": 8, "int32": 4, "int8": 1,
               "uint8": 1, "bool": 1, "float8_e4m3fn": 1, "float8_e5m2": 1}


def message_key(x: Message | Action) -> MessageKey:
    """Key of a message, or of the message a SEND/RECV action carries."""
    if isinstance(x, Message):
        return (x.src_chunk, x.src_unit, x.dst_chunk, x.dst_unit, x.backward)
    if x.op in (Op.SEND_F, Op.SEND_B):
        return (x.chunk, x.unit, x.peer_chunk, x.peer_unit, x.op is Op.SEND_B)
    if x.op in (Op.RECV_F, Op.RECV_B):
        return (x.peer_chunk, x.peer_unit, x.chunk, x.unit, x.op is Op.RECV_B)
    raise ValueError(f"{x} is not a SEND/RECV action")


def spec_bytes(spec: TensorSpec) -> int:
    try:
        return spec.numel * DTYPE_BYTES[spec.dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {spec.dtype!r}; known: {', '.join(DTYPE_BYTES)}") from None


@dataclass(frozen=True)
class ShapePlan:
    """``specs[key]``: the tensors of message ``key`` (see :func:`message_key`), for every message
    of the plan, local hand-offs included."""

    specs: dict[MessageKey, tuple[TensorSpec, ...]] = field(default_factory=dict)

    def get(self, x: Message | Action) -> tuple[TensorSpec, ...]:
        key = message_key(x)
        try:
            return self.specs[key]
        except KeyError:
            raise KeyError(f"no shapes for message {key} ({x})") from None

    def nbytes(self, x: Message | Action) -> int:
        return sum(spec_bytes(s) for s in self.get(x))

    def total_bytes(self, keys: Sequence[MessageKey] | None = None) -> int:
        return sum(sum(spec_bytes(s) for s in self.specs[k]) for k in (self.specs if keys is None else keys))

    def __len__(self) -> int:
        return len(self.specs)


def shape_plan(plan: Plan, model: ModelSpec, batch: BatchMeta | Sequence[MicroBatchMeta],
               dtype: str = "bfloat16") -> ShapePlan:
    """Tensor specs of every message of ``plan`` for ``batch`` (activations in ``dtype``)."""
    mbs = batch.microbatches if isinstance(batch, BatchMeta) else tuple(batch)
    deps = DependencyIndex(plan)
    units = {g: {u.index: u for u in us} for g, us in plan.units.items()}
    forward: dict[MessageKey, tuple[TensorSpec, ...]] = {}
    for chunk, op, unit in sorted(deps.expected_keys(), key=lambda k: (k[0], k[1].value, k[2])):
        if op is not Op.F:
            continue
        for msg in deps.outputs(chunk, op, unit):
            forward[message_key(msg)] = _forward_specs(plan, model, mbs, units, msg, dtype)
    specs = dict(forward)
    for (src, su, dst, du, _), ts in forward.items():
        specs[(dst, du, src, su, True)] = ts  # gradients of what went forward
    return ShapePlan(specs)


def _forward_specs(plan: Plan, model: ModelSpec, mbs: Sequence[MicroBatchMeta], units: dict[str, dict[int, Unit]],
                   msg: Message, dtype: str) -> tuple[TensorSpec, ...]:
    graph = plan.graph
    src, dst = graph.chunks[msg.src_chunk], graph.chunks[msg.dst_chunk]
    su, du = units[src.group][msg.src_unit], units[dst.group][msg.dst_unit]
    if su.mb >= len(mbs):
        raise ScheduleError(f"unit {su.index} of group {src.group!r} is micro-batch {su.mb}; the batch has {len(mbs)}")
    mb = mbs[su.mb]
    last = src.parts[-1]
    if src.group == dst.group:
        return chunk_output_specs(model, last.module, last.layer_end, mb, su.start, su.stop, dtype)
    first = dst.parts[0].module
    for e in model.edges:
        if e.src == last.module and e.dst == first and e.kind == msg.kind:
            return edge_specs(model, e, su, du, mb, dtype)
    raise ScheduleError(f"no {msg.kind} edge {last.module} -> {first} in model {model.name} "
                        f"for the message from chunk {src.id} to chunk {dst.id}")
