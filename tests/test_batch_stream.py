"""The run's data order: every pass's global batch depends only on (seed, pass), is cut into the
data-parallel replicas' slices, is the same on every process (fingerprint), and a stream resumed at a
checkpoint's position continues exactly where the uninterrupted one goes."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dip.data.packing import DocumentMeta
from dip.data.workload import generate_dynamic_batches
from dip.errors import BadInput
from dip.runtime.batches import BatchStream, StreamStart, fingerprint
from dip.runtime.planning import make_step_batches
from dip.spec.presets import load_model

VLM = load_model("tiny-vlm")


def documents(n: int = 40) -> list[DocumentMeta]:
    """Samples of 20-76 text tokens with 0-2 images of 4 tokens (16 patches) each."""
    return [
        DocumentMeta(i, text_tokens=20 + 7 * (i % 9), image_tokens=(4,) * (i % 3), image_patches=(16,) * (i % 3))
        for i in range(n)
    ]


def test_replicas_are_consecutive_slices_of_the_global_batch():
    stream = BatchStream(VLM, dp=3, microbatches=4, seed=1)
    reps = stream.replicas(5)
    assert [len(b.microbatches) for b in reps] == [4, 4, 4]
    assert stream.global_batch(5).microbatches == tuple(mb for b in reps for mb in b.microbatches)
    assert all(b.index == 5 for b in reps)


def test_a_pass_depends_only_on_seed_and_index_not_on_the_order_asked():
    a = BatchStream(VLM, dp=2, microbatches=4, seed=7)
    b = BatchStream(VLM, dp=2, microbatches=4, seed=7)
    forward = [a.fingerprint(i) for i in range(6)]
    backward = [b.fingerprint(i) for i in reversed(range(6))][::-1]
    assert forward == backward
    assert len(set(forward)) == 6  # every pass is a new batch
    assert BatchStream(VLM, dp=2, microbatches=4, seed=8).fingerprint(0) != forward[0]


def test_fingerprint_survives_pickling_and_sees_every_field():
    reps = BatchStream(VLM, dp=2, microbatches=4, seed=0).replicas(3)
    assert fingerprint(pickle.loads(pickle.dumps(reps))) == fingerprint(reps)
    swapped = [reps[1], reps[0]]
    assert fingerprint(swapped) != fingerprint(reps)


def test_the_first_vlm_batch_holds_a_text_only_microbatch():
    for seed in range(5):
        first = make_step_batches(VLM, 1, 1, 4, seed)[0][0]
        assert any(mb.images == 0 for mb in first.microbatches)


def test_dynamic_passes_are_the_dynamic_workload():
    stream = BatchStream(VLM, dp=1, microbatches=4, seed=3, workload="dynamic")
    whole = generate_dynamic_batches(VLM, 3, 4, iterations=6)
    for i in (1, 5, 3):
        assert stream.replicas(i)[0].microbatches == whole[i].microbatches


def test_unknown_workload_and_empty_dataset_are_bad_input():
    with pytest.raises(BadInput, match="unknown workload 'static'; valid workloads: default, dynamic"):
        BatchStream(VLM, dp=1, microbatches=2, seed=0, workload="static")
    with pytest.raises(BadInput, match="no usable sample"):
        BatchStream(VLM, dp=1, microbatches=2, seed=0, documents=[])


def test_dataset_passes_take_consecutive_microbatches_of_the_epoch_stream():
    docs = documents()
    one = BatchStream(VLM, dp=1, microbatches=1, seed=2, documents=docs)
    flat = [one.replicas(i)[0].microbatches[0] for i in range(30)]
    stream = BatchStream(VLM, dp=2, microbatches=3, seed=2, documents=docs)
    for i in range(5):
        assert stream.global_batch(i).microbatches == tuple(flat[6 * i : 6 * i + 6])
        assert stream.consumed(i) == 6 * i
    assert stream.epochs >= 1


def test_a_resumed_dataset_stream_continues_where_the_checkpoint_stopped_even_with_other_replicas():
    docs = documents()
    full = BatchStream(VLM, dp=2, microbatches=2, seed=5, documents=docs)
    later = [full.global_batch(i).microbatches for i in range(4, 8)]
    resumed = BatchStream(VLM, dp=2, microbatches=2, seed=5, documents=docs, start=StreamStart(4, full.consumed(4)))
    assert [resumed.global_batch(i).microbatches for i in range(4, 8)] == later
    # one replica instead of two: the same data stream, from the same position, cut into smaller batches
    reshard = BatchStream(VLM, dp=1, microbatches=2, seed=5, documents=docs, start=StreamStart(4, full.consumed(4)))
    got = [mb for i in range(4, 8) for mb in reshard.global_batch(i).microbatches]
    assert tuple(got) == later[0] + later[1]
    with pytest.raises(ValueError, match="before the stream's start"):
        resumed.replicas(3)


@settings(max_examples=25, deadline=None)
@given(dp=st.integers(1, 3), m=st.integers(1, 4), seed=st.integers(0, 50), index=st.integers(0, 30))
def test_every_replica_gets_its_own_share_and_nothing_is_lost(dp, m, seed, index):
    stream = BatchStream(VLM, dp=dp, microbatches=m, seed=seed)
    reps = stream.replicas(index)
    assert len(reps) == dp and all(len(b.microbatches) == m for b in reps)
    assert sum(len(b.microbatches) for b in reps) == stream.per_pass == len(stream.global_batch(index).microbatches)
