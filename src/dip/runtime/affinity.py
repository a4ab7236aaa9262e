"""CPU core binding of local ranks (``dip train --bind-cores``).

On a CPU machine every local rank gets its own slice of the cores this process may use; its
intra-op threads and the communication library's threads then stay on that slice. Without binding
the operating system moves the ranks' threads between cores, and a communication thread that wakes
up on a core busy with another rank's kernels waits for it (see ``docs/runtime.md``).

Modes: ``auto`` binds when every local rank gets at least one core, no GPU is used and ``dip train``
started the ranks itself (under torchrun or another launcher, placement stays the launcher's: a rank
it already bound would otherwise be cut into a slice of its own slice); ``on`` always binds
(round-robin, one core each, when there are more ranks than cores); ``off`` never does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

BIND_MODES: tuple[str, ...] = ("auto", "on", "off")


def core_slices(cores: Sequence[int], local_world: int, mode: str = "auto") -> list[tuple[int, ...]] | None:
    """The cores of each local rank (``None``: no binding).

    Every rank gets ``len(cores) // local_world`` consecutive cores (the remainder stays unused);
    with more ranks than cores, ``on`` gives rank ``r`` core ``r mod len(cores)`` and ``auto`` binds nothing.
    """
    if mode not in BIND_MODES:
        raise ValueError(f"bind mode must be one of {', '.join(BIND_MODES)}, got {mode!r}")
    cores = sorted(cores)
    if mode == "off" or local_world < 1 or not cores:
        return None
    per = len(cores) // local_world
    if per >= 1:
        return [tuple(cores[r * per : (r + 1) * per]) for r in range(local_world)]
    if mode == "on":
        return [(cores[r % len(cores)],) for r in range(local_world)]
    return None


def _threads() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return [0]


def bind_local_rank(
    mode: str, local_rank: int, local_world: int, uses_gpu: bool = False, external_launcher: bool = False
) -> tuple[int, ...] | None:
    """Bind every thread of this process (and the threads it starts later) to the cores of
    ``local_rank``; returns them, or ``None`` when nothing was bound (mode, GPU, another launcher's
    ranks under ``auto``, or no affinity support)."""
    if not hasattr(os, "sched_setaffinity") or (mode == "auto" and (uses_gpu or external_launcher)):
        return None
    slices = core_slices(os.sched_getaffinity(0), local_world, mode)
    if slices is None or not 0 <= local_rank < len(slices):
        return None
    mine = slices[local_rank]
    for tid in _threads():
        try:
            os.sched_setaffinity(tid, mine)
        except OSError:  # a thread that ended meanwhile
            pass
    os.sched_setaffinity(0, mine)
    return mine
