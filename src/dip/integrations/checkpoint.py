"""Checkpoint weights: lazy per-chunk reads from safetensors files, and writing trained weights back.

:class:`SafetensorsWeights` indexes a checkpoint folder (``model.safetensors``, sharded
``*.safetensors`` with their ``*.index.json``, or diffusers' ``diffusion_pytorch_model*.safetensors``)
from the files' headers only; :meth:`~SafetensorsWeights.read` opens the files with
``safetensors.safe_open`` and reads exactly the tensors asked for (a chunk's layers), never the whole
model. :func:`load_part` fills one part module from the checkpoint through a name map.

:func:`write_weights` writes ``{checkpoint name: tensor}`` as a ``model.safetensors`` (or diffusers
``diffusion_pytorch_model.safetensors``) file, each tensor in the dtype the original checkpoint
stored, and copies every other file of the original folder (config, tokenizer, processor), so
``from_pretrained`` loads the result.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from dip.errors import BadInput

__all__ = ["SafetensorsWeights", "load_part", "write_weights"]

log = logging.getLogger(__name__)

SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _header(path: str) -> dict:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


class SafetensorsWeights:
    """The tensors of the safetensors files of one checkpoint folder, read lazily by name."""

    def __init__(self, folder: str):
        files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors")) if os.path.isdir(folder) else []
        if not files:
            raise BadInput(f"checkpoint folder {folder!r} holds no .safetensors file")
        self.folder = folder
        self.files: dict[str, str] = {}  # tensor name -> file
        self.dtypes: dict[str, torch.dtype] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        for name in files:
            for key, entry in _header(os.path.join(folder, name)).items():
                if key == "__metadata__":
                    continue
                self.files[key] = name
                self.dtypes[key] = SAFETENSORS_DTYPES.get(entry["dtype"], torch.float32)
                self.shapes[key] = tuple(entry["shape"])
        self.reads: list[str] = []  # every tensor name read so far (tests check per-chunk loading)

    def __contains__(self, name: str) -> bool:
        return name in self.files

    def names(self) -> list[str]:
        return list(self.files)

    def read(self, names: Iterable[str]) -> dict[str, torch.Tensor]:
        """The tensors ``names`` (only these are read from disk)."""
        from safetensors import safe_open  # safetensors: lazy, per-tensor reads

        by_file: dict[str, list[str]] = {}
        for n in names:
            if n not in self.files:
                raise BadInput(f"checkpoint {self.folder!r} has no tensor {n!r}")
            by_file.setdefault(self.files[n], []).append(n)
        out = {}
        for file, keys in by_file.items():
            with safe_open(os.path.join(self.folder, file), framework="pt") as f:
                for k in keys:
                    out[k] = f.get_tensor(k)
        self.reads += list(out)
        return out


@torch.no_grad()
def load_part(part: nn.Module, weights: SafetensorsWeights, to_checkpoint: Callable[[str], str]) -> nn.Module:
    """Fill every parameter and persistent buffer of ``part`` from ``weights``; ``to_checkpoint`` maps a
    name within the part to the checkpoint's tensor name. Shapes must agree."""
    state = part.state_dict()
    names = {k: to_checkpoint(k) for k in state}
    got = weights.read(sorted(set(names.values())))
    for k, target in state.items():
        value = got[names[k]]
        if tuple(value.shape) != tuple(target.shape):
            raise BadInput(
                f"checkpoint tensor {names[k]} has shape {tuple(value.shape)}, the model expects {tuple(target.shape)}"
            )
        target.copy_(value.to(target.dtype))
    return part


def write_weights(
    out: str,
    tensors: Mapping[str, torch.Tensor],
    *,
    source: str,
    dtypes: Mapping[str, torch.dtype],
    filename: str = "model.safetensors",
) -> str:
    """Write a checkpoint folder ``out``: the files of folder ``source`` except its weights, plus
    ``tensors`` (checkpoint names) cast to ``dtypes`` (the original storage dtypes) in ``filename``."""
    from safetensors.torch import save_file  # safetensors writes the checkpoint

    os.makedirs(out, exist_ok=True)
    for name in os.listdir(source):
        src = os.path.join(source, name)
        if name.endswith(".safetensors") or name.endswith(".safetensors.index.json") or not os.path.isfile(src):
            continue
        shutil.copy2(src, os.path.join(out, name))
    clean = {k: v.detach().to("cpu", dtypes.get(k, v.dtype)).contiguous() for k, v in tensors.items()}
    path = os.path.join(out, filename)
    save_file(clean, path, metadata={"format": "pt"})
    log.info("wrote %d tensors to %s", len(clean), path)
    return path
