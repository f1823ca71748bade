from __future__ import annotations

import numpy as np
from PIL import Image

from monai_sam_adapt.data import kvasir_datalist, write_datalist
from tests.bundles.helpers import read_metrics, run_workflow

BUNDLE = "unet_kvasir"
TINY = {
    "network_def": {
        "_target_": "UNet",
        "spatial_dims": 2,
        "in_channels": 3,
        "out_channels": 1,
        "channels": [4, 8, 16],
        "strides": [2, 2],
        "num_res_units": 1,
    },
    "image_size": 64,
}


def test_train_evaluate_infer_tiny(polyp_folder, tmp_path):
    datalist = write_datalist(kvasir_datalist(polyp_folder), tmp_path / "dl.json")
    common = dict(dataset_dir=str(polyp_folder), datalist=str(datalist), num_workers=0, **TINY)
    run_workflow(
        BUNDLE,
        "train.json",
        output_dir=str(tmp_path / "run"),
        ckpt_dir=str(tmp_path / "models"),
        max_epochs=1,
        **common,
    )
    model = tmp_path / "models" / "model.pt"
    assert model.exists()
    run_workflow(BUNDLE, "evaluate.json", output_dir=str(tmp_path / "ev"), model_path=str(model), **common)
    assert {"val_mean_dice", "val_mean_iou", "val_hd95"} <= set(read_metrics(tmp_path / "ev" / "metrics.csv"))
    run_workflow(BUNDLE, "inference.json", output_dir=str(tmp_path / "pred"), model_path=str(model), **common)
    mask = np.asarray(Image.open(tmp_path / "pred" / "case4.png"))
    assert mask.shape == (40, 72)
