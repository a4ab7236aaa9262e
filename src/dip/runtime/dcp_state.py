"""One rank's training state as ``torch.distributed.checkpoint`` (DCP) saves and loads it.

:func:`rank_state` returns ``{"model": {canonical name: parameter}, "optim": {"state": {canonical name:
{...}}, "param_groups": [...]}}``: tensor-parallel and FSDP parameters and the ZeRO-1 moments are
DTensors, so ``dcp.save(rank_state(...), checkpoint_id=DIR)`` on every rank writes each global tensor
once, by name, and ``dcp.load`` into the :func:`rank_state` of another run (another DP size, FSDP or
not) reshards it; :func:`load_rank_state` then hands the loaded values to the model and the optimizer.
Model and optimizer states come from ``torch.distributed.checkpoint.state_dict`` (``get_state_dict``)
over :class:`RankModules`, whose parameter names are the canonical ones; a ZeRO-1 optimizer
(:class:`~dip.runtime.zero.ShardedOptimizer`) gives its own state in the same layout.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from dip.runtime.models import ChunkModule
from dip.runtime.zero import ShardedOptimizer

__all__ = ["RankModules", "load_rank_state", "rank_state"]


class RankModules(nn.Module):
    """A rank's chunk modules under one root whose parameter names are the canonical ones
    (``llm.layers.3.attn.q.weight``), however the layers are cut into chunks."""

    def __init__(self, chunks: Iterable[ChunkModule]):
        super().__init__()
        for chunk in chunks:
            holder = self._modules.get(chunk.module_name)
            if holder is None:
                holder = nn.Module()
                holder.layers = nn.ModuleDict()
                self.add_module(chunk.module_name, holder)
            if chunk.pre is not None:
                holder.pre = chunk.pre
            holder.layers.update(chunk.layers)
            if chunk.post is not None:
                holder.post = chunk.post

    @classmethod
    def of(cls, runner) -> RankModules:
        """The chunk modules a :class:`~dip.runtime.step.StepRunner` built."""
        return cls(m for stage in runner for m in stage.modules)


def rank_state(runner, optimizer) -> dict[str, Any]:
    """The rank's model and optimizer state, ready for ``dcp.save`` or as the template of ``dcp.load``
    (call on every rank; the optimizer state is created first when empty)."""
    model = RankModules.of(runner)
    if isinstance(optimizer, ShardedOptimizer):
        return {"model": get_model_state_dict(model), "optim": optimizer.state_dict()}
    model_state, optim_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optim": optim_state}


def load_rank_state(runner, optimizer, state: dict[str, Any]) -> None:
    """Hand a loaded :func:`rank_state` to the rank's parameters and optimizer."""
    model = RankModules.of(runner)
    if isinstance(optimizer, ShardedOptimizer):
        set_model_state_dict(model, state["model"])
        optimizer.load_state_dict(state["optim"])
        return
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
