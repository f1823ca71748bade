"""The whole loop on loopback: Orthanc (DICOMweb) -> MONAI Label (our app) -> inference -> DICOM SEG back in Orthanc.

Servers run for real (``monailabel start_server`` with our app and ``Orthanc``) in a network namespace with only
loopback; the served model is the ssam_lits bundle on a tiny untrained SAM (plumbing, not accuracy), the interactive
model is the real LiteMedSAM.
"""

from __future__ import annotations

import concurrent.futures
import shutil
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from monai_sam_adapt.dicom_seg import label_frames, read_dicom_series
from monai_sam_adapt.serving.demo import start_label_server, upload_instances
from monai_sam_adapt.transforms import LoadMedicalImaged
from tests.bundles.test_ssam_lits import synthetic_lits
from tests.conftest import data_path
from tests.serving.helpers import oblique_volume

pytestmark = [pytest.mark.slow]


def upload(orthanc: str, files) -> str:
    """Store one series in Orthanc; its SeriesInstanceUID."""
    (uid,) = upload_instances(orthanc, files)
    return uid


def load(path):
    return LoadMedicalImaged("x")({"x": str(path)})["x"]


@pytest.fixture(scope="module")
def dicom_server(orthanc, served_bundles, tmp_path_factory):
    from monailabel.client import MONAILabelClient

    ct_small = get_testdata_file("CT_small.dcm")
    series = {"ct_small": (upload(orthanc, [ct_small]), Path(ct_small))}
    liver = data_path("ct_liver_dicom", "ct-3slice")
    if liver.is_dir():
        series["liver"] = (upload(orthanc, sorted(liver.iterdir())), liver)
    tmp = tmp_path_factory.mktemp("label-dicom")
    proc, url = start_label_server(f"{orthanc}/dicom-web", tmp, bundles=served_bundles)
    yield MONAILabelClient(url, tmpdir=str(tmp / "client")), url, series, proc, tmp / "server.log"
    proc.terminate()
    proc.wait(30)


def test_info_lists_trained_bundles_and_interactive(dicom_server):
    client, *_ = dicom_server
    info = client.info()
    assert info["models"]["ct_tiny"]["type"] == "segmentation"
    assert info["models"]["ct_tiny"]["labels"] == {"liver": 1, "tumor": 2}
    assert info["models"]["sam_interactive"]["type"] == "deepgrow"
    assert set(info["models"]) == {"ct_tiny", "sam_interactive"}  # nothing from the model zoo, no SAM2
    assert "ct_tiny" in info["trainers"]


def test_datastore_lists_orthanc_series(dicom_server):
    client, _, series, *_ = dicom_server
    objects = client.datastore()["objects"]
    assert {uid for uid, _ in series.values()} <= set(objects)


def test_automatic_label_has_the_dicom_series_geometry(dicom_server):
    client, _, series, *_ = dicom_server
    uid, src = series["ct_small"]
    label_file, params = client.infer("ct_tiny", uid, {})
    assert params["label_names"] == {"liver": 1, "tumor": 2}
    label, image = nib.load(label_file), load(src)
    # MONAI Label converts a single-file series to a 2D NIfTI: compare the in-plane grid (and the slice position)
    shape = tuple(image.shape[1:])
    assert label.shape == (shape if len(label.shape) == 3 else shape[:2])
    cols = [0, 1, 2, 3] if len(label.shape) == 3 else [0, 1, 3]
    np.testing.assert_allclose(label.affine[:3, cols], image.affine.numpy()[:3, cols], atol=1e-3)
    assert set(np.unique(label.get_fdata())) <= {0, 1, 2}


