"""transformers vision-language models as DIP models, written against the structure they share.

A VLM is a vision tower (patch embedding, ``depth`` blocks), a merger / projector into the LM's
embedding space, and a causal LM (token embedding, decoder layers, final norm, LM head). A
:class:`VlmFamily` says, for one family, which transformers classes form these parts, how the
checkpoint names them (:class:`VlmNames`), how an image becomes patches, and how the LM's rotary
positions are computed; :func:`build_vlm` turns a checkpoint folder into a
:class:`~dip.runtime.byo.ByoModel` with two modules:

* ``vision`` (kind ``vit``): one instance per image, split into image sub-microbatches by the
  planner; between chunks ``hidden [patches of the unit's images, embed_dim]``; its last chunk sends
  ``image_embeds [merged tokens of the unit's images, hidden]``; attention stays within each image;
* ``llm`` (kind ``decoder``): the micro-batch's samples packed into one sequence; its first chunk
  receives the concatenation of every vision unit's ``image_embeds`` (image order) and writes them at
  the image-token positions; attention is causal within each sample, per document, never through a
  ``[T, T]`` mask (:mod:`dip.integrations.attention`); the last chunk sums the token cross-entropy of
  the labelled (assistant) tokens.

Every part is built from the checkpoint config and filled from the checkpoint's safetensors files
with only its own tensors. A tied LM head is a second copy of the input embedding, declared as a tie.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dip.data.meta import MicroBatchMeta
from dip.errors import BadInput
from dip.integrations.attention import register_packed_attention
from dip.integrations.checkpoint import SafetensorsWeights, load_part, write_weights
from dip.integrations.vlm_data import ImageRule, VlmData, VlmProcessor
from dip.runtime.byo import ByoModel, ByoModule, ByoUnit
from dip.runtime.models.sequence import cross_entropy_sum
from dip.spec.model import Edge, ModelSpec, ModuleSpec, ParallelSpec

__all__ = ["HfVlmModel", "TextUnit", "VisionUnit", "VlmFamily", "VlmNames", "build_vlm"]

log = logging.getLogger(__name__)
VISION, LLM = "vision", "llm"
MAX_CONTEXT = 8192


@dataclass(frozen=True)
class VlmNames:
    """Checkpoint name prefixes of the common structure (``{i}``: layer index)."""

    vision_pre: str
    vision_block: str
    merger: str
    embed: str
    layer: str
    norm: str
    lm_head: str

    def to_checkpoint(self, canonical: str) -> str:
        """``vision.layers.3.attn.qkv.weight`` -> ``visual.blocks.3.attn.qkv.weight`` (and so on)."""
        module, rest = canonical.split(".", 1)
        if module == VISION:
            if rest.startswith("pre."):
                return self.vision_pre + rest[4:]
            if rest.startswith("post."):
                return self.merger + rest[5:]
            _, i, name = rest.split(".", 2)
            return self.vision_block.format(i=i) + name
        if rest.startswith("pre.embed_tokens."):
            return self.embed + rest[len("pre.embed_tokens.") :]
        if rest.startswith("post.norm."):
            return self.norm + rest[len("post.norm.") :]
        if rest.startswith("post.lm_head."):
            return self.lm_head + rest[len("post.lm_head.") :]
        _, i, name = rest.split(".", 2)
        return self.layer.format(i=i) + name


@dataclass(frozen=True)
class VlmFamily:
    """Everything family-specific (see :mod:`dip.integrations.qwen2_vl` for a complete one).

    Part factories take the checkpoint config: ``vision_pre(cfg)`` -> ``forward(inputs, data: VisionUnit)``,
    ``vision_block(cfg, i)`` -> ``forward(hidden, data)``, ``merger(cfg)`` -> ``forward(hidden, data) ->
    {"image_embeds"}``, ``text_layer(cfg, i)`` -> ``forward(hidden, data: TextUnit)``;
    ``text_norm(cfg)``; ``vision_rope(cfg)`` / ``text_rope(cfg)``: the rotary modules (no weights);
    ``position_ids(input_ids, grids, cfg) -> [3, T]``; ``image_processor(folder)``; ``image_rule(cfg, ip)``.
    """

    name: str
    model_types: tuple[str, ...]
    names: VlmNames
    vision_pre: Callable[[Any], nn.Module]
    vision_block: Callable[[Any, int], nn.Module]
    merger: Callable[[Any], nn.Module]
    text_layer: Callable[[Any, int], nn.Module]
    text_norm: Callable[[Any], nn.Module]
    vision_rope: Callable[[Any], nn.Module]
    text_rope: Callable[[Any], nn.Module]
    position_ids: Callable[[Tensor, list[tuple[int, int, int]], Any], Tensor]
    vision_positions: Callable[[list[tuple[int, int, int]], Any], Tensor]
    image_processor: Callable[[str], Any]
    image_rule: Callable[[Any, Any], ImageRule]
    image_token: str = "<|image_pad|>"
    # tensor parallelism: tp_plan(module, part) -> parallelize_module plan of a part ("pre", "block",
    # "post" of "vision" or "llm"); tp_gathered(module, part) -> {submodule: sequence dim} whose saved
    # inputs keep only the rank's rows (dip.runtime.parallel); None: the family runs with --tp 1 only
    tp_plan: Callable[[str, str], Any] | None = None
    tp_gathered: Callable[[str, str], Mapping[str, int]] | None = None


def _padding(data: Any, tokens: int) -> int:
    """Sequence-parallel padding rows of a unit (``data.shard``, set under tensor parallelism)."""
    shard = getattr(data, "shard", None)
    return shard.padding(tokens) if shard is not None else 0


def _pad_rows(t: Tensor, pad: int, dim: int = 0) -> Tensor:
    if not pad:
        return t
    shape = list(t.shape)
    shape[dim] = pad
    return torch.cat([t, t.new_zeros(shape)], dim=dim)


class VisionUnit:
    """Local inputs of a vision unit: its images' grids, per-image sequence bounds, rotary tables and
    (loaded on first use, so only the vision tower's first chunk reads them) pixels. Under sequence
    parallelism (``shard``) the padding rows are one more document with zero rotary tables."""

    shard: Any = None

    def __init__(self, model: HfVlmModel, unit: ByoUnit):
        self.model, self.unit = model, unit
        data = model.source
        self.images: list[tuple[int, int]] = []  # (dataset index, image k) of each image of the unit
        for i in unit.mb.sample_ids:
            self.images += [(i, k) for k in range(len(data.meta(i).image_grids))]
        self.images = self.images[unit.start : unit.stop]
        self.grids = [tuple(data.meta(i).image_grids[k]) for i, k in self.images]
        lens = torch.tensor([t * h * w for t, h, w in self.grids], dtype=torch.long)
        self._cu_seqlens = torch.nn.functional.pad(lens.cumsum(0), (1, 0)).to(torch.int32)
        self.tokens = int(self._cu_seqlens[-1])
        self._rope = None

    @property
    def cu_seqlens(self) -> Tensor:
        pad = _padding(self, self.tokens)
        return torch.cat([self._cu_seqlens, self._cu_seqlens[-1:] + pad]) if pad else self._cu_seqlens

    def pixels(self) -> Tensor:
        rows = [self.model.source.image(i, k) for i, k in self.images]
        return torch.cat(rows).to(self.unit.dtype)

    def rope(self) -> tuple[Tensor, Tensor]:
        if self._rope is None:
            pos = self.model.family.vision_positions(self.grids, self.model.config.vision_config)
            dummy = torch.zeros(1, dtype=self.unit.dtype)
            pad = _padding(self, self.tokens)
            self._rope = tuple(_pad_rows(t, pad) for t in self.model.vision_rope(dummy, pos))
        return self._rope


class TextUnit:
    """Local inputs of an LM unit: the packed token ids, the image-token rows, per-sample lengths, the
    family's rotary positions, and the labelled rows with their next-token targets. Under sequence
    parallelism (``shard``) the padding rows are one more document at position 0."""

    shard: Any = None

    def __init__(self, model: HfVlmModel, unit: ByoUnit):
        self.model, self.unit = model, unit
        ids, loss_rows, targets, lens, positions, grids_all = [], [], [], [], [], []
        off = 0
        for sample in unit.samples():
            input_ids, labels = sample.text()
            grids = [tuple(g) for g in sample.meta.image_grids]
            positions.append(model.family.position_ids(input_ids, grids, model.config))
            keep = (labels[1:] != -100).nonzero().flatten()
            loss_rows.append(keep + off)
            targets.append(labels[1:][keep])
            ids.append(input_ids)
            lens.append(len(input_ids))
            off += len(input_ids)
            grids_all += grids
        self.input_ids = torch.cat(ids)
        self.tokens = len(self.input_ids)
        self.image_rows = (self.input_ids == model.image_token_id).nonzero().flatten()
        self.loss_rows, self.targets = torch.cat(loss_rows), torch.cat(targets)
        self._doc_lens = tuple(lens)
        self.position_ids = torch.cat(positions, dim=1)[:, None, :]  # [3, 1, T]
        self._rope: dict = {}

    @property
    def doc_lens(self) -> tuple[int, ...]:
        pad = _padding(self, self.tokens)
        return self._doc_lens + ((pad,) if pad else ())

    def rope(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        if dtype not in self._rope:
            positions = _pad_rows(self.position_ids, _padding(self, self.tokens), dim=2)
            self._rope[dtype] = self.model.text_rope(torch.zeros(1, dtype=dtype), positions)
        return self._rope[dtype]


class TextPre(nn.Module):
    """Token embedding; the vision tower's ``image_embeds`` replace the image tokens' embeddings."""

    def __init__(self, config: Any):
        super().__init__()
        text = config.text_config
        self.embed_tokens = nn.Embedding(text.vocab_size, text.hidden_size)

    def forward(self, inputs: dict[str, Tensor], data: TextUnit) -> Tensor:
        hidden = self.embed_tokens(data.input_ids)
        if len(data.image_rows):
            images = inputs["image_embeds"]
            if images.shape[0] != len(data.image_rows):
                raise ValueError(f"{len(data.image_rows)} image tokens but {images.shape[0]} image embeddings")
            hidden = hidden.index_put((data.image_rows,), images.to(hidden.dtype))
        return hidden


class TextPost(nn.Module):
    """Final norm and LM head; the summed cross-entropy of the labelled next tokens."""

    def __init__(self, config: Any, norm: nn.Module):
        super().__init__()
        text = config.text_config
        self.norm = norm
        self.lm_head = nn.Linear(text.hidden_size, text.vocab_size, bias=False)

    def forward(self, hidden: Tensor, data: TextUnit) -> dict[str, Tensor]:
        hidden = self.norm(hidden)
        if data.shard is not None:  # leave the sequence-parallel region for the labelled rows
            hidden = data.shard.gather(hidden, data.tokens)
        logits = self.lm_head(hidden[data.loss_rows])  # vocabulary-parallel under tensor parallelism
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        return {"loss_sum": cross_entropy_sum(logits, data.targets)}


def _load_config(folder: str) -> Any:
    from transformers import AutoConfig  # the checkpoint's own config class

    return AutoConfig.from_pretrained(folder)


def vlm_spec(family: VlmFamily, config: Any, name: str) -> ModelSpec:
    """The planner's view of the checkpoint: layers, widths, heads, vocabulary and patch sizes."""
    v, t = config.vision_config, config.text_config
    vision = ModuleSpec(
        VISION,
        "vit",
        v.depth,
        v.embed_dim,
        int(v.embed_dim * v.mlp_ratio),
        v.num_heads,
        v.num_heads,
        image_size=v.patch_size * v.spatial_merge_size * 16,
        patch_size=v.patch_size,
        spatial_merge=v.spatial_merge_size,
        in_channels=v.in_channels * v.temporal_patch_size,
        out_hidden=t.hidden_size,
    )
    llm = ModuleSpec(
        LLM,
        "decoder",
        t.num_hidden_layers,
        t.hidden_size,
        t.intermediate_size,
        t.num_attention_heads,
        t.num_key_value_heads,
        vocab_size=t.vocab_size,
        lm_head=True,
    )
    context = min(int(getattr(t, "max_position_embeddings", MAX_CONTEXT)), MAX_CONTEXT)
    return ModelSpec(
        name,
        (vision, llm),
        (Edge(VISION, LLM, "image_embeddings"),),
        ParallelSpec(),
        workload="vlm",
        context_length=context,
        description=f"{family.name} checkpoint",
    )


def _images(mb: MicroBatchMeta) -> list[tuple[int, int]]:
    """``(dataset index, image k)`` of every image of ``mb``, in micro-batch order."""
    return [(i, k) for i, n in zip(mb.sample_ids, mb.image_counts_or_zero()) for k in range(n)]


class HfVlmModel(ByoModel):
    """A transformers VLM checkpoint as a DIP model (see the module docstring)."""

    requires_data = True  # token ids, labels and pixels come from a dataset (open_data)

    def __init__(
        self,
        folder: str,
        family: VlmFamily,
        *,
        seed: int = 0,
        dtype: torch.dtype | str = torch.float32,
        device: torch.device | str | None = None,
    ):
        self.folder, self.family = os.path.abspath(folder), family
        self.config = _load_config(folder)
        self.config.vision_config._attn_implementation = "sdpa"  # transformers splits images itself
        self.config.text_config._attn_implementation = register_packed_attention()
        self.weights = SafetensorsWeights(folder)
        names = family.names
        text = self.config.text_config
        self.tied = bool(
            getattr(self.config, "tie_word_embeddings", False) or getattr(text, "tie_word_embeddings", False)
        )
        spec = vlm_spec(family, self.config, os.path.basename(self.folder.rstrip(os.sep)) or family.name)
        cfg = self.config

        def loaded(part: nn.Module, prefix: str) -> nn.Module:
            return load_part(part, self.weights, lambda k: prefix + k)

        def text_post() -> nn.Module:
            post = TextPost(cfg, family.text_norm(cfg))
            head = names.lm_head + "weight"
            load_part(post.norm, self.weights, lambda k: names.norm + k)
            source = head if head in self.weights else names.embed + "weight"
            load_part(post.lm_head, self.weights, lambda k: source)
            return post

        vision = ByoModule(
            make_pre=lambda: loaded(family.vision_pre(cfg), names.vision_pre),
            make_block=lambda i: loaded(family.vision_block(cfg, i), names.vision_block.format(i=i)),
            make_post=lambda: loaded(family.merger(cfg), names.merger),
            hidden_shape=lambda mb, a, b: (sum(mb.image_patches[a:b]), cfg.vision_config.embed_dim),
            instances=lambda mb: mb.images,
            last_outputs=lambda mb, a, b: {"image_embeds": (sum(mb.image_tokens[a:b]), text.hidden_size)},
            loads=lambda mb, a, b, layer_start, layer_end: (
                [("image", i, k) for i, k in _images(mb)[a:b]] if layer_start == 0 else []  # the patch embedding's
            ),
        )
        llm = ByoModule(
            make_pre=lambda: load_part(TextPre(cfg), self.weights, lambda k: names.embed + k.split(".", 1)[1]),
            make_block=lambda i: loaded(family.text_layer(cfg, i), names.layer.format(i=i)),
            make_post=text_post,
            hidden_shape=lambda mb, a, b: (mb.text_tokens + sum(mb.image_tokens), text.hidden_size),
            first_inputs=lambda mb, a, b: (
                {"image_embeds": (sum(mb.image_tokens), text.hidden_size)} if mb.images else {}
            ),
            # token ids in every chunk: the rotary positions follow the image tokens' places
            loads=lambda mb, a, b, layer_start, layer_end: [("text", i) for i in mb.sample_ids],
        )
        ties = [(f"{LLM}.pre.embed_tokens.weight", f"{LLM}.post.lm_head.weight")] if self.tied else []
        super().__init__(
            spec,
            {VISION: vision, LLM: llm},
            self._make_data,
            self._loss_tokens,
            loss_module=LLM,
            seed=seed,
            dtype=dtype,
            device=device,
            ties=ties,
        )
        self.vision_rope = family.vision_rope(cfg.vision_config)
        self.text_rope = family.text_rope(text)
        self.image_token_id = int(cfg.image_token_id)

    # ------------------------------------------------------------------ data
    def processor(self, context_length: int | None = None) -> VlmProcessor:
        ip = self.family.image_processor(self.folder)
        return VlmProcessor(
            self.folder,
            image_processor=ip,
            image_rule=self.family.image_rule(self.config, ip),
            image_token=self.family.image_token,
            context_length=context_length or self.spec.context_length,
            family=self.family.name,
        )

    def open_data(self, path: str, *, strict: bool = False, use_cache: bool = True) -> VlmData:
        """The dataset at ``path`` measured with this checkpoint's tokenizer and image processor, attached."""
        data = VlmData(path, self.processor(), strict=strict, use_cache=use_cache)
        self.use_data(data)
        return data

    def _make_data(self, unit: ByoUnit) -> Any:
        return VisionUnit(self, unit) if unit.module == VISION else TextUnit(self, unit)

    def _loss_tokens(self, mb: MicroBatchMeta) -> int:
        if self.source is None:
            raise RuntimeError("no dataset attached (open_data) to count the loss tokens")
        return sum(self.source.loss_tokens(i) for i in mb.sample_ids)

    # ------------------------------------------------------------------ tensor parallelism
    def tp_plan(self, module_name: str, part: str) -> Any:
        """The family's ``parallelize_module`` plan of a part (``dip.runtime.parallel.ParallelModel``)."""
        if self.family.tp_plan is None:
            raise BadInput(f"the {self.family.name} family has no tensor-parallel plan: run it with --tp 1")
        return self.family.tp_plan(module_name, part)

    def tp_gathered_inputs(self, module_name: str, part: str) -> Mapping[str, int]:
        return self.family.tp_gathered(module_name, part) if self.family.tp_gathered else {}

    # ------------------------------------------------------------------ weights
    def checkpoint_name(self, canonical: str) -> str:
        return self.family.names.to_checkpoint(canonical)

    def checkpoint_tensors(self, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Trained parameters (canonical names, every chunk's) under the checkpoint's names; a tied head
        is saved once, as the embedding (as transformers saves tied weights)."""
        out = {}
        for name, value in params.items():
            if self.tied and name == f"{LLM}.post.lm_head.weight":
                continue
            out[self.checkpoint_name(name)] = value
        missing = sorted(set(self.weights.names()) - set(out))
        if missing:
            raise ValueError(f"trained parameters miss checkpoint tensors {missing[:5]}")
        return out

    def save_checkpoint(self, out: str, params: Mapping[str, Tensor]) -> str:
        """Write the trained ``params`` as a checkpoint folder that ``from_pretrained`` loads."""
        path = write_weights(out, self.checkpoint_tensors(params), source=self.folder, dtypes=self.weights.dtypes)
        with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
            json.load(f)  # the copied config is intact
        return path


def build_vlm(
    folder: str,
    family: VlmFamily,
    *,
    seed: int = 0,
    dtype: torch.dtype | str = torch.float32,
    device: torch.device | str | None = None,
) -> HfVlmModel:
    """The checkpoint in ``folder`` as a DIP model of ``family``.

    Args:
        folder: a transformers checkpoint folder (config, tokenizer, processor, safetensors).
        family: the model family (e.g. :data:`dip.integrations.qwen2_vl.QWEN2_VL`).
        seed: unused by the weights (they come from the checkpoint); kept for the provider interface.
        dtype: training dtype of the parameters.
        device: where the chunks live.

    Returns:
        The model provider; attach data with :meth:`HfVlmModel.open_data`.
    """
    return HfVlmModel(folder, family, seed=seed, dtype=dtype, device=device)
