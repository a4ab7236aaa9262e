"""Baseline schedules: closed forms, Megatron's interleaved order, partitions, real-model plans."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dip.cost import CostModel
from dip.data.workload import generate_batches
from dip.errors import BadInput
from dip.planner.schedules import plan_schedule
from dip.schedule.baselines import SCHEDULES, build_uniform_plan, get_generator
from dip.schedule.baselines.interleaved import default_group, schedule_table
from dip.schedule.baselines.memory import rule_ladder
from dip.schedule.baselines.weights import representative_layer_weights
from dip.schedule.deps import DependencyIndex
from dip.schedule.ir import Op
from dip.schedule.partition import (
    linear_partition,
    mixed_partition,
    model_layers,
    param_weights,
    separated_even_partition,
)
from dip.sim import simulate, uniform_stage_costs
from dip.spec.hardware import get_hardware
from dip.spec.presets import get_model
from dip.spec.validate import with_overrides

PPS = (2, 4, 8)
MS = (4, 8, 16, 32)


def run_uniform(name: str, pp: int, m: int, v: int = 1, costs=(1.0, 1.0, 1.0)):
    plan = build_uniform_plan(name, pp, m, v)
    result = simulate(plan, uniform_stage_costs(plan.graph, plan.units, *costs))
    assert result.ok, result.status
    return plan, result


def assert_complete(plan) -> None:
    """Every expected compute action exactly once, nothing else."""
    keys = [(a.chunk, a.op, a.unit) for acts in plan.order.values() for a in acts]
    counts = Counter(keys)
    assert all(n == 1 for n in counts.values()), [k for k, n in counts.items() if n > 1][:5]
    assert set(counts) == DependencyIndex.of_plan(plan).expected_keys()
    for rank, acts in plan.order.items():
        assert all(plan.graph.chunks[a.chunk].rank == rank for a in acts)


# -- closed forms (F = I = W = 1, free communication) -----------------------------------------------
@pytest.mark.parametrize("pp,m", list(itertools.product(PPS, MS)))
def test_closed_forms(pp: int, m: int):
    for name in ("1f1b", "gpipe"):
        _plan, r = run_uniform(name, pp, m)
        assert r.iteration_time == pytest.approx(3 * (m + pp - 1))
        acts = list(r.peak_activations)
        if name == "1f1b":
            assert acts[0] == min(pp, m)
            assert all(a <= min(pp - k, m) for k, a in enumerate(acts))
        else:
            assert acts == [m] * pp
    if m % pp == 0:
        for v in (2, 3):
            _, r = run_uniform("interleaved", pp, m, v)
            assert r.iteration_time == pytest.approx(3 * (v * m + pp - 1))
    if m >= pp:
        _, r = run_uniform("zb-h1", pp, m)
        assert r.iteration_time == pytest.approx(3 * m + pp - 1)


def test_1f1b_last_rank_has_no_off_by_one():
    plan = build_uniform_plan("1f1b", 4, 4)
    assert [str(a) for a in plan.order[3][:2]] == ["3F0", "3B0"]
    assert sorted(a.unit for a in plan.order[3] if a.op is Op.F) == [0, 1, 2, 3]


def test_zb_h1_splits_backward_and_defers_weight_passes():
    plan = build_uniform_plan("zb-h1", 4, 8)
    assert plan.split_backward()
    for rank, acts in plan.order.items():
        tail = acts[-(rank + 1) :]
        assert all(a.op is Op.W for a in tail)


# -- Megatron's interleaved order -----------------------------------------------------------------
def reference_interleaved(pp: int, m: int, v: int) -> dict[int, list[str]]:
    """Megatron's interleaved order written from its description, for ``m`` a multiple of ``pp``:
    virtual micro-batch k runs local chunk (k // pp) % v on micro-batch (k // (pp v)) pp + k % pp;
    warm-up (pp - r - 1) * 2 + (v - 1) * pp; backward k runs the mirrored local chunk."""
    total = m * v
    out = {}
    for r in range(pp):

        def mb(k):
            return (k // (pp * v)) * pp + k % pp

        def fwd(k, r=r):
            return f"{((k // pp) % v) * pp + r}F{mb(k)}"

        def bwd(k, r=r):
            return f"{(v - 1 - (k // pp) % v) * pp + r}B{mb(k)}"

        w = min((pp - r - 1) * 2 + (v - 1) * pp, total)
        acts = [fwd(k) for k in range(w)]
        for k in range(total - w):
            acts += [fwd(w + k), bwd(k)]
        acts += [bwd(k) for k in range(total - w, total)]
        out[r] = acts
    return out


@pytest.mark.parametrize("pp,m,v", [(2, 4, 2), (4, 8, 2), (4, 16, 2), (2, 8, 3), (8, 32, 3), (4, 4, 2)])
def test_interleaved_matches_reference(pp: int, m: int, v: int):
    plan = build_uniform_plan("interleaved", pp, m, v)
    assert {r: [str(a) for a in acts] for r, acts in plan.order.items()} == reference_interleaved(pp, m, v)


def test_schedule_table_last_group_holds_the_remainder():
    # Megatron's docstring example: PP2, group 3, M5, VP2
    assert [mb for mb, _ in schedule_table(5, 2, 3)] == [0, 1, 2, 0, 1, 2, 3, 4, 3, 4]
    assert [c for _, c in schedule_table(5, 2, 3)] == [0, 0, 0, 1, 1, 1, 0, 0, 1, 1]


def test_interleaved_group_size_rules():
    assert default_group(4, 16) == 4
    assert default_group(4, 10) == 5  # 10 % 4 = 2 < pp: Megatron would reject group 4
    assert 13 % default_group(4, 13) in (0,) or 13 % default_group(4, 13) >= 4
    with pytest.raises(BadInput, match="pp 4"):
        build_uniform_plan("interleaved", 4, 3, 2)


# -- properties: every schedule, random shapes --------------------------------------------------------
def uniform_supports(name: str, pp: int, m: int, v: int) -> bool:
    if name in ("1f1b", "zb-h1", "nnscaler"):
        return v == 1
    if name in ("interleaved", "megatron"):
        return v == 1 or m >= pp
    return name == "gpipe"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["gpipe", "1f1b", "interleaved", "zb-h1", "megatron", "nnscaler"]),
    st.integers(1, 8),
    st.integers(1, 3),
    st.integers(1, 24),
)
def test_uniform_plans_complete_and_deadlock_free(name: str, pp: int, v: int, m: int):
    if not uniform_supports(name, pp, m, v):
        with pytest.raises(BadInput):
            build_uniform_plan(name, pp, m, v)
        return
    plan, r = run_uniform(name, pp, m, v, costs=(1.0, 1.3, 0.7))
    assert_complete(plan)
    assert r.iteration_time >= r.lower_bound - 1e-9


_TINY = {}


def tiny(name: str, pp: int):
    key = (name, pp)
    if key not in _TINY:
        model = with_overrides(get_model(name), pp=pp)
        _TINY[key] = (model, CostModel(model, get_hardware("H800"), 1))
    return _TINY[key]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(list(SCHEDULES)),
    st.sampled_from(["tiny-vlm", "tiny-t2v"]),
    st.integers(1, 8),
    st.integers(1, 3),
    st.integers(1, 24),
    st.integers(0, 3),
)
def test_model_plans_complete_and_deadlock_free(name: str, model_name: str, pp: int, v: int, m: int, seed: int):
    model, cm = tiny(model_name, pp)
    hw = get_hardware("H800")
    batch = generate_batches(model, 1, seed, microbatches=m)[0]
    chunks = v if name in ("gpipe", "interleaved", "megatron", "optimus") else None
    try:
        sim = plan_schedule(name, model, batch, cm, hw, chunks=chunks)
    except BadInput as exc:
        text = str(exc)
        assert ("vision" in text and model_name == "tiny-t2v") or "needs at least" in text, text
        return
    assert sim.result.ok
    assert_complete(sim.plan)
    rules = sim.plan.meta["memory_strategy_per_rank"]
    assert len(rules) == pp and all(rule in rule_ladder(64) for rule in rules)


# -- partitions -----------------------------------------------------------------------------------
def brute_force_max(weights, parts):
    n = len(weights)
    best = float("inf")
    for cuts in itertools.combinations(range(1, n), parts - 1):
        bounds = (0, *cuts, n)
        best = min(best, max(sum(weights[a:b]) for a, b in itertools.pairwise(bounds)))
    return best


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 50), min_size=1, max_size=10), st.integers(1, 10))
def test_linear_partition_is_optimal(weights, parts):
    parts = min(parts, len(weights))
    ranges = linear_partition(weights, parts)
    assert len(ranges) == parts and ranges[0][0] == 0 and ranges[-1][1] == len(weights)
    assert all(a < b for a, b in ranges) and all(b == c for (_, b), (c, _) in itertools.pairwise(ranges))
    assert max(sum(weights[a:b]) for a, b in ranges) == brute_force_max(weights, parts)


@pytest.mark.parametrize("name,pp,v", [("VLM-S", 4, 2), ("VLM-L", 8, 2), ("T2V-S", 4, 1), ("T2V-L", 8, 2)])
def test_mixed_partition_is_contiguous_and_balanced(name, pp, v):
    model = get_model(name)
    graph = mixed_partition(model, pp, v)
    layers = model_layers(model)
    flat = [(p.module, i) for c in graph.chunks for p in c.parts for i in range(p.layer_start, p.layer_end)]
    assert flat == [(s.module, s.layer) for s in layers]
    assert len(graph.chunks) == pp * v and all(c.rank == c.id % pp for c in graph.chunks)
    assert all(sum(p.layers for p in c.parts) >= 1 for c in graph.chunks)
    assert graph.groups == ("all",)
    weights = param_weights(model)
    sums, k = [], 0
    for c in graph.chunks:
        n = sum(p.layers for p in c.parts)
        sums.append(sum(weights[k : k + n]))
        k += n
    assert max(sums) <= sum(weights) / len(sums) + max(weights)


def test_mixed_partition_puts_two_modules_in_one_chunk():
    graph = mixed_partition(get_model("VLM-S"), 4, 1)
    assert [c.modules for c in graph.chunks if len(c.parts) > 1] == [("vit", "llm")]


def test_mixed_partition_needs_enough_layers():
    with pytest.raises(BadInput, match="needs at least"):
        mixed_partition(get_model("tiny-vlm"), 8, 3)


def test_separated_even_partition():
    model = get_model("VLM-S")
    graph = separated_even_partition(model, 4, {"vit": 1, "llm": 2})
    vit, llm = graph.group_chunks("vit"), graph.group_chunks("llm")
    assert [c.parts[0].layers for c in vit] == [16, 16, 16, 15]
    assert [c.parts[0].layers for c in llm] == [4] * 8
    assert [c.rank for c in llm] == [0, 1, 2, 3, 0, 1, 2, 3]


# -- real-model baselines -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vlm_s():
    model = get_model("VLM-S")
    hw = get_hardware("H800")
    cm = CostModel(model, hw, model.parallel.tp)
    return model, hw, cm, generate_batches(model, 2, 0, microbatches=16)


def test_optimus_order_structure(vlm_s):
    """Without a bound: every encoder forward before the backbone, encoder backwards after the LM's."""
    model, hw, cm, batches = vlm_s
    plan = plan_schedule("optimus", model, batches[0], cm, hw).plan
    vit_units = plan.units["vit"]
    with_images = [k for k, mb in enumerate(batches[0].microbatches) if mb.images]
    assert [u.mb for u in vit_units] == with_images
    n = len(vit_units)
    for _rank, acts in plan.order.items():
        head = acts[:n]
        assert all(plan.graph.chunks[a.chunk].group == "vit" and a.op is Op.F for a in head)
        assert [a.unit for a in head] == [u.index for u in vit_units]
        vit_b = [a.unit for a in acts if plan.graph.chunks[a.chunk].group == "vit" and a.op is Op.B]
        assert vit_b == [u.index for u in vit_units]
    assert plan.meta["chunks_per_rank"] == 2 and plan.meta["encoder_inflight"] == n


def test_optimus_rejects_models_without_vision_encoder():
    with pytest.raises(BadInput, match="optimus supports vision-language models only; model T2V-S"):
        get_generator("optimus").supports(get_model("T2V-S"))


def test_nnscaler_plan_is_static(vlm_s):
    model, hw, cm, batches = vlm_s
    a = plan_schedule("nnscaler", model, batches[0], cm, hw).plan
    b = plan_schedule("nnscaler", model, batches[1], cm, hw).plan
    assert a.graph == b.graph and a.text() == b.text()
    assert len(a.graph.chunks) == model.parallel.pp and not a.split_backward()
    assert a.graph != mixed_partition(model, model.parallel.pp, 1)  # time-, not parameter-balanced


def test_megatron_is_interleaved_over_time_balanced_mixed_chunks(vlm_s):
    model, hw, cm, batches = vlm_s
    sim = plan_schedule("megatron", model, batches[0], cm, hw)
    weights = representative_layer_weights(model, cm, len(batches[0]))
    assert sim.plan.graph == mixed_partition(model, model.parallel.pp, 2, weights)
    assert sim.plan.meta["chunks_per_rank"] == 2 and sim.plan.meta["split"] == "time"
    assert sim.fits and 0 < sim.result.lower_bound <= sim.result.iteration_time * (1 + 1e-9)
    same = plan_schedule("interleaved", model, batches[0], cm, hw)  # SP and the distributed optimizer are
    assert same.plan.text() == sim.plan.text()  # the cost model's, for every schedule: the same plan


def test_megatron_params_keeps_the_parameter_balanced_split(vlm_s):
    model, hw, cm, batches = vlm_s
    sim = plan_schedule("megatron-params", model, batches[0], cm, hw)
    assert sim.plan.graph == mixed_partition(model, model.parallel.pp, 2, "params")
    assert sim.plan.meta["split"] == "params" and sim.plan.meta["chunks_per_rank"] == 2
    assert not sim.plan.split_backward()


def test_unknown_schedule_lists_valid_names():
    with pytest.raises(BadInput, match="1f1b"):
        get_generator("no-such-schedule")


def test_uniform_mode_needs_model_for_optimus():
    with pytest.raises(BadInput, match="needs a model"):
        build_uniform_plan("optimus", 4, 8)