def test_interactive_box_then_refinement_on_the_clicked_slice(dicom_server):
    client, _, series, *_ = dicom_server
    uid, src = series.get("liver", series["ct_small"])
    image = load(src)
    x, y, z = image.shape[1:]
    k = z // 2
    out, params = client.infer(
        "sam_interactive", uid, {"box": [x // 4, y // 4, 3 * x // 4, 3 * y // 4, k], "ct_window": "abdomen"}
    )
    first = nib.load(out).get_fdata()
    assert first.shape[:3] == (x, y, z) and params["slices"] == [k]
    assert first[..., k].any() and not np.delete(first, k, axis=2).any()
    # refine: the automatic mask as a mask prompt plus a background click; other slices come back unchanged
    seed = np.zeros((x, y, z), np.uint8)
    seed[..., k] = first[..., k]
    if z > 1:
        seed[x // 3 : x // 2, y // 3 : y // 2, (k + 1) % z] = 1
    ref = nib.Nifti1Image(seed, nib.load(out).affine)
    nib.save(ref, Path(out).with_name("seed.nii.gz"))
    out2, params2 = client.infer(
        "sam_interactive",
        uid,
        {"foreground": [[x // 2, y // 2, k]], "background": [[2, 2, k]], "ct_window": "abdomen"},
        label_in=str(Path(out).with_name("seed.nii.gz")),
    )
    second = nib.load(out2).get_fdata()
    assert params2["slices"] == [k]
    assert params2["reused_slices"] == 1 and params2["encoded_slices"] == 0  # the slice's embedding was kept
    _, params3 = client.infer("sam_interactive", uid, {"foreground": [[x // 2, y // 2, k]], "ct_window": "lung"})
    assert params3["encoded_slices"] == 1  # another window: another encoder input, never the stale embedding
    np.testing.assert_array_equal(np.delete(second, k, axis=2), np.delete(seed, k, axis=2))
    assert second[..., k].any()


def _seg_from_orthanc(orthanc: str, image_uid: str):
    import highdicom as hd
    from dicomweb_client import DICOMwebClient

    dw = DICOMwebClient(f"{orthanc}/dicom-web")
    for s in dw.search_for_series(search_filters={"Modality": "SEG"}):
        ds = pydicom.Dataset.from_json(s)
        inst = dw.retrieve_series(ds.StudyInstanceUID, ds.SeriesInstanceUID)
        seg = hd.seg.Segmentation.from_dataset(inst[0])
        if seg.ReferencedSeriesSequence[0].SeriesInstanceUID == image_uid:
            return seg
    return None


def test_saved_label_lands_in_orthanc_as_dicom_seg_voxel_for_voxel(dicom_server, orthanc):
    client, _, series, *_ = dicom_server
    uid, src = series.get("liver", series["ct_small"])
    image = load(src)
    x, y, z = image.shape[1:]
    label = np.zeros((x, y, z), np.uint8)
    label[x // 5 : x // 2, y // 4 : 3 * y // 4, :] = 1
    label[x // 2 : 4 * x // 5, y // 3 : y // 2, z // 2] = 2
    path = Path(client._tmpdir) / "final.nii.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    # on the image's own grid as MONAI Label serves it (its NIfTI), as a viewer would save it
    served, _ = client.infer("ct_tiny", uid, {})
    nib.save(nib.Nifti1Image(label, nib.load(served).affine), path)
    res = client.save_label(uid, str(path), tag="final", params={"label_names": {"liver": 1, "tumor": 2}})
    assert res["image"] == uid
    seg = _seg_from_orthanc(orthanc, uid)
    assert seg is not None, "no DICOM SEG referencing the series in Orthanc"
    names = {d.segment_number: d.segment_label for d in seg.SegmentSequence}
    assert set(names.values()) == {"liver", "tumor"}
    datasets = read_dicom_series(src)
    expected = label_frames(load(path), datasets)
    got = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[d.SOPInstanceUID for d in datasets], combine_segments=True, relabel=False
    )
    value = {n: v for v, n in ((1, "liver"), (2, "tumor"))}
    lut = np.zeros(max(names) + 1, np.uint8)
    for number, name in names.items():
        lut[number] = value[name]
    np.testing.assert_array_equal(lut[got], expected)
    assert expected.any()


def overlay_pixels(png) -> int:
    """Pixels of OHIF's default first-segment colour (red) in a screenshot."""
    from PIL import Image

    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return int(((rgb[..., 0] > 150) & (rgb[..., 1] < 130) & (rgb[..., 0] - rgb[..., 2] > 40)).sum())


def test_ohif_shows_the_study_with_our_segmentation(dicom_server, orthanc, tmp_path):
    pytest.importorskip("playwright", reason="playwright is not installed (pip install -e .[test])")
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("Chromium is not installed: apt-get install chromium (.ci/run installs it)")
    from monai_sam_adapt.serving.demo import screenshot_study

    client, url, series, *_ = dicom_server
    uid, src = series.get("liver", series["ct_small"])
    if _seg_from_orthanc(orthanc, uid) is None:
        test_saved_label_lands_in_orthanc_as_dicom_seg_voxel_for_voxel(dicom_server, orthanc)
    study = str(
        pydicom.dcmread(
            next(p for p in sorted(Path(src).glob("*")) if p.is_file()) if Path(src).is_dir() else src,
            stop_before_pixels=True,
        ).StudyInstanceUID
    )
    plain, seg = screenshot_study(url, study, tmp_path / "ohif.png")
    assert overlay_pixels(plain) < 200  # the CT alone is grey
    assert overlay_pixels(seg) > 2000, "no segmentation overlay in OHIF"


def test_sequential_and_concurrent_requests_with_stable_memory(dicom_server):
    import psutil

    client, url, series, proc, _ = dicom_server
    uid, _ = series["ct_small"]
    server = psutil.Process(proc.pid)
    for _ in range(5):
        client.infer("ct_tiny", uid, {})
    before = server.memory_info().rss
    for _ in range(15):
        label, _ = client.infer("ct_tiny", uid, {})
        assert Path(label).exists()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(
            pool.map(
                lambda _: httpx.post(
                    f"{url}/infer/ct_tiny", params={"image": uid, "output": "json"}, data={"params": "{}"}, timeout=300
                ),
                range(4),
            )
        )
    assert [r.status_code for r in results] == [200] * 4
    growth = (server.memory_info().rss - before) / 2**20
    assert growth < 150, f"server memory grew {growth:.0f} MiB over 19 requests"


def test_bad_requests_get_4xx_and_the_server_keeps_serving(dicom_server, tmp_path):
    _, url, series, *_ = dicom_server
    uid, _ = series["ct_small"]
    r = httpx.post(f"{url}/infer/no_such_model", params={"image": uid}, data={"params": "{}"}, timeout=60)
    assert r.status_code == 404 and "no_such_model" in r.json()["detail"]
    r = httpx.post(f"{url}/infer/ct_tiny", params={"image": "1.2.3.4.5"}, data={"params": "{}"}, timeout=60)
    assert r.status_code == 404 and "1.2.3.4.5" in r.json()["detail"]
    bad = tmp_path / "corrupt.nii.gz"
    bad.write_bytes(b"\x1f\x8b not really a gzip")
    with open(bad, "rb") as f:
        r = httpx.post(f"{url}/infer/ct_tiny", data={"params": "{}"}, files={"file": ("corrupt.nii.gz", f)}, timeout=60)
    assert 400 <= r.status_code < 500 and "cannot read" in r.json()["detail"]
    wrong = tmp_path / "wrong.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((7, 5, 3), np.uint8), np.eye(4)), wrong)
    with open(wrong, "rb") as f:
        r = httpx.put(
            f"{url}/datastore/label",
            params={"image": uid, "tag": "final"},
            data={"params": "{}"},
            files={"label": ("wrong.nii.gz", f)},
            timeout=60,
        )
    assert r.status_code == 400 and "shape" in r.json()["detail"]
    assert httpx.get(f"{url}/info/", timeout=30).status_code == 200


@pytest.fixture(scope="module")
def nifti_server(loopback_netns, served_bundles, tmp_path_factory):
    from monailabel.client import MONAILabelClient

    tmp = tmp_path_factory.mktemp("label-nifti")
    oblique_volume(tmp / "studies" / "case7.nii.gz")
    lits = synthetic_lits(tmp / "lits", np.random.default_rng(1), n=3)
    for i in range(1, 4):
        shutil.copy(lits / f"volume-{i}.nii.gz", tmp / "studies" / f"volume-{i}.nii.gz")
    proc, url = start_label_server(str(tmp / "studies"), tmp, bundles=served_bundles)
    client = MONAILabelClient(url, tmpdir=str(tmp / "client"))
    for i in range(1, 4):
        client.save_label(f"volume-{i}", str(lits / f"segmentation-{i}.nii.gz"), tag="final")
    client.app_dir = tmp / "app"
    yield client, tmp / "studies" / "case7.nii.gz"
    proc.terminate()
    proc.wait(30)


def test_nifti_label_has_the_input_geometry(nifti_server):
    client, volume = nifti_server
    assert "case7" in client.datastore()["objects"]
    label_file, _ = client.infer("ct_tiny", "case7", {})
    src, out = nib.load(volume), nib.load(label_file)
    assert out.shape == src.shape
    np.testing.assert_allclose(out.affine, src.affine, atol=1e-4)
    assert nib.aff2axcodes(out.affine) == nib.aff2axcodes(src.affine)


def test_training_through_monai_label_uses_the_bundle_train_json(nifti_server):
    client, _ = nifti_server
    url = client.get_server_url()
    r = httpx.post(
        f"{url}/train/ct_tiny",
        params={"run_sync": "true"},
        json={"max_epochs": 1, "batch_size": 1, "val_interval": 1},
        timeout=600,
    )
    assert r.status_code == 200, r.text
    trained = client.app_dir / "model" / "ct_tiny" / "model.pt"
    assert trained.is_file(), r.text
    # the served model now runs the weights MONAI Label trained
    label_file, _ = client.infer("ct_tiny", "volume-1", {})
    assert nib.load(label_file).shape == nib.load(client.app_dir.parent / "studies" / "volume-1.nii.gz").shape
