"""Vision transformer: patch embedding, pre-LN blocks (full attention within each image), spatial merge
and projector into the language model's embedding space."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dip.runtime.models.data import UnitData
from dip.runtime.models.layers import Attention, GeluMLP
from dip.spec.model import ModelSpec, ModuleSpec


def patchify_images(pixels: Tensor, patch: int) -> Tensor:
    """``[n, C, S, S]`` -> ``[n, side * side, C * patch * patch]`` in row-major patch order."""
    n, c, s, _ = pixels.shape
    side = s // patch
    x = pixels[:, :, : side * patch, : side * patch].reshape(n, c, side, patch, side, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(n, side * side, c * patch * patch)


def merge_patches(x: Tensor, side: int, merge: int) -> Tensor:
    """``[n * side * side, H]`` -> ``[n * (side // merge) ** 2, H * merge * merge]``: each merged token
    concatenates a ``merge x merge`` square of neighbouring patches."""
    hidden = x.shape[-1]
    k = side // merge
    x = x.view(-1, side, side, hidden)[:, : k * merge, : k * merge]
    x = x.reshape(-1, k, merge, k, merge, hidden).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, merge * merge * hidden)


class VitPre(nn.Module):
    """Linear patch embedding plus learned positions."""

    def __init__(self, model: ModelSpec, spec: ModuleSpec):
        super().__init__()
        self.spec = spec
        self.patch = nn.Linear(spec.in_channels * spec.patch_size**2, spec.hidden)
        self.pos = nn.Parameter(torch.zeros(spec.patches_per_image, spec.hidden))

    def forward(self, inputs: dict[str, Tensor], data: UnitData) -> tuple[Tensor, dict[str, Tensor]]:
        x = patchify_images(data.pixels, self.spec.patch_size)
        return (self.patch(x) + self.pos).reshape(-1, self.spec.hidden), {}


class VitBlock(nn.Module):
    """LN -> attention (full within each image) -> LN -> GELU MLP, both residual."""

    def __init__(self, model: ModelSpec, spec: ModuleSpec):
        super().__init__()
        self.norm1 = nn.LayerNorm(spec.hidden, eps=1e-6)
        self.attn = Attention(spec.hidden, spec.heads, spec.kv_heads, bias=True)
        self.norm2 = nn.LayerNorm(spec.hidden, eps=1e-6)
        self.mlp = GeluMLP(spec.hidden, spec.ffn_hidden)

    def forward(self, x: Tensor, side: dict[str, Tensor], data: UnitData, recompute_attention: bool = False) -> Tensor:
        x = x + self.attn(self.norm1(x), data.self_mask(causal=False), recompute_core=recompute_attention)
        return x + self.mlp(self.norm2(x))


class VitPost(nn.Module):
    """LN -> spatial merge -> Linear(H * merge^2 -> out) -> GELU -> Linear(out -> out)."""

    def __init__(self, model: ModelSpec, spec: ModuleSpec):
        super().__init__()
        if spec.out_hidden <= 0:
            raise ValueError(f"vit {spec.name} needs out_hidden > 0 (the consumer's hidden size)")
        self.spec = spec
        self.norm = nn.LayerNorm(spec.hidden, eps=1e-6)
        self.fc1 = nn.Linear(spec.hidden * spec.spatial_merge**2, spec.out_hidden)
        self.fc2 = nn.Linear(spec.out_hidden, spec.out_hidden)

    def forward(self, x: Tensor, side: dict[str, Tensor], data: UnitData) -> dict[str, Tensor]:
        side_len = self.spec.image_size // self.spec.patch_size
        x = self.norm(x)
        if data.shard is not None:  # the merge joins neighbouring patches: every rank needs all of them
            x = data.shard.gather(x, data.tokens)
        merged = merge_patches(x, side_len, self.spec.spatial_merge)
        return {"image_embeds": self.fc2(F.gelu(self.fc1(merged), approximate="tanh"))}
