"""Shapes of the tensors that cross chunk boundaries (pure Python: the planner's shape plan).

A *unit* is what one module runs once: micro-batch ``mb``, instances ``[start, stop)`` (images of a
``vit``, clips of a ``dit``; a ``decoder`` always runs the whole packed micro-batch). Following the
schedule IR, ``start == stop == 0`` means "all instances of the micro-batch".

Boundary tensors (``H`` = the module's hidden size):

* ``vit``: between chunks ``hidden [n_images * patches_per_image, H]``; the last chunk sends
  ``image_embeds [n_images * tokens_per_image, out_hidden]`` (after spatial merge and projector).
* ``decoder``: between chunks ``hidden [seq_tokens, H]`` (all samples packed); the first chunk of a
  VLM decoder receives ``image_embeds [images * tokens_per_image, out_hidden]`` for the micro-batch's
  images (the concatenation, in image order, of what every ViT unit sent); the last chunk sends
  ``text_hidden [text_tokens, H]`` when it has no LM head, and only a loss otherwise.
* ``dit``: the first chunk receives ``text_cond [cond_tokens, cond_hidden]`` (for each clip of the
  unit, in clip order, the final hidden states of its caption's text tokens); between chunks
  ``hidden [clip_tokens, H]``, ``cond [cond_tokens, H]`` (projected conditioning) and
  ``t_mod [n_clips, 6 * H]`` (shared adaLN-single timestep modulation); the last chunk has a loss only.

Decoder sequence layout: sample after sample; each sample is its images' merged tokens (image after
image) followed by its text tokens; positions restart at 0 for every sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from dip.data.meta import MicroBatchMeta, lm_sequence_lens
from dip.errors import BadInput
from dip.spec.model import Edge, ModelSpec, ModuleSpec

__all__ = [
    "DTYPE_BYTES",
    "T_MOD_PARTS",
    "TensorSpec",
    "Unit",
    "UnitLike",
    "caption_lens",
    "chunk_input_specs",
    "chunk_output_specs",
    "dit_latent_grid",
    "dit_patch_dim",
    "edge_specs",
    "image_tokens",
    "instance_count",
    "loss_module",
    "loss_tokens",
    "resolve_range",
    "text_cond_rows",
    "text_offsets",
]

T_MOD_PARTS = 6  # shift/scale/gate for attention and MLP (adaLN-single)
DTYPE_BYTES = {
    "float64": 8,
    "float32": 4,
    "bfloat16": 2,
    "float16": 2,
    "int64": 8,
    "int32": 4,
    "int8": 1,
    "uint8": 1,
    "bool": 1,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
}


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype name (``"float32"``, ``"bfloat16"``, ...) of one boundary tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        try:
            return self.numel * DTYPE_BYTES[self.dtype]
        except KeyError:
            raise ValueError(f"unknown dtype {self.dtype!r}; known: {', '.join(DTYPE_BYTES)}") from None


class UnitLike(Protocol):
    """Anything with a micro-batch index and an instance range (e.g. ``dip.schedule.ir.Unit``)."""

    mb: int
    start: int
    stop: int


@dataclass(frozen=True)
class Unit:
    """A plain unit: module ``module`` on micro-batch ``mb``, instances ``[start, stop)``."""

    module: str
    mb: int
    start: int = 0
    stop: int = 0


def instance_count(module: ModuleSpec, mb: MicroBatchMeta) -> int:
    """Images (vit), clips (dit) or 1 packed sequence (decoder) of ``mb``."""
    if module.kind == "vit":
        return mb.images
    if module.kind == "dit":
        return mb.clips
    return 1


def resolve_range(module: ModuleSpec, mb: MicroBatchMeta, start: int, stop: int) -> tuple[int, int]:
    """The concrete instance range of a unit (``0, 0`` and any decoder range mean everything)."""
    n = instance_count(module, mb)
    if module.kind == "decoder" or (start == 0 and stop == 0):
        return 0, n
    if not 0 <= start <= stop <= n:
        raise BadInput(f"unit range [{start}, {stop}) of {module.name} outside 0..{n}")
    return start, stop


def caption_lens(mb: MicroBatchMeta, start: int, stop: int) -> tuple[int, ...]:
    """Caption (text) length of clips ``[start, stop)``."""
    return tuple(mb.text_lens[mb.clip_sample[c]] for c in range(start, stop))


def text_offsets(mb: MicroBatchMeta) -> tuple[int, ...]:
    """Row of each sample's first text token in ``text_hidden``."""
    out, acc = [], 0
    for t in mb.text_lens:
        out.append(acc)
        acc += t
    return tuple(out)


