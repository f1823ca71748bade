"""Issue 14: a corpus of bad inputs, built at test time (nothing committed), run through the bundles (2D and 3D,
inference, evaluation, training), the Python API and the datalist command. Each case must fail with one of our
errors whose message names the file (or the option) and the problem, and leave the output folder with no partial or
foreign file."""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_sam_adapt.errors import find_error
from tests.bundles.helpers import run_workflow, tiny_network_override
from tests.bundles.test_unet_kvasir import TINY as TINY_UNET
from tests.conftest import disk, write_png
from tests.transforms.test_dictionary import _ct_series

TINY_SSAM = tiny_network_override("monai_sam_adapt.networks.SSAM", label_names=["liver", "tumor"], method="svd")


@dataclass
class Case:
    """``build(root)`` writes the bad input under ``root`` and returns the run's overrides; the error must match every
    pattern of ``expect`` (``{root}`` is replaced by the case's folder)."""

    name: str
    build: Callable[[Path], dict]
    expect: list[str]
    bundle: str = "unet_kvasir"
    config: str = "inference.json"
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- inputs, 2D
def polyp(root: Path, name="images/case.png", h=48, w=64, channels=3) -> Path:
    m = disk(h, w, h / 2, w / 2, min(h, w) / 3)
    img = (np.random.default_rng(0).uniform(0, 80, (h, w, 3)) + m[..., None] * 150).astype(np.uint8)
    img = img[..., 0] if channels == 1 else np.dstack([img, np.full((h, w), 255, np.uint8)])[..., :channels]
    if channels == 2:
        img = np.dstack([img[..., 0], np.full((h, w), 255, np.uint8)])
    write_png(root / name, img)
    write_png(root / name.replace("images", "masks"), (m * 255).astype(np.uint8))
    return root / name


def image_only(rel: str) -> dict:
    return {"datalist": {"testing": [{"image": rel}]}}


def with_label(rel: str, label: str | None = None) -> dict:
    return {"datalist": {"testing": [{"image": rel, "label": label or rel.replace("images", "masks")}]}}


def replaced(rel: str, data: bytes | Callable[[bytes], bytes]):
    def build(root: Path) -> dict:
        p = polyp(root, rel)
        p.write_bytes(data(p.read_bytes()) if callable(data) else data)
        return image_only(rel)

    return build


def shaped(h: int, w: int, channels: int = 3):
    def build(root: Path) -> dict:
        polyp(root, h=h, w=w, channels=channels)
        return image_only("images/case.png")

    return build


def nifti(root: Path, rel: str, data: np.ndarray, affine=None) -> Path:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), root / rel)
    return root / rel


def label_build(make_label: Callable[[Path, Path], None]):
    def build(root: Path) -> dict:
        img = polyp(root)
        make_label(root / "masks" / "case.png", img)
        return with_label("images/case.png")

    return build


def _label_other_size(lab: Path, img: Path) -> None:
    write_png(lab, np.zeros((20, 20), np.uint8))


def _label_values(lab: Path, img: Path) -> None:
    m = np.zeros((48, 64), np.uint8)
    m[10:20, 10:20], m[30:40, 30:40] = 1, 2
    write_png(lab, m)


def datalist_file(content: str | None):
    def build(root: Path) -> dict:
        polyp(root)
        path = root / "datalist.json"
        if content is not None:
            path.write_text(content)
        return {"datalist": str(path)}

    return build


# ---------------------------------------------------------------------------------------------- model files
def model_file(kind: str):
    def build(root: Path) -> dict:
        polyp(root)
        path = root / "model.pt"
        if kind == "truncated":
            from monai.networks.nets import UNet

            net = UNet(**{k: v for k, v in TINY_UNET["network_def"].items() if k != "_target_"})
            torch.save({"model": net.state_dict()}, path)
            path.write_bytes(path.read_bytes()[:300])
        elif kind == "empty":
            path.write_bytes(b"")
        elif kind == "pickled":
            path.write_bytes(pickle.dumps({"model": Path("x")}))
        elif kind == "text":
            path.write_text("not a model")
        elif kind == "foreign":
            torch.save({"model": torch.nn.Linear(3, 2).state_dict()}, path)
        return {**image_only("images/case.png"), "model_path": str(path if kind != "missing" else root / "nope.pt")}

    return build


# ---------------------------------------------------------------------------------------------- inputs, 3D
def volume(data=None, affine=None, rel="volume-1.nii.gz"):
    def build(root: Path) -> dict:
        arr = np.random.default_rng(0).normal(0, 50, (40, 36, 6)).astype(np.float32) if data is None else data()
        nifti(root, rel, arr, affine)
        return {"datalist": {"testing": [{"image": rel}]}}

    return build


