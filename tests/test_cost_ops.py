import pytest

from cost_fixtures import DIT, QWEN, VIT, VLM_M, dit_work, lm_work, vit_work
from dip.cost import layer_flops, layer_ops, microbatch_flops, post_ops, pre_ops
from dip.cost.ops import tp_split_params
from dip.data.meta import MicroBatchMeta, ModuleWork, work_for
from dip.spec import params as P


def _weight_params(m):
    """Weight-matrix parameters of one block (no norms, no biases)."""
    h, f, q, kv = m.hidden, m.ffn_hidden, m.heads * m.head_dim, m.kv_heads * m.head_dim
    attn = h * q + 2 * h * kv + q * h
    if m.kind == "decoder":
        return attn + 3 * h * f
    if m.kind == "vit":
        return attn + 2 * h * f
    return 2 * attn + 2 * h * f  # dit: self + cross attention


def test_dense_lm_rule_decoder():
    """fwd + bwd = 6 * N_w * T + 6 * hidden * sum(s^2)  (causal: half of the 4*h*s^2 pairs, times 3)."""
    lens = (4096, 2048, 1024, 1024)
    work = lm_work(*lens)
    fwd, bwd = layer_flops(QWEN, work)
    expected = 6 * _weight_params(QWEN) * sum(lens) + 6 * QWEN.hidden * sum(s * s for s in lens)
    assert bwd == 2 * fwd
    assert fwd + bwd == pytest.approx(expected, rel=1e-12)
    # attention is per document block: packing 4 documents costs less than one 8192-token sequence
    assert fwd < layer_flops(QWEN, lm_work(8192))[0]


def test_vit_and_dit_flops():
    w = vit_work(8)
    fwd, _ = layer_flops(VIT, w)
    assert fwd == pytest.approx(2 * _weight_params(VIT) * w.tokens + 4 * VIT.hidden * w.attn_pairs, rel=1e-12)
    d = dit_work(2, seconds=2.0, caption=100)
    fwd, _ = layer_flops(DIT, d)
    expected = (
        2
        * (DIT.hidden * 3 * DIT.hidden + DIT.hidden**2 + 2 * DIT.hidden * DIT.ffn_hidden + 2 * DIT.hidden**2)
        * d.tokens
        + 2 * 2 * DIT.hidden**2 * d.cond_tokens
        + 4 * DIT.hidden * (d.attn_pairs + d.cross_pairs)
    )
    assert fwd == pytest.approx(expected, rel=1e-12)


def test_gqa_and_tp_sharding():
    w = lm_work(4096)
    full = {op.name: op for op in layer_ops(QWEN, w, tp=1).f}
    mha = {op.name: op for op in layer_ops(QWEN.with_(kv_heads=40), w, tp=1).f}
    assert full["qkv"].flops < mha["qkv"].flops
    sharded = {op.name: op for op in layer_ops(QWEN, w, tp=8).f}
    for name in ("qkv", "proj", "gate_up", "fc2"):
        assert sharded[name].flops == pytest.approx(full[name].flops / 8)
    attn = [op for op in sharded.values() if op.op_class == "attention"]
    assert sum(op.flops for op in attn) == pytest.approx(
        sum(op.flops for op in full.values() if op.op_class == "attention") / 8
    )


def test_tp_collectives_two_forward_two_backward_input():
    w = vit_work(2)
    for tp, expected in ((1, 0), (4, 2)):
        ops = layer_ops(VIT, w, tp=tp)
        counts = [sum(op.op_class == "collective" for op in getattr(ops, p)) for p in "fiw"]
        assert counts == [expected, expected, 0]
    ar = next(op for op in layer_ops(VIT, w, tp=4).f if op.op_class == "collective")
    assert ar.net_bytes == pytest.approx(2 * 3 / 4 * 2 * w.tokens * VIT.hidden)


def test_attention_backward_is_all_in_backward_input():
    ops = layer_ops(QWEN, lm_work(8192), tp=8)
    assert any(op.op_class == "attention" for op in ops.i)
    assert not any(op.op_class == "attention" for op in ops.w)
    assert all(op.op_class == "gemm" for op in ops.w)


def test_korthikanti_activation_memory_without_flash():
    """MHA + GELU(4h) block, bf16, no dropout, no flash: 32*s*h + 2*a*s^2 bytes (Korthikanti et al.)."""
    m = VIT.with_(ffn_hidden=4 * VIT.hidden)
    s = 2048
    saved = layer_ops(m, ModuleWork((s,), instances=1), tp=1, d=2, flash=False).saved_bytes()
    assert saved == 32 * s * m.hidden + 2 * m.heads * s * s
    flash = layer_ops(m, ModuleWork((s,), instances=1), tp=1, d=2, flash=True).saved_bytes()
    assert flash == 32 * s * m.hidden + 4 * m.heads * s  # fp32 softmax statistics instead of s^2 terms


def test_pre_post_parts():
    w = vit_work(4)
    post = post_ops(VIT, w, tp=8)
    assert {op.name for op in post.f} >= {"merger_fc1", "merger_fc2"}
    assert not pre_ops(VIT, w).i  # no gradient w.r.t. pixels
    lm = lm_work(8192)
    head = {op.name for op in post_ops(QWEN, lm, tp=8).f}
    assert {"lm_head", "cross_entropy"} <= head
    assert "lm_head" not in {op.name for op in post_ops(QWEN.with_(lm_head=False), lm).f}
    names = {op.name for op in pre_ops(DIT, dit_work(1)).f}
    assert {"patch_embed", "cond_proj", "t_embed2", "adaln_single"} <= names


@pytest.mark.parametrize("module", [VIT, QWEN, DIT])
def test_tp_split_params_sums_to_param_counts(module):
    for part, fn in (("layer", P.layer_params), ("pre", P.pre_params), ("post", P.post_params)):
        sharded, replicated = tp_split_params(module, part)
        assert sharded + replicated == fn(module) and min(sharded, replicated) >= 0


def test_microbatch_flops_sums_modules_and_counts_image_tokens():
    mb = MicroBatchMeta(text_lens=(6502, 1000), image_counts=(10, 0))
    total = microbatch_flops(VLM_M, mb)
    lm = work_for(VLM_M, QWEN, mb)
    assert lm.seq_lens == (6502 + 1690, 1000)
    from dip.cost import module_flops

    assert total == pytest.approx(module_flops(VIT, work_for(VLM_M, VIT, mb)) + module_flops(QWEN, lm))
    assert microbatch_flops(VLM_M, MicroBatchMeta(text_lens=(0,))) == 0


def test_empty_work_has_no_ops():
    empty = ModuleWork(())
    for m in (VIT, QWEN, DIT):
        ops = layer_ops(m, empty, tp=4)
        assert not (ops.f or ops.i or ops.w)
