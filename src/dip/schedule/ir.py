"""The plan IR: stage graph, units, actions and the per-step :class:`Plan`.

[Note: one plan] The planner builds a :class:`Plan`, the simulator times it, the validator proves it
safe, the runtime executes its lowered form and the trace draws it. There is no second schedule
representation anywhere in DIP.

Vocabulary
  * *chunk*: consecutive layers of one or more modules placed on one rank (``Chunk.parts``). Under
    DIP's separated partitioning every chunk holds layers of exactly one module; the Megatron-style
    baselines mix modules in one chunk.
  * *group*: a chain of chunks that share one unit namespace (for DIP: one group per module; for the
    mixed baselines: one group ``"all"``). Chunk ``Chunk.index`` is its position along the chain.
  * *unit*: what a group runs once — a (sub-)micro-batch: micro-batch ``mb``, instances
    ``[start, stop)`` of the group's split module (images of a ViT, clips of a DiT).
  * *flow*: producer unit -> consumer unit across groups (several ViT sub-microbatches feed one LM
    micro-batch; one LM micro-batch feeds several DiT sub-microbatches).
  * *action*: ``(chunk, op, unit)``; compact text ``"12F3"`` = chunk 12, forward, unit 3.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum

__all__ = [
    "COMPUTE_OPS",
    "Action",
    "Channel",
    "Chunk",
    "ChunkPart",
    "Flow",
    "Op",
    "Plan",
    "RankOrder",
    "StageGraph",
    "Unit",
    "actions",
    "format_actions",
    "order_from_text",
]


class Op(str, Enum):  # noqa: UP042 - str(op) keeps the enum's repr form; the text form is op.value
    """Action kinds. Compute: F, B (full backward), I (backward-input), W (backward-weight)."""

    F = "F"
    B = "B"
    I = "I"
    W = "W"
    SEND_F = "SEND_F"
    RECV_F = "RECV_F"
    SEND_B = "SEND_B"
    RECV_B = "RECV_B"
    REDUCE_GRAD = "REDUCE_GRAD"

    @property
    def is_compute(self) -> bool:
        return self in _COMPUTE

    @property
    def is_comm(self) -> bool:
        return self in _COMM

    @property
    def is_backward(self) -> bool:
        return self in _BACKWARD


COMPUTE_OPS = (Op.F, Op.B, Op.I, Op.W)
_COMPUTE = frozenset(COMPUTE_OPS)
_COMM = frozenset((Op.SEND_F, Op.RECV_F, Op.SEND_B, Op.RECV_B))
_BACKWARD = frozenset((Op.B, Op.I, Op.W))
_OPS_BY_LEN = sorted(Op, key=lambda o: -len(o.value))
_ACTION_RE = re.compile(
    r"^(?P<chunk>\d+)(?P<op>" + "|".join(o.value for o in _OPS_BY_LEN) + r")"
    r"(?P<unit>\d+)?(?::(?P<peer_chunk>\d+)\.(?P<peer_unit>\d+))?$"
)


@dataclass(frozen=True, slots=True)
class Action:
    """One step of a rank's program.

    Compute actions: ``Action(chunk, op, unit)`` -> ``"3F1"``. Communication actions also name the
    peer chunk and the peer's unit: ``Action(7, SEND_F, 2, 8, 1)`` -> ``"7SEND_F2:8.1"`` (chunk 7
    sends its forward output of unit 2 to chunk 8's unit 1). ``REDUCE_GRAD`` has no unit: ``"3REDUCE_GRAD"``.
    """

    chunk: int
    op: Op
    unit: int | None = None
    peer_chunk: int | None = None
    peer_unit: int | None = None

    def __str__(self) -> str:
        s = f"{self.chunk}{self.op.value}{'' if self.unit is None else self.unit}"
        if self.peer_chunk is not None:
            s += f":{self.peer_chunk}.{self.peer_unit}"
        return s

    __repr__ = __str__

    @staticmethod
    def parse(text: str) -> Action:
        """Inverse of ``str(action)``."""
        m = _ACTION_RE.match(text.strip())
        if not m:
            raise ValueError(f"not an action: {text!r} (expected e.g. '3F1', '3I0', '7SEND_F2:8.1', '3REDUCE_GRAD')")
        unit = m["unit"]
        peer = m["peer_chunk"]
        return Action(
            int(m["chunk"]),
            Op(m["op"]),
            None if unit is None else int(unit),
            None if peer is None else int(peer),
            None if peer is None else int(m["peer_unit"]),
        )

    @property
    def key(self) -> tuple[int, Op, int | None]:
        return (self.chunk, self.op, self.unit)


def actions(text: str) -> list[Action]:
    """Parse a whitespace-separated list of actions (golden-test fixtures)."""
    return [Action.parse(t) for t in text.split()]


def format_actions(acts: Iterable[Action]) -> str:
    return " ".join(str(a) for a in acts)


@dataclass(frozen=True, slots=True)
class ChunkPart:
    """Layers ``[layer_start, layer_end)`` of ``module`` (``layer_start == 0`` includes the module's
    pre-processing, ``layer_end == module.layers`` its post-processing/loss)."""

    module: str
    layer_start: int
    layer_end: int

    @property
    def layers(self) -> int:
        return self.layer_end - self.layer_start


@dataclass(frozen=True, slots=True)
class Chunk:
    """A model chunk (pipeline stage): ``id`` is its global stage index, ``index`` its position in its group."""

    id: int
    group: str
    index: int
    rank: int
    parts: tuple[ChunkPart, ...]

    @property
    def modules(self) -> tuple[str, ...]:
        return tuple(p.module for p in self.parts)

    @property
    def label(self) -> str:
        return "+".join(f"{p.module}[{p.layer_start}:{p.layer_end}]" for p in self.parts)


@dataclass(frozen=True, slots=True)
class Channel:
    """A typed data edge between two chunks: ``activation`` within a group, or a cross-module kind
    (``image_embeddings``, ``text_conditioning``) from a group's last chunk to another group's first."""

    src: int
    dst: int
    kind: str = "activation"


@dataclass(frozen=True)
class StageGraph:
    """Chunks, their placement (data, not a modulo rule) and the channels between them."""

    chunks: tuple[Chunk, ...]
    channels: tuple[Channel, ...]
    num_ranks: int
    groups: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.groups:
            seen: list[str] = []
            for c in self.chunks:
                if c.group not in seen:
                    seen.append(c.group)
            object.__setattr__(self, "groups", tuple(seen))
        for i, c in enumerate(self.chunks):
            if c.id != i:
                raise ValueError(f"chunk ids must be 0..n-1 in order; chunk {i} has id {c.id}")
            if not 0 <= c.rank < self.num_ranks:
                raise ValueError(f"chunk {c.id} on rank {c.rank}, outside 0..{self.num_ranks - 1}")

    def group_chunks(self, group: str) -> list[Chunk]:
        return sorted((c for c in self.chunks if c.group == group), key=lambda c: c.index)

    def rank_chunks(self, rank: int) -> list[Chunk]:
        return [c for c in self.chunks if c.rank == rank]

    def next_in_group(self, chunk: int) -> int | None:
        c = self.chunks[chunk]
        chain = self._chains()[c.group]
        return chain[c.index + 1] if c.index + 1 < len(chain) else None

    def prev_in_group(self, chunk: int) -> int | None:
        c = self.chunks[chunk]
        return self._chains()[c.group][c.index - 1] if c.index > 0 else None

    def first_chunk(self, group: str) -> int:
        return self._chains()[group][0]

    def last_chunk(self, group: str) -> int:
        return self._chains()[group][-1]

    def _chains(self) -> dict[str, list[int]]:
        chains = self.__dict__.get("_chain_cache")
        if chains is None:
            chains = {g: [c.id for c in self.group_chunks(g)] for g in self.groups}
            object.__setattr__(self, "_chain_cache", chains)
        return chains

    def stage_to_rank(self) -> list[int]:
        return [c.rank for c in self.chunks]


@dataclass(frozen=True, slots=True)
class Unit:
    """One (sub-)micro-batch of a group: micro-batch ``mb``, instances ``[start, stop)`` of the
    group's split module (``start = stop = 0`` when the group is not split, e.g. a decoder)."""

    group: str
    index: int
    mb: int
    start: int = 0
    stop: int = 0

    @property
    def instances(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True, slots=True)
