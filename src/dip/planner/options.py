"""The options of DIP's per-batch search, gathered in one object that checks itself.

Modelled on Megatron-core's ``ModelParallelConfig``: keyword-only fields with a docstring each, and
the cross-field rules in ``__post_init__``, so a bad value fails where it is made, naming the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from dip.errors import BadInput
from dip.planner.evaluate import TrackConfig
from dip.planner.mcts import DEFAULT_ALPHA, DEFAULT_BETA, DEFAULT_ROLLOUTS_PER_EXPANSION, STRATEGIES

__all__ = ["DEFAULT_BUDGET_S", "SearchOptions"]

DEFAULT_BUDGET_S = 2.0


@dataclass(frozen=True, kw_only=True)
class SearchOptions:
    """How :func:`dip.planner.plan_batch` searches one batch (paper §5, Fig. 7)."""

    budget_s: float | None = None
    """Search seconds per batch (``DEFAULT_BUDGET_S`` when neither this nor ``rollouts`` is given);
    finite and > 0."""

    rollouts: int | None = None
    """Rollouts per batch: a deterministic search whose work, never the clock, decides when it stops.
    Takes precedence over ``budget_s``."""

    workers: int = 1
    """Search processes sharing the MCTS statistics (:mod:`dip.planner.parallel`)."""

    seed: int = 0
    """Seed of every random choice of the search."""

    strategy: str = "mcts"
    """Segment search: ``mcts`` (the paper), ``dfs`` or ``random`` (its Fig. 11 comparisons)."""

    alpha: float = DEFAULT_ALPHA
    """MCTS exploration weight (UCT's constant)."""

    beta: float = DEFAULT_BETA
    """MCTS weight of a node's best rollout against its mean."""

    window: int | tuple[int, ...] | None = None
    """Segments an MCTS step may choose among; several windows run side by side. Default by size:
    ``(3, 6, 12)`` on small problems, 3 on large ones."""

    rollouts_per_expansion: int = DEFAULT_ROLLOUTS_PER_EXPANSION
    """Rollouts run from every newly expanded node."""

    tune: bool = True
    """Tune the tracking configuration, micro-batch order and priority shifts before the tree search."""

    polish: bool = True
    """Polish the best schedules after the tree search (:mod:`dip.planner.polish`)."""

    configs: tuple[TrackConfig, ...] | None = None
    """Tracking configurations to tune over (default: all on small problems, a subset on large ones)."""

    search_configs: int | None = None
    """How many of the best-tuned configurations the tree search explores (default by size)."""

    seeds: tuple = ()
    """Known schedules ``(ptr, tasks, choice)`` of the problem, offered as incumbents up front."""

    passes: int = 3
    """Interleaving passes per evaluation (each re-interleaves with the previous pass's timing)."""

    def __post_init__(self) -> None:
        if self.budget_s is not None and not (math.isfinite(self.budget_s) and self.budget_s > 0):
            raise BadInput(f"budget must be a finite number of seconds > 0, got {self.budget_s}")
        if self.rollouts is not None and (not isinstance(self.rollouts, int) or self.rollouts < 0):
            raise BadInput(f"rollouts must be an integer >= 0, got {self.rollouts}")
        if not isinstance(self.workers, int) or self.workers < 1:
            raise BadInput(f"workers must be an integer >= 1, got {self.workers}")
        if self.strategy not in STRATEGIES:
            raise BadInput(f"unknown search strategy {self.strategy!r}; valid strategies: {', '.join(STRATEGIES)}")
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise BadInput(f"{name} must be a finite number >= 0, got {value}")
        windows = (self.window,) if isinstance(self.window, int) else (self.window or ())
        if any(w < 1 for w in windows):
            raise BadInput(f"window must be >= 1, got {self.window}")
        if self.rollouts_per_expansion < 1:
            raise BadInput(f"rollouts_per_expansion must be >= 1, got {self.rollouts_per_expansion}")
        if self.search_configs is not None and self.search_configs < 1:
            raise BadInput(f"search_configs must be >= 1, got {self.search_configs}")
        if self.passes < 1:
            raise BadInput(f"passes must be >= 1, got {self.passes}")

    @property
    def deterministic(self) -> bool:
        """True when a rollout budget, not the clock, bounds the search."""
        return self.rollouts is not None

    @property
    def budget(self) -> float | None:
        """Search seconds (``None`` in deterministic mode)."""
        if self.deterministic:
            return None
        return float(self.budget_s if self.budget_s is not None else DEFAULT_BUDGET_S)

    def replace(self, **changes) -> SearchOptions:
        """A copy with ``changes`` (checked again)."""
        return replace(self, **changes)
