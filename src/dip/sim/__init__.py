"""Timing and memory simulation of plans (no torch): task graphs, the numba kernel, lower bounds,
simulated plans (``SimulatedPlan``) and the baselines' uniform memory rule.

Imports ``dip.schedule`` and below.

Compile once per plan structure, then score orders fast::

    costs = stage_costs(graph, units, flows, model, cost_model, batch)    # or uniform_stage_costs(...)
    tg = TaskGraph.build(graph, units, flows, costs, topology, split=True)
    fast = simulate_order_arrays(tg, tg.orders_to_arrays(order))          # planner hot path
    result = simulate(plan, costs, hardware)                               # full report of one plan
"""

from dip.sim.costs import StageCosts, stage_costs, uniform_stage_costs
from dip.sim.kernel import BAD_TASK, DEADLOCK, DUPLICATE, INCOMPLETE, OK, simulate_arrays
from dip.sim.listsched import list_schedule
from dip.sim.plans import SimulatedPlan, fit_memory, simulate_plan
from dip.sim.simulate import FastResult, SimResult, simulate, simulate_order_arrays
from dip.sim.taskgraph import OrderArrays, TaskGraph
from dip.sim.topology import Topology

__all__ = [
    "BAD_TASK",
    "DEADLOCK",
    "DUPLICATE",
    "INCOMPLETE",
    "OK",
    "FastResult",
    "OrderArrays",
    "SimResult",
    "SimulatedPlan",
    "StageCosts",
    "TaskGraph",
    "Topology",
    "fit_memory",
    "list_schedule",
    "simulate",
    "simulate_arrays",
    "simulate_order_arrays",
    "simulate_plan",
    "stage_costs",
    "uniform_stage_costs",
]
