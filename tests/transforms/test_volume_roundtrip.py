"""load -> orient -> SAM geometry -> slice -> identity network -> restore -> write, for NIfTI and DICOM volumes."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.inferers import SliceInferer
from monai.transforms import Compose, Invertd, Orientationd, SaveImaged, ScaleIntensityRangePercentilesd

from monai_sam_adapt.io import AtomicNibabelWriter
from monai_sam_adapt.transforms import CheckImageLabeld, CTWindowd, LoadMedicalImaged, SAMPreprocessd, SelectLabelsd
from tests.conftest import data_path


def roundtrip(image, label, out_dir, backbone="lite_medsam", intensity=None, classes=None):
    keys = ["image", "label"]
    pre = Compose(
        [
            LoadMedicalImaged(keys),
            Orientationd(keys, axcodes="PLS"),  # slices as a radiologist sees them (DICOM rows/columns)
            CheckImageLabeld(keys),
            SelectLabelsd("label", classes=classes),
            *(intensity or []),
            SAMPreprocessd("image", label_keys="label", backbone=backbone, slice_axis=2),
        ]
    )
    d = pre({"image": image, "label": label})
    size = d["image"].shape[1]
    inferer = SliceInferer(roi_size=(size, size), spatial_dim=2, sw_batch_size=4, progress=False)
    seen = []

    def identity(x):  # the network sees 2D slices at SAM's input size
        seen.append(tuple(x.shape))
        return x

    with torch.no_grad():
        d["pred"] = inferer(d["label"][None].float(), identity)[0]
        d["pred_image"] = inferer(d["image"][None], identity)[0][:1]
    assert all(s[-2:] == (size, size) for s in seen)
    # the label trace recorded "nearest-exact"; nearest_interp=True would force torch's "nearest" (off by one pixel)
    d = Invertd("pred", transform=pre, orig_keys="label", nearest_interp=False)(d)
    d = Invertd("pred_image", transform=pre, orig_keys="image", nearest_interp=False)(d)
    for k in ("pred", "pred_image"):
        SaveImaged(
            k,
            output_dir=str(out_dir),
            output_postfix=k,
            separate_folder=False,
            resample=False,
            writer=AtomicNibabelWriter,
            print_log=False,
        )(d)
    return d


def check_same_geometry(written, reference_affine, reference_shape):
    img = nib.load(str(written))
    assert img.shape == tuple(reference_shape)
    np.testing.assert_allclose(img.affine, reference_affine, atol=1e-4)
    assert nib.aff2axcodes(img.affine) == nib.aff2axcodes(reference_affine)
    np.testing.assert_allclose(img.header.get_zooms()[:3], np.sqrt((reference_affine[:3, :3] ** 2).sum(0)), atol=1e-4)
    return np.asarray(img.dataobj)


def test_synthetic_nifti_roundtrip_exact(tmp_path):
    rng = np.random.default_rng(0)
    affine = np.array([[0, 0, 2.5, -30], [-0.8, 0, 0, 90], [0, 0.9, 0, -50], [0, 0, 0, 1.0]])  # oblique axes order
    vol = rng.normal(size=(40, 50, 6)).astype(np.float32)
    lab = np.zeros((40, 50, 6), np.uint8)
    lab[10:25, 5:40, 1:4] = 1
    lab[3, 3, 5] = 1
    nib.save(nib.Nifti1Image(vol, affine), tmp_path / "img.nii.gz")
    nib.save(nib.Nifti1Image(lab, affine), tmp_path / "lab.nii.gz")
    roundtrip(str(tmp_path / "img.nii.gz"), str(tmp_path / "lab.nii.gz"), tmp_path / "out")
    out = check_same_geometry(tmp_path / "out" / "lab_pred.nii.gz", affine, lab.shape)
    np.testing.assert_array_equal(out.astype(np.uint8), lab)
    check_same_geometry(tmp_path / "out" / "img_pred_image.nii.gz", affine, vol.shape)


@pytest.mark.integration
def test_brats_nifti_roundtrip_exact(tmp_path):
    name = "Brats18_TCIA02_370_1"
    case = data_path("brats2018", name)
    image, label = str(case / f"{name}_flair.nii.gz"), str(case / f"{name}_seg.nii.gz")
    intensity = [ScaleIntensityRangePercentilesd("image", lower=0.5, upper=99.5, b_min=0, b_max=1, clip=True)]
    roundtrip(image, label, tmp_path, intensity=intensity, classes={"tumor": [1, 2, 4]})
    ref = nib.load(label)
    out = check_same_geometry(tmp_path / f"{name}_seg_pred.nii.gz", ref.affine, ref.shape)
    np.testing.assert_array_equal(out > 0, np.asarray(ref.dataobj) > 0)


@pytest.mark.integration
@pytest.mark.parametrize("backbone", ["vit_b", "lite_medsam"])
def test_dicom_series_roundtrip(tmp_path, backbone):
    root = data_path("ct_liver_dicom")
    series = str(root / "ct-3slice")
    loaded = LoadMedicalImaged("image")({"image": series})["image"]  # the DICOM geometry as read
    d = roundtrip(
        series, str(root / "liver_seg.nrrd"), tmp_path, backbone=backbone, intensity=[CTWindowd("image", "abdomen")]
    )
    check_same_geometry(tmp_path / "ct-3slice_pred_image.nii.gz", loaded.affine.numpy(), loaded.shape[1:])
    ref = LoadMedicalImaged("label")({"label": str(root / "liver_seg.nrrd")})["label"][0].numpy() > 0
    out = check_same_geometry(tmp_path / "liver_seg_pred.nii.gz", d["pred"].affine.numpy(), ref.shape) > 0
    if backbone == "vit_b":  # SAM's 1024 up-samples the 512 slices: the label comes back voxel for voxel
        np.testing.assert_array_equal(out, ref)
    else:  # LiteMedSAM's 256 halves them: geometry is exact, the label only as good as 256 px allows
        dice = 2 * (out & ref).sum() / (out.sum() + ref.sum())
        assert dice > 0.97, dice


@pytest.mark.integration
def test_pydicom_ct_small_loads_with_geometry():
    from pydicom.data import get_testdata_file

    img = LoadMedicalImaged("image")({"image": get_testdata_file("CT_small.dcm")})["image"]
    assert img.shape == (1, 128, 128)
    assert float(img.min()) < -500 and float(img.max()) > 500  # rescaled to HU
    assert isinstance(img, MetaTensor) and img.affine.shape == (4, 4)
