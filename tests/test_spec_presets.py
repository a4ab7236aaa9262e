"""Model presets, lookup, validation and model files."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from dip.errors import BadInput
from dip.spec import (
    get_model,
    get_module_preset,
    list_model_names,
    list_models,
    load_model,
    model_params,
    model_to_dict,
    module_params,
    validate_model,
    validate_parallel,
    with_overrides,
)

NOMINAL_B = {"VLM-S": 12.3, "VLM-M": 37.1, "VLM-L": 94.4, "T2V-S": 12.9, "T2V-L": 61.8}


@pytest.mark.parametrize("name, billions", sorted(NOMINAL_B.items()))
def test_nominal_model_sizes(name, billions):
    assert model_params(get_model(name)) / 1e9 == pytest.approx(billions, rel=0.06)


def test_every_preset_with_a_nominal_size_is_close():
    for model in list_models():
        nominal = model.extra.get("nominal_params")
        if nominal:
            assert model_params(model) == pytest.approx(nominal, rel=0.06), model.name


def test_table1_and_table6_sizes():
    vlm7 = get_model("VLM-7B")
    assert module_params(vlm7.module("vit")) / 1e9 == pytest.approx(2.0, rel=0.05)
    assert module_params(vlm7.module("llm")) / 1e9 == pytest.approx(5.0, rel=0.05)
    assert module_params(get_model("VLM-XL-8k").module("llm")) / 1e9 == pytest.approx(175, rel=0.01)


def test_tiny_models_are_small_and_exact():
    vlm, t2v = get_model("tiny-vlm"), get_model("tiny-t2v")
    assert model_params(vlm) < 10e6 and model_params(t2v) < 10e6
    vit, llm = vlm.module("vit"), vlm.module("llm")
    assert (vit.layers, vit.hidden, vit.ffn_hidden, vit.heads, vit.patches_per_image, vit.tokens_per_image) == (
        8,
        128,
        512,
        4,
        16,
        4,
    )
    assert (llm.layers, llm.hidden, llm.ffn_hidden, llm.heads, llm.kv_heads, llm.vocab_size) == (
        8,
        192,
        512,
        6,
        2,
        1024,
    )
    assert vit.out_hidden == 192 and vlm.context_length == 256 and vlm.max_images_per_microbatch == 8
    enc, dit = t2v.module("llm"), t2v.module("dit")
    assert (enc.hidden, enc.ffn_hidden, enc.kv_heads, enc.lm_head) == (128, 384, 2, False)
    assert dit.cond_hidden == 128 and dit.latent_grid() == (4, 4)
    assert t2v.max_clips_per_microbatch == 4 and t2v.max_video_seconds == 8
    for m in (vlm, t2v):
        assert (m.parallel.tp, m.parallel.pp, m.parallel.dp) == (1, 2, 1)


def test_paper_shapes():
    vit = get_model("VLM-S").module("vit")
    assert vit.patches_per_image == 2704 and vit.tokens_per_image == 169 and vit.out_hidden == 4096
    dit = get_model("T2V-S").module("dit")
    assert dit.latent_tokens_per_second() == 4608 and dit.clip_tokens(16) == 73_728
    assert dit.cond_hidden == 4096 and get_model("T2V-S").module("llm").lm_head is False


def test_table3_and_table6_parallel():
    expect = {
        "VLM-S": (4, 4, 1),
        "VLM-M": (8, 4, 1),
        "VLM-L": (8, 8, 1),
        "T2V-S": (4, 4, 1),
        "T2V-L": (8, 8, 1),
        "VLM-XL-8k": (8, 8, 128),
        "VLM-XL-16k": (8, 16, 128),
        "T2V-XL-3k": (8, 4, 96),
        "T2V-XL-6k": (8, 8, 96),
        "LM-7B": (2, 4, 1),
        "VLM-7B": (2, 4, 1),
    }
    for name, (tp, pp, dp) in expect.items():
        p = get_model(name).parallel
        assert (p.tp, p.pp, p.dp) == (tp, pp, dp), name
    assert get_model("VLM-XL-16k").parallel.gpus == 16384


def test_all_presets_are_valid_and_use_role_names():
    workloads = {"VLM-S": "vlm", "T2V-L": "t2v", "LM-7B": "text"}
    for model in list_models():
        validate_model(model)
        validate_parallel(model)
        assert {m.name for m in model.modules} <= {"vit", "llm", "dit"}
    for name, w in workloads.items():
        assert get_model(name).workload == w


def test_names_are_case_insensitive():
    assert get_model("vlm-s") is get_model("VLM-S")
    assert get_model("TINY-T2V").name == "tiny-t2v"
    assert get_module_preset("vit-5b").name == "ViT-5B"
    assert load_model("t2v-l").name == "T2V-L"


def test_unknown_model_lists_names():
    with pytest.raises(BadInput) as err:
        get_model("VLM-Q")
    for name in ("VLM-S", "T2V-L", "tiny-vlm"):
        assert name in str(err.value)
    assert list_model_names()[0] == "VLM-S"


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"tp": 7}, "tp 7 does not divide the 16 attention heads of module vit (ViT-5B)"),
        ({"tp": 0}, "tp must be an integer >= 1"),
        ({"dp": -1}, "dp must be an integer >= 1"),
        ({"pp": 64}, "63 layers, fewer than its 64 pipeline chunks"),
        ({"tp": 16}, "tp 16 does not divide the 8 key/value heads of module llm (Llama3-8B)"),
    ],
)
def test_parallel_rules(kwargs, fragment):
    with pytest.raises(BadInput, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        with_overrides(get_model("VLM-S"), **kwargs)


def test_segments_and_gpus():
    model = get_model("VLM-S")
    validate_parallel(model, segments={"llm": 8})
    with pytest.raises(BadInput, match="32 layers, fewer than its 36 pipeline chunks"):
        validate_parallel(model, segments={"llm": 9})
    with pytest.raises(BadInput, match="segments module"):
        validate_parallel(model, segments={"dit": 1})
    validate_parallel(model, gpus=16)
    with pytest.raises(BadInput, match="gpus 32 != tp 4 x pp 4 x dp 1 = 16"):
        validate_parallel(model, gpus=32)
    changed = with_overrides(model, tp=2, dp=4, segments={"vit": 2})
    assert (changed.parallel.tp, changed.parallel.pp, changed.parallel.dp) == (2, 4, 4)
    assert changed.parallel.segments_for("vit") == 2 and model.parallel.tp == 4


def test_ffn_divisibility():
    model = get_model("tiny-t2v")
    with pytest.raises(BadInput, match="tp 4 does not divide the 2 key/value heads"):
        with_overrides(model, tp=4)


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_model_file_round_trip(tmp_path, suffix):
    for model in (get_model("VLM-S"), get_model("tiny-t2v"), get_model("LM-7B")):
        path = tmp_path / f"{model.name}{suffix}"
        data = model_to_dict(model)
        path.write_text(json.dumps(data) if suffix == ".json" else yaml.safe_dump(data))
        loaded = load_model(str(path))
        assert loaded == model
        assert loaded.extra["module_presets"] == model.extra["module_presets"]


def test_minimal_model_file_uses_presets_and_infers_edges(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(
        "name: my-vlm\n"
        "modules:\n"
        "  - {name: vit, preset: ViT-5B, layers: 32}\n"
        "  - {name: llm, preset: llama3-8b}\n"
        "parallel: {tp: 4, pp: 4, segments: {llm: 2}}\n"
    )
    model = load_model(str(path))
    assert model.workload == "vlm" and model.module("vit").layers == 32
    assert model.module("vit").out_hidden == 4096
    assert [(e.src, e.dst, e.kind) for e in model.edges] == [("vit", "llm", "image_embeddings")]
    assert model.parallel.segments_for("llm") == 2


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("name: x\nmodules: []\n", "modules must be a non-empty list"),
        ("name: x\nmodules:\n  - {name: a, preset: ViT-5B, colour: red}\n", "unknown key 'colour' in module #1"),
        ("name: x\nmodules:\n  - {name: a, kind: decoder, layers: 2}\n", "needs a preset or the fields hidden"),
        ("name: x\nmodules:\n  - {name: a, preset: Llama3-8B, layers: two}\n", "layers of module 'a' must be an int"),
        ("name: x\nmodules:\n  - {name: a, preset: Llama3-99B}\n", "unknown module preset 'Llama3-99B'"),
        ("name: x\nmodules:\n  - {name: a, preset: Llama3-8B}\nparallel: {tp: 3}\n", "tp 3 does not divide"),
        (
            "name: x\nmodules:\n  - {name: a, preset: Llama3-8B}\n"
            "edges:\n  - {src: a, dst: b, kind: image_embeddings}\n",
            "unknown edge endpoint 'b'",
        ),
        (
            "name: x\nmodules:\n  - {name: a, preset: Llama3-8B}\n  - {name: v, preset: ViT-5B}\n"
            "edges:\n  - {src: v, dst: a, kind: image_embeddings}\n",
            "topological order",
        ),
        ("name: x\nmodules:\n  - {name: a, preset: Llama3-8B, heads: 30}\n", "not divisible by its 30 attention heads"),
        ("name: x\nworkload: audio\nmodules:\n  - {name: a, preset: Llama3-8B}\n", "unknown workload 'audio'"),
        ("name: [unclosed\n", "cannot be parsed"),
    ],
)
def test_bad_model_files(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(BadInput, match=fragment.replace("(", r"\(").replace("[", r"\[")):
        load_model(str(path))


def test_missing_model_file():
    with pytest.raises(BadInput, match="not found"):
        load_model("no/such/model.yaml")


def test_cli_models_json():
    out = subprocess.run(
        [sys.executable, "-m", "dip.cli.main", "models", "--json"], capture_output=True, text=True, check=True
    ).stdout
    data = json.loads(out)
    rows = {r["name"]: r for r in data["models"]}
    assert set(rows) == set(list_model_names())
    s = rows["VLM-S"]
    assert (s["tp"], s["pp"], s["dp"], s["gpus"], s["workload"]) == (4, 4, 1, 16, "vlm")
    assert [m["preset"] for m in s["modules"]] == ["ViT-5B", "Llama3-8B"]
    assert s["params"] == sum(m["params"] for m in s["modules"])
    assert {"name", "kind", "layers", "params", "preset"} <= set(s["modules"][0])


def test_cli_models_table():
    out = subprocess.run(
        [sys.executable, "-m", "dip.cli.main", "models"], capture_output=True, text=True, check=True
    ).stdout
    assert "VLM-S" in out and "ViT-5B" in out and "tiny-t2v" in out
