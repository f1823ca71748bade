"""ssam_lits: the user's command on a LiTS-layout folder (synthetic volumes plus the real CT converted to the layout),
patient-wise splits, foreground slice sampling, slice-by-slice inference back to the input's NIfTI geometry."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose, Orientationd

from monai_sam_adapt.data import lits_datalist
from monai_sam_adapt.transforms import LoadMedicalImaged
from tests.bundles.helpers import REPO, chain, read_metrics, run_workflow, tiny_network_override
from tests.conftest import data_path

BUNDLE = "ssam_lits"


def tiny(**extra):
    return tiny_network_override("monai_sam_adapt.networks.SSAM", label_names=["liver", "tumor"], method="svd", **extra)


def oblique_affine(rng, spacing=(0.8, 0.9, 2.5)):
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    a = np.eye(4)
    a[:3, :3] = q * np.asarray(spacing)
    a[:3, 3] = rng.uniform(-50, 50, 3)
    return a


def synthetic_lits(root, rng, n=4, start=1):
    """``volume-N.nii.gz``/``segmentation-N.nii.gz``: a bright 'liver' ellipsoid (HU ~60) with a darker 'tumor'."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        shape = (40, 36, 6)
        z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
        liver = (z / 0.7) ** 2 + (y / 0.6) ** 2 + (x / 1.5) ** 2 < 1
        tumor = ((z - 0.1) / 0.25) ** 2 + (y / 0.25) ** 2 + (x / 1.5) ** 2 < 1
        ct = rng.normal(-100, 20, shape) + 160 * liver - 60 * tumor
        seg = liver.astype(np.uint8) + tumor.astype(np.uint8) * liver
        aff = oblique_affine(rng)
        nib.save(nib.Nifti1Image(ct.astype(np.int16), aff), root / f"volume-{i}.nii.gz")
        nib.save(nib.Nifti1Image(seg.astype(np.uint8), aff), root / f"segmentation-{i}.nii.gz")
    return root


def real_ct_as_lits(root):
    """The real 3-slice CT (DICOM series + liver label NRRD) written as LiTS ``volume-0``/``segmentation-0``."""
    src = data_path("ct_liver_dicom")
    keys = ["image", "label"]
    d = Compose([LoadMedicalImaged(keys), Orientationd(keys, axcodes="RAS")])(
        {"image": str(src / "ct-3slice"), "label": str(src / "liver_seg.nrrd")}
    )
    aff = d["image"].affine.numpy()
    root.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(d["image"][0].numpy().astype(np.int16), aff), root / "volume-0.nii.gz")
    nib.save(nib.Nifti1Image((d["label"][0].numpy() > 0).astype(np.uint8), aff), root / "segmentation-0.nii.gz")
    return root


def check_prediction(pred_dir, volume):
    src = nib.load(str(volume))
    out = nib.load(str(pred_dir / volume.name.replace(".nii.gz", "_seg.nii.gz")))
    assert out.shape == src.shape
    np.testing.assert_allclose(out.affine, src.affine, atol=1e-4)
    assert nib.aff2axcodes(out.affine) == nib.aff2axcodes(src.affine)
    assert set(np.unique(np.asarray(out.dataobj))) <= {0, 1, 2}


