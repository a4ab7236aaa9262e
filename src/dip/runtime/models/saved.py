"""Where the parts report what they keep for the backward outside autograd's own saved-tensor path.

``torch.autograd.graph.saved_tensors_hooks`` apply innermost-first: inside a recomputed block
(``torch.utils.checkpoint`` installs its hooks) or under the sequence-parallel input resharding
(:class:`dip.runtime.parallel.ShardSavedInputs`) an outer measurement sees nothing. Those places call
:func:`note_saved` with what they do keep (a checkpoint's inputs, a resharded input's rows), and
:func:`in_recomputed_block` tells the resharding to stand aside where a checkpoint's hooks must stay
innermost.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

from torch import Tensor

__all__ = ["in_recomputed_block", "note_saved", "recomputed_block", "tracking_saved"]

_NOTE: ContextVar[Callable[[Tensor], None] | None] = ContextVar("dip_note_saved", default=None)
_RECOMPUTED: ContextVar[bool] = ContextVar("dip_recomputed_block", default=False)


@contextlib.contextmanager
def tracking_saved(note: Callable[[Tensor], None]) -> Iterator[None]:
    """Within the block, :func:`note_saved` hands its tensors to ``note``."""
    token = _NOTE.set(note)
    try:
        yield
    finally:
        _NOTE.reset(token)


def note_saved(t: Tensor) -> None:
    """Report a tensor kept for the backward (no-op unless a measurement is running)."""
    note = _NOTE.get()
    if note is not None:
        note(t)


@contextlib.contextmanager
def recomputed_block() -> Iterator[None]:
    """Marks a block that runs under ``torch.utils.checkpoint`` (its forward and its recomputation)."""
    token = _RECOMPUTED.set(True)
    try:
        yield
    finally:
        _RECOMPUTED.reset(token)


def in_recomputed_block() -> bool:
    return _RECOMPUTED.get()
