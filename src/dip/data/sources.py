"""Parametric sample generators for the paper's data sources (§2.2, §7.1).

Each source is a dataclass whose parameters sit next to the published statistic they reproduce.
Numbers marked *(inferred)* are arithmetic on published aggregates; *(assumed)* marks a choice where
no statistic is published, picked to match the qualitative description. Draws use a seeded
:class:`numpy.random.Generator`, so a source is deterministic given its generator.

Token counts assume about 1.3 LM tokens per English word *(assumed)*.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from dip.data.samples import Clip, Sample
from dip.errors import BadInput, choices_error

__all__ = [
    "DEFAULT_MIXTURE",
    "IDEFICS_INTERLEAVED_SHARE",
    "IDEFICS_PAIR_SHARE",
    "INTERNVID_CLIPS",
    "LAION_2B_EN_PAIRS",
    "MIXTURES",
    "MMTRAIL_2M_CLIPS",
    "PAPER_SOURCES",
    "SCIENCEQA_QUESTIONS",
    "SHAREGPT4VIDEO_VIDEOS",
    "SOURCES",
    "InternVid",
    "Laion2B",
    "MMTrail2M",
    "Mixture",
    "Obelics",
    "SampleSource",
    "ScienceQA",
    "ShareGPT4Video",
    "VideoSource",
    "WebText",
    "lognormal",
    "proportional",
    "resolve",
    "source_names",
]


def lognormal(rng: np.random.Generator, mean: float, sigma: float, n: int, low: float, high: float) -> np.ndarray:
    """``n`` log-normal draws with arithmetic mean ``mean`` (before clipping to ``[low, high]``)."""
    mu = math.log(mean) - sigma * sigma / 2
    return np.clip(rng.lognormal(mu, sigma, n), low, high)


@dataclass(frozen=True)
class SampleSource:
    """Base of all sources: ``kind`` is the workload it feeds ("vlm", "t2v" or "text")."""

    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""

    def draw(self, rng: np.random.Generator, n: int) -> list[Sample]:
        raise NotImplementedError


@dataclass(frozen=True)
class Obelics(SampleSource):
    """OBELICS interleaved web documents (Laurençon et al., NeurIPS 2023).

    Published: 141M documents, 353M images, 115B text tokens, i.e. about 2.5 images and 816 text tokens
    per document *(inferred)*; documents without images or with more than 30 were filtered out. DIP
    (§2.2) measures 0.4 to 3115 text tokens per image. Model: geometric images per document (mean
    ``mean_images``, at most ``max_images``) times log-normal text tokens *per image*, clipped to the
    published range. ``sigma_tokens_per_image`` = 1.5 puts that range at about -3.7 and +2.2 sigma;
    ``mean_tokens_per_image`` is set so that after clipping it averages 816 / 2.5 = 326, i.e. ~816
    text tokens per document, with a very long tail (median ~240).
    """

    kind: ClassVar[str] = "vlm"
    name: ClassVar[str] = "obelics"
    mean_images: float = 2.5
    max_images: int = 30
    mean_tokens_per_image: float = 375.0
    sigma_tokens_per_image: float = 1.5
    min_tokens_per_image: float = 0.4
    max_tokens_per_image: float = 3115.0

    def draw(self, rng: np.random.Generator, n: int) -> list[Sample]:
        images = np.minimum(rng.geometric(1 / self.mean_images, n), self.max_images)
        per_image = lognormal(
            rng,
            self.mean_tokens_per_image,
            self.sigma_tokens_per_image,
            n,
            self.min_tokens_per_image,
            self.max_tokens_per_image,
        )
        return [Sample(round(t * k), int(k)) for t, k in zip(per_image, images)]


@dataclass(frozen=True)
class Laion2B(SampleSource):
    """LAION-2B(en) image-caption pairs (Schuhmann et al., NeurIPS 2022).

    DIP (§2.2): 16.4 text tokens per image on average; one image per sample. Model: log-normal caption
    length with mean ``mean_tokens`` (short alt-texts, long tail up to ``max_tokens``).
    """

    kind: ClassVar[str] = "vlm"
    name: ClassVar[str] = "laion-2b"
    mean_tokens: float = 16.4
    sigma_tokens: float = 0.6
    max_tokens: int = 256

    def draw(self, rng: np.random.Generator, n: int) -> list[Sample]:
        tokens = lognormal(rng, self.mean_tokens, self.sigma_tokens, n, 1, self.max_tokens)
        return [Sample(round(t), 1) for t in tokens]


@dataclass(frozen=True)
class ScienceQA(SampleSource):
    """ScienceQA multimodal multiple-choice questions (Lu et al., NeurIPS 2022).

    Published: 21,208 questions with lecture and explanation, 48.7% of them with an image context.
    DIP uses it as image data (tokens per image, Fig. 4a), so by default every sample has one image
    (``image_probability`` = 1; 0.487 gives the full set, zero-inflated). Question, choices, lecture
    and solution together are a few hundred tokens: log-normal with mean ``mean_tokens`` *(assumed)*.
    """

    kind: ClassVar[str] = "vlm"
    name: ClassVar[str] = "scienceqa"
    mean_tokens: float = 250.0
    sigma_tokens: float = 0.45
    max_tokens: int = 2048
    image_probability: float = 1.0

    def draw(self, rng: np.random.Generator, n: int) -> list[Sample]:
        tokens = lognormal(rng, self.mean_tokens, self.sigma_tokens, n, 16, self.max_tokens)
        images = rng.random(n) < self.image_probability
        return [Sample(round(t), int(k)) for t, k in zip(tokens, images)]


@dataclass(frozen=True)
class WebText(SampleSource):
    """Text-only web documents for text-only models and language phases of dynamic workloads.

    Model *(assumed)*: log-normal document length with mean ``mean_tokens`` (OBELICS' ~816 text
    tokens per web document is the reference) and a long tail, so a few long documents hold a large
    share of the tokens, as WLB-LLM reports for pre-training corpora.
    """

    kind: ClassVar[str] = "text"
    name: ClassVar[str] = "web-text"
    mean_tokens: float = 900.0
    sigma_tokens: float = 1.2
    max_tokens: int = 65536

    def draw(self, rng: np.random.Generator, n: int) -> list[Sample]:
        tokens = lognormal(rng, self.mean_tokens, self.sigma_tokens, n, 8, self.max_tokens)
        return [Sample(round(t)) for t in tokens]


@dataclass(frozen=True)
class VideoSource(SampleSource):
    """Base of video-caption sources: one clip per sample.

    Clip duration is log-normal (``median_seconds``, ``sigma_seconds``) clipped to
    ``[min_seconds, max_seconds]`` (the packer later cuts it to the model's ``max_video_seconds``);
    caption tokens are log-normal (``mean_caption_tokens``, ``sigma_caption``); frame size is drawn
    from ``resolutions`` ((width, height, probability)).
    """

    kind: ClassVar[str] = "t2v"
    median_seconds: float = 5.0
    sigma_seconds: float = 0.7
    min_seconds: float = 2.0
    max_seconds: float = 60.0
    mean_caption_tokens: float = 20.0
    sigma_caption: float = 0.4
    fps: float = 30.0
    resolutions: tuple[tuple[int, int, float], ...] = ((1280, 720, 1.0),)

    def draw(self, rng: np.random.Generator, n: int) -> list[Sample]:
        seconds = np.clip(
            rng.lognormal(math.log(self.median_seconds), self.sigma_seconds, n), self.min_seconds, self.max_seconds
        )
        caption = lognormal(rng, self.mean_caption_tokens, self.sigma_caption, n, 4, 4096)
        probs = np.array([p for _, _, p in self.resolutions], dtype=float)
        which = rng.choice(len(self.resolutions), size=n, p=probs / probs.sum())
        out = []
        for s, c, r in zip(seconds, caption, which):
            w, h, _ = self.resolutions[r]
            out.append(Sample(round(c), 0, (Clip(float(round(s, 3)), self.fps, w, h),)))
        return out


@dataclass(frozen=True)
class ShareGPT4Video(VideoSource):
    """ShareGPT4Video (Chen et al., NeurIPS 2024 D&B): 40K videos of various lengths and sources
    with dense GPT-4V captions (several hundred words).

    Model *(assumed)*: durations with median 14 s (about half longer than the 16 s cut, so many
    clips are cut to 16 s), long captions averaging ~360 tokens; mostly landscape HD, some portrait.
    """

    name: ClassVar[str] = "sharegpt4video"
    median_seconds: float = 14.0
    sigma_seconds: float = 0.6
    min_seconds: float = 2.0
    mean_caption_tokens: float = 360.0
    sigma_caption: float = 0.3
    resolutions: tuple[tuple[int, int, float], ...] = ((1920, 1080, 0.5), (1280, 720, 0.35), (720, 1280, 0.15))


@dataclass(frozen=True)
class InternVid(VideoSource):
    """InternVid (Wang et al., ICLR 2024): 234M clips from 7.1M YouTube videos, 4.1B caption words.

    Published: 85% of clips last 0-10 s; about half the captions have 10-20 words, a third fewer than
    10 and 11% more than 20; 85% of videos are 720p. Model: median 5 s, sigma 0.7 (P(<10 s) = 84%),
    durations below ``min_seconds`` = 1.5 s raised to it (*assumed* minimum clip length; it sets the
    lightest T2V micro-batches, eight ~1.5 s clips, and so the heaviest / lightest FLOPs ratio of
    ~4.15 over 100 T2V-S micro-batches of Fig. 4d); caption words log-normal with median ~12 words
    (P(<10) = 1/3, P(>20) = 11%), i.e. ~17 tokens on average.
    """

    name: ClassVar[str] = "internvid"
    median_seconds: float = 5.0
    sigma_seconds: float = 0.7
    min_seconds: float = 1.5
    mean_caption_tokens: float = 17.0
    sigma_caption: float = 0.42
    resolutions: tuple[tuple[int, int, float], ...] = ((1280, 720, 0.85), (854, 480, 0.1), (640, 480, 0.05))


@dataclass(frozen=True)
class MMTrail2M(VideoSource):
    """MMTrail-2M (Chi et al., 2024): 2.1M movie-trailer clips, 8.2K hours, with LLaVA video captions
    merged with music and frame descriptions.

    Published: 8.2K hours over 2.1M clips is ~14 s per clip on average *(inferred)*. Model: median
    12.5 s, sigma 0.5 (mean ~14 s before the 16 s cut); captions longer than InternVid's, ~150 tokens
    on average *(assumed)*; cinematic landscape frames.
    """

    name: ClassVar[str] = "mmtrail-2m"
    median_seconds: float = 12.5
    sigma_seconds: float = 0.5
    min_seconds: float = 2.0
    mean_caption_tokens: float = 150.0
    sigma_caption: float = 0.4
    fps: float = 24.0
    resolutions: tuple[tuple[int, int, float], ...] = ((1920, 1080, 0.6), (1920, 800, 0.25), (1280, 720, 0.15))


@dataclass(frozen=True)
class Mixture:
    """A weighted mixture of sources; ``weights`` are fractions of packed micro-batches.

    Each source is packed on its own and packed micro-batches are blended, as Megatron's blended
    datasets blend sequences that are already packed per dataset. ``basis`` says where the weights
    come from.
    """

    name: str
    kind: str
    components: tuple[tuple[str, float], ...]
    basis: str = ""


SOURCES: dict[str, SampleSource] = {
    s.name: s for s in (Obelics(), Laion2B(), ScienceQA(), WebText(), ShareGPT4Video(), InternVid(), MMTrail2M())
}
# The sources the paper's evaluation draws from (§7.1); the default mixtures use only these.
PAPER_SOURCES: dict[str, tuple[str, ...]] = {
    "vlm": ("obelics", "laion-2b", "scienceqa"),
    "t2v": ("sharegpt4video", "internvid", "mmtrail-2m"),
}


def proportional(sizes: dict[str, float], total: float = 1.0) -> tuple[tuple[str, float], ...]:
    """``(name, weight)`` pairs proportional to ``sizes`` that add up to ``total``."""
    whole = sum(sizes.values())
    return tuple((name, total * size / whole) for name, size in sizes.items())


# Published facts the default weights are computed from (docs/data.md cites them).
# IDEFICS (Laurençon et al., NeurIPS 2023 D&B; model card HuggingFaceM4/idefics-80b), the OBELICS
# authors' own model, trained on "effective proportions in number of tokens" of OBELICS 73.85%,
# Wikipedia 6.15% (both interleaved web documents), LAION 17.18% and PMD 2.82% (both image-text
# pairs). IDEFICS reads images through cross-attention, so its token shares are shares of packed
# training sequences; DIP's weights are shares of packed micro-batches, the same unit.
IDEFICS_INTERLEAVED_SHARE = (73.85 + 6.15) / 100
IDEFICS_PAIR_SHARE = (17.18 + 2.82) / 100
LAION_2B_EN_PAIRS = 2.32e9  # LAION-5B paper (Schuhmann et al. 2022): 2.32B English image-text pairs
SCIENCEQA_QUESTIONS = 21_208  # ScienceQA paper (Lu et al. 2022)
# No published recipe mixes the paper's video sources, so they are mixed in proportion to their
# published sizes (examples-proportional mixing, Raffel et al. 2020 §3.5.2): each clip once per epoch.
INTERNVID_CLIPS = 234e6  # InternVid paper (Wang et al. 2024): 7M videos, 760K hours, 234M clips
MMTRAIL_2M_CLIPS = 2e6  # MMTrail paper (Chi et al. 2024): 2M clips with multimodal captions
SHAREGPT4VIDEO_VIDEOS = 40e3  # ShareGPT4Video paper (Chen et al. 2024): 40K GPT-4V captioned videos

MIXTURES: dict[str, Mixture] = {
    # Default VLM mix: the paper's sources (§7.1: OBELICS, LAION, ScienceQA; it publishes no weights)
    # at the IDEFICS recipe's shares of interleaved documents (80%) and image-text pairs (20%); the
    # pair share is split between LAION-2B and ScienceQA by their sizes, which leaves ScienceQA
    # (21K questions next to 2.32B pairs) about 2e-6 of the micro-batches.
    "vlm-default": Mixture(
        "vlm-default",
        "vlm",
        (
            ("obelics", IDEFICS_INTERLEAVED_SHARE),
            *proportional({"laion-2b": LAION_2B_EN_PAIRS, "scienceqa": SCIENCEQA_QUESTIONS}, IDEFICS_PAIR_SHARE),
        ),
        basis="IDEFICS pre-training recipe (interleaved 80% / pairs 20%), pairs split by dataset size",
    ),
    # The earlier VLM mix with a synthetic text-only share, for sensitivity studies only: its weights
    # were chosen so that M = 64 lands VLM-S on the paper's iteration times (Table 5), i.e. tuned to a
    # result; the text share stands for the language data VLM recipes mix in (LLaVA-1.5's SFT mix has
    # 40K text-only ShareGPT conversations; MM1 keeps 10% text).
    "vlm-text-mix": Mixture(
        "vlm-text-mix",
        "vlm",
        (("obelics", 0.55), ("laion-2b", 0.07), ("scienceqa", 0.08), ("web-text", 0.30)),
        basis="chosen to match the paper's VLM-S iteration times (sensitivity only)",
    ),
    # Default T2V mix: the paper's sources (§7.1: ShareGPT4Video, InternVid, MMTrail) by published size.
    "t2v-default": Mixture(
        "t2v-default",
        "t2v",
        proportional(
            {"sharegpt4video": SHAREGPT4VIDEO_VIDEOS, "internvid": INTERNVID_CLIPS, "mmtrail-2m": MMTRAIL_2M_CLIPS}
        ),
        basis="proportional to published clip counts (examples-proportional mixing)",
    ),
    # The earlier T2V mix with assumed weights (InternVid largest, ShareGPT4Video smallest), for
    # sensitivity studies only.
    "t2v-assumed": Mixture(
        "t2v-assumed",
        "t2v",
        (("sharegpt4video", 0.2), ("internvid", 0.5), ("mmtrail-2m", 0.3)),
        basis="assumed weights (sensitivity only)",
    ),
    "text-default": Mixture("text-default", "text", (("web-text", 1.0),), basis="the only text source"),
}

DEFAULT_MIXTURE: dict[str, str] = {"vlm": "vlm-default", "t2v": "t2v-default", "text": "text-default"}


def source_names() -> list[str]:
    return [*SOURCES, *MIXTURES]


def resolve(name: str | None, workload: str) -> Mixture:
    """The mixture named ``name`` (a single source is a one-component mixture) for ``workload``."""
    if name is None:
        if workload not in DEFAULT_MIXTURE:
            raise choices_error("workload", workload, DEFAULT_MIXTURE)
        return MIXTURES[DEFAULT_MIXTURE[workload]]
    if name in MIXTURES:
        mix = MIXTURES[name]
    elif name in SOURCES:
        mix = Mixture(name, SOURCES[name].kind, ((name, 1.0),))
    else:
        raise choices_error("source", name, source_names())
    if mix.kind != workload:
        valid = [n for n in source_names() if (MIXTURES[n].kind if n in MIXTURES else SOURCES[n].kind) == workload]
        raise BadInput(f"source {name!r} feeds {mix.kind} models, not {workload}; valid sources: {', '.join(valid)}")
    return mix
