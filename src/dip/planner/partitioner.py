"""Offline modality-aware partitioner (paper §4).

For every module ``i``:

* **sub-microbatch size** ``B_i``: the smallest size whose efficiency (instances per second of one
  sub-microbatch through the whole module, forward + backward) stays within ``efficiency`` (95%) of the
  best over the tested sizes ``1..max``; only modules that run several instances (``vit`` images,
  ``dit`` clips) are split, decoders run whole micro-batches;
* **segments** ``K_i = floor(T_i / T_1)`` where ``T_i`` is the module's latency per unit at ``B_i`` and
  ``T_1`` the smallest such latency, capped so that ``P * K_i <= layers``;
* **runtime overhead** (beyond the paper): where the calibration has a fixed cost per action (CPU
  runtimes: ~ms per action, :attr:`dip.spec.hardware.HardwareSpec.action_overhead_s`), the efficiency
  of a sub-microbatch counts one forward and one backward overhead per rank it crosses, and ``K_i``
  is capped so the overhead stays within ``OVERHEAD_SHARE`` of a chunk's time (finer chunks would
  spend more on dispatch than they save on bubbles); with no overhead (GPU presets) nothing changes;
* **chunks**: ``P * K_i`` chunks of consecutive layers, chunk ``c`` on rank ``c mod P``, with layer
  counts from an exact linear partition of per-layer costs (the first layer carries the module's
  pre-processing, the last its post-processing and loss). Modules never share a chunk.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

from dip.data.meta import BatchMeta, MicroBatchMeta, ModuleWork, work_for
from dip.errors import BadInput
from dip.schedule.partition import Partition, linear_partition
from dip.schedule.units import SPLITTABLE_KINDS, module_graph
from dip.spec.model import ModelSpec, ModuleSpec

__all__ = [
    "DEFAULT_CAPTION_TOKENS",
    "DEFAULT_CLIP_SECONDS",
    "DEFAULT_EFFICIENCY",
    "OVERHEAD_SHARE",
    "action_overhead",
    "choose_sub_microbatch",
    "layer_weights",
    "module_seconds",
    "partition_model",
]

DEFAULT_EFFICIENCY = 0.95
OVERHEAD_SHARE = 0.1  # the most a chunk's fixed per-action runtime overhead may cost of its time
DEFAULT_CLIP_SECONDS = 4.0
DEFAULT_CAPTION_TOKENS = 64


def module_seconds(cost_model, module: ModuleSpec, work: ModuleWork) -> float:
    """Forward + backward seconds of a whole module (pre, all layers, post) on ``work``."""
    if work.empty:
        return 0.0
    layer = cost_model.layer_times(module, work).total
    return module.layers * layer + cost_model.pre_times(module, work).total + cost_model.post_times(module, work).total


class _Representative:
    """Typical work of each module, from a sample of micro-batches (or defaults without one)."""

    def __init__(self, model: ModelSpec, sample: Sequence[MicroBatchMeta]):
        self.model = model
        self.sample = list(sample)
        clips = [(tok, mb.text_lens[mb.clip_sample[k]]) for mb in self.sample for k, tok in enumerate(mb.clip_tokens)]
        clips.sort()
        self.clip = clips[len(clips) // 2] if clips else None
        patches = sorted(p for mb in self.sample for p in mb.image_patches)  # variable-resolution images
        self.image_patches = patches[len(patches) // 2] if patches else None

    def instance_work(self, module: ModuleSpec, n: int) -> ModuleWork:
        """Work of ``n`` typical instances of a split module."""
        if module.kind == "vit":
            return ModuleWork(seq_lens=(self.image_patches or module.patches_per_image,) * n, instances=n)
        tok, cap = self.clip or (module.clip_tokens(DEFAULT_CLIP_SECONDS), DEFAULT_CAPTION_TOKENS)
        return ModuleWork(seq_lens=(tok,) * n, cond_lens=(cap,) * n, instances=n)

    def decoder_works(self, module: ModuleSpec) -> list[ModuleWork]:
        works = [work_for(self.model, module, mb) for mb in self.sample]
        works = [w for w in works if not w.empty]
        return works or [ModuleWork(seq_lens=(self.model.context_length,), instances=1)]

    def max_instances(self, module: ModuleSpec) -> int:
        if module.kind == "vit":
            return max(1, self.model.max_images_per_microbatch)
        return max(1, self.model.max_clips_per_microbatch)


def action_overhead(cost_model) -> float:
    """Fixed runtime seconds of one forward plus one backward action (0 without a runtime calibration)."""
    hw = getattr(cost_model, "hardware", None)
    return hw.action_overhead("f") + hw.action_overhead("b") if hw is not None else 0.0


def choose_sub_microbatch(
    cost_model, module: ModuleSpec, rep: _Representative, efficiency: float = DEFAULT_EFFICIENCY, pp: int = 1
) -> tuple[int, list[float]]:
    """``(B_i, efficiency curve)``: the smallest size within ``efficiency`` of the best throughput (a
    unit pays the runtime's per-action overhead once per pipeline rank it crosses)."""
    sizes = range(1, rep.max_instances(module) + 1)
    fixed = pp * action_overhead(cost_model)
    thr = [n / (module_seconds(cost_model, module, rep.instance_work(module, n)) + fixed) for n in sizes]
    best = max(thr)
    curve = [t / best for t in thr]
    for n, e in zip(sizes, curve):
        if e >= efficiency - 1e-12:
            return n, curve
    return len(curve), curve


def layer_weights(cost_model, module: ModuleSpec, work: ModuleWork) -> list[float]:
    """Per-layer seconds; the first layer carries the pre part, the last the post part (loss)."""
    w = [cost_model.layer_times(module, work).total] * module.layers
    w[0] += cost_model.pre_times(module, work).total
    w[-1] += cost_model.post_times(module, work).total
    return w


def partition_model(
    model: ModelSpec,
    cost_model,
    pp: int | None = None,
    sample: BatchMeta | Sequence[MicroBatchMeta] | Sequence[BatchMeta] = (),
    sub_microbatch: Mapping[str, int] | None = None,
    segments: Mapping[str, int] | None = None,
    efficiency: float = DEFAULT_EFFICIENCY,
) -> Partition:
    """Partition ``model`` for ``pp`` ranks (default: the model's) from a representative ``sample``.

    ``sub_microbatch`` / ``segments`` override ``B_i`` / ``K_i`` per module name.
    """
    pp = int(pp or model.parallel.pp or 1)
    mbs = _flatten(sample)
    rep = _Representative(model, mbs)
    names = {m.name for m in model.modules}
    for label, given in (("sub-microbatch", sub_microbatch), ("segments", segments)):
        for name, value in (given or {}).items():
            if name not in names:
                raise BadInput(f"{label} override names unknown module {name!r}; modules: {', '.join(sorted(names))}")
            if int(value) < 1:
                raise BadInput(f"{label} of module {name} must be >= 1, got {value}")
    sizes: dict[str, int | None] = {}
    latency: dict[str, float] = {}
    works: dict[str, ModuleWork] = {}
    curves: dict[str, list[float]] = {}
    for m in model.modules:
        if m.kind in SPLITTABLE_KINDS:
            if sub_microbatch and m.name in sub_microbatch:
                b = int(sub_microbatch[m.name])
            else:
                b, curves[m.name] = choose_sub_microbatch(cost_model, m, rep, efficiency, pp)
            sizes[m.name] = b
            works[m.name] = rep.instance_work(m, b)
            latency[m.name] = module_seconds(cost_model, m, works[m.name])
        else:
            sizes[m.name] = None
            dw = rep.decoder_works(m)
            secs = [module_seconds(cost_model, m, w) for w in dw]
            latency[m.name] = statistics.fmean(secs)
            works[m.name] = dw[min(range(len(dw)), key=lambda k: abs(secs[k] - latency[m.name]))]
    fastest = min(latency.values())
    overhead = action_overhead(cost_model)
    segs: dict[str, int] = {}
    layouts: dict[str, tuple[tuple[int, int], ...]] = {}
    for m in model.modules:
        cap = max(1, m.layers // pp)
        if segments and m.name in segments:
            k = int(segments[m.name])
            if pp * k > m.layers:
                raise BadInput(f"pp {pp} x {k} segments needs at least {pp * k} layers; module {m.name} has {m.layers}")
        else:
            k = max(1, min(cap, math.floor(latency[m.name] / fastest + 1e-9) if fastest > 0 else 1))
            if overhead > 0:  # each of the P * K chunks should run >= overhead / OVERHEAD_SHARE
                k = max(1, min(k, math.floor(latency[m.name] * OVERHEAD_SHARE / (pp * overhead) + 1e-9)))
        if pp > m.layers:
            raise BadInput(f"pp {pp} needs at least {pp} layers; module {m.name} has {m.layers}")
        segs[m.name] = k
        layouts[m.name] = tuple(linear_partition(layer_weights(cost_model, m, works[m.name]), pp * k))
    graph = module_graph(model, pp, {n: list(v) for n, v in layouts.items()})
    order = sorted(latency, key=lambda n: latency[n])
    report = {
        "module_order": order,
        "unit_latency_s": {n: latency[n] for n in order},
        "chunk_seconds": {
            m.name: [sum(layer_weights(cost_model, m, works[m.name])[a:b]) for a, b in layouts[m.name]]
            for m in model.modules
        },
        "efficiency_curve": curves,
    }
    return Partition(graph, sizes, segs, layouts, report)


def _flatten(sample) -> list[MicroBatchMeta]:
    if isinstance(sample, BatchMeta):
        return list(sample.microbatches)
    out: list[MicroBatchMeta] = []
    for x in sample or ():
        if isinstance(x, BatchMeta):
            out += list(x.microbatches)
        else:
            out.append(x)
    return out
