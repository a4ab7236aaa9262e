"""``dip bench sim``: simulator throughput on a paper-sized plan.

Builds a separated-partition plan for a model preset (default VLM-L: PP 8, 64 micro-batches, every
module cut into ``segments * pp`` chunks, ViT/DiT split into sub-microbatches, split backward), orders
it with the greedy list scheduler and times exactly what the planner calls per candidate:
:func:`dip.sim.simulate_order_arrays` on prebuilt order arrays. The compile step
(:meth:`dip.sim.TaskGraph.build`) and the stage-cost step are timed separately.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from dip.cost import CostModel
from dip.data.meta import BatchMeta
from dip.data.workload import generate_batches
from dip.errors import BadInput, positive_int
from dip.io import emit
from dip.schedule.ir import Plan
from dip.schedule.units import build_units, module_graph, split_evenly
from dip.sim.costs import stage_costs
from dip.sim.listsched import list_schedule
from dip.sim.simulate import simulate_order_arrays
from dip.sim.taskgraph import TaskGraph
from dip.sim.topology import Topology
from dip.spec import ModelSpec, load_model
from dip.spec.hardware import get_hardware

SUB_MICROBATCH = 12  # the paper's best ViT/DiT sub-microbatch size


def build_bench_plan(
    model: ModelSpec, batch: BatchMeta, segments: int, hardware: str
) -> tuple[Plan, TaskGraph, dict[str, float]]:
    """A separated-partition plan of ``batch`` ordered by the list scheduler, its task graph and timings."""
    pp, tp = model.parallel.pp, model.parallel.tp
    too_deep = [m.name for m in model.modules if m.layers < segments * pp]
    if too_deep:
        raise BadInput(f"--segments {segments} x pp {pp} exceeds the layers of {', '.join(too_deep)}")
    layouts = {m.name: split_evenly(m.layers, segments * pp) for m in model.modules}
    graph = module_graph(model, pp, layouts)
    sizes = {m.name: SUB_MICROBATCH for m in model.modules if m.kind in ("vit", "dit")}
    units, flows = build_units(model, graph, batch, sizes)
    hw = get_hardware(hardware)
    t0 = time.perf_counter()
    costs = stage_costs(graph, units, flows, model, CostModel(model, hw, tp), batch)
    t1 = time.perf_counter()
    tg = TaskGraph.build(graph, units, flows, costs, Topology.from_hardware(hw, tp), split=True)
    t2 = time.perf_counter()
    order = list_schedule(tg, max_inflight=3 * pp * segments)
    t3 = time.perf_counter()
    plan = Plan(graph, units, flows, order, schedule="list")
    return (
        plan,
        tg,
        {"stage_costs_seconds": t1 - t0, "taskgraph_build_seconds": t2 - t1, "list_schedule_seconds": t3 - t2},
    )


def bench(
    model: ModelSpec, repeats: int, microbatches: int = 64, segments: int = 3, hardware: str = "H800", seed: int = 0
) -> dict[str, Any]:
    """Run the benchmark and return its report."""
    batch = generate_batches(model, 1, seed, microbatches)[0]
    plan, tg, prep = build_bench_plan(model, batch, segments, hardware)
    arrays = tg.orders_to_arrays(plan.order)
    first = simulate_order_arrays(tg, arrays)  # warm-up: loads or compiles the numba kernel
    t0 = time.perf_counter()
    for _ in range(repeats):
        simulate_order_arrays(tg, arrays)
    seconds = (time.perf_counter() - t0) / repeats
    actions = plan.num_actions()
    t0 = time.perf_counter()
    tg.orders_to_arrays(plan.order)
    convert = time.perf_counter() - t0
    return {
        "actions_per_second": actions / seconds,
        "actions": actions,
        "seconds_per_simulation": seconds,
        "repeats": repeats,
        "compile_seconds": prep["taskgraph_build_seconds"],
        "stage_costs_seconds": prep["stage_costs_seconds"],
        "orders_to_arrays_seconds": convert,
        "list_schedule_seconds": prep["list_schedule_seconds"],
        "makespan_s": first.makespan,
        "status": int(first.status),
        "plan": {
            "model": model.name,
            "pp": plan.num_ranks,
            "tp": model.parallel.tp,
            "hardware": hardware,
            "microbatches": len(batch),
            "chunks": len(plan.graph.chunks),
            "chunks_per_module": {m.name: segments * plan.num_ranks for m in model.modules},
            "units": {g: len(us) for g, us in plan.units.items()},
            "tasks": tg.num_tasks,
            "edges": len(tg.pred_idx),
            "split_backward": True,
            "order": f"list_schedule(max_inflight={3 * plan.num_ranks * segments})",
        },
    }


def run(args: argparse.Namespace) -> int:
    repeats = positive_int("--repeats", args.repeats)
    mbs = positive_int("--microbatches", args.microbatches)
    segments = positive_int("--segments", args.segments)
    model = load_model(args.model)
    get_hardware(args.hardware)
    report = bench(model, repeats, mbs, segments, args.hardware, args.seed)
    text = (
        f"{report['plan']['model']}: {report['actions']} actions, {report['plan']['chunks']} chunks, "
        f"pp {report['plan']['pp']}\n"
        f"simulate_order_arrays: {report['seconds_per_simulation'] * 1e6:.1f} us per plan, "
        f"{report['actions_per_second'] / 1e6:.2f} M actions/s ({report['repeats']} repeats)\n"
        f"TaskGraph.build: {report['compile_seconds'] * 1e3:.1f} ms, "
        f"stage_costs: {report['stage_costs_seconds'] * 1e3:.1f} ms, "
        f"orders_to_arrays: {report['orders_to_arrays_seconds'] * 1e3:.1f} ms"
    )
    emit(report, args.json, text)
    return 0
