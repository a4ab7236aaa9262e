"""The run's data order: the global batch of every pipeline pass, deterministic and sharded over the
data-parallel replicas, made lazily (metadata only) so that the planner and every rank can ask for any
pass without generating the whole run.

A *pass* is one execution of a plan by every pipeline: step ``s`` of a run with ``--grad-accum A`` runs
passes ``s*A .. s*A+A-1``. Pass ``i``'s global batch holds ``dp * M`` micro-batches; replica ``d`` runs
micro-batches ``d*M .. d*M+M-1`` of it (:meth:`BatchStream.replicas`).

* Generated workloads: pass ``i`` is batch ``i`` of the model's workload generator (``default``: the
  workload mixture, ``dynamic``: the paper's rising and falling image counts), which depends only on
  ``(seed, i)``; a VLM run's first batch always holds a text-only micro-batch.
* A dataset: every epoch visits the samples in an order drawn from ``(seed, epoch)`` and packs them
  whole (:func:`dip.data.packing.pack_documents`); passes take consecutive ``dp * M`` micro-batches of
  that stream. The position in the stream (micro-batches consumed) is what a checkpoint stores, so a
  run resumed with another number of replicas continues where the last one stopped.

Every rank builds the same stream; a plan carries the :func:`fingerprint` of the batch it was made for,
and each rank checks it against its own stream before running the plan.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

from dip.data.meta import BatchMeta, MicroBatchMeta
from dip.data.packing import DocumentMeta, pack_documents
from dip.data.sources import resolve
from dip.data.workload import generate_batch, generate_dynamic_batch
from dip.errors import BadInput, choices_error
from dip.spec.model import ModelSpec

__all__ = ["WORKLOADS", "BatchStream", "StreamStart", "fingerprint", "text_only"]

WORKLOADS = ("default", "dynamic")
CACHE = 64  # passes kept (the planner's look-ahead and the ranks' current and next pass)


@dataclass(frozen=True)
class StreamStart:
    """Where a stream starts: pass ``pass_index`` begins at micro-batch ``microbatches`` of the data
    stream (a resumed run's checkpoint position; both 0 for a new run)."""

    pass_index: int = 0
    microbatches: int = 0


def text_only(mb: MicroBatchMeta) -> MicroBatchMeta:
    """The same micro-batch without images (every image's tokens become text)."""
    return MicroBatchMeta(text_lens=mb.text_lens, image_counts=(0,) * len(mb.text_lens))


def _plain(x):
    if isinstance(x, (tuple, list)):
        return [_plain(v) for v in x]
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    return x


def fingerprint(batches: Sequence[BatchMeta]) -> str:
    """A short hash of the micro-batches of ``batches`` (one per replica), identical on every process."""
    rows = [[[_plain(getattr(mb, f.name)) for f in fields(mb)] for mb in b.microbatches] for b in batches]
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()[:16]


class BatchStream:
    """The global batches of a run's passes.

    Args:
        model: the model (its workload mixture, context length and image / clip limits).
        dp: data-parallel replicas.
        microbatches: micro-batches per replica per pass.
        seed: the data seed.
        workload: ``default`` or ``dynamic`` (generated data only).
        documents: per-sample metadata of a dataset; ``None`` uses the generated workload.
        start: where pass ``start.pass_index`` begins in the data stream (resumed runs).
    """

    def __init__(
        self,
        model: ModelSpec,
        *,
        dp: int,
        microbatches: int,
        seed: int,
        workload: str = "default",
        documents: Sequence[DocumentMeta] | None = None,
        start: StreamStart = StreamStart(),
    ):
        if workload not in WORKLOADS:
            raise choices_error("workload", workload, WORKLOADS)
        if documents is not None and not documents:
            raise BadInput("the dataset has no usable sample")
        self.model, self.dp, self.microbatches, self.seed = model, dp, microbatches, seed
        self.workload, self.documents, self.start = workload, documents, start
        self._lock = threading.Lock()  # rank 0's planner service reads the stream from its own thread
        self._cache: OrderedDict[int, list[BatchMeta]] = OrderedDict()
        self._stream: list[MicroBatchMeta] = []  # dataset micro-batches packed so far
        self._stream_base = 0  # micro-batch index of _stream[0]
        self.epochs = 0  # dataset epochs packed so far

    @property
    def per_pass(self) -> int:
        """Micro-batches of one pass's global batch."""
        return self.dp * self.microbatches

    def consumed(self, index: int) -> int:
        """Micro-batches of the data stream before pass ``index``."""
        return self.start.microbatches + (index - self.start.pass_index) * self.per_pass

    def replicas(self, index: int) -> list[BatchMeta]:
        """Pass ``index``'s batch of every replica (replica ``d``: micro-batches ``d*M .. d*M+M-1``)."""
        with self._lock:
            hit = self._cache.get(index)
            if hit is None:
                mbs = self._global(index)
                m = self.microbatches
                hit = [BatchMeta(tuple(mbs[d * m : (d + 1) * m]), index=index) for d in range(self.dp)]
                self._cache[index] = hit
                while len(self._cache) > CACHE:
                    self._cache.popitem(last=False)
            return hit

    def global_batch(self, index: int) -> BatchMeta:
        """Pass ``index``'s micro-batches of all replicas, in replica order."""
        return BatchMeta(tuple(mb for b in self.replicas(index) for mb in b.microbatches), index=index)

    def fingerprint(self, index: int) -> str:
        return fingerprint(self.replicas(index))

    def _global(self, index: int) -> list[MicroBatchMeta]:
        if index < self.start.pass_index:
            raise ValueError(f"pass {index} is before the stream's start (pass {self.start.pass_index})")
        if self.documents is not None:
            return self._packed(self.consumed(index), self.per_pass)
        n = self.per_pass
        if self.workload == "dynamic":
            batch = generate_dynamic_batch(self.model, self.seed, index, n)
        else:
            batch = generate_batch(self.model, resolve(None, self.model.workload), self.seed, index, n)
        mbs = list(batch.microbatches)
        if self.model.is_vlm and index == 0 and not any(mb.images == 0 for mb in mbs):
            mbs[-1] = text_only(mbs[-1])  # the empty vision-tower path runs in every VLM run
        return mbs

    def _packed(self, first: int, count: int) -> list[MicroBatchMeta]:
        """Micro-batches ``first .. first+count-1`` of the dataset's epoch stream."""
        if first < self._stream_base:  # asked for a pass long behind: pack again from the start
            self._stream, self._stream_base, self.epochs = [], 0, 0
        while self._stream_base + len(self._stream) < first + count:
            order = np.random.default_rng([self.seed, self.epochs]).permutation(len(self.documents))
            self._stream += pack_documents(
                [self.documents[i] for i in order],
                context_length=self.model.context_length,
                max_images=self.model.max_images_per_microbatch,
                max_clips=self.model.max_clips_per_microbatch,
            )
            self.epochs += 1
        behind = first - self._stream_base - CACHE * count  # keep the passes the cache may ask again
        if behind > 0:
            self._stream = self._stream[behind:]
            self._stream_base += behind
        lo = first - self._stream_base
        return self._stream[lo : lo + count]