def text_cond_rows(mb: MicroBatchMeta, start: int, stop: int) -> tuple[tuple[int, int], ...]:
    """For clips ``[start, stop)``: the ``[row_start, row_stop)`` of their caption in ``text_hidden``."""
    offs = text_offsets(mb)
    return tuple(
        (offs[mb.clip_sample[c]], offs[mb.clip_sample[c]] + mb.text_lens[mb.clip_sample[c]]) for c in range(start, stop)
    )


def dit_latent_grid(module: ModuleSpec, tokens: int) -> tuple[int, int, int]:
    """(frames, rows, cols) of a clip of ``tokens`` DiT tokens; a length that does not fit the
    module's grid is laid out as ``tokens`` frames of one token."""
    rows, cols = module.latent_grid()
    if tokens % (rows * cols) == 0:
        return tokens // (rows * cols), rows, cols
    return tokens, 1, 1


def dit_patch_dim(module: ModuleSpec) -> int:
    """Latent elements per DiT token."""
    return module.latent_channels * module.patch_t * module.patch_hw * module.patch_hw


def image_tokens(model: ModelSpec) -> int:
    """Merged tokens per image of the model's ViT (0 without a ViT)."""
    vits = model.modules_of_kind("vit")
    return vits[0].tokens_per_image if vits else 0


def _feeds_images(model: ModelSpec, module: ModuleSpec) -> ModuleSpec | None:
    for e in model.producers(module.name):
        if e.kind == "image_embeddings":
            return model.module(e.src)
    return None


def _fed_by_text(model: ModelSpec, module: ModuleSpec) -> bool:
    return any(e.kind == "text_conditioning" for e in model.producers(module.name))


def chunk_input_specs(
    model: ModelSpec,
    module_name: str,
    layer_start: int,
    mb: MicroBatchMeta,
    start: int = 0,
    stop: int = 0,
    dtype: str = "float32",
) -> tuple[TensorSpec, ...]:
    """Tensors a chunk starting at ``layer_start`` receives for one unit.

    For ``layer_start == 0`` these are the cross-module inputs (assembled from the producers' channels);
    token ids, pixels and latents are not listed: every rank makes them locally.
    """
    m = model.module(module_name)
    a, b = resolve_range(m, mb, start, stop)
    if layer_start > 0:
        return _between_specs(model, m, mb, a, b, dtype)
    if m.kind == "decoder":
        vit = _feeds_images(model, m)
        if vit is not None and mb.images > 0:
            tokens = sum(mb.image_token_counts(vit.tokens_per_image))
            return (TensorSpec("image_embeds", (tokens, vit.out_hidden), dtype),)
        return ()
    if m.kind == "dit" and _fed_by_text(model, m):
        return (TensorSpec("text_cond", (sum(caption_lens(mb, a, b)), m.cond_hidden), dtype),)
    return ()


