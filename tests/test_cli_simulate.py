"""``dip simulate`` run in-process: model mode, uniform mode, outputs and bad inputs."""

from __future__ import annotations

import json
import os

import pytest

from dip.cli.main import main
from dip.schedule.baselines.memory import rule_ladder, summarize_rules


def run_json(capsys, *args) -> dict:
    rc = main(["simulate", *map(str, args), "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    return json.loads(out)


def run_bad(capsys, *args) -> str:
    rc = main(["simulate", *map(str, args)])
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    return err


def test_model_mode_reports_means_and_per_batch_rows(capsys):
    out = run_json(
        capsys, "--model", "VLM-S", "--schedule", "megatron", "--batches", 2, "--seed", 0, "--microbatches", 16
    )
    for key in (
        "schedule",
        "model",
        "microbatches",
        "iteration_time_s",
        "bubble_fraction",
        "mfu",
        "peak_memory_bytes",
        "lower_bound_s",
        "memory_limit_bytes",
        "per_batch",
    ):
        assert key in out
    assert out["schedule"] == "megatron" and out["model"] == "VLM-S" and out["microbatches"] == 16
    assert len(out["per_batch"]) == 2 and len(out["peak_memory_bytes"]) == 4
    assert 0 < out["lower_bound_s"] <= out["iteration_time_s"] * (1 + 1e-9)
    assert 0 <= out["bubble_fraction"] < 1 and 0 < out["mfu"] < 1
    times = [r["iteration_time_s"] for r in out["per_batch"]]
    assert out["iteration_time_s"] == pytest.approx(sum(times) / 2)
    for r in out["per_batch"]:
        assert len(r["strategy_per_rank"]) == 4 and all(rule in rule_ladder(64) for rule in r["strategy_per_rank"])
        assert r["strategy"] == summarize_rules(r["strategy_per_rank"]) and r["fits"] and r["split"] == "time"
    assert out["fits"] and out["strategy"] in (out["per_batch"][0]["strategy"], "per batch")
    assert out["peak_memory_bytes"] == [max(r["peak_memory_bytes"][k] for r in out["per_batch"]) for k in range(4)]


def test_memory_limit_picks_the_uniform_strategy(capsys):
    roomy = run_json(capsys, "--model", "T2V-S", "--schedule", "1f1b", "--microbatches", 8, "--memory-limit-gib", 1e6)
    assert roomy["memory_limit_bytes"] == 1e6 * 2**30
    assert roomy["per_batch"][0]["strategy"] == "none" and roomy["per_batch"][0]["fits_memory"]
    tight = run_json(capsys, "--model", "T2V-S", "--schedule", "1f1b", "--microbatches", 8, "--memory-limit-gib", 1)
    assert tight["per_batch"][0]["strategy"] == "full" and not tight["per_batch"][0]["fits_memory"]
    assert tight["fits"] is False and tight["per_batch"][0]["fits"] is False  # the result is kept, marked
    assert tight["iteration_time_s"] > 0 and tight["memory_limit_bytes"] == 2**30
    assert tight["iteration_time_s"] > roomy["iteration_time_s"]  # recomputation costs time


def test_uniform_mode(capsys):
    out = run_json(capsys, "--uniform-costs", "1:1:1", "--pp", 4, "--microbatches", 8, "--schedule", "1f1b")
    assert out["schedule"] == "1f1b"
    assert out["iteration_time"] == pytest.approx(33.0)
    assert out["peak_activations"] == [4, 3, 2, 1]
    assert 0 <= out["bubble_fraction"] < 1
    out = run_json(
        capsys, "--uniform-costs", "1:1:1", "--pp", 4, "--microbatches", 8, "--chunks", 2, "--schedule", "interleaved"
    )
    assert out["iteration_time"] == pytest.approx((2 * 8 + 4 - 1) * 3)


def test_trace_gantt_and_torch_export(capsys, tmp_path):
    trace, png = tmp_path / "t.json", tmp_path / "g.png"
    run_json(capsys, "--model", "VLM-S", "--schedule", "1f1b", "--microbatches", 8, "--trace", trace, "--gantt", png)
    data = json.loads(trace.read_text())
    events = data if isinstance(data, list) else data["traceEvents"]
    assert events and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    csv = tmp_path / "o.csv"
    run_json(
        capsys, "--uniform-costs", "1:1:1", "--pp", 2, "--microbatches", 4, "--schedule", "zb-h1", "--export-torch", csv
    )
    assert csv.read_text().strip()
    assert [p for p in os.listdir(tmp_path) if p.startswith(".dip-tmp")] == []


@pytest.mark.parametrize(
    "args,word",
    [
        (["--model", "VLM-S", "--schedule", "no-such-schedule"], "1f1b"),
        (["--model", "T2V-S", "--schedule", "optimus"], "optimus"),
        (["--model", "VLM-S", "--schedule", "1f1b", "--tp", 3], "tp"),
        (["--model", "VLM-S", "--schedule", "1f1b", "--pp", 1000], "pp"),
        (["--uniform-costs", "1:x:1", "--schedule", "1f1b"], "uniform-costs"),
        (["--uniform-costs", "1:1:1", "--schedule", "optimus"], "model"),
        (["--model", "VLM-S", "--schedule", "1f1b", "--export-torch", "x.csv"], "linear chain"),
    ],
)
def test_bad_inputs(capsys, args, word):
    assert word in run_bad(capsys, *args)


def test_unwritable_trace_fails_before_any_work(capsys, monkeypatch):
    import dip.data.workload as workload

    def boom(*a, **k):
        raise AssertionError("batches generated before the output path was checked")

    monkeypatch.setattr(workload, "generate_batches", boom)
    err = run_bad(capsys, "--model", "VLM-S", "--schedule", "1f1b", "--trace", "/proc/dip-cannot-write-here/x.json")
    assert "--trace" in err
