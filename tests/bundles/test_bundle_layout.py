"""Every bundle follows the conventions: files present, metadata valid offline against the schema kept in the repo."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.bundles.helpers import REPO

BUNDLES = sorted(p.name for p in (REPO / "bundles").iterdir() if (p / "configs" / "metadata.json").exists())
TRAINED = [b for b in BUNDLES if (REPO / "bundles" / b / "configs" / "train.json").exists()]


def verify(meta: str):
    return subprocess.run([sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", meta,
                           "--filepath", str(REPO / "bundles" / "schema" / "meta_schema.json")],
                          cwd=REPO, capture_output=True, text=True)


def test_there_are_bundles():
    assert {"boxsam_kvasir", "autosam_kvasir"} <= set(BUNDLES)


@pytest.mark.parametrize("bundle", BUNDLES)
def test_layout_and_metadata(bundle):
    root = REPO / "bundles" / bundle
    for f in ("configs/metadata.json", "configs/inference.json", "configs/evaluate.json", "configs/logging.conf",
              "docs/README.md", "LICENSE"):
        assert (root / f).is_file(), f"{bundle} lacks {f}"
    if bundle in TRAINED:
        assert (root / "configs" / "multi_gpu_train.json").is_file()
        train = json.loads((root / "configs" / "train.json").read_text())
        assert "training" in train and "run" in train and "initialize" in train  # both run forms
    res = verify(f"bundles/{bundle}/configs/metadata.json")
    assert res.returncode == 0 and "metadata is verified with no error" in res.stdout + res.stderr, res.stderr


def test_bad_metadata_is_refused(tmp_path):
    meta = json.loads((REPO / "bundles" / "boxsam_kvasir" / "configs" / "metadata.json").read_text())
    del meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    res = verify(str(tmp_path / "metadata.json"))
    assert res.returncode != 0 and "channel_def" in res.stderr
