"""Text-to-video: a diffusers video transformer conditioned by a transformers text encoder (Wan family).

A Wan pipeline folder (``model_index.json``, ``text_encoder/`` UMT5, ``tokenizer/``, ``transformer/``
``WanTransformer3DModel``, ``scheduler/``) becomes a :class:`~dip.runtime.byo.ByoModel` with two modules:

* ``text`` (kind ``decoder`` without LM head): token embedding, UMT5 blocks (each caption attends to
  itself only: the blocks run per caption, never through a ``[T, T]`` mask), final norm; its last chunk
  sends ``text_hidden [caption tokens, d_model]``;
* ``dit`` (kind ``dit``): one instance per clip, split into clip sub-microbatches; the edge cuts each
  DiT unit's captions out of ``text_hidden`` (``text_cond``). The first chunk noises the clip's VAE
  latents and embeds them, the timestep and the caption; between chunks travel ``hidden`` (latent
  tokens) and the side tensors ``cond`` (projected caption), ``temb`` and ``tproj`` (timestep embedding
  and its six modulation vectors) with their gradients; the last chunk's loss is Wan's flow-matching
  objective: ``x_t = (1 - s) x0 + s noise``, the model at timestep ``1000 s`` predicts ``noise - x0``,
  summed squared error over every latent element (``s = shift u / (1 + (shift - 1) u)``, ``u`` uniform,
  the scheduler's shift). Noise and ``u`` are drawn from ``(step seed, dataset sample)`` only.

Every part runs each clip (batch of one) exactly as the diffusers model does, so a pipelined step
equals the plain models' step on the same samples.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor, nn

from dip.data.formats import read_t2v_jsonl
from dip.data.meta import MicroBatchMeta
from dip.data.metadata import scan
from dip.data.records import BadSample, SampleMeta, T2vRow, VlmRow
from dip.data.tensors import UnitLike
from dip.integrations.checkpoint import SafetensorsWeights, load_part, write_weights
from dip.integrations.dataset import SampleDataset
from dip.runtime.byo import ByoEdge, ByoModel, ByoModule, ByoUnit
from dip.runtime.models.seeding import generator
from dip.spec.model import Edge, ModelSpec, ModuleSpec, ParallelSpec

__all__ = ["T2vData", "T2vProcessor", "WanModel", "build_wan"]

log = logging.getLogger(__name__)
TEXT, DIT = "text", "dit"
MAX_CAPTION = 512  # Wan's text length
VAE_TEMPORAL, VAE_SPATIAL, FPS = 4, 8, 16  # Wan's VAE compression and frame rate


class T2vProcessor:
    """The caption tokenizer and latent rules of a T2V checkpoint (measurer and encoder)."""

    def __init__(self, folder: str, *, channels: int, patch: tuple[int, int, int], max_caption: int = MAX_CAPTION):
        from transformers import AutoTokenizer  # the pipeline's own tokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(os.path.join(folder, "tokenizer"))
        self.channels, self.patch, self.max_caption = channels, patch, max_caption
        h = hashlib.sha256(f"t2v\0{channels}\0{patch}\0{max_caption}".encode())
        with open(os.path.join(folder, "tokenizer", "tokenizer.json"), "rb") as f:
            h.update(f.read())
        self.identity = h.hexdigest()

    def encode(self, caption: str) -> list[int]:
        return list(self.tokenizer(caption, max_length=self.max_caption, truncation=True).input_ids)

    def measure_t2v(self, row: T2vRow, latent_shape: tuple[int, ...]) -> SampleMeta:
        if len(latent_shape) != 4 or latent_shape[0] != self.channels:
            raise BadSample(
                row.source,
                row.line,
                f"latents {row.latents} have shape {latent_shape}, expected [{self.channels}, frames, height, width]",
                "corrupt_latents",
            )
        c, f, h, w = latent_shape
        pt, ph, pw = self.patch
        if f % pt or h % ph or w % pw:
            raise BadSample(
                row.source,
                row.line,
                f"latent shape {latent_shape} is not a multiple of the patch {self.patch}",
                "corrupt_latents",
            )
        frames = (f - 1) * VAE_TEMPORAL + 1
        return SampleMeta(
            row.source,
            row.line,
            row.id,
            text_tokens=len(self.encode(row.caption)),
            loss_tokens=c * f * h * w,
            latent_shape=latent_shape,
            clip_tokens=(f // pt) * (h // ph) * (w // pw),
            clip_seconds=frames / FPS,
        )

    def measure_vlm(self, row: VlmRow, image_sizes) -> SampleMeta:
        raise BadSample(row.source, row.line, "a conversation row given to a text-to-video model")


class T2vData(SampleDataset):
    """A captions + latents dataset measured by ``processor`` (bad rows skipped and counted, or an
    error under ``strict``); loads token ids and latents lazily per sample, or serves what the
    trainer's data loader loaded for the step (:meth:`load` in its workers, :meth:`prime` here)."""

    _CACHES = ("_latents",)

    def __init__(self, path: str, processor: T2vProcessor, *, strict: bool = False, use_cache: bool = True):
        self.processor = processor
        self._measured(path, scan(path, processor, fmt="t2v", use_cache=use_cache), strict)
        rows = {(r.source, r.line): r for r in read_t2v_jsonl(path) if isinstance(r, T2vRow)}
        self.rows = [rows[(m.source, m.line)] for m in self.metas]

    def _make_caches(self) -> None:
        self._latents = lru_cache(maxsize=1024)(self._load_latents)

    def sample(self, index: int) -> T2vSample:
        return T2vSample(self, index)

    def text(self, index: int) -> Tensor:
        """The caption's token ids."""
        return self._item(("text", index), lambda: self._load_text(index))

    def latents(self, index: int) -> Tensor:
        """The clip's VAE latents ``[C, F, H, W]`` (float32)."""
        return self._item(("latents", index), lambda: self._latents(index))

    def load(self, key: tuple) -> Tensor:
        """One item for the trainer's data loader: ``("text", i)`` or ``("latents", i)``."""
        if key[0] == "text":
            return self._load_text(key[1])
        if key[0] == "latents":
            return self._load_latents(key[1])
        raise KeyError(f"unknown data key {key!r}")

    def _load_text(self, index: int) -> Tensor:
        return torch.tensor(self.processor.encode(self.rows[index].caption), dtype=torch.long)

    def _load_latents(self, index: int) -> Tensor:
        from safetensors import safe_open  # reads only the latents tensor

        with safe_open(self.rows[index].latents, framework="pt") as f:
            return f.get_tensor("latents").to(torch.float32)


