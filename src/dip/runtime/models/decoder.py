"""Decoder language model: token embeddings with image embeddings scattered in, RMSNorm + RoPE +
grouped-query attention (causal within each sample) + SwiGLU blocks, final norm and either an LM head
with a summed token cross-entropy or the text hidden states (text encoder of a T2V model)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dip.data.tensors import image_tokens
from dip.runtime.models.data import UnitData
from dip.runtime.models.layers import Attention, RMSNorm, SwiGLU
from dip.runtime.models.sequence import cross_entropy_sum
from dip.spec.model import ModelSpec, ModuleSpec


class DecoderPre(nn.Module):
    """Token embedding; image embeddings (if any) are placed at their positions of the sequence."""

    def __init__(self, model: ModelSpec, spec: ModuleSpec):
        super().__init__()
        if spec.vocab_size <= 0:
            raise ValueError(f"decoder {spec.name} needs vocab_size > 0")
        self.spec = spec
        self.image_tokens = image_tokens(model)
        self.embed = nn.Embedding(spec.vocab_size, spec.hidden)

    def forward(self, inputs: dict[str, Tensor], data: UnitData) -> tuple[Tensor, dict[str, Tensor]]:
        rows = [self.embed(data.token_ids)]
        n_image_rows = len(data.seq_index) - len(data.token_ids)
        if n_image_rows:
            images = inputs.get("image_embeds")
            if images is None or images.shape != (n_image_rows, self.spec.hidden):
                got = None if images is None else tuple(images.shape)
                want = (n_image_rows, self.spec.hidden)
                raise ValueError(f"{self.spec.name}: expected image_embeds {want}, got {got}")
            rows.append(images)
        return torch.cat(rows)[data.seq_index], {}


class DecoderBlock(nn.Module):
    """RMSNorm -> GQA with RoPE (causal within each sample) -> RMSNorm -> SwiGLU, both residual."""

    def __init__(self, model: ModelSpec, spec: ModuleSpec):
        super().__init__()
        self.input_norm = RMSNorm(spec.hidden)
        self.attn = Attention(spec.hidden, spec.heads, spec.kv_heads)
        self.post_attn_norm = RMSNorm(spec.hidden)
        self.mlp = SwiGLU(spec.hidden, spec.ffn_hidden)

    def forward(self, x: Tensor, side: dict[str, Tensor], data: UnitData, recompute_attention: bool = False) -> Tensor:
        rope = data.rope(self.attn.head_dim, x.dtype)
        x = x + self.attn(
            self.input_norm(x), data.self_mask(causal=True), rope=rope, recompute_core=recompute_attention
        )
        return x + self.mlp(self.post_attn_norm(x))


class DecoderPost(nn.Module):
    """Final RMSNorm, then the summed next-token loss (``lm_head``) or the text positions' states."""

    def __init__(self, model: ModelSpec, spec: ModuleSpec):
        super().__init__()
        self.norm = RMSNorm(spec.hidden)
        self.head = nn.Linear(spec.hidden, spec.vocab_size, bias=False) if spec.lm_head else None

    def forward(self, x: Tensor, side: dict[str, Tensor], data: UnitData) -> dict[str, Tensor]:
        x = self.norm(x)
        if data.shard is not None:  # leave the sequence-parallel region: every rank gets the whole sequence
            x = data.shard.gather(x, data.tokens)
        if self.head is None:
            return {"text_hidden": x[data.text_positions]}
        logits = self.head(x[data.loss_positions])  # vocabulary-parallel under tensor parallelism
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        return {"loss_sum": cross_entropy_sum(logits, data.labels)}
