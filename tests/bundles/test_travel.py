"""Bundle folders travel: each is built from ``bundles/source`` into a folder that needs nothing else of the
repository, and a copy (or a zip, unpacked) elsewhere runs with ``python -m monai.bundle`` from its own folder, from
any other folder, and with ``--bundle_root``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from monai_sam_adapt.bundle import build, find_bundles
from monai_sam_adapt.bundle.__main__ import main as bundle_main
from tests.bundles.helpers import REPO

BUNDLES = sorted(find_bundles(REPO / "bundles"))


def test_every_bundle_is_built_from_its_source():
    """The committed configs are what ``python -m monai_sam_adapt.bundle build`` writes: edit bundles/source."""
    assert build.build_bundles(REPO / "bundles", check=True) == []
    assert sorted(p.name for p in (REPO / "bundles" / "source").iterdir() if p.name not in ("base", "datalists")) == (
        BUNDLES
    )


@pytest.mark.parametrize("bundle", BUNDLES)
def test_built_configs_name_nothing_outside_the_bundle(bundle):
    for cfg in (REPO / "bundles" / bundle / "configs").glob("*.json"):
        text = cfg.read_text()
        assert '"%' not in text, f"{cfg}: a macro (its path is relative to the working directory)"
        assert "bundles/" not in text, f"{cfg}: names a repository path"
        if cfg.name in ("train.json", "inference.json", "evaluate.json"):
            assert json.loads(text)["bundle_root"] == build.BUNDLE_ROOT


def _source_tree(root):
    src = root / "bundles" / "source"
    (src / "base").mkdir(parents=True)
    (src / "datalists").mkdir()
    (src / "demo").mkdir()
    (src / "base" / "parts.json").write_text(
        json.dumps(
            {
                "net": {"_target_": "torch.nn.Identity"},
                "pipeline": ["%bundles/source/base/parts.json#net", {"inner": "%bundles/source/base/parts.json#net"}],
            }
        )
    )
    (src / "base" / "multi_gpu_train.json").write_text(json.dumps({"device": "cpu"}))
    (src / "datalists" / "split.json").write_text(json.dumps({"testing": [{"image": "a.png"}]}))
    (src / "demo" / "inference.json").write_text(
        json.dumps(
            {
                "imports": ["$import os"],
                "bundle_root": "bundles/demo",
                "datalist": "bundles/source/datalists/split.json",
                "pipeline": "%bundles/source/base/parts.json#pipeline",
            }
        )
    )
    (src / "demo" / "train.json").write_text(json.dumps({"datalist": "bundles/source/datalists/split.json"}))
    return root / "bundles"


def test_build_expands_nested_macros_copies_the_datalist_and_checks(tmp_path):
    bundles = _source_tree(tmp_path)
    written = build.build_bundles(bundles)
    cfg = bundles / "demo" / "configs"
    assert sorted(p.name for p in written) == [
        "datalist.json",
        "inference.json",
        "multi_gpu_train.json",
        "train.json",
    ]
    inference = json.loads((cfg / "inference.json").read_text())
    assert list(inference)[:2] == ["imports", "bundle_root"]  # the bundle root right after the imports
    assert inference["bundle_root"] == build.BUNDLE_ROOT
    assert inference["pipeline"] == [{"_target_": "torch.nn.Identity"}, {"inner": {"_target_": "torch.nn.Identity"}}]
    assert inference["datalist"] == "$@bundle_root + '/configs/datalist.json'"
    assert json.loads((cfg / "datalist.json").read_text()) == {"testing": [{"image": "a.png"}]}
    assert json.loads((cfg / "multi_gpu_train.json").read_text()) == {"device": "cpu"}
    assert build.build_bundles(bundles, check=True) == []

    # a hand edit of a built config, and a config whose source is gone, are found (and a build repairs both)
    (cfg / "train.json").write_text("{}")
    (cfg / "evaluate.json").write_text("{}")
    assert sorted(p.name for p in build.build_bundles(bundles, check=True)) == ["evaluate.json", "train.json"]
    assert bundle_main(["build", "--check", "--bundles_dir", str(bundles)]) == 1
    build.build_bundles(bundles)
    assert not (cfg / "evaluate.json").exists() and build.build_bundles(bundles, check=True) == []


def test_build_names_a_missing_shared_part(tmp_path, capsys):
    bundles = _source_tree(tmp_path)
    (bundles / "source" / "base" / "parts.json").unlink()
    assert bundle_main(["build", "--bundles_dir", str(bundles)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "demo/inference.json" in err and "%bundles/source/base/parts.json#pipeline" in err


def _inputs(bundle: str, data, rng) -> dict:
    """One small synthetic case in the layout ``bundle`` reads, as its command-line options."""
    from monai_sam_adapt.data import brats_datalist, lits_datalist
    from tests.bundles.test_ssam_brats import synthetic_brats2018
    from tests.bundles.test_ssam_lits import synthetic_lits
    from tests.conftest import disk, write_png

    if bundle == "boxsam_ct":  # its default datalist: a CT slice that ships with pydicom, and its box
        return {}
    if bundle == "ssam_brats":
        root = synthetic_brats2018(data, rng, cases=5)
        return {"dataset_dir": root, "datalist": {"testing": brats_datalist(root)["testing"][:1]}}
    if bundle == "ssam_lits":
        root = synthetic_lits(data, rng, n=5)
        return {"dataset_dir": root, "datalist": {"testing": lits_datalist(root)["testing"][:1]}}
    m = disk(48, 56, 24, 26, 12)
    img = (rng.uniform(0, 80, (48, 56, 3)) + m[..., None] * np.array([150, 60, 40])).astype(np.uint8)
    write_png(data / "images" / "case0.png", img)
    write_png(data / "masks" / "case0.png", (m * 255).astype(np.uint8))
    return {"dataset_dir": data, "datalist": {"testing": [{"image": "images/case0.png", "label": "masks/case0.png"}]}}


def _run(cwd, config_file, args: dict, *extra):
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(config_file)]
    for k, v in args.items():
        cmd += [f"--{k}", v if isinstance(v, str) else json.dumps(v)]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": ""}
    return subprocess.run([*cmd, *extra], cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow
@pytest.mark.parametrize("bundle", BUNDLES)
def test_a_copied_bundle_runs_from_its_own_folder(bundle, tmp_path, rng):
    """The bundle folder copied out of the repository, its committed model loaded from the copy, one case inferred
    from the copy's own folder (the model zoo's layout and command)."""
    copy = tmp_path / "elsewhere" / bundle
    shutil.copytree(REPO / "bundles" / bundle, copy)
    args = {k: str(v) if k == "dataset_dir" else v for k, v in _inputs(bundle, tmp_path / "data", rng).items()}
    shipped = (copy / "models" / "model.pt").exists()
    if not shipped:  # a bundle that ships no model (it is trained by its user) runs untrained
        args["model_path"] = ""
    done = _run(copy, "configs/inference.json", {**args, "num_workers": 0})
    assert done.returncode == 0, done.stderr[-3000:]
    written = [p.name for p in (copy / "predictions").rglob("*") if p.is_file()]
    assert written and all("_seg" in name or name == "case0.png" for name in written), written
    assert not (REPO / "bundles" / bundle / "predictions").exists()
    if shipped:
        assert f"{copy / 'models' / 'model.pt'}" in done.stdout + done.stderr  # the copy's model, not the repo's


@pytest.mark.slow
def test_a_zipped_bundle_runs_from_any_folder_and_with_bundle_root(tmp_path, rng):
    """A zip of the bundle unpacked elsewhere: run from another folder by its config path (the bundle root is the
    config's folder), and with ``--bundle_root`` naming it; both read the unpacked model and write into it."""
    archive = shutil.make_archive(str(tmp_path / "unet_kvasir"), "zip", REPO / "bundles", "unet_kvasir")
    shutil.unpack_archive(archive, tmp_path / "unpacked")
    copy = tmp_path / "unpacked" / "unet_kvasir"
    args = {k: str(v) if k == "dataset_dir" else v for k, v in _inputs("unet_kvasir", tmp_path / "data", rng).items()}
    other = tmp_path / "other"
    other.mkdir()
    by_path = _run(other, copy / "configs" / "inference.json", {**args, "num_workers": 0})
    assert by_path.returncode == 0, by_path.stderr[-3000:]
    assert (copy / "predictions" / "images" / "case0.png").is_file()
    assert not list(other.iterdir())

    shutil.rmtree(copy / "predictions")
    moved = tmp_path / "moved"
    shutil.move(copy, moved)
    by_root = _run(other, moved / "configs" / "inference.json", {**args, "num_workers": 0}, "--bundle_root", str(moved))
    assert by_root.returncode == 0, by_root.stderr[-3000:]
    assert (moved / "predictions" / "images" / "case0.png").is_file()


_WITHOUT_PACKAGE = """
import runpy, sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", type(f).__module__)]
sys.path[:] = [p for p in sys.path if p and "monai_sam_adapt" not in p]
sys.argv = ["monai.bundle"] + sys.argv[1:]
runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
def test_a_broken_setup_is_one_readable_line(tmp_path):
    """No package, an older package than the bundle requires, a --bundle_root that is no folder, a datalist missing
    from the folder: each ends the run with one line naming what is wrong, no traceback."""
    shutil.copytree(REPO / "bundles" / "unet_kvasir", tmp_path / "unet_kvasir")
    cfg = str(tmp_path / "unet_kvasir" / "configs" / "evaluate.json")
    (tmp_path / "unet_kvasir" / "configs" / "datalist.json").unlink()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    script = tmp_path / "without_package.py"
    script.write_text(_WITHOUT_PACKAGE)

    def run(*args, launcher=("-m", "monai.bundle")):
        cmd = [sys.executable, *launcher, "run", "--config_file", cfg, *args]
        done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
        assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
        return done.stderr.strip().splitlines()

    missing = run(launcher=(str(script),))
    assert missing[-1].startswith("this bundle needs the Python package monai_sam_adapt, which is not installed")
    old = run("--requires", "monai_sam_adapt>=99")
    assert old[-2].startswith("ERROR (InputError): this bundle needs monai_sam_adapt>=99, and monai_sam_adapt ")
    nowhere = run("--bundle_root", str(tmp_path / "nowhere"))
    assert nowhere[-2].startswith(f"ERROR (InputError): --bundle_root '{tmp_path / 'nowhere'}' is not a folder")
    no_datalist = run("--dataset_dir", str(tmp_path))
    assert no_datalist[-2].startswith("ERROR (InputError): datalist ") and "configs/datalist.json" in no_datalist[-2]
