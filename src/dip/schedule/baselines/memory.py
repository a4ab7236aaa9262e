"""Memory strategy candidates of the baselines: one strategy for every layer (Megatron's
``--recompute-granularity``); :func:`dip.sim.plans.fit_uniform_memory` picks the cheapest that fits."""

from __future__ import annotations

from dip.schedule.ir import Plan

__all__ = ["UNIFORM_STRATEGIES", "uniform_strategies"]

UNIFORM_STRATEGIES: tuple[str, ...] = ("none", "selective", "full")


def uniform_strategies(plan: Plan, strategy: str) -> dict[tuple[int, int], tuple[str, ...]]:
    """``strategy`` for every layer of every (chunk, unit); empty for ``none`` (the default)."""
    if strategy == "none":
        return {}
    out: dict[tuple[int, int], tuple[str, ...]] = {}
    for c in plan.graph.chunks:
        per_layer = (strategy,) * sum(p.layers for p in c.parts)
        for u in plan.units[c.group]:
            out[(c.id, u.index)] = per_layer
    return out
