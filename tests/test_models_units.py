"""Units: splitting a micro-batch's images / clips into several units changes no math."""

from __future__ import annotations

import pytest
import torch

from dip.data.meta import BatchMeta, MicroBatchMeta
from dip.runtime.models import ReferenceModel, SpecModel, build_chunk, make_unit_data, reference_step
from dip.runtime.models.sequential import ChunkedModel
from model_fixtures import tiny_model
from torch_asserts import assert_grads_equal

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_vit_units_concatenate_to_one_unit():
    model = tiny_model("tiny-vlm")
    mb = MicroBatchMeta(text_lens=(5, 4, 6), image_counts=(2, 0, 3))
    chunk = build_chunk(model, "vit", 0, 8, seed=1, dtype=F64)

    def embeds(start, stop):
        data = make_unit_data(model, mb, 2, "vit", start, stop, step_seed=9, dtype=F64)
        return chunk({}, data)["image_embeds"]

    whole = embeds(0, 5)
    assert whole.shape == (5 * 4, 192)
    for cut in (1, 2, 4):
        torch.testing.assert_close(torch.cat([embeds(0, cut), embeds(cut, 5)]), whole, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(embeds(0, 0), whole, rtol=0, atol=0)  # (0, 0) = all instances


def test_unit_data_slices_the_microbatch_data():
    model = tiny_model("tiny-t2v")
    mb = MicroBatchMeta(text_lens=(3, 5), clip_tokens=(16, 32, 16), clip_seconds=(0.5, 1.0, 0.5), clip_sample=(1, 0, 1))
    whole = make_unit_data(model, mb, 0, "dit", 0, 3, step_seed=4)
    tail = make_unit_data(model, mb, 0, "dit", 1, 3, step_seed=4)
    assert tail.seq_lens == (32, 16) and tail.cond_lens == (3, 5)
    for a, b in zip(whole.latents[1:], tail.latents):
        assert torch.equal(a, b)
    assert torch.equal(whole.timesteps[1:], tail.timesteps)


@pytest.mark.parametrize(
    "name,splits",
    [("tiny-t2v", {"dit": 2}), ("tiny-t2v", {"dit": 3}), ("tiny-vlm", {"vit": 2}), ("tiny-vlm", {"vit": 3})],
)
def test_split_units_match_reference(name, splits):
    model = tiny_model(name)
    if model.is_t2v:  # clips of the same caption land in different units (fan-out with shared rows)
        mbs = (
            MicroBatchMeta((4, 6), clip_tokens=(16, 32, 16), clip_seconds=(0.5, 1.0, 0.5), clip_sample=(1, 0, 1)),
            MicroBatchMeta((7,), clip_tokens=(16, 16), clip_seconds=(0.5, 0.5), clip_sample=(0, 0)),
        )
    else:
        mbs = (
            MicroBatchMeta((4, 6, 3), image_counts=(2, 0, 1)),
            MicroBatchMeta((7,), image_counts=(3,)),
            MicroBatchMeta((5,), image_counts=(0,)),
        )
    batch = BatchMeta(mbs)
    ref_loss, ref_grads = reference_step(ReferenceModel(model, seed=2, dtype=F64), batch, step_seed=6)
    chunked = ChunkedModel(SpecModel(model, seed=2, dtype=F64), {m.name: [0, 3, 8] for m in model.modules})
    trace: list = []
    loss, grads = chunked.step(batch, step_seed=6, unit_splits=splits, trace=trace)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=0)
    assert_grads_equal(grads, ref_grads)
    split_module = next(iter(splits))
    units = {
        (c.unit.mb, c.unit.start, c.unit.stop) for c in trace if hasattr(c, "unit") and c.unit.module == split_module
    }
    assert len([u for u in units if u[0] == 0]) == splits[split_module]