@dataclass(frozen=True)
class T2vSample:
    data: T2vData
    index: int

    @property
    def meta(self) -> SampleMeta:
        return self.data.meta(self.index)

    def text(self) -> Tensor:
        return self.data.text(self.index)

    def latents(self) -> Tensor:
        return self.data.latents(self.index)


def flow_match_draw(step_seed: int, sample: int, shape: tuple[int, ...], shift: float) -> tuple[Tensor, float]:
    """Noise like the latents and the noise level ``s`` of one sample, from (step seed, sample) only."""
    g = generator(step_seed, "flow-match", sample)
    u = float(torch.rand((), generator=g, dtype=torch.float64))
    noise = torch.randn(shape, generator=g, dtype=torch.float32)
    return noise, _shifted(u, shift)


def flow_match_sigma(step_seed: int, sample: int, shift: float) -> float:
    """The noise level ``s`` of :func:`flow_match_draw` alone (its first draw), without the noise."""
    u = float(torch.rand((), generator=generator(step_seed, "flow-match", sample), dtype=torch.float64))
    return _shifted(u, shift)


def _shifted(u: float, shift: float) -> float:
    return shift * u / (1 + (shift - 1) * u)


class TextUnitData:
    """A text-encoder unit: the captions' lengths (metadata) and, when the embedding asks, their token ids."""

    def __init__(self, unit: ByoUnit):
        self.unit = unit
        self.doc_lens = tuple(unit.mb.text_lens)
        self._ids: Tensor | None = None

    @property
    def input_ids(self) -> Tensor:
        if self._ids is None:
            self._ids = torch.cat([s.text() for s in self.unit.samples()])
        return self._ids


