"""Synthetic, deterministic unit inputs that every rank makes locally.

Each sample's tokens, each image's pixels and each clip's latents/noise/timestep are drawn from a
generator seeded by ``(step_seed, mb_index, kind, instance index)`` only, so any split of a micro-batch
into units sees exactly the data of the whole micro-batch. Only boundary activations travel.

Decoder layout (see :mod:`dip.data.tensors`): per sample, its images' merged tokens then its text;
positions restart at 0 for every sample. Text position ``j < text_len - 1`` of a sample is labelled
with the sample's token ``j + 1``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from dip.data.meta import MicroBatchMeta, lm_sequence_lens
from dip.data.tensors import caption_lens, dit_latent_grid, image_tokens, resolve_range
from dip.runtime.models import layers
from dip.runtime.models.seeding import generator, torch_dtype
from dip.runtime.models.sequence import SequenceShard
from dip.spec.model import ModelSpec, ModuleSpec


@dataclass
class UnitData:
    """Local inputs of one unit of one module (fields unused by a kind stay ``None``).

    ``seq_lens``: self-attention blocks (images, samples or clips); ``cond_lens``: caption length of each
    clip (DiT cross-attention); ``payload``: free slot for bring-your-own models.
    """

    module: str
    kind: str
    mb_index: int
    start: int
    stop: int
    seq_lens: tuple[int, ...]
    cond_lens: tuple[int, ...] = ()
    pixels: Tensor | None = None  # vit: [n, C, S, S]
    token_ids: Tensor | None = None  # decoder: [text_tokens] (sample after sample)
    seq_index: Tensor | None = None  # decoder: row of cat(text_emb, image_embeds) at each position
    positions: Tensor | None = None  # decoder / dit: RoPE positions (restart per sample / clip)
    loss_positions: Tensor | None = None  # decoder: positions that carry a label
    labels: Tensor | None = None  # decoder: next-token label at each loss position
    text_positions: Tensor | None = None  # decoder: positions of the text tokens, in text order
    latents: list[Tensor] | None = None  # dit: clean latents [C, F*pt, R*ph, W*pw] per clip
    noise: list[Tensor] | None = None  # dit: noise like the latents
    timesteps: Tensor | None = None  # dit: [n_clips] in (0, 1)
    clip_of_token: Tensor | None = None  # dit: clip index (within the unit) of each token
    payload: Any = None
    shard: SequenceShard | None = None  # sequence parallelism: this rank's rows of the packed sequence
    cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def device(self) -> torch.device:
        for t in (self.pixels, self.token_ids, self.timesteps, self.positions):
            if t is not None:
                return t.device
        return torch.device("cpu")

    @property
    def tokens(self) -> int:
        """Rows of the unit's packed sequence (before any sequence-parallel padding)."""
        return sum(self.seq_lens)

    @property
    def padding(self) -> int:
        """Zero rows appended under sequence parallelism (a document of their own in attention)."""
        return self.shard.padding(self.tokens) if self.shard is not None else 0

    def self_mask(self, causal: bool) -> layers.Segments:
        """Who attends to whom in self-attention: each block (sample / image / clip) on its own."""
        pad = self.padding
        return layers.Segments.self_attention(self.seq_lens + ((pad,) if pad else ()), causal)

    def cross_mask(self) -> layers.Segments:
        """Cross-attention: clip ``i`` attends to its caption only (padding rows to nothing)."""
        seg = layers.Segments.cross_attention(self.seq_lens, self.cond_lens)
        pad = self.padding
        return layers.Segments(seg.q_lens + (pad,), seg.kv_lens + (0,)) if pad else seg

    def rope(self, head_dim: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        key = ("rope", head_dim, dtype)
        if key not in self.cache:
            positions = self.positions
            if self.padding:
                positions = torch.cat([positions, positions.new_zeros(self.padding)])
            self.cache[key] = layers.rope_tables(positions, head_dim, dtype)
        return self.cache[key]

    def clip_pieces(self) -> tuple[tuple[int, int], ...]:
        """``(rows, block)`` runs of the rows this rank holds, in order: which document (clip) each run of
        the packed sequence belongs to (the sequence-parallel padding joins the last document)."""
        got = self.cache.get("clip_pieces")
        if got is None:
            lens = list(self.seq_lens)
            if lens and self.padding:
                lens[-1] += self.padding
            lo, hi = self.shard.bounds(self.tokens) if self.shard is not None else (0, sum(lens))
            pieces, start = [], 0
            for i, n in enumerate(lens):
                a, b = max(start, lo), min(start + n, hi)
                if b > a:
                    pieces.append((b - a, i))
                start += n
            got = self.cache["clip_pieces"] = tuple(pieces)
        return got

    def token_rows(self, t: Tensor) -> Tensor:
        """The rows of a per-token tensor this rank holds (all of them without sequence parallelism)."""
        return t if self.shard is None else self.shard.local(t)


def make_unit_data(
    model: ModelSpec,
    mb: MicroBatchMeta,
    mb_index: int,
    module_name: str,
    start: int,
    stop: int,
    step_seed: int,
    dtype: torch.dtype | str = torch.float32,
    device: torch.device | str | None = None,
) -> UnitData:
    """Inputs of unit ``(module_name, mb_index, [start, stop))`` (``0, 0`` = all instances)."""
    m = model.module(module_name)
    dtype = torch_dtype(dtype)
    a, b = resolve_range(m, mb, start, stop)
    ident = dict(module=m.name, kind=m.kind, mb_index=mb_index, start=a, stop=b)
    if m.kind == "vit":
        data = _vit_data(m, mb_index, a, b, step_seed, dtype, ident)
    elif m.kind == "decoder":
        data = _decoder_data(model, m, mb, mb_index, step_seed, ident)
    elif m.kind == "dit":
        data = _dit_data(m, mb, mb_index, a, b, step_seed, dtype, ident)
    else:
        raise ValueError(f"unknown module kind {m.kind!r}")
    return _to_device(data, device) if device is not None else data


def _vit_data(m: ModuleSpec, mb_index: int, a: int, b: int, step_seed: int, dtype, ident: dict) -> UnitData:
    shape = (m.in_channels, m.image_size, m.image_size)
    pix = [torch.randn(shape, generator=generator(step_seed, mb_index, "image", i)) for i in range(a, b)]
    pixels = torch.stack(pix).to(dtype) if pix else torch.zeros((0, *shape), dtype=dtype)
    return UnitData(**ident, seq_lens=(m.patches_per_image,) * (b - a), pixels=pixels)


def _decoder_data(
    model: ModelSpec, m: ModuleSpec, mb: MicroBatchMeta, mb_index: int, step_seed: int, ident: dict
) -> UnitData:
    tpi = image_tokens(model)
    n_text = mb.text_tokens
    tokens, seq_index, loss_pos, labels, text_pos = [], [], [], [], []
    text_off = img_off = pos = 0
    for s, (t, imgs) in enumerate(zip(mb.text_lens, mb.image_counts_or_zero())):
        ids = torch.randint(m.vocab_size, (t,), generator=generator(step_seed, mb_index, "text", s))
        tokens.append(ids)
        k = imgs * tpi
        seq_index.extend(range(n_text + img_off, n_text + img_off + k))
        seq_index.extend(range(text_off, text_off + t))
        first_text = pos + k
        text_pos.extend(range(first_text, first_text + t))
        loss_pos.extend(range(first_text, first_text + max(t - 1, 0)))
        labels.append(ids[1:])
        text_off, img_off, pos = text_off + t, img_off + k, pos + k + t
    seq_lens = lm_sequence_lens(model, mb)
    long = dict(dtype=torch.long)
    return UnitData(
        **ident,
        seq_lens=seq_lens,
        token_ids=torch.cat(tokens) if tokens else torch.zeros(0, **long),
        seq_index=torch.tensor(seq_index, **long),
        positions=layers.positions_in_blocks(seq_lens),
        loss_positions=torch.tensor(loss_pos, **long),
        labels=torch.cat(labels) if labels else torch.zeros(0, **long),
        text_positions=torch.tensor(text_pos, **long),
    )


def _dit_data(
    m: ModuleSpec, mb: MicroBatchMeta, mb_index: int, a: int, b: int, step_seed: int, dtype, ident: dict
) -> UnitData:
    latents, noise, steps = [], [], []
    for c in range(a, b):
        f, r, w = dit_latent_grid(m, mb.clip_tokens[c])
        shape = (m.latent_channels, f * m.patch_t, r * m.patch_hw, w * m.patch_hw)
        g = generator(step_seed, mb_index, "clip", c)
        latents.append(torch.randn(shape, generator=g).to(dtype))
        noise.append(torch.randn(shape, generator=g).to(dtype))
        steps.append(torch.rand((), generator=g).to(dtype))
    seq_lens = tuple(mb.clip_tokens[a:b])
    return UnitData(
        **ident,
        seq_lens=seq_lens,
        cond_lens=caption_lens(mb, a, b),
        latents=latents,
        noise=noise,
        timesteps=torch.stack(steps) if steps else torch.zeros(0, dtype=dtype),
        positions=layers.positions_in_blocks(seq_lens),
        clip_of_token=layers.segment_ids(seq_lens),
    )


def _to_device(data: UnitData, device) -> UnitData:
    for name in (
        "pixels",
        "token_ids",
        "seq_index",
        "positions",
        "loss_positions",
        "labels",
        "text_positions",
        "timesteps",
        "clip_of_token",
    ):
        t = getattr(data, name)
        if t is not None:
            setattr(data, name, t.to(device))
    for name in ("latents", "noise"):
        ts = getattr(data, name)
        if ts is not None:
            setattr(data, name, [t.to(device) for t in ts])
    return data
