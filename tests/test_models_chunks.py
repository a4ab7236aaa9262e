"""Chunks [0,3) + [3,8) of every module compose to the single-process reference (fp64)."""

from __future__ import annotations

import pytest
import torch

from dip.runtime.models import ReferenceModel, SpecModel, build_chunk, reference_step
from dip.runtime.models.sequential import ChunkedModel
from model_fixtures import random_batch, tiny_model
from torch_asserts import assert_grads_equal

F64 = torch.float64
MODELS = ("tiny-vlm", "tiny-t2v")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", params=MODELS)
def setup(request):
    model = tiny_model(request.param)
    batch = random_batch(model, seed=11, microbatches=3)
    loss, grads = reference_step(ReferenceModel(model, seed=5, dtype=F64), batch, step_seed=3)
    return model, batch, loss, grads


@pytest.mark.parametrize("split_backward", [False, True])
def test_chunks_compose_to_reference(setup, split_backward):
    model, batch, ref_loss, ref_grads = setup
    chunked = ChunkedModel(SpecModel(model, seed=5, dtype=F64), {m.name: [0, 3, 8] for m in model.modules})
    loss, grads = chunked.step(batch, step_seed=3, split_backward=split_backward)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=0)
    assert_grads_equal(grads, ref_grads)
    assert all(g.abs().max() > 0 for n, g in grads.items() if not n.endswith(("k.bias",))), "dead parameters"


def test_chunk_parameters_equal_whole_model():
    model = tiny_model("tiny-vlm")
    whole = dict(build_chunk(model, "llm", 0, 8, seed=2).canonical_named_parameters())
    part = dict(build_chunk(model, "llm", 3, 8, seed=2).canonical_named_parameters())
    assert "llm.layers.3.attn.q.weight" in part and "llm.post.head.weight" in part
    assert "llm.pre.embed.weight" not in part and "llm.layers.2.attn.q.weight" not in part
    for name, p in part.items():
        assert torch.equal(p, whole[name]), name
    other = dict(build_chunk(model, "llm", 3, 8, seed=3).canonical_named_parameters())
    assert not torch.equal(other["llm.layers.3.attn.q.weight"], part["llm.layers.3.attn.q.weight"])
    vit = dict(build_chunk(model, "vit", 0, 3).canonical_named_parameters())
    assert "vit.pre.patch.weight" in vit and "vit.post.fc1.weight" not in vit


def test_float32_and_float64_builds_share_values():
    model = tiny_model("tiny-t2v")
    p32 = dict(build_chunk(model, "dit", 5, 8, seed=1).canonical_named_parameters())
    p64 = dict(build_chunk(model, "dit", 5, 8, seed=1, dtype=F64).canonical_named_parameters())
    for name, p in p32.items():
        assert p64[name].dtype == F64
        torch.testing.assert_close(p64[name].float(), p, rtol=0, atol=0)


def test_split_backward_of_one_chunk_equals_plain_backward():
    """backward-input (autograd.grad w.r.t. detached leaf inputs) then backward-weight equals backward()."""
    from dip.runtime.models import make_unit_data

    model = tiny_model("tiny-t2v")
    mb = random_batch(model, seed=4, microbatches=1).microbatches[0]
    chunk = build_chunk(model, "dit", 3, 6, seed=0, dtype=F64)
    data = make_unit_data(model, mb, 0, "dit", 0, 0, step_seed=1, dtype=F64)
    gen = torch.Generator().manual_seed(0)
    specs = {"hidden": (sum(mb.clip_tokens), 128), "cond": (sum(data.cond_lens), 128), "t_mod": (mb.clips, 768)}
    base = {k: torch.randn(s, generator=gen, dtype=F64) for k, s in specs.items()}
    grads_out = {k: torch.randn(s, generator=gen, dtype=F64) for k, s in specs.items()}

    def run():
        inputs = {k: v.clone().requires_grad_(True) for k, v in base.items()}
        out = chunk(inputs, data)
        return inputs, [out[k] for k in specs], [grads_out[k] for k in specs]

    chunk.zero_grad(set_to_none=True)
    inputs, outs, gouts = run()
    torch.autograd.backward(outs, gouts)
    plain_in = {k: v.grad for k, v in inputs.items()}
    plain_w = {n: p.grad.clone() for n, p in chunk.named_parameters()}

    inputs, outs, gouts = run()
    leaves = list(inputs.values())
    params = [p for _, p in chunk.named_parameters()]
    g_in = torch.autograd.grad(outs, leaves, gouts, retain_graph=True)
    g_w = torch.autograd.grad(outs, params, gouts)
    for k, g in zip(inputs, g_in):
        torch.testing.assert_close(g, plain_in[k], rtol=1e-12, atol=1e-14)
    for (n, _), g in zip(chunk.named_parameters(), g_w):
        torch.testing.assert_close(g, plain_w[n], rtol=1e-12, atol=1e-14)
    # pass-through tensors are distinct outputs (views), so their gradient adds the incoming one
    assert outs[1] is not inputs["cond"]
