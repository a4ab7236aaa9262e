"""Greedy packing of samples into micro-batches, as in the paper (§2.2, §7.1).

* **VLM / text** (:func:`pack_sequences`): each sample is ``text + images * tokens_per_image``
  LM tokens, laid out as an interleaved document (:func:`layout`). Samples are concatenated in order
  and the stream is cut into micro-batches filled up to ``context_length`` tokens (8192) and
  ``max_images_per_microbatch`` images (48), as in the paper's examples (10 images + 6502 text tokens
  = 169 + 8023 = 8192). Text is split at a micro-batch boundary; an image is never split: when it
  does not fit (or would be image 49) the micro-batch closes a little short. The parts of a split
  sample are separate samples (attention blocks) of their micro-batches; nothing is dropped.
* **T2V** (:func:`pack_clips`): every clip, with its caption, is one unit; within windows of
  ``window`` units the clips are sorted by aspect-ratio bucket and duration, then grouped next-fit into
  micro-batches of at most ``max_clips_per_microbatch`` clips (8), ``max_video_seconds`` of video
  (16 s) and ``context_length`` caption tokens, never mixing aspect buckets. Each caption is one
  sample (``text_lens``) and ``clip_sample`` maps a clip to its caption. A caption longer than
  ``context_length`` is truncated to it; a sample with several videos repeats its caption per clip.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dip.data.meta import BatchMeta, MicroBatchMeta
from dip.data.samples import ModelClip, Sample, fit_clip, tokens_per_image, video_module
from dip.errors import BadInput
from dip.spec.model import ModelSpec

__all__ = [
    "DEFAULT_WINDOW",
    "SECONDS_EPS",
    "ClipUnit",
    "DocumentMeta",
    "PackLimits",
    "clip_units",
    "group_clips",
    "layout",
    "pack",
    "pack_clips",
    "pack_documents",
    "pack_sequences",
    "to_batches",
]

DEFAULT_WINDOW = 512
SECONDS_EPS = 1e-9


@dataclass(frozen=True)
class PackLimits:
    """Per-micro-batch limits of a model (see :class:`dip.spec.model.ModelSpec`)."""

    context_length: int
    tokens_per_image: int = 0
    max_images: int = 0
    max_clips: int = 0
    max_seconds: float = 0.0

    @classmethod
    def for_model(cls, model: ModelSpec) -> PackLimits:
        return cls(
            context_length=model.context_length,
            tokens_per_image=tokens_per_image(model),
            max_images=model.max_images_per_microbatch,
            max_clips=model.max_clips_per_microbatch,
            max_seconds=model.max_video_seconds,
        )


def layout(sample: Sample) -> list[tuple[str, int]]:
    """A sample as an interleaved document ``T0 I T1 I ... I Tn``: its ``n`` images spread evenly
    through the text (``n + 1`` text segments differing by at most one token)."""
    n = sample.image_count
    base, extra = divmod(sample.text_tokens, n + 1)
    out: list[tuple[str, int]] = []
    for seg in range(n + 1):
        length = base + (1 if seg < extra else 0)
        if length:
            out.append(("text", length))
        if seg < n:
            out.append(("image", 1))
    return out


class _SequencePacker:
    """State of :func:`pack_sequences`: the open micro-batch and the open piece of a sample."""

    def __init__(self, limits: PackLimits):
        self.limits = limits
        self.out: list[MicroBatchMeta] = []
        self.texts: list[int] = []
        self.images: list[int] = []
        self.tokens = self.image_total = 0
        self.piece_text = self.piece_images = 0

    def close_piece(self) -> None:
        if self.piece_text or self.piece_images:
            self.texts.append(self.piece_text)
            self.images.append(self.piece_images)
        self.piece_text = self.piece_images = 0

    def close_microbatch(self) -> None:
        self.close_piece()
        if self.texts:
            counts = tuple(self.images) if self.limits.tokens_per_image else ()
            self.out.append(MicroBatchMeta(text_lens=tuple(self.texts), image_counts=counts))
        self.texts, self.images = [], []
        self.tokens = self.image_total = 0

    def add_text(self, length: int) -> None:
        while length:
            room = self.limits.context_length - self.tokens
            if room <= 0:
                self.close_microbatch()
                continue
            take = min(room, length)
            self.piece_text += take
            self.tokens += take
            length -= take

    def add_image(self) -> None:
        tpi = self.limits.tokens_per_image
        if self.tokens + tpi > self.limits.context_length or self.image_total + 1 > self.limits.max_images:
            self.close_microbatch()
        self.piece_images += 1
        self.image_total += 1
        self.tokens += tpi

    def add(self, sample: Sample) -> None:
        for kind, length in layout(sample):
            if kind == "text":
                self.add_text(length)
            else:
                self.add_image()
        self.close_piece()


def pack_sequences(samples: Iterable[Sample], limits: PackLimits) -> list[MicroBatchMeta]:
    """Greedy fill of VLM or text samples into micro-batches (see module doc)."""
    tpi = limits.tokens_per_image
    packer = _SequencePacker(limits)
    for sample in samples:
        if sample.clips:
            raise BadInput("sample has videos but the model packs text/image sequences only")
        if sample.image_count:
            if tpi <= 0:
                raise BadInput("sample has images but the model has no image encoder")
            if tpi > limits.context_length or limits.max_images < 1:
                raise BadInput(
                    f"one image ({tpi} tokens) does not fit a micro-batch of "
                    f"{limits.context_length} tokens / {limits.max_images} images"
                )
        packer.add(sample)
    packer.close_microbatch()
    return packer.out


@dataclass(frozen=True)
class ClipUnit:
    """One clip ready for grouping: normalised clip plus its caption length."""

    clip: ModelClip
    caption_tokens: int


def clip_units(samples: Iterable[Sample], model: ModelSpec) -> list[ClipUnit]:
    """Normalise every clip of every sample (captions truncated to ``context_length``)."""
    dit = video_module(model)
    units: list[ClipUnit] = []
    for sample in samples:
        if sample.image_count:
            raise BadInput("sample has images but the model has no image encoder")
        if not sample.clips:
            raise BadInput("text-to-video sample has no video clip")
        caption = min(sample.text_tokens, model.context_length)
        for clip in sample.clips:
            units.append(ClipUnit(fit_clip(clip, dit, model.max_video_seconds), caption))
    return units


def group_clips(units: Sequence[ClipUnit], limits: PackLimits, window: int = DEFAULT_WINDOW) -> list[MicroBatchMeta]:
    """Group clip units into micro-batches (sorted per window by aspect bucket and duration)."""
    out: list[MicroBatchMeta] = []
    for start in range(0, len(units), max(1, window)):
        chunk = sorted(units[start : start + window], key=lambda u: (u.clip.aspect, u.clip.seconds, u.clip.tokens))
        group: list[ClipUnit] = []
        for unit in chunk:
            if group and not _fits(group, unit, limits):
                out.append(_clip_microbatch(group))
                group = []
            group.append(unit)
        if group:
            out.append(_clip_microbatch(group))
    return out


def pack_clips(samples: Iterable[Sample], model: ModelSpec, window: int = DEFAULT_WINDOW) -> list[MicroBatchMeta]:
    """T2V packing (see module doc)."""
    return group_clips(clip_units(samples, model), PackLimits.for_model(model), window)


def _fits(group: list[ClipUnit], unit: ClipUnit, limits: PackLimits) -> bool:
    return (
        len(group) < limits.max_clips
        and unit.clip.aspect == group[0].clip.aspect
        and sum(u.clip.seconds for u in group) + unit.clip.seconds <= limits.max_seconds + SECONDS_EPS
        and sum(u.caption_tokens for u in group) + unit.caption_tokens <= limits.context_length
    )


def _clip_microbatch(group: list[ClipUnit]) -> MicroBatchMeta:
    return MicroBatchMeta(
        text_lens=tuple(u.caption_tokens for u in group),
        clip_tokens=tuple(u.clip.tokens for u in group),
        clip_seconds=tuple(u.clip.seconds for u in group),
        clip_sample=tuple(range(len(group))),
    )


def pack(model: ModelSpec, samples: Iterable[Sample], window: int = DEFAULT_WINDOW) -> list[MicroBatchMeta]:
    """Pack ``samples`` with the packer of ``model.workload`` ("vlm", "t2v" or "text")."""
    if model.workload == "t2v":
        return pack_clips(samples, model, window)
    if model.workload in ("vlm", "text"):
        return pack_sequences(samples, PackLimits.for_model(model))
    raise BadInput(f"unknown workload {model.workload!r} of model {model.name}; valid workloads: vlm, t2v, text")


def to_batches(microbatches: Sequence[MicroBatchMeta], per_batch: int, first_index: int = 0) -> list[BatchMeta]:
    """Cut micro-batches into global batches of ``per_batch``; a last partial batch is kept."""
    if per_batch < 1:
        raise BadInput(f"microbatches per batch must be >= 1, got {per_batch}")
    return [
        BatchMeta(microbatches=tuple(microbatches[i : i + per_batch]), index=first_index + k)
        for k, i in enumerate(range(0, len(microbatches), per_batch))
    ]


@dataclass(frozen=True)
class DocumentMeta:
    """One real sample as the whole-sample packer sees it (from a dataset's metadata pass).

    ``index``: the sample's index in its dataset; ``text_tokens``: LM tokens that are not image tokens
    (a T2V caption's tokens); ``image_tokens`` / ``image_patches``: per image, merged LM tokens and
    ViT patches; ``clip_tokens`` / ``clip_seconds``: the DiT tokens and duration of its video clip
    (0: none).
    """

    index: int
    text_tokens: int
    image_tokens: tuple[int, ...] = ()
    image_patches: tuple[int, ...] = ()
    clip_tokens: int = 0
    clip_seconds: float = 0.0

    @property
    def lm_tokens(self) -> int:
        return self.text_tokens + int(sum(self.image_tokens))


def pack_documents(
    docs: Iterable[DocumentMeta], *, context_length: int, max_images: int = 0, max_clips: int = 0
) -> list[MicroBatchMeta]:
    """Greedy next-fit of whole samples into micro-batches (real data: a sample is never split).

    A VLM / text micro-batch holds at most ``context_length`` LM tokens and ``max_images`` images;
    a T2V micro-batch (documents with clips) at most ``max_clips`` clips and ``context_length``
    caption tokens. Every micro-batch lists its samples' dataset indices (``sample_ids``) and, per
    image, its LM tokens and ViT patches. A document that alone exceeds a limit raises
    :class:`BadInput` (readers skip such samples before packing).
    """
    out: list[MicroBatchMeta] = []
    group: list[DocumentMeta] = []
    used = {"tokens": 0, "images": 0, "clips": 0}

    def close() -> None:
        if group:
            out.append(_document_microbatch(group))
        group.clear()
        used.update(tokens=0, images=0, clips=0)

    for doc in docs:
        tokens = doc.text_tokens if doc.clip_tokens else doc.lm_tokens
        need = {"tokens": tokens, "images": len(doc.image_tokens), "clips": 1 if doc.clip_tokens else 0}
        limits = {"tokens": context_length, "images": max_images, "clips": max_clips}
        for key, n in need.items():
            if n > limits[key]:
                raise BadInput(f"sample {doc.index} needs {n} {key} but a micro-batch holds at most {limits[key]}")
        if any(used[k] + need[k] > limits[k] for k in need):
            close()
        group.append(doc)
        for k in need:
            used[k] += need[k]
    close()
    return out


def _document_microbatch(docs: Sequence[DocumentMeta]) -> MicroBatchMeta:
    clips = [k for k, d in enumerate(docs) if d.clip_tokens]
    has_images = any(d.image_tokens for d in docs)
    return MicroBatchMeta(
        text_lens=tuple(d.text_tokens for d in docs),
        image_counts=tuple(len(d.image_tokens) for d in docs) if has_images else (),
        clip_tokens=tuple(docs[k].clip_tokens for k in clips),
        clip_seconds=tuple(docs[k].clip_seconds for k in clips),
        clip_sample=tuple(clips),
        image_tokens=tuple(t for d in docs for t in d.image_tokens),
        image_patches=tuple(p for d in docs for p in d.image_patches),
        sample_ids=tuple(d.index for d in docs),
    )
