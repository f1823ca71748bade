"""Every bundle's training loss treats each output channel as its own sigmoid map (one label per channel).

MONAI's ``DiceCELoss(sigmoid=True)`` switches to a softmax cross-entropy over the channels whenever there is more than
one, so on per-label sigmoid maps (S-SAM's one decoder pass per label) its cross-entropy is blind to a shift of all
logits: from a saturated start nothing pushes a label's logits up and Dice has no gradient (how ssam_brats collapsed).
"""

from __future__ import annotations

import pytest
import torch
from monai.bundle import ConfigParser

from monai_sam_adapt.bundle import config_parser, find_bundles
from tests.bundles.helpers import REPO

TRAINED = sorted(n for n, p in find_bundles(REPO / "bundles").items() if (p / "configs" / "train.json").is_file())


def train_config(bundle: str) -> ConfigParser:
    return config_parser(REPO / "bundles" / bundle, "train.json")


def bundle_loss(bundle: str, k: int) -> torch.nn.Module:
    """The bundle's own ``loss`` item, for ``k`` output channels."""
    parser = train_config(bundle)
    if "num_classes" in parser:  # AutoSAM / UNet bundles name their class count; S-SAM has one channel per label
        parser["num_classes"] = k
    return parser.get_parsed_content("loss")


def labels(k: int, absent: bool = False) -> torch.Tensor:
    """Small structures (a few percent of the image, as in BRATS); ``absent``: every other label missing in image 1."""
    g = torch.Generator().manual_seed(k)
    y = torch.zeros(2, k, 32, 32)
    for c in range(k):
        x0, y0 = torch.randint(0, 24, (2,), generator=g).tolist()
        y[0, c, y0 : y0 + 6, x0 : x0 + 6] = 1
        if not absent or c % 2 == 0:
            y[1, c, x0 : x0 + 4, y0 : y0 + 4] = 1
    return y


#: Multi-label bundles whose training images hold every label, so a per-image Dice is defined for each (they train
#: with it; a user whose images can lack a label passes ``--batch_dice true``, as their docs say).
EVERY_LABEL_IN_EVERY_IMAGE = {"ssam_cxr": "the prepared chest X-rays keep only images with both lungs and the heart"}


def multi_label(bundle: str) -> bool:
    """Bundles with several named labels whose training images can lack some of them (most slices of a volume)."""
    return len(train_config(bundle).get("label_names", [])) > 1 and bundle not in EVERY_LABEL_IN_EVERY_IMAGE


@pytest.mark.parametrize("bundle", TRAINED)
def test_loss_is_per_label(bundle):
    k = 4
    loss = bundle_loss(bundle, k)
    y = labels(k)
    x = torch.randn(2, k, 32, 32, generator=torch.Generator().manual_seed(1)) * 4
    whole = loss(x, y)
    one = bundle_loss(bundle, 1)
    per_label = torch.stack([one(x[:, c : c + 1], y[:, c : c + 1]) for c in range(k)]).mean()
    assert torch.allclose(whole, per_label, atol=1e-5), f"{bundle}: {whole.item()} vs {per_label.item()}"


@pytest.mark.parametrize("bundle", TRAINED)
def test_saturated_start_is_pulled_up(bundle):
    """From logits of -20 everywhere (where the frozen SAM decoder starts), every label's positives get pushed up, and
    for multi-label bundles the labels missing from an image do not outweigh that (a per-image Dice of an empty label
    pushes everything down: those bundles use batch Dice)."""
    k = 4
    loss = bundle_loss(bundle, k)
    y = labels(k, absent=multi_label(bundle))
    x = torch.full_like(y, -20.0, requires_grad=True)
    loss(x, y).backward()
    for c in range(k):
        g = x.grad[:, c][y[:, c] > 0]
        assert (g < 0).all(), f"{bundle}: label channel {c} not pushed up from a saturated start"
    assert x.grad.sum() < 0  # a net push up, not a zero-sum redistribution between labels
