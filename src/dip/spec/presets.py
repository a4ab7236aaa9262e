"""Module and model presets: the paper's Tables 1, 2, 3 and 6 plus tiny CPU models.

Module presets carry their preset name (``ViT-5B``); inside a model a module gets a short role name
(``vit``, ``llm``, ``dit``) and ``model.extra["module_presets"]`` maps the role back to the preset.

Documented choices where the paper gives no number:

* ViT: Qwen2-VL ViT, 728 px images, patch 14, spatial merge 4 (2704 patches -> 169 tokens),
  ``out_hidden`` = the LM's hidden size.
* DiT: MovieGen-style, 16 latent channels, VAE 8x temporal / 8x8 spatial, patch 1x2x2, 16 fps,
  768x768 -> 2304 tokens per latent frame, 4608 tokens per second (16 s -> 73,728 tokens);
  ``cond_hidden`` = the LM's hidden size. In T2V models the LM only encodes text (``lm_head=False``).
* GPT-175B: 96 layers, 12288 hidden, 96 heads, vocab 50257; its 4h GELU MLP (ffn 49152, two
  matrices) is expressed as a SwiGLU MLP with ffn 32768 (three matrices), the same parameters and
  FLOPs, because decoders here are SwiGLU.
* Table 1 (7B on 8 GPUs): LM-7B is Llama-2-7B-like (32 x 4096, ffn 11008, 32 heads, vocab 32000);
  VLM-7B is ViT-2B (36 x 2048, ffn 8192, 16 heads; 1.97B with its merger) + LM-5B (24 layers of the
  Llama-2-7B shape; 5.12B).
"""

from __future__ import annotations

import json
import os
from dataclasses import fields
from typing import Any

import yaml

from dip.errors import BadInput, choices_error
from dip.spec.model import Edge, ModelSpec, ModuleSpec, ParallelSpec
from dip.spec.validate import validate_model, validate_parallel

__all__ = [
    "MODULE_PRESETS",
    "get_model",
    "get_module_preset",
    "list_model_names",
    "list_models",
    "load_model",
    "load_model_file",
    "model_from_dict",
    "model_to_dict",
]

_MODULES: tuple[ModuleSpec, ...] = (
    ModuleSpec("ViT-2B", "vit", 36, 2048, 8192, 16, 16),
    ModuleSpec("ViT-5B", "vit", 63, 1792, 15360, 16, 16),
    ModuleSpec("ViT-22B", "vit", 48, 6144, 24576, 48, 48),
    ModuleSpec("Llama2-7B", "decoder", 32, 4096, 11008, 32, 32, vocab_size=32000),
    ModuleSpec("LM-5B", "decoder", 24, 4096, 11008, 32, 32, vocab_size=32000),
    ModuleSpec("Llama3-8B", "decoder", 32, 4096, 14336, 32, 8, vocab_size=128256),
    ModuleSpec("Qwen2-32B", "decoder", 64, 5120, 27648, 40, 8, vocab_size=152064),
    ModuleSpec("Qwen2-72B", "decoder", 80, 8192, 29568, 64, 8, vocab_size=152064),
    ModuleSpec("GPT-175B", "decoder", 96, 12288, 32768, 96, 96, vocab_size=50257),
    ModuleSpec("DiT-5B", "dit", 28, 3584, 10240, 28, 28),
    ModuleSpec("DiT-30B", "dit", 48, 6144, 24576, 48, 48),
    ModuleSpec("tiny-vit", "vit", 8, 128, 512, 4, 4, image_size=56, patch_size=14, spatial_merge=2),
    ModuleSpec("tiny-llm", "decoder", 8, 192, 512, 6, 2, vocab_size=1024),
    ModuleSpec("tiny-text-encoder", "decoder", 8, 128, 384, 4, 2, vocab_size=1024, lm_head=False),
    ModuleSpec(
        "tiny-dit",
        "dit",
        8,
        128,
        512,
        4,
        4,
        latent_channels=4,
        patch_t=1,
        patch_hw=2,
        vae_temporal=8,
        vae_spatial=8,
        video_fps=16,
        video_height=64,
        video_width=64,
    ),
)
MODULE_PRESETS: dict[str, ModuleSpec] = {m.name: m for m in _MODULES}


def get_module_preset(name: str) -> ModuleSpec:
    """A module preset by name (case-insensitive), e.g. ``ViT-5B``."""
    for key, spec in MODULE_PRESETS.items():
        if key.lower() == str(name).lower():
            return spec
    raise choices_error("module preset", name, MODULE_PRESETS)


def _role(preset: str, role: str, **changes) -> ModuleSpec:
    return get_module_preset(preset).with_(name=role, **changes)


