"""Readers of the dataset formats people have (rows only; no pixels are decoded here).

* LLaVA-style JSONL (:func:`read_llava_jsonl`)::

      {"id": "0001", "image": "images/a.png" | ["a.png", "b.jpg"],
       "conversations": [{"from": "human", "value": "<image>\\nWhat is this?"}, {"from": "gpt", "value": "A cat."}]}

  image paths are relative to the JSONL file; ``human``/``user``, ``gpt``/``assistant`` and ``system``
  roles; one ``<image>`` placeholder per image (none at all: the images go before the first user
  turn, as LLaVA does);
* WebDataset tar shards (:func:`read_wds`): sample ``KEY`` is ``KEY.json`` (the same object without
  ``image``) plus its images ``KEY.0.png``, ``KEY.1.jpg``, ... (or one ``KEY.png``);
* text-to-video JSONL (:func:`read_t2v_jsonl`): ``{"id", "caption", "latents": "latents/0001.safetensors"}``
  with the VAE latents ``[C, F, H, W]`` under the tensor name ``latents``.

Readers yield rows or :class:`~dip.data.records.BadSample` (never raise for one bad row).
:func:`image_size` and :func:`latent_shape` read file headers only.
"""

from __future__ import annotations

import io
import json
import os
import struct
import tarfile
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

from dip.data.records import BadSample, ImageRef, T2vRow, Turn, VlmRow
from dip.errors import BadInput

__all__ = [
    "IMAGE_EXTENSIONS",
    "PLACEHOLDER",
    "detect_format",
    "image_size",
    "latent_shape",
    "read_llava_jsonl",
    "read_rows",
    "read_t2v_jsonl",
    "read_wds",
    "tar_member",
]

PLACEHOLDER = "<image>"
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "bmp")
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
LATENTS_KEY = "latents"


def _json_lines(path: str) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed object or BadSample)`` for every non-blank line."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as exc:
                yield n, BadSample(path, n, f"not valid JSON ({exc.msg})")


def _turns(obj: dict, source: str, line: int, n_images: int) -> tuple[Turn, ...]:
    conv = obj.get("conversations")
    if not isinstance(conv, list) or not conv:
        raise BadSample(source, line, "'conversations' must be a non-empty list")
    turns = []
    for k, t in enumerate(conv):
        if not isinstance(t, dict) or not isinstance(t.get("value"), str) or t.get("from") not in ROLES:
            raise BadSample(
                source, line, f"conversations[{k}] must be {{'from': one of {', '.join(ROLES)}, 'value': text}}"
            )
        turns.append(Turn(ROLES[t["from"]], t["value"]))
    if not any(t.role == "assistant" for t in turns):
        raise BadSample(source, line, "no assistant ('gpt') turn: nothing to learn")
    placeholders = sum(t.text.count(PLACEHOLDER) for t in turns)
    if placeholders == 0 and n_images:
        first = next((k for k, t in enumerate(turns) if t.role == "user"), None)
        if first is None:
            raise BadSample(source, line, "images but no user ('human') turn to place them in")
        turns[first] = Turn("user", (PLACEHOLDER + "\n") * n_images + turns[first].text)
    elif placeholders != n_images:
        raise BadSample(source, line, f"{placeholders} {PLACEHOLDER} placeholders for {n_images} images")
    return tuple(turns)


def _image_list(obj: dict, source: str, line: int) -> list[str]:
    img = obj.get("image", obj.get("images"))
    if img is None:
        return []
    if isinstance(img, str):
        return [img]
    if isinstance(img, list) and all(isinstance(i, str) for i in img):
        return list(img)
    raise BadSample(source, line, "'image' must be a path or a list of paths")


def _row_id(obj: dict, line: int) -> str:
    return str(obj.get("id", line))


def read_llava_jsonl(path: str) -> Iterator[VlmRow | BadSample]:
    """Rows of a LLaVA-style JSONL file (image paths resolved against the file's folder)."""
    base = os.path.dirname(os.path.abspath(path))
    for n, obj in _json_lines(path):
        if isinstance(obj, BadSample):
            yield obj
            continue
        try:
            if not isinstance(obj, dict):
                raise BadSample(path, n, "a row must be a JSON object")
            images = _image_list(obj, path, n)
            turns = _turns(obj, path, n, len(images))
            refs = tuple(ImageRef(os.path.normpath(os.path.join(base, p))) for p in images)
            yield VlmRow(path, n, _row_id(obj, n), refs, turns)
        except BadSample as bad:
            yield bad


def _shards(path: str) -> list[str]:
    if os.path.isdir(path):
        shards = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".tar"))
        if not shards:
            raise BadInput(f"data folder {path!r} holds no .tar shard")
        return shards
    return [path]


