"""Megatron-LM's activation recomputation as per-layer memory strategies of a baseline plan.

A rank's *rule* applies to every layer of every chunk (virtual pipeline stage) it holds, for every
micro-batch, as Megatron's flags do:

* ``none``: nothing recomputed;
* ``selective``: the attention core recomputed (``--recompute-granularity selective``);
* ``block:N``: the first ``N`` layers of each chunk recompute fully from their input, the others keep
  their activations (``--recompute-granularity full --recompute-method block --recompute-num-layers N``);
* ``full``: every layer recomputes (``block:N`` with ``N`` = the chunk's layers, or
  ``--recompute-method uniform --recompute-num-layers 1``).

:func:`rule_ladder` lists a rank's rules from the least recompute to the most;
:func:`dip.sim.plans.fit_memory` picks, per rank, the first one that fits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from dip.schedule.ir import Plan

__all__ = [
    "UNIFORM_STRATEGIES",
    "chunk_strategies",
    "rank_layers",
    "rule_ladder",
    "rule_strategies",
    "summarize_rules",
    "uniform_strategies",
]

UNIFORM_STRATEGIES: tuple[str, ...] = ("none", "selective", "full")


def rule_ladder(layers: int) -> list[str]:
    """A rank's rules from the least to the most recompute, for chunks of at most ``layers`` layers:
    ``none, selective, block:1 .. block:layers-1, full``."""
    return ["none", "selective", *(f"block:{n}" for n in range(1, max(layers, 1))), "full"]


def chunk_strategies(rule: str, layers: int) -> tuple[str, ...]:
    """Per-layer strategies of one chunk of ``layers`` layers under ``rule``."""
    if rule in ("none", "selective", "full"):
        return (rule,) * layers
    kind, _, count = rule.partition(":")
    if kind != "block" or not count.isdigit():
        raise ValueError(f"unknown recompute rule {rule!r}; valid: none, selective, block:N, full")
    n = min(int(count), layers)
    return ("full",) * n + ("none",) * (layers - n)


def rank_layers(plan: Plan) -> dict[int, int]:
    """The most layers any chunk of each rank holds (the length of the rank's rule ladder)."""
    out = dict.fromkeys(range(plan.num_ranks), 0)
    for c in plan.graph.chunks:
        out[c.rank] = max(out[c.rank], sum(p.layers for p in c.parts))
    return out


def rule_strategies(plan: Plan, rules: Mapping[int, str]) -> dict[tuple[int, int], tuple[str, ...]]:
    """``plan.strategies`` for one rule per rank (``none`` entries are left out: the default)."""
    out: dict[tuple[int, int], tuple[str, ...]] = {}
    for c in plan.graph.chunks:
        rule = rules.get(c.rank, "none")
        if rule == "none":
            continue
        per_layer = chunk_strategies(rule, sum(p.layers for p in c.parts))
        for u in plan.units[c.group]:
            out[(c.id, u.index)] = per_layer
    return out


def uniform_strategies(plan: Plan, strategy: str) -> dict[tuple[int, int], tuple[str, ...]]:
    """``strategy`` for every layer of every (chunk, unit); empty for ``none`` (the default)."""
    return rule_strategies(plan, dict.fromkeys(range(plan.num_ranks), strategy))


def summarize_rules(rules: Sequence[str]) -> str:
    """One rule when every rank has it, else the per-rank rules joined by commas (rank 0 first)."""
    return rules[0] if rules and all(r == rules[0] for r in rules) else ",".join(rules)
