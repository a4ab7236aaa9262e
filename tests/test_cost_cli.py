import json

import pytest

from cost_fixtures import VLM_M
from dip.cli.cmd_cost import cost_report
from dip.cli.main import main
from dip.spec.hardware import get_hardware


def _run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_cost_json_matches_paper_example(capsys):
    rc, out, _ = _run(capsys, "cost", "--model", "VLM-M", "--hardware", "h800", "--json")
    assert rc == 0
    report = json.loads(out)
    assert report["model"] == "VLM-M" and report["hardware"] == "H800" and report["tp"] == 8
    by_kind = {m["kind"]: m for m in report["modules"]}
    vit, llm = by_kind["vit"], by_kind["decoder"]
    assert vit["tokens"] == 8 * 2704 and llm["tokens"] == 8192
    for m in (vit, llm):
        assert m["layer_bwd_s"] == pytest.approx(m["layer_bwd_input_s"] + m["layer_bwd_weight_s"])
        assert m["layer_activation_bytes"] == m["activation_bytes_by_strategy"]["none"]
        assert set(m["activation_bytes_by_strategy"]) == {"none", "selective", "full", "offload"}
    assert vit["layer_fwd_s"] + vit["layer_bwd_s"] == pytest.approx(6.75e-3, rel=0.2)
    assert llm["layer_fwd_s"] + llm["layer_bwd_s"] == pytest.approx(10.5e-3, rel=0.2)


def test_cost_text_and_t2v(capsys):
    rc, out, _ = _run(capsys, "cost", "--model", "T2V-S", "--clips", "2", "--clip-seconds", "4")
    assert rc == 0 and "dit" in out and "2 clips x 4 s" in out
    rc, out, _ = _run(capsys, "cost", "--model", "VLM-S", "--tp", "2", "--images", "0", "--json")
    report = json.loads(out)
    assert rc == 0 and report["tp"] == 2 and report["modules"][0]["layer_fwd_s"] == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "VLM-S", "--tp", "7"], "tp 7 does not divide"),
        (["--model", "VLM-S", "--hardware", "TPU"], "unknown hardware 'TPU'"),
        (["--model", "nope"], "unknown model"),
        (["--model", "VLM-S", "--images", "-1"], "--images"),
    ],
)
def test_cost_bad_input(capsys, argv, message):
    rc, out, err = _run(capsys, "cost", *argv)
    assert rc == 2 and message in err and "Traceback" not in err and out == ""


def test_cost_report_with_hand_built_model():
    report = cost_report(VLM_M, get_hardware("A100-80G"), tp=4, images=2, text_tokens=1024)
    assert [m["name"] for m in report["modules"]] == ["ViT-5B", "Qwen2-32B"]
    assert report["modules"][1]["tokens"] == 1024


def test_profile_cli_writes_calibration(tmp_path, capsys):
    out_file = tmp_path / "cal.json"
    rc, out, _ = _run(
        capsys,
        "profile",
        "--modules",
        "vit",
        "dit",
        "--sizes",
        "32",
        "64",
        "--hidden-scale",
        "0.0625",
        "--block",
        "32",
        "--rounds",
        "1",
        "--threads",
        "1",
        "--name",
        "mini",
        "--out",
        str(out_file),
        "--json",
    )
    assert rc == 0
    summary = json.loads(out)
    assert summary["points"] == 4 and summary["name"] == "mini"
    hw = get_hardware(str(out_file))
    assert hw.name == "mini" and hw.alpha("gemm") == pytest.approx(summary["alphas"]["gemm"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--device", "tpu"], "unknown device"),
        (["--modules", "audio"], "unknown module"),
        (["--hidden-scale", "2"], "--hidden-scale"),
        (["--sizes", "0"], "--sizes"),
    ],
)
def test_profile_bad_input(tmp_path, capsys, argv, message):
    rc, _, err = _run(capsys, "profile", "--out", str(tmp_path / "x.json"), *argv)
    assert rc == 2 and message in err
    assert not (tmp_path / "x.json").exists()


def test_profile_unwritable_output(capsys):
    rc, _, err = _run(capsys, "profile", "--out", "/nonexistent-dir/x.json")
    assert rc == 2 and "cannot be written" in err
