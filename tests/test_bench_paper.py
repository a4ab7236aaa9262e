"""``dip bench paper``: the report writer, the results schema, every experiment in a tiny configuration
through the suite's code path, and the command line."""

from __future__ import annotations

import json
import math
import os
from types import SimpleNamespace

import numpy as np
import pytest

from dip.bench.paper import accuracy, e2e, memory, reference, suite
from dip.bench.paper.common import Context, Row, Settings, mean_or_none, row
from dip.bench.paper.explain import FALLBACK, differs, explain
from dip.bench.paper.report import (
    HEADLINE_END,
    HEADLINE_START,
    comments,
    format_value,
    headline,
    render_report,
    replace_headline,
    row_table,
)
from dip.cli import cmd_bench
from dip.cli.main import main

TINY = Settings.quick().replace(
    mode="tiny",
    microbatches=4,
    rollouts=2,
    table1_batches=1,
    e2e_models=("tiny-vlm", "tiny-t2v"),
    e2e_batches=1,
    dynamic_model="tiny-vlm",
    dynamic_iterations=(1, 6, 15),
    ablation_model="tiny-vlm",
    ablation_batches=1,
    submb_model="tiny-vlm",
    submb_sizes=(1, 2, 4),
    submb_batches=1,
    memory_model="tiny-vlm",
    search_model="tiny-vlm",
    search_budget_s=0.3,
    scalability_models=("tiny-vlm",),
    scalability_microbatches=(2,),
    exact_time_limit_s=2.0,
    accuracy_steps=2,
    accuracy_repeats=1,
    accuracy_microbatches=4,
    xl_models=("tiny-vlm", "tiny-t2v"),
    xl_batches=1,
)
SIMULATED = [n for n in suite.EXPERIMENTS if n != "accuracy"]
ROW_KEYS = {"name", "ours", "paper", "unit", "fits"}


# --------------------------------------------------------------------------- report writer


def test_row_table_golden():
    rows = [
        Row("VLM-S/dip", 31.64, None, "s", True),
        Row("speedup", 1.5, 1.2, "x"),
        Row("VLM-S/optimus", None, None, "s", False),
    ]
    assert row_table(rows) == (
        "| name | ours | paper | ratio | fits |\n"
        "|---|---|---|---|---|\n"
        "| VLM-S/dip | 31.64 s | n/a | – | yes |\n"
        "| speedup | 1.5x | 1.2x | 1.25 | – |\n"
        "| VLM-S/optimus | n/a | n/a | – | **no** |"
    )


def test_format_value():
    assert format_value(None, "s") == "n/a"
    assert format_value(12.0, "images") == "12 images"
    assert format_value(0.40754, "") == "0.4075"
    assert format_value(1.9576, "x") == "1.958x"


def test_a_comment_appears_only_beyond_twenty_percent():
    close = Row("+ per-layer memory optimisation", 19.0, 16.05, "s")  # 18% off
    far = Row("Megatron-LM", 69.1, 26.13, "s")
    assert not differs(close) and differs(far)
    assert not differs(Row("a", 1.0, None, "s")) and not differs(Row("a", None, 1.0, "s"))
    got = comments("ablation", [close, far], {"images_per_microbatch": 21.7})
    assert len(got) == 1 and got[0].startswith("- Megatron-LM (ours 69.1 s, paper 26.13 s, 2.64x). **Why:** ")
    assert "21.7 images per micro-batch" in got[0]  # the experiment's facts fill the explanation


def test_rows_sharing_an_explanation_share_one_comment():
    rows = [Row("VLM-7B static data: MFU", 0.1, 0.351, ""), Row("VLM-7B dynamic data: MFU", 0.1, 0.239, "")]
    got = comments("table1", rows, {})
    assert len(got) == 1 and "VLM-7B static data: MFU" in got[0] and "VLM-7B dynamic data: MFU" in got[0]


def test_explanations_match_direction_and_fall_back():
    low = Row("cpu: after calibration, mean accuracy (all schedules)", 0.5, 0.976, "")
    assert "tiny models" in explain("accuracy", low)
    high = Row("cpu: after calibration, mean accuracy (all schedules)", 0.99, 0.5, "")
    assert explain("accuracy", high) == FALLBACK  # only a lower accuracy has a recorded reason
    assert explain("no-such-experiment", low) == FALLBACK


