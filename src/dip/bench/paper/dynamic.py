"""Fig. 8b (§7.2): per-iteration time of every system on the rise-and-fall image workload (VLM-S).

Forty iterations whose image-count bounds per micro-batch rise and fall twice
(:func:`dip.data.workload.generate_dynamic_batches`); every chosen iteration is planned by DIP, by
"DIP (no-opt)" — DIP's partition and sub-microbatches with the paper's plain dual-queue interleaving of
the default segment order (no tuning, reordering, polishing or memory search) — and by the paper's
baselines. A system's time at an iteration counts only when its plan fits the usable memory.
"""

from __future__ import annotations

import statistics

from dip.bench.paper.common import Context, Experiment, Row, Settings, row
from dip.bench.paper.plots import color, new_figure, save
from dip.data.workload import generate_dynamic_batches
from dip.errors import BadInput
from dip.planner import SearchOptions, check_schedule, plan_schedule

__all__ = ["NAME", "TITLE", "draw", "run", "steps"]

NAME = "dynamic"
TITLE = "Fig. 8b: iteration time on a rising and falling image workload (VLM-S)"
ITERATIONS = 40
NO_OPT = "dip (no-opt)"
BASELINES = ("megatron", "nnscaler", "optimus")
SYSTEMS = ("dip", NO_OPT, *BASELINES)
PEAK_ITERATION = 6
LATE_PHASE = (15, 20)


def steps(settings: Settings) -> int:
    return len(settings.dynamic_iterations or range(ITERATIONS))


def _search(name: str, ctx: Context, iteration: int) -> SearchOptions:
    if name == NO_OPT:
        return SearchOptions(rollouts=0, tune=False, polish=False, seed=iteration)
    return ctx.settings.search(iteration)


def run(ctx: Context) -> Experiment:
    s = ctx.settings
    model, hardware, cost_model = ctx.cost_setup(s.dynamic_model)
    batches = generate_dynamic_batches(model, s.seed, s.microbatches, iterations=ITERATIONS)
    wanted = set(s.dynamic_iterations or range(1, ITERATIONS + 1))
    timeline: dict[str, dict[int, float | None]] = {name: {} for name in SYSTEMS}
    images: dict[int, float] = {}
    applicable = [name for name in SYSTEMS if name in (NO_OPT, "dip") or _supports(name, model)]
    for batch in batches:
        it = batch.extra["iteration"]
        if it not in wanted:
            continue
        images[it] = statistics.mean(mb.images for mb in batch.microbatches)
        for name in applicable:
            sim = plan_schedule(
                "dip" if name == NO_OPT else name, model, batch, cost_model, hardware, search=_search(name, ctx, it)
            )
            timeline[name][it] = float(sim.result.iteration_time) if sim.fits else None
        ctx.tick(f"iteration {it}")
    rows: list[Row] = []
    for name in applicable:
        times = list(timeline[name].values())
        fits = all(t is not None for t in times)
        rows.append(row(NAME, f"{name}: mean iteration time", statistics.mean(times) if fits else None, "s", fits))
    dip = timeline["dip"]
    rows += _derived(timeline, dip, applicable)
    exp = Experiment(
        NAME,
        TITLE,
        rows,
        f"{NAME}.png",
        settings={
            "model": s.dynamic_model,
            "iterations": sorted(wanted),
            "microbatches": s.microbatches,
            "hardware": s.hardware,
            "search": s.search_label(),
        },
        notes=[
            f"Mean times are over the planned iterations (of {ITERATIONS}) and count only systems whose plan fits "
            "on every one of them.",
            "Ratios to DIP use only iterations where both plans fit.",
        ],
        data={"timeline": timeline, "mean_images": images},
    )
    draw(exp, ctx.figure_path(exp.figure))
    return exp


def _supports(name: str, model) -> bool:
    try:
        check_schedule(name, model)
    except BadInput:
        return False
    return True


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _derived(timeline, dip, applicable) -> list[Row]:
    rows = []
    if PEAK_ITERATION in dip:
        mega = _ratio(timeline["megatron"].get(PEAK_ITERATION), dip[PEAK_ITERATION])
        rows.append(row(NAME, f"iteration {PEAK_ITERATION}: Megatron-LM / DIP", mega, "x"))
        others = [
            _ratio(timeline[b].get(PEAK_ITERATION), dip[PEAK_ITERATION])
            for b in ("nnscaler", "optimus")
            if b in applicable
        ]
        others = [r for r in others if r is not None]
        rows.append(
            row(NAME, f"iteration {PEAK_ITERATION}: better of nnScaler*, Optimus / DIP", min(others, default=None), "x")
        )
    lo, hi = LATE_PHASE
    late = [_ratio(timeline["nnscaler"].get(i), dip[i]) for i in dip if lo <= i <= hi]
    late = [r for r in late if r is not None]
    if late:
        rows.append(row(NAME, f"iterations {lo}-{hi}: nnScaler* / DIP, largest", max(late), "x"))
    gains = [_ratio(timeline[NO_OPT].get(i), dip[i]) for i in dip]
    gains = [g for g in gains if g is not None]
    if gains:
        rows.append(row(NAME, "DIP (no-opt) / DIP, mean over iterations", statistics.mean(gains), "x"))
    return rows


def draw(exp: Experiment, path: str) -> None:
    timeline, images = exp.data["timeline"], exp.data["mean_images"]
    fig, ax = new_figure(9.0, 4.6)
    for name, points in timeline.items():
        if not points:
            continue
        its = sorted(points)
        fitting = [(i, points[i]) for i in its if points[i] is not None]
        style = "--" if name == NO_OPT else "-"
        ax.plot(
            [i for i, _ in fitting], [t for _, t in fitting], style, marker="o", ms=3, color=color(name), label=name
        )
        missing = [i for i in its if points[i] is None]
        if missing:
            ax.scatter(missing, [0] * len(missing), marker="x", color=color(name))
    ax.set_xticks(sorted(images))
    ax.set_xlabel("iteration")
    ax.set_ylabel("simulated iteration time (s)")
    ax.set_ylim(bottom=0)
    twin = ax.twinx()
    its = sorted(images)
    twin.plot(its, [images[i] for i in its], ":", color="#ff7f0e", label="mean images per micro-batch")
    twin.set_ylabel("mean images per micro-batch", color="#ff7f0e")
    twin.set_ylim(bottom=0)
    lines, labels = ax.get_legend_handles_labels()
    more, more_labels = twin.get_legend_handles_labels()
    ax.legend(lines + more, labels + more_labels, fontsize=8, loc="upper right")
    ax.set_title("Fig. 8b: per-iteration time on the rise-and-fall workload (x on the axis: plan does not fit)")
    save(fig, path)
