"""autosam_glas: the committed model (an AutoSAMEnsemble of a head g at 256 px and an EfficientNet g at 512 px) on
real GlaS images. The bundle's machinery (training, combining, the ensemble in evaluate / inference, serving trained
weights) is shared with autosam_kvasir and tested there on tiny models."""

from __future__ import annotations

import json

import pytest

from tests.bundles.helpers import REPO, read_metrics, run_workflow

BUNDLE = "autosam_glas"


@pytest.mark.integration
def test_committed_ensemble_segments_real_glands(tmp_path):
    """models/model.pt loads onto the real LiteMedSAM through the bundle's own evaluate.json and segments the first
    three GlaS test images (one pass each) as it did when committed (model 0.3.0: Dice 0.937, 0.955, 0.964; mean
    0.952)."""
    from tests.conftest import data_path

    root = data_path("glas")
    dl = json.loads((REPO / "bundles" / "common" / "datalists" / "glas.json").read_text())
    dl["testing"] = dl["testing"][:3]
    run_workflow(
        BUNDLE,
        "evaluate.json",
        dataset_dir=str(root),
        datalist=dl,
        num_workers=0,
        symmetries="none",
        output_dir=str(tmp_path / "ev"),
    )
    assert read_metrics(tmp_path / "ev" / "metrics.csv")["val_mean_dice"] == pytest.approx(0.9518, abs=0.005)
