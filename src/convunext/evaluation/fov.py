"""Retinal-vessel metrics inside a field-of-view mask, pooled over every pixel of every image: sensitivity,
specificity, accuracy and AUC-ROC of foreground (any class other than 0) against background."""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from .auc import exact_auc, histogram_auc, probability_bins
from .utils import as_mask, ratio

__all__ = ["VESSEL_RATES", "FovMetrics", "vessel_rates"]

VESSEL_RATES = ("sensitivity", "specificity", "accuracy")


def vessel_rates(counts: Tensor) -> dict[str, float]:
    """Sensitivity ``TP/(TP+FN)``, specificity ``TN/(TN+FP)`` and accuracy from the counts ``(TP, FP, FN, TN)``
    (NaN where a denominator is 0)."""
    tp, fp, fn, tn = (int(v) for v in counts)
    return dict(zip(VESSEL_RATES, (ratio(tp, tp + fn), ratio(tn, tn + fp), ratio(tp + tn, tp + fp + fn + tn))))


class FovMetrics:
    """Vessel-style metrics inside a field-of-view (FOV) mask, pooled over every pixel of every image.

    Foreground = any label other than 0 (and not ``ignore_index``); the score is the foreground probability.
    Counts (TP, FP, FN, TN) give sensitivity, specificity and accuracy; AUC-ROC is computed over all FOV
    pixels of all images seen (as vessel papers report it), in one of two modes:

    * ``auc="exact"`` (default): keeps every FOV pixel's float32 score, in one list for foreground pixels and
      one for background pixels (4 bytes per pixel: DRIVE's test set ~18 MB, HRF's ~170M FOV pixels ~680 MB,
      twice that for a moment while ``auc()`` joins the lists), and computes the Mann-Whitney statistic of
      :func:`~convunext.evaluation.auc.auc_roc` by sorting (ties in float32 counted 1/2): the exact AUC of the
      float32 scores, any values, in about a second for DRIVE.
    * ``auc="binned"``: streaming, fixed memory — two histograms (positives / negatives) over ``num_bins``
      ordered probability bins (:func:`~convunext.evaluation.auc.probability_bins`; defaults: every float32
      exponent down to 0 and ``2**12`` bins per exponent, 1,032,194 bins, 16 MB) with relative resolution
      ``2**-mantissa_bits`` on ``q = min(p, 1 - p)``. Only scores sharing a bin are confused (counted as ties):
      two values of q above ``2**-126`` (1.2e-38) that differ by a factor ``1 + 2**-mantissa_bits`` or more
      never share one, and the error against the exact AUC is at most :meth:`auc_error_bound` — half the
      fraction of (positive, negative) pairs sharing a bin, computed from the histograms and reported with the
      result (tested).

    Both modes merge exactly across processes (histograms add, score lists concatenate).
    """

    def __init__(
        self,
        auc: Literal["binned", "exact"] = "exact",
        threshold: float = 0.5,
        ignore_index: int = 255,
        mantissa_bits: int = 12,
        octaves: int = 126,
    ) -> None:
        if auc not in ("binned", "exact"):
            raise ValueError(f"auc must be 'binned' or 'exact', got {auc!r}")
        if not 1 <= mantissa_bits <= 23:
            raise ValueError("mantissa_bits must be in [1, 23]")
        if not 1 <= octaves <= 126:
            raise ValueError("octaves must be in [1, 126]")
        self.auc_mode: Literal["binned", "exact"] = auc
        self.threshold = float(threshold)
        self.ignore_index = int(ignore_index)
        self.mantissa_bits = int(mantissa_bits)
        self.octaves = int(octaves)
        self.reset()

    @property
    def num_bins(self) -> int:
        return 2 * (self.octaves * (1 << self.mantissa_bits) + 1)

    def reset(self) -> None:
        self.counts = torch.zeros(4, dtype=torch.int64)  # TP, FP, FN, TN
        self.positive_hist = torch.zeros(self.num_bins if self.auc_mode == "binned" else 0, dtype=torch.int64)
        self.negative_hist = torch.zeros_like(self.positive_hist)
        self.positive_scores: list[Tensor] = []
        self.negative_scores: list[Tensor] = []

    def update(
        self,
        scores: Tensor | None,
        target: Tensor,
        fov: Tensor | None = None,
        pred: Tensor | None = None,
    ) -> Tensor:
        """Add a batch.

        Args:
            scores: N x H x W foreground probabilities in [0, 1], or None (then no AUC for this batch and
                ``pred`` is required).
            target: N x H x W labels; foreground = label not in {0, ignore_index}; ignore pixels are skipped.
            fov: N x H x W bool field of view (None: the whole image).
            pred: N x H x W bool predicted foreground; default ``scores > threshold``.

        Returns:
            N x 4 int64 per-image counts (TP, FP, FN, TN) inside the FOV, on the CPU.
        """
        if target.dim() == 2:
            target = target.unsqueeze(0)
        if target.is_floating_point():
            raise TypeError(f"target must hold integer class labels, got dtype {target.dtype}")
        if scores is not None:
            scores = scores.unsqueeze(0) if scores.dim() == 2 else scores
            if tuple(scores.shape) != tuple(target.shape):
                raise ValueError(f"scores shape {tuple(scores.shape)} does not match target {tuple(target.shape)}")
        if pred is None:
            if scores is None:
                raise ValueError("give scores, pred or both")
            pred = scores > self.threshold
        else:
            pred = as_mask(pred, target.shape, "pred")
        valid = target != self.ignore_index
        if fov is not None:
            valid = valid & as_mask(fov, target.shape, "fov")
        actual = target != 0
        n = target.shape[0]
        code = actual.long() * 2 + pred.long()  # 0: TN, 1: FP, 2: FN, 3: TP
        image_index = torch.arange(n, device=target.device).view(n, 1, 1).expand_as(target)
        per_image = torch.bincount((image_index * 4 + code)[valid], minlength=4 * n).view(n, 4)
        per_image = per_image[:, [3, 1, 2, 0]].cpu()
        self.counts += per_image.sum(dim=0)
        if scores is not None:
            kept_scores = scores[valid]
            kept_labels = actual[valid]
            if bool(torch.isnan(kept_scores).any()):
                raise ValueError("scores contain NaN inside the FOV")
            if self.auc_mode == "binned":
                index, num_bins = probability_bins(kept_scores, self.mantissa_bits, self.octaves)
                self.positive_hist += torch.bincount(index[kept_labels], minlength=num_bins).cpu()
                self.negative_hist += torch.bincount(index[~kept_labels], minlength=num_bins).cpu()
            else:
                kept_scores = kept_scores.float()
                self.positive_scores.append(kept_scores[kept_labels].cpu())
                self.negative_scores.append(kept_scores[~kept_labels].cpu())
        return per_image

    def _joined_scores(self) -> tuple[Tensor, Tensor]:
        """The positive and negative score lists, each joined into one tensor (kept so, to join only once)."""
        for parts in (self.positive_scores, self.negative_scores):
            if len(parts) != 1:
                joined = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float32)
                parts.clear()
                parts.append(joined)
        return self.positive_scores[0], self.negative_scores[0]

    def auc(self) -> float:
        """AUC-ROC over every FOV pixel seen with a score (NaN if one class is missing)."""
        if self.auc_mode == "binned":
            return histogram_auc(self.positive_hist, self.negative_hist)
        positives, negatives = self._joined_scores()
        # sorting in place keeps the stored lists valid (the AUC does not depend on their order) and sorted,
        # which makes the next call cheap
        return exact_auc(positives.numpy(), negatives.numpy())

    def auc_error_bound(self) -> float:
        """Largest possible ``|auc() - exact AUC|``: 0 in exact mode; binned, half the fraction of
        (positive, negative) pairs whose scores share a bin (NaN if one class is missing)."""
        if self.auc_mode == "exact":
            positives, negatives = self._joined_scores()
            return 0.0 if positives.numel() and negatives.numel() else math.nan
        n_pos, n_neg = int(self.positive_hist.sum()), int(self.negative_hist.sum())
        if n_pos == 0 or n_neg == 0:
            return math.nan
        return int((self.positive_hist * self.negative_hist).sum()) / (2 * n_pos * n_neg)

    def roc_curve(self, max_points: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Points of the ROC curve over every FOV pixel seen: ``(false positive rates, true positive rates)``,
        each of at most ``max_points + 2`` values, from (0, 0) to (1, 1) with the rates non-decreasing.

        Thresholds are taken at evenly spaced quantiles of the scores (exact mode; from a proportional sample of
        them) or at evenly spaced cumulative counts of the ordered bins (binned mode), so the points follow the data
        where it is dense; a pixel counts as positive when its score is above the threshold.
        Empty arrays if one class is missing.
        """
        if self.auc_mode == "binned":
            positives_above = np.cumsum(self.positive_hist.numpy()[::-1])  # bins from the highest score down
            negatives_above = np.cumsum(self.negative_hist.numpy()[::-1])
            n_pos, n_neg = int(self.positive_hist.sum()), int(self.negative_hist.sum())
        else:
            positive_scores, negative_scores = (scores.numpy() for scores in self._joined_scores())
            positive_scores.sort()  # in place, as auc() does: the stored lists stay valid and sorted
            negative_scores.sort()
            n_pos, n_neg = positive_scores.size, negative_scores.size
            stride = max(1, (n_pos + n_neg) // (64 * max_points))  # a proportional sample is enough for quantiles
            merged = np.concatenate([positive_scores[::stride], negative_scores[::stride]])
            thresholds = np.quantile(merged, np.linspace(1.0, 0.0, max_points + 1)) if merged.size else merged
            positives_above = n_pos - np.searchsorted(positive_scores, thresholds, side="right")
            negatives_above = n_neg - np.searchsorted(negative_scores, thresholds, side="right")
        if n_pos == 0 or n_neg == 0:
            return np.zeros(0), np.zeros(0)
        if positives_above.size > max_points:
            keep = np.unique(np.linspace(0, positives_above.size - 1, max_points).round().astype(np.int64))
            positives_above, negatives_above = positives_above[keep], negatives_above[keep]
        fpr = np.concatenate([[0.0], negatives_above / n_neg, [1.0]])
        tpr = np.concatenate([[0.0], positives_above / n_pos, [1.0]])
        return fpr, tpr

    def compute(self) -> dict[str, float | int]:
        """``{"sensitivity", "specificity", "accuracy", "auc", "auc_error_bound", "pixels"}`` over all FOV
        pixels seen."""
        return {
            **vessel_rates(self.counts),
            "auc": self.auc(),
            "auc_error_bound": self.auc_error_bound(),
            "pixels": int(self.counts.sum()),
        }

    def state(self) -> dict[str, Any]:
        """Everything needed to merge: CPU tensors (and the settings, to check compatibility)."""
        positives, negatives = self._joined_scores()
        return {
            "settings": (self.auc_mode, self.threshold, self.ignore_index, self.mantissa_bits, self.octaves),
            "counts": self.counts.clone(),
            "positive_hist": self.positive_hist.clone(),
            "negative_hist": self.negative_hist.clone(),
            "positive_scores": positives.clone(),
            "negative_scores": negatives.clone(),
        }

    def merge(self, other: FovMetrics | dict[str, Any]) -> None:
        """Add another accumulator (or its ``state()``): counts and histograms add, score lists concatenate."""
        state = other.state() if isinstance(other, FovMetrics) else other
        mine = (self.auc_mode, self.threshold, self.ignore_index, self.mantissa_bits, self.octaves)
        if tuple(state["settings"]) != mine:
            raise ValueError(f"cannot merge FovMetrics with settings {tuple(state['settings'])} into {mine}")
        self.counts += state["counts"]
        self.positive_hist += state["positive_hist"]
        self.negative_hist += state["negative_hist"]
        # copies: auc() sorts the stored scores in place, which must not reorder the caller's state
        self.positive_scores.append(state["positive_scores"].to(torch.float32, copy=True))
        self.negative_scores.append(state["negative_scores"].to(torch.float32, copy=True))
