"""The executor on hand-made plans: local hand-offs, split backward, handler overrides, timeouts."""

from __future__ import annotations

import pytest
import torch

from dip.data.meta import BatchMeta, MicroBatchMeta
from dip.runtime.spawn import spawn
from dip.schedule.ir import Plan, actions, order_from_text
from dip.schedule.lowering import split_bw
from dip.schedule.program import Program
from dip.spec.presets import get_model
from model_fixtures import random_batch
from runtime_helpers import reference_grads, run_local_step, separated_plan


def _vlm(pp: int = 1):
    return get_model("tiny-vlm").with_parallel(pp=pp)


def _batch(model, seed: int = 3, microbatches: int = 3, text_only: bool = True) -> BatchMeta:
    b = random_batch(model, seed, microbatches)
    if model.is_vlm and text_only:  # a text-only micro-batch as well
        mbs = list(b.microbatches)
        mbs[-1] = MicroBatchMeta(mbs[-1].text_lens, (0,) * len(mbs[-1].text_lens))
        b = BatchMeta(tuple(mbs))
    return b


def _assert_matches(loss, grads, ref_loss, ref_grads, tol: float = 1e-10):
    assert abs(loss - ref_loss) <= tol
    assert set(grads) == set(ref_grads)
    for name, g in grads.items():
        r = ref_grads[name]
        err = float((g - r).abs().max() / (r.abs().max() + 1e-6))
        assert err <= tol, f"{name}: {err}"


def test_same_rank_chunks_hand_over_locally_and_match_the_reference():
    model = _vlm()
    batch = _batch(model)
    plan = separated_plan(
        model,
        batch,
        {"vit": [(0, 3), (3, 8)], "llm": [(0, 5), (5, 8)]},
        {"vit": [0, 0], "llm": [0, 0]},
        pp=1,
        sub_microbatch_sizes={"vit": 1},
    )
    assert len(plan.units["vit"]) > len(batch)  # ViT sub-microbatches fan in to the LM
    loss, grads, res = run_local_step(model, plan, batch)
    assert not any(a.action.op.is_comm for a in res.actions)  # nothing was sent
    _assert_matches(loss, grads, *reference_grads(model, batch))


def test_split_backward_matches_full_backward():
    model = get_model("tiny-t2v").with_parallel(pp=1)
    batch = _batch(model, seed=5, microbatches=2)
    plan = separated_plan(
        model,
        batch,
        {"llm": [(0, 4), (4, 8)], "dit": [(0, 8)]},
        {"llm": [0, 0], "dit": [0]},
        pp=1,
        sub_microbatch_sizes={"dit": 1},
    )
    split = Plan(plan.graph, plan.units, plan.flows, split_bw(plan.order), schedule="split")
    assert split.split_backward()
    loss, grads, res = run_local_step(model, split, batch)
    assert {a.action.op.value for a in res.actions} >= {"I", "W"}
    _assert_matches(loss, grads, *reference_grads(model, batch))


def test_memory_strategies_recompute_without_changing_the_math():
    model = _vlm()
    batch = _batch(model, seed=7, microbatches=2)
    plan = separated_plan(model, batch, {"vit": [(0, 8)], "llm": [(0, 8)]}, {"vit": [0], "llm": [0]}, pp=1)
    plan.strategies = {
        (c.id, u.index): ("full", "selective", "none", "offload") * 2
        for c in plan.graph.chunks
        for u in plan.units[c.group]
    }
    loss, grads, _ = run_local_step(model, plan, batch)
    _assert_matches(loss, grads, *reference_grads(model, batch))


def test_handlers_can_be_overridden():
    from dip.runtime.handlers import forward

    model = _vlm()
    batch = _batch(model, seed=9, microbatches=2)
    plan = separated_plan(model, batch, {"vit": [(0, 8)], "llm": [(0, 8)]}, {"vit": [0], "llm": [0]}, pp=1)
    seen = []

    def counting_forward(action, ctx):
        seen.append(str(action))
        forward(action, ctx)

    loss, grads, _ = run_local_step(model, plan, batch, handlers={"F": counting_forward})
    assert seen == [str(a) for a in plan.order[0] if a.op.value == "F"]
    _assert_matches(loss, grads, *reference_grads(model, batch))


# --------------------------------------------------------------------------- two processes


