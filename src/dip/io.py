"""Small file and output helpers shared by every layer: one JSON object on stdout, output paths
checked before any work, and files written atomically (nothing half-written is ever left behind)."""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from typing import Any

from dip.errors import BadInput

__all__ = ["check_writable", "emit", "json_safe", "write_atomic"]


def emit(obj: dict[str, Any], as_json: bool, text: str | None = None) -> None:
    """Print exactly one JSON object (``--json``) or a human-readable text."""
    if as_json:
        sys.stdout.write(json.dumps(json_safe(obj)) + "\n")
    else:
        sys.stdout.write((text if text is not None else json.dumps(json_safe(obj), indent=2)) + "\n")


def json_safe(x: Any) -> Any:
    """``x`` with non-finite floats as ``None``, numpy scalars as Python numbers and keys as strings."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if hasattr(x, "item") and callable(x.item):  # numpy scalars
        return json_safe(x.item())
    return x


def check_writable(path: str, field: str = "output file") -> str:
    """Fail early (before any work) when ``path`` cannot be written: a folder, a missing or read-only
    folder, or a place where no file can be created (tried with a temporary file, then removed)."""
    if os.path.isdir(path):
        raise BadInput(f"{field} {path!r} is a folder; give a file name")
    d = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(d):
        raise BadInput(f"{field} {path!r} cannot be written: folder {d!r} does not exist")
    try:
        fd, probe = tempfile.mkstemp(dir=d, prefix=".dip-probe-")
    except OSError as exc:
        raise BadInput(f"{field} {path!r} cannot be written: {exc.strerror}") from None
    os.close(fd)
    os.unlink(probe)
    return path


def write_atomic(path: str, data: bytes | str) -> None:
    """Write ``data`` to ``path`` via a temporary file so nothing half-written is left behind."""
    mode = "wb" if isinstance(data, bytes) else "w"
    d = os.path.dirname(os.path.abspath(path)) or "."
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".dip-tmp-")
    try:
        with os.fdopen(fd, mode) as f:
            f.write(data)
        os.chmod(tmp, _file_mode(path))  # mkstemp makes 0600; give the usual mode of a new (or the old) file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _file_mode(path: str) -> int:
    """The mode of ``path`` if it exists, else what ``open()`` would give a new file under the umask."""
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask
