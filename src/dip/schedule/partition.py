"""Layer partitions for the baseline schedules.

* :func:`mixed_partition` (Megatron-LM, nnScaler*, the textbook schedules on real models): the layers of
  all modules, concatenated in topological order (``vit`` then ``llm``; ``llm`` then ``dit``), are cut
  into ``pp * v`` contiguous chunks that balance a per-layer weight (parameters by default; the
  baselines pass per-layer seconds, :mod:`dip.schedule.baselines.weights`). One group ``"all"``;
  chunk ``c`` on rank ``c mod pp``; a chunk may hold layers of several modules. An optional cap on a
  second per-layer quantity (static bytes) keeps every chunk's weights and optimizer state small
  enough to fit.
* :func:`separated_even_partition` (Optimus): one group per module, module ``i`` cut into
  ``pp * K_i`` chunks with near-equal layer counts.
* :class:`Partition`: the static part of a DIP plan (stage graph, ``B_i``, ``K_i``), which DIP's
  offline partitioner (:mod:`dip.planner.partitioner`) chooses.

The cut is an exact linear partition: first the smallest possible maximum chunk weight, then, among the
cuts that reach it, the one with the smallest sum of squared chunk weights (so chunks that are not the
bottleneck are balanced too); ranges over the cap are never used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from dip.data.meta import BatchMeta, MicroBatchMeta
from dip.errors import BadInput
from dip.schedule.ir import Chunk, ChunkPart, Flow, StageGraph, Unit
from dip.schedule.units import build_units, chain_channels, module_graph, split_evenly
from dip.spec.model import ModelSpec
from dip.spec.params import layer_params, post_params, pre_params

MIXED_GROUP = "all"


@dataclass(frozen=True)
class Partition:
    """The static part of a DIP plan: stage graph, sub-microbatch sizes ``B_i`` and segments ``K_i``."""

    graph: StageGraph
    sub_microbatch: dict[str, int | None]
    segments: dict[str, int]
    layouts: dict[str, tuple[tuple[int, int], ...]]
    report: dict = field(default_factory=dict, compare=False)

    @property
    def pp(self) -> int:
        return self.graph.num_ranks

    def units(
        self, model: ModelSpec, batch: BatchMeta | Sequence[MicroBatchMeta]
    ) -> tuple[dict[str, tuple[Unit, ...]], tuple[Flow, ...]]:
        """Units (``M_i = ceil(N_i / B_i)`` sub-microbatches per micro-batch) and flows of ``batch``."""
        return build_units(model, self.graph, batch, self.sub_microbatch)

    def summary(self) -> dict:
        """JSON-friendly description (the ``partition`` entry of ``dip plan --json``)."""
        return {
            "pp": self.pp,
            "sub_microbatch": dict(self.sub_microbatch),
            "segments": dict(self.segments),
            "chunks": {m: [list(r) for r in lay] for m, lay in self.layouts.items()},
            **self.report,
        }


@dataclass(frozen=True)
class LayerSlot:
    """Layer ``layer`` of ``module`` in the concatenated layer list of a model."""

    module: str
    layer: int


def model_layers(model: ModelSpec) -> list[LayerSlot]:
    """All transformer layers of ``model``, modules in topological order."""
    return [LayerSlot(m.name, i) for m in model.modules for i in range(m.layers)]


def param_weights(model: ModelSpec) -> list[float]:
    """Per-layer parameter counts; a module's pre part counts on its first layer, its post part on its last."""
    out: list[float] = []
    for m in model.modules:
        per_layer = layer_params(m)
        for i in range(m.layers):
            w = per_layer
            if i == 0:
                w += pre_params(m)
            if i == m.layers - 1:
                w += post_params(m)
            out.append(float(w))
    return out


@dataclass(frozen=True)
class RangeCap:
    """A bound on a second per-item quantity: no range may sum ``values`` above ``limit``."""

    values: tuple[float, ...]
    limit: float

    def prefix(self) -> list[float]:
        out = [0.0]
        for v in self.values:
            out.append(out[-1] + float(v))
        return out


def linear_partition(weights: Sequence[float], parts: int, cap: RangeCap | None = None) -> list[tuple[int, int]]:
    """Cut ``weights`` into ``parts`` non-empty contiguous ranges minimising the largest range sum
    (ties: smallest sum of squared range sums), using only ranges within ``cap``.
    Returns ``[(start, stop), ...]``; :class:`BadInput` when no cut respects the cap."""
    n = len(weights)
    if parts < 1 or parts > n:
        raise BadInput(f"cannot cut {n} layers into {parts} non-empty chunks")
    if cap is not None and len(cap.values) != n:
        raise ValueError(f"cap has {len(cap.values)} values for {n} items")
    prefix = [0.0]
    for w in weights:
        prefix.append(prefix[-1] + float(w))
    allowed = _allowed(cap)
    bound = _min_max_cut(prefix, parts, allowed)
    if bound == float("inf"):
        raise BadInput(f"no cut of {n} layers into {parts} chunks keeps every chunk within {cap.limit:.4g}")
    return _min_square_cut(prefix, parts, bound * (1 + 1e-12) + 1e-12, allowed)


def _allowed(cap: RangeCap | None):
    """``allowed(i, j)``: may ``[i, j)`` be one range."""
    if cap is None:
        return lambda i, j: True
    pre, limit = cap.prefix(), cap.limit * (1 + 1e-12)
    return lambda i, j: pre[j] - pre[i] <= limit


