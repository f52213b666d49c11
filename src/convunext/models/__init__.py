"""Segmentation models: ConvUNeXt and the paper's baselines, all built through one registry.

Importing this package registers every model; build one with ``create_model(name, **kwargs)``.
"""

from .base import SegmentationModel
from .convunext import ConvUNeXt, convert_reference_state_dict, load_reference_state_dict
from .registry import create_model, list_models, model_arguments, register_model

# The baselines register on import, in this order after ConvUNeXt: list_models() follows the paper's order.
# isort: off
from .unet import UNet
from .attention_unet import AttentionUNet
from .unet_plus_plus import UNetPlusPlus
from .resunet import ResUNet

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
    "load_reference_state_dict",
    "model_arguments",
    "register_model",
]
