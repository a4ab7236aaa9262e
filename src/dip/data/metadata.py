"""The metadata pass: what the planner needs of every row, read once and cached beside the data.

For each row of a dataset (:mod:`dip.data.formats`) the pass reads the media headers (image sizes
with Pillow, without decoding pixels; latent shapes from safetensors headers) and asks a
:class:`Measurer` (the model's tokenizer and image rules, see :mod:`dip.integrations`) for token
counts. The result, one :class:`~dip.data.records.SampleMeta` per row (bad rows included, with their
reason), is cached as JSON in ``.dipmeta/`` next to the data, keyed by the data file's content and
the measurer's identity (tokenizer, processor settings, context length): a second pass with the
same data and model reads the cache only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable
from typing import Any, Protocol

from dip.data.formats import detect_format, image_size, latent_shape, read_rows
from dip.data.records import BadSample, SampleMeta, Skipped, T2vRow, VlmRow

__all__ = ["CACHE_DIR", "Measurer", "cache_path", "data_digest", "scan", "split_good"]

log = logging.getLogger(__name__)

CACHE_DIR = ".dipmeta"
CACHE_VERSION = 1


class Measurer(Protocol):
    """The model side of the metadata pass (implemented by the integrations)."""

    identity: str  # changes whenever token counts could change (tokenizer, image rules, limits)

    def measure_vlm(self, row: VlmRow, image_sizes: tuple[tuple[int, int], ...]) -> SampleMeta: ...

    def measure_t2v(self, row: T2vRow, latent_shape: tuple[int, ...]) -> SampleMeta: ...


def data_digest(path: str) -> str:
    """A digest of the data: the file's bytes (JSONL), or each shard's name, size and mtime (folder)."""
    h = hashlib.sha256()
    if os.path.isdir(path):
        for name in sorted(os.listdir(path)):
            st = os.stat(os.path.join(path, name))
            h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    else:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def cache_path(path: str, identity: str, fmt: str) -> str:
    """Where the metadata of ``path`` measured by ``identity`` is cached."""
    key = hashlib.sha256(f"{CACHE_VERSION}\0{fmt}\0{identity}\0{data_digest(path)}".encode()).hexdigest()[:20]
    base = path.rstrip(os.sep)
    return os.path.join(os.path.dirname(os.path.abspath(base)), CACHE_DIR, f"{os.path.basename(base)}.{key}.json")


def _measure(row: Any, measurer: Measurer) -> SampleMeta:
    if isinstance(row, BadSample):
        return SampleMeta.bad(row)
    try:
        if isinstance(row, VlmRow):
            sizes = tuple(image_size(ref, row.source, row.line) for ref in row.images)
            return measurer.measure_vlm(row, sizes)
        return measurer.measure_t2v(row, latent_shape(row.latents, row.source, row.line))
    except BadSample as bad:
        return SampleMeta.bad(bad, row.id)


def _read_cache(path: str) -> list[SampleMeta] | None:
    try:
        with open(path, encoding="utf-8") as f:
            return [SampleMeta.from_json(d) for d in json.load(f)["samples"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_cache(path: str, metas: list[SampleMeta]) -> None:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"version": CACHE_VERSION, "samples": [m.to_json() for m in metas]}, f)
        os.replace(tmp, path)
    except OSError as exc:  # a read-only dataset folder: measure again next time
        log.warning("metadata cache %s not written (%s)", path, exc)


def scan(path: str, measurer: Measurer, *, fmt: str | None = None, use_cache: bool = True) -> list[SampleMeta]:
    """The metadata of every row of ``path`` (bad rows carry their ``error``), from the cache if valid."""
    fmt = fmt or detect_format(path)
    where = cache_path(path, measurer.identity, fmt)
    if use_cache:
        got = _read_cache(where)
        if got is not None:
            log.info("metadata of %s read from %s", path, where)
            return got
    metas = [_measure(row, measurer) for row in read_rows(path, fmt)]
    if use_cache:
        _write_cache(where, metas)
    return metas


def split_good(metas: Iterable[SampleMeta], strict: bool) -> tuple[list[SampleMeta], Skipped]:
    """The usable rows and the count of bad ones; under ``strict`` the first bad row raises
    :class:`~dip.errors.BadInput` naming its file and line."""
    good, skipped = [], Skipped()
    for m in metas:
        if m.ok:
            good.append(m)
            continue
        if strict:
            raise BadSample(m.source, m.line, m.error, m.error_kind).as_bad_input()
        skipped.add(m)
    return good, skipped
