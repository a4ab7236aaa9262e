"""Accelerator and interconnect specifications for the analytical cost model.

Datasheet numbers (peak dense bf16 FLOP/s, HBM bandwidth, NVLink, inter-node network, PCIe) plus the
efficiency factors of the latency model ``max(a_f*flops/F, a_m*bytes/B_mem, a_n*net/B_net)``:

* ``alphas[op_class]`` (>= 1 on real hardware) multiplies the dominant term of each operator class:
  ``gemm`` and ``attention`` scale the FLOP term, ``elementwise`` the memory term of every operator,
  ``collective`` (TP all-reduce) and ``p2p`` (pipeline send/recv) the network term, ``offload`` the
  PCIe term of activation offloading;
* :class:`GemmCurve` makes GEMM efficiency fall for small shapes:
  ``efficiency(m, n, k) = 1 / (alpha_gemm * (1 + m0/m + n0/n + k0/k))``; attention kernels get the same
  shape penalty in their query and key lengths (``attn_s0``).

The ``cpu`` preset is a measured calibration (``dip profile``) shipped in ``dip/cost/calibrations``;
:func:`get_hardware` also accepts a path to any calibration JSON.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from dip.errors import BadInput, choices_error, validation_message
from dip.io import write_atomic

__all__ = [
    "CALIBRATION_DIR",
    "DEFAULT_MEMORY_RESERVE_FRACTION",
    "GB",
    "GIB",
    "OP_CLASSES",
    "PRESETS",
    "GemmCurve",
    "HardwareSpec",
    "calibration_path",
    "default_alphas",
    "get_hardware",
    "list_hardware",
    "shipped_calibrations",
    "usable_memory_bytes",
]

logger = logging.getLogger(__name__)

OP_CLASSES: tuple[str, ...] = ("gemm", "attention", "elementwise", "collective", "p2p", "offload")
GB = 1e9
GIB = 2**30
# Share of a GPU's memory kept free of the modelled tensors: the CUDA context and NCCL buffers,
# cuBLAS / flash-attention workspaces and the caching allocator's fragmentation (docs/memory.md).
DEFAULT_MEMORY_RESERVE_FRACTION = 0.08


@dataclass(frozen=True)
class GemmCurve:
    """Shape penalty of GEMMs (m x k times k x n): efficiency ~ 1 / (1 + m0/m + n0/n + k0/k)."""

    m0: float = 0.0
    n0: float = 0.0
    k0: float = 0.0

    def penalty(self, m: float, n: float, k: float) -> float:
        """Factor >= 1 by which a GEMM of this shape is slower than an infinitely large one."""
        return 1.0 + self.m0 / max(m, 1.0) + self.n0 / max(n, 1.0) + self.k0 / max(k, 1.0)


def default_alphas(**changes: float) -> dict[str, float]:
    """Efficiency factors calibrated on Hopper (H800, TP 8) against the paper's per-layer timings."""
    alphas = {"gemm": 1.25, "attention": 1.9, "elementwise": 1.25, "collective": 1.25, "p2p": 1.25, "offload": 1.25}
    alphas.update(changes)
    return alphas


