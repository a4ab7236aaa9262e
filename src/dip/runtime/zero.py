"""ZeRO-1, Megatron's distributed optimizer: gradients all-reduced over the data-parallel ranks, the
optimizer state (and the main copy of the weights it updates) sharded over them.

[Note: main shards as DTensors] For every parameter, the optimizer steps a *main shard*: a DTensor on
the rank's ``(dp, tp)`` mesh whose ``dp`` placement splits the parameter over the data-parallel ranks
(``Shard(d)`` on a dimension tensor parallelism does not split; replicated when there is none) and
whose ``tp`` placement is the parameter's own. A step takes each rank's slice of the all-reduced
gradient (a local view: ``Replicate -> Shard`` moves no data), runs AdamW on the slices (elementwise, so
exactly the update of the whole tensor) and all-gathers the updated slices into the parameter
(``Shard -> Replicate``). Optimizer state created from DTensor mains is itself sharded DTensors, so
``torch.distributed.checkpoint`` saves it by parameter name and reshards it on load, to another DP
size as well (:meth:`ShardedOptimizer.state_dict`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Placement, Replicate, Shard

__all__ = ["ShardedOptimizer", "dp_shard_dim"]


def dp_shard_dim(shape: tuple[int, ...], tp_placement: Placement) -> int | None:
    """The dimension ZeRO splits over the data-parallel ranks: the first one tensor parallelism does
    not split (``None``: a 1-D tensor already split by TP stays whole on every DP rank)."""
    taken = tp_placement.dim if isinstance(tp_placement, Shard) else None
    for d in range(len(shape)):
        if d != taken:
            return d
    return None


@dataclass
class _Entry:
    name: str
    param: nn.Parameter
    main: nn.Parameter  # DTensor on the (dp, tp) mesh, split over dp
    whole: tuple[Placement, Placement]  # (Replicate over dp, the parameter's tp placement)
    split: tuple[Placement, Placement]


def _local(t: Tensor) -> Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


class ShardedOptimizer:
    """An optimizer (AdamW by default) over data-parallel shards of ``params`` (ZeRO-1).

    Args:
        params: the rank's parameters by canonical name (plain tensors or tensor-parallel DTensors).
        mesh: the rank's 2-D ``(dp, tp)`` device mesh (the pipeline stage's slice of the run's mesh).
        make: builds the inner optimizer from the main shards.
    """

    def __init__(self, params: Mapping[str, nn.Parameter], mesh: DeviceMesh, make: Callable[[list[nn.Parameter]], Any]):
        if mesh.ndim != 2:
            raise ValueError(f"ShardedOptimizer needs the (dp, tp) mesh, got {mesh.ndim} dimensions")
        self.mesh = mesh
        self.entries: list[_Entry] = []
        for name, p in sorted(params.items()):
            tp_placement = p.placements[0] if isinstance(p, DTensor) else Replicate()
            d = dp_shard_dim(tuple(p.shape), tp_placement)
            whole = (Replicate(), tp_placement)
            split = (Shard(d) if d is not None else Replicate(), tp_placement)
            main = self._as_split(_local(p.detach()), p, whole, split)
            main = DTensor.from_local(
                main.to_local().clone(), mesh, split, run_check=False, shape=p.shape, stride=p.stride()
            )
            self.entries.append(_Entry(name, p, nn.Parameter(main), whole, split))
        self.inner = make([e.main for e in self.entries])

    def _as_split(self, local: Tensor, p: Tensor, whole, split) -> DTensor:
        """This rank's data-parallel slice of a tensor every DP rank holds whole (a view, no data moves)."""
        dt = DTensor.from_local(local, self.mesh, whole, run_check=False, shape=p.shape, stride=p.stride())
        return dt.redistribute(self.mesh, split)

    @torch.no_grad()
    def step(self) -> None:
        """One optimizer step: every parameter's gradient must be the data-parallel sum already."""
        for e in self.entries:
            if e.param.grad is None:
                raise RuntimeError(f"{e.name} has no gradient (the gradient synchronisation fills them)")
            e.main.grad = self._as_split(_local(e.param.grad), e.param, e.whole, e.split)
        self.inner.step()
        for e in self.entries:
            gathered = e.main.detach().redistribute(self.mesh, e.whole)
            _local(e.param.data).copy_(gathered.to_local())

    def zero_grad(self, set_to_none: bool = True) -> None:
        for e in self.entries:
            e.main.grad = None
            if set_to_none:
                e.param.grad = None

    @torch.no_grad()
    def refresh(self) -> None:
        """Take the main shards from the parameters again (after loading them from a checkpoint)."""
        for e in self.entries:
            e.main.to_local().copy_(self._as_split(_local(e.param.detach()), e.param, e.whole, e.split).to_local())

    def state_dict(self) -> dict[str, Any]:
        """The optimizer state in ``torch.distributed.checkpoint.state_dict``'s layout: ``{"state":
        {canonical name: {"step", "exp_avg", "exp_avg_sq"}}, "param_groups": [{..., "params": [names]}]}``
        with the moments as DTensors sharded over the data-parallel ranks (so a checkpoint reshards to
        another DP size, or loads into a plain AdamW); empty states are created first, so a fresh
        optimizer is a loading template."""
        self._init_state()
        names = {id(e.main): e.name for e in self.entries}
        groups = [
            {**{k: v for k, v in g.items() if k != "params"}, "params": [names[id(p)] for p in g["params"]]}
            for g in self.inner.param_groups
        ]
        return {"state": {e.name: dict(self.inner.state[e.main]) for e in self.entries}, "param_groups": groups}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load what :meth:`state_dict` returned (tensors copied in place), then take the main shards from
        the parameters (load those first)."""
        self._init_state()
        with torch.no_grad():
            for e in self.entries:
                mine = self.inner.state[e.main]
                for key, value in state["state"][e.name].items():
                    if isinstance(mine.get(key), Tensor) and mine[key] is not value:
                        _local(mine[key]).copy_(_local(value))
                    else:
                        mine[key] = value
        for group, saved in zip(self.inner.param_groups, state.get("param_groups", ())):
            group.update({k: v for k, v in saved.items() if k != "params"})
        self.refresh()

    def _init_state(self) -> None:
        """Optimizer state for every main shard (AdamW's after a zero-gradient step, without the step)."""
        for e in self.entries:
            state = self.inner.state[e.main]
            if not state:
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(e.main, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(e.main, memory_format=torch.preserve_format)
