"""Our bundles as they are, in MONAI Label's own ``monaibundle`` sample app (shipped in the monailabel wheel): the
committed autosam_kvasir segments a 2D PNG and ssam_brats one 4-channel NIfTI, each label on its input's grid."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from monai_sam_adapt.serving.launch import server_command
from monai_sam_adapt.serving.orthanc import free_port, wait_http
from tests.bundles.helpers import REPO
from tests.bundles.test_ssam_brats import synthetic_brats2018
from tests.conftest import disk, write_png

pytestmark = [pytest.mark.slow]

STOCK_APP = Path(sys.prefix) / "monailabel" / "sample-apps" / "monaibundle"
BUNDLES = ("autosam_kvasir", "ssam_brats")


@pytest.fixture(scope="module")
def stock_server(loopback_netns, tmp_path_factory):
    if not (STOCK_APP / "main.py").is_file():
        pytest.skip(f"MONAI Label's monaibundle sample app is not at {STOCK_APP} (it comes with the monailabel wheel)")
    tmp = tmp_path_factory.mktemp("stock")
    app = tmp / "app"
    shutil.copytree(STOCK_APP, app, ignore=shutil.ignore_patterns("__pycache__"))
    for b in BUNDLES:
        shutil.copytree(REPO / "bundles" / b, app / "model" / b)
    studies = tmp / "studies"
    rng = np.random.default_rng(3)
    m = disk(72, 96, 36, 50, 20)  # not square: a label on swapped axes would show in its shape
    rgb = (rng.uniform(0, 80, (72, 96, 3)) + m[..., None] * [150, 60, 40]).astype(np.uint8)
    write_png(studies / "polyp.png", rgb)
    Image.fromarray(rgb).save(studies / "endoscopy.jpg", quality=90)
    case = synthetic_brats2018(tmp / "brats", rng, cases=1) / "Brats18_SYN_0_1"
    seqs = [nib.load(case / f"Brats18_SYN_0_1_{s}.nii.gz") for s in ("flair", "t1", "t1ce", "t2")]
    four = np.stack([np.asarray(s.dataobj) for s in seqs], axis=-1)
    nib.save(nib.Nifti1Image(four, seqs[0].affine), studies / "brats4.nii.gz")

    port = free_port()
    conf = {"models": ",".join(BUNDLES), "zoo_source": "github", "sam2": "false", "preload": "false"}
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false", "OMP_NUM_THREADS": "2"}
    log = tmp / "server.log"
    with open(log, "wb") as out:
        cmd = server_command(str(studies), app=app, port=port, conf=conf)
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    try:
        wait_http(f"http://127.0.0.1:{port}/info/", timeout=240, proc=proc)
    except Exception as e:
        proc.kill()
        raise RuntimeError(f"the stock app did not start ({e}); log:\n{log.read_text()[-4000:]}") from e
    yield f"http://127.0.0.1:{port}", studies, tmp
    proc.terminate()
    proc.wait(30)


def test_stock_app_lists_our_bundles_with_their_labels(stock_server):
    url, _, _ = stock_server
    models = httpx.get(f"{url}/info/", timeout=30).json()["models"]
    assert set(BUNDLES) <= set(models)
    # the stock app numbers labels by the network's channels (metadata channel_def); the label map it returns holds
    # BraTS' own values (1 core, 2 edema, 4 enhancing), as our app names them
    assert set(models["ssam_brats"]["labels"]) == {"whole tumor", "tumor core", "enhancing tumor"}
    # its dimension comes from the network's input in metadata.json: a slice, also for ssam_brats (which segments
    # the whole volume, below)
    assert models["autosam_kvasir"]["dimension"] == models["ssam_brats"]["dimension"] == 2


def test_stock_app_segments_a_png_on_its_grid(stock_server):
    url, studies, tmp = stock_server
    r = httpx.post(f"{url}/infer/autosam_kvasir", params={"image": "polyp", "output": "image"}, timeout=600)
    assert r.status_code == 200, r.text[-3000:]
    (tmp / "polyp_label.png").write_bytes(r.content)
    label = np.asarray(Image.open(tmp / "polyp_label.png"))
    assert label.shape == (72, 96) and label.dtype == np.uint8
    assert set(np.unique(label)) <= {0, 1}


def test_stock_app_segments_a_jpeg_into_a_png_label(stock_server):
    """A JPEG label would be lossy: the request asks MONAI Label's writer for PNG (``result_extension``)."""
    url, studies, tmp = stock_server
    params = {"result_extension": ".png"}
    r = httpx.post(
        f"{url}/infer/autosam_kvasir",
        params={"image": "endoscopy", "output": "image"},
        data={"params": json.dumps(params)},
        timeout=600,
    )
    assert r.status_code == 200, r.text[-3000:]
    (tmp / "endoscopy_label.png").write_bytes(r.content)
    label = np.asarray(Image.open(tmp / "endoscopy_label.png"))
    assert label.shape == (72, 96) and set(np.unique(label)) <= {0, 1}


def test_stock_app_segments_one_multichannel_nifti_on_its_grid(stock_server):
    url, studies, tmp = stock_server
    r = httpx.post(f"{url}/infer/ssam_brats", params={"image": "brats4", "output": "image"}, timeout=600)
    assert r.status_code == 200, r.text[-3000:]
    (tmp / "brats_label.nii.gz").write_bytes(r.content)
    src, out = nib.load(studies / "brats4.nii.gz"), nib.load(tmp / "brats_label.nii.gz")
    assert out.shape == src.shape[:3]
    np.testing.assert_allclose(out.affine, src.affine, atol=1e-4)
    assert set(np.unique(np.asarray(out.dataobj))) <= {0, 1, 2, 4}  # BraTS' own label values
