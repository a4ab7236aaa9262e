"""The planner service: worker processes plan the coming passes exactly as rank 0 would (deterministic
mode), publish them ahead, survive a crash or a hang (replaced, counted), and past the deadline the pass
runs the best plan at hand or rank 0's fallback."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from dip.runtime import planning
from dip.runtime.batches import BatchStream
from dip.runtime.plan_delivery import decode
from dip.runtime.planner_service import PlannerService, default_workers
from dip.runtime.planner_worker import PlannerSetup
from dip.spec.presets import load_model

MODEL = planning.with_parallel(load_model("tiny-vlm"), 2, 1)
CM, HW = planning.cost_setup(MODEL, "float32")


class Channel:
    """Records what rank 0 publishes."""

    def __init__(self):
        self.published: dict[int, bytes] = {}

    def publish(self, index: int, payload: bytes) -> None:
        assert index not in self.published, f"pass {index} published twice"
        self.published[index] = payload


def inline(stream: BatchStream, index: int, search=None) -> planning.StepWork:
    work, _ = planning.plan_step(index, "dip", MODEL, stream.replicas(index), CM, HW, 0, None, None, search)
    return work


def same_plan(a: planning.StepWork, b: planning.StepWork) -> bool:
    return [p.text() for p in a.plans] == [p.text() for p in b.plans] and [p.strategies for p in a.plans] == [
        p.strategies for p in b.plans
    ]


def make(stream: BatchStream, channel: Channel, **kw) -> PlannerService:
    setup = PlannerSetup(MODEL, "dip", "float32", planning.CPU_HARDWARE, 0, kw.pop("deterministic", True))
    setup = replace(setup, **{k: kw.pop(k) for k in ("crash_before", "hang_before") if k in kw})

    def fallback(index: int) -> planning.StepWork:
        return replace(inline(stream, index, planning.FAST_SEARCH), fingerprint=stream.fingerprint(index))

    return PlannerService(setup, stream, channel, range(0, 6), fallback, **kw)


def test_default_workers_leave_the_ranks_their_cores():
    assert default_workers(16, 8) == 4
    assert default_workers(2, 2) == 1 and default_workers(1, 4) == 1


@pytest.mark.multiproc
@pytest.mark.timeout(240)
def test_deterministic_plans_equal_rank_0s_and_survive_a_planner_crash():
    stream = BatchStream(MODEL, dp=1, microbatches=4, seed=0)
    channel = Channel()
    service = make(stream, channel, crash_before=2, lookahead=2)
    service.start()
    try:
        service.wait_ready(180)
        time.sleep(3.0)  # pass 0 and 1 are planned ahead and published before they are asked for
        assert {0, 1} <= set(channel.published)
        for index in range(4):
            work, info = service.take(index)
            assert info.source == "searched" and not info.fallback
            assert work.fingerprint == stream.fingerprint(index)
            assert same_plan(work, inline(stream, index)), index
            assert same_plan(decode(channel.published[index]), work)
        assert service.restarts == 1 and service.events[0]["pass"] == 2
    finally:
        service.close()
    assert all(w.proc.poll() is not None for w in service.workers)


@pytest.mark.multiproc
@pytest.mark.timeout(240)
def test_past_the_deadline_a_pass_runs_the_fallback_and_a_hung_planner_is_replaced():
    stream = BatchStream(MODEL, dp=1, microbatches=4, seed=1)
    channel = Channel()
    service = make(stream, channel, deterministic=False, hang_before=1, hang_timeout_s=4.0, deadline_s=0.05)
    service.start()
    try:
        service.wait_ready(180)
        time.sleep(2.0)
        work, info = service.take(0)
        assert info.source in ("searched", "best-so-far")
        t0 = time.perf_counter()
        work, info = service.take(1)  # the planner hangs before pass 1
        assert info.fallback and info.late and time.perf_counter() - t0 < 5.0
        assert same_plan(work, inline(stream, 1, planning.FAST_SEARCH))
        assert info.wait_s >= 0.05
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (service.restarts and any(w.ready for w in service.workers)):
            time.sleep(0.2)
        assert service.restarts == 1 and "hung" in service.events[0]["reason"]
        time.sleep(2.0)
        work, info = service.take(3)
        assert not info.fallback and work.fingerprint == stream.fingerprint(3)
    finally:
        service.close()
