"""The README's quick start: the boxsam_ct bundle on pydicom's CT_small.dcm, run exactly as typed, real weights."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pydicom
from pydicom.data import get_testdata_file

from monai_sam_adapt.transforms import LoadMedicalImaged
from tests.bundles.helpers import REPO

BOX = (42, 2, 84, 46)  # the bundle's default box around the vertebral body (array index order, end exclusive)


def test_quick_start_command_segments_the_vertebral_body(tmp_path):
    out = tmp_path / "quickstart"
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        "bundles/boxsam_ct/configs/inference.json",
        "--output_dir",
        str(out),
    ]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["CT_small_seg.dcm", "CT_small_seg.nii.gz"]

    ct = LoadMedicalImaged("image")({"image": get_testdata_file("CT_small.dcm")})["image"][0].numpy()
    mask = np.asarray(nib.load(out / "CT_small_seg.nii.gz").dataobj).reshape(ct.shape) > 0
    i0, j0, i1, j1 = BOX
    bone = np.zeros_like(mask)
    bone[i0:i1, j0:j1] = ct[i0:i1, j0:j1] > 200
    assert not mask[:i0].any() and not mask[i1:].any() and not mask[:, j1:].any()  # stays in the box
    assert 2 * (mask & bone).sum() / (mask.sum() + bone.sum()) > 0.6

    seg = pydicom.dcmread(out / "CT_small_seg.dcm")
    assert seg.Modality == "SEG" and seg.SegmentSequence[0].SegmentLabel == "vertebral body"
    assert (
        seg.ReferencedSeriesSequence[0].SeriesInstanceUID
        == pydicom.dcmread(get_testdata_file("CT_small.dcm")).SeriesInstanceUID
    )
    assert np.array_equal(seg.pixel_array.astype(bool), mask.T)  # SEG frames are (rows, columns)
