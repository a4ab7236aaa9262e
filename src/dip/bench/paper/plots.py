"""Figures of ``dip bench paper``: matplotlib (Agg) with the suite's conventions, written atomically."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

from dip.io import write_atomic

__all__ = ["SYSTEM_COLORS", "color", "grouped_bars", "new_figure", "save"]

SYSTEM_COLORS = {
    "dip": "#d62728",
    "dip (no-opt)": "#ff9896",
    "dip (non-adaptive)": "#ff9896",
    "megatron": "#1f77b4",
    "nnscaler": "#2ca02c",
    "optimus": "#9467bd",
    "1f1b": "#7f7f7f",
    "interleaved": "#bcbd22",
    "zb-h1": "#17becf",
    "mcts": "#d62728",
    "dfs": "#1f77b4",
    "random": "#2ca02c",
    "ours": "#d62728",
    "paper": "#7f7f7f",
}


def color(name: str) -> str:
    return SYSTEM_COLORS.get(name.lower(), "#8c564b")


def new_figure(width: float = 8.0, height: float = 4.5, **subplots: Any):
    """``(figure, axes)`` of a new Agg figure."""
    import matplotlib  # heavy (about a second to load): only drawing needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # (see above)

    return plt.subplots(figsize=(width, height), **subplots)


def save(fig, path: str, dpi: int = 120) -> None:
    """Write ``fig`` as a PNG at ``path`` (atomically) and close it."""
    import matplotlib.pyplot as plt  # loaded by new_figure already

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    write_atomic(path, buf.getvalue())


def grouped_bars(
    ax, groups: list[str], series: Sequence[str], value: Callable[[str, str], float | bool | None], marker_y: float
) -> None:
    """One bar per (group, series): ``value(group, series)`` is the height, ``None`` for a bar that does
    not exist (nothing drawn) and ``False`` for a plan that does not fit (an x at ``marker_y``)."""
    width = 0.8 / len(series)
    for k, name in enumerate(series):
        xs, ys, missing = [], [], []
        for i, group in enumerate(groups):
            v = value(group, name)
            if v is None:
                continue
            x = i + (k - (len(series) - 1) / 2) * width
            if v is False:
                missing.append(x)
            else:
                xs.append(x)
                ys.append(v)
        ax.bar(xs, ys, width, color=color(name), label=name)
        if missing:
            ax.scatter(missing, [marker_y] * len(missing), marker="x", color=color(name), s=30)
    ax.set_xticks(range(len(groups)), groups)
