"""Small hand-built plans shared by the schedule tests (compute orders are written inline as text)."""

from __future__ import annotations

from dip.schedule.ir import Channel, Chunk, ChunkPart, Flow, Plan, StageGraph, Unit, order_from_text
from dip.schedule.units import linear_stage_graph, uniform_units


def linear(pp: int, m: int, rows, chunks_per_rank: int = 1, style: str = "loop") -> Plan:
    """One group ``model`` of ``pp * chunks_per_rank`` chunks, ``m`` units."""
    return Plan(linear_stage_graph(pp, chunks_per_rank, style), uniform_units("model", m), (), order_from_text(rows))


def _chunk(cid: int, group: str, index: int, rank: int) -> Chunk:
    return Chunk(cid, group, index, rank, (ChunkPart(group, index, index + 1),))


def fan_in(rows, vit_ranks=(0, 1), llm_ranks=(0, 1)) -> Plan:
    """ViT chunks then LM chunks; ViT sub-microbatches 0 and 1 (images [0,2) and [2,4) of micro-batch 0)
    both feed LM micro-batch 0 over an ``image_embeddings`` channel."""
    chunks = [_chunk(i, "vit", i, r) for i, r in enumerate(vit_ranks)]
    chunks += [_chunk(len(chunks) + i, "llm", i, r) for i, r in enumerate(llm_ranks)]
    nv = len(vit_ranks)
    channels = [Channel(i, i + 1) for i in range(nv - 1)]
    channels += [Channel(nv - 1, nv, "image_embeddings")]
    channels += [Channel(nv + i, nv + i + 1) for i in range(len(llm_ranks) - 1)]
    graph = StageGraph(tuple(chunks), tuple(channels), 2)
    units = {"vit": (Unit("vit", 0, 0, 0, 2), Unit("vit", 1, 0, 2, 4)), "llm": (Unit("llm", 0, 0),)}
    flows = (Flow("vit", 0, "llm", 0, "image_embeddings"), Flow("vit", 1, "llm", 0, "image_embeddings"))
    return Plan(graph, units, flows, order_from_text(rows))


def fan_out(rows) -> Plan:
    """LM chunk 0 (rank 0) feeds DiT chunks 1 (rank 1) and 2 (rank 0): LM micro-batch 0 conditions DiT
    sub-microbatches 0 and 1 (clips [0,1) and [1,2)) over a ``text_conditioning`` channel."""
    chunks = (_chunk(0, "llm", 0, 0), _chunk(1, "dit", 0, 1), _chunk(2, "dit", 1, 0))
    channels = (Channel(0, 1, "text_conditioning"), Channel(1, 2))
    graph = StageGraph(chunks, channels, 2)
    units = {"llm": (Unit("llm", 0, 0),), "dit": (Unit("dit", 0, 0, 0, 1), Unit("dit", 1, 0, 1, 2))}
    flows = (Flow("llm", 0, "dit", 0, "text_conditioning"), Flow("llm", 0, "dit", 1, "text_conditioning"))
    return Plan(graph, units, flows, order_from_text(rows))


def random_order(plan: Plan, rng, split_p: float = 0.5) -> Plan:
    """``plan`` with a random executable compute order: repeatedly run a random ready action (its
    inputs done) on its chunk's rank; each (chunk, unit) splits its backward with probability ``split_p``."""
    from dataclasses import replace

    from dip.schedule.deps import DependencyIndex
    from dip.schedule.ir import Action, Op

    graph = plan.graph
    keys = []
    for c in graph.chunks:
        for u in plan.units[c.group]:
            keys.append((c.id, Op.F, u.index))
            if rng.random() < split_p:
                keys += [(c.id, Op.I, u.index), (c.id, Op.W, u.index)]
            else:
                keys.append((c.id, Op.B, u.index))
    draft: dict[int, list[Action]] = {}
    for k in keys:
        draft.setdefault(graph.chunks[k[0]].rank, []).append(Action(*k))
    deps = DependencyIndex.of_plan(replace(plan, order=draft))
    done: set = set()
    left = list(keys)
    order: dict[int, list[Action]] = {r: [] for r in range(graph.num_ranks)}
    while left:
        ready = [k for k in left if all(i in done for i, _ in deps.inputs(*k))]
        k = ready[rng.randrange(len(ready))]
        left.remove(k)
        done.add(k)
        order[graph.chunks[k[0]].rank].append(Action(*k))
    return replace(plan, order=order)
