"""Tiny models and random micro-batches for the tests of the real torch models."""

from __future__ import annotations

import random

from dip.data.meta import BatchMeta, MicroBatchMeta
from dip.spec.model import ModelSpec
from dip.spec.presets import get_model


def tiny_model(name: str) -> ModelSpec:
    """``tiny-vlm`` / ``tiny-t2v`` from the presets."""
    return get_model(name)


def random_microbatch(model: ModelSpec, rng: random.Random, max_samples: int = 3) -> MicroBatchMeta:
    """A small packed micro-batch fitting ``model`` (VLM: images per sample; T2V: clips with captions)."""
    samples = rng.randint(1, max_samples)
    text_lens = tuple(rng.randint(2, 12) for _ in range(samples))
    images: tuple[int, ...] = ()
    if model.is_vlm:
        images = tuple(rng.randint(0, 2) for _ in range(samples))
        if sum(images) == 0:
            images = (1,) + images[1:]
    clips, seconds, owners = [], [], []
    if model.is_t2v:
        dit = model.modules_of_kind("dit")[0]
        for _ in range(rng.randint(1, 3)):
            sec = rng.choice((0.5, 1.0, 1.5))
            clips.append(dit.clip_tokens(sec))
            seconds.append(sec)
            owners.append(rng.randrange(samples))
    return MicroBatchMeta(text_lens, images, tuple(clips), tuple(seconds), tuple(owners))


def random_batch(model: ModelSpec, seed: int, microbatches: int = 2, max_samples: int = 3) -> BatchMeta:
    """``microbatches`` random micro-batches drawn from ``random.Random(seed)``."""
    rng = random.Random(seed)
    return BatchMeta(tuple(random_microbatch(model, rng, max_samples) for _ in range(microbatches)))
