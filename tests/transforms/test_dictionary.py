from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd

from monai_sam_adapt.errors import InputError
from monai_sam_adapt.transforms import (
    BoxFromLabeld,
    CheckImageLabeld,
    CTWindowd,
    EnsureThreeChannelsd,
    LoadMedicalImaged,
    RandSliced,
    SAMPreprocessd,
    SAMResizeLongestd,
    SelectLabelsd,
)
from tests.conftest import write_png


def test_dictionary_aliases():
    from monai_sam_adapt import transforms as T

    for name in (
        "CTWindow",
        "EnsureThreeChannels",
        "SelectLabels",
        "BoxFromLabel",
        "SAMResizeLongest",
        "SAMPreprocess",
        "LoadMedicalImage",
        "CheckImageLabel",
        "RandSlice",
    ):
        assert getattr(T, name + "D") is getattr(T, name + "Dict") is getattr(T, name + "d")


def test_simple_dict_transforms_and_missing_keys():
    d = {"image": np.full((1, 2, 2), 30.0, np.float32), "label": np.array([[[0, 2], [1, 0]]], np.float32)}
    out = Compose(
        [
            CTWindowd("image", "liver"),
            EnsureThreeChannelsd("image"),
            SelectLabelsd("label", classes={"a": [1, 2]}),
            BoxFromLabeld("label"),
        ]
    )(d)
    assert out["image"].shape == (3, 2, 2) and float(out["image"].max()) == 0.5
    np.testing.assert_array_equal(np.asarray(out["box"]), [[0, 0, 1, 1]])
    with pytest.raises(KeyError):
        CTWindowd("ct", "liver")(d)
    assert "ct" not in CTWindowd("ct", "liver", allow_missing_keys=True)(d)


def test_sam_preprocessd_invertd_restores_input_grid():
    img = MetaTensor(torch.rand(3, 120, 80))
    lab = torch.zeros(1, 120, 80)
    lab[0, 30:90, 20:50] = 1
    pre = Compose([SAMPreprocessd("image", label_keys="label", backbone="lite_medsam")])
    d = pre({"image": img, "label": MetaTensor(lab)})
    assert d["image"].shape == (3, 256, 256) and d["label"].shape == (1, 256, 256)
    d["pred"] = d["label"].clone() * 10 - 5  # logits at SAM resolution
    d = Invertd("pred", transform=pre, orig_keys="image", nearest_interp=False)(d)
    assert d["pred"].shape == (1, 120, 80)
    torch.testing.assert_close((d["pred"] > 0).float().as_tensor(), lab)


def test_sam_preprocessd_illegal():
    with pytest.raises(ValueError, match="both an image and a label"):
        SAMPreprocessd(["image"], label_keys=["image"])
    with pytest.raises(InputError, match="my_image.png"):
        SAMResizeLongestd("image", 64)(
            {"image": MetaTensor(torch.zeros(1, 4, 4, 4), meta={"filename_or_obj": "my_image.png"})}
        )


def test_load_medical_image_2d_orientation_and_errors(tmp_path):
    a = np.zeros((20, 30, 3), np.uint8)
    a[2, 25] = 255  # row 2, column 25
    p = write_png(tmp_path / "x.png", a)
    img = LoadMedicalImaged("image")({"image": str(p)})["image"]
    assert img.shape == (3, 20, 30) and float(img[0, 2, 25]) == 255  # rows first, as seen
    with pytest.raises(InputError, match=r"image file '.*nope.png' does not exist"):
        LoadMedicalImaged("image")({"image": str(tmp_path / "nope.png")})
    bad = tmp_path / "broken.png"
    bad.write_bytes(p.read_bytes()[:40])
    with pytest.raises(InputError, match="broken.png"):
        LoadMedicalImaged("image")({"image": str(bad)})
    empty = tmp_path / "series"
    empty.mkdir()
    with pytest.raises(InputError, match="series.*empty"):
        LoadMedicalImaged("image")({"image": str(empty)})


