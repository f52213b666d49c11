"""Evaluation: the paper's metrics, computed exactly as the reference code does (``convunext.evaluation.metrics``)."""
