"""``dip viz``: an interactive, self-contained HTML page of a dip trace.

``dip viz plan.json --out plan.html`` draws the trace written by ``dip plan/simulate/train --trace``:
per rank a lane of compute bars and a memory track, zoom, pan and a hover tooltip. A ``dip train``
trace shows the planned and the measured step; ``dip viz planned.json measured.json`` puts the first
trace's plan next to the second's measurement (or its plan) on one page.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from dip.errors import BadInput
from dip.io import check_writable, emit, write_atomic


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "viz",
        help="write an interactive HTML viewer of a plan, simulation or training trace",
        description="Turn a trace written by dip plan/simulate/train --trace into one self-contained HTML page "
        "(no network): per-rank timeline and memory track, zoom (wheel, buttons), pan (drag) and "
        "hover details. Two traces: the first's plan next to the second's measurement.",
    )
    p.add_argument("input", metavar="INPUT", help="trace JSON written by dip plan/simulate/train --trace")
    p.add_argument(
        "input2",
        metavar="INPUT2",
        nargs="?",
        help="optional second trace (e.g. a dip train trace) drawn next to INPUT: planned vs measured",
    )
    p.add_argument("--out", required=True, metavar="FILE.html", help="the HTML page to write")
    p.add_argument("--title", help="page title (default: schedule, label and file names)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_output(args.out, [args.input] + ([args.input2] if args.input2 else []))
    first = load_trace(args.input, "INPUT")
    second = load_trace(args.input2, "INPUT2") if args.input2 else None
    from dip.viz.html import build_viewer  # heavy: the dip.viz package loads the simulator (numba)

    page = build_viewer(
        trace=first,
        source=args.input,
        measured=second,
        measured_source=args.input2 or "measured trace",
        title=args.title,
    )
    try:
        write_atomic(args.out, page.html)
    except OSError as exc:
        raise BadInput(f"--out {args.out!r} cannot be written: {exc.strerror or exc}") from None
    out = {
        "out": args.out,
        "bytes": len(page.html.encode("utf-8")),
        **page.summary(),
        "inputs": [p for p in (args.input, args.input2) if p],
    }
    series = ", ".join(f"{s['name']} {s['bars']} bars" for s in out["series"])
    emit(out, args.json, f"wrote {args.out}: {out['ranks']} ranks, {series}")
    return 0


def check_output(path: str, inputs: list[str]) -> None:
    """Fail before reading anything when ``path`` cannot be written or would overwrite an input."""
    if not os.path.isdir(path) and any(
        os.path.exists(p) and os.path.exists(path) and os.path.samefile(p, path) for p in inputs
    ):
        raise BadInput(f"--out {path!r} is an input trace; give another file name")
    check_writable(path, "--out")


def load_trace(path: str, field: str) -> Any:
    """The parsed JSON of ``path``; BadInput naming the file when it is missing, unreadable or not JSON."""
    if not os.path.exists(path):
        raise BadInput(f"{field} {path!r} does not exist (give a trace written by dip plan/simulate/train --trace)")
    if os.path.isdir(path):
        raise BadInput(f"{field} {path!r} is a directory, not a trace file")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise BadInput(f"{field} {path!r} is not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except UnicodeDecodeError:
        raise BadInput(f"{field} {path!r} is not JSON (not UTF-8 text)") from None
    except OSError as exc:
        raise BadInput(f"{field} {path!r} cannot be read: {exc.strerror or exc}") from None