def _vlm(
    name: str,
    vit: str,
    lm: str,
    tp: int,
    pp: int,
    dp: int = 1,
    nominal: float | None = None,
    description: str = "",
    **model_fields,
) -> ModelSpec:
    llm = _role(lm, "llm")
    return ModelSpec(
        name=name,
        modules=(_role(vit, "vit", out_hidden=llm.hidden), llm),
        edges=(Edge("vit", "llm", "image_embeddings"),),
        parallel=ParallelSpec(tp=tp, pp=pp, dp=dp),
        workload="vlm",
        description=description or f"{vit} + {lm}",
        extra={"module_presets": {"vit": vit, "llm": lm}, "nominal_params": nominal},
        **model_fields,
    )


def _t2v(
    name: str,
    lm: str,
    dit: str,
    tp: int,
    pp: int,
    dp: int = 1,
    nominal: float | None = None,
    description: str = "",
    **model_fields,
) -> ModelSpec:
    llm = _role(lm, "llm", lm_head=False)
    return ModelSpec(
        name=name,
        modules=(llm, _role(dit, "dit", cond_hidden=llm.hidden)),
        edges=(Edge("llm", "dit", "text_conditioning"),),
        parallel=ParallelSpec(tp=tp, pp=pp, dp=dp),
        workload="t2v",
        description=description or f"{lm} text encoder + {dit}",
        extra={"module_presets": {"llm": lm, "dit": dit}, "nominal_params": nominal},
        **model_fields,
    )


def _text(name: str, lm: str, tp: int, pp: int, dp: int = 1, nominal: float | None = None) -> ModelSpec:
    return ModelSpec(
        name=name,
        modules=(_role(lm, "llm"),),
        edges=(),
        parallel=ParallelSpec(tp=tp, pp=pp, dp=dp),
        workload="text",
        description=f"{lm} language model",
        extra={"module_presets": {"llm": lm}, "nominal_params": nominal},
    )


_MODELS: tuple[ModelSpec, ...] = (
    _vlm("VLM-S", "ViT-5B", "Llama3-8B", tp=4, pp=4, nominal=12.3e9),
    _vlm("VLM-M", "ViT-5B", "Qwen2-32B", tp=8, pp=4, nominal=37.1e9),
    _vlm("VLM-L", "ViT-22B", "Qwen2-72B", tp=8, pp=8, nominal=94.4e9),
    _t2v("T2V-S", "Llama3-8B", "DiT-5B", tp=4, pp=4, nominal=12.9e9),
    _t2v("T2V-L", "Qwen2-32B", "DiT-30B", tp=8, pp=8, nominal=61.8e9),
    _vlm("VLM-XL-8k", "ViT-22B", "GPT-175B", tp=8, pp=8, dp=128),
    _vlm("VLM-XL-16k", "ViT-22B", "GPT-175B", tp=8, pp=16, dp=128),
    _t2v("T2V-XL-3k", "Qwen2-72B", "DiT-30B", tp=8, pp=4, dp=96),
    _t2v("T2V-XL-6k", "Qwen2-72B", "DiT-30B", tp=8, pp=8, dp=96),
    _text("LM-7B", "Llama2-7B", tp=2, pp=4, nominal=6.74e9),
    _vlm("VLM-7B", "ViT-2B", "LM-5B", tp=2, pp=4, nominal=7e9),
    _vlm(
        "tiny-vlm",
        "tiny-vit",
        "tiny-llm",
        tp=1,
        pp=2,
        description="tiny CPU VLM",
        context_length=256,
        max_images_per_microbatch=8,
    ),
    _t2v(
        "tiny-t2v",
        "tiny-text-encoder",
        "tiny-dit",
        tp=1,
        pp=2,
        description="tiny CPU T2V",
        context_length=256,
        max_clips_per_microbatch=4,
        max_video_seconds=8.0,
    ),
)
_BY_NAME: dict[str, ModelSpec] = {m.name: m for m in _MODELS}


def list_model_names() -> list[str]:
    """Names of all model presets, in the paper's order, tiny CPU models last."""
    return list(_BY_NAME)


def list_models() -> list[ModelSpec]:
    """All model presets."""
    return list(_MODELS)


def get_model(name: str) -> ModelSpec:
    """A model preset by name (case-insensitive), e.g. ``vlm-s``."""
    for key, model in _BY_NAME.items():
        if key.lower() == str(name).lower():
            return model
    raise choices_error("model", name, list_model_names())


