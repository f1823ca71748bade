"""ssam_brats: BraTS 2018 MR (four sequences through a trainable channel map), the nested tumour regions whole
tumour / tumour core / enhancing tumour by name, Dice and HD95 per region, BraTS label maps on the input grid."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.bundles.helpers import read_metrics, run_workflow, tiny_network_override
from tests.bundles.test_ssam_lits import oblique_affine
from tests.conftest import data_path

BUNDLE = "ssam_brats"
NAMES = ["whole tumor", "tumor core", "enhancing tumor"]
MODALITIES = ("flair", "t1", "t1ce", "t2")


def tiny(**extra):
    return tiny_network_override("monai_sam_adapt.networks.SSAM", label_names=NAMES, method="svd", **extra)


def synthetic_brats2018(root, rng, cases: int = 5):
    """BraTS 2018 layout ``<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz`` with nested labels (1 core, 4 enhancing
    ring, 2 edema), int16 sequences of different contrast."""
    shape = (32, 30, 5)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    r = np.sqrt(z**2 + y**2)
    lab = np.select([r < 0.15, r < 0.3, r < 0.6], [1, 4, 2], 0).astype(np.uint8)
    gains = {"flair": (0, 300, 50, 400), "t1": (0, -50, -50, 0), "t1ce": (0, 100, 500, 50), "t2": (0, 400, 100, 300)}
    for i in range(cases):
        name = f"Brats18_SYN_{i}_1"
        case = root / name
        case.mkdir(parents=True)
        aff = oblique_affine(rng, (1.0, 1.0, 1.0))
        for mod in MODALITIES:
            g = np.asarray(gains[mod], dtype=np.float32)[np.searchsorted([0, 1, 2, 4], lab)]
            img = 500 + rng.normal(0, 40, shape) + g
            nib.save(nib.Nifti1Image(img.astype(np.int16), aff), case / f"{name}_{mod}.nii.gz")
        nib.save(nib.Nifti1Image(lab, aff), case / f"{name}_seg.nii.gz")
    return root


def test_train_evaluate_infer_synthetic(tmp_path, rng):
    root = synthetic_brats2018(tmp_path / "brats", rng)
    common = dict(dataset_dir=str(root), num_workers=0)
    models = tmp_path / "models"
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
    state = torch.load(model, weights_only=True)
    assert state["_extra_state"]["labels"] == NAMES
    assert state["_extra_state"]["adaptation"]["in_channels"] == 4
    assert state["channel_mix.mix.weight"].shape == (3, 4, 1, 1)  # the trained channel map is saved
    ev = tmp_path / "eval"
    run_workflow(BUNDLE, "evaluate.json", output_dir=str(ev), model_path=str(model), **common, **tiny())
    m = read_metrics(ev / "metrics.csv")
    regions = ("whole_tumor", "tumor_core", "enhancing_tumor")
    assert {f"val_{k}_{r}" for k in ("dice", "hd95") for r in regions} <= set(m)
    per_case = (ev / "val_hd95_whole_tumor_raw.csv").read_text().splitlines()
    assert len(per_case) == 2  # header + the one test case
    pred = tmp_path / "pred"
    run_workflow(BUNDLE, "inference.json", output_dir=str(pred), model_path=str(model), **common, **tiny())
    dl_case = next(p for p in pred.rglob("*_seg.nii.gz"))
    src = nib.load(str(root / dl_case.parent.name / dl_case.name.replace("_flair_seg", "_flair")))
    out = nib.load(str(dl_case))
    assert out.shape == src.shape and np.allclose(out.affine, src.affine, atol=1e-4)
    assert set(np.unique(np.asarray(out.dataobj))) <= {0, 1, 2, 4}  # BraTS' own label values


def test_real_brats2018_geometry(tmp_path):
    """Inference on a real BraTS 2018 test case (four sequences) writes a BraTS label volume on the case's grid,
    under the case's folder."""
    from monai_sam_adapt.data import brats_datalist
    from monai_sam_adapt.networks import SSAM
    from tests.tiny import TINY_ARCH

    root = data_path("brats2018")
    dl = brats_datalist(root)
    dl["testing"] = dl["testing"][:1]
    net = SSAM(
        "vit_b", checkpoint=None, label_names=NAMES, text_rank=4, in_channels=4, **TINY_ARCH["vit_b"]
    )  # the bundle's own text encoder (MiniLM, rank-4 Text Affine Layer)
    torch.save(net.state_dict(), tmp_path / "model.pt")
    pred = tmp_path / "pred"
    run_workflow(
        BUNDLE,
        "inference.json",
        output_dir=str(pred),
        model_path=str(tmp_path / "model.pt"),
        dataset_dir=str(root),
        datalist=dl,
        num_workers=0,
        **tiny(),
    )
    case = dl["testing"][0]["image"][0]  # <case>/<case>_flair.nii.gz
    out = nib.load(str(pred / case.replace(".nii.gz", "_seg.nii.gz")))
    src = nib.load(str(root / case))
    assert out.shape == src.shape and np.allclose(out.affine, src.affine, atol=1e-4)
    assert set(np.unique(np.asarray(out.dataobj))) <= {0, 1, 2, 4}


@pytest.mark.integration
def test_committed_adapter_segments_real_brats_slices(tmp_path):
    """The committed models/model.pt (four sequences, three regions by name through the real MiniLM) loads onto the
    real LiteMedSAM through evaluate.json and segments the whole tumour of a real BraTS 2018 test case well above
    chance: the case cut to the 6 axial slices where its tumour is largest (one encoder pass per slice on CPU)."""
    from monai_sam_adapt.data import brats_datalist

    root = data_path("brats2018")
    entry = brats_datalist(root)["testing"][0]
    seg = nib.load(str(root / entry["label"]))
    area = (np.asarray(seg.dataobj) > 0).sum(axis=(0, 1))
    z0 = int(np.argmax(area)) - 3
    case = tmp_path / "data" / entry["case"]
    case.mkdir(parents=True)
    for rel in [*entry["image"], entry["label"]]:
        img = nib.load(str(root / rel))
        nib.save(img.slicer[:, :, z0 : z0 + 6], case / Path(rel).name)
    ev = tmp_path / "eval"
    data = dict(dataset_dir=str(tmp_path / "data"), datalist={"testing": [entry]}, num_workers=0)
    run_workflow(BUNDLE, "evaluate.json", output_dir=str(ev), **data)
    m = read_metrics(ev / "metrics.csv")
    assert m["val_dice_whole_tumor"] > 0.75, m
    assert {"val_dice_tumor_core", "val_dice_enhancing_tumor", "val_hd95_whole_tumor"} <= set(m)
