"""Segmentation models: ConvUNeXt and the paper's baselines, all built through one registry.

Importing this package registers every model; build one with ``create_model(name, **kwargs)``.
"""

from .base import SegmentationModel
from .convunext import ConvUNeXt, convert_reference_state_dict, load_reference_state_dict
from .registry import create_model, list_models, list_variants, model_arguments, register_model, register_variant

# The baselines register on import, in this order after ConvUNeXt: list_models() follows the paper's order.
# isort: off
from .unet import UNet
from .attention_unet import AttentionUNet
from .unet_plus_plus import UNetPlusPlus
from .resunet import ResUNet
from . import variants  # the study variants, once unet and convunext are registered

# isort: on

__all__ = [
    "AttentionUNet",
    "ConvUNeXt",
    "ResUNet",
    "SegmentationModel",
    "UNet",
    "UNetPlusPlus",
    "convert_reference_state_dict",
    "create_model",
    "list_models",
    "list_variants",
    "load_reference_state_dict",
    "model_arguments",
    "register_model",
    "register_variant",
    "variants",
]