def load_model(name_or_path: str) -> ModelSpec:
    """A preset name (case-insensitive) or a YAML / JSON model file (see :func:`model_from_dict`)."""
    text = str(name_or_path)
    if any(k.lower() == text.lower() for k in _BY_NAME):
        return get_model(text)
    if os.path.isfile(text) or text.lower().endswith((".yaml", ".yml", ".json")):
        return load_model_file(text)
    return get_model(text)


# ---- model files -------------------------------------------------------------------------------

_MODEL_KEYS = (
    "name",
    "description",
    "workload",
    "context_length",
    "max_images_per_microbatch",
    "max_clips_per_microbatch",
    "max_video_seconds",
    "modules",
    "edges",
    "parallel",
)
_MODULE_KEYS = tuple(f.name for f in fields(ModuleSpec)) + ("preset",)
_MODULE_REQUIRED = ("kind", "layers", "hidden", "ffn_hidden", "heads", "kv_heads")
_PARALLEL_KEYS = ("tp", "pp", "dp", "segments", "gpus_per_node", "sequence_parallel", "distributed_optimizer")
_EDGE_KEYS = ("src", "dst", "kind")


def load_model_file(path: str) -> ModelSpec:
    """Read a model file (``.json`` as JSON, anything else as YAML) and build a validated model."""
    if not os.path.isfile(path):
        raise BadInput(f"model file {path!r} not found (and not a model preset; presets: {', '.join(_BY_NAME)})")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f) if path.lower().endswith(".json") else yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        raise BadInput(f"model file {path!r} cannot be parsed: {' '.join(str(exc).split())}") from None
    try:
        return model_from_dict(data)
    except BadInput as exc:
        raise BadInput(f"model file {path!r}: {exc}") from None


def model_to_dict(model: ModelSpec) -> dict[str, Any]:
    """A plain dict (YAML / JSON ready) that :func:`model_from_dict` turns back into ``model``."""
    presets = model.extra.get("module_presets", {})
    modules = []
    for m in model.modules:
        entry: dict[str, Any] = {"preset": presets[m.name]} if presets.get(m.name) else {}
        entry.update({f.name: getattr(m, f.name) for f in fields(ModuleSpec)})
        modules.append(entry)
    p = model.parallel
    return {
        "name": model.name,
        "description": model.description,
        "workload": model.workload,
        "context_length": model.context_length,
        "max_images_per_microbatch": model.max_images_per_microbatch,
        "max_clips_per_microbatch": model.max_clips_per_microbatch,
        "max_video_seconds": model.max_video_seconds,
        "modules": modules,
        "edges": [{"src": e.src, "dst": e.dst, "kind": e.kind} for e in model.edges],
        "parallel": {
            "tp": p.tp,
            "pp": p.pp,
            "dp": p.dp,
            "segments": dict(p.segments),
            "gpus_per_node": p.gpus_per_node,
            **{k: getattr(p, k) for k in ("sequence_parallel", "distributed_optimizer") if getattr(p, k) is not None},
        },
    }


def model_from_dict(data: Any) -> ModelSpec:
    """Build and validate a model from a mapping.

    Keys: ``name`` (required), ``modules`` (required; each a mapping with ``name`` and either a
    ``preset`` plus overriding fields, or ``kind, layers, hidden, ffn_hidden, heads, kv_heads`` and
    any other :class:`ModuleSpec` field), ``edges`` (``src, dst, kind``; inferred vit -> decoder ->
    dit when omitted and the model has one decoder), ``parallel`` (``tp, pp, dp, segments: {module:
    K}, gpus_per_node, sequence_parallel, distributed_optimizer``), ``workload`` (inferred when omitted), and the
    ``ModelSpec`` sizes.
    ``vit.out_hidden`` and ``dit.cond_hidden`` default to the hidden size across their edge.
    """
    _check_keys(data, _MODEL_KEYS, "model", required=("name", "modules"))
    name = _typed(data["name"], str, "name")
    raw_modules = data["modules"]
    if not isinstance(raw_modules, list) or not raw_modules:
        raise BadInput("modules must be a non-empty list of mappings")
    modules = [_module_from_dict(entry, i) for i, entry in enumerate(raw_modules)]
    presets = {m.name: entry["preset"] for m, entry in zip(modules, raw_modules) if entry.get("preset")}
    edges = _edges_from(data.get("edges"), modules)
    modules = _fill_edge_widths(modules, edges)
    kinds = {m.kind for m in modules}
    default_workload = "t2v" if "dit" in kinds else "vlm" if "vit" in kinds else "text"
    sizes = {}
    for key, typ in (
        ("context_length", int),
        ("max_images_per_microbatch", int),
        ("max_clips_per_microbatch", int),
        ("max_video_seconds", float),
    ):
        if key in data:
            sizes[key] = _typed(data[key], typ, key)
    model = ModelSpec(
        name=name,
        modules=tuple(modules),
        edges=tuple(edges),
        parallel=_parallel_from(data.get("parallel") or {}),
        workload=_typed(data.get("workload", default_workload), str, "workload"),
        description=_typed(data.get("description", ""), str, "description"),
        extra={"module_presets": presets, "nominal_params": None},
        **sizes,
    )
    validate_model(model)
    validate_parallel(model)
    return model


