"""Fig. 13 (§7.4): the simulator's predicted step time against real multi-process runs.

On this machine's CPU, :func:`dip.bench.compare.compare_schedules` trains ``tiny-vlm`` on 2 local
processes (gloo) under DIP and 1F1B, every step on a new batch, both schedules' plans of a step run
back to back; on a CUDA machine the trainer (:func:`dip.runtime.launch.launch_many`) also runs them on
the GPU with the GPU calibration. Per step, the predicted pipeline time comes from the shipped
calibration alone ("before calibration") and from that calibration corrected online by the earlier
steps' measured action times ("after calibration", from the second step on). Accuracy of a step is
``max(0, 1 - |predicted - measured| / measured)``.
"""

from __future__ import annotations

import os
import statistics
from typing import Any

from dip.bench.paper.common import Context, Experiment, Row, Settings, row
from dip.bench.paper.plots import color, new_figure, save

__all__ = ["NAME", "TITLE", "accuracies", "cpu_runs", "draw", "run", "step_accuracy", "steps", "trainer_runs"]

NAME = "accuracy"
TITLE = "Fig. 13: simulator accuracy against real runs (measured)"
KINDS = (("shipped", "before calibration"), ("predicted", "after calibration"))


def steps(settings: Settings) -> int:
    return 2


def step_accuracy(predicted: float, measured: float) -> float:
    """``1 - relative error`` of one prediction, clipped to ``[0, 1]``."""
    return max(0.0, 1.0 - abs(predicted - measured) / measured)


def accuracies(runs: dict[str, dict[str, list]], kind: str) -> dict[str, list[float]]:
    """Per schedule, the accuracy of every step's ``kind`` prediction (``shipped``: every step;
    ``predicted``: from the second step on, once the online calibration has seen a step)."""
    first = 0 if kind == "shipped" else 1
    out = {}
    for schedule, r in runs.items():
        pairs = list(zip(r[kind], r["measured"]))[first:]
        out[schedule] = [step_accuracy(p, m) for p, m in pairs if p is not None and m]
    return out


def cpu_runs(settings: Settings) -> dict[str, dict[str, list]]:
    """Measured, predicted and shipped pipeline seconds per schedule on 2 local CPU processes."""
    from dip.bench.compare import compare_schedules  # torch (seconds to load): only this experiment needs it

    got = compare_schedules(
        settings.accuracy_model,
        list(settings.accuracy_schedules),
        settings.accuracy_steps,
        microbatches=settings.accuracy_microbatches,
        seed=settings.seed,
        repeats=settings.accuracy_repeats,
    )
    return {s: {k: list(got[s][k]) for k in ("measured", "predicted", "shipped")} for s in settings.accuracy_schedules}


def trainer_runs(settings: Settings, hardware: str) -> dict[str, dict[str, list]]:
    """The same numbers from ``dip train`` runs (one per schedule, one process group) with calibration
    ``hardware``; on a CUDA machine the ranks use the GPU."""
    from dip.runtime.launch import launch_many  # torch (seconds to load): only this experiment needs it
    from dip.runtime.trainer import TrainConfig  # (see above)

    configs = [
        TrainConfig(
            model=settings.accuracy_model,
            schedule=s,
            steps=settings.accuracy_steps,
            nproc=2,
            microbatches=settings.accuracy_microbatches,
            seed=settings.seed,
            hardware=hardware,
        )
        for s in settings.accuracy_schedules
    ]
    out = {}
    for s, report in zip(settings.accuracy_schedules, launch_many(configs)):
        st = report["steps"]
        out[s] = {
            "measured": [x["pipeline_time_s"] for x in st],
            "predicted": [x["predicted_pipeline_time_s"] for x in st],
            "shipped": [x["predicted_pipeline_time_shipped_calibration_s"] for x in st],
        }
    return out


