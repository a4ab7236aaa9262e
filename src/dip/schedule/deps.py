"""Data dependencies between compute actions, derived from the stage graph and the flows, and the one
identity of a message (:class:`MessageKey`).

For a chunk ``c`` of group ``g`` and unit ``u``:

* ``F(c, u)`` needs ``F(prev(c), u)``; the first chunk of ``g`` needs ``F(last(src), u')`` for every
  flow ``src:u' -> g:u``.
* ``B(c, u)`` / ``I(c, u)`` needs ``F(c, u)`` and the backward-input of ``next(c)`` for ``u``; the last
  chunk of ``g`` needs the backward-input of ``first(dst)`` for every flow ``g:u -> dst:u''``.
* ``W(c, u)`` needs ``I(c, u)``.

"Backward-input" is ``I`` where the plan splits the backward of that (chunk, unit), ``B`` otherwise.
Every cross-chunk dependency is one message on a channel; :class:`Message` names it. Lowering, the shape
plan, the simulator's message sizes and the runtime all key messages by :class:`MessageKey`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from dip.schedule.ir import Action, Flow, Op, Plan, StageGraph, Unit

__all__ = ["DependencyIndex", "Key", "Message", "MessageKey"]

Key = tuple[int, Op, int]

_KEY_RE = re.compile(r"^(?P<dir>[FB]):(?P<sc>\d+)\.(?P<su>\d+)->(?P<dc>\d+)\.(?P<du>\d+)$")
_SENDS = (Op.SEND_F, Op.SEND_B)
_RECVS = (Op.RECV_F, Op.RECV_B)


@dataclass(frozen=True, slots=True, order=True)
class MessageKey:
    """The identity of one message: unit ``src_unit`` of chunk ``src_chunk`` sends to unit ``dst_unit``
    of chunk ``dst_chunk``; ``backward`` for a gradient. Text form ``"F:3.1->4.1"`` / ``"B:4.1->3.1"``.

    A gradient travels the reverse way of the forward message it answers: :meth:`reply` turns one into
    the other, :meth:`forward` gives the forward message a key belongs to.
    """

    src_chunk: int
    src_unit: int
    dst_chunk: int
    dst_unit: int
    backward: bool = False

    def reply(self) -> MessageKey:
        """The message going the other way along the same edge (a forward's gradient, or vice versa)."""
        return MessageKey(self.dst_chunk, self.dst_unit, self.src_chunk, self.src_unit, not self.backward)

    def forward(self) -> MessageKey:
        """The forward message this key is (or answers)."""
        return self.reply() if self.backward else self

    def describe(self) -> str:
        """Words for error messages: ``activation chunk 3.1 -> chunk 4.1``."""
        what = "gradient" if self.backward else "activation"
        return f"{what} chunk {self.src_chunk}.{self.src_unit} -> chunk {self.dst_chunk}.{self.dst_unit}"

    def __str__(self) -> str:
        d = "B" if self.backward else "F"
        return f"{d}:{self.src_chunk}.{self.src_unit}->{self.dst_chunk}.{self.dst_unit}"

    @staticmethod
    def parse(text: str) -> MessageKey:
        """Inverse of ``str(key)``."""
        m = _KEY_RE.match(text.strip())
        if not m:
            raise ValueError(f"not a message key: {text!r} (expected e.g. 'F:3.1->4.1')")
        return MessageKey(int(m["sc"]), int(m["su"]), int(m["dc"]), int(m["du"]), m["dir"] == "B")

    @staticmethod
    def of(action: Action) -> MessageKey:
        """The message a SEND or RECV action carries."""
        if action.peer_chunk is None or action.unit is None or action.peer_unit is None:
            raise ValueError(f"{action} is not a SEND/RECV action naming its peer (e.g. '7SEND_F2:8.1')")
        if action.op in _SENDS:
            return MessageKey(action.chunk, action.unit, action.peer_chunk, action.peer_unit, action.op is Op.SEND_B)
        if action.op in _RECVS:
            return MessageKey(action.peer_chunk, action.peer_unit, action.chunk, action.unit, action.op is Op.RECV_B)
        raise ValueError(f"{action} is not a SEND/RECV action")


@dataclass(frozen=True, slots=True)
class Message:
    """A message and its channel ``kind`` (``activation``, ``image_embeddings``, ``text_conditioning``)."""

    key: MessageKey
    kind: str

    @property
    def src_chunk(self) -> int:
        return self.key.src_chunk

    @property
    def src_unit(self) -> int:
        return self.key.src_unit

    @property
    def dst_chunk(self) -> int:
        return self.key.dst_chunk

    @property
    def dst_unit(self) -> int:
        return self.key.dst_unit

    @property
    def backward(self) -> bool:
        return self.key.backward

    def send_action(self) -> Action:
        k = self.key
        return Action(k.src_chunk, Op.SEND_B if k.backward else Op.SEND_F, k.src_unit, k.dst_chunk, k.dst_unit)

    def recv_action(self) -> Action:
        k = self.key
        return Action(k.dst_chunk, Op.RECV_B if k.backward else Op.RECV_F, k.dst_unit, k.src_chunk, k.src_unit)


def _message(src: int, su: int, dst: int, du: int, backward: bool, kind: str) -> Message:
    return Message(MessageKey(src, su, dst, du, backward), kind)


class DependencyIndex:
    """Dependencies of every compute action of a plan structure (see module docstring).

    Build it once per plan (:meth:`of_plan`) and hand it to the lowering, the validator, the shape plan
    and the runtime, which all read it.
    """

    def __init__(
        self,
        graph: StageGraph,
        units: Mapping[str, Sequence[Unit]],
        flows: Iterable[Flow],
        split: Iterable[tuple[int, int]] = (),
    ):
        self.graph = graph
        self.units = units
        self.split = frozenset(split)
        self._producers: dict[tuple[str, int], list[tuple[str, int, str]]] = {}
        self._consumers: dict[tuple[str, int], list[tuple[str, int, str]]] = {}
        for f in flows:
            self._producers.setdefault((f.dst_group, f.dst_unit), []).append((f.src_group, f.src_unit, f.kind))
            self._consumers.setdefault((f.src_group, f.src_unit), []).append((f.dst_group, f.dst_unit, f.kind))

    @classmethod
    def of_plan(cls, plan: Plan) -> DependencyIndex:
        """The index of ``plan``; a (chunk, unit) splits its backward where the order holds its ``I``."""
        split = {(a.chunk, a.unit) for acts in plan.order.values() for a in acts if a.op is Op.I}
        return cls(plan.graph, plan.units, plan.flows, split)

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
                out.append(((prev, Op.F, unit), _message(prev, unit, chunk, unit, False, "activation")))
            else:
                for src_group, src_unit, kind in self._producers.get((group, unit), ()):
                    src = g.last_chunk(src_group)
                    out.append(((src, Op.F, src_unit), _message(src, src_unit, chunk, unit, False, kind)))
        elif op is Op.W:
            out.append(((chunk, Op.I, unit), None))
        else:  # B or I
            out.append(((chunk, Op.F, unit), None))
            nxt = g.next_in_group(chunk)
            if nxt is not None:
                out.append(((nxt, self.bwd_op(nxt, unit), unit), _message(nxt, unit, chunk, unit, True, "activation")))
            else:
                for dst_group, dst_unit, kind in self._consumers.get((group, unit), ()):
                    dst = g.first_chunk(dst_group)
                    out.append(
                        ((dst, self.bwd_op(dst, dst_unit), dst_unit), _message(dst, dst_unit, chunk, unit, True, kind))
                    )
        return out

    def outputs(self, chunk: int, op: Op, unit: int) -> list[Message]:
        """Messages a compute action produces (sent once it finishes)."""
        g = self.graph
        group = g.chunks[chunk].group
        msgs: list[Message] = []
        if op is Op.F:
            nxt = g.next_in_group(chunk)
            if nxt is not None:
                msgs.append(_message(chunk, unit, nxt, unit, False, "activation"))
            else:
                for dst_group, dst_unit, kind in self._consumers.get((group, unit), ()):
                    msgs.append(_message(chunk, unit, g.first_chunk(dst_group), dst_unit, False, kind))
        elif op in (Op.B, Op.I):
            prev = g.prev_in_group(chunk)
            if prev is not None:
                msgs.append(_message(chunk, unit, prev, unit, True, "activation"))
            else:
                for src_group, src_unit, kind in self._producers.get((group, unit), ()):
                    msgs.append(_message(chunk, unit, g.last_chunk(src_group), src_unit, True, kind))
        return msgs

    def forward_messages(self) -> list[Message]:
        """Every forward message of the structure, in chunk-major, unit order."""
        out: list[Message] = []
        for c in self.graph.chunks:
            for u in self.units[c.group]:
                out += self.outputs(c.id, Op.F, u.index)
        return out

    def expected_keys(self) -> set[Key]:
        """Every compute action a complete plan must contain exactly once."""
        keys: set[Key] = set()
        for c in self.graph.chunks:
            for u in self.units[c.group]:
                keys.add((c.id, Op.F, u.index))
                if (c.id, u.index) in self.split:
                    keys.add((c.id, Op.I, u.index))
                    keys.add((c.id, Op.W, u.index))
                else:
                    keys.add((c.id, Op.B, u.index))
        return keys
