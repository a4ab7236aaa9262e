"""Fig. 14 (§7.5): simulated MFU of the XL setups (3k-16k H100 GPUs) per system.

Each XL model (Table 6: DP 96-128, TP 8, PP 4-16) is planned on generated batches by DIP and the
paper's baselines; MFU counts the model FLOPs of all replicas over all GPUs and the simulated
iteration time, including the data-parallel gradient all-reduce. Like the paper's, these numbers
are simulated only.
"""

from __future__ import annotations

from dip.bench.paper.common import Context, Experiment, Row, Settings, mean_or_none, row
from dip.bench.paper.plots import grouped_bars, new_figure, save
from dip.cost import CostModel
from dip.data.workload import generate_batches
from dip.errors import BadInput
from dip.planner import check_schedule, plan_schedule
from dip.spec import load_model
from dip.spec.hardware import get_hardware

__all__ = ["NAME", "TITLE", "draw", "run", "steps"]

NAME = "xl"
TITLE = "Fig. 14: simulated MFU of the XL setups on H100 clusters"
SYSTEMS = ("dip", "megatron", "nnscaler", "optimus")


def steps(settings: Settings) -> int:
    return len(settings.xl_models) * settings.xl_batches


def _applicable(model) -> list[str]:
    out = []
    for name in SYSTEMS:
        try:
            check_schedule(name, model)
        except BadInput:
            continue
        out.append(name)
    return out


def run(ctx: Context) -> Experiment:
    s = ctx.settings
    hardware = get_hardware(s.xl_hardware)
    results: dict[str, dict[str, dict]] = {}
    for name in s.xl_models:
        model = load_model(name)
        cost_model = CostModel(model, hardware)
        systems = _applicable(model)
        per: dict[str, dict[str, list]] = {sys_: {"mfu": [], "time_s": [], "fits": []} for sys_ in systems}
        for batch in generate_batches(model, s.xl_batches, s.seed, microbatches=s.microbatches):
            for sys_ in systems:
                sim = plan_schedule(sys_, model, batch, cost_model, hardware, search=s.search(batch.index))
                per[sys_]["mfu"].append(float(sim.result.mfu))
                per[sys_]["time_s"].append(float(sim.result.iteration_time))
                per[sys_]["fits"].append(sim.fits)
            ctx.tick(f"{name}, batch {batch.index}")
        results[name] = {
            sys_: {
                "mfu": mean_or_none(v["mfu"]) if all(v["fits"]) else None,
                "time_s": mean_or_none(v["time_s"]) if all(v["fits"]) else None,
                "fits": all(v["fits"]),
            }
            for sys_, v in per.items()
        }
    rows: list[Row] = []
    for name, systems in results.items():
        for sys_, v in systems.items():
            rows.append(row(NAME, f"{name}/{sys_}: MFU", v["mfu"], "", v["fits"]))
    for fam, label in (("VLM-XL", "8k and 16k"), ("T2V-XL", "3k and 6k")):
        mfus = [sy["dip"]["mfu"] for n, sy in results.items() if n.startswith(fam) and sy["dip"]["mfu"] is not None]
        if mfus:
            rows.append(row(NAME, f"{fam}: DIP MFU, better of {label}", max(mfus), ""))
    gains = [
        sy[b]["time_s"] / sy["dip"]["time_s"]
        for sy in results.values()
        if sy["dip"]["time_s"]
        for b in sy
        if b != "dip" and sy[b]["time_s"] is not None
    ]
    if gains:
        rows.append(row(NAME, "largest DIP speedup over a baseline", max(gains), "x"))
    exp = Experiment(
        NAME,
        TITLE,
        rows,
        f"{NAME}.png",
        settings={
            "models": list(s.xl_models),
            "batches": s.xl_batches,
            "microbatches_per_replica": s.microbatches,
            "hardware": s.xl_hardware,
            "search": s.search_label(),
        },
        notes=[
            f"Mean over {s.xl_batches} generated batch(es) of {s.microbatches} micro-batches per replica; "
            "the paper's VLM-XL and T2V-XL MFUs are read as the better of each family's two setups."
        ],
        data=results,
    )
    draw(exp, ctx.figure_path(exp.figure))
    return exp


def draw(exp: Experiment, path: str) -> None:
    results = exp.data
    models = list(results)
    fig, ax = new_figure(max(8.0, 2.0 * len(models)), 4.4)

    def mfu(model: str, name: str) -> float | bool | None:
        v = results[model].get(name)
        if v is None:
            return None
        return False if v["mfu"] is None else v["mfu"]

    grouped_bars(ax, models, SYSTEMS, mfu, marker_y=0.005)
    ax.set_ylabel("simulated MFU (model FLOPs / peak FLOPs)")
    ax.set_title("Fig. 14: simulated MFU on H100 clusters (x at the bottom: plan does not fit)")
    ax.legend(fontsize=8)
    save(fig, path)
