"""ssam_cxr: one S-SAM with three label names ("left lung", "right lung", "heart") on chest X-rays of varied sizes;
label maps with several values in and out, left and right never swapped by augmentation or test-time symmetries."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from monai_sam_adapt.data import splits_datalist
from tests.bundles.helpers import REPO, chain, read_metrics, run_workflow, tiny_network_override
from tests.conftest import disk, write_png

BUNDLE = "ssam_cxr"
NAMES = ["left lung", "right lung", "heart"]


def tiny():
    return tiny_network_override("monai_sam_adapt.networks.SSAM", label_names=NAMES)


@pytest.fixture
def chest_folder(tmp_path, rng):
    """Five grey 'chest X-rays' of different sizes: 1 left lung (the image's right half), 2 right lung, 3 heart."""
    root = tmp_path / "cxr"
    ids = []
    for i, (h, w) in enumerate([(60, 52), (48, 64), (56, 56), (70, 60), (50, 66)]):
        mask = np.zeros((h, w), np.uint8)
        mask[disk(h, w, h * 0.45, w * 0.72, min(h, w) * 0.2)] = 1
        mask[disk(h, w, h * 0.45, w * 0.28, min(h, w) * 0.2)] = 2
        mask[disk(h, w, h * 0.7, w * 0.55, min(h, w) * 0.15)] = 3
        img = (rng.uniform(0, 60, (h, w)) + (mask == 1) * 120 + (mask == 2) * 150 + (mask == 3) * 60).astype(np.uint8)
        write_png(root / "images" / f"cxr_{i}.png", img)
        write_png(root / "masks" / f"cxr_{i}.png", mask)
        ids.append(f"cxr_{i}")
    labels = dict(zip(NAMES, (1, 2, 3)))
    splits = {"train": ids[:3], "val": ids[3:4], "test": ids[4:], "labels": labels}
    (root / "splits.json").write_text(json.dumps(splits))
    return root


def _transform_names(transform) -> list[str]:
    """Class names of a Compose and everything inside it."""
    out = [type(transform).__name__]
    for t in getattr(transform, "transforms", ()):
        out += _transform_names(t)
    return out


def test_no_flip_in_training_or_at_test_time():
    """A left/right flip would swap the meaning of "left lung" and "right lung": the bundle has none (training
    augmentation is a small rotation and zoom; evaluation and inference average no symmetries)."""
    from monai_sam_adapt.bundle import bundle_workflow

    wf = bundle_workflow(REPO / "bundles" / BUNDLE, "train.json")
    names = _transform_names(wf.parser.get_parsed_content("train_transforms", lazy=True))
    assert "RandAffined" in names and not {"RandFlipd", "Flipd", "RandRotate90d", "RandAxisFlipd"} & set(names)
    for config in ("evaluate.json", "inference.json"):
        parser = bundle_workflow(REPO / "bundles" / BUNDLE, config).parser
        assert parser["symmetries"] == "none", config


def test_serving_names_each_label_value():
    """MONAI Label (our app and the stock bundle app) gets the three names on the values the masks carry."""
    from monai_sam_adapt.bundle import bundle_labels, check_bundle

    assert bundle_labels(REPO / "bundles" / BUNDLE) == {"left lung": 1, "right lung": 2, "heart": 3}
    assert check_bundle(REPO / "bundles" / BUNDLE) == []


@pytest.mark.parametrize("config,item", [("train.json", "train_data"), ("evaluate.json", "data")])
def test_a_datalist_whose_labels_disagree_is_refused_before_the_network_loads(chest_folder, config, item):
    """The prepared folder's ``labels`` map is read against the bundle's names and values: heart on value 1 (say,
    another dataset's convention) fails naming both, instead of training or scoring lungs as heart."""
    from monai_sam_adapt.bundle import bundle_workflow

    splits = json.loads((chest_folder / "splits.json").read_text())
    splits["labels"] = {"heart": 1, "left lung": 2, "right lung": 3}
    (chest_folder / "splits.json").write_text(json.dumps(splits))
    parser = bundle_workflow(REPO / "bundles" / BUNDLE, config, dataset_dir=str(chest_folder)).parser
    with pytest.raises(Exception) as e:  # MONAI wraps the InputError of a config expression
        parser.get_parsed_content(item)
    assert "'heart' is 1 there and 3 in the bundle" in chain(e.value)


def test_train_evaluate_infer_three_labels_tiny(chest_folder, tmp_path):
    common = dict(dataset_dir=str(chest_folder), datalist="splits", num_workers=0)
    models = tmp_path / "models"
    run_workflow(
        BUNDLE,
        "train.json",
        output_dir=str(tmp_path / "run"),
        ckpt_dir=str(models),
        max_epochs=1,
        val_interval=1,
        batch_size=2,
        **common,
        **tiny(),
    )
    sd = torch.load(models / "model.pt", weights_only=True)
    assert sd["_extra_state"]["labels"] == NAMES

    # the label map's three values became three channels, in the order of the names
    wf = run_workflow(
        BUNDLE,
        "evaluate.json",
        output_dir=str(tmp_path / "ev"),
        model_path=str(models / "model.pt"),
        **common,
        **tiny(),
    )
    metrics = read_metrics(tmp_path / "ev" / "metrics.csv")
    assert {f"val_dice_{n.replace(' ', '_')}" for n in NAMES} <= set(metrics)
    item = wf.parser.get_parsed_content("dataset")[0]
    label = np.asarray(Image.open(chest_folder / "masks" / "cxr_4.png"))
    counts = [int(v.sum()) for v in item["label"]]
    assert item["label"].shape[0] == 3 and all(c > 0 for c in counts)
    assert counts[2] < counts[0] and abs(counts[0] - counts[1]) < 0.2 * counts[0], counts  # heart smallest
    assert set(np.unique(label)) == {0, 1, 2, 3}

    pred = tmp_path / "pred"
    dl = splits_datalist(chest_folder)
    for e in dl["testing"]:
        e.pop("label")
    run_workflow(
        BUNDLE,
        "inference.json",
        output_dir=str(pred),
        model_path=str(models / "model.pt"),
        **{**common, "datalist": dl},
        **tiny(),
    )
    out = np.asarray(Image.open(pred / "images" / "cxr_4.png"))
    assert out.shape == label.shape and out.dtype == np.uint8
    assert set(np.unique(out)) <= {0, 1, 2, 3}  # label values, not 0/255 masks


@pytest.mark.integration
def test_committed_model_segments_real_chest_xrays_without_swapping_sides(tmp_path):
    """The committed adapter on three real test X-rays: each of the three labels well above chance, and the
    "left lung" output lies on the left lung (it overlaps the right lung's mask hardly at all)."""
    from tests.conftest import prepared_path

    root = prepared_path("cxr")
    dl = splits_datalist(root)
    dl["testing"] = dl["testing"][:3]
    common = dict(dataset_dir=str(root), datalist=dl, num_workers=0)
    run_workflow(BUNDLE, "evaluate.json", output_dir=str(tmp_path / "ev"), **common)
    m = read_metrics(tmp_path / "ev" / "metrics.csv")
    for n in NAMES:
        assert m[f"val_dice_{n.replace(' ', '_')}"] > 0.75, m

    for e in dl["testing"]:
        e.pop("label")
    run_workflow(BUNDLE, "inference.json", output_dir=str(tmp_path / "pred"), **{**common, "datalist": dl})
    for e in dl["testing"]:
        name = e["image"].split("/")[-1]
        out = np.asarray(Image.open(tmp_path / "pred" / "images" / name))
        ref = np.asarray(Image.open(root / "masks" / name))
        left, right = out == 1, ref == 2
        assert (left & right).sum() < 0.1 * left.sum(), name
