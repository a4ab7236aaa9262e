"""Packing invariants: limits respected, nothing lost, paper examples reproduced."""

from __future__ import annotations

import numpy as np
import pytest

from dip.data.meta import lm_sequence_lens
from dip.data.packing import PackLimits, layout, pack, pack_clips, pack_sequences, to_batches
from dip.data.samples import Clip, Sample, aspect_bucket, fit_clip
from dip.data.sources import SOURCES
from dip.errors import BadInput
from test_data_models import get_model


def vlm_samples(n: int = 400, seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    mixed = SOURCES["obelics"].draw(rng, n) + SOURCES["laion-2b"].draw(rng, n) + SOURCES["scienceqa"].draw(rng, n // 4)
    rng.shuffle(mixed)
    oversize = [Sample(20000, 1), Sample(10, 60), Sample(0, 5), Sample(9000, 0), Sample(0, 0)]
    return oversize + mixed


def test_layout_spreads_images_through_text():
    assert layout(Sample(10, 2)) == [("text", 4), ("image", 1), ("text", 3), ("image", 1), ("text", 3)]
    assert layout(Sample(0, 2)) == [("image", 1), ("image", 1)]
    assert layout(Sample(5, 0)) == [("text", 5)]


def test_vlm_microbatches_respect_limits_and_lose_nothing():
    model = get_model("VLM-S")
    samples = vlm_samples()
    mbs = pack(model, samples)
    for mb in mbs:
        seq = lm_sequence_lens(model, mb)
        assert sum(seq) <= 8192
        assert mb.images <= 48
        assert sum(seq) - mb.text_tokens == 169 * mb.images  # image tokens == 169 x images
        assert all(t >= 0 for t in mb.text_lens) and len(mb.image_counts) == mb.samples
    assert sum(mb.text_tokens for mb in mbs) == sum(s.text_tokens for s in samples)
    assert sum(mb.images for mb in mbs) == sum(s.image_count for s in samples)


def test_vlm_fills_to_context_like_the_paper_examples():
    model = get_model("VLM-S")
    # Microbatch A of §2.2: 10 images (1690 tokens) + 6502 text tokens = 8192.
    (a,) = pack(model, [Sample(6502, 10)])
    assert (a.images, a.text_tokens, sum(lm_sequence_lens(model, a))) == (10, 6502, 8192)
    # Long text is split at the context boundary; images are never split.
    mbs = pack(model, [Sample(20000, 0)])
    assert [mb.text_tokens for mb in mbs] == [8192, 8192, 3616]
    mbs = pack(model, [Sample(0, 60)])
    assert [mb.images for mb in mbs] == [48, 12]
    mbs = pack(model, [Sample(8100, 0), Sample(0, 1)])  # 92 tokens left < 169: closes short
    assert [(mb.text_tokens, mb.images) for mb in mbs] == [(8100, 0), (0, 1)]


def test_split_sample_pieces_are_separate_attention_blocks():
    model = get_model("VLM-S")
    first, second = pack(model, [Sample(4000, 0), Sample(6000, 2)])
    # layout of the second sample: 2000 I 2000 I 2000; its second image no longer fits.
    assert first.text_lens == (4000, 4000) and first.image_counts == (0, 1)
    assert second.text_lens == (2000,) and second.image_counts == (1,)


def test_text_model_packs_to_context_and_rejects_media():
    model = get_model("tiny-text")
    mbs = pack(model, [Sample(1000), Sample(30)])
    assert [mb.text_tokens for mb in mbs] == [256, 256, 256, 256, 6]
    assert mbs[3].text_lens == (232, 24)
    assert all(mb.image_counts == () for mb in mbs)
    with pytest.raises(BadInput, match="no image encoder"):
        pack(model, [Sample(10, 1)])
    with pytest.raises(BadInput, match="videos"):
        pack(model, [Sample(10, 0, (Clip(2.0),))])


def t2v_samples(n: int = 600, seed: int = 1) -> list[Sample]:
    rng = np.random.default_rng(seed)
    out = []
    for name in ("sharegpt4video", "internvid", "mmtrail-2m"):
        out += SOURCES[name].draw(rng, n // 3)
    return out + [Sample(20000, 0, (Clip(40.0, 25, 1920, 1080),)), Sample(12, 0, (Clip(0.01, 30, 640, 480),))]


@pytest.mark.parametrize("name", ["T2V-S", "tiny-t2v"])
def test_t2v_groups_respect_limits_and_keep_every_clip(name):
    model = get_model(name)
    dit = model.module("dit")
    samples = t2v_samples()
    mbs = pack(model, samples)
    for mb in mbs:
        assert 1 <= mb.clips <= model.max_clips_per_microbatch
        assert mb.video_seconds <= model.max_video_seconds + 1e-9
        assert mb.text_tokens <= model.context_length
        assert sorted(mb.clip_sample) == list(range(mb.samples))  # one caption sample per clip
    expected = sorted(fit_clip(c, dit, model.max_video_seconds).seconds for s in samples for c in s.clips)
    assert sorted(s for mb in mbs for s in mb.clip_seconds) == pytest.approx(expected)
    assert max(s for mb in mbs for s in mb.clip_seconds) == model.max_video_seconds  # 40 s video cut
    assert sum(mb.text_tokens for mb in mbs) == sum(min(s.text_tokens, model.context_length) for s in samples)


def test_t2v_groups_similar_clips_and_never_mixes_aspect_ratios():
    model = get_model("T2V-S")
    land = [Sample(10, 0, (Clip(2.0, 30, 1280, 720),)) for _ in range(3)]
    port = [Sample(10, 0, (Clip(2.0, 30, 720, 1280),)) for _ in range(3)]
    mbs = pack_clips(land + port, model)
    assert [mb.clips for mb in mbs] == [3, 3]
    shorts = [Sample(5, 0, (Clip(s, 30, 1280, 720),)) for s in (15.0, 1.0, 14.0, 1.5, 2.0, 13.0)]
    assert sorted(round(mb.video_seconds, 3) for mb in pack_clips(shorts, model)) == [4.5, 13.0, 14.0, 15.0]


def test_fit_clip_resamples_cuts_and_resizes_to_canvas():
    dit = get_model("T2V-S").module("dit")
    c = fit_clip(Clip(6.5, 24, 1280, 720), dit, 16.0)
    assert c.seconds == 6.5 and c.aspect == "16:9"
    assert (c.width * c.height) == pytest.approx(dit.video_width * dit.video_height, rel=0.05)
    assert c.tokens == dit.clip_tokens(6.5, c.height, c.width)
    assert fit_clip(Clip(30.0, 60, 1920, 1080), dit, 16.0).seconds == 16.0
    assert aspect_bucket(720, 1280) == "9:16" and aspect_bucket(640, 480) == "4:3"


def test_to_batches_keeps_a_partial_last_batch():
    mbs = pack_sequences([Sample(100)] * 5, PackLimits(context_length=100))
    batches = to_batches(mbs, 2)
    assert [len(b) for b in batches] == [2, 2, 1] and [b.index for b in batches] == [0, 1, 2]
    with pytest.raises(BadInput):
        to_batches(mbs, 0)
