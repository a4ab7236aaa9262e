"""``dip workload`` end to end through the CLI entry point."""

from __future__ import annotations

import json

import pytest

from dip.cli.main import build_parser, main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["workload", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_json_output_structure(capsys):
    rc, out, _ = run(capsys, "--model", "VLM-S", "--batches", "2", "--microbatches", "8", "--json")
    assert rc == 0
    result = json.loads(out)
    assert result["model"] == "VLM-S" and result["microbatches_per_batch"] == 8
    assert [b["index"] for b in result["batches"]] == [0, 1]
    row = result["batches"][0]["microbatches"][0]
    assert set(row) == {"text_tokens", "images", "image_tokens", "clips", "video_seconds", "flops"}
    assert row["image_tokens"] == 169 * row["images"]
    summary = result["summary"]
    assert summary["microbatches"] == 16 and summary["flops_ratio"] >= 1
    assert summary["images"]["min"] <= summary["images"]["mean"] <= summary["images"]["max"]


def test_text_output_is_a_short_summary(capsys):
    rc, out, _ = run(capsys, "--model", "T2V-S", "--microbatches", "16")
    assert rc == 0 and "heaviest / lightest" in out and len(out.splitlines()) < 20


@pytest.mark.parametrize("value", ["0", "-3"])
def test_batches_must_be_positive(capsys, value):
    rc, _, err = run(capsys, "--model", "VLM-S", "--batches", value)
    assert rc == 2 and "batches" in err and "Traceback" not in err


def test_dynamic_and_manifest(capsys, tmp_path):
    rc, out, _ = run(capsys, "--model", "tiny-vlm", "--dynamic", "--batches", "6", "--microbatches", "4", "--json")
    result = json.loads(out)
    assert rc == 0 and len(result["batches"]) == 6 and result["batches"][4]["image_bounds"] == [3, 5]
    path = tmp_path / "m.jsonl"
    path.write_text('{"text_tokens": 9000, "images": 2}\n')
    rc, out, _ = run(capsys, "--model", "VLM-S", "--manifest", str(path), "--json")
    assert rc == 0 and json.loads(out)["summary"]["microbatches"] == 2
    path.write_text('{"text_tokens": 9}\n{"text_tokens": "x"}\n')
    rc, _, err = run(capsys, "--model", "VLM-S", "--manifest", str(path))
    assert rc == 2 and "line 2: text_tokens must be an integer" in err


def test_mix_selects_a_mixture_by_name(capsys):
    rc, out, _ = run(capsys, "--model", "VLM-S", "--microbatches", "8", "--mix", "vlm-text-mix", "--json")
    assert rc == 0 and json.loads(out)["batches"][0]["source"] == "vlm-text-mix"
    rc, out, _ = run(capsys, "--model", "VLM-S", "--microbatches", "8", "--json")
    assert rc == 0 and json.loads(out)["batches"][0]["source"] == "vlm-default"
    rc, _, err = run(capsys, "--model", "VLM-S", "--mix", "t2v-default")
    assert rc == 2 and "feeds t2v models" in err and "Traceback" not in err


def test_conflicting_options_and_unknown_source(capsys, tmp_path):
    rc, _, err = run(capsys, "--model", "VLM-S", "--source", "nope")
    assert rc == 2 and "valid sources" in err
    rc, _, err = run(capsys, "--model", "VLM-S", "--mix", "vlm-text-mix", "--dynamic")
    assert rc == 2 and "--mix" in err
    rc, _, err = run(capsys, "--model", "VLM-S", "--manifest", str(tmp_path / "x.jsonl"), "--dynamic")
    assert rc == 2 and "--manifest" in err


def test_every_option_has_help():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    parser = sub.choices["workload"]
    for action in parser._actions:
        assert action.help, action.dest