def _v_placement_rank(rank: int, world: int, mode: str = "world"):
    """ViT on ranks 0 -> 1, LM on ranks 1 -> 0: the ViT -> LM channel is a local hand-off on rank 1.
    ``mode``: ``world`` (default group), ``subgroup`` (transfers on a group of their own, posted with
    group ranks) or ``poster`` (batches issued by the background thread)."""
    import torch.distributed as dist

    from dip.runtime.executor import Executor
    from dip.runtime.models import SpecModel
    from dip.runtime.stage import StageChunk
    from dip.schedule.lowering import add_send_recv
    from dip.schedule.validate import validate_program

    dist.init_process_group("gloo", init_method="env://")
    model = _vlm(pp=2)
    batch = _batch(model, seed=11)
    plan = separated_plan(
        model,
        batch,
        {"vit": [(0, 4), (4, 8)], "llm": [(0, 4), (4, 8)]},
        {"vit": [0, 1], "llm": [1, 0]},
        pp=2,
        sub_microbatch_sizes={"vit": 1},
    )
    program = add_send_recv(plan)
    validate_program(plan, program)
    provider = SpecModel(model, 0, "float64")
    stages = {c.id: StageChunk(c, provider) for c in plan.graph.rank_chunks(rank)}
    total = sum(provider.loss_tokens(mb) for mb in batch.microbatches)
    group = dist.new_group([0, 1]) if mode == "subgroup" else None
    ex = Executor(rank, provider, stages, timeout_s=30, group=group, post_in_background=mode == "poster")
    res = ex.run_step(ex.prepare(plan, program, batch), step_seed=1, loss_scale=1.0 / total)
    grads = {n: p.grad.clone() for s in stages.values() for n, p in s.canonical_named_parameters()}
    sent = [str(a.action) for a in res.actions if a.action.op.is_comm]
    dist.destroy_process_group()
    return res.loss_sum / total, grads, sent, total


@pytest.mark.multiproc
@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["world", "subgroup", "poster"])
def test_cross_module_hand_off_on_one_rank_of_a_v_placement(mode):
    got = spawn(_v_placement_rank, 2, mode, timeout_s=100)
    assert all(ok for ok, _ in got), got
    (l0, g0, _sent0, _), (l1, g1, sent1, _) = [v for _, v in got]
    # vit chunk 1 (rank 1) feeds llm chunk 2 (rank 1) locally: no message between them
    assert not any(":2." in a for a in sent1 if a.startswith("1SEND_F")), sent1
    model = _vlm(pp=2)
    ref_loss, ref_grads = reference_grads(model, _batch(model, seed=11))
    _assert_matches(l0 + l1, {**g0, **g1}, ref_loss, ref_grads)


def _unmatched_recv_rank(rank: int, world: int):
    import torch.distributed as dist

    from dip.runtime.executor import Executor
    from dip.runtime.models import SpecModel
    from dip.runtime.stage import StageChunk

    dist.init_process_group("gloo", init_method="env://")
    model = _vlm(pp=2)
    batch = _batch(model, seed=13, microbatches=1, text_only=False)
    plan = separated_plan(model, batch, {"vit": [(0, 8)], "llm": [(0, 8)]}, {"vit": [0], "llm": [1]}, pp=2)
    # rank 0 "forgets" to send the ViT output: rank 1's RECV is never matched
    acts = {0: [a for a in _lowered(plan).actions[0] if a.op.value != "SEND_F"], 1: _lowered(plan).actions[1]}
    program = Program.build(plan.graph, acts)
    provider = SpecModel(model, 0, "float64")
    stages = {c.id: StageChunk(c, provider) for c in plan.graph.rank_chunks(rank)}
    try:
        ex = Executor(rank, provider, stages, timeout_s=2)
        ex.run_step(ex.prepare(plan, program, batch), step_seed=1, loss_scale=1.0)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def _lowered(plan):
    from dip.schedule.lowering import add_send_recv

    return add_send_recv(plan)


@pytest.mark.multiproc
@pytest.mark.timeout(120)
def test_an_unmatched_receive_times_out_naming_rank_action_and_peer():
    got = spawn(_unmatched_recv_rank, 2, timeout_s=60)
    ok, msg = got[1]
    assert ok, msg
    assert msg.startswith("CommTimeout"), msg
    assert "rank 1" in msg and "1RECV_F0:0.0" in msg and "peer rank 0" in msg, msg


def test_action_text_fixtures_parse():
    assert [str(a) for a in actions("1RECV_F0:0.0 1F0")] == ["1RECV_F0:0.0", "1F0"]
    assert order_from_text({0: "0F0 0B0"})[0][1].op.value == "B"
    assert torch.get_default_dtype() == torch.float32
