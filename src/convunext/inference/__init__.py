"""Inference: the :class:`~convunext.inference.sliding_window.Inferer` (whole-image and sliding-window class
probabilities), the :class:`~convunext.inference.predictor.Predictor` of image files, fast back-ends and export."""

from .sliding_window import Inferer

__all__ = ["Inferer"]
