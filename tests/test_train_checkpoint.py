"""Checkpoints: visible only when complete (a crash mid-write leaves the previous one), pruned to the
newest K, restoring parameters, optimizer state, LR schedule and RNG exactly, loadable by another number
of data-parallel replicas, and refused for another model or pipeline layout."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.distributed as dist

from dip.errors import BadInput
from dip.runtime import checkpoint as ckpt
from dip.runtime.checkpoint import (
    META_FILE,
    Checkpointer,
    apply_train_state,
    check_resume,
    find_checkpoints,
    latest_checkpoint,
    optimizer_states,
    train_state,
)
from dip.runtime.optim import OptimizerConfig, make_optimizer, make_scheduler
from dip.runtime.spawn import spawn


def _state(params, opt, sched, rank):
    return train_state(params, optimizer_states(opt, params), sched, rank)


CFG = OptimizerConfig(lr=0.1, warmup_steps=1, min_lr=0.01, total_steps=10)


def model(seed: int, names=("a.layers.0.w", "a.post.b")) -> tuple[dict, torch.optim.Optimizer, object]:
    g = torch.Generator().manual_seed(seed)
    params = {n: torch.nn.Parameter(torch.randn(3, 2, generator=g)) for n in names}
    opt = make_optimizer(params.values(), CFG)
    return params, opt, make_scheduler(opt, CFG)


def train_steps(params, opt, sched, steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params.values():
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
        sched.step()


def _save_and_crash(rank: int, world: int, directory: str) -> list:
    dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=world)
    params, opt, sched = model(0)  # two data-parallel replicas: the same parameters on both ranks
    train_steps(params, opt, sched, 3, seed=1)
    writer = Checkpointer(directory, rank=rank, keep_last=2, timeout_s=60)
    writer.prepare()
    for step in (2, 4, 6):
        writer.save(step, _state(params, opt, sched, rank), {"model": "m", "pp": 1, "layout": [[["a", 0, 1]]]})
    seen = [s for s, _ in find_checkpoints(directory)]

    def partial_save(state, storage_writer):  # the writer dies after part of its shards
        os.makedirs(storage_writer.path, exist_ok=True)
        with open(os.path.join(storage_writer.path, f"__{rank}_0.distcp"), "wb") as f:
            f.write(b"partial")
        raise RuntimeError("killed mid-write")

    ckpt.dcp.save = partial_save
    try:
        writer.save(8, _state(params, opt, sched, rank), {"model": "m", "pp": 1})
    except RuntimeError:
        pass
    return [seen, [s for s, _ in find_checkpoints(directory)], sorted(os.listdir(directory))]


@pytest.mark.multiproc
@pytest.mark.timeout(120)
def test_a_checkpoint_appears_only_complete_and_a_crash_mid_write_keeps_the_previous_one(tmp_path):
    directory = str(tmp_path / "ckpt")
    res = spawn(_save_and_crash, 2, directory, timeout_s=90)
    assert all(ok for ok, _ in res), res
    seen, after, names = res[0][1]
    assert seen == [4, 6]  # keep_last 2 pruned step 2
    assert after == [4, 6] and "step-8" not in names and ".tmp-step-8" in names
    assert all(n.startswith(("step-", ".tmp")) for n in names)
    meta = json.loads((tmp_path / "ckpt" / "step-6" / META_FILE).read_text())
    assert meta["step"] == 6 and meta["pp"] == 1


def _restore(rank: int, world: int, directory: str, saved_world: int) -> dict:
    """Train 3 steps (replicas of one model), save, train 2 more; a fresh model loading the checkpoint and
    training the same 2 steps must end equal (every rank of a run with `world` ranks)."""
    dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=world)
    out = {}
    if world == saved_world:
        params, opt, sched = model(0)
        train_steps(params, opt, sched, 3, seed=1)
        torch.manual_seed(100 + rank)
        Checkpointer(directory, rank=rank, timeout_s=60).save(3, _state(params, opt, sched, rank), {"pp": 1})
        out["rng"] = torch.rand(2).tolist()
        train_steps(params, opt, sched, 2, seed=2)
        out["params"] = {n: p.detach().clone() for n, p in params.items()}
        out["lr"] = sched.get_last_lr()
        return out
    params, opt, sched = model(7)  # other initial values: everything must come from the checkpoint
    apply_train_state(os.path.join(directory, "step-3"), params, optimizer_states(opt, params), sched, rank)
    out["rng"] = torch.rand(2).tolist()
    out["step"] = int(opt.state[params["a.post.b"]]["step"])
    train_steps(params, opt, sched, 2, seed=2)
    out["params"] = {n: p.detach().clone() for n, p in params.items()}
    out["lr"] = sched.get_last_lr()
    return out


@pytest.mark.multiproc
@pytest.mark.timeout(200)
@pytest.mark.parametrize("load_world", [1, 3])
def test_a_checkpoint_restores_everything_exactly_with_another_number_of_replicas(tmp_path, load_world):
    directory = str(tmp_path / "ckpt")
    saved = spawn(_restore, 2, directory, 2, timeout_s=90)
    assert all(ok for ok, _ in saved), saved
    loaded = spawn(_restore, load_world, directory, 2, timeout_s=90)
    assert all(ok for ok, _ in loaded), loaded
    want = saved[0][1]
    for rank, (_, got) in enumerate(loaded):
        assert got["step"] == 3 and got["lr"] == want["lr"]
        for n, p in want["params"].items():
            assert torch.equal(got["params"][n], p), n  # bit-identical after the same two steps
        if rank < 2:  # its own RNG state came back; a rank the checkpoint never had keeps its own
            assert got["rng"] == saved[rank][1]["rng"]


def test_resuming_another_model_or_pipeline_layout_is_refused():
    meta = {"model": "tiny-vlm", "pp": 2, "layout": [[["vit", 0, 2]], [["llm", 0, 2]]]}
    check_resume(meta, "D/step-4", model="tiny-vlm", pp=2, layout=[[("vit", 0, 2)], [("llm", 0, 2)]])
    with pytest.raises(BadInput, match=r"holds a pipeline of 2 stages .* this run has pp 4"):
        check_resume(meta, "D/step-4", model="tiny-vlm", pp=4)
    with pytest.raises(BadInput, match="places the layers on the pipeline ranks"):
        check_resume(meta, "D/step-4", model="tiny-vlm", pp=2, layout=[[("vit", 0, 1)], [("vit", 1, 2), ("llm", 0, 2)]])
    with pytest.raises(BadInput, match="written by model 'tiny-vlm', not 'tiny-t2v'"):
        check_resume(meta, "D/step-4", model="tiny-t2v", pp=2)


def test_only_complete_checkpoints_are_listed(tmp_path):
    for name in ("step-3", "step-12", ".tmp-step-16", "step-x", "tmp-step-20"):
        (tmp_path / name).mkdir()
    for name in ("step-3", "step-12", ".tmp-step-16"):
        (tmp_path / name / META_FILE).write_text("{}")
    assert [s for s, _ in find_checkpoints(str(tmp_path))] == [3, 12]
    assert latest_checkpoint(str(tmp_path))[0] == 12
    assert latest_checkpoint(str(tmp_path / "missing")) is None
