"""Manifest reader: validation messages with line numbers, packing, partial last batch."""

from __future__ import annotations

import json

import pytest

from dip.data.manifest import manifest_batches, read_manifest
from dip.errors import BadInput
from test_data_models import get_model

GOOD = [
    {"text_tokens": 812, "images": [{"width": 1024, "height": 768}]},
    {"text_tokens": 20, "images": 3},
    {"text_tokens": 7000},
]
VIDEO = {"text_tokens": 40, "videos": [{"seconds": 6.5, "fps": 24, "width": 1280, "height": 720}]}


def write(tmp_path, lines: list, name: str = "m.jsonl") -> str:
    path = tmp_path / name
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return str(path)


def test_reads_and_packs_a_vlm_manifest(tmp_path):
    path = write(tmp_path, GOOD + [""])  # blank lines are skipped
    samples = read_manifest(path)
    assert [(s.text_tokens, s.image_count) for s in samples] == [(812, 1), (20, 3), (7000, 0)]
    (batch,) = manifest_batches(get_model("VLM-S"), path)
    assert sum(mb.text_tokens for mb in batch.microbatches) == 7832
    assert sum(mb.images for mb in batch.microbatches) == 4


def test_last_partial_batch_is_kept(tmp_path):
    path = write(tmp_path, [{"text_tokens": 8192}] * 5)
    batches = manifest_batches(get_model("VLM-S"), path, microbatches=2)
    assert [len(b) for b in batches] == [2, 2, 1]


def test_t2v_manifest(tmp_path):
    long_portrait = {"text_tokens": 9, "videos": [{"seconds": 30, "width": 720, "height": 1280}]}
    path = write(tmp_path, [VIDEO] * 3 + [long_portrait])
    (batch,) = manifest_batches(get_model("T2V-S"), path)
    assert sum(mb.clips for mb in batch.microbatches) == 4
    assert max(s for mb in batch.microbatches for s in mb.clip_seconds) == 16.0


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"text_tokens": "12"}, "line 2: text_tokens must be an integer"),
        ({"text_tokens": 1.5}, "line 2: text_tokens must be an integer"),
        ({"text_tokens": -4}, "line 2: text_tokens must be >= 0"),
        ({"text_tokens": True}, "line 2: text_tokens must be an integer"),
        ({"images": []}, "line 2: text_tokens is missing"),
        ({"text_tokens": 3, "audio": 1}, "line 2: unknown key 'audio'"),
        ({"text_tokens": 3, "images": [{"width": 0, "height": 5}]}, r"line 2: images\[0\].width must be >= 1"),
        ({"text_tokens": 3, "images": [{"width": 4}]}, r"line 2: images\[0\].height is missing"),
        (
            {"text_tokens": 3, "images": [{"width": 4, "height": 4, "dpi": 3}]},
            r"line 2: unknown key 'dpi' in images\[0\]",
        ),
        ({"text_tokens": 3, "images": "two"}, "line 2: images must be a list"),
        ({"text_tokens": 3, "images": -1}, "line 2: images must be >= 0"),
        (
            {"text_tokens": 3, "videos": [{"seconds": -1, "width": 4, "height": 4}]},
            r"line 2: videos\[0\].seconds must be > 0",
        ),
        ({"text_tokens": 3, "videos": {"seconds": 1}}, "line 2: videos must be a list"),
        ([1, 2], "line 2: expected a JSON object"),
    ],
)
def test_malformed_lines_name_line_and_field(tmp_path, bad, message):
    path = write(tmp_path, [GOOD[0], bad])
    with pytest.raises(BadInput, match=message):
        read_manifest(path)


def test_bad_json_empty_and_missing_files(tmp_path):
    with pytest.raises(BadInput, match="line 3: not valid JSON: "):
        read_manifest(write(tmp_path, [GOOD[0], GOOD[1], '{"text_tokens": 3,']))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    with pytest.raises(BadInput, match=f"manifest {empty} is empty"):
        read_manifest(str(empty))
    with pytest.raises(BadInput, match="not found"):
        read_manifest(str(tmp_path / "missing.jsonl"))
    with pytest.raises(BadInput, match="not a file"):
        read_manifest(str(tmp_path))


def test_media_the_model_cannot_consume(tmp_path):
    with pytest.raises(BadInput, match="line 2: images given but model T2V-S"):
        manifest_batches(get_model("T2V-S"), write(tmp_path, [VIDEO, GOOD[0]]))
    with pytest.raises(BadInput, match="line 1: model T2V-S is text-to-video"):
        manifest_batches(get_model("T2V-S"), write(tmp_path, [{"text_tokens": 5}]))
    with pytest.raises(BadInput, match="line 1: videos given but model VLM-S"):
        manifest_batches(get_model("VLM-S"), write(tmp_path, [VIDEO]))


def test_parquet_manifest(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = str(tmp_path / "m.parquet")
    pq.write_table(pa.Table.from_pylist([{"text_tokens": 100}, {"text_tokens": 5}]), path)
    assert [s.text_tokens for s in read_manifest(path)] == [100, 5]
