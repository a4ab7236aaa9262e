"""What every integrated dataset shares: samples measured by the model's processor (bad ones skipped
and counted, or an error under ``strict``), per-sample metadata for the planner, and items loaded
lazily per sample or served from what the trainer's data loader loaded for the step."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from dip.data.metadata import split_good
from dip.data.packing import DocumentMeta
from dip.data.records import SampleMeta, Skipped
from dip.errors import BadInput

__all__ = ["SampleDataset", "no_usable_sample"]

log = logging.getLogger(__name__)


def no_usable_sample(path: str, skipped: Skipped) -> str:
    first = f", e.g. {skipped.examples[0]}" if skipped.examples else ""
    return f"data {path!r}: no usable sample for this model ({skipped.total} bad{first})"


class SampleDataset:
    """Base of the integrated datasets. A subclass calls :meth:`_measured` with the scanned metadata,
    keeps its rows, makes its per-process caches in :meth:`_make_caches` and reads one item in
    :meth:`load` (``("text", i)``, ``("image", i, k)``, ``("latents", i)``, ...)."""

    path: str
    metas: list[SampleMeta]
    skipped: Skipped

    def _measured(self, path: str, metas, strict: bool) -> None:
        self.path = path
        self.metas, self.skipped = split_good(metas, strict)
        if not self.metas:
            raise BadInput(no_usable_sample(path, self.skipped))
        self._primed: dict[tuple, Any] = {}
        self.direct_loads: Counter = Counter()  # reads not served by the step's data loader
        self._make_caches()
        if self.skipped.total:
            log.warning("%s: %d bad samples skipped (%s)", path, self.skipped.total, dict(self.skipped.by_kind))

    def _make_caches(self) -> None:
        """Per-process read caches (not pickled into data-loader workers)."""

    _CACHES: tuple[str, ...] = ()

    def __getstate__(self) -> dict:  # for data-loader workers started by spawn: caches stay behind
        state = dict(self.__dict__)
        for name in (*self._CACHES, "_primed"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._primed = {}
        self._make_caches()

    def __len__(self) -> int:
        return len(self.metas)

    def documents(self) -> list[DocumentMeta]:
        """Per-sample metadata for the packer (:func:`dip.data.packing.pack_documents`)."""
        return [m.document(i) for i, m in enumerate(self.metas)]

    def meta(self, index: int) -> SampleMeta:
        return self.metas[index]

    def loss_tokens(self, index: int) -> int:
        return self.metas[index].loss_tokens

    def load(self, key: tuple) -> Any:
        """One item for the trainer's data loader (runs in its worker processes)."""
        raise NotImplementedError

    def prime(self, loaded: dict[tuple, Any]) -> None:
        """The step's loaded items (replacing the previous step's), served before any direct read."""
        self._primed = dict(loaded)

    def _item(self, key: tuple, read: Callable[[], Any]) -> Any:
        """The step's loaded item ``key``, else ``read()`` (counted as a direct load)."""
        got = self._primed.get(key)
        if got is None:
            self.direct_loads[key[0]] += 1
            got = read()
        return got
