"""Tied parameters across pipeline chunks (input embedding = LM head), as Megatron ties word embeddings.

A model provider declares groups of canonical parameter names that are one parameter
(``provider.tied_groups()``). Every chunk holding a member keeps its own copy; after each step's
backward the copies' gradients are summed over everything that holds the group (other chunks of the
same rank and the other pipeline ranks), so every copy gets the gradient of the tied parameter and,
with identical optimizer steps, the copies stay equal.

* :func:`tie_holders`: which pipeline ranks hold a member of each group, from the chunk layout;
* :func:`sum_tied_grads`: the local sum (single-process reference, one rank holding every copy);
* :class:`TiedGradients`: the per-step reduction between ranks (one process group per tie and
  data-parallel replica, created by :meth:`TiedGradients.create` on every rank in the same order).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

__all__ = ["TieGroup", "TiedGradients", "holder_layer", "sum_tied_grads", "tie_holders"]

Layout = Iterable[tuple[str, int, int]]  # (module, layer_start, layer_end) parts of a chunk


@dataclass(frozen=True)
class TieGroup:
    """Canonical names of one tied parameter's copies and the pipeline ranks that hold any of them."""

    names: tuple[str, ...]
    ranks: tuple[int, ...]


def holder_layer(name: str, layers: int) -> tuple[str, int]:
    """``(module, layer)`` of the chunk part holding canonical parameter ``name``: ``pre.*`` lives with
    layer 0, ``post.*`` with the last layer, ``layers.<i>.*`` with layer ``i``."""
    module, rest = name.split(".", 1)
    if rest.startswith("pre."):
        return module, 0
    if rest.startswith("post."):
        return module, layers - 1
    if rest.startswith("layers."):
        return module, int(rest.split(".", 2)[1])
    raise ValueError(f"{name!r} is not a canonical parameter name (<module>.pre|layers.<i>|post.<name>)")


def tie_holders(
    groups: Sequence[Sequence[str]], layouts: Mapping[int, Layout], layers: Mapping[str, int]
) -> list[TieGroup]:
    """For each tie group, the pipeline ranks (keys of ``layouts``) whose chunks hold a member.

    ``layouts[rank]``: the ``(module, layer_start, layer_end)`` parts of every chunk on that rank;
    ``layers[module]``: the module's layer count.
    """
    parts = {r: list(ls) for r, ls in layouts.items()}
    out = []
    for group in groups:
        ranks = set()
        for name in group:
            module, layer = holder_layer(name, layers[name.split(".", 1)[0]])
            ranks |= {r for r, ls in parts.items() if any(m == module and a <= layer < b for m, a, b in ls)}
        out.append(TieGroup(tuple(group), tuple(sorted(ranks))))
    return out


def _copies(params: Mapping[str, nn.Parameter], names: Iterable[str]) -> list[nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for n in names:
        p = params.get(n)
        if p is not None:
            seen.setdefault(id(p), p)
    return list(seen.values())


def _local(t: torch.Tensor) -> torch.Tensor:
    """The rank's part of a tensor-parallel DTensor (copies of a tie are split alike), else ``t``."""
    return t.to_local() if isinstance(t, DTensor) else t


def _local_sum(copies: Sequence[nn.Parameter]) -> torch.Tensor:
    total = torch.zeros_like(_local(copies[0].detach()))
    for p in copies:
        g = p.grad
        if g is None:
            continue
        if isinstance(g, DTensor) and tuple(g.placements) != tuple(p.placements):
            g = p.grad = g.redistribute(placements=p.placements)  # e.g. a whole vocabulary-parallel grad
        total += _local(g)
    return total


def _set_grads(copies: Sequence[nn.Parameter], total: torch.Tensor) -> None:
    with torch.no_grad():
        for p in copies:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            _local(p.grad).copy_(total)


def sum_tied_grads(params: Mapping[str, nn.Parameter], groups: Sequence[Sequence[str]]) -> None:
    """Give every local copy of each tied group the sum of the local copies' gradients."""
    for group in groups:
        copies = _copies(params, group)
        if len(copies) > 1:
            _set_grads(copies, _local_sum(copies))


@dataclass
class TiedGradients:
    """The tie reduction of one rank: its groups and, per group, the process group of its holders
    (``None`` when one rank holds every copy)."""

    groups: list[TieGroup]
    process_groups: dict[int, Any] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        provider: Any,
        layouts: Mapping[int, Layout],
        *,
        pp_rank: int,
        pp: int,
        dp: int = 1,
        dp_index: int = 0,
        tp: int = 1,
        tp_rank: int = 0,
    ) -> TiedGradients:
        """Call on every rank of the job, in the same order (``dist.new_group`` is collective).

        ``layouts`` describes one pipeline (pp ranks ``0..pp-1``); global rank of pipeline rank ``r`` in
        replica ``d`` at tensor-parallel rank ``t`` is ``(d * pp + r) * tp + t`` (the trainer's mesh,
        :mod:`dip.runtime.parallel`): each TP rank sums its own shard of the copies."""
        groups_of = getattr(provider, "tied_groups", None)
        names = groups_of() if groups_of else ()
        layers = {m.name: m.layers for m in provider.spec.modules}
        ties = tie_holders(names, layouts, layers)
        mine: dict[int, Any] = {}
        for k, tie in enumerate(ties):
            if len(tie.ranks) < 2:
                continue
            for d in range(dp):
                for t in range(tp):
                    pg = dist.new_group([(d * pp + r) * tp + t for r in tie.ranks])
                    if d == dp_index and t == tp_rank and pp_rank in tie.ranks:
                        mine[k] = pg
        return cls(list(ties), mine)

    def reduce(self, params: Mapping[str, nn.Parameter], pp_rank: int, comm_device: torch.device | None = None) -> None:
        """Sum each group's gradients over its local copies and its holder ranks; every copy gets the sum
        (``comm_device``: where the collective runs, e.g. the CPU under gloo with CUDA parameters)."""
        for k, tie in enumerate(self.groups):
            if pp_rank not in tie.ranks:
                continue
            copies = _copies(params, tie.names)
            if not copies:
                continue
            total = _local_sum(copies)
            pg = self.process_groups.get(k)
            if pg is not None:
                staged = total if comm_device is None else total.to(comm_device)
                dist.all_reduce(staged, group=pg)
                total = staged.to(total.device)
            _set_grads(copies, total)
