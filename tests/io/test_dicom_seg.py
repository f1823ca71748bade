"""DICOM SEG written from our label volumes references the source series and matches it voxel for voxel."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Orientationd

from monai_sam_adapt.dicom_seg import SaveDicomSegd, label_frames, read_dicom_series, write_dicom_seg
from monai_sam_adapt.errors import InputError
from monai_sam_adapt.transforms import LoadMedicalImaged
from tests.conftest import data_path


def read_back(path, datasets):
    import highdicom as hd

    seg = hd.seg.segread(path)
    uids = [d.SOPInstanceUID for d in datasets]
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True)
    return seg, np.asarray(frames)


def test_real_ct_liver_label_round_trip(tmp_path):
    src = data_path("ct_liver_dicom")
    keys = ["image", "label"]
    d = Compose([LoadMedicalImaged(keys), Orientationd(keys, axcodes="RAS")])(
        {"image": str(src / "ct-3slice"), "label": str(src / "liver_seg.nrrd")}
    )
    out = write_dicom_seg(d["label"], src / "ct-3slice", tmp_path / "liver_seg.dcm", ["liver"])
    datasets = read_dicom_series(src / "ct-3slice")
    seg, frames = read_back(out, datasets)
    assert seg.Modality == "SEG" and seg.SegmentSequence[0].SegmentLabel == "liver"
    assert {r.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence} == {
        x.SOPInstanceUID for x in datasets
    }
    # independent reference: in PLS orientation an axial LPS series is [row, column, slice] of each instance
    ref = Compose([LoadMedicalImaged(keys), Orientationd(keys, axcodes="PLS")])(
        {"image": str(src / "ct-3slice"), "label": str(src / "liver_seg.nrrd")}
    )
    z = [float(x.ImagePositionPatient[2]) for x in datasets]
    order = np.argsort(z)  # PLS's last axis runs inferior -> superior
    expected = np.stack([ref["label"][0, :, :, k].numpy() for k in range(len(datasets))])[np.argsort(order)]
    np.testing.assert_array_equal(
        ref["image"][0, :, :, 0].numpy(),
        datasets[int(np.argmin(z))].pixel_array * float(datasets[0].RescaleSlope) + float(datasets[0].RescaleIntercept),
    )
    assert expected.sum() > 1000 and np.array_equal(frames, (expected > 0).astype(frames.dtype))


def test_multi_label_names_values_and_errors(tmp_path):
    ds_path = pydicom.data.get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(ds_path)
    rows, cols = int(ds.Rows), int(ds.Columns)
    arr = np.zeros((rows, cols, 1), np.uint8)
    arr[10:30, 5:25] = 2
    arr[40:50, 40:60] = 4
    # a label in LPS-space voxel order (row, column, slice) with the instance's own affine
    row_dir, col_dir = np.asarray(ds.ImageOrientationPatient, float).reshape(2, 3)
    dr, dc = (float(v) for v in ds.PixelSpacing)
    aff = np.eye(4)
    aff[:3, 0], aff[:3, 1], aff[:3, 2] = col_dir * dr, row_dir * dc, np.cross(row_dir, col_dir)
    aff[:3, 3] = np.asarray(ds.ImagePositionPatient, float)
    label = MetaTensor(torch.as_tensor(arr)[None], affine=torch.as_tensor(aff), meta={"space": "LPS"})
    frames = label_frames(label, [ds])
    np.testing.assert_array_equal(frames[0], arr[..., 0])
    out = write_dicom_seg(label, ds_path, tmp_path / "seg.dcm", ["edema", "enhancing tumor"], [2, 4])
    seg, back = read_back(out, [ds])
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["edema", "enhancing tumor"]
    assert np.array_equal(back[0], np.select([arr[..., 0] == 2, arr[..., 0] == 4], [1, 2], 0))
    with pytest.raises(ValueError, match=r"label values \[4\] have no name"):
        write_dicom_seg(label, ds_path, tmp_path / "bad.dcm", ["edema"], [2])
    with pytest.raises(InputError, match="not a readable DICOM"):
        bad = tmp_path / "notdicom.dcm"
        bad.write_text("hello")
        write_dicom_seg(label, bad, tmp_path / "x.dcm", ["edema", "enhancing tumor"], [2, 4])
    # as a post-processing step named after the source
    d = SaveDicomSegd("pred", tmp_path / "out", ["edema", "enhancing tumor"], [2, 4])(
        {"pred": label, "image": MetaTensor(torch.zeros(1), meta={"filename_or_obj": ds_path})}
    )
    assert (tmp_path / "out" / "CT_small_seg.dcm").exists() and "pred" in d
