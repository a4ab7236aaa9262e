"""Point-to-point communication of the executor: flat message buffers, batching, timed waits.

[Note: no shape messages] Every receive buffer is allocated just in time from the step's shape plan
(both sides know every message's tensor specs), so only payload bytes ever travel. A message with
several tensors (e.g. a DiT boundary: ``hidden``, ``cond``, ``t_mod``) travels as one flat buffer.

[Note: matching] Each operation carries ``tag`` = its sequence number on the directed rank pair.
Gloo matches by (peer, tag); NCCL ignores tags and matches in FIFO order per pair, which the lowered
program guarantees (the validator checks that both ends list a pair's messages in the same order).

[Note: batching] A communication batch (a run of consecutive SEND/RECV actions of the lowered
program, :func:`dip.schedule.lowering.comm_batches`) that mixes sends and receives is posted with one
``dist.batch_isend_irecv`` (no deadlock whatever the peer's order); a homogeneous batch is issued op
by op (coalescing independent transfers would serialise them on one stream).
"""

from __future__ import annotations

import datetime
import queue
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor

from dip.data.tensors import TensorSpec

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


class CommTimeout(RuntimeError):
    """A wait ran past its timeout; the message names the rank, the action and the peer."""


def numel(specs: Sequence[TensorSpec]) -> int:
    return sum(s.numel for s in specs)


def flat_dtype(specs: Sequence[TensorSpec]) -> torch.dtype:
    dtypes = {s.dtype for s in specs}
    if len(dtypes) > 1:
        raise ValueError(f"one message carries tensors of several dtypes: {sorted(dtypes)}")
    return TORCH_DTYPES[next(iter(dtypes))] if dtypes else torch.float32


def pack(tensors: Sequence[Tensor]) -> Tensor:
    """One contiguous buffer holding ``tensors`` (no copy for a single contiguous tensor)."""
    if len(tensors) == 1:
        return tensors[0].detach().contiguous().view(-1)
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def unpack(flat: Tensor, specs: Sequence[TensorSpec]) -> list[Tensor]:
    """Views of ``flat`` shaped like ``specs`` (inverse of :func:`pack`)."""
    out, offset = [], 0
    for s in specs:
        out.append(flat[offset : offset + s.numel].view(s.shape))
        offset += s.numel
    return out


def alloc(specs: Sequence[TensorSpec], device: torch.device) -> Tensor:
    """A flat receive buffer for a message with ``specs`` (allocated just in time)."""
    return torch.empty(numel(specs), dtype=flat_dtype(specs), device=device)


@dataclass
class P2P:
    """One prepared transfer: ``send`` (else receive) of ``buffer`` with rank ``peer`` under ``tag``.

    ``what`` is the action text used in error messages; ``batch`` numbers the communication batch
    that posted it (program order); ``group_peer``, when set, is the peer's rank within the process
    group, and the transfer is issued on the group object directly (no per-call rank translation).
    """

    send: bool
    buffer: Tensor
    peer: int
    tag: int
    what: str
    batch: int = 0
    group_peer: int | None = None
    work: object | None = None
    posted: threading.Event | None = None  # set once a background poster has issued it
    error: BaseException | None = None

    def op(self, group: dist.ProcessGroup | None) -> dist.P2POp:
        return dist.P2POp(dist.isend if self.send else dist.irecv, self.buffer, self.peer, group, self.tag)


def post_batch(batch: Sequence[P2P], group: dist.ProcessGroup | None = None) -> None:
    """Issue a batch of transfers: a batch mixing sends and receives goes through one
    ``batch_isend_irecv`` (no deadlock whatever the peer's order), a homogeneous one op by op (on the
    group object directly for transfers that name their ``group_peer``)."""
    if not batch:
        return
    if len({p.send for p in batch}) > 1:
        works = dist.batch_isend_irecv([p.op(group) for p in batch])
        for p, w in zip(batch, works):
            p.work = w
        return
    pg = group if group is not None else dist.group.WORLD
    for p in batch:
        if p.group_peer is not None:
            p.work = (pg.send if p.send else pg.recv)([p.buffer], p.group_peer, p.tag)
        else:
            p.work = (dist.isend if p.send else dist.irecv)(p.buffer, p.peer, group=group, tag=p.tag)


