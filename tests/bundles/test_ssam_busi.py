"""ssam_busi: S-SAM prompted "breast lesion" on grey ultrasound; evaluation also reports what the model draws on
lesion-free images (the prepared BUSI folder's ``normal`` list), where Dice says nothing."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from monai_sam_adapt.data import splits_datalist
from tests.bundles.helpers import REPO, read_metrics, run_workflow, tiny_network_override
from tests.conftest import disk, write_png

BUNDLE = "ssam_busi"


def tiny():
    return tiny_network_override("monai_sam_adapt.networks.SSAM", label_names=["breast lesion"])


@pytest.fixture
def ultrasound_folder(tmp_path, rng):
    """Grey 'ultrasound' images: five with a dark lesion (0/255 masks), two lesion-free ones (empty masks)."""
    root = tmp_path / "busi"
    ids = []
    for i, (h, w) in enumerate([(50, 60), (60, 50), (56, 56), (48, 64), (64, 48), (52, 52), (58, 62)]):
        m = disk(h, w, h * 0.5, w * 0.5, min(h, w) * 0.25) if i < 5 else np.zeros((h, w), bool)
        img = (rng.uniform(60, 200, (h, w)) * np.where(m, 0.2, 1.0)).astype(np.uint8)
        name = f"benign_{i}" if i < 5 else f"normal_{i}"
        write_png(root / "images" / f"{name}.png", img)
        write_png(root / "masks" / f"{name}.png", (m * 255).astype(np.uint8))
        ids.append(name)
    splits = {"train": ids[:3], "val": ids[3:4], "test": ids[4:5], "normal": ids[5:]}
    (root / "splits.json").write_text(json.dumps(splits))
    return root


def test_no_vertical_flip():
    """Ultrasound has the probe at the top: the bundle mirrors left-right only (the first spatial axis of a 2D image
    as MONAI loads it), and at test time averages the image with that mirror only."""
    cfg = json.loads((REPO / "bundles" / BUNDLE / "configs" / "train.json").read_text())
    flips = cfg["augmentation"]["transforms"]
    assert [t["_target_"] for t in flips] == ["RandFlipd"] and flips[0]["spatial_axis"] == 0
    for name in ("evaluate.json", "inference.json"):
        assert json.loads((REPO / "bundles" / BUNDLE / "configs" / name).read_text())["symmetries"] == "mirror"


def test_train_then_report_false_lesions_on_lesion_free_images(ultrasound_folder, tmp_path):
    common = dict(dataset_dir=str(ultrasound_folder), datalist="splits", num_workers=0)
    models = tmp_path / "models"
    run_workflow(
        BUNDLE, "train.json", output_dir=str(tmp_path / "run"), ckpt_dir=str(models), max_epochs=1, **common, **tiny()
    )
    model = str(models / "model.pt")
    run_workflow(BUNDLE, "evaluate.json", output_dir=str(tmp_path / "test"), model_path=model, **common, **tiny())
    lesions = read_metrics(tmp_path / "test" / "metrics.csv")
    assert 0 <= lesions["val_mean_dice"] <= 1 and math.isnan(lesions["val_false_positive_images"])

    normal = tmp_path / "normal"
    run_workflow(
        BUNDLE, "evaluate.json", output_dir=str(normal), model_path=model, datalist_key="normal", **common, **tiny()
    )
    m = read_metrics(normal / "metrics.csv")
    assert 0 <= m["val_false_positive_images"] <= 1 and 0 <= m["val_false_positive_area"] <= 1
    per_image = (normal / "val_false_positive_area_raw.csv").read_text()
    assert "normal_5" in per_image and "normal_6" in per_image


@pytest.mark.integration
def test_committed_adapter_on_real_ultrasound(tmp_path):
    """The committed adapter on four real BUSI test images (benign and malignant) and four lesion-free ones: it outlines
    the lesions, and on the lesion-free images reports what the docs say it draws."""
    from tests.conftest import prepared_path

    root = prepared_path("busi")
    dl = splits_datalist(root)
    dl["testing"] = dl["testing"][:2] + dl["testing"][-2:]
    common = dict(dataset_dir=str(root), datalist=dl, num_workers=0)
    run_workflow(BUNDLE, "evaluate.json", output_dir=str(tmp_path / "ev"), **common)
    assert read_metrics(tmp_path / "ev" / "metrics.csv")["val_mean_dice"] > 0.6
    dl["normal"] = dl["normal"][:4]
    run_workflow(BUNDLE, "evaluate.json", output_dir=str(tmp_path / "nm"), datalist_key="normal", **common)
    # it draws something on lesion-free images (docs/README.md says so); what it draws stays small (8.1% on all 133)
    assert read_metrics(tmp_path / "nm" / "metrics.csv")["val_false_positive_area"] < 0.15
