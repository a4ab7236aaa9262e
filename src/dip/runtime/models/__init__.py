"""Real torch models built from specs, cut into pipeline chunks, plus a single-process reference.

* :func:`build_chunk` -> :class:`ChunkModule` (layers ``[a, b)`` of one module, canonical parameter names)
* :func:`make_unit_data` -> :class:`UnitData` (deterministic local inputs of one unit)
* :class:`ReferenceModel` / :func:`reference_step` (token-weighted loss and gradients of a global batch)
* :class:`SpecModel` (the :class:`ModelProvider` the runtime consumes) and :mod:`.edges` (channels)
"""

from dip.runtime.models.chunk import MEMORY_STRATEGIES, ChunkModule, build_chunk
from dip.runtime.models.data import UnitData, make_unit_data
from dip.runtime.models.provider import ModelProvider, SpecModel, as_provider
from dip.runtime.models.reference import ReferenceModel, reference_step

__all__ = [
    "MEMORY_STRATEGIES",
    "ChunkModule",
    "ModelProvider",
    "ReferenceModel",
    "SpecModel",
    "UnitData",
    "as_provider",
    "build_chunk",
    "make_unit_data",
    "reference_step",
]
