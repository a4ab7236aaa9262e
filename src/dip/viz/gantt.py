"""Gantt chart of a simulated plan (PNG, matplotlib Agg).

One row per rank, one colour per module, one shade per pass (``F`` light, ``B``/``I`` darker, ``W``
darkest; small plans carry the micro-batch number in each bar); under it the memory timeline (static + activations)
of every rank. The title gives the
iteration time and bubble fraction.
"""

from __future__ import annotations

import io
import logging

import numpy as np

from dip.io import write_atomic
from dip.schedule.ir import Plan
from dip.sim.simulate import SimResult

__all__ = ["LABEL_MAX_TASKS", "PASS_NAMES", "PASS_SHADE", "write_gantt_comparison_png", "write_gantt_png"]

logger = logging.getLogger(__name__)

PASS_SHADE = {0: 0.55, 1: 0.0, 2: 0.0, 3: -0.35}  # op code -> + lighten / - darken
PASS_NAMES = {0: "F", 1: "B", 2: "I", 3: "W"}
LABEL_MAX_TASKS = 300


def _shade(rgb, amount: float):
    rgb = np.asarray(rgb[:3], float)
    return tuple(rgb + (1.0 - rgb) * amount) if amount >= 0 else tuple(rgb * (1.0 + amount))


def _module_colors(plan: Plan) -> dict[str, tuple]:
    import matplotlib  # heavy (about a second to load): only drawing needs it

    cmap = matplotlib.colormaps["tab10"]
    names: list[str] = []
    for c in plan.graph.chunks:
        name = "+".join(c.modules)
        if name not in names:
            names.append(name)
    return {name: cmap(k % 10) for k, name in enumerate(names)}


def _plt():
    import matplotlib  # heavy (about a second to load): only drawing needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # (see above)

    return plt


def _draw_timeline(ax, plan: Plan, result: SimResult, colors: dict[str, tuple]) -> list[int]:
    """Every simulated task of ``result`` as a bar on its rank's lane; the pass kinds drawn."""
    tg = result.taskgraph
    n_ranks = plan.num_ranks
    chunk_module = ["+".join(c.modules) for c in plan.graph.chunks]
    task_chunk = np.fromiter((a.chunk for a in tg.actions), np.int64, tg.num_tasks)
    done = ~np.isnan(result.start)
    groups: dict[tuple[int, str, int], list[tuple[float, float]]] = {}
    for t in np.nonzero(done)[0]:
        key = (int(tg.task_rank[t]), chunk_module[task_chunk[t]], int(tg.task_op[t]))
        groups.setdefault(key, []).append((float(result.start[t]), float(result.end[t] - result.start[t])))
    for (rank, module, op), bars in groups.items():
        ax.broken_barh(
            bars,
            (rank - 0.4, 0.8),
            facecolors=_shade(colors[module], PASS_SHADE[op]),
            edgecolor="black" if len(bars) < 400 else "none",
            linewidth=0.2,
        )
    if done.sum() <= LABEL_MAX_TASKS:  # small plans: name the micro-batch inside each bar
        for t in np.nonzero(done)[0]:
            ax.text(
                (result.start[t] + result.end[t]) / 2,
                tg.task_rank[t],
                str(tg.task_mb[t]),
                ha="center",
                va="center",
                fontsize=6,
            )
    ax.set_yticks(range(n_ranks), [f"rank {r}" for r in range(n_ranks)])
    ax.set_ylim(n_ranks - 0.5, -0.5)
    return sorted({op for (_, _, op) in groups})


def _legend_handles(colors: dict[str, tuple], ops_used: list[int]) -> list:
    from matplotlib.patches import Patch  # matplotlib (see _plt)

    handles = [Patch(color=c, label=m) for m, c in colors.items()]
    grey = (0.45, 0.45, 0.45, 1.0)
    return handles + [Patch(color=_shade(grey, PASS_SHADE[op]), label=PASS_NAMES[op]) for op in ops_used]


