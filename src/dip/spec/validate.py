"""Checks of a model's structure and of its tensor / pipeline / data parallel configuration.

Every failure raises :class:`BadInput` whose one-line message names the violated rule, the module and
its preset, e.g. ``tp 7 does not divide the 16 attention heads of module vit (ViT-5B)``.
"""

from __future__ import annotations

from dataclasses import replace

from dip.errors import BadInput, choices_error
from dip.spec.model import MODULE_KINDS, ModelSpec, ModuleSpec, ParallelSpec

__all__ = ["EDGE_ENDS", "WORKLOADS", "module_label", "validate_model", "validate_parallel", "with_overrides"]

WORKLOADS: tuple[str, ...] = ("vlm", "t2v", "text")
EDGE_ENDS: dict[str, tuple[str, str]] = {
    "image_embeddings": ("vit", "decoder"),
    "text_conditioning": ("decoder", "dit"),
}
_POSITIVE_FIELDS: tuple[str, ...] = (
    "layers",
    "hidden",
    "ffn_hidden",
    "heads",
    "kv_heads",
    "image_size",
    "patch_size",
    "spatial_merge",
    "in_channels",
    "latent_channels",
    "patch_t",
    "patch_hw",
    "vae_temporal",
    "vae_spatial",
    "video_fps",
    "video_height",
    "video_width",
)
_NON_NEGATIVE_FIELDS: tuple[str, ...] = ("out_hidden", "vocab_size", "cond_hidden")


def module_label(model: ModelSpec, m: ModuleSpec) -> str:
    """``vit (ViT-5B)`` when the module came from a preset, else the module name."""
    preset = model.extra.get("module_presets", {}).get(m.name)
    return f"{m.name} ({preset})" if preset and preset != m.name else m.name


def validate_model(model: ModelSpec) -> None:
    """Structural checks: module shapes, unique names, edge kinds and endpoints, widths across edges."""
    if not model.modules:
        raise BadInput(f"model {model.name} has no modules")
    if model.workload not in WORKLOADS:
        raise choices_error("workload", model.workload, WORKLOADS)
    names = [m.name for m in model.modules]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise BadInput(f"model {model.name} has duplicate module names: {', '.join(dupes)}")
    for m in model.modules:
        _validate_module(model, m)
    order = {n: i for i, n in enumerate(names)}
    for e in model.edges:
        _validate_edge(model, e.src, e.dst, e.kind, order)
    for field, value in (
        ("context_length", model.context_length),
        ("max_images_per_microbatch", model.max_images_per_microbatch),
        ("max_clips_per_microbatch", model.max_clips_per_microbatch),
    ):
        if value < 1:
            raise BadInput(f"{field} must be >= 1 in model {model.name}, got {value}")
    if model.max_video_seconds <= 0:
        raise BadInput(f"max_video_seconds must be > 0 in model {model.name}, got {model.max_video_seconds}")


def _validate_module(model: ModelSpec, m: ModuleSpec) -> None:
    label = module_label(model, m)
    if m.kind not in MODULE_KINDS:
        raise choices_error("module kind", m.kind, MODULE_KINDS)
    for field in _POSITIVE_FIELDS + _NON_NEGATIVE_FIELDS:
        value, minimum = getattr(m, field), 0 if field in _NON_NEGATIVE_FIELDS else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise BadInput(f"{field} of module {label} must be an integer >= {minimum}, got {value!r}")
    if m.hidden % m.heads:
        raise BadInput(f"hidden {m.hidden} of module {label} is not divisible by its {m.heads} attention heads")
    if m.heads % m.kv_heads:
        raise BadInput(
            f"the {m.heads} attention heads of module {label} are not a multiple of its {m.kv_heads} key/value heads"
        )
    if m.kind == "decoder" and m.vocab_size < 1:
        raise BadInput(f"vocab_size of decoder module {label} must be >= 1, got {m.vocab_size}")
    if m.kind == "vit" and m.image_size // m.patch_size < m.spatial_merge:
        raise BadInput(
            f"module {label}: image_size {m.image_size} / patch_size {m.patch_size} gives fewer patches per "
            f"side than spatial_merge {m.spatial_merge}"
        )


