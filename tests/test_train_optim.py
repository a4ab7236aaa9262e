"""The optimizer side of training: the warm-up + cosine LR schedule, global-norm clipping (tied copies
counted once, the squares summed over the ranks), and the scheduler's state through a save and load."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dip.runtime.optim import OptimizerConfig, WarmupCosine, clip_gradients, make_optimizer, make_scheduler


def test_warmup_is_linear_then_cosine_reaches_the_floor_at_the_last_step():
    f = WarmupCosine(warmup_steps=4, total_steps=14, min_ratio=0.1)
    assert [f(t) for t in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == 1.0
    assert f(13) == pytest.approx(0.1)
    assert f(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 5 / 9)))
    assert f(50) == pytest.approx(0.1)  # past the end: the floor


@settings(max_examples=40, deadline=None)
@given(warmup=st.integers(0, 10), total=st.integers(1, 60), ratio=st.floats(0.0, 1.0))
def test_the_schedule_never_leaves_its_bounds_and_only_falls_after_the_warmup(warmup, total, ratio):
    f = WarmupCosine(warmup, total, ratio)
    xs = [f(t) for t in range(total)]
    assert all(ratio - 1e-12 <= x <= 1.0 + 1e-12 or t < warmup for t, x in enumerate(xs))
    after = xs[warmup:]
    assert all(a >= b - 1e-12 for a, b in itertools.pairwise(after))


def test_constant_lr_by_default_and_the_scheduler_steps_after_the_optimizer():
    p = torch.nn.Parameter(torch.ones(3))
    opt = make_optimizer([p], OptimizerConfig(lr=0.5, total_steps=5))
    sched = make_scheduler(opt, OptimizerConfig(lr=0.5, total_steps=5))
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        p.grad = torch.ones(3)
        opt.step()
        sched.step()
    assert lrs == [0.5] * 5


def test_scheduler_state_round_trips():
    cfg = OptimizerConfig(lr=1.0, warmup_steps=2, min_lr=0.0, total_steps=10)
    p = torch.nn.Parameter(torch.ones(1))
    opt = make_optimizer([p], cfg)
    sched = make_scheduler(opt, cfg)
    for _ in range(4):
        opt.step()
        sched.step()
    state = sched.state_dict()
    opt2 = make_optimizer([torch.nn.Parameter(torch.ones(1))], cfg)
    sched2 = make_scheduler(opt2, cfg)
    sched2.load_state_dict(state)
    assert sched2.last_epoch == 4 and sched2.get_last_lr() == sched.get_last_lr()


def named(*grads: list[float]) -> dict[str, torch.nn.Parameter]:
    out = {}
    for k, g in enumerate(grads):
        p = torch.nn.Parameter(torch.zeros(len(g), dtype=torch.float64))
        p.grad = torch.tensor(g, dtype=torch.float64)
        out[f"m.layers.{k}.w"] = p
    return out


def test_clipping_matches_torch_and_reports_the_norm_before_clipping():
    ours = named([3.0, 0.0], [0.0, 4.0])
    ref = named([3.0, 0.0], [0.0, 4.0])
    norm = clip_gradients(ours, 1.0)
    ref_norm = torch.nn.utils.clip_grad_norm_(list(ref.values()), 1.0)
    assert norm == pytest.approx(5.0) and float(ref_norm) == pytest.approx(5.0)
    for n in ours:
        torch.testing.assert_close(ours[n].grad, ref[n].grad)
    untouched = named([0.3, 0.4])
    assert clip_gradients(untouched, 1.0) == pytest.approx(0.5)
    torch.testing.assert_close(untouched["m.layers.0.w"].grad, torch.tensor([0.3, 0.4], dtype=torch.float64))


def test_a_tied_copy_counts_once_and_the_other_ranks_add_their_squares():
    params = named([3.0], [3.0], [4.0])  # layers.1 is a tied copy of layers.0
    seen = []

    def reduce(square: torch.Tensor) -> None:  # another rank holds gradients of squared norm 11
        seen.append(float(square[0]))
        square += 11.0

    norm = clip_gradients(params, None, skip=["m.layers.1.w"], reduce=reduce)
    assert seen == [25.0] and norm == pytest.approx(6.0)
    assert float(params["m.layers.0.w"].grad[0]) == 3.0  # no max_norm: nothing is scaled
