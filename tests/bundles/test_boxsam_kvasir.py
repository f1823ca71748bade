from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from monai_sam_adapt.data import kvasir_datalist, write_datalist
from tests.bundles.helpers import REPO, chain, read_metrics, run_workflow, tiny_network_override
from tests.conftest import data_path

BUNDLE = "boxsam_kvasir"
TINY = tiny_network_override("monai_sam_adapt.networks.PromptedSAM")


def test_evaluate_and_inference_tiny(polyp_folder, tmp_path):
    datalist = write_datalist(kvasir_datalist(polyp_folder), tmp_path / "dl.json")
    out = tmp_path / "eval"
    run_workflow(
        BUNDLE,
        "evaluate.json",
        dataset_dir=str(polyp_folder),
        datalist=str(datalist),
        output_dir=str(out),
        num_workers=0,
        **TINY,
    )
    metrics = read_metrics(out / "metrics.csv")
    assert set(metrics) == {"val_mean_dice", "val_mean_iou", "val_hd95"}
    assert 0.0 <= metrics["val_mean_dice"] <= 1.0
    raw = (out / "val_mean_dice_raw.csv").read_text().splitlines()
    assert len(raw) == 1 + 2 and "case4.png" in raw[1]  # per-image values, named
    assert (out / "val_mean_dice_distribution.png").exists()

    pred = tmp_path / "pred"
    run_workflow(
        BUNDLE,
        "inference.json",
        dataset_dir=str(polyp_folder),
        datalist=str(datalist),
        output_dir=str(pred),
        num_workers=0,
        **TINY,
    )
    for name in ("case4", "case5"):
        mask = np.asarray(Image.open(pred / "images" / f"{name}.png"))
        src = Image.open(polyp_folder / "images" / f"{name}.png")
        assert mask.shape == (src.height, src.width)  # on the input's own grid (rows, columns)
        assert set(np.unique(mask)) <= {0, 255}
    assert not [p for p in os.listdir(pred) if p.startswith(".partial")]


def test_bad_inputs_fail_before_writing(polyp_folder, tmp_path):
    dl = kvasir_datalist(polyp_folder)
    dl["testing"][1]["label"] = "masks/missing.png"
    datalist = write_datalist(dl, tmp_path / "dl.json")
    out = tmp_path / "pred"
    with pytest.raises(Exception) as e:
        run_workflow(
            BUNDLE,
            "inference.json",
            dataset_dir=str(polyp_folder),
            datalist=str(datalist),
            output_dir=str(out),
            num_workers=0,
            **TINY,
        )
    assert "missing.png" in chain(e.value) and "does not exist" in chain(e.value)
    assert not out.exists() or not any(out.iterdir())
    # a label that is not on the image's grid
    bad = polyp_folder / "masks" / "case4.png"
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(bad)
    datalist = write_datalist(kvasir_datalist(polyp_folder), tmp_path / "dl2.json")
    with pytest.raises(Exception) as e:
        run_workflow(
            BUNDLE,
            "inference.json",
            dataset_dir=str(polyp_folder),
            datalist=str(datalist),
            output_dir=str(out),
            num_workers=0,
            **TINY,
        )
    assert "case4.png" in chain(e.value) and "not on the same grid" in chain(e.value)


@pytest.mark.integration
def test_real_lite_medsam_on_kvasir_test_images(tmp_path):
    """The user's command, as typed, with the real LiteMedSAM weights on 4 Kvasir-SEG test images."""
    root = data_path("kvasir_seg")
    dl = kvasir_datalist(root)
    dl["testing"] = dl["testing"][:4]
    datalist = write_datalist(dl, tmp_path / "dl.json")
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        f"bundles/{BUNDLE}/configs/evaluate.json",
        "--dataset_dir",
        str(root),
        "--datalist",
        str(datalist),
        "--output_dir",
        str(tmp_path / "eval"),
    ]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = read_metrics(tmp_path / "eval" / "metrics.csv")
    assert metrics["val_mean_dice"] > 0.9, metrics
