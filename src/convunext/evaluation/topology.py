"""Topology-aware vessel metrics per image: clDice (Shit et al., CVPR 2021) and connected-component counts.

Foreground = any label other than 0, as for the ``fov_*`` metrics. Everything is computed on the *valid* pixels
of an image: inside its field of view (when it has one) and not ``ignore_index``; the predicted mask ``V_P`` and
the true mask ``V_L`` are restricted to them *before* skeletonising, so the FOV border never creates centrelines.

* ``S_P = skeleton(V_P)``, ``S_L = skeleton(V_L)`` (:func:`skimage.morphology.skeletonize`, computed once per
  mask);
* topology precision ``Tprec = |S_P ∩ V_L| / |S_P|``: the fraction of the predicted centreline inside a true
  vessel (spurious branches and blobs lower it);
* topology sensitivity ``Tsens = |S_L ∩ V_P| / |S_L|``: the fraction of the true centreline covered by the
  prediction (a gap in a vessel lowers it by the gap's share of the centreline, much more than the gap's share
  of the vessel's area lowers the Dice of a wide vessel);
* ``clDice = 2 Tprec Tsens / (Tprec + Tsens)``.

Edge cases, never NaN: a ratio whose skeleton is empty is 1 (vacuously true: nothing predicted lies outside the
truth, nothing true is missed) and the harmonic mean of 0 and 0 is 0. The skeleton of a non-empty mask is never
empty (skeletonisation keeps at least one pixel of every component), so: prediction and truth both empty ->
``Tprec = Tsens = clDice = 1``; exactly one of them empty -> clDice 0.

Connected components are counted with **8-connectivity** (diagonal neighbours join) on ``V_P`` and ``V_L``.

The state is six integer counts per image (``TOPOLOGY_COUNTS``), so accumulators from several processes merge
exactly by concatenation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from skimage.morphology import skeletonize
from torch import Tensor

from .utils import as_mask, nan_mean, nan_std, ratio

__all__ = ["TOPOLOGY_COUNTS", "TopologyMetrics", "topology_counts", "topology_scores"]

TOPOLOGY_COUNTS = (
    "skeleton_pred",  # |S_P|
    "skeleton_pred_in_true",  # |S_P ∩ V_L|
    "skeleton_true",  # |S_L|
    "skeleton_true_in_pred",  # |S_L ∩ V_P|
    "components_pred",
    "components_true",
)

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def topology_counts(pred: np.ndarray, truth: np.ndarray) -> tuple[int, ...]:
    """The counts of ``TOPOLOGY_COUNTS`` for one image.

    Args:
        pred: H x W bool predicted foreground ``V_P`` (already restricted to the valid pixels).
        truth: H x W bool true foreground ``V_L`` (same pixels).

    Returns:
        ``(|S_P|, |S_P ∩ V_L|, |S_L|, |S_L ∩ V_P|, components of V_P, components of V_L)``.
    """
    if pred.shape != truth.shape or pred.ndim != 2:
        raise ValueError(f"pred {pred.shape} and truth {truth.shape} must be two H x W masks of one shape")
    pred, truth = pred.astype(bool, copy=False), truth.astype(bool, copy=False)
    skeleton_pred, skeleton_true = skeletonize(pred), skeletonize(truth)
    return (
        int(np.count_nonzero(skeleton_pred)),
        int(np.count_nonzero(skeleton_pred & truth)),
        int(np.count_nonzero(skeleton_true)),
        int(np.count_nonzero(skeleton_true & pred)),
        int(ndimage.label(pred, structure=_EIGHT_CONNECTED)[1]),
        int(ndimage.label(truth, structure=_EIGHT_CONNECTED)[1]),
    )


def topology_scores(counts: Sequence[int]) -> dict[str, float | int]:
    """One image's ``{"cldice", "cldice_tprec", "cldice_tsens", "components_pred", "components_true"}`` from its
    ``TOPOLOGY_COUNTS`` (6 ints), with the edge cases of the module docstring."""
    skeleton_pred, pred_in_true, skeleton_true, true_in_pred, components_pred, components_true = (
        int(value) for value in counts
    )
    tprec = ratio(pred_in_true, skeleton_pred, empty=1.0)
    tsens = ratio(true_in_pred, skeleton_true, empty=1.0)
    return {
        "cldice": ratio(2.0 * tprec * tsens, tprec + tsens, empty=0.0),
        "cldice_tprec": tprec,
        "cldice_tsens": tsens,
        "components_pred": components_pred,
        "components_true": components_true,
    }


class TopologyMetrics:
    """Per-image clDice, its topology precision / sensitivity, and component counts (module docstring).

    ``update`` skeletonises each image's masks on the CPU (about a second for an HRF image of 3504 x 2336);
    ``per_image`` gives one row per image, ``compute`` the means over images.
    """

    def __init__(self, ignore_index: int = 255) -> None:
        self.ignore_index = int(ignore_index)
        self.reset()

    def reset(self) -> None:
        self._counts: list[Tensor] = [torch.zeros(0, len(TOPOLOGY_COUNTS), dtype=torch.int64)]

    @property
    def counts(self) -> Tensor:
        """N x 6 int64: the ``TOPOLOGY_COUNTS`` of every image seen, in order."""
        if len(self._counts) > 1:
            self._counts = [torch.cat(self._counts)]
        return self._counts[0]

    def update(self, pred: Tensor, target: Tensor, fov: Tensor | None = None) -> Tensor:
        """Add a batch.

        Args:
            pred: N x H x W bool predicted foreground (the thresholded / argmax prediction).
            target: N x H x W labels; foreground = label not in {0, ignore_index}; ignore pixels are left out.
            fov: N x H x W bool field of view (None: the whole image).

        Returns:
            N x 6 int64 per-image ``TOPOLOGY_COUNTS``, on the CPU.
        """
        if target.dim() == 2:
            target = target.unsqueeze(0)
        if target.is_floating_point():
            raise TypeError(f"target must hold integer class labels, got dtype {target.dtype}")
        valid = target != self.ignore_index
        if fov is not None:
            valid = valid & as_mask(fov, target.shape, "fov")
        predicted = (as_mask(pred, target.shape, "pred") & valid).cpu().numpy()
        actual = ((target != 0) & valid).cpu().numpy()
        rows = [topology_counts(p, t) for p, t in zip(predicted, actual, strict=True)]
        counts = torch.tensor(rows, dtype=torch.int64).reshape(len(rows), len(TOPOLOGY_COUNTS))
        self._counts.append(counts)
        return counts

    def per_image(self) -> list[dict[str, float | int]]:
        """One :func:`topology_scores` row per image, in the order seen."""
        return [topology_scores(row) for row in self.counts.tolist()]

    def compute(self) -> dict[str, float]:
        """Means over images (NaN when there are none): ``cldice_mean``, ``cldice_std`` (population),
        ``cldice_tprec_mean``, ``cldice_tsens_mean``, ``components_pred_mean``, ``components_true_mean`` and
        ``components_abs_error_mean`` (mean of ``|components_pred - components_true|``)."""
        rows = self.per_image()

        def column(key: str) -> list[float]:
            return [float(row[key]) for row in rows]

        cldice = column("cldice")
        return {
            "cldice_mean": nan_mean(cldice),
            "cldice_std": nan_std(cldice),
            "cldice_tprec_mean": nan_mean(column("cldice_tprec")),
            "cldice_tsens_mean": nan_mean(column("cldice_tsens")),
            "components_pred_mean": nan_mean(column("components_pred")),
            "components_true_mean": nan_mean(column("components_true")),
            "components_abs_error_mean": nan_mean(
                abs(p - t) for p, t in zip(column("components_pred"), column("components_true"), strict=True)
            ),
        }

    def state(self) -> dict[str, Any]:
        """``{"ignore_index", "counts" (N x 6 int64 CPU tensor)}``: everything needed to merge."""
        return {"ignore_index": self.ignore_index, "counts": self.counts.clone()}

    def merge(self, other: TopologyMetrics | dict[str, Any]) -> None:
        """Append another accumulator's images (or its ``state()``) after this one's."""
        state = other.state() if isinstance(other, TopologyMetrics) else other
        if state["ignore_index"] != self.ignore_index:
            raise ValueError(f"cannot merge topology metrics ignoring {state['ignore_index']} into {self.ignore_index}")
        self._counts.append(state["counts"].to(torch.int64))
