"""Draw docs/figures/why.png: one VLM-S batch under Megatron-LM's interleaved 1F1B and under DIP, on
one time axis (simulated H800). Run: .venv/bin/python scripts/why_figure.py"""

from dip.cost import CostModel
from dip.data.workload import generate_batches
from dip.planner import SearchOptions, plan_schedule
from dip.spec.hardware import get_hardware
from dip.spec.presets import get_model
from dip.viz.gantt import write_gantt_comparison_png

model = get_model("VLM-S")
hardware = get_hardware("H800")
cost_model = CostModel(model, hardware)
batch = generate_batches(model, 1, 0, microbatches=16)[0]
runs = []
for label, name in (("Megatron-LM (interleaved 1F1B, layers balanced by time)", "megatron"), ("DIP", "dip")):
    sim = plan_schedule(name, model, batch, cost_model, hardware, search=SearchOptions(rollouts=50, seed=0))
    runs.append((label, sim.plan, sim.result))
write_gantt_comparison_png(
    "docs/figures/why.png",
    runs,
    title="One VLM-S batch (16 micro-batches), 4 pipeline ranks: every bar a stage, white space idle GPUs",
)
print("wrote docs/figures/why.png")
