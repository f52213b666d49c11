"""Object-level metrics of the GlaS gland segmentation challenge (Sirinukunwattana et al., "Gland segmentation in
colon histology images: The GlaS challenge contest", Medical Image Analysis 35, 2017): object F1, object Dice and
object Hausdorff, on instance label maps.

An instance map is an integer array (H x W; any N-D shape works) with 0 for background and one distinct positive
id per object; ids need not be consecutive. :func:`label_objects` makes one from a binary mask. ``S`` are the
segmented (predicted) objects, ``G`` the ground-truth ones. The definitions are the challenge's evaluation page's,
made precise where its official MATLAB code is:

* Partner: ``G*(S)`` is the ground-truth object with the largest overlap ``|S ∩ G|`` with S (ties: the smallest
  id, as MATLAB's ``mode``), none when S overlaps no ground-truth object; ``S*(G)`` likewise.
* Detection: S is a true positive when ``|S ∩ G*(S)| > 0.5 |G*(S)|``, i.e. it covers strictly more than half of
  its partner's ground-truth area (the official code's ``> 0.5``; the page says "at least 50%"), else a false
  positive; ``FN = |G| - TP``. Two disjoint segmented objects cannot each cover more than half of one G, so each G
  is matched at most once: a gland split in two halves gives two false positives and one false negative. A segmented
  object covering most of a small gland but overlapping a larger one more has the larger one as partner.
  ``F1 = 2 TP / (2 TP + FP + FN)``.
* Object Dice: ``0.5 [Σ_i γ_i Dice(G_i, S*(G_i)) + Σ_j σ_j Dice(G*(S_j), S_j)]`` with ``γ_i = |G_i| / Σ|G|`` and
  ``σ_j = |S_j| / Σ|S|``; an object without partner scores Dice 0.
* Object Hausdorff: the same weighted sum with the classic (maximum) Hausdorff distance ``H`` between the two
  objects' *pixel sets* (every pixel of the objects, as the challenge defines it and its code computes it; this is
  not :func:`~convunext.evaluation.surface.hausdorff_distance`, which measures between surface voxels). An object
  that overlaps nothing of the other set takes as partner the object of the other set at the smallest Hausdorff
  distance from it (the official code's choice; ties: the smallest id). Distances are in mm with ``spacing``
  (pixels by default), exact for anisotropic pixels.

Edge cases: no object in either map: F1 1.0, object Dice 1.0, object Hausdorff 0.0. Objects in only one map:
F1 0.0, object Dice 0.0, object Hausdorff inf (no object to measure to), with TP 0 and the objects counted as FP or
FN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

from .surface import as_spacing

__all__ = ["ObjectScores", "label_objects", "object_metrics"]


@dataclass(frozen=True)
class ObjectScores:
    """One image's GlaS object-level scores (Hausdorff in mm, or pixels at unit spacing)."""

    f1: float
    object_dice: float
    object_hausdorff: float
    true_positives: int
    false_positives: int
    false_negatives: int

    def to_dict(self) -> dict[str, float | int]:
        """The fields by name."""
        return asdict(self)


def label_objects(binary: ArrayLike) -> np.ndarray:
    """An instance map of a binary mask: its connected components with full connectivity (8 neighbours in 2D, 26
    in 3D), numbered 1 .. n in raster order, background 0. Returns an int32 array of the mask's shape."""
    mask = np.asarray(binary).astype(bool, copy=False)
    structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
    return ndimage.label(mask, structure=structure, output=np.int32)[0]