class DitUnitData:
    """A DiT unit: per clip the latent shape, timestep and rotary tables (from metadata and the step
    seed); the noisy latents (first chunk) and the flow-matching target (last chunk) are made from the
    sample's latents when a part asks, so middle chunks read no latents."""

    def __init__(self, model: WanModel, unit: ByoUnit):
        self.model, self.unit = model, unit
        samples = unit.samples()
        self.samples = [samples[unit.mb.clip_sample[c]] for c in range(unit.start, unit.stop)]
        self.shapes = [tuple(s.meta.latent_shape) for s in self.samples]
        self.sigmas = [flow_match_sigma(unit.step_seed, s.index, model.shift) for s in self.samples]
        self.timesteps = [torch.tensor([sigma * 1000.0], dtype=unit.dtype) for sigma in self.sigmas]
        self.ropes = [model.rope(torch.empty((1, *shape), device="meta")) for shape in self.shapes]
        self.cond_lens = tuple(unit.mb.text_lens[unit.mb.clip_sample[c]] for c in range(unit.start, unit.stop))
        self.tokens = tuple(unit.mb.clip_tokens[unit.start : unit.stop])
        self._drawn: dict[int, tuple[Tensor, Tensor]] = {}

    def _draw(self, k: int) -> tuple[Tensor, Tensor]:
        """``(x0, noise)`` of clip ``k`` (float64)."""
        if k not in self._drawn:
            s = self.samples[k]
            x0 = s.latents()
            if tuple(x0.shape) != self.shapes[k]:
                raise RuntimeError(f"sample {s.index}: latents {tuple(x0.shape)}, the metadata says {self.shapes[k]}")
            noise, _ = flow_match_draw(self.unit.step_seed, s.index, self.shapes[k], self.model.shift)
            self._drawn[k] = (x0.double(), noise.double())
        return self._drawn[k]

    def noisy(self, k: int) -> Tensor:
        """``x_t = (1 - s) x0 + s noise`` of clip ``k``."""
        x0, noise = self._draw(k)
        sigma = self.sigmas[k]
        return ((1 - sigma) * x0 + sigma * noise).to(self.unit.dtype)

    def target(self, k: int) -> Tensor:
        """``noise - x0`` of clip ``k``."""
        x0, noise = self._draw(k)
        return (noise - x0).to(self.unit.dtype)


class TextPre(nn.Module):
    def __init__(self, config: Any):
        super().__init__()
        self.shared = nn.Embedding(config.vocab_size, config.d_model)

    def forward(self, inputs: dict, data: TextUnitData) -> Tensor:
        return self.shared(data.input_ids)


def text_block(config: Any, index: int) -> nn.Module:
    from transformers.models.umt5.modeling_umt5 import (
        UMT5Block,
    )  # transformers (seconds to load): only a checkpoint of this family needs it

    class TextBlock(UMT5Block):
        def forward(self, hidden: Tensor, data: TextUnitData) -> Tensor:  # type: ignore[override]
            out, start = [], 0
            for n in data.doc_lens:  # each caption alone: no cross-caption attention, no [T, T] mask
                out.append(super().forward(hidden[None, start : start + n])[0])
                start += n
            return torch.cat(out)

    return TextBlock(config, layer_idx=index)


class TextPost(nn.Module):
    def __init__(self, config: Any):
        super().__init__()
        from transformers.models.umt5.modeling_umt5 import (
            UMT5LayerNorm,
        )  # transformers (seconds to load): only a checkpoint of this family needs it

        self.final_layer_norm = UMT5LayerNorm(config.d_model, eps=config.layer_norm_epsilon)

    def forward(self, hidden: Tensor, data: TextUnitData) -> dict[str, Tensor]:
        return {"text_hidden": self.final_layer_norm(hidden)}


class DitPre(nn.Module):
    """Patch embedding and the condition embedder (timestep + caption) of each clip."""

    def __init__(self, transformer_cls: Any, config: Mapping[str, Any]):
        super().__init__()
        full = transformer_cls(**{**config, "num_layers": 0})
        self.patch_embedding = full.patch_embedding
        self.condition_embedder = full.condition_embedder

    def forward(self, inputs: dict, data: DitUnitData) -> tuple[Tensor, dict[str, Tensor]]:
        text = inputs["text_cond"]
        hidden, cond, temb, tproj, start = [], [], [], [], 0
        for k, n in enumerate(data.cond_lens):
            h = self.patch_embedding(data.noisy(k)[None]).flatten(2).transpose(1, 2).contiguous()
            te, tp, enc, _ = self.condition_embedder(data.timesteps[k], text[None, start : start + n])
            hidden.append(h[0])
            cond.append(enc[0])
            temb.append(te)
            tproj.append(tp)
            start += n
        return torch.cat(hidden), {"cond": torch.cat(cond), "temb": torch.cat(temb), "tproj": torch.cat(tproj)}


