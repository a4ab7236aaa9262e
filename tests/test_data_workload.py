"""Generated workloads: determinism, realistic spread, tiny models, Fig. 8b dynamic bounds."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dip.cost.stats import batch_rows, microbatch_flops, summarize
from dip.data.meta import MicroBatchMeta, lm_sequence_lens
from dip.data.workload import generate_batches, generate_dynamic_batches, rise_and_fall_bounds
from dip.errors import BadInput
from test_data_models import get_model


def test_deterministic_and_independent_per_batch_index():
    model = get_model("VLM-S")
    ten = generate_batches(model, 3, seed=7, microbatches=16)
    assert ten == generate_batches(model, 3, seed=7, microbatches=16)
    assert generate_batches(model, 5, seed=7, microbatches=16)[:3] == ten
    assert generate_batches(model, 1, seed=8, microbatches=16)[0] != ten[0]
    assert [b.index for b in ten] == [0, 1, 2] and all(len(b) == 16 for b in ten)


def test_t2v_s_heaviest_over_lightest_is_near_4_15():
    """Fig. 4d: over 100 packed micro-batches the heaviest costs 4.15x the lightest."""
    model = get_model("T2V-S")
    ratios = []
    for seed in range(5):
        (batch,) = generate_batches(model, 1, seed=seed, microbatches=100)
        ratios.append(summarize(batch_rows(model, batch))["flops_ratio"])
    assert all(3.0 <= r <= 6.0 for r in ratios), ratios
    assert 3.5 <= float(np.mean(ratios)) <= 5.0, ratios


def test_vlm_s_microbatches_span_few_to_many_images():
    model = get_model("VLM-S")
    mbs = [mb for b in generate_batches(model, 2, seed=0) for mb in b.microbatches]
    images = [mb.images for mb in mbs]
    assert min(images) <= 8 and max(images) >= 40
    assert all(sum(lm_sequence_lens(model, mb)) <= 8192 and mb.images <= 48 for mb in mbs)
    flops = [microbatch_flops(model, mb) for mb in mbs]
    assert max(flops) / min(flops) > 2


def test_text_mix_stays_selectable_and_adds_text_only_microbatches():
    model = get_model("VLM-S")
    (default,) = generate_batches(model, 1, seed=2, microbatches=64)
    (text,) = generate_batches(model, 1, seed=2, microbatches=64, source="vlm-text-mix")
    assert default.extra["source"] == "vlm-default" and text.extra["source"] == "vlm-text-mix"
    assert sum(mb.images == 0 for mb in text.microbatches) > sum(mb.images == 0 for mb in default.microbatches)


@pytest.mark.parametrize("source", ["obelics", "laion-2b", "scienceqa"])
def test_single_sources(source):
    model = get_model("VLM-S")
    (batch,) = generate_batches(model, 1, seed=1, microbatches=8, source=source)
    assert len(batch) == 8 and batch.extra["source"] == source


def test_tiny_vlm_is_varied_with_text_only_microbatches():
    model = get_model("tiny-vlm")
    mbs = [mb for b in generate_batches(model, 3, seed=0, microbatches=32) for mb in b.microbatches]
    images = [mb.images for mb in mbs]
    assert 0 in images and max(images) <= 8 and len(set(images)) >= 4
    assert all(sum(lm_sequence_lens(model, mb)) <= 256 for mb in mbs)


def test_tiny_t2v_is_varied_within_its_limits():
    model = get_model("tiny-t2v")
    mbs = [mb for b in generate_batches(model, 2, seed=0, microbatches=32) for mb in b.microbatches]
    assert all(mb.clips <= 4 and mb.video_seconds <= 8 + 1e-9 for mb in mbs)
    assert len({mb.clips for mb in mbs}) >= 2 and len({round(mb.video_seconds, 2) for mb in mbs}) >= 5


def test_text_workload_packs_full_sequences():
    model = get_model("tiny-text")
    (batch,) = generate_batches(model, 1, seed=0, microbatches=8)
    assert all(mb.text_tokens == 256 and mb.images == 0 for mb in batch.microbatches)


def test_bad_counts_and_sources():
    model = get_model("VLM-S")
    for bad in (0, -3):
        with pytest.raises(BadInput, match="batches"):
            generate_batches(model, bad, seed=0)
    with pytest.raises(BadInput, match="microbatches"):
        generate_batches(model, 1, seed=0, microbatches=0)
    with pytest.raises(BadInput, match="source"):
        generate_batches(model, 1, seed=0, source="internvid")


def test_rise_and_fall_bounds_reproduce_fig_8b():
    bounds = rise_and_fall_bounds(40)
    assert [b.iteration for b in bounds] == list(range(1, 41))
    assert [(b.lower, b.upper) for b in bounds[:5]] == [(0, 32), (4, 32), (8, 32), (12, 32), (16, 32)]
    falling = bounds[4:20]
    assert all(a.lower >= b.lower and a.upper >= b.upper for a, b in itertools.pairwise(falling))
    assert (bounds[19].lower, bounds[19].upper) == (0, 0)
    assert [(b.lower, b.upper) for b in bounds[20:]] == [(b.lower, b.upper) for b in bounds[:20]]
    assert all(b.lower <= b.upper for b in bounds)


def test_dynamic_batches_obey_bounds_and_peak_near_22_images():
    model = get_model("VLM-S")
    batches = generate_dynamic_batches(model, seed=0, microbatches=64, iterations=20)
    for b in batches:
        lo, hi = b.extra["image_bounds"]
        assert all(lo <= mb.images <= hi for mb in b.microbatches)
        assert all(sum(lm_sequence_lens(model, mb)) <= 8192 for mb in b.microbatches)
    means = [np.mean([mb.images for mb in b.microbatches]) for b in batches]
    assert means[4] == pytest.approx(22, abs=2) and max(means) == means[4]
    assert means[19] == 0  # pure language at the end of a pattern
    assert generate_dynamic_batches(model, 0, 64, 20) == batches


def test_dynamic_scales_to_tiny_vlm_and_rejects_t2v():
    tiny = get_model("tiny-vlm")
    batches = generate_dynamic_batches(tiny, seed=1, microbatches=16, iterations=40)
    assert len(batches) == 40
    assert max(mb.images for b in batches for mb in b.microbatches) <= 8
    with pytest.raises(BadInput, match="vlm"):
        generate_dynamic_batches(get_model("T2V-S"), seed=0)


def test_paper_example_a_costs_more_than_b():
    """§2.2: microbatch A (10 images + 6502 text) loads the image stage 10x more than B (1 + 8023)."""
    model = get_model("VLM-S")
    a = MicroBatchMeta(text_lens=(6502,), image_counts=(10,))
    b = MicroBatchMeta(text_lens=(8023,), image_counts=(1,))
    assert microbatch_flops(model, a) > microbatch_flops(model, b) > 0