def read_wds(path: str) -> Iterator[VlmRow | BadSample]:
    """Rows of WebDataset tar shards (``path``: one ``.tar`` or a folder of them), in shard order.

    A row's ``line`` is its 1-based position in its shard; images are referenced as tar members."""
    # webdataset (which imports torch) only when shards are read
    from webdataset.tariterators import group_by_keys, tar_file_expander, url_opener

    for shard in _shards(path):
        members = url_opener([{"url": shard}])
        for n, sample in enumerate(group_by_keys(tar_file_expander(members)), 1):
            key = sample["__key__"]
            try:
                raw = sample.get("json")
                if raw is None:
                    raise BadSample(shard, n, f"sample {key!r} has no {key}.json")
                try:
                    obj = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    raise BadSample(shard, n, f"{key}.json is not valid JSON ({exc})") from None
                if not isinstance(obj, dict):
                    raise BadSample(shard, n, f"{key}.json must be a JSON object")
                names = sorted(
                    (k for k in sample if k.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS),
                    key=lambda k: (int(k.split(".")[0]) if k.split(".")[0].isdigit() else -1, k),
                )
                refs = tuple(ImageRef(shard, f"{key}.{k}") for k in names)
                yield VlmRow(shard, n, str(obj.get("id", key)), refs, _turns(obj, shard, n, len(refs)))
            except BadSample as bad:
                yield bad


def read_t2v_jsonl(path: str) -> Iterator[T2vRow | BadSample]:
    """Rows of a caption + latents JSONL file (latent paths resolved against the file's folder)."""
    base = os.path.dirname(os.path.abspath(path))
    for n, obj in _json_lines(path):
        if isinstance(obj, BadSample):
            yield obj
            continue
        caption, lat = (obj.get("caption"), obj.get("latents")) if isinstance(obj, dict) else (None, None)
        if not isinstance(caption, str) or not caption.strip() or not isinstance(lat, str):
            yield BadSample(path, n, "a row needs 'caption' (non-empty text) and 'latents' (a .safetensors path)")
            continue
        yield T2vRow(path, n, _row_id(obj, n), caption, os.path.normpath(os.path.join(base, lat)))


def detect_format(path: str) -> str:
    """``llava``, ``wds`` or ``t2v`` from the path (a folder or ``.tar``: shards) and the first row."""
    if not os.path.exists(path):
        raise BadInput(f"data {path!r} does not exist")
    if os.path.isdir(path) or path.endswith(".tar"):
        return "wds"
    for _, obj in _json_lines(path):
        if isinstance(obj, dict) and "caption" in obj and "latents" in obj:
            return "t2v"
        if isinstance(obj, dict) and "conversations" in obj:
            return "llava"
    raise BadInput(
        f"data {path!r}: the first rows are neither LLaVA conversations ('conversations') "
        f"nor T2V captions ('caption' + 'latents')"
    )


def read_rows(path: str, fmt: str | None = None) -> Iterator[Any]:
    """Rows of ``path`` in format ``fmt`` (detected when ``None``)."""
    fmt = fmt or detect_format(path)
    readers = {"llava": read_llava_jsonl, "wds": read_wds, "t2v": read_t2v_jsonl}
    if fmt not in readers:
        raise BadInput(f"unknown data format {fmt!r}; valid formats: {', '.join(readers)}")
    return readers[fmt](path)


@lru_cache(maxsize=8)
def _tar(path: str) -> tarfile.TarFile:
    return tarfile.open(path)


def tar_member(path: str, member: str) -> bytes:
    """The bytes of ``member`` in the tar file ``path``."""
    try:
        f = _tar(path).extractfile(member)
    except KeyError:
        f = None
    if f is None:
        raise FileNotFoundError(f"{path} has no member {member}")
    return f.read()


def open_image_bytes(ref: ImageRef) -> io.BytesIO:
    """The encoded bytes of an image (file or tar member)."""
    if ref.member:
        return io.BytesIO(tar_member(ref.path, ref.member))
    with open(ref.path, "rb") as f:
        return io.BytesIO(f.read())


def image_size(ref: ImageRef, source: str, line: int) -> tuple[int, int]:
    """``(width, height)`` from the image header (pixels are not decoded); a missing or unreadable image
    raises :class:`BadSample` of kind ``missing_image`` / ``corrupt_image``."""
    from PIL import Image, UnidentifiedImageError  # Pillow: header reads only

    try:
        data = open_image_bytes(ref)
    except (FileNotFoundError, IsADirectoryError, tarfile.TarError, OSError) as exc:
        raise BadSample(
            source, line, f"image {ref.name} cannot be read ({type(exc).__name__})", "missing_image"
        ) from None
    try:
        with Image.open(data) as img:
            w, h = img.size
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise BadSample(source, line, f"image {ref.name} is not a readable image ({exc})", "corrupt_image") from None
    if w <= 0 or h <= 0:
        raise BadSample(source, line, f"image {ref.name} has size {w}x{h}", "corrupt_image")
    return w, h


def latent_shape(path: str, source: str, line: int, key: str = LATENTS_KEY) -> tuple[int, ...]:
    """Shape of tensor ``key`` in a ``.safetensors`` file, from its JSON header (no tensor data read)."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise BadSample(source, line, f"latents {path} do not exist", "missing_latents") from None
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadSample(source, line, f"latents {path} are not a safetensors file ({exc})", "corrupt_latents") from None
    entry = header.get(key)
    if not isinstance(entry, dict) or "shape" not in entry:
        raise BadSample(source, line, f"latents {path} hold no tensor {key!r}", "corrupt_latents")
    return tuple(int(s) for s in entry["shape"])
