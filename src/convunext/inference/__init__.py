"""Inference: whole-image and sliding-window class probabilities (``convunext.inference.sliding_window``)."""
