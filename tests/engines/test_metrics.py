"""False positives on images with an empty label: per image and aggregated, through an ignite evaluator as a
bundle's additional metric."""

from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Engine

from monai_sam_adapt.engines import FalsePositiveImages, FalsePositiveMetric


def _batch():
    pred = torch.zeros(4, 1, 4, 4)
    label = torch.zeros(4, 1, 4, 4)
    pred[0, 0, 0, 0] = 1  # empty label, 1 of 16 pixels drawn
    pred[1, 0, :2] = 1  # empty label, 8 of 16 drawn
    # image 2: empty label, nothing drawn
    label[3, 0, 1, 1] = pred[3, 0] = 1  # a real lesion: not a false positive, whatever is drawn
    return pred, label


def test_rate_and_area_count_only_images_whose_label_is_empty():
    pred, label = _batch()
    rate, area = FalsePositiveMetric("rate"), FalsePositiveMetric("area")
    per_image = rate(pred, label)
    assert per_image[:3, 0].tolist() == [1 / 16, 0.5, 0.0] and math.isnan(per_image[3, 0])
    area(pred, label)
    assert rate.aggregate().item() == pytest.approx(2 / 3)
    assert area.aggregate().item() == pytest.approx((1 / 16 + 0.5) / 2)


def test_nothing_drawn_gives_zero_and_no_empty_label_gives_nan():
    clean = FalsePositiveMetric("area")
    clean(torch.zeros(2, 1, 3, 3), torch.zeros(2, 1, 3, 3))
    assert clean.aggregate().item() == 0.0
    lesions = FalsePositiveMetric("rate")
    lesions(torch.ones(2, 1, 3, 3), torch.ones(2, 1, 3, 3))
    assert math.isnan(lesions.aggregate().item())
    with pytest.raises(ValueError, match="rate' or 'area"):
        FalsePositiveMetric("mean")


def test_handler_in_an_evaluator_keeps_per_image_details():
    pred, label = _batch()
    engine = Engine(lambda e, b: [{"pred": p, "label": y} for p, y in zip(*b)])
    handler = FalsePositiveImages(
        "rate", output_transform=lambda out: ([o["pred"] for o in out], [o["label"] for o in out])
    )
    handler.attach(engine, "val_false_positive_images")
    engine.run([(pred[:2], label[:2]), (pred[2:], label[2:])])
    assert engine.state.metrics["val_false_positive_images"] == pytest.approx(2 / 3)
    assert engine.state.metric_details["val_false_positive_images"].shape == (4, 1)