def dit_block(config: Mapping[str, Any], index: int) -> nn.Module:
    from diffusers.models.transformers.transformer_wan import (
        WanTransformerBlock,
    )  # diffusers (seconds to load): only a checkpoint of this family needs it

    class DitBlock(WanTransformerBlock):
        def forward(self, hidden: Tensor, data: DitUnitData, side: dict[str, Tensor]) -> Tensor:  # type: ignore[override]
            out, h0, c0 = [], 0, 0
            for k, (rope, n, m) in enumerate(zip(data.ropes, data.tokens, data.cond_lens)):
                tproj = side["tproj"][k : k + 1].unflatten(1, (6, -1))
                out.append(super().forward(hidden[None, h0 : h0 + n], side["cond"][None, c0 : c0 + m], tproj, rope)[0])
                h0, c0 = h0 + n, c0 + m
            return torch.cat(out)

    inner = config["num_attention_heads"] * config["attention_head_dim"]
    return DitBlock(
        inner,
        config["ffn_dim"],
        config["num_attention_heads"],
        config["qk_norm"],
        config["cross_attn_norm"],
        config["eps"],
        config.get("added_kv_proj_dim"),
    )


class DitPost(nn.Module):
    """Modulated output norm, projection, unpatchify and the summed flow-matching error of each clip."""

    def __init__(self, transformer_cls: Any, config: Mapping[str, Any]):
        super().__init__()
        full = transformer_cls(**{**config, "num_layers": 0})
        self.norm_out, self.proj_out, self.scale_shift_table = full.norm_out, full.proj_out, full.scale_shift_table
        self.patch = tuple(config["patch_size"])

    def forward(self, hidden: Tensor, data: DitUnitData, side: dict[str, Tensor]) -> dict[str, Tensor]:
        p_t, p_h, p_w = self.patch
        total, h0 = hidden.new_zeros(()), 0
        for k, (shape, n) in enumerate(zip(data.shapes, data.tokens)):
            h = hidden[None, h0 : h0 + n]
            h0 += n
            shift, scale = (self.scale_shift_table + side["temb"][k : k + 1].unsqueeze(1)).chunk(2, dim=1)
            h = (self.norm_out(h.float()) * (1 + scale) + shift).type_as(h)
            h = self.proj_out(h)
            _, f, hh, ww = shape
            h = h.reshape(1, f // p_t, hh // p_h, ww // p_w, p_t, p_h, p_w, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
            pred = h.flatten(6, 7).flatten(4, 5).flatten(2, 3)[0]
            acc = torch.promote_types(pred.dtype, torch.float32)
            total = total + (pred.to(acc) - data.target(k).to(acc)).pow(2).sum()
        return {"loss_sum": total}


def _caption_rows(mb: MicroBatchMeta, start: int, stop: int) -> Tensor:
    offs = [0]
    for t in mb.text_lens:
        offs.append(offs[-1] + t)
    rows = [torch.arange(offs[mb.clip_sample[c]], offs[mb.clip_sample[c] + 1]) for c in range(start, stop)]
    return torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long)


def _clip_range(mb: MicroBatchMeta, unit: UnitLike) -> tuple[int, int]:
    return (0, mb.clips) if (unit.start, unit.stop) == (0, 0) else (unit.start, unit.stop)


