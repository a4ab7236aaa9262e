"""Where pipeline ranks sit and what a transfer between two of them costs.

Pipeline rank ``r`` owns ``tp`` consecutive GPUs, so it sits on node ``(r * tp) // gpus_per_node``.
A point-to-point message between two ranks of one node uses NVLink, otherwise the inter-node network:
``latency + alpha * bytes / bandwidth`` (bandwidths per GPU per direction; every GPU of the TP group
sends its own copy in parallel). Transfers overlap compute and never contend for a link.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dip.spec.hardware import usable_memory_bytes

__all__ = ["Topology", "as_topology"]


@dataclass(frozen=True)
class Topology:
    """Link parameters and rank placement of one pipeline (``inf`` bandwidth = free transfers)."""

    tp: int = 1
    gpus_per_node: int = 8
    intra_bw: float = math.inf
    intra_latency_s: float = 0.0
    inter_bw: float = math.inf
    inter_latency_s: float = 0.0
    p2p_alpha: float = 1.0
    peak_flops: float = 0.0
    mem_bytes: float = math.inf  # usable GPU memory: capacity minus the reserve

    @classmethod
    def from_hardware(cls, hardware, tp: int = 1, gpus_per_node: int | None = None) -> Topology:
        """Links of a :class:`dip.spec.hardware.HardwareSpec` (its ``p2p`` efficiency factor included)."""
        return cls(
            tp=int(tp),
            gpus_per_node=int(gpus_per_node or hardware.gpus_per_node),
            intra_bw=hardware.nvlink_bw,
            intra_latency_s=hardware.nvlink_latency_s,
            inter_bw=hardware.net_bw,
            inter_latency_s=hardware.net_latency_s,
            p2p_alpha=hardware.alpha("p2p"),
            peak_flops=hardware.peak_flops,
            mem_bytes=usable_memory_bytes(hardware),
        )

    def node_of(self, rank: int) -> int:
        return (rank * self.tp) // self.gpus_per_node

    def p2p_seconds(self, src_rank: int, dst_rank: int, nbytes: float) -> float:
        """Delay of one message; 0 on the same rank or for an empty message."""
        if src_rank == dst_rank or nbytes <= 0:
            return 0.0
        if self.node_of(src_rank) == self.node_of(dst_rank):
            return self.intra_latency_s + self.p2p_alpha * nbytes / self.intra_bw
        return self.inter_latency_s + self.p2p_alpha * nbytes / self.inter_bw

    def p2p_seconds_array(self, src_rank: np.ndarray, dst_rank: np.ndarray, nbytes: np.ndarray) -> np.ndarray:
        """:meth:`p2p_seconds` of many messages at once."""
        src_rank, dst_rank = np.asarray(src_rank), np.asarray(dst_rank)
        nbytes = np.asarray(nbytes, float)
        same_node = (src_rank * self.tp) // self.gpus_per_node == (dst_rank * self.tp) // self.gpus_per_node
        intra = self.intra_latency_s + self.p2p_alpha * nbytes / self.intra_bw
        inter = self.inter_latency_s + self.p2p_alpha * nbytes / self.inter_bw
        out = np.where(same_node, intra, inter)
        out[(src_rank == dst_rank) | (nbytes <= 0)] = 0.0
        return out

    def allreduce_seconds(self, nbytes: float, dp: int, pp: int) -> float:
        """Ring all-reduce of ``nbytes`` per GPU over ``dp`` replicas (NVLink if the job fits one node)."""
        if dp <= 1 or nbytes <= 0:
            return 0.0
        one_node = self.tp * pp * dp <= self.gpus_per_node
        bw, lat = (self.intra_bw, self.intra_latency_s) if one_node else (self.inter_bw, self.inter_latency_s)
        return 2.0 * (dp - 1) / dp * nbytes / bw + 2.0 * (dp - 1) * lat


def as_topology(topology, tp: int = 1) -> Topology:
    """Accept a :class:`Topology`, a ``HardwareSpec`` (placed with ``tp``) or None (free links)."""
    if topology is None:
        return Topology(tp=tp)
    if isinstance(topology, Topology):
        return topology
    return Topology.from_hardware(topology, tp=tp)
