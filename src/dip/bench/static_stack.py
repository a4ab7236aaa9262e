"""A static-shape stack of tiny decoder blocks, runnable by both our executor and torch pipelining.

The same blocks (same seeds, same values) serve as a bring-your-own model for
:class:`~dip.runtime.executor.Executor` and as ``nn.Module`` stages for
``torch.distributed.pipelining``'s ``PipelineStage`` / ``Schedule1F1B``; every micro-batch is a
``[1, tokens, hidden]`` tensor (the same shapes, hence the same kernels, in both engines) with a
squared-error loss. Used by ``dip bench runtime``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dip.data.meta import BatchMeta, MicroBatchMeta
from dip.runtime.byo import ByoModel, ByoModule, ByoUnit
from dip.runtime.models.seeding import generator
from dip.schedule.baselines.common import chain_of
from dip.schedule.baselines.one_f_one_b import one_f_one_b_order
from dip.schedule.ir import Plan
from dip.schedule.units import linear_stage_graph, uniform_units
from dip.spec.model import ModelSpec, ModuleSpec, ParallelSpec

MODULE = "blocks"


class Block(nn.Module):
    """Pre-LN causal self-attention and GELU MLP on ``[..., tokens, hidden]``."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, 4 * hidden)
        self.fc2 = nn.Linear(4 * hidden, hidden)

    def forward(self, x: Tensor, data=None) -> Tensor:
        *lead, t, h = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(*lead, t, 3, self.heads, h // self.heads).unbind(-3)
        a = F.scaled_dot_product_attention(
            q.transpose(-2, -3), k.transpose(-2, -3), v.transpose(-2, -3), is_causal=True
        )
        x = x + self.out(a.transpose(-2, -3).reshape(*lead, t, h))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class Inputs(nn.Module):
    def forward(self, inputs, data) -> Tensor:
        return data["x"]


class SquaredError(nn.Module):
    def forward(self, hidden: Tensor, data) -> dict[str, Tensor]:
        return {"loss_sum": (hidden - data["y"]).pow(2).sum()}


@dataclass(frozen=True)
class StackShape:
    """``layers`` blocks of width ``hidden`` over micro-batches of ``tokens`` rows."""

    layers: int = 8
    hidden: int = 64
    heads: int = 4
    tokens: int = 128
    microbatches: int = 8


class Dataset:
    """Inputs and targets of every micro-batch (``1 x tokens x hidden`` each, seeded by step and micro-batch),
    made once and then served from memory, like the tensors handed to torch pipelining's ``step``."""

    def __init__(self, hidden: int):
        self.hidden = hidden
        self.rows: dict[tuple, dict[str, Tensor]] = {}

    def __call__(self, unit: ByoUnit) -> dict[str, Tensor]:
        key = (unit.step_seed, unit.mb_index, unit.mb.text_tokens, unit.dtype)
        got = self.rows.get(key)
        if got is None:
            g = generator(unit.step_seed, unit.mb_index, "stack")
            rows = unit.mb.text_tokens
            got = self.rows[key] = {
                "x": torch.randn(1, rows, self.hidden, generator=g).to(unit.dtype),
                "y": torch.randn(1, rows, self.hidden, generator=g).to(unit.dtype),
            }
        return got


def stack_model(shape: StackShape, dtype: str = "float32") -> ByoModel:
    spec = ModelSpec(
        "block-stack",
        (ModuleSpec(MODULE, "decoder", shape.layers, shape.hidden, 4 * shape.hidden, shape.heads, shape.heads),),
        (),
        ParallelSpec(pp=2),
    )
    module = ByoModule(
        make_block=lambda i: Block(shape.hidden, shape.heads),
        hidden_shape=lambda mb, a, b: (1, mb.text_tokens, shape.hidden),
        make_pre=Inputs,
        make_post=SquaredError,
    )
    return ByoModel(
        spec, {MODULE: module}, Dataset(shape.hidden), loss_tokens=lambda mb: mb.text_tokens * shape.hidden, dtype=dtype
    )


def stack_batch(shape: StackShape) -> BatchMeta:
    return BatchMeta(tuple(MicroBatchMeta(text_lens=(shape.tokens,)) for _ in range(shape.microbatches)))


def stack_plan(shape: StackShape, pp: int) -> Plan:
    """1F1B over ``pp`` chunks of ``layers / pp`` blocks, one unit per micro-batch."""
    graph = linear_stage_graph(pp, 1, module=MODULE, layers_per_chunk=shape.layers // pp)
    units = uniform_units(MODULE, shape.microbatches)
    return Plan(graph, units, (), one_f_one_b_order(chain_of(graph, MODULE, units[MODULE])), schedule="1f1b")


def stack_inputs(model: ByoModel, shape: StackShape, step_seed: int) -> tuple[Tensor, Tensor]:
    """The whole batch as ``[microbatches, tokens, hidden]`` inputs and targets (torch pipelining's view)."""
    mbs = stack_batch(shape).microbatches
    data = [model.unit_data(mb, k, MODULE, 0, 0, step_seed) for k, mb in enumerate(mbs)]
    return torch.cat([d["x"] for d in data]), torch.cat([d["y"] for d in data])


class TorchStage(nn.Module):
    """The blocks of one of our chunks as a plain module for ``PipelineStage``."""

    def __init__(self, chunk):
        super().__init__()
        self.blocks = nn.ModuleList(chunk.layers.values())

    def forward(self, x: Tensor) -> Tensor:
        for b in self.blocks:
            x = b(x)
        return x
