"""Per-step metrics of a training run (rank 0): one JSON object per step appended to ``--metrics FILE``
(loss, learning rate, gradient norm, tokens/s, step and iteration times, plan statistics, peak memory),
and one progress line per step on the terminal.

The progress lines go to standard error, or, when ``dip train`` started the ranks itself, to the file
named by ``DIP_PROGRESS_FILE``, which the launcher relays to its own standard error (the ranks' output
goes to log files).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
from typing import Any, TextIO

import torch

from dip.io import json_safe

__all__ = ["PROGRESS_ENV", "MetricsLog", "peak_memory_bytes", "progress_line"]

logger = logging.getLogger(__name__)

PROGRESS_ENV = "DIP_PROGRESS_FILE"


def peak_memory_bytes(device: torch.device) -> int:
    """This process's peak memory: allocated on its GPU, else its peak resident set size."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def _si(x: float) -> str:
    for unit, k in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= k:
            return f"{x / k:.1f}{unit}"
    return f"{x:.0f}"


def progress_line(row: dict[str, Any], total_steps: int) -> str:
    """``step 5/20 | loss 7.35012 | lr 1.0e-03 | grad 0.84 | 3.2k tok/s | 0.712 s | plan wait 0.000 s ...``"""
    parts = [
        f"step {row['step'] + 1}/{total_steps}",
        f"loss {row['loss']:.5f}",
        f"lr {row['lr']:.2e}",
        f"grad norm {row['grad_norm']:.3g}",
        f"{_si(row['tokens_per_s'])} tok/s",
        f"step {row['step_time_s']:.3f} s",
        f"plan wait {row['plan_wait_s']:.3f} s",
    ]
    if row.get("fallback"):
        parts.append("fallback plan")
    elif row.get("plan_late"):
        parts.append(f"late plan ({row.get('plan_source')})")
    parts.append(f"mem {_si(row['max_memory_bytes'])}B")
    return " | ".join(parts)


class MetricsLog:
    """Writes each step's metrics (``path``: JSONL, appended) and progress line (``progress``)."""

    def __init__(self, path: str | None, total_steps: int, progress: TextIO | None = None):
        self.total_steps = total_steps
        self.file = open(path, "a", encoding="utf-8") if path else None  # closed in close()
        target = os.environ.get(PROGRESS_ENV)
        self._own_progress = progress is None and bool(target)
        self.progress = progress or (open(target, "a", encoding="utf-8") if target else sys.stderr)

    def step(self, row: dict[str, Any]) -> None:
        if self.file is not None:
            self.file.write(json.dumps(json_safe(row)) + "\n")
            self.file.flush()
        try:
            self.progress.write(progress_line(row, self.total_steps) + "\n")
            self.progress.flush()
        except (OSError, ValueError):  # a closed terminal must not stop training
            logger.debug("progress line not written", exc_info=True)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        if self._own_progress:
            self.progress.close()
