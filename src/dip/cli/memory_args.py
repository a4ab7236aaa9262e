"""The Megatron memory flags shared by ``dip cost``, ``dip simulate`` and ``dip plan``."""

from __future__ import annotations

import argparse
import math
from typing import Any

from dip.errors import BadInput, positive_int
from dip.spec.hardware import GIB, HardwareSpec, usable_memory_bytes

__all__ = ["add_memory_arguments", "memory_limit_bytes", "memory_overrides"]


def add_memory_arguments(parser: argparse.ArgumentParser, dp: bool = True, limit: bool = True) -> None:
    """The memory flags shared by ``dip cost``, ``dip simulate`` and ``dip plan``: the usable memory
    (``--memory-limit-gib`` or ``--memory-reserve-gib``; with ``limit=False`` the reserve only) and
    Megatron's memory features (``--dp``, ``--no-sequence-parallel``, ``--no-distributed-optimizer``)."""
    reserve_help = "GiB of each GPU kept free of modelled tensors (default 8%% of its memory)"
    if limit:
        group = parser.add_mutually_exclusive_group()
        group.add_argument(
            "--memory-limit-gib",
            type=float,
            help="usable GPU memory in GiB (default: the hardware's capacity minus the reserve)",
        )
        group.add_argument("--memory-reserve-gib", type=float, help=reserve_help)
    else:
        parser.add_argument("--memory-reserve-gib", type=float, help=reserve_help)
    if dp:
        parser.add_argument("--dp", type=int, help="data parallel degree (default: the model's)")
    parser.add_argument(
        "--no-sequence-parallel",
        action="store_true",
        help="keep TP-replicated activations whole (default: sequence parallelism when tp > 1)",
    )
    parser.add_argument(
        "--no-distributed-optimizer",
        action="store_true",
        help="replicate the optimizer state on every DP rank (default: sharded when dp > 1)",
    )


def memory_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``with_overrides`` keywords of the memory flags (``--dp``, ``--no-sequence-parallel``, ...)."""
    out: dict[str, Any] = {}
    if getattr(args, "dp", None) is not None:
        out["dp"] = positive_int("--dp", args.dp)
    if args.no_sequence_parallel:
        out["sequence_parallel"] = False
    if args.no_distributed_optimizer:
        out["distributed_optimizer"] = False
    return out


def memory_limit_bytes(hardware: HardwareSpec, limit_gib: float | None, reserve_gib: float | None) -> float:
    """``--memory-limit-gib`` in bytes when given, else the hardware's usable memory (capacity minus
    ``--memory-reserve-gib``, default 8% of the capacity)."""
    if limit_gib is not None:
        if not math.isfinite(limit_gib) or limit_gib <= 0:
            raise BadInput(f"--memory-limit-gib must be a number > 0, got {limit_gib}")
        return float(limit_gib) * GIB
    return usable_memory_bytes(hardware, reserve_gib)
