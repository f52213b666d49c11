from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from convunext.errors import ConvUNeXtError
from convunext.inference import Inferer
from convunext.inference.sliding_window import gaussian_importance_map, tile_starts


def pointwise_model(in_channels: int = 3, classes: int = 2) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(in_channels, 8, 1), nn.GELU(), nn.Conv2d(8, classes, 1))


class ShapeRecorder(nn.Module):
    """Wraps a model, remembering the input shape of every forward pass."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape))
        return self.model(x)


def whole(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(model(image), dim=1)


@pytest.mark.parametrize(
    ("shape", "tile", "overlap"),
    [
        ((2, 3, 48, 32), 16, 0.25),  # tile divides the image
        ((1, 3, 37, 53), 16, 0.5),  # odd sizes, tile does not divide
        ((1, 3, 37, 53), (12, 20), 0.0),  # rectangular tiles, no overlap
        ((1, 3, 10, 7), 16, 0.25),  # image smaller than the tile
        ((1, 3, 10, 40), 16, 0.25),  # smaller in one dimension only
    ],
)
@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_equals_whole_image_for_pointwise_model(shape, tile, overlap, blend) -> None:
    model = pointwise_model()
    image = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    result = Inferer(tile_size=tile, overlap=overlap, blend=blend, batch_size=3)(model, image)
    assert result.shape == (shape[0], 2, shape[2], shape[3])
    assert torch.allclose(result, whole(model, image), atol=1e-5)
    assert not result.is_inference()
    result += 0  # callers may modify the result in place


def test_tiles_cover_every_pixel() -> None:
    for length in (1, 5, 16, 17, 31, 100, 2336, 3504):
        for tile in (1, 4, 16, 480, 960):
            if tile > length:
                continue
            for overlap in (0.0, 0.25, 0.5, 0.9):
                starts = tile_starts(length, tile, overlap)
                covered = np.zeros(length, dtype=bool)
                for s in starts:
                    covered[s : s + tile] = True
                assert covered.all() and starts[0] == 0 and starts[-1] == length - tile
                assert starts == sorted(set(starts))
                if len(starts) > 1:
                    shared = tile - max(b - a for a, b in zip(starts, starts[1:], strict=False))
                    assert shared >= min(overlap * tile, tile - 1) - 1
    with pytest.raises(ValueError):
        tile_starts(10, 4, 1.0)


def test_gaussian_weights_positive_and_centred() -> None:
    for size in (16, (15, 32), 480):
        weights = gaussian_importance_map(size)
        h, w = weights.shape
        assert (weights > 0).all()
        assert weights.max().item() == pytest.approx(1.0)
        assert torch.allclose(weights, weights.flip(0)) and torch.allclose(weights, weights.flip(1))
        assert weights[h // 2, w // 2] > weights[0, 0]


def symmetric_conv_model() -> nn.Module:
    """A 3x3 conv whose kernels are symmetric under both flips: flip-equivariant with zero padding."""
    torch.manual_seed(2)
    conv = nn.Conv2d(3, 2, 3, padding=1)
    with torch.no_grad():
        w = conv.weight
        conv.weight.copy_((w + w.flip(-1) + w.flip(-2) + w.flip(-1, -2)) / 4)
    return conv


def test_tta_on_flip_equivariant_model_equals_no_tta() -> None:
    image = torch.randn(1, 3, 30, 26)
    for model in (pointwise_model(), symmetric_conv_model()):
        plain = Inferer()(model, image)
        tta = Inferer(tta=True)(model, image)
        assert torch.allclose(plain, tta, atol=1e-6)
        tiled = Inferer(tile_size=16, tta=True)(model, image)
        assert torch.allclose(tiled, Inferer(tile_size=16)(model, image), atol=1e-6)


def test_tta_averages_unflipped_probabilities() -> None:
    torch.manual_seed(3)
    model = nn.Conv2d(3, 2, 3, padding=1)  # not flip-equivariant
    image = torch.randn(1, 3, 12, 12)
    expected = (whole(model, image) + whole(model, image.flip(-1)).flip(-1) + whole(model, image.flip(-2)).flip(-2)) / 3
    result = Inferer(tta=True)(model, image)
    assert torch.allclose(result, expected, atol=1e-6)
    assert not torch.allclose(result, whole(model, image), atol=1e-3)


def test_conv_net_close_to_whole_image() -> None:
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1))
    image = torch.randn(1, 3, 40, 40)
    result = Inferer(tile_size=24, overlap=0.5)(model, image)
    reference = whole(model, image)
    # only pixels within 2 px of an inner tile border differ; the centre-weighted blend keeps them close
    assert (result - reference).abs().mean() < 0.01
    assert torch.allclose(result.sum(1), torch.ones(1, 40, 40), atol=1e-5)


class DeepSupervisionNet(nn.Module):
    """Returns a list in training mode and a tensor in eval mode, like UNet++."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        out = self.head(x)
        return [out * 0.5, out] if self.training else out


def test_eval_mode_used_and_restored() -> None:
    model = DeepSupervisionNet()
    model.train()
    image = torch.randn(1, 3, 20, 20)
    result = Inferer(tile_size=8)(model, image)
    assert model.training
    assert torch.allclose(result, torch.softmax(model.head(image), 1).detach(), atol=1e-5)


