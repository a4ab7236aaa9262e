"""User sample manifests: JSONL (one sample per line) or Parquet (one per row, needs pyarrow).

A sample looks like::

    {"text_tokens": 812, "images": [{"width": 1024, "height": 768}],
     "videos": [{"seconds": 6.5, "fps": 24, "width": 1280, "height": 720}]}

``text_tokens`` (integer >= 0) is required; ``images`` is a list of ``{width, height}`` or an image
count; ``videos`` is a list of ``{seconds, width, height[, fps]}`` (``fps`` defaults to 30; it does not
change the cost since clips are resampled to the DiT's rate). Blank lines are skipped. Any other key
or a malformed value raises :class:`BadInput` naming the line (or row) and the field.

:func:`manifest_batches` packs the samples in file order with the same packers as the generators and
cuts the micro-batches into global batches of ``M``; a last, partial batch is kept.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

from dip.data.meta import BatchMeta
from dip.data.packing import pack, to_batches
from dip.data.samples import Clip, Sample, tokens_per_image
from dip.data.workload import MAX_MICROBATCHES
from dip.errors import BadInput
from dip.spec.model import ModelSpec

__all__ = [
    "DEFAULT_FPS",
    "IMAGE_KEYS",
    "SAMPLE_KEYS",
    "VIDEO_KEYS",
    "check_compatible",
    "manifest_batches",
    "parse_sample",
    "read_manifest",
]

logger = logging.getLogger(__name__)

SAMPLE_KEYS = ("text_tokens", "images", "videos")
IMAGE_KEYS = ("width", "height")
VIDEO_KEYS = ("seconds", "fps", "width", "height")
DEFAULT_FPS = 30.0


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(v: Any, where: str, field: str, minimum: int) -> int:
    if not _is_int(v):
        raise BadInput(f"{where}: {field} must be an integer, got {json.dumps(v)}")
    if v < minimum:
        raise BadInput(f"{where}: {field} must be >= {minimum}, got {v}")
    return v


def _positive_number(v: Any, where: str, field: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise BadInput(f"{where}: {field} must be a number, got {json.dumps(v)}")
    if v <= 0:
        raise BadInput(f"{where}: {field} must be > 0, got {v}")
    return float(v)


def _object(v: Any, where: str, field: str, keys: tuple[str, ...], required: tuple[str, ...]) -> dict:
    if not isinstance(v, dict):
        raise BadInput(f"{where}: {field} must be an object with keys {', '.join(keys)}")
    for k in v:
        if k not in keys:
            raise BadInput(f"{where}: unknown key {k!r} in {field}; valid keys: {', '.join(keys)}")
    for k in required:
        if k not in v:
            raise BadInput(f"{where}: {field}.{k} is missing")
    return v


def _images(v: Any, where: str) -> int:
    if _is_int(v):
        return _int(v, where, "images", 0)
    if not isinstance(v, list):
        raise BadInput(f"{where}: images must be a list of {{width, height}} objects or an integer count")
    for i, img in enumerate(v):
        img = _object(img, where, f"images[{i}]", IMAGE_KEYS, IMAGE_KEYS)
        for k in IMAGE_KEYS:
            _int(img[k], where, f"images[{i}].{k}", 1)
    return len(v)


def _videos(v: Any, where: str) -> tuple[Clip, ...]:
    if not isinstance(v, list):
        raise BadInput(f"{where}: videos must be a list of {{seconds, fps, width, height}} objects")
    clips = []
    for i, vid in enumerate(v):
        vid = _object(vid, where, f"videos[{i}]", VIDEO_KEYS, ("seconds", "width", "height"))
        clips.append(
            Clip(
                seconds=_positive_number(vid["seconds"], where, f"videos[{i}].seconds"),
                fps=_positive_number(vid.get("fps", DEFAULT_FPS), where, f"videos[{i}].fps"),
                width=_int(vid["width"], where, f"videos[{i}].width", 1),
                height=_int(vid["height"], where, f"videos[{i}].height", 1),
            )
        )
    return tuple(clips)


def parse_sample(row: Any, where: str) -> Sample:
    """Validate one manifest entry; ``where`` ("line 3", "row 3") prefixes every error."""
    if not isinstance(row, dict):
        raise BadInput(f"{where}: expected a JSON object with keys {', '.join(SAMPLE_KEYS)}")
    for k in row:
        if k not in SAMPLE_KEYS:
            raise BadInput(f"{where}: unknown key {k!r}; valid keys: {', '.join(SAMPLE_KEYS)}")
    if "text_tokens" not in row:
        raise BadInput(f"{where}: text_tokens is missing")
    return Sample(
        text_tokens=_int(row["text_tokens"], where, "text_tokens", 0),
        image_count=_images(row.get("images", []), where),
        clips=_videos(row.get("videos", []), where),
    )


def check_compatible(sample: Sample, model: ModelSpec, where: str) -> None:
    """Reject media the model cannot consume (images without a ViT, videos without a DiT...)."""
    if sample.image_count and (model.workload != "vlm" or not tokens_per_image(model)):
        raise BadInput(f"{where}: images given but model {model.name} (workload {model.workload}) has no image encoder")
    if sample.clips and model.workload != "t2v":
        raise BadInput(f"{where}: videos given but model {model.name} (workload {model.workload}) has no video module")
    if model.workload == "t2v" and not sample.clips:
        raise BadInput(f"{where}: model {model.name} is text-to-video; every sample needs at least one video")


def _jsonl_rows(path: str) -> list[tuple[str, Any]]:
    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    rows.append((f"line {number}", json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise BadInput(f"line {number}: not valid JSON: {exc.msg} (column {exc.colno})") from None
    except UnicodeDecodeError:
        raise BadInput(f"manifest {path} is not UTF-8 text") from None
    return rows


def _parquet_rows(path: str) -> list[tuple[str, Any]]:
    try:
        import pyarrow.parquet as pq  # optional (not a dependency): only Parquet manifests need it
    except ImportError:
        raise BadInput(f"manifest {path}: reading Parquet needs pyarrow; install it or use a JSONL manifest") from None
    try:
        records = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several error types for corrupt files
        raise BadInput(f"manifest {path} is not a readable Parquet file: {exc}") from None
    return [(f"row {i}", {k: v for k, v in r.items() if v is not None}) for i, r in enumerate(records, start=1)]


def read_manifest(path: str, model: ModelSpec | None = None) -> list[Sample]:
    """All samples of a manifest, validated (and checked against ``model`` when given)."""
    if not os.path.exists(path):
        raise BadInput(f"manifest {path} not found")
    if not os.path.isfile(path):
        raise BadInput(f"manifest {path} is not a file")
    try:
        rows = _parquet_rows(path) if path.endswith(".parquet") else _jsonl_rows(path)
        if not rows:
            raise BadInput(f"manifest {path} is empty")
        samples = []
        for where, row in rows:
            sample = parse_sample(row, where)
            if model is not None:
                check_compatible(sample, model, where)
            samples.append(sample)
    except BadInput as exc:
        if str(exc).startswith(("line ", "row ")):  # name the file as well as the line
            raise BadInput(f"manifest {path}, {exc}") from None
        raise
    return samples


def manifest_batches(model: ModelSpec, path: str, microbatches: int = 64) -> list[BatchMeta]:
    """Pack a manifest for ``model``: global batches of ``microbatches`` (last one may be partial)."""
    if not 1 <= microbatches <= MAX_MICROBATCHES:
        raise BadInput(f"microbatches must be an integer from 1 to {MAX_MICROBATCHES}, got {microbatches}")
    packed = pack(model, read_manifest(path, model))
    if not packed:
        raise BadInput(f"manifest {path} has no tokens, images or videos to pack")
    batches = to_batches(packed, microbatches)
    logger.debug("manifest %s: %d micro-batches in %d batches for %s", path, len(packed), len(batches), model.name)
    for b in batches:
        b.extra["source"] = f"manifest {os.path.basename(path)}"
    return batches
