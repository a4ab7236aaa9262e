"""The pure-Python shape plan (dip.data.tensors) equals the shapes the real chunks produce."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dip.data.meta import MicroBatchMeta
from dip.data.tensors import Unit, chunk_input_specs, chunk_output_specs, edge_specs, loss_tokens, text_cond_rows
from dip.runtime.models import SpecModel, make_unit_data
from dip.runtime.models.sequential import ChunkCall, ChunkedModel
from model_fixtures import random_batch, tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _shapes(specs) -> dict:
    return {s.name: s.shape for s in specs}


@pytest.mark.parametrize("name", ["tiny-vlm", "tiny-t2v"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_specs_equal_real_shapes(name, seed):
    model = tiny_model(name)
    batch = random_batch(model, seed=seed, microbatches=2)
    chunked = ChunkedModel(SpecModel(model, seed=0), {m.name: [0, 3, 5, 8] for m in model.modules})
    trace: list = []
    chunked.step(batch, step_seed=seed, unit_splits={"vit": 2, "dit": 2}, trace=trace)
    calls = edges = 0
    for item in trace:
        if isinstance(item, ChunkCall):
            c, u = item.chunk, item.unit
            mb = batch.microbatches[u.mb]
            want_in = chunk_input_specs(model, c.module_name, c.layer_start, mb, u.start, u.stop, "float32")
            want_out = chunk_output_specs(model, c.module_name, c.layer_end, mb, u.start, u.stop, "float32")
            assert _shapes(want_in) == {k: tuple(v.shape) for k, v in item.inputs.items()}
            got_out = {k: tuple(v.shape) for k, v in item.outputs.items() if k != "loss_sum"}
            assert [s.name for s in want_out] == list(got_out) and _shapes(want_out) == got_out
            assert ("loss_sum" in item.outputs) == (not want_out)
            assert all(s.dtype == "float32" for s in want_in + want_out)
            calls += 1
        else:
            edge, src, dst, shapes = item
            want = edge_specs(model, edge, src, dst, batch.microbatches[src.mb])
            assert _shapes(want) == shapes
            edges += 1
    assert calls and edges


def test_loss_tokens_rule():
    vlm, t2v = tiny_model("tiny-vlm"), tiny_model("tiny-t2v")
    mb = MicroBatchMeta(text_lens=(5, 1, 3), image_counts=(1, 2, 0))
    assert loss_tokens(vlm, mb) == 4 + 0 + 2
    data = make_unit_data(vlm, mb, 0, "llm", 0, 1, step_seed=0)
    assert len(data.labels) == len(data.loss_positions) == loss_tokens(vlm, mb)
    # layout: per sample, its images' merged tokens (4 each) then its text
    assert data.seq_lens == (9, 9, 3)
    assert data.text_positions.tolist() == [4, 5, 6, 7, 8] + [17] + [18, 19, 20]
    assert data.loss_positions.tolist() == [4, 5, 6, 7, 18, 19]
    clips = MicroBatchMeta(text_lens=(3, 4), clip_tokens=(16, 48), clip_seconds=(0.5, 1.5), clip_sample=(1, 0))
    d = make_unit_data(t2v, clips, 0, "dit", 0, 0, step_seed=0)
    assert loss_tokens(t2v, clips) == sum(x.numel() for x in d.latents) == 64 * 16
    assert text_cond_rows(clips, 0, 2) == ((3, 7), (0, 3))


def test_edge_specs_need_the_same_microbatch():
    model = tiny_model("tiny-vlm")
    mb = MicroBatchMeta(text_lens=(5,), image_counts=(3,))
    edge = model.edges[0]
    assert edge_specs(model, edge, Unit("vit", 0, 1, 3), Unit("llm", 1), mb) == ()
    (spec,) = edge_specs(model, edge, Unit("vit", 0, 1, 3), Unit("llm", 0), mb)
    assert spec.name == "image_embeds" and spec.shape == (8, 192)


def test_tensors_module_imports_no_torch():
    code = "import sys, dip.data.tensors; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
