"""The trainer's data side without processes: step batches packed from metadata (deterministic per
seed, every sample once per epoch, consecutive steps), the keys a rank's chunks read, the step data
loader (workers, prefetch, errors), and the atomic checkpoint write-back."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dip.data.meta import BatchMeta
from dip.data.packing import DocumentMeta
from dip.errors import BadInput
from dip.runtime.dataload import StepDataLoader, chunk_data_keys
from dip.runtime.planning import dataset_step_batches
from dip.runtime.saving import check_save_target, save_trained
from dip.spec.presets import get_model
from hf_fixtures import make_t2v, make_vlm

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _docs(lens: list[int]) -> list[DocumentMeta]:
    return [DocumentMeta(index=i, text_tokens=n) for i, n in enumerate(lens)]


@settings(max_examples=30, deadline=None)
@given(
    lens=st.lists(st.integers(1, 300), min_size=1, max_size=40),
    steps=st.integers(1, 4),
    microbatches=st.integers(1, 4),
    dp=st.integers(1, 2),
    seed=st.integers(0, 5),
)
def test_step_batches_visit_every_sample_once_per_epoch(lens, steps, microbatches, dp, seed):
    model = replace(get_model("LM-7B"), context_length=300)  # a text model, short micro-batches
    got, epochs = dataset_step_batches(model, _docs(lens), steps, dp, microbatches, seed)
    assert len(got) == steps and all(len(replicas) == dp for replicas in got)
    mbs = [mb for replicas in got for b in replicas for mb in b.microbatches]
    assert len(mbs) == steps * dp * microbatches
    assert all(mb.text_tokens <= 300 and len(mb.sample_ids) == mb.samples > 0 for mb in mbs)
    # the whole stream of epochs: each one a permutation of the dataset, the steps its consecutive prefix
    again, _ = dataset_step_batches(model, _docs(lens), steps, dp, microbatches, seed)
    assert again == got
    full_epochs, _ = dataset_step_batches(model, _docs(lens), 1, 1, len(lens) * epochs, seed)
    stream = [i for b in full_epochs[0] for mb in b.microbatches for i in mb.sample_ids]
    for e in range(epochs):
        assert sorted(stream[e * len(lens) : (e + 1) * len(lens)]) == list(range(len(lens)))
    flat = [i for mb in mbs for i in mb.sample_ids]
    assert flat == stream[: len(flat)]


def test_step_batches_follow_the_seed():
    model = get_model("LM-7B")
    docs = _docs([100 + 7 * i for i in range(50)])
    a, _ = dataset_step_batches(model, docs, 2, 1, 1, seed=0)
    b, _ = dataset_step_batches(model, docs, 2, 1, 1, seed=1)
    assert a != b
    with pytest.raises(BadInput, match="no usable sample"):
        dataset_step_batches(model, [], 1, 1, 1, seed=0)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("train-data"))


def test_each_chunk_reads_only_what_it_consumes(root):
    from dip.integrations.loader import load_model

    ckpt, data = make_vlm(root)
    vlm = load_model(ckpt, dtype="float64")
    vlm.open_data(data)
    mb = next(mb for mb in _packed(vlm) if mb.images >= 2)
    batch = BatchMeta((mb,))
    images = set(chunk_data_keys(vlm, [("vision", 0, 2)], batch))
    assert images == {("image", i, k) for i, n in zip(mb.sample_ids, mb.image_counts) for k in range(n)}
    assert chunk_data_keys(vlm, [("vision", 2, 4)], batch) == []  # later vision blocks: no pixels
    assert chunk_data_keys(vlm, [("llm", 2, 4)], batch) == [("text", i) for i in mb.sample_ids]

    ckpt, data = make_t2v(root)
    wan = load_model(ckpt, dtype="float64")
    wan.open_data(data)
    mb = _packed(wan)[0]
    batch = BatchMeta((mb,))
    latents = [("latents", mb.sample_ids[c]) for c in mb.clip_sample]
    assert chunk_data_keys(wan, [("dit", 0, 1)], batch) == latents  # the noisy input
    assert chunk_data_keys(wan, [("dit", 1, 3)], batch) == []  # middle blocks: no latents
    assert chunk_data_keys(wan, [("dit", 3, 4)], batch) == latents  # the target
    assert chunk_data_keys(wan, [("text", 1, 3)], batch) == []  # the caption lengths are metadata
    assert chunk_data_keys(wan, [("text", 0, 1)], batch) == [("text", i) for i in mb.sample_ids]


def _packed(model):
    from dip.data.packing import pack_documents

    return pack_documents(model.source.documents(), context_length=420, max_images=8, max_clips=3)


class Items:
    """A toy dataset: ``load`` squares the key's number; key ``("bad", n)`` is a bad sample."""

    def __init__(self):
        self.primed: dict = {}

    def load(self, key):
        kind, n = key
        if kind == "bad":
            raise BadInput(f"bad sample at data.jsonl:{n}: image x.png cannot be decoded")
        if kind == "boom":
            raise ValueError("no such thing")
        return torch.tensor([n * n])

    def prime(self, loaded):
        self.primed = loaded


