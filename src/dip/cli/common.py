"""Helpers shared by the CLI commands: JSON output, positive-int parsing, safe file writing, memory flags."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from typing import Any

from dip.errors import BadInput
from dip.spec.hardware import GIB, HardwareSpec, usable_memory_bytes


def emit(obj: dict[str, Any], as_json: bool, text: str | None = None) -> None:
    """Print exactly one JSON object (``--json``) or a human-readable text."""
    if as_json:
        sys.stdout.write(json.dumps(_clean(obj)) + "\n")
    else:
        sys.stdout.write((text if text is not None else json.dumps(_clean(obj), indent=2)) + "\n")


def _clean(x):
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "item") and callable(x.item):  # numpy scalars
        return _clean(x.item())
    return x


def positive_int(field: str, value: int, minimum: int = 1) -> int:
    if value is None or int(value) < minimum:
        raise BadInput(f"{field} must be an integer >= {minimum}, got {value}")
    return int(value)


def check_writable(path: str, field: str = "output file") -> str:
    """Fail early (before any work) when ``path`` cannot be written."""
    d = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(d) or not os.access(d, os.W_OK):
        raise BadInput(f"{field} {path!r} cannot be written (directory {d!r} missing or read-only)")
    return path


def write_atomic(path: str, data: bytes | str) -> None:
    """Write ``data`` to ``path`` via a temporary file so nothing half-written is left behind."""
    mode = "wb" if isinstance(data, bytes) else "w"
    d = os.path.dirname(os.path.abspath(path)) or "."
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".dip-tmp-")
    try:
        with os.fdopen(fd, mode) as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def add_memory_arguments(parser: argparse.ArgumentParser, dp: bool = True) -> None:
    """The Megatron memory flags shared by ``dip cost``, ``dip simulate`` and ``dip plan``."""
    if dp:
        parser.add_argument("--dp", type=int, help="data parallel degree (default: the model's)")
    parser.add_argument("--no-sequence-parallel", action="store_true",
                        help="keep TP-replicated activations whole (default: sequence parallelism when tp > 1)")
    parser.add_argument("--no-distributed-optimizer", action="store_true",
                        help="replicate the optimizer state on every DP rank (default: sharded when dp > 1)")


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