class Flow:
    """Producer unit ``src_unit`` of group ``src_group`` feeds consumer unit ``dst_unit`` of ``dst_group``."""

    src_group: str
    src_unit: int
    dst_group: str
    dst_unit: int
    kind: str


RankOrder = dict[int, list[Action]]


@dataclass
class Plan:
    """Everything one training step needs: stage graph, units and flows, per-rank compute order,
    per-(chunk, unit) memory strategy, and the batch it was made for.

    ``order`` is compute-only (F/B/I/W); :mod:`dip.schedule.lowering` derives the per-rank programs
    with SEND/RECV. ``strategies[(chunk, unit)]`` is a tuple with one memory strategy per layer of the
    chunk (``"none"``, ``"selective"``, ``"full"``, ``"offload"``); missing entries mean ``"none"``.
    """

    graph: StageGraph
    units: dict[str, tuple[Unit, ...]]
    flows: tuple[Flow, ...]
    order: RankOrder
    strategies: dict[tuple[int, int], tuple[str, ...]] = field(default_factory=dict)
    schedule: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def num_ranks(self) -> int:
        return self.graph.num_ranks

    def strategy(self, chunk: int, unit: int) -> tuple[str, ...]:
        got = self.strategies.get((chunk, unit))
        if got is not None:
            return got
        layers = sum(p.layers for p in self.graph.chunks[chunk].parts)
        return ("none",) * layers

    def split_backward(self) -> bool:
        """True when the plan uses separate I and W actions."""
        return any(a.op is Op.I for acts in self.order.values() for a in acts)

    def num_actions(self) -> int:
        return sum(len(v) for v in self.order.values())

    def text(self) -> dict[int, str]:
        return {r: format_actions(v) for r, v in sorted(self.order.items())}


def order_from_text(rows: Mapping[int, str] | list[str]) -> RankOrder:
    """``{rank: "0F0 0F1 0B0 ..."}`` (or a list indexed by rank) -> ``RankOrder``."""
    items = rows.items() if isinstance(rows, Mapping) else enumerate(rows)
    return {int(r): actions(t) for r, t in items}
