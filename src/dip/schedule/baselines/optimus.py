"""Optimus baseline (coarse-grained bubble scheduling): encoder work placed into the LM pipeline's bubbles.

Separated groups: the vision encoder cut into ``pp`` chunks (one segment, one chunk per rank) and the
LM into ``pp * v`` chunks, both with near-equal layer counts (Optimus gives the encoder and the LM
their own parallel plans; every GPU holds a part of both). The LM runs Megatron's interleaved 1F1B.
Units are whole micro-batches; a micro-batch without images has no encoder unit. Vision-language
models only.

Each rank keeps the LM's order and merges the encoder's work into it: an encoder forward (in
micro-batch order) runs as soon as it is ready while the rank holds fewer than ``inflight`` encoder
micro-batches' activations; an encoder backward runs where the LM leaves the rank idle, or at once
when a forward waits for the memory it frees. With no bound every encoder forward runs before the
backbone (in its warm-up) and the encoder backwards fill its idle time and cool-down: Optimus's
coarse-grained schedule. A bound keeps the encoder's activations within memory.

The order is found by list-scheduling the ranks on estimated pass times (the cost model's, or unit
times ``F = 1, B = 2`` without one) with free communication, so it is a topological order of the
plan's dependencies: free of deadlocks by construction. A bound so small that the LM would wait for an
encoder forward that can never run raises :class:`BadInput` naming the smallest bound that works.
"""

from __future__ import annotations

from collections.abc import Callable

from dip.data.meta import BatchMeta, work_for
from dip.errors import BadInput
from dip.schedule.baselines.common import Chain, bwd, chain_of, fwd
from dip.schedule.baselines.interleaved import default_group, interleaved_order
from dip.schedule.ir import Action, Op, Plan, RankOrder, StageGraph, Unit
from dip.schedule.partition import max_chunks_per_rank, separated_even_partition
from dip.schedule.units import build_units
from dip.spec.model import ModelSpec

__all__ = ["DEFAULT_LM_CHUNKS", "encoder_and_lm", "min_inflight", "optimus_order", "optimus_plan"]

DEFAULT_LM_CHUNKS = 2
Duration = Callable[[Action], float]


def encoder_and_lm(model: ModelSpec) -> tuple[str, str]:
    """Names of the vision encoder and the LM; BadInput for models without a vision encoder."""
    vits, lms = model.modules_of_kind("vit"), model.modules_of_kind("decoder")
    if not vits or not lms or len(model.modules) != 2:
        raise BadInput(
            f"schedule optimus supports vision-language models only; model {model.name} has no vision encoder"
        )
    return vits[0].name, lms[0].name


def unit_duration(action: Action) -> float:
    """Pass times without a cost model: forward 1, backward 2."""
    return 1.0 if action.op is Op.F else 2.0


class _Deps:
    """Inputs of every action of the merged encoder + LM chains."""

    def __init__(self, encoder: Chain, lm: Chain, enc_units: list[Unit]):
        self.enc_pos = {c: k for k, c in enumerate(encoder.chunks)}
        self.lm_pos = {c: k for k, c in enumerate(lm.chunks)}
        self.encoder, self.lm = encoder, lm
        self.unit_of_mb = {u.mb: u.index for u in enc_units}
        self.mb_of_unit = {u.index: u.mb for u in enc_units}

    def inputs(self, a: Action) -> list[tuple[int, Op, int]]:
        enc, lm = self.encoder.chunks, self.lm.chunks
        if a.chunk in self.enc_pos:
            p = self.enc_pos[a.chunk]
            if a.op is Op.F:
                return [(enc[p - 1], Op.F, a.unit)] if p else []
            nxt = (enc[p + 1], Op.B, a.unit) if p + 1 < len(enc) else (lm[0], Op.B, self.mb_of_unit[a.unit])
            return [(a.chunk, Op.F, a.unit), nxt]
        p = self.lm_pos[a.chunk]
        if a.op is Op.F:
            if p:
                return [(lm[p - 1], Op.F, a.unit)]
            unit = self.unit_of_mb.get(a.unit)
            return [] if unit is None else [(enc[-1], Op.F, unit)]
        return [(a.chunk, Op.F, a.unit)] + ([(lm[p + 1], Op.B, a.unit)] if p + 1 < len(lm) else [])


