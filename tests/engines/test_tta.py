"""Test-time averaging over flips and 90 degree rotations (SymmetryInferer)."""

from __future__ import annotations

import pytest
import torch

from monai_sam_adapt.engines import SYMMETRIES, AutocastInferer, SymmetryInferer


class Ramp(torch.nn.Module):
    """Not equivariant: the image times a fixed curved ramp over its grid, so each variant predicts differently."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ramp = (torch.arange(h * w, dtype=x.dtype).reshape(h, w) / (h * w)) ** 2
        return x[:, :1] * ramp


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 3, 6, 10)])
def test_equivariant_network_is_unchanged_and_outputs_stay_on_the_input_grid(shape):
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 2, 1)  # pointwise: commutes with every flip and rotation
    x = torch.rand(*shape)
    ref = net(x)
    for name in SYMMETRIES:
        torch.testing.assert_close(SymmetryInferer(name)(x, net), ref)


def test_average_is_over_the_variants_mapped_back():
    x = torch.rand(1, 3, 4, 4)
    net = Ramp()
    # by hand for "flips": identity, h-flip, 180 degrees, v-flip, each mapped back to the input's orientation
    hflip = net(x.flip(-1)).flip(-1)
    rot180 = net(x.flip(-2, -1)).flip(-2, -1)
    vflip = net(x.flip(-2)).flip(-2)
    expected = (net(x) + hflip + rot180 + vflip) / 4
    torch.testing.assert_close(SymmetryInferer("flips")(x, net), expected)
    # dihedral adds the four transposes: its average differs from the flips-only one for a non-equivariant network
    assert not torch.allclose(SymmetryInferer("dihedral")(x, net), expected)
    torch.testing.assert_close(SymmetryInferer("none")(x, net), net(x))


def test_mirror_is_the_training_flip_of_the_first_spatial_axis():
    """``mirror`` averages the image and its ``RandFlipd(spatial_axis=0)`` mirror: no other flip or turn."""
    from monai.transforms import Flip

    x = torch.rand(1, 3, 6, 10)
    net, flip = Ramp(), Flip(spatial_axis=0)  # on one channel-first image, as the training augmentation sees it
    mirrored = flip(net(flip(x[0]).unsqueeze(0))[0]).unsqueeze(0)
    torch.testing.assert_close(SymmetryInferer("mirror")(x, net), (net(x) + mirrored) / 2)
    assert not torch.allclose(SymmetryInferer("mirror")(x, net), (net(x) + net(x.flip(-1)).flip(-1)) / 2)


def test_non_square_dihedral_and_autocast_inside():
    x = torch.rand(1, 3, 6, 10)
    out = SymmetryInferer("dihedral", inferer=AutocastInferer("fp32"))(x, Ramp())
    assert out.shape == (1, 1, 6, 10) and out.dtype == torch.float32


def test_prompts_and_bad_settings_are_refused():
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="symmetries must be one of"):
        SymmetryInferer("rot45")
    with pytest.raises(ValueError, match="boxes would no longer match"):
        SymmetryInferer("flips")(x, lambda img, boxes: img, boxes=torch.zeros(1, 1, 4))
    # no symmetry: prompts pass through untouched
    out = SymmetryInferer("none")(x, lambda img, boxes: img + boxes.sum(), boxes=torch.ones(1, 1, 4))
    torch.testing.assert_close(out, x + 4)
    with pytest.raises(TypeError, match="one tensor on the input's in-plane grid"):
        SymmetryInferer("flips")(x, lambda img: {"pred": img})
