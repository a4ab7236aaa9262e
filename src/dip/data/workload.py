"""Synthetic training workloads: global batches of packed micro-batches.

:func:`generate_batches` draws each source of a mixture on its own random stream, packs it with the
packer of :mod:`dip.data.packing` and blends the packed micro-batches (mixture weights are fractions
of micro-batches). Batch ``i`` depends only on ``(seed, i)``: asking for 10 or 20 batches gives the
same first 10. Samples left over after a batch's micro-batches are filled are dropped.

:func:`generate_dynamic_batches` reproduces the hand-controlled workload of Fig. 8b: image-count
bounds per micro-batch that rise and fall over the iterations (:func:`rise_and_fall_bounds`).
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass

import numpy as np

from dip.data.meta import BatchMeta, MicroBatchMeta
from dip.data.packing import PackLimits, pack_clips, pack_sequences
from dip.data.samples import Sample, tokens_per_image
from dip.data.sources import MIXTURES, SOURCES, Mixture, SampleSource, resolve
from dip.errors import BadInput
from dip.spec.model import ModelSpec

__all__ = [
    "DYNAMIC_SHAPE",
    "MAX_MICROBATCHES",
    "PAPER_MAX_IMAGES",
    "ImageBounds",
    "bounds_at",
    "generate_batch",
    "generate_batches",
    "generate_dynamic_batch",
    "generate_dynamic_batches",
    "rise_and_fall_bounds",
    "source_microbatches",
    "stream_rng",
]

logger = logging.getLogger(__name__)

PAPER_MAX_IMAGES = 48  # Fig. 8b bounds are given for 48-image micro-batches; scaled for other models
DYNAMIC_SHAPE = (3.0, 5.0)  # Beta(a, b) position inside the bounds: mean 3/8, so (16, 32) averages 22


def stream_rng(seed: int, index: int, stream: str) -> np.random.Generator:
    """Random generator of one named stream of batch ``index`` (independent of other batches)."""
    return np.random.default_rng([seed, index, zlib.crc32(stream.encode())])


def _check_model(model: ModelSpec) -> None:
    if model.workload == "vlm" and not tokens_per_image(model):
        raise BadInput(f"model {model.name} has workload vlm but no image encoder (vit) module")
    if model.workload == "t2v" and not model.modules_of_kind("dit"):
        raise BadInput(f"model {model.name} has workload t2v but no video (dit) module")


# The most micro-batches one global batch may hold: 8x the paper's largest (128). Beyond it a plan's
# task graph (~35 tasks per micro-batch) no longer fits a planning budget of seconds.
MAX_MICROBATCHES = 1024


def _check_counts(batches: int, seed: int, microbatches: int) -> None:
    if batches < 1:
        raise BadInput(f"batches must be an integer >= 1, got {batches}")
    if not 1 <= microbatches <= MAX_MICROBATCHES:
        raise BadInput(
            f"microbatches must be an integer from 1 to {MAX_MICROBATCHES} per global batch (the paper's "
            f"batches hold 64 to 128), got {microbatches}"
        )
    if seed < 0:
        raise BadInput(f"seed must be an integer >= 0, got {seed}")


def source_microbatches(
    model: ModelSpec, source: SampleSource, n: int, rng: np.random.Generator
) -> list[MicroBatchMeta]:
    """``n`` packed micro-batches drawn from one source."""
    if model.workload == "t2v":
        samples = source.draw(rng, n * model.max_clips_per_microbatch)
        groups = pack_clips(samples, model, window=len(samples))
        return [groups[k] for k in sorted(rng.choice(len(groups), size=n, replace=False))]
    limits = PackLimits.for_model(model)
    samples: list[Sample] = []
    draw = max(16, n * 4)
    while True:
        samples += source.draw(rng, draw)
        packed = pack_sequences(samples, limits)
        if len(packed) > n:  # the last micro-batch may still be open: keep only closed ones
            return packed[:n]
        per_microbatch = len(samples) / max(1, len(packed) - 1)
        draw = max(16, int((n + 2 - len(packed)) * per_microbatch * 1.2))


def generate_batch(model: ModelSpec, mixture: Mixture, seed: int, index: int, microbatches: int) -> BatchMeta:
    """Global batch ``index``: micro-batches of every source of ``mixture``, blended in random order."""
    rng = stream_rng(seed, index, "mixture")
    weights = np.array([w for _, w in mixture.components], dtype=float)
    counts = rng.multinomial(microbatches, weights / weights.sum())
    mbs: list[MicroBatchMeta] = []
    for (name, _), n in zip(mixture.components, counts):
        if n:
            mbs += source_microbatches(model, SOURCES[name], int(n), stream_rng(seed, index, name))
    order = rng.permutation(len(mbs))
    return BatchMeta(microbatches=tuple(mbs[k] for k in order), index=index, extra={"source": mixture.name})


def generate_batches(
    model: ModelSpec, batches: int, seed: int, microbatches: int = 64, source: str | None = None
) -> list[BatchMeta]:
    """``batches`` global batches of ``microbatches`` packed micro-batches from ``source``.

    ``source`` names a source or mixture of :mod:`dip.data.sources` (default: the model's workload
    mixture). Deterministic in ``seed``; batch ``i`` depends only on ``(seed, i)``.
    """
    _check_counts(batches, seed, microbatches)
    _check_model(model)
    mixture = resolve(source, model.workload)
    logger.debug(
        "generating %d batches of %d micro-batches for %s from %s (seed %d)",
        batches,
        microbatches,
        model.name,
        source or model.workload,
        seed,
    )
    return [generate_batch(model, mixture, seed, i, microbatches) for i in range(batches)]


@dataclass(frozen=True)
class ImageBounds:
    """Bounds on images per micro-batch at one iteration (1-based) of a dynamic workload."""

    iteration: int
    lower: int
    upper: int


def rise_and_fall_bounds(
    iterations: int = 40, period: int = 20, rise: int = 5, peak_lower: int = 16, upper: int = 32
) -> list[ImageBounds]:
    """Fig. 8b bounds: per ``period`` iterations, the lower bound rises 0 -> ``peak_lower`` with the
    upper bound at ``upper`` (iterations 1..``rise``), then both fall linearly to 0 at the period's
    last iteration. 40 iterations give two rise-and-fall patterns.
    """
    if iterations < 1:
        raise BadInput(f"iterations must be an integer >= 1, got {iterations}")
    return [bounds_at(i, period, rise, peak_lower, upper) for i in range(iterations)]


def bounds_at(index: int, period: int = 20, rise: int = 5, peak_lower: int = 16, upper: int = 32) -> ImageBounds:
    """The :func:`rise_and_fall_bounds` of 0-based iteration ``index`` alone."""
    t = index % period
    if t < rise:
        lo, hi = peak_lower * t / max(1, rise - 1), float(upper)
    else:
        frac = (period - 1 - t) / (period - rise)
        lo, hi = peak_lower * frac, upper * frac
    return ImageBounds(index + 1, round(lo), round(hi))


class _Stream:
    """Samples of one source drawn in blocks from a shared generator."""

    def __init__(self, source: SampleSource, rng: np.random.Generator, block: int = 64):
        self.source, self.rng, self.block, self.buf = source, rng, block, []

    def next(self) -> Sample:
        if not self.buf:
            self.buf = self.source.draw(self.rng, self.block)[::-1]
        return self.buf.pop()


def _microbatch_with_images(
    model: ModelSpec, images: int, rng: np.random.Generator, streams: dict[str, _Stream], mixture: Mixture
) -> MicroBatchMeta:
    """A full micro-batch holding exactly ``images`` images.

    Image samples come from ``mixture`` with their image count capped at what is still needed (text
    scaled with the kept images, then cut to the room left); text-only web documents fill the rest
    of the context, the last one cut at the context boundary as in concatenate-and-chunk packing.
    """
    tpi, ctx = tokens_per_image(model), model.context_length
    budget = ctx - images * tpi
    names = [n for n, _ in mixture.components]
    weights = np.array([w for _, w in mixture.components], dtype=float)
    texts: list[int] = []
    counts: list[int] = []
    left = images
    while left > 0:
        s = streams[names[rng.choice(len(names), p=weights / weights.sum())]].next()
        k = min(max(1, s.image_count), left)
        text = s.text_tokens * k // max(1, s.image_count)
        text = min(text, budget - sum(texts))
        texts.append(text)
        counts.append(k)
        left -= k
    while sum(texts) < budget:
        doc = streams["web-text"].next().text_tokens
        texts.append(min(doc, budget - sum(texts)))
        counts.append(0)
    return MicroBatchMeta(text_lens=tuple(texts), image_counts=tuple(counts))


def generate_dynamic_batches(
    model: ModelSpec, seed: int, microbatches: int = 64, iterations: int = 40
) -> list[BatchMeta]:
    """One batch per iteration whose micro-batches obey :func:`rise_and_fall_bounds`.

    Bounds are scaled by ``max_images_per_microbatch / 48`` (and to what fits the context); each
    micro-batch's image count is ``lower + (upper - lower) * Beta(3, 5)`` rounded, so the peak bounds
    (16, 32) average ~22 images. ``extra`` holds the iteration and the bounds used. Batch ``i`` is
    :func:`generate_dynamic_batch` ``(model, seed, i, microbatches)``.
    """
    if iterations < 1:
        raise BadInput(f"iterations must be an integer >= 1, got {iterations}")
    return [generate_dynamic_batch(model, seed, i, microbatches) for i in range(iterations)]


def generate_dynamic_batch(model: ModelSpec, seed: int, index: int, microbatches: int = 64) -> BatchMeta:
    """Iteration ``index`` (0-based) of the dynamic workload; depends only on ``(seed, index)``."""
    _check_counts(1, seed, microbatches)
    _check_model(model)
    if model.workload != "vlm":
        raise BadInput(
            f"dynamic workloads bound image counts; model {model.name} has workload {model.workload}, not vlm"
        )
    tpi = tokens_per_image(model)
    cap = min(model.max_images_per_microbatch, model.context_length // tpi)
    scale = model.max_images_per_microbatch / PAPER_MAX_IMAGES
    mixture = MIXTURES["vlm-default"]
    b = bounds_at(index)
    lo, hi = min(cap, round(b.lower * scale)), min(cap, round(b.upper * scale))
    rng = stream_rng(seed, index, "dynamic")
    streams = {n: _Stream(SOURCES[n], stream_rng(seed, index, n)) for n, _ in mixture.components}
    streams["web-text"] = _Stream(SOURCES["web-text"], stream_rng(seed, index, "web-text"))
    counts = lo + np.rint((hi - lo) * rng.beta(*DYNAMIC_SHAPE, size=microbatches)).astype(int)
    mbs = tuple(_microbatch_with_images(model, int(k), rng, streams, mixture) for k in counts)
    return BatchMeta(
        microbatches=mbs, index=index, extra={"source": "dynamic", "iteration": b.iteration, "image_bounds": (lo, hi)}
    )
