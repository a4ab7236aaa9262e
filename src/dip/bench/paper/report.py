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
from dip.errors import BadInput
from dip.io import json_safe, write_atomic

__all__ = [
    "HEADLINE_END",
    "HEADLINE_START",
    "check_headline_target",
    "format_value",
    "headline",
    "render_report",
    "replace_headline",
    "row_table",
    "write_outputs",
]

RESULTS = "results.json"
REPORT = "REPORT.md"
HEADLINE_START = "<!-- paper-headline:start (written by dip bench paper --headline-into) -->"
HEADLINE_END = "<!-- paper-headline:end -->"
E2E_BASELINES = (("megatron", "Megatron-LM"), ("nnscaler", "nnScaler*"), ("optimus", "Optimus"))


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


def _rows(results: dict[str, Any], name: str) -> dict[str, Row]:
    exp = results["experiments"].get(name) or {}
    return {r["name"]: Row(**r) for r in exp.get("rows", [])}


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _e2e_table(results: dict[str, Any]) -> list[str]:
    data = (results["experiments"].get("e2e") or {}).get("data") or {}
    if not data:
        return []
    lines = [
        "| model | DIP iteration time | " + " | ".join(f"speedup over {label}" for _, label in E2E_BASELINES) + " |",
        "|---|---|" + "---|" * len(E2E_BASELINES),
    ]
    for model, systems in data.items():
        dip = systems["dip"]["time_s"]
        cells = []
        for key, _ in E2E_BASELINES:
            if key not in systems:
                cells.append("–")  # not applicable (Optimus on T2V)
                continue
            t = systems[key]["time_s"]
            cells.append("does not fit" if t is None or not dip else _x(t / dip))
        lines.append(f"| {model} | {format_value(dip, 's')} | " + " | ".join(cells) + " |")
    rows = _rows(results, "e2e")
    ranges = []
    for fam in ("VLM", "T2V"):
        lo, hi = (
            rows.get(f"{fam}: DIP speedup over its baselines, lowest"),
            rows.get(f"{fam}: DIP speedup over its baselines, highest"),
        )
        if lo and hi:
            ranges.append(f"{fam} {_x(lo.ours)}-{_x(hi.ours)} (paper {_x(lo.paper)}-{_x(hi.paper)})")
    settings = results["experiments"]["e2e"].get("settings", {})
    lines += [
        "",
        f"DIP's speedup (baseline time / DIP time, simulated {settings.get('hardware')}, mean over "
        f"{settings.get('batches')} batches per model) over the paper's baselines that fit: " + "; ".join(ranges) + ".",
    ]
    return lines


def headline(results: dict[str, Any]) -> str:
    """The headline numbers of a run (Markdown): DIP against the baselines per model, then one line per
    experiment that has a number the paper states."""
    lines = _e2e_table(results)
    bullets = []
    t1 = _rows(results, "table1")
    if t1:
        keys = [f"{s}: MFU" for s in ("LM-7B", "VLM-7B static data", "VLM-7B dynamic data")]
        if all(k in t1 for k in keys):
            ours = " / ".join(format_value(t1[k].ours) for k in keys)
            paper = " / ".join(format_value(t1[k].paper) for k in keys)
            bullets.append(
                f"Table 1, MFU of LM-7B / VLM-7B static / VLM-7B dynamic under 1F1B: {ours} (paper {paper})."
            )
    ab = list(_rows(results, "ablation").values())
    if len(ab) == 5 and ab[0].ours and ab[-1].ours:
        bullets.append(
            f"Table 5 (VLM-S): Megatron-LM {format_value(ab[0].ours, 's')} -> DIP {format_value(ab[-1].ours, 's')}, "
            f"{_x(ab[0].ours / ab[-1].ours)} (paper {format_value(ab[0].paper, 's')} -> "
            f"{format_value(ab[-1].paper, 's')}, {_x(ab[0].paper / ab[-1].paper)})."
        )
    dyn = _rows(results, "dynamic").get("iteration 6: Megatron-LM / DIP")
    if dyn:
        bullets.append(
            f"Fig. 8b, iteration 6 of the dynamic workload: Megatron-LM / DIP {_x(dyn.ours)} (paper {_x(dyn.paper)})."
        )
    xl = _rows(results, "xl")
    v, t = xl.get("VLM-XL: DIP MFU, better of 8k and 16k"), xl.get("T2V-XL: DIP MFU, better of 3k and 6k")
    if v and t:
        bullets.append(
            f"Fig. 14, simulated MFU of DIP: VLM-XL {format_value(v.ours)}, T2V-XL {format_value(t.ours)} "
            f"(paper {format_value(v.paper)}, {format_value(t.paper)})."
        )
    acc = next((r for n, r in _rows(results, "accuracy").items() if n.startswith("cpu: after calibration")), None)
    if acc:
        bullets.append(
            f"Fig. 13, simulator accuracy on real 2-process CPU runs after calibration: {format_value(acc.ours)} "
            f"(paper {format_value(acc.paper)} on 64 H800s)."
        )
    if lines and bullets:
        lines.append("")
    lines += [f"- {b}" for b in bullets]
    return "\n".join(lines)


def check_headline_target(path: str) -> None:
    """BadInput unless ``path`` is a readable file holding the headline markers (checked before any work)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise BadInput(f"--headline-into {path!r} cannot be read: {exc.strerror}") from None
    if HEADLINE_START not in text or HEADLINE_END not in text:
        raise BadInput(f"--headline-into {path!r} has no '{HEADLINE_START}' ... '{HEADLINE_END}' block")


def replace_headline(path: str, results: dict[str, Any], report_path: str) -> None:
    """Rewrite the marked block of ``path`` with :func:`headline` and a link to the report."""
    check_headline_target(path)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    link = os.path.relpath(report_path, os.path.dirname(os.path.abspath(path)))
    block = (
        f"{HEADLINE_START}\n"
        f"From [`{link}`]({link}) (`{results['command']}`, {results['mode']} mode, "
        f"{results['wall_s'] / 60:.1f} min on {results['cpu_count']} CPU cores):\n\n"
        f"{headline(results)}\n{HEADLINE_END}"
    )
    head, rest = text.split(HEADLINE_START, 1)
    _, tail = rest.split(HEADLINE_END, 1)
    write_atomic(path, head + block + tail)


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
    top = headline(results)
    if top:
        lines += ["## Headline", "", top, ""]
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
