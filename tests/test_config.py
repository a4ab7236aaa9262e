"""Experiment configuration files: printed defaults round-trip, flags override the file, bad values are
one line naming the file and the field, and a configured run writes its resolved configuration."""

from __future__ import annotations

import json

import pytest
import yaml

from dip.cli.config import ExperimentConfig, defaults_yaml, load_config
from dip.cli.main import main
from dip.errors import BadInput


def write(tmp_path, text: str, name: str = "exp.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_printed_defaults_are_a_complete_valid_config(tmp_path, capsys):
    assert main(["config", "--print-defaults"]) == 0
    text = capsys.readouterr().out
    assert load_config(write(tmp_path, text)) == ExperimentConfig()
    parsed = yaml.safe_load(text)
    assert {"tp", "pp", "dp"} <= set(parsed["parallel"]) and "# " in text
    assert text == defaults_yaml()


@pytest.mark.parametrize(
    "text,words",
    [
        ("parallel:\n  pp: -1\n", ["exp.yaml", "parallel.pp", "-1", "greater than or equal to 1"]),
        ("planner:\n  budget_s: .nan\n", ["planner.budget_s", "finite"]),
        ("planner:\n  strategy: annealing\n", ["planner.strategy", "'annealing'", "mcts"]),
        ("workload:\n  microbatches: 100000\n", ["workload.microbatches", "1024"]),
        ("parallel:\n  tpp: 2\n", ["unknown field 'parallel.tpp'", "tp, pp, dp"]),
        ("modle: VLM-S\n", ["unknown field 'modle'", "model"]),
        ("- a list\n", ["must hold a mapping"]),
        ("parallel: [1\n", ["not valid YAML", "line"]),
    ],
)
def test_bad_values_name_the_file_and_the_field(tmp_path, text, words):
    with pytest.raises(BadInput) as err:
        load_config(write(tmp_path, text))
    message = str(err.value)
    assert "\n" not in message
    for w in words:
        assert w in message, (w, message)


def test_flags_override_the_file_including_rollouts_over_its_budget(tmp_path, capsys):
    path = write(tmp_path, "model: tiny-vlm\nworkload:\n  microbatches: 4\nplanner:\n  budget_s: 30\n  workers: 1\n")
    trace = tmp_path / "t.json"
    args = ["plan", "--config", path, "--rollouts", "3", "--microbatches", "6", "--no-baselines"]
    assert main([*args, "--trace", str(trace), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "tiny-vlm" and out["rollouts"] == 3 and out["budget_s"] is None
    assert out["microbatches"] == 6 and out["workers"] == 1
    resolved = load_config(str(tmp_path / "t.config.yaml"))
    assert resolved.model == "tiny-vlm" and resolved.planner.rollouts == 3 and resolved.planner.budget_s is None
    assert resolved.workload.microbatches == 6 and resolved.planner.baselines is False


def test_a_bad_config_is_a_cli_error(tmp_path, capsys):
    code = main(["simulate", "--config", write(tmp_path, "parallel:\n  pp: 0\n"), "--json"])
    captured = capsys.readouterr()
    assert code == 2 and "parallel.pp" in json.loads(captured.out)["error"]
    assert captured.err.startswith("dip simulate: error: config file")


def test_check_prints_the_resolved_file(tmp_path, capsys):
    assert main(["config", "--check", write(tmp_path, "model: T2V-S\n"), "--json"]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["model"] == "T2V-S" and obj["planner"]["budget_s"] == 2.0
