"""Surface-distance metrics of a segmentation against its ground truth: Hausdorff distance (HD, and its percentile
variant HD95), average symmetric surface distance (ASSD) and normalized surface Dice (NSD, Nikolov et al. 2021).

They follow MONAI's conventions (``monai.metrics.compute_hausdorff_distance``, ``compute_average_surface_distance``
with ``symmetric=True``, ``compute_surface_dice`` with ``use_subvoxels=False``), so their numbers can be compared:

* Masks are N-D arrays (non-zero = inside): H x W images, D x H x W volumes, in any axis order as long as
  ``spacing`` follows it. ``spacing`` gives each axis' voxel size in mm (default 1.0 on every axis: distances in
  pixels). Anisotropic spacing is exact: the Euclidean distance transform runs with ``sampling=spacing``.
* The surface (edge) voxels of a mask ``M`` are ``M XOR binary_erosion(M)`` with SciPy's default structuring
  element, the cross (face neighbours: 4 in 2D, 6 in 3D), and the outside of the array counting as background: a
  mask voxel is on the surface when one of its face neighbours is not in the mask (or off the array).
* ``D_AB`` holds, for each surface voxel of A, the Euclidean distance (mm) between its centre and the centre of the
  nearest surface voxel of B; ``D_BA`` likewise.
* ``HD_p = max(P_p(D_AB), P_p(D_BA))``, ``P_p`` the p-th percentile with linear interpolation (NumPy's default, as
  ``torch.quantile`` in MONAI). ``percentile=None`` (or 100) gives the classic HD, the maximum. A percentile of 0
  gives the minimum here (MONAI reads 0 as "not set" and returns the maximum).
* ``ASSD = mean(D_AB ∪ D_BA)``, the mean of the concatenation of both directions' distances, as MONAI computes it:
  every surface voxel weighs the same, so it is *not* the mean of the two directed means when the surfaces have
  different sizes.
* ``NSD_τ = (|{d ∈ D_AB : d <= τ}| + |{d ∈ D_BA : d <= τ}|) / (|D_AB| + |D_BA|)`` at tolerance ``τ`` (mm): surface
  counted in voxels, as MONAI's default, not weighted by surface-element area as DeepMind's ``surface-distance``
  library (or MONAI's ``use_subvoxels=True``) does.

Empty masks (MONAI answers NaN or inf with a warning; here the answer is never NaN):

* both empty: HD = ASSD = 0.0 and NSD = 1.0 (the two agree that nothing is there);
* exactly one empty: HD = ASSD = inf (the distance to an empty set) and NSD = 0.0. A mean over images is then inf
  too: count such images apart rather than average over them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

__all__ = [
    "SurfaceScores",
    "as_spacing",
    "average_surface_distance",
    "hausdorff_distance",
    "normalized_surface_dice",
    "surface_distances",
    "surface_metrics",
    "surface_voxels",
]


@dataclass(frozen=True)
class SurfaceScores:
    """One foreground class' surface metrics (distances in mm, or pixels at unit spacing)."""

    hd95: float
    """Percentile Hausdorff distance (the 95th unless :func:`surface_metrics` was asked for another)."""
    assd: float
    """Average symmetric surface distance."""
    nsd: float
    """Normalized surface Dice at :func:`surface_metrics`' tolerance, in [0, 1]."""

    def to_dict(self) -> dict[str, float]:
        """``{"hd95", "assd", "nsd"}``."""
        return asdict(self)


def as_spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    """The per-axis voxel sizes (mm) of an ``ndim``-D array: ``spacing`` checked (one positive finite value per
    axis), or 1.0 on every axis when it is None."""
    if spacing is None:
        return (1.0,) * ndim
    values = tuple(float(value) for value in spacing)
    if len(values) != ndim:
        raise ValueError(f"spacing {values} has {len(values)} values for a {ndim}-D array")
    if not all(math.isfinite(value) and value > 0 for value in values):
        raise ValueError(f"spacing {values} must hold positive finite voxel sizes")
    return values


