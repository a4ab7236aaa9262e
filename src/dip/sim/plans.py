"""A plan together with the stage costs and the simulation that scored it, and the baselines'
memory rule: per pipeline rank, the least activation recomputation that fits (Megatron-LM's flags).

Each rank takes the first rule of its ladder (:func:`dip.schedule.baselines.memory.rule_ladder`) under
which its simulated peak stays within the usable memory: ``none``, else ``selective``, else
``block:N`` with the fewest ``N`` (the first ``N`` layers of each of its chunks recompute fully), else
``full``. A rank's peak depends only on its own rule (its order fixes which activations it holds at
once) and falls as ``N`` grows, so all ranks are searched together: one simulation with every rank at
``none``, one with the ranks that did not fit at ``selective``, then a bisection over ``N`` per rank,
each step one simulation for all ranks (about ``2 + log2(layers per chunk)`` simulations per plan).
A rank that does not fit even with ``full`` keeps ``full`` and the result reports the OOM.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from dip.data.meta import BatchMeta
from dip.schedule.baselines.memory import rank_layers, rule_ladder, rule_strategies, summarize_rules
from dip.schedule.ir import Plan
from dip.schedule.partition import Partition
from dip.sim.costs import StageCosts, stage_costs
from dip.sim.simulate import SimResult, simulate
from dip.spec.model import ModelSpec

__all__ = ["SimulatedPlan", "fit_memory", "simulate_plan"]

logger = logging.getLogger(__name__)


@dataclass
class SimulatedPlan:
    """A plan with the stage costs and the simulation result it was scored with; ``partition`` is the
    layer placement DIP's planner chose for it (``None`` for the baselines)."""

    plan: Plan
    costs: StageCosts
    result: SimResult
    partition: Partition | None = None

    @property
    def fits(self) -> bool:
        return not self.result.oom


def simulate_plan(
    plan: Plan,
    model: ModelSpec,
    cost_model,
    batch: BatchMeta,
    hardware,
    memory_limit_bytes: float | None = None,
    dp: int | None = None,
) -> SimulatedPlan:
    """Cost and simulate ``plan`` with its own memory strategies."""
    costs = stage_costs(plan.graph, plan.units, plan.flows, model, cost_model, batch, plan.strategies)
    result = simulate(plan, costs, hardware, memory_limit_bytes, dp or model.parallel.dp)
    return SimulatedPlan(plan, costs, result)


def fit_memory(
    plan: Plan,
    model: ModelSpec,
    cost_model,
    batch: BatchMeta,
    hardware,
    memory_limit_bytes: float | None = None,
    dp: int | None = None,
) -> SimulatedPlan:
    """Set ``plan.strategies`` to the per-rank memory rule (module docstring) and return its simulation;
    ``plan.meta`` records ``memory_strategy`` (summary), ``memory_strategy_per_rank`` and ``fits_memory``."""
    ladders = {r: rule_ladder(n) for r, n in rank_layers(plan).items()}
    ranks = sorted(ladders)
    chosen: dict[int, int] = {}  # rank -> index into its ladder, once known
    last: tuple[dict[int, int], SimulatedPlan] | None = None

    def run(levels: dict[int, int]) -> SimulatedPlan:
        nonlocal last
        plan.strategies = rule_strategies(plan, {r: ladders[r][levels[r]] for r in ranks})
        sim = simulate_plan(plan, model, cost_model, batch, hardware, memory_limit_bytes, dp)
        last = (dict(levels), sim)
        return sim

    def fits(sim: SimulatedPlan, rank: int) -> bool:
        return sim.result.peak_memory_bytes[rank] <= sim.result.memory_limit_bytes

    for level in (0, 1):  # none, then selective for the ranks that did not fit
        sim = run({r: chosen.get(r, level) for r in ranks})
        chosen.update({r: level for r in ranks if r not in chosen and fits(sim, r)})
    lo = {r: 2 for r in ranks if r not in chosen}
    hi = {r: len(ladders[r]) - 1 for r in lo}
    while any(lo[r] < hi[r] for r in lo):
        mid = {r: (lo[r] + hi[r]) // 2 for r in lo}
        sim = run({r: chosen.get(r, mid.get(r, 0)) for r in ranks})
        for r in lo:
            if lo[r] < hi[r]:
                if fits(sim, r):
                    hi[r] = mid[r]
                else:
                    lo[r] = mid[r] + 1
    chosen.update(lo)
    assert last is not None
    sim = last[1] if last[0] == chosen else run(chosen)
    rules = [ladders[r][chosen[r]] for r in ranks]
    plan.meta["memory_strategy"] = summarize_rules(rules)
    plan.meta["memory_strategy_per_rank"] = rules
    plan.meta["fits_memory"] = sim.fits
    logger.debug("%s: memory rule %s %s", plan.schedule, rules, "fits" if sim.fits else "does not fit")
    return sim
