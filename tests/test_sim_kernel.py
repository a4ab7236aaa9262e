"""Hand-checked simulations: exact times, link delays, memory peaks, deadlocks, bad orders."""

import math

import numpy as np
import pytest

from dip.schedule.deps import MessageKey
from dip.schedule.ir import Plan, order_from_text
from dip.schedule.units import linear_stage_graph, uniform_units
from dip.sim import DEADLOCK, DUPLICATE, OK, TaskGraph, Topology, simulate, simulate_order_arrays, uniform_stage_costs
from dip.sim.taskgraph import OrderArrays


def two_rank_plan(rows, mbs=2, f=1.0, i=1.0, w=1.0, act=1.0):
    graph = linear_stage_graph(2)
    units = uniform_units("model", mbs)
    costs = uniform_stage_costs(graph, units, f, i, w, act)
    return Plan(graph, units, (), order_from_text(rows)), costs


def times(result):
    return {r: [(str(a), s, e) for a, s, e in rows] for r, rows in result.action_times().items()}


def test_1f1b_two_ranks_exact_times():
    plan, costs = two_rank_plan({0: "0F0 0F1 0B0 0B1", 1: "1F0 1B0 1F1 1B1"})
    r = simulate(plan, costs)
    assert r.ok and r.makespan == 9.0 and r.iteration_time == 9.0
    assert times(r) == {
        0: [("0F0", 0, 1), ("0F1", 1, 2), ("0B0", 4, 6), ("0B1", 7, 9)],
        1: [("1F0", 1, 2), ("1B0", 2, 4), ("1F1", 4, 5), ("1B1", 5, 7)],
    }
    assert list(r.busy) == [6.0, 6.0]
    assert list(r.idle) == [3.0, 3.0]
    assert r.bubble_fraction == pytest.approx(1 - 12 / 18)
    assert r.busiest_rank_bound == 6.0 and r.critical_path_bound == 6.0 and r.lower_bound == 6.0


def test_inter_node_delays():
    plan, costs = two_rank_plan({0: "0F0 0F1 0B0 0B1", 1: "1F0 1B0 1F1 1B1"})
    costs.message_bytes = {MessageKey(0, u, 1, u): 1e9 for u in range(2)}
    topo = Topology(tp=8, gpus_per_node=8, intra_bw=1e12, inter_bw=1e9, inter_latency_s=0.5)
    assert topo.node_of(0) == 0 and topo.node_of(1) == 1
    r = simulate(plan, costs, topo)
    assert times(r) == {
        0: [("0F0", 0, 1), ("0F1", 1, 2), ("0B0", 7, 9), ("0B1", 10, 12)],
        1: [("1F0", 2.5, 3.5), ("1B0", 3.5, 5.5), ("1F1", 5.5, 6.5), ("1B1", 6.5, 8.5)],
    }
    assert r.makespan == 12.0
    assert r.critical_path_bound == pytest.approx(1 + 1.5 + 3 + 1.5 + 2)


def test_intra_node_uses_nvlink_with_alpha():
    plan, costs = two_rank_plan({0: "0F0 0F1 0B0 0B1", 1: "1F0 1B0 1F1 1B1"})
    costs.message_bytes = {MessageKey(0, u, 1, u): 100.0 for u in range(2)}
    topo = Topology(tp=2, gpus_per_node=8, intra_bw=100.0, intra_latency_s=0.25, inter_bw=1.0, p2p_alpha=2.0)
    r = simulate(plan, costs, topo)
    start = {str(a): s for a, s, _ in r.action_times()[1]}
    assert start["1F0"] == pytest.approx(1 + 0.25 + 2.0)