def direct_posting(group: dist.ProcessGroup | None) -> bool:
    """Whether transfers on ``group`` may be issued on the group object directly (gloo)."""
    return dist.is_initialized() and dist.get_backend(group) == "gloo"


class Poster:
    """Issues communication batches from one background thread, in submission (program) order.

    [Note: posting off the compute thread] Issuing a gloo send can block for milliseconds (writing
    into a full socket while the peer's I/O thread waits for a CPU); on the compute thread that
    stalls the pipeline. The poster thread absorbs such stalls (torch's collectives release the GIL);
    :func:`wait` first waits for the posting, then for the transfer."""

    def __init__(self, group: dist.ProcessGroup | None = None):
        self.group = group
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.thread: threading.Thread | None = None  # started by the first submission

    def submit(self, batch: Sequence[P2P]) -> None:
        if not batch:
            return
        if self.thread is None:
            self.thread = threading.Thread(target=self._loop, name="dip-poster", daemon=True)
            self.thread.start()
        done = threading.Event()
        for p in batch:
            p.posted = done
        self.queue.put((list(batch), done))

    def close(self) -> None:
        if self.thread is not None:
            self.queue.put(None)
            self.thread.join()
            self.thread = None

    def _loop(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            batch, done = item
            try:
                post_batch(batch, self.group)
            except BaseException as exc:
                for p in batch:
                    p.error = exc
            finally:
                done.set()


def wait(p: P2P, rank: int, timeout_s: float) -> None:
    """Wait for one transfer, failing after ``timeout_s`` with rank, action and peer in the message."""
    if p.posted is not None and not p.posted.wait(timeout_s):
        raise CommTimeout(f"rank {rank}: timed out after {timeout_s:g} s waiting to post {p.what} (peer rank {p.peer})")
    if p.error is not None:
        raise RuntimeError(f"rank {rank}: posting {p.what} (peer rank {p.peer}) failed: {p.error}") from p.error
    if p.work is None:
        raise RuntimeError(f"rank {rank}: {p.what} was never posted")
    try:
        p.work.wait(timeout=datetime.timedelta(seconds=timeout_s))
    except RuntimeError as exc:
        kind = "send to" if p.send else "receive from"
        raise CommTimeout(
            f"rank {rank}: timed out after {timeout_s:g} s waiting for {p.what} "
            f"({kind} peer rank {p.peer}, tag {p.tag}): {str(exc).splitlines()[0][:200]}"
        ) from None
    p.work = None


@dataclass
class SendQueue:
    """Outstanding sends: beyond ``max_outstanding`` the oldest are waited on, and :meth:`drain`
    waits on all of them (end of step).

    [Note: safe drain points] :meth:`trim` only waits on sends posted no later than the batch whose
    receive the caller has just completed. The lowering's deadlock dry run lets batches complete in
    program order, so such a send's receiver has posted its side without waiting on anything later.
    """

    rank: int
    timeout_s: float
    max_outstanding: int = 64
    pending: deque = field(default_factory=deque)

    def add(self, p: P2P) -> None:
        self.pending.append(p)

    def trim(self, upto_batch: int) -> None:
        while len(self.pending) > self.max_outstanding and self.pending[0].batch <= upto_batch:
            wait(self.pending.popleft(), self.rank, self.timeout_s)

    def drain(self) -> None:
        while self.pending:
            wait(self.pending.popleft(), self.rank, self.timeout_s)


def timed_collective(fn: Callable[..., object], what: str, rank: int, timeout_s: float, *args, **kwargs) -> None:
    """Run an async collective and wait with a timeout that names the rank and the operation."""
    work = fn(*args, async_op=True, **kwargs)
    try:
        work.wait(timeout=datetime.timedelta(seconds=timeout_s))
    except RuntimeError as exc:
        raise CommTimeout(
            f"rank {rank}: timed out after {timeout_s:g} s in {what}: {str(exc).splitlines()[0][:200]}"
        ) from None
