"""Closed forms with uniform costs, lower bounds on random plans, and a reference simulator."""

import random

import numpy as np
import pytest

from dip.schedule.deps import MessageKey
from dip.schedule.ir import Action, Op, Plan
from dip.schedule.units import linear_stage_graph, uniform_units
from dip.sim import TaskGraph, Topology, list_schedule, simulate, uniform_stage_costs
from dip.sim.costs import StageCosts


def gpipe(p: int, m: int, split: bool = False) -> dict[int, list[Action]]:
    order = {}
    for r in range(p):
        acts = [Action(r, Op.F, u) for u in range(m)]
        for u in range(m):
            acts += [Action(r, Op.I, u), Action(r, Op.W, u)] if split else [Action(r, Op.B, u)]
        order[r] = acts
    return order


def one_f_one_b(p: int, m: int, split: bool = False) -> dict[int, list[Action]]:
    order = {}
    for r in range(p):
        warm = min(p - 1 - r, m)
        acts = [Action(r, Op.F, u) for u in range(warm)]
        back = 0
        for u in range(warm, m):
            acts.append(Action(r, Op.F, u))
            acts += _backward(r, back, split)
            back += 1
        while back < m:
            acts += _backward(r, back, split)
            back += 1
        order[r] = acts
    return order


def _backward(r: int, u: int, split: bool) -> list[Action]:
    return [Action(r, Op.I, u), Action(r, Op.W, u)] if split else [Action(r, Op.B, u)]


@pytest.mark.parametrize("p,m", [(2, 2), (4, 4), (4, 8), (8, 16), (3, 7)])
@pytest.mark.parametrize("schedule", [gpipe, one_f_one_b])
@pytest.mark.parametrize("split", [False, True])
def test_closed_form_uniform(p, m, schedule, split):
    f, i, w = 1.0, 1.5, 0.75
    graph = linear_stage_graph(p)
    units = uniform_units("model", m)
    plan = Plan(graph, units, (), schedule(p, m, split))
    r = simulate(plan, uniform_stage_costs(graph, units, f, i, w))
    assert r.ok
    if split:  # the input gradient leaves after I, so each of the p - 1 hand-offs saves one W
        assert r.makespan == pytest.approx((m + p - 1) * (f + i + w) - (p - 1) * w)
    else:
        assert r.makespan == pytest.approx((m + p - 1) * (f + i + w))
        assert r.bubble_fraction == pytest.approx((p - 1) / (m + p - 1))
    expected_held = [m] * p if schedule is gpipe else [min(p - rank, m) for rank in range(p)]
    assert list(r.peak_activations) == expected_held


def random_topological_order(tg: TaskGraph, rng: random.Random) -> dict[int, list[Action]]:
    remaining = np.diff(tg.pred_ptr).tolist()
    ready = [t for t in range(tg.num_tasks) if remaining[t] == 0]
    order = {r: [] for r in range(tg.num_ranks)}
    while ready:
        t = ready.pop(rng.randrange(len(ready)))
        order[int(tg.task_rank[t])].append(tg.actions[t])
        for e in range(tg.succ_ptr[t], tg.succ_ptr[t + 1]):
            u = int(tg.succ_idx[e])
            remaining[u] -= 1
            if remaining[u] == 0:
                ready.append(u)
    return order


def reference_simulation(tg: TaskGraph, order: dict[int, list[Action]]) -> dict[Action, tuple[float, float]]:
    """Naive fixpoint: repeatedly run any rank whose next task has all inputs finished."""
    ids = tg.task_ids
    done: dict[int, float] = {}
    out, free, pos = {}, [0.0] * tg.num_ranks, [0] * tg.num_ranks
    progress = True
    while progress:
        progress = False
        for r, acts in order.items():
            if pos[r] == len(acts):
                continue
            t = ids[acts[pos[r]]]
            preds = range(tg.pred_ptr[t], tg.pred_ptr[t + 1])
            if any(int(tg.pred_idx[e]) not in done for e in preds):
                continue
            start = max([free[r]] + [done[int(tg.pred_idx[e])] + tg.pred_delay[e] for e in preds])
            done[t] = free[r] = start + tg.duration[t]
            out[acts[pos[r]]] = (start, done[t])
            pos[r] += 1
            progress = True
    return out


def random_structure(rng: random.Random):
    p = rng.randint(2, 4)
    graph = linear_stage_graph(p, rng.randint(1, 2), rng.choice(["loop", "v"]))
    units = uniform_units("model", rng.randint(1, 6))
    costs = uniform_stage_costs(graph, units, 1.0, 1.0, 1.0)
    n = len(costs.keys)
    costs.f, costs.i, costs.w = (np.array([rng.uniform(0.1, 2.0) for _ in range(n)]) for _ in range(3))
    costs.act_bytes = np.array([rng.uniform(1, 10) for _ in range(n)])
    for c in graph.chunks:
        nxt = graph.next_in_group(c.id)
        if nxt is not None:
            for u in units["model"]:
                costs.message_bytes[MessageKey(c.id, u.index, nxt, u.index)] = rng.uniform(0, 2e9)
    topo = Topology(
        tp=rng.choice([1, 4, 8]),
        gpus_per_node=8,
        intra_bw=1e10,
        intra_latency_s=1e-3,
        inter_bw=1e9,
        inter_latency_s=1e-2,
    )
    split = rng.random() < 0.5
    return graph, units, costs, topo, split


@pytest.mark.parametrize("seed", range(12))
def test_bounds_and_reference_on_random_plans(seed):
    rng = random.Random(seed)
    graph, units, costs, topo, split = random_structure(rng)
    tg = TaskGraph.build(graph, units, (), costs, topo, split=split)
    order = random_topological_order(tg, rng) if seed % 2 else list_schedule(tg, rng.choice([None, 2]))
    plan = Plan(graph, units, (), order)
    r = simulate(plan, costs, topo, taskgraph=tg)
    assert r.ok
    assert r.busiest_rank_bound <= r.makespan + 1e-9
    assert r.critical_path_bound <= r.makespan + 1e-9
    assert r.lower_bound <= r.iteration_time + 1e-9
    assert 0.0 <= r.bubble_fraction < 1.0
    ref = reference_simulation(tg, order)
    for _rank, rows in r.action_times().items():
        for a, start, end in rows:
            assert (start, end) == pytest.approx(ref[a])
    assert max(e for _, e in ref.values()) == pytest.approx(r.makespan)


def test_with_costs_reuses_structure():
    graph = linear_stage_graph(2)
    units = uniform_units("model", 3)
    base = uniform_stage_costs(graph, units, 1.0, 1.0, 1.0)
    tg = TaskGraph.build(graph, units, (), base)
    slower = uniform_stage_costs(graph, units, 2.0, 2.0, 2.0)
    tg2 = tg.with_costs(slower)
    assert tg2.pred_idx is tg.pred_idx
    assert tg2.busiest_rank_bound() == 2 * tg.busiest_rank_bound()
    assert tg.busiest_rank_bound() == 9.0
    other = StageCosts(keys=[(0, 0)], f=np.ones(1), i=np.ones(1), w=np.ones(1), act_bytes=np.ones(1))
    with pytest.raises(ValueError):
        tg.with_costs(other)
