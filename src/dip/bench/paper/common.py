"""What every experiment of ``dip bench paper`` shares: its settings, its rows and its context.

An experiment returns an :class:`Experiment`: rows ``name | ours | paper | unit | fits`` (the paper's
value from :mod:`dip.bench.paper.reference`, ``None`` where the paper states no number), the name of
its figure, the settings it ran with and notes that say how to read it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from dip.bench.paper.reference import paper_value
from dip.cost import CostModel
from dip.data.meta import BatchMeta
from dip.planner import SearchOptions
from dip.spec import ModelSpec, load_model
from dip.spec.hardware import HardwareSpec, get_hardware

__all__ = ["GIB", "Context", "Experiment", "Row", "Settings", "mean_images", "mean_or_none", "row"]

GIB = 2**30


@dataclass(frozen=True)
class Row:
    """One number of an experiment next to the paper's.

    ``fits``: whether the plan behind the number fits the usable GPU memory (``None`` where the row is
    not a plan's time, e.g. a ratio or an accuracy); a plan that does not fit has ``ours = None``.
    """

    name: str
    ours: float | None
    paper: float | None
    unit: str
    fits: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def ratio(self) -> float | None:
        """ours / paper, when both are numbers and the paper's is not zero."""
        if self.ours is None or self.paper is None or self.paper == 0:
            return None
        return self.ours / self.paper


def row(
    experiment: str, name: str, ours: float | None, unit: str, fits: bool | None = None, key: str | None = None
) -> Row:
    """A row of ``experiment`` with the paper's value of row ``key`` (default ``name``); a non-finite
    ``ours``, or any ``ours`` of a plan that does not fit, is ``None``."""
    value = None if ours is None or not math.isfinite(float(ours)) or fits is False else float(ours)
    return Row(name, value, paper_value(experiment, key or name), unit, fits)


def mean_or_none(values: Sequence[float | None]) -> float | None:
    """Mean of ``values``; ``None`` when empty or when any is ``None`` (a mean over part of the data
    would not be comparable)."""
    if not values or any(v is None for v in values):
        return None
    return float(sum(values) / len(values))


def mean_images(batches: Sequence[BatchMeta]) -> float:
    """Mean images per micro-batch over ``batches``."""
    mbs = [mb for b in batches for mb in b.microbatches]
    return sum(mb.images for mb in mbs) / max(len(mbs), 1)


@dataclass
class Experiment:
    """An experiment's result: rows, figure file (relative to the output folder), settings, notes."""

    name: str
    title: str
    rows: list[Row]
    figure: str
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "rows": [r.to_dict() for r in self.rows],
            "figure": self.figure,
            "settings": self.settings,
            "notes": self.notes,
            "data": self.data,
            "wall_s": self.wall_s,
        }


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Every knob of the suite; :meth:`full` reproduces the paper's settings, :meth:`quick` the same code
    paths reduced to minutes. DIP searches each batch on one worker for ``budget_s`` seconds (the paper's
    per-iteration budget) or, when that is ``None``, for ``rollouts`` rollouts (deterministic; also the
    budget of the worst-schedule search); ``polish``: the planner's polishing phase."""

    mode: str
    seed: int = 0
    hardware: str = "H800"
    microbatches: int = 64
    budget_s: float | None = 10.0
    rollouts: int = 64
    polish: bool = True
    # table1 (Table 1): 1F1B on 8 GPUs, FLOPs per iteration held at the paper's
    table1_lm: str = "LM-7B"
    table1_vlm: str = "VLM-7B"
    table1_batches: int = 10
    # e2e (Fig. 8a)
    e2e_models: tuple[str, ...] = ("VLM-S", "VLM-M", "VLM-L", "T2V-S", "T2V-L")
    e2e_batches: int = 100
    # dynamic (Fig. 8b): which of the 40 iterations to plan (None: all)
    dynamic_model: str = "VLM-S"
    dynamic_iterations: tuple[int, ...] | None = None
    # ablation (Table 5)
    ablation_model: str = "VLM-S"
    ablation_batches: int = 10
    # submb (Fig. 9)
    submb_model: str = "VLM-S"
    submb_sizes: tuple[int, ...] = (4, 8, 12, 16, 20, 24, 28, 32)
    submb_batches: int = 3
    # memory (Fig. 10)
    memory_model: str = "VLM-M"
    # search (Fig. 11)
    search_model: str = "VLM-L"
    search_budget_s: float = 20.0
    # scalability (Fig. 12)
    scalability_models: tuple[str, ...] = ("VLM-S", "T2V-S")
    scalability_microbatches: tuple[int, ...] = (2, 4, 6, 8, 12, 16)
    exact_time_limit_s: float = 300.0
    # accuracy (Fig. 13): real runs on 2 local processes
    accuracy_model: str = "tiny-vlm"
    accuracy_schedules: tuple[str, ...] = ("dip", "1f1b")
    accuracy_steps: int = 8
    accuracy_repeats: int = 3
    accuracy_microbatches: int = 8
    accuracy_gpu_hardware: str = "h100"
    # xl (Fig. 14): simulated large clusters
    xl_models: tuple[str, ...] = ("VLM-XL-8k", "VLM-XL-16k", "T2V-XL-3k", "T2V-XL-6k")
    xl_hardware: str = "H100"
    xl_batches: int = 5

    @classmethod
    def full(cls, seed: int = 0) -> Settings:
        """The paper's settings (hours on a few CPU cores)."""
        return cls(mode="full", seed=seed)

    @classmethod
    def quick(cls, seed: int = 0) -> Settings:
        """Every experiment reduced: fewer batches and points, shorter searches (minutes on 2 cores)."""
        return cls(
            mode="quick",
            seed=seed,
            budget_s=None,
            rollouts=16,
            polish=False,
            table1_batches=2,
            e2e_batches=4,
            dynamic_iterations=tuple(range(1, 21)),  # the first rise and fall; the second repeats it
            ablation_batches=1,
            submb_sizes=(4, 8, 12, 16, 24, 32),
            submb_batches=1,
            search_budget_s=3.0,
            scalability_models=("VLM-S",),
            scalability_microbatches=(2, 4, 8),
            exact_time_limit_s=10.0,
            accuracy_steps=5,
            accuracy_repeats=2,
            xl_batches=1,
        )

    def replace(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def search(self, seed: int = 0) -> SearchOptions:
        """DIP's search options for one batch (``seed`` offsets the suite's seed)."""
        if self.budget_s is not None:
            return SearchOptions(budget_s=self.budget_s, polish=self.polish, seed=self.seed * 1000 + seed)
        return SearchOptions(rollouts=self.rollouts, polish=self.polish, seed=self.seed * 1000 + seed)

    def search_label(self) -> str:
        """How DIP searches each batch, in words."""
        how = f"{self.budget_s:g} s" if self.budget_s is not None else f"{self.rollouts} rollouts"
        return f"{how} per batch on one worker" + ("" if self.polish else ", no polishing")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Context:
    """What an experiment needs besides its settings: where figures go and how to report progress."""

    settings: Settings
    out_dir: str
    tick: Callable[[str], None] = lambda what: None

    def figure_path(self, name: str) -> str:
        return os.path.join(self.out_dir, name)

    def cost_setup(self, model_name: str) -> tuple[ModelSpec, HardwareSpec, CostModel]:
        """The model preset, the settings' hardware and their cost model."""
        model = load_model(model_name)
        hardware = get_hardware(self.settings.hardware)
        return model, hardware, CostModel(model, hardware)
