"""Every per-layer memory strategy gives the gradients of "none"."""

from __future__ import annotations

import pytest
import torch

from dip.runtime.models import MEMORY_STRATEGIES, SpecModel, build_chunk
from dip.runtime.models.sequential import ChunkedModel
from model_fixtures import random_batch, tiny_model

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", params=["tiny-vlm", "tiny-t2v"])
def baseline(request):
    model = tiny_model(request.param)
    batch = random_batch(model, seed=21, microbatches=2)
    chunked = ChunkedModel(SpecModel(model, seed=4, dtype=F64), {m.name: [0, 3, 8] for m in model.modules})
    loss, grads = chunked.step(batch, step_seed=8, unit_splits={"vit": 2, "dit": 2})
    return model, batch, chunked, loss, grads


MIXED = ("selective", "full", "offload", "none", "full", "selective", "offload", "none")


@pytest.mark.parametrize(
    "pattern,split", [(("selective",) * 8, False), (("full",) * 8, False), (("offload",) * 8, False), (MIXED, True)]
)
def test_strategies_match_none(baseline, pattern, split):
    model, batch, chunked, ref_loss, ref_grads = baseline
    strategies = {m.name: pattern for m in model.modules}
    loss, grads = chunked.step(
        batch, step_seed=8, unit_splits={"vit": 2, "dit": 2}, strategies=strategies, split_backward=split
    )
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=0)
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-12, atol=1e-16, msg=name)


def test_strategy_validation():
    model = tiny_model("tiny-vlm")
    chunk = build_chunk(model, "llm", 3, 5)
    with pytest.raises(ValueError, match="memory strategies for 2 layers"):
        chunk({}, None, ["none"])
    with pytest.raises(ValueError, match="unknown memory strategy"):
        chunk({}, None, ["none", "swap"])
    assert MEMORY_STRATEGIES == ("none", "selective", "full", "offload")
