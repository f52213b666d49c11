"""Segmentation metrics, defined exactly as the paper's reference code computes them (SPEC section 6).

Conventions shared by everything here:

* Labels are integer class ids ``0 .. K-1`` (``0`` = background) and ``ignore_index`` (default 255).
  Pixels labelled ``ignore_index`` are skipped by every metric; any other label outside ``[0, K)`` is an
  error (``ValueError``), never silently dropped.
* A prediction is the argmax over classes of probabilities or logits (``N x K x H x W``), or already a
  label map (``N x H x W`` integer tensor).
* Confusion matrices have rows = target class, columns = predicted class.

The named metrics:

* ``dice_fg_mean`` — the paper's **Dice**: for each image, the hard Dice ``2|P∩T| / (|P| + |T|)`` of every
  *foreground* class (background excluded) over that image's non-ignored pixels, averaged over the
  foreground classes; then averaged over images. An image where a class is absent from both prediction
  and target scores 1.0 for that class (the reference code's ``epsilon / epsilon``). The reference adds
  ``epsilon = 1e-6`` to numerator and denominator; we compute the exact ratio (differences < 1e-6 / |T|).
* ``miou_cm`` — the paper's **mIoU**: one confusion matrix accumulated over the whole test set, IoU per class
  ``TP / (TP + FP + FN)`` *including background*, then the mean over classes. A class that never occurs in
  target or prediction has IoU NaN and is left out of the mean (the reference would print NaN).
* ``pixel_accuracy`` — global pixel accuracy from the same confusion matrix (trace / total).
* ``fov_*`` — retinal-vessel metrics, computed only over pixels inside the field-of-view mask (and not
  ignored), pooled over all pixels of all images, for foreground (= any class other than 0) vs background:
  sensitivity ``TP/(TP+FN)``, specificity ``TN/(TN+FP)``, accuracy ``(TP+TN)/total``, and AUC-ROC of the
  foreground probability (``1 - p_background``) over all FOV pixels of the whole set, exact by default (see
  ``FovMetrics``).

Every accumulator keeps its state as CPU tensors of integer counts (plus image names and, for the exact AUC,
the float32 FOV scores), so results from
several processes merge exactly: ``merge`` / ``state`` / ``from_state`` and
``SegmentationMetrics.gather_across_processes`` give the same numbers as one process over all the images
(means over images use ``math.fsum``, so the order of images does not matter either).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "ConfusionMatrix",
    "FovMetrics",
    "SegmentationMetrics",
    "auc_roc",
    "confusion_matrix",
    "foreground_dice",
    "per_image_confusion",
]

_SEARCH_CHUNK = 1 << 22  # positives per searchsorted call in the exact AUC (bounds its int64 temporaries)


# ----------------------------------------------------------------------------------------------------------
# helpers


def _as_labels(pred: Tensor) -> Tensor:
    """Class ids N x H x W from scores N x K x H x W (argmax), labels N x H x W, or one label map H x W."""
    if pred.dim() == 4:
        return pred.argmax(dim=1)
    if pred.dim() == 3:
        if pred.is_floating_point():
            raise TypeError("a 3-D prediction must hold integer class ids; pass scores as N x K x H x W")
        return pred.long()
    if pred.dim() == 2:
        if pred.is_floating_point():
            raise TypeError("a 2-D prediction must hold integer class ids")
        return pred.long().unsqueeze(0)
    raise ValueError(f"prediction must be N x K x H x W scores or N x H x W labels, got shape {tuple(pred.shape)}")


def _as_target(target: Tensor, shape: torch.Size) -> Tensor:
    if target.dim() == 2:
        target = target.unsqueeze(0)
    if target.is_floating_point():
        raise TypeError(f"target must hold integer class labels, got dtype {target.dtype}")
    if tuple(target.shape) != tuple(shape):
        raise ValueError(f"target shape {tuple(target.shape)} does not match the prediction's {tuple(shape)}")
    return target.long()


def _check_labels(target: Tensor, valid: Tensor, num_classes: int, ignore_index: int) -> None:
    bad = valid & ((target < 0) | (target >= num_classes))
    if bool(bad.any()):
        values = torch.unique(target[bad])[:5].tolist()
        raise ValueError(
            f"target holds labels {values} outside [0, {num_classes}) that are not the ignore value {ignore_index}"
        )


def _as_mask(mask: Tensor, shape: torch.Size, what: str) -> Tensor:
    if mask.dim() == 2:
        mask = mask.unsqueeze(0)
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{what} shape {tuple(mask.shape)} does not match the target's {tuple(shape)}")
    return mask if mask.dtype == torch.bool else mask != 0


def _ratio(numerator: int | float, denominator: int | float, empty: float = math.nan) -> float:
    return float(numerator) / float(denominator) if denominator else empty


def _mean(values: Iterable[float]) -> float:
    """Order-independent (exactly rounded) mean; NaN values are skipped; NaN when nothing is left."""
    kept = [v for v in values if not math.isnan(v)]
    return math.fsum(kept) / len(kept) if kept else math.nan


def _std(values: Iterable[float]) -> float:
    """Population standard deviation (ddof=0), order-independent; NaN values are skipped."""
    kept = [v for v in values if not math.isnan(v)]
    if not kept:
        return math.nan
    mean = math.fsum(kept) / len(kept)
    return math.sqrt(math.fsum((v - mean) ** 2 for v in kept) / len(kept))


# ----------------------------------------------------------------------------------------------------------
# confusion matrices


def per_image_confusion(
    pred: Tensor,
    target: Tensor,
    num_classes: int,
    ignore_index: int = 255,
    mask: Tensor | None = None,
) -> Tensor:
    """One confusion matrix per image.

    Args:
        pred: N x K x H x W scores (argmax taken) or N x H x W class ids.
        target: N x H x W labels in ``[0, K)`` or ``ignore_index``.
        num_classes: K.
        ignore_index: label of pixels to skip.
        mask: optional N x H x W bool; only pixels where it is true count.

    Returns:
        N x K x K int64 on the input's device; ``[n, t, p]`` = pixels of image n with target t predicted p.
    """
    labels = _as_labels(pred)
    target = _as_target(target, labels.shape)
    valid = target != ignore_index
    _check_labels(target, valid, num_classes, ignore_index)
    if mask is not None:
        valid = valid & _as_mask(mask, target.shape, "mask")
    if bool(valid.any()) and int(labels[valid].max()) >= num_classes:
        raise ValueError(f"prediction holds class ids >= num_classes={num_classes}")
    n = target.shape[0]
    image_index = torch.arange(n, device=target.device).view(n, 1, 1).expand_as(target)
    flat = (image_index * num_classes + target) * num_classes + labels
    counts = torch.bincount(flat[valid], minlength=n * num_classes * num_classes)
    return counts.view(n, num_classes, num_classes)


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """Confusion matrix K x K int64 (rows target, columns prediction) over all non-ignored pixels of a batch."""
    return per_image_confusion(pred, target, num_classes, ignore_index).sum(dim=0)


def _foreground_scores(cm: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image, per-foreground-class Dice and IoU from N x K x K confusion matrices.

    Returns two N x (K-1) float64 tensors; a class absent from both target and prediction scores 1.0.
    """
    cm = cm.double()
    tp = torch.diagonal(cm, dim1=1, dim2=2)[:, 1:]
    predicted = cm.sum(dim=1)[:, 1:]
    actual = cm.sum(dim=2)[:, 1:]
    total = predicted + actual
    union = total - tp
    ones = torch.ones_like(tp)
    dice = torch.where(total > 0, 2.0 * tp / torch.where(total > 0, total, ones), ones)
    iou = torch.where(union > 0, tp / torch.where(union > 0, union, ones), ones)
    return dice, iou


