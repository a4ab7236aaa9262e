"""Plan delivery: every rank receives the same plan for a pass through a c10d ``TCPStore`` that global
rank 0 hosts.

Rank 0 publishes pass ``i``'s :class:`~dip.runtime.planning.StepWork` under key ``plan/i`` as soon as it
is decided (the planner service publishes plans made ahead while the current step still runs, so a
rank that finishes a step usually finds the next plan waiting); the other ranks block on that key.
Publishing is a store ``set`` from whichever thread of rank 0 decides the plan, so no rank has to meet
rank 0 in a collective to get it. A planning error is published the same way, and every rank raises
it.

A plan carries its pass number and the fingerprint of the batches it was made for; each rank checks
both against its own :class:`~dip.runtime.batches.BatchStream` (:func:`check_work`) before running it.
"""

from __future__ import annotations

import datetime
import logging
import os
import pickle
import threading
import time
from typing import Any

import torch.distributed as dist

from dip.errors import BadInput
from dip.runtime.planning import StepWork

__all__ = ["PlanChannel", "PlanMismatch", "check_work", "decode", "encode", "encode_error"]

logger = logging.getLogger(__name__)

FIRST_PLAN_TIMEOUT_S = 900.0  # the first plan of a run may wait for the planner's compilation


class PlanMismatch(RuntimeError):
    """A rank received a plan made for another pass or another batch."""


def encode(work: StepWork) -> bytes:
    return pickle.dumps(("work", work), protocol=pickle.HIGHEST_PROTOCOL)


def encode_error(kind: str, message: str) -> bytes:
    return pickle.dumps(("error", kind, message), protocol=pickle.HIGHEST_PROTOCOL)


def decode(payload: bytes) -> StepWork:
    """The work in ``payload``; a published planning error is raised (``BadInput`` stays ``BadInput``)."""
    item = pickle.loads(payload)
    if item[0] == "error":
        _, kind, message = item
        if kind == "BadInput":
            raise BadInput(message)
        raise RuntimeError(f"planning on rank 0 failed: {message}")
    return item[1]


def check_work(work: StepWork, index: int, fingerprint: str, rank: int) -> None:
    """Refuse a plan that was made for another pass or another batch than the one this rank will run."""
    if work.step != index:
        raise PlanMismatch(f"rank {rank}: received the plan of pass {work.step} while about to run pass {index}")
    if work.fingerprint != fingerprint:
        raise PlanMismatch(
            f"rank {rank}: the plan of pass {index} was made for batch {work.fingerprint or '(none)'}, but this "
            f"rank's data stream holds batch {fingerprint} (the ranks disagree on the data order)"
        )


class PlanChannel:
    """The store that carries plans from rank 0 to every rank (one per training run).

    Args:
        store: a ``torch.distributed`` store every rank reaches (rank 0's ``TCPStore``).
        rank: this process's global rank.
        timeout_s: how long a rank waits for a plan once the run's first plan arrived.
    """

    def __init__(self, store: Any, rank: int, timeout_s: float):
        self.store, self.rank, self.timeout_s = store, rank, timeout_s
        self.lock = threading.Lock()  # rank 0 publishes from the planner service's thread and its own
        self.received = 0

    @classmethod
    def create(cls, rank: int, timeout_s: float) -> PlanChannel:
        """Rank 0 starts a ``TCPStore`` server on a free port of ``MASTER_ADDR`` and tells the other ranks
        its port (a collective: every rank calls this once, in the same order)."""
        host = os.environ.get("MASTER_ADDR", "127.0.0.1")
        timeout = datetime.timedelta(seconds=max(timeout_s, FIRST_PLAN_TIMEOUT_S))
        store = None
        if rank == 0:
            store = dist.TCPStore(host, 0, is_master=True, wait_for_workers=False, timeout=timeout)
        box = [store.port if store is not None else None]
        dist.broadcast_object_list(box, src=0)
        if store is None:
            store = dist.TCPStore(host, box[0], is_master=False, timeout=timeout)
        return cls(store, rank, timeout_s)

    @staticmethod
    def key(index: int) -> str:
        return f"plan/{index}"

    def publish(self, index: int, payload: bytes) -> None:
        """Make pass ``index``'s plan (or error) visible to every rank."""
        with self.lock:
            self.store.set(self.key(index), payload)

    def discard(self, index: int) -> None:
        """Drop a pass's plan once every rank has it (rank 0, when a later step starts)."""
        with self.lock:
            self.store.delete_key(self.key(index))

    def receive(self, index: int) -> tuple[StepWork, float]:
        """Pass ``index``'s plan and the seconds this rank waited for it (the other ranks)."""
        t0 = time.perf_counter()
        timeout = FIRST_PLAN_TIMEOUT_S if self.received == 0 else self.timeout_s
        try:
            self.store.wait([self.key(index)], datetime.timedelta(seconds=max(timeout, self.timeout_s)))
            payload = self.store.get(self.key(index))
        except (RuntimeError, OSError) as exc:  # DistStoreError / DistNetworkError are RuntimeErrors
            detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise RuntimeError(
                f"rank {self.rank}: lost contact with rank 0 while waiting for the plan of pass {index} "
                f"(rank 0 publishes the plans): {detail}"
            ) from None
        waited = time.perf_counter() - t0
        self.received += 1
        return decode(payload), waited
