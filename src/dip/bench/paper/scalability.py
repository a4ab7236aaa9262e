"""Fig. 12 (§7.4): search time against the number of micro-batches, DIP against an exact solver.

Per model and micro-batch count, DIP plans one batch (the time its search took to reach its final
plan, one worker, the suite's search settings) and the exact CP-SAT model of the same problem
(:func:`dip.planner.exact.solve_exact`, every stage at DIP's chosen memory candidate, memory as a
relaxation) runs until it proves the optimum or hits the time limit. The paper compares with Z3 and
Gurobi; CP-SAT stands in for both.
"""

from __future__ import annotations

from dip.bench.paper.common import Context, Experiment, Row, Settings, row
from dip.bench.paper.plots import color, new_figure, save
from dip.cost import CostModel
from dip.data.workload import generate_batches
from dip.planner import plan_batch
from dip.planner.exact import MAX_TASKS, solve_exact
from dip.spec import load_model
from dip.spec.hardware import get_hardware

__all__ = ["NAME", "TITLE", "draw", "run", "steps"]

NAME = "scalability"
TITLE = "Fig. 12: search time vs micro-batches, DIP vs the exact solver"
EXACT_WORKERS = 2


def steps(settings: Settings) -> int:
    return len(settings.scalability_models) * len(settings.scalability_microbatches)


def run(ctx: Context) -> Experiment:
    s = ctx.settings
    hardware = get_hardware(s.hardware)
    points: dict[str, list[dict]] = {}
    rows: list[Row] = []
    for name in s.scalability_models:
        model = load_model(name)
        cost_model = CostModel(model, hardware)
        points[name] = []
        for m in s.scalability_microbatches:
            batch = generate_batches(model, 1, s.seed, microbatches=m)[0]
            res = plan_batch(model, batch, cost_model, hardware, options=s.search(m))
            point = {
                "microbatches": m,
                "dip_s": res.stats.time_to_best_s,
                "dip_search_s": res.stats.search_time_s,
                "dip_time_s": res.time_s,
                "tasks": res.problem.tg.num_tasks,
            }
            if point["tasks"] <= MAX_TASKS:
                ex = solve_exact(res.problem, time_limit_s=s.exact_time_limit_s, hint=res, workers=EXACT_WORKERS)
                point.update(
                    exact_s=ex.wall_s, exact_status=ex.status, exact_time_s=ex.time_s, exact_bound_s=ex.bound_s
                )
            else:
                point.update(exact_s=None, exact_status="too large", exact_time_s=None, exact_bound_s=None)
            points[name].append(point)
            rows.append(row(NAME, f"{name}, M={m}: DIP, time to its final plan", point["dip_s"], "s"))
            status = point["exact_status"]
            proved = status == "optimal"
            label = "exact, proved optimal" if proved else f"exact, not proved in {s.exact_time_limit_s:g} s limit"
            rows.append(row(NAME, f"{name}, M={m}: {label}", point["exact_s"] if proved else None, "s"))
            ctx.tick(f"{name}, M={m}")
    exp = Experiment(
        NAME,
        TITLE,
        rows,
        f"{NAME}.png",
        settings={
            "models": list(s.scalability_models),
            "microbatches": list(s.scalability_microbatches),
            "search": s.search_label(),
            "exact_time_limit_s": s.exact_time_limit_s,
            "exact_workers": EXACT_WORKERS,
            "hardware": s.hardware,
        },
        notes=[
            "The paper states DIP stays under 10 s and that Z3 and Gurobi do not finish within 30 minutes "
            "beyond 10 micro-batches (bounds, not numbers to compare).",
            "An exact row without a number means CP-SAT did not prove the optimum within the limit "
            "(the figure marks it with a cross at the limit); its best order and bound are in results.json.",
        ],
        data={"points": points},
    )
    draw(exp, ctx.figure_path(exp.figure))
    return exp


def draw(exp: Experiment, path: str) -> None:
    fig, ax = new_figure(8.0, 4.4)
    limit = exp.settings["exact_time_limit_s"]
    markers = ("o", "s", "^", "D")
    for k, (name, pts) in enumerate(exp.data["points"].items()):
        mk = markers[k % len(markers)]
        ms = [p["microbatches"] for p in pts]
        ax.plot(
            ms, [p["dip_s"] for p in pts], marker=mk, color=color("dip"), label=f"DIP, time to its final plan, {name}"
        )
        proved = [(p["microbatches"], p["exact_s"]) for p in pts if p["exact_status"] == "optimal"]
        if proved:
            ax.plot(*zip(*proved), marker=mk, ls="--", color="#1f77b4", label=f"exact (CP-SAT), {name}")
        timeouts = [p["microbatches"] for p in pts if p["exact_status"] != "optimal"]
        if timeouts:
            ax.scatter(
                timeouts, [limit] * len(timeouts), marker="x", color="red", s=60, label=f"exact timed out, {name}"
            )
    ax.set_yscale("log")
    ax.set_xlabel("micro-batches per iteration")
    ax.set_ylabel("search time (s, log scale)")
    ax.set_title(f"Fig. 12: search time; red x = exact solver not done within {limit:g} s")
    ax.legend(fontsize=8)
    save(fig, path)
