"""Lowering passes: golden outputs written as short action strings."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dip.schedule.deps import DependencyIndex
from dip.schedule.errors import ScheduleError
from dip.schedule.ir import Action, Op, actions, format_actions, order_from_text
from dip.schedule.lowering import add_reduce_grad, add_send_recv, defer_recvs, lower, merge_bw, split_bw
from dip.schedule.program import Program, comm_batches, message_of
from dip.schedule.validate import validate_program
from plan_fixtures import fan_in, fan_out, linear

# 2 ranks, 2 stages, 2 units, 1F1B
LIN = linear(2, 2, {0: "0F0 0F1 0B0 0B1", 1: "1F0 1B0 1F1 1B1"})
# V placement: stage_to_rank [0, 1, 1, 0], split backward; stages 1 -> 2 hand over locally on rank 1
V = linear(
    2,
    2,
    {0: "0F0 0F1 3F0 3I0 3F1 3I1 0I0 3W0 0I1 3W1 0W0 0W1", 1: "1F0 2F0 1F1 2F1 2I0 1I0 2I1 1I1 2W0 2W1 1W0 1W1"},
    chunks_per_rank=2,
    style="v",
)
# ViT chunks 0 (rank 0), 1 (rank 1); LM chunks 2 (rank 0), 3 (rank 1); ViT units 0, 1 -> LM unit 0
FAN_IN = fan_in({0: "0F0 0F1 2F0 2B0 0B0 0B1", 1: "1F0 1F1 3F0 3B0 1B0 1B1"})
# same, but the ViT's last chunk and the LM's first chunk share rank 0: a local hand-off
FAN_IN_LOCAL = fan_in({0: "0F0 0F1 1F0 1B0 0B0 0B1", 1: "2F0 2B0"}, vit_ranks=(0,), llm_ranks=(0, 1))
# LM chunk 0 (rank 0) -> DiT chunks 1 (rank 1), 2 (rank 0); LM unit 0 -> DiT units 0, 1
FAN_OUT = fan_out({0: "0F0 2F0 2F1 2B0 2B1 0B0", 1: "1F0 1F1 1B0 1B1"})

EARLY = {
    "linear": (
        LIN,
        {
            0: "0F0 0SEND_F0:1.0 0F1 0SEND_F1:1.1 0RECV_B0:1.0 0B0 0RECV_B1:1.1 0B1",
            1: "1RECV_F0:0.0 1F0 1RECV_F1:0.1 1B0 1SEND_B0:0.0 1F1 1B1 1SEND_B1:0.1",
        },
    ),
    "v": (
        V,
        {
            0: "0F0 0SEND_F0:1.0 0F1 0SEND_F1:1.1 3RECV_F0:2.0 3F0 3I0 3SEND_B0:2.0 3RECV_F1:2.1 3F1 3I1 "
            "3SEND_B1:2.1 0RECV_B0:1.0 0I0 3W0 0RECV_B1:1.1 0I1 3W1 0W0 0W1",
            1: "1RECV_F0:0.0 1F0 1RECV_F1:0.1 2F0 2SEND_F0:3.0 1F1 2RECV_B0:3.0 2F1 2SEND_F1:3.1 2I0 "
            "2RECV_B1:3.1 1I0 1SEND_B0:0.0 2I1 1I1 1SEND_B1:0.1 2W0 2W1 1W0 1W1",
        },
    ),
    "fan_in": (
        FAN_IN,
        {
            0: "0F0 0SEND_F0:1.0 2RECV_F0:1.0 0F1 0SEND_F1:1.1 2RECV_F0:1.1 2F0 2SEND_F0:3.0 2RECV_B0:3.0 "
            "2B0 2SEND_B0:1.0 2SEND_B0:1.1 0RECV_B0:1.0 0B0 0RECV_B1:1.1 0B1",
            1: "1RECV_F0:0.0 1F0 1SEND_F0:2.0 1RECV_F1:0.1 1F1 1SEND_F1:2.0 3RECV_F0:2.0 3F0 3B0 3SEND_B0:2.0 "
            "1RECV_B0:2.0 1RECV_B1:2.0 1B0 1SEND_B0:0.0 1B1 1SEND_B1:0.1",
        },
    ),
    "fan_in_local": (
        FAN_IN_LOCAL,
        {0: "0F0 0F1 1F0 1SEND_F0:2.0 1RECV_B0:2.0 1B0 0B0 0B1", 1: "2RECV_F0:1.0 2F0 2B0 2SEND_B0:1.0"},
    ),
    "fan_out": (
        FAN_OUT,
        {
            0: "0F0 0SEND_F0:1.0 0SEND_F0:1.1 2RECV_F0:1.0 2F0 2RECV_F1:1.1 2F1 2B0 2SEND_B0:1.0 0RECV_B0:1.0 "
            "2B1 2SEND_B1:1.1 0RECV_B0:1.1 0B0",
            1: "1RECV_F0:0.0 1RECV_F1:0.0 1F0 1SEND_F0:2.0 1F1 1SEND_F1:2.1 1RECV_B0:2.0 1B0 1SEND_B0:0.0 "
            "1RECV_B1:2.1 1B1 1SEND_B1:0.0",
        },
    ),
}


@pytest.mark.parametrize("name", list(EARLY))
def test_add_send_recv_early_golden(name: str):
    plan, want = EARLY[name]
    prog = add_send_recv(plan)
    assert prog.text() == want
    validate_program(plan, prog)


LATE = {
    "linear": (
        LIN,
        {
            0: "0F0 0SEND_F0:1.0 0F1 0SEND_F1:1.1 0RECV_B0:1.0 0B0 0RECV_B1:1.1 0B1",
            1: "1RECV_F0:0.0 1F0 1B0 1SEND_B0:0.0 1RECV_F1:0.1 1F1 1B1 1SEND_B1:0.1",
        },
    ),
    "fan_in": (
        FAN_IN,
        {
            0: "0F0 0SEND_F0:1.0 0F1 0SEND_F1:1.1 2RECV_F0:1.0 2RECV_F0:1.1 2F0 2SEND_F0:3.0 2RECV_B0:3.0 "
            "2B0 2SEND_B0:1.0 2SEND_B0:1.1 0RECV_B0:1.0 0B0 0RECV_B1:1.1 0B1",
            1: "1RECV_F0:0.0 1F0 1SEND_F0:2.0 1RECV_F1:0.1 1F1 1SEND_F1:2.0 3RECV_F0:2.0 3F0 3B0 3SEND_B0:2.0 "
            "1RECV_B0:2.0 1B0 1SEND_B0:0.0 1RECV_B1:2.0 1B1 1SEND_B1:0.1",
        },
    ),
    "fan_out": (
        FAN_OUT,
        {
            0: "0F0 0SEND_F0:1.0 0SEND_F0:1.1 2RECV_F0:1.0 2F0 2RECV_F1:1.1 2F1 2B0 2SEND_B0:1.0 2B1 "
            "2SEND_B1:1.1 0RECV_B0:1.0 0RECV_B0:1.1 0B0",
            1: "1RECV_F0:0.0 1F0 1SEND_F0:2.0 1RECV_F1:0.0 1F1 1SEND_F1:2.1 1RECV_B0:2.0 1B0 1SEND_B0:0.0 "
            "1RECV_B1:2.1 1B1 1SEND_B1:0.0",
        },
    ),
}


@pytest.mark.parametrize("name", list(LATE))
def test_add_send_recv_late_golden(name: str):
    plan, want = LATE[name]
    prog = add_send_recv(plan, "late")
    assert prog.text() == want
    validate_program(plan, prog)


def test_same_rank_messages_are_local_handoffs():
    for plan in (V, FAN_IN_LOCAL):
        prog = add_send_recv(plan)
        rank_of = plan.graph.stage_to_rank()
        for a, c in prog.comms.items():
            assert c.src_rank != c.dst_rank, a
            assert rank_of[c.message.src_chunk] == c.src_rank and rank_of[c.message.dst_chunk] == c.dst_rank
    assert not any(a.chunk in (1, 2) and a.peer_chunk in (1, 2) for a in add_send_recv(V).comms)


def test_program_routing_peer_and_sequence():
    prog = add_send_recv(V)
    # directed pair 0 -> 1 carries 0F0, 0F1 forward and 3I0, 3I1's input gradients, in that order
    sends = [a for a in prog.actions[0] if a.op in (Op.SEND_F, Op.SEND_B)]
    assert format_actions(sends) == "0SEND_F0:1.0 0SEND_F1:1.1 3SEND_B0:2.0 3SEND_B1:2.1"
    assert [prog.seq(a) for a in sends] == [0, 1, 2, 3]
    assert {prog.peer(a) for a in sends} == {1}
    recv = Action.parse("2RECV_B1:3.1")
    assert (prog.peer(recv), prog.seq(recv)) == (0, 3)
    c = prog.comms[recv]
    assert (c.src_rank, c.dst_rank, c.message.backward) == (0, 1, True)
    assert message_of(FAN_IN.graph, Action.parse("2RECV_F0:1.1")).kind == "image_embeddings"


DEFERRED = {
    ("linear", "parity"): (
        LIN,
        {
            0: "0F0 0SEND_F0:1.0 0F1 0SEND_F1:1.1 0RECV_B0:1.0 0B0 0RECV_B1:1.1 0B1",
            1: "1RECV_F0:0.0 1F0 1B0 1SEND_B0:0.0 1RECV_F1:0.1 1F1 1B1 1SEND_B1:0.1",
        },
    ),
    ("linear", "stream"): (
        LIN,
        {
            0: "0F0 0SEND_F0:1.0 0F1 0SEND_F1:1.1 0RECV_B0:1.0 0B0 0RECV_B1:1.1 0B1",
            1: "1RECV_F0:0.0 1F0 1B0 1RECV_F1:0.1 1SEND_B0:0.0 1F1 1B1 1SEND_B1:0.1",
        },
    ),
    ("v", "stream"): (
        V,
        {
            0: "0F0 0SEND_F0:1.0 0F1 0SEND_F1:1.1 3RECV_F0:2.0 3F0 3I0 3SEND_B0:2.0 3RECV_F1:2.1 3F1 3I1 "
            "3SEND_B1:2.1 0RECV_B0:1.0 0I0 3W0 0RECV_B1:1.1 0I1 3W1 0W0 0W1",
            1: "1RECV_F0:0.0 1F0 2F0 1RECV_F1:0.1 2SEND_F0:3.0 1F1 2F1 2RECV_B0:3.0 2SEND_F1:3.1 2I0 1I0 "
            "2RECV_B1:3.1 1SEND_B0:0.0 2I1 1I1 1SEND_B1:0.1 2W0 2W1 1W0 1W1",
        },
    ),
    # rank 0 < peer 1: the deferred 0RECV_B0:1.0 is posted before 2SEND_B1:1.1 (rank parity)
    ("fan_out", "parity"): (
        FAN_OUT,
        {
            0: "0F0 0SEND_F0:1.0 0SEND_F0:1.1 2RECV_F0:1.0 2F0 2RECV_F1:1.1 2F1 2B0 2SEND_B0:1.0 2B1 "
            "0RECV_B0:1.0 2SEND_B1:1.1 0RECV_B0:1.1 0B0",
            1: "1RECV_F0:0.0 1F0 1SEND_F0:2.0 1RECV_F1:0.0 1F1 1SEND_F1:2.1 1RECV_B0:2.0 1B0 1SEND_B0:0.0 "
            "1RECV_B1:2.1 1B1 1SEND_B1:0.0",
        },
    ),
}


@pytest.mark.parametrize("name,rule", list(DEFERRED))
def test_defer_recvs_golden(name: str, rule: str):
    plan, want = DEFERRED[(name, rule)]
    prog = defer_recvs(add_send_recv(plan), rule)
    assert prog.text() == want
    validate_program(plan, prog)


def test_defer_keeps_per_pair_order_when_consumers_come_in_another_order():
    # rank 1 consumes unit 1 before unit 0, but rank 0 sent unit 0 first: both RECVs move together
    plan = linear(2, 2, {0: "0F0 0F1 0B0 0B1", 1: "1F1 1F0 1B0 1B1"})
    early = add_send_recv(plan)
    assert early.text()[1] == "1RECV_F0:0.0 1RECV_F1:0.1 1F1 1F0 1B0 1SEND_B0:0.0 1B1 1SEND_B1:0.1"
    for rule in ("parity", "stream"):
        prog = defer_recvs(early, rule)
        assert prog.text()[1].startswith("1RECV_F0:0.0 1RECV_F1:0.1 1F1")
        validate_program(plan, prog)


def test_merge_bw_golden():
    # torch's TestScheduleLowering.test_merge_bw case
    order = {0: actions("0F0 0F1 0F2 0I0 0I1 0W0 0I2 0W2 0W1")}
    assert format_actions(merge_bw(order)[0]) == "0F0 0F1 0F2 0I0 0I1 0W0 0B2 0W1"


def test_split_bw_is_inverse_of_merge_bw():
    order = order_from_text({0: "0F0 0F1 0B0 3F0 3B0 0B1", 1: "1F0 1B0"})
    split = split_bw(order)
    assert format_actions(split[0]) == "0F0 0F1 0I0 0W0 3F0 3I0 3W0 0I1 0W1"
    assert merge_bw(split) == order


def test_add_reduce_grad_golden():
    # torch's TestScheduleLowering.test_reduce_grad case
    order = {0: actions("0F0 0F1 1F0 1F1 1B0 1B1 0B0 0B1")}
    got = add_reduce_grad(order)[0]
    assert format_actions(got) == "0F0 0F1 1F0 1F1 1B0 1B1 1REDUCE_GRAD 0B0 0B1 0REDUCE_GRAD"
    assert add_reduce_grad({0: got}) == {0: got}  # idempotent


def test_add_reduce_grad_on_plan_and_program():
    assert (
        format_actions(add_reduce_grad(V)[1])
        == "1F0 2F0 1F1 2F1 2I0 1I0 2I1 1I1 2W0 2W1 2REDUCE_GRAD 1W0 1W1 1REDUCE_GRAD"
    )
    prog = add_reduce_grad(add_send_recv(LIN))
    assert isinstance(prog, Program)
    # after the last backward and the gradient send it produces
    assert prog.text()[1].endswith("1B1 1SEND_B1:0.1 1REDUCE_GRAD")
    assert prog.text()[0].endswith("0B1 0REDUCE_GRAD")
    validate_program(LIN, prog)
    # REDUCE_GRAD in the compute order passes through lowering unchanged
    assert add_send_recv(replace(LIN, order=add_reduce_grad(LIN))).text() == prog.text()


def test_comm_batches_rule():
    prog = add_send_recv(V)
    got = [(b.indices, format_actions(b.actions)) for b in comm_batches(prog, 0)]
    assert got == [
        ((1,), "0SEND_F0:1.0"),
        ((3, 4), "0SEND_F1:1.1 3RECV_F0:2.0"),
        ((7, 8), "3SEND_B0:2.0 3RECV_F1:2.1"),
        ((11, 12), "3SEND_B1:2.1 0RECV_B0:1.0"),
        ((15,), "0RECV_B1:1.1"),
    ]
    assert all(b.stream == (0,) for b in comm_batches(prog, 0))
    # one communicator per directed pair: a mixed run splits by direction
    edge = [(b.stream, b.indices) for b in comm_batches(prog, 0, "edge")]
    assert edge[1:3] == [((0, 1), (3,)), ((1, 0), (4,))]
    assert [b.stream for b in comm_batches(prog, 0, "pair")] == [(0, 1)] * 5
    with pytest.raises(ValueError, match="comm_model"):
        comm_batches(prog, 0, "nccl")


def test_stuck_compute_order_names_the_waits():
    plan = linear(2, 2, {0: "0F0 0B0 0F1 0B1", 1: "1F0 1F1 1B0 1B1"})
    with pytest.raises(ScheduleError) as e:
        add_send_recv(plan)
    msg = str(e.value)
    assert "no rank can progress" in msg
    assert "rank 0 waits at step 1 (0B0) for 1B0 (rank 1)" in msg
    assert "rank 1 waits at step 1 (1F1) for 0F1 (rank 0)" in msg
    assert "Step 1:" in msg and "<-- ERROR" in msg


def test_add_send_recv_rejects_misplaced_and_comm_actions():
    with pytest.raises(ScheduleError, match="chunk 1 does not live on rank 0"):
        add_send_recv(linear(2, 1, {0: "0F0 1F0 1B0 0B0", 1: ""}))
    with pytest.raises(ScheduleError, match="compute-only"):
        add_send_recv(linear(2, 1, {0: "0F0 0SEND_F0:1.0 0B0", 1: "1F0 1B0"}))
    with pytest.raises(ValueError, match="recv_placement"):
        add_send_recv(LIN, "lazy")


def test_lower_picks_a_validated_program_per_backend():
    deps = DependencyIndex.of_plan(V)
    early = add_reduce_grad(add_send_recv(V, deps=deps))
    nccl = lower(V, "nccl", deps=deps)
    assert nccl.text() == add_reduce_grad(defer_recvs(add_send_recv(V))).text()
    validate_program(V, nccl, deps=deps)
    gloo = lower(V, "gloo")
    validate_program(V, gloo, "op")
    assert gloo.compute_order() == early.compute_order()
    with pytest.raises(ValueError, match="backend"):
        lower(V, "mpi")
