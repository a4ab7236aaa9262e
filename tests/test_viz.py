"""Trace JSON and Gantt PNG of simulated plans."""

import json

from dip.schedule.deps import MessageKey
from dip.schedule.ir import Plan, order_from_text
from dip.schedule.units import build_units, linear_stage_graph, module_graph, uniform_units
from dip.sim import TaskGraph, Topology, list_schedule, simulate, stage_costs, uniform_stage_costs
from dip.spec import get_model
from dip.viz import write_chrome_trace, write_gantt_png
from test_sim_costs import BATCH, FakeCostModel


def linear_result():
    graph = linear_stage_graph(2)
    units = uniform_units("model", 2)
    costs = uniform_stage_costs(graph, units, 1.0, 1.0, 1.0)
    costs.message_bytes = {MessageKey(0, u, 1, u): 1.0 for u in range(2)}
    plan = Plan(graph, units, (), order_from_text({0: "0F0 0F1 0I0 0W0 0I1 0W1", 1: "1F0 1I0 1W0 1F1 1I1 1W1"}))
    return plan, simulate(plan, costs, Topology(intra_bw=10.0))


def test_trace_json(tmp_path):
    plan, result = linear_result()
    path = tmp_path / "trace.json"
    write_chrome_trace(str(path), plan, result, label="zb")
    doc = json.loads(path.read_text())
    events = doc["traceEvents"]
    slices = [e for e in events if e["ph"] == "X"]
    assert len(slices) == plan.num_actions()
    f0 = next(e for e in slices if e["args"]["action"] == "1F0")
    assert f0["name"] == "model F mb0" and f0["pid"] == 1 and f0["ts"] == 1.1e6
    assert {e["args"]["name"] for e in events if e.get("name") == "process_name"} == {"rank 0", "rank 1"}
    starts = [e for e in events if e["ph"] == "s"]
    assert len(starts) == 4 and len([e for e in events if e["ph"] == "f"]) == 4
    assert any(e["ph"] == "C" and e["pid"] == 0 for e in events)
    assert doc["otherData"]["label"] == "zb"


def test_trace_with_measured(tmp_path):
    plan, result = linear_result()
    measured = {r: [(str(a), s * 1.1, e * 1.1) for a, s, e in rows] for r, rows in result.action_times().items()}
    path = tmp_path / "both.json"
    write_chrome_trace(str(path), plan, result, measured=measured)
    events = json.loads(path.read_text())["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in events if e.get("name") == "process_name"}
    assert names == {0: "rank 0 (plan)", 1: "rank 0 (measured)", 2: "rank 1 (plan)", 3: "rank 1 (measured)"}
    measured_slices = [e for e in events if e["ph"] == "X" and e["pid"] % 2 == 1]
    assert len(measured_slices) == plan.num_actions()


def test_gantt_png(tmp_path):
    model = get_model("tiny-vlm")
    graph = module_graph(model, 2, {"vit": [(0, 4), (4, 8)], "llm": [(0, 4), (4, 8)]})
    units, flows = build_units(model, graph, BATCH, {"vit": 2})
    costs = stage_costs(graph, units, flows, model, FakeCostModel(), BATCH)
    tg = TaskGraph.build(graph, units, flows, costs, split=True)
    plan = Plan(graph, units, flows, list_schedule(tg))
    result = simulate(plan, costs, taskgraph=tg, memory_limit_bytes=1e5)
    path = tmp_path / "gantt.png"
    write_gantt_png(str(path), plan, result, label="tiny")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    trace = tmp_path / "t.json"
    write_chrome_trace(str(trace), plan, result)
    assert json.loads(trace.read_text())["traceEvents"]