def test_whole_images_or_tiles() -> None:
    recorder = ShapeRecorder(pointwise_model())
    image = torch.randn(3, 3, 20, 30)
    out = Inferer(batch_size=2)(recorder, image)
    assert recorder.shapes == [(2, 3, 20, 30), (1, 3, 20, 30)] and out.shape == (3, 2, 20, 30)
    for whole_images in (0, 32):  # 0: whole images; 32: they fit in one tile
        recorder.shapes.clear()
        Inferer(tile_size=whole_images)(recorder, image)
        assert recorder.shapes == [(3, 3, 20, 30)]
    recorder.shapes.clear()
    tiled = Inferer(tile_size=16, batch_size=5)(recorder, image)
    assert all(shape[2:] == (16, 16) for shape in recorder.shapes) and len(recorder.shapes) > 1
    assert torch.allclose(tiled, out, atol=1e-5)
    # C x H x W tensors and numpy arrays
    single = Inferer(tile_size=16)(recorder, image[0].numpy())
    assert single.shape == (2, 20, 30) and torch.allclose(single, out[0], atol=1e-5)


def test_large_image_runs() -> None:
    model = pointwise_model()
    image = torch.randn(1, 3, 700, 900)
    result = Inferer(tile_size=256, overlap=0.25, batch_size=4)(model, image)
    assert result.shape == (1, 2, 700, 900) and result.dtype == torch.float32
    assert torch.allclose(result.sum(1), torch.ones(1, 700, 900), atol=1e-5)
    assert torch.allclose(result[..., 300:340, 400:460], whole(model, image[..., 300:340, 400:460]), atol=1e-5)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"tile_size": -1}, "tile_size=-1 is not valid; expected a tile side in pixels, (height, width), 0 for whole"),
        ({"tile_size": (16,)}, "tile_size=(16,) is not valid"),
        ({"tile_size": (0, 16)}, "tile_size=(0, 16) is not valid"),
        ({"tile_size": 2.5}, "tile_size=2.5 is not valid"),
        ({"overlap": 1.0}, "overlap=1.0 is not valid; expected a fraction, at least 0 and below 1"),
        ({"overlap": float("nan")}, "overlap=nan is not valid"),
        ({"overlap": -0.1}, "overlap=-0.1 is not valid"),
        ({"batch_size": 0}, "batch_size=0 is not valid; expected an integer of at least 1"),
        ({"blend": "median"}, "blend='median' is not valid; expected one of gaussian, constant"),
        ({"sigma_scale": 0}, "sigma_scale=0 is not valid"),
        ({"backend": "turbo"}, "unknown inference backend 'turbo'; choose one of eager, fast, compile, onnx"),
        ({"device": "bogus"}, "--device 'bogus' is not a valid device"),
    ],
)
def test_settings_are_refused_when_the_inferer_is_made(setting: dict, message: str) -> None:
    """Checked once, up front: the overlap, say, only plays a part once an image needs several tiles."""
    with pytest.raises(ConvUNeXtError) as refused:
        Inferer(**setting)
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)


def test_bad_inputs() -> None:
    inferer = Inferer(tile_size=4)
    with pytest.raises(ValueError, match="images must be N x C x H x W"):
        inferer(pointwise_model(), torch.randn(8, 8))
    with pytest.raises(ValueError, match="expected N x K x H x W"):
        inferer(nn.Conv2d(3, 2, 3), torch.randn(1, 3, 8, 8))


def test_a_checkpoint_brings_its_own_tile_size_unless_one_is_given() -> None:
    validated_tiled, validated_whole = {"data": {"eval_tile_size": 960}}, {"data": {"eval_tile_size": None}}
    assert Inferer().for_checkpoint(validated_tiled).tile_size == 960
    assert Inferer().for_checkpoint(validated_whole).tile_size == 0  # whole images
    assert Inferer().for_checkpoint({}).tile_size == 0
    assert Inferer(tile_size=0).for_checkpoint(validated_tiled).tile_size == 0  # asked for whole images
    chosen = Inferer(tile_size=64, tta=True)
    assert chosen.for_checkpoint(validated_tiled) is chosen


def test_the_record_holds_what_decides_the_probabilities() -> None:
    assert Inferer().record() == {"tile_size": None, "overlap": None, "tta": False}
    assert Inferer(tile_size=0, overlap=0.5).record() == {"tile_size": None, "overlap": None, "tta": False}
    assert Inferer(tile_size=480, tta=True).record() == {"tile_size": 480, "overlap": 0.25, "tta": True}
    assert Inferer(tile_size=(32, 48), overlap=0.5).record()["tile_size"] == [32, 48]


def test_prepare_moves_the_model_and_runs_it_by_the_backend() -> None:
    model = pointwise_model().train()
    assert Inferer(backend="eager", device="cpu").prepare(model) is model and not model.training
    fast = Inferer(device="cpu").prepare(model)  # the default back-end: a new, fused copy
    assert fast is not model and fast.description.endswith("channels-last")  # type: ignore[union-attr]
    image = torch.randn(1, 3, 20, 20)
    assert torch.allclose(Inferer()(fast, image), Inferer()(model, image), atol=1e-5)
