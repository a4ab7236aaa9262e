"""The Qwen2-VL family (transformers ``Qwen2VLForConditionalGeneration``).

Variable resolution: an image of ``w x h`` px is resized by the processor's ``smart_resize``
(multiples of ``patch_size * merge_size`` = 28 px, pixel count within the processor's
``min_pixels..max_pixels``) into a ``(1, h/14, w/14)`` patch grid, and every ``2 x 2`` patches merge
into one LM token. The LM's 3-D rotary positions (mrope) are computed per packed sample exactly as
``Qwen2VLModel.get_rope_index`` does for a sample alone: text tokens count up, an image's tokens take
``(t, row, column)`` positions from the current position, which then advances by the larger side.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor.parallel import ColwiseParallel, PrepareModuleInput, RowwiseParallel, SequenceParallel

from dip.integrations.vlm import VISION, TextUnit, VisionUnit, VlmFamily, VlmNames
from dip.integrations.vlm_data import ImageRule
from dip.runtime.parallel import FusedColwiseParallel

__all__ = ["QWEN2_VL", "mrope_position_ids", "tp_gathered", "tp_plan"]


def _classes():
    # transformers' Qwen2-VL modules (imported when the family is used)
    from transformers.models.qwen2_vl import (
        modeling_qwen2_vl as m,
    )  # transformers (seconds to load): only a checkpoint of this family needs it

    return m


def vision_pre(cfg: Any) -> nn.Module:
    m = _classes()

    class VisionPre(m.PatchEmbed):
        def forward(self, inputs: dict, data: VisionUnit) -> Tensor:  # type: ignore[override]
            return super().forward(data.pixels())

    v = cfg.vision_config
    return VisionPre(
        patch_size=v.patch_size,
        temporal_patch_size=v.temporal_patch_size,
        in_channels=v.in_channels,
        embed_dim=v.embed_dim,
    )


def vision_block(cfg: Any, index: int) -> nn.Module:
    m = _classes()

    class VisionBlock(m.Qwen2VLVisionBlock):
        def forward(self, hidden: Tensor, data: VisionUnit) -> Tensor:  # type: ignore[override]
            self.attn.num_heads = _local_heads(self.attn)  # heads / tp under tensor parallelism
            return super().forward(hidden, cu_seqlens=data.cu_seqlens, position_embeddings=data.rope())

    return VisionBlock(cfg.vision_config)


def merger(cfg: Any) -> nn.Module:
    m = _classes()

    class Merger(m.PatchMerger):
        def forward(self, hidden: Tensor, data: VisionUnit) -> dict[str, Tensor]:  # type: ignore[override]
            x = self.ln_q(hidden)
            if data.shard is not None:  # the merge joins neighbouring patches: every rank needs all of them
                x = data.shard.gather(x, data.tokens)
            return {"image_embeds": self.mlp(x.view(-1, self.hidden_size))}

    v = cfg.vision_config
    return Merger(dim=v.hidden_size, context_dim=v.embed_dim, spatial_merge_size=v.spatial_merge_size)


def _local_heads(attn: nn.Module) -> int:
    """Query heads a rank holds: the fused ``qkv`` projection's local rows over ``3 x head_dim``."""
    w = attn.qkv.weight
    with torch.no_grad():
        rows = w.to_local().shape[0] if isinstance(w, DTensor) else w.shape[0]
    return rows // (3 * attn.head_dim)


def text_layer(cfg: Any, index: int) -> nn.Module:
    m = _classes()

    class TextLayer(m.Qwen2VLDecoderLayer):
        def forward(self, hidden: Tensor, data: TextUnit) -> Tensor:  # type: ignore[override]
            out = super().forward(
                hidden[None],
                attention_mask=None,
                position_embeddings=data.rope(hidden.dtype),
                dip_doc_lens=data.doc_lens,
            )
            return out[0]

    return TextLayer(cfg.text_config, index)


def text_norm(cfg: Any) -> nn.Module:
    t = cfg.text_config
    return _classes().Qwen2VLRMSNorm(t.hidden_size, eps=t.rms_norm_eps)


def vision_rope(vcfg: Any) -> nn.Module:
    return _classes().Qwen2VLVisionRotaryEmbedding(vcfg)


def text_rope(tcfg: Any) -> nn.Module:
    return _classes().Qwen2VLRotaryEmbedding(tcfg)


def vision_positions(grids: list[tuple[int, int, int]], vcfg: Any) -> Tensor:
    from transformers.vision_utils import (
        get_vision_position_ids,
    )  # transformers (seconds to load): only a checkpoint of this family needs it

    grid = torch.tensor(grids, dtype=torch.long).reshape(-1, 3)
    return get_vision_position_ids(grid, vcfg.spatial_merge_size)


def mrope_position_ids(input_ids: Tensor, grids: list[tuple[int, int, int]], cfg: Any) -> Tensor:
    """``[3, T]`` rotary positions of one sample (``get_rope_index`` for a sample alone)."""
    merge = cfg.vision_config.spatial_merge_size
    is_image = (input_ids == cfg.image_token_id).tolist()
    out, pos, i, g = [], 0, 0, 0
    while i < len(is_image):
        j = i
        while j < len(is_image) and is_image[j] == is_image[i]:
            j += 1
        if not is_image[i]:
            out.append(torch.arange(pos, pos + j - i).expand(3, -1))
            pos += j - i
        else:
            t, h, w = grids[g]
            g += 1
            lt, lh, lw = t, h // merge, w // merge
            if lt * lh * lw != j - i:
                raise ValueError(f"image {g - 1} has {j - i} tokens but its grid {grids[g - 1]} gives {lt * lh * lw}")
            tt, hh, ww = torch.meshgrid(torch.arange(lt), torch.arange(lh), torch.arange(lw), indexing="ij")
            out.append(torch.stack([tt, hh, ww]).reshape(3, -1) + pos)
            pos += max(h, w) // merge
        i = j
    if g != len(grids):
        raise ValueError(f"{len(grids)} image grids for {g} images in the tokens")
    return torch.cat(out, dim=1) if out else torch.zeros(3, 0, dtype=torch.long)


