"""Tuning the search's starting point: micro-batch orders, shifts and tracking configurations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dip.cost import CostModel
from dip.data.workload import generate_batches
from dip.planner.evaluate import DEFAULT_CONFIGS, PAPER_CONFIG, Evaluator
from dip.planner.problem import build_problem
from dip.planner.result import default_partition
from dip.planner.state import SearchState
from dip.planner.tuning import microbatch_orders, microbatch_work, shifted_sequence, tune_base
from dip.spec import get_model
from dip.spec.hardware import get_hardware


@pytest.fixture(scope="module")
def problem():
    model = get_model("tiny-t2v")
    hardware = get_hardware("H800")
    cm = CostModel(model, hardware)
    batch = generate_batches(model, 1, 11, microbatches=8)[0]
    return build_problem(model, default_partition(model, cm), batch, cm, hardware)


def test_microbatch_orders_are_distinct_permutations_with_small_ones_first(problem):
    work = microbatch_work(problem)
    orders = microbatch_orders(problem)
    n = len(work)
    assert orders[0].tolist() == list(range(n))
    assert np.all(np.diff(work[orders[1]]) <= 0)  # largest first
    assert len({o.tobytes() for o in orders}) == len(orders) >= 3
    for order in orders:
        assert sorted(order.tolist()) == list(range(n))
    smallest = np.argsort(work, kind="stable")
    k = problem.num_ranks
    small_first = [o for o in orders[2:] if set(o[:k].tolist()) == set(smallest[:k].tolist())]
    assert small_first and np.all(np.diff(work[small_first[0][:k]]) >= 0)  # ascending, then the rest descending
    assert np.all(np.diff(work[small_first[0][k:]]) <= 0)


def test_shifted_sequence_follows_the_microbatch_order(problem):
    order = microbatch_orders(problem)[1]
    seq = shifted_sequence(problem, {}, order)
    assert sorted(seq.tolist()) == list(range(len(problem.items)))
    first_mb = [problem.items[i].mb for i in seq]
    seen = list(dict.fromkeys(first_mb))
    assert seen == order.tolist()


def test_tuned_base_is_never_worse_than_the_best_configuration_on_the_default_order(problem):
    ev = Evaluator(problem, passes=3)
    initial = ev.evaluate(problem.default_sequence, PAPER_CONFIG)
    state = SearchState(0.0, initial, initial)
    ranked, base = tune_base(ev, problem, state, DEFAULT_CONFIGS, math.inf)
    assert sorted(base.tolist()) == list(range(len(problem.items)))
    assert len(ranked) == len(DEFAULT_CONFIGS)
    default_best = min(ev.evaluate(problem.default_sequence, c).score for c in DEFAULT_CONFIGS)
    assert ev.evaluate(base, ranked[0]).score <= default_best * (1 + 1e-9)
    assert state.best.score <= ev.evaluate(base, ranked[0]).score * (1 + 1e-9)