def test_render_report_embeds_figures_tables_comments_and_failures():
    results = {
        "command": "dip bench paper --quick",
        "mode": "quick",
        "seed": 0,
        "wall_s": 90.0,
        "cpu_count": 2,
        "experiments": {
            "ablation": {
                "title": "Table 5",
                "rows": [Row("Megatron-LM", 69.1, 26.13, "s", True).to_dict()],
                "figure": "ablation.png",
                "settings": {"batches": 1, "sizes": [4, 8]},
                "notes": ["a note"],
                "wall_s": 3.0,
            },
            "xl": {"title": "Fig. 14", "rows": [], "figure": None, "error": "RuntimeError: boom"},
        },
    }
    text = render_report(results)
    assert "ran in 1.5 min on 2 CPU cores" in text and "Quick mode" in text
    assert "![ablation](ablation.png)" in text and "| Megatron-LM | 69.1 s | 26.13 s | 2.64 | yes |" in text
    assert "Differences over 20%:" in text and "**Why:**" in text
    assert "Settings: batches: 1; sizes: 4, 8. Ran in 3 s." in text and "- a note" in text
    assert "## xl: Fig. 14" in text and "**Failed**: RuntimeError: boom" in text


# --------------------------------------------------------------------------- pieces


def test_row_drops_the_number_of_a_plan_that_does_not_fit_and_looks_up_the_paper():
    assert row("ablation", "Megatron-LM", 50.0, "s", True) == Row("Megatron-LM", 50.0, 26.13, "s", True)
    assert row("ablation", "Megatron-LM", 50.0, "s", False).ours is None
    assert row("e2e", "VLM-S/dip", math.inf, "s").ours is None
    assert row("e2e", "anything", 1.0, "s").paper is None
    assert mean_or_none([1.0, 3.0]) == 2.0 and mean_or_none([1.0, None]) is None and mean_or_none([]) is None


def test_reference_numbers_are_unique_and_belong_to_experiments():
    keys = [(p.experiment, p.row) for p in reference.PAPER]
    assert len(keys) == len(set(keys))
    assert {p.experiment for p in reference.PAPER} <= set(suite.EXPERIMENTS)
    assert reference.paper_value("ablation", "+ per-layer memory optimisation") == 16.05
    assert reference.paper_value("ablation", "nothing") is None


def test_step_accuracy_is_clipped_to_unit_interval():
    assert accuracy.step_accuracy(1.0, 1.0) == 1.0
    assert accuracy.step_accuracy(0.9, 1.0) == pytest.approx(0.9)
    assert accuracy.step_accuracy(5.0, 1.0) == 0.0
    runs = {"dip": {"measured": [1.0, 2.0, 2.0], "predicted": [3.0, 2.0, 1.0], "shipped": [1.0, 1.0, None]}}
    assert accuracy.accuracies(runs, "shipped") == {"dip": [1.0, 0.5]}  # every step with a prediction
    assert accuracy.accuracies(runs, "predicted") == {"dip": [1.0, 0.5]}  # from the second step on


def test_memory_fluctuation_is_a_time_weighted_deviation():
    def fake(times, mem, makespan):
        return SimpleNamespace(memory_timeline=lambda rank: (np.asarray(times), np.asarray(mem)), makespan=makespan)

    assert memory.fluctuation(fake([0.0], [5.0], 10.0)) == 0.0
    # 4 bytes for 1 s then 0 for 3 s: mean 1, variance (9 * 1 + 1 * 3) / 4 = 3
    assert memory.fluctuation(fake([0.0, 1.0], [4.0, 0.0], 4.0)) == pytest.approx(math.sqrt(3.0))


def test_quick_searches_by_rollouts_full_by_seconds():
    quick, full = Settings.quick(seed=2).search(5), Settings.full().search(5)
    assert quick.deterministic and quick.rollouts == Settings.quick().rollouts and quick.seed == 2005
    assert not full.deterministic and full.budget == Settings.full().budget_s
    assert Settings.quick().search_label() == "16 rollouts per batch on one worker, no polishing"


def test_settings_names_match_the_cli_and_quick_is_smaller():
    assert tuple(suite.EXPERIMENTS) == cmd_bench.PAPER_EXPERIMENTS
    full, quick = Settings.full(), Settings.quick()
    assert quick.e2e_batches < full.e2e_batches and quick.rollouts < full.rollouts
    assert quick.e2e_models == full.e2e_models  # the same models, fewer batches
    assert all(m.steps(quick) <= m.steps(full) for m in suite.EXPERIMENTS.values())


# --------------------------------------------------------------------------- experiments, tiny


def _check_experiment(name: str, exp, out_dir: str) -> None:
    assert exp.name == name and exp.rows, name
    assert os.path.exists(os.path.join(out_dir, exp.figure)) and exp.figure == f"{name}.png"
    for r in exp.to_dict()["rows"]:
        assert set(r) == ROW_KEYS
        assert r["ours"] is None or math.isfinite(r["ours"])
        if r["fits"] is False:
            assert r["ours"] is None, r
    json.dumps(exp.to_dict(), allow_nan=False, default=float)