def _list_schedule(
    encoder: Chain, lm: Chain, enc_units: list[Unit], inflight: int, duration: Duration
) -> RankOrder | None:
    """The merged order (module docstring); None when the bound leaves the LM waiting forever."""
    deps = _Deps(encoder, lm, enc_units)
    lm_order = interleaved_order(lm)
    pp = lm.pp
    enc_chunk = {r: encoder.chunk(r, 0) for r in range(pp)}
    end: dict[tuple[int, Op, int], float] = {}
    free = [0.0] * pp
    next_lm = [0] * pp
    next_fwd = [0] * pp  # index into enc_units of each rank's next encoder forward
    next_bwd = [0] * pp  # encoder backwards run in unit order too
    held = [0] * pp
    out: RankOrder = {r: [] for r in range(pp)}
    total = sum(len(a) for a in lm_order.values()) + 2 * pp * len(enc_units)

    def ready(a: Action) -> float | None:
        times = [end.get(k) for k in deps.inputs(a)]
        return None if any(t is None for t in times) else max(times, default=0.0)

    def choice(r: int) -> tuple[float, int, Action] | None:
        """(start, priority, action) of rank ``r``'s next action: the earliest start wins, then the
        priority: an encoder forward (within the bound), the LM's next action, an encoder backward
        (first instead when the bound holds a forward back)."""
        options: list[tuple[int, Action]] = []
        if next_fwd[r] < len(enc_units) and held[r] < inflight:
            options.append((0, fwd(enc_chunk[r], enc_units[next_fwd[r]].index)))
        if next_lm[r] < len(lm_order[r]):
            options.append((1, lm_order[r][next_lm[r]]))
        if next_bwd[r] < next_fwd[r]:
            waiting = next_fwd[r] < len(enc_units) and held[r] >= inflight
            options.append((-1 if waiting else 2, bwd(enc_chunk[r], enc_units[next_bwd[r]].index)))
        best = None
        for prio, a in options:
            t = ready(a)
            if t is not None:
                cand = (max(free[r], t), prio, a)
                best = cand if best is None or cand[:2] < best[:2] else best
        return best

    for _ in range(total):
        picks = [(c, r) for r in range(pp) if (c := choice(r)) is not None]
        if not picks:
            return None
        (start, _, a), r = min(picks, key=lambda x: (x[0][0], x[0][1], x[1]))
        end[a.key] = start + duration(a)
        free[r] = end[a.key]
        out[r].append(a)
        if a.chunk == enc_chunk[r]:
            if a.op is Op.F:
                next_fwd[r] += 1
                held[r] += 1
            else:
                next_bwd[r] += 1
                held[r] -= 1
        else:
            next_lm[r] += 1
    return out


def min_inflight(encoder: Chain, lm: Chain, enc_units: list[Unit], duration: Duration = unit_duration) -> int:
    """The smallest in-flight bound :func:`optimus_order` accepts (at least 1)."""
    lo, hi = 1, max(len(enc_units), 1)
    while lo < hi:
        mid = (lo + hi) // 2
        if _list_schedule(encoder, lm, enc_units, mid, duration) is None:
            lo = mid + 1
        else:
            hi = mid
    return lo


def optimus_order(
    encoder: Chain, lm: Chain, enc_units: list[Unit], inflight: int | None = None, duration: Duration = unit_duration
) -> RankOrder:
    """Per rank, the LM's interleaved 1F1B with the encoder's work merged in (module docstring);
    at most ``inflight`` encoder micro-batches in flight per rank (default: no bound)."""
    bound = max(len(enc_units), 1) if inflight is None else int(inflight)
    if bound < 1:
        raise BadInput(f"optimus: the encoder's in-flight bound must be >= 1, got {bound}")
    order = _list_schedule(encoder, lm, enc_units, bound, duration)
    if order is None:
        raise BadInput(
            f"optimus: a bound of {bound} in-flight encoder micro-batches starves the LM pipeline; "
            f"the smallest bound that works here is {min_inflight(encoder, lm, enc_units, duration)}"
        )
    return order


def pass_times(model: ModelSpec, graph: StageGraph, units, batch: BatchMeta, cost_model) -> Duration:
    """Forward / backward seconds of every (chunk, unit) from ``cost_model`` (whole micro-batches)."""
    cache: dict[tuple[int, Op, int], float] = {}
    unit_mb = {(g, u.index): u.mb for g, us in units.items() for u in us}

    def duration(a: Action) -> float:
        hit = cache.get(a.key)
        if hit is None:
            chunk = graph.chunks[a.chunk]
            mb = batch.microbatches[unit_mb[(chunk.group, a.unit)]]
            f = b = 0.0
            for p in chunk.parts:
                spec = model.module(p.module)
                cc = cost_model.chunk_costs(p.module, work_for(model, spec, mb), p.layer_start, p.layer_end)
                f, b = f + cc.f, b + cc.i + cc.w
            cache[(a.chunk, Op.F, a.unit)], cache[(a.chunk, Op.B, a.unit)] = f, b
            hit = cache[a.key]
        return hit

    return duration


def optimus_plan(
    model: ModelSpec,
    batch: BatchMeta,
    chunks: int | None = None,
    inflight: int | None = None,
    cost_model=None,
    schedule: str = "optimus",
) -> Plan:
    """The Optimus plan of ``batch`` with at most ``inflight`` encoder micro-batches in flight per rank
    (default: no bound, Optimus's coarse-grained schedule); pass times from ``cost_model`` when given."""
    vit, llm = encoder_and_lm(model)
    pp, m = model.parallel.pp, len(batch)
    if chunks is not None:
        v = int(chunks)
    else:
        v = 1 if m < pp else max_chunks_per_rank(model.module(llm).layers, pp, DEFAULT_LM_CHUNKS)
    graph = separated_even_partition(model, pp, {vit: 1, llm: v})
    units, flows = build_units(model, graph, batch)
    enc_units = list(units[vit])
    bound = max(len(enc_units), 1) if inflight is None else max(min(int(inflight), len(enc_units)), 1)
    duration = unit_duration if cost_model is None else pass_times(model, graph, units, batch, cost_model)
    order = optimus_order(
        chain_of(graph, vit, units[vit]), chain_of(graph, llm, units[llm]), enc_units, bound, duration
    )
    meta = {
        "partition": "separated-even",
        "chunks_per_rank": v,
        "batch": batch.index,
        "encoder_inflight": bound,
        "encoder_units": len(enc_units),
    }
    if v > 1:
        meta["interleave_group"] = default_group(pp, m)
    return Plan(graph, units, flows, order, schedule=schedule, meta=meta)
