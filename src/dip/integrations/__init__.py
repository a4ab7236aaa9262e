"""Real checkpoints and real data: transformers / diffusers model families as DIP models.

* :func:`load_model` (:mod:`.loader`): ``--model`` string -> model provider (checkpoint folder,
  factory, preset or spec file);
* :mod:`.vlm` + :mod:`.qwen2_vl`: transformers vision-language models (Qwen2-VL);
* :mod:`.t2v`: text-to-video (Wan: UMT5 text encoder + WanTransformer3DModel);
* :mod:`.checkpoint`: lazy per-chunk safetensors reads and the write-back of trained weights;
* :mod:`.init_model`: tiny random-init checkpoints (``dip init-model``);
* :mod:`.launch`: the rank entry point of ``dip train`` (the runtime's trainer with these loaders).

Sits above :mod:`dip.runtime` (it builds :class:`~dip.runtime.byo.ByoModel` s and hands its loaders to
the trainer) and below :mod:`dip.bench` and :mod:`dip.cli`.
"""

from dip.integrations.loader import load_model, model_source, open_data

__all__ = ["load_model", "model_source", "open_data"]
