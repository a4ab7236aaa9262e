"""Data dependencies between compute actions, derived from the stage graph and the flows.

For a chunk ``c`` of group ``g`` and unit ``u``:

* ``F(c, u)`` needs ``F(prev(c), u)``; the first chunk of ``g`` needs ``F(last(src), u')`` for every
  flow ``src:u' -> g:u``.
* ``B(c, u)`` / ``I(c, u)`` needs ``F(c, u)`` and the backward-input of ``next(c)`` for ``u``; the last
  chunk of ``g`` needs the backward-input of ``first(dst)`` for every flow ``g:u -> dst:u''``.
* ``W(c, u)`` needs ``I(c, u)``.

"Backward-input" is ``I`` where the plan splits the backward of that (chunk, unit), ``B`` otherwise.
Every cross-chunk dependency is one message on a channel; :class:`Message` names it.
"""
from __future__ import annotations

from dataclasses import dataclass

from dip.schedule.ir import Action, Op, Plan, StageGraph

Key = tuple[int, Op, int]


@dataclass(frozen=True, slots=True)
class Message:
    """A tensor sent from ``(src_chunk, src_unit)`` to ``(dst_chunk, dst_unit)``; ``backward`` for gradients."""

    src_chunk: int
    src_unit: int
    dst_chunk: int
    dst_unit: int
    backward: bool
    kind: str

    def send_action(self) -> Action:
        op = Op.SEND_B if self.backward else Op.SEND_F
        return Action(self.src_chunk, op, self.src_unit, self.dst_chunk, self.dst_unit)

    def recv_action(self) -> Action:
        op = Op.RECV_B if self.backward else Op.RECV_F
        return Action(self.dst_chunk, op, self.dst_unit, self.src_chunk, self.src_unit)


class DependencyIndex:
    """Dependencies of every compute action of a plan (see module docstring)."""

    def __init__(self, plan: Plan):
        self.plan = plan
        graph: StageGraph = plan.graph
        self.graph = graph
        self.split = {(a.chunk, a.unit) for acts in plan.order.values() for a in acts if a.op is Op.I}
        self._producers: dict[tuple[str, int], list[tuple[str, int, str]]] = {}
        self._consumers: dict[tuple[str, int], list[tuple[str, int, str]]] = {}
        for f in plan.flows:
            self._producers.setdefault((f.dst_group, f.dst_unit), []).append((f.src_group, f.src_unit, f.kind))
            self._consumers.setdefault((f.src_group, f.src_unit), []).append((f.dst_group, f.dst_unit, f.kind))

    def bwd_op(self, chunk: int, unit: int) -> Op:
        """The op that produces input gradients of (chunk, unit): ``I`` if split, else ``B``."""
        return Op.I if (chunk, unit) in self.split else Op.B

    def inputs(self, chunk: int, op: Op, unit: int) -> list[tuple[Key, Message | None]]:
        """Prerequisites of a compute action: ``(key, message)``; ``message`` is None for same-chunk deps."""
        g = self.graph
        group = g.chunks[chunk].group
        out: list[tuple[Key, Message | None]] = []
        if op is Op.F:
            prev = g.prev_in_group(chunk)
            if prev is not None:
                out.append(((prev, Op.F, unit), Message(prev, unit, chunk, unit, False, "activation")))
            else:
                for src_group, src_unit, kind in self._producers.get((group, unit), ()):
                    src = g.last_chunk(src_group)
                    out.append(((src, Op.F, src_unit), Message(src, src_unit, chunk, unit, False, kind)))
        elif op is Op.W:
            out.append(((chunk, Op.I, unit), None))
        else:  # B or I
            out.append(((chunk, Op.F, unit), None))
            nxt = g.next_in_group(chunk)
            if nxt is not None:
                out.append(((nxt, self.bwd_op(nxt, unit), unit), Message(nxt, unit, chunk, unit, True, "activation")))
            else:
                for dst_group, dst_unit, kind in self._consumers.get((group, unit), ()):
                    dst = g.first_chunk(dst_group)
                    out.append(((dst, self.bwd_op(dst, dst_unit), dst_unit), Message(dst, dst_unit, chunk, unit, True, kind)))
        return out

    def outputs(self, chunk: int, op: Op, unit: int) -> list[Message]:
        """Messages a compute action produces (sent once it finishes)."""
        g = self.graph
        group = g.chunks[chunk].group
        msgs: list[Message] = []
        if op is Op.F:
            nxt = g.next_in_group(chunk)
            if nxt is not None:
                msgs.append(Message(chunk, unit, nxt, unit, False, "activation"))
            else:
                for dst_group, dst_unit, kind in self._consumers.get((group, unit), ()):
                    msgs.append(Message(chunk, unit, g.first_chunk(dst_group), dst_unit, False, kind))
        elif op in (Op.B, Op.I):
            prev = g.prev_in_group(chunk)
            if prev is not None:
                msgs.append(Message(chunk, unit, prev, unit, True, "activation"))
            else:
                for src_group, src_unit, kind in self._producers.get((group, unit), ()):
                    msgs.append(Message(chunk, unit, g.last_chunk(src_group), src_unit, True, kind))
        return msgs

    def expected_keys(self) -> set[Key]:
        """Every compute action a complete plan must contain exactly once."""
        keys: set[Key] = set()
        for c in self.graph.chunks:
            for u in self.plan.units[c.group]:
                keys.add((c.id, Op.F, u.index))
                if (c.id, u.index) in self.split:
                    keys.add((c.id, Op.I, u.index))
                    keys.add((c.id, Op.W, u.index))
                else:
                    keys.add((c.id, Op.B, u.index))
        return keys
