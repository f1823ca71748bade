"""The MONAI Label app's pieces in-process: bundle inference, interactive SAM, training, datastores, OHIF files."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from monai_sam_adapt.serving.app import served_bundles
from monai_sam_adapt.serving.bundle_task import BundleSegmentationTask
from monai_sam_adapt.serving.bundle_training import BundleTrainingTask
from monai_sam_adapt.serving.datastore import CheckedLocalDatastore, label_names_of
from monai_sam_adapt.serving.errors import RequestError
from monai_sam_adapt.serving.interactive import InteractiveSAMTask, click_box
from tests.bundles.helpers import REPO
from tests.bundles.test_ssam_lits import synthetic_lits
from tests.serving.helpers import oblique_volume, tiny_bundle
from tests.tiny import tiny_backbone


def dice(a, b):
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.fixture(scope="module")
def lite_sam_task():
    return InteractiveSAMTask("lite_medsam", device="cpu")


@pytest.fixture(scope="module")
def disk_png(tmp_path_factory):
    """An off-centre disk in a wide image (rows != columns catches x/y swaps)."""
    h, w = 200, 300
    r, c = np.mgrid[:h, :w]
    disk = (r - 60) ** 2 + (c - 220) ** 2 < 30**2
    img = np.full((h, w, 3), 40, np.uint8)
    img[disk] = (200, 120, 90)
    path = tmp_path_factory.mktemp("png") / "disk.png"
    Image.fromarray(img).save(path)
    return path, disk


def test_bridge_lets_pydicom_seg_import_under_pydicom3():
    from monai_sam_adapt.serving.compat import install_pydicom_bridge

    install_pydicom_bridge()
    import pydicom_seg  # noqa: F401  (MONAI Label imports it at start)
    from pydicom._storage_sopclass_uids import SegmentationStorage

    assert SegmentationStorage == "1.2.840.10008.5.1.4.1.1.66.4"


def test_ohif_files_in_subfolders_are_served_and_nothing_outside(tmp_path):
    from monai_sam_adapt.serving.server import ohif_file

    (tmp_path / "ohif" / "assets").mkdir(parents=True)
    (tmp_path / "ohif" / "index.html").write_text("index")
    (tmp_path / "ohif" / "assets" / "a.js").write_text("js")
    (tmp_path / "secret.txt").write_text("no")
    root = tmp_path / "ohif"
    assert ohif_file("assets/a.js", root).name == "a.js"
    assert ohif_file("viewer", root).name == "index.html"  # the viewer's own routes
    assert ohif_file("../secret.txt", root).name == "index.html"


@pytest.mark.slow
def test_clicks_and_boxes_on_real_litemedsam(lite_sam_task, disk_png, tmp_path):
    path, disk = disk_png
    out, _ = lite_sam_task({"image": str(path), "foreground": [[220, 60]]})  # [x, y]: column, row
    assert dice(np.array(Image.open(out)) > 0, disk) > 0.9
    out, _ = lite_sam_task({"image": str(path), "box": [185, 25, 255, 95]})
    assert dice(np.array(Image.open(out)) > 0, disk) > 0.9
    # LiteMedSAM was trained with boxes only: the same click given as a point alone finds no usable mask
    plain = InteractiveSAMTask(lite_sam_task.sam(torch.device("cpu")), device="cpu", click_box=False)
    out, _ = plain({"image": str(path), "foreground": [[220, 60]]})
    assert dice(np.array(Image.open(out)) > 0, disk) < 0.5
    # a volume: voxel indices [i, j, k]; only the clicked slice changes
    i, j = np.mgrid[:64, :48]
    d3 = (i - 40) ** 2 + (j - 12) ** 2 < 9**2
    vol = np.zeros((64, 48, 4), np.int16)
    vol[..., 2][d3] = 300
    nib.save(nib.Nifti1Image(vol, np.diag([0.7, 0.8, 3.0, 1])), tmp_path / "v.nii.gz")
    out, params = lite_sam_task({"image": str(tmp_path / "v.nii.gz"), "foreground": [[40, 12, 2]]})
    got = nib.load(out).get_fdata()
    assert params["slices"] == [2] and dice(got[..., 2] > 0, d3) > 0.9
    assert not np.delete(got, 2, axis=2).any()


def test_refinement_replaces_only_the_clicked_slices_of_that_label(tmp_path):
    task = InteractiveSAMTask(tiny_backbone("vit_b"), device="cpu")
    vol = oblique_volume(tmp_path / "v.nii.gz")
    seed = np.zeros(nib.load(vol).shape, np.uint8)
    seed[5:20, 5:20, :] = 1
    seed[25:30, 25:30, :] = 2
    nib.save(nib.Nifti1Image(seed, nib.load(vol).affine), tmp_path / "seed.nii.gz")
    out, params = task(
        {
            "image": str(vol),
            "label": str(tmp_path / "seed.nii.gz"),
            "label_value": 1,
            "foreground": [[10, 10, 3]],
            "background": [[1, 1, 3]],
        }
    )
    got = nib.load(out).get_fdata()
    assert params == {"slices": [3], "label_value": 1, "encoded_slices": 1, "reused_slices": 0}
    np.testing.assert_allclose(nib.load(out).affine, nib.load(vol).affine, atol=1e-5)
    np.testing.assert_array_equal(np.delete(got, 3, axis=2), np.delete(seed, 3, axis=2))
    np.testing.assert_array_equal(got[25:30, 25:30, 3], 2)  # another label's region is kept
    assert set(np.unique(got)) <= {0, 1, 2}


def test_interactive_requests_that_cannot_work_say_why(tmp_path):
    task = InteractiveSAMTask(tiny_backbone("vit_b"), device="cpu")
    vol = str(oblique_volume(tmp_path / "v.nii.gz"))
    with pytest.raises(RequestError, match="outside the image"):
        task({"image": vol, "foreground": [[100, 1, 1]]})
    with pytest.raises(RequestError, match="only background"):
        task({"image": vol, "foreground": [[3, 3, 1]], "background": [[4, 4, 2]]})
    with pytest.raises(RequestError, match="at least one foreground"):
        task({"image": vol})
    with pytest.raises(RequestError, match="slice 9 is outside the image"):  # the volume has 5 slices
        task({"image": vol, "box": [2, 2, 20, 20, 9]})
    with pytest.raises(RequestError, match="numbers"):
        task({"image": vol, "box": [2, 2, "x", 20, 1]})
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), tmp_path / "small.nii.gz")
    with pytest.raises(RequestError, match="image's grid"):
        task({"image": vol, "label": str(tmp_path / "small.nii.gz"), "foreground": [[3, 3, 1]]})
    with pytest.raises(RequestError) as e:
        task({"image": str(tmp_path / "missing.nii.gz"), "foreground": [[3, 3, 1]]})
    assert e.value.status == 404


def test_click_box_grows_clicks_or_spans_the_region():
    assert click_box([[10, 20]], None, 5, (100, 100)) == [5.0, 15.0, 15.0, 25.0]
    prior = torch.zeros(100, 100, dtype=torch.bool)
    prior[30:40, 50:60] = True
    assert click_box([[45, 55]], prior, 5, (100, 100)) == [30.0, 50.0, 45.0, 59.0]
    assert click_box([], None, 5, (100, 100)) is None


def test_bundle_task_keeps_geometry_and_refuses_bad_files(tmp_path):
    task = BundleSegmentationTask(tiny_bundle(tmp_path / "bundles"), device="cpu")
    assert task.info()["labels"] == {"liver": 1, "tumor": 2} and task.info()["type"] == "segmentation"
    vol = oblique_volume(tmp_path / "studies" / "v.nii.gz")
    out, params = task({"image": str(vol)})
    assert nib.load(out).shape == nib.load(vol).shape
    np.testing.assert_allclose(nib.load(out).affine, nib.load(vol).affine, atol=1e-5)
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"garbage")
    with pytest.raises(RequestError, match="cannot read") as e:
        task({"image": str(bad)})
    assert e.value.status == 400


def test_training_from_the_datastore_runs_the_bundle_train_json(tmp_path):
    bundle = tiny_bundle(tmp_path / "bundles")
    src = synthetic_lits(tmp_path / "lits", np.random.default_rng(0), n=3)
    store = CheckedLocalDatastore(str(tmp_path / "studies"), extensions=["*.nii.gz"], auto_reload=False)
    for i in range(1, 4):
        store.add_image(f"case{i}", str(src / f"volume-{i}.nii.gz"), {})
        store.save_label(f"case{i}", str(src / f"segmentation-{i}.nii.gz"), "final", {})
    task = BundleTrainingTask(bundle, ckpt_dir=tmp_path / "model" / "ct", output_dir=tmp_path / "runs")
    with pytest.raises(RequestError, match="'max_epochs' must be int, got 'many'") as e:
        task({"max_epochs": "many"}, store)
    assert e.value.status == 400
    stats = task({"max_epochs": "1", "batch_size": 1}, store)  # form fields arrive as text
    assert stats["epochs"] == 1 and stats["train_images"] == 2 and stats["val_images"] == 1
    assert (tmp_path / "model" / "ct" / "model.pt").is_file()
    served = BundleSegmentationTask(bundle, device="cpu", trained_path=tmp_path / "model" / "ct" / "model.pt")
    assert served.model_path == tmp_path / "model" / "ct" / "model.pt"


def test_datastore_refuses_corrupt_uploads_and_misfit_labels(tmp_path):
    store = CheckedLocalDatastore(str(tmp_path / "studies"), extensions=["*.nii.gz"], auto_reload=False)
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"garbage")
    with pytest.raises(RequestError, match="bad.nii.gz"):
        store.add_image("bad", str(bad), {})
    vol = oblique_volume(tmp_path / "v.nii.gz")
    store.add_image("v", str(vol), {})
    nib.save(nib.Nifti1Image(np.zeros((3, 3, 3), np.uint8), np.eye(4)), tmp_path / "l.nii.gz")
    with pytest.raises(RequestError, match="shape"):
        store.save_label("v", str(tmp_path / "l.nii.gz"), "final", {})
    with pytest.raises(RequestError) as e:
        store.save_label("nope", str(tmp_path / "l.nii.gz"), "final", {})
    assert e.value.status == 404


def test_served_bundles_are_those_with_weights(tmp_path):
    found = served_bundles(REPO / "bundles")
    assert found and all((p / "models" / "model.pt").is_file() for p in found.values())
    assert "ssam_lits" not in found  # no weights shipped
    with pytest.raises(ValueError, match="no bundle"):
        served_bundles(REPO / "bundles", "nope")
    with pytest.raises(ValueError, match="no models/model.pt"):
        served_bundles(REPO / "bundles", "ssam_lits")


def test_segment_names_come_from_the_request_or_the_served_models():
    known = {"liver": 1, "tumor": 2}
    assert label_names_of([1, 2, 5], {}, known) == ["liver", "tumor", "label 5"]
    assert label_names_of([1], {"label_info": [{"name": "spleen", "idx": 1}]}, known) == ["spleen"]
    assert label_names_of([3], {"params": {"label_names": {"kidney": 3}}}, known) == ["kidney"]


def test_a_multichannel_bundle_takes_one_image_with_all_its_channels(tmp_path):
    """ssam_brats reads BraTS' four sequences from four files; served, one 4D image carries them, and its nested
    regions are named on the BraTS label written for each (2 edema part of the whole tumour, 1 core, 4 enhancing)."""
    names = ("whole tumor", "tumor core", "enhancing tumor")
    task = BundleSegmentationTask(tiny_bundle(tmp_path / "bundles", "ssam_brats", labels=names), device="cpu")
    assert task.info()["labels"] == {"whole tumor": 2, "tumor core": 1, "enhancing tumor": 4}
    one = oblique_volume(tmp_path / "flair.nii.gz")
    with pytest.raises(
        RequestError, match=r"one file with 1 channel\(s\); this bundle reads the 4 channels flair, t1, t1ce, t2"
    ) as e:
        task({"image": str(one)})
    assert e.value.status == 400
    img = nib.load(one)
    seqs = np.stack([img.get_fdata() * g for g in (1.0, 0.5, 0.8, 1.2)], axis=-1).astype(np.float32)
    nib.save(nib.Nifti1Image(seqs, img.affine), tmp_path / "brats4.nii.gz")
    out, _ = task({"image": str(tmp_path / "brats4.nii.gz")})
    assert nib.load(out).shape == img.shape
    np.testing.assert_allclose(nib.load(out).affine, img.affine, atol=1e-5)
    assert set(np.unique(np.asarray(nib.load(out).dataobj))) <= {0, 1, 2, 4}


def test_documented_server_command_uses_this_interpreter_and_our_app(capsys):
    """`python -m monai_sam_adapt.serving` (the README's one way) runs MONAI Label with this Python, our packaged app,
    our uvicorn app and loopback unless told otherwise; the server tests start it through the same builder."""
    import sys

    from monai_sam_adapt.serving.__main__ import main
    from monai_sam_adapt.serving.demo import label_server_command
    from monai_sam_adapt.serving.launch import APP_DIR

    assert main(["--studies", "/data/images", "--conf", "models", "ssam_glas", "--dry_run", "--workers", "1"]) == 0
    cmd = capsys.readouterr().out.split()
    assert cmd[:4] == [sys.executable, "-m", "monailabel.main", "start_server"]
    assert cmd[cmd.index("--app") + 1] == str(APP_DIR)
    assert cmd[cmd.index("--uvicorn_app") + 1] == "monai_sam_adapt.serving.server:app"
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert cmd[-2:] == ["--workers", "1"]
    i = cmd.index("--conf")
    assert cmd[i : i + 3] == ["--conf", "models", "ssam_glas"]
    test_cmd = label_server_command(APP_DIR, "/s", 9000)  # what the server tests start
    assert test_cmd[:3] == [sys.executable, "-m", "monai_sam_adapt.serving"]


def test_clicks_on_the_same_slice_reuse_its_embedding_and_a_new_image_or_window_does_not(tmp_path):
    """Issue 15: the first request on a slice encodes it; later clicks there only decode. Another slice, another
    window or a changed image is another key; concurrent requests are safe."""
    from concurrent.futures import ThreadPoolExecutor

    sam = tiny_backbone("vit_b")
    task = InteractiveSAMTask(sam, device="cpu", cache_size=4)
    calls = []
    encode = sam.image_encoder.forward
    sam.image_encoder.forward = lambda x: (calls.append(x.shape[0]), encode(x))[1]
    vol = oblique_volume(tmp_path / "v.nii.gz")

    def click(z, xy=(10, 10), **extra):
        return task({"image": str(vol), "foreground": [[*xy, z]], **extra})

    click(3)
    assert len(calls) == 1
    for xy in [(12, 11), (14, 9), (8, 12)]:  # three more clicks on slice 3: decoder only
        click(3, xy)
    assert len(calls) == 1 and task._embeddings.hits == 3
    click(4)  # another slice
    assert len(calls) == 2
    click(3, ct_window="liver")  # another window: another encoder input
    assert len(calls) == 3
    data = nib.load(vol)
    nib.save(nib.Nifti1Image(np.asarray(data.dataobj) + 7, data.affine), vol)  # the image changed on disk
    click(3)
    assert len(calls) == 4
    with ThreadPoolExecutor(4) as pool:  # concurrent clicks on cached and new slices
        list(pool.map(lambda z: click(z), [3, 3, 0, 1, 3, 2]))
    assert len(task._embeddings) <= 4


def test_interactive_task_runs_its_encoder_in_the_chosen_runtime(tmp_path, monkeypatch):
    monkeypatch.setenv("MONAI_SAM_CACHE", str(tmp_path / "cache"))
    vol = oblique_volume(tmp_path / "v.nii.gz")
    request = {"image": str(vol), "foreground": [[10, 10, 3]], "box": [4, 4, 20, 20, 3]}
    import copy

    sam = tiny_backbone("vit_b")
    ref = nib.load(InteractiveSAMTask(sam, device="cpu")(request)[0]).get_fdata()
    fast = InteractiveSAMTask(copy.deepcopy(sam), device="cpu", runtime="openvino")
    got = nib.load(fast(request)[0]).get_fdata()
    assert fast.sam(torch.device("cpu")).encoder_runtime is not None
    assert (got == ref).mean() > 0.999
    int8 = InteractiveSAMTask(copy.deepcopy(sam), device="cpu", runtime="openvino-int8")  # no calibration set here
    assert int8.sam(torch.device("cpu")).encoder_runtime.runtime == "openvino"


def test_a_committed_ensemble_is_served_then_monai_label_trained_weights_with_train_jsons_network(tmp_path, disk_png):
    """autosam_kvasir's committed model is an AutoSAMEnsemble at 128 (here: tiny); weights that MONAI Label trains
    with train.json are one AutoSAM at the backbone's side, served through the bundle's ``trained_overrides``."""
    import json
    import shutil

    from monai_sam_adapt.bundle import config_parser
    from monai_sam_adapt.networks import AutoSAM, AutoSAMEnsemble
    from tests.bundles.helpers import tiny_network_override

    root = tmp_path / "bundles"
    bundle = root / "autosam_kvasir_tiny"
    shutil.copytree(REPO / "bundles" / "autosam_kvasir" / "configs", bundle / "configs")
    members = [{"prompt_encoder": "head"}, {"prompt_encoder": "head", "input_side": 128}]
    ens = tiny_network_override("monai_sam_adapt.networks.AutoSAMEnsemble", members=members)
    single = tiny_network_override("monai_sam_adapt.networks.AutoSAM", prompt_encoder="head")
    cfg = json.loads((bundle / "configs" / "inference.json").read_text())
    cfg.update(ens, image_size=128, trained_overrides={"network_def": single["network_def"], "image_size": 64})
    (bundle / "configs" / "inference.json").write_text(json.dumps(cfg))
    (bundle / "models").mkdir()
    torch.save(
        config_parser(bundle, "inference.json").get_parsed_content("network_def").state_dict(),
        bundle / "models" / "model.pt",
    )
    trained = tmp_path / "model" / "polyp" / "model.pt"
    task = BundleSegmentationTask(bundle, device="cpu", trained_path=trained)
    path, disk = disk_png
    out, _ = task({"image": str(path)})
    assert np.asarray(Image.open(out)).shape == disk.shape
    assert isinstance(task.network(torch.device("cpu"))[1], AutoSAMEnsemble)

    trained.parent.mkdir(parents=True)
    torch.save(
        config_parser(bundle, "inference.json", **single).get_parsed_content("network_def").state_dict(), trained
    )
    out, _ = task({"image": str(path)})
    assert np.asarray(Image.open(out)).shape == disk.shape
    assert isinstance(task.network(torch.device("cpu"))[1], AutoSAM)


def test_a_2d_bundle_serves_the_label_value_not_the_mask_files_scale(tmp_path, disk_png):
    """Batch runs of a 2D bundle write 0/255 PNGs (readable as pictures); the served label holds the label value
    that ``/info`` lists (1 for polyp), as MONAI Label's own writer does. unet_kvasir's configs with weights that
    predict foreground everywhere (all weights 0, biases 1: the output is its last biases)."""
    import shutil

    from monai_sam_adapt.bundle import bundle_labels, config_parser

    bundle = tmp_path / "bundles" / "unet_kvasir"
    shutil.copytree(REPO / "bundles" / "unet_kvasir" / "configs", bundle / "configs")
    state = config_parser(bundle, "inference.json").get_parsed_content("network_def").state_dict()
    state = {k: torch.ones_like(v) if k.endswith("bias") else torch.zeros_like(v) for k, v in state.items()}
    (bundle / "models").mkdir()
    torch.save(state, bundle / "models" / "model.pt")
    path, disk = disk_png
    out, params = BundleSegmentationTask(bundle, device="cpu")({"image": str(path)})
    served = np.asarray(Image.open(out))
    assert served.shape == disk.shape and set(np.unique(served)) == {bundle_labels(bundle)["polyp"]} == {1}
