"""Megatron-grade memory accounting: sequence parallelism, distributed optimizer, memory reserve."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dip.cost import STRATEGIES, CostModel, CostOptions, param_state_bytes
from dip.data.meta import ModuleWork
from dip.errors import BadInput
from dip.spec.hardware import GIB, get_hardware, usable_memory_bytes
from dip.spec.model import ModelSpec, ModuleSpec, ParallelSpec
from dip.spec.presets import get_model, model_from_dict, model_to_dict
from dip.spec.validate import with_overrides

VLM_S, VLM_M, T2V_S = get_model("VLM-S"), get_model("VLM-M"), get_model("T2V-S")
MODULES = [(VLM_S, "vit"), (VLM_S, "llm"), (VLM_M, "vit"), (VLM_M, "llm"), (T2V_S, "llm"), (T2V_S, "dit")]


def divides_all(m: ModuleSpec, tp: int) -> bool:
    return all(x % tp == 0 for x in (m.heads, m.kv_heads, m.hidden, m.ffn_hidden))


def work_of(m: ModuleSpec, n: int, length: int, cond: int) -> ModuleWork:
    """``n`` instances: images of a ViT, sequences of ``length`` tokens, DiT clips with ``cond`` captions."""
    if m.kind == "vit":
        return ModuleWork(seq_lens=(m.patches_per_image,) * n, instances=n)
    if m.kind == "decoder":
        return ModuleWork(seq_lens=(length,) * n, instances=1)
    return ModuleWork(seq_lens=(length,) * n, cond_lens=(cond,) * n, instances=n)


def cost(model: ModelSpec, tp: int, sp: bool | None = None, dp: int = 1, dist: bool | None = None) -> CostModel:
    return CostModel(model, "H800", options=CostOptions(tp=tp, dp=dp, sequence_parallel=sp, distributed_optimizer=dist))


# -- sequence parallelism ---------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(
    which=st.sampled_from(MODULES),
    tp=st.sampled_from([2, 4, 8]),
    n=st.integers(1, 6),
    length=st.integers(16, 8192),
    cond=st.integers(0, 512),
    strategy=st.sampled_from(STRATEGIES),
)
def test_sp_divides_one_layers_activations_by_tp(which, tp, n, length, cond, strategy):
    """Korthikanti et al. 2022, Table 2: with SP, a layer's activations at TP t are the TP 1 value / t."""
    model, name = which
    m = model.module(name)
    if not divides_all(m, tp):
        return
    work = work_of(m, n, length, cond)
    one = cost(model, 1).layer_activation_bytes(m, work, strategy)
    sharded = cost(model, tp).layer_activation_bytes(m, work, strategy)
    assert sharded * tp == pytest.approx(one, rel=1e-9)  # exact; the requirement is 3%


@pytest.mark.parametrize("model, name, replicated", [(VLM_S, "vit", 4), (VLM_S, "llm", 4), (T2V_S, "dit", 10)])
def test_without_sp_the_replicated_share_stays_whole(model, name, replicated):
    """Without SP each GPU keeps the norm inputs, the QKV / FC1 inputs (and the DiT's modulated and
    gated tensors) whole: ``replicated`` h-wide tensors of 2 bytes per token."""
    m = model.module(name)
    work = work_of(m, 2, 4096, 300)
    for tp in (2, 4):
        sp = cost(model, tp).layer_activation_bytes(m, work)
        no_sp = cost(model, tp, sp=False).layer_activation_bytes(m, work)
        assert no_sp - sp == pytest.approx(2 * replicated * work.tokens * m.hidden * (1 - 1 / tp))
    sp4, no_sp4 = (
        cost(model, 4).layer_activation_bytes(m, work),
        cost(model, 4, sp=False).layer_activation_bytes(m, work),
    )
    assert no_sp4 > 1.15 * sp4


