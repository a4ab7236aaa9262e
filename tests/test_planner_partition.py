"""The offline modality-aware partitioner: B_i, K_i, chunk layouts, sub-microbatch mapping."""

from __future__ import annotations

import itertools

import pytest

from dip.cost import CostModel
from dip.data.meta import BatchMeta, MicroBatchMeta
from dip.errors import BadInput
from dip.planner.partitioner import layer_weights, partition_model
from dip.spec import get_model


@pytest.fixture(scope="module")
def vlm_s():
    model = get_model("VLM-S")
    return model, CostModel(model, "H800")


def test_vit_63_layers_split_evenly_by_cost(vlm_s):
    model, cm = vlm_s
    part = partition_model(model, cm, segments={"vit": 4})
    layout = part.layouts["vit"]
    assert len(layout) == 16  # P * K_i chunks
    assert layout[0][0] == 0 and layout[-1][1] == 63
    assert all(a[1] == b[0] for a, b in itertools.pairwise(layout))  # consecutive, no gaps
    counts = [b - a for a, b in layout]
    assert max(counts) - min(counts) <= 1  # 63 / 16: threes and fours
    vit = model.module("vit")
    work = _rep_work(vit, part)
    weights = layer_weights(cm, vit, work)
    costs = [sum(weights[a:b]) for a, b in layout]
    layer = cm.layer_times(vit, work).total
    assert max(costs) - min(costs) <= layer * 1.0001  # balanced up to one layer


def _rep_work(vit, part):
    from dip.data.meta import ModuleWork

    b = part.sub_microbatch["vit"]
    return ModuleWork(seq_lens=(vit.patches_per_image,) * b, instances=b)


def test_chunks_are_placed_round_robin_and_modules_never_share(vlm_s):
    model, cm = vlm_s
    part = partition_model(model, cm, segments={"vit": 2, "llm": 1})
    graph = part.graph
    assert part.pp == 4
    for group in graph.groups:
        chunks = graph.group_chunks(group)
        assert [c.rank for c in chunks] == [i % 4 for i in range(len(chunks))]
        assert all(c.modules == (group,) for c in chunks)
    assert len(graph.group_chunks("vit")) == 8 and len(graph.group_chunks("llm")) == 4
    llm_layers = sum(c.parts[0].layers for c in graph.group_chunks("llm"))
    assert llm_layers == 32


def test_sub_microbatch_is_smallest_size_within_95_percent(vlm_s):
    model, cm = vlm_s
    part = partition_model(model, cm)
    b = part.sub_microbatch["vit"]
    curve = part.report["efficiency_curve"]["vit"]
    assert curve[b - 1] >= 0.95 - 1e-9
    assert all(e < 0.95 for e in curve[: b - 1])
    assert part.sub_microbatch["llm"] is None  # decoders are not split


def test_segments_follow_latency_ratio_and_cap(vlm_s):
    model, cm = vlm_s
    part = partition_model(model, cm)
    lat = part.report["unit_latency_s"]
    fastest = min(lat.values())
    for m in model.modules:
        k = part.segments[m.name]
        assert 1 <= k <= m.layers // part.pp
        assert k == min(int(lat[m.name] / fastest + 1e-9), m.layers // part.pp)
    t2v = get_model("T2V-S")
    from dip.data.workload import generate_batches

    tpart = partition_model(t2v, CostModel(t2v, "H800"), sample=generate_batches(t2v, 1, 0))
    assert tpart.segments["dit"] == 28 // 4  # DiT far slower than the text encoder: capped by layers


def test_overrides_and_sub_microbatch_mapping(vlm_s):
    model, cm = vlm_s
    part = partition_model(model, cm, sub_microbatch={"vit": 8}, segments={"vit": 1})
    mbs = (
        MicroBatchMeta(text_lens=(100, 200), image_counts=(12, 8)),  # 20 images -> 3 units: 7, 7, 6
        MicroBatchMeta(text_lens=(500,), image_counts=(0,)),
    )  # text only: no encoder unit
    units, flows = part.units(model, BatchMeta(mbs))
    vit = units["vit"]
    assert [u.instances for u in vit] == [7, 7, 6] and all(u.mb == 0 for u in vit)
    assert [u.mb for u in units["llm"]] == [0, 1]
    assert sorted((f.src_unit, f.dst_unit) for f in flows) == [(0, 0), (1, 0), (2, 0)]


def test_bad_overrides(vlm_s):
    model, cm = vlm_s
    with pytest.raises(BadInput, match="unknown module"):
        partition_model(model, cm, segments={"nope": 2})
    with pytest.raises(BadInput, match="layers"):
        partition_model(model, cm, segments={"llm": 9})


def test_runtime_action_overhead_coarsens_sub_microbatches_and_segments():
    from dip.data.workload import generate_batches
    from dip.runtime.planning import with_parallel
    from dip.spec.hardware import get_hardware

    model = with_parallel(get_model("tiny-vlm"), 2, 1)
    sample = generate_batches(model, 1, 0, microbatches=8)
    hw = get_hardware("cpu").with_(runtime_factors={}, action_overhead_s={})
    plain = partition_model(model, CostModel(model, hw, tp=1, dtype_bytes=4), sample=sample)
    assert plain.segments["llm"] > 1
    lat = plain.report["unit_latency_s"]
    overhead = {"f": 0.05 * lat["vit"], "b": 0.1 * lat["vit"]}
    slow = partition_model(
        model, CostModel(model, hw.with_(action_overhead_s=overhead), tp=1, dtype_bytes=4), sample=sample
    )
    assert slow.sub_microbatch["vit"] >= plain.sub_microbatch["vit"]
    curve = slow.report["efficiency_curve"]["vit"]
    assert curve[slow.sub_microbatch["vit"] - 1] >= 0.95 - 1e-9
    oh = sum(overhead.values())
    for m in model.modules:  # every chunk runs at least overhead / OVERHEAD_SHARE (or the module is whole)
        k = slow.segments[m.name]
        assert k == 1 or slow.report["unit_latency_s"][m.name] / (slow.pp * k) >= oh / 0.1 - 1e-12
        assert k <= plain.segments[m.name]
    assert slow.segments["llm"] < plain.segments["llm"]
