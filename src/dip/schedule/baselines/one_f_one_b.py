"""1F1B (PipeDream-Flush): ``min(P - r - 1, m)`` warm-up forwards, then one forward / one backward."""

from __future__ import annotations

from dip.schedule.baselines.common import Chain, bwd, fwd, one_chunk_per_rank
from dip.schedule.ir import Action, RankOrder


def warmup_forwards(pp: int, rank: int, m: int) -> int:
    """Forwards rank ``rank`` runs before its first backward, beyond the steady-state one."""
    return min(pp - rank - 1, m)


def rank_1f1b(chunk: int, units: tuple[int, ...], warmup: int) -> list[Action]:
    """Warm-up forwards, steady (F, B) pairs, cool-down backwards of one chunk.

    The last rank has no warm-up and starts with ``F0 B0`` (no off-by-one: every unit's F appears)."""
    m = len(units)
    acts = [fwd(chunk, units[k]) for k in range(warmup)]
    for k in range(m - warmup):
        acts.append(fwd(chunk, units[warmup + k]))
        acts.append(bwd(chunk, units[k]))
    acts += [bwd(chunk, units[k]) for k in range(m - warmup, m)]
    return acts


def one_f_one_b_order(chain: Chain) -> RankOrder:
    """1F1B over one chunk per rank; rank ``r`` holds at most ``min(P - r, m)`` activations."""
    one_chunk_per_rank(chain, "1f1b")
    return {
        r: rank_1f1b(chain.chunk(r, 0), chain.units, warmup_forwards(chain.pp, r, chain.m)) for r in range(chain.pp)
    }
