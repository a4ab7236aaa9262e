"""``dip bench planner``: DIP against every baseline, the ablation, bounds and search efficiency.

Sections (all measured side by side in one run):

* ``e2e``: per model (VLM-S, VLM-M, VLM-L, T2V-S, T2V-L), mean iteration time of DIP and of every
  baseline over the same generated batches, DIP's speedup over each, next to the paper's ranges
  (VLM 1.156-1.762x, T2V 1.366-1.973x over the baselines); DIP's gap to the lower bounds;
* ``ablation``: the paper's Table 5 order on VLM-S (megatron, +partitioner, +interleaving,
  +reordering, +memory optimisation);
* ``curve``: best-so-far iteration time over search time for one VLM-L batch;
* ``strategies``: MCTS vs DFS vs random search under the same budget on that batch (Fig. 11).
"""

from __future__ import annotations

import argparse
import itertools
import time
from typing import Any

from dip.cost import CostModel
from dip.data.workload import generate_batches
from dip.errors import positive_int
from dip.io import emit
from dip.planner import SearchOptions, plan_batch
from dip.planner.ablation import ablation
from dip.planner.report import PlanRequest, plan_batches
from dip.spec import load_model
from dip.spec.hardware import get_hardware

MODELS = ("VLM-S", "VLM-M", "VLM-L", "T2V-S", "T2V-L")
PAPER_RANGE = {"vlm": (1.156, 1.762), "t2v": (1.366, 1.973)}


def e2e(models, batches: int, budget: float, seed: int) -> list[dict[str, Any]]:

    rows = []
    for name in models:
        out, _ = plan_batches(PlanRequest(model=name, batches=batches, seed=seed, budget_s=budget))
        mean = out["mean"]
        fitting = {k: v for k, v in mean["speedup_vs"].items() if v is not None}  # over-limit plans have none
        workload = "t2v" if name.upper().startswith("T2V") else "vlm"
        rows.append(
            {
                "model": out["model"],
                "batches": out["batches"],
                "dip_time_s": mean["dip_time_s"],
                "baselines": mean["baselines"],
                "speedup_vs": mean["speedup_vs"],
                "speedup_range": [min(fitting.values()), max(fitting.values())] if fitting else None,
                "paper_range": list(PAPER_RANGE[workload]),
                "gap_to_lower_bound": mean["dip_time_s"] / mean["lower_bound_s"] - 1,
                "gap_to_fastest_bound": mean["dip_time_s"] / mean["lower_bound_fastest_s"] - 1,
                "search_time_s": mean["search_time_s"],
                "time_to_best_s": mean["time_to_best_s"],
                "faster_than_all": all(mean["dip_time_s"] < t for t in mean["baselines"].values() if t is not None),
            }
        )
    return rows


def _batch(model_name: str, seed: int):
    model = load_model(model_name)
    hardware = get_hardware("H800")
    return model, generate_batches(model, 1, seed)[0], CostModel(model, hardware), hardware


def ablation_rows(budget: float, seed: int) -> list[dict[str, Any]]:

    model, batch, cost_model, hardware = _batch("VLM-S", seed)
    rows = ablation(model, batch, cost_model, hardware, budget_s=budget, seed=seed)
    for a, b in itertools.pairwise(rows):
        b["not_slower"] = b["time_s"] <= a["time_s"] * (1 + 1e-9)
    return rows


def curve(budget: float, seed: int) -> dict[str, Any]:

    model, batch, cost_model, hardware = _batch("VLM-L", seed)
    res = plan_batch(model, batch, cost_model, hardware, options=SearchOptions(budget_s=budget, seed=seed))
    final = res.time_s
    reached = next((t for t, v in res.stats.curve if v <= final * 1.01), None)
    return {
        "model": "VLM-L",
        "budget_s": budget,
        "final_s": final,
        "lower_bound_s": res.lower_bound_s,
        "initial_s": res.initial_time_s,
        "time_to_within_1pct_s": reached,
        "curve": [[t, v] for t, v in res.stats.curve],
        "gains_s": res.stats.gains,
    }


def strategies(budget: float, seed: int) -> list[dict[str, Any]]:
    """Search strategies alone (no polishing), same tuned starting point and budget."""

    model, batch, cost_model, hardware = _batch("VLM-L", seed)
    rows = []
    for name in ("mcts", "dfs", "random"):
        res = plan_batch(
            model,
            batch,
            cost_model,
            hardware,
            options=SearchOptions(budget_s=budget, seed=seed, strategy=name, polish=False),
        )
        rows.append(
            {
                "strategy": name,
                "final_s": res.time_s,
                "rollouts": res.stats.rollouts,
                "curve": [[t, v] for t, v in res.stats.curve],
            }
        )
    return rows


def run(args: argparse.Namespace) -> int:
    batches = positive_int("batches", args.batches if args.batches is not None else (3 if args.quick else 50))
    budget = args.budget if args.budget is not None else (1.0 if args.quick else 2.0)
    t0 = time.perf_counter()
    out: dict[str, Any] = {"batches": batches, "budget_s": budget, "seed": args.seed}
    if "e2e" not in args.skip:
        out["e2e"] = e2e(args.models, batches, budget, args.seed)
    if "ablation" not in args.skip:
        out["ablation"] = ablation_rows(budget, args.seed)
    if "curve" not in args.skip:
        out["curve"] = curve(5 * budget, args.seed)
    if "strategies" not in args.skip:
        out["strategies"] = strategies(5 * budget, args.seed)
    out["wall_s"] = time.perf_counter() - t0
    emit(out, args.json, format_text(out))
    return 0


def format_text(out: dict[str, Any]) -> str:
    lines = []
    for row in out.get("e2e", []):
        lo, hi = row["speedup_range"] or (float("nan"), float("nan"))
        plo, phi = row["paper_range"]
        lines.append(
            f"{row['model']:<6} dip {row['dip_time_s']:8.3f} s  speedup {lo:.3f}-{hi:.3f}x "
            f"(paper {plo:.3f}-{phi:.3f}x)  gap to bound {100 * row['gap_to_lower_bound']:.1f}% "
            f"(no-recompute bound {100 * row['gap_to_fastest_bound']:.1f}%)"
        )
        for name, t in row["baselines"].items():
            if t is None:
                lines.append(f"         {name:<12}      OOM")
            else:
                lines.append(f"         {name:<12} {t:8.3f} s  {row['speedup_vs'][name]:.3f}x")
    if out.get("ablation"):
        lines.append("ablation (VLM-S):")
        lines += [
            f"  {r['step']:<14} "
            + (f"{r['time_s']:8.3f} s  " if r["fits"] else "     OOM    ")
            + (f"{r['speedup']:.3f}x" if r["speedup"] is not None else "  -   ")
            + f"  ({r['strategy']})"
            for r in out["ablation"]
        ]
    if out.get("curve"):
        c = out["curve"]
        lines.append(
            f"VLM-L curve: initial {c['initial_s']:.3f} s -> {c['final_s']:.3f} s in {c['budget_s']:g} s; "
            f"within 1% of final after {c['time_to_within_1pct_s']:.2f} s"
        )
    for row in out.get("strategies", []):
        lines.append(f"  {row['strategy']:<7} {row['final_s']:.3f} s after {row['rollouts']} rollouts")
    return "\n".join(lines)
