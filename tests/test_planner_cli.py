"""``dip plan`` and ``dip bench planner`` on the tiny models."""

from __future__ import annotations

import json

from dip.cli.main import main


def run_json(capsys, *args) -> dict:
    assert main(list(args)) == 0
    return json.loads(capsys.readouterr().out)


def test_plan_json_shape(capsys, tmp_path):
    trace = tmp_path / "t.json"
    out = run_json(
        capsys,
        "plan",
        "--model",
        "tiny-vlm",
        "--batches",
        "2",
        "--microbatches",
        "4",
        "--rollouts",
        "5",
        "--trace",
        str(trace),
        "--json",
    )
    assert out["model"] == "tiny-vlm" and out["microbatches"] == 4
    mean = out["mean"]
    assert {"dip_time_s", "lower_bound_s", "baselines", "search_time_s", "speedup_vs"} <= set(mean)
    assert {"megatron", "nnscaler", "optimus", "1f1b", "interleaved", "zb-h1", "gpipe"} <= set(mean["baselines"])
    assert len(out["per_batch"]) == 2
    row = out["per_batch"][0]
    assert {
        "dip_time_s",
        "lower_bound_s",
        "baselines",
        "peak_memory_bytes",
        "memory_limit_bytes",
        "search_time_s",
        "rollouts",
        "time_to_best_s",
    } <= set(row)
    assert max(row["peak_memory_bytes"]) <= row["memory_limit_bytes"]
    assert out["partition"]["segments"] and trace.exists()


def test_plan_exact_and_overrides(capsys):
    out = run_json(
        capsys,
        "plan",
        "--model",
        "tiny-vlm",
        "--microbatches",
        "2",
        "--rollouts",
        "5",
        "--exact",
        "--exact-time-limit",
        "10",
        "--segments",
        "vit=2",
        "--sub-microbatch",
        "vit=2",
        "--no-baselines",
        "--json",
    )
    row = out["per_batch"][0]
    assert row["lower_bound_s"] <= row["exact_time_s"] * (1 + 1e-9) <= row["dip_time_s"] * (1 + 1e-9)
    assert out["partition"]["segments"]["vit"] == 2 and out["partition"]["sub_microbatch"]["vit"] == 2


def test_plan_uniform_mode(capsys):
    out = run_json(
        capsys, "plan", "--pp", "4", "--microbatches", "8", "--uniform-costs", "1:1:1", "--rollouts", "5", "--json"
    )
    assert out["iteration_time"] == (8 + 4 - 1) * 3 and out["baselines"]["1f1b"] == (8 + 4 - 1) * 3


def test_bad_inputs_are_one_line(capsys):
    assert main(["plan", "--model", "NOPE", "--json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "VLM-S" in err[0]
    assert (
        main(
            [
                "plan",
                "--model",
                "tiny-vlm",
                "--microbatches",
                "2",
                "--memory-limit-gib",
                "0.000001",
                "--rollouts",
                "2",
                "--json",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rank" in err[0] and "GiB" in err[0]
    assert main(["plan", "--model", "tiny-vlm", "--segments", "vit", "--json"]) == 2


def test_bench_planner_quick(capsys):
    out = run_json(
        capsys,
        "bench",
        "planner",
        "--quick",
        "--models",
        "tiny-vlm",
        "--batches",
        "1",
        "--budget",
        "0.3",
        "--skip",
        "ablation",
        "curve",
        "strategies",
        "--json",
    )
    row = out["e2e"][0]
    assert row["model"] == "tiny-vlm" and row["baselines"] and row["gap_to_lower_bound"] >= -1e-9
