"""Bring-your-own models: chunks compose to the whole model, through the same interface."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import torch
from torch import nn

from dip.data.meta import BatchMeta, MicroBatchMeta
from dip.runtime.byo import ByoModel, ByoModule, ByoUnit
from dip.runtime.models.reference import ReferenceModel, reference_step
from dip.runtime.models.seeding import generator
from dip.runtime.models.sequential import ChunkedModel
from dip.spec.model import Edge, ModelSpec, ModuleSpec, ParallelSpec

F64 = torch.float64
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "byo_model.py"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Residual(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, hidden, data):
        return hidden + torch.tanh(self.fc(hidden))


class Encode(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(3, dim)

    def forward(self, inputs, data):
        return self.proj(data["x"])


class Emit(nn.Module):
    def forward(self, hidden, data):
        return {"features": hidden * 2.0}


class Decode(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(8, dim)

    def forward(self, inputs, data):
        return self.proj(inputs["features"])


class Loss(nn.Module):
    def forward(self, hidden, data):
        return {"loss_sum": (hidden.sum(-1) - data["y"]).pow(2).sum()}


def make_data(unit: ByoUnit):
    g = generator(unit.step_seed, unit.mb_index, "rows")
    rows = unit.mb.text_tokens
    return {"x": torch.randn(rows, 3, generator=g).to(unit.dtype), "y": torch.randn(rows, generator=g).to(unit.dtype)}


def two_module_model() -> ByoModel:
    """encoder (4 layers, width 8) -> head (5 layers, width 6); the encoder's post sends "features"."""
    modules = (ModuleSpec("enc", "decoder", 4, 8, 16, 1, 1), ModuleSpec("head", "decoder", 5, 6, 12, 1, 1))
    spec = ModelSpec("byo-two", modules, (Edge("enc", "head", "text_conditioning"),), ParallelSpec(pp=2))
    rows = lambda width: lambda mb, a, b: (mb.text_tokens, width)  # noqa: E731
    enc = ByoModule(make_block=lambda i: Residual(8), hidden_shape=rows(8), make_pre=lambda: Encode(8), make_post=Emit)
    head = ByoModule(make_block=lambda i: Residual(6), hidden_shape=rows(6), make_pre=lambda: Decode(6), make_post=Loss)
    return ByoModel(spec, {"enc": enc, "head": head}, make_data, loss_tokens=lambda mb: mb.text_tokens, dtype=F64)


def test_byo_chunks_compose_to_whole_model():
    batch = BatchMeta((MicroBatchMeta((3, 2)), MicroBatchMeta((4,))))
    ref_loss, ref_grads = reference_step(ReferenceModel(two_module_model()), batch, step_seed=2)
    cases = [({"enc": [0, 1, 4], "head": [0, 2, 3, 5]}, False), ({"enc": [0, 3, 4], "head": [0, 4, 5]}, True)]
    for cuts, split in cases:
        loss, grads = ChunkedModel(two_module_model(), cuts).step(
            batch, step_seed=2, strategies={"enc": ["full", "selective", "offload", "none"]}, split_backward=split
        )
        torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=0)
        assert set(grads) == set(ref_grads) and "head.layers.4.fc.weight" in grads
        for name, g in ref_grads.items():
            torch.testing.assert_close(grads[name], g, rtol=1e-12, atol=1e-15, msg=name)


def test_byo_shape_plan_and_determinism():
    model = two_module_model()
    mb = MicroBatchMeta((3, 2))
    (spec,) = model.output_specs("enc", 2, mb, 0, 0)
    assert spec.name == "hidden" and spec.shape == (5, 8) and spec.dtype == "float64"
    assert model.output_specs("head", 5, mb, 0, 0) == () and model.input_specs("head", 0, mb, 0, 0) == ()
    a = dict(model.build_chunk("head", 2, 5).canonical_named_parameters())
    b = dict(model.build_chunk("head", 0, 5).canonical_named_parameters())
    assert all(torch.equal(p, b[n]) for n, p in a.items())


def test_example_runs(capsys):
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    assert "max |grad diff|" in capsys.readouterr().out