def object_metrics(
    pred_instances: ArrayLike, target_instances: ArrayLike, spacing: Sequence[float] | None = None
) -> ObjectScores:
    """The GlaS object F1, object Dice and object Hausdorff of one image (definitions in the module docstring).

    Args:
        pred_instances: segmented objects, H x W integer ids (0 = background).
        target_instances: ground-truth objects, same shape.
        spacing: pixel size (mm) along each axis, for the Hausdorff distances; None: 1.0 each.

    Returns:
        The scores and the detection counts.
    """
    pred, target = _instances(pred_instances, "pred_instances"), _instances(target_instances, "target_instances")
    if pred.shape != target.shape:
        raise ValueError(f"pred_instances {pred.shape} and target_instances {target.shape} must have one shape")
    sampling = as_spacing(spacing, pred.ndim)
    seg, truth = _Objects(pred), _Objects(target)
    if not seg.count and not truth.count:
        return ObjectScores(1.0, 1.0, 0.0, 0, 0, 0)
    if not seg.count or not truth.count:
        return ObjectScores(0.0, 0.0, math.inf, 0, seg.count, truth.count)

    both = (pred > 0) & (target > 0)
    pairs = seg.index[both] * truth.count + truth.index[both]
    overlap = np.bincount(pairs, minlength=seg.count * truth.count).reshape(seg.count, truth.count)
    # argmax takes the first of equal maxima: the smallest id, since the ids are sorted.
    partner_of_seg = np.where(overlap.max(axis=1) > 0, overlap.argmax(axis=1), -1)
    partner_of_truth = np.where(overlap.max(axis=0) > 0, overlap.argmax(axis=0), -1)

    seg_ids = np.arange(seg.count)
    matched = partner_of_seg >= 0
    covered = 2 * overlap[seg_ids[matched], partner_of_seg[matched]] > truth.areas[partner_of_seg[matched]]
    tp = int(np.count_nonzero(covered))
    fp, fn = seg.count - tp, truth.count - tp

    def dice(s: int, g: int) -> float:
        return 2.0 * overlap[s, g] / (seg.areas[s] + truth.areas[g]) if s >= 0 and g >= 0 else 0.0

    hausdorff = _PairHausdorff(seg, truth, sampling)

    def nearest_truth(s: int) -> int:
        return partner_of_seg[s] if partner_of_seg[s] >= 0 else min(range(truth.count), key=lambda g: hausdorff(s, g))

    def nearest_seg(g: int) -> int:
        return partner_of_truth[g] if partner_of_truth[g] >= 0 else min(range(seg.count), key=lambda s: hausdorff(s, g))

    seg_weights, truth_weights = seg.areas / seg.areas.sum(), truth.areas / truth.areas.sum()
    object_dice = 0.5 * (
        sum(truth_weights[g] * dice(partner_of_truth[g], g) for g in range(truth.count))
        + sum(seg_weights[s] * dice(s, partner_of_seg[s]) for s in range(seg.count))
    )
    object_hausdorff = 0.5 * (
        sum(truth_weights[g] * hausdorff(nearest_seg(g), g) for g in range(truth.count))
        + sum(seg_weights[s] * hausdorff(s, nearest_truth(s)) for s in range(seg.count))
    )
    return ObjectScores(
        f1=2.0 * tp / (2 * tp + fp + fn),
        object_dice=float(object_dice),
        object_hausdorff=float(object_hausdorff),
        true_positives=tp,
        false_positives=fp,
        false_negatives=fn,
    )


def _instances(instances: ArrayLike, name: str) -> np.ndarray:
    array = np.asarray(instances)
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        raise ValueError(f"{name} must hold integer object ids, got dtype {array.dtype}")
    if array.ndim == 0:
        raise ValueError(f"{name} must have at least one axis")
    if array.dtype != bool and (array < 0).any():
        raise ValueError(f"{name} holds negative ids; 0 is background and objects are positive")
    return array


class _Objects:
    """The objects of one instance map: ``count`` objects in increasing id order, ``index`` (each pixel's object
    index 0 .. count-1, or -1 on background), ``areas`` (pixels) and ``boxes`` (bounding slices)."""

    def __init__(self, instances: np.ndarray) -> None:
        self.ids = np.unique(instances[instances > 0])
        self.count = len(self.ids)
        self.index = np.where(instances > 0, np.searchsorted(self.ids, instances), -1)
        self.areas = np.bincount(self.index[instances > 0], minlength=self.count)
        self.boxes = ndimage.find_objects(self.index + 1)


class _PairHausdorff:
    """``H(S_s, G_g)`` between objects of two maps, each pair computed once."""

    def __init__(self, seg: _Objects, truth: _Objects, sampling: tuple[float, ...]) -> None:
        self.seg, self.truth, self.sampling = seg, truth, sampling
        self.cache: dict[tuple[int, int], float] = {}

    def __call__(self, s: int, g: int) -> float:
        if (s, g) not in self.cache:
            # Distances between the two objects' pixels are those within their joint bounding box.
            box = tuple(
                slice(min(a.start, b.start), max(a.stop, b.stop))
                for a, b in zip(self.seg.boxes[s], self.truth.boxes[g], strict=True)
            )
            one, other = self.seg.index[box] == s, self.truth.index[box] == g
            self.cache[s, g] = float(
                max(
                    ndimage.distance_transform_edt(~other, sampling=self.sampling)[one].max(),
                    ndimage.distance_transform_edt(~one, sampling=self.sampling)[other].max(),
                )
            )
        return self.cache[s, g]