def foreground_dice(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """The paper's per-image Dice: foreground classes only, ignore pixels skipped.

    For each image and each foreground class ``c >= 1``: ``2 |P_c ∩ T_c| / (|P_c| + |T_c|)`` over the image's
    non-ignored pixels, 1.0 when class c is absent from both (empty-foreground convention); the image's value
    is the mean over foreground classes (for binary segmentation: the Dice of class 1).

    Args:
        pred: N x K x H x W scores (argmax taken) or N x H x W class ids.
        target: N x H x W labels in ``[0, K)`` or ``ignore_index``.
        num_classes: K (>= 2).
        ignore_index: label of pixels to skip.

    Returns:
        N float64 Dice values (CPU), one per image. Average them over images for the paper's Dice.
    """
    if num_classes < 2:
        raise ValueError("foreground Dice needs num_classes >= 2 (class 0 is background)")
    dice, _ = _foreground_scores(per_image_confusion(pred, target, num_classes, ignore_index).cpu())
    return dice.mean(dim=1)


class ConfusionMatrix:
    """Dataset-wide K x K confusion matrix (int64, rows target, columns prediction) skipping ignore pixels.

    ``update(pred, target)`` with pred N x K x H x W scores or N x H x W ids and target N x H x W;
    then ``iou_per_class()``, ``mean_iou()`` (over all classes including background), ``pixel_accuracy()``.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.matrix.zero_()

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch: pred N x K x H x W (scores) or N x H x W (ids), target N x H x W."""
        self.matrix += confusion_matrix(pred, target, self.num_classes, self.ignore_index).cpu()

    def merge(self, other: ConfusionMatrix | Tensor) -> None:
        """Add another accumulator's counts (or a K x K count tensor)."""
        matrix = other.matrix if isinstance(other, ConfusionMatrix) else other
        if tuple(matrix.shape) != tuple(self.matrix.shape):
            raise ValueError(f"cannot merge a {tuple(matrix.shape)} confusion matrix into {tuple(self.matrix.shape)}")
        self.matrix += matrix.to(device="cpu", dtype=torch.int64)

    def iou_per_class(self) -> Tensor:
        """K float64: ``TP / (TP + FP + FN)`` per class; NaN for a class absent from target and prediction."""
        m = self.matrix.double()
        tp = torch.diagonal(m)
        union = m.sum(dim=0) + m.sum(dim=1) - tp
        return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))

    def mean_iou(self) -> float:
        """Mean IoU over classes *including background* (NaN classes skipped): the paper's mIoU."""
        return _mean(self.iou_per_class().tolist())

    def pixel_accuracy(self) -> float:
        """Global pixel accuracy: correctly classified / all counted pixels (NaN when empty)."""
        return _ratio(int(torch.diagonal(self.matrix).sum()), int(self.matrix.sum()))

    def class_accuracy(self) -> Tensor:
        """K float64 recall per class ``TP / (TP + FN)`` (NaN for a class absent from the target)."""
        m = self.matrix.double()
        actual = m.sum(dim=1)
        return torch.where(actual > 0, torch.diagonal(m) / actual.clamp(min=1), torch.full_like(actual, math.nan))


