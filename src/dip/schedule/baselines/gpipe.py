"""GPipe: all forwards, then all backwards (looped over a rank's chunks when it holds several)."""

from __future__ import annotations

from dip.schedule.baselines.common import Chain, bwd, fwd
from dip.schedule.ir import RankOrder


def gpipe_order(chain: Chain) -> RankOrder:
    """Rank ``r``: ``F`` of every unit on each local chunk (first chunk first), then ``B`` of every unit
    on each local chunk in reverse chunk order. Every rank holds all ``m`` micro-batches' activations."""
    order: RankOrder = {}
    for r in range(chain.pp):
        acts = [fwd(chain.chunk(r, j), u) for j in range(chain.v) for u in chain.units]
        acts += [bwd(chain.chunk(r, j), u) for j in reversed(range(chain.v)) for u in chain.units]
        order[r] = acts
    return order