def test_memory_peaks_gpipe_and_free_at_w():
    plan, costs = two_rank_plan({0: "0F0 0F1 0I0 0W0 0I1 0W1", 1: "1F0 1F1 1I0 1W0 1I1 1W1"})
    costs.act_bytes[:] = [3.0, 5.0, 7.0, 11.0]  # stages (0,0) (0,1) (1,0) (1,1)
    costs.static_bytes[:] = [100.0, 200.0]
    r = simulate(plan, costs, memory_limit_bytes=110.0)
    assert list(r.peak_activation_bytes) == [8.0, 18.0]
    assert list(r.peak_memory_bytes) == [108.0, 218.0]
    assert list(r.peak_activations) == [2, 2]
    assert r.oom == [(1, r.peak_time[1], 108.0)]
    t, mem = r.memory_timeline(0)
    w0_end = next(e for a, _, e in r.action_times()[0] if str(a) == "0W0")
    i0_end = next(e for a, _, e in r.action_times()[0] if str(a) == "0I0")
    assert mem[np.searchsorted(t, i0_end, side="right") - 1] == 108.0  # still held after I
    assert mem[np.searchsorted(t, w0_end, side="right") - 1] == 105.0  # freed at W


def test_deadlock_detected_with_stuck_positions():
    plan, costs = two_rank_plan({0: "0F0 0B0 0F1 0B1", 1: "1B0 1F0 1F1 1B1"})
    r = simulate(plan, costs)
    assert r.deadlock and math.isinf(r.iteration_time)
    assert [(rank, pos, str(a)) for rank, pos, a in r.stuck] == [(0, 1, "0B0"), (1, 0, "1B0")]


def test_fast_entry_matches_full_simulation():
    plan, costs = two_rank_plan({0: "0F0 0F1 0B0 0B1", 1: "1F0 1B0 1F1 1B1"}, act=2.0)
    tg = TaskGraph.from_plan(plan, costs)
    fast = simulate_order_arrays(tg, tg.orders_to_arrays(plan.order))
    assert fast.status == OK and fast.makespan == 9.0
    assert list(fast.peak_bytes) == [4.0, 2.0] and list(fast.peak_held) == [2, 1]
    ids = [[tg.task_id(a.chunk, a.op, a.unit) for a in plan.order[r]] for r in range(2)]
    assert simulate_order_arrays(tg, OrderArrays.from_lists(ids)).makespan == 9.0
    assert tg.arrays_to_orders(tg.orders_to_arrays(plan.order)) == plan.order


def test_bad_orders():
    plan, costs = two_rank_plan({0: "0F0 0F1 0B0 0B1", 1: "1F0 1B0 1F1 1B1"})
    tg = TaskGraph.from_plan(plan, costs)
    with pytest.raises(ValueError, match="belongs to rank 1"):
        tg.orders_to_arrays(order_from_text({0: "1F0", 1: ""}))
    split = TaskGraph.build(plan.graph, plan.units, (), costs, split=True)
    with pytest.raises(ValueError, match="splits the backward"):
        split.orders_to_arrays(plan.order)
    t = tg.task_id(0, "F", 0)
    dup = OrderArrays(np.array([0, 2, 2], np.int64), np.array([t, t], np.int64))
    assert simulate_order_arrays(tg, dup).status == DUPLICATE
    stuck = simulate_order_arrays(tg, tg.orders_to_arrays(order_from_text({0: "0B0 0F0", 1: ""})))
    assert stuck.status == DEADLOCK and list(stuck.stuck_pos) == [0, -1]


def test_dp_allreduce_and_mfu():
    plan, costs = two_rank_plan({0: "0F0 0F1 0B0 0B1", 1: "1F0 1B0 1F1 1B1"})
    costs.flops_total = 90.0
    topo = Topology(tp=4, gpus_per_node=8, inter_bw=8.0, inter_latency_s=0.5, peak_flops=1.0)
    r = simulate(plan, costs, topo, dp=4, dp_grad_bytes_per_rank=[16.0, 8.0])
    ar = 2 * 3 / 4 * 16.0 / 8.0 + 2 * 3 * 0.5
    assert r.dp_allreduce_time == pytest.approx(ar)
    assert r.iteration_time == pytest.approx(9.0 + ar)
    assert r.lower_bound == pytest.approx(6.0 + ar)
    assert r.mfu == pytest.approx(4 * 90.0 / (4 * 2 * 4 * 1.0 * (9.0 + ar)))
