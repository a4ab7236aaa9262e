"""Training checkpoints with ``torch.distributed.checkpoint`` (DCP): every rank writes its own shards.

A checkpoint is one folder ``DIR/step-N`` (``N``: optimizer steps done) holding DCP's files and
``dip-checkpoint.json`` (written by rank 0: the step, the data position, the pipeline layout, the run's
settings and the planner's state). It is written under a temporary name (``DIR/.tmp-step-N``) and
renamed once every rank's shards and DCP's metadata are on disk, so a folder named ``step-N`` is always
complete: a crash mid-write leaves the previous checkpoint intact and only a temporary folder behind
(removed by the next run that writes checkpoints there). ``keep_last`` prunes the oldest (renamed to a
temporary name first, then removed).

State (:func:`train_state`): parameters and optimizer state by canonical parameter name (``model.<name>``,
``optim.<name>.<field>``, so a run with another number of data-parallel replicas loads the same keys:
DCP writes each replicated tensor once and any rank may read it), the LR scheduler's state, and each
rank's RNG states (``rng.<rank>``).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.tensor import DTensor

from dip.errors import BadInput
from dip.io import write_atomic
from dip.runtime.comm import timed_collective

__all__ = [
    "META_FILE",
    "Checkpointer",
    "apply_train_state",
    "check_resume",
    "find_checkpoints",
    "latest_checkpoint",
    "optimizer_states",
    "read_meta",
    "train_state",
]

logger = logging.getLogger(__name__)

PREFIX = "step-"
TMP_PREFIX = ".tmp-"
META_FILE = "dip-checkpoint.json"


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step}"


def find_checkpoints(directory: str) -> list[tuple[int, str]]:
    """``(step, path)`` of every complete checkpoint in ``directory``, oldest first."""
    if not os.path.isdir(directory):
        return []
    out = []
    for name in os.listdir(directory):
        if name.startswith(PREFIX) and name[len(PREFIX) :].isdigit():
            path = os.path.join(directory, name)
            if os.path.isfile(os.path.join(path, META_FILE)):
                out.append((int(name[len(PREFIX) :]), path))
    return sorted(out)


def latest_checkpoint(directory: str) -> tuple[int, str] | None:
    found = find_checkpoints(directory)
    return found[-1] if found else None


def read_meta(path: str) -> dict[str, Any]:
    with open(os.path.join(path, META_FILE), encoding="utf-8") as f:
        return json.load(f)


def check_resume(meta: Mapping[str, Any], path: str, *, model: str, pp: int, layout: list | None = None) -> None:
    """Refuse to resume a checkpoint of another model or pipeline layout (one line, :class:`BadInput`)."""
    if meta.get("model") != model:
        raise BadInput(f"checkpoint {path} was written by model {meta.get('model')!r}, not {model!r}")
    if meta.get("pp") != pp:
        raise BadInput(
            f"checkpoint {path} holds a pipeline of {meta.get('pp')} stages (pp {meta.get('pp')}); this run has pp "
            f"{pp}: resuming with another pipeline layout is not supported (the number of data-parallel replicas "
            "may change)"
        )
    if layout is not None and meta.get("layout") is not None and _plain(meta["layout"]) != _plain(layout):
        raise BadInput(
            f"checkpoint {path} places the layers on the pipeline ranks as {meta['layout']}; this run places them "
            f"as {layout}: resuming with another pipeline layout is not supported"
        )


def _plain(x: Any) -> Any:
    return [_plain(v) for v in x] if isinstance(x, (list, tuple)) else x


def optimizer_states(optimizer: Any, params: Mapping[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    """The optimizer's live per-parameter state dicts by canonical name (empty before the first step).

    A ZeRO-1 optimizer (:class:`~dip.runtime.zero.ShardedOptimizer`) keeps its state on data-parallel
    main shards (DTensors: DCP writes each slice once and reshards it on load); its states are created
    first, so a fresh optimizer is a loading template."""
    entries = getattr(optimizer, "entries", None)
    if entries is not None:
        optimizer._init_state()
        return {e.name: optimizer.inner.state[e.main] for e in entries}
    return {n: optimizer.state[p] for n, p in params.items()}


def train_state(
    params: Mapping[str, torch.Tensor], optim_states: Mapping[str, Mapping[str, Any]], scheduler: Any, rank: int
) -> dict[str, Any]:
    """The DCP state of one rank: its parameters and their optimizer state (:func:`optimizer_states`) by
    canonical name, the LR scheduler and the rank's RNG states."""
    state: dict[str, Any] = {f"model.{n}": p.detach() for n, p in params.items()}
    for n, fields in optim_states.items():
        for field, value in fields.items():
            state[f"optim.{n}.{field}"] = value
    if scheduler is not None:
        state["lr_scheduler"] = scheduler.state_dict()
    state[f"rng.{rank}.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state[f"rng.{rank}.cuda"] = torch.cuda.get_rng_state()
    state[f"rng.{rank}.python"] = {"python": random.getstate(), "numpy": np.random.get_state()}
    return state


@dataclass
class _Target:
    """Where a loaded tensor goes."""

    tensor: torch.Tensor
    fields: dict[str, Any]  # the parameter's optimizer state
    field: str = ""


def apply_train_state(
    path: str, params: Mapping[str, torch.Tensor], optim_states: Mapping[str, dict[str, Any]], scheduler: Any, rank: int
) -> None:
    """Load a checkpoint into this rank's parameters, optimizer state (the live dicts of
    :func:`optimizer_states`), LR scheduler and RNG (collective).

    Every parameter must be in the checkpoint; optimizer state is loaded where the checkpoint has it
    (a checkpoint written before the first step has none): in place into the state tensors the
    optimizer already holds (sharded DTensors stay sharded), else into new tensors of the saved shape;
    a rank the checkpoint has no RNG state for (more ranks than the run that wrote it) keeps its own."""
    reader = dcp.FileSystemReader(path)
    saved = reader.read_metadata().state_dict_metadata
    missing = [n for n in params if f"model.{n}" not in saved]
    if missing:
        raise BadInput(f"checkpoint {path} has no parameter {missing[0]!r} ({len(missing)} missing): another model?")
    state: dict[str, Any] = {}
    targets: dict[str, _Target] = {}
    with torch.no_grad():
        for n, p in params.items():
            state[f"model.{n}"] = p.detach()
            prefix = f"optim.{n}."
            fields = optim_states[n]
            for key, meta in saved.items():
                if key.startswith(prefix) and isinstance(meta, TensorStorageMetadata):
                    field = key[len(prefix) :]
                    t = fields.get(field)
                    if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(meta.size):
                        device = p.device if len(meta.size) else torch.device("cpu")  # AdamW: `step` on the CPU
                        t = torch.empty(meta.size, dtype=meta.properties.dtype, device=device)
                        if isinstance(p, DTensor) and tuple(meta.size) == tuple(p.shape):
                            t = torch.empty_like(p, dtype=meta.properties.dtype)  # in the parameter's placement
                    state[key] = t
                    targets[key] = _Target(t, fields, field)
    if scheduler is not None and "lr_scheduler" in {k.split(".")[0] for k in saved}:
        state["lr_scheduler"] = scheduler.state_dict()
    own = [k for k in saved if k.startswith(f"rng.{rank}.")]
    rng: dict[str, Any] = {}
    if f"rng.{rank}.torch" in own:
        rng["torch"] = state[f"rng.{rank}.torch"] = torch.empty_like(torch.get_rng_state())
    if f"rng.{rank}.cuda" in own and torch.cuda.is_available():
        rng["cuda"] = state[f"rng.{rank}.cuda"] = torch.empty_like(torch.cuda.get_rng_state())
    if any(k.startswith(f"rng.{rank}.python") for k in own):
        state[f"rng.{rank}.python"] = {"python": random.getstate(), "numpy": np.random.get_state()}
    dcp.load(state, storage_reader=reader)
    for t in targets.values():
        t.fields[t.field] = t.tensor
    if "lr_scheduler" in state:
        scheduler.load_state_dict(state["lr_scheduler"])
        for group, lr in zip(scheduler.optimizer.param_groups, scheduler.get_last_lr()):
            group["lr"] = lr
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"])
    if f"rng.{rank}.python" in state:
        py = state[f"rng.{rank}.python"]
        random.setstate(_tuples(py["python"]))
        np.random.set_state(_tuples(py["numpy"]))


def _tuples(x: Any) -> Any:
    """Python's and numpy's RNG states are tuples (a saved state may come back with lists)."""
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


class Checkpointer:
    """Writes, lists and prunes the checkpoints of one run (every rank holds one).

    Args:
        directory: where checkpoints live (created by rank 0).
        rank: this process's global rank.
        keep_last: keep only the newest ``keep_last`` checkpoints (``0``: keep all).
        timeout_s: how long a rank waits for the others at each stage of a save.
    """

    def __init__(self, directory: str, *, rank: int, keep_last: int = 0, timeout_s: float = 120.0):
        self.directory, self.rank, self.keep_last, self.timeout_s = directory, rank, keep_last, timeout_s

    def _barrier(self, what: str) -> None:
        timed_collective(dist.barrier, f"the barrier {what}", self.rank, self.timeout_s)

    def prepare(self) -> None:
        """Rank 0 creates the folder and removes temporary folders a crashed writer left (collective)."""
        if self.rank == 0:
            os.makedirs(self.directory, exist_ok=True)
            for name in os.listdir(self.directory):
                if name.startswith(TMP_PREFIX):
                    shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
        self._barrier("before the first checkpoint")

    def save(self, step: int, state: dict[str, Any], meta: dict[str, Any]) -> str:
        """Write ``state`` (every rank its own) and ``meta`` (rank 0) as checkpoint ``step``; returns its
        path once it is complete on every rank (collective)."""
        final = os.path.join(self.directory, checkpoint_name(step))
        tmp = os.path.join(self.directory, f"{TMP_PREFIX}{checkpoint_name(step)}")
        if self.rank == 0 and os.path.exists(tmp):
            shutil.rmtree(tmp)
        self._barrier(f"before writing checkpoint {step}")
        dcp.save(state, storage_writer=dcp.FileSystemWriter(tmp))
        self._barrier(f"after writing checkpoint {step}")  # every rank's shards are on disk
        if self.rank == 0:
            write_atomic(os.path.join(tmp, META_FILE), json.dumps({**meta, "step": step}, indent=1) + "\n")
            if os.path.exists(final):  # the same step written again (a resumed run): replace it
                self._remove(final)
            os.replace(tmp, final)
            _sync_dir(self.directory)
            self._prune()
            logger.info("checkpoint %s written", final)
        self._barrier(f"after renaming checkpoint {step}")
        return final

    def _prune(self) -> None:
        if self.keep_last <= 0:
            return
        for _, path in find_checkpoints(self.directory)[: -self.keep_last]:
            self._remove(path)

    def _remove(self, path: str) -> None:
        """Rename first (a crash mid-removal must not leave a partial folder under a complete name)."""
        doomed = os.path.join(self.directory, f"{TMP_PREFIX}old-{os.path.basename(path)}")
        shutil.rmtree(doomed, ignore_errors=True)
        os.replace(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)


def _sync_dir(directory: str) -> None:
    """Make a rename durable (fsync the folder where the OS supports it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
