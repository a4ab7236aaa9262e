"""Pipelined training against single-process training, for every schedule, on 2 and 4 processes.

Each process group runs several trainings back to back (``launch_many``), every one over 3 steps whose
batches differ (image counts, text lengths, a text-only micro-batch, clip counts)."""

from __future__ import annotations

import os
import sys

import pytest

from dip.cli.main import main
from dip.runtime.affinity import core_slices
from dip.runtime.launch import RankFailed, launch, launch_many
from train_fixtures import T2V_SCHEDULES, VLM_SCHEDULES, check_matches_reference, train_cfg

_cfg = train_cfg
_check = check_matches_reference


@pytest.mark.multiproc
@pytest.mark.timeout(420)
def test_every_schedule_matches_single_process_training_on_two_processes(tmp_path):
    trace = tmp_path / "trace.json"
    cfgs = [_cfg("tiny-vlm", s) for s in VLM_SCHEDULES] + [_cfg("tiny-t2v", s) for s in T2V_SCHEDULES]
    cfgs[-1].trace = str(trace)
    for out in launch_many(cfgs):
        _check(out)
    assert trace.stat().st_size > 0


@pytest.mark.multiproc
@pytest.mark.timeout(300)
def test_four_processes_pipeline_by_data_parallel_and_deep_pipeline():
    outs = launch_many([_cfg("tiny-vlm", "dip", 4, pp=2, dp=2), _cfg("tiny-t2v", "1f1b", 4, pp=4, dp=1, steps=2)])
    _check(outs[0])
    _check(outs[1], steps=2)
    assert (outs[0]["pp"], outs[0]["dp"], outs[1]["pp"]) == (2, 2, 4)
    assert outs[0]["steps"][0]["microbatches"] == 8  # two replicas of 4


@pytest.mark.multiproc
@pytest.mark.timeout(200)
def test_float32_gradients_are_allclose_to_the_reference():
    out = launch(_cfg("tiny-vlm", "dip", dtype="float32", steps=2))
    assert out["max_grad_allclose_ratio"] <= 1.0, (out["max_grad_allclose_ratio"], out["worst"])
    assert out["max_loss_abs_err"] <= 1e-5
    # default core binding: rank 0 runs on the first slice of the cores (when every rank gets one)
    slices = core_slices(os.sched_getaffinity(0), 2) if hasattr(os, "sched_getaffinity") else None
    assert out["bind_cores"] == "auto"
    assert out["rank0_cores"] == (list(slices[0]) if slices else None)


@pytest.mark.multiproc
@pytest.mark.timeout(60)
def test_a_dying_rank_stops_the_others_and_is_named(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(
        "import os, sys, time\n"
        "if os.environ['RANK'] == '1':\n"
        "    sys.stderr.write('boom on purpose\\n'); sys.exit(3)\n"
        "time.sleep(60)\n"
    )
    with pytest.raises(RankFailed, match=r"rank 1.*boom on purpose"):
        launch(_cfg("tiny-vlm", "1f1b"), worker=[sys.executable, str(script)])


def test_bad_inputs_are_one_line_errors(capsys):
    assert main(["train", "--model", "tiny-vlm", "--nproc", "64", "--schedule", "1f1b", "--json"]) == 2
    err = capsys.readouterr().err
    assert "nproc" in err and len(err.strip().splitlines()) == 1
    assert main(["train", "--model", "tiny-vlm", "--nproc", "2", "--schedule", "zigzag", "--json"]) == 2
    err = capsys.readouterr().err
    assert "1f1b" in err and "gpipe" in err and "zigzag" in err
    assert main(["train", "--model", "tiny-t2v", "--nproc", "2", "--schedule", "optimus"]) == 2
    assert main(["train", "--model", "tiny-vlm", "--nproc", "4", "--pp", "3"]) == 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["train", "--model", "tiny-vlm", "--bind-cores", "sometimes"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--bind-cores" in err and "auto" in err and "off" in err


def test_backend_choice_follows_gpus_per_rank():
    from dip.errors import BadInput
    from dip.runtime.trainer import choose_backend

    assert choose_backend(0, 2) == "gloo"  # CPU
    assert choose_backend(1, 2) == "gloo"  # two ranks share one GPU: NCCL would refuse
    assert choose_backend(4, 4) == "nccl"
    assert choose_backend(4, 4, "gloo") == "gloo"
    with pytest.raises(BadInput, match="DIP_BACKEND"):
        choose_backend(4, 4, "mpi")
    with pytest.raises(BadInput, match="needs a CUDA device"):
        choose_backend(0, 2, "nccl")