class WanModel(ByoModel):
    """A Wan text-to-video pipeline folder as a DIP model (see the module docstring)."""

    requires_data = True  # captions and latents come from a dataset (open_data)

    def __init__(
        self,
        folder: str,
        *,
        seed: int = 0,
        dtype: torch.dtype | str = torch.float32,
        device: torch.device | str | None = None,
    ):
        from diffusers import (
            WanTransformer3DModel,
        )  # diffusers (seconds to load): only a checkpoint of this family needs it
        from transformers import AutoConfig  # transformers (seconds to load): only a checkpoint of this family needs it

        self.folder = os.path.abspath(folder)
        self.text_config = AutoConfig.from_pretrained(os.path.join(folder, "text_encoder"))
        self.text_config._attn_implementation = "sdpa"
        with open(os.path.join(folder, "transformer", "config.json"), encoding="utf-8") as f:
            raw = json.load(f)
        cfg = {k: v for k, v in raw.items() if not k.startswith("_")}
        self.dit_config = cfg
        self.text_weights = SafetensorsWeights(os.path.join(folder, "text_encoder"))
        self.dit_weights = SafetensorsWeights(os.path.join(folder, "transformer"))
        self.shift = _scheduler_shift(folder)
        tc = self.text_config
        inner = cfg["num_attention_heads"] * cfg["attention_head_dim"]
        self.patch = tuple(cfg["patch_size"])
        spec = wan_spec(tc, cfg, os.path.basename(self.folder.rstrip(os.sep)) or "wan")
        tw, dw = self.text_weights, self.dit_weights

        text = ByoModule(
            make_pre=lambda: load_part(TextPre(tc), tw, lambda k: k),
            make_block=lambda i: load_part(text_block(tc, i), tw, lambda k: f"encoder.block.{i}.{k}"),
            make_post=lambda: load_part(TextPost(tc), tw, lambda k: "encoder." + k),
            hidden_shape=lambda mb, a, b: (mb.text_tokens, tc.d_model),
            last_outputs=lambda mb, a, b: {"text_hidden": (mb.text_tokens, tc.d_model)},
            loads=lambda mb, a, b, layer_start, layer_end: (
                [("text", i) for i in mb.sample_ids] if layer_start == 0 else []  # token ids: the embedding's
            ),
        )
        dit = ByoModule(
            make_pre=lambda: load_part(DitPre(WanTransformer3DModel, cfg), dw, lambda k: k),
            make_block=lambda i: load_part(dit_block(cfg, i), dw, lambda k: f"blocks.{i}.{k}"),
            make_post=lambda: load_part(DitPost(WanTransformer3DModel, cfg), dw, lambda k: k),
            boundary=lambda mb, a, b: {
                "hidden": (sum(mb.clip_tokens[a:b]), inner),
                "cond": (len(_caption_rows(mb, a, b)), inner),
                "temb": (b - a, inner),
                "tproj": (b - a, 6 * inner),
            },
            instances=lambda mb: mb.clips,
            first_inputs=lambda mb, a, b: {"text_cond": (len(_caption_rows(mb, a, b)), tc.d_model)},
            loads=lambda mb, a, b, layer_start, layer_end: (  # latents: the noisy input and the target
                [("latents", mb.sample_ids[mb.clip_sample[c]]) for c in range(a, b)]
                if layer_start == 0 or layer_end == cfg["num_layers"]
                else []
            ),
        )
        edge = ByoEdge(
            tensors=lambda out, p, c, mb: (
                {"text_cond": out["text_hidden"][_caption_rows(mb, *_clip_range(mb, c))]} if p.mb == c.mb else {}
            ),
            shapes=lambda p, c, mb: (
                {"text_cond": (len(_caption_rows(mb, *_clip_range(mb, c))), tc.d_model)} if p.mb == c.mb else {}
            ),
        )
        super().__init__(
            spec,
            {TEXT: text, DIT: dit},
            self._make_data,
            self._loss_tokens,
            loss_module=DIT,
            seed=seed,
            dtype=dtype,
            device=device,
            edges={(TEXT, DIT): edge},
        )
        from diffusers.models.transformers.transformer_wan import (
            WanRotaryPosEmbed,
        )  # diffusers (seconds to load): only a checkpoint of this family needs it

        self.rope = WanRotaryPosEmbed(cfg["attention_head_dim"], self.patch, cfg.get("rope_max_seq_len", 1024))

    def processor(self) -> T2vProcessor:
        return T2vProcessor(self.folder, channels=self.dit_config["in_channels"], patch=self.patch)

    def open_data(self, path: str, *, strict: bool = False, use_cache: bool = True) -> T2vData:
        data = T2vData(path, self.processor(), strict=strict, use_cache=use_cache)
        self.use_data(data)
        return data

    def _make_data(self, unit: ByoUnit) -> Any:
        return TextUnitData(unit) if unit.module == TEXT else DitUnitData(self, unit)

    def _loss_tokens(self, mb: MicroBatchMeta) -> int:
        if self.source is None:
            raise RuntimeError("no dataset attached (open_data) to count the loss terms")
        return sum(self.source.loss_tokens(mb.sample_ids[c]) for c in mb.clip_sample)

    def checkpoint_name(self, canonical: str) -> tuple[str, str]:
        """``(component folder, tensor name)`` of a canonical parameter name."""
        module, part, rest = canonical.split(".", 2)
        if module == TEXT:
            if part == "layers":
                i, name = rest.split(".", 1)
                return "text_encoder", f"encoder.block.{i}.{name}"
            return "text_encoder", rest if part == "pre" else "encoder." + rest
        if part == "layers":
            i, name = rest.split(".", 1)
            return "transformer", f"blocks.{i}.{name}"
        return "transformer", rest

    def save_checkpoint(self, out: str, params: Mapping[str, Tensor]) -> list[str]:
        """Write the trained ``params`` as a pipeline folder (the trained text encoder and transformer,
        the other components copied)."""
        parts: dict[str, dict[str, Tensor]] = {"text_encoder": {}, "transformer": {}}
        for name, value in params.items():
            comp, key = self.checkpoint_name(name)
            parts[comp][key] = value
        os.makedirs(out, exist_ok=True)
        for name in os.listdir(self.folder):
            src = os.path.join(self.folder, name)
            if name not in parts:
                _copy(src, os.path.join(out, name))
        written = [
            write_weights(
                os.path.join(out, "text_encoder"),
                parts["text_encoder"],
                source=os.path.join(self.folder, "text_encoder"),
                dtypes=self.text_weights.dtypes,
            ),
            write_weights(
                os.path.join(out, "transformer"),
                parts["transformer"],
                source=os.path.join(self.folder, "transformer"),
                dtypes=self.dit_weights.dtypes,
                filename="diffusion_pytorch_model.safetensors",
            ),
        ]
        return written


