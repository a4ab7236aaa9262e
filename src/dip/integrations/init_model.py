"""Random-init checkpoints that look exactly like downloaded ones (``dip init-model``).

* ``qwen2-vl``: a transformers ``Qwen2VLForConditionalGeneration`` folder: ``config.json``,
  ``model.safetensors``, a byte-level BPE tokenizer with Qwen2-VL's special tokens and chat template,
  and the image processor's ``preprocessor_config.json``;
* ``wan``: a diffusers pipeline folder in Wan's layout: ``model_index.json``, ``transformer/``
  (``WanTransformer3DModel``), ``text_encoder/`` (transformers ``UMT5EncoderModel``), ``tokenizer/``
  (a small unigram tokenizer) and ``scheduler/`` (flow matching).

Tokenizers are trained offline with the ``tokenizers`` library on a small built-in corpus; weights come
from the libraries' own initialisation under ``torch.manual_seed(seed)``.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable

import torch

from dip.errors import BadInput

__all__ = ["FAMILIES", "init_model"]

QWEN2_VL_SPECIALS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
QWEN2_VL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' or 'video' in content %}"
    "<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WORDS = (
    "the a an of and in on with is are this that what where how many picture image shows there red blue green "
    "yellow small large round square cat dog bird tree house car boat cloud sun river mountain street table "
    "chair window door flower apple book lamp describe colour objects largest shape you helpful assistant "
    "video camera moves slowly people walk city night day water light"
).split()


def _corpus(seed: int, lines: int = 400) -> list[str]:
    rng = random.Random(seed)
    out = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 16))) for _ in range(lines)]
    return out + [w.capitalize() + "." for w in WORDS]


def qwen2_vl_tokenizer(seed: int):
    """A byte-level BPE tokenizer (Qwen2's pre-tokenizer) with Qwen2-VL's special tokens and chat template."""
    from tokenizers import (
        Tokenizer,
        models,
        pre_tokenizers,
        trainers,
    )  # tokenizers: only dip init-model builds tokenizers
    from transformers.models.qwen2.tokenization_qwen2 import (
        Qwen2Tokenizer,
    )  # transformers (seconds to load): only a checkpoint of this family needs it

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus(seed), trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tok = Qwen2Tokenizer(
        vocab=model["vocab"],
        merges=merges,
        errors="replace",
        unk_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tok.add_special_tokens({"additional_special_tokens": list(QWEN2_VL_SPECIALS)})
    tok.chat_template = QWEN2_VL_TEMPLATE
    return tok


def init_qwen2_vl(out: str, seed: int) -> None:
    """A tiny random-init Qwen2-VL checkpoint folder (3 vision blocks, 4 decoder layers, tied embeddings)."""
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
    )  # transformers (seconds to load): only a checkpoint of this family needs it
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )  # transformers (seconds to load): only a checkpoint of this family needs it

    tok = qwen2_vl_tokenizer(seed)
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN2_VL_SPECIALS}
    pad = tok.convert_tokens_to_ids("<|endoftext|>")
    text = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        tie_word_embeddings=True,
        bos_token_id=pad,
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=pad,
    )
    vision = dict(
        depth=4,
        embed_dim=32,
        hidden_size=64,
        num_heads=2,
        mlp_ratio=2,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        in_channels=3,
    )
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    processor = Qwen2VLImageProcessorPil(
        min_pixels=56 * 56, max_pixels=28 * 28 * 64, patch_size=14, temporal_patch_size=2, merge_size=2
    )
    model.save_pretrained(out)
    tok.save_pretrained(out)
    processor.save_pretrained(out)


def umt5_tokenizer(seed: int):
    """A small unigram (sentencepiece-style) tokenizer for the UMT5 text encoder."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )  # tokenizers: only dip init-model builds tokenizers
    from transformers import (
        T5TokenizerFast,
    )  # transformers (seconds to load): only a checkpoint of this family needs it

    uni = Tokenizer(models.Unigram())
    uni.normalizer = normalizers.NFKC()
    uni.pre_tokenizer = pre_tokenizers.Metaspace()
    uni.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=300, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False
    )
    uni.train_from_iterator(_corpus(seed + 1), trainer)
    return T5TokenizerFast(
        tokenizer_object=uni, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", extra_ids=0, model_max_length=512
    )


def init_wan(out: str, seed: int) -> None:
    """A tiny random-init Wan text-to-video pipeline folder (UMT5 encoder + Wan video transformer)."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        WanTransformer3DModel,
    )  # diffusers (seconds to load): only a checkpoint of this family needs it
    from transformers import (
        UMT5Config,
        UMT5EncoderModel,
    )  # transformers (seconds to load): only a checkpoint of this family needs it

    tok = umt5_tokenizer(seed)
    torch.manual_seed(seed)
    encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tok),
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=3,
            num_heads=4,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=32,
            feed_forward_proj="gated-gelu",
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            decoder_start_token_id=tok.pad_token_id,
            tie_word_embeddings=False,
            dropout_rate=0.0,
        )
    )
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=16,
        out_channels=16,
        text_dim=32,
        freq_dim=32,
        ffn_dim=48,
        num_layers=4,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=64,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    encoder.save_pretrained(os.path.join(out, "text_encoder"))
    tok.save_pretrained(os.path.join(out, "tokenizer"))
    transformer.save_pretrained(os.path.join(out, "transformer"))
    scheduler.save_pretrained(os.path.join(out, "scheduler"))
    index = {
        "_class_name": "WanPipeline",
        "_diffusers_version": _diffusers_version(),
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "WanTransformer3DModel"],
        "vae": [None, None],
    }
    with open(os.path.join(out, "model_index.json"), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2)


def _diffusers_version() -> str:
    import diffusers  # diffusers (seconds to load): only a checkpoint of this family needs it

    return diffusers.__version__


FAMILIES: dict[str, Callable[[str, int], None]] = {"qwen2-vl": init_qwen2_vl, "wan": init_wan}


def init_model(family: str, *, out: str, seed: int = 0, tiny: bool = True) -> str:
    """Write a random-init checkpoint folder of ``family``.

    Args:
        family: one of :data:`FAMILIES` (``qwen2-vl``, ``wan``).
        out: the folder to write (must not hold a checkpoint already).
        seed: seed of the weights and the tokenizer corpus.
        tiny: only tiny configurations are offered (a few layers, small widths).

    Returns:
        The folder written.
    """
    if family not in FAMILIES:
        raise BadInput(f"unknown model family {family!r}; valid families: {', '.join(FAMILIES)}")
    if not tiny:
        raise BadInput("only --tiny checkpoints can be made (full-size models are downloaded, not initialised)")
    if seed < 0:
        raise BadInput(f"seed must be an integer >= 0, got {seed}")
    if os.path.exists(os.path.join(out, "config.json")) or os.path.exists(os.path.join(out, "model_index.json")):
        raise BadInput(f"out folder {out!r} already holds a checkpoint")
    os.makedirs(out, exist_ok=True)
    FAMILIES[family](out, seed)
    return out
