"""Checkpoint weights: init-model folders load with from_pretrained, a chunk reads only its own tensors,
trained weights written back load with from_pretrained; the planner's spec comes from the config."""

from __future__ import annotations

import json
import os

import pytest
import torch

from dip.errors import BadInput
from dip.integrations.loader import load_model, model_source
from hf_fixtures import make_t2v, make_vlm

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("weights"))


def test_init_model_folders_load_with_from_pretrained(root):
    from diffusers import WanTransformer3DModel
    from transformers import AutoModelForImageTextToText, AutoTokenizer, UMT5EncoderModel

    vlm, _ = make_vlm(root)
    m = AutoModelForImageTextToText.from_pretrained(vlm)
    assert type(m).__name__ == "Qwen2VLForConditionalGeneration"
    tok = AutoTokenizer.from_pretrained(vlm)
    assert tok.chat_template and tok.convert_tokens_to_ids("<|image_pad|>") == m.config.image_token_id
    wan, _ = make_t2v(root)
    assert set(os.listdir(wan)) >= {"model_index.json", "transformer", "text_encoder", "tokenizer", "scheduler"}
    assert WanTransformer3DModel.from_pretrained(os.path.join(wan, "transformer")).config.num_layers == 4
    UMT5EncoderModel.from_pretrained(os.path.join(wan, "text_encoder"))


def test_spec_is_derived_from_the_config(root):
    vlm, _ = make_vlm(root)
    spec = load_model(vlm).spec
    cfg = json.load(open(os.path.join(vlm, "config.json")))
    vit, llm = spec.module("vision"), spec.module("llm")
    assert (vit.layers, vit.hidden, vit.heads) == (
        cfg["vision_config"]["depth"],
        cfg["vision_config"]["embed_dim"],
        cfg["vision_config"]["num_heads"],
    )
    t = cfg["text_config"]
    assert (llm.layers, llm.hidden, llm.heads, llm.kv_heads, llm.vocab_size) == (
        t["num_hidden_layers"],
        t["hidden_size"],
        t["num_attention_heads"],
        t["num_key_value_heads"],
        t["vocab_size"],
    )
    assert vit.patch_size == 14 and vit.spatial_merge == 2 and vit.out_hidden == llm.hidden
    wan, _ = make_t2v(root)
    dit = load_model(wan).spec.module("dit")
    assert dit.layers == 4 and dit.latent_channels == 16 and dit.patch_hw == 2


def test_a_chunk_reads_only_its_tensors(root):
    vlm, _ = make_vlm(root)
    model = load_model(vlm)
    model.build_chunk("llm", 1, 3)
    assert model.weights.reads and all(
        n.startswith(("model.layers.1.", "model.layers.2.")) for n in model.weights.reads
    )
    model.weights.reads.clear()
    model.build_chunk("vision", 0, 1)
    assert {n.split(".")[1] for n in model.weights.reads} == {"patch_embed", "blocks"}
    assert all(not n.startswith("visual.blocks.") or n.startswith("visual.blocks.0.") for n in model.weights.reads)


def test_save_back_round_trip(root, tmp_path):
    from transformers import AutoModelForImageTextToText

    vlm, _ = make_vlm(root)
    model = load_model(vlm, dtype="float64")
    params = {}
    for m in model.spec.modules:
        for a, b in ((0, 2), (2, m.layers)):
            for n, p in model.build_chunk(m.name, a, b).canonical_named_parameters():
                params[n] = p.detach() + 0.5  # "trained"
    out = str(tmp_path / "saved")
    model.save_checkpoint(out, params)
    a = AutoModelForImageTextToText.from_pretrained(vlm, dtype=torch.float64)
    b = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float64)
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert pa.keys() == pb.keys()
    for k in pa:
        torch.testing.assert_close(pb[k], (pa[k].float() + 0.5).double(), rtol=0, atol=1e-6, msg=k)  # stored float32


def test_wan_save_back_round_trip(root, tmp_path):
    from diffusers import WanTransformer3DModel

    wan, _ = make_t2v(root)
    model = load_model(wan)
    params = {
        n: p.detach() * 2
        for m in model.spec.modules
        for n, p in model.build_chunk(m.name, 0, m.layers).canonical_named_parameters()
    }
    out = str(tmp_path / "wan")
    model.save_checkpoint(out, params)
    a = WanTransformer3DModel.from_pretrained(os.path.join(wan, "transformer"))
    b = WanTransformer3DModel.from_pretrained(os.path.join(out, "transformer"))
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(q, p * 2, msg=n)
    assert os.path.exists(os.path.join(out, "tokenizer", "tokenizer.json"))


def test_model_source_and_bad_specs(root, tmp_path):
    vlm, _ = make_vlm(root)
    assert model_source(vlm) == "transformers"
    assert model_source("examples/byo_model.py:mixer_model") == "factory"
    assert model_source("dip.runtime.models:SpecModel") == "factory"
    assert model_source("tiny-vlm") == "spec"
    with pytest.raises(BadInput, match=r"neither model_index\.json"):
        load_model(str(tmp_path))
    with pytest.raises(BadInput, match="no function"):
        load_model("examples/byo_model.py:nope")