def _module_from_dict(entry: Any, index: int) -> ModuleSpec:
    where = f"module #{index + 1}"
    _check_keys(entry, _MODULE_KEYS, where, required=("name",))
    where = f"module {entry['name']!r}"
    values = {k: v for k, v in entry.items() if k != "preset"}
    for f in fields(ModuleSpec):
        if f.name in values:
            typ = {"int": int, "bool": bool}.get(str(f.type), str)
            values[f.name] = _typed(values[f.name], typ, f"{f.name} of {where}")
    if entry.get("preset") is not None:
        return get_module_preset(_typed(entry["preset"], str, f"preset of {where}")).with_(**values)
    missing = [k for k in _MODULE_REQUIRED if k not in values]
    if missing:
        raise BadInput(f"{where} needs a preset or the fields {', '.join(missing)}")
    return ModuleSpec(**values)


def _edges_from(raw: Any, modules: list[ModuleSpec]) -> list[Edge]:
    if raw is None:
        decoders = [m for m in modules if m.kind == "decoder"]
        if len(decoders) != 1:
            return []
        lm = decoders[0].name
        return [Edge(m.name, lm, "image_embeddings") for m in modules if m.kind == "vit"] + [
            Edge(lm, m.name, "text_conditioning") for m in modules if m.kind == "dit"
        ]
    if not isinstance(raw, list):
        raise BadInput("edges must be a list of mappings with src, dst and kind")
    edges = []
    for i, entry in enumerate(raw):
        _check_keys(entry, _EDGE_KEYS, f"edge #{i + 1}", required=_EDGE_KEYS)
        edges.append(Edge(*(_typed(entry[k], str, f"{k} of edge #{i + 1}") for k in _EDGE_KEYS)))
    return edges


def _fill_edge_widths(modules: list[ModuleSpec], edges: list[Edge]) -> list[ModuleSpec]:
    by_name = {m.name: m for m in modules}
    for e in edges:
        src, dst = by_name.get(e.src), by_name.get(e.dst)
        if src is None or dst is None:
            continue  # reported by validate_model
        if e.kind == "image_embeddings" and src.kind == "vit" and not src.out_hidden:
            by_name[e.src] = src.with_(out_hidden=dst.hidden)
        if e.kind == "text_conditioning" and dst.kind == "dit" and not dst.cond_hidden:
            by_name[e.dst] = dst.with_(cond_hidden=src.hidden)
    return [by_name[m.name] for m in modules]


def _parallel_from(raw: Any) -> ParallelSpec:
    _check_keys(raw, _PARALLEL_KEYS, "parallel")
    values = {k: _typed(raw[k], int, f"parallel.{k}") for k in ("tp", "pp", "dp", "gpus_per_node") if k in raw}
    values.update(
        {
            k: _typed(raw[k], bool, f"parallel.{k}")
            for k in ("sequence_parallel", "distributed_optimizer")
            if raw.get(k) is not None
        }
    )
    segments = raw.get("segments") or {}
    if not isinstance(segments, dict):
        raise BadInput("parallel.segments must be a mapping {module: segment count}")
    values["segments"] = tuple((str(k), _typed(v, int, f"parallel.segments.{k}")) for k, v in segments.items())
    return ParallelSpec(**values)


def _check_keys(data: Any, allowed: tuple[str, ...], where: str, required: tuple[str, ...] = ()) -> None:
    if not isinstance(data, dict):
        raise BadInput(f"{where} must be a mapping, got {type(data).__name__}")
    unknown = [k for k in data if k not in allowed]
    if unknown:
        raise BadInput(f"unknown key {unknown[0]!r} in {where}; valid keys: {', '.join(allowed)}")
    missing = [k for k in required if k not in data]
    if missing:
        raise BadInput(f"{where} is missing required key(s): {', '.join(missing)}")


def _typed(value: Any, typ: type, field: str) -> Any:
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (typ is int and isinstance(value, bool)) or not isinstance(value, typ):
        raise BadInput(f"{field} must be {'a' if typ is not int else 'an'} {typ.__name__}, got {value!r}")
    return value
