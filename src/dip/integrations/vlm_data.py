"""Real vision-language data for a transformers VLM: the model's tokenizer and image processor over
LLaVA-style rows, with labels on the assistant turns only.

:class:`VlmProcessor` is the metadata pass's :class:`~dip.data.metadata.Measurer` *and* the encoder of
samples, so token counts planned from metadata are exactly the tokens later loaded. A conversation is
rendered with the tokenizer's chat template (images as the template's image items), every image item
expanded to the image's number of merged tokens, and tokenised once; tokens inside an assistant
turn's text (and the end-of-turn token after it) are labelled, everything else is ``-100``.

:class:`VlmData` is the dataset: good rows (bad ones skipped and counted, or an error under
``strict``), their metadata (what the planner packs), and lazy per-sample loads (token ids and labels
for the LM, one image's pixels for the vision tower), memoised per process.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch

from dip.data.formats import PLACEHOLDER, open_image_bytes, read_rows
from dip.data.metadata import scan
from dip.data.records import BadSample, SampleMeta, T2vRow, VlmRow
from dip.errors import BadInput
from dip.integrations.dataset import SampleDataset

__all__ = ["EncodedText", "ImageRule", "VlmData", "VlmProcessor"]

log = logging.getLogger(__name__)
IGNORE = -100


@dataclass(frozen=True)
class EncodedText:
    """A tokenised conversation: ``input_ids`` and ``labels`` (``-100`` outside assistant turns)."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]


@dataclass(frozen=True)
class ImageRule:
    """How a family turns an image of (width, height) into patches: ``grid(w, h) -> (t, h, w)`` in
    patches, and ``merge`` (merged tokens = patches / merge**2)."""

    grid: Callable[[int, int], tuple[int, int, int]]
    merge: int


