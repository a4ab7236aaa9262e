"""One pipeline rank's step engine: the one place that turns a step's plan into executed work.

:class:`StepRunner` builds the rank's stage chunks once (the layer placement must not change across
steps), and for each plan builds the dependency index once, validates the plan, lowers it for the
transport (:func:`dip.schedule.lowering.lower`, which validates the program), prepares the executor
(shape plan, routing) and runs it. The trainer, the schedule comparisons and the benchmarks all run
their steps through it; :func:`gather_actions` brings every rank's measured action times to rank 0 as
typed :class:`~dip.runtime.executor.ActionTime` records.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

import torch.distributed as dist
from torch import nn

from dip.data.meta import BatchMeta
from dip.runtime.executor import ActionTime, Executor, PreparedPlan, StepResult
from dip.runtime.handlers import Handler
from dip.runtime.stage import StageChunk
from dip.schedule.deps import DependencyIndex
from dip.schedule.ir import Plan
from dip.schedule.lowering import lower
from dip.schedule.validate import validate_plan

__all__ = ["Layout", "StepRunner", "gather_actions", "layout_of"]

logger = logging.getLogger(__name__)

Layout = tuple[tuple[str, int, int], ...]


def layout_of(plan: Plan, rank: int) -> tuple[tuple[int, Layout], ...]:
    """What ``rank`` holds under ``plan``: chunk ids with their layer ranges."""
    return tuple(
        (c.id, tuple((p.module, p.layer_start, p.layer_end) for p in c.parts)) for c in plan.graph.rank_chunks(rank)
    )


class StepRunner:
    """Runs one pipeline rank's part of every step.

    Args:
        pp_rank: the rank's position in its pipeline.
        provider: the model (:class:`dip.runtime.models.ModelProvider`).
        backend: the transport (``gloo`` or ``nccl``) the programs are lowered for.
        fixed_layout: refuse a plan that places layers this rank did not hold before (training: the
            optimizer state belongs to the first placement).
        executor_options: keyword arguments of :class:`~dip.runtime.executor.Executor` (``rank_map``,
            ``group``, ``timeout_s``, ``device``, ``comm_device``, ``handlers``, ...).
    """

    def __init__(
        self, pp_rank: int, provider: Any, *, backend: str = "gloo", fixed_layout: bool = True, **executor_options: Any
    ):
        self.pp_rank = pp_rank
        self.provider = provider
        self.backend = backend
        self.fixed_layout = fixed_layout
        self.executor = Executor(pp_rank, provider, {}, **executor_options)
        self.built: dict[Layout, StageChunk] = {}

    @property
    def stages(self) -> Mapping[int, StageChunk]:
        """The stage chunks of the current plan, by chunk id."""
        return self.executor.stages

    def register(self, op: str, handler: Handler) -> None:
        """Override an action handler of the executor (see :meth:`Executor.register`)."""
        self.executor.register(op, handler)

    def prepare(self, plan: Plan, batch: BatchMeta) -> PreparedPlan:
        """Validate and lower ``plan``, build this rank's chunks (first time only) and the executor's
        per-plan structures; run the result with :meth:`run` (every run of the same plan may reuse it)."""
        deps = DependencyIndex.of_plan(plan)
        validate_plan(plan, deps)
        program = lower(plan, self.backend, deps=deps)
        self.executor.stages = self._stages_for(plan)
        return self.executor.prepare(plan, program, batch, deps)

    def run(self, prepared: PreparedPlan, *, step_seed: int, loss_scale: float, mb_offset: int = 0) -> StepResult:
        """Execute this rank's program of ``prepared``; the loss gradient is ``loss_sum * loss_scale``."""
        return self.executor.run_step(prepared, step_seed=step_seed, loss_scale=loss_scale, mb_offset=mb_offset)

    def step(
        self, plan: Plan, batch: BatchMeta, *, step_seed: int, loss_scale: float, mb_offset: int = 0
    ) -> StepResult:
        """:meth:`prepare` then :meth:`run`."""
        return self.run(self.prepare(plan, batch), step_seed=step_seed, loss_scale=loss_scale, mb_offset=mb_offset)

    def parameters(self) -> list[nn.Parameter]:
        """Trainable parameters of every chunk this rank built."""
        return [p for s in self.built.values() for p in s.params]

    def named_parameters(self) -> dict[str, nn.Parameter]:
        """Every chunk's parameters by canonical (whole-model) name."""
        return {n: p for s in self.built.values() for n, p in s.canonical_named_parameters()}

    def parts(self) -> list[tuple[str, int, int]]:
        """``(module, layer_start, layer_end)`` of every chunk part this rank built."""
        return [part for layout in self.built for part in layout]

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def _stages_for(self, plan: Plan) -> dict[int, StageChunk]:
        out: dict[int, StageChunk] = {}
        first_plan = not self.built
        for c in plan.graph.rank_chunks(self.pp_rank):
            key = tuple((p.module, p.layer_start, p.layer_end) for p in c.parts)
            stage = self.built.get(key)
            if stage is None:
                if self.fixed_layout and not first_plan:
                    raise RuntimeError(
                        f"pipeline rank {self.pp_rank}: the plan places layers {key} here, which "
                        f"this rank did not hold before (plans must keep the layer placement)"
                    )
                stage = self.built[key] = StageChunk(c, self.provider, self.executor.device)
                logger.debug("pipeline rank %d built chunk %d: %s", self.pp_rank, c.id, c.label)
            stage.chunk = c
            out[c.id] = stage
        return out

    def __iter__(self) -> Iterator[StageChunk]:
        return iter(self.built.values())


def gather_actions(
    result: StepResult | None, rank: int, world: int, dst: int = 0, group: dist.ProcessGroup | None = None
) -> list[list[ActionTime]] | None:
    """Every rank's measured actions of one step on rank ``dst`` (``None`` elsewhere); a rank that
    contributes ``None`` appears as an empty list."""
    mine = list(result.actions) if result is not None else []
    out: list | None = [None] * world if rank == dst else None
    dist.gather_object(mine, out, dst=dst, group=group)
    return out
