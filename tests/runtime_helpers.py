"""Helpers for the runtime tests: hand-made plans over any stage graph and a single-process step
(multi-process helpers: :func:`dip.runtime.spawn.spawn`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

from dip.data.meta import BatchMeta
from dip.runtime.models import ReferenceModel, as_provider, reference_step
from dip.runtime.step import StepRunner
from dip.runtime.ties import sum_tied_grads
from dip.schedule.ir import Action, Op, Plan, RankOrder, StageGraph
from dip.schedule.units import build_units, module_graph
from dip.spec.model import ModelSpec


def topo_chunks(graph: StageGraph, model: ModelSpec) -> list[int]:
    """Chunk ids in data-flow order (modules in the model's order, chunks along each group)."""
    order = []
    for m in model.modules:
        for g in graph.groups:
            chunks = graph.group_chunks(g)
            if chunks and chunks[0].parts[0].module == m.name:
                order += [c.id for c in chunks]
    return order


def gpipe_dag_order(graph: StageGraph, units: Mapping[str, Sequence], model: ModelSpec) -> RankOrder:
    """A valid compute order for any stage graph: every forward in data-flow order, then every backward
    in reverse (GPipe over the DAG)."""
    chunks = topo_chunks(graph, model)
    order: RankOrder = {r: [] for r in range(graph.num_ranks)}
    for c in chunks:
        ch = graph.chunks[c]
        order[ch.rank] += [Action(c, Op.F, u.index) for u in units[ch.group]]
    for c in reversed(chunks):
        ch = graph.chunks[c]
        order[ch.rank] += [Action(c, Op.B, u.index) for u in units[ch.group]]
    return order


def separated_plan(
    model: ModelSpec,
    batch: BatchMeta,
    layouts: Mapping[str, Sequence[tuple[int, int]]],
    placement: Mapping[str, Sequence[int]],
    pp: int,
    sub_microbatch_sizes: Mapping[str, int] | None = None,
) -> Plan:
    """One group per module, chunks ``layouts[module]`` on ranks ``placement[module]``, GPipe-over-DAG order."""
    graph = module_graph(model, pp, layouts, placement)
    units, flows = build_units(model, graph, batch, sub_microbatch_sizes)
    return Plan(graph, units, flows, gpipe_dag_order(graph, units, model), schedule="test")


def run_local_step(
    model,
    plan: Plan,
    batch: BatchMeta,
    dtype: str = "float64",
    step_seed: int = 1,
    handlers: Mapping[str, Callable] | None = None,
):
    """One step of ``plan`` on a single rank (every chunk on rank 0): (loss, grads by canonical name, result).

    ``model``: a :class:`ModelSpec` (built-in models of ``dtype``) or any model provider; tied
    parameters' copies get their summed gradient."""
    provider = as_provider(model, 0, dtype)
    runner = StepRunner(0, provider, handlers=handlers)
    total = sum(provider.loss_tokens(mb) for mb in batch.microbatches)
    res = runner.step(plan, batch, step_seed=step_seed, loss_scale=1.0 / total)
    params = runner.named_parameters()
    sum_tied_grads(params, getattr(provider, "tied_groups", tuple)())
    grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)).detach() for n, p in params.items()}
    return res.loss_sum / total, grads, res


def reference_grads(model: ModelSpec, batch: BatchMeta, dtype: str = "float64", step_seed: int = 1):
    loss, grads = reference_step(ReferenceModel(model, 0, dtype), batch, step_seed)
    return float(loss), grads