def with_nonfinite(value: float):
    def data():
        arr = np.random.default_rng(0).normal(0, 50, (40, 36, 6)).astype(np.float32)
        arr[3, 4, 2] = value
        return arr

    return data


def dicom(make: Callable[[Path], None] | None = None, single: bool = False):
    def build(root: Path) -> dict:
        folder = _ct_series(root / "ct")
        if make is not None:
            make(folder)
        rel = "ct/00.dcm" if single else "ct"
        return {"datalist": {"testing": [{"image": rel}]}}

    return build


def _stray(folder: Path) -> None:
    (folder / "notes.txt").write_text("scanner log")


def _seg_object(folder: Path) -> None:
    import pydicom

    ds = pydicom.dcmread(folder / "01.dcm")
    ds.Modality = "SEG"
    ds.save_as(folder / "01.dcm")


def _gap(folder: Path) -> None:
    (folder / "01.dcm").unlink()
    (folder / "03.dcm").write_bytes((folder / "02.dcm").read_bytes())
    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(folder / "03.dcm")
    ds.ImagePositionPatient, ds.SOPInstanceUID = [0.0, 0.0, 5.0], generate_uid()
    ds.save_as(folder / "03.dcm")


def truncated_gzip(root: Path) -> dict:
    p = nifti(root, "volume-1.nii.gz", np.random.default_rng(0).normal(0, 50, (40, 36, 6)).astype(np.float32))
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return {"datalist": {"testing": [{"image": "volume-1.nii.gz"}]}}


def lits_label(make_label):
    def build(root: Path) -> dict:
        nifti(root, "volume-1.nii.gz", np.random.default_rng(0).normal(0, 50, (40, 36, 6)).astype(np.float32))
        make_label(root)
        return {"datalist": {"testing": [{"image": "volume-1.nii.gz", "label": "segmentation-1.nii.gz"}]}}

    return build


def _shifted_label(root: Path) -> None:
    aff = np.eye(4)
    aff[0, 3] = 25.0
    nifti(root, "segmentation-1.nii.gz", np.zeros((40, 36, 6), np.uint8), aff)


def _smaller_label(root: Path) -> None:
    nifti(root, "segmentation-1.nii.gz", np.zeros((40, 36, 5), np.uint8))


