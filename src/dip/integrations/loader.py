"""``load_model``: one entry point from what a user types after ``--model`` to a model provider.

Accepted, in this order:

* a folder holding a **diffusers pipeline** (``model_index.json``; Wan) or a **transformers
  checkpoint** (``config.json`` whose ``model_type`` a registered VLM family knows; Qwen2-VL);
* a **factory** ``path/to/file.py:function`` or ``package.module:function`` returning a model provider
  (e.g. a :class:`~dip.runtime.byo.ByoModel`) or a :class:`~dip.spec.model.ModelSpec`; the factory is
  called with those of ``seed``, ``dtype`` and ``device`` its signature accepts;
* a **preset** name or a **model spec file** (the built-in models, :class:`~dip.runtime.models.SpecModel`).

The same string resolves to the same model on every rank.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import torch

from dip.errors import BadInput
from dip.integrations.qwen2_vl import QWEN2_VL
from dip.integrations.t2v import build_wan
from dip.integrations.vlm import build_vlm
from dip.runtime.models import SpecModel
from dip.runtime.models.seeding import torch_dtype
from dip.spec.model import ModelSpec
from dip.spec.presets import load_model as load_spec

__all__ = ["DIFFUSERS_PIPELINES", "VLM_FAMILIES", "load_model", "model_source", "open_data"]


def _qwen2_vl():
    return QWEN2_VL


# transformers model_type -> family (a callable, so a family's modules load only when used)
VLM_FAMILIES: dict[str, Callable[[], Any]] = {"qwen2_vl": _qwen2_vl}


def _wan(folder: str, **kw):
    return build_wan(folder, **kw)


# diffusers pipeline class -> builder
DIFFUSERS_PIPELINES: dict[str, Callable[..., Any]] = {"WanPipeline": _wan}


def model_source(spec: str) -> str:
    """``diffusers``, ``transformers``, ``factory`` or ``spec`` (preset / spec file) for ``--model spec``."""
    if os.path.isdir(spec):
        if os.path.isfile(os.path.join(spec, "model_index.json")):
            return "diffusers"
        if os.path.isfile(os.path.join(spec, "config.json")):
            return "transformers"
        raise BadInput(
            f"model folder {spec!r} holds neither model_index.json (diffusers) nor config.json (transformers)"
        )
    head, sep, tail = spec.rpartition(":")
    if sep and tail.isidentifier() and (head.endswith(".py") or all(p.isidentifier() for p in head.split("."))):
        return "factory"
    looks_like_path = os.sep in spec or spec.startswith(".")
    if looks_like_path and not os.path.exists(spec) and not spec.lower().endswith((".yaml", ".yml", ".json")):
        raise BadInput(
            f"model folder {spec!r} does not exist (give a checkpoint folder, a spec file, a factory "
            "path/to/file.py:function or a preset name)"
        )
    return "spec"


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise BadInput(f"{path} cannot be read: {exc}") from None


def _factory(spec: str) -> Callable[..., Any]:
    head, _, name = spec.rpartition(":")
    if head.endswith(".py"):
        if not os.path.isfile(head):
            raise BadInput(f"model factory file {head!r} not found")
        mod_name = "dip_user_model_" + os.path.splitext(os.path.basename(head))[0]
        loader = importlib.util.spec_from_file_location(mod_name, os.path.abspath(head))
        module = importlib.util.module_from_spec(loader)
        sys.modules[mod_name] = module
        loader.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(head)
        except ImportError as exc:
            raise BadInput(f"model factory module {head!r} cannot be imported ({exc})") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise BadInput(f"model factory {spec!r}: {head} has no function {name!r}")
    return fn


def _call_factory(fn: Callable[..., Any], **kw) -> Any:
    params = inspect.signature(fn).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return fn(**{k: v for k, v in kw.items() if takes_all or k in params})


def load_model(
    spec: str, *, seed: int = 0, dtype: torch.dtype | str = "float32", device: torch.device | str | None = None
) -> Any:
    """The model provider of ``spec`` (see the module docstring).

    Args:
        spec: a checkpoint folder, a factory (``file.py:function`` / ``package.module:function``), a preset
            name or a model spec file.
        seed: initialisation seed (built-in and bring-your-own models; checkpoints bring their weights).
        dtype: training dtype of the parameters (``"float32"``, ``"float64"``, ``"bfloat16"``, ...).
        device: where the chunks live.

    Returns:
        A :class:`~dip.runtime.models.provider.ModelProvider` (checkpoint providers also offer
        ``open_data(path, strict=...)``, ``save_checkpoint(out, params)`` and ``tied_groups()``).
    """
    dtype = torch_dtype(dtype)
    source = model_source(spec)
    if source == "diffusers":
        index = _read_json(os.path.join(spec, "model_index.json"))
        name = index.get("_class_name")
        if name not in DIFFUSERS_PIPELINES:
            raise BadInput(
                f"diffusers pipeline {name!r} in {spec!r} is not integrated; "
                f"valid pipelines: {', '.join(DIFFUSERS_PIPELINES)}"
            )
        return DIFFUSERS_PIPELINES[name](spec, seed=seed, dtype=dtype, device=device)
    if source == "transformers":
        model_type = _read_json(os.path.join(spec, "config.json")).get("model_type")
        if model_type not in VLM_FAMILIES:
            raise BadInput(
                f"transformers model_type {model_type!r} in {spec!r} is not integrated; "
                f"valid model types: {', '.join(VLM_FAMILIES)}"
            )
        return build_vlm(spec, VLM_FAMILIES[model_type](), seed=seed, dtype=dtype, device=device)
    if source == "factory":
        got = _call_factory(_factory(spec), seed=seed, dtype=dtype, device=device)
        if isinstance(got, ModelSpec):
            return SpecModel(got, seed, dtype, device)
        missing = [m for m in ("spec", "build_chunk", "unit_data", "loss_tokens") if not hasattr(got, m)]
        if missing:
            raise BadInput(
                f"model factory {spec!r} returned {type(got).__name__}, not a model provider "
                f"(missing {', '.join(missing)})"
            )
        return got
    return SpecModel(load_spec(spec), seed, dtype, device)


def open_data(provider: Any, path: str, *, strict: bool = False) -> Any:
    """The dataset at ``path`` for ``provider`` (measured, cached, attached to the provider)."""
    opener = getattr(provider, "open_data", None)
    if opener is None:
        raise BadInput(f"model {provider.spec.name} trains on generated data; it cannot read --data {path!r}")
    if not os.path.exists(path):
        raise BadInput(f"data {path!r} does not exist")
    return opener(path, strict=strict)
