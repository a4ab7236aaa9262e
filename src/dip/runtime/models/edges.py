"""Cross-module channels: what a producer unit sends to a consumer unit, and how a consumer assembles
its first chunk's inputs from everything it received (fan-in of ViT units, fan-out of the LM).

Shapes agree with :func:`dip.data.tensors.edge_specs` and :func:`dip.data.tensors.chunk_input_specs`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from dip.data.meta import MicroBatchMeta
from dip.data.tensors import UnitLike, resolve_range, text_cond_rows
from dip.spec.model import Edge, ModelSpec


def text_cond_index(
    model: ModelSpec, edge: Edge, consumer: UnitLike, mb: MicroBatchMeta, device: torch.device | None = None
) -> Tensor:
    """Rows of the producer's ``text_hidden`` that form the consumer DiT unit's ``text_cond``."""
    a, b = resolve_range(model.module(edge.dst), mb, consumer.start, consumer.stop)
    rows = [torch.arange(r0, r1, device=device) for r0, r1 in text_cond_rows(mb, a, b)]
    return torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long, device=device)


def edge_tensors(
    model: ModelSpec,
    edge: Edge,
    producer_outputs: dict[str, Tensor],
    producer: UnitLike,
    consumer: UnitLike,
    mb: MicroBatchMeta,
) -> dict[str, Tensor]:
    """Tensors on the channel ``producer -> consumer`` (differentiable in the producer's outputs).

    The gradient that comes back for them flows into the producer's outputs by autograd (index
    backward scatters-and-adds the caption rows, so several DiT units sharing a caption accumulate).
    """
    if producer.mb != consumer.mb:
        return {}
    if edge.kind == "image_embeddings":
        return {"image_embeds": producer_outputs["image_embeds"]}
    if edge.kind == "text_conditioning":
        text = producer_outputs["text_hidden"]
        return {"text_cond": text[text_cond_index(model, edge, consumer, mb, text.device)]}
    raise ValueError(f"unknown edge kind {edge.kind!r}")


def assemble_inputs(
    model: ModelSpec, module_name: str, mb: MicroBatchMeta, received: Sequence[tuple[Edge, UnitLike, dict[str, Tensor]]]
) -> dict[str, Tensor]:
    """First-chunk inputs of a consumer unit from ``(edge, producer unit, channel tensors)`` triples.

    ``image_embeds``: the ViT units' tensors concatenated by image index (they must tile all images of
    the micro-batch); ``text_cond``: the single LM channel's tensor.
    """
    out: dict[str, Tensor] = {}
    images = sorted((r for r in received if r[0].kind == "image_embeddings"), key=lambda r: r[1].start)
    if images:
        vit = model.module(images[0][0].src)
        expected = 0
        for _, unit, _tensors in images:
            a, b = resolve_range(vit, mb, unit.start, unit.stop)
            if a != expected:
                raise ValueError(f"{module_name}: ViT units do not tile the images (gap at image {expected})")
            expected = b
        if expected != mb.images:
            raise ValueError(f"{module_name}: ViT units cover {expected} of {mb.images} images")
        out["image_embeds"] = torch.cat([t["image_embeds"] for _, _, t in images])
    texts = [r for r in received if r[0].kind == "text_conditioning"]
    if len(texts) > 1:
        raise ValueError(f"{module_name}: {len(texts)} text_conditioning channels for one unit")
    if texts:
        out["text_cond"] = texts[0][2]["text_cond"]
    for edge, _, _ in received:
        if edge.dst != module_name:
            raise ValueError(f"channel {edge.src}->{edge.dst} does not feed {module_name}")
    return out
