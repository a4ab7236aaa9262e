"""Fault injection specs, the first-attempt rule under torchrun, and SIGTERM as a stop request."""

from __future__ import annotations

import os
import signal

import pytest

from dip.errors import BadInput
from dip.runtime.faults import Faults, StopRequest, parse_faults


def test_fault_specs_parse():
    f = parse_faults(["planner-crash:4", "rank-exit:1:3", "planner-hang:7"], world=2)
    assert f == Faults(planner_crash=4, planner_hang=7, rank_exit=(1, 3))
    assert parse_faults([]) == Faults()


@pytest.mark.parametrize(
    "spec,words",
    [
        ("planner-crash", ["unknown inject-fault", "planner-crash:STEP", "rank-exit:RANK:STEP"]),
        ("disk-full:3", ["unknown inject-fault 'disk-full:3'"]),
        ("rank-exit:1", ["unknown inject-fault"]),
        ("planner-crash:x", ["STEP must be an integer >= 0", "'x'"]),
        ("rank-exit:-1:2", ["RANK must be an integer >= 0"]),
        ("rank-exit:2:2", ["RANK must be below the 2 processes"]),
    ],
)
def test_bad_fault_specs_name_the_spec_and_the_forms(spec, words):
    with pytest.raises(BadInput) as err:
        parse_faults([spec], world=2)
    for w in words:
        assert w in str(err.value)


def test_a_rank_exits_only_at_its_step_and_only_in_the_first_attempt(monkeypatch):
    exits = []
    monkeypatch.setattr(os, "_exit", lambda code: exits.append(code))
    f = Faults(rank_exit=(1, 3))
    f.exit_if_due(0, 3)
    f.exit_if_due(1, 2)
    assert exits == []
    f.exit_if_due(1, 3)
    assert exits == [1]
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")  # torchrun restarted the worker group
    f.exit_if_due(1, 3)
    assert exits == [1]


def test_sigterm_becomes_a_stop_request_and_the_old_handler_comes_back():
    before = signal.getsignal(signal.SIGTERM)
    stop = StopRequest().install()
    try:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signal == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGTERM)  # a second signal changes nothing
        assert stop.signal == signal.SIGTERM
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGTERM) == before
