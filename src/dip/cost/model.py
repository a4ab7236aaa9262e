"""The cost model the planner and simulator query: per-pass times and memory of layers and chunks.

Everything is per GPU of a tensor-parallel group of size ``tp``. Per ``(module, work)`` the block,
pre and post times and the per-strategy activation bytes are computed once and cached, so
:meth:`CostModel.chunk_costs` is O(1) for a uniform strategy. Memory follows Megatron-LM's accounting
(:class:`~dip.cost.options.CostOptions`: sequence parallelism, distributed optimizer); the formulas
and their sources are in docs/memory.md.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from dip.cost.flops import layer_flops
from dip.cost.flops import microbatch_flops as _microbatch_flops
from dip.cost.latency import op_seconds, ops_seconds
from dip.cost.ops import PassOps, layer_ops, post_ops, pre_ops, tp_split_params
from dip.cost.options import GRAD_BYTES, CostOptions
from dip.data.meta import MicroBatchMeta, ModuleWork
from dip.errors import BadInput, choices_error
from dip.spec.hardware import HardwareSpec, get_hardware
from dip.spec.model import ModelSpec, ModuleSpec

logger = logging.getLogger(__name__)

__all__ = ["STRATEGIES", "ChunkCost", "CostModel", "PassTimes", "check_strategy"]

STRATEGIES: tuple[str, ...] = ("none", "selective", "full", "offload")


@dataclass(frozen=True)
class PassTimes:
    """Seconds of forward (``f``), backward-input (``i``) and backward-weight (``w``)."""

    f: float = 0.0
    i: float = 0.0
    w: float = 0.0

    @property
    def b(self) -> float:
        """Full backward (``i + w``)."""
        return self.i + self.w

    @property
    def total(self) -> float:
        return self.f + self.i + self.w

    def __add__(self, other: PassTimes) -> PassTimes:
        return PassTimes(self.f + other.f, self.i + other.i, self.w + other.w)

    def scaled(self, k: float) -> PassTimes:
        return PassTimes(self.f * k, self.i * k, self.w * k)

    def scaled_passes(self, kf: float, kb: float) -> PassTimes:
        """Forward scaled by ``kf``, both backward parts by ``kb``."""
        return self if kf == kb == 1.0 else PassTimes(self.f * kf, self.i * kb, self.w * kb)


@dataclass(frozen=True)
class ChunkCost:
    """Times of a chunk's passes (recomputation included in ``i``) and its kept activation bytes."""

    f: float
    i: float
    w: float
    act_bytes: float
    recompute_s: float = 0.0

    @property
    def b(self) -> float:
        return self.i + self.w


@dataclass(frozen=True)
class _WorkCosts:
    layer: PassTimes
    pre: PassTimes
    post: PassTimes
    act: dict[str, float]
    recompute: dict[str, float]
    pre_act: float
    post_act: float


def _times(ops: PassOps, hw: HardwareSpec) -> PassTimes:
    return PassTimes(ops_seconds(ops.f, hw), ops_seconds(ops.i, hw), ops_seconds(ops.w, hw))


def check_strategy(strategy: str) -> str:
    if strategy not in STRATEGIES:
        raise choices_error("memory strategy", strategy, STRATEGIES)
    return strategy


