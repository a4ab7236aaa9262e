"""Interleaved 1F1B (Megatron-LM virtual pipeline parallelism), identical to Megatron-core's order.

Megatron-core builds a *schedule table* of virtual micro-batches ``k -> (micro-batch, local chunk)``:
micro-batches are taken in groups of ``microbatch_group_size_per_vp_stage`` (default: ``pp``); within a
group every local chunk runs the whole group before the next chunk; the last group holds the remainder
when ``m`` is not a multiple of the group size. Rank ``r`` runs ``(pp - r - 1) * 2 + (v - 1) * group``
warm-up forwards (capped at ``m * v``), then alternates forward ``warmup + k`` with backward ``k``, then
drains the remaining backwards. Backward ``k`` runs local chunk ``v - 1 - chunk(k)`` on micro-batch
``mb(k)``. With one chunk per rank this is plain 1F1B.

Megatron requires ``pp <= group <= m`` and a last group that is complete or holds at least ``pp``
micro-batches (a shorter one creates dependency stalls). It defaults the group to ``pp``, so ``m`` must be
a multiple of ``pp`` unless the group size is raised; :func:`default_group` picks the smallest valid size
(``pp`` whenever ``m`` is a multiple of ``pp``), as a user would with
``--microbatch-group-size-per-virtual-pipeline-stage``.
"""

from __future__ import annotations

from dip.errors import BadInput
from dip.schedule.baselines.common import Chain, bwd, fwd
from dip.schedule.baselines.one_f_one_b import one_f_one_b_order
from dip.schedule.ir import Action, RankOrder


def schedule_table(m: int, v: int, group: int) -> list[tuple[int, int]]:
    """Megatron-core's ``get_schedule_table``: virtual micro-batch -> (micro-batch, local chunk)."""
    table: list[tuple[int, int]] = []
    for first in range(0, m, group):
        last = min(first + group, m)
        table += [(mb, chunk) for chunk in range(v) for mb in range(first, last)]
    return table


def warmup_count(pp: int, rank: int, m: int, v: int, group: int) -> int:
    """Megatron-core's warm-up forwards of ``rank`` (``get_pp_rank_microbatches``)."""
    if v == 1:
        return min(pp - rank - 1, m)
    return min((pp - rank - 1) * 2 + (v - 1) * group, m * v)


def check_group(pp: int, m: int, group: int) -> None:
    """Megatron's rules for the interleaved schedule's micro-batch group size."""
    if m < pp:
        raise BadInput(f"the interleaved schedule needs at least pp {pp} micro-batches, got {m}")
    if not pp <= group <= m:
        raise BadInput(f"interleaved micro-batch group size {group} must lie in [pp {pp}, micro-batches {m}]")
    if 0 < m % group < pp:
        raise BadInput(
            f"interleaved: the last micro-batch group holds {m % group} micro-batches "
            f"({m} micro-batches in groups of {group}), fewer than pp {pp}"
        )


def default_group(pp: int, m: int) -> int:
    """The smallest valid group size: ``pp`` when ``m`` is a multiple of ``pp``."""
    if m < pp:
        raise BadInput(f"the interleaved schedule needs at least pp {pp} micro-batches, got {m}")
    return next(g for g in range(pp, m + 1) if m % g == 0 or m % g >= pp)


def rank_interleaved(chain: Chain, rank: int, group: int) -> list[Action]:
    table = schedule_table(chain.m, chain.v, group)
    total = len(table)
    warmup = warmup_count(chain.pp, rank, chain.m, chain.v, group)

    def f(k: int) -> Action:
        mb, local = table[k]
        return fwd(chain.chunk(rank, local), chain.units[mb])

    def b(k: int) -> Action:
        mb, local = table[k]
        return bwd(chain.chunk(rank, chain.v - 1 - local), chain.units[mb])

    acts = [f(k) for k in range(warmup)]
    for k in range(total - warmup):
        acts += [f(warmup + k), b(k)]
    acts += [b(k) for k in range(total - warmup, total)]
    return acts


def interleaved_order(chain: Chain, group: int | None = None) -> RankOrder:
    """Megatron's interleaved 1F1B over ``v`` chunks per rank (plain 1F1B when ``v == 1``)."""
    if chain.v == 1:
        return one_f_one_b_order(chain)
    group = default_group(chain.pp, chain.m) if group is None else group
    check_group(chain.pp, chain.m, group)
    return {r: rank_interleaved(chain, r, group) for r in range(chain.pp)}
