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
    dl = json.loads((REPO / "bundles" / "source" / "datalists" / "glas.json").read_text())
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


def test_zoom_variants_are_a_finite_set_the_cache_serves_with_aligned_labels(monkeypatch):
    """data_2d.json#dihedral_zoom (scale 0.8 / 1 / 1.25, then flips / 90-degree rotations) yields exactly 24 distinct
    encoder inputs per image, so the embedding cache encodes each once; image and label stay aligned and binary."""
    import torch
    from monai.bundle import ConfigParser

    from monai_sam_adapt.sam.cache import EmbeddingCache

    monkeypatch.chdir(REPO)  # the config refers to flips_rot90 by its repository path, as the bundles do
    parser = ConfigParser()
    parser.read_config(REPO / "bundles" / "source" / "base" / "data_2d.json")
    augment = parser.get_parsed_content("dihedral_zoom")
    image = torch.rand(3, 64, 64) * 0.2
    image[:, 10:30, 14:44] = 1.0  # an off-centre object, so that every variant is another array
    label = (image[:1] > 0.5).float()
    cache, keys = EmbeddingCache(), set()
    for seed in range(300):
        augment.set_random_state(seed=seed)
        out = augment({"image": image.clone(), "label": label.clone()})
        keys.add(cache.key(torch.as_tensor(out["image"])))
        lab = torch.as_tensor(out["label"])
        assert set(lab.unique().tolist()) <= {0.0, 1.0}
        bright = torch.as_tensor(out["image"])[:1] > 0.6
        overlap = (bright & (lab > 0)).sum() / (bright | (lab > 0)).sum()
        assert overlap > 0.9, seed
    assert len(keys) == 24
