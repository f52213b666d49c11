from __future__ import annotations

import math
import pickle

import pytest
import torch

from convunext.evaluation.metrics import (
    ConfusionMatrix,
    FovMetrics,
    SegmentationMetrics,
    auc_roc,
    confusion_matrix,
    foreground_dice,
)

# 3 x 3 case computed by hand. Valid pixels (t, p): (0,0) (0,1) (1,1) / (0,0) (1,0) (1,1) / ignore (1,1) (0,0)
TARGET = torch.tensor([[[0, 0, 1], [0, 1, 1], [255, 1, 0]]])
PRED = torch.tensor([[[0, 1, 1], [0, 0, 1], [1, 1, 0]]])


def same(a: object, b: object) -> bool:
    """Exact equality of nested dicts/lists of numbers, NaN equal to NaN."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[key], b[key]) for key in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def one_hot_scores(labels: torch.Tensor, k: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, k).permute(0, 3, 1, 2).float()


def test_confusion_matrix_by_hand() -> None:
    cm = confusion_matrix(PRED, TARGET, 2)
    assert cm.tolist() == [[3, 1], [1, 3]]
    acc = ConfusionMatrix(2)
    acc.update(one_hot_scores(PRED, 2), TARGET)  # scores -> argmax
    assert acc.matrix.tolist() == [[3, 1], [1, 3]]
    assert acc.iou_per_class().tolist() == pytest.approx([3 / 5, 3 / 5])
    assert acc.mean_iou() == pytest.approx(0.6)
    assert acc.pixel_accuracy() == pytest.approx(6 / 8)
    assert acc.class_accuracy().tolist() == pytest.approx([0.75, 0.75])


def test_foreground_dice_by_hand() -> None:
    assert foreground_dice(PRED, TARGET, 2).tolist() == pytest.approx([2 * 3 / (4 + 4)])
    # 2 x 2, 3 classes: target [[1, 2], [0, 2]], pred [[1, 1], [0, 2]]
    target = torch.tensor([[[1, 2], [0, 2]]])
    pred = torch.tensor([[[1, 1], [0, 2]]])
    # class 1: I=1, |P|=2, |T|=1 -> 2/3 ; class 2: I=1, |P|=1, |T|=2 -> 2/3
    assert foreground_dice(pred, target, 3).tolist() == pytest.approx([2 / 3])
    # class 2 absent from both -> 1.0 for that class
    target = torch.tensor([[[1, 0], [0, 0]]])
    pred = torch.tensor([[[1, 1], [0, 0]]])
    assert foreground_dice(pred, target, 3).tolist() == pytest.approx([(2 / 3 + 1.0) / 2])


def test_empty_foreground_and_perfect_prediction() -> None:
    empty = torch.zeros(1, 4, 4, dtype=torch.long)
    assert foreground_dice(empty, empty, 2).tolist() == [1.0]  # both empty -> 1
    pred = empty.clone()
    pred[0, 0, 0] = 1
    assert foreground_dice(pred, empty, 2).tolist() == [0.0]  # false positive only -> 0
    assert foreground_dice(empty, pred, 2).tolist() == [0.0]  # missed foreground -> 0
    target = torch.tensor([[[0, 1], [1, 255]]])
    pred = torch.tensor([[[0, 1], [1, 1]]])  # differs only on the ignored pixel
    assert foreground_dice(pred, target, 2).tolist() == [1.0]
    acc = ConfusionMatrix(2)
    acc.update(pred, target)
    assert acc.mean_iou() == 1.0 and acc.pixel_accuracy() == 1.0


def test_iou_of_absent_class_is_nan_and_skipped() -> None:
    acc = ConfusionMatrix(3)
    acc.update(torch.tensor([[[0, 1]]]), torch.tensor([[[0, 1]]]))
    iou = acc.iou_per_class()
    assert iou[:2].tolist() == [1.0, 1.0] and math.isnan(iou[2].item())
    assert acc.mean_iou() == 1.0


def test_invalid_labels_raise() -> None:
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(torch.zeros(1, 2, 2, dtype=torch.long), torch.tensor([[[0, 3], [1, 0]]]), 2)
    with pytest.raises(ValueError, match="ignore"):
        # 255 is only skipped when it is the ignore index
        confusion_matrix(torch.zeros(1, 2, 2, dtype=torch.long), torch.tensor([[[0, 255], [1, 0]]]), 2, ignore_index=-1)
    with pytest.raises(TypeError):
        confusion_matrix(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), 2)


def brute_force_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    pos = scores[labels].double()
    neg = scores[~labels].double()
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0).double() + 0.5 * (diff == 0).double()).mean().item()


def test_auc_matches_pairwise_with_ties() -> None:
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 20, (400,), generator=gen).float() / 20  # many ties
    labels = torch.rand(400, generator=gen) < (0.2 + 0.6 * scores)
    assert auc_roc(scores, labels) == pytest.approx(brute_force_auc(scores, labels), abs=1e-12)
    continuous = torch.rand(300, generator=gen)
    labels = torch.rand(300, generator=gen) < continuous
    assert auc_roc(continuous, labels) == pytest.approx(brute_force_auc(continuous, labels), abs=1e-12)
    # hand case: pos {0.8, 0.5}, neg {0.5, 0.1}: pairs 1 + 1 + 0.5 + 1 = 3.5 / 4
    assert auc_roc(torch.tensor([0.8, 0.5, 0.5, 0.1]), torch.tensor([1, 1, 0, 0])) == 0.875
    assert math.isnan(auc_roc(torch.tensor([0.1, 0.2]), torch.tensor([True, True])))


def test_binned_auc_close_to_exact() -> None:
    gen = torch.Generator().manual_seed(1)
    n = 200_000
    labels = torch.rand(n, generator=gen) < 0.12
    # confident, saturated probabilities like a trained vessel model (many near 0 and near 1)
    logits = torch.randn(n, generator=gen) * 4 + torch.where(labels, 6.0, -6.0)
    scores = torch.sigmoid(logits)
    scores[:100] = 0.5  # exact ties on the threshold
    exact = auc_roc(scores, labels)
    binned = FovMetrics(auc="binned")
    exact_acc = FovMetrics(auc="exact")
    target = labels.long().view(1, 400, 500)
    binned.update(scores.view(1, 400, 500), target)
    exact_acc.update(scores.view(1, 400, 500), target)
    assert exact_acc.auc() == pytest.approx(exact, abs=1e-12)
    assert abs(binned.auc() - exact) < 1e-4
    assert binned.num_bins > 100_000


def test_fov_metrics_by_hand() -> None:
    # 2 x 3 image, FOV excludes the last column, one ignored pixel inside
    target = torch.tensor([[[1, 0, 1], [1, 255, 0]]])
    scores = torch.tensor([[[0.9, 0.7, 0.2], [0.3, 0.9, 0.8]]])
    fov = torch.tensor([[[True, True, False], [True, True, False]]])
    acc = FovMetrics()
    per_image = acc.update(scores, target, fov)
    # counted: (t1, .9) TP, (t0, .7) FP, (t1, .3) FN ; no TN
    assert per_image.tolist() == [[1, 1, 1, 0]]
    result = acc.compute()
    assert result["sensitivity"] == 0.5
    assert result["specificity"] == 0.0
    assert result["accuracy"] == pytest.approx(1 / 3)
    assert result["auc"] == pytest.approx(0.5)  # pos {0.9, 0.3} vs neg {0.7}
    assert result["pixels"] == 3


def make_batch(seed: int, n: int = 3, k: int = 2, size: tuple[int, int] = (9, 11)):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, *size, generator=gen)
    target = torch.randint(0, k, (n, *size), generator=gen)
    target[torch.rand(n, *size, generator=gen) < 0.1] = 255
    fov = torch.rand(n, *size, generator=gen) < 0.8
    return logits, target, fov


def test_segmentation_metrics_matches_definitions() -> None:
    logits, target, fov = make_batch(0)
    metrics = SegmentationMetrics(2)
    metrics.update(logits, target, fov, names=["a", "b", "c"])
    result = metrics.compute()
    probs = torch.softmax(logits, 1)
    dice = foreground_dice(probs, target, 2)
    assert result["dice_fg_mean"] == pytest.approx(dice.mean().item(), abs=1e-12)
    cm = ConfusionMatrix(2)
    cm.update(logits, target)
    assert result["miou_cm"] == pytest.approx(cm.mean_iou(), abs=1e-12)
    assert result["iou_per_class"] == pytest.approx(cm.iou_per_class().tolist())
    assert result["pixel_accuracy"] == pytest.approx(cm.pixel_accuracy())
    assert result["num_images"] == 3 and result["pixels"] == int((target != 255).sum())
    # FOV metrics against a direct computation
    valid = fov & (target != 255)
    actual = target[valid] == 1
    predicted = probs.argmax(1)[valid] == 1
    tp = int((actual & predicted).sum())
    tn = int((~actual & ~predicted).sum())
    assert result["fov_sensitivity"] == pytest.approx(tp / int(actual.sum()))
    assert result["fov_specificity"] == pytest.approx(tn / int((~actual).sum()))
    assert result["fov_accuracy"] == pytest.approx((tp + tn) / int(valid.sum()))
    assert result["fov_auc"] == pytest.approx(brute_force_auc(probs[:, 1][valid], actual), abs=1e-4)
    assert result["fov_pixels"] == int(valid.sum())
    # probabilities in, same results
    again = SegmentationMetrics(2)
    again.update(probs, target, fov, names=["a", "b", "c"])
    assert same(again.compute(), result)
    rows = metrics.per_image()
    assert [row["name"] for row in rows] == ["a", "b", "c"]
    assert [row["dice_fg"] for row in rows] == pytest.approx(dice.tolist())
    assert set(rows[0]) >= {"name", "dice_fg", "iou_fg", "pixel_accuracy", "pixels", "fov_sensitivity"}


def test_segmentation_metrics_perfect_and_no_fov_keys() -> None:
    target = torch.tensor([[[0, 1, 1], [0, 0, 255]], [[0, 0, 0], [0, 0, 0]]])
    metrics = SegmentationMetrics(2)
    metrics.update(one_hot_scores(torch.where(target == 255, 0, target), 2), target)
    result = metrics.compute()
    assert result["dice_fg_mean"] == 1.0 and result["miou_cm"] == 1.0 and result["pixel_accuracy"] == 1.0
    assert result["dice_fg_cm"] == 1.0 and result["dice_fg_std"] == 0.0
    assert not any(key.startswith("fov_") for key in result)
    assert [row["name"] for row in metrics.per_image()] == ["image_0", "image_1"]


def test_hard_label_input_gives_no_auc() -> None:
    logits, target, fov = make_batch(3)
    metrics = SegmentationMetrics(2)
    metrics.update(logits.argmax(1), target, fov)
    result = metrics.compute()
    assert math.isnan(result["fov_auc"]) and not math.isnan(result["fov_sensitivity"])


@pytest.mark.parametrize("auc", ["binned", "exact"])
def test_merge_equals_single_accumulator(auc: str) -> None:
    batches = [make_batch(seed, k=3) for seed in range(4)]
    single = SegmentationMetrics(3, auc=auc)  # type: ignore[arg-type]
    workers = [SegmentationMetrics(3, auc=auc) for _ in range(2)]  # type: ignore[arg-type]
    for i, (logits, target, fov) in enumerate(batches):
        names = [f"{i}_{j}" for j in range(3)]
        use_fov = fov if i != 2 else None  # one batch without FOV
        single.update(logits, target, use_fov, names)
        workers[i % 2].update(logits, target, use_fov, names)
    merged = SegmentationMetrics.from_state(pickle.loads(pickle.dumps(workers[1].state())))
    merged.merge(workers[0])
    expected = single.compute()
    assert same(merged.compute(), expected)  # exact, independent of image order
    by_name = sorted(merged.per_image(), key=lambda r: r["name"])
    assert same(by_name, single.per_image())
    assert "dice_class_2" in single.per_image()[0]
    with pytest.raises(ValueError):
        merged.merge(SegmentationMetrics(2))