def _title(label: str, result: SimResult) -> str:
    title = (
        f"{label + ': ' if label else ''}iteration {result.iteration_time:.4g} s, bubble {result.bubble_fraction:.1%}"
    )
    return title + (f" ({result.status})" if result.status != "ok" else "")


def _save(fig, path: str, dpi: int) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format="png")
    _plt().close(fig)
    write_atomic(path, buf.getvalue())


def write_gantt_png(path: str, plan: Plan, result: SimResult, label: str = "", dpi: int = 120) -> None:
    """Draw ``result`` (simulated from ``plan``) to ``path``: the per-rank timeline and, under it, every
    rank's memory (static + activations) with the limit."""
    plt = _plt()
    n_ranks = plan.num_ranks
    colors = _module_colors(plan)
    fig, (ax, mem_ax) = plt.subplots(
        2, 1, figsize=(14, 1.2 + 0.45 * n_ranks + 2.5), sharex=True, gridspec_kw={"height_ratios": [max(n_ranks, 2), 3]}
    )
    ops_used = _draw_timeline(ax, plan, result, colors)
    ax.legend(handles=_legend_handles(colors, ops_used), loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    scale, unit = _mem_unit(float(np.max(result.peak_memory_bytes, initial=0.0)))
    for r in range(n_ranks):
        times, values = result.memory_timeline(r)
        end = result.makespan if np.isfinite(result.makespan) else (times[-1] if len(times) else 0.0)
        mem_ax.step(
            np.append(times, end), np.append(values, values[-1]) / scale, where="post", label=f"rank {r}", linewidth=0.9
        )
    if np.isfinite(result.memory_limit_bytes) and result.memory_limit_bytes <= 2 * np.max(result.peak_memory_bytes):
        mem_ax.axhline(result.memory_limit_bytes / scale, color="red", linestyle="--", linewidth=0.8, label="limit")
    mem_ax.set_ylabel(f"memory ({unit})")
    mem_ax.set_xlabel("time (s)")
    mem_ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, ncol=1 + n_ranks // 9)
    ax.set_title(_title(label, result))
    fig.tight_layout()
    _save(fig, path, dpi)
    logger.debug("Gantt chart of %s written to %s", plan.schedule, path)


def write_gantt_comparison_png(
    path: str, runs: list[tuple[str, Plan, SimResult]], title: str = "", dpi: int = 120
) -> None:
    """Several plans of the same batch one above the other on one time axis (e.g. a baseline and DIP):
    ``runs`` holds ``(label, plan, simulated result)``."""
    plt = _plt()
    heights = [max(p.num_ranks, 2) for _, p, _ in runs]
    fig, axes = plt.subplots(
        len(runs), 1, figsize=(14, 1.0 + 0.42 * sum(heights)), sharex=True, gridspec_kw={"height_ratios": heights}
    )
    axes = np.atleast_1d(axes)
    colors: dict[str, tuple] = {}
    for _, plan, _ in runs:  # one colour per module across every plan
        for name in _module_colors(plan):
            colors.setdefault(name, None)
    cmap = _plt().get_cmap("tab10")
    colors = {name: cmap(k % 10) for k, name in enumerate(colors)}
    ops_used: set[int] = set()
    for ax, (label, plan, result) in zip(axes, runs):
        ops_used |= set(_draw_timeline(ax, plan, result, colors))
        ax.set_title(_title(label, result), fontsize=10, loc="left")
    axes[0].legend(
        handles=_legend_handles(colors, sorted(ops_used)), loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8
    )
    axes[-1].set_xlabel("time (s)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path, dpi)


def _mem_unit(peak: float) -> tuple[float, str]:
    if peak >= 2**30:
        return 2.0**30, "GiB"
    if peak >= 2**20:
        return 2.0**20, "MiB"
    return 1.0, "units" if peak < 1024 else "bytes"
