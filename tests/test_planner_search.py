"""The planner end to end on the tiny models: valid plans, memory, determinism, never worse than the
plain dual-queue interleaving; property tests over random batches and memory limits."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dip.cost import CostModel
from dip.data.workload import generate_batches
from dip.errors import Infeasible
from dip.planner import plan_batch
from dip.planner.evaluate import PAPER_CONFIG, Evaluator
from dip.planner.options import SearchOptions
from dip.planner.problem import build_problem, uniform_problem
from dip.planner.result import default_partition
from dip.planner.search import search_problem
from dip.planner.uniform import plan_uniform
from dip.schedule.validate import validate_plan
from dip.spec import get_model
from dip.spec.hardware import get_hardware


@pytest.fixture(scope="module")
def tiny():
    model = get_model("tiny-vlm")
    hardware = get_hardware("H800")
    return model, CostModel(model, hardware), hardware


def plain_interleaving(model, batch, cm, hardware, limit=None) -> float:
    problem = build_problem(model, default_partition(model, cm), batch, cm, hardware, limit)
    return Evaluator(problem, passes=1).evaluate(problem.default_sequence, PAPER_CONFIG).score


def test_plan_is_valid_fits_and_beats_the_plain_interleaving(tiny):
    model, cm, hw = tiny
    batch = generate_batches(model, 1, 3, microbatches=6)[0]
    res = plan_batch(model, batch, cm, hw, options=SearchOptions(rollouts=20, seed=1))
    validate_plan(res.plan)
    assert not res.sim.oom and res.sim.ok
    assert res.time_s <= plain_interleaving(model, batch, cm, hw) * (1 + 1e-9)
    assert res.lower_bound_fastest_s <= res.lower_bound_s * (1 + 1e-9) <= res.time_s * (1 + 1e-9)
    assert res.stats.rollouts == 20 and res.stats.curve and res.stats.time_to_best_s <= res.stats.search_time_s
    assert set(res.summary()) >= {
        "dip_time_s",
        "lower_bound_s",
        "peak_memory_bytes",
        "memory_limit_bytes",
        "search_time_s",
        "rollouts",
        "time_to_best_s",
    }


def test_rollout_budget_is_deterministic(tiny):
    model, cm, hw = tiny
    batch = generate_batches(model, 1, 5, microbatches=6)[0]
    a = plan_batch(model, batch, cm, hw, options=SearchOptions(rollouts=15, seed=7))
    b = plan_batch(model, batch, cm, hw, options=SearchOptions(rollouts=15, seed=7))
    assert a.plan.text() == b.plan.text() and a.plan.strategies == b.plan.strategies
    assert a.time_s == b.time_s


@pytest.mark.parametrize("strategy", ["dfs", "random"])
def test_other_search_strategies(tiny, strategy):
    model, cm, hw = tiny
    batch = generate_batches(model, 1, 2, microbatches=4)[0]
    res = plan_batch(model, batch, cm, hw, options=SearchOptions(rollouts=10, strategy=strategy))
    validate_plan(res.plan)
    assert res.stats.strategy == strategy


def test_infeasible_names_the_rank_and_the_shortfall(tiny):
    model, cm, hw = tiny
    batch = generate_batches(model, 1, 0, microbatches=4)[0]
    with pytest.raises(Infeasible, match=r"rank \d+ needs .* GiB over the .* GiB limit even with full recompute"):
        plan_batch(model, batch, cm, hw, memory_limit_bytes=1024.0, options=SearchOptions(rollouts=5))


def test_parallel_workers_share_one_tree(tiny):
    model, cm, hw = tiny
    batch = generate_batches(model, 1, 4, microbatches=6)[0]
    one = plan_batch(model, batch, cm, hw, options=SearchOptions(rollouts=24, seed=3, workers=2))
    two = plan_batch(model, batch, cm, hw, options=SearchOptions(rollouts=24, seed=3, workers=2))
    assert one.stats.rollouts == 24 and one.time_s == two.time_s
    validate_plan(one.plan)


def test_uniform_chain_reaches_the_1f1b_closed_form():
    plan, result, _lb, _stats = plan_uniform(4, 8, 1, 1.0, 1.0, 1.0, options=SearchOptions(rollouts=5))
    validate_plan(plan)
    assert math.isclose(result.iteration_time, (8 + 4 - 1) * 3)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), m=st.integers(1, 6), slack=st.floats(0.05, 3.0))
def test_property_plans_validate_fit_and_never_lose_to_plain_interleaving(tiny, seed, m, slack):
    model, cm, hw = tiny
    batch = generate_batches(model, 1, seed, microbatches=m)[0]
    problem = build_problem(model, default_partition(model, cm), batch, cm, hw)
    acts = np.bincount(problem.stage_rank, problem.cand.mem[:, 0], minlength=problem.num_ranks)
    limit = float((problem.static + slack * acts).max())  # between "barely" and "plenty"
    try:
        res = plan_batch(model, batch, cm, hw, memory_limit_bytes=limit, options=SearchOptions(rollouts=6, seed=seed))
    except Infeasible:
        plain = plain_interleaving(model, batch, cm, hw, limit)
        assert not math.isfinite(plain)  # infeasible only where the paper's interleaving is too
        return
    validate_plan(res.plan)
    assert max(res.sim.peak_memory_bytes) <= limit * (1 + 1e-9)
    assert res.time_s <= plain_interleaving(model, batch, cm, hw, limit) * (1 + 1e-9)


@settings(max_examples=10, deadline=None)
@given(
    pp=st.integers(2, 3),
    m=st.integers(1, 5),
    chunks=st.integers(1, 2),
    f=st.floats(0.1, 2.0),
    b=st.floats(0.1, 3.0),
    cap=st.integers(1, 6),
)
def test_property_uniform_chains(pp, m, chunks, f, b, cap):
    problem = uniform_problem(pp, m, chunks, f, b / 2, b / 2, act_bytes=1.0, memory_limit_bytes=float(cap))
    plain = Evaluator(problem, passes=1).evaluate(problem.default_sequence, PAPER_CONFIG)
    try:
        state, _ = search_problem(problem, SearchOptions(rollouts=4))
    except Infeasible:
        assert not plain.feasible
        return
    from dip.planner.result import schedule_to_plan

    plan = schedule_to_plan(problem, state.best)
    validate_plan(plan)
    assert state.best.feasible and state.best.peak_bytes.max() <= cap
    assert state.best.makespan <= plain.score * (1 + 1e-9)
    assert state.best.makespan >= problem.lower_bound * (1 - 1e-9)
