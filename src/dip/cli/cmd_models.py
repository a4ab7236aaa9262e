"""``dip models``: the model presets with their modules, parameter counts and parallel layout."""

from __future__ import annotations

import argparse
from typing import Any

from dip.io import emit
from dip.spec import ModelSpec, list_models, model_params, module_params


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "models",
        help="list the model presets (modules, parameters, TP/PP/DP)",
        description="List the model presets: modules with their layer and parameter counts, the "
        "default tensor/pipeline/data parallel degrees and the workload kind.",
    )
    p.add_argument("--json", action="store_true", help='print one JSON object {"models": [...]} instead of a table')
    p.set_defaults(func=run)


def model_summary(model: ModelSpec) -> dict[str, Any]:
    """One model as the JSON row ``dip models`` prints."""
    presets = model.extra.get("module_presets", {})
    p = model.parallel
    return {
        "name": model.name,
        "params": model_params(model),
        "modules": [
            {
                "name": m.name,
                "kind": m.kind,
                "layers": m.layers,
                "params": module_params(m),
                "preset": presets.get(m.name),
            }
            for m in model.modules
        ],
        "tp": p.tp,
        "pp": p.pp,
        "dp": p.dp,
        "gpus": p.gpus,
        "workload": model.workload,
    }


def _billions(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"


def _table(rows: list[dict[str, Any]]) -> str:
    header = ("model", "params", "tp", "pp", "dp", "gpus", "workload", "modules")
    lines = [header]
    for r in rows:
        mods = " + ".join(
            f"{m['name']}={m['preset'] or m['kind']}({m['layers']}L,{_billions(m['params'])})" for m in r["modules"]
        )
        lines.append(
            (
                r["name"],
                _billions(r["params"]),
                str(r["tp"]),
                str(r["pp"]),
                str(r["dp"]),
                str(r["gpus"]),
                r["workload"],
                mods,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)) + "  " + line[-1] for line in lines)


def run(args: argparse.Namespace) -> int:
    rows = [model_summary(m) for m in list_models()]
    emit({"models": rows}, args.json, _table(rows))
    return 0
