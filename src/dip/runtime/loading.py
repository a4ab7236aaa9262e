"""How ``--model`` and ``--data`` become a model provider and a dataset, as the trainer receives them.

The runtime knows only its built-in models (presets and spec files, :class:`SpecModel`); checkpoints,
factories and dataset readers live in a layer above (:mod:`dip.integrations`), which hands its
functions to :func:`dip.runtime.trainer.train` (``load=``, ``open_data=``). :func:`open_model` is the one
place every caller (the CLI's checks before any rank starts, every rank, the reference checker, the
schedule comparisons) turns the two strings into a provider and its dataset, in the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from dip.data.packing import DocumentMeta
from dip.errors import BadInput
from dip.runtime.models import SpecModel
from dip.spec.presets import load_model as load_spec

__all__ = ["DataOpener", "ModelLoader", "TrainingData", "load_builtin", "no_data", "open_model"]

ModelLoader = Callable[..., Any]  # (spec: str, *, seed, dtype, device) -> model provider
DataOpener = Callable[..., Any]  # (provider, path: str, *, strict: bool) -> TrainingData


class TrainingData(Protocol):
    """A dataset the trainer packs and loads from: per-sample metadata for the planner, the bad samples
    it left out, and (optionally) ``load(key)`` / ``prime(loaded)`` for the step's data loader
    (:mod:`dip.runtime.dataload`)."""

    skipped: Any  # .total, .by_kind

    def __len__(self) -> int: ...

    def documents(self) -> list[DocumentMeta]: ...


def load_builtin(spec: str, *, seed: int = 0, dtype: Any = "float32", device: Any = None) -> SpecModel:
    """A built-in model: a preset name or a model spec file (YAML / JSON)."""
    return SpecModel(load_spec(spec), seed, dtype, device)


def no_data(provider: Any, path: str, *, strict: bool = False) -> Any:
    """The data opener of a runtime without dataset readers: every ``--data`` is refused."""
    raise BadInput(f"model {provider.spec.name} trains on generated data; it cannot read --data {path!r}")


def open_model(
    model: str,
    *,
    load: ModelLoader = load_builtin,
    open_data: DataOpener = no_data,
    seed: int = 0,
    dtype: Any = "float32",
    device: Any = None,
    data: str | None = None,
    strict: bool = False,
    context_length: int | None = None,
) -> tuple[Any, TrainingData | None]:
    """The provider of ``model`` and, with ``data``, its dataset (measured and attached).

    Args:
        model: what follows ``--model`` (preset, spec file, factory, checkpoint folder).
        load: turns ``model`` into a provider (``dip.integrations.load_model`` for everything).
        open_data: opens ``data`` for the provider (``dip.integrations.open_data``).
        seed: initialisation seed of built-in and bring-your-own models.
        dtype: parameter dtype.
        device: where the chunks live.
        data: a dataset file or folder; required by providers with ``requires_data``.
        strict: a bad sample is an error naming file and line instead of being skipped.
        context_length: pack micro-batches up to this many tokens (at most the model's own context);
            set before the data is measured, so longer samples are skipped as too long.

    Returns:
        ``(provider, dataset or None)``.
    """
    provider = load(model, seed=seed, dtype=dtype, device=device)
    if context_length is not None:
        limit = provider.spec.context_length
        if not 0 < context_length <= limit:
            raise BadInput(
                f"context-length must be between 1 and model {provider.spec.name}'s {limit}, got {context_length}"
            )
        provider.spec = replace(provider.spec, context_length=context_length)
    if data is None:
        if getattr(provider, "requires_data", False):
            raise BadInput(
                f"model {model!r} trains on a dataset: give --data FILE_OR_FOLDER (e.g. from dip data sample)"
            )
        return provider, None
    return provider, open_data(provider, data, strict=strict)
