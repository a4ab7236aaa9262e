"""Plan delivery: rank 0 publishes a pass's plan (ahead of time, or an error), every rank gets the same
bytes through the store, and a plan made for another pass or another batch is refused."""

from __future__ import annotations

import os
import time

import pytest
import torch.distributed as dist

from dip.errors import BadInput
from dip.runtime.batches import BatchStream
from dip.runtime.plan_delivery import PlanChannel, PlanMismatch, check_work, decode, encode, encode_error
from dip.runtime.planning import StepWork
from dip.runtime.spawn import spawn
from dip.spec.presets import load_model

VLM = load_model("tiny-vlm")


def work_of(index: int, stream: BatchStream) -> StepWork:
    return StepWork(index, stream.replicas(index), [], None, fingerprint=stream.fingerprint(index))


def test_a_plan_is_checked_against_the_pass_and_the_batch_this_rank_runs():
    stream = BatchStream(VLM, dp=2, microbatches=2, seed=0)
    work = work_of(3, stream)
    check_work(work, 3, stream.fingerprint(3), rank=1)
    with pytest.raises(PlanMismatch, match="rank 1: received the plan of pass 3 while about to run pass 4"):
        check_work(work, 4, stream.fingerprint(4), rank=1)
    other = BatchStream(VLM, dp=2, microbatches=2, seed=1)  # a rank whose data order differs
    with pytest.raises(PlanMismatch, match="ranks disagree on the data order"):
        check_work(work, 3, other.fingerprint(3), rank=1)


def test_payloads_round_trip_and_errors_raise_their_kind():
    stream = BatchStream(VLM, dp=1, microbatches=2, seed=0)
    assert decode(encode(work_of(0, stream))).fingerprint == stream.fingerprint(0)
    with pytest.raises(BadInput, match="needs 9 GiB"):
        decode(encode_error("BadInput", "rank 0 needs 9 GiB"))
    with pytest.raises(RuntimeError, match="planning on rank 0 failed: ValueError: x"):
        decode(encode_error("ValueError", "ValueError: x"))


def _deliver(rank: int, world: int) -> list:
    dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=world)
    stream = BatchStream(VLM, dp=1, microbatches=2, seed=4)
    channel = PlanChannel.create(rank, timeout_s=30)
    got = []
    if rank == 0:
        channel.publish(0, encode(work_of(0, stream)))  # ahead of time: the others find it waiting
        dist.barrier()
        time.sleep(0.5)  # pass 1 is published late: the others wait for it
        channel.publish(1, encode(work_of(1, stream)))
        channel.publish(2, encode_error("BadInput", "the batch does not fit"))
        dist.barrier()
        channel.discard(0)
        return got
    dist.barrier()
    for index in (0, 1):
        work, waited = channel.receive(index)
        check_work(work, index, stream.fingerprint(index), rank)
        got.append((index, waited))
    try:
        channel.receive(2)
    except BadInput as exc:
        got.append(str(exc))
    dist.barrier()
    return got


def _publisher_dies(rank: int, world: int) -> str:
    dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=world)
    channel = PlanChannel.create(rank, timeout_s=30)
    if rank == 0:
        time.sleep(0.5)
        os._exit(3)
    try:
        channel.receive(0)
    except RuntimeError as exc:
        return str(exc)
    return "no error"


@pytest.mark.multiproc
@pytest.mark.timeout(120)
def test_every_rank_gets_rank_0s_plans_and_errors_through_the_store():
    (ok0, _), (ok1, got) = spawn(_deliver, 2, timeout_s=90)
    assert ok0 and ok1, got
    (i0, w0), (i1, w1), err = got
    assert (i0, i1) == (0, 1)
    assert w0 < 0.4 <= w1  # pass 0 was waiting; pass 1 came 0.5 s later
    assert err == "the batch does not fit"


@pytest.mark.multiproc
@pytest.mark.timeout(120)
def test_a_rank_waiting_for_a_plan_learns_that_rank_0_died():
    res = spawn(_publisher_dies, 2, timeout_s=90)
    ok, message = res[1]
    assert ok and "rank 1: lost contact with rank 0 while waiting for the plan of pass 0" in message, message
