"""Table 1 (§2.3): a 7B language model against a 7B VLM on static and on dynamic data, 1F1B on 8 GPUs.

All three setups run the ``1f1b`` schedule at TP 2, PP 4 with the same FLOPs per iteration: the
number of micro-batches of each is chosen so that an iteration holds the paper's PFLOPs (12.8).
Static data repeats one micro-batch (the dynamic data's median by FLOPs) in every slot; dynamic
data is the VLM workload's generated batches. Time and MFU are simulated on the suite's hardware.
"""

from __future__ import annotations

import statistics

from dip.bench.paper.common import Context, Experiment, Settings, row
from dip.bench.paper.plots import color, new_figure, save
from dip.bench.paper.reference import paper_value
from dip.cost import CostModel
from dip.cost.flops import microbatch_flops, module_flops
from dip.data.meta import BatchMeta, work_for
from dip.data.workload import generate_batches
from dip.planner import plan_schedule
from dip.spec import load_model
from dip.spec.hardware import get_hardware

__all__ = ["NAME", "TITLE", "draw", "run", "steps"]

NAME = "table1"
TITLE = "Table 1: LM-7B vs VLM-7B on static and dynamic data (1F1B, TP 2, PP 4)"
SCHEDULE = "1f1b"
PROBE_MICROBATCHES = 64
SETUPS = ("LM-7B", "VLM-7B static data", "VLM-7B dynamic data")


def steps(settings: Settings) -> int:
    return 2 + 2 * settings.table1_batches


def _microbatches_for(target_flops: float, flops_per_microbatch: float) -> int:
    return max(1, round(target_flops / flops_per_microbatch))


def _simulate(name, model, batches, cost_model, hardware, ctx) -> dict:
    times, flops, mfus, fits = [], [], [], []
    for b in batches:
        sim = plan_schedule(SCHEDULE, model, b, cost_model, hardware)
        times.append(float(sim.result.iteration_time))
        flops.append(float(sim.costs.flops_total) * model.parallel.dp)
        mfus.append(float(sim.result.mfu))
        fits.append(sim.fits)
        ctx.tick(f"{name}, batch {b.index}")
    return {
        "time_s": statistics.mean(times),
        "pflops": statistics.mean(flops) / 1e15,
        "mfu": statistics.mean(mfus),
        "fits": all(fits),
        "microbatches": len(batches[0].microbatches),
    }


def _vision_share(model, mb) -> float:
    """The share of a micro-batch's model FLOPs that its vision encoder does."""
    vision = sum(module_flops(m, work_for(model, m, mb)) for m in model.modules if m.kind == "vit")
    return vision / microbatch_flops(model, mb)


def run(ctx: Context) -> Experiment:
    s = ctx.settings
    hardware = get_hardware(s.hardware)
    target = paper_value(NAME, "LM-7B: PFLOPs per iteration") * 1e15
    lm, vlm = load_model(s.table1_lm), load_model(s.table1_vlm)
    lm_cost, vlm_cost = CostModel(lm, hardware), CostModel(vlm, hardware)

    lm_probe = generate_batches(lm, 1, s.seed, microbatches=PROBE_MICROBATCHES)[0].microbatches
    lm_m = _microbatches_for(target, statistics.mean(lm_cost.microbatch_flops(mb) for mb in lm_probe))
    lm_batches = generate_batches(lm, s.table1_batches, s.seed, microbatches=lm_m)

    probe = generate_batches(vlm, 1, s.seed, microbatches=PROBE_MICROBATCHES)[0].microbatches
    probe_flops = [vlm_cost.microbatch_flops(mb) for mb in probe]
    vlm_m = _microbatches_for(target, statistics.mean(probe_flops))
    median = sorted(zip(probe_flops, range(len(probe))))[len(probe) // 2][1]
    static_mb = probe[median]
    static_m = _microbatches_for(target, vlm_cost.microbatch_flops(static_mb))
    static = [BatchMeta((static_mb,) * static_m, index=0, extra={"source": "static"})]  # every batch the same
    dynamic = generate_batches(vlm, s.table1_batches, s.seed, microbatches=vlm_m)
    ctx.tick("batches")

    results = {
        "LM-7B": _simulate("LM-7B", lm, lm_batches, lm_cost, hardware, ctx),
        "VLM-7B static data": _simulate("VLM-7B static data", vlm, static, vlm_cost, hardware, ctx),
        "VLM-7B dynamic data": _simulate("VLM-7B dynamic data", vlm, dynamic, vlm_cost, hardware, ctx),
    }
    rows = []
    for setup in SETUPS:
        r = results[setup]
        rows.append(row(NAME, f"{setup}: iteration time", r["time_s"], "s", r["fits"]))
        rows.append(row(NAME, f"{setup}: PFLOPs per iteration", r["pflops"], "PFLOP"))
        rows.append(row(NAME, f"{setup}: MFU", r["mfu"], ""))
    lm_mfu = results["LM-7B"]["mfu"]
    for setup in SETUPS[1:]:
        rows.append(row(NAME, f"{setup}: overhead (1 - MFU / LM MFU)", 1 - results[setup]["mfu"] / lm_mfu, ""))
    exp = Experiment(
        NAME,
        TITLE,
        rows,
        f"{NAME}.png",
        settings={
            "schedule": SCHEDULE,
            "hardware": s.hardware,
            "batches": s.table1_batches,
            "microbatches": {k: v["microbatches"] for k, v in results.items()},
            "static_microbatch_images": static_mb.images,
            "vision_flops_share": round(_vision_share(vlm, static_mb), 2),
            "target_pflops": target / 1e15,
        },
        notes=[
            "The micro-batch counts hold every setup at the paper's PFLOPs per iteration, so the PFLOPs rows "
            "check that setting rather than measure anything.",
            f"Static data repeats one {s.table1_vlm} micro-batch with {static_mb.images} images (the median "
            "micro-batch by FLOPs of the generated data) in every slot.",
        ],
        data=results,
    )
    draw(exp, ctx.figure_path(exp.figure))
    return exp


def draw(exp: Experiment, path: str) -> None:
    fig, ax = new_figure(7.5, 4.2)
    by_name = {r.name: r for r in exp.rows}
    xs = range(len(SETUPS))
    width = 0.38
    for k, who in enumerate(("ours", "paper")):
        vals = [getattr(by_name[f"{setup}: MFU"], who) for setup in SETUPS]
        bars = ax.bar(
            [x + (k - 0.5) * width for x in xs],
            [v if v is not None else 0.0 for v in vals],
            width,
            label="this repository (simulated)" if who == "ours" else "paper (measured)",
            color=color(who),
        )
        ax.bar_label(bars, labels=[f"{v:.3f}" if v is not None else "n/a" for v in vals], fontsize=8)
    ax.set_xticks(list(xs), SETUPS)
    ax.set_ylabel("MFU (model FLOPs / peak FLOPs)")
    ax.set_title("Table 1: the same FLOPs per iteration under 1F1B (8 GPUs, TP 2, PP 4)")
    ax.legend()
    save(fig, path)
