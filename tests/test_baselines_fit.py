"""Baselines as their users configure them: the time-balanced split, the per-rank memory rule, Optimus's
in-flight bound and the fits rule in ``dip plan`` / ``dip simulate``."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dip.cli.main import main
from dip.cost import CostModel
from dip.data.workload import generate_batches
from dip.errors import BadInput
from dip.planner.report import mean_baselines
from dip.planner.schedules import plan_schedule
from dip.schedule.baselines import get_generator
from dip.schedule.baselines.common import chain_of
from dip.schedule.baselines.memory import chunk_strategies, rule_ladder, rule_strategies, summarize_rules
from dip.schedule.baselines.optimus import min_inflight, optimus_order
from dip.schedule.baselines.plans import layer_split
from dip.schedule.ir import Op
from dip.schedule.partition import RangeCap, chunk_ranges, linear_partition
from dip.sim.plans import fit_memory, simulate_plan
from dip.spec.hardware import get_hardware, usable_memory_bytes
from dip.spec.presets import get_model

GIB = 2**30


@pytest.fixture(scope="module")
def vlm_s():
    model = get_model("VLM-S")
    hw = get_hardware("H800")
    return model, hw, CostModel(model, hw, model.parallel.tp)


def batch_of(model, seed: int, microbatches: int):
    return generate_batches(model, 1, seed, microbatches=microbatches)[0]


# -- rules ------------------------------------------------------------------------------------------
def test_rule_ladder_and_chunk_strategies():
    assert rule_ladder(3) == ["none", "selective", "block:1", "block:2", "full"]
    assert rule_ladder(1) == ["none", "selective", "full"]
    assert chunk_strategies("block:2", 4) == ("full", "full", "none", "none")
    assert chunk_strategies("block:9", 3) == ("full",) * 3  # more than the chunk holds: all of it
    assert chunk_strategies("selective", 2) == ("selective", "selective")
    with pytest.raises(ValueError, match="block:N"):
        chunk_strategies("block:x", 2)
    assert summarize_rules(["block:3"] * 4) == "block:3"
    assert summarize_rules(["none", "block:2"]) == "none,block:2"


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40))
def test_block_rule_recomputes_the_first_layers_of_each_chunk(layers):
    ladder = rule_ladder(layers)
    full_counts = [chunk_strategies(rule, layers).count("full") for rule in ladder[2:]]
    assert full_counts == list(range(1, layers + 1))  # one more recomputed layer per rung, full last


# -- the time-balanced split ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["megatron", "1f1b"])
def test_time_balanced_split_balances_busy_time(vlm_s, name):
    """Per-rank busy time from the simulator (as the acceptance check reads it from the trace)."""
    model, hw, cm = vlm_s
    batch = batch_of(model, 0, 64)
    sim = plan_schedule(name, model, batch, cm, hw)
    busy = sim.result.busy
    assert sim.fits and len(busy) == 4 and busy.max() / busy.min() <= 1.35
    params = plan_schedule("megatron-params", model, batch, cm, hw).result.busy
    assert params.max() / params.min() > 2  # the parameter split leaves the LM ranks idle on VLM-S


def feasible_cuts(n: int, parts: int, cap: RangeCap):
    for cuts in itertools.combinations(range(1, n), parts - 1):
        bounds = list(itertools.pairwise((0, *cuts, n)))
        if all(sum(cap.values[a:b]) <= cap.limit for a, b in bounds):
            yield bounds


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.integers(1, 30), min_size=2, max_size=9),
    st.lists(st.integers(1, 9), min_size=9, max_size=9),
    st.integers(1, 4),
    st.integers(3, 40),
)
def test_capped_linear_partition_is_optimal_within_the_cap(weights, sizes, parts, limit):
    parts = min(parts, len(weights))
    cap = RangeCap(tuple(sizes[: len(weights)]), float(limit))
    best = min(
        (max(sum(weights[a:b]) for a, b in cut) for cut in feasible_cuts(len(weights), parts, cap)), default=None
    )
    if best is None:
        with pytest.raises(BadInput, match="keeps every chunk within"):
            linear_partition(weights, parts, cap)
        return
    ranges = linear_partition(weights, parts, cap)
    assert ranges[0][0] == 0 and ranges[-1][1] == len(weights) and len(ranges) == parts
    assert all(sum(cap.values[a:b]) <= limit for a, b in ranges)
    assert max(sum(weights[a:b]) for a, b in ranges) == best


def test_static_cap_moves_the_t2v_text_encoder_off_one_rank():
    """T2V-L's 32B text encoder is cheap but holds ~72 GB of state: the split must not stack it with
    DiT layers on one rank, and the megatron plan fits."""
    model = get_model("T2V-L")
    hw = get_hardware("H800")
    cm = CostModel(model, hw, model.parallel.tp)
    batch = batch_of(model, 1, 64)
    free = layer_split(model, "time", 2, cm, 64)  # without the cap: all of the LM and DiT layers on rank 0
    assert free.chunks[0].modules == ("llm", "dit")
    assert not fit_memory(get_generator("megatron").build(model, batch, cm, graph=free), model, cm, batch, hw).fits
    sim = plan_schedule("megatron", model, batch, cm, hw)
    assert sim.fits and sim.plan.graph.chunks[0].modules == ("llm",)
    assert sim.plan.graph != free and len(chunk_ranges(sim.plan.graph)) == 16


# -- the memory rule --------------------------------------------------------------------------------
def peaks_with(plan, rules, model, cm, batch, hw):
    plan.strategies = rule_strategies(plan, dict(enumerate(rules)))
    return simulate_plan(plan, model, cm, batch, hw, float("inf")).result.peak_memory_bytes


def test_roomy_memory_picks_no_recompute(vlm_s):
    model, hw, cm = vlm_s
    sim = plan_schedule("megatron", model, batch_of(model, 0, 16), cm, hw, memory_limit_bytes=1e6 * GIB)
    assert sim.plan.meta["memory_strategy"] == "none" and sim.plan.strategies == {} and sim.fits


def test_tight_memory_forces_block_recompute_on_the_heavy_ranks_only(vlm_s):
    model, hw, cm = vlm_s
    batch = batch_of(model, 0, 16)
    plan = get_generator("megatron").build(model, batch, cm)
    none = peaks_with(plan, ["none"] * 4, model, cm, batch, hw)
    selective = peaks_with(plan, ["selective"] * 4, model, cm, batch, hw)
    limit = (none.min() + none.max()) / 2
    assert selective.max() > limit  # so the heaviest rank needs block recompute
    sim = fit_memory(plan, model, cm, batch, hw, limit)
    rules = plan.meta["memory_strategy_per_rank"]
    assert sim.fits and plan.meta["fits_memory"]
    for r, rule in enumerate(rules):
        if none[r] <= limit:
            assert rule == "none"
        elif selective[r] <= limit:
            assert rule == "selective"
        else:
            assert rule.startswith("block:") and int(rule.split(":")[1]) > 0
    assert any(rule.startswith("block:") for rule in rules) and "none" in rules
    for r, rule in enumerate(rules):  # minimal: one rung less recompute does not fit on that rank
        ladder = rule_ladder(max(sum(p.layers for p in c.parts) for c in plan.graph.rank_chunks(r)))
        k = ladder.index(rule)
        if k > 0:
            less = list(rules)
            less[r] = ladder[k - 1]
            assert peaks_with(plan, less, model, cm, batch, hw)[r] > limit


def test_a_ranks_peak_depends_only_on_its_own_rule(vlm_s):
    model, hw, cm = vlm_s
    batch = batch_of(model, 2, 8)
    plan = get_generator("1f1b").build(model, batch, cm)
    base = peaks_with(plan, ["none"] * 4, model, cm, batch, hw)
    other = peaks_with(plan, ["none", "full", "block:3", "selective"], model, cm, batch, hw)
    assert other[0] == pytest.approx(base[0]) and (other[1:] < base[1:]).all()


def test_nothing_fits_keeps_full_recompute_and_says_so(vlm_s):
    model, hw, cm = vlm_s
    sim = plan_schedule("megatron", model, batch_of(model, 0, 8), cm, hw, memory_limit_bytes=GIB)
    assert not sim.fits and sim.plan.meta["memory_strategy"] == "full" and not sim.plan.meta["fits_memory"]


# -- Optimus ----------------------------------------------------------------------------------------
def held_encoder_units(plan) -> int:
    """The most encoder micro-batches any rank holds at once (forwards run, backwards not yet)."""
    most = 0
    for acts in plan.order.values():
        held = 0
        for a in acts:
            if plan.graph.chunks[a.chunk].group == "vit":
                held += 1 if a.op is Op.F else -1
                most = max(most, held)
    return most


def test_optimus_bound_fits_where_the_unbounded_plan_does_not(vlm_s):
    model, hw, cm = vlm_s
    batch = batch_of(model, 0, 16)
    unbounded = get_generator("optimus").build(model, batch, cm)
    full = peaks_with(unbounded, ["full"] * 4, model, cm, batch, hw)
    limit = 0.9 * full.max()  # even full recompute does not fit without a bound
    assert not fit_memory(unbounded, model, cm, batch, hw, limit).fits
    sim = plan_schedule("optimus", model, batch, cm, hw, memory_limit_bytes=limit)
    bound = sim.plan.meta["encoder_bound"]
    n = len(sim.plan.units["vit"])
    assert sim.fits and bound is not None and bound < n and sim.result.ok
    assert held_encoder_units(sim.plan) <= bound
    bigger = get_generator("optimus").build(model, batch, cm, inflight=bound + 1)
    assert not fit_memory(bigger, model, cm, batch, hw, limit).fits  # the largest bound that fits


def test_optimus_without_any_fitting_bound_says_so(vlm_s):
    model, hw, cm = vlm_s
    sim = plan_schedule("optimus", model, batch_of(model, 0, 8), cm, hw, memory_limit_bytes=GIB)
    assert not sim.fits and "no bound on in-flight encoder micro-batches fits" in sim.plan.meta["notice"]


def test_optimus_rejects_a_bound_that_starves_the_lm(vlm_s):
    model, _, cm = vlm_s
    batch = batch_of(model, 1, 16)
    plan = get_generator("optimus").build(model, batch, cm)
    vit, llm = plan.units["vit"], plan.units["llm"]
    enc, lm = chain_of(plan.graph, "vit", vit), chain_of(plan.graph, "llm", llm)
    smallest = min_inflight(enc, lm, list(vit))
    assert 1 < smallest < len(vit)
    optimus_order(enc, lm, list(vit), smallest)
    with pytest.raises(BadInput, match=f"smallest bound that works here is {smallest}"):
        optimus_order(enc, lm, list(vit), smallest - 1)


# -- the fits rule ----------------------------------------------------------------------------------
def test_mean_baselines_drop_a_baseline_that_does_not_fit_in_some_batch():
    rows = [
        {"baselines": {"a": 10.0, "b": 8.0}, "baselines_fit": {"a": True, "b": True}},
        {"baselines": {"a": 12.0, "b": None}, "baselines_fit": {"a": True, "b": False}},
    ]
    out = mean_baselines(("a", "b", "c"), rows, dip_time_s=5.0)
    assert out == {
        "baselines": {"a": 11.0, "b": None},
        "baselines_fit": {"a": True, "b": False},
        "speedup_vs": {"a": 2.2, "b": None},
    }


def run_json(capsys, *args) -> dict:
    assert main([*map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_plan_json_reports_oom_baselines_without_time(capsys):
    out = run_json(
        capsys, "plan", "--model", "VLM-S", "--microbatches", 8, "--rollouts", 3, "--workers", 1,
        "--memory-limit-gib", 30,
    )  # fmt: skip
    mean, row = out["mean"], out["per_batch"][0]
    assert out["memory_limit_bytes"] == 30 * GIB and out["memory_capacity_bytes"] == 80 * GIB
    assert max(mean["dip_peak_memory_bytes"]) <= 30 * GIB and mean["dip_fits"]
    assert set(mean["baselines_fit"]) == set(mean["baselines"]) == set(mean["speedup_vs"])
    assert not all(mean["baselines_fit"].values()) and mean["baselines_fit"]["megatron"]
    for name, fits in mean["baselines_fit"].items():
        assert fits == row["baselines_fit"][name]
        assert (mean["speedup_vs"][name] is None) == (not fits) == (mean["baselines"][name] is None)
        assert (row["baselines"][name] is None) == (name in row["baselines_over_limit_s"])
    assert all(mean["speedup_vs"][k] >= 1.0 for k, fits in mean["baselines_fit"].items() if fits)


def test_plan_text_shows_oom_instead_of_a_time(capsys):
    args = ["plan", "--model", "VLM-S", "--microbatches", "8", "--rollouts", "3", "--workers", "1"]
    assert main([*args, "--memory-limit-gib", "30"]) == 0
    text = capsys.readouterr().out
    assert "OOM" in text and "fastest fitting baseline: " in text


def test_usable_memory_is_the_default_limit(vlm_s):
    model, hw, cm = vlm_s
    sim = plan_schedule("1f1b", model, batch_of(model, 0, 8), cm, hw)
    assert sim.result.memory_limit_bytes == pytest.approx(usable_memory_bytes(hw))
