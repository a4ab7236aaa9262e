"""Perfetto / Chrome trace of a simulated plan (JSON object format, open in ui.perfetto.dev).

One process per rank with one slice per compute action (``"llm F mb3"``; args: module, chunk, unit,
mb, op, action, layers, act_bytes), flow arrows for cross-rank messages and a memory counter per rank
(GiB). With ``measured`` times the plan and the measurement are drawn side by side: ``"rank r (plan)"``
and ``"rank r (measured)"``. ``otherData`` names the writer (``"generator": "dip"``), the number of
ranks and the memory limit, so ``dip viz`` can tell a dip trace from any other Chrome trace.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence

import numpy as np

from dip.io import write_atomic
from dip.schedule.ir import Action, Plan
from dip.sim.costs import StageCosts
from dip.sim.simulate import SimResult

__all__ = ["US", "MeasuredRows", "action_label", "trace_events", "write_chrome_trace"]

logger = logging.getLogger(__name__)

US = 1e6  # trace timestamps are microseconds
MeasuredRows = Mapping[int, Sequence[tuple[Action | str, float, float]]]


def action_label(plan: Plan, action: Action) -> tuple[str, dict]:
    """Slice name and args of a compute action: ``"vit F mb3 [0:12)"`` for a split unit."""
    chunk = plan.graph.chunks[action.chunk]
    unit = plan.units[chunk.group][action.unit]
    module = "+".join(chunk.modules)
    name = f"{module} {action.op.value} mb{unit.mb}"
    if unit.stop > unit.start:
        name += f" [{unit.start}:{unit.stop})"
    args = {
        "module": module,
        "chunk": action.chunk,
        "unit": action.unit,
        "mb": unit.mb,
        "op": action.op.value,
        "action": str(action),
        "layers": chunk.label,
    }
    return name, args


def _meta(pid: int, name: str) -> list[dict]:
    return [
        {"ph": "M", "name": "process_name", "pid": pid, "args": {"name": name}},
        {"ph": "M", "name": "process_sort_index", "pid": pid, "args": {"sort_index": pid}},
        {"ph": "M", "name": "thread_name", "pid": pid, "tid": 0, "args": {"name": "compute"}},
    ]


def _slice(pid: int, name: str, args: dict, start: float, end: float) -> dict:
    return {
        "ph": "X",
        "name": name,
        "cat": args["op"],
        "pid": pid,
        "tid": 0,
        "ts": start * US,
        "dur": max(end - start, 0.0) * US,
        "args": args,
    }


def trace_events(
    plan: Plan, result: SimResult, costs: StageCosts | None = None, measured: MeasuredRows | None = None
) -> list[dict]:
    """All trace events (see module docstring)."""
    tg = result.taskgraph
    costs = costs or tg.costs
    both = measured is not None
    plan_pid = (lambda r: 2 * r) if both else (lambda r: r)
    events: list[dict] = []
    for r in range(plan.num_ranks):
        events += _meta(plan_pid(r), f"rank {r} (plan)" if both else f"rank {r}")
        if both:
            events += _meta(2 * r + 1, f"rank {r} (measured)")
    for t, a in enumerate(tg.actions):
        if np.isnan(result.start[t]):
            continue
        name, args = action_label(plan, a)
        args["act_bytes"] = float(costs.act_bytes[tg.task_stage[t]])
        events.append(_slice(plan_pid(int(tg.task_rank[t])), name, args, result.start[t], result.end[t]))
    events += _flows(tg, result, plan_pid)
    for r in range(plan.num_ranks):
        times, values = result.memory_timeline(r)
        events += [
            {"ph": "C", "name": "memory", "pid": plan_pid(r), "ts": float(ts) * US, "args": {"GiB": float(v) / 2**30}}
            for ts, v in zip(times, values)
        ]
    task_of = {a: t for t, a in enumerate(tg.actions)}
    for r, rows in (measured or {}).items():
        for act, start, end in rows:
            act = act if isinstance(act, Action) else Action.parse(str(act))
            name, args = action_label(plan, act)
            if act in task_of:
                args["act_bytes"] = float(costs.act_bytes[tg.task_stage[task_of[act]]])
            events.append(_slice(2 * int(r) + 1, name, args, float(start), float(end)))
    return events


def _flows(tg, result: SimResult, pid_of) -> list[dict]:
    """Flow arrows from the producer's end to the consumer's start for every cross-rank message."""
    events = []
    dst = np.repeat(np.arange(tg.num_tasks), np.diff(tg.pred_ptr))
    for e in np.nonzero(tg.task_rank[tg.pred_idx] != tg.task_rank[dst])[0]:
        p, t = int(tg.pred_idx[e]), int(dst[e])
        if np.isnan(result.end[p]) or np.isnan(result.start[t]):
            continue
        sent = result.end[p] - min(1e-9, (result.end[p] - result.start[p]) / 2)
        common = {
            "name": "p2p",
            "cat": "p2p",
            "id": int(e),
            "tid": 0,
            "args": {"bytes": float(tg.pred_bytes[e]), "delay_s": float(tg.pred_delay[e])},
        }
        events.append({**common, "ph": "s", "pid": pid_of(int(tg.task_rank[p])), "ts": sent * US})
        events.append(
            {**common, "ph": "f", "bp": "e", "pid": pid_of(int(tg.task_rank[t])), "ts": float(result.start[t]) * US}
        )
    return events


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def write_chrome_trace(
    path: str,
    plan: Plan,
    result: SimResult,
    costs: StageCosts | None = None,
    label: str = "plan",
    measured: MeasuredRows | None = None,
) -> None:
    """Write the trace of ``plan`` to ``path``.

    ``measured``: ``{rank: [(action or its text, start_s, end_s), ...]}`` in seconds from the step start
    (e.g. the runtime's per-action timings), drawn next to the plan.
    """
    doc = {
        "traceEvents": trace_events(plan, result, costs, measured),
        "displayTimeUnit": "ms",
        "otherData": {
            "generator": "dip",
            "label": label,
            "schedule": plan.schedule,
            "ranks": plan.num_ranks,
            "measured": measured is not None,
            "iteration_time_s": _finite(result.iteration_time),
            "bubble_fraction": _finite(result.bubble_fraction),
            "status": result.status,
            "memory_limit_gib": _finite(result.memory_limit_bytes / 2**30),
        },
    }
    write_atomic(path, json.dumps(doc, allow_nan=False, default=float))
    logger.debug("trace of %s written to %s (%d events)", plan.schedule, path, len(doc["traceEvents"]))
