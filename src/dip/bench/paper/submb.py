"""Fig. 9 (§7.3): the image sub-microbatch size, best against worst schedule (VLM-S).

For every size ``B`` the offline partitioner runs with ``B_vit = B`` (its segments ``K_i`` follow
from the latencies at that size). The best schedule is DIP's plan of the batch; the worst comes from
the same searcher with its objective inverted: MCTS segment reordering that maximises the iteration
time of the dual-queue interleaving (the paper's tracking configuration, memory candidates chosen as
usual), over ``rollouts`` rollouts of the settings, among schedules that fit.
"""

from __future__ import annotations

import math

import numpy as np

from dip.bench.paper.common import Context, Experiment, Row, Settings, mean_or_none, row
from dip.bench.paper.plots import color, new_figure, save
from dip.data.workload import generate_batches
from dip.planner import SearchOptions, partition_model, plan_batch
from dip.planner.evaluate import PAPER_CONFIG, Evaluator, active_items
from dip.planner.mcts import MCTSSearch
from dip.planner.problem import PlanProblem
from dip.planner.result import CALIBRATION_SEED
from dip.schedule.units import SPLITTABLE_KINDS

__all__ = ["NAME", "TITLE", "draw", "run", "steps", "worst_makespan"]

NAME = "submb"
TITLE = "Fig. 9: image sub-microbatch size, best vs worst schedule (VLM-S)"
SMALL = (4, 12)  # the paper's "smaller sizes"
MEDIUM = (8, 16)  # sizes the "< 8" penalty is measured against


def steps(settings: Settings) -> int:
    return len(settings.submb_sizes) * settings.submb_batches


def worst_makespan(problem: PlanProblem, rollouts: int, seed: int, passes: int = SearchOptions().passes) -> float:
    """The longest makespan of a fitting schedule found by MCTS with the objective inverted, every
    candidate scored as DIP's search scores it (``passes`` interleaving passes, paper tracking)."""
    ev = Evaluator(problem, passes=passes)
    first = ev.evaluate(problem.default_sequence, PAPER_CONFIG)
    worst = first.makespan if first.feasible else -math.inf
    search = MCTSSearch(
        problem.default_sequence,
        -first.makespan if first.feasible else math.inf,
        np.random.default_rng(seed),
        active=[active_items(problem, PAPER_CONFIG)],
    )
    done = 0
    while done < rollouts and not search.exhausted:
        proposal = search.propose()
        if proposal is None:
            break
        node, seqs, _ = proposal
        seqs = seqs[: rollouts - done]
        scores = []
        for seq in seqs:
            sched = ev.evaluate(seq, PAPER_CONFIG)
            done += 1
            if sched.feasible:
                worst = max(worst, sched.makespan)
            scores.append(-sched.makespan if sched.feasible else math.inf)  # lower is better for the search
        search.update(node, scores, seqs)
    return worst


def split_module(model) -> str:
    return next(m.name for m in model.modules if m.kind in SPLITTABLE_KINDS)


def run(ctx: Context) -> Experiment:
    s = ctx.settings
    model, hardware, cost_model = ctx.cost_setup(s.submb_model)
    module = split_module(model)
    sample = generate_batches(model, 1, CALIBRATION_SEED)
    batches = generate_batches(model, s.submb_batches, s.seed, microbatches=s.microbatches)
    best: dict[int, float | None] = {}
    worst: dict[int, float | None] = {}
    segments: dict[int, dict] = {}
    for size in s.submb_sizes:
        partition = partition_model(model, cost_model, sample=sample, sub_microbatch={module: size})
        segments[size] = dict(partition.segments)
        bests, worsts = [], []
        for batch in batches:
            options = s.search(batch.index)
            res = plan_batch(model, batch, cost_model, hardware, partition=partition, options=options)
            bests.append(None if res.sim.oom else res.time_s)
            bad = worst_makespan(res.problem, s.rollouts, options.seed, options.passes)
            worsts.append(bad + res.sim.dp_allreduce_time if math.isfinite(bad) else None)
            ctx.tick(f"B={size}, batch {batch.index}")
        best[size], worst[size] = mean_or_none(bests), mean_or_none(worsts)
    rows: list[Row] = []
    for size in s.submb_sizes:
        rows.append(row(NAME, f"B={size}: best schedule", best[size], "s", best[size] is not None))
        rows.append(row(NAME, f"B={size}: worst schedule", worst[size], "s", worst[size] is not None))
    rows += _derived(best, worst)
    exp = Experiment(
        NAME,
        TITLE,
        rows,
        f"{NAME}.png",
        settings={
            "model": s.submb_model,
            "module": module,
            "sizes": list(s.submb_sizes),
            "batches": s.submb_batches,
            "microbatches": s.microbatches,
            "search": s.search_label(),
            "hardware": s.hardware,
        },
        notes=[
            "Segments per module at each size (K_i): "
            + "; ".join(f"B={b}: {', '.join(f'{k} {v}' for k, v in seg.items())}" for b, seg in segments.items())
            + ".",
            "The worst schedule searches segment orders near the default one (the searcher's windowed tree), "
            "so it bounds how much a poor order costs rather than the worst order overall.",
        ],
        data={"best": best, "worst": worst, "segments": segments},
    )
    draw(exp, ctx.figure_path(exp.figure))
    return exp


def _gap(best, worst, sizes) -> float | None:
    gaps = [worst[b] / best[b] for b in sizes if best.get(b) and worst.get(b) is not None]
    return max(gaps) if gaps else None


def _derived(best: dict, worst: dict) -> list[Row]:
    sizes = [b for b in best if best[b] is not None]
    if not sizes:
        return []
    rows = [row(NAME, "best image sub-microbatch size", min(sizes, key=lambda b: best[b]), "images")]
    small = [b for b in sizes if SMALL[0] <= b <= SMALL[1]]
    large = [b for b in sizes if b > SMALL[1]]
    if large:
        rows.append(row(NAME, "worst / best schedule, largest over sizes above 12", _gap(best, worst, large), "x"))
    if small:
        rows.append(row(NAME, "worst / best schedule, largest over sizes 4-12", _gap(best, worst, small), "x"))
    below = [best[b] for b in sizes if b < MEDIUM[0]]
    medium = [best[b] for b in sizes if MEDIUM[0] <= b <= MEDIUM[1]]
    if below and medium:
        rows.append(row(NAME, "sizes below 8 / sizes 8-16, best iteration time", min(below) / min(medium), "x"))
    return rows


def draw(exp: Experiment, path: str) -> None:
    best, worst = exp.data["best"], exp.data["worst"]
    sizes = sorted(best)
    fig, ax = new_figure(8.0, 4.4)
    for label, values, c in (("best schedule (DIP)", best, color("dip")), ("worst schedule", worst, "#555555")):
        pts = [(b, values[b]) for b in sizes if values[b] is not None]
        ax.plot([b for b, _ in pts], [t for _, t in pts], marker="o", color=c, label=label)
    gaps = [(b, worst[b] / best[b] - 1) for b in sizes if best[b] and worst[b] is not None]
    for b, g in gaps:
        ax.annotate(
            f"+{100 * g:.1f}%", (b, worst[b]), textcoords="offset points", xytext=(0, 6), fontsize=7, ha="center"
        )
    ax.set_xticks(sizes)
    ax.set_xlabel("image sub-microbatch size B_vit (images)")
    ax.set_ylabel("simulated iteration time (s)")
    ax.set_title("Fig. 9: sub-microbatch size; label = worst schedule's extra time over the best")
    ax.legend()
    save(fig, path)
