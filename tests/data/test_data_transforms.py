"""Paired augmentation keeps image and mask aligned, handles FOV and padding, and is reproducible."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convunext.data import (
    EvalTransform,
    TrainTransform,
    TransformedDataset,
    denormalize,
    open_dataset,
    pad_collate,
)
from convunext.data.synthetic import gaussian_blur
from convunext.data.transforms import nearest_resize

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def _blob_sample(height: int = 37, width: int = 53, seed: int = 0, name: str = "blobs") -> dict:
    """An image of smooth blobs and the mask *derived from it* (channel 0 > 0.5), with a FOV disc."""
    rng = np.random.default_rng(seed)
    noise = gaussian_blur(rng.random((height, width, 1)).astype(np.float32), 2.5)[..., 0]
    channel = (noise - noise.min()) / (noise.max() - noise.min())
    image = torch.from_numpy(np.stack([channel, 1 - channel, channel * 0.5]).astype(np.float32))
    mask = (image[0] > 0.5).long()
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    fov = (yy - height / 2) ** 2 + (xx - width / 2) ** 2 < (0.45 * width) ** 2
    return {"image": image, "mask": mask, "fov": fov, "name": name}


def _check_aligned(out: dict, exact: bool) -> None:
    image = denormalize(out["image"], MEAN, STD)
    mask, fov = out["mask"], out["fov"]
    valid = mask != 255
    assert bool((mask[~fov] == 255).all()), "pixels outside the FOV must be ignored"
    derived = (image[0] > 0.5).long()
    if not exact:  # bilinear resizing blurs the boundary: judge pixels clearly on one side of it
        valid &= (image[0] - 0.5).abs() > 0.1
    agreement = float((derived[valid] == mask[valid]).float().mean())
    assert agreement == 1.0 if exact else agreement > 0.995
    # flips must not swap the image's channels against each other either
    assert torch.allclose(image[1][valid], 1 - image[0][valid], atol=1e-5)


@pytest.mark.parametrize("seed", range(6))
def test_train_transform_keeps_image_and_mask_aligned(seed):
    sample = _blob_sample(seed=seed)
    exact = TrainTransform(32, MEAN, STD, scale_range=(0.6, 1.7), seed=seed, image_interpolation="nearest")
    smooth = TrainTransform(32, MEAN, STD, scale_range=(0.6, 1.7), seed=seed)
    for _ in range(4):
        out = exact(sample)
        assert out["image"].shape == (3, 32, 32) and out["mask"].shape == out["fov"].shape == (32, 32)
        assert out["mask"].dtype == torch.int64 and out["fov"].dtype == torch.bool and out["name"] == "blobs"
        _check_aligned(out, exact=True)
        _check_aligned(smooth(sample), exact=False)


def test_flips_and_crop_positions_vary():
    sample = _blob_sample()
    transform = TrainTransform(16, MEAN, STD, scale_range=(1.0, 1.0), seed=1)
    outputs = {transform(sample)["image"].sum().item() for _ in range(12)}
    assert len(outputs) > 6


def test_outside_fov_and_padding_are_ignored():
    sample = _blob_sample(height=20, width=24)
    out = TrainTransform(40, MEAN, STD, scale_range=(1.0, 1.0), hflip=False, vflip=False, seed=0)(sample)
    assert out["image"].shape == (3, 40, 40)
    mask, fov, image = out["mask"], out["fov"], out["image"]
    # the 20x24 image lies somewhere in the 40x40 canvas: everything else is padding
    assert int(fov.sum()) == int(sample["fov"].sum())
    assert int((mask != 255).sum()) == int(sample["fov"].sum())
    padded = ~torch.zeros(40, 40, dtype=torch.bool).index_fill(0, torch.arange(20), True)
    assert bool((mask[padded] == 255).all()) and not bool(fov[padded].any())
    assert torch.allclose(denormalize(image, MEAN, STD)[:, padded], torch.zeros(3, int(padded.sum())), atol=1e-6)
    # without a crop and without resizing, only the FOV is touched
    whole = TrainTransform(None, MEAN, STD, scale_range=(1.0, 1.0), hflip=False, vflip=False)(sample)
    assert torch.equal(whole["mask"][sample["fov"]], sample["mask"][sample["fov"]])
    assert bool((whole["mask"][~sample["fov"]] == 255).all())


def test_random_resize_of_the_short_side():
    sample = _blob_sample(height=40, width=60)
    sizes = set()
    for seed in range(10):
        out = TrainTransform(None, MEAN, STD, scale_range=(0.5, 2.0), seed=seed)(sample)
        height, width = out["image"].shape[-2:]
        assert 20 <= height <= 80 and abs(width / height - 1.5) < 0.05
        sizes.add(height)
    assert len(sizes) > 5
    out = TrainTransform(None, MEAN, STD, scale_range=(1.0, 1.0), base_size=20)(sample)
    assert out["image"].shape[-2:] == (20, 30)


def test_eval_transform_normalises_only():
    sample = _blob_sample()
    out = EvalTransform(MEAN, STD)(sample)
    assert torch.allclose(denormalize(out["image"], MEAN, STD), sample["image"], atol=1e-6)
    assert torch.equal(out["mask"], sample["mask"]) and torch.equal(out["fov"], sample["fov"])
    masked = EvalTransform(MEAN, STD, mask_outside_fov=True)(sample)
    assert bool((masked["mask"][~sample["fov"]] == 255).all())


def test_transformed_dataset_is_reproducible_in_any_order():
    base = open_dataset("synthetic", None, "train", num_images=10, size=48, seed=3)
    info = base.info
    augmented = TransformedDataset(base, TrainTransform(32, info.mean, info.std), seed=7)
    assert augmented.info is info and len(augmented) == len(base)
    forward = [augmented[i]["image"] for i in range(len(augmented))]
    backward = [augmented[i]["image"] for i in reversed(range(len(augmented)))][::-1]
    assert all(torch.equal(a, b) for a, b in zip(forward, backward))
    augmented.set_epoch(1)
    assert not torch.equal(augmented[0]["image"], forward[0])
    augmented.set_epoch(0)
    assert torch.equal(augmented[0]["image"], forward[0])
    other_seed = TransformedDataset(base, TrainTransform(32, info.mean, info.std), seed=8)
    assert not torch.equal(other_seed[0]["image"], forward[0])


def test_pad_collate_batches_different_sizes():
    samples = [_blob_sample(10, 14, name="a"), _blob_sample(12, 9, name="b")]
    batch = pad_collate(samples)
    assert batch["image"].shape == (2, 3, 12, 14) and batch["mask"].shape == batch["fov"].shape == (2, 12, 14)
    assert batch["name"] == ["a", "b"] and batch["size"] == [(10, 14), (12, 9)]
    assert torch.equal(batch["image"][0, :, :10, :14], samples[0]["image"])
    assert bool((batch["image"][0, :, 10:] == 0).all()) and bool((batch["mask"][0, 10:] == 255).all())
    assert bool((batch["mask"][1, :, 9:] == 255).all()) and not bool(batch["fov"][1, :, 9:].any())
    assert torch.equal(batch["mask"][1, :12, :9], samples[1]["mask"])
    assert pad_collate(samples, size_divisor=16)["image"].shape[-2:] == (16, 16)
    loader = torch.utils.data.DataLoader(
        open_dataset("synthetic", None, "val", num_images=10, size=40), batch_size=2, collate_fn=pad_collate
    )
    first = next(iter(loader))
    assert first["image"].shape == (2, 3, 40, 40) and len(first["name"]) == 2


def test_nearest_resize_keeps_class_ids():
    mask = torch.tensor([[0, 1, 2], [255, 1, 0]])
    resized = nearest_resize(mask, 4, 6)
    assert resized.shape == (4, 6) and set(resized.unique().tolist()) == {0, 1, 2, 255}
    assert torch.equal(nearest_resize(mask, 2, 3), mask)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_train_transform_on_gpu_tensors_matches_cpu():
    sample = _blob_sample()
    on_gpu = {k: v.cuda() if torch.is_tensor(v) else v for k, v in sample.items()}
    transform = TrainTransform(32, MEAN, STD, image_interpolation="nearest")
    cpu = transform(sample, generator=torch.Generator().manual_seed(5))
    gpu = transform(on_gpu, generator=torch.Generator().manual_seed(5))
    assert gpu["image"].is_cuda
    assert torch.allclose(cpu["image"], gpu["image"].cpu(), atol=1e-5) and torch.equal(cpu["mask"], gpu["mask"].cpu())
