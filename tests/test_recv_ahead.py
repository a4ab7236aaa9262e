"""Receives one compute action ahead (gloo): golden outputs and properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dip.schedule.errors import ScheduleError
from dip.schedule.ir import Op
from dip.schedule.lowering import add_reduce_grad, add_send_recv, lower
from dip.schedule.program import COMM, COMPUTE, RECVS
from dip.schedule.recv_ahead import post_recvs_ahead
from dip.schedule.validate import validate_program
from plan_fixtures import fan_in, linear, random_order
from test_validate import TEMPLATES

# 2 ranks, 1F1B over 4 units
LIN4 = linear(2, 4, {0: "0F0 0F1 0B0 0F2 0B1 0F3 0B2 0B3", 1: "1F0 1B0 1F1 1B1 1F2 1B2 1F3 1B3"})

GOLDEN = {
    # rank 0's gradient RECVs move before the forward that used to precede them; rank 1's activation
    # RECVs already have a backward between them and their consumer and stay
    "1f1b": (
        LIN4,
        {
            0: "0F0 0SEND_F0:1.0 0RECV_B0:1.0 0F1 0SEND_F1:1.1 0B0 0RECV_B1:1.1 0F2 0SEND_F2:1.2 0B1 "
            "0RECV_B2:1.2 0F3 0SEND_F3:1.3 0RECV_B3:1.3 0B2 0B3",
            1: "1RECV_F0:0.0 1F0 1RECV_F1:0.1 1B0 1SEND_B0:0.0 1F1 1RECV_F2:0.2 1B1 1SEND_B1:0.1 1F2 "
            "1RECV_F3:0.3 1B2 1SEND_B2:0.2 1F3 1B3 1SEND_B3:0.3",
        },
    ),
    # ViT units 0, 1 feed LM unit 0: every RECV its consumer directly followed moves, past SENDs
    "fan_in": (
        fan_in({0: "0F0 0F1 2F0 2B0 0B0 0B1", 1: "1F0 1F1 3F0 3B0 1B0 1B1"}),
        {
            0: "0F0 0SEND_F0:1.0 2RECV_F0:1.0 2RECV_F0:1.1 0F1 0SEND_F1:1.1 2RECV_B0:3.0 2F0 2SEND_F0:3.0 "
            "0RECV_B0:1.0 2B0 2SEND_B0:1.0 2SEND_B0:1.1 0RECV_B1:1.1 0B0 0B1",
            1: "1RECV_F0:0.0 1RECV_F1:0.1 1F0 1SEND_F0:2.0 3RECV_F0:2.0 1F1 1SEND_F1:2.0 3F0 1RECV_B0:2.0 "
            "3B0 3SEND_B0:2.0 1RECV_B1:2.0 1B0 1SEND_B0:0.0 1B1 1SEND_B1:0.1",
        },
    ),
    # rank 1 runs unit 2 before unit 1: RECV_F2 moves ahead and takes the earlier RECV_F1 from the
    # same peer along (each directed pair keeps its message order)
    "out_of_order": (
        linear(2, 3, {0: "0F0 0F1 0F2 0B0 0B1 0B2", 1: "1F0 1F2 1F1 1B0 1B1 1B2"}),
        {
            0: "0F0 0SEND_F0:1.0 0F1 0SEND_F1:1.1 0RECV_B0:1.0 0F2 0SEND_F2:1.2 0RECV_B1:1.1 0B0 0RECV_B2:1.2 0B1 0B2",
            1: "1RECV_F0:0.0 1RECV_F1:0.1 1RECV_F2:0.2 1F0 1F2 1F1 1B0 1SEND_B0:0.0 1B1 1SEND_B1:0.1 1B2 1SEND_B2:0.2",
        },
    ),
}


@pytest.mark.parametrize("name", list(GOLDEN))
def test_post_recvs_ahead_golden(name: str):
    plan, want = GOLDEN[name]
    prog = post_recvs_ahead(add_send_recv(plan))
    assert prog.text() == want
    validate_program(plan, prog, "op")


def test_ahead_is_for_independent_operations_only():
    # one communicator that runs operations in issue order (NCCL) queues rank 0's SEND_F1 behind the
    # early RECV_B0, whose sender waits for that very activation
    early = add_send_recv(LIN4)
    validate_program(LIN4, early, "rank")
    with pytest.raises(ScheduleError, match="deadlock"):
        validate_program(LIN4, post_recvs_ahead(early), "rank")


def _computes_before(acts) -> dict:
    """Per RECV: how many compute actions precede it."""
    out, n = {}, 0
    for a in acts:
        if a.op in COMPUTE:
            n += 1
        elif a.op in RECVS:
            out[a] = n
    return out


def _consumed_next(acts, i: int) -> bool:
    """Whether the first action after the SEND/RECV run holding ``acts[i]`` consumes that RECV."""
    j = i
    while j < len(acts) and acts[j].op in COMM:
        j += 1
    if j == len(acts) or (acts[j].chunk, acts[j].unit) != (acts[i].chunk, acts[i].unit):
        return False
    return acts[j].op is Op.F if acts[i].op is Op.RECV_F else acts[j].op in (Op.B, Op.I)


@settings(max_examples=80, deadline=None)
@given(st.randoms(use_true_random=False), st.integers(0, len(TEMPLATES) - 1), st.sampled_from([0.0, 0.5, 1.0]))
def test_ahead_only_moves_receives_earlier_and_stays_deadlock_free(rng, which, split_p):
    plan = random_order(TEMPLATES[which], rng, split_p)
    early = add_reduce_grad(add_send_recv(plan))
    ahead = post_recvs_ahead(early)
    validate_program(plan, ahead, "op")
    for r, acts in early.actions.items():
        moved = ahead.actions[r]
        assert sorted(map(str, acts)) == sorted(map(str, moved))
        # computes, SENDs and REDUCE_GRADs keep their order; RECVs move by at most one compute action
        assert [a for a in acts if a.op not in RECVS] == [a for a in moved if a.op not in RECVS]
        before, after = _computes_before(acts), _computes_before(moved)
        for i, a in enumerate(acts):
            if a.op not in RECVS:
                continue
            assert after[a] in (before[a], before[a] - 1)
            if before[a] > 0 and _consumed_next(acts, i):
                assert after[a] == before[a] - 1, f"{a} on rank {r} was not moved ahead"


def test_runtime_lowering_puts_receives_ahead_on_gloo_only():
    gloo, nccl = lower(LIN4, "gloo"), lower(LIN4, "nccl")
    assert gloo.text()[0].startswith("0F0 0SEND_F0:1.0 0RECV_B0:1.0 0F1")
    assert "0RECV_B0:1.0 0F1" not in nccl.text()[0]
    validate_program(LIN4, nccl, "rank")
