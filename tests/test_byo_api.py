"""The bring-your-own API: named boundary tensors, concatenated fan-in, tied parameters across ranks,
real samples per unit; one process and two processes (gloo) against the single-process reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dip.data.meta import BatchMeta, MicroBatchMeta
from dip.data.tensors import Unit
from dip.runtime.byo import ByoModel, ByoModule, ByoUnit, merge_received
from dip.runtime.models.reference import ReferenceModel, reference_step
from dip.runtime.models.sequential import ChunkedModel
from dip.runtime.spawn import spawn
from dip.runtime.step import StepRunner
from dip.runtime.ties import TiedGradients, holder_layer, sum_tied_grads, tie_holders
from dip.spec.model import Edge, ModelSpec, ModuleSpec, ParallelSpec
from runtime_helpers import separated_plan

pytestmark = pytest.mark.usefixtures("one_torch_thread")

F64 = torch.float64
VOCAB, DIM, FEAT = 11, 6, 4
TIE = ("lm.pre.embed.weight", "lm.post.head.weight")

# the "dataset": real samples by index (tokens and one feature row per image)
SAMPLES = {
    i: {
        "tokens": torch.randint(VOCAB, (3 + i % 3,), generator=torch.Generator().manual_seed(i)),
        "images": torch.randn(i % 3, FEAT, generator=torch.Generator().manual_seed(100 + i), dtype=F64),
    }
    for i in range(12)
}


class Source:
    def __init__(self):
        self.loaded: list[int] = []

    def sample(self, index: int):
        self.loaded.append(index)
        return SAMPLES[index]


def batch_of(groups) -> BatchMeta:
    mbs = []
    for ids in groups:
        mbs.append(
            MicroBatchMeta(
                text_lens=tuple(len(SAMPLES[i]["tokens"]) for i in ids),
                image_counts=tuple(len(SAMPLES[i]["images"]) for i in ids),
                sample_ids=tuple(ids),
            )
        )
    return BatchMeta(tuple(mbs))


class EncPre(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(FEAT, DIM)

    def forward(self, inputs, data):
        return self.proj(data["images"])


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(DIM, DIM)

    def forward(self, hidden, data, side=None):
        extra = side["bias"] if side else 0.0
        return hidden + torch.tanh(self.fc(hidden) + extra)


class EncPost(nn.Module):
    def forward(self, hidden, data):
        return {"feat": 2.0 * hidden}


class LmPre(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.side = nn.Linear(DIM, DIM)

    def forward(self, inputs, data):
        hidden = self.embed(data["tokens"])
        feat = inputs.get("feat")
        bias = self.side(feat).sum(0, keepdim=True) if feat is not None else self.side.bias[None] * 0.0
        return hidden, {"bias": bias}


class LmPost(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(DIM, VOCAB, bias=False)

    def forward(self, hidden, data, side):
        logits = self.head(hidden + side["bias"])
        return {"loss_sum": F.cross_entropy(logits[data["loss_rows"]], data["labels"], reduction="sum")}


def make_data(unit: ByoUnit):
    samples = unit.samples()
    if unit.module == "enc":
        rows = torch.cat([s["images"] for s in samples])[unit.start : unit.stop]
        return {"images": rows.to(unit.dtype)}
    tokens = torch.cat([s["tokens"] for s in samples])
    rows, labels, off = [], [], 0
    for s in samples:
        t = s["tokens"]
        rows += range(off, off + len(t) - 1)
        labels.append(t[1:])
        off += len(t)
    return {"tokens": tokens, "loss_rows": torch.tensor(rows), "labels": torch.cat(labels)}


def model(source=None) -> ByoModel:
    spec = ModelSpec(
        "byo-api",
        (
            ModuleSpec("enc", "vit", 2, DIM, DIM, 1, 1, out_hidden=DIM),
            ModuleSpec("lm", "decoder", 4, DIM, DIM, 1, 1, vocab_size=VOCAB),
        ),
        (Edge("enc", "lm", "image_embeddings"),),
        ParallelSpec(pp=2),
    )
    enc = ByoModule(
        make_block=lambda i: Residual(),
        make_pre=EncPre,
        make_post=EncPost,
        hidden_shape=lambda mb, a, b: (b - a, DIM),
        instances=lambda mb: mb.images,
        last_outputs=lambda mb, a, b: {"feat": (b - a, DIM)},
    )
    lm = ByoModule(
        make_block=lambda i: Residual(),
        make_pre=LmPre,
        make_post=LmPost,
        boundary=lambda mb, a, b: {"hidden": (mb.text_tokens, DIM), "bias": (1, DIM)},
        first_inputs=lambda mb, a, b: {"feat": (mb.images, DIM)} if mb.images else {},
    )
    m = ByoModel(
        spec,
        {"enc": enc, "lm": lm},
        make_data,
        loss_tokens=lambda mb: mb.text_tokens - mb.samples,
        dtype=F64,
        ties=[TIE],
    )
    m.use_data(source or Source())
    return m


def test_merge_concatenates_in_unit_order_never_overwrites():
    e = Edge("enc", "lm", "image_embeddings")
    got = merge_received(
        "lm",
        [
            (e, Unit("enc", 0, 2, 3), {"x": torch.tensor([[3.0]])}),
            (e, Unit("enc", 0, 0, 2), {"x": torch.tensor([[1.0], [2.0]])}),
        ],
        [e],
    )
    assert got["x"].flatten().tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="same position"):
        merge_received("lm", [(e, Unit("enc", 0, 0, 1), {"x": torch.ones(1)})] * 2, [e])


def test_tied_copies_start_equal_and_get_the_summed_gradient():
    m = model()
    pre, post = m.build_chunk("lm", 0, 2), m.build_chunk("lm", 2, 4)
    a = dict(pre.canonical_named_parameters())[TIE[0]]
    b = dict(post.canonical_named_parameters())[TIE[1]]
    assert torch.equal(a, b)
    a.grad, b.grad = torch.ones_like(a), 2 * torch.ones_like(b)
    sum_tied_grads({TIE[0]: a, TIE[1]: b}, [TIE])
    assert torch.equal(a.grad, b.grad) and float(a.grad[0, 0]) == 3.0


def test_tie_holders_from_the_layout():
    assert holder_layer("lm.post.head.weight", 4) == ("lm", 3)
    (tie,) = tie_holders([TIE], {0: [("enc", 0, 2), ("lm", 0, 2)], 1: [("lm", 2, 4)]}, {"enc": 2, "lm": 4})
    assert tie.ranks == (0, 1)


def test_chunked_with_sub_microbatches_matches_the_whole_model_and_reads_real_samples():
    batch = batch_of([(0, 1, 2), (3, 4), (6,)])  # the last micro-batch has no image
    src = Source()
    ref_loss, ref_grads = reference_step(ReferenceModel(model(src)), batch, step_seed=1)
    assert set(src.loaded) == {0, 1, 2, 3, 4, 6}
    loss, grads = ChunkedModel(model(), {"enc": [0, 1, 2], "lm": [0, 1, 3, 4]}).step(
        batch, step_seed=1, unit_splits={"enc": 3}, strategies={"lm": ["full", "none", "none", "none"]}
    )
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=0)
    assert set(grads) == set(ref_grads) and TIE[1] in grads
    assert torch.equal(grads[TIE[0]], grads[TIE[1]])
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-10, atol=1e-13, msg=name)


def _layouts():
    return {"enc": [(0, 1), (1, 2)], "lm": [(0, 2), (2, 4)]}


def test_executor_one_rank_matches_reference():
    batch = batch_of([(1, 2), (4, 5, 6)])
    m = model()
    plan = separated_plan(
        m.spec, batch, _layouts(), {"enc": [0, 0], "lm": [0, 0]}, pp=1, sub_microbatch_sizes={"enc": 1}
    )
    runner = StepRunner(0, m)
    total = sum(m.loss_tokens(mb) for mb in batch.microbatches)
    res = runner.step(plan, batch, step_seed=3, loss_scale=1.0 / total)
    params = runner.named_parameters()
    sum_tied_grads(params, m.tied_groups())
    ref_loss, ref_grads = reference_step(ReferenceModel(model()), batch, step_seed=3)
    assert abs(res.loss_sum / total - float(ref_loss)) < 1e-12
    for name, g in ref_grads.items():
        torch.testing.assert_close(params[name].grad, g, rtol=1e-10, atol=1e-13, msg=name)


def _two_rank_step(rank: int, world: int):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method="env://")
    torch.set_num_threads(1)
    batch = batch_of([(1, 2), (4, 5, 6), (8,)])
    m = model()
    plan = separated_plan(
        m.spec, batch, _layouts(), {"enc": [0, 1], "lm": [0, 1]}, pp=2, sub_microbatch_sizes={"enc": 1}
    )
    runner = StepRunner(rank, m, timeout_s=30)
    layouts = {
        r: [p for c in plan.graph.rank_chunks(r) for p in ((q.module, q.layer_start, q.layer_end) for q in c.parts)]
        for r in range(2)
    }
    ties = TiedGradients.create(m, layouts, pp_rank=rank, pp=2)
    total = sum(m.loss_tokens(mb) for mb in batch.microbatches)
    res = runner.step(plan, batch, step_seed=5, loss_scale=1.0 / total)
    params = runner.named_parameters()
    ties.reduce(params, rank)
    grads = {n: p.grad.clone() for n, p in params.items()}
    dist.destroy_process_group()
    return res.loss_sum / total, grads


@pytest.mark.multiproc
@pytest.mark.timeout(120)
def test_two_ranks_tied_embedding_and_fan_in_match_reference():
    got = spawn(_two_rank_step, 2, timeout_s=100)
    assert all(ok for ok, _ in got), got
    (l0, g0), (l1, g1) = [v for _, v in got]
    assert TIE[0] in g0 and TIE[1] in g1  # the copies live on different ranks
    ref_loss, ref_grads = reference_step(ReferenceModel(model()), batch_of([(1, 2), (4, 5, 6), (8,)]), step_seed=5)
    assert abs(l0 + l1 - float(ref_loss)) < 1e-12
    grads = {**g0, **g1}
    assert set(grads) == set(ref_grads)
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-10, atol=1e-13, msg=name)
