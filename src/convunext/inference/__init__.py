"""Inference: whole-image and sliding-window prediction of class probabilities (``convunext.inference.sliding_window``)."""
