"""The evaluation pictures and summary: overlays keep every label of a multi-label model, not just the first; the
summary keeps a metric's own value where it is not the mean of its per-case values."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from monai.data import MetaTensor

from monai_sam_adapt.engines import FalsePositiveMetric, OverlayGrid
from monai_sam_adapt.engines.handlers import EvaluationSummary, _dice
from tests.conftest import write_png


def test_overlay_draws_every_label_with_its_own_dice(tmp_path):
    src = write_png(tmp_path / "xray.png", np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8))
    label = torch.zeros(3, 32, 32)
    label[0, 2:10, 2:10] = label[1, 2:10, 20:28] = label[2, 20:30, 10:20] = 1
    pred = label.clone()
    pred[2] = 0  # the third label missed entirely
    item = {"image": MetaTensor(torch.zeros(1, 32, 32), meta={"filename_or_obj": str(src)}), "label": label}
    item["pred"] = pred
    grid = OverlayGrid(tmp_path / "out", num_images=2)
    grid.collect(SimpleNamespace(state=SimpleNamespace(output=[item])))
    (kept,) = grid.items
    assert kept["label"].shape == (3, 32, 32) and kept["preds"][0].shape == (3, 32, 32)
    assert np.mean([_dice(p, g) for p, g in zip(kept["preds"][0], kept["label"])]) == 2 / 3
    grid.draw(None)
    assert (tmp_path / "out" / "overlays.png").stat().st_size > 0


def test_dice_of_two_empty_masks_is_one_and_of_a_missed_mask_zero():
    empty, some = np.zeros((4, 4), bool), np.eye(4, dtype=bool)
    assert _dice(empty, empty) == 1.0
    assert _dice(empty, some) == 0.0 and _dice(some, some) == 1.0


def test_summary_keeps_the_false_positive_rate_beside_its_per_image_areas(tmp_path):
    """Three lesion-free images, a lesion drawn on two: the rate is 2/3, the per-image values are areas."""
    import json

    pred, label = torch.zeros(3, 1, 4, 4), torch.zeros(3, 1, 4, 4)
    pred[0, 0, 0, :2] = pred[1, 0, :2, :2] = 1  # 2/16 and 4/16 of the image
    metric = FalsePositiveMetric("rate")
    details = metric(pred, label)
    items = [
        {"image": MetaTensor(torch.zeros(1, 4, 4), meta={"filename_or_obj": f"n{i}.png"}), "label": label[i]}
        for i in range(3)
    ]
    engine = SimpleNamespace(
        state=SimpleNamespace(output=items, metric_details={"fp_images": details}, metrics={"fp_images": 2 / 3})
    )
    summary = EvaluationSummary(tmp_path)
    summary.collect(engine)
    summary(engine)
    fp = json.loads((tmp_path / "summary.json").read_text())["fp_images"]
    assert fp["value"] == 2 / 3 and abs(fp["mean"] - 0.125) < 1e-6
    # a metric that is the mean of its per-case values gets no extra value
    engine.state.metrics = {"fp_images": 0.125}
    summary(engine)
    assert "value" not in json.loads((tmp_path / "summary.json").read_text())["fp_images"]
