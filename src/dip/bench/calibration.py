"""Measuring the runtime factors and per-action overheads of a CPU (or GPU) calibration file: the
executor runs real steps, every compute action's busy time is compared with the cost model's, and a
non-negative least-squares fit gives one factor per module kind and pass (``dip profile --runtime``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import nnls

from dip.bench.compare import compare_schedules

__all__ = ["measure_runtime_factors"]

logger = logging.getLogger(__name__)

PRIOR_WEIGHT = 2.0  # of the runtime-factor fit's priors, in relative-error units


def measure_runtime_factors(
    hardware: str, models: Sequence[str], steps: int = 6, seed: int = 1, schedules: Sequence[str] = ("dip", "1f1b")
) -> tuple[dict, dict, dict]:
    """Runtime factors and per-action overheads for the calibration file ``hardware``.

    The executor runs ``schedules`` on each model (2 local processes,
    :func:`dip.bench.compare.compare_schedules`); every compute action's busy time is fitted, per pass,
    as ``sum over its module parts of factor(kind) * modelled seconds + overhead * parts`` (non-negative
    least squares on relative errors over all models and schedules together, with weak priors factor 1
    and overhead 0). Returns ``(factors by kind and pass,
    overhead by pass, report)``; the report holds the fit's median relative error per action before and
    after, and the online factors per model and schedule."""
    obs: list[tuple[str, dict[str, float], float]] = []
    online: dict[str, dict] = {}
    for name in models:
        res = compare_schedules(name, list(schedules), steps, seed=seed, hardware=hardware, observations=True)
        online[name] = {s: r["calibration_factors"] for s, r in res.items()}
        obs += [o for r in res.values() for o in r["observations"]]
    factors: dict[str, dict[str, float]] = {}
    overhead: dict[str, float] = {}
    report: dict[str, Any] = {
        "models": list(models),
        "steps": steps,
        "schedules": list(schedules),
        "online_factors": online,
        "actions": {},
    }
    for pass_ in ("f", "b"):
        rows = [(base, busy) for p, base, busy in obs if p == pass_ and base]
        if not rows:
            continue
        kinds = sorted({k for base, _ in rows for k in base})
        a = np.array([[base.get(k, 0.0) for k in kinds] + [len(base)] for base, _ in rows])
        y = np.array([busy for _, busy in rows])
        w = 1.0 / np.maximum(y, 1e-6)  # relative errors: small and large actions count alike
        # weak priors (factor 1, overhead 0 relative to a median action) keep the fit well posed when
        # the data cannot tell a module's factor from the overhead
        prior = np.diag([PRIOR_WEIGHT] * len(kinds) + [PRIOR_WEIGHT / float(np.median(y))])
        x, _ = nnls(np.vstack([a * w[:, None], prior]), np.concatenate([y * w, [PRIOR_WEIGHT] * len(kinds) + [0.0]]))
        for k, v in zip(kinds, x[:-1]):
            if v > 0:
                factors.setdefault(k, {})[pass_] = round(float(v), 4)
        overhead[pass_] = float(x[-1])
        before = np.median(np.abs(a[:, :-1].sum(axis=1) - y) / y)
        after = np.median(np.abs(a @ x - y) / y)
        report["actions"][pass_] = {
            "count": len(rows),
            "median_rel_err_before": float(before),
            "median_rel_err_after": float(after),
        }
    return factors, overhead, report