@dataclass(frozen=True)
class HardwareSpec:
    """One accelerator type and its links. Bandwidths are bytes/s per GPU per direction."""

    name: str
    peak_flops: float
    mem_bw: float
    mem_bytes: float
    nvlink_bw: float
    nvlink_latency_s: float
    net_bw: float
    net_latency_s: float
    host_bw: float
    gpus_per_node: int = 8
    alphas: dict[str, float] = field(default_factory=default_alphas, hash=False)
    gemm_curve: GemmCurve = GemmCurve(m0=2048.0, n0=128.0, k0=128.0)
    attn_s0: float = 256.0
    kernel_overhead_s: float = 5e-6
    description: str = field(default="", compare=False)
    # measured / modelled compute time of the runtime's actions per module kind and pass
    # (``{"vit": {"f": 1.4, "b": 1.2}}``): what the real model code and the executor add to the
    # profiled blocks (masks, rotary tables, input preparation, per-action overhead)
    runtime_factors: dict[str, dict[str, float]] = field(default_factory=dict, hash=False)
    # fixed seconds the runtime spends per compute action and module part (``{"f": .., "b": ..}``):
    # launching it, preparing its inputs, posting its messages
    action_overhead_s: dict[str, float] = field(default_factory=dict, hash=False)

    def alpha(self, op_class: str) -> float:
        return float(self.alphas.get(op_class, 1.0))

    def gemm_efficiency(self, m: float, n: float, k: float) -> float:
        """Fraction of ``peak_flops`` a GEMM of shape (m, n, k) achieves."""
        return 1.0 / (self.alpha("gemm") * self.gemm_curve.penalty(m, n, k))

    def link(self, group_size: int) -> tuple[float, float]:
        """(bandwidth, latency) of a collective over ``group_size`` consecutive GPUs."""
        if group_size <= self.gpus_per_node:
            return self.nvlink_bw, self.nvlink_latency_s
        return self.net_bw, self.net_latency_s

    def p2p_seconds(self, nbytes: float, same_node: bool = False) -> float:
        """Time of one point-to-point transfer (pipeline send/recv)."""
        if nbytes <= 0:
            return 0.0
        bw, lat = (self.nvlink_bw, self.nvlink_latency_s) if same_node else (self.net_bw, self.net_latency_s)
        return lat + self.alpha("p2p") * nbytes / bw

    def runtime_factor(self, kind: str, pass_: str) -> float:
        """Runtime factor of module ``kind`` for pass ``"f"`` or ``"b"`` (1 when not calibrated)."""
        return float(self.runtime_factors.get(kind, {}).get(pass_, 1.0))

    def action_overhead(self, pass_: str) -> float:
        """Fixed runtime seconds per action of pass ``"f"`` or ``"b"`` (0 when not calibrated)."""
        return float(self.action_overhead_s.get(pass_, 0.0))

    def with_(self, **changes: Any) -> HardwareSpec:
        return replace(self, **changes)

    # -- serialisation --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["alphas"] = dict(self.alphas)
        for key in ("runtime_factors", "action_overhead_s"):
            if not d[key]:
                d.pop(key)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "hardware calibration") -> HardwareSpec:
        """A spec from calibration JSON, every field checked (``source`` names the file in errors)."""
        try:
            doc = _CalibrationDoc.model_validate(data)
        except ValidationError as exc:
            raise BadInput(f"{source}: {_calibration_error(exc)}") from None
        fields = doc.model_dump(exclude={"format", "measurements", "fit", "runtime_calibration"}, exclude_none=True)
        fields["gemm_curve"] = (
            GemmCurve(**fields["gemm_curve"]) if "gemm_curve" in fields else GemmCurve(m0=2048.0, n0=128.0, k0=128.0)
        )
        fields["alphas"] = default_alphas(**fields.get("alphas", {}))
        return cls(**fields)

    def save(self, path: str, extra: dict[str, Any] | None = None) -> None:
        """Write this spec as calibration JSON (``extra`` keys such as measurements are kept aside)."""
        payload = {"format": CALIBRATION_FORMAT, **self.to_dict(), **(extra or {})}
        write_atomic(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")

    @classmethod
    def load(cls, path: str) -> HardwareSpec:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except OSError as exc:
            raise BadInput(f"hardware file {path!r} cannot be read: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise BadInput(f"hardware file {path!r} is not valid JSON: {exc.msg} (line {exc.lineno})") from None
        if not isinstance(data, dict):
            raise BadInput(f"hardware file {path!r} must hold a JSON object")
        return cls.from_dict(data, f"hardware file {path!r}")


def _calibration_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    if err["loc"] == ("format",):
        return f"field 'format' must be {CALIBRATION_FORMAT!r} (this version of dip), got {err.get('input')!r}"
    return validation_message(exc)


def usable_memory_bytes(hardware: HardwareSpec, reserve_gib: float | None = None) -> float:
    """Memory a plan may fill on one GPU of ``hardware``: its capacity minus a reserve.

    Args:
        hardware: the accelerator; ``mem_bytes`` is its capacity.
        reserve_gib: GiB kept free (``--memory-reserve-gib``); None keeps
            :data:`DEFAULT_MEMORY_RESERVE_FRACTION` of the capacity free. 0 is allowed.

    Returns:
        ``mem_bytes - reserve`` in bytes (positive).

    Raises:
        BadInput: the reserve is negative, not a finite number, or not below the capacity.
    """
    capacity = float(hardware.mem_bytes)
    if reserve_gib is None:
        return capacity * (1.0 - DEFAULT_MEMORY_RESERVE_FRACTION)
    reserve = float(reserve_gib) * GIB
    if not math.isfinite(reserve) or reserve < 0 or reserve >= capacity:
        raise BadInput(
            f"--memory-reserve-gib must be a number >= 0 and below the {capacity / GIB:g} GiB of "
            f"{hardware.name}, got {reserve_gib}"
        )
    return capacity - reserve


CALIBRATION_FORMAT = "dip-hardware-v1"
_Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
_NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class _Passes(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    f: _NonNegative | None = None
    b: _NonNegative | None = None


class _CalibrationDoc(BaseModel):
    """The calibration file format (``dip profile`` writes it): every field typed and bounded."""

    model_config = ConfigDict(extra="forbid")
    format: Literal["dip-hardware-v1"] | None = None
    name: StrictStr
    peak_flops: _Positive
    mem_bw: _Positive
    mem_bytes: _Positive
    nvlink_bw: _Positive
    nvlink_latency_s: _NonNegative
    net_bw: _Positive
    net_latency_s: _NonNegative
    host_bw: _Positive
    gpus_per_node: Annotated[StrictInt, Field(ge=1)] = 8
    alphas: dict[Literal["gemm", "attention", "elementwise", "collective", "p2p", "offload"], _Positive] = {}
    gemm_curve: dict[Literal["m0", "n0", "k0"], _NonNegative] | None = None
    attn_s0: _NonNegative = 256.0
    kernel_overhead_s: _NonNegative = 5e-6
    description: StrictStr = ""
    runtime_factors: dict[StrictStr, dict[Literal["f", "b"], _Positive]] = {}
    action_overhead_s: dict[Literal["f", "b"], _NonNegative] = {}
    measurements: Any = None  # the profile's raw data, kept beside the fit
    fit: Any = None
    runtime_calibration: Any = None


def _hopper(
    name: str, peak: float, mem_bw: float, mem: float, nvlink: float, net: float, desc: str, **changes: Any
) -> HardwareSpec:
    return HardwareSpec(
        name=name,
        peak_flops=peak,
        mem_bw=mem_bw,
        mem_bytes=mem,
        nvlink_bw=nvlink,
        nvlink_latency_s=3e-6,
        net_bw=net,
        net_latency_s=8e-6,
        host_bw=64 * GB,
        description=desc,
        **changes,
    )


PRESETS: dict[str, HardwareSpec] = {
    "H800": _hopper(
        "H800",
        989e12,
        3.35e12,
        80 * GIB,
        200 * GB,
        25 * GB,
        "H800 SXM: H100 compute, NVLink 200 GB/s per direction, 8x200 Gb/s RoCE per node",
    ),
    "H100-SXM": _hopper(
        "H100-SXM",
        989e12,
        3.35e12,
        80 * GIB,
        450 * GB,
        50 * GB,
        "H100 SXM: 989 TFLOPS bf16 dense, 3.35 TB/s HBM3, NVLink 450 GB/s per direction, 400 Gb/s IB",
    ),
    "H20": _hopper(
        "H20",
        148e12,
        4.0e12,
        96 * GIB,
        450 * GB,
        50 * GB,
        "H20: 148 TFLOPS bf16 dense, 96 GB HBM3 at 4.0 TB/s, NVLink 450 GB/s per direction",
        gemm_curve=GemmCurve(m0=1200.0, n0=96.0, k0=96.0),
    ),
    "A100-80G": HardwareSpec(
        name="A100-80G",
        peak_flops=312e12,
        mem_bw=2.04e12,
        mem_bytes=80 * GIB,
        nvlink_bw=300 * GB,
        nvlink_latency_s=4e-6,
        net_bw=25 * GB,
        net_latency_s=8e-6,
        host_bw=32 * GB,
        alphas=default_alphas(gemm=1.2, attention=1.8),
        gemm_curve=GemmCurve(m0=1536.0, n0=128.0, k0=128.0),
        kernel_overhead_s=5e-6,
        description="A100 SXM 80 GB: 312 TFLOPS bf16 dense, 2.04 TB/s HBM2e, NVLink 300 GB/s per direction",
    ),
}


CALIBRATION_DIR = Path(__file__).resolve().parent.parent / "cost" / "calibrations"


def shipped_calibrations() -> tuple[str, ...]:
    """Names of the calibration JSONs shipped in ``dip/cost/calibrations`` (``cpu``, ``h100``, ...)."""
    return tuple(sorted(f.stem for f in CALIBRATION_DIR.glob("*.json")))


def calibration_path(name: str) -> str:
    """Path of a calibration JSON shipped with the package (``dip/cost/calibrations/<name>.json``)."""
    return str(resources.files("dip.cost").joinpath("calibrations", f"{name}.json"))


def list_hardware() -> list[str]:
    """Names accepted by :func:`get_hardware` (besides calibration file paths)."""
    return [*PRESETS, *shipped_calibrations()]


def get_hardware(name_or_path: str | HardwareSpec) -> HardwareSpec:
    """A preset by (case-insensitive) name, a shipped calibration (``cpu``; ``h100``: profiled on an H100
    by ``dip profile --device cuda``) or a calibration JSON path."""
    if isinstance(name_or_path, HardwareSpec):
        return name_or_path
    key = str(name_or_path).strip()
    for name, spec in PRESETS.items():
        if name.lower() == key.lower():
            return spec
    for name in shipped_calibrations():
        if name == key.lower():
            logger.debug("hardware %s: the shipped calibration %s", key, calibration_path(name))
            return HardwareSpec.load(calibration_path(name))
    if key.lower().endswith(".json") or os.sep in key or os.path.isfile(key):
        logger.debug("hardware: calibration file %s", key)
        return HardwareSpec.load(key)
    raise choices_error("hardware", name_or_path, [*list_hardware(), "<calibration.json>"])
