"""Shape plan: tensor specs of every message, from batch metadata."""

from __future__ import annotations

import pytest

from dip.data.meta import BatchMeta, MicroBatchMeta
from dip.schedule.ir import Action, Channel, Chunk, ChunkPart, Plan, StageGraph, Unit, order_from_text
from dip.schedule.lowering import add_send_recv
from dip.schedule.shapes import ShapePlan, shape_plan
from dip.spec.model import Edge, ModelSpec, ModuleSpec, ParallelSpec
from plan_fixtures import fan_in, fan_out

VIT = ModuleSpec(
    "vit",
    "vit",
    layers=2,
    hidden=8,
    ffn_hidden=16,
    heads=2,
    kv_heads=2,
    image_size=28,
    patch_size=14,
    spatial_merge=1,
    out_hidden=16,
)  # 4 patches and 4 tokens per image
LLM = ModuleSpec("llm", "decoder", layers=2, hidden=16, ffn_hidden=32, heads=4, kv_heads=2, vocab_size=32)
VLM = ModelSpec("vlm", (VIT, LLM), (Edge("vit", "llm", "image_embeddings"),), ParallelSpec(pp=2))
# two samples: 5 text tokens + 3 images, 3 text tokens + 1 image -> LM sequence 17 + 7 = 24 tokens
VLM_BATCH = BatchMeta((MicroBatchMeta(text_lens=(5, 3), image_counts=(3, 1)),))

ENC = ModuleSpec(
    "llm", "decoder", layers=1, hidden=16, ffn_hidden=32, heads=4, kv_heads=2, vocab_size=32, lm_head=False
)
DIT = ModuleSpec("dit", "dit", layers=2, hidden=8, ffn_hidden=16, heads=2, kv_heads=2, cond_hidden=16)
T2V = ModelSpec("t2v", (ENC, DIT), (Edge("llm", "dit", "text_conditioning"),), ParallelSpec(pp=2))
T2V_BATCH = BatchMeta(
    (MicroBatchMeta(text_lens=(5, 3), clip_tokens=(10, 6), clip_seconds=(1.0, 1.0), clip_sample=(0, 1)),)
)


def shapes(specs) -> dict[str, tuple[int, ...]]:
    return {s.name: s.shape for s in specs}


def test_fan_in_vit_to_lm():
    plan = fan_in({0: "0F0 0F1 2F0 2B0 0B0 0B1", 1: "1F0 1F1 3F0 3B0 1B0 1B1"})
    sp = shape_plan(plan, VLM, VLM_BATCH, "bfloat16")
    assert shapes(sp.get(Action.parse("0SEND_F1:1.1"))) == {"hidden": (8, 8)}  # 2 images x 4 patches
    assert shapes(sp.get(Action.parse("1SEND_F0:2.0"))) == {"image_embeds": (8, 16)}
    assert shapes(sp.get(Action.parse("2RECV_F0:1.1"))) == {"image_embeds": (8, 16)}
    assert shapes(sp.get(Action.parse("2SEND_F0:3.0"))) == {"hidden": (24, 16)}
    # gradients mirror the forward tensors
    assert sp.get(Action.parse("2SEND_B0:1.1")) == sp.get(Action.parse("1SEND_F1:2.0"))
    assert sp.get(Action.parse("3SEND_B0:2.0")) == sp.get(Action.parse("2SEND_F0:3.0"))
    assert all(s.dtype == "bfloat16" for specs in sp.specs.values() for s in specs)
    assert sp.nbytes(Action.parse("2SEND_F0:3.0")) == 24 * 16 * 2
    # 4 forward messages (0->1 x2, 1->2 x2, 2->3) + their gradients
    assert len(sp) == 10


def test_every_lowered_comm_has_shapes():
    plan = fan_in({0: "0F0 0F1 2F0 2B0 0B0 0B1", 1: "1F0 1F1 3F0 3B0 1B0 1B1"})
    sp = shape_plan(plan, VLM, VLM_BATCH)
    prog = add_send_recv(plan)
    for acts in prog.actions.values():
        for a in acts:
            if a.op.is_comm:
                assert sp.get(a) == sp.specs[prog.comms[a].message.key]


def test_fan_out_lm_to_dit():
    plan = fan_out({0: "0F0 2F0 2F1 2B0 2B1 0B0", 1: "1F0 1F1 1B0 1B1"})
    sp = shape_plan(plan, T2V, T2V_BATCH, "float32")
    # each DiT unit gets its own clips' caption rows
    assert shapes(sp.get(Action.parse("0SEND_F0:1.0"))) == {"text_cond": (5, 16)}
    assert shapes(sp.get(Action.parse("0SEND_F0:1.1"))) == {"text_cond": (3, 16)}
    assert shapes(sp.get(Action.parse("1SEND_F1:2.1"))) == {"hidden": (6, 8), "cond": (3, 8), "t_mod": (1, 48)}
    assert sp.get(Action.parse("1SEND_B0:0.0")) == sp.get(Action.parse("0SEND_F0:1.0"))


def test_mixed_chunk_sends_its_last_part():
    chunks = (
        Chunk(0, "all", 0, 0, (ChunkPart("vit", 0, 2), ChunkPart("llm", 0, 1))),
        Chunk(1, "all", 1, 1, (ChunkPart("llm", 1, 2),)),
    )
    graph = StageGraph(chunks, (Channel(0, 1),), 2)
    plan = Plan(graph, {"all": (Unit("all", 0, 0),)}, (), order_from_text({0: "0F0 0B0", 1: "1F0 1B0"}))
    sp = shape_plan(plan, VLM, VLM_BATCH)
    assert shapes(sp.get(Action.parse("0SEND_F0:1.0"))) == {"hidden": (24, 16)}
    assert isinstance(sp, ShapePlan) and len(sp) == 2


def test_missing_message_is_named():
    plan = fan_in({0: "0F0 0F1 2F0 2B0 0B0 0B1", 1: "1F0 1F1 3F0 3B0 1B0 1B1"})
    sp = shape_plan(plan, VLM, VLM_BATCH)
    with pytest.raises(KeyError, match="no shapes for message"):
        sp.get(Action.parse("0SEND_F5:1.5"))
