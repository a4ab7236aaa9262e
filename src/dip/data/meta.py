"""Batch metadata: the only thing the planner sees of the data.

A *global batch* is ``M`` packed micro-batches. Each micro-batch packs several samples; a sample has
text tokens, images (all scaled to the ViT's ``image_size``) and/or video clips. From that metadata
:func:`module_work` derives, per module, what one (sub-)micro-batch runs: the attention blocks
(sequence lengths; attention is block-diagonal per sample / image / clip) and, for cross-attention,
the length of the conditioning each block attends to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from dip.spec.model import ModelSpec, ModuleSpec

__all__ = ["BatchMeta", "MicroBatchMeta", "ModuleWork", "lm_sequence_lens", "module_work", "work_for"]


@dataclass(frozen=True)
class MicroBatchMeta:
    """One packed micro-batch.

    ``text_lens[s]`` and ``image_counts[s]`` describe sample ``s`` (its LM sequence is
    ``text_lens[s] + image_counts[s] * tokens_per_image`` tokens). Video clips are listed separately:
    clip ``c`` has ``clip_tokens[c]`` DiT latent tokens, lasts ``clip_seconds[c]`` seconds and is
    conditioned on the text of sample ``clip_sample[c]``.

    Variable-resolution images (real data): ``image_tokens[i]`` and ``image_patches[i]`` give image
    ``i``'s merged LM tokens and ViT patches (images in sample order); empty means every image has the
    model's fixed ``tokens_per_image`` / ``patches_per_image``. ``sample_ids[s]`` is sample ``s``'s
    index in the dataset it came from (empty for generated workloads), so that a model provider can
    load the real sample.
    """

    text_lens: tuple[int, ...]
    image_counts: tuple[int, ...] = ()
    clip_tokens: tuple[int, ...] = ()
    clip_seconds: tuple[float, ...] = ()
    clip_sample: tuple[int, ...] = ()
    image_tokens: tuple[int, ...] = ()
    image_patches: tuple[int, ...] = ()
    sample_ids: tuple[int, ...] = ()

    def __post_init__(self):
        if self.image_counts and len(self.image_counts) != len(self.text_lens):
            raise ValueError("image_counts must have one entry per sample")
        if not (len(self.clip_tokens) == len(self.clip_seconds) == len(self.clip_sample)):
            raise ValueError("clip_tokens, clip_seconds and clip_sample must have equal length")
        n_images = sum(self.image_counts)
        for name in ("image_tokens", "image_patches"):
            got = getattr(self, name)
            if got and len(got) != n_images:
                raise ValueError(f"{name} must have one entry per image ({n_images}), got {len(got)}")
        if self.sample_ids and len(self.sample_ids) != len(self.text_lens):
            raise ValueError("sample_ids must have one entry per sample")

    @property
    def samples(self) -> int:
        return len(self.text_lens)

    @property
    def text_tokens(self) -> int:
        return int(sum(self.text_lens))

    @property
    def images(self) -> int:
        return int(sum(self.image_counts))

    @property
    def clips(self) -> int:
        return len(self.clip_tokens)

    @property
    def video_seconds(self) -> float:
        return float(sum(self.clip_seconds))

    def image_counts_or_zero(self) -> tuple[int, ...]:
        return self.image_counts or (0,) * len(self.text_lens)

    def image_token_counts(self, tokens_per_image: int) -> tuple[int, ...]:
        """LM tokens of every image (``tokens_per_image`` each unless the micro-batch says otherwise)."""
        return self.image_tokens or (tokens_per_image,) * self.images

    def image_patch_counts(self, patches_per_image: int) -> tuple[int, ...]:
        """ViT patches of every image (``patches_per_image`` each unless the micro-batch says otherwise)."""
        return self.image_patches or (patches_per_image,) * self.images

    def sample_image_tokens(self, tokens_per_image: int) -> tuple[int, ...]:
        """LM tokens of each sample's images together."""
        per_image = self.image_token_counts(tokens_per_image)
        out, i = [], 0
        for n in self.image_counts_or_zero():
            out.append(int(sum(per_image[i : i + n])))
            i += n
        return tuple(out)


@dataclass(frozen=True)
class ModuleWork:
    """What one module runs for one (sub-)micro-batch.

    ``seq_lens``: lengths of the independent attention blocks (one per image, sample or clip);
    ``cond_lens``: for cross-attention, the conditioning length each block attends to (same order);
    ``instances``: how many module instances (images, clips; 1 packed sequence for a decoder).
    """

    seq_lens: tuple[int, ...]
    cond_lens: tuple[int, ...] = ()
    instances: int = 0

    @cached_property
    def tokens(self) -> int:
        return int(sum(self.seq_lens))

    @cached_property
    def attn_pairs(self) -> int:
        """Sum over blocks of s^2 (query-key pairs of non-causal block-diagonal attention)."""
        return int(sum(s * s for s in self.seq_lens))

    @cached_property
    def cross_pairs(self) -> int:
        return int(sum(s * c for s, c in zip(self.seq_lens, self.cond_lens)))

    @cached_property
    def cond_tokens(self) -> int:
        return int(sum(self.cond_lens))

    @property
    def empty(self) -> bool:
        return self.tokens == 0


@dataclass(frozen=True)
class BatchMeta:
    """A global batch: ``len(microbatches)`` packed micro-batches (``M``)."""

    microbatches: tuple[MicroBatchMeta, ...]
    index: int = 0
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __len__(self) -> int:
        return len(self.microbatches)


def module_work(module: ModuleSpec, mb: MicroBatchMeta, instances: slice | None = None) -> ModuleWork:
    """The work of ``module`` on micro-batch ``mb`` (optionally only instances ``instances``).

    * ``vit``: one block per image of ``patches_per_image`` tokens (or the image's own patch count);
    * ``decoder``: one block per sample of ``text + images * tokens_per_image`` tokens (instances = 1);
    * ``dit``: one block per clip, cross-attending to its caption's text tokens.
    """
    if module.kind == "vit":
        n = mb.images
        idx = range(n)[instances] if instances is not None else range(n)
        patches = mb.image_patch_counts(module.patches_per_image)
        return ModuleWork(seq_lens=tuple(patches[i] for i in idx), instances=len(idx))
    if module.kind == "decoder":  # text only; use work_for() to include the image tokens of a VLM
        return ModuleWork(seq_lens=tuple(mb.text_lens), instances=1)
    if module.kind == "dit":
        idx = range(mb.clips)[instances] if instances is not None else range(mb.clips)
        return ModuleWork(
            seq_lens=tuple(mb.clip_tokens[i] for i in idx),
            cond_lens=tuple(mb.text_lens[mb.clip_sample[i]] for i in idx),
            instances=len(idx),
        )
    raise ValueError(f"unknown module kind {module.kind!r}")


def lm_sequence_lens(model: ModelSpec, mb: MicroBatchMeta) -> tuple[int, ...]:
    """Per-sample LM sequence lengths: text tokens plus the merged image tokens of that sample."""
    vits = model.modules_of_kind("vit")
    tpi = vits[0].tokens_per_image if vits else 0
    return tuple(t + i for t, i in zip(mb.text_lens, mb.sample_image_tokens(tpi)))


def work_for(model: ModelSpec, module: ModuleSpec, mb: MicroBatchMeta, instances: slice | None = None) -> ModuleWork:
    """:func:`module_work` with model context (the decoder's sequence includes image tokens)."""
    if module.kind == "decoder":
        return ModuleWork(seq_lens=lm_sequence_lens(model, mb), instances=1)
    return module_work(module, mb, instances)
