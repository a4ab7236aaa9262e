"""Exact gradients of the integrated models: one DIP step of the tiny Qwen2-VL and the tiny Wan pair,
all chunks on one rank and on two processes (gloo), in float64, under a DIP-like separated plan with
vision / clip sub-microbatches and under a 1F1B plan, equal to the plain transformers / diffusers
models on the same samples (relative error <= 1e-9)."""

from __future__ import annotations

import pytest
import torch

from dip.runtime.spawn import spawn
from dip.runtime.step import StepRunner
from dip.schedule.baselines.one_f_one_b import one_f_one_b_order
from dip.schedule.baselines.plans import mixed_plan
from hf_fixtures import hf_vlm_reference, hf_wan_reference, make_t2v, make_vlm, max_rel_err, provider_and_batch
from runtime_helpers import run_local_step, separated_plan

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TOL = 1e-9


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("hf"))


def _vlm(root, pp=1):
    ckpt, data = make_vlm(root)
    return (ckpt,) + provider_and_batch(ckpt, data, first=9, context=420, pp=pp)


def _t2v(root, pp=1):
    ckpt, data = make_t2v(root)
    return (ckpt,) + provider_and_batch(ckpt, data, first=5, context=512, max_clips=3, pp=pp)


def _plan(model, batch, kind: str, pp: int):
    if kind == "1f1b":
        return mixed_plan(model.spec, batch, one_f_one_b_order, "1f1b")
    first, second = [m.name for m in model.spec.modules]
    layers = {m.name: m.layers for m in model.spec.modules}
    layouts = {n: [(0, layers[n] // 2), (layers[n] // 2, layers[n])] for n in (first, second)}
    placement = {n: [0, pp - 1] for n in (first, second)}
    return separated_plan(model.spec, batch, layouts, placement, pp=pp, sub_microbatch_sizes={first: 2, second: 2})


@pytest.mark.parametrize("kind", ["dip", "1f1b"])
def test_qwen2_vl_one_rank_matches_transformers(root, kind):
    ckpt, model, ds, batch = _vlm(root)
    assert len(batch) >= 2 and any(mb.images >= 3 for mb in batch.microbatches)
    plan = _plan(model, batch, kind, 1)
    if kind == "dip":
        assert len(plan.units["vision"]) > len(batch)  # image sub-microbatches
    loss, grads, _ = run_local_step(model, plan, batch, step_seed=1)
    ref_loss, ref = hf_vlm_reference(ckpt, ds, batch)
    assert abs(loss - ref_loss) <= TOL * abs(ref_loss)
    err, where = max_rel_err(model, grads, ref)
    assert err <= TOL, (err, where)


@pytest.mark.parametrize("kind", ["dip", "1f1b"])
def test_wan_one_rank_matches_diffusers(root, kind):
    ckpt, model, ds, batch = _t2v(root)
    plan = _plan(model, batch, kind, 1)
    loss, grads, _ = run_local_step(model, plan, batch, step_seed=4)
    ref_loss, ref = hf_wan_reference(ckpt, ds, batch, model.shift, step_seed=4)
    assert abs(loss - ref_loss) <= TOL * abs(ref_loss)
    err, where = max_rel_err(model, grads, ref)
    assert err <= TOL, (err, where)


def _two_rank_step(rank: int, world: int, family: str, kind: str, root: str):
    import torch.distributed as dist

    from dip.runtime.ties import TiedGradients

    dist.init_process_group("gloo", init_method="env://")
    torch.set_num_threads(1)
    _, model, _, batch = (_vlm if family == "vlm" else _t2v)(root, pp=2)
    plan = _plan(model, batch, kind, 2)
    runner = StepRunner(rank, model, timeout_s=60)
    layouts = {
        r: [(p.module, p.layer_start, p.layer_end) for c in plan.graph.rank_chunks(r) for p in c.parts]
        for r in range(2)
    }
    ties = TiedGradients.create(model, layouts, pp_rank=rank, pp=2)
    total = sum(model.loss_tokens(mb) for mb in batch.microbatches)
    res = runner.step(plan, batch, step_seed=1, loss_scale=1.0 / total)
    params = runner.named_parameters()
    ties.reduce(params, rank)
    grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone() for n, p in params.items()}
    sent = sum(1 for a in res.actions if a.action.op.is_comm)
    dist.destroy_process_group()
    return res.loss_sum / total, grads, sent


@pytest.mark.multiproc
@pytest.mark.timeout(300)
@pytest.mark.parametrize("family,kind", [("vlm", "dip"), ("vlm", "1f1b"), ("t2v", "dip"), ("t2v", "1f1b")])
def test_two_processes_match_the_plain_models(root, family, kind):
    if family == "vlm":
        ckpt, model, ds, batch = _vlm(root)  # data and metadata cache made before the ranks start
        ref_loss, ref = hf_vlm_reference(ckpt, ds, batch)
    else:
        ckpt, model, ds, batch = _t2v(root)
        ref_loss, ref = hf_wan_reference(ckpt, ds, batch, model.shift, step_seed=1)
    got = spawn(_two_rank_step, 2, family, kind, root, timeout_s=280)
    assert all(ok for ok, _ in got), got
    (l0, g0, s0), (l1, g1, s1) = [v for _, v in got]
    assert s0 > 0 and s1 > 0  # activations and gradients crossed ranks
    assert abs(l0 + l1 - ref_loss) <= TOL * abs(ref_loss)
    err, where = max_rel_err(model, {**g0, **g1}, ref)
    assert err <= TOL, (err, where)
