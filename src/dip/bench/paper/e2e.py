"""Fig. 8a (§7.2): mean iteration time of DIP and of the baselines over the same generated batches.

Per model, :func:`dip.planner.report.plan_batches` plans every batch with DIP and simulates every
applicable baseline on it (the paper's Megatron-LM, nnScaler* and Optimus, VLM only; plus 1F1B,
interleaved 1F1B and ZB-H1 for reference). A system's row is its mean iteration time over the
batches when its plan fits the usable memory on every batch, else ``ours`` is empty and ``fits``
false. DIP's gain over each paper baseline (baseline time / DIP time) gives the ranges the paper
states per family.
"""

from __future__ import annotations

from dip.bench.paper.common import Context, Experiment, Row, Settings, mean_or_none, row
from dip.bench.paper.plots import grouped_bars, new_figure, save
from dip.planner.report import PlanRequest, plan_batches
from dip.spec import load_model

__all__ = ["NAME", "TITLE", "draw", "model_times", "run", "steps"]

NAME = "e2e"
TITLE = "Fig. 8a: end-to-end iteration time, DIP vs the baselines"
PAPER_BASELINES = ("megatron", "nnscaler", "optimus")
REFERENCE_BASELINES = ("1f1b", "interleaved", "zb-h1")
SYSTEMS = ("dip", *PAPER_BASELINES, *REFERENCE_BASELINES)


def steps(settings: Settings) -> int:
    return len(settings.e2e_models)


def family(model_name: str) -> str:
    return "T2V" if load_model(model_name).workload == "t2v" else "VLM"


def model_times(model: str, ctx: Context) -> dict[str, dict]:
    """Per system: ``{"time_s": mean or None, "fits": bool, "per_batch": [...]}`` on ``model``."""
    s = ctx.settings
    search = s.search()
    request = PlanRequest(
        model=model,
        batches=s.e2e_batches,
        seed=s.seed,
        microbatches=s.microbatches,
        hardware=s.hardware,
        budget_s=search.budget_s,
        rollouts=search.rollouts,
        search_options={"polish": search.polish},
        baseline_names=PAPER_BASELINES + REFERENCE_BASELINES,
    )
    out, _ = plan_batches(request)
    rows = out["per_batch"]
    dip_fits = [max(r["peak_memory_bytes"]) <= r["memory_limit_bytes"] for r in rows]
    systems = {"dip": {"per_batch": [r["dip_time_s"] for r in rows], "fits": all(dip_fits)}}
    for name in PAPER_BASELINES + REFERENCE_BASELINES:
        if name not in rows[0]["baselines"]:
            continue  # not applicable to this model (e.g. Optimus on T2V)
        systems[name] = {
            "per_batch": [r["baselines"][name] for r in rows],
            "fits": all(r["baselines_fit"][name] for r in rows),
        }
    for v in systems.values():
        v["time_s"] = mean_or_none(v["per_batch"]) if v["fits"] else None
    return systems


def run(ctx: Context) -> Experiment:
    s = ctx.settings
    results: dict[str, dict[str, dict]] = {}
    for model in s.e2e_models:
        results[model] = model_times(model, ctx)
        ctx.tick(model)
    rows: list[Row] = []
    for model, systems in results.items():
        for name in SYSTEMS:
            if name in systems:
                rows.append(row(NAME, f"{model}/{name}", systems[name]["time_s"], "s", systems[name]["fits"]))
    for fam in ("VLM", "T2V"):
        gains = [
            systems[b]["time_s"] / systems["dip"]["time_s"]
            for model, systems in results.items()
            if family(model) == fam and systems["dip"]["time_s"]
            for b in PAPER_BASELINES
            if b in systems and systems[b]["time_s"] is not None
        ]
        if gains:
            rows.append(row(NAME, f"{fam}: DIP speedup over its baselines, lowest", min(gains), "x"))
            rows.append(row(NAME, f"{fam}: DIP speedup over its baselines, highest", max(gains), "x"))
    exp = Experiment(
        NAME,
        TITLE,
        rows,
        f"{NAME}.png",
        settings={
            "models": list(s.e2e_models),
            "batches": s.e2e_batches,
            "microbatches": s.microbatches,
            "hardware": s.hardware,
            "search": s.search_label(),
            "seed": s.seed,
        },
        notes=[
            f"Mean simulated iteration time over {s.e2e_batches} generated batches of {s.microbatches} "
            f"micro-batches per model on {s.hardware}; DIP searches {s.search_label()}.",
            "The speedup ranges use the paper's baselines only (Megatron-LM, nnScaler*, Optimus) and only "
            "plans that fit; 1F1B, interleaved 1F1B and ZB-H1 are listed for reference.",
        ],
        data=results,
    )
    draw(exp, ctx.figure_path(exp.figure))
    return exp


def draw(exp: Experiment, path: str) -> None:
    results = exp.data
    models = list(results)
    fig, ax = new_figure(max(8.0, 1.9 * len(models)), 4.6)

    def relative(model: str, name: str) -> float | bool | None:
        systems = results[model]
        if name not in systems:
            return None
        dip, t = systems["dip"]["time_s"], systems[name]["time_s"]
        return False if t is None or not dip else t / dip

    grouped_bars(ax, models, SYSTEMS, relative, marker_y=0.05)
    ax.axhline(1.0, color="black", lw=0.8, ls=":")
    ax.set_ylabel("iteration time / DIP's (x, lower is better)")
    ax.set_title("Fig. 8a: mean simulated iteration time relative to DIP (x at the bottom: plan does not fit)")
    ax.legend(ncol=4, fontsize=8)
    save(fig, path)
