"""Progress bars on stderr for work that takes more than a few seconds (stdout stays free for the
command's output, e.g. one JSON object)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["progress_bar", "tracked"]


def progress_bar() -> Progress:
    """A rich progress bar on stderr (drawn only where stderr is a terminal)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )


@contextmanager
def tracked(description: str, total: int) -> Iterator:
    """``with tracked("planning", n) as advance: ... advance(label)`` — one bar for ``total`` items."""
    with progress_bar() as bar:
        task = bar.add_task(description, total=total)

        def advance(label: str | None = None) -> None:
            bar.update(task, advance=1, description=label or description)

        yield advance