@pytest.mark.parametrize("name", SIMULATED)
def test_every_simulated_experiment_runs_tiny(name, tmp_path):
    module = suite.EXPERIMENTS[name]
    ticks = []
    exp = module.run(Context(TINY, str(tmp_path), ticks.append))
    _check_experiment(name, exp, str(tmp_path))
    assert 0 < len(ticks) <= module.steps(TINY)
    by_name = {r.name: r for r in exp.rows}
    if name == "ablation":
        assert [r.name for r in exp.rows] == [label for _, label in module.STEPS]
        assert [r.paper for r in exp.rows] == [26.13, 22.27, 18.81, 17.61, 16.05]
        assert all(r.ours > 0 for r in exp.rows)
    if name == "e2e":
        assert {"tiny-vlm/dip", "tiny-t2v/dip", "tiny-vlm/megatron"} <= set(by_name)
        assert "tiny-t2v/optimus" not in by_name  # Optimus has no T2V support
    if name == "table1":
        for setup in module.SETUPS:  # the micro-batch counts hold the paper's FLOPs per iteration
            assert by_name[f"{setup}: PFLOPs per iteration"].ratio == pytest.approx(1.0, abs=0.15)
    if name == "submb":
        for size in TINY.submb_sizes:  # the worst search starts where DIP's search starts
            best, worst = by_name[f"B={size}: best schedule"].ours, by_name[f"B={size}: worst schedule"].ours
            assert worst >= best * (1 - 1e-9)
    if name == "dynamic":
        assert "iteration 6: Megatron-LM / DIP" in by_name and by_name["iteration 6: Megatron-LM / DIP"].paper == 1.529
    if name == "xl":
        assert all(0 < r.ours < 1 for r in exp.rows if r.name.endswith(": MFU") and r.ours is not None)


@pytest.mark.multiproc
def test_accuracy_runs_two_processes_tiny(tmp_path):
    exp = accuracy.run(Context(TINY, str(tmp_path)))
    _check_experiment("accuracy", exp, str(tmp_path))
    values = [r.ours for r in exp.rows]
    assert values and all(v is not None and 0 <= v <= 1 for v in values)
    assert {"cpu/dip: after calibration, mean accuracy", "cpu: before calibration, worst step"} <= {
        r.name for r in exp.rows
    }


@pytest.mark.multiproc
def test_trainer_runs_give_the_accuracy_inputs(one_torch_thread):
    runs = accuracy.trainer_runs(TINY.replace(accuracy_schedules=("1f1b",)), "cpu")
    got = runs["1f1b"]
    assert len(got["measured"]) == TINY.accuracy_steps and all(m > 0 for m in got["measured"])
    assert all(p is not None for p in got["shipped"])


# --------------------------------------------------------------------------- suite and CLI


def test_run_suite_writes_the_results_schema_and_the_report(tmp_path):
    progress = []
    results = suite.run_suite(["ablation", "table1"], TINY, str(tmp_path), lambda n, label: progress.append(n))
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["mode"] == "tiny" and list(on_disk["experiments"]) == ["table1", "ablation"]  # suite order
    for exp in on_disk["experiments"].values():
        assert exp["rows"] and all(set(r) == ROW_KEYS for r in exp["rows"])
        assert (tmp_path / exp["figure"]).exists()
    assert results["experiments"].keys() == on_disk["experiments"].keys()
    assert sum(progress) == sum(suite.EXPERIMENTS[n].steps(TINY) for n in ("ablation", "table1"))
    report = (tmp_path / "REPORT.md").read_text()
    assert "![ablation](ablation.png)" in report and "| name | ours | paper | ratio | fits |" in report


def test_a_failing_experiment_is_recorded_and_the_others_still_run(tmp_path, monkeypatch):
    def boom(ctx):
        raise RuntimeError("boom")

    monkeypatch.setattr(suite.EXPERIMENTS["xl"], "run", boom)
    results = suite.run_suite(["table1", "xl"], TINY, str(tmp_path))
    assert results["experiments"]["xl"]["error"] == "RuntimeError: boom"
    assert results["experiments"]["table1"]["rows"]
    assert "**Failed**: RuntimeError: boom" in (tmp_path / "REPORT.md").read_text()