# ----------------------------------------------------------------------------------------------------------
# AUC-ROC


def _auc_from_histograms(positives: Tensor, negatives: Tensor) -> float:
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


def _exact_auc(positives: np.ndarray, negatives: np.ndarray) -> float:
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
    return _exact_auc(_as_numpy_scores(scores[labels]), _as_numpy_scores(scores[~labels]))


def _probability_bins(scores: Tensor, mantissa_bits: int, octaves: int) -> tuple[Tensor, int]:
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


class FovMetrics:
    """Vessel-style metrics inside a field-of-view (FOV) mask, pooled over every pixel of every image.

    Foreground = any label other than 0 (and not ``ignore_index``); the score is the foreground probability.
    Counts (TP, FP, FN, TN) give sensitivity, specificity and accuracy; AUC-ROC is computed over all FOV
    pixels of all images seen (as vessel papers report it), in one of two modes:

    * ``auc="exact"`` (default): keeps every FOV pixel's float32 score, in one list for foreground pixels and
      one for background pixels (4 bytes per pixel: DRIVE's test set ~18 MB, HRF's ~170M FOV pixels ~680 MB,
      twice that for a moment while ``auc()`` joins the lists), and computes the Mann-Whitney statistic of
      :func:`auc_roc` by sorting (ties in float32 counted 1/2): the exact AUC of the float32 scores, any
      values, in about a second for DRIVE.
    * ``auc="binned"``: streaming, fixed memory — two histograms (positives / negatives) over ``num_bins``
      ordered probability bins (:func:`_probability_bins`; defaults: every float32 exponent down to 0 and
      ``2**12`` bins per exponent, 1,032,194 bins, 16 MB) with relative resolution ``2**-mantissa_bits`` on
      ``q = min(p, 1 - p)``. Only scores sharing a bin are confused (counted as ties): two values of q above
      ``2**-126`` (1.2e-38) that differ by a factor ``1 + 2**-mantissa_bits`` or more never share one, and the
      error against the exact AUC is at most :meth:`auc_error_bound` — half the fraction of (positive,
      negative) pairs sharing a bin, computed from the histograms and reported with the result (tested).

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
            pred = _as_mask(pred, target.shape, "pred")
        valid = target != self.ignore_index
        if fov is not None:
            valid = valid & _as_mask(fov, target.shape, "fov")
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
                index, num_bins = _probability_bins(kept_scores, self.mantissa_bits, self.octaves)
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
            return _auc_from_histograms(self.positive_hist, self.negative_hist)
        positives, negatives = self._joined_scores()
        # sorting in place keeps the stored lists valid (the AUC does not depend on their order) and sorted,
        # which makes the next call cheap
        return _exact_auc(positives.numpy(), negatives.numpy())

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

    def compute(self) -> dict[str, float | int]:
        """``{"sensitivity", "specificity", "accuracy", "auc", "auc_error_bound", "pixels"}`` over all FOV
        pixels seen."""
        tp, fp, fn, tn = (int(v) for v in self.counts)
        return {
            "sensitivity": _ratio(tp, tp + fn),
            "specificity": _ratio(tn, tn + fp),
            "accuracy": _ratio(tp + tn, tp + fp + fn + tn),
            "auc": self.auc(),
            "auc_error_bound": self.auc_error_bound(),
            "pixels": tp + fp + fn + tn,
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


# ----------------------------------------------------------------------------------------------------------
# everything together


class SegmentationMetrics:
    """The evaluation accumulator: paper Dice, paper mIoU, pixel accuracy and FOV vessel metrics.

    Usage::

        metrics = SegmentationMetrics(num_classes=2)
        for image, target, fov, names in loader:
            metrics.update(model_output, target, fov, names)   # output: N x K x H x W logits or probabilities
        results = metrics.compute()    # dict of floats, see ``compute``
        rows = metrics.per_image()     # list of dicts, one per image

    State (all CPU tensors): one K x K confusion matrix per image (so per-image Dice and the dataset-wide
    matrix both follow exactly), per-image FOV counts, the image names, and a ``FovMetrics`` for the pooled
    vessel metrics and AUC. ``state()`` / ``merge()`` / ``from_state()`` combine accumulators from several
    workers exactly; ``gather_across_processes()`` does it over ``torch.distributed``.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, auc: Literal["binned", "exact"] = "exact") -> None:
        if num_classes < 2:
            raise ValueError("num_classes must be >= 2 (class 0 is background)")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.auc_mode: Literal["binned", "exact"] = auc
        self.reset()

    def reset(self) -> None:
        k = self.num_classes
        self._confusions: list[Tensor] = [torch.zeros(0, k, k, dtype=torch.int64)]
        self._fov_counts: list[Tensor] = [torch.zeros(0, 4, dtype=torch.int64)]
        self._has_fov: list[Tensor] = [torch.zeros(0, dtype=torch.bool)]
        self.names: list[str] = []
        self.fov = FovMetrics(auc=self.auc_mode, ignore_index=self.ignore_index)

    def __len__(self) -> int:
        return len(self.names)

    # -- accumulation ------------------------------------------------------------------------------------

    def _probabilities(self, output: Tensor, logits: bool | None) -> Tensor:
        output = output.float()
        if logits is None:
            sums = output.sum(dim=1)
            logits = not (
                output.numel() > 0
                and float(output.min()) >= 0.0
                and float(output.max()) <= 1.0
                and float((sums - 1.0).abs().max()) <= 1e-3
            )
        return torch.softmax(output, dim=1) if logits else output

    def update(
        self,
        output: Tensor,
        target: Tensor,
        fov: Tensor | None = None,
        names: Sequence[str] | None = None,
        *,
        logits: bool | None = None,
    ) -> None:
        """Add a batch of images.

        Args:
            output: N x K x H x W logits or probabilities, or N x H x W predicted class ids (then no AUC).
            target: N x H x W int labels in ``[0, K)`` or ``ignore_index``.
            fov: N x H x W bool field-of-view masks, or None (then these images have no ``fov_*`` values).
            names: N image names (default ``image_<running index>``; give real names when merging workers).
            logits: whether ``output`` holds logits (softmax applied) or probabilities; None = detect
                (probabilities iff all values lie in [0, 1] and sum to 1 over classes within 1e-3).
        """
        if output.dim() == 4:
            if output.shape[1] != self.num_classes:
                raise ValueError(f"output has {output.shape[1]} classes, expected num_classes={self.num_classes}")
            probabilities: Tensor | None = self._probabilities(output, logits)
            labels = probabilities.argmax(dim=1)
        else:
            probabilities = None
            labels = _as_labels(output)
        target = _as_target(target, labels.shape)
        n = labels.shape[0]
        if names is None:
            names = [f"image_{len(self.names) + i}" for i in range(n)]
        names = [str(name) for name in names]
        if len(names) != n:
            raise ValueError(f"got {len(names)} names for {n} images")
        confusion = per_image_confusion(labels, target, self.num_classes, self.ignore_index).cpu()
        if fov is not None:
            scores = probabilities[:, 1:].sum(dim=1) if probabilities is not None else None
            fov_counts = self.fov.update(scores, target, fov, pred=labels != 0)
            has_fov = torch.ones(n, dtype=torch.bool)
        else:
            fov_counts = torch.zeros(n, 4, dtype=torch.int64)
            has_fov = torch.zeros(n, dtype=torch.bool)
        self._confusions.append(confusion)
        self._fov_counts.append(fov_counts)
        self._has_fov.append(has_fov)
        self.names.extend(names)

    # -- state ---------------------------------------------------------------------------------------------

    def _compact(self) -> None:
        if len(self._confusions) > 1:
            self._confusions = [torch.cat(self._confusions)]
            self._fov_counts = [torch.cat(self._fov_counts)]
            self._has_fov = [torch.cat(self._has_fov)]

    @property
    def image_confusions(self) -> Tensor:
        """N x K x K int64: one confusion matrix per image seen (rows target, columns prediction)."""
        self._compact()
        return self._confusions[0]

    @property
    def confusion(self) -> ConfusionMatrix:
        """The dataset-wide confusion matrix (sum of the per-image ones)."""
        matrix = ConfusionMatrix(self.num_classes, self.ignore_index)
        matrix.merge(self.image_confusions.sum(dim=0))
        return matrix

    def state(self) -> dict[str, Any]:
        """CPU tensors + names: ``{"num_classes", "ignore_index", "confusions" (N x K x K), "fov_counts"
        (N x 4: TP, FP, FN, TN), "has_fov" (N), "names", "fov" (FovMetrics.state())}``."""
        self._compact()
        return {
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "confusions": self._confusions[0].clone(),
            "fov_counts": self._fov_counts[0].clone(),
            "has_fov": self._has_fov[0].clone(),
            "names": list(self.names),
            "fov": self.fov.state(),
        }

    def merge(self, other: SegmentationMetrics | dict[str, Any]) -> None:
        """Append another accumulator's images (or a ``state()``): afterwards this holds both."""
        state = other.state() if isinstance(other, SegmentationMetrics) else other
        if state["num_classes"] != self.num_classes or state["ignore_index"] != self.ignore_index:
            raise ValueError(
                f"cannot merge metrics for {state['num_classes']} classes / ignore {state['ignore_index']} into "
                f"{self.num_classes} classes / ignore {self.ignore_index}"
            )
        self._confusions.append(state["confusions"].to(torch.int64))
        self._fov_counts.append(state["fov_counts"].to(torch.int64))
        self._has_fov.append(state["has_fov"].to(torch.bool))
        self.names.extend(state["names"])
        self.fov.merge(state["fov"])

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> SegmentationMetrics:
        """Rebuild an accumulator from ``state()`` (e.g. after pickling it to another process)."""
        metrics = cls(state["num_classes"], state["ignore_index"], auc=state["fov"]["settings"][0])
        metrics.merge(state)
        return metrics

    def gather_across_processes(self, group: Any = None) -> None:
        """With ``torch.distributed`` initialised, replace this state by the union over all ranks (rank order).

        A no-op when not running distributed. Every rank ends with the same, complete state.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        states: list[Any] = [None] * dist.get_world_size(group)
        dist.all_gather_object(states, self.state(), group=group)
        self.reset()
        for state in states:
            self.merge(state)

    # -- results -------------------------------------------------------------------------------------------

    def _per_image_scores(self) -> tuple[Tensor, Tensor]:
        return _foreground_scores(self.image_confusions)

    def compute(self) -> dict[str, Any]:
        """All dataset-level metrics as plain Python numbers (JSON-ready; NaN where undefined).

        Keys:
            ``num_images``; ``pixels`` (non-ignored pixels counted);
            ``dice_fg_mean`` (the paper's Dice: mean over images of per-image foreground Dice),
            ``dice_fg_std`` (population std over images), ``dice_fg_per_class`` (K-1 means over images);
            ``iou_fg_mean`` (mean over images of per-image foreground IoU);
            ``miou_cm`` (the paper's mIoU: mean IoU over all K classes incl. background, dataset-wide matrix),
            ``iou_per_class`` (K), ``iou_fg_cm`` (mean over foreground classes, same matrix),
            ``dice_fg_cm`` (dataset-wide "global" foreground Dice ``2TP/(2TP+FP+FN)`` from the matrix,
            mean over foreground classes), ``pixel_accuracy`` (global);
            and when any image came with a FOV mask: ``fov_sensitivity``, ``fov_specificity``,
            ``fov_accuracy``, ``fov_auc`` (NaN if no probabilities were given), ``fov_auc_error_bound`` (0 for
            the default exact AUC, see ``FovMetrics``), ``fov_pixels``.
        """
        dice, iou = self._per_image_scores()
        n = dice.shape[0]
        image_dice = dice.mean(dim=1).tolist()
        image_iou = iou.mean(dim=1).tolist()
        matrix = self.confusion
        cm = matrix.matrix.double()
        tp = torch.diagonal(cm)[1:]
        total = cm.sum(dim=0)[1:] + cm.sum(dim=1)[1:]
        global_dice = [_ratio(2 * t, s) for t, s in zip(tp.tolist(), total.tolist(), strict=True)]
        iou_per_class = matrix.iou_per_class().tolist()
        results: dict[str, Any] = {
            "num_images": n,
            "pixels": int(matrix.matrix.sum()),
            "dice_fg_mean": _mean(image_dice),
            "dice_fg_std": _std(image_dice),
            "dice_fg_per_class": [_mean(dice[:, c].tolist()) for c in range(dice.shape[1])],
            "iou_fg_mean": _mean(image_iou),
            "miou_cm": matrix.mean_iou(),
            "iou_per_class": iou_per_class,
            "iou_fg_cm": _mean(iou_per_class[1:]),
            "dice_fg_cm": _mean(global_dice),
            "pixel_accuracy": matrix.pixel_accuracy(),
        }
        self._compact()
        if bool(self._has_fov[0].any()):
            fov = self.fov.compute()
            results.update(
                fov_sensitivity=fov["sensitivity"],
                fov_specificity=fov["specificity"],
                fov_accuracy=fov["accuracy"],
                fov_auc=fov["auc"],
                fov_auc_error_bound=fov["auc_error_bound"],
                fov_pixels=fov["pixels"],
            )
        return results

    def per_image(self) -> list[dict[str, Any]]:
        """One row per image, in the order seen: ``name``, ``dice_fg``, ``iou_fg``, ``pixel_accuracy``,
        ``pixels``; ``dice_class_<c>`` for each foreground class when K > 2; and when any image had a FOV:
        ``fov_sensitivity``, ``fov_specificity``, ``fov_accuracy`` (NaN for images without one)."""
        dice, iou = self._per_image_scores()
        confusions = self.image_confusions
        fov_counts = self._fov_counts[0]
        has_fov = self._has_fov[0]
        any_fov = bool(has_fov.any())
        rows: list[dict[str, Any]] = []
        for i, name in enumerate(self.names):
            cm = confusions[i]
            pixels = int(cm.sum())
            row: dict[str, Any] = {
                "name": name,
                "dice_fg": float(dice[i].mean()),
                "iou_fg": float(iou[i].mean()),
                "pixel_accuracy": _ratio(int(torch.diagonal(cm).sum()), pixels),
                "pixels": pixels,
            }
            if self.num_classes > 2:
                for c in range(1, self.num_classes):
                    row[f"dice_class_{c}"] = float(dice[i, c - 1])
            if any_fov:
                tp, fp, fn, tn = (int(v) for v in fov_counts[i])
                ok = bool(has_fov[i])
                row["fov_sensitivity"] = _ratio(tp, tp + fn) if ok else math.nan
                row["fov_specificity"] = _ratio(tn, tn + fp) if ok else math.nan
                row["fov_accuracy"] = _ratio(tp + tn, tp + fp + fn + tn) if ok else math.nan
            rows.append(row)
        return rows