CASES = [
    # 2D images (unet_kvasir inference)
    Case("missing image", lambda r: (polyp(r), image_only("images/nope.png"))[1], ["nope.png", "does not exist"]),
    Case("zero-byte png", replaced("images/case.png", b""), ["case.png", "cannot read"]),
    Case("truncated png", replaced("images/case.png", lambda b: b[:60]), ["case.png", "cannot read"]),
    Case("random bytes as jpg", replaced("images/case.jpg", bytes(range(256)) * 4), ["case.jpg", "cannot read"]),
    Case("text file as png", replaced("images/case.png", b"hello"), ["case.png", "cannot read"]),
    Case("1x1 image", shaped(1, 1), ["case.png", "1x1 pixels", "too small"]),
    Case("3x4000 image", shaped(3, 4000), ["case.png", "3x4000", "too small"]),
    Case("12x4000 image", shaped(12, 4000), ["case.png", "12x4000", "too elongated"]),
    Case("grey image to an RGB bundle", shaped(48, 64, 1), ["case.png", "has 1 channels", "3 or 4"]),
    Case("grey+alpha image", shaped(48, 64, 2), ["case.png", "has 2 channels"]),
    Case(
        "3D NIfTI to a 2D bundle",
        lambda r: (
            nifti(r, "images/vol.nii.gz", np.zeros((3, 30, 30, 5), np.float32)),
            image_only("images/vol.nii.gz"),
        )[1],
        ["vol.nii.gz", "3D", "needs a 2D image"],
    ),
    Case(
        "NaN in a 2D image",
        lambda r: (
            nifti(r, "images/nan.nii.gz", np.where(np.eye(30)[..., None] > 0, np.nan, 1.0).repeat(3, -1)),
            image_only("images/nan.nii.gz"),
        )[1],
        ["nan.nii.gz", "90 non-finite voxels"],
    ),
    Case(
        "empty folder as image",
        lambda r: ((r / "images" / "empty").mkdir(parents=True), image_only("images/empty"))[1],
        ["empty", "is empty"],
    ),
    # labels (unet_kvasir evaluate)
    Case(
        "missing label",
        lambda r: (polyp(r), with_label("images/case.png", "masks/nope.png"))[1],
        ["nope.png", "does not exist"],
        config="evaluate.json",
    ),
    Case(
        "label of another size",
        label_build(_label_other_size),
        ["case.png", "not on the same grid"],
        config="evaluate.json",
    ),
    Case("label values 0/1/2", label_build(_label_values), ["case.png", "none is above"], config="evaluate.json"),
    Case(
        "zero-byte label",
        label_build(lambda lab, img: lab.write_bytes(b"")),
        ["masks/case.png", "cannot read"],
        config="evaluate.json",
    ),
    # datalists
    Case("missing datalist", datalist_file(None), ["datalist.json", "does not exist|no such|not found"]),
    Case("datalist not JSON", datalist_file("{not json"), ["datalist.json", "JSON|json"]),
    Case("datalist without 'testing'", datalist_file(json.dumps({"training": []})), ["testing"]),
    Case("datalist entry without image", datalist_file(json.dumps({"testing": [{"label": "x.png"}]})), ["image"]),
    Case("datalist entry not a dict", datalist_file(json.dumps({"testing": ["images/case.png"]})), ["testing"]),
    # model files
    Case("model_path missing", model_file("missing"), ["model_path", "nope.pt", "does not exist"]),
    Case("model_path empty", model_file("empty"), ["model_path", "model.pt", "empty"]),
    Case("model_path truncated", model_file("truncated"), ["model_path", "model.pt", "truncated or corrupt"]),
    Case("model_path pickled", model_file("pickled"), ["model_path", "model.pt", "pickled Python objects"]),
    Case("model_path text", model_file("text"), ["model_path", "model.pt", "not a PyTorch or safetensors checkpoint"]),
    Case("model_path foreign", model_file("foreign"), ["model_path", "model.pt", "does not fit"]),
    # output folder
    Case(
        "output folder is a file",
        lambda r: (polyp(r), (r / "out").write_text("x"), image_only("images/case.png"))[2],
        ["out", "cannot write predictions"],
    ),
    # 3D volumes (ssam_lits inference)
    Case(
        "2D NIfTI to a 3D bundle",
        volume(lambda: np.zeros((40, 36), np.float32)),
        ["volume-1.nii.gz", "is 2D", "3D volume"],
        "ssam_lits",
    ),
    Case("single DICOM slice to a 3D bundle", dicom(single=True), ["00.dcm", "is 2D", "3D volume"], "ssam_lits"),
    Case(
        "4-channel NIfTI to a 1-channel bundle",
        volume(lambda: np.zeros((40, 36, 6, 4), np.float32)),
        ["volume-1.nii.gz", "has 4 channels", "one file per modality"],
        "ssam_lits",
    ),
    Case("NaN voxel", volume(with_nonfinite(np.nan)), ["volume-1.nii.gz", "1 non-finite voxels"], "ssam_lits"),
    Case("Inf voxel", volume(with_nonfinite(np.inf)), ["volume-1.nii.gz", "1 non-finite voxels"], "ssam_lits"),
    Case("truncated NIfTI", truncated_gzip, ["volume-1.nii.gz", "cannot read"], "ssam_lits"),
    Case("stray file in a DICOM folder", dicom(_stray), ["notes.txt", "not a DICOM file"], "ssam_lits"),
    Case("DICOM SEG in the series", dicom(_seg_object), ["01.dcm", "SEG"], "ssam_lits"),
    Case("DICOM series with a gap", dicom(_gap), ["ct", "not evenly spaced"], "ssam_lits"),
    Case(
        "missing volume",
        lambda r: {"datalist": {"testing": [{"image": "volume-7.nii.gz"}]}},
        ["volume-7.nii.gz", "does not exist"],
        "ssam_lits",
    ),
    Case(
        "label with another affine",
        lits_label(_shifted_label),
        ["segmentation-1.nii.gz", "different affines"],
        "ssam_lits",
        "evaluate.json",
    ),
    Case(
        "label with another shape",
        lits_label(_smaller_label),
        ["segmentation-1.nii.gz", "not on the same grid"],
        "ssam_lits",
        "evaluate.json",
    ),
]


@pytest.fixture(scope="module")
def tiny_unet_model(tmp_path_factory):
    from monai.networks.nets import UNet

    path = tmp_path_factory.mktemp("model") / "model.pt"
    net = UNet(**{k: v for k, v in TINY_UNET["network_def"].items() if k != "_target_"})
    torch.save({"model": net.state_dict()}, path)
    return path


