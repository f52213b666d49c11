"""The operating threshold of a binary model: the foreground-probability threshold that maximises the paper's Dice
(mean over images of the per-image foreground Dice) on the validation split.

A softmax model's argmax is the threshold 0.5 on the foreground probability, which is rarely the best one for thin
structures: a vessel model that is unsure along the vessels' edges draws them too thin at 0.5. The trainer searches
the threshold at every validation (:class:`ThresholdSearch`, fed by the same probabilities the validation scores),
stores it with the checkpoint (``meta["threshold"]``), and ``predict`` / ``evaluate`` use it unless told otherwise
(``--threshold 0.5`` gives the argmax back).

The search is exact on a grid: each image's foreground probabilities (inside its field of view, ignore pixels
left out) are counted into :data:`THRESHOLD_BINS` bins per class of the truth, ``(k/B, (k+1)/B]``, so the Dice of
every image at every threshold ``t = k/B`` ("foreground where p > t") follows from cumulative sums, with no second
pass over the images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["THRESHOLD_BINS", "ThresholdChoice", "ThresholdSearch"]

THRESHOLD_BINS = 100
"""Thresholds searched: 0.01, 0.02, ..., 0.99."""


@dataclass(frozen=True)
class ThresholdChoice:
    """The result of a search.

    Attributes:
        threshold: the Dice-optimal threshold (ties: the one closest to 0.5).
        dice: the mean per-image foreground Dice at it.
        dice_at_half: the same at 0.5 (the argmax), for comparison.
        images: the images searched over.
    """

    threshold: float
    dice: float
    dice_at_half: float
    images: int

    def record(self, split: str = "val") -> dict[str, Any]:
        """A checkpoint's ``meta["threshold"]``: ``{"value", "split", "dice", "dice_at_0.5", "images"}``."""
        return {
            "value": self.threshold,
            "split": split,
            "dice": round(self.dice, 6),
            "dice_at_0.5": round(self.dice_at_half, 6),
            "images": self.images,
        }


class ThresholdSearch:
    """Accumulates per-image histograms of foreground probabilities and finds the Dice-optimal threshold.

    Args:
        bins: the thresholds searched are ``k / bins`` for ``k = 1 .. bins - 1``.
        ignore_index: the target value that is skipped.
    """

    def __init__(self, bins: int = THRESHOLD_BINS, ignore_index: int = 255) -> None:
        if bins < 2:
            raise ValueError("bins must be at least 2")
        self.bins, self.ignore_index = int(bins), int(ignore_index)
        self.histograms: list[Tensor] = []  # one 2 x bins int64 per image: [negatives, positives]

    def update(self, foreground: Tensor, target: Tensor, fov: Tensor | None = None) -> None:
        """Add images.

        Args:
            foreground: ``N x H x W`` (or ``H x W``) foreground probabilities in [0, 1].
            target: ``N x H x W`` labels, 0 background, ``ignore_index`` skipped, anything else foreground.
            fov: ``N x H x W`` bool field of view, or None (the whole image).
        """
        if foreground.dim() == 2:
            foreground, target = foreground[None], target[None]
            fov = None if fov is None else fov[None]
        if foreground.shape != target.shape:
            raise ValueError(f"probabilities {tuple(foreground.shape)} and target {tuple(target.shape)} differ")
        for index in range(foreground.shape[0]):
            valid = target[index] != self.ignore_index
            if fov is not None:
                valid &= fov[index].to(torch.bool)
            scores = foreground[index][valid].float().cpu()
            positive = (target[index][valid] != 0).cpu()
            # bin k holds (k/B, (k+1)/B]: "p > k/B" is then "bin >= k"
            bin_index = (torch.ceil(scores * self.bins).long() - 1).clamp_(0, self.bins - 1)
            histogram = torch.bincount(bin_index + self.bins * positive.long(), minlength=2 * self.bins)
            self.histograms.append(histogram.view(2, self.bins))

    def __len__(self) -> int:
        return len(self.histograms)

    def dice_curve(self) -> Tensor:
        """``bins`` values: the mean per-image Dice at threshold ``k / bins`` for ``k = 0 .. bins - 1`` (an image
        with no foreground in truth or prediction scores 1, as in the paper's Dice)."""
        if not self.histograms:
            raise ValueError("no images seen")
        stacked = torch.stack(self.histograms).double()  # N x 2 x B
        above = stacked.flip(-1).cumsum(-1).flip(-1)  # pixels in bins >= k, i.e. p > k/B
        false_positives, true_positives = above[:, 0], above[:, 1]
        false_negatives = stacked[:, 1].sum(-1, keepdim=True) - true_positives
        denominator = 2 * true_positives + false_positives + false_negatives
        dice = torch.where(denominator > 0, 2 * true_positives / denominator.clamp_min(1), torch.ones_like(denominator))
        return dice.mean(0)

    def best(self) -> ThresholdChoice:
        """The Dice-optimal threshold among ``1/bins .. (bins-1)/bins`` (ties: the one closest to 0.5)."""
        curve = self.dice_curve()
        candidates = torch.arange(1, self.bins)
        values = curve[candidates]
        best_value = float(values.max())
        tied = candidates[values >= best_value - 1e-12]
        best = int(tied[torch.argmin((tied.double() - self.bins / 2).abs())])
        return ThresholdChoice(best / self.bins, float(curve[best]), float(curve[self.bins // 2]), len(self))

    def state(self) -> Tensor:
        """``N x 2 x bins`` int64, to merge across processes."""
        return torch.stack(self.histograms) if self.histograms else torch.zeros(0, 2, self.bins, dtype=torch.int64)

    def merge(self, state: Tensor) -> None:
        """Add the images of another search's :meth:`state`."""
        if state.shape[1:] != (2, self.bins):
            raise ValueError(f"cannot merge a search of {state.shape[-1]} bins into one of {self.bins}")
        self.histograms.extend(state.unbind(0))

    def gather_across_processes(self) -> None:
        """With ``torch.distributed`` initialised, replace this state by the union over all ranks."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        states: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(states, self.state())
        self.histograms = []
        for state in states:
            self.merge(state)
