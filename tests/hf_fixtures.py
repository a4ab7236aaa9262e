"""Tiny checkpoints, sample data and the plain transformers / diffusers reference step for the
integration tests (everything offline)."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from dip.data.meta import BatchMeta
from dip.data.packing import pack_documents
from dip.data.sample_data import write_t2v_sample, write_vlm_sample
from dip.integrations.init_model import init_model
from dip.integrations.loader import load_model

F64 = torch.float64


def make_vlm(root: str, samples: int = 14) -> tuple[str, str]:
    """(checkpoint folder, data.jsonl) of a tiny Qwen2-VL and a sample dataset under ``root``."""
    ckpt, data = os.path.join(root, "qwen2-vl"), os.path.join(root, "vlm-data")
    if not os.path.exists(ckpt):
        init_model("qwen2-vl", out=ckpt, seed=0)
        write_vlm_sample(data, samples=samples, seed=0, wds=True)
    return ckpt, os.path.join(data, "data.jsonl")


def make_t2v(root: str, samples: int = 6) -> tuple[str, str]:
    ckpt, data = os.path.join(root, "wan"), os.path.join(root, "t2v-data")
    if not os.path.exists(ckpt):
        init_model("wan", out=ckpt, seed=0)
        write_t2v_sample(data, samples=samples, seed=0)
    return ckpt, os.path.join(data, "captions.jsonl")


def provider_and_batch(
    ckpt: str, data: str, *, first: int, context: int, max_images: int = 8, max_clips: int = 2, pp: int = 1
):
    """The integrated model (float64) with ``data`` attached and a batch of its first samples."""
    model = load_model(ckpt, dtype=F64)
    ds = model.open_data(data)
    mbs = pack_documents(ds.documents()[:first], context_length=context, max_images=max_images, max_clips=max_clips)
    model.spec = model.spec.with_parallel(pp=pp)
    return model, ds, BatchMeta(tuple(mbs))


def hf_vlm_reference(ckpt: str, ds, batch: BatchMeta) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss and gradients (checkpoint names) of the plain transformers model, one sample at a time."""
    from transformers import Qwen2VLForConditionalGeneration

    hf = Qwen2VLForConditionalGeneration.from_pretrained(ckpt, dtype=F64)
    total, loss = 0, 0.0
    for mb in batch.microbatches:
        for i in mb.sample_ids:
            ids, labels = ds.text(i)
            meta = ds.meta(i)
            kw = {}
            if meta.image_grids:
                kw = {
                    "pixel_values": torch.cat([ds.image(i, k) for k in range(len(meta.image_grids))]).to(F64),
                    "image_grid_thw": torch.tensor(meta.image_grids),
                }
            mm = (ids == hf.config.image_token_id).int()[None]
            logits = hf(input_ids=ids[None], mm_token_type_ids=mm, **kw).logits[0, :-1]
            loss = loss + F.cross_entropy(logits, labels[1:], ignore_index=-100, reduction="sum")
            total += ds.loss_tokens(i)
    (loss / total).backward()
    grads = {}
    for name, p in hf.named_parameters():  # module names -> checkpoint names
        key = (
            "model." + name[len("model.language_model.") :]
            if name.startswith("model.language_model.")
            else name[len("model.") :]
        )
        grads[key] = p.grad.detach().clone()
    grads["lm_head.weight"] = grads["model.embed_tokens.weight"]  # tied
    return float(loss.detach() / total), grads


def hf_wan_reference(ckpt: str, ds, batch: BatchMeta, shift: float, step_seed: int):
    """Loss and gradients ((component, name)) of the plain UMT5 encoder + Wan transformer, clip by clip."""
    from diffusers import WanTransformer3DModel
    from transformers import UMT5EncoderModel

    from dip.integrations.t2v import flow_match_draw

    enc = UMT5EncoderModel.from_pretrained(os.path.join(ckpt, "text_encoder"), dtype=F64)
    dit = WanTransformer3DModel.from_pretrained(os.path.join(ckpt, "transformer")).to(F64)
    total, loss = 0, 0.0
    for mb in batch.microbatches:
        for i in mb.sample_ids:
            text = enc(input_ids=ds.text(i)[None]).last_hidden_state
            x0 = ds.latents(i)
            noise, sigma = flow_match_draw(step_seed, i, tuple(x0.shape), shift)
            noisy = ((1 - sigma) * x0.double() + sigma * noise.double()).to(F64)
            target = (noise.double() - x0.double()).to(F64)
            pred = dit(noisy[None], torch.tensor([sigma * 1000.0], dtype=F64), text).sample[0]
            loss = loss + (pred - target).pow(2).sum()
            total += ds.loss_tokens(i)
    (loss / total).backward()
    grads = {("text_encoder", n): p.grad.detach().clone() for n, p in enc.named_parameters()}
    grads.update({("transformer", n): p.grad.detach().clone() for n, p in dit.named_parameters()})
    return float(loss.detach() / total), grads


def max_rel_err(model, grads: dict[str, torch.Tensor], ref: dict) -> tuple[float, str]:
    """Largest ``|g - r|_inf / (|r|_inf + 1e-6)`` over DIP's canonical parameters (checked against the
    reference under their checkpoint names; every reference parameter must be covered)."""
    worst, where, seen = 0.0, "", set()
    for name, g in grads.items():
        key = model.checkpoint_name(name)
        r = ref[key]
        seen.add(key)
        err = float((g.double() - r.double()).abs().max() / (r.double().abs().max() + 1e-6))
        if err >= worst:
            worst, where = err, name
    missing = set(ref) - seen
    assert not missing, f"reference parameters without a DIP gradient: {sorted(map(str, missing))[:5]}"
    return worst, where