def test_gpt_block_follows_korthikanti_without_dropout_and_s2_terms():
    """A GPT block (4h GeLU MLP, MHA): Korthikanti's sbh(10 + 24/t + 5as/(ht)) without the two dropout
    masks (sbh each) and with flash attention (no s^2 buffers; fp32 softmax statistics 4sa/t instead)."""
    h, a, s = 1024, 16, 2048
    gpt = ModuleSpec("gpt", "vit", 4, h, 4 * h, a, a)
    model = ModelSpec("gpt", (gpt,), (), ParallelSpec())
    work = ModuleWork(seq_lens=(s,), instances=1)
    for t in (1, 2, 4, 8):
        no_sp = cost(model, t, sp=False)
        assert no_sp.layer_activation_bytes(gpt, work) == s * h * (8 + 24 / t) + 4 * s * a / t
        with_sp = cost(model, t)
        assert with_sp.layer_activation_bytes(gpt, work) == pytest.approx(s * h * 32 / t + 4 * s * a / t)
        assert with_sp.layer_activation_bytes(gpt, work, "full") == pytest.approx(
            2 * s * h / with_sp.options.sequence_shards
        )
        # selective: the attention core's output and statistics are recomputed
        assert with_sp.layer_activation_bytes(gpt, work, "selective") == pytest.approx(s * h * 30 / t)


@pytest.mark.parametrize("name, mlp_tensors", [("vit", 2), ("llm", 3)])
@pytest.mark.parametrize("tp, sp", [(1, False), (2, True), (4, True), (4, False), (8, True)])
def test_closed_form_of_docs_memory(name, mlp_tensors, tp, sp):
    """docs/memory.md: A_none = 2T(4h/sigma + (2q + 2kv + M f)/t) + 4Ta/t, sigma = t with SP."""
    m = VLM_S.module(name)
    work = work_of(m, 3, 4096, 0)
    q, kv, f, a, T = m.heads * m.head_dim, m.kv_heads * m.head_dim, m.ffn_hidden, m.heads, work.tokens
    sigma = tp if sp else 1
    want = 2 * T * (4 * m.hidden / sigma + (2 * q + 2 * kv + mlp_tensors * f) / tp) + 4 * T * a / tp
    assert cost(VLM_S, tp, sp=sp).layer_activation_bytes(m, work) == pytest.approx(want, rel=1e-12)


def test_sp_runs_norms_and_residuals_on_a_token_shard():
    m = VLM_S.module("llm")
    work = work_of(m, 1, 8192, 0)
    sp, no_sp = cost(VLM_S, 4).layer_times(m, work), cost(VLM_S, 4, sp=False).layer_times(m, work)
    assert sp.f < no_sp.f and sp.i < no_sp.i and sp.w == pytest.approx(no_sp.w)
    assert cost(VLM_S, 1, sp=True).layer_times(m, work) == cost(VLM_S, 1, sp=False).layer_times(m, work)


# -- options ----------------------------------------------------------------------------------------
def test_options_resolve_megatron_defaults():
    assert not CostOptions().sequence_parallel and not CostOptions().distributed_optimizer
    assert CostOptions(tp=4).sequence_parallel and CostOptions(dp=2).distributed_optimizer
    assert not CostOptions(tp=1, sequence_parallel=True).sequence_parallel  # nothing to shard at TP 1
    assert not CostOptions(tp=4, sequence_parallel=False).sequence_parallel
    assert not CostOptions(dp=8, distributed_optimizer=False).distributed_optimizer
    assert CostOptions(tp=4).sequence_shards == 4 and CostOptions(tp=4, sequence_parallel=False).sequence_shards == 1
    p = ParallelSpec(tp=4, dp=8, distributed_optimizer=False)
    assert CostOptions.from_parallel(p) == CostOptions(tp=4, dp=8, sequence_parallel=True, distributed_optimizer=False)
    assert CostOptions.from_parallel(p, tp=2).tp == 2


@pytest.mark.parametrize(
    "kwargs",
    [dict(tp=0), dict(dp=0), dict(tp=True), dict(dp=2.5), dict(sequence_parallel="yes"), dict(distributed_optimizer=1)],
)
def test_bad_options(kwargs):
    with pytest.raises(BadInput):
        CostOptions(**kwargs)


def test_cost_model_takes_options_from_the_model_and_rejects_a_conflicting_tp():
    cm = CostModel(with_overrides(VLM_S, dp=4, sequence_parallel=False), "H800")
    assert (cm.tp, cm.options.dp, cm.options.sequence_parallel, cm.options.distributed_optimizer) == (4, 4, False, True)
    assert CostModel(VLM_S, "H800", tp=2).options.tp == 2
    with pytest.raises(BadInput, match="tp 2 differs"):
        CostModel(VLM_S, "H800", tp=2, options=CostOptions(tp=4))


