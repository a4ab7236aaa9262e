"""``--save-hf DIR``: the trained weights written back as a checkpoint folder, atomically.

The provider's saver (``provider.save_checkpoint(folder, params)``, e.g. a transformers or diffusers
checkpoint of :mod:`dip.integrations`) writes into a temporary folder next to ``DIR``, which is then
renamed to ``DIR``: a run that fails leaves nothing half-written.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

from dip.errors import BadInput

__all__ = ["check_save_target", "save_trained"]

log = logging.getLogger(__name__)


def check_save_target(provider: Any, out: str) -> str:
    """Fail early when ``out`` cannot receive ``provider``'s checkpoint: the model has no checkpoint
    format, ``out`` is a file or a non-empty folder, or its parent folder cannot be written."""
    if not callable(getattr(provider, "save_checkpoint", None)):
        raise BadInput(
            f"save-hf: model {provider.spec.name} has no checkpoint format (give a transformers or diffusers "
            "checkpoint folder as --model)"
        )
    if os.path.isdir(out) and os.listdir(out):
        raise BadInput(f"save-hf: {out!r} exists and is not empty; choose a new folder")
    if os.path.exists(out) and not os.path.isdir(out):
        raise BadInput(f"save-hf: {out!r} exists and is a file; choose a new folder")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise BadInput(f"save-hf: folder {parent!r} is missing or read-only")
    return out


def save_trained(provider: Any, out: str, params: Mapping[str, Any]) -> str:
    """Write ``params`` (canonical names, every chunk's) with ``provider.save_checkpoint`` into ``out``.

    Args:
        provider: the model provider that offers ``save_checkpoint(folder, params)``.
        out: the checkpoint folder to create (absent or empty).
        params: the trained parameters by canonical name.

    Returns:
        ``out``.
    """
    check_save_target(provider, out)
    parent = os.path.dirname(os.path.abspath(out))
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(os.path.abspath(out))}.tmp-")
    try:
        provider.save_checkpoint(tmp, params)
        _usual_modes(tmp)
        if os.path.isdir(out):
            os.rmdir(out)  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote the trained checkpoint to %s", out)
    return out


def _usual_modes(folder: str) -> None:
    """The modes a new folder and new files get under the umask (``mkdtemp`` and some writers make
    them private)."""
    mask = os.umask(0)
    os.umask(mask)
    for here, _, files in os.walk(folder):
        os.chmod(here, 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(here, name), 0o666 & ~mask)
