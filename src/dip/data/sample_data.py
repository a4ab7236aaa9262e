"""Small datasets in the real formats (``dip data sample``): for tests, the demo and newcomers.

* VLM (:func:`write_vlm_sample`): a LLaVA-style ``data.jsonl`` plus PNG and JPEG images of varied,
  non-square sizes (``56..448`` px sides), 0 to 4 images per sample (the first sample has none, the
  second two), multi-turn conversations with ``<image>`` placeholders; with ``wds=True`` the same
  samples also as a WebDataset shard ``shards/shard-000000.tar``.
* T2V (:func:`write_t2v_sample`): ``captions.jsonl`` plus one ``.safetensors`` file of VAE latents
  ``[C, F, H, W]`` per caption (varied frame counts and sizes, multiples of the DiT's 2x2 patch).

Everything follows from the seed: the same seed writes the same media and rows. A row names its media
by absolute path (the readers accept absolute paths and paths relative to the JSONL file), so rows can
be copied into other files, e.g. a data mix or a test set with a broken sample, wherever they live.
"""

from __future__ import annotations

import io
import json
import os
import random
import tarfile
from dataclasses import dataclass

from dip.errors import BadInput

__all__ = ["SampleSummary", "write_t2v_sample", "write_vlm_sample"]

WORDS = (
    "red blue green yellow small large round square cat dog bird tree house car boat cloud sun river "
    "mountain street table chair window door flower apple book lamp"
).split()
QUESTIONS = (
    "What is in the picture?",
    "Describe the image.",
    "How many objects are there?",
    "What colour is the largest shape?",
    "Where is the {w} in this image?",
    "Is there a {w}?",
)
MIN_SIDE, MAX_SIDE = 56, 448
MAX_IMAGES = 4


@dataclass(frozen=True)
class SampleSummary:
    """What was written: the data file, the number of samples and of media files."""

    data_file: str
    samples: int
    media: int
    extra: tuple[str, ...] = ()


def _sentence(rng: random.Random, n: int) -> str:
    words = [rng.choice(WORDS) for _ in range(n)]
    return " ".join(words).capitalize() + "."


def _image_bytes(rng: random.Random, width: int, height: int, fmt: str) -> bytes:
    from PIL import Image, ImageDraw  # Pillow writes the images

    img = Image.new("RGB", (width, height), tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(1, 5)):
        x0, y0 = rng.randrange(width), rng.randrange(height)
        x1, y1 = min(width, x0 + rng.randint(4, width)), min(height, y0 + rng.randint(4, height))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x0, y0, x1, y1), fill=tuple(rng.randrange(256) for _ in range(3)))
    out = io.BytesIO()
    img.save(out, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return out.getvalue()


def _image_count(rng: random.Random, i: int) -> int:
    if i == 0:
        return 0
    if i == 1:
        return 2
    return rng.choice((0, 1, 1, 1, 2, 2, 3, 4))


def _conversation(rng: random.Random, n_images: int) -> list[dict]:
    turns = rng.randint(1, 3)
    per_turn = [0] * turns
    for _ in range(n_images):  # images in the first turn, some later ones in a later turn
        per_turn[0 if rng.random() < 0.7 else rng.randrange(turns)] += 1
    conv = []
    for t in range(turns):
        question = rng.choice(QUESTIONS).format(w=rng.choice(WORDS))
        conv.append({"from": "human", "value": "<image>\n" * per_turn[t] + question})
        conv.append({"from": "gpt", "value": _sentence(rng, rng.randint(3, 14))})
    return conv


def _check(samples: int, seed: int) -> None:
    if samples < 1:
        raise BadInput(f"samples must be an integer >= 1, got {samples}")
    if seed < 0:
        raise BadInput(f"seed must be an integer >= 0, got {seed}")


def write_vlm_sample(out: str, *, samples: int, seed: int, wds: bool = False) -> SampleSummary:
    """Write a LLaVA-style VLM dataset to folder ``out`` (see the module docstring).

    Args:
        out: the folder to create (or fill).
        samples: number of conversations.
        seed: random seed; the same seed writes the same files.
        wds: also write the samples as a WebDataset tar shard.

    Returns:
        What was written.
    """
    _check(samples, seed)
    rng = random.Random(seed)
    root = os.path.abspath(out)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    rows, members, media = [], [], 0
    for i in range(samples):
        key = f"{i:06d}"
        images = []
        for k in range(_image_count(rng, i)):
            w, h = rng.randint(MIN_SIDE, MAX_SIDE), rng.randint(MIN_SIDE, MAX_SIDE)
            fmt, ext = ("PNG", "png") if rng.random() < 0.6 else ("JPEG", "jpg")
            data = _image_bytes(rng, w, h, fmt)
            path = os.path.join(root, "images", f"{key}_{k}.{ext}")
            with open(path, "wb") as f:
                f.write(data)
            images.append(path)
            members.append((f"{key}.{k}.{ext}", data))
            media += 1
        row = {"id": key, "conversations": _conversation(rng, len(images))}
        if images:
            row["image"] = images[0] if len(images) == 1 else images
        rows.append(row)
        members.append((f"{key}.json", json.dumps({"id": key, "conversations": row["conversations"]}).encode()))
    data_file = os.path.join(out, "data.jsonl")
    with open(data_file, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    extra: tuple[str, ...] = ()
    if wds:
        extra = (_write_shard(os.path.join(out, "shards"), members),)
    return SampleSummary(data_file, samples, media, extra)


def _write_shard(folder: str, members: list[tuple[str, bytes]]) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "shard-000000.tar")
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return path


def write_t2v_sample(out: str, *, samples: int, seed: int, channels: int = 16) -> SampleSummary:
    """Write a T2V dataset (captions + VAE latents) to folder ``out``.

    Args:
        out: the folder to create (or fill).
        samples: number of captions (one clip each).
        seed: random seed; the same seed writes the same files.
        channels: latent channels ``C`` of the VAE (16 for Wan).

    Returns:
        What was written.
    """
    _check(samples, seed)
    if channels < 1:
        raise BadInput(f"channels must be an integer >= 1, got {channels}")
    import numpy as np  # latents are written with safetensors' numpy API
    from safetensors.numpy import save_file  # (see the line above)

    rng = random.Random(seed)
    root = os.path.abspath(out)
    os.makedirs(os.path.join(root, "latents"), exist_ok=True)
    rows = []
    for i in range(samples):
        key = f"{i:06d}"
        shape = (channels, rng.choice((1, 2, 3)), rng.choice((4, 6, 8)), rng.choice((4, 6, 8)))
        values = np.random.default_rng(rng.randrange(1 << 31)).standard_normal(shape).astype(np.float32)
        path = os.path.join(root, "latents", f"{key}.safetensors")
        save_file({"latents": values}, path)
        rows.append({"id": key, "caption": _sentence(rng, rng.randint(4, 16)), "latents": path})
    data_file = os.path.join(out, "captions.jsonl")
    with open(data_file, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return SampleSummary(data_file, samples, samples)