def surface_voxels(mask: ArrayLike) -> np.ndarray:
    """The surface voxels of a mask (any shape, non-zero = inside): the mask voxels with a face neighbour outside
    the mask or off the array. Returns a bool array of the mask's shape."""
    inside = np.asarray(mask).astype(bool, copy=False)
    return inside ^ ndimage.binary_erosion(inside)


def surface_distances(
    pred: ArrayLike, target: ArrayLike, spacing: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Both directions' surface distances between two masks of one shape.

    Args:
        pred: predicted mask (any N-D shape, non-zero = inside).
        target: true mask, same shape.
        spacing: voxel size (mm) along each of the N axes; None: 1.0 each.

    Returns:
        ``(D_pred_target, D_target_pred)``: float64 1-D arrays, in mm, with one distance per surface voxel of
        ``pred`` (resp. ``target``), in C order. Where the other mask is empty, every distance is inf; an empty
        mask gives an empty array.
    """
    inside_pred, inside_target = _masks(pred, target)
    sampling = as_spacing(spacing, inside_pred.ndim)
    union = inside_pred | inside_target
    if not union.any():
        return np.empty(0), np.empty(0)
    # Both surfaces lie in the union's bounding box and the distance between two voxels does not depend on the
    # rest of the array, so the distance transforms need only that box (a small organ in a large volume).
    box = ndimage.find_objects(union.astype(np.int8))[0]
    edges_pred, edges_target = surface_voxels(inside_pred[box]), surface_voxels(inside_target[box])
    return _directed(edges_pred, edges_target, sampling), _directed(edges_target, edges_pred, sampling)


def hausdorff_distance(
    pred: ArrayLike, target: ArrayLike, spacing: Sequence[float] | None = None, percentile: float | None = 95.0
) -> float:
    """The symmetric (percentile) Hausdorff distance in mm: ``max(P_p(D_AB), P_p(D_BA))``.

    Args:
        pred: predicted mask (any N-D shape, non-zero = inside).
        target: true mask, same shape.
        spacing: voxel size (mm) along each axis; None: 1.0 each (distances in pixels).
        percentile: p in [0, 100]; None or 100: the classic Hausdorff distance (the maximum).

    Returns:
        The distance; 0.0 when both masks are empty, inf when exactly one is.
    """
    _check_percentile(percentile)
    return _hausdorff(*surface_distances(pred, target, spacing), percentile)


def average_surface_distance(pred: ArrayLike, target: ArrayLike, spacing: Sequence[float] | None = None) -> float:
    """The average symmetric surface distance (ASSD) in mm: the mean of ``D_AB`` and ``D_BA`` concatenated.

    Args:
        pred: predicted mask (any N-D shape, non-zero = inside).
        target: true mask, same shape.
        spacing: voxel size (mm) along each axis; None: 1.0 each.

    Returns:
        The distance; 0.0 when both masks are empty, inf when exactly one is.
    """
    return _assd(*surface_distances(pred, target, spacing))


def normalized_surface_dice(
    pred: ArrayLike, target: ArrayLike, tolerance: float, spacing: Sequence[float] | None = None
) -> float:
    """The normalized surface Dice: the fraction of both surfaces' voxels within ``tolerance`` mm of the other
    surface.

    Args:
        pred: predicted mask (any N-D shape, non-zero = inside).
        target: true mask, same shape.
        tolerance: the accepted deviation in mm (>= 0); a distance equal to it counts as within.
        spacing: voxel size (mm) along each axis; None: 1.0 each.

    Returns:
        NSD in [0, 1]; 1.0 when both masks are empty, 0.0 when exactly one is.
    """
    _check_tolerance(tolerance)
    return _nsd(*surface_distances(pred, target, spacing), tolerance)


def surface_metrics(
    pred_labels: ArrayLike,
    target_labels: ArrayLike,
    num_classes: int,
    spacing: Sequence[float] | None = None,
    percentile: float | None = 95.0,
    tolerance: float = 1.0,
    ignore_index: int = 255,
) -> dict[int, SurfaceScores]:
    """HD (percentile), ASSD and NSD of each foreground class of a label map.

    Voxels whose target label is ``ignore_index`` are outside both masks of every class: a predicted region that
    runs into an ignored area gets a surface along its border.

    Args:
        pred_labels: predicted class ids, any N-D shape (H x W, D x H x W).
        target_labels: true class ids in ``[0, num_classes)`` or ``ignore_index``, same shape.
        num_classes: K (>= 2); class 0 is background and gets no scores.
        spacing: voxel size (mm) along each axis; None: 1.0 each.
        percentile: the Hausdorff percentile (None or 100: the maximum).
        tolerance: NSD tolerance in mm.
        ignore_index: target label of voxels to leave out.

    Returns:
        ``{class id: SurfaceScores}`` for classes 1 .. K-1, with the empty-mask conventions of the module.
    """
    if num_classes < 2:
        raise ValueError(f"surface metrics need num_classes >= 2 (class 0 is background), got {num_classes}")
    _check_percentile(percentile)
    _check_tolerance(tolerance)
    pred, target = np.asarray(pred_labels), np.asarray(target_labels)
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and target {target.shape} must have one shape")
    sampling = as_spacing(spacing, pred.ndim)
    valid = target != ignore_index
    for name, labels in (("target", target), ("prediction", pred)):
        bad = valid & ((labels < 0) | (labels >= num_classes))
        if bad.any():
            values = np.unique(labels[bad])[:5].tolist()
            raise ValueError(f"{name} holds labels {values} outside [0, {num_classes}) where the target is not ignored")
    scores = {}
    for label in range(1, num_classes):
        distances = surface_distances((pred == label) & valid, (target == label) & valid, sampling)
        scores[label] = SurfaceScores(
            hd95=_hausdorff(*distances, percentile), assd=_assd(*distances), nsd=_nsd(*distances, tolerance)
        )
    return scores


def _masks(pred: ArrayLike, target: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    inside_pred, inside_target = (np.asarray(mask).astype(bool, copy=False) for mask in (pred, target))
    if inside_pred.shape != inside_target.shape:
        raise ValueError(f"pred {inside_pred.shape} and target {inside_target.shape} must have one shape")
    if inside_pred.ndim == 0:
        raise ValueError("masks must have at least one axis")
    return inside_pred, inside_target


def _directed(source: np.ndarray, to: np.ndarray, sampling: tuple[float, ...]) -> np.ndarray:
    """Distance from each voxel of ``source`` to the nearest voxel of ``to`` (inf each when ``to`` is empty)."""
    if not to.any():
        return np.full(np.count_nonzero(source), np.inf)
    return ndimage.distance_transform_edt(~to, sampling=sampling)[source]


def _check_percentile(percentile: float | None) -> None:
    if percentile is not None and not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must be in [0, 100] or None, got {percentile}")


def _check_tolerance(tolerance: float) -> None:
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance must be a finite distance >= 0 (mm), got {tolerance}")


def _hausdorff(forward: np.ndarray, backward: np.ndarray, percentile: float | None) -> float:
    if forward.size == 0 and backward.size == 0:
        return 0.0
    if forward.size == 0 or backward.size == 0:
        return math.inf
    if percentile is None:
        return float(max(forward.max(), backward.max()))
    return float(max(np.percentile(forward, percentile), np.percentile(backward, percentile)))


def _assd(forward: np.ndarray, backward: np.ndarray) -> float:
    if forward.size == 0 and backward.size == 0:
        return 0.0
    return float(np.concatenate((forward, backward)).mean())


def _nsd(forward: np.ndarray, backward: np.ndarray, tolerance: float) -> float:
    total = forward.size + backward.size
    if total == 0:
        return 1.0
    return float(np.count_nonzero(forward <= tolerance) + np.count_nonzero(backward <= tolerance)) / total
