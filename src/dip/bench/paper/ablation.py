"""Table 5 (§7.3): the performance breakdown on VLM-S, technique by technique.

:func:`dip.planner.ablation.ablation` runs the five cumulative steps on a batch (Megatron-LM; DIP's
modality-aware partition and sub-microbatches under a plain list scheduler; the dual-queue stage
interleaving; MCTS segment reordering; per-layer memory optimisation). A step's row is its mean
iteration time over the batches, in the table's order.
"""

from __future__ import annotations

import textwrap

from dip.bench.paper.common import Context, Experiment, Settings, mean_images, mean_or_none, row
from dip.bench.paper.plots import color, new_figure, save
from dip.data.workload import generate_batches
from dip.planner.ablation import ablation

__all__ = ["NAME", "TITLE", "draw", "run", "steps"]

NAME = "ablation"
TITLE = "Table 5: performance breakdown on VLM-S"
# the planner's step names, in the table's order, and the table's wording
STEPS = (
    ("megatron", "Megatron-LM"),
    ("+partitioner", "+ modality-aware partitioner"),
    ("+interleaving", "+ pipeline stage interleaving"),
    ("+reordering", "+ pipeline segment reordering"),
    ("+memory", "+ per-layer memory optimisation"),
)


def steps(settings: Settings) -> int:
    return settings.ablation_batches


def run(ctx: Context) -> Experiment:
    s = ctx.settings
    model, hardware, cost_model = ctx.cost_setup(s.ablation_model)
    per_step: dict[str, list[float | None]] = {key: [] for key, _ in STEPS}
    fits: dict[str, list[bool]] = {key: [] for key, _ in STEPS}
    strategies: dict[str, list[str]] = {key: [] for key, _ in STEPS}
    batches = generate_batches(model, s.ablation_batches, s.seed, microbatches=s.microbatches)
    for batch in batches:
        search = s.search(batch.index)
        found = ablation(
            model, batch, cost_model, hardware, budget_s=search.budget_s, rollouts=search.rollouts, seed=search.seed
        )
        got = {r["step"]: r for r in found}
        for key, _ in STEPS:
            per_step[key].append(got[key]["time_s"])
            fits[key].append(bool(got[key]["fits"]))
            strategies[key].append(str(got[key]["strategy"]))
        ctx.tick(f"batch {batch.index}")
    rows = [row(NAME, label, mean_or_none(per_step[key]), "s", all(fits[key])) for key, label in STEPS]
    exp = Experiment(
        NAME,
        TITLE,
        rows,
        f"{NAME}.png",
        settings={
            "model": s.ablation_model,
            "batches": s.ablation_batches,
            "microbatches": s.microbatches,
            "hardware": s.hardware,
            "search": s.search_label(),
            "images_per_microbatch": round(mean_images(batches), 1),
        },
        notes=[
            f"Mean simulated iteration time over {s.ablation_batches} generated batches; the searches of steps "
            f"4 and 5 run {s.search_label()} each. Memory strategy per step: "
            + "; ".join(f"{label}: {', '.join(sorted(set(strategies[key])))}" for key, label in STEPS)
            + "."
        ],
        data={"per_batch": per_step},
    )
    draw(exp, ctx.figure_path(exp.figure))
    return exp


def draw(exp: Experiment, path: str) -> None:
    fig, (ax, gain_ax) = new_figure(12.0, 4.6, ncols=2)
    labels = [textwrap.fill(r.name, 16) for r in exp.rows]
    xs = range(len(labels))
    width = 0.38
    for k, who in enumerate(("ours", "paper")):
        vals = [getattr(r, who) for r in exp.rows]
        offsets = [x + (k - 0.5) * width for x in xs]
        tag = "this repository (simulated H800)" if who == "ours" else "paper (measured)"
        bars = ax.bar(offsets, [v or 0.0 for v in vals], width, color=color(who), label=tag)
        ax.bar_label(bars, labels=[f"{v:.2f}" if v is not None else "n/a" for v in vals], fontsize=7)
        base = vals[0]
        gains = [base / v if base and v else 0.0 for v in vals]
        bars = gain_ax.bar(offsets, gains, width, color=color(who), label=tag)
        gain_ax.bar_label(bars, labels=[f"{g:.2f}x" for g in gains], fontsize=7)
    for a in (ax, gain_ax):
        a.set_xticks(list(xs), labels, fontsize=7)
        a.legend(fontsize=8)
    ax.set_ylabel("iteration time (s)")
    ax.set_title("Table 5: iteration time, each technique added to the previous ones")
    gain_ax.set_ylabel("speedup over Megatron-LM (x)")
    gain_ax.set_title("Table 5: speedup over the first row (VLM-S)")
    save(fig, path)
