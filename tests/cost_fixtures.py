"""Hand-built module specs of the paper's 37B VLM (ViT-5B + Qwen2-32B) and DiT-5B for cost tests."""

from dip.data.meta import ModuleWork
from dip.spec.model import Edge, ModelSpec, ModuleSpec, ParallelSpec

VIT = ModuleSpec("ViT-5B", "vit", 63, 1792, 15360, 16, 16, out_hidden=5120)
QWEN = ModuleSpec("Qwen2-32B", "decoder", 64, 5120, 27648, 40, 8, vocab_size=152064)
DIT = ModuleSpec("DiT-5B", "dit", 28, 3584, 10240, 28, 28, cond_hidden=4096)
LLAMA_ENC = ModuleSpec("Llama3-8B", "decoder", 32, 4096, 14336, 32, 8, vocab_size=128256, lm_head=False)

VLM_M = ModelSpec("VLM-M", (VIT, QWEN), (Edge("ViT-5B", "Qwen2-32B", "image_embeddings"),), ParallelSpec(tp=8, pp=4))
T2V = ModelSpec(
    "T2V-S",
    (LLAMA_ENC, DIT.with_(cond_hidden=4096)),
    (Edge("Llama3-8B", "DiT-5B", "text_conditioning"),),
    ParallelSpec(tp=4, pp=4),
    workload="t2v",
)


def vit_work(images: int) -> ModuleWork:
    return ModuleWork(seq_lens=(VIT.patches_per_image,) * images, instances=images)


def lm_work(*lens: int) -> ModuleWork:
    return ModuleWork(seq_lens=tuple(lens), instances=1)


def dit_work(clips: int, seconds: float = 4.0, caption: int = 256) -> ModuleWork:
    return ModuleWork(seq_lens=(DIT.clip_tokens(seconds),) * clips, cond_lens=(caption,) * clips, instances=clips)
