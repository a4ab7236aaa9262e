"""Profile real torch blocks and fit the cost model's efficiency factors (``dip profile``).

1. measure the device's dense GEMM FLOP/s and copy bandwidth;
2. time forward and backward of ViT / decoder / DiT blocks (built from specs, optionally narrowed)
   over a range of token counts;
3. fit ``alphas`` (gemm, attention, elementwise), the GEMM shape curve, the attention length scale and
   the per-kernel overhead by least squares on log time (weak priors keep unidentified terms sane);
4. return a :class:`HardwareSpec` whose JSON ``get_hardware(path)`` loads.
"""

from __future__ import annotations

import math
import os
import platform
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy.optimize import least_squares

from dip.cost.latency import ops_seconds
from dip.cost.ops import PassOps, layer_ops
from dip.cost.profile_layers import build_block, scale_module
from dip.data.meta import ModuleWork
from dip.spec.hardware import GemmCurve, HardwareSpec, default_alphas
from dip.spec.model import ModuleSpec

__all__ = [
    "DIT_COND_TOKENS",
    "FIT_PARAMS",
    "PRIOR_WEIGHT",
    "REFERENCE_MODULES",
    "Measurement",
    "base_spec",
    "build_cases",
    "calibrate",
    "fit",
    "measure_mem_bw",
    "measure_peak_flops",
    "predict",
    "work_item",
]

REFERENCE_MODULES: tuple[ModuleSpec, ...] = (
    ModuleSpec("ViT-5B", "vit", 63, 1792, 15360, 16, 16, out_hidden=5120),
    ModuleSpec("Qwen2-32B", "decoder", 64, 5120, 27648, 40, 8, vocab_size=152064),
    ModuleSpec("DiT-5B", "dit", 28, 3584, 10240, 28, 28, cond_hidden=4096),
)
DIT_COND_TOKENS = 64
# fitted parameter -> (prior, lower, upper); fitted in log space
FIT_PARAMS: dict[str, tuple[float, float, float]] = {
    "gemm": (1.2, 0.3, 50.0),
    "attention": (2.0, 0.3, 100.0),
    "elementwise": (1.3, 0.1, 50.0),
    "m0": (256.0, 1.0, 1e5),
    "n0": (64.0, 1.0, 1e5),
    "k0": (64.0, 1.0, 1e5),
    "attn_s0": (128.0, 1.0, 1e5),
    "kernel_overhead_s": (1e-5, 1e-8, 1e-2),
}
PRIOR_WEIGHT = 0.05


@dataclass(frozen=True)
class Measurement:
    """Measured forward and backward seconds of one block on one work item."""

    module: ModuleSpec
    work: ModuleWork
    fwd_s: float
    bwd_s: float

    def to_dict(self) -> dict:
        return {
            "module": self.module.name,
            "kind": self.module.kind,
            "hidden": self.module.hidden,
            "tokens": self.work.tokens,
            "block": self.work.seq_lens[0],
            "blocks": len(self.work.seq_lens),
            "cond_tokens": self.work.cond_tokens,
            "fwd_s": self.fwd_s,
            "bwd_s": self.bwd_s,
        }


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _repeat(fn, device: str, min_time: float, min_reps: int = 3) -> float:
    """Fastest of repeated runs of ``fn`` (robust to other load) after one warm-up, for ``min_time``."""
    fn()
    _sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
        if len(times) >= 50:
            break
    return min(times)


