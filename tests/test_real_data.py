"""Real-data formats: the sample writer, the readers, the metadata pass and its cache, bad samples
(skipped and counted, or an error naming file and line under strict), labels on assistant turns."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from dip.data.formats import read_rows
from dip.data.metadata import CACHE_DIR, scan
from dip.data.packing import pack_documents
from dip.data.records import VlmRow
from dip.data.sample_data import write_t2v_sample, write_vlm_sample
from dip.errors import BadInput
from hf_fixtures import make_t2v, make_vlm

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def vlm(root):
    from dip.integrations.loader import load_model

    ckpt, data = make_vlm(root)
    return load_model(ckpt, dtype="float64"), data


def test_sample_writer_is_deterministic_and_varied(tmp_path):
    a = write_vlm_sample(str(tmp_path / "a"), samples=20, seed=3)
    b = write_vlm_sample(str(tmp_path / "b"), samples=20, seed=3)
    rows = [json.loads(line) for line in open(a.data_file)]
    # the same rows, each naming its images by absolute path in its own folder
    assert open(a.data_file).read().replace(str(tmp_path / "a"), "OUT") == open(b.data_file).read().replace(
        str(tmp_path / "b"), "OUT"
    )
    paths = [p for r in rows for p in ([r["image"]] if isinstance(r.get("image"), str) else r.get("image", []))]
    assert paths and all(os.path.isabs(p) and os.path.isfile(p) for p in paths)
    for p in paths:
        with open(p, "rb") as fa, open(p.replace(str(tmp_path / "a"), str(tmp_path / "b")), "rb") as fb:
            assert fa.read() == fb.read()
    counts = [len(r["image"]) if isinstance(r.get("image"), list) else int("image" in r) for r in rows]
    assert min(counts) == 0 and max(counts) >= 2
    sizes = {
        read_size(os.path.join(str(tmp_path / "a"), p))
        for r in rows
        for p in ([r["image"]] if isinstance(r.get("image"), str) else r.get("image", []))
    }
    assert len(sizes) > 5 and any(w != h for w, h in sizes)
    assert all(56 <= s <= 448 for wh in sizes for s in wh)


def read_size(path):
    from PIL import Image

    with Image.open(path) as img:
        return img.size


def test_readers_llava_and_wds_agree(root):
    _, data = make_vlm(root)
    jsonl = [r for r in read_rows(data) if isinstance(r, VlmRow)]
    shard = os.path.join(os.path.dirname(data), "shards", "shard-000000.tar")
    wds = [r for r in read_rows(shard) if isinstance(r, VlmRow)]
    assert [r.turns for r in jsonl] == [r.turns for r in wds]
    assert [len(r.images) for r in jsonl] == [len(r.images) for r in wds]
    assert all(t.text.count("<image>") for r in jsonl for t in r.turns[:1] if r.images)


def test_t2v_rows_and_latent_shapes_from_headers(tmp_path):
    got = write_t2v_sample(str(tmp_path), samples=4, seed=1)
    rows = list(read_rows(got.data_file))
    from dip.data.formats import latent_shape

    shapes = [latent_shape(r.latents, r.source, r.line) for r in rows]
    assert all(len(s) == 4 and s[0] == 16 for s in shapes) and len(set(shapes)) > 1


def test_metadata_is_cached_and_keyed_by_content(vlm, root):
    model, data = vlm
    proc = model.processor()
    first = scan(data, proc)
    cache = os.path.join(os.path.dirname(data), CACHE_DIR)
    assert os.listdir(cache)
    calls = []

    class Counting:
        identity = proc.identity

        def measure_vlm(self, row, sizes):
            calls.append(row.line)
            return proc.measure_vlm(row, sizes)

    assert scan(data, Counting()) == first and not calls  # read from the cache
    copy = os.path.join(os.path.dirname(data), "copy.jsonl")
    with open(copy, "w") as f:
        f.writelines(list(open(data))[:3])
    scan(copy, Counting())
    assert len(calls) == 3  # other content: measured again


def test_variable_resolution_reaches_the_microbatches(vlm):
    model, data = vlm
    ds = model.open_data(data)
    metas = [m for m in ds.metas if m.image_tokens]
    assert len({t for m in metas for t in m.image_tokens}) > 2  # tokens per image follow the size
    for m in metas:
        for (_w, _h), (t, gh, gw), tok in zip(m.image_sizes, m.image_grids, m.image_tokens):
            assert tok == t * gh * gw // 4
    mbs = pack_documents(ds.documents(), context_length=600, max_images=6)
    assert sum(len(mb.sample_ids) for mb in mbs) == len(ds)
    assert all(mb.images <= 6 and mb.text_tokens + sum(mb.image_tokens) <= 600 for mb in mbs)
    from dip.data.meta import work_for

    vit = model.spec.module("vision")
    assert work_for(model.spec, vit, mbs[1]).seq_lens == mbs[1].image_patches


def test_labels_cover_only_assistant_turns(vlm):
    model, data = vlm
    ds = model.open_data(data)
    tok = ds.processor.tokenizer
    ids, labels = ds.text(1)
    text = tok.decode([t for t, lab in zip(ids.tolist(), labels.tolist()) if lab != -100])
    row = ds.rows[1]
    for turn in row.turns:
        if turn.role == "assistant":
            assert turn.text in text
        else:
            assert turn.text.replace("<image>\n", "") not in text
    assert text.count("<|im_end|>") == sum(t.role == "assistant" for t in row.turns)
    assert (ids == model.image_token_id).sum() == sum(ds.meta(1).image_tokens)


def _broken(root, data) -> str:
    path = os.path.join(os.path.dirname(data), "broken.jsonl")
    rows = list(open(data))[:4]
    bad_image = {
        "id": "missing",
        "image": "no-such-image.png",
        "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "No."}],
    }
    corrupt = os.path.join(root, "corrupt.png")
    with open(corrupt, "wb") as f:
        f.write(b"not a png at all")
    bad_pixels = dict(bad_image, id="corrupt", image=corrupt)
    long = {"id": "long", "conversations": [{"from": "human", "value": "cat " * 5000}, {"from": "gpt", "value": "ok"}]}
    with open(path, "w") as f:
        f.writelines(rows[:2])
        f.write(json.dumps(bad_image) + "\n")
        f.write("{not json\n")
        f.write(json.dumps(bad_pixels) + "\n")
        f.write(json.dumps(long) + "\n")
        f.write(
            json.dumps(
                {
                    "id": "x",
                    "conversations": [{"from": "human", "value": "<image> <image>"}, {"from": "gpt", "value": "two"}],
                    "image": "a.png",
                }
            )
            + "\n"
        )
        f.writelines(rows[2:])
    return path


def test_bad_samples_are_skipped_and_counted(vlm, root):
    model, data = vlm
    ds = model.open_data(_broken(root, data))
    assert len(ds) == 4
    assert ds.skipped.total == 5
    assert ds.skipped.by_kind == {"missing_image": 1, "corrupt_image": 1, "too_long": 1, "malformed": 2}


def test_strict_mode_names_file_and_line(vlm, root):
    model, data = vlm
    path = _broken(root, data)
    with pytest.raises(BadInput, match=r"broken\.jsonl:3: image .*no-such-image\.png"):
        model.open_data(path, strict=True)


def test_cli_sample_and_strict_exit_code(tmp_path):
    dip = [sys.executable, "-m", "dip.cli.main"]
    out = subprocess.run(
        dip
        + ["data", "sample", "--kind", "t2v", "--out", str(tmp_path / "t"), "--samples", "3", "--seed", "0", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["samples"] == 3
    bad = subprocess.run(
        dip + ["data", "sample", "--kind", "t2v", "--out", str(tmp_path / "u"), "--samples", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "samples must be" in bad.stderr and "Traceback" not in bad.stderr


def test_t2v_dataset(root):
    from dip.integrations.loader import load_model

    ckpt, data = make_t2v(root)
    model = load_model(ckpt)
    ds = model.open_data(data)
    m = ds.meta(0)
    c, f, h, w = m.latent_shape
    assert m.clip_tokens == f * (h // 2) * (w // 2) and m.loss_tokens == c * f * h * w
    assert ds.text(0).tolist()[-1] == ds.processor.tokenizer.eos_token_id
    assert torch.equal(ds.latents(0), ds.latents(0))
