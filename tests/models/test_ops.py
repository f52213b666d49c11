"""Every banded kernel of ``convunext.models.layers`` equals its eager reference: forward and gradients, odd sizes,
many bands (tiny band sizes), one and two threads."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from convunext.models.blocks import GatedUpStage
from convunext.models.layers.banding import flat
from convunext.models.layers.gate import GateWeights, banded_gate, fold_gate, gate_reference
from convunext.models.layers.mlp import banded_mlp, mlp_reference
from convunext.models.layers.padding import padded_rows, same_pad
from convunext.models.layers.upsample import BandUpsampler, upsample_to

THREADS = [1, 2]
BANDS = [1 << 20, 1]  # one band, and the smallest bands the kernels allow (64 pixel rows)


@pytest.fixture(params=THREADS, ids=lambda n: f"{n}-threads")
def threads(request: pytest.FixtureRequest):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def assert_close(got: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5) -> None:
    assert got.shape == expected.shape
    scale = max(expected.abs().max().item(), 1e-3)
    assert (got - expected).abs().max().item() <= rtol * scale, (got - expected).abs().max().item()


def leaves(*tensors: torch.Tensor | None) -> list[torch.Tensor]:
    return [t.detach().clone().requires_grad_(True) for t in tensors if t is not None]


def check_gradients(reference, banded, inputs: list[torch.Tensor]) -> None:
    """Forward and every input's gradient of ``banded(*inputs)`` against ``reference(*inputs)``."""
    ref_inputs, got_inputs = leaves(*inputs), leaves(*inputs)
    expected, got = reference(*ref_inputs), banded(*got_inputs)
    assert_close(got, expected)
    grad = torch.randn_like(expected)
    expected.backward(grad)
    got.backward(grad)
    for a, b in zip(ref_inputs, got_inputs):
        assert_close(b.grad, a.grad, rtol=1e-4)


@pytest.mark.parametrize("band_elements", BANDS)
@pytest.mark.parametrize(
    ("act", "residual", "out_act"), [("gelu", False, False), ("gelu", True, True), ("relu", True, False)]
)
def test_mlp(threads: int, band_elements: int, act: str, residual: bool, out_act: bool) -> None:
    torch.manual_seed(0)
    pixels, c, hidden, d = 517, 6, 24, 5  # odd pixel count: a short last band and uneven thread ranges
    x, res = torch.randn(pixels, c), torch.randn(pixels, d) if residual else None
    w1, b1, w2, b2 = torch.randn(c, hidden), torch.randn(hidden), torch.randn(hidden, d), torch.randn(d)
    with torch.no_grad():
        expected = mlp_reference(x, w1, b1, w2, b2, act, res, out_act)
        assert_close(banded_mlp(x, w1, b1, w2, b2, act, res, out_act, band_elements), expected)

    def reference(*t: torch.Tensor) -> torch.Tensor:
        return mlp_reference(*t[:5], act, t[5] if residual else None, out_act)

    def banded(*t: torch.Tensor) -> torch.Tensor:
        return banded_mlp(*t[:5], act, t[5] if residual else None, out_act, band_elements)

    check_gradients(reference, banded, [x, w1, b1, w2, b2, *([res] if residual else [])])


@pytest.mark.parametrize("band_elements", BANDS)
@pytest.mark.parametrize("gated", [True, False])
def test_gate(threads: int, band_elements: int, gated: bool) -> None:
    torch.manual_seed(0)
    pixels, c, d = 389, 4, 3
    u, s = torch.randn(pixels, c), torch.randn(pixels, c)
    fuse = (torch.randn(d, 2 * c), torch.randn(d))
    gate = (
        torch.randn(3 * c, c),
        torch.randn(3 * c),
        torch.randn(c, c),
        torch.randn(c),
        torch.randn(c, c),
        torch.randn(c),
    )
    weights = fold_gate(*fuse, gate if gated else None)
    tensors = [t.contiguous() for t in weights if t is not None]
    with torch.no_grad():
        expected = gate_reference(u, s, GateWeights(*tensors))
        assert_close(banded_gate(u, s, GateWeights(*tensors), band_elements), expected)
    check_gradients(
        lambda u, s, *w: gate_reference(u, s, GateWeights(*w)),
        lambda u, s, *w: banded_gate(u, s, GateWeights(*w), band_elements),
        [u, s, *tensors],
    )


@pytest.mark.parametrize("gated", [True, False])
def test_folded_gate_equals_the_modules(gated: bool) -> None:
    """``fold_gate`` computes the stage's ``fuse(concat[gate(u, s), u])``."""
    torch.manual_seed(0)
    stage = GatedUpStage(8, 5, attention_gate=gated)
    u, s = torch.randn(2, 4, 7, 9), torch.randn(2, 4, 7, 9)
    with torch.no_grad():
        expected = stage.fuse(torch.cat([stage.gate(u, s) if gated else s, u], dim=1))
        got = gate_reference(flat(u.contiguous(memory_format=torch.channels_last)), flat(s), stage.gate_weights())
    assert_close(got, flat(expected.contiguous(memory_format=torch.channels_last)))


@pytest.mark.parametrize(("size", "padding"), [((9, 11), 3), ((3, 5), 3), ((2, 2), 1), ((7, 6), 0)])
def test_padded_rows(size: tuple[int, int], padding: int) -> None:
    """Every band of rows, with its halo, equals the same rows of the padded map (reflect or replicate)."""
    x = torch.randn(2, 3, *size).contiguous(memory_format=torch.channels_last)
    padded = same_pad(x, padding)
    for image in range(2):
        for start in range(size[0]):
            for stop in range(start + 1, size[0] + 1):
                band = padded_rows(x, image, start, stop, padding)
                assert torch.equal(band, padded[image : image + 1, :, start : stop + 2 * padding])


def test_same_pad_rule() -> None:
    x = torch.randn(1, 2, 3, 8)
    assert torch.equal(same_pad(x, 3), F.pad(x, (3, 3, 3, 3), mode="replicate"))
    assert torch.equal(same_pad(x, 2), F.pad(x, (2, 2, 2, 2), mode="reflect"))
    with pytest.raises(RuntimeError):
        same_pad(x, 3, exportable=True)  # always reflect: too small


@pytest.mark.parametrize(("low", "size"), [((4, 5), (8, 10)), ((4, 5), (9, 11)), ((1, 1), (3, 2)), ((6, 3), (13, 7))])
def test_band_upsampler(low: tuple[int, int], size: tuple[int, int]) -> None:
    """Any band of output rows equals those rows of ``upsample_to`` (bilinear x2, zero-padded)."""
    x = torch.randn(1, 3, *low)
    expected = upsample_to(x, torch.empty(1, 1, *size))[0].permute(1, 2, 0)
    assert torch.equal(upsample_to(x, torch.empty(1, 1, *size), exportable=True)[0].permute(1, 2, 0), expected)
    upsampler = BandUpsampler(low, size, x.device)
    source = x[0].permute(1, 2, 0).contiguous()
    for first, last in [(0, size[0]), (0, 1), (1, size[0] - 1), (size[0] - 1, size[0])]:
        out = torch.full((last - first, size[1], 3), float("nan"))
        assert_close(upsampler.rows(source, first, last, out), expected[first:last], rtol=1e-6)