def test_load_dicom_series_names_the_corrupt_slice(tmp_path):
    import pydicom
    from pydicom.data import get_testdata_file

    src = get_testdata_file("CT_small.dcm")
    series = tmp_path / "series"
    series.mkdir()
    for i in range(3):
        ds = pydicom.dcmread(src)
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [0.0, 0.0, float(i)]
        ds.SOPInstanceUID = f"1.2.3.{i}"
        ds.save_as(series / f"{i:02d}.dcm")
    vol = LoadMedicalImaged("image")({"image": str(series)})["image"]
    assert vol.shape == (1, 128, 128, 3)
    raw = (series / "01.dcm").read_bytes()
    (series / "01.dcm").write_bytes(raw[: len(raw) // 2])  # truncated pixel data
    with pytest.raises(InputError, match=r"series.*01\.dcm"):
        LoadMedicalImaged("image")({"image": str(series)})


def test_check_image_label(tmp_path):
    ok = {"image": MetaTensor(torch.zeros(1, 4, 5, 6)), "label": MetaTensor(torch.zeros(1, 4, 5, 6))}
    CheckImageLabeld()(ok)
    with pytest.raises(InputError, match="not on the same grid"):
        CheckImageLabeld()(
            {
                "image": MetaTensor(torch.zeros(3, 4, 5), meta={"filename_or_obj": "img.png"}),
                "label": MetaTensor(torch.zeros(1, 5, 4), meta={"filename_or_obj": "lab.png"}),
            }
        )
    shifted = MetaTensor(torch.zeros(1, 4, 5, 6), affine=torch.diag(torch.tensor([2.0, 1, 1, 1])))
    with pytest.raises(InputError, match="different affines"):
        CheckImageLabeld()({"image": ok["image"], "label": shifted})
    CheckImageLabeld()({"image": ok["image"]})  # no label: nothing to check (inference)


def test_rand_sliced_foreground_aware():
    vol = torch.zeros(1, 16, 12, 10)
    lab = torch.zeros(1, 16, 12, 10)
    lab[0, 4:8, 4:8, 7] = 1  # foreground on slice 7 only
    t = RandSliced(["image", "label"], "label", axis=2, num_samples=6, pos=1, neg=0)
    t.compose.set_random_state(0)
    out = t({"image": MetaTensor(vol), "label": MetaTensor(lab)})
    assert len(out) == 6
    for o in out:
        assert o["image"].shape == (1, 16, 12) and float(o["label"].sum()) == 16
    out0 = RandSliced(["image", "label"], axis=0, num_samples=2)({"image": vol, "label": lab})
    assert out0[0]["image"].shape == (1, 12, 10)
    with pytest.raises(ValueError, match="axis"):
        RandSliced(["image"], axis=3)


def test_nonfinite_voxels_are_refused_with_their_count(tmp_path):
    """One NaN used to spread through min-max/percentile normalisation and blank the whole result, silently."""
    import nibabel as nib

    from monai_sam_adapt.transforms import LoadMedicalImage

    vol = np.random.default_rng(0).random((8, 8, 4)).astype(np.float32)
    vol[1, 1, 1], vol[2, 2, 2] = np.nan, np.inf
    path = tmp_path / "ct_with_nan.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.eye(4)), path)
    with pytest.raises(InputError, match=r"ct_with_nan\.nii\.gz' has 2 non-finite voxels"):
        LoadMedicalImaged("image")({"image": str(path)})
    with pytest.warns(UserWarning, match="2 non-finite voxels replaced by 0"):
        fixed = LoadMedicalImage(nonfinite="zero")(str(path))
    assert bool(torch.isfinite(fixed).all()) and float(fixed[0, 1, 1, 1]) == 0.0


@pytest.mark.parametrize("values", [(0, 1), (0, 255)])
def test_binary_masks_on_either_scale_are_foreground(tmp_path, values):
    mask = np.zeros((6, 6), np.uint8)
    mask[2:4, 2:4] = values[1]
    write_png(tmp_path / "m.png", mask)
    out = Compose([LoadMedicalImaged("label"), SelectLabelsd("label", threshold=127)])(
        {"label": str(tmp_path / "m.png")}
    )
    assert float(out["label"].sum()) == 4  # a 0/1 mask was thresholded at 127 into an empty label


def test_a_mask_of_label_values_is_refused_not_emptied(tmp_path):
    mask = np.zeros((6, 6), np.uint8)
    mask[1:3, 1:3], mask[3:5, 3:5] = 1, 2
    write_png(tmp_path / "classes.png", mask)
    load = Compose([LoadMedicalImaged("label"), SelectLabelsd("label", threshold=127)])
    with pytest.raises(Exception) as e:
        load({"label": str(tmp_path / "classes.png")})
    msg = str(e.value) + str(e.value.__cause__)
    assert "classes.png" in msg and "not a 0/255 mask" in msg


def _ct_series(folder, z=(0.0, 1.0, 2.0)):
    """A DICOM series made of pydicom's CT_small at the given slice positions (one series, new instance UIDs)."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series = generate_uid()
    for i, zi in enumerate(z):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.SeriesInstanceUID, ds.SOPInstanceUID = series, generate_uid()
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, zi]
        ds.InstanceNumber = i + 1
        ds.save_as(folder / f"{i:02d}.dcm")
    return folder


def test_dicom_folders_that_would_load_wrong_are_refused(tmp_path):
    """A stray or empty file used to be skipped (3 slices at 1 mm came back as 2 at 2 mm), a DICOM SEG given as the
    CT was segmented as if it were an image, a missing slice went unnoticed."""
    good = _ct_series(tmp_path / "good")
    assert LoadMedicalImaged("image")({"image": str(good)})["image"].shape[-1] == 3

    stray = _ct_series(tmp_path / "stray")
    (stray / "01.dcm").write_bytes(b"")
    with pytest.raises(InputError, match=r"stray'.*01\.dcm' is not a DICOM file"):
        LoadMedicalImaged("image")({"image": str(stray)})

    seg = _ct_series(tmp_path / "seg", z=(0.0, 1.0))
    import pydicom

    ds = pydicom.dcmread(seg / "01.dcm")
    ds.Modality = "SEG"
    ds.save_as(seg / "01.dcm")
    with pytest.raises(InputError, match=r"01\.dcm' is a DICOM SEG without an image"):
        LoadMedicalImaged("image")({"image": str(seg)})
    with pytest.raises(InputError, match="is a DICOM SEG"):
        LoadMedicalImaged("image")({"image": str(seg / "01.dcm")})

    gap = _ct_series(tmp_path / "gap", z=(0.0, 1.0, 3.0))
    with pytest.raises(InputError, match=r"gap'.*not evenly spaced.*\[1\.0, 2\.0\]"):
        LoadMedicalImaged("image")({"image": str(gap)})


def test_named_channels_come_one_file_each_or_all_in_one(tmp_path):
    """BraTS' four sequences: four 1-channel files (the datalist's form) or one 4-channel file in that order (MONAI
    Label's); one file with another count, or another number of files, is refused naming the channels."""
    import nibabel as nib

    names = ["flair", "t1", "t1ce", "t2"]
    vol = np.random.default_rng(0).normal(size=(8, 7, 3)).astype(np.float32)
    files = []
    for i, n in enumerate(names):
        nib.save(nib.Nifti1Image(vol + i, np.eye(4)), tmp_path / f"{n}.nii.gz")
        files.append(str(tmp_path / f"{n}.nii.gz"))
    nib.save(nib.Nifti1Image(np.stack([vol + i for i in range(4)], -1), np.eye(4)), tmp_path / "all.nii.gz")
    load = LoadMedicalImaged("image", channels={"image": 1}, channel_names={"image": names}, spatial_dims=3)
    separate = load({"image": files})["image"]
    together = load({"image": str(tmp_path / "all.nii.gz")})["image"]
    assert separate.shape == together.shape == (4, 8, 7, 3)
    np.testing.assert_allclose(separate.numpy(), together.numpy())
    with pytest.raises(InputError, match=r"flair\.nii\.gz.*one file with 1 channel\(s\); this bundle reads the 4 "):
        load({"image": files[0]})
    with pytest.raises(InputError, match="is 2 files; this bundle reads the 4 channels flair, t1, t1ce, t2"):
        load({"image": files[:2]})
    with pytest.raises(ValueError, match="channel_names names keys"):
        LoadMedicalImaged("image", channel_names={"label": names})
