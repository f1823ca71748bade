"""autosam_monuseg: AutoSAM at full resolution through tiles. Training reads each image as a fixed grid of
network-sized tiles (so the frozen encoder's embedding cache serves every epoch after the first), validation,
evaluation and inference run sliding windows, and masks come back on the source grid."""

from __future__ import annotations

import numpy as np
import pytest
from monai.inferers import SlidingWindowInferer
from PIL import Image

from monai_sam_adapt.bundle import bundle_workflow
from monai_sam_adapt.data import splits_datalist
from tests.bundles.helpers import REPO, read_metrics, run_workflow, tiny_network_override

BUNDLE = "autosam_monuseg"


def tiny(**extra):
    return tiny_network_override("monai_sam_adapt.networks.AutoSAM", output="both", **extra)


def test_tiles_train_from_the_cache_and_evaluate_by_sliding_window(polyp_folder, tmp_path):
    side = tiny()["image_size"]
    cache = tmp_path / "cache"
    common = dict(dataset_dir=str(polyp_folder), datalist="splits", num_workers=0, input_size=2 * side)
    run_dir, models = tmp_path / "run", tmp_path / "models"
    train = dict(output_dir=str(run_dir), ckpt_dir=str(models), val_interval=1, cache_dir=str(cache), **common)
    wf = run_workflow(BUNDLE, "train.json", max_epochs=1, **train, **tiny(cache=str(cache)))
    tiles = wf.parser.get_parsed_content("train#dataset")[0]
    assert len(tiles) == 4 and all(tuple(t["image"].shape[-2:]) == (side, side) for t in tiles)
    assert all("image_g" in t for t in tiles), "g reads its own photometrically augmented copy"
    assert isinstance(wf.parser.get_parsed_content("val_inferer").inferer, SlidingWindowInferer)
    first = sorted(p.name for p in cache.glob("*.safetensors"))
    # 3 training images x 4 tiles, and the validation image's sliding windows: each encoded once
    assert len(first) > 12

    run_workflow(
        BUNDLE,
        "train.json",
        max_epochs=2,
        resume_from=str(next((run_dir / "checkpoints").glob("*.pt"))),
        **train,
        **tiny(cache=str(cache)),
    )
    assert sorted(p.name for p in cache.glob("*.safetensors")) == first, "epoch 2 encoded nothing new"

    model = models / "model.pt"
    ev = tmp_path / "eval"
    wf = run_workflow(BUNDLE, "evaluate.json", output_dir=str(ev), model_path=str(model), **common, **tiny())
    assert isinstance(wf.parser.get_parsed_content("inferer").inferer, SlidingWindowInferer)
    assert {"val_mean_dice", "val_mean_dice_h"} <= set(read_metrics(ev / "metrics.csv"))

    dl = splits_datalist(polyp_folder)
    for e in dl["testing"]:
        e.pop("label")
    pred = tmp_path / "pred"
    run_workflow(
        BUNDLE, "inference.json", output_dir=str(pred), model_path=str(model), **{**common, "datalist": dl}, **tiny()
    )
    for e in dl["testing"]:
        name = e["image"].split("/")[-1]
        src = Image.open(polyp_folder / "images" / name)
        out = np.asarray(Image.open(pred / "images" / name))
        assert out.shape == (src.height, src.width) and set(np.unique(out)) <= {0, 255}


@pytest.mark.integration
def test_committed_model_segments_real_monuseg_nuclei(tmp_path):
    """The committed model on one real 1000x1000 MoNuSeg test image at full resolution, well above chance."""
    from tests.conftest import prepared_path

    root = prepared_path("monuseg")
    dl = splits_datalist(root)
    dl["testing"] = dl["testing"][:1]
    run_workflow(
        BUNDLE, "evaluate.json", output_dir=str(tmp_path / "ev"), dataset_dir=str(root), datalist=dl, num_workers=0
    )
    assert read_metrics(tmp_path / "ev" / "metrics.csv")["val_mean_dice"] > 0.7


def test_input_size_none_trains_on_whole_images(polyp_folder, tmp_path):
    """`--input_size '$None'` alone turns the tile grid off: no grid is computed from a missing size."""
    side = tiny()["image_size"]
    wf = bundle_workflow(
        REPO / "bundles" / BUNDLE,
        "train.json",
        dataset_dir=str(polyp_folder),
        datalist="splits",
        num_workers=0,
        input_size=None,
        output_dir=str(tmp_path / "run"),
        **tiny(),
    )
    wf.initialize()
    assert wf.parser.get_parsed_content("tile_crop") is None
    item = wf.parser.get_parsed_content("train#dataset")[0]
    assert isinstance(item, dict) and tuple(item["image"].shape[-2:]) == (side, side)
    assert not isinstance(wf.parser.get_parsed_content("val_inferer").inferer, SlidingWindowInferer)
