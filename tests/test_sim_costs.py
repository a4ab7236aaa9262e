"""Stage costs from a cost model, multimodal task graphs and the bench entry point."""

from dataclasses import dataclass

import numpy as np
import pytest

from dip.cost import CostModel
from dip.data.meta import BatchMeta, MicroBatchMeta
from dip.data.workload import generate_batches
from dip.schedule.deps import DependencyIndex, MessageKey
from dip.schedule.ir import Action, Chunk, ChunkPart, Op, Plan, StageGraph
from dip.schedule.units import build_units, chain_channels, module_graph
from dip.sim import TaskGraph, Topology, list_schedule, simulate, stage_costs
from dip.spec import get_model


@dataclass(frozen=True)
class FakeChunkCost:
    f: float
    i: float
    w: float
    act_bytes: float


class FakeCostModel:
    """Costs proportional to tokens x layers; counts calls."""

    tp = 2

    def __init__(self):
        self.calls = 0

    def chunk_costs(self, module, work, layer_start, layer_end, strategies="none"):
        self.calls += 1
        n = layer_end - layer_start
        full = 0 if isinstance(strategies, str) else sum(s == "full" for s in strategies)
        return FakeChunkCost(n * work.tokens, n * 2 * work.tokens + full, n * work.tokens, (n - full) * work.tokens)

    def boundary_bytes(self, module, work):
        return 10.0 * work.tokens

    def output_bytes(self, module, work):
        return 3.0 * work.tokens if module == "vit" else 0.0

    def static_bytes(self, module, layer_start, layer_end, include_pre, include_post):
        return 100.0 * (layer_end - layer_start) + 18.0 * include_pre + 36.0 * include_post

    def dp_sync_bytes(self, module, layer_start, layer_end, include_pre, include_post):
        return 4.0 * (layer_end - layer_start) + 1.0 * include_pre

    def microbatch_flops(self, mb):
        return float(mb.text_tokens)


BATCH = BatchMeta((MicroBatchMeta((20, 30), (2, 1)), MicroBatchMeta((40,), (0,)), MicroBatchMeta((10,), (3,))))


def vlm_structure(split_size=2):
    model = get_model("tiny-vlm")
    graph = module_graph(model, 2, {"vit": [(0, 4), (4, 8)], "llm": [(0, 4), (4, 8)]})
    units, flows = build_units(model, graph, BATCH, {"vit": split_size})
    return model, graph, units, flows


def test_stage_costs_with_fake_cost_model():
    model, graph, units, flows = vlm_structure()
    cm = FakeCostModel()
    costs = stage_costs(graph, units, flows, model, cm, BATCH)
    assert len(costs.keys) == 2 * len(units["vit"]) + 2 * len(units["llm"])
    vit_units = units["vit"]
    assert [(u.mb, u.start, u.stop) for u in vit_units] == [(0, 0, 2), (0, 2, 3), (2, 0, 2), (2, 2, 3)]
    ppi = model.module("vit").patches_per_image
    s = costs.stage(0, 1)  # vit chunk 0, unit 1: one image
    assert (costs.f[s], costs.i[s], costs.w[s], costs.act_bytes[s]) == (4 * ppi, 8 * ppi, 4 * ppi, 4 * ppi)
    tpi = model.module("vit").tokens_per_image
    llm0 = costs.stage(2, 0)
    assert costs.f[llm0] == 4 * (50 + 3 * tpi)
    assert costs.message_bytes[MessageKey(0, 1, 1, 1)] == 10.0 * ppi
    assert costs.message_bytes[MessageKey(1, 0, 2, 0)] == 3.0 * 2 * ppi  # image embeddings of unit 0 (2 images)
    assert costs.bytes_of(MessageKey(2, 0, 1, 0, True)) == costs.message_bytes[MessageKey(1, 0, 2, 0)]
    assert list(costs.static_bytes) == [2 * (400 + 18), 2 * (400 + 36)]
    assert list(costs.grad_bytes) == [2 * (16 + 1), 2 * 16]  # the cost model's data-parallel bytes
    assert costs.flops_total == 100.0 and costs.tp == 2
    assert cm.calls <= len(costs.keys)