def chunk_output_specs(
    model: ModelSpec,
    module_name: str,
    layer_end: int,
    mb: MicroBatchMeta,
    start: int = 0,
    stop: int = 0,
    dtype: str = "float32",
) -> tuple[TensorSpec, ...]:
    """Tensors a chunk ending at ``layer_end`` sends for one unit (empty for a loss chunk)."""
    m = model.module(module_name)
    a, b = resolve_range(m, mb, start, stop)
    if layer_end < m.layers:
        return _between_specs(model, m, mb, a, b, dtype)
    if m.kind == "vit":
        tokens = sum(mb.image_token_counts(m.tokens_per_image)[a:b])
        return (TensorSpec("image_embeds", (tokens, m.out_hidden), dtype),)
    if m.kind == "decoder" and not m.lm_head:
        return (TensorSpec("text_hidden", (mb.text_tokens, m.hidden), dtype),)
    return ()


def _between_specs(
    model: ModelSpec, m: ModuleSpec, mb: MicroBatchMeta, a: int, b: int, dtype: str
) -> tuple[TensorSpec, ...]:
    if m.kind == "vit":
        return (TensorSpec("hidden", (sum(mb.image_patch_counts(m.patches_per_image)[a:b]), m.hidden), dtype),)
    if m.kind == "decoder":
        return (TensorSpec("hidden", (sum(lm_sequence_lens(model, mb)), m.hidden), dtype),)
    if m.kind == "dit":
        tokens = sum(mb.clip_tokens[a:b])
        return (
            TensorSpec("hidden", (tokens, m.hidden), dtype),
            TensorSpec("cond", (sum(caption_lens(mb, a, b)), m.hidden), dtype),
            TensorSpec("t_mod", (b - a, T_MOD_PARTS * m.hidden), dtype),
        )
    raise BadInput(f"unknown module kind {m.kind!r}")


def edge_specs(
    model: ModelSpec, edge: Edge, producer: UnitLike, consumer: UnitLike, mb: MicroBatchMeta, dtype: str = "float32"
) -> tuple[TensorSpec, ...]:
    """Tensors on the channel producer unit -> consumer unit of ``edge`` (empty if they do not meet).

    ``image_embeddings``: the ViT unit's ``image_embeds`` unchanged (the LM concatenates its units'
    tensors by image index). ``text_conditioning``: ``text_cond``, the caption rows of the DiT unit's
    clips, cut from the LM's ``text_hidden`` on the producer side.
    """
    if producer.mb != consumer.mb:
        return ()
    src, dst = model.module(edge.src), model.module(edge.dst)
    if edge.kind == "image_embeddings":
        a, b = resolve_range(src, mb, producer.start, producer.stop)
        if a == b:
            return ()
        tokens = sum(mb.image_token_counts(src.tokens_per_image)[a:b])
        return (TensorSpec("image_embeds", (tokens, src.out_hidden), dtype),)
    if edge.kind == "text_conditioning":
        a, b = resolve_range(dst, mb, consumer.start, consumer.stop)
        if a == b:
            return ()
        return (TensorSpec("text_cond", (sum(caption_lens(mb, a, b)), dst.cond_hidden), dtype),)
    raise BadInput(f"unknown edge kind {edge.kind!r}; valid: image_embeddings, text_conditioning")


def loss_module(model: ModelSpec) -> str:
    """The module whose last chunk computes the loss: the DiT if any, else the decoder with an LM head."""
    dits = model.modules_of_kind("dit")
    if dits:
        return dits[-1].name
    heads = [m for m in model.modules_of_kind("decoder") if m.lm_head]
    if heads:
        return heads[-1].name
    raise BadInput(f"model {model.name} has no loss module (no dit, no decoder with lm_head)")


def loss_tokens(model: ModelSpec, mb: MicroBatchMeta) -> int:
    """Number of loss terms of ``mb`` (the denominator of the token-weighted loss).

    * LM head: text positions whose next position is a text token of the same sample, i.e.
      ``sum(max(text_len - 1, 0))`` (image positions and each sample's last token have no label).
    * DiT: latent elements predicted, ``sum(clip_tokens) * latent_channels * patch_t * patch_hw**2``.
    """
    m = model.module(loss_module(model))
    if m.kind == "dit":
        return sum(mb.clip_tokens) * dit_patch_dim(m)
    return sum(max(t - 1, 0) for t in mb.text_lens)
