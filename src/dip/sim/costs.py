"""Costs of every (chunk, unit) stage of a plan structure, the input of :mod:`dip.sim.taskgraph`.

A *stage* is one chunk running one unit. Its passes cost ``f`` (forward), ``i`` (backward-input,
recomputation of the chosen memory strategies included) and ``w`` (backward-weight) seconds; an unsplit
backward ``B`` costs ``i + w``. ``act_bytes`` are allocated when ``F`` starts and freed when the
backward ends: at the end of ``B``, or at the end of ``W`` when the backward is split (the
backward-input pass frees part of the saved tensors in reality; the simulator keeps all of them
until ``W``, an upper bound).

``message_bytes[key]`` is keyed by the *forward* :class:`~dip.schedule.deps.MessageKey`; the
gradient sent back along the same edge has the same size. All byte counts are per GPU of a
tensor-parallel group.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from dip.data.meta import BatchMeta, MicroBatchMeta, ModuleWork, work_for
from dip.schedule.deps import MessageKey
from dip.schedule.ir import Chunk, ChunkPart, Flow, StageGraph, Unit
from dip.spec.model import ModelSpec

__all__ = ["StageCosts", "StageKey", "batch_flops", "stage_costs", "stage_keys", "uniform_stage_costs"]

StageKey = tuple[int, int]


@dataclass
class StageCosts:
    """Per-stage pass times and activation bytes, message sizes and per-rank static memory.

    Arrays ``f``, ``i``, ``w`` (seconds) and ``act_bytes`` are indexed like ``keys`` (``stage_index``
    maps a (chunk, unit) to its position). ``static_bytes`` / ``grad_bytes`` (all-reduce-equivalent
    bytes of the data-parallel synchronisation): per rank, per GPU.
    ``flops_total``: model FLOPs of the whole batch (for MFU). ``modules``: chunk -> module label.
    """

    keys: list[StageKey]
    f: np.ndarray
    i: np.ndarray
    w: np.ndarray
    act_bytes: np.ndarray
    message_bytes: dict[MessageKey, float] = field(default_factory=dict)
    static_bytes: np.ndarray = field(default_factory=lambda: np.zeros(0))
    grad_bytes: np.ndarray = field(default_factory=lambda: np.zeros(0))
    flops_total: float = 0.0
    tp: int = 1
    modules: dict[int, str] = field(default_factory=dict)
    stage_index: dict[StageKey, int] = field(default_factory=dict)

    def __post_init__(self):
        if not self.stage_index:
            self.stage_index = {k: n for n, k in enumerate(self.keys)}

    @property
    def b(self) -> np.ndarray:
        """Full backward seconds (``i + w``)."""
        return self.i + self.w

    def stage(self, chunk: int, unit: int) -> int:
        return self.stage_index[(chunk, unit)]

    def bytes_of(self, key: MessageKey) -> float:
        """Bytes of one message; a gradient is as large as the forward message it answers."""
        return float(self.message_bytes.get(key.forward(), 0.0))


def stage_keys(graph: StageGraph, units: Mapping[str, Sequence[Unit]]) -> list[StageKey]:
    """Every (chunk, unit) of the structure, chunk-major."""
    return [(c.id, u.index) for c in graph.chunks for u in units[c.group]]


def uniform_stage_costs(
    graph: StageGraph, units: Mapping[str, Sequence[Unit]], f: float, i: float, w: float, act_bytes: float = 1.0
) -> StageCosts:
    """Every chunk pass costs ``f``/``i``/``w``; no communication; ``act_bytes`` per (chunk, unit)."""
    keys = stage_keys(graph, units)
    n = len(keys)
    return StageCosts(
        keys=keys,
        f=np.full(n, float(f)),
        i=np.full(n, float(i)),
        w=np.full(n, float(w)),
        act_bytes=np.full(n, float(act_bytes)),
        static_bytes=np.zeros(graph.num_ranks),
        grad_bytes=np.zeros(graph.num_ranks),
        modules={c.id: "+".join(c.modules) for c in graph.chunks},
    )


def _unit_slice(unit: Unit) -> slice | None:
    """Instances of a split unit; None (the whole micro-batch) for an unsplit one."""
    return slice(unit.start, unit.stop) if unit.stop > unit.start else None


class _WorkCache:
    """``work_for`` results per (module, micro-batch, instance range) and chunk costs per
    (module, unit, has pre, has post, layers, strategies): blocks are identical, so chunks of a module
    with as many layers cost the same."""

    def __init__(self, model: ModelSpec, mbs: Sequence[MicroBatchMeta], cost_model):
        self.model, self.mbs, self.cost_model = model, mbs, cost_model
        self._works: dict[tuple[str, int, int, int], ModuleWork] = {}
        self._chunks: dict[tuple, object] = {}
        self._layers = {m.name: m.layers for m in model.modules}

    def get(self, module: str, unit: Unit) -> ModuleWork:
        key = (module, unit.mb, unit.start, unit.stop)
        hit = self._works.get(key)
        if hit is None:
            spec = self.model.module(module)
            hit = self._works[key] = work_for(self.model, spec, self.mbs[unit.mb], _unit_slice(unit))
        return hit

    def chunk(self, part: ChunkPart, unit: Unit, strategies: tuple[str, ...] | str):
        n = part.layers
        key = (
            part.module,
            unit.mb,
            unit.start,
            unit.stop,
            part.layer_start == 0,
            part.layer_end == self._layers[part.module],
            n,
            strategies,
        )
        hit = self._chunks.get(key)
        if hit is None:
            hit = self._chunks[key] = self.cost_model.chunk_costs(
                part.module, self.get(part.module, unit), part.layer_start, part.layer_end, strategies
            )
        return hit


_FLOPS: weakref.WeakKeyDictionary[object, dict[MicroBatchMeta, float]] = weakref.WeakKeyDictionary()


def batch_flops(cost_model, mbs: Sequence[MicroBatchMeta]) -> float:
    """Model FLOPs of ``mbs`` (cached per cost model and micro-batch)."""
    try:
        cache = _FLOPS.setdefault(cost_model, {})
    except TypeError:  # not weak-referenceable
        cache = {}
    total = 0.0
    for mb in mbs:
        v = cache.get(mb)
        if v is None:
            v = cache[mb] = float(cost_model.microbatch_flops(mb))
        total += v
    return total


def _chunk_strategies(strategies, chunk: Chunk, unit: int) -> tuple[str, ...] | str:
    got = strategies.get((chunk.id, unit)) if strategies else None
    return got if got is not None else "none"


def stage_costs(
    graph: StageGraph,
    units: Mapping[str, Sequence[Unit]],
    flows: Sequence[Flow],
    model: ModelSpec,
    cost_model,
    batch: BatchMeta | Sequence[MicroBatchMeta],
    strategies: Mapping[StageKey, Sequence[str]] | None = None,
) -> StageCosts:
    """Costs of every (chunk, unit) from ``cost_model`` (a :class:`dip.cost.CostModel`).

    A chunk's cost is the sum over its parts of ``chunk_costs(module, work, start, end, strategies)``,
    where ``work`` is the unit's share of the micro-batch (its instances for a split unit). The cost
    model caches per (module, work); this function caches ``work_for`` per (module, unit).
    """
    mbs = batch.microbatches if isinstance(batch, BatchMeta) else tuple(batch)
    works = _WorkCache(model, mbs, cost_model)
    keys = stage_keys(graph, units)
    n = len(keys)
    f, i, w, act = (np.zeros(n) for _ in range(4))
    k = 0
    for c in graph.chunks:
        for u in units[c.group]:
            strat = _chunk_strategies(strategies, c, u.index)
            offset = 0
            for p in c.parts:
                part_strat = strat if isinstance(strat, str) else tuple(strat[offset : offset + p.layers])
                offset += p.layers
                cc = works.chunk(p, u, part_strat)
                f[k] += cc.f
                i[k] += cc.i
                w[k] += cc.w
                act[k] += cc.act_bytes
            k += 1
    costs = StageCosts(
        keys=keys,
        f=f,
        i=i,
        w=w,
        act_bytes=act,
        message_bytes=_message_bytes(graph, units, flows, model, cost_model, works),
        static_bytes=_per_rank(graph, model, cost_model.static_bytes),
        flops_total=batch_flops(cost_model, mbs),
        tp=int(getattr(cost_model, "tp", 1)),
        modules={c.id: "+".join(c.modules) for c in graph.chunks},
    )
    costs.grad_bytes = _per_rank(graph, model, cost_model.dp_sync_bytes)
    return costs


def _message_bytes(
    graph: StageGraph, units, flows, model: ModelSpec, cost_model, works: _WorkCache
) -> dict[MessageKey, float]:
    """Forward message sizes: activations inside a group, module outputs along the flows."""
    out: dict[MessageKey, float] = {}
    for c in graph.chunks:
        nxt = graph.next_in_group(c.id)
        if nxt is None:
            continue
        last = c.parts[-1]
        spec = model.module(last.module)
        ends_module = last.layer_end == spec.layers
        for u in units[c.group]:
            work = works.get(last.module, u)
            if ends_module and hasattr(cost_model, "output_bytes"):
                nbytes = cost_model.output_bytes(last.module, work) or cost_model.boundary_bytes(last.module, work)
            else:
                nbytes = cost_model.boundary_bytes(last.module, work)
            out[MessageKey(c.id, u.index, nxt, u.index)] = float(nbytes)
    unit_of = {g: {u.index: u for u in us} for g, us in units.items()}
    for fl in flows:
        src = graph.chunks[graph.last_chunk(fl.src_group)]
        dst = graph.first_chunk(fl.dst_group)
        module = src.parts[-1].module
        work = works.get(module, unit_of[fl.src_group][fl.src_unit])
        nbytes = cost_model.output_bytes(module, work) if hasattr(cost_model, "output_bytes") else 0.0
        out[MessageKey(src.id, fl.src_unit, dst, fl.dst_unit)] = float(
            nbytes or cost_model.boundary_bytes(module, work)
        )
    return out


def _per_rank(graph: StageGraph, model: ModelSpec, chunk_bytes) -> np.ndarray:
    """Sum of ``chunk_bytes(module, layer_start, layer_end, has_pre, has_post)`` over every rank's
    chunk parts (per GPU): the cost model's static bytes or data-parallel synchronisation bytes."""
    out = np.zeros(graph.num_ranks)
    for c in graph.chunks:
        for p in c.parts:
            layers = model.module(p.module).layers
            out[c.rank] += chunk_bytes(p.module, p.layer_start, p.layer_end, p.layer_start == 0, p.layer_end == layers)
    return out
