"""Sample metadata and its normalisation to a model's input rules.

A :class:`Sample` is what one row of a dataset contributes: text tokens, images and video clips, with
the source's own resolutions and frame rates. Before packing, media are normalised to the model:

* images are scaled to the ViT's ``image_size`` (728 px in the paper), so every image is
  ``tokens_per_image`` LM tokens (169) and ``patches_per_image`` ViT tokens (2704), whatever its
  original size;
* videos are resampled to the DiT's ``video_fps`` (16), cut to ``max_video_seconds`` (16 s; the rest
  of a longer video is dropped) and resized, keeping their aspect ratio, to the area of the DiT's
  ``video_height x video_width`` canvas (MovieGen-style training at one resolution with aspect-ratio
  buckets); DiT tokens come from :meth:`ModuleSpec.clip_tokens`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dip.errors import BadInput
from dip.spec.model import ModelSpec, ModuleSpec

__all__ = [
    "ASPECT_BUCKETS",
    "Clip",
    "ModelClip",
    "Sample",
    "aspect_bucket",
    "fit_clip",
    "tokens_per_image",
    "video_module",
]

# Aspect-ratio buckets (width / height) that clips are grouped by.
ASPECT_BUCKETS: tuple[tuple[str, float], ...] = (
    ("9:16", 9 / 16),
    ("3:4", 3 / 4),
    ("1:1", 1.0),
    ("4:3", 4 / 3),
    ("16:9", 16 / 9),
    ("21:9", 21 / 9),
)


@dataclass(frozen=True)
class Clip:
    """A source video clip: duration, frame rate and frame size as stored in the dataset."""

    seconds: float
    fps: float = 30.0
    width: int = 1280
    height: int = 720


@dataclass(frozen=True)
class Sample:
    """One dataset row: ``text_tokens`` text tokens, ``image_count`` images and video ``clips``."""

    text_tokens: int
    image_count: int = 0
    clips: tuple[Clip, ...] = ()

    def __post_init__(self):
        if self.text_tokens < 0 or self.image_count < 0:
            raise ValueError("text_tokens and image_count must be >= 0")


@dataclass(frozen=True)
class ModelClip:
    """A clip after normalisation: what the DiT actually runs."""

    seconds: float
    width: int
    height: int
    tokens: int
    aspect: str


def tokens_per_image(model: ModelSpec) -> int:
    """LM tokens one image contributes (0 for a model without an image encoder)."""
    vits = model.modules_of_kind("vit")
    return vits[0].tokens_per_image if vits else 0


def video_module(model: ModelSpec) -> ModuleSpec:
    """The model's DiT (the module whose rules normalise clips)."""
    dits = model.modules_of_kind("dit")
    if not dits:
        raise BadInput(f"model {model.name} has no video (dit) module")
    return dits[0]


def aspect_bucket(width: int, height: int) -> str:
    """Name of the aspect-ratio bucket nearest (in log ratio) to ``width / height``."""
    ratio = math.log(width / height)
    return min(ASPECT_BUCKETS, key=lambda b: abs(math.log(b[1]) - ratio))[0]


def fit_clip(clip: Clip, dit: ModuleSpec, max_seconds: float) -> ModelClip:
    """Normalise ``clip`` to the DiT: ``video_fps``, at most ``max_seconds``, canvas-area frames.

    Duration is cut to ``max_seconds`` and rounded to whole frames at ``video_fps`` (at least one);
    the frame is scaled to the canvas area keeping its aspect ratio and snapped to multiples of the
    latent patch (``vae_spatial * patch_hw`` px).
    """
    frames = max(1, round(min(clip.seconds, max_seconds) * dit.video_fps))
    seconds = min(frames / dit.video_fps, max_seconds)
    step = dit.vae_spatial * dit.patch_hw
    scale = math.sqrt(dit.video_width * dit.video_height / (clip.width * clip.height))
    width = max(step, round(clip.width * scale / step) * step)
    height = max(step, round(clip.height * scale / step) * step)
    return ModelClip(
        seconds=seconds,
        width=width,
        height=height,
        tokens=dit.clip_tokens(seconds, height, width),
        aspect=aspect_bucket(clip.width, clip.height),
    )