def test_cli_rejects_unknown_experiments(tmp_path, capsys):
    assert main(["bench", "paper", "table1", "fig99", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fig99" in err[0] and "Traceback" not in err[0]
    assert all(name in err[0] for name in suite.EXPERIMENTS)
    assert not (tmp_path / "out").exists()  # nothing written


def test_cli_rejects_bad_out_and_seed(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["bench", "paper", "table1", "--out", str(blocker)]) == 2
    assert main(["bench", "paper", "table1", "--out", str(tmp_path / "o"), "--seed", "-1"]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["bench", "paper", "table1"])  # --out is required
    assert exc.value.code == 2
    capsys.readouterr()


def test_cli_json_on_stdout_progress_on_stderr(tmp_path, capsys):
    assert main(["bench", "paper", "table1", "--quick", "--out", str(tmp_path), "--json"]) == 0
    captured = capsys.readouterr()
    obj = json.loads(captured.out)  # exactly one JSON object
    assert obj["mode"] == "quick" and set(obj["experiments"]) == {"table1"}
    assert obj["command"] == "dip bench paper table1 --quick"
    assert (tmp_path / "REPORT.md").exists() and (tmp_path / "table1.png").exists()


def _e2e_results() -> dict:
    systems = {
        "dip": {"time_s": 10.0, "fits": True},
        "megatron": {"time_s": 15.0, "fits": True},
        "optimus": {"time_s": None, "fits": False},
    }
    rows = [
        Row("VLM-S/dip", 10.0, None, "s", True).to_dict(),
        row("e2e", "VLM: DIP speedup over its baselines, lowest", 1.5, "x").to_dict(),
        row("e2e", "VLM: DIP speedup over its baselines, highest", 1.5, "x").to_dict(),
    ]
    return {
        "command": "dip bench paper e2e --quick",
        "mode": "quick",
        "seed": 0,
        "wall_s": 60.0,
        "cpu_count": 2,
        "experiments": {
            "e2e": {
                "title": "Fig. 8a",
                "rows": rows,
                "figure": "e2e.png",
                "settings": {"hardware": "H800", "batches": 4},
                "data": {"VLM-S": systems},
                "wall_s": 1.0,
            }
        },
    }


def test_headline_comes_from_the_results():
    text = headline(_e2e_results())
    assert "| VLM-S | 10 s | 1.50x | – | does not fit |" in text  # nnScaler* absent, Optimus does not fit
    assert "VLM 1.50x-1.50x (paper 1.16x-1.76x)" in text and "mean over 4 batches" in text


def test_headline_into_rewrites_only_the_marked_block(tmp_path):
    doc = tmp_path / "docs" / "results.md"
    doc.parent.mkdir()
    doc.write_text(f"# Results\n\nbefore\n{HEADLINE_START}\nold numbers\n{HEADLINE_END}\nafter\n")
    replace_headline(str(doc), _e2e_results(), str(tmp_path / "docs" / "results" / "REPORT.md"))
    text = doc.read_text()
    assert "old numbers" not in text and text.startswith("# Results\n\nbefore\n") and text.endswith("\nafter\n")
    assert "[`results/REPORT.md`](results/REPORT.md)" in text and "| VLM-S | 10 s |" in text
    replace_headline(str(doc), _e2e_results(), str(tmp_path / "docs" / "results" / "REPORT.md"))
    assert doc.read_text() == text  # idempotent


def test_headline_into_needs_the_markers_before_any_work(tmp_path, capsys):
    plain = tmp_path / "README.md"
    plain.write_text("# no markers\n")
    assert main(["bench", "paper", "table1", "--out", str(tmp_path / "o"), "--headline-into", str(plain)]) == 2
    assert "paper-headline" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_e2e_means_only_over_batches_where_a_plan_fits(monkeypatch, tmp_path):
    """A baseline that does not fit on one batch has no mean (whether its time there is given or None)."""
    per_batch = [
        {
            "dip_time_s": 10.0,
            "peak_memory_bytes": [1.0],
            "memory_limit_bytes": 2.0,
            "baselines": {"megatron": 20.0, "nnscaler": 14.0, "optimus": 30.0},
            "baselines_fit": {"megatron": True, "nnscaler": True, "optimus": False},
        },
        {
            "dip_time_s": 12.0,
            "peak_memory_bytes": [1.0],
            "memory_limit_bytes": 2.0,
            "baselines": {"megatron": 22.0, "nnscaler": None, "optimus": 31.0},
            "baselines_fit": {"megatron": True, "nnscaler": False, "optimus": True},
        },
    ]
    monkeypatch.setattr(e2e, "plan_batches", lambda request: ({"per_batch": per_batch}, None))
    got = e2e.model_times("VLM-S", Context(TINY, str(tmp_path)))
    assert got["dip"] == {"per_batch": [10.0, 12.0], "fits": True, "time_s": 11.0}
    assert got["megatron"]["time_s"] == 21.0 and got["megatron"]["fits"]
    assert got["nnscaler"]["time_s"] is None and not got["nnscaler"]["fits"]
    assert got["optimus"]["time_s"] is None and not got["optimus"]["fits"]
    assert "1f1b" not in got  # not planned: not reported