def test_strategies_and_mixed_chunks():
    model = get_model("tiny-vlm")
    chunks = (
        Chunk(0, "all", 0, 0, (ChunkPart("vit", 0, 8),)),
        Chunk(1, "all", 1, 1, (ChunkPart("llm", 0, 2),)),
        Chunk(2, "all", 2, 0, (ChunkPart("llm", 2, 4), ChunkPart("llm", 4, 8))),
        Chunk(3, "all", 3, 1, (ChunkPart("llm", 8, 8),)),
    )
    graph = StageGraph(chunks, tuple(chain_channels(chunks)), 2)
    units, flows = build_units(model, graph, BATCH)
    assert flows == () and len(units["all"]) == 3
    strat = {(2, 0): ("full", "none", "full", "none", "none", "none")}
    costs = stage_costs(graph, units, flows, model, FakeCostModel(), BATCH, strat)
    tokens = 50 + 3 * model.module("vit").tokens_per_image
    s = costs.stage(2, 0)
    assert costs.f[s] == 6 * tokens
    assert costs.i[s] == 12 * tokens + 2
    assert costs.act_bytes[s] == 4 * tokens
    assert costs.message_bytes[MessageKey(0, 0, 1, 0)] == 3.0 * 3 * model.module("vit").patches_per_image


def test_multimodal_taskgraph_dependencies_and_simulation():
    model, graph, units, flows = vlm_structure()
    costs = stage_costs(graph, units, flows, model, FakeCostModel(), BATCH)
    topo = Topology(tp=2, gpus_per_node=2, intra_bw=1e3, inter_bw=1e2)
    split = {(1, 0), (3, 2)}
    tg = TaskGraph.build(graph, units, flows, costs, topo, split=split)
    assert tg.num_tasks == 2 * len(costs.keys) + len(split)
    order = list_schedule(tg)
    plan = Plan(graph, units, flows, order)
    deps = DependencyIndex.of_plan(plan)
    assert deps.split == split
    assert set(tg.actions) == {a for acts in order.values() for a in acts}
    for t, a in enumerate(tg.actions):
        preds = {tg.actions[int(p)] for p in tg.pred_idx[tg.pred_ptr[t] : tg.pred_ptr[t + 1]]}
        assert preds == {plan_action(k) for k, _ in deps.inputs(a.chunk, a.op, a.unit)}
    llm_first = tg.task_id(2, Op.F, 0)
    edges = range(tg.pred_ptr[llm_first], tg.pred_ptr[llm_first + 1])
    assert {str(tg.actions[int(tg.pred_idx[e])]) for e in edges} == {"1F0", "1F1"}
    assert all(tg.pred_delay[e] > 0 for e in edges)  # rank 1 -> rank 0 crosses nodes
    r = simulate(plan, costs, topo)
    assert r.ok and r.critical_path_bound <= r.makespan and r.busiest_rank_bound <= r.makespan


def plan_action(key):
    return Action(*key)


@pytest.mark.parametrize("name,size", [("tiny-vlm", {"vit": 1}), ("tiny-t2v", {"dit": 1})])
def test_real_cost_model(name, size):
    model = get_model(name)
    batch = generate_batches(model, 1, 0, 6)[0]
    layouts = {m.name: [(0, m.layers // 2), (m.layers // 2, m.layers)] for m in model.modules}
    graph = module_graph(model, 2, layouts)
    units, flows = build_units(model, graph, batch, size)
    cm = CostModel(model, "H800", 1)
    costs = stage_costs(graph, units, flows, model, cm, batch)
    assert np.all(costs.f > 0) and np.all(costs.i > 0) and np.all(costs.act_bytes > 0)
    assert all(v > 0 for v in costs.message_bytes.values())
    tg = TaskGraph.build(graph, units, flows, costs, cm.hardware, split=True)
    plan = Plan(graph, units, flows, list_schedule(tg))
    r = simulate(plan, costs, cm.hardware, taskgraph=tg)
    assert r.ok and 0.0 < r.mfu < 1.0
    assert np.all(r.peak_memory_bytes > costs.static_bytes)


def test_bench_report_small():
    from dip.bench.sim import bench

    report = bench(get_model("tiny-vlm"), repeats=3, microbatches=8, segments=2)
    assert report["actions"] == report["plan"]["tasks"] > 0
    assert report["actions_per_second"] > 0 and report["status"] == 0


def test_bench_cli_json(capsys):
    import json

    from dip.cli.main import main

    assert (
        main(
            [
                "bench",
                "sim",
                "--json",
                "--model",
                "tiny-vlm",
                "--repeats",
                "2",
                "--microbatches",
                "4",
                "--segments",
                "2",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert {"actions_per_second", "actions", "seconds_per_simulation", "repeats", "plan"} <= set(report)
    assert main(["bench", "sim", "--model", "tiny-vlm", "--segments", "9"]) == 2
