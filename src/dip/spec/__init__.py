"""Model, module, hardware and parallel specifications, presets and parameter counts.

Owns what a model and a machine *are* (no workload, no costs). Imports only ``dip.io`` and
``dip.errors``; every other layer may import it."""

from dip.spec.model import Edge, ModelSpec, ModuleSpec, ParallelSpec
from dip.spec.params import layer_params, model_params, module_params, post_params, pre_params
from dip.spec.presets import (
    get_model,
    get_module_preset,
    list_model_names,
    list_models,
    load_model,
    model_from_dict,
    model_to_dict,
)
from dip.spec.validate import validate_model, validate_parallel, with_overrides

__all__ = [
    "Edge",
    "ModelSpec",
    "ModuleSpec",
    "ParallelSpec",
    "get_model",
    "get_module_preset",
    "layer_params",
    "list_model_names",
    "list_models",
    "load_model",
    "model_from_dict",
    "model_params",
    "model_to_dict",
    "module_params",
    "post_params",
    "pre_params",
    "validate_model",
    "validate_parallel",
    "with_overrides",
]