def test_train_evaluate_infer_synthetic(tmp_path, rng):
    root = synthetic_lits(tmp_path / "LiTS", rng, n=5)
    dl = lits_datalist(root)
    assert len(dl["testing"]) == 1 and len(dl["validation"]) == 1 and len(dl["training"]) == 3
    models, common = tmp_path / "models", dict(dataset_dir=str(root), num_workers=0)
    run_workflow(
        BUNDLE,
        "train.json",
        output_dir=str(tmp_path / "run"),
        ckpt_dir=str(models),
        max_epochs=2,
        val_interval=1,
        slices_per_volume=2,
        **common,
        **tiny(),
    )
    model = models / "model.pt"
    assert torch.load(model, weights_only=True)["_extra_state"]["labels"] == ["liver", "tumor"]
    ev = tmp_path / "eval"
    run_workflow(BUNDLE, "evaluate.json", output_dir=str(ev), model_path=str(model), **common, **tiny())
    assert {"val_mean_dice", "val_dice_liver", "val_dice_tumor"} <= set(read_metrics(ev / "metrics.csv"))
    pred = tmp_path / "pred"
    run_workflow(BUNDLE, "inference.json", output_dir=str(pred), model_path=str(model), **common, **tiny())
    check_prediction(pred, root / dl["testing"][0]["image"])

    # the label names go through MiniLM: a synonym is a prompt; a far name, or another organ (kidney is 0.62 from
    # liver, under this bundle's 0.65 threshold), is refused naming the trained ones
    tumour = tmp_path / "pred_tumour"
    run_workflow(
        BUNDLE,
        "inference.json",
        output_dir=str(tumour),
        model_path=str(model),
        prompt_names=["liver", "tumour"],
        **common,
        **tiny(),
    )
    check_prediction(tumour, root / dl["testing"][0]["image"])
    for far in ("brain", "kidney"):
        with pytest.raises(Exception) as e:
            run_workflow(
                BUNDLE,
                "inference.json",
                output_dir=str(tmp_path / far),
                model_path=str(model),
                prompt_names=["liver", far],
                **common,
                **tiny(),
            )
        assert f"'{far}' is not close to any name this model was trained on ['liver', 'tumor']" in chain(e.value)
        assert not (tmp_path / far).exists() or not any((tmp_path / far).rglob("*.nii.gz"))

    # a volume outside dataset_dir with an expert label beside it named as our prediction would be: never touched
    outside = synthetic_lits(tmp_path / "other_hospital", rng, n=1, start=9) / "volume-9.nii.gz"
    victim = outside.parent / "volume-9_seg.nii.gz"
    victim.write_bytes((outside.parent / "segmentation-9.nii.gz").read_bytes())
    before = victim.read_bytes()
    pred2 = tmp_path / "pred2"
    run_workflow(
        BUNDLE,
        "inference.json",
        output_dir=str(pred2),
        model_path=str(model),
        **common,
        **tiny(),
        datalist={"testing": [{"image": str(outside)}]},
    )
    assert victim.read_bytes() == before
    (written,) = [p for p in pred2.rglob("*") if p.is_file()]
    assert written.parent == pred2 and written.name.startswith("volume-9-") and written.name.endswith("_seg.nii.gz")


def test_users_command_on_real_ct_in_lits_layout(tmp_path, rng):
    """``python -m monai.bundle run training --config_file bundles/ssam_lits/configs/train.json --dataset_dir D``,
    as typed (plus tiny-model overrides), on the real CT converted to the LiTS layout beside synthetic patients."""
    root = real_ct_as_lits(tmp_path / "LiTS")
    synthetic_lits(root, rng, n=3)
    import json

    args = {
        "output_dir": str(tmp_path / "run"),
        "ckpt_dir": str(tmp_path / "models"),
        "max_epochs": 1,
        "val_interval": 1,
        "slices_per_volume": 2,
        "num_workers": 0,
        **tiny(),
    }
    (tmp_path / "args.json").write_text(json.dumps(args))
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        f"bundles/{BUNDLE}/configs/train.json",
        "--dataset_dir",
        str(root),
        "--args_file",
        str(tmp_path / "args.json"),
    ]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    model = tmp_path / "models" / "model.pt"
    assert model.exists()
    pred = tmp_path / "pred"
    dl = {"testing": [{"image": "volume-0.nii.gz"}]}
    run_workflow(
        BUNDLE,
        "inference.json",
        output_dir=str(pred),
        model_path=str(model),
        dataset_dir=str(root),
        datalist=dl,
        num_workers=0,
        **tiny(),
    )
    check_prediction(pred, root / "volume-0.nii.gz")


def test_missing_segmentation_is_named(tmp_path, rng):
    root = synthetic_lits(tmp_path / "LiTS", rng, n=2)
    (root / "segmentation-2.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="volume-2.nii.gz"):
        lits_datalist(root)
