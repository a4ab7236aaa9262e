"""Fault injection for tests and chaos runs (``dip train --inject-fault SPEC``), and a graceful stop on
SIGTERM / SIGINT, and :func:`die_with_parent` (no orphan ranks or planner processes).

Fault specs:

* ``planner-crash:STEP``: the planner service's process kills itself (SIGKILL) before planning STEP's
  first pass; the service starts a new process, which plans on;
* ``planner-hang:STEP``: the planner's process stops answering before planning STEP (the service
  replaces it after ``--timeout-s``);
* ``rank-exit:RANK:STEP``: global rank RANK exits abruptly (``os._exit``) at the start of STEP. Under
  torchrun only in the first attempt of the worker group (``TORCHELASTIC_RESTART_COUNT`` 0), so an
  elastic restart can succeed.

:class:`StopRequest` turns SIGTERM and SIGINT into a request that the training loop reads at the next
step boundary: every rank finishes the current step, a checkpoint is written, and the run ends with
exit code 0.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dip.errors import BadInput

__all__ = [
    "FAULT_KINDS",
    "NO_FAULTS",
    "Faults",
    "StopRequest",
    "die_with_parent",
    "elastic_restart_count",
    "parse_faults",
]

logger = logging.getLogger(__name__)

FAULT_KINDS = ("planner-crash:STEP", "planner-hang:STEP", "rank-exit:RANK:STEP")
PR_SET_PDEATHSIG = 1  # prctl option (Linux)


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel kill this process when its parent dies (Linux); exit now if it already has."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the end of the input pipe still stops the loop
        pass
    if os.getppid() != parent_pid:
        os._exit(1)


def elastic_restart_count() -> int:
    """How many times torchrun restarted this worker group (0 outside torchrun)."""
    try:
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    except ValueError:
        return 0


@dataclass(frozen=True)
class Faults:
    """The faults a run injects (``None``: none of that kind)."""

    planner_crash: int | None = None
    planner_hang: int | None = None
    rank_exit: tuple[int, int] | None = None  # (global rank, step)

    def exit_if_due(self, rank: int, step: int) -> None:
        """Exit abruptly when this rank is to die at this step (first attempt of a worker group only)."""
        if self.rank_exit != (rank, step) or elastic_restart_count() > 0:
            return
        sys.stderr.write(f"rank {rank}: injected fault: exiting abruptly at step {step}\n")
        sys.stderr.flush()
        os._exit(1)


NO_FAULTS = Faults()


def _int(text: str, spec: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise BadInput(f"inject-fault {spec!r}: {what} must be an integer >= 0, got {text!r}")
    return value


def parse_faults(specs: Sequence[str], world: int | None = None) -> Faults:
    """The faults of ``--inject-fault`` specs; :class:`BadInput` naming the spec and the valid forms."""
    found: dict[str, Any] = {}
    for spec in specs:
        kind, _, rest = str(spec).strip().partition(":")
        args = rest.split(":") if rest else []
        if kind in ("planner-crash", "planner-hang") and len(args) == 1:
            found[kind.replace("-", "_")] = _int(args[0], spec, "STEP")
        elif kind == "rank-exit" and len(args) == 2:
            rank = _int(args[0], spec, "RANK")
            if world is not None and rank >= world:
                raise BadInput(f"inject-fault {spec!r}: RANK must be below the {world} processes of the run")
            found["rank_exit"] = (rank, _int(args[1], spec, "STEP"))
        else:
            raise BadInput(f"unknown inject-fault {spec!r}; valid forms: {', '.join(FAULT_KINDS)}")
    return Faults(**found)


class StopRequest:
    """SIGTERM and SIGINT set a flag (the first one logs it) instead of ending the process; the training
    loop stops at the next step boundary. :meth:`install` only works in the main thread; elsewhere the
    request never fires."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def install(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, old in self._previous.items():
            signal.signal(sig, old)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is None:
            self.signal = signum
            logger.warning("%s received: stopping after the current step", signal.Signals(signum).name)
