"""Segmentation models: ConvUNeXt and the paper's baselines, all built through one registry.

Importing this package registers every model; build one with ``create_model(name, **kwargs)``.
"""

from .convunext import ConvUNeXt, convert_reference_state_dict, load_reference_state_dict
from .registry import create_model, list_models, model_arguments, register_model

__all__ = [
    "ConvUNeXt",
    "convert_reference_state_dict",
    "create_model",
    "list_models",
    "load_reference_state_dict",
    "model_arguments",
    "register_model",
]
