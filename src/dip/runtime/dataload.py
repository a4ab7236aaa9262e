"""Each rank loads only what its chunks consume, through a torch ``DataLoader`` with workers.

A model provider says, per chunk part and micro-batch, which dataset tensors the part reads
(``provider.data_keys(module, layer_start, layer_end, mb, start, stop)``: e.g. the pixels of the images
of the vision tower's first chunk, the token ids of the LM's chunks, the latents of the DiT's first and
last chunks). :func:`chunk_data_keys` collects them for the parts a rank holds and a replica batch;
:class:`StepDataLoader` loads them in ``workers`` processes (``dataset.load(key)`` runs there) and hands
the step's tensors to the dataset (``dataset.prime(loaded)``), whose samples then read them instead of
the disk. The next step's keys are loaded in the background while the current step runs
(:meth:`StepDataLoader.prefetch`), so a step waits for its data only when loading is slower than
training.

A sample that fails to load (an image whose header read but whose pixels do not decode) is an error
naming the file and line (:class:`~dip.errors.BadInput`), raised on the rank, never a worker's
traceback.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from torch.utils.data import DataLoader, Dataset, Sampler

from dip.data.meta import BatchMeta
from dip.errors import BadInput

__all__ = ["StepDataLoader", "chunk_data_keys"]

log = logging.getLogger(__name__)

Part = tuple[str, int, int]  # (module, layer_start, layer_end) of a chunk part


def chunk_data_keys(provider: Any, parts: Iterable[Part], batch: BatchMeta) -> list[Hashable]:
    """The dataset keys the ``parts`` of a rank read for ``batch`` (first occurrence order, no repeats).

    Every unit of a module passes through every chunk of that module, so the whole micro-batch's keys
    of each part are needed whatever the plan's sub-microbatches; a provider without ``data_keys``
    loads nothing ahead (its units read lazily)."""
    keys_of = getattr(provider, "data_keys", None)
    if keys_of is None:
        return []
    seen: dict[Hashable, None] = {}
    parts = list(parts)
    for mb in batch.microbatches:
        for module, a, b in parts:
            if provider.instances(module, mb) == 0:
                continue
            for key in keys_of(module, a, b, mb, 0, 0):
                seen.setdefault(key, None)
    return list(seen)


@dataclass(frozen=True)
class _Failed:
    """A load that raised in a worker: re-raised on the rank with its own message."""

    bad_input: bool
    message: str


class _Keyed(Dataset):
    """``dataset.load(key)`` by key (the sampler yields keys, not integer indices)."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __getitem__(self, key: Hashable) -> tuple[Hashable, Any]:
        try:
            return key, self.dataset.load(key)
        except BadInput as exc:
            return key, _Failed(True, str(exc))
        except Exception as exc:  # shown on the rank with its type and message, not as a worker traceback
            return key, _Failed(False, f"loading {key!r}: {type(exc).__name__}: {exc}")


class _StepKeys(Sampler):
    """The keys of the current load (replaced before each pass over the loader)."""

    def __init__(self):
        self.keys: list[Hashable] = []

    def __iter__(self) -> Iterator[Hashable]:
        return iter(list(self.keys))

    def __len__(self) -> int:
        return len(self.keys)


def _unchanged(item: Any) -> Any:
    return item


class StepDataLoader:
    """The step's dataset tensors of one rank, loaded by a ``DataLoader`` with ``workers`` processes.

    Args:
        dataset: offers ``load(key)`` (runs in the workers) and ``prime(loaded)`` (the step's tensors).
        workers: loader processes (0: load in this process).
        timeout_s: the longest wait for one loaded item.
    """

    def __init__(self, dataset: Any, *, workers: int = 2, timeout_s: float = 120.0):
        self.dataset = dataset
        self.sampler = _StepKeys()
        self.loader = DataLoader(
            _Keyed(dataset),
            sampler=self.sampler,
            batch_size=None,
            collate_fn=_unchanged,
            num_workers=workers,
            persistent_workers=workers > 0,
            timeout=timeout_s if workers > 0 else 0,
        )
        self.loaded = Counter()  # keys loaded, by kind (the key's first field)
        self._pending: tuple[threading.Thread, list[Hashable], dict[str, Any]] | None = None

    def _load(self, keys: Sequence[Hashable]) -> dict[Hashable, Any]:
        out: dict[Hashable, Any] = {}
        if not keys:
            return out
        self.sampler.keys = list(keys)
        for key, value in self.loader:
            if isinstance(value, _Failed):
                raise BadInput(value.message) if value.bad_input else RuntimeError(value.message)
            out[key] = value
        for key in keys:
            self.loaded[key[0] if isinstance(key, tuple) and key else "item"] += 1
        return out

    def prefetch(self, keys: Sequence[Hashable]) -> None:
        """Start loading ``keys`` in the background (the next step's data while this step runs)."""
        self._join()
        box: dict[str, Any] = {}
        keys = list(keys)

        def work() -> None:
            try:
                box["loaded"] = self._load(keys)
            except BaseException as exc:  # handed to the step that needs the data
                box["error"] = exc

        thread = threading.Thread(target=work, name="dip-data-prefetch", daemon=True)
        thread.start()
        self._pending = (thread, keys, box)

    def _join(self) -> dict[Hashable, Any]:
        if self._pending is None:
            return {}
        thread, _, box = self._pending
        thread.join()
        self._pending = None
        if "error" in box:
            raise box["error"]
        return box["loaded"]

    def ready(self, keys: Sequence[Hashable]) -> None:
        """Make ``keys`` available to the dataset's samples: what a prefetch already loaded, plus any
        missing key loaded now; the previous step's tensors are released."""
        have = self._join()
        missing = [k for k in keys if k not in have]
        if missing:
            have.update(self._load(missing))
        self.dataset.prime({k: have[k] for k in keys})

    def summary(self) -> dict[str, int]:
        return dict(self.loaded)

    def close(self) -> None:
        """Wait for a running prefetch and stop the worker processes."""
        try:
            self._join()
        except BaseException as exc:  # the run is over; a failed prefetch of an unused step is only logged
            log.debug("unused prefetch failed: %s", exc)
        self.loader = None  # the last reference to its worker iterator: the workers are shut down now
