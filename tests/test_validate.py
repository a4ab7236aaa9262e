"""Validator: positive cases and one negative case per rule, each naming rank, step and action."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dip.schedule.errors import ScheduleError, format_grid
from dip.schedule.ir import Action, order_from_text
from dip.schedule.lowering import add_send_recv, defer_recvs
from dip.schedule.program import Program
from dip.schedule.validate import check_deadlock, validate_plan, validate_program
from plan_fixtures import fan_in, fan_out, linear, random_order

LIN = linear(2, 2, {0: "0F0 0F1 0B0 0B1", 1: "1F0 1B0 1F1 1B1"})
FAN_IN = fan_in({0: "0F0 0F1 2F0 2B0 0B0 0B1", 1: "1F0 1F1 3F0 3B0 1B0 1B1"})


def plan_error(plan) -> ScheduleError:
    with pytest.raises(ScheduleError) as e:
        validate_plan(plan)
    return e.value


def program_error(plan, rows, comm_model="rank") -> ScheduleError:
    prog = Program.build(plan.graph, order_from_text(rows))
    with pytest.raises(ScheduleError) as e:
        validate_program(plan, prog, comm_model)
    return e.value


def test_valid_plans_pass():
    validate_plan(LIN)
    validate_plan(FAN_IN)
    validate_plan(fan_out({0: "0F0 2F0 2F1 2B0 2B1 0B0", 1: "1F0 1F1 1B0 1B1"}))
    validate_plan(linear(2, 2, {0: "0F0 0F1 0I0 0I1 0W1 0W0", 1: "1F0 1I0 1F1 1I1 1W0 1W1"}))


def test_dropped_action_is_a_count_error():
    e = plan_error(linear(2, 2, {0: "0F0 0F1 0B0 0B1", 1: "1F0 1B0 1F1"}))
    assert e.reason == "missing 1 action(s): 1B1 (rank 1)"


def test_duplicate_and_extra_actions():
    e = plan_error(linear(2, 1, {0: "0F0 0B0 0F0", 1: "1F0 1B0"}))
    assert (e.rank, e.step, str(e.action)) == (0, 2, "0F0")
    assert "duplicate 0F0 (first at rank 0 step 0)" in e.reason
    e = plan_error(linear(2, 1, {0: "0F0 0B0 0W0", 1: "1F0 1B0"}))
    assert "unexpected action 0W0 (no 0I0 in the plan)" in e.reason
    e = plan_error(linear(2, 1, {0: "0F0 0I0 0B0 0W0", 1: "1F0 1B0"}))
    assert e.reason == "unexpected action 0B0 (chunk 0 unit 0 also has I/W)"


def test_unknown_unit_chunk_and_rank():
    assert "group 'model' has no unit 5" in plan_error(linear(2, 1, {0: "0F5 0F0 0B0", 1: "1F0 1B0"})).reason
    assert "no chunk 7" in plan_error(linear(2, 1, {0: "7F0", 1: "1F0 1B0"})).reason
    assert "rank 2 outside 0..1" in plan_error(linear(2, 1, {0: "0F0 0B0", 1: "1F0 1B0", 2: ""})).reason


def test_wrong_rank_action():
    e = plan_error(linear(2, 1, {0: "0F0 1F0 1B0 0B0", 1: ""}))
    assert (e.rank, e.step, str(e.action)) == (0, 1, "1F0")
    assert e.reason == "chunk 1 lives on rank 1, not rank 0"


def test_w_before_i():
    e = plan_error(linear(2, 1, {0: "0F0 0I0 0W0", 1: "1F0 1W0 1I0"}))
    assert (e.rank, e.step, str(e.action)) == (1, 1, "1W0")
    assert e.reason == "1W0 needs 1I0, which comes later on rank 1 (step 2)"
    text = str(e)
    assert "rank 1, step 1, action 1W0:" in text
    row = next(line for line in text.splitlines() if line.startswith("Step 1:"))
    assert "[1W0]" in row and row.endswith("<-- ERROR: " + e.reason)


def test_local_handoff_order_on_one_rank():
    # V placement: stage 2 consumes stage 1's output on rank 1
    plan = linear(2, 1, {0: "0F0 3F0 3B0 0B0", 1: "2F0 1F0 2B0 1B0"}, chunks_per_rank=2, style="v")
    assert plan_error(plan).reason == "2F0 needs 1F0, which comes later on rank 1 (step 1)"


def test_cyclic_wait_in_compute_order():
    e = plan_error(linear(2, 2, {0: "0F0 0B0 0F1 0B1", 1: "1F0 1F1 1B0 1B1"}))
    assert e.reason.startswith("deadlock, cyclic wait rank 0 -> rank 1 -> rank 0: ")
    assert "rank 0 waits at step 1 (0B0) for 1B0 on rank 1" in e.reason
    assert "rank 1 waits at step 1 (1F1) for 0F1 on rank 0" in e.reason
    assert (e.rank, e.step) == (0, 1)


def test_reduce_grad_rules():
    validate_plan(linear(2, 1, {0: "0F0 0B0 0REDUCE_GRAD", 1: "1F0 1B0 1REDUCE_GRAD"}))
    e = plan_error(linear(2, 2, {0: "0F0 0F1 0B0 0REDUCE_GRAD 0B1", 1: "1F0 1B0 1F1 1B1"}))
    assert e.reason == "REDUCE_GRAD of chunk 0 before its last backward (step 4)"


# --------------------------------------------------------------------------- programs


def test_lowered_programs_pass_every_comm_model():
    for plan in (LIN, FAN_IN):
        for prog in (add_send_recv(plan), add_send_recv(plan, "late"), defer_recvs(add_send_recv(plan))):
            for model in ("rank", "pair", "edge"):
                validate_program(plan, prog, model)


def test_swapped_sends_on_one_rank_pair():
    rows = add_send_recv(FAN_IN).text()
    rows[0] = rows[0].replace("2SEND_B0:1.0 2SEND_B0:1.1", "2SEND_B0:1.1 2SEND_B0:1.0")
    e = program_error(FAN_IN, rows)
    assert "message order differs on rank pair 0->1 at message 3" in e.reason
    assert "rank 0 sends 2SEND_B0:1.1" in e.reason and "rank 1 receives 1RECV_B0:2.0" in e.reason
    assert (e.rank, str(e.action)) == (1, "1RECV_B0:2.0")


def test_swapped_receives_pp2_both_directions():
    # Megatron PP=2 class: one peer carries forward and backward traffic; the receiver swaps two
    rows = add_send_recv(linear(2, 2, {0: "0F0 0F1 0B0 0B1", 1: "1F0 1F1 1B0 1B1"})).text()
    assert rows[1].startswith("1RECV_F0:0.0 1F0 1RECV_F1:0.1")
    rows[1] = rows[1].replace("1RECV_F0:0.0 1F0 1RECV_F1:0.1", "1RECV_F1:0.1 1RECV_F0:0.0 1F0")
    e = program_error(linear(2, 2, {0: "0F0 0F1 0B0 0B1", 1: "1F0 1F1 1B0 1B1"}), rows)
    assert "message order differs on rank pair 0->1 at message 0" in e.reason


def test_message_placement_errors():
    ok = add_send_recv(LIN).text()
    e = program_error(LIN, {**ok, 0: ok[0].replace("0F0 0SEND_F0:1.0", "0SEND_F0:1.0 0F0")})
    assert e.reason == "0SEND_F0:1.0 before its producer 0F0 (step 1)"
    e = program_error(LIN, {**ok, 1: ok[1].replace("1RECV_F0:0.0 1F0", "1F0 1RECV_F0:0.0")})
    assert e.reason == "1RECV_F0:0.0 after its consumer 1F0 (step 0)"
    e = program_error(LIN, {**ok, 1: ok[1].replace(" 1SEND_B1:0.1", "")})
    assert e.reason == "missing 1SEND_B1:0.1 on rank 1"
    e = program_error(LIN, {**ok, 1: ok[1] + " 1SEND_B1:0.1"})
    assert e.reason.startswith("duplicate 1SEND_B1:0.1")
    e = program_error(LIN, {**ok, 0: ok[0].replace("0F0 ", "0F0 0SEND_F0:1.3 ")})
    assert e.reason == "0SEND_F0:1.3 carries no message of the plan"


def test_same_rank_message_must_be_a_local_handoff():
    v = linear(2, 1, {0: "0F0 3F0 3B0 0B0", 1: "1F0 2F0 2B0 1B0"}, chunks_per_rank=2, style="v")
    rows = add_send_recv(v).text()
    rows[1] = rows[1].replace("1F0 2F0", "1F0 1SEND_F0:2.0 2RECV_F0:1.0 2F0")
    e = program_error(v, rows)
    assert "share rank 1; a same-rank message is a local hand-off" in e.reason


DEADLOCK_PLAN = linear(2, 3, {0: "0F0 0F1 0F2 0B0 0B1 0B2", 1: "1F0 1I0 1W0 1F1 1I1 1W1 1F2 1I2 1W2"})
# each rank has an unmatched SEND at the head of its stream while the matching RECV is queued behind
# the other rank's SEND (the pytorch#172668 pattern)
DEADLOCK_ROWS = {
    0: "0F0 0SEND_F0:1.0 0F1 0SEND_F1:1.1 0F2 0RECV_B0:1.0 0SEND_F2:1.2 0B0 0RECV_B1:1.1 0B1 0RECV_B2:1.2 0B2",
    1: "1RECV_F0:0.0 1F0 1I0 1SEND_B0:0.0 1W0 1RECV_F1:0.1 1F1 1I1 1SEND_B1:0.1 1W1 1RECV_F2:0.2 1F2 1I2 "
    "1SEND_B2:0.2 1W2",
}


def test_deadlock_names_the_cycle():
    e = program_error(DEADLOCK_PLAN, DEADLOCK_ROWS)
    assert e.reason.startswith("deadlock, cyclic wait rank 0 -> rank 1 -> rank 0: ")
    assert (
        "rank 0 blocks at step 7 (0B0) until its batch with 0RECV_B0:1.0 completes: queued behind the "
        "unfinished batch at step 3, 0SEND_F1:1.1 (step 3) waits for 1RECV_F1:0.1 (rank 1 step 5), queued "
        "behind rank 1's unfinished batch at step 3"
    ) in e.reason
    assert "rank 1 blocks at step 6 (1F1)" in e.reason and "1SEND_B0:0.0 (step 3)" in e.reason
    assert (e.rank, e.step, str(e.action)) == (0, 7, "0B0")


def test_deadlock_depends_on_the_communicator_model():
    prog = Program.build(DEADLOCK_PLAN.graph, order_from_text(DEADLOCK_ROWS))
    check_deadlock(prog, "edge")  # separate communicators per direction: no coupling
    with pytest.raises(ScheduleError, match="deadlock"):
        check_deadlock(prog, "pair")
    # the compute order itself is fine: the early lowering of the same plan runs under every model
    for model in ("rank", "pair", "edge"):
        validate_program(DEADLOCK_PLAN, add_send_recv(DEADLOCK_PLAN), model)
        validate_program(DEADLOCK_PLAN, defer_recvs(add_send_recv(DEADLOCK_PLAN), "stream"), model)


def test_batched_send_and_recv_do_not_deadlock():
    # the same two SEND/RECV pairs issued as one batch per rank are matched together
    prog = Program.build(
        LIN.graph,
        order_from_text(
            {
                0: "0F0 0SEND_F0:1.0 0F1 0SEND_F1:1.1 0RECV_B0:1.0 0B0 0RECV_B1:1.1 0B1",
                1: "1RECV_F0:0.0 1F0 1B0 1SEND_B0:0.0 1RECV_F1:0.1 1F1 1B1 1SEND_B1:0.1",
            }
        ),
    )
    check_deadlock(prog, "rank")


def test_program_compute_checks_use_program_steps():
    rows = add_send_recv(LIN).text()
    rows[1] = rows[1].replace("1F1", "1F7")
    e = program_error(LIN, rows)
    assert "group 'model' has no unit 7" in e.reason and e.rank == 1 and str(e.action) == "1F7"


def test_validate_program_accepts_merged_backward():
    split = linear(2, 1, {0: "0F0 0I0 0W0", 1: "1F0 1I0 1W0"})
    merged = replace(split, order=order_from_text({0: "0F0 0B0", 1: "1F0 1B0"}))
    validate_program(split, add_send_recv(merged))


def test_format_grid_marks_cell_and_row():
    grid = format_grid({0: [Action.parse("0F0")], 1: [Action.parse("1F0"), Action.parse("1B0")]}, (1, 1), "why")
    lines = grid.splitlines()
    assert lines[0].split() == ["Rank", "0", "Rank", "1"]
    assert lines[1].split() == ["Step", "0:", "0F0", "1F0"]
    assert lines[2].endswith("[1B0]  <-- ERROR: why")


TEMPLATES = [
    linear(2, 3, {}),
    linear(3, 4, {}, chunks_per_rank=2),
    linear(2, 3, {}, chunks_per_rank=2, style="v"),
    linear(4, 4, {}, chunks_per_rank=2, style="v"),
    fan_in({}),
    fan_in({}, vit_ranks=(0,), llm_ranks=(0, 1)),
    fan_out({}),
]


@settings(max_examples=80, deadline=None)
@given(st.randoms(use_true_random=False), st.integers(0, len(TEMPLATES) - 1), st.sampled_from([0.0, 0.5, 1.0]))
def test_random_executable_orders_lower_without_deadlock(rng, which, split_p):
    plan = random_order(TEMPLATES[which], rng, split_p)
    validate_plan(plan)
    early = add_send_recv(plan)
    stream = defer_recvs(early, "stream")
    for model in ("rank", "pair", "edge"):
        validate_program(plan, early, model)
        validate_program(plan, stream, model)
    # torch's rank-parity rule is safe with one communicator per directed pair
    validate_program(plan, defer_recvs(early, "parity"), "edge")
    validate_program(plan, add_send_recv(plan, "late"), "edge")
