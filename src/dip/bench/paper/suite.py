"""``dip bench paper``: run the experiments, draw their figures, write results.json and REPORT.md.

Experiments run one after the other in this process (the planner on one worker with a rollout budget
is deterministic), with a progress bar on stderr. An experiment that raises is recorded as failed in
both outputs and the command exits with 1 after the others have run.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

from dip.bench.paper import ablation, accuracy, dynamic, e2e, memory, scalability, search, submb, table1, xl
from dip.bench.paper.common import Context, Settings
from dip.bench.paper.report import REPORT, check_headline_target, replace_headline, write_outputs
from dip.errors import BadInput, choices_error
from dip.io import emit, json_safe
from dip.progress import progress_bar

__all__ = ["EXPERIMENTS", "run", "run_suite", "select_experiments"]

logger = logging.getLogger(__name__)

EXPERIMENTS: dict[str, ModuleType] = {
    m.NAME: m for m in (table1, e2e, dynamic, ablation, submb, memory, search, scalability, accuracy, xl)
}


def select_experiments(names: Sequence[str]) -> list[str]:
    """The experiments to run, in the suite's order (all when ``names`` is empty); BadInput listing the
    valid names for an unknown one."""
    for name in names:
        if name not in EXPERIMENTS:
            raise choices_error("experiment", name, EXPERIMENTS)
    wanted = set(names)
    return [n for n in EXPERIMENTS if not wanted or n in wanted]


def prepare_out_dir(path: str) -> str:
    """Create the output folder (before any work); BadInput when it cannot be."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise BadInput(f"--out {path!r} exists and is not a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"--out {path!r} cannot be created: {exc.strerror}") from None
    if not os.access(path, os.W_OK):
        raise BadInput(f"--out {path!r} is not writable")
    return path


def run_suite(
    names: Sequence[str],
    settings: Settings,
    out_dir: str,
    progress: Callable[[int, str], Any] | None = None,
    command: str = "dip bench paper",
) -> dict[str, Any]:
    """Run ``names`` (in the suite's order; all when empty) with ``settings``, figures into ``out_dir``;
    write results.json and REPORT.md there and return the results object. ``progress(steps, label)`` is
    called as the work advances."""
    names = select_experiments(names)
    t0 = time.perf_counter()
    experiments: dict[str, dict[str, Any]] = {}
    for name in names:
        module = EXPERIMENTS[name]
        expected, done = module.steps(settings), 0

        def tick(what: str, name: str = name) -> None:
            nonlocal done
            done += 1
            if progress:
                progress(1, f"{name}: {what}")

        start = time.perf_counter()
        try:
            exp = module.run(Context(settings, out_dir, tick))
        except Exception as exc:  # recorded in both outputs and in the exit status; the others still run
            logger.error("experiment %s failed:\n%s", name, traceback.format_exc())
            experiments[name] = {
                "title": module.TITLE,
                "rows": [],
                "figure": None,
                "error": f"{type(exc).__name__}: {exc}",
            }
        else:
            exp.wall_s = time.perf_counter() - start
            experiments[name] = exp.to_dict()
        if progress and done < expected:
            progress(expected - done, name)
    results = {
        "experiments": experiments,
        "mode": settings.mode,
        "seed": settings.seed,
        "command": command,
        "wall_s": time.perf_counter() - t0,
        "cpu_count": os.cpu_count(),
        "settings": settings.to_dict(),
    }
    write_outputs(out_dir, results)
    return json_safe(results)


def run(args: argparse.Namespace) -> int:
    names = select_experiments(args.experiments)
    if args.seed < 0:
        raise BadInput(f"seed must be an integer >= 0, got {args.seed}")
    for path in args.headline_into:
        check_headline_target(path)
    out_dir = prepare_out_dir(args.out)
    settings = Settings.quick(args.seed) if args.quick else Settings.full(args.seed)
    command = "dip bench paper" + "".join(f" {n}" for n in args.experiments) + (" --quick" if args.quick else "")
    command += f" --seed {args.seed}" if args.seed else ""
    with progress_bar() as bar:
        task = bar.add_task("dip bench paper", total=sum(EXPERIMENTS[n].steps(settings) for n in names))
        results = run_suite(
            names,
            settings,
            out_dir,
            progress=lambda n, label: bar.update(task, advance=n, description=label),
            command=command,
        )
    for path in args.headline_into:
        replace_headline(path, results, os.path.join(out_dir, REPORT))
    failed = [n for n, e in results["experiments"].items() if e.get("error")]
    text = (
        f"{len(names)} experiment(s) in {results['wall_s'] / 60:.1f} min; wrote "
        f"{os.path.join(out_dir, 'REPORT.md')} and {os.path.join(out_dir, 'results.json')}"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    emit(results, args.json, text)
    if failed:
        sys.stderr.write(f"dip bench paper: {len(failed)} experiment(s) failed: {', '.join(failed)}\n")
    return 1 if failed else 0
