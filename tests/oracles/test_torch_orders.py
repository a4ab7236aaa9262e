"""Baseline orders against torch.distributed.pipelining's schedule IR (built with mock stages)."""

from __future__ import annotations

import pytest
import torch
from torch.distributed.pipelining import schedules

from dip.schedule.baselines import build_uniform_plan


class MockStage:
    """What the multi-stage schedules read from a stage when they only build their order."""

    def __init__(self, stage_index: int, num_stages: int, group_size: int, group_rank: int):
        self.stage_index = stage_index
        self.num_stages = num_stages
        self.group_size = group_size
        self.group_rank = group_rank
        self.submod = torch.nn.Identity()


def torch_order(cls, pp: int, m: int, v: int) -> dict[int, list[str]]:
    stages = [MockStage(j * pp, pp * v, pp, 0) for j in range(v)]
    order = cls(stages, m).pipeline_order
    return {r: [str(a) for a in acts if a is not None] for r, acts in order.items()}


def dip_order(name: str, pp: int, m: int, v: int) -> dict[int, list[str]]:
    return {r: [str(a) for a in acts] for r, acts in build_uniform_plan(name, pp, m, v).order.items()}


@pytest.mark.parametrize("pp,m,v", [(2, 4, 2), (4, 8, 2), (4, 16, 2), (2, 8, 3)])
def test_interleaved_equals_torch(pp: int, m: int, v: int):
    assert dip_order("interleaved", pp, m, v) == torch_order(schedules.ScheduleInterleaved1F1B, pp, m, v)


@pytest.mark.parametrize("pp,m", [(2, 4), (4, 4), (4, 8), (4, 16), (8, 16)])
def test_zb_h1_equals_torch_zb1p_with_one_stage_per_rank(pp: int, m: int):
    assert dip_order("zb-h1", pp, m, 1) == torch_order(schedules.ScheduleInterleavedZeroBubble, pp, m, 1)