@pytest.mark.parametrize("workers", [0, 1])
def test_step_data_loader_primes_exactly_the_step_keys(workers):
    items = Items()
    feed = StepDataLoader(items, workers=workers, timeout_s=60)
    try:
        feed.ready([("x", 2), ("x", 3)])
        assert {k: int(v) for k, v in items.primed.items()} == {("x", 2): 4, ("x", 3): 9}
        feed.prefetch([("x", 3), ("x", 4)])  # the next step, in the background
        feed.ready([("x", 4), ("x", 5)])  # ("x", 5) was not prefetched: loaded now
        assert {k: int(v) for k, v in items.primed.items()} == {("x", 4): 16, ("x", 5): 25}
        assert feed.summary() == {"x": 5}
        with pytest.raises(BadInput, match=r"^bad sample at data\.jsonl:7: image x\.png cannot be decoded$"):
            feed.ready([("x", 1), ("bad", 7)])
        with pytest.raises(RuntimeError, match=r"loading \('boom', 1\): ValueError: no such thing"):
            feed.ready([("boom", 1)])
    finally:
        feed.close()


def test_a_failed_prefetch_surfaces_at_the_step_that_needs_it():
    items = Items()
    feed = StepDataLoader(items, workers=0)
    feed.prefetch([("bad", 3)])
    with pytest.raises(BadInput, match=r"data\.jsonl:3"):
        feed.ready([("bad", 3)])
    feed.close()


class Saver:
    def __init__(self, fail: bool = False):
        self.fail = fail
        self.spec = get_model("tiny-vlm")

    def save_checkpoint(self, out, params):
        with open(os.path.join(out, "weights.bin"), "w") as f:
            f.write(",".join(sorted(params)))
        if self.fail:
            raise OSError("disk full")


def test_save_trained_is_atomic(tmp_path):
    out = tmp_path / "ckpt"
    with pytest.raises(OSError, match="disk full"):
        save_trained(Saver(fail=True), str(out), {"a": 1})
    assert os.listdir(tmp_path) == []  # nothing half-written, no temporary folder left
    save_trained(Saver(), str(out), {"b": 1, "a": 2})
    assert (out / "weights.bin").read_text() == "a,b"
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(out).st_mode & 0o777 == 0o777 & ~mask  # not mkdtemp's private 0700
    assert os.stat(out / "weights.bin").st_mode & 0o777 == 0o666 & ~mask
    with pytest.raises(BadInput, match="not empty"):
        check_save_target(Saver(), str(out))
    (tmp_path / "empty").mkdir()
    save_trained(Saver(), str(tmp_path / "empty"), {"c": 1})  # an empty folder is filled
    assert (tmp_path / "empty" / "weights.bin").exists()
    from dip.runtime.models import SpecModel

    with pytest.raises(BadInput, match="no checkpoint format"):
        check_save_target(SpecModel(get_model("tiny-vlm")), str(tmp_path / "x"))
