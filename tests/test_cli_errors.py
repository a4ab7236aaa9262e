"""Bad input on the command line: one line naming the sub-command and the field, exit code 2, a JSON
error object under --json, nothing created."""

from __future__ import annotations

import json

import pytest

from dip.cli.main import main


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_json_errors_are_one_object_on_stdout(capsys):
    code, out, err = run(capsys, "plan", "--model", "NOPE", "--json")
    assert code == 2
    obj = json.loads(out)
    assert "NOPE" in obj["error"] and obj["command"] == "dip plan"
    assert err.startswith("dip plan: error: unknown model 'NOPE'") and err.count("\n") == 1


def test_usage_errors_name_the_sub_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["plan", "--no-such-flag"])
    assert exc.value.code == 2
    assert capsys.readouterr().err == "dip plan: error: unrecognized arguments: --no-such-flag\n"
    with pytest.raises(SystemExit):
        main(["bench", "sim", "--repeats", "x", "--json"])
    out = capsys.readouterr()
    assert out.err.startswith("dip bench sim: error: argument --repeats") and "error" in json.loads(out.out)


@pytest.mark.parametrize("flag", ["--trace", "--gantt"])
def test_output_paths_are_checked_before_any_work(capsys, tmp_path, flag):
    code, _, err = run(capsys, "simulate", "--model", "VLM-S", "--schedule", "1f1b", flag, tmp_path)
    assert code == 2 and "is a folder" in err and flag in err
    code, _, err = run(capsys, "simulate", "--model", "VLM-S", "--schedule", "1f1b", flag, tmp_path / "no" / "x")
    assert code == 2 and "does not exist" in err


def test_demo_with_a_bad_option_creates_nothing(capsys, tmp_path):
    out = tmp_path / "demo"
    code, _, err = run(capsys, "demo", "--out", out, "--steps", 0)
    assert code == 2 and "--steps" in err and not out.exists()
    code, _, err = run(capsys, "demo", "--out", out, "--budget", "nan")
    assert code == 2 and "--budget" in err and not out.exists()


def test_cost_refuses_inputs_the_model_cannot_run(capsys):
    code, _, err = run(capsys, "cost", "--model", "VLM-S", "--clips", 2)
    assert code == 2 and "--clips" in err and "VLM-S" in err
    code, _, err = run(capsys, "cost", "--model", "T2V-S", "--images", 2)
    assert code == 2 and "--images" in err


def test_absurd_batch_sizes_get_a_clear_limit(capsys):
    code, _, err = run(capsys, "plan", "--model", "VLM-S", "--microbatches", 100000, "--budget", 1)
    assert code == 2 and "microbatches" in err and "1024" in err


def test_plan_takes_the_parallel_layout_or_refuses_what_does_not_apply(capsys):
    code, out, _ = run(
        capsys,
        "plan",
        "--model",
        "tiny-vlm",
        "--pp",
        1,
        "--rollouts",
        2,
        "--workers",
        1,
        "--microbatches",
        2,
        "--no-baselines",
        "--json",
    )
    assert code == 0 and json.loads(out)["partition"]["pp"] == 1
    code, _, err = run(capsys, "plan", "--model", "VLM-S", "--exact", "--exact-time-limit", -1, "--json")
    assert code == 2 and "--exact-time-limit" in err
    code, _, err = run(capsys, "plan", "--model", "VLM-S", "--uniform-costs", "1:1:1")
    assert code == 2 and "--uniform-costs" in err
    code, _, err = run(capsys, "plan", "--model", "VLM-S", "--chunks", 2)
    assert code == 2 and "--chunks" in err
    code, _, err = run(capsys, "simulate", "--model", "VLM-S", "--schedule", "1f1b", "--uniform-costs", "1:1:1")
    assert code == 2 and "--uniform-costs" in err


def test_simulate_over_the_limit_keeps_the_result_and_fails_only_under_strict(capsys):
    args = ["simulate", "--model", "tiny-vlm", "--schedule", "1f1b", "--microbatches", 4, "--memory-limit-gib", 1e-4]
    code, out, _ = run(capsys, *args, "--json")
    assert code == 0 and json.loads(out)["fits"] is False
    code, out, err = run(capsys, *args, "--strict", "--json")
    assert code == 1 and json.loads(out)["fits"] is False and "does not fit" in err


def test_plan_and_simulate_take_a_manifest(capsys, tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        '{"text_tokens": 90, "images": 2}\n{"text_tokens": 120, "images": [{"width": 56, "height": 56}]}\n'
    )
    code, out, _ = run(
        capsys,
        "simulate",
        "--model",
        "tiny-vlm",
        "--schedule",
        "1f1b",
        "--manifest",
        manifest,
        "--microbatches",
        2,
        "--json",
    )
    assert code == 0 and json.loads(out)["batches"] == 1
    code, out, _ = run(
        capsys,
        "plan",
        "--model",
        "tiny-vlm",
        "--manifest",
        manifest,
        "--microbatches",
        2,
        "--rollouts",
        2,
        "--workers",
        1,
        "--no-baselines",
        "--json",
    )
    assert code == 0 and json.loads(out)["batches"] == 1
