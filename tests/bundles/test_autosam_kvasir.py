from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from monai_sam_adapt.data import kvasir_datalist, write_datalist
from tests.bundles.helpers import chain, read_metrics, run_ddp_training, run_workflow, tiny_network_override

BUNDLE = "autosam_kvasir"


def tiny(**extra):
    return tiny_network_override("monai_sam_adapt.networks.AutoSAM", **extra)


def test_train_evaluate_infer_tiny(polyp_folder, tmp_path):
    datalist = write_datalist(kvasir_datalist(polyp_folder), tmp_path / "dl.json")
    run_dir, models = tmp_path / "run", tmp_path / "models"
    common = dict(dataset_dir=str(polyp_folder), datalist=str(datalist), num_workers=0)
    run_workflow(
        BUNDLE,
        "train.json",
        output_dir=str(run_dir),
        ckpt_dir=str(models),
        max_epochs=2,
        cache_dir=str(tmp_path / "cache"),
        **common,
        **tiny(output="both", cache=str(tmp_path / "cache")),
    )
    model = models / "model.pt"
    assert model.exists() and model.stat().st_size < 5_000_000
    sd = torch.load(model, weights_only=True)
    assert not [k for k in sd if k.startswith("sam.")] and sd["_extra_state"]["backbone"] == "vit_b"
    assert list((run_dir / "checkpoints").glob("checkpoint_epoch=2.pt")), "resumable checkpoint per epoch"
    assert list(run_dir.glob("events.out.tfevents.*")), "TensorBoard logs"
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 4  # 3 training + 1 validation images, once

    # resume one more epoch from the saved trainer state
    run_workflow(
        BUNDLE,
        "train.json",
        output_dir=str(run_dir),
        ckpt_dir=str(models),
        max_epochs=3,
        resume_from=str(next((run_dir / "checkpoints").glob("*.pt"))),
        **common,
        **tiny(output="both"),
    )
    assert list((run_dir / "checkpoints").glob("checkpoint_epoch=3.pt"))

    ev = tmp_path / "eval"
    run_workflow(BUNDLE, "evaluate.json", output_dir=str(ev), model_path=str(model), **common, **tiny(output="both"))
    m = read_metrics(ev / "metrics.csv")
    assert {"val_mean_dice", "val_mean_dice_h", "val_hd95", "val_hd95_h", "val_mean_iou", "val_mean_iou_h"} <= set(m)
    assert (ev / "overlays.png").exists()

    # inference on images only (no label), AutoSAM and h alone
    dl = kvasir_datalist(polyp_folder)
    for e in dl["testing"]:
        e.pop("label")
    images_only = write_datalist(dl, tmp_path / "images_only.json")
    for output in ("sam", "h"):
        pred = tmp_path / f"pred_{output}"
        run_workflow(
            BUNDLE,
            "inference.json",
            output_dir=str(pred),
            model_path=str(model),
            **{**common, "datalist": str(images_only)},
            **tiny(output=output),
        )
        for name in ("case4", "case5"):
            mask = np.asarray(Image.open(pred / "images" / f"{name}.png"))
            src = Image.open(polyp_folder / "images" / f"{name}.png")
            assert mask.shape == (src.height, src.width)


def test_refuses_weights_of_another_backbone(polyp_folder, tmp_path):
    from monai_sam_adapt.networks import AutoSAM
    from tests.tiny import tiny_backbone

    torch.save(AutoSAM(tiny_backbone("lite_medsam")).state_dict(), tmp_path / "model.pt")
    datalist = write_datalist(kvasir_datalist(polyp_folder), tmp_path / "dl.json")
    with pytest.raises(Exception) as e:
        run_workflow(
            BUNDLE,
            "evaluate.json",
            dataset_dir=str(polyp_folder),
            datalist=str(datalist),
            num_workers=0,
            output_dir=str(tmp_path / "ev"),
            model_path=str(tmp_path / "model.pt"),
            **tiny(output="both"),
        )
    assert "trained on backbone 'lite_medsam'" in chain(e.value)


def test_ddp_two_cpu_processes(polyp_folder, tmp_path):
    """multi_gpu_train.json under torchrun with 2 processes (gloo on CPU)."""
    dl = kvasir_datalist(polyp_folder)
    dl["validation"].append(dl["training"].pop())  # each rank validates at least one image
    datalist = write_datalist(dl, tmp_path / "dl.json")
    args = {
        "dataset_dir": str(polyp_folder),
        "datalist": str(datalist),
        "num_workers": 0,
        "max_epochs": 2,
        "batch_size": 1,
        "output_dir": str(tmp_path / "run"),
        "ckpt_dir": str(tmp_path / "models"),
        "cache_dir": str(tmp_path / "cache"),
        **tiny(output="both", cache=str(tmp_path / "cache")),
    }
    res = run_ddp_training(BUNDLE, args, tmp_path, port_offset=0)
    assert res.returncode == 0, res.stderr[-4000:]
    assert (tmp_path / "models" / "model.pt").exists()
    assert "Epoch[2] Metrics" in res.stdout + res.stderr
