"""Model, module and parallel specifications.

A model is a DAG of modules (``vit`` image encoders, ``decoder`` language models, ``dit`` diffusion
transformers) joined by typed edges. Every number here is an architecture hyper-parameter; parameter
counts are computed from them (see :mod:`dip.spec.params`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from dip.errors import BadInput

__all__ = ["MODULE_KINDS", "Edge", "EdgeKind", "ModelSpec", "ModuleKind", "ModuleSpec", "ParallelSpec"]

ModuleKind = Literal["vit", "decoder", "dit"]
MODULE_KINDS: tuple[str, ...] = ("vit", "decoder", "dit")
EdgeKind = Literal["image_embeddings", "text_conditioning"]


@dataclass(frozen=True)
class ModuleSpec:
    """One modality module: a stack of ``layers`` identical transformer blocks plus its pre/post parts.

    Field meaning by kind:

    * ``vit``: images of ``image_size`` px are cut into ``patch_size`` patches
      (``(image_size // patch_size) ** 2`` patches run through the blocks), then
      ``spatial_merge x spatial_merge`` neighbouring patches are merged and projected to ``out_hidden``
      (the consumer LM's hidden size). GELU MLP, LayerNorm.
    * ``decoder``: token embeddings (``vocab_size``), RMSNorm, RoPE, grouped-query attention
      (``heads`` query heads, ``kv_heads`` key/value heads), SwiGLU MLP; ``lm_head`` tells whether an
      output projection and token loss exist (False when the LM only encodes text for a DiT).
    * ``dit``: video latents (``latent_channels`` channels, VAE compression ``vae_temporal`` x
      ``vae_spatial``) patchified by ``patch_t x patch_hw x patch_hw``; each block has self-attention,
      cross-attention to text conditioning of width ``cond_hidden``, and a GELU MLP; adaLN-single
      timestep modulation (one shared timestep MLP, a learned per-layer modulation table).
    """

    name: str
    kind: ModuleKind
    layers: int
    hidden: int
    ffn_hidden: int
    heads: int
    kv_heads: int
    # vit
    image_size: int = 728
    patch_size: int = 14
    spatial_merge: int = 4
    in_channels: int = 3
    out_hidden: int = 0
    # decoder
    vocab_size: int = 0
    lm_head: bool = True
    # dit
    cond_hidden: int = 0
    latent_channels: int = 16
    patch_t: int = 1
    patch_hw: int = 2
    vae_temporal: int = 8
    vae_spatial: int = 8
    video_fps: int = 16
    video_height: int = 768
    video_width: int = 768

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def patches_per_image(self) -> int:
        """ViT sequence length of one image (2704 for 728 px / patch 14)."""
        side = self.image_size // self.patch_size
        return side * side

    @property
    def tokens_per_image(self) -> int:
        """Merged tokens one image contributes to the LM sequence (169 for 728 px, patch 14, merge 4)."""
        side = self.image_size // self.patch_size
        return (side // self.spatial_merge) ** 2

    def latent_grid(self, height: int | None = None, width: int | None = None) -> tuple[int, int]:
        """(rows, cols) of DiT tokens per latent frame after VAE compression and patchify."""
        h = max(1, (height or self.video_height) // (self.vae_spatial * self.patch_hw))
        w = max(1, (width or self.video_width) // (self.vae_spatial * self.patch_hw))
        return h, w

    def latent_frames(self, seconds: float) -> int:
        """Latent frames (after temporal VAE compression and temporal patchify) of a clip."""
        frames = seconds * self.video_fps / (self.vae_temporal * self.patch_t)
        return max(1, round(frames))

    def clip_tokens(self, seconds: float, height: int | None = None, width: int | None = None) -> int:
        """DiT sequence length of one clip: ``latent_frames * rows * cols``."""
        h, w = self.latent_grid(height, width)
        return self.latent_frames(seconds) * h * w

    def latent_tokens_per_second(self, height: int | None = None, width: int | None = None) -> float:
        """DiT tokens per second of video at ``video_fps`` (after VAE compression and patchify)."""
        h, w = self.latent_grid(height, width)
        return h * w * self.video_fps / (self.vae_temporal * self.patch_t)

    def with_(self, **changes) -> ModuleSpec:
        return replace(self, **changes)


@dataclass(frozen=True)
class Edge:
    """A typed data edge ``src -> dst`` between two modules of a model."""

    src: str
    dst: str
    kind: EdgeKind


@dataclass(frozen=True)
class ParallelSpec:
    """Tensor, pipeline and data parallel degrees, plus optional per-module segment counts (K_i).

    ``sequence_parallel`` and ``distributed_optimizer`` follow Megatron-LM's flags of the same names;
    None means Megatron's default for this layout: sequence parallelism on whenever ``tp > 1``, the
    distributed optimizer on whenever ``dp > 1`` (the cost model resolves them).
    """

    tp: int = 1
    pp: int = 1
    dp: int = 1
    segments: tuple[tuple[str, int], ...] = ()
    gpus_per_node: int = 8
    sequence_parallel: bool | None = None
    distributed_optimizer: bool | None = None

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.dp

    def segments_for(self, module: str) -> int | None:
        return dict(self.segments).get(module)


@dataclass(frozen=True)
class ModelSpec:
    """A multimodal model: modules in topological order plus the edges between them."""

    name: str
    modules: tuple[ModuleSpec, ...]
    edges: tuple[Edge, ...]
    parallel: ParallelSpec
    workload: str = "vlm"
    context_length: int = 8192
    max_images_per_microbatch: int = 48
    max_clips_per_microbatch: int = 8
    max_video_seconds: float = 16.0
    description: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def module(self, name: str) -> ModuleSpec:
        for m in self.modules:
            if m.name == name:
                return m
        raise BadInput(f"model {self.name} has no module {name!r}; modules: {', '.join(m.name for m in self.modules)}")

    def modules_of_kind(self, kind: str) -> list[ModuleSpec]:
        return [m for m in self.modules if m.kind == kind]

    @property
    def is_vlm(self) -> bool:
        return any(m.kind == "vit" for m in self.modules)

    @property
    def is_t2v(self) -> bool:
        return any(m.kind == "dit" for m in self.modules)

    def producers(self, module: str) -> list[Edge]:
        return [e for e in self.edges if e.dst == module]

    def consumers(self, module: str) -> list[Edge]:
        return [e for e in self.edges if e.src == module]

    def with_parallel(self, **changes) -> ModelSpec:
        return replace(self, parallel=replace(self.parallel, **changes))
