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
    mask = np.asarray(Image.open(tmp_path / "pred" / "images" / "case4.png"))
    assert mask.shape == (40, 72)


def test_predictions_stay_in_output_dir_never_collide_never_overwrite(polyp_folder, tmp_path):
    """Issue 14's first finding: a datalist entry outside dataset_dir, two inputs with the same name in different
    folders, and a second run into the same output folder."""
    import shutil

    import pytest
    import torch
    from monai.networks.nets import UNet

    from monai_sam_adapt.errors import InputError
    from tests.bundles.helpers import chain

    net = UNet(**{k: v for k, v in TINY["network_def"].items() if k != "_target_"})
    torch.save({"model": net.state_dict()}, tmp_path / "model.pt")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(polyp_folder / "images" / "case4.png", elsewhere / "case4.png")
    victim = elsewhere / "case4_expert.png"  # stands for an expert label beside the input
    shutil.copy(polyp_folder / "masks" / "case4.png", victim)
    (polyp_folder / "other").mkdir()
    shutil.copy(polyp_folder / "images" / "case5.png", polyp_folder / "other" / "case4.png")  # same name, other folder
    datalist = {
        "testing": [
            {"image": "images/case4.png"},
            {"image": "other/case4.png"},
            {"image": str(elsewhere / "case4.png")},  # absolute: outside dataset_dir
        ]
    }
    before = victim.read_bytes()
    out = tmp_path / "pred"
    common = dict(
        dataset_dir=str(polyp_folder), datalist=datalist, num_workers=0, model_path=str(tmp_path / "model.pt")
    )
    run_workflow(BUNDLE, "inference.json", output_dir=str(out), **common, **TINY)
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    outside = [w for w in written if "/" not in w]
    assert sorted(set(written) - set(outside)) == ["images/case4.png", "other/case4.png"] and len(outside) == 1
    assert outside[0].startswith("case4-") and outside[0].endswith(".png")  # outside the dataset: a unique name, here
    assert victim.read_bytes() == before and sorted(p.name for p in elsewhere.iterdir()) == [
        "case4.png",
        "case4_expert.png",
    ]
    first = (out / "images" / "case4.png").read_bytes()
    with pytest.raises(Exception) as e:
        run_workflow(BUNDLE, "inference.json", output_dir=str(out), **common, **TINY)
    assert isinstance(e.value, InputError) or "already exists" in chain(e.value)
    assert "images/case4.png" in chain(e.value) and "--overwrite true" in chain(e.value)
    assert (out / "images" / "case4.png").read_bytes() == first
    run_workflow(BUNDLE, "inference.json", output_dir=str(out), overwrite=True, **common, **TINY)
    assert not [p for p in out.rglob(".partial-*")]


def test_evaluation_counts_every_case_and_names_empty_ground_truths(polyp_folder, tmp_path):
    """Issue 14: a case whose ground truth is empty gets ``nan`` Dice and MONAI's mean skips it; the mean must say
    over how many cases it is and which are left out, and the per-case CSV must still list every case."""
    import json
    import logging

    import torch
    from monai.networks.nets import UNet

    net = UNet(**{k: v for k, v in TINY["network_def"].items() if k != "_target_"})
    torch.save({"model": net.state_dict()}, tmp_path / "model.pt")
    write_png = Image.fromarray
    write_png(np.zeros((64, 64), np.uint8)).save(polyp_folder / "masks" / "case5.png")  # no polyp in this image
    datalist = {"testing": [{"image": f"images/case{i}.png", "label": f"masks/case{i}.png"} for i in (3, 4, 5)]}
    out = tmp_path / "ev"
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())
    logging.getLogger("monai_sam_adapt.engines.handlers").addHandler(handler)
    run_workflow(
        BUNDLE,
        "evaluate.json",
        output_dir=str(out),
        model_path=str(tmp_path / "model.pt"),
        dataset_dir=str(polyp_folder),
        datalist=datalist,
        num_workers=0,
        **TINY,
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cases"] == 3 and [p.split("/")[-1] for p in summary["empty_ground_truth"]] == ["case5.png"]
    dice = summary["val_mean_dice"]
    assert dice["cases"] == 3 and dice["cases_in_mean_per_label"] == [2] and dice["left_out"][0].endswith("case5.png")
    logging.getLogger("monai_sam_adapt.engines.handlers").removeHandler(handler)
    log = "\n".join(records)
    assert (
        "val_mean_dice: mean" in log
        and "over 2 of 3 cases; not in it (empty ground truth or not finite): case5.png" in log
    )
    assert "1 of 3 cases have an empty ground truth: case5.png" in log
    rows = (out / "val_mean_dice_raw.csv").read_text().strip().splitlines()[1:]
    assert len(rows) == 3 and "nan" in [r.split("\t")[-1].strip().lower() for r in rows][2]
