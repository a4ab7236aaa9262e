"""Generator statistics against the published figures documented in dip.data.sources."""

from __future__ import annotations

import numpy as np
import pytest

from dip.data.sources import MIXTURES, PAPER_SOURCES, SOURCES, proportional, resolve
from dip.errors import BadInput

N = 20000


def draw(name: str, n: int = N, seed: int = 0):
    return SOURCES[name].draw(np.random.default_rng(seed), n)


def text(samples) -> np.ndarray:
    return np.array([s.text_tokens for s in samples], dtype=float)


def seconds(samples) -> np.ndarray:
    return np.array([s.clips[0].seconds for s in samples])


def test_laion_mean_tokens_per_image_is_16_4():
    samples = draw("laion-2b")
    assert all(s.image_count == 1 for s in samples)
    assert text(samples).mean() == pytest.approx(16.4, rel=0.10)


def test_obelics_documents_match_published_aggregates():
    samples = draw("obelics")
    images = np.array([s.image_count for s in samples])
    tokens = text(samples)
    assert images.mean() == pytest.approx(2.5, rel=0.10)  # 353M images / 141M docs
    assert tokens.mean() == pytest.approx(816, rel=0.10)  # 115B tokens / 141M docs
    assert images.min() >= 1 and images.max() <= 30
    per_image = tokens / images
    assert per_image.max() <= 3115 + 0.5 and per_image.min() < 5  # DIP: 0.4 .. 3115 tokens per image
    assert np.median(tokens) < tokens.mean() / 2  # long tail


def test_scienceqa_is_one_image_and_a_few_hundred_tokens():
    samples = draw("scienceqa")
    assert all(s.image_count == 1 for s in samples)
    assert 150 < text(samples).mean() < 400


def test_internvid_short_clips_short_captions():
    samples = draw("internvid")
    secs = seconds(samples)
    assert (secs < 10).mean() == pytest.approx(0.85, abs=0.05)  # 85% of clips last 0-10 s
    assert 3 < secs.mean() < 9
    assert text(samples).mean() == pytest.approx(17, rel=0.10)


def test_mmtrail_mean_clip_is_about_14_seconds():
    samples = draw("mmtrail-2m")
    assert seconds(samples).mean() == pytest.approx(8.2e3 * 3600 / 2.1e6, rel=0.10)


def test_caption_lengths_are_ordered_like_the_datasets():
    means = {n: text(draw(n, 5000)).mean() for n in ("sharegpt4video", "mmtrail-2m", "internvid")}
    assert means["sharegpt4video"] > means["mmtrail-2m"] > 3 * means["internvid"]
    assert (seconds(draw("sharegpt4video", 5000)) > 16).mean() > 0.25  # many cut to 16 s


def test_draws_are_deterministic_per_generator():
    for name in SOURCES:
        assert draw(name, 50, seed=3) == draw(name, 50, seed=3)
        assert draw(name, 50, seed=3) != draw(name, 50, seed=4)


def test_resolve_mixtures_and_errors():
    assert [n for n, _ in resolve(None, "vlm").components] == ["obelics", "laion-2b", "scienceqa"]
    assert [n for n, _ in resolve(None, "t2v").components] == ["sharegpt4video", "internvid", "mmtrail-2m"]
    assert resolve("vlm-text-mix", "vlm").components[-1] == ("web-text", 0.30)
    assert resolve("t2v-assumed", "t2v").name == "t2v-assumed"
    assert resolve("laion-2b", "vlm").components == (("laion-2b", 1.0),)
    with pytest.raises(BadInput, match="valid sources"):
        resolve("nope", "vlm")
    with pytest.raises(BadInput, match="feeds t2v models"):
        resolve("internvid", "vlm")


@pytest.mark.parametrize("workload", ["vlm", "t2v"])
def test_default_mixes_use_only_the_papers_sources(workload):
    mix = resolve(None, workload)
    names = [n for n, _ in mix.components]
    assert set(names) <= set(PAPER_SOURCES[workload]) and len(names) == len(set(names))
    assert all(w >= 0 for _, w in mix.components)
    assert sum(w for _, w in mix.components) == pytest.approx(1.0, abs=1e-12)
    assert mix.basis


def test_every_mixture_is_normalised_and_names_known_sources():
    for mix in MIXTURES.values():
        assert all(n in SOURCES and SOURCES[n].kind in (mix.kind, "text") for n, _ in mix.components)
        assert sum(w for _, w in mix.components) == pytest.approx(1.0, abs=1e-12)


def test_default_weights_follow_the_published_facts():
    """VLM: IDEFICS' 80% interleaved / 20% pairs, pairs split by size; T2V: by published clip counts."""
    vlm = dict(resolve(None, "vlm").components)
    assert vlm["obelics"] == pytest.approx(0.80)
    assert vlm["laion-2b"] + vlm["scienceqa"] == pytest.approx(0.20)
    assert vlm["scienceqa"] / vlm["laion-2b"] == pytest.approx(21_208 / 2.32e9)
    t2v = dict(resolve(None, "t2v").components)
    assert t2v["internvid"] / t2v["mmtrail-2m"] == pytest.approx(234 / 2)
    assert t2v["mmtrail-2m"] / t2v["sharegpt4video"] == pytest.approx(2e6 / 40e3)


def test_proportional_weights():
    assert proportional({"a": 1.0, "b": 3.0}) == (("a", 0.25), ("b", 0.75))
    assert proportional({"a": 2.0, "b": 2.0}, total=0.2) == (("a", 0.1), ("b", 0.1))
