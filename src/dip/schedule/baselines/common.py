"""Shared pieces of the baseline order generators: a chain of chunks with its units, action helpers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dip.errors import BadInput
from dip.schedule.ir import Action, Op, StageGraph, Unit


@dataclass(frozen=True)
class Chain:
    """One group's chunks in chain order (position ``c`` on rank ``c mod pp``) and the units it runs."""

    chunks: tuple[int, ...]
    pp: int
    units: tuple[int, ...]

    def __post_init__(self):
        if self.pp < 1 or not self.chunks or len(self.chunks) % self.pp:
            raise BadInput(f"a chain of {len(self.chunks)} chunks cannot be spread over pp {self.pp} ranks evenly")

    @property
    def v(self) -> int:
        """Chunks per rank."""
        return len(self.chunks) // self.pp

    @property
    def m(self) -> int:
        """Units (micro-batches) of the chain."""
        return len(self.units)

    def chunk(self, rank: int, local: int) -> int:
        """Chunk id of the ``local``-th chunk of ``rank`` (chain position ``local * pp + rank``)."""
        return self.chunks[local * self.pp + rank]


def chain_of(graph: StageGraph, group: str, units: Sequence[Unit]) -> Chain:
    """The :class:`Chain` of ``group``; checks the loop placement the baselines assume."""
    chunks = graph.group_chunks(group)
    pp = graph.num_ranks
    for pos, c in enumerate(chunks):
        if c.rank != pos % pp:
            raise ValueError(f"chunk {c.id} of group {group} is on rank {c.rank}, expected {pos % pp} (loop placement)")
    return Chain(tuple(c.id for c in chunks), pp, tuple(u.index for u in units))


def fwd(chunk: int, unit: int) -> Action:
    return Action(chunk, Op.F, unit)


def bwd(chunk: int, unit: int) -> Action:
    return Action(chunk, Op.B, unit)


def bwd_input(chunk: int, unit: int) -> Action:
    return Action(chunk, Op.I, unit)


def bwd_weight(chunk: int, unit: int) -> Action:
    return Action(chunk, Op.W, unit)


def one_chunk_per_rank(chain: Chain, schedule: str) -> None:
    """Raise a clear error for schedules that run exactly one chunk per rank."""
    if chain.v != 1:
        raise BadInput(
            f"schedule {schedule} runs one chunk per rank, got {chain.v} "
            f"(use interleaved or megatron for several chunks per rank)"
        )
