"""Deterministic seeds and parameter initialisation.

Every part of a module (``pre``, ``layers.<i>``, ``post``) is initialised from its own
``torch.Generator`` seeded by ``(seed, module name, part)``, so a chunk built on any rank holds exactly
the same values as the same layers of the whole model. Values are drawn in float32 and then cast, so
float32 and float64 builds start from the same numbers.
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import nn

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float32"`` -> ``torch.float32`` (torch dtypes pass through)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; valid dtypes: {', '.join(DTYPES)}") from None


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``."""
    for name, d in DTYPES.items():
        if d == dtype:
            return name
    raise ValueError(f"unsupported dtype {dtype}")


def stable_seed(*parts: object) -> int:
    """A 63-bit seed that depends only on ``parts`` (stable across processes, unlike ``hash``)."""
    text = "/".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") & ((1 << 63) - 1)


def generator(*parts: object) -> torch.Generator:
    """A CPU generator seeded by :func:`stable_seed` of ``parts``."""
    g = torch.Generator()
    g.manual_seed(stable_seed(*parts))
    return g


def _normal(shape: torch.Size, std: float, g: torch.Generator) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=g, dtype=torch.float32) * std


@torch.no_grad()
def init_part(part: nn.Module, g: torch.Generator) -> None:
    """Initialise every parameter of ``part`` in registration order from ``g``.

    Linear weights ~ N(0, 1/fan_in), biases and free parameters (tables, positions) ~ N(0, 0.02^2),
    embeddings ~ N(0, 1), norm weights 1 and norm biases 0.
    """
    for _mod_name, mod in part.named_modules():
        for name, p in mod.named_parameters(recurse=False):
            if isinstance(mod, nn.Linear) and name == "weight":
                value = _normal(p.shape, 1.0 / math.sqrt(p.shape[1]), g)
            elif isinstance(mod, nn.Embedding):
                value = _normal(p.shape, 1.0, g)
            elif getattr(mod, "is_norm", False) or isinstance(mod, nn.LayerNorm):
                value = torch.ones(p.shape) if name == "weight" else torch.zeros(p.shape)
            else:
                value = _normal(p.shape, 0.02, g)
            p.copy_(value.to(p.dtype))