# -- distributed optimizer --------------------------------------------------------------------------
@given(dp=st.integers(1, 4096))
def test_param_state_bytes(dp):
    assert param_state_bytes(False, dp) == 18
    assert param_state_bytes(True, dp) == pytest.approx(6 + 12 / dp)
    assert param_state_bytes(True, dp) <= 18


def test_distributed_optimizer_shards_static_bytes_not_gradients():
    llm = VLM_S.module("llm")
    one, eight = cost(VLM_S, 4, dp=1), cost(VLM_S, 4, dp=8)
    params = one.gpu_params(llm, 0, 1, False, False)
    assert one.static_bytes(llm, 0, 1, False, False) == pytest.approx(18 * params)
    assert eight.static_bytes(llm, 0, 1, False, False) == pytest.approx(7.5 * params)
    assert eight.static_bytes(llm, 0, 1, False, False) / one.static_bytes(llm, 0, 1, False, False) == pytest.approx(
        7.5 / 18
    )
    assert cost(VLM_S, 4, dp=8, dist=False).static_bytes(llm, 0, 1, False, False) == pytest.approx(18 * params)
    assert eight.grad_bytes(llm, 0, 3, True, False) == one.grad_bytes(llm, 0, 3, True, False)
    assert one.grad_bytes(llm, 0, 1, False, False) == pytest.approx(4 * params)
    # reduce-scatter of fp32 gradients + all-gather of bf16 weights = an all-reduce of 3 bytes per parameter
    assert one.dp_sync_bytes(llm, 0, 1, False, False) == pytest.approx(4 * params)
    assert eight.dp_sync_bytes(llm, 0, 1, False, False) == pytest.approx(3 * params)


def test_simulated_gradient_bytes_come_from_the_cost_model():
    from dip.sim import stage_costs
    from test_sim_costs import BATCH, vlm_structure

    model, graph, units, flows = vlm_structure()
    plain = stage_costs(graph, units, flows, model, cost(model, 1, dp=4, dist=False), BATCH)
    dist = stage_costs(graph, units, flows, model, cost(model, 1, dp=4), BATCH)
    assert np.all(plain.grad_bytes > 0)
    np.testing.assert_allclose(dist.grad_bytes, 0.75 * plain.grad_bytes)
    np.testing.assert_allclose(dist.static_bytes, (6 + 12 / 4) / 18 * plain.static_bytes)


# -- memory reserve ---------------------------------------------------------------------------------
def test_usable_memory_default_reserve_and_override():
    h800 = get_hardware("H800")
    assert usable_memory_bytes(h800) == pytest.approx(0.92 * 80 * GIB)
    assert usable_memory_bytes(h800, 4) == 76 * GIB
    assert usable_memory_bytes(h800, 0) == 80 * GIB
    assert usable_memory_bytes(get_hardware("H20")) == pytest.approx(0.92 * 96 * GIB)


@pytest.mark.parametrize("reserve", [-1.0, math.nan, math.inf, 80.0, 120.0])
def test_bad_reserve(reserve):
    with pytest.raises(BadInput, match="--memory-reserve-gib"):
        usable_memory_bytes(get_hardware("H800"), reserve)


def test_simulator_and_planner_defaults_apply_the_reserve():
    from dip.sim.topology import Topology

    assert Topology.from_hardware(get_hardware("H800"), tp=4).mem_bytes == usable_memory_bytes(get_hardware("H800"))


# -- model specs ------------------------------------------------------------------------------------
def test_parallel_flags_round_trip_and_validate():
    model = with_overrides(VLM_S, sequence_parallel=False, distributed_optimizer=True)
    data = model_to_dict(model)
    assert data["parallel"]["sequence_parallel"] is False and data["parallel"]["distributed_optimizer"] is True
    assert model_from_dict(data).parallel == model.parallel
    assert "sequence_parallel" not in model_to_dict(VLM_S)["parallel"]
    data["parallel"]["sequence_parallel"] = "no"
    with pytest.raises(BadInput, match=r"parallel\.sequence_parallel"):
        model_from_dict(data)