def _min_max_cut(prefix: list[float], parts: int, allowed) -> float:
    n = len(prefix) - 1
    inf = float("inf")
    best = [inf] * (n + 1)  # best[j]: min over cuts of the first j items into k ranges of the max sum
    for j in range(1, n + 1):
        best[j] = prefix[j] if allowed(0, j) else inf
    for k in range(2, parts + 1):
        new = [inf] * (n + 1)
        for j in range(k, n - (parts - k) + 1):
            cur = inf
            for i in range(k - 1, j):
                if best[i] == inf or not allowed(i, j):
                    continue
                cand = max(best[i], prefix[j] - prefix[i])
                if cand < cur:
                    cur = cand
            new[j] = cur
        best = new
    return best[n]


def _min_square_cut(prefix: list[float], parts: int, bound: float, allowed) -> list[tuple[int, int]]:
    n = len(prefix) - 1
    inf = float("inf")
    cost = [[inf] * (n + 1) for _ in range(parts + 1)]
    back = [[-1] * (n + 1) for _ in range(parts + 1)]
    cost[0][0] = 0.0
    for k in range(1, parts + 1):
        for j in range(k, n - (parts - k) + 1):
            for i in range(k - 1, j):
                if cost[k - 1][i] == inf:
                    continue
                s = prefix[j] - prefix[i]
                if s > bound or not allowed(i, j):
                    continue
                cand = cost[k - 1][i] + s * s
                if cand < cost[k][j]:
                    cost[k][j], back[k][j] = cand, i
    ranges: list[tuple[int, int]] = []
    j = n
    for k in range(parts, 0, -1):
        i = back[k][j]
        ranges.append((i, j))
        j = i
    return ranges[::-1]


def _parts_of(layers: Sequence[LayerSlot], start: int, stop: int) -> tuple[ChunkPart, ...]:
    """Contiguous runs of ``layers[start:stop]`` as one :class:`ChunkPart` per module."""
    parts: list[ChunkPart] = []
    run_start = start
    for k in range(start + 1, stop + 1):
        if k == stop or layers[k].module != layers[run_start].module:
            a, b = layers[run_start], layers[k - 1]
            parts.append(ChunkPart(a.module, a.layer, b.layer + 1))
            run_start = k
    return tuple(parts)


def mixed_partition(
    model: ModelSpec,
    pp: int,
    chunks_per_rank: int = 1,
    weights: str | Sequence[float] = "params",
    cap: RangeCap | None = None,
) -> StageGraph:
    """One group of ``pp * chunks_per_rank`` chunks over the concatenated layers of all modules,
    balancing ``weights`` ("params" or one number per layer of :func:`model_layers`); with ``cap``,
    no chunk sums the cap's per-layer values above its limit."""
    layers = model_layers(model)
    n = pp * chunks_per_rank
    if pp < 1 or chunks_per_rank < 1:
        raise BadInput(f"pp and chunks per rank must be >= 1, got pp {pp}, chunks {chunks_per_rank}")
    if len(layers) < n:
        raise BadInput(
            f"pp {pp} x {chunks_per_rank} chunks per rank needs at least {n} layers; "
            f"model {model.name} has {len(layers)}"
        )
    if isinstance(weights, str):
        if weights != "params":
            raise BadInput(f"unknown partition weights {weights!r}; valid: params or a list of per-layer costs")
        w = param_weights(model)
    else:
        w = [float(x) for x in weights]
        if len(w) != len(layers):
            raise BadInput(f"{len(w)} layer weights given for {len(layers)} layers of model {model.name}")
    ranges = linear_partition(w, n, cap)
    return graph_of_ranges(model, pp, ranges)


def graph_of_ranges(model: ModelSpec, pp: int, ranges: Sequence[tuple[int, int]]) -> StageGraph:
    """The mixed stage graph whose chunk ``c`` holds layers ``ranges[c]`` of :func:`model_layers`."""
    layers = model_layers(model)
    chunks = [Chunk(c, MIXED_GROUP, c, c % pp, _parts_of(layers, a, b)) for c, (a, b) in enumerate(ranges)]
    return StageGraph(tuple(chunks), tuple(chain_channels(chunks)), pp)


def chunk_ranges(graph: StageGraph) -> list[tuple[int, int]]:
    """``[start, stop)`` of each chunk of a mixed graph in the concatenated layer list (chain order)."""
    out, start = [], 0
    for c in graph.group_chunks(MIXED_GROUP):
        n = sum(p.layers for p in c.parts)
        out.append((start, start + n))
        start += n
    return out


def separated_even_partition(model: ModelSpec, pp: int, segments: Mapping[str, int]) -> StageGraph:
    """One group per module; module ``i`` cut into ``pp * segments[i]`` chunks (default 1 segment)
    with near-equal layer counts, chunk ``j`` of a module on rank ``j mod pp``."""
    layouts: dict[str, list[tuple[int, int]]] = {}
    for m in model.modules:
        k = int(segments.get(m.name, 1))
        if k < 1:
            raise BadInput(f"segments of module {m.name} must be >= 1, got {k}")
        if m.layers < pp * k:
            raise BadInput(f"pp {pp} x {k} segments needs at least {pp * k} layers; module {m.name} has {m.layers}")
        layouts[m.name] = split_evenly(m.layers, pp * k)
    return module_graph(model, pp, layouts)


def max_chunks_per_rank(total_layers: int, pp: int, limit: int) -> int:
    """The largest ``v <= limit`` with ``pp * v <= total_layers`` (at least 1)."""
    return max(1, min(limit, total_layers // max(pp, 1)))