def device_rows(device: str, runs: dict[str, dict[str, list]]) -> list[Row]:
    rows = []
    summary: dict[str, list[float]] = {}
    for kind, label in KINDS:
        acc = accuracies(runs, kind)
        for schedule, values in acc.items():
            rows.append(row(NAME, f"{device}/{schedule}: {label}, mean accuracy", _mean(values), ""))
        summary[kind] = [a for values in acc.values() for a in values]
    rows.append(
        row(
            NAME,
            f"{device}: after calibration, mean accuracy (all schedules)",
            _mean(summary["predicted"]),
            "",
            key="after calibration: mean accuracy",
        )
    )
    rows.append(
        row(
            NAME,
            f"{device}: before calibration, worst step",
            min(summary["shipped"], default=None),
            "",
            key="before calibration: worst step",
        )
    )
    return rows


def _mean(values: list[float]) -> float | None:
    return statistics.mean(values) if values else None


def _cuda_available() -> bool:
    import torch  # heavy (seconds to load): only this experiment needs it

    return torch.cuda.is_available()


def run(ctx: Context) -> Experiment:
    from dip.bench.runtime import effective_cores  # torch (seconds to load): only this experiment needs it

    s = ctx.settings
    cores = effective_cores()
    devices: dict[str, dict[str, Any]] = {"cpu": cpu_runs(s)}
    ctx.tick("cpu")
    gpu = _cuda_available()
    if gpu:
        devices["gpu"] = trainer_runs(s, s.accuracy_gpu_hardware)
    ctx.tick("gpu" if gpu else "no gpu")
    rows = [r for device, runs in devices.items() for r in device_rows(device, runs)]
    notes = [
        f"{s.accuracy_steps} steps of {s.accuracy_model} per schedule, {s.accuracy_microbatches} micro-batches per "
        f"step, 2 processes; on this machine the 2 ranks had {cores:.2f} effective cores of {os.cpu_count()} "
        "(other work on the machine slows steps down unpredictably, which no calibration can follow).",
        "The paper's numbers come from 64 H800 GPUs on VLM-M; these runs are tiny models whose steps last "
        "about a second, where per-action overheads dominate.",
    ]
    if not gpu:
        notes.append("No CUDA device on this machine: GPU rows are absent (they appear when one is available).")
    exp = Experiment(
        NAME,
        TITLE,
        rows,
        f"{NAME}.png",
        settings={
            "model": s.accuracy_model,
            "schedules": list(s.accuracy_schedules),
            "steps": s.accuracy_steps,
            "repeats": s.accuracy_repeats,
            "microbatches": s.accuracy_microbatches,
            "effective_cores": cores,
            "gpu_hardware": s.accuracy_gpu_hardware if gpu else None,
        },
        notes=notes,
        data={"runs": devices},
    )
    draw(exp, ctx.figure_path(exp.figure))
    return exp


def draw(exp: Experiment, path: str) -> None:
    devices = exp.data["runs"]
    fig, axes = new_figure(5.0 * len(devices), 4.6, ncols=len(devices), squeeze=False)
    for ax, (device, runs) in zip(axes[0], devices.items()):
        top = 0.0
        for schedule, r in runs.items():
            for kind, label in KINDS:
                first = 0 if kind == "shipped" else 1
                pts = [(m, p) for p, m in list(zip(r[kind], r["measured"]))[first:] if p is not None and m]
                if not pts:
                    continue
                top = max(top, *(max(m, p) for m, p in pts))
                ax.scatter(
                    [m for m, _ in pts],
                    [p for _, p in pts],
                    marker="o" if kind == "predicted" else "^",
                    facecolors=color(schedule) if kind == "predicted" else "none",
                    edgecolors=color(schedule),
                    label=f"{schedule}, {label}",
                )
        ax.plot([0, top * 1.05], [0, top * 1.05], ":", color="black", lw=0.8, label="prediction = measurement")
        ax.set_xlim(0, top * 1.05)
        ax.set_ylim(0, top * 1.05)
        ax.set_xlabel(f"measured pipeline time per step on the {device.upper()} (s)")
        ax.set_ylabel("simulated pipeline time (s)")
        ax.set_title(f"Fig. 13: simulator vs real runs ({device.upper()})")
        ax.legend(fontsize=7)
    save(fig, path)
