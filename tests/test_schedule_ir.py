"""Plan IR: action text round-trip, fixtures, stage graph helpers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dip.schedule.ir import COMPUTE_OPS, Action, Op, actions, format_actions, order_from_text
from dip.schedule.units import linear_stage_graph

idx = st.integers(min_value=0, max_value=10_000)


@st.composite
def any_action(draw) -> Action:
    op = draw(st.sampled_from(list(Op)))
    if op is Op.REDUCE_GRAD:
        return Action(draw(idx), op)
    if op.is_comm:
        return Action(draw(idx), op, draw(idx), draw(idx), draw(idx))
    return Action(draw(idx), op, draw(idx))


@given(any_action())
def test_action_text_round_trip(a: Action):
    assert Action.parse(str(a)) == a
    assert Action.parse(f"  {a} ") == a


@given(st.lists(any_action(), max_size=20))
def test_action_list_round_trip(acts: list[Action]):
    assert actions(format_actions(acts)) == acts


@pytest.mark.parametrize(
    "text",
    ["3F1", "12B0", "2I7", "2W7", "7SEND_F2:8.1", "8RECV_F1:7.2", "8SEND_B1:7.2", "7RECV_B2:8.1", "3REDUCE_GRAD"],
)
def test_every_op_has_a_short_form(text: str):
    assert str(Action.parse(text)) == text


def test_comm_action_fields():
    a = Action.parse("7SEND_F2:8.1")
    assert (a.chunk, a.op, a.unit, a.peer_chunk, a.peer_unit) == (7, Op.SEND_F, 2, 8, 1)
    assert a.key == (7, Op.SEND_F, 2)


@pytest.mark.parametrize("bad", ["", "F1", "3X1", "3F1:", "3SEND_F1:8", "3F-1", "three"])
def test_bad_action_text_is_rejected(bad: str):
    with pytest.raises(ValueError, match="not an action"):
        Action.parse(bad)


def test_op_classes():
    assert [o for o in Op if o.is_compute] == list(COMPUTE_OPS)
    assert {o for o in Op if o.is_comm} == {Op.SEND_F, Op.RECV_F, Op.SEND_B, Op.RECV_B}
    assert {o for o in Op if o.is_backward} == {Op.B, Op.I, Op.W}


def test_order_from_text_accepts_mapping_and_list():
    rows = ["0F0 0B0", "1F0 1B0"]
    assert order_from_text(rows) == order_from_text({0: rows[0], 1: rows[1]})
    assert order_from_text(rows)[1] == [Action(1, Op.F, 0), Action(1, Op.B, 0)]


def test_v_placement_and_chain_neighbours():
    g = linear_stage_graph(2, 2, "v")
    assert g.stage_to_rank() == [0, 1, 1, 0]
    assert [g.next_in_group(c) for c in range(4)] == [1, 2, 3, None]
    assert [g.prev_in_group(c) for c in range(4)] == [None, 0, 1, 2]
    assert linear_stage_graph(2, 2).stage_to_rank() == [0, 1, 0, 1]