def _validate_edge(model: ModelSpec, src: str, dst: str, kind: str, order: dict[str, int]) -> None:
    if kind not in EDGE_ENDS:
        raise choices_error("edge kind", kind, EDGE_ENDS)
    for end in (src, dst):
        if end not in order:
            raise choices_error("edge endpoint", end, order)
    if order[src] >= order[dst]:
        raise BadInput(f"edge {src} -> {dst}: modules must be listed in topological order ({src} before {dst})")
    a, b = model.module(src), model.module(dst)
    want_src, want_dst = EDGE_ENDS[kind]
    if (a.kind, b.kind) != (want_src, want_dst):
        raise BadInput(
            f"edge {src} -> {dst} of kind {kind} must join a {want_src} to a {want_dst}, got {a.kind} -> {b.kind}"
        )
    if kind == "image_embeddings" and a.out_hidden != b.hidden:
        raise BadInput(
            f"out_hidden {a.out_hidden} of module {module_label(model, a)} must equal hidden {b.hidden} of "
            f"{module_label(model, b)}"
        )
    if kind == "text_conditioning" and b.cond_hidden != a.hidden:
        raise BadInput(
            f"cond_hidden {b.cond_hidden} of module {module_label(model, b)} must equal hidden {a.hidden} of "
            f"{module_label(model, a)}"
        )


def validate_parallel(
    model: ModelSpec,
    parallel: ParallelSpec | None = None,
    segments: dict[str, int] | None = None,
    gpus: int | None = None,
) -> None:
    """Check that ``parallel`` (default: the model's own) fits every module of ``model``.

    Rules: tp, pp, dp >= 1; sequence_parallel and distributed_optimizer are booleans or None; tp divides every
    module's attention heads, key/value heads, hidden and
    ffn hidden sizes; each module has at least ``pp * segments`` layers (one per pipeline chunk);
    ``gpus == tp * pp * dp`` when ``gpus`` is given. ``segments`` overrides ``parallel.segments``.
    """
    p = parallel or model.parallel
    for field in ("tp", "pp", "dp"):
        value = getattr(p, field)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BadInput(f"{field} must be an integer >= 1, got {value!r}")
    for field in ("sequence_parallel", "distributed_optimizer"):
        value = getattr(p, field)
        if value is not None and not isinstance(value, bool):
            raise BadInput(f"{field} must be true, false or unset (Megatron's default), got {value!r}")
    seg = dict(p.segments)
    seg.update(segments or {})
    names = [m.name for m in model.modules]
    for name, k in seg.items():
        if name not in names:
            raise choices_error("segments module", name, names)
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise BadInput(f"segments of module {name} must be an integer >= 1, got {k!r}")
    for m in model.modules:
        label = module_label(model, m)
        for what, value in (
            ("attention heads", m.heads),
            ("key/value heads", m.kv_heads),
            ("hidden size", m.hidden),
            ("ffn hidden size", m.ffn_hidden),
        ):
            if value % p.tp:
                raise BadInput(f"tp {p.tp} does not divide the {value} {what} of module {label}")
        k = seg.get(m.name, 1)
        chunks = p.pp * k
        if m.layers < chunks:
            raise BadInput(
                f"module {label} has {m.layers} layers, fewer than its {chunks} pipeline chunks "
                f"(pp {p.pp} x {k} segment{'s' if k > 1 else ''})"
            )
    if gpus is not None and gpus != p.gpus:
        raise BadInput(f"gpus {gpus} != tp {p.tp} x pp {p.pp} x dp {p.dp} = {p.gpus}")


def with_overrides(
    model: ModelSpec,
    tp: int | None = None,
    pp: int | None = None,
    dp: int | None = None,
    segments: dict[str, int] | None = None,
    sequence_parallel: bool | None = None,
    distributed_optimizer: bool | None = None,
) -> ModelSpec:
    """``model`` with the given parallel degrees, per-module segment counts and Megatron memory flags
    (``sequence_parallel``, ``distributed_optimizer``; None keeps the model's) replaced, validated."""
    changes = {
        k: v
        for k, v in (
            ("tp", tp),
            ("pp", pp),
            ("dp", dp),
            ("sequence_parallel", sequence_parallel),
            ("distributed_optimizer", distributed_optimizer),
        )
        if v is not None
    }
    if segments is not None:
        merged = dict(model.parallel.segments)
        merged.update(segments)
        order = [m.name for m in model.modules]
        changes["segments"] = tuple(
            sorted(merged.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))
        )
    parallel = replace(model.parallel, **changes)
    validate_parallel(model, parallel)
    return replace(model, parallel=parallel)
