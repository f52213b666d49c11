"""AUC-ROC, exact (the Mann-Whitney statistic of sorted scores) or from histograms of ordered probability bins
(streaming, fixed memory); ties count 1/2 in both."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["auc_roc", "exact_auc", "histogram_auc", "probability_bins"]

_SEARCH_CHUNK = 1 << 22  # positives per searchsorted call in the exact AUC (bounds its int64 temporaries)


def histogram_auc(positives: Tensor, negatives: Tensor) -> float:
    """AUC from counts of positives / negatives per ordered score bin (ties within a bin count 1/2).

    ``AUC = P(s+ > s-) + 0.5 P(s+ == s-)``, computed in exact integer arithmetic, one rounding at the end.
    """
    positives = positives.to(torch.int64)
    negatives = negatives.to(torch.int64)
    n_pos = int(positives.sum())
    n_neg = int(negatives.sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    below = torch.cumsum(negatives, dim=0) - negatives
    twice_wins = 2 * int((positives * below).sum()) + int((positives * negatives).sum())
    return twice_wins / (2 * n_pos * n_neg)


def exact_auc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """Exact AUC of two score arrays (ties counted 1/2); sorts both **in place**.

    For every positive, ``searchsorted`` in the sorted negatives counts the negatives strictly below it (left
    side) and those below or equal (right side); their sum is twice its wins, ties counting once. Integer
    arithmetic throughout, one rounding at the end. Temporaries are bounded by ``_SEARCH_CHUNK`` positives.
    """
    n_pos, n_neg = positives.size, negatives.size
    if n_pos == 0 or n_neg == 0:
        return math.nan
    positives.sort()  # sorted keys speed the searches up: numpy narrows each from the previous result
    negatives.sort()
    twice_wins = 0
    for start in range(0, n_pos, _SEARCH_CHUNK):
        chunk = positives[start : start + _SEARCH_CHUNK]
        twice_wins += int(np.searchsorted(negatives, chunk, side="left").sum(dtype=np.int64))
        twice_wins += int(np.searchsorted(negatives, chunk, side="right").sum(dtype=np.int64))
    return twice_wins / (2 * n_pos * n_neg)


def _as_numpy_scores(scores: Tensor) -> np.ndarray:
    """A CPU numpy copy of float scores (half precisions widened to float32 exactly, which keeps the order)."""
    scores = scores.detach()
    if scores.dtype in (torch.float16, torch.bfloat16):
        scores = scores.float()
    return scores.cpu().numpy().copy()


def auc_roc(scores: Tensor, labels: Tensor) -> float:
    """Exact area under the ROC curve (Mann-Whitney statistic with ties counted 1/2).

    Args:
        scores: any shape, float; higher means "more positive".
        labels: same shape, bool (or 0/1): the positive class.

    Returns:
        ``P(score of a random positive > score of a random negative) + 0.5 P(equal)``; NaN if either
        class is empty. Sorting-based, O(n log n), exact (integer counts, one rounding).
    """
    scores = scores.reshape(-1)
    labels = labels.reshape(-1)
    if scores.shape != labels.shape:
        raise ValueError(f"scores ({scores.numel()}) and labels ({labels.numel()}) differ in size")
    if bool(torch.isnan(scores).any()):
        raise ValueError("scores contain NaN")
    labels = labels if labels.dtype == torch.bool else labels != 0
    return exact_auc(_as_numpy_scores(scores[labels]), _as_numpy_scores(scores[~labels]))


def probability_bins(scores: Tensor, mantissa_bits: int, octaves: int) -> tuple[Tensor, int]:
    """Map probabilities in [0, 1] to ordered bins with *relative* resolution ``2**-mantissa_bits``.

    Bins follow the float32 bit pattern of ``q = min(p, 1 - p)`` (``1 - p`` is exact in float32 for
    ``p >= 0.5``), keeping the top ``mantissa_bits`` mantissa bits and ``octaves`` binary exponents below 0.5,
    mirrored for the upper half so the index is monotone in p. Values of q below ``2**-(octaves + 1)`` share
    the outermost bin; ``octaves=126`` resolves every float32 exponent, subnormals included, down to 0 (float32
    bit patterns of non-negative values are ordered like the values). Equal probabilities share a bin.

    Returns:
        (bin index per element (int64), number of bins).
    """
    p = scores.float().clamp(0.0, 1.0)
    upper = p >= 0.5
    q = torch.where(upper, 1.0 - p, p).contiguous()
    shift = 23 - mantissa_bits
    key = (q.view(torch.int32) >> shift).long()
    low = (126 - octaves) << mantissa_bits
    high = 126 << mantissa_bits
    per_half = high - low + 1
    key = key.clamp(min=low) - low
    index = torch.where(upper, 2 * per_half - 1 - key, key)
    return index, 2 * per_half
