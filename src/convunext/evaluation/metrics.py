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
* ``cldice_*`` / ``components_*`` — topology-aware vessel metrics, only when the accumulator is built with
  ``topology=True``: per image, clDice (skeleton-based precision / sensitivity of the centrelines) and the number
  of 8-connected components of prediction and truth, foreground vs background inside the FOV (see
  :mod:`~convunext.evaluation.topology`); then means over images.

Every accumulator keeps its state as CPU tensors of integer counts (plus image names and, for the exact AUC,
the float32 FOV scores), so results from several processes merge exactly: ``merge`` / ``state`` / ``from_state``
and ``SegmentationMetrics.gather_across_processes`` give the same numbers as one process over all the images
(means over images use ``math.fsum``, so the order of images does not matter either).

One metric family per module, all importable from here: :mod:`~convunext.evaluation.confusion` (confusion
matrices, IoU, mIoU, pixel accuracy), :mod:`~convunext.evaluation.dice` (the paper's Dice),
:mod:`~convunext.evaluation.auc` (exact and binned AUC-ROC), :mod:`~convunext.evaluation.fov` (``FovMetrics``),
:mod:`~convunext.evaluation.topology` (``TopologyMetrics``: clDice, component counts); this module composes them
into ``SegmentationMetrics``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from ..inference.threshold import predicted_labels
from .auc import auc_roc
from .confusion import ConfusionMatrix, confusion_matrix, per_image_confusion
from .dice import foreground_dice, foreground_scores
from .fov import VESSEL_RATES, FovMetrics, vessel_rates
from .topology import TopologyMetrics
from .utils import as_labels, as_target, nan_mean, nan_std, ratio

__all__ = [
    "ConfusionMatrix",
    "FovMetrics",
    "SegmentationMetrics",
    "TopologyMetrics",
    "auc_roc",
    "confusion_matrix",
    "foreground_dice",
    "per_image_confusion",
]


class SegmentationMetrics:
    """The evaluation accumulator: paper Dice, paper mIoU, pixel accuracy, FOV vessel metrics and, with
    ``topology=True``, clDice and component counts.

    Usage::

        metrics = SegmentationMetrics(num_classes=2)
        for image, target, fov, names in loader:
            metrics.update(model_output, target, fov, names)   # output: N x K x H x W logits or probabilities
        results = metrics.compute()    # dict of floats, see ``compute``
        rows = metrics.per_image()     # list of dicts, one per image

    State (all CPU tensors): one K x K confusion matrix per image (so per-image Dice and the dataset-wide
    matrix both follow exactly), per-image FOV counts, the image names, a ``FovMetrics`` for the pooled
    vessel metrics and AUC, and with ``topology=True`` a ``TopologyMetrics`` (per-image skeleton and component
    counts; each image's masks are skeletonised on the CPU in ``update``). ``state()`` / ``merge()`` /
    ``from_state()`` combine accumulators from several workers exactly; ``gather_across_processes()`` does it over
    ``torch.distributed``.

    With ``threshold`` (two classes only) a pixel is predicted foreground where its foreground probability is above
    it (the operating threshold of :mod:`~convunext.evaluation.threshold`) instead of by the argmax, which is the
    threshold 0.5; label-map outputs are taken as they are.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        auc: Literal["binned", "exact"] = "exact",
        topology: bool = False,
        threshold: float | None = None,
    ) -> None:
        if num_classes < 2:
            raise ValueError("num_classes must be >= 2 (class 0 is background)")
        if threshold is not None and (num_classes != 2 or not 0.0 < threshold < 1.0):
            raise ValueError("threshold applies to two classes and must lie strictly between 0 and 1")
        self.threshold = threshold
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.auc_mode: Literal["binned", "exact"] = auc
        self.with_topology = bool(topology)
        self.reset()

    def reset(self) -> None:
        """Forget every image seen so far (confusion matrices, FOV counts, scores, per-image rows)."""
        k = self.num_classes
        self._confusions: list[Tensor] = [torch.zeros(0, k, k, dtype=torch.int64)]
        self._fov_counts: list[Tensor] = [torch.zeros(0, 4, dtype=torch.int64)]
        self._has_fov: list[Tensor] = [torch.zeros(0, dtype=torch.bool)]
        self.names: list[str] = []
        self.notes: dict[str, dict[str, Any]] = {}
        self.fov = FovMetrics(auc=self.auc_mode, ignore_index=self.ignore_index)
        self.topology = TopologyMetrics(self.ignore_index) if self.with_topology else None

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
            fov: N x H x W bool field-of-view masks, or None (then these images have no ``fov_*`` values, and
                their topology metrics, if on, use the whole image).
            names: N image names (default ``image_<running index>``; give real names when merging workers).
            logits: whether ``output`` holds logits (softmax applied) or probabilities; None = detect
                (probabilities iff all values lie in [0, 1] and sum to 1 over classes within 1e-3).
        """
        if output.dim() == 4:
            if output.shape[1] != self.num_classes:
                raise ValueError(f"output has {output.shape[1]} classes, expected num_classes={self.num_classes}")
            probabilities: Tensor | None = self._probabilities(output, logits)
            labels = predicted_labels(probabilities, self.threshold)
        else:
            probabilities = None
            labels = as_labels(output)
        target = as_target(target, labels.shape)
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
        if self.topology is not None:
            self.topology.update(labels != 0, target, fov)
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
        """CPU tensors + names: ``{"num_classes", "ignore_index", "threshold", "confusions" (N x K x K), "fov_counts"
        (N x 4: TP, FP, FN, TN), "has_fov" (N), "names", "fov" (FovMetrics.state()), "topology"
        (TopologyMetrics.state(), or None when off)}``."""
        self._compact()
        return {
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "threshold": self.threshold,
            "notes": {name: dict(values) for name, values in self.notes.items()},
            "confusions": self._confusions[0].clone(),
            "fov_counts": self._fov_counts[0].clone(),
            "has_fov": self._has_fov[0].clone(),
            "names": list(self.names),
            "fov": self.fov.state(),
            "topology": self.topology.state() if self.topology is not None else None,
        }

    def merge(self, other: SegmentationMetrics | dict[str, Any]) -> None:
        """Append another accumulator's images (or a ``state()``): afterwards this holds both."""
        state = other.state() if isinstance(other, SegmentationMetrics) else other
        if state["num_classes"] != self.num_classes or state["ignore_index"] != self.ignore_index:
            raise ValueError(
                f"cannot merge metrics for {state['num_classes']} classes / ignore {state['ignore_index']} into "
                f"{self.num_classes} classes / ignore {self.ignore_index}"
            )
        if state.get("threshold") != self.threshold:
            raise ValueError(f"cannot merge metrics at threshold {state.get('threshold')} into {self.threshold}")
        if (state["topology"] is None) != (self.topology is None):
            raise ValueError("cannot merge metrics with topology metrics on into ones with them off, or back")
        self._confusions.append(state["confusions"].to(torch.int64))
        self._fov_counts.append(state["fov_counts"].to(torch.int64))
        self._has_fov.append(state["has_fov"].to(torch.bool))
        self.names.extend(state["names"])
        for name, values in state.get("notes", {}).items():
            self.note(name, **values)
        self.fov.merge(state["fov"])
        if self.topology is not None:
            self.topology.merge(state["topology"])

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> SegmentationMetrics:
        """Rebuild an accumulator from ``state()`` (e.g. after pickling it to another process)."""
        metrics = cls(
            state["num_classes"],
            state["ignore_index"],
            auc=state["fov"]["settings"][0],
            topology=state["topology"] is not None,
            threshold=state.get("threshold"),
        )
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
        return foreground_scores(self.image_confusions)

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
            the default exact AUC, see ``FovMetrics``), ``fov_pixels``;
            and with topology on: ``cldice_mean``, ``cldice_std``, ``cldice_tprec_mean``, ``cldice_tsens_mean``,
            ``components_pred_mean``, ``components_true_mean``, ``components_abs_error_mean`` (means over images,
            see ``TopologyMetrics.compute``).
        """
        dice, iou = self._per_image_scores()
        n = dice.shape[0]
        image_dice = dice.mean(dim=1).tolist()
        image_iou = iou.mean(dim=1).tolist()
        matrix = self.confusion
        cm = matrix.matrix.double()
        tp = torch.diagonal(cm)[1:]
        total = cm.sum(dim=0)[1:] + cm.sum(dim=1)[1:]
        global_dice = [ratio(2 * t, s) for t, s in zip(tp.tolist(), total.tolist(), strict=True)]
        iou_per_class = matrix.iou_per_class().tolist()
        results: dict[str, Any] = {
            "num_images": n,
            "pixels": int(matrix.matrix.sum()),
            "dice_fg_mean": nan_mean(image_dice),
            "dice_fg_std": nan_std(image_dice),
            "dice_fg_per_class": [nan_mean(dice[:, c].tolist()) for c in range(dice.shape[1])],
            "iou_fg_mean": nan_mean(image_iou),
            "miou_cm": matrix.mean_iou(),
            "iou_per_class": iou_per_class,
            "iou_fg_cm": nan_mean(iou_per_class[1:]),
            "dice_fg_cm": nan_mean(global_dice),
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
        if self.topology is not None:
            results.update(self.topology.compute())
        return results

    def note(self, name: str, **values: Any) -> None:
        """Record how image ``name`` was run (e.g. its scale matching, :meth:`ScaleMatch.record
        <convunext.inference.scale.ScaleMatch.record>`): the values become columns of its :meth:`per_image` row."""
        self.notes.setdefault(str(name), {}).update(values)

    def per_image(self) -> list[dict[str, Any]]:
        """One row per image, in the order seen: ``name``, ``dice_fg``, ``iou_fg``, ``pixel_accuracy``,
        ``pixels``; ``dice_class_<c>`` for each foreground class when K > 2; and when any image had a FOV:
        ``fov_sensitivity``, ``fov_specificity``, ``fov_accuracy`` (NaN for images without one); with topology on:
        ``cldice``, ``cldice_tprec``, ``cldice_tsens``, ``components_pred``, ``components_true``; then the image's
        :meth:`note` values (columns every row has, None where an image has no value)."""
        dice, iou = self._per_image_scores()
        confusions = self.image_confusions
        fov_counts = self._fov_counts[0]
        has_fov = self._has_fov[0]
        any_fov = bool(has_fov.any())
        topology = self.topology.per_image() if self.topology is not None else None
        rows: list[dict[str, Any]] = []
        for i, name in enumerate(self.names):
            cm = confusions[i]
            pixels = int(cm.sum())
            row: dict[str, Any] = {
                "name": name,
                "dice_fg": float(dice[i].mean()),
                "iou_fg": float(iou[i].mean()),
                "pixel_accuracy": ratio(int(torch.diagonal(cm).sum()), pixels),
                "pixels": pixels,
            }
            if self.num_classes > 2:
                for c in range(1, self.num_classes):
                    row[f"dice_class_{c}"] = float(dice[i, c - 1])
            if any_fov:
                rates = vessel_rates(fov_counts[i]) if bool(has_fov[i]) else dict.fromkeys(VESSEL_RATES, math.nan)
                row.update({f"fov_{key}": value for key, value in rates.items()})
            if topology is not None:
                row.update(topology[i])
            rows.append(row)
        note_columns = list(dict.fromkeys(key for values in self.notes.values() for key in values))
        for row in rows:
            values = self.notes.get(row["name"], {})
            row.update({key: values.get(key) for key in note_columns})
        return rows
