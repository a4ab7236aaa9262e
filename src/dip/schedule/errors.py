"""Schedule errors that show the whole rank x step grid with the failing step marked.

[Note: grid errors] Every lowering and validation error prints the complete per-rank programs, one
column per rank and one row per step, and marks the failing step with ``<-- ERROR: ...`` (the failing
cell itself is bracketed). A schedule bug is then visible in context, not as a lone action name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from dip.schedule.ir import Action

__all__ = ["Grid", "ScheduleError", "format_grid"]

Grid = Mapping[int, Sequence[Action | None]]


def format_grid(order: Grid, mark: tuple[int, int] | None = None, note: str = "") -> str:
    """Steps (rows) x ranks (columns); ``mark = (rank, step)`` brackets that cell and tags its row."""
    ranks = sorted(order)
    if not ranks:
        return "(empty schedule)\n"
    steps = max((len(order[r]) for r in ranks), default=0)
    if mark is not None:
        steps = max(steps, mark[1] + 1)
    width = len(str(max(steps - 1, 0)))

    def cell(r: int, s: int) -> str:
        acts = order[r]
        text = "" if s >= len(acts) or acts[s] is None else str(acts[s])
        if mark == (r, s):
            text = f"[{text}]"
        return text

    cells = [[cell(r, s) for r in ranks] for s in range(steps)]
    widths = [max([len(f"Rank {r}")] + [len(row[i]) for row in cells]) for i, r in enumerate(ranks)]
    label = " " * (width + 7)
    lines = [label + " ".join(f"{'Rank ' + str(r):<{w}}" for r, w in zip(ranks, widths)).rstrip()]
    for s, row in enumerate(cells):
        line = f"Step {s:0{width}d}: " + " ".join(f"{c:<{w}}" for c, w in zip(row, widths))
        line = line.rstrip()
        if mark is not None and mark[1] == s:
            line += f"  <-- ERROR: {note}" if note else "  <-- ERROR"
        lines.append(line)
    return "\n".join(lines) + "\n"


class ScheduleError(ValueError):
    """An invalid or unlowerable schedule.

    ``rank``, ``step`` and ``action`` locate the failure (``None`` where it has no single place, e.g.
    a missing action); ``reason`` is the one-line cause; ``str(err)`` adds the whole grid.
    """

    def __init__(
        self,
        reason: str,
        order: Grid | None = None,
        rank: int | None = None,
        step: int | None = None,
        action: Action | None = None,
    ):
        self.reason = reason
        self.rank = rank
        self.step = step
        self.action = action
        where = []
        if rank is not None:
            where.append(f"rank {rank}")
        if step is not None:
            where.append(f"step {step}")
        if action is not None:
            where.append(f"action {action}")
        head = (", ".join(where) + ": " if where else "") + reason
        text = head
        if order is not None:
            mark = (rank, step) if rank is not None and step is not None else None
            note = reason if len(reason) <= 120 else reason[:117] + "..."
            text += "\n\nFull schedule:\n" + format_grid(order, mark, note)
        self.grid_text = text
        super().__init__(text)
