"""The suite's outputs: ``results.json`` (every experiment's rows, figure, settings and notes) and
``REPORT.md`` (per experiment its figure and a table ``name | ours | paper | ratio | fits``, with a
plain comment under the table for every row that differs from the paper's by more than 20%)."""

from __future__ import annotations

import json
import math
import os
from typing import Any

from dip.bench.paper.common import Row
from dip.bench.paper.explain import THRESHOLD, differs, explain
from dip.io import json_safe, write_atomic

__all__ = ["format_value", "render_report", "row_table", "write_outputs"]

RESULTS = "results.json"
REPORT = "REPORT.md"


def format_value(value: float | None, unit: str = "") -> str:
    """A number with 4 significant digits (integers as such) and its unit; ``n/a`` for none."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    text = f"{value:.0f}" if float(value).is_integer() and abs(value) >= 1 else f"{value:.4g}"
    if unit == "x":
        return f"{text}x"
    return f"{text} {unit}".strip()


def _fits(value: bool | None) -> str:
    return "–" if value is None else ("yes" if value else "**no**")


def row_table(rows: list[Row]) -> str:
    """The Markdown table of ``rows``."""
    lines = ["| name | ours | paper | ratio | fits |", "|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else "–"
        cells = (r.name, format_value(r.ours, r.unit), format_value(r.paper, r.unit), ratio, _fits(r.fits))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comments(name: str, rows: list[Row], facts: dict[str, Any]) -> list[str]:
    """One bullet per explanation: the rows that differ from the paper's by more than the threshold and
    share it, with their numbers, then the explanation once."""
    grouped: dict[str, list[str]] = {}
    for r in rows:
        if differs(r):
            grouped.setdefault(explain(name, r, facts), []).append(
                f"{r.name} (ours {format_value(r.ours, r.unit)}, paper {format_value(r.paper, r.unit)}, {r.ratio:.2f}x)"
            )
    return [f"- {'; '.join(items)}. **Why:** {text}" for text, items in grouped.items()]


def _format_setting(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_format_setting(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _settings_line(settings: dict[str, Any]) -> str:
    return "; ".join(f"{k}: {_format_setting(v)}" for k, v in settings.items())


def render_report(results: dict[str, Any]) -> str:
    """REPORT.md from the results object that :func:`write_outputs` writes as results.json."""
    minutes = results["wall_s"] / 60
    lines = [
        "# The paper's figures and tables, reproduced",
        "",
        f"`{results['command']}` — {results['mode']} mode, seed {results['seed']}, "
        f"ran in {minutes:.1f} min on {results['cpu_count']} CPU cores.",
        "",
        "Every number below comes from this run (`results.json` beside this file). *ours* is this "
        "repository (simulated unless the experiment says *measured*), *paper* the number its text or "
        "tables state (n/a where the paper only draws a figure), *ratio* ours / paper, *fits* whether the "
        f"plan fits the usable GPU memory. Rows more than {THRESHOLD:.0%} off the paper's value get a "
        "comment under their table.",
        "",
    ]
    if results["mode"] == "quick":
        lines += [
            "Quick mode runs every experiment's code path with fewer batches and points and shorter searches "
            "(its settings are listed per experiment); the full suite is `dip bench paper --out DIR`.",
            "",
        ]
    for name, exp in results["experiments"].items():
        lines += [f"## {name}: {exp['title']}", ""]
        if exp.get("error"):
            lines += [f"**Failed**: {exp['error']}", ""]
            continue
        rows = [Row(**r) for r in exp["rows"]]
        lines += [f"![{name}]({exp['figure']})", "", row_table(rows), ""]
        notes = comments(name, rows, exp.get("settings", {}))
        if notes:
            lines += [f"Differences over {THRESHOLD:.0%}:", "", *notes, ""]
        lines += [f"Settings: {_settings_line(exp.get('settings', {}))}. Ran in {exp['wall_s']:.0f} s.", ""]
        lines += [f"- {n}" for n in exp.get("notes", [])]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def write_outputs(out_dir: str, results: dict[str, Any]) -> tuple[str, str]:
    """Write results.json and REPORT.md into ``out_dir`` (atomically); returns their paths."""
    res_path, rep_path = os.path.join(out_dir, RESULTS), os.path.join(out_dir, REPORT)
    write_atomic(res_path, json.dumps(json_safe(results), indent=1) + "\n")
    write_atomic(rep_path, render_report(results))
    return res_path, rep_path