def leftovers(folder: Path) -> list[str]:
    """Files in an output folder after a failed run: none may be there (partial or otherwise)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused_naming_file_and_problem(case: Case, tmp_path, tiny_unet_model):
    root = tmp_path / "data"
    root.mkdir()
    override = case.build(root)
    out = tmp_path / "out" if case.name != "output folder is a file" else root / "out"
    before = leftovers(out) if out.is_file() is False else []
    common = dict(dataset_dir=str(root), output_dir=str(out), num_workers=0)
    if case.bundle == "unet_kvasir":
        common.update(TINY_UNET, model_path=str(tiny_unet_model))
    else:
        common.update(TINY_SSAM, model_path=None)
    common.update(override)
    with pytest.raises(Exception) as raised:
        run_workflow(case.bundle, case.config, **common)
    err = find_error(raised.value)
    assert err is not None, f"{case.name}: not one of our errors:\n{raised.value!r}"
    message = str(err)
    for pattern in case.expect:
        assert any(__import__("re").search(p, message) for p in pattern.split("|")), (pattern, message)
    if out.is_dir():
        assert leftovers(out) == before, f"{case.name}: files left in the output folder: {leftovers(out)}"


def test_corpus_is_large_enough():
    assert len(CASES) + len(API_CASES) >= 40


# ---------------------------------------------------------------------------------------------- Python API and CLI
def _ssam(**kw):
    from monai_sam_adapt.networks import SSAM

    return SSAM("lite_medsam", checkpoint=None, **kw)


def _unknown_label():
    net = tiny_network_override("x")["network_def"]
    from monai_sam_adapt.networks import SSAM

    args = {k: v for k, v in net.items() if k not in ("_target_", "backbone", "checkpoint")}
    model = SSAM("vit_b", checkpoint=None, label_names=["liver"], **args)
    model(torch.rand(1, 3, 64, 64), labels=["spleen"])


def _official_name(tmp: Path):
    from monai_sam_adapt.sam import FrozenSAM
    from tests.tiny import TINY_ARCH, tiny_backbone

    path = tmp / "sam_vit_l_0b3195.pth"
    torch.save(tiny_backbone("vit_l").state_dict(), path)
    FrozenSAM("vit_l", checkpoint=path, **TINY_ARCH["vit_l"])


def _datalist_cli(tmp: Path):
    from monai_sam_adapt.data.datalists import main

    main(["kvasir", str(tmp / "no_such_folder"), "-o", str(tmp / "dl.json")])


def _unknown_option(tmp: Path):
    from monai_sam_adapt.bundle.cli import check_options
    from tests.bundles.helpers import REPO

    check_options({"config_file": str(REPO / "bundles/unet_kvasir/configs/inference.json"), "outputdir": "x"})


def _resume_from_empty(tmp: Path):
    from tests.bundles.test_unet_kvasir import test_train_evaluate_infer_tiny  # noqa: F401 - same tiny setup

    good, bad = tmp / "checkpoint_epoch=1.pt", tmp / "checkpoint_epoch=2.pt"
    bad.write_bytes(b"")
    torch.save({"network": {}}, good)
    from monai_sam_adapt.engines import CheckedCheckpointLoader

    CheckedCheckpointLoader(str(bad), {"network": torch.nn.Linear(1, 1)}, option="resume_from").attach(None)


API_CASES = [
    ("SSAM label_names as a string", lambda t: _ssam(label_names="gland"), ["label_names", "string 'gland'"]),
    ("SSAM label_names empty", lambda t: _ssam(label_names=[]), ["label_names", "at least one"]),
    ("SSAM label_names repeated", lambda t: _ssam(label_names=["a", "a"]), ["distinct"]),
    ("SSAM unknown label at inference", lambda t: _unknown_label(), ["spleen", "liver"]),
    ("official SAM name, other file", _official_name, ["sam_vit_l_0b3195.pth", "MD5", "0b3195"]),
    ("datalist CLI on a missing folder", _datalist_cli, ["no_such_folder"]),
    ("misspelt command-line option", _unknown_option, ["--outputdir", "did you mean --output_dir"]),
    ("resume_from an empty file", _resume_from_empty, ["resume_from", "checkpoint_epoch=2.pt", "empty", "epoch=1"]),
]


@pytest.mark.parametrize("name,run,expect", API_CASES, ids=[c[0] for c in API_CASES])
def test_bad_api_input_is_refused(name, run, expect, tmp_path):
    import re

    with pytest.raises((ValueError, KeyError, OSError)) as raised:
        run(tmp_path)
    message = str(raised.value)
    for pattern in expect:
        assert re.search(pattern, message), (pattern, message)


def test_output_dir_with_leftovers_of_a_killed_run_is_cleaned(tmp_path, tiny_unet_model):
    """A SIGKILL'd run (pid no longer alive) leaves ``.partial-*``; the next run into that folder removes it."""
    root = tmp_path / "data"
    polyp(root)
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    stale = out / "images" / ".partial-999999999-case.png"
    stale.write_bytes(b"\x89PNG half")
    run_workflow(
        "unet_kvasir",
        "inference.json",
        dataset_dir=str(root),
        output_dir=str(out),
        num_workers=0,
        model_path=str(tiny_unet_model),
        **image_only("images/case.png"),
        **TINY_UNET,
    )
    assert leftovers(out) == ["images/case.png"]
    shutil.rmtree(out)
