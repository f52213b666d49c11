"""convunext: ConvUNeXt and its baselines for 2D medical image segmentation."""

from .inference.optimize import optimize_for_inference
from .models import (
    ConvUNeXt,
    convert_reference_state_dict,
    create_model,
    list_models,
    load_reference_state_dict,
)

__version__ = "0.1.0"

__all__ = [
    "ConvUNeXt",
    "__version__",
    "convert_reference_state_dict",
    "create_model",
    "list_models",
    "load_reference_state_dict",
    "optimize_for_inference",
]
