"""convunext: ConvUNeXt and its baselines for 2D medical image segmentation."""

import os as _os

# OpenMP threads that spin while they wait stall each other on a machine shared with other busy processes (a
# 2-core training step took 2.5x as long beside one CPU-bound process, 1.8x with sleeping waits); on a quiet
# machine sleeping waits cost nothing measurable. It only takes effect when torch is imported after this line;
# an OMP_WAIT_POLICY set by the user wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .inference.optimize import optimize_for_inference
from .models import (
    ConvUNeXt,
    convert_reference_state_dict,
    create_model,
    list_models,
    load_reference_state_dict,
)
from .pretrained import list_pretrained, load_pretrained

__version__ = "0.1.0"

__all__ = [
    "ConvUNeXt",
    "__version__",
    "convert_reference_state_dict",
    "create_model",
    "list_models",
    "list_pretrained",
    "load_pretrained",
    "load_reference_state_dict",
    "optimize_for_inference",
]
