"""Activation memory: what a forward action keeps for its backward, measured, next to the cost model's
prediction.

[Note: measuring saved activations] During every forward action the executor installs
``torch.autograd.graph.saved_tensors_hooks``: each tensor autograd saves for the backward is counted
once per storage (views of one activation count once), parameters excluded (a linear layer saves its
weight, which is no activation). DTensors count their local part: what this rank holds. Where other
hooks sit inside ours (a recomputed block keeps only its inputs; the sequence-parallel input
resharding keeps the rank's rows) those places report what they keep
(:mod:`dip.runtime.models.saved`). On a GPU the growth of ``torch.cuda.memory_allocated`` over the
action is recorded as well.

:func:`activation_report` compares, per chunk of a step's plan, the measured bytes summed over the
chunk's units with the simulator's ``act_bytes`` (the cost model with the run's TP and sequence
parallelism, :mod:`dip.cost.ops`) under the strategies the executor ran.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from dip.runtime.models.saved import tracking_saved
from dip.sim.costs import stage_costs

__all__ = ["SavedBytes", "activation_report", "executed_strategies", "storage_key"]


def _local(t: Tensor) -> Tensor:
    if isinstance(t, DTensor):
        with torch.no_grad():
            return t.to_local()
    return t


def storage_key(t: Tensor) -> tuple[int, int] | None:
    """``(data pointer, bytes)`` of ``t``'s storage (its local part for a DTensor); ``None`` without one."""
    try:
        s = _local(t).untyped_storage()
        return s.data_ptr(), s.nbytes()
    except (RuntimeError, NotImplementedError):  # tensors without storage (meta, sparse, nested)
        return None


@dataclass
class SavedBytes:
    """Counts the bytes of the tensors saved for backward inside :meth:`measure` (parameters excluded)."""

    excluded: set[int] = field(default_factory=set)  # storage data pointers of the parameters

    @classmethod
    def excluding(cls, params: Iterable[Tensor]) -> SavedBytes:
        keys = (storage_key(p) for p in params)
        return cls({k[0] for k in keys if k is not None})

    @contextlib.contextmanager
    def measure(self) -> Iterator[list[int]]:
        """``with counter.measure() as total:`` -- ``total[0]`` holds the bytes once the block ends."""
        seen: set[int] = set()
        total = [0]

        def note(t: Tensor) -> None:
            if isinstance(t, nn.Parameter) or isinstance(t._base, nn.Parameter):
                return  # a weight (FSDP gathers its parameters into new storage every time)
            key = storage_key(t)
            if key is not None and key[0] not in seen and key[0] not in self.excluded:
                seen.add(key[0])
                total[0] += key[1]

        def pack(t: Tensor) -> Tensor:
            note(t)
            return t

        with tracking_saved(note), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield total


def executed_strategies(plan: Any, device_type: str) -> dict[tuple[int, int], tuple[str, ...]]:
    """Every (chunk, unit)'s memory strategies as the executor runs them (on a CPU ``offload`` is
    ``none``: host memory is where the activations already are)."""
    out = {}
    for c in plan.graph.chunks:
        for u in plan.units[c.group]:
            got = plan.strategy(c.id, u.index)
            out[(c.id, u.index)] = tuple("none" if device_type == "cpu" and s == "offload" else s for s in got)
    return out


def activation_report(
    plan: Any, batch: Any, model: Any, cost_model: Any, rows: Sequence[Sequence[Any]], device_type: str = "cpu"
) -> dict[str, Any]:
    """Predicted (the cost model's activation bytes of every (chunk, unit) under the strategies the
    executor ran) and measured (the ``saved_bytes`` of every forward in ``rows``, one list of
    ``ActionTime`` per pipeline rank) activation bytes per chunk of ``plan``.

    Returns ``{"chunks": [{chunk, rank, modules, predicted_bytes, measured_bytes, allocated_bytes,
    rel_err}], "predicted_bytes", "measured_bytes", "max_rel_err"}`` (``rel_err`` relative to the
    measurement; ``allocated_bytes``: the growth of CUDA's allocated memory over the forwards, 0 on a
    CPU)."""
    costs = stage_costs(
        plan.graph, plan.units, plan.flows, model, cost_model, batch, executed_strategies(plan, device_type)
    )
    measured: dict[int, int] = {}
    allocated: dict[int, int] = {}
    for acts in rows:
        for t in acts:
            if t.action.op.value == "F":
                measured[t.action.chunk] = measured.get(t.action.chunk, 0) + int(t.saved_bytes)
                allocated[t.action.chunk] = allocated.get(t.action.chunk, 0) + int(t.allocated_bytes)
    chunks = []
    for c in plan.graph.chunks:
        predicted = sum(float(costs.act_bytes[costs.stage(c.id, u.index)]) for u in plan.units[c.group])
        got = measured.get(c.id, 0)
        err = abs(predicted - got) / got if got else (0.0 if predicted == 0 else float("inf"))
        chunks.append(
            {
                "chunk": c.id,
                "rank": c.rank,
                "modules": "+".join(c.modules),
                "predicted_bytes": predicted,
                "measured_bytes": got,
                "allocated_bytes": allocated.get(c.id, 0),
                "rel_err": err,
            }
        )
    return {
        "chunks": chunks,
        "predicted_bytes": sum(x["predicted_bytes"] for x in chunks),
        "measured_bytes": sum(x["measured_bytes"] for x in chunks),
        "max_rel_err": max((x["rel_err"] for x in chunks), default=0.0),
    }
