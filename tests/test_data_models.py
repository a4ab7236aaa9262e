"""Models for the data tests: the presets, plus a tiny text-only model (no preset has one)."""

from __future__ import annotations

from dip.spec import presets
from dip.spec.model import ModelSpec, ModuleSpec, ParallelSpec


def get_model(name: str) -> ModelSpec:
    """The preset ``name``, or the hand-built ``tiny-text`` (one small decoder, context 256)."""
    if name == "tiny-text":
        llm = ModuleSpec("llm", "decoder", 2, 32, 64, 2, 1, vocab_size=256)
        return ModelSpec(name, (llm,), (), ParallelSpec(pp=2), workload="text", context_length=256)
    return presets.get_model(name)


def test_presets_follow_the_paper_settings():
    vlm, t2v, tiny = get_model("VLM-S"), get_model("T2V-S"), get_model("tiny-vlm")
    assert vlm.module("vit").tokens_per_image == 169
    assert vlm.context_length == 8192 and vlm.max_images_per_microbatch == 48
    assert t2v.module("dit").video_fps == 16 and t2v.max_video_seconds == 16
    assert t2v.max_clips_per_microbatch == 8
    assert tiny.modules_of_kind("vit")[0].tokens_per_image == 4 and tiny.context_length == 256
    tiny_t2v = get_model("tiny-t2v")
    assert tiny_t2v.max_clips_per_microbatch == 4 and tiny_t2v.max_video_seconds == 8
