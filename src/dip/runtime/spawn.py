"""Run a Python function on N local processes, each with ``torch.distributed``'s env:// variables set
(tests and benchmarks; training has its own launcher, :mod:`dip.runtime.launch`)."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue
import socket
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["LOCALHOST", "free_port", "spawn"]

LOCALHOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOCALHOST, 0))
        return s.getsockname()[1]


def _spawn_entry(rank: int, world: int, port: int, fn: Callable, args: tuple, results) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "MASTER_ADDR": LOCALHOST,
            "MASTER_PORT": str(port),
            "LOCAL_RANK": str(rank),
        }
    )
    torch.set_num_threads(1)
    try:
        results.put((rank, True, pickle.dumps(fn(rank, world, *args))))  # plain bytes: no shared memory
    except BaseException as exc:
        results.put((rank, False, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
    finally:
        results.close()
        results.join_thread()  # flush the result before leaving without destructors
        os._exit(0)


def spawn(fn: Callable, world: int, *args: Any, timeout_s: float = 120.0) -> list[tuple[bool, Any]]:
    """Run ``fn(rank, world, *args)`` on ``world`` processes (env:// on 127.0.0.1 set, process group not
    initialised); returns ``(ok, result or error text)`` per rank. Processes still running after
    ``timeout_s`` are killed and reported as failed."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_spawn_entry, args=(r, world, port, fn, args, results), daemon=True) for r in range(world)
    ]
    for p in procs:
        p.start()
    got: dict[int, tuple[bool, Any]] = {}
    deadline = time.monotonic() + timeout_s
    while len(got) < world and time.monotonic() < deadline:
        try:
            r, ok, value = results.get(timeout=0.5)
            got[r] = (ok, pickle.loads(value) if ok else value)
        except queue.Empty:
            if all(not p.is_alive() for p in procs) and results.empty():
                break
    late = [p.is_alive() for p in procs]
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join(5)

    def missing(r: int) -> str:
        if late[r]:
            return f"rank {r} gave no result within {timeout_s:g} s"
        return f"rank {r} exited with code {procs[r].exitcode} without a result"

    return [got.get(r, (False, missing(r))) for r in range(world)]
