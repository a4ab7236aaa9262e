"""Bring your own model: an MLP-mixer regressor run through DIP's chunk interface.

Each sample of a micro-batch is a grid of ``PATCHES`` patches with ``PATCH_DIM`` features and a
``TARGET_DIM`` regression target. The mixer is cut into two pipeline chunks; composing them (with the
boundary tensor detached, as on a real pipeline) gives the loss and gradients of the whole model.

Run: ``python examples/byo_model.py`` (two chunks in one process against the whole model), or train it on
two processes with per-batch DIP plans, compared with one-process training::

    dip train --model examples/byo_model.py:mixer_model --nproc 2 --schedule dip --steps 2 --check-reference

(``dip train`` calls ``mixer_model`` with the ``seed`` and ``dtype`` it accepts.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dip.data.meta import BatchMeta, MicroBatchMeta
from dip.runtime.byo import ByoModel, ByoModule, ByoUnit
from dip.runtime.models.reference import ReferenceModel, reference_step
from dip.runtime.models.seeding import generator
from dip.runtime.models.sequential import ChunkedModel
from dip.spec.model import ModelSpec, ModuleSpec, ParallelSpec

PATCHES, PATCH_DIM, HIDDEN, TARGET_DIM, LAYERS = 16, 12, 32, 4, 6


class MixerBlock(nn.Module):
    """Token mixing across the patches of each sample, then channel mixing."""

    def __init__(self):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(HIDDEN), nn.LayerNorm(HIDDEN)
        self.token_mlp = nn.Sequential(nn.Linear(PATCHES, 2 * PATCHES), nn.GELU(), nn.Linear(2 * PATCHES, PATCHES))
        self.channel_mlp = nn.Sequential(nn.Linear(HIDDEN, 4 * HIDDEN), nn.GELU(), nn.Linear(4 * HIDDEN, HIDDEN))

    def forward(self, hidden: Tensor, data: dict) -> Tensor:
        x = hidden.view(-1, PATCHES, HIDDEN)
        x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        x = x + self.channel_mlp(self.norm2(x))
        return x.reshape(-1, HIDDEN)


class Embed(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(PATCH_DIM, HIDDEN)

    def forward(self, inputs: dict[str, Tensor], data: dict) -> Tensor:
        return self.proj(data["patches"])


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm, self.out = nn.LayerNorm(HIDDEN), nn.Linear(HIDDEN, TARGET_DIM)

    def forward(self, hidden: Tensor, data: dict) -> dict[str, Tensor]:
        pooled = self.norm(hidden).view(-1, PATCHES, HIDDEN).mean(dim=1)
        return {"loss_sum": F.mse_loss(self.out(pooled), data["target"], reduction="sum")}


def make_data(unit: ByoUnit) -> dict[str, Tensor]:
    """Patches and target of every sample, seeded by (step, micro-batch, sample) only."""
    patches, targets = [], []
    for s in range(unit.mb.samples):
        g = generator(unit.step_seed, unit.mb_index, "mixer-sample", s)
        patches.append(torch.randn(PATCHES, PATCH_DIM, generator=g))
        targets.append(torch.randn(TARGET_DIM, generator=g))
    return {"patches": torch.cat(patches).to(unit.dtype), "target": torch.stack(targets).to(unit.dtype)}


def mixer_model(seed: int = 0, dtype: torch.dtype = torch.float32) -> ByoModel:
    """The mixer as a one-module BYO model (the ModuleSpec is only the planner's cost proxy)."""
    spec = ModelSpec(
        "byo-mixer",
        (ModuleSpec("mixer", "decoder", LAYERS, HIDDEN, 4 * HIDDEN, 1, 1, vocab_size=PATCH_DIM),),
        (),
        ParallelSpec(pp=2),
        workload="text",
    )
    module = ByoModule(
        make_block=lambda i: MixerBlock(),
        make_pre=Embed,
        make_post=Head,
        hidden_shape=lambda mb, a, b: (mb.samples * PATCHES, HIDDEN),
    )
    return ByoModel(
        spec, {"mixer": module}, make_data, loss_tokens=lambda mb: mb.samples * TARGET_DIM, seed=seed, dtype=dtype
    )


def main() -> None:
    batch = BatchMeta((MicroBatchMeta((5, 7, 3)), MicroBatchMeta((4,))))  # 3 samples, then 1
    ref_loss, ref_grads = reference_step(ReferenceModel(mixer_model(dtype=torch.float64)), batch, step_seed=1)
    chunked = ChunkedModel(mixer_model(dtype=torch.float64), cuts={"mixer": [0, 2, LAYERS]})
    loss, grads = chunked.step(batch, step_seed=1, strategies={"mixer": ["full", "none"] * (LAYERS // 2)})
    worst = max((grads[n] - g).abs().max().item() for n, g in ref_grads.items())
    print(f"loss whole={ref_loss.item():.12f} chunked={loss.item():.12f}; max |grad diff| = {worst:.2e}")
    print(f"{len(grads)} parameters, e.g. {next(iter(grads))}")


if __name__ == "__main__":
    main()