def image_processor(folder: str) -> Any:
    # Pillow backend: no torchvision needed
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )  # transformers (seconds to load): only a checkpoint of this family needs it

    return Qwen2VLImageProcessorPil.from_pretrained(folder)


def image_rule(cfg: Any, ip: Any) -> ImageRule:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        smart_resize,
    )  # transformers (seconds to load): only a checkpoint of this family needs it

    patch, merge = ip.patch_size, ip.merge_size
    lo, hi = ip.size["shortest_edge"], ip.size["longest_edge"]

    def grid(width: int, height: int) -> tuple[int, int, int]:
        h, w = smart_resize(height, width, factor=patch * merge, min_pixels=lo, max_pixels=hi)
        return 1, h // patch, w // patch  # one temporal patch per still image

    return ImageRule(grid, merge)


def _gather(dim: int, *kw: str) -> PrepareModuleInput:
    """All-gather a submodule's sequence-sharded input (positional, or the keyword ``kw``) once."""
    if kw:
        return PrepareModuleInput(
            input_kwarg_layouts={kw[0]: Shard(dim)}, desired_input_kwarg_layouts={kw[0]: Replicate()}
        )
    return PrepareModuleInput(input_layouts=(Shard(dim),), desired_input_layouts=(Replicate(),))


def tp_plan(module: str, part: str) -> dict:
    """Megatron's split of Qwen2-VL (see ``docs/runtime.md``): the vision blocks' fused ``qkv`` split by
    heads within each projection, ``proj`` and ``fc2`` row-parallel; the decoder layers' ``q``/``k``/``v``
    and ``gate``/``up`` column-, ``o``/``down`` row-parallel; the vocabulary-parallel embedding and LM
    head (tied: split alike); norms sequence-parallel; the merger column- then row-parallel. The
    vision tower's rows are ``[patches, dim]`` (sequence dim 0), the decoder's ``[1, T, H]`` (dim 1)."""
    seq = lambda dim: SequenceParallel(sequence_dim=dim, use_local_output=True)  # noqa: E731
    if module == VISION:
        if part == "block":
            return {
                "norm1": seq(0),
                "norm2": seq(0),
                "attn": _gather(0),
                "attn.qkv": FusedColwiseParallel(3),
                "attn.proj": RowwiseParallel(output_layouts=Shard(0)),
                "mlp": _gather(0),
                "mlp.fc1": ColwiseParallel(),
                "mlp.fc2": RowwiseParallel(output_layouts=Shard(0)),
            }
        if part == "post":
            return {"ln_q": seq(0), "mlp.0": ColwiseParallel(), "mlp.2": RowwiseParallel(output_layouts=Replicate())}
        return {}
    if part == "block":
        return {
            "input_layernorm": seq(1),
            "post_attention_layernorm": seq(1),
            "self_attn": _gather(1, "hidden_states"),
            "self_attn.q_proj": ColwiseParallel(),
            "self_attn.k_proj": ColwiseParallel(),
            "self_attn.v_proj": ColwiseParallel(),
            "self_attn.o_proj": RowwiseParallel(output_layouts=Shard(1)),
            "mlp": _gather(1),
            "mlp.gate_proj": ColwiseParallel(),
            "mlp.up_proj": ColwiseParallel(),
            "mlp.down_proj": RowwiseParallel(output_layouts=Shard(1)),
        }
    if part == "pre":
        return {"embed_tokens": RowwiseParallel(input_layouts=Replicate(), output_layouts=Replicate())}
    return {"norm": seq(0), "lm_head": ColwiseParallel(use_local_output=False)}


def tp_gathered(module: str, part: str) -> dict[str, int]:
    """The submodules whose gathered input keeps only the rank's rows for the backward (sequence dim)."""
    if module == VISION:
        return {"attn": 0, "mlp": 0} if part == "block" else ({"mlp": 0} if part == "post" else {})
    return {"self_attn": 1, "mlp": 1} if part == "block" else ({"lm_head": 0} if part == "post" else {})


QWEN2_VL = VlmFamily(
    name="qwen2-vl",
    model_types=("qwen2_vl",),
    # the names Qwen2-VL checkpoints store (transformers maps them to its modules when loading)
    names=VlmNames(
        vision_pre="visual.patch_embed.",
        vision_block="visual.blocks.{i}.",
        merger="visual.merger.",
        embed="model.embed_tokens.",
        layer="model.layers.{i}.",
        norm="model.norm.",
        lm_head="lm_head.",
    ),
    vision_pre=vision_pre,
    vision_block=vision_block,
    merger=merger,
    text_layer=text_layer,
    text_norm=text_norm,
    vision_rope=vision_rope,
    text_rope=text_rope,
    position_ids=mrope_position_ids,
    vision_positions=vision_positions,
    image_processor=image_processor,
    image_rule=image_rule,
    tp_plan=tp_plan,
    tp_gathered=tp_gathered,
)
