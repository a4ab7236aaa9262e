"""ZB-H1 (Zero Bubble, Qi et al. 2024): 1F1B with the backward split into I (input) and W (weight).

Rank ``r`` runs the 1F1B order with ``B`` replaced by ``I``; the ``W`` of a unit normally follows its
``I`` but rank ``r`` defers its first ``r`` weight passes to the very end, where they fill the cool-down
bubble. With ``F = I = W`` this takes ``3m + P - 1`` for ``m >= P`` (1F1B: ``3(m + P - 1)``), and no
rank holds more than ``P`` micro-batches (1F1B's peak). This is torch's ``ScheduleInterleavedZeroBubble``
(ZB1P) order with one chunk per rank.
"""

from __future__ import annotations

from collections import deque

from dip.schedule.baselines.common import Chain, bwd_input, bwd_weight, fwd, one_chunk_per_rank
from dip.schedule.baselines.one_f_one_b import warmup_forwards
from dip.schedule.ir import Action, RankOrder


def rank_zb_h1(chunk: int, units: tuple[int, ...], warmup: int, deferred: int) -> list[Action]:
    """One rank's ZB-H1 order: the first ``deferred`` W passes move to the end."""
    m = len(units)
    acts = [fwd(chunk, units[k]) for k in range(warmup)]
    pending: deque[int] = deque()

    def backward(k: int) -> None:
        acts.append(bwd_input(chunk, units[k]))
        pending.append(k)
        if k >= deferred:
            acts.append(bwd_weight(chunk, units[pending.popleft()]))

    for k in range(m - warmup):
        acts.append(fwd(chunk, units[warmup + k]))
        backward(k)
    for k in range(m - warmup, m):
        backward(k)
    acts += [bwd_weight(chunk, units[k]) for k in pending]
    return acts


def zb_h1_order(chain: Chain) -> RankOrder:
    """ZB-H1 over one chunk per rank."""
    one_chunk_per_rank(chain, "zb-h1")
    return {
        r: rank_zb_h1(chain.chunk(r, 0), chain.units, warmup_forwards(chain.pp, r, chain.m), r) for r in range(chain.pp)
    }
