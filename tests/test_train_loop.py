"""The training loop end to end on 2 processes: plans made ahead by the planner service train exactly as
inline plans do, a resumed run continues bit-identically (LR schedule, clipping, accumulation included),
resuming with fewer replicas works and another pipeline is refused, SIGTERM stops after a step with a
checkpoint, and bad loop options are one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from dip.cli.main import main
from dip.errors import BadInput
from dip.runtime.launch import launch, launch_many
from train_fixtures import check_matches_reference, train_cfg

LOOP = dict(lr=2e-3, warmup_steps=1, min_lr=5e-4, grad_clip=0.5, grad_accum=2)


@pytest.mark.multiproc
@pytest.mark.timeout(400)
def test_planned_ahead_or_inline_the_same_training_and_the_reference_agrees(tmp_path):
    inline, ahead = launch_many(
        [
            train_cfg("tiny-vlm", "dip", **LOOP),
            train_cfg("tiny-vlm", "dip", async_planner=True, deterministic=True, **LOOP),
        ]
    )
    for out in (inline, ahead):
        check_matches_reference(out)  # schedule, clipping and two passes per step, like single-process training
        assert out["grad_accum"] == 2 and out["steps"][0]["microbatches"] == 8
        assert out["fallback_steps"] == 0 and all(s["plan_source"] == "searched" for s in out["steps"])
    assert [s["loss"] for s in ahead["steps"]] == [s["loss"] for s in inline["steps"]]
    lrs = [s["lr"] for s in inline["steps"]]
    assert lrs[0] == pytest.approx(2e-3) and lrs[-1] == pytest.approx(5e-4)
    assert ahead["planner"]["mode"] == "service" and ahead["planner"]["restarts"] == 0
    assert all(s["grad_norm"] > 0 and s["plan_wait_s"] >= 0 for s in ahead["steps"])


@pytest.mark.multiproc
@pytest.mark.timeout(500)
def test_a_resumed_run_reproduces_the_uninterrupted_losses_bit_for_bit(tmp_path):
    full_dir, resumed_dir = tmp_path / "full", tmp_path / "resumed"
    common = dict(steps=4, check_reference=False, async_planner=True, deterministic=True, **LOOP)
    full = launch(train_cfg("tiny-vlm", "dip", checkpoint_dir=str(full_dir), checkpoint_every=2, **common))
    assert sorted(os.listdir(full_dir)) == ["step-2", "step-4"]
    shutil.copytree(full_dir / "step-2", resumed_dir / "step-2")
    metrics = tmp_path / "metrics.jsonl"
    resumed = launch(
        train_cfg("tiny-vlm", "dip", checkpoint_dir=str(resumed_dir), resume=True, metrics=str(metrics), **common)
    )
    assert resumed["resumed_from_step"] == 2 and [s["step"] for s in resumed["steps"]] == [2, 3]
    want = {s["step"]: (s["loss"], s["lr"], s["grad_norm"]) for s in full["steps"]}
    assert {s["step"]: (s["loss"], s["lr"], s["grad_norm"]) for s in resumed["steps"]} == {k: want[k] for k in (2, 3)}
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 3] and all("tokens_per_s" in r and "plan_wait_s" in r for r in rows)
    assert sorted(os.listdir(resumed_dir)) == ["step-2", "step-4"]  # the end of the run is checkpointed


@pytest.mark.multiproc
@pytest.mark.timeout(500)
def test_resuming_with_fewer_replicas_works_and_another_pipeline_is_refused(tmp_path):
    ckpt = str(tmp_path / "ckpt")
    first = launch(train_cfg("tiny-vlm", "1f1b", 4, pp=2, dp=2, steps=1, check_reference=False, checkpoint_dir=ckpt))
    assert first["dp"] == 2 and os.listdir(ckpt) == ["step-1"]
    again = launch(
        train_cfg("tiny-vlm", "1f1b", 2, pp=2, dp=1, steps=2, check_reference=False, checkpoint_dir=ckpt, resume=True)
    )
    assert again["resumed_from_step"] == 1 and [s["step"] for s in again["steps"]] == [1]
    with pytest.raises(BadInput, match=r"holds a pipeline of 2 stages .* this run has pp 1"):
        launch(train_cfg("tiny-vlm", "1f1b", 1, pp=1, steps=3, check_reference=False, checkpoint_dir=ckpt, resume=True))


@pytest.mark.multiproc
@pytest.mark.timeout(500)
@pytest.mark.parametrize("sharding", [dict(pp=1, dp=2), dict(pp=1, dp=1, tp=2)], ids=["zero1-dp2", "tp2"])
def test_sharded_optimizer_state_resumes_bit_for_bit(tmp_path, sharding):
    """ZeRO-1's main shards (DTensors over dp) and tensor-parallel AdamW moments (DTensors over tp) are
    written by DCP and loaded back in place: the resumed steps equal the uninterrupted ones."""
    full_dir, resumed_dir = tmp_path / "full", tmp_path / "resumed"
    common = dict(steps=3, check_reference=False, **LOOP, **sharding)
    full = launch(train_cfg("tiny-vlm", "1f1b", checkpoint_dir=str(full_dir), checkpoint_every=1, **common))
    assert full["optimizer_sharding"] == ("zero1" if sharding["dp"] == 2 else "none")
    assert full["tp"] == sharding.get("tp", 1)
    shutil.copytree(full_dir / "step-1", resumed_dir / "step-1")
    resumed = launch(train_cfg("tiny-vlm", "1f1b", checkpoint_dir=str(resumed_dir), resume=True, **common))
    assert resumed["resumed_from_step"] == 1
    want = {s["step"]: (s["loss"], s["lr"], s["grad_norm"]) for s in full["steps"]}
    assert {s["step"]: (s["loss"], s["lr"], s["grad_norm"]) for s in resumed["steps"]} == {k: want[k] for k in (1, 2)}


@pytest.mark.multiproc
@pytest.mark.timeout(400)
def test_a_tensor_parallel_checkpoint_resumes_without_tensor_parallelism(tmp_path):
    """DCP reshards the TP 2 DTensors (parameters and AdamW moments) into whole tensors on one rank."""
    full_dir, ckpt = tmp_path / "full", tmp_path / "ckpt"
    common = dict(steps=3, check_reference=False, **LOOP)
    full = launch(
        train_cfg("tiny-vlm", "1f1b", 2, tp=2, pp=1, checkpoint_dir=str(full_dir), checkpoint_every=1, **common)
    )
    shutil.copytree(full_dir / "step-2", ckpt / "step-2")
    resumed = launch(train_cfg("tiny-vlm", "1f1b", 1, pp=1, checkpoint_dir=str(ckpt), resume=True, **common))
    assert resumed["resumed_from_step"] == 2 and resumed["tp"] == 1
    want, got = full["steps"][2], resumed["steps"][0]
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-12)  # float64: TP sums in another order
    assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-9)


@pytest.mark.multiproc
@pytest.mark.timeout(300)
def test_sigterm_finishes_the_step_writes_a_checkpoint_and_exits_0(tmp_path):
    dip = os.path.join(os.path.dirname(sys.executable), "dip")
    ckpt = tmp_path / "ckpt"
    cmd = [dip, "train", "--model", "tiny-vlm", "--nproc", "2", "--schedule", "1f1b", "--steps", "500"]
    cmd += ["--microbatches", "4", "--checkpoint-dir", str(ckpt), "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        seen = []
        while len(seen) < 2:  # two progress lines: the run is training
            line = proc.stderr.readline()
            assert line, "the run ended before training"
            if line.startswith("step "):
                seen.append(line)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0
    report = json.loads(out)
    done = len(report["steps"])
    assert report["stopped_by"] == "SIGTERM" and report["stopped_at_step"] == done < 500
    assert os.listdir(ckpt) == [f"step-{done}"]
    assert "| loss " in seen[0] and "tok/s" in seen[0]


@pytest.mark.parametrize(
    "extra,words",
    [
        (["--resume"], ["--resume needs --checkpoint-dir"]),
        (["--checkpoint-every", "0", "--checkpoint-dir", "D"], ["checkpoint-every must be an integer >= 1"]),
        (["--inject-fault", "planner-crash"], ["unknown inject-fault", "rank-exit:RANK:STEP"]),
        (["--inject-fault", "rank-exit:5:1"], ["RANK must be below the 2 processes"]),
        (["--grad-accum", "0"], ["grad-accum must be an integer >= 1"]),
        (["--lr", "0"], ["lr must be a finite number > 0"]),
        (["--min-lr", "0.5"], ["min-lr must be <= lr"]),
        (["--plan-deadline-s", "-1"], ["plan-deadline-s must be a finite number >= 0"]),
        (["--planner-workers", "0"], ["planner-workers must be an integer >= 1"]),
        (["--mixed-precision", "bf16", "--dtype", "float64"], ["needs --dtype float32"]),
        (["--check-reference", "--resume", "--checkpoint-dir", "D"], ["cannot follow --resume"]),
    ],
)
def test_bad_loop_options_are_one_line_errors(tmp_path, capsys, extra, words):
    extra = [str(tmp_path / "D") if a == "D" else a for a in extra]
    code = main(["train", "--model", "tiny-vlm", "--nproc", "2", "--schedule", "1f1b", *extra])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, (w, err)


def test_resuming_a_checkpoint_of_another_pipeline_fails_before_any_rank_starts(tmp_path, capsys):
    step = tmp_path / "ckpt" / "step-4"
    step.mkdir(parents=True)
    (step / "dip-checkpoint.json").write_text(json.dumps({"model": "tiny-vlm", "pp": 2, "step": 4}))
    t0 = time.monotonic()
    args = ["train", "--model", "tiny-vlm", "--nproc", "1", "--schedule", "1f1b", "--resume"]
    assert main([*args, "--checkpoint-dir", str(tmp_path / "ckpt")]) == 2
    err = capsys.readouterr().err
    assert "pipeline of 2 stages" in err and "pp 1" in err and len(err.strip().splitlines()) == 1
    assert time.monotonic() - t0 < 60
