"""A pipeline chunk: consecutive layers of one module, plus its pre part (first chunk) and post part
(last chunk), with per-layer memory strategies executed for real.

Part protocols (built-in kinds and bring-your-own models alike):

* pre ``(inputs: dict[str, Tensor], data) -> (hidden, side: dict[str, Tensor])``
* block ``(hidden, side, data, recompute_attention: bool = False) -> hidden``
* post ``(hidden, side, data) -> dict[str, Tensor]`` (``{"loss_sum": scalar}`` for the loss module)

``side`` holds tensors that travel alongside ``hidden`` unchanged (the DiT's ``cond`` and ``t_mod``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from dip.runtime.models.decoder import DecoderBlock, DecoderPost, DecoderPre
from dip.runtime.models.dit import DitBlock, DitPost, DitPre
from dip.runtime.models.saved import note_saved, recomputed_block
from dip.runtime.models.seeding import generator, init_part, torch_dtype
from dip.runtime.models.vit import VitBlock, VitPost, VitPre
from dip.spec.model import ModelSpec

MEMORY_STRATEGIES: tuple[str, ...] = ("none", "selective", "full", "offload")

PartFactory = Callable[[ModelSpec, Any], nn.Module]
KIND_PARTS: dict[str, tuple[PartFactory, PartFactory, PartFactory]] = {
    "vit": (VitPre, VitBlock, VitPost),
    "decoder": (DecoderPre, DecoderBlock, DecoderPost),
    "dit": (DitPre, DitBlock, DitPost),
}


class ChunkModule(nn.Module):
    """Layers ``[layer_start, layer_end)`` of module ``module_name`` (of ``total_layers``).

    Parameter names are ``pre.*``, ``layers.<global index>.*`` and ``post.*``;
    :meth:`canonical_named_parameters` prefixes them with the module name.
    """

    def __init__(
        self,
        module_name: str,
        layer_start: int,
        layer_end: int,
        total_layers: int,
        pre: nn.Module | None,
        blocks: Sequence[nn.Module],
        post: nn.Module | None,
        protocol: PartProtocol | None = None,
    ):
        super().__init__()
        self.protocol = protocol or PartProtocol()
        if len(blocks) != layer_end - layer_start:
            raise ValueError(f"{len(blocks)} blocks for layers [{layer_start}, {layer_end})")
        self.module_name, self.layer_start, self.layer_end = module_name, layer_start, layer_end
        self.total_layers = total_layers
        self.pre = pre
        self.layers = nn.ModuleDict({str(layer_start + i): b for i, b in enumerate(blocks)})
        self.post = post
        self._blocks: tuple[nn.Module, ...] = tuple(blocks)  # the hot loop iterates this, not the ModuleDict

    def canonical_named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """``("llm.layers.3.attn.q.weight", param)``: names shared by every chunking of the model."""
        for name, p in self.named_parameters():
            yield f"{self.module_name}.{name}", p

    def forward(
        self, inputs: dict[str, Tensor], data: Any, strategies: Sequence[str] | None = None
    ) -> dict[str, Tensor]:
        """Run the chunk on one unit: output tensors by name, or ``{"loss_sum": scalar}``."""
        strategies = _check_strategies(strategies, len(self.layers))
        parts = self.protocol
        if self.pre is not None:
            hidden, side = parts.call_pre(self.pre, inputs, data)
            shard = getattr(data, "shard", None)
            if shard is not None:  # the pre part runs replicated; the blocks hold the rank's rows only
                hidden = shard.scatter(hidden)
        else:
            hidden = inputs["hidden"]
            side = {k: v for k, v in inputs.items() if k != "hidden"}
        for block, strategy in zip(self._blocks, strategies):
            hidden = run_block(block, hidden, side, data, strategy, parts)
        out = parts.call_post(self.post, hidden, side, data) if self.post is not None else {"hidden": hidden, **side}
        if not inputs:
            return out
        given = list(inputs.values())
        # an output that is an input tensor becomes a view, so it is a distinct autograd output
        return {k: (v.view_as(v) if any(v is t for t in given) else v) for k, v in out.items()}


_VALID_STRATEGIES: set[tuple[str, ...]] = set()  # strategy tuples already checked (the plan reuses a few)


def _check_strategies(strategies: Sequence[str] | None, n: int) -> tuple[str, ...]:
    if strategies is None:
        return ("none",) * n
    strategies = tuple(strategies)
    if len(strategies) != n:
        raise ValueError(f"{len(strategies)} memory strategies for {n} layers")
    if strategies in _VALID_STRATEGIES:
        return strategies
    for s in strategies:
        if s not in MEMORY_STRATEGIES:
            raise ValueError(f"unknown memory strategy {s!r}; valid: {', '.join(MEMORY_STRATEGIES)}")
    if len(_VALID_STRATEGIES) < 4096:
        _VALID_STRATEGIES.add(strategies)
    return strategies


class PartProtocol:
    """How a :class:`ChunkModule` calls its parts; this one is the built-in protocol (module docstring)."""

    supports_selective = True

    def call_pre(self, pre: nn.Module, inputs: dict[str, Tensor], data: Any) -> tuple[Tensor, dict[str, Tensor]]:
        return pre(inputs, data)

    def call_block(
        self, block: nn.Module, hidden: Tensor, side: dict[str, Tensor], data: Any, recompute_attention: bool = False
    ) -> Tensor:
        if recompute_attention:
            return block(hidden, side, data, recompute_attention=True)
        return block(hidden, side, data)

    def call_post(self, post: nn.Module, hidden: Tensor, side: dict[str, Tensor], data: Any) -> dict[str, Tensor]:
        return post(hidden, side, data)


def run_block(
    block: nn.Module,
    hidden: Tensor,
    side: dict[str, Tensor],
    data: Any,
    strategy: str,
    parts: PartProtocol | None = None,
) -> Tensor:
    """One block under a memory strategy: ``none``; ``selective`` recomputes the attention core in
    backward (parts without that support fall back to ``full``); ``full`` recomputes the whole block;
    ``offload`` keeps saved activations in (pinned) host memory."""
    parts = parts or PartProtocol()
    if strategy == "none":
        return parts.call_block(block, hidden, side, data)
    if strategy == "selective" and parts.supports_selective:
        return parts.call_block(block, hidden, side, data, recompute_attention=True)
    if strategy in ("full", "selective"):
        keys = list(side)

        def fn(h: Tensor, *values: Tensor) -> Tensor:
            with recomputed_block():
                return parts.call_block(block, h, dict(zip(keys, values)), data)

        for t in (hidden, *side.values()):  # what the checkpoint keeps to recompute the block
            note_saved(t)
        return checkpoint(fn, hidden, *(side[k] for k in keys), use_reentrant=False)
    if strategy == "offload":
        with torch.autograd.graph.save_on_cpu(pin_memory=hidden.is_cuda):
            return parts.call_block(block, hidden, side, data)
    return parts.call_block(block, hidden, side, data)


def build_chunk(
    model: ModelSpec,
    module_name: str,
    layer_start: int,
    layer_end: int,
    seed: int = 0,
    dtype: torch.dtype | str = torch.float32,
    device: torch.device | str | None = None,
) -> ChunkModule:
    """Build only layers ``[layer_start, layer_end)`` of ``module_name`` (+ pre / post parts at the ends).

    Parts are initialised from generators seeded by ``(seed, module, part)``, so every chunking of a
    model holds the same parameter values under the same canonical names.
    """
    spec = model.module(module_name)
    if not 0 <= layer_start < layer_end <= spec.layers:
        raise ValueError(f"bad layer range [{layer_start}, {layer_end}) for {module_name} with {spec.layers} layers")
    make_pre, make_block, make_post = KIND_PARTS[spec.kind]

    def part(factory: PartFactory, name: str) -> nn.Module:
        module = factory(model, spec)
        init_part(module, generator(seed, module_name, name))
        return module

    pre = part(make_pre, "pre") if layer_start == 0 else None
    blocks = [part(make_block, f"layers.{i}") for i in range(layer_start, layer_end)]
    post = part(make_post, "post") if layer_end == spec.layers else None
    chunk = ChunkModule(module_name, layer_start, layer_end, spec.layers, pre, blocks, post)
    return chunk.to(device=device, dtype=torch_dtype(dtype))
