"""Rows of real datasets and their metadata (what the planner needs, read without decoding pixels).

* :class:`VlmRow` / :class:`Turn` / :class:`ImageRef`: one LLaVA-style conversation with its images
  (a file, or a member of a WebDataset tar shard);
* :class:`T2vRow`: one caption with its pre-encoded VAE latents (a ``.safetensors`` file);
* :class:`SampleMeta`: the metadata pass's result for one row (token counts, per-image grids and
  tokens, latent shape), or the reason the row is a bad sample;
* :class:`BadSample`: raised by readers and measurers for one row; :class:`Skipped` counts them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

from dip.data.packing import DocumentMeta
from dip.errors import BadInput

__all__ = ["BadSample", "ImageRef", "SampleMeta", "Skipped", "T2vRow", "Turn", "VlmRow"]


class BadSample(Exception):
    """One row cannot be used (missing or corrupt image, too long, malformed); ``reason`` says why."""

    def __init__(self, source: str, line: int, reason: str, kind: str = "malformed"):
        super().__init__(f"{source}:{line}: {reason}")
        self.source, self.line, self.reason, self.kind = source, line, reason, kind

    def as_bad_input(self) -> BadInput:
        return BadInput(f"bad sample at {self.source}:{self.line}: {self.reason}")


@dataclass(frozen=True)
class Turn:
    """One conversation turn: ``role`` is ``user`` or ``assistant`` (``system`` allowed); ``text`` holds
    one ``<image>`` placeholder per image of the turn."""

    role: str
    text: str


@dataclass(frozen=True)
class ImageRef:
    """An image file (``member`` empty) or member ``member`` of the tar shard ``path``."""

    path: str
    member: str = ""

    @property
    def name(self) -> str:
        return f"{self.path}:{self.member}" if self.member else self.path


@dataclass(frozen=True)
class VlmRow:
    """One conversation sample: where it was read (``source`` file, 1-based ``line``), its images in
    placeholder order and its turns."""

    source: str
    line: int
    id: str
    images: tuple[ImageRef, ...]
    turns: tuple[Turn, ...]


@dataclass(frozen=True)
class T2vRow:
    """One text-to-video sample: a caption and the path of its latents (``.safetensors``)."""

    source: str
    line: int
    id: str
    caption: str
    latents: str


@dataclass(frozen=True)
class SampleMeta:
    """The metadata of one row (JSON-serialisable; cached beside the data).

    VLM: ``text_tokens`` (LM tokens that are not image tokens), ``loss_tokens`` (labelled tokens,
    i.e. assistant turns), per image ``image_sizes`` ((width, height) from the file header),
    ``image_grids`` ((t, h, w) patch grid after the model's resize), ``image_patches`` and
    ``image_tokens``. T2V: ``text_tokens`` (caption), ``latent_shape`` ((C, F, H, W)), ``clip_tokens``
    and ``loss_tokens`` (latent elements predicted). ``error`` is non-empty for a bad sample.
    """

    source: str
    line: int
    id: str
    text_tokens: int = 0
    loss_tokens: int = 0
    image_sizes: tuple[tuple[int, int], ...] = ()
    image_grids: tuple[tuple[int, int, int], ...] = ()
    image_patches: tuple[int, ...] = ()
    image_tokens: tuple[int, ...] = ()
    latent_shape: tuple[int, ...] = ()
    clip_tokens: int = 0
    clip_seconds: float = 0.0
    error: str = ""
    error_kind: str = ""

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def lm_tokens(self) -> int:
        return self.text_tokens + sum(self.image_tokens)

    def document(self, index: int) -> DocumentMeta:
        """What the whole-sample packer needs, as sample ``index`` of the dataset."""
        return DocumentMeta(
            index=index,
            text_tokens=self.text_tokens,
            image_tokens=self.image_tokens,
            image_patches=self.image_patches,
            clip_tokens=self.clip_tokens,
            clip_seconds=self.clip_seconds,
        )

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> SampleMeta:
        tuples = {"image_sizes", "image_grids"}
        kw = {}
        for k, v in d.items():
            if k in tuples:
                kw[k] = tuple(tuple(x) for x in v)
            elif isinstance(v, list):
                kw[k] = tuple(v)
            else:
                kw[k] = v
        return cls(**kw)

    @classmethod
    def bad(cls, exc: BadSample, id: str = "") -> SampleMeta:
        return cls(source=exc.source, line=exc.line, id=id, error=exc.reason, error_kind=exc.kind)


@dataclass
class Skipped:
    """Bad samples left out of a dataset, counted by kind (``missing_image``, ``corrupt_image``,
    ``too_long``, ``malformed``), with the first few reasons."""

    total: int = 0
    by_kind: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def add(self, meta: SampleMeta) -> None:
        self.total += 1
        self.by_kind[meta.error_kind or "malformed"] += 1
        if len(self.examples) < 5:
            self.examples.append(f"{meta.source}:{meta.line}: {meta.error}")
