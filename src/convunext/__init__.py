"""convunext: ConvUNeXt and its baselines for 2D medical image segmentation.

``import convunext`` changes nothing in the process and does not even import torch: the names below load their
module on first use. Process tuning is one explicit call, :func:`convunext.runtime.configure`, which the
``convunext`` command makes; the command can also set OpenMP's wait policy, which only works before torch loads.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import runtime as runtime  # torch-free: convunext.runtime.configure() after `import convunext`

if TYPE_CHECKING:
    from .inference.optimize import optimize_for_inference
    from .models import ConvUNeXt, convert_reference_state_dict, create_model, list_models, load_reference_state_dict
    from .pretrained import from_pretrained, list_pretrained

__version__ = "0.1.0"

_DEFINED_IN = {
    "ConvUNeXt": ".models",
    "convert_reference_state_dict": ".models",
    "create_model": ".models",
    "list_models": ".models",
    "load_reference_state_dict": ".models",
    "from_pretrained": ".pretrained",
    "list_pretrained": ".pretrained",
    "optimize_for_inference": ".inference.optimize",
}
"""The package-level names and the module each is imported from on first use."""

__all__ = [
    "ConvUNeXt",
    "__version__",
    "convert_reference_state_dict",
    "create_model",
    "from_pretrained",
    "list_models",
    "list_pretrained",
    "load_reference_state_dict",
    "optimize_for_inference",
]


def __getattr__(name: str) -> Any:
    if name not in _DEFINED_IN:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_DEFINED_IN[name], __name__), name)
    globals()[name] = value  # later lookups find it directly
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_DEFINED_IN})