def measure_peak_flops(device: str, dtype: torch.dtype, n: int | None = None, min_time: float = 0.3) -> float:
    """Dense GEMM FLOP/s of a large square matmul."""
    n = n or (8192 if device.startswith("cuda") else 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2.0 * n**3 / _repeat(lambda: a @ b, device, min_time)


def measure_mem_bw(device: str, nbytes: int | None = None, min_time: float = 0.3) -> float:
    """Copy bandwidth (bytes read + written per second)."""
    nbytes = nbytes or (2 * 2**30 if device.startswith("cuda") else 256 * 2**20)
    x = torch.empty(nbytes // 4, device=device, dtype=torch.float32).uniform_()
    y = torch.empty_like(x)
    return 2.0 * nbytes / _repeat(lambda: y.copy_(x), device, min_time)


def work_item(module: ModuleSpec, tokens: int, block: int) -> ModuleWork:
    """``tokens`` packed as equal blocks of at most ``block`` tokens (DiT: with short captions)."""
    s = max(1, min(tokens, block))
    n = max(1, tokens // s)
    cond = (DIT_COND_TOKENS,) * n if module.kind == "dit" else ()
    return ModuleWork(seq_lens=(s,) * n, cond_lens=cond, instances=n)


class _Case:
    """A built block with its inputs, timed repeatedly (fastest run kept)."""

    def __init__(self, module: ModuleSpec, work: ModuleWork, device: str, dtype: torch.dtype):
        self.module, self.work, self.device = module, work, device
        self.block = build_block(module, device, dtype)
        self.blocks = len(work.seq_lens)
        self.x = torch.randn(work.tokens, module.hidden, device=device, dtype=dtype, requires_grad=True)
        self.cond = None
        if module.kind == "dit" and work.cond_tokens:
            self.cond = torch.randn(self.blocks, work.cond_lens[0], module.hidden, device=device, dtype=dtype)
        self.grad = torch.randn(work.tokens, module.hidden, device=device, dtype=dtype)
        self.fwd_s = self.bwd_s = math.inf

    def run(self, min_time: float) -> None:
        self.fwd_s = min(
            self.fwd_s, _repeat(lambda: self.block(self.x, self.blocks, cond=self.cond), self.device, min_time)
        )
        reps = max(2, min(20, int(min_time / max(self.fwd_s, 1e-6))))
        for _ in range(reps):
            y = self.block(self.x, self.blocks, cond=self.cond)
            _sync(self.device)
            t0 = time.perf_counter()
            y.backward(self.grad)
            _sync(self.device)
            self.bwd_s = min(self.bwd_s, time.perf_counter() - t0)

    def result(self) -> Measurement:
        return Measurement(self.module, self.work, self.fwd_s, self.bwd_s)


def build_cases(modules, sizes, device: str, dtype: torch.dtype, hidden_scale: float, block: int) -> list[_Case]:
    cases = []
    for m in modules:
        scaled = scale_module(m, hidden_scale)
        cases += [_Case(scaled, work_item(scaled, int(t), block), device, dtype) for t in sizes]
    return cases


def _hardware(base: HardwareSpec, x: np.ndarray) -> HardwareSpec:
    p = {k: float(v) for k, v in zip(FIT_PARAMS, np.exp(x))}
    return replace(
        base,
        alphas=default_alphas(gemm=p["gemm"], attention=p["attention"], elementwise=p["elementwise"]),
        gemm_curve=GemmCurve(p["m0"], p["n0"], p["k0"]),
        attn_s0=p["attn_s0"],
        kernel_overhead_s=p["kernel_overhead_s"],
    )


def predict(hw: HardwareSpec, ops: PassOps) -> tuple[float, float]:
    return ops_seconds(ops.f, hw), ops_seconds(ops.i, hw) + ops_seconds(ops.w, hw)


def fit(measurements: list[Measurement], base: HardwareSpec, dtype_bytes: int) -> tuple[HardwareSpec, dict]:
    """Least-squares fit of the efficiency parameters on log(predicted / measured) time."""
    ops = [layer_ops(m.module, m.work, 1, dtype_bytes) for m in measurements]
    meas = np.log([[m.fwd_s, m.bwd_s] for m in measurements]).ravel()
    prior = np.log([v[0] for v in FIT_PARAMS.values()])
    lo = np.log([v[1] for v in FIT_PARAMS.values()])
    hi = np.log([v[2] for v in FIT_PARAMS.values()])

    def residuals(x: np.ndarray) -> np.ndarray:
        hw = _hardware(base, x)
        pred = np.log([t for o in ops for t in predict(hw, o)])
        return np.concatenate([pred - meas, PRIOR_WEIGHT * (x - prior)])

    res = least_squares(residuals, np.clip(prior, lo, hi), bounds=(lo, hi), method="trf", loss="soft_l1", f_scale=0.2)
    hw = _hardware(base, res.x)
    err = residuals(res.x)[: len(meas)]
    info = {
        "rms_log_error": float(np.sqrt(np.mean(err**2))),
        "max_abs_log_error": float(np.max(np.abs(err))),
        "params": {k: float(v) for k, v in zip(FIT_PARAMS, np.exp(res.x))},
    }
    return hw, info


def base_spec(device: str, name: str, peak: float, mem_bw: float) -> HardwareSpec:
    """Measured device numbers; links are rough placeholders for CPU (gloo over shared memory)."""
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(device))
        return HardwareSpec(
            name=name,
            peak_flops=peak,
            mem_bw=mem_bw,
            mem_bytes=float(props.total_memory),
            nvlink_bw=200e9,
            nvlink_latency_s=3e-6,
            net_bw=25e9,
            net_latency_s=8e-6,
            host_bw=50e9,
            gpus_per_node=8,
            description=f"measured by dip profile on {torch.cuda.get_device_name(device)}; "
            "link figures are placeholders",
        )
    try:
        ram = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        ram = 16.0 * 2**30
    return HardwareSpec(
        name=name,
        peak_flops=peak,
        mem_bw=mem_bw,
        mem_bytes=ram,
        nvlink_bw=mem_bw / 4,
        nvlink_latency_s=3e-5,
        net_bw=mem_bw / 4,
        net_latency_s=3e-5,
        host_bw=mem_bw / 2,
        gpus_per_node=os.cpu_count() or 1,
        description=f"measured by dip profile on {platform.processor() or platform.machine()} "
        f"({torch.get_num_threads()} torch threads, fp32); links approximate gloo",
    )


def calibrate(
    modules=REFERENCE_MODULES,
    sizes=(32, 64, 128, 256, 512, 1024, 2048),
    device: str = "cpu",
    hidden_scale: float | None = None,
    block: int = 1024,
    name: str | None = None,
    min_time: float = 0.05,
    rounds: int = 3,
    threads: int | None = None,
) -> tuple[HardwareSpec, dict]:
    """Measure, profile and fit; returns the calibrated spec and the measurement/fit record.

    ``threads``: torch CPU threads during the run (default: torch's default for this machine).
    """
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _calibrate(modules, sizes, device, hidden_scale, block, name, min_time, rounds)
    finally:
        torch.set_num_threads(previous)


def _calibrate(modules, sizes, device, hidden_scale, block, name, min_time, rounds) -> tuple[HardwareSpec, dict]:
    cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    dtype_bytes = 2 if cuda else 4
    scale = hidden_scale if hidden_scale is not None else (1.0 if cuda else 0.125)
    cases = build_cases(modules, sizes, device, dtype, scale, block)
    peak = bw = 0.0
    for _ in range(rounds):  # device probes run in every round, next to the cases they normalise
        peak = max(peak, measure_peak_flops(device, dtype, min_time=0.1))
        bw = max(bw, measure_mem_bw(device, min_time=0.1))
        for case in cases:
            case.run(min_time)
    base = base_spec(device, name or ("cuda" if cuda else "cpu"), peak, bw)
    meas = [c.result() for c in cases]
    hw, info = fit(meas, base, dtype_bytes)
    rows = []
    for m in meas:
        f, b = predict(hw, layer_ops(m.module, m.work, 1, dtype_bytes))
        rows.append({**m.to_dict(), "pred_fwd_s": f, "pred_bwd_s": b})
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    fit_record = {
        **info,
        "device": device,
        "dtype": str(dtype).replace("torch.", ""),
        "dtype_bytes": dtype_bytes,
        "hidden_scale": scale,
        "rounds": rounds,
        "load_average": load,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    return hw, {"measurements": rows, "fit": fit_record}
