"""Export of linear-chain plans to torch.distributed.pipelining's compute-only CSV."""

from __future__ import annotations

import csv
from dataclasses import replace

import pytest

from dip.schedule.errors import ScheduleError
from dip.schedule.export import from_torch_rows, to_torch_actions, to_torch_csv, to_torch_rows
from dip.schedule.lowering import add_reduce_grad
from dip.schedule.units import uniform_units
from plan_fixtures import fan_in, linear

V = linear(
    2,
    2,
    {0: "0F0 0F1 3F0 3I0 3F1 3I1 0I0 3W0 0I1 3W1 0W0 0W1", 1: "1F0 2F0 1F1 2F1 2I0 1I0 2I1 1I1 2W0 2W1 1W0 1W1"},
    chunks_per_rank=2,
    style="v",
)


def test_rows_golden():
    assert to_torch_rows(V) == [
        ["0F0", "0F1", "3F0", "3I0", "3F1", "3I1", "0I0", "3W0", "0I1", "3W1", "0W0", "0W1"],
        ["1F0", "2F0", "1F1", "2F1", "2I0", "1I0", "2I1", "1I1", "2W0", "2W1", "1W0", "1W1"],
    ]
    assert from_torch_rows(to_torch_rows(V)) == V.order


def test_reduce_grad_is_left_out():
    lin = linear(2, 1, {0: "0F0 0B0", 1: "1F0 1B0"})
    assert to_torch_rows(replace(lin, order=add_reduce_grad(lin))) == [["0F0", "0B0"], ["1F0", "1B0"]]


def test_csv_file(tmp_path):
    path = tmp_path / "v.csv"
    to_torch_csv(V, path)
    with open(path, newline="") as f:
        assert list(csv.reader(f)) == to_torch_rows(V)


def test_torch_actions():
    got = to_torch_actions(V)
    assert [str(a) for a in got[1][:3]] == ["1F0", "2F0", "1F1"]
    assert got[0][3].computation_type.value == "I"


def test_non_linear_plans_are_rejected():
    with pytest.raises(ScheduleError, match="linear chain"):
        to_torch_rows(fan_in({0: "0F0 0F1 2F0 2B0 0B0 0B1", 1: "1F0 1F1 3F0 3B0 1B0 1B1"}))
    holes = replace(V, units={"model": uniform_units("model", 3)["model"][1:]})
    with pytest.raises(ScheduleError, match=r"units 0\.\.m-1"):
        to_torch_rows(holes)
    with pytest.raises(ScheduleError, match="compute-only"):
        to_torch_rows(linear(2, 1, {0: "0F0 0SEND_F0:1.0 0B0", 1: "1F0 1B0"}))
