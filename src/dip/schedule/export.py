"""Export linear-chain plans to torch.distributed.pipelining's schedule formats.

Only plans torch can express are exported: one group (a linear chain of chunks), units ``0..m-1``
(torch's micro-batch indices), no flows. The global stage index is the chunk's position along the
chain and the micro-batch index is the unit index, so ``"3F1"`` reads the same in both IRs.
"""

from __future__ import annotations

import csv
import os
from typing import TYPE_CHECKING

from dip.schedule.errors import ScheduleError
from dip.schedule.ir import Action, Op, Plan

if TYPE_CHECKING:  # pragma: no cover
    from torch.distributed.pipelining.schedules import _Action

__all__ = ["check_linear", "from_torch_rows", "to_torch_actions", "to_torch_csv", "to_torch_rows"]

_COMPUTE = (Op.F, Op.B, Op.I, Op.W)


def check_linear(plan: Plan) -> None:
    """Raise :class:`ScheduleError` unless ``plan`` is a linear chain torch can run."""
    groups = plan.graph.groups
    if len(groups) != 1:
        raise ScheduleError(f"torch export needs a linear chain (one group); this plan has groups {list(groups)}")
    if plan.flows:
        raise ScheduleError("torch export needs a linear chain; this plan has flows between groups")
    units = plan.units.get(groups[0], ())
    if [u.index for u in units] != list(range(len(units))):
        raise ScheduleError(f"torch export needs units 0..m-1; got {[u.index for u in units]}")
    chain = plan.graph.group_chunks(groups[0])
    if [c.index for c in chain] != list(range(len(chain))):
        raise ScheduleError(f"torch export needs chunk positions 0..n-1; got {[c.index for c in chain]}")
    for r, acts in plan.order.items():
        for i, a in enumerate(acts):
            if a.op.is_comm:
                raise ScheduleError("torch export takes a compute-only order", plan.order, r, i, a)


def _cells(plan: Plan) -> dict[int, list[str]]:
    check_linear(plan)
    pos = {c.id: c.index for c in plan.graph.chunks}
    return {
        r: [f"{pos[a.chunk]}{a.op.value}{a.unit}" for a in plan.order.get(r, ()) if a.op in _COMPUTE]
        for r in range(plan.num_ranks)
    }


def to_torch_rows(plan: Plan) -> list[list[str]]:
    """One row per rank of compute cells (``"0F3"``, ``"5B1"``, ``"2I0"``, ``"2W0"``); REDUCE_GRAD is
    left out (torch adds it in its own lowering)."""
    cells = _cells(plan)
    return [cells[r] for r in range(plan.num_ranks)]


def to_torch_csv(plan: Plan, path: str | os.PathLike) -> None:
    """Write torch's ``compute_only`` CSV (``_PipelineScheduleRuntime._load_csv``)."""
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(to_torch_rows(plan))


def to_torch_actions(plan: Plan) -> dict[int, list[_Action]]:
    """``{rank: [torch _Action, ...]}`` for oracle tests against torch's private schedule helpers."""
    # torch (heavy, and private API): only the oracle tests convert plans to torch actions
    from torch.distributed.pipelining.schedules import _Action

    return {r: [_Action.from_str(s) for s in row] for r, row in enumerate(to_torch_rows(plan))}


def from_torch_rows(rows: list[list[str]]) -> dict[int, list[Action]]:
    """Inverse of :func:`to_torch_rows` for linear chains (chunk id = stage index); empty cells skipped."""
    return {r: [Action.parse(s) for s in row if s.strip()] for r, row in enumerate(rows)}
