"""Attention over packed documents without a ``[T, T]`` mask, for transformers' attention layers.

:data:`PACKED` names an attention implementation registered with transformers'
``AttentionInterface``: it receives the packed micro-batch's queries, keys and values
(``[1, heads, T, head_dim]``) and ``dip_doc_lens`` (the length of every document, in order) and runs
transformers' own SDPA function on each document separately (causal within it when the layer is
causal). Memory grows with the sum of the documents' squared lengths, never with ``T**2``, and each
document computes exactly what the unpacked model computes for it alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["PACKED", "packed_sdpa", "register_packed_attention"]

PACKED = "dip_packed"


def packed_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    dip_doc_lens: Sequence[int],
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Per-document SDPA; returns ``[1, T, heads, head_dim]`` like transformers' attention functions."""
    from transformers.integrations.sdpa_attention import (
        sdpa_attention_forward,
    )  # transformers (seconds to load): only a checkpoint of this family needs it

    if attention_mask is not None:
        raise ValueError("packed attention takes document lengths, not an attention mask")
    kwargs.pop("position_ids", None)
    kwargs.pop("sliding_window", None)
    outs, start = [], 0
    for n in dip_doc_lens:
        part = slice(start, start + n)
        out, _ = sdpa_attention_forward(module, query[:, :, part], key[:, :, part], value[:, :, part], None, **kwargs)
        outs.append(out)
        start += n
    if start != query.shape[2]:
        raise ValueError(f"document lengths add up to {start}, the packed sequence has {query.shape[2]} tokens")
    return torch.cat(outs, dim=1), None


def register_packed_attention() -> str:
    """Register :func:`packed_sdpa` with transformers (idempotent); returns its name."""
    from transformers import (
        AttentionInterface,
    )  # transformers (seconds to load): only a checkpoint of this family needs it

    AttentionInterface.register(PACKED, packed_sdpa)
    return PACKED
