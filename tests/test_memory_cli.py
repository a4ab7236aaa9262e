"""The memory flags of ``dip cost``, ``dip simulate`` and ``dip plan``: --dp, --no-sequence-parallel,
--no-distributed-optimizer, --memory-reserve-gib, and the capacity / usable memory they report."""

from __future__ import annotations

import json

import pytest

from dip.cli.main import main

GIB = 2**30


def run(capsys, *args) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def run_json(capsys, *args) -> dict:
    rc, out, err = run(capsys, *args, "--json")
    assert rc == 0, err
    return json.loads(out)


def modules(report: dict) -> dict:
    return {m["name"]: m for m in report["modules"]}


def cost(capsys, *args) -> dict:
    return run_json(capsys, "cost", "--model", "VLM-S", "--images", 8, "--text-tokens", 8192, *args)


def test_cost_sequence_parallel_flag(capsys):
    tp1, tp4 = cost(capsys, "--tp", 1), cost(capsys, "--tp", 4)
    no_sp = cost(capsys, "--tp", 4, "--no-sequence-parallel")
    assert tp4["sequence_parallel"] and not no_sp["sequence_parallel"] and not tp1["sequence_parallel"]
    for name in ("vit", "llm"):
        a1 = modules(tp1)[name]["activation_bytes_by_strategy"]
        a4 = modules(tp4)[name]["activation_bytes_by_strategy"]
        for strategy, value in a1.items():
            assert a4[strategy] * 4 == pytest.approx(value)
        assert modules(no_sp)[name]["activation_bytes_by_strategy"]["none"] > 1.15 * a4["none"]


def test_cost_distributed_optimizer_flags(capsys):
    dp1, dp8 = cost(capsys, "--tp", 4, "--dp", 1), cost(capsys, "--tp", 4, "--dp", 8)
    off = cost(capsys, "--tp", 4, "--dp", 8, "--no-distributed-optimizer")
    assert (dp1["dp"], dp1["distributed_optimizer"], dp1["bytes_per_param"]) == (1, False, 18)
    assert (dp8["dp"], dp8["distributed_optimizer"], dp8["bytes_per_param"]) == (8, True, 7.5)
    assert not off["distributed_optimizer"] and off["bytes_per_param"] == 18
    llm1, llm8 = modules(dp1)["llm"], modules(dp8)["llm"]
    assert llm8["layer_static_bytes"] / llm1["layer_static_bytes"] == pytest.approx(7.5 / 18)
    assert llm8["layer_grad_bytes"] == llm1["layer_grad_bytes"] == pytest.approx(4 * llm1["layer_params_per_gpu"])
    assert modules(off)["llm"]["layer_static_bytes"] == llm1["layer_static_bytes"]


def test_cost_reports_capacity_and_usable_memory(capsys):
    default, reserved = cost(capsys, "--tp", 4), cost(capsys, "--tp", 4, "--memory-reserve-gib", 10)
    assert default["memory_capacity_bytes"] == 80 * GIB
    assert default["memory_limit_bytes"] == pytest.approx(0.92 * 80 * GIB)
    assert reserved["memory_limit_bytes"] == 70 * GIB
    rc, out, _ = run(capsys, "cost", "--model", "VLM-S", "--no-sequence-parallel")
    assert rc == 0 and "sequence parallel off" in out and "usable memory 73.6 of 80.0 GiB" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--memory-reserve-gib", "-1"], "--memory-reserve-gib"),
        (["--memory-reserve-gib", "nan"], "--memory-reserve-gib"),
        (["--memory-reserve-gib", "80"], "--memory-reserve-gib"),
        (["--dp", "0"], "--dp"),
    ],
)
def test_cost_bad_memory_flags(capsys, args, message):
    rc, out, err = run(capsys, "cost", "--model", "VLM-S", *args)
    assert rc == 2 and out == "" and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_simulate_reports_capacity_and_usable_memory(capsys):
    base = ("simulate", "--model", "VLM-S", "--schedule", "1f1b", "--microbatches", 8)
    default = run_json(capsys, *base)
    assert default["memory_capacity_bytes"] == 80 * GIB
    assert default["memory_limit_bytes"] == pytest.approx(0.92 * 80 * GIB)
    assert default["sequence_parallel"] and not default["distributed_optimizer"]
    assert run_json(capsys, *base, "--memory-reserve-gib", 0)["memory_limit_bytes"] == 80 * GIB
    assert run_json(capsys, *base, "--memory-limit-gib", 50)["memory_limit_bytes"] == 50 * GIB
    no_sp = run_json(capsys, *base, "--no-sequence-parallel", "--dp", 2)
    assert not no_sp["sequence_parallel"] and no_sp["dp"] == 2 and no_sp["distributed_optimizer"]
    roomy = ("--memory-limit-gib", 1e6)  # no recompute on either side: the peaks compare activations
    sp_peak = run_json(capsys, *base, *roomy)["peak_memory_bytes"]
    no_sp_peak = run_json(capsys, *base, *roomy, "--no-sequence-parallel")["peak_memory_bytes"]
    assert max(no_sp_peak) > max(sp_peak)
    with pytest.raises(SystemExit) as exc:  # argparse: the limit is the usable memory itself
        run(capsys, *base, "--memory-limit-gib", 50, "--memory-reserve-gib", 4)
    assert exc.value.code == 2 and "not allowed with" in capsys.readouterr().err
    rc, _, err = run(capsys, *base, "--memory-reserve-gib", 100)
    assert rc == 2 and "--memory-reserve-gib" in err and "Traceback" not in err


def test_plan_reports_capacity_and_usable_memory(capsys):
    base = (
        "plan",
        "--model",
        "tiny-vlm",
        "--microbatches",
        4,
        "--rollouts",
        3,
        "--workers",
        1,
        "--no-baselines",
        "--hardware",
        "H800",
    )
    out = run_json(capsys, *base, "--memory-reserve-gib", 20)
    assert out["memory_capacity_bytes"] == 80 * GIB and out["memory_limit_bytes"] == 60 * GIB
    assert out["per_batch"][0]["memory_limit_bytes"] == 60 * GIB
    assert (out["dp"], out["sequence_parallel"], out["distributed_optimizer"]) == (1, False, False)
    out = run_json(capsys, *base, "--dp", 2)
    assert out["memory_limit_bytes"] == pytest.approx(0.92 * 80 * GIB) and out["dp"] == 2
    assert out["distributed_optimizer"]
