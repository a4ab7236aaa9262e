"""CPU core binding of local ranks (``dip train --bind-cores``)."""

from __future__ import annotations

import os
import threading

import pytest

from dip.runtime.affinity import bind_local_rank, core_slices
from dip.runtime.spawn import spawn

needs_affinity = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this OS")


@pytest.mark.parametrize(
    "cores, world, mode, want",
    [
        ([0, 1], 2, "auto", [(0,), (1,)]),
        ([3, 1, 2, 0], 2, "auto", [(0, 1), (2, 3)]),  # sorted, consecutive slices
        ([0, 1, 2, 3, 4], 2, "on", [(0, 1), (2, 3)]),  # the remainder stays unused
        ([0, 1], 4, "auto", None),  # more ranks than cores: the OS balances
        ([0, 1], 3, "on", [(0,), (1,), (0,)]),  # ... unless asked: round-robin
        ([0, 1, 2, 3], 2, "off", None),
        ([], 2, "on", None),
    ],
)
def test_core_slices(cores, world, mode, want):
    assert core_slices(cores, world, mode) == want


def test_core_slices_rejects_an_unknown_mode():
    with pytest.raises(ValueError, match="auto, on, off"):
        core_slices([0, 1], 2, "always")


def _bound_rank(rank: int, world: int, mode: str) -> dict:
    before = sorted(os.sched_getaffinity(0))
    got = bind_local_rank(mode, rank, world)
    seen: list = []
    t = threading.Thread(target=lambda: seen.append(sorted(os.sched_getaffinity(0))))  # started after binding
    t.start()
    t.join()
    every = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            every.add(tuple(sorted(os.sched_getaffinity(int(tid)))))
        except ProcessLookupError:  # a helper thread that ended after the listing
            continue
    return {
        "before": before,
        "got": got,
        "main": sorted(os.sched_getaffinity(0)),
        "new_thread": seen[0],
        "threads": sorted(every),
    }


@needs_affinity
@pytest.mark.multiproc
@pytest.mark.timeout(60)
def test_binding_applies_to_every_thread_of_the_rank():
    res = spawn(_bound_rank, 2, "on", timeout_s=60)
    assert all(ok for ok, _ in res), res
    slices = core_slices(res[0][1]["before"], 2, "on")
    for rank, (_, r) in enumerate(res):
        assert r["got"] == slices[rank]
        assert r["main"] == r["new_thread"] == list(slices[rank])
        assert r["threads"] == [slices[rank]]  # threads started before the binding too


@needs_affinity
@pytest.mark.multiproc
@pytest.mark.timeout(60)
def test_off_and_auto_with_a_gpu_or_another_launcher_leave_the_affinity_alone():
    res = spawn(_bound_rank, 1, "off", timeout_s=60)
    assert res[0][0], res
    r = res[0][1]
    assert r["got"] is None and r["main"] == r["before"]
    assert bind_local_rank("auto", 0, 1, uses_gpu=True) is None  # no binding, nothing touched
    assert bind_local_rank("auto", 0, 1, external_launcher=True) is None  # torchrun places its ranks