class VlmProcessor:
    """Tokenizer + image processor of a checkpoint folder, as measurer and encoder."""

    def __init__(
        self,
        folder: str,
        *,
        image_processor: Any,
        image_rule: ImageRule,
        image_token: str,
        context_length: int,
        family: str,
    ):
        from transformers import AutoTokenizer  # the checkpoint's own tokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        if not getattr(self.tokenizer, "chat_template", None):
            raise BadInput(f"checkpoint {folder!r}: the tokenizer has no chat template")
        self.image_processor = image_processor
        self.rule = image_rule
        self.image_token = image_token
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(image_token)
        self.end_of_turn = self.tokenizer.eos_token or ""
        self.context_length = context_length
        self.identity = self._identity(folder, family)

    def _identity(self, folder: str, family: str) -> str:
        h = hashlib.sha256(f"{family}\0{self.context_length}\0{self.tokenizer.chat_template}".encode())
        for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json", "vocab.json", "merges.txt"):
            p = os.path.join(folder, name)
            if os.path.exists(p):
                with open(p, "rb") as f:
                    h.update(f.read())
        return h.hexdigest()

    # ------------------------------------------------------------------ text
    def _messages(self, row: VlmRow) -> list[dict]:
        out = []
        for turn in row.turns:
            if PLACEHOLDER not in turn.text:
                out.append({"role": turn.role, "content": turn.text})
                continue
            content = []
            for k, piece in enumerate(turn.text.split(PLACEHOLDER)):
                if k:
                    content.append({"type": "image"})
                if piece:
                    content.append({"type": "text", "text": piece})
            out.append({"role": turn.role, "content": content})
        return out

    def encode(self, row: VlmRow, image_tokens: tuple[int, ...]) -> EncodedText:
        """Token ids and labels of ``row`` whose images have ``image_tokens`` merged tokens each."""
        text = self.tokenizer.apply_chat_template(self._messages(row), tokenize=False)
        pieces = text.split(self.image_token)
        if len(pieces) - 1 != len(image_tokens):
            raise BadSample(
                row.source,
                row.line,
                f"the chat template placed {len(pieces) - 1} images, the sample has {len(image_tokens)}",
            )
        expanded = pieces[0] + "".join(self.image_token * n + p for n, p in zip(image_tokens, pieces[1:]))
        spans = self._assistant_spans(row, expanded)
        enc = self.tokenizer(expanded, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        labels = [
            t if any(a <= s and e <= b for a, b in spans) and e > s else IGNORE
            for t, (s, e) in zip(ids, enc["offset_mapping"])
        ]
        return EncodedText(tuple(ids), tuple(labels))

    def _assistant_spans(self, row: VlmRow, text: str) -> list[tuple[int, int]]:
        spans, cursor = [], 0
        for turn in row.turns:
            if turn.role != "assistant" or not turn.text:
                continue
            at = text.find(turn.text, cursor)
            if at < 0:
                raise BadSample(row.source, row.line, "an assistant turn is not in the rendered chat template")
            end = at + len(turn.text)
            if self.end_of_turn and text.startswith(self.end_of_turn, end):
                end += len(self.end_of_turn)
            spans.append((at, end))
            cursor = end
        return spans

    # ------------------------------------------------------------------ images
    def image_grid(self, width: int, height: int) -> tuple[int, int, int]:
        return self.rule.grid(width, height)

    def pixels(self, image: Any) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """The processor's pixel rows ``[patches, C * T * P * P]`` (float32) and grid of one PIL image."""
        got = self.image_processor(images=[image], return_tensors="pt")
        grid = tuple(int(x) for x in got["image_grid_thw"][0])
        return got["pixel_values"].to(torch.float32), grid

    # ------------------------------------------------------------------ measurer
    def measure_vlm(self, row: VlmRow, image_sizes: tuple[tuple[int, int], ...]) -> SampleMeta:
        grids = tuple(self.image_grid(w, h) for w, h in image_sizes)
        patches = tuple(t * h * w for t, h, w in grids)
        tokens = tuple(p // self.rule.merge**2 for p in patches)
        enc = self.encode(row, tokens)
        total = len(enc.input_ids)
        if total > self.context_length:
            raise BadSample(
                row.source, row.line, f"{total} tokens exceed the context length {self.context_length}", "too_long"
            )
        loss = sum(1 for lab in enc.labels[1:] if lab != IGNORE)
        if loss == 0:
            raise BadSample(row.source, row.line, "no labelled (assistant) token")
        return SampleMeta(
            row.source,
            row.line,
            row.id,
            text_tokens=total - sum(tokens),
            loss_tokens=loss,
            image_sizes=image_sizes,
            image_grids=grids,
            image_patches=patches,
            image_tokens=tokens,
        )

    def measure_t2v(self, row: T2vRow, latent_shape: tuple[int, ...]) -> SampleMeta:
        raise BadSample(row.source, row.line, "a text-to-video row given to a vision-language model")


class VlmData(SampleDataset):
    """A VLM dataset (LLaVA JSONL or WebDataset shards) measured and encoded by ``processor``."""

    _CACHES = ("_text", "_image")

    def __init__(
        self,
        path: str,
        processor: VlmProcessor,
        *,
        strict: bool = False,
        fmt: str | None = None,
        use_cache: bool = True,
    ):
        self.processor = processor
        self._measured(path, scan(path, processor, fmt=fmt, use_cache=use_cache), strict)
        wanted = {(m.source, m.line) for m in self.metas}
        rows = {
            (r.source, r.line): r
            for r in read_rows(path, fmt)
            if isinstance(r, VlmRow) and (r.source, r.line) in wanted
        }
        self.rows = [rows[(m.source, m.line)] for m in self.metas]

    def _make_caches(self) -> None:
        self._text = lru_cache(maxsize=4096)(self._load_text)
        self._image = lru_cache(maxsize=1024)(self._load_image)

    def sample(self, index: int) -> VlmSample:
        return VlmSample(self, index)

    def text(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, labels)`` of sample ``index`` (long tensors)."""
        return self._item(("text", index), lambda: self._text(index))

    def image(self, index: int, k: int) -> torch.Tensor:
        """Pixel rows of image ``k`` of sample ``index`` (float32)."""
        return self._item(("image", index, k), lambda: self._image(index, k))

    def load(self, key: tuple) -> Any:
        """One item for the trainer's data loader (runs in its worker processes): ``("text", i)`` ->
        ``(input_ids, labels)``, ``("image", i, k)`` -> pixel rows."""
        if key[0] == "text":
            return self._load_text(key[1])
        if key[0] == "image":
            return self._load_image(key[1], key[2])
        raise KeyError(f"unknown data key {key!r}")

    def _load_text(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.metas[index]
        enc = self.processor.encode(self.rows[index], m.image_tokens)
        if len(enc.input_ids) != m.lm_tokens:
            raise RuntimeError(
                f"{m.source}:{m.line}: {len(enc.input_ids)} tokens, the metadata says "
                f"{m.lm_tokens} (stale metadata cache?)"
            )
        return torch.tensor(enc.input_ids, dtype=torch.long), torch.tensor(enc.labels, dtype=torch.long)

    def _load_image(self, index: int, k: int) -> torch.Tensor:
        from PIL import Image  # Pillow decodes the image here, and only here

        m, ref = self.metas[index], self.rows[index].images[k]
        try:
            with Image.open(open_image_bytes(ref)) as img:
                pixels, grid = self.processor.pixels(img.convert("RGB"))
        except OSError as exc:
            raise BadInput(f"{m.source}:{m.line}: image {ref.name} cannot be decoded ({exc})") from None
        if grid != tuple(m.image_grids[k]):
            raise RuntimeError(
                f"{m.source}:{m.line}: image {ref.name} has grid {grid}, the metadata says {m.image_grids[k]}"
            )
        return pixels


@dataclass(frozen=True)
class VlmSample:
    """A lazy view of one sample (what ``ByoUnit.samples()`` returns): nothing is loaded until asked."""

    data: VlmData
    index: int

    @property
    def meta(self) -> SampleMeta:
        return self.data.meta(self.index)

    def text(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data.text(self.index)

    def image(self, k: int) -> torch.Tensor:
        return self.data.image(self.index, k)
