"""Tiny models and random micro-batches for tests and examples of the real torch models."""
from __future__ import annotations

import random

from dip.data.meta import BatchMeta, MicroBatchMeta
from dip.spec.model import Edge, ModelSpec, ModuleSpec, ParallelSpec


def _tiny_by_hand(name: str) -> ModelSpec:
    if name == "tiny-vlm":
        return ModelSpec(
            "tiny-vlm",
            (ModuleSpec("vit", "vit", 8, 128, 512, 4, 4, image_size=56, patch_size=14, spatial_merge=2, out_hidden=192),
             ModuleSpec("llm", "decoder", 8, 192, 512, 6, 2, vocab_size=1024)),
            (Edge("vit", "llm", "image_embeddings"),), ParallelSpec(pp=2), workload="vlm", context_length=256,
            max_images_per_microbatch=8,
        )
    if name == "tiny-t2v":
        return ModelSpec(
            "tiny-t2v",
            (ModuleSpec("llm", "decoder", 8, 128, 384, 4, 2, vocab_size=1024, lm_head=False),
             ModuleSpec("dit", "dit", 8, 128, 512, 4, 4, cond_hidden=128, latent_channels=4, patch_t=1, patch_hw=2,
                        vae_temporal=8, vae_spatial=8, video_fps=16, video_height=64, video_width=64)),
            (Edge("llm", "dit", "text_conditioning"),), ParallelSpec(pp=2), workload="t2v", context_length=256,
            max_clips_per_microbatch=4, max_video_seconds=8.0,
        )
    raise ValueError(f"unknown tiny model {name!r}; valid: tiny-vlm, tiny-t2v")


def tiny_model(name: str) -> ModelSpec:
    """``tiny-vlm`` / ``tiny-t2v`` from the presets (or the same specs built by hand if unavailable)."""
    try:
        from dip.spec.presets import get_model
        return get_model(name)
    except ImportError:
        return _tiny_by_hand(name)


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
