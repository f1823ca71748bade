"""ssam_brats: multi-label MR (FLAIR + T1c channels), per-label Dice, label maps on the input grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import torch

from tests.bundles.helpers import read_metrics, run_workflow, tiny_network_override
from tests.bundles.test_ssam_lits import oblique_affine
from tests.conftest import data_path

BUNDLE = "ssam_brats"
NAMES = ["necrosis", "edema", "non-enhancing tumor", "enhancing tumor"]


def tiny(**extra):
    return tiny_network_override("monai_sam_adapt.networks.SSAM", label_names=NAMES, method="svd", **extra)


def synthetic_brats(root, rng):
    """BRATS folders ``{train,validation,test}/<case>/`` with z-scored FLAIR, T1c and nested tumour labels 1-4."""
    shape = (32, 30, 5)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    r = np.sqrt(z**2 + y**2)
    lab = np.select([r < 0.15, r < 0.3, r < 0.45, r < 0.7], [1, 4, 3, 2], 0).astype(np.uint8)
    for split, n in (("train", 2), ("validation", 1), ("test", 1)):
        for i in range(n):
            case = root / split / f"case{split}{i}"
            case.mkdir(parents=True)
            aff = oblique_affine(rng, (1.0, 1.0, 1.0))
            for mod, gain in (("Flair", 1.5), ("T1c", -0.5)):
                img = rng.normal(0, 0.3, shape) + gain * (lab > 0) + 0.3 * lab
                nib.save(nib.Nifti1Image(img.astype(np.float32), aff), case / f"{mod}_subtrMeanDivStd.nii.gz")
            nib.save(nib.Nifti1Image(lab, aff), case / "OTMultiClass.nii.gz")
    return root


def test_train_evaluate_infer_synthetic(tmp_path, rng):
    root = synthetic_brats(tmp_path / "brats", rng)
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
    assert torch.load(model, weights_only=True)["_extra_state"]["labels"] == NAMES
    ev = tmp_path / "eval"
    run_workflow(BUNDLE, "evaluate.json", output_dir=str(ev), model_path=str(model), **common, **tiny())
    m = read_metrics(ev / "metrics.csv")
    assert {"val_dice_necrosis", "val_dice_edema", "val_dice_non_enhancing_tumor", "val_dice_enhancing_tumor"} <= set(m)
    pred = tmp_path / "pred"
    run_workflow(BUNDLE, "inference.json", output_dir=str(pred), model_path=str(model), **common, **tiny())
    case = next((root / "test").glob("*/Flair*")).relative_to(root)
    src = nib.load(str(root / case))
    out = nib.load(str(pred / str(case).replace(".nii.gz", "_seg.nii.gz")))
    assert out.shape == src.shape and np.allclose(out.affine, src.affine, atol=1e-4)
    assert set(np.unique(np.asarray(out.dataobj))) <= {0, 1, 2, 3, 4}


def test_real_brats_geometry(tmp_path):
    """Inference on a real BRATS test case writes a label volume on the case's own grid, under the case's folder
    (every BRATS case names its files alike)."""
    from monai_sam_adapt.data import brats_datalist
    from monai_sam_adapt.networks import SSAM
    from tests.tiny import TINY_ARCH

    root = data_path("brats2015")
    dl = brats_datalist(root)
    dl["testing"] = dl["testing"][:1]
    torch.save(
        SSAM(
            "vit_b", checkpoint=None, label_names=NAMES, text_encoder="label_index", **TINY_ARCH["vit_b"]
        ).state_dict(),
        tmp_path / "model.pt",
    )
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
    case = dl["testing"][0]["image"][0]  # test/<case>/Flair_....nii.gz
    out = nib.load(str(pred / case.replace(".nii.gz", "_seg.nii.gz")))
    src = nib.load(str(root / case))
    assert out.shape == src.shape and np.allclose(out.affine, src.affine, atol=1e-4)
