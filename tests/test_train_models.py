"""`dip train` on real checkpoints and real data, through the command's own code path (`dip.cli.main`):
a tiny Qwen2-VL and the tiny Wan pair (written by `dip init-model`) on data from `dip data sample`, on
2 processes (gloo, float64) under `dip` and `1f1b`, equal to one-process training of the same samples;
a bring-your-own factory; bad samples skipped and counted, or a clear error under --strict before any
rank starts; a corrupt image found while loading; --save-hf written back and loaded by transformers;
the schedule comparisons on a checkpoint and its data."""

from __future__ import annotations

import json
import os

import pytest
import torch

from dip.cli.main import main
from dip.data.sample_data import write_t2v_sample, write_vlm_sample
from dip.integrations.init_model import init_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOL = 1e-9
EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A tiny Qwen2-VL, a tiny Wan pair and their sample datasets (24 conversations, 24 clips)."""
    root = str(tmp_path_factory.mktemp("train-models"))
    init_model("qwen2-vl", out=os.path.join(root, "qwen2-vl"), seed=0)
    init_model("wan", out=os.path.join(root, "wan"), seed=0)
    write_vlm_sample(os.path.join(root, "vlm-data"), samples=24, seed=0)
    write_t2v_sample(os.path.join(root, "t2v-data"), samples=24, seed=0)
    return root


def _paths(root: str) -> dict[str, str]:
    return {
        "qwen": os.path.join(root, "qwen2-vl"),
        "wan": os.path.join(root, "wan"),
        "vlm": os.path.join(root, "vlm-data", "data.jsonl"),
        "t2v": os.path.join(root, "t2v-data", "captions.jsonl"),
    }


def dip_train(capsys, *argv) -> tuple[int, dict | None, str]:
    """``dip train ARGV --json``: (exit code, the JSON object or None, stderr)."""
    rc = main(["train", *map(str, argv), "--json"])
    out = capsys.readouterr()
    return rc, (json.loads(out.out) if rc == 0 else None), out.err


def _check_exact(out: dict, steps: int) -> None:
    tag = (out["model"], out["schedule"])
    assert len(out["steps"]) == steps, tag
    assert out["max_grad_rel_err"] <= TOL, (tag, out["max_grad_rel_err"], out["worst"])
    assert out["max_loss_abs_err"] <= TOL, (tag, out["max_loss_abs_err"])
    assert out["max_param_rel_err"] <= TOL, (tag, out["max_param_rel_err"], out["worst"])
    assert all(s["samples"] > 0 for s in out["steps"]), tag
    loads = out["data"]["loaded_per_rank"]
    assert all(r["direct"] == {} for r in loads), loads  # every tensor came through the data loader


def _broken_copy(root: str, data: str) -> str:
    """The VLM rows in another folder plus a row whose image is missing and a malformed line."""
    path = os.path.join(root, "elsewhere", "broken.jsonl")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    missing = {
        "id": "missing-1",
        "image": os.path.join(os.path.dirname(data), "no-such-image.png"),
        "conversations": [{"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": "Nothing."}],
    }
    with open(path, "w") as f:
        f.writelines(open(data))
        f.write(json.dumps(missing) + "\n")
        f.write("{not json\n")
    return path


@pytest.mark.multiproc
@pytest.mark.timeout(600)
def test_qwen2_vl_checkpoint_trains_exactly_and_saves_a_loadable_checkpoint(root, capsys, tmp_path):
    from transformers import AutoModelForImageTextToText

    p = _paths(root)
    saved = tmp_path / "trained"
    common = ["--model", p["qwen"], "--nproc", 2, "--dtype", "float64", "--check-reference"]
    common += ["--microbatches", 2, "--context-length", 512]
    rc, out, err = dip_train(capsys, *common, "--data", p["vlm"], "--schedule", "dip", "--steps", 3, "--save-hf", saved)
    assert rc == 0, err
    _check_exact(out, 3)
    assert any(s["images"] > 0 for s in out["steps"]) and out["skipped_samples"] == 0
    loads = out["data"]["loaded_per_rank"]
    assert loads[0]["loader"]["image"] > 0 and "image" not in loads[1]["loader"]  # only the patch embedding's rank
    assert out["saved_checkpoint"] == str(saved) and not [f for f in os.listdir(tmp_path) if f.startswith(".")]

    a = AutoModelForImageTextToText.from_pretrained(p["qwen"], dtype=torch.float64)
    b = AutoModelForImageTextToText.from_pretrained(str(saved), dtype=torch.float64)
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert pa.keys() == pb.keys()
    changed = sum(not torch.equal(pa[k], pb[k]) for k in pa)
    assert changed >= len(pa) // 2 and all(torch.isfinite(v).all() for v in pb.values())
    assert torch.equal(b.lm_head.weight, b.model.language_model.embed_tokens.weight)  # still tied

    # 1F1B on rows copied elsewhere with a missing image and a malformed line: skipped, counted, exact
    broken = _broken_copy(root, p["vlm"])
    rc, out, err = dip_train(capsys, *common, "--data", broken, "--schedule", "1f1b", "--steps", 2)
    assert rc == 0, err
    _check_exact(out, 2)
    assert out["skipped_samples"] == 2
    assert out["data"]["skipped_by_kind"] == {"missing_image": 1, "malformed": 1}
    assert out["data"]["samples"] == 24


@pytest.mark.multiproc
@pytest.mark.timeout(600)
@pytest.mark.parametrize("schedule", ["dip", "1f1b"])
def test_wan_pipeline_trains_exactly(root, capsys, schedule):
    p = _paths(root)
    rc, out, err = dip_train(
        capsys,
        *("--model", p["wan"], "--data", p["t2v"], "--nproc", 2, "--schedule", schedule, "--steps", 2),
        *("--microbatches", 2, "--dtype", "float64", "--check-reference"),
    )
    assert rc == 0, err
    _check_exact(out, 2)
    assert len({s["loss"] for s in out["steps"]}) == 2  # consecutive batches: new samples every step
    loads = out["data"]["loaded_per_rank"]
    assert sum(r["loader"].get("latents", 0) for r in loads) > 0
    texts = sum(r["loader"].get("text", 0) for r in loads)  # the text encoder's first chunk: once a sample a step
    assert 0 < texts <= sum(s["samples"] for s in out["steps"])


@pytest.mark.multiproc
@pytest.mark.timeout(300)
def test_a_byo_factory_trains_through_dip_train(capsys):
    rc, out, err = dip_train(
        capsys,
        *("--model", os.path.join(EXAMPLES, "byo_model.py") + ":mixer_model", "--nproc", 2, "--schedule", "dip"),
        *("--steps", 2, "--microbatches", 4, "--check-reference"),
    )
    assert rc == 0, err
    assert out["model"] == "byo-mixer" and out["dtype"] == "float64"
    assert out["max_grad_rel_err"] <= TOL and out["max_param_rel_err"] <= TOL
    assert all(s["samples"] > 0 for s in out["steps"]) and out["skipped_samples"] == 0


@pytest.mark.multiproc
@pytest.mark.timeout(300)
def test_an_image_that_does_not_decode_is_an_error_naming_file_and_line(root, capsys, tmp_path):
    p = _paths(root)
    rows = [json.loads(line) for line in open(p["vlm"])]
    row = next(r for r in rows if isinstance(r.get("image"), str) and r["image"].endswith(".png"))  # one image
    cut = tmp_path / "cut.png"
    cut.write_bytes(open(row["image"], "rb").read()[:200])  # the header reads, the pixels do not
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps(dict(row, image=str(cut), id="cut")) + "\n")
    rc, _, err = dip_train(capsys, "--model", p["qwen"], "--data", data, "--nproc", 2, "--steps", 1)
    assert rc == 2 and "Traceback" not in err
    assert "data.jsonl:1" in err and "cut.png" in err and "cannot be decoded" in err
    assert len(err.strip().splitlines()) == 1


def test_strict_stops_before_any_rank_starts(root, capsys, monkeypatch):
    import dip.runtime.launch

    def no_ranks(*args, **kwargs):
        raise AssertionError("a rank was started")

    monkeypatch.setattr(dip.runtime.launch, "launch", no_ranks)
    p = _paths(root)
    broken = _broken_copy(root, p["vlm"])
    rc, _, err = dip_train(capsys, "--model", p["qwen"], "--data", broken, "--nproc", 2, "--steps", 1, "--strict")
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "broken.jsonl:25" in err and "no-such-image" in err


@pytest.mark.parametrize(
    "case,expected",
    [
        ("missing-folder", "does not exist"),
        ("unknown-family", "model_type 'llama'"),
        ("no-data", "--data"),
        ("data-for-preset", "generated data"),
        ("missing-data", "does not exist"),
        ("save-hf-preset", "no checkpoint format"),
        ("save-hf-not-empty", "not empty"),
        ("context-too-long", "context-length"),
        ("wrong-data-kind", "no usable sample"),
    ],
)
def test_bad_inputs_are_one_line_errors_before_any_rank_starts(root, capsys, monkeypatch, tmp_path, case, expected):
    import dip.runtime.launch

    monkeypatch.setattr(dip.runtime.launch, "launch", lambda *a, **k: pytest.fail("a rank was started"))
    p = _paths(root)
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama"}))
    args = {
        "missing-folder": ["--model", str(tmp_path / "no-such-model") + os.sep],
        "unknown-family": ["--model", llama],
        "no-data": ["--model", p["qwen"]],
        "data-for-preset": ["--model", "tiny-vlm", "--data", p["vlm"]],
        "missing-data": ["--model", p["qwen"], "--data", tmp_path / "none.jsonl"],
        "save-hf-preset": ["--model", "tiny-vlm", "--save-hf", tmp_path / "out"],
        "save-hf-not-empty": ["--model", p["qwen"], "--data", p["vlm"], "--save-hf", llama],
        "context-too-long": ["--model", p["qwen"], "--data", p["vlm"], "--context-length", 10**6],
        "wrong-data-kind": ["--model", p["wan"], "--data", p["vlm"]],
    }[case]
    rc, _, err = dip_train(capsys, *args, "--nproc", 2, "--steps", 1)
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert expected in err, err


@pytest.mark.multiproc
@pytest.mark.timeout(300)
def test_schedule_comparison_on_a_checkpoint_and_its_data(root):
    from dip.bench.compare import compare_schedules

    p = _paths(root)
    got = compare_schedules(p["wan"], ["dip", "1f1b"], steps=1, microbatches=2, repeats=1, data=p["t2v"], timeout_s=60)
    for schedule in ("dip", "1f1b"):
        assert len(got[schedule]["measured"]) == 1 and got[schedule]["measured"][0] > 0