def _copy(src: str, dst: str) -> None:
    if os.path.isdir(src):
        shutil.copytree(src, dst, dirs_exist_ok=True)
    else:
        shutil.copy2(src, dst)


def _scheduler_shift(folder: str) -> float:
    path = os.path.join(folder, "scheduler", "scheduler_config.json")
    if not os.path.exists(path):
        return 1.0
    with open(path, encoding="utf-8") as f:
        return float(json.load(f).get("shift", 1.0))


def wan_spec(text_config: Any, dit_config: Mapping[str, Any], name: str) -> ModelSpec:
    """The planner's view of the pipeline: the text encoder as a decoder without LM head, the transformer
    as a DiT (widths, heads, layers, latent channels and patch sizes from the configs)."""
    tc, dc = text_config, dit_config
    inner = dc["num_attention_heads"] * dc["attention_head_dim"]
    pt, ph, _ = dc["patch_size"]
    text = ModuleSpec(
        TEXT,
        "decoder",
        tc.num_layers,
        tc.d_model,
        tc.d_ff,
        tc.num_heads,
        tc.num_heads,
        vocab_size=tc.vocab_size,
        lm_head=False,
    )
    dit = ModuleSpec(
        DIT,
        "dit",
        dc["num_layers"],
        inner,
        dc["ffn_dim"],
        dc["num_attention_heads"],
        dc["num_attention_heads"],
        cond_hidden=tc.d_model,
        latent_channels=dc["in_channels"],
        patch_t=pt,
        patch_hw=ph,
        vae_temporal=VAE_TEMPORAL,
        vae_spatial=VAE_SPATIAL,
        video_fps=FPS,
        video_height=480,
        video_width=832,
    )
    return ModelSpec(
        name,
        (text, dit),
        (Edge(TEXT, DIT, "text_conditioning"),),
        ParallelSpec(),
        workload="t2v",
        context_length=MAX_CAPTION * 8,
        description="Wan text-to-video pipeline",
    )


def build_wan(
    folder: str, *, seed: int = 0, dtype: torch.dtype | str = torch.float32, device: torch.device | str | None = None
) -> WanModel:
    """The Wan pipeline folder ``folder`` as a DIP model; attach data with :meth:`WanModel.open_data`.

    Args:
        folder: a diffusers pipeline folder (``model_index.json``, ``text_encoder/``, ``transformer/``, ...).
        seed: unused by the weights (they come from the checkpoint); kept for the provider interface.
        dtype: training dtype of the parameters.
        device: where the chunks live.

    Returns:
        The model provider.
    """
    return WanModel(folder, seed=seed, dtype=dtype, device=device)
