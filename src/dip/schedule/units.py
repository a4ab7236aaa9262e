"""Units (sub-microbatches) and flows of one global batch, and small stage-graph builders.

A group that holds one splittable module (``vit`` images, ``dit`` clips) runs ``M_i = ceil(N_i / B_i)``
near-equal sub-microbatches per micro-batch (none for a micro-batch without instances); every other
group runs one unit per micro-batch. Flows follow the model's edges micro-batch by micro-batch.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

from dip.data.meta import BatchMeta, MicroBatchMeta
from dip.schedule.ir import Channel, Chunk, ChunkPart, Flow, StageGraph, Unit
from dip.spec.model import ModelSpec

__all__ = [
    "SPLITTABLE_KINDS",
    "build_units",
    "chain_channels",
    "group_modules",
    "instance_count",
    "linear_stage_graph",
    "module_graph",
    "split_evenly",
    "sub_microbatches",
    "uniform_units",
]

SPLITTABLE_KINDS = ("vit", "dit")


def instance_count(kind: str, mb: MicroBatchMeta) -> int:
    """Instances a module of ``kind`` runs for ``mb`` (images, clips; 1 packed sequence for a decoder)."""
    if kind == "vit":
        return mb.images
    if kind == "dit":
        return mb.clips
    return 1


def split_evenly(n: int, parts: int) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges of ``parts`` near-equal pieces of ``n`` (sizes differ by at most 1)."""
    base, extra = divmod(n, parts)
    out, start = [], 0
    for p in range(parts):
        size = base + (1 if p < extra else 0)
        out.append((start, start + size))
        start += size
    return out


def sub_microbatches(n: int, size: int | None) -> list[tuple[int, int]]:
    """Split ``n`` instances into ``ceil(n / size)`` near-equal ranges (one range if ``size`` is None)."""
    if n <= 0:
        return []
    if not size or size >= n:
        return [(0, n)]
    return split_evenly(n, math.ceil(n / size))


def group_modules(graph: StageGraph) -> dict[str, list[str]]:
    """Modules of each group, in chunk order."""
    out: dict[str, list[str]] = {}
    for g in graph.groups:
        mods: list[str] = []
        for c in graph.group_chunks(g):
            for p in c.parts:
                if p.module not in mods:
                    mods.append(p.module)
        out[g] = mods
    return out


def build_units(
    model: ModelSpec,
    graph: StageGraph,
    batch: BatchMeta | Sequence[MicroBatchMeta],
    sub_microbatch_sizes: Mapping[str, int | None] | None = None,
) -> tuple[dict[str, tuple[Unit, ...]], tuple[Flow, ...]]:
    """Units per group and the flows between groups for ``batch``.

    ``sub_microbatch_sizes[module] = B_i`` splits a group made of that single splittable module;
    without an entry the module runs whole micro-batches (still skipping micro-batches with no instances).
    """
    mbs = batch.microbatches if isinstance(batch, BatchMeta) else tuple(batch)
    sizes = dict(sub_microbatch_sizes or {})
    mods = group_modules(graph)
    units: dict[str, tuple[Unit, ...]] = {}
    by_mb: dict[str, dict[int, list[int]]] = {}
    for g, gm in mods.items():
        lst: list[Unit] = []
        per_mb: dict[int, list[int]] = {}
        kinds = [model.module(m).kind for m in gm]
        split = len(gm) == 1 and kinds[0] in SPLITTABLE_KINDS
        for k, mb in enumerate(mbs):
            if split:
                ranges = sub_microbatches(instance_count(kinds[0], mb), sizes.get(gm[0]))
            else:
                ranges = [(0, 0)]
            for start, stop in ranges:
                per_mb.setdefault(k, []).append(len(lst))
                lst.append(Unit(g, len(lst), k, start, stop))
        units[g] = tuple(lst)
        by_mb[g] = per_mb
    group_of = {m: g for g, gm in mods.items() for m in gm}
    flows: list[Flow] = []
    for e in model.edges:
        gs, gd = group_of.get(e.src), group_of.get(e.dst)
        if gs is None or gd is None or gs == gd:
            continue
        for k in range(len(mbs)):
            for su in by_mb[gs].get(k, ()):
                for du in by_mb[gd].get(k, ()):
                    flows.append(Flow(gs, su, gd, du, e.kind))
    return units, tuple(flows)


def uniform_units(group: str, microbatches: int) -> dict[str, tuple[Unit, ...]]:
    """One unit per micro-batch for a single group (schedule-only studies)."""
    return {group: tuple(Unit(group, i, i) for i in range(microbatches))}


def chain_channels(chunks: Sequence[Chunk]) -> list[Channel]:
    """Activation channels between consecutive chunks of each group."""
    by_group: dict[str, list[Chunk]] = {}
    for c in chunks:
        by_group.setdefault(c.group, []).append(c)
    out = []
    for cs in by_group.values():
        cs = sorted(cs, key=lambda c: c.index)
        out += [Channel(a.id, b.id, "activation") for a, b in itertools.pairwise(cs)]
    return out


def linear_stage_graph(
    pp: int, chunks_per_rank: int = 1, style: str = "loop", module: str = "model", layers_per_chunk: int = 1
) -> StageGraph:
    """One group of ``pp * chunks_per_rank`` chunks; ``loop`` puts chunk c on rank c mod pp,
    ``v`` goes down and back up (0,1,..,p-1,p-1,..,0)."""
    n = pp * chunks_per_rank
    chunks = []
    for c in range(n):
        if style == "loop":
            rank = c % pp
        elif style == "v":
            rank = c % pp if (c // pp) % 2 == 0 else pp - 1 - c % pp
        else:
            raise ValueError(f"unknown placement style {style!r}; valid: loop, v")
        part = ChunkPart(module, c * layers_per_chunk, (c + 1) * layers_per_chunk)
        chunks.append(Chunk(c, module, c, rank, (part,)))
    return StageGraph(tuple(chunks), tuple(chain_channels(chunks)), pp)


def module_graph(
    model: ModelSpec,
    pp: int,
    layouts: Mapping[str, Sequence[tuple[int, int]]],
    placement: Mapping[str, Sequence[int]] | None = None,
) -> StageGraph:
    """Separated partitioning: group per module, chunks ``layouts[module] = [(start, stop), ...]``
    (chunk i of a module on rank ``i mod pp`` unless ``placement`` says otherwise), plus the
    cross-module channels from the model's edges (last chunk of the producer -> first of the consumer)."""
    chunks: list[Chunk] = []
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for m in model.modules:
        if m.name not in layouts:
            continue
        ranks = list(placement[m.name]) if placement and m.name in placement else None
        for i, (a, b) in enumerate(layouts[m.name]):
            rank = ranks[i] if ranks else i % pp
            cid = len(chunks)
            first.setdefault(m.name, cid)
            last[m.name] = cid
            chunks.append(Chunk(cid, m.name, i, rank, (ChunkPart(m.name, a, b),)))
    channels = chain_channels(chunks)
    for e in model.edges:
        if e.src in last and e.dst in first:
            channels.append(Channel(last[e.src], first[e.dst], e.kind))
    return StageGraph(tuple(chunks), tuple(channels), pp)
