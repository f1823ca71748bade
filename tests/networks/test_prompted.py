from __future__ import annotations

import pytest
import torch

from monai_sam_adapt.networks import PromptedSAM
from tests.tiny import tiny_backbone


@pytest.mark.parametrize("multimask", [False, True])
def test_boxes_and_points_batched_each_image_its_own_prompt(multimask):
    net = PromptedSAM(tiny_backbone("vit_b"), multimask_output=multimask).eval()
    x = torch.rand(2, 3, 64, 64)
    boxes = torch.tensor(
        [[[2.0, 2.0, 30.0, 30.0], [0.0, 0.0, 63.0, 63.0]], [[10.0, 5.0, 50.0, 60.0], [1.0, 1.0, 8.0, 8.0]]]
    )
    points = torch.tensor([[[[5.0, 5.0]], [[40.0, 40.0]]], [[[20.0, 20.0]], [[3.0, 3.0]]]])
    labels = torch.ones(2, 2, 1)
    with torch.no_grad():
        y = net(x, boxes=boxes)
        y2 = net(x, boxes=boxes, points=points, point_labels=labels)
        y3 = net(x, points=points, point_labels=labels)
        single = net(x[1:], boxes=boxes[1:])
    assert y.shape == y2.shape == y3.shape == (2, 2, 64, 64)
    torch.testing.assert_close(y[1:], single)


def test_prompted_needs_a_prompt_and_stays_frozen():
    net = PromptedSAM(tiny_backbone("vit_b"))
    with pytest.raises(ValueError, match="boxes or points"):
        net(torch.rand(1, 3, 64, 64))
    assert not any(p.requires_grad for p in net.parameters())