class CostModel:
    """Operator-level latency and memory model of ``model`` on ``hardware`` at tensor parallelism ``tp``.

    ``options`` (default: from ``model.parallel``, with ``tp`` overriding its tensor-parallel degree)
    set data parallelism, sequence parallelism and the distributed optimizer.
    """

    def __init__(
        self,
        model: ModelSpec,
        hardware: HardwareSpec | str,
        tp: int | None = None,
        dtype_bytes: int = 2,
        flash_attention: bool = True,
        options: CostOptions | None = None,
    ):
        self.model = model
        self.hardware = get_hardware(hardware)
        if tp is not None and int(tp) < 1:
            raise BadInput(f"tp must be >= 1, got {tp}")
        if options is None:
            options = CostOptions.from_parallel(model.parallel, tp)
        elif tp is not None and int(tp) != options.tp:
            raise BadInput(f"tp {tp} differs from the cost options' tp {options.tp}")
        self.options = options
        self.tp = options.tp
        self.dtype_bytes = dtype_bytes
        self.flash_attention = flash_attention
        self._cache: dict[tuple[ModuleSpec, ModuleWork], _WorkCosts] = {}
        self._overhead_f = self.hardware.action_overhead("f")  # runtime seconds per action and part
        self._overhead_b = self.hardware.action_overhead("b")
        logger.debug("cost model of %s on %s: %s", model.name, self.hardware.name, options)

    # -- cached per (module, work) ---------------------------------------------------------------
    def _module(self, module: ModuleSpec | str) -> ModuleSpec:
        return self.model.module(module) if isinstance(module, str) else module

    def _costs(self, module: ModuleSpec | str, work: ModuleWork) -> _WorkCosts:
        module = self._module(module)
        key = (module, work)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._cache[key] = self._build(module, work)
        return hit

    def _build(self, module: ModuleSpec, work: ModuleWork) -> _WorkCosts:
        hw, tp, d, sp = self.hardware, self.tp, self.dtype_bytes, bool(self.options.sequence_parallel)
        lops = layer_ops(module, work, tp, d, self.flash_attention, sequence_parallel=sp)
        pre, post = pre_ops(module, work, tp, d), post_ops(module, work, tp, d, sequence_parallel=sp)
        kf, kb = hw.runtime_factor(module.kind, "f"), hw.runtime_factor(module.kind, "b")
        layer = _times(lops, hw).scaled_passes(kf, kb)
        saved = lops.saved_bytes()
        selective_drop = sum(op.selective_bytes for op in lops.f)  # the attention core's tensors
        # full recompute keeps the block input, on 1/tp of the tokens under sequence parallelism
        block_input = d * work.tokens * module.hidden / self.options.sequence_shards if work.tokens else 0.0
        act = {"none": saved, "selective": saved - selective_drop, "full": min(block_input, saved), "offload": 0.0}
        xfer = hw.alpha("offload") * saved / hw.host_bw
        recompute = {
            "none": 0.0,
            "selective": kf * sum(op_seconds(op, hw) for op in lops.f if op.attn_core),
            "full": layer.f,
            "offload": max(0.0, xfer - layer.f) + max(0.0, xfer - layer.b),
        }
        return _WorkCosts(
            layer,
            _times(pre, hw).scaled_passes(kf, kb),
            _times(post, hw).scaled_passes(kf, kb),
            act,
            recompute,
            pre.saved_bytes(),
            post.saved_bytes(),
        )

    # -- public queries ---------------------------------------------------------------------------
    def layer_times(self, module: ModuleSpec | str, work: ModuleWork) -> PassTimes:
        """One block's forward, backward-input and backward-weight seconds."""
        return self._costs(module, work).layer

    def pre_times(self, module: ModuleSpec | str, work: ModuleWork) -> PassTimes:
        return self._costs(module, work).pre

    def post_times(self, module: ModuleSpec | str, work: ModuleWork) -> PassTimes:
        return self._costs(module, work).post

    def layer_activation_bytes(self, module: ModuleSpec | str, work: ModuleWork, strategy: str = "none") -> float:
        """Activation bytes one block keeps on the GPU from its forward until its backward.

        ``none``: every saved tensor; ``selective``: without the attention core's (recomputed);
        ``full``: the block input only; ``offload``: nothing (moved to host memory).
        """
        return self._costs(module, work).act[check_strategy(strategy)]

    def recompute_seconds(self, module: ModuleSpec | str, work: ModuleWork, strategy: str = "none") -> float:
        """Extra backward seconds of one block under ``strategy`` (offload: transfer not hidden)."""
        return self._costs(module, work).recompute[check_strategy(strategy)]

    def chunk_costs(
        self,
        module: ModuleSpec | str,
        work: ModuleWork,
        layer_start: int,
        layer_end: int,
        strategies: Sequence[str] | str = "none",
    ) -> ChunkCost:
        """Costs of blocks ``[layer_start, layer_end)`` plus pre (first chunk) and post (last chunk)."""
        module = self._module(module)
        if not 0 <= layer_start <= layer_end <= module.layers:
            raise BadInput(f"layer range [{layer_start}, {layer_end}) outside 0..{module.layers} of {module.name}")
        c = self._costs(module, work)
        n = layer_end - layer_start
        if isinstance(strategies, str):
            act = n * c.act[check_strategy(strategies)]
            rec = n * c.recompute[strategies]
        else:
            if len(strategies) != n:
                raise BadInput(f"{len(strategies)} memory strategies given for {n} layers")
            act = sum(c.act[check_strategy(s)] for s in strategies)
            rec = sum(c.recompute[s] for s in strategies)
        f, i, w = n * c.layer.f, n * c.layer.i + rec, n * c.layer.w
        if not work.empty:  # the runtime's fixed cost of running this part in one action
            f, i = f + self._overhead_f, i + self._overhead_b
        if layer_start == 0:
            f, i, w, act = f + c.pre.f, i + c.pre.i, w + c.pre.w, act + c.pre_act
        if layer_end == module.layers:
            f, i, w, act = f + c.post.f, i + c.post.i, w + c.post.w, act + c.post_act
        return ChunkCost(f, i, w, act, rec)

    def gpu_params(
        self, module: ModuleSpec | str, layer_start: int, layer_end: int, include_pre: bool, include_post: bool
    ) -> float:
        """Parameters of a chunk one GPU of the TP group holds (TP-sharded parts / tp)."""
        module = self._module(module)
        parts = [("layer", max(0, layer_end - layer_start))]
        if include_pre:
            parts.append(("pre", 1))
        if include_post:
            parts.append(("post", 1))
        per_gpu = 0.0
        for part, count in parts:
            sharded, replicated = tp_split_params(module, part)
            per_gpu += count * (sharded / self.tp + replicated)
        return per_gpu

    def static_bytes(
        self, module: ModuleSpec | str, layer_start: int, layer_end: int, include_pre: bool, include_post: bool
    ) -> float:
        """Weight, gradient and AdamW state bytes of a chunk on one GPU: 18 per parameter, or
        ``6 + 12 / dp`` with the distributed optimizer."""
        params = self.gpu_params(module, layer_start, layer_end, include_pre, include_post)
        return self.options.param_state_bytes * params

    def grad_bytes(
        self, module: ModuleSpec | str, layer_start: int, layer_end: int, include_pre: bool, include_post: bool
    ) -> float:
        """Bytes of a chunk's fp32 gradients on one GPU (what data parallelism reduces)."""
        return GRAD_BYTES * self.gpu_params(module, layer_start, layer_end, include_pre, include_post)

    def dp_sync_bytes(
        self, module: ModuleSpec | str, layer_start: int, layer_end: int, include_pre: bool, include_post: bool
    ) -> float:
        """All-reduce-equivalent bytes of a chunk's data-parallel synchronisation on one GPU: the
        gradient all-reduce, or with the distributed optimizer the gradient reduce-scatter plus the
        weight all-gather (see :attr:`CostOptions.dp_sync_bytes_per_param`)."""
        params = self.gpu_params(module, layer_start, layer_end, include_pre, include_post)
        return self.options.dp_sync_bytes_per_param * params

    def boundary_bytes(self, module: ModuleSpec | str, work: ModuleWork) -> float:
        """Bytes of the activation one chunk of ``module`` sends to the next (plus DiT conditioning)."""
        module = self._module(module)
        d = self.dtype_bytes
        nbytes = d * work.tokens * module.hidden
        if module.kind == "dit":
            nbytes += d * work.cond_tokens * module.hidden + d * max(work.instances, 1) * 7 * module.hidden
        return float(nbytes)

    def output_bytes(self, module: ModuleSpec | str, work: ModuleWork) -> float:
        """Bytes the last chunk hands to a consumer module (merged ViT embeddings, LM hidden states)."""
        module = self._module(module)
        d = self.dtype_bytes
        if module.kind == "vit":
            rows = work.tokens // (module.spatial_merge**2)
            return float(d * rows * (module.out_hidden or module.hidden))
        if module.kind == "decoder":
            return float(d * work.tokens * module.hidden)
        return 0.0

    def p2p_seconds(self, nbytes: float, same_node: bool = False) -> float:
        return self.hardware.p2p_seconds(nbytes, same_node)

    def microbatch_flops(self, mb: MicroBatchMeta) -> float:
        """Model FLOPs (forward + backward, no recompute) of all modules for one micro-batch."""
        return _microbatch_flops(self.model, mb)

    def layer_efficiency(self, module: ModuleSpec | str, work: ModuleWork) -> float:
        """Model FLOPs per GPU of one block divided by (its time x peak): the achieved MFU of a block."""
        fwd, bwd = layer_flops(self._module(module), work)
        t = self.layer_times(module, work).total
        return (fwd + bwd) / self.tp / (t * self.hardware.peak_flops) if t > 0 else 0.0
