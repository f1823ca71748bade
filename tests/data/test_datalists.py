from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from monai_sam_adapt.data import (
    brats_datalist,
    folder_datalist,
    glas_datalist,
    kvasir_datalist,
    lits_datalist,
    load_datalist,
    main,
    split_by_case,
    splits_datalist,
)
from monai_sam_adapt.errors import InputError
from tests.conftest import data_path, prepared_path, write_png


def test_kvasir_layout(polyp_folder, tmp_path):
    dl = kvasir_datalist(polyp_folder)
    assert [len(dl[k]) for k in ("training", "validation", "testing")] == [3, 1, 2]
    assert dl["testing"][0] == {"image": "images/case4.png", "label": "masks/case4.png"}
    (polyp_folder / "masks" / "case5.png").unlink()
    with pytest.raises(FileNotFoundError, match="case5.png has no mask"):
        kvasir_datalist(polyp_folder)
    (polyp_folder / "splits.json").write_text(json.dumps({"train": ["nope"], "val": [], "test": []}))
    with pytest.raises(FileNotFoundError, match="'nope' is not in"):
        kvasir_datalist(polyp_folder)
    (polyp_folder / "splits.json").write_text(json.dumps({"train": []}))
    with pytest.raises(ValueError, match="lacks the split"):
        kvasir_datalist(polyp_folder)


def test_glas_layout(tmp_path):
    img = np.zeros((8, 8, 3), np.uint8)
    for name in ["train_1", "train_2", "train_3", "train_10", "testA_1", "testB_2"]:
        write_png(tmp_path / f"{name}.png", img)
        write_png(tmp_path / f"{name}_anno.png", img[..., 0])
    dl = glas_datalist(tmp_path, val_fraction=0.25)
    assert len(dl["training"]) == 3 and len(dl["validation"]) == 1 and len(dl["testing"]) == 2
    names = {e["image"] for e in dl["training"] + dl["validation"]}
    assert names == {"train_1.png", "train_2.png", "train_3.png", "train_10.png"}
    assert not names & {e["image"] for e in dl["testing"]}
    assert glas_datalist(tmp_path, val_fraction=0.25) == dl  # deterministic
    (tmp_path / "testB_2_anno.png").unlink()
    with pytest.raises(FileNotFoundError, match="testB_2"):
        glas_datalist(tmp_path)


def _nii(path, shape=(4, 4, 3)):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), np.eye(4)), path)


def test_brats_and_lits_layouts(tmp_path):
    for split in ("train", "test"):
        for case in ("a", "b"):
            for f in ("Flair_x.nii.gz", "T1c_x.nii.gz", "OTMultiClass.nii.gz"):
                _nii(tmp_path / "brats" / split / f"{split}{case}" / f)
    dl = brats_datalist(tmp_path / "brats")
    assert len(dl["training"]) == 2 and len(dl["testing"]) == 2 and dl["validation"] == []
    assert dl["training"][0]["image"] == ["train/traina/Flair_x.nii.gz", "train/traina/T1c_x.nii.gz"]
    with pytest.raises(FileNotFoundError, match="no DWI"):
        brats_datalist(tmp_path / "brats", modalities=["DWI"])

    for i in range(10):
        _nii(tmp_path / "lits" / f"volume-{i}.nii")
        _nii(tmp_path / "lits" / "seg" / f"segmentation-{i}.nii")
    dl = lits_datalist(tmp_path / "lits", val_fraction=0.1, test_fraction=0.2)
    cases = {k: {e["case"] for e in v} for k, v in dl.items()}
    assert sum(len(v) for v in cases.values()) == 10 and len(cases["testing"]) == 2
    assert not (cases["training"] & cases["testing"]) and not (cases["training"] & cases["validation"])
    (tmp_path / "lits" / "seg" / "segmentation-3.nii").unlink()
    with pytest.raises(FileNotFoundError, match="volume-3.nii"):
        lits_datalist(tmp_path / "lits")


def test_brats2018_layout_split_by_case(tmp_path):
    """The challenge's own layout (BraTS 2018+): case folders only, split by case with all four modalities."""
    root = tmp_path / "brats2018"
    for i in range(10):
        case = f"Brats18_X_{i}_1"
        for m in ("flair", "t1", "t1ce", "t2", "seg"):
            _nii(root / case / f"{case}_{m}.nii.gz")
    dl = brats_datalist(root)
    cases = {k: [e["case"] for e in v] for k, v in dl.items()}
    assert [len(cases[k]) for k in ("training", "validation", "testing")] == [6, 2, 2]
    assert len(set(sum(cases.values(), []))) == 10  # every case once, on one side only
    e = dl["training"][0]
    c = e["case"]
    assert (
        e["image"] == [f"{c}/{c}_{m}.nii.gz" for m in ("flair", "t1", "t1ce", "t2")]
        and e["label"] == f"{c}/{c}_seg.nii.gz"
    )
    assert brats_datalist(root) == dl  # deterministic
    (root / "Brats18_X_3_1" / "Brats18_X_3_1_t1ce.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="Brats18_X_3_1.*has no Brats18_X_3_1_t1ce.nii"):
        brats_datalist(root)
    with pytest.raises(FileNotFoundError, match="holds neither"):
        brats_datalist(tmp_path / "brats2018" / "Brats18_X_0_1")


def test_folder_layout_and_cli(polyp_folder, tmp_path, capsys):
    dl = folder_datalist(polyp_folder)
    assert len(dl["testing"]) == 6
    assert all("label" not in e for e in folder_datalist(polyp_folder, masks=None)["testing"])
    out = tmp_path / "dl.json"
    main(["folder", str(polyp_folder), "-o", str(out)])
    assert json.loads(out.read_text()) == dl and "testing 6" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="does not exist"):
        folder_datalist(tmp_path / "nowhere")


def test_split_by_case():
    tr, va = split_by_case([f"p{i}" for i in range(20)], 0.2, seed=1)
    assert len(va) == 4 and not set(tr) & set(va) and len(tr) + len(va) == 20
    with pytest.raises(ValueError):
        split_by_case(["a"], 1.0)
    # a small dataset still holds one case out; a single case stays in training
    assert [len(x) for x in split_by_case(["a", "b", "c"], 0.1)] == [2, 1]
    assert split_by_case(["a"], 0.1) == (["a"], [])
    assert split_by_case(["a", "b"], 0.0) == (["a", "b"], [])


def test_load_datalist_from_dict_resolves_and_checks(tmp_path):
    from monai_sam_adapt.data import load_datalist
    from monai_sam_adapt.errors import InputError

    (tmp_path / "a.nii.gz").write_bytes(b"x")
    (tmp_path / "b.nii.gz").write_bytes(b"x")
    dl = {"testing": [{"image": ["a.nii.gz", "b.nii.gz"], "label": "a.nii.gz", "case": "p1"}]}
    out = load_datalist(dl, tmp_path, "testing", required=["image", "label"])
    assert out == [
        {
            "image": [str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nii.gz")],
            "label": str(tmp_path / "a.nii.gz"),
            "case": "p1",
        }
    ]
    with pytest.raises(InputError, match="has no 'training' list"):
        load_datalist(dl, tmp_path, "training")
    with pytest.raises(InputError, match="c.nii.gz' does not exist"):
        load_datalist({"testing": [{"image": "c.nii.gz"}]}, tmp_path, "testing")


@pytest.mark.integration
def test_real_layouts():
    dl = kvasir_datalist(data_path("kvasir_seg"))
    assert [len(dl[k]) for k in ("training", "validation", "testing")] == [798, 100, 100]
    g = glas_datalist(data_path("glas"))
    assert len(g["training"]) + len(g["validation"]) == 85 and len(g["testing"]) == 80
    b = brats_datalist(data_path("brats2018"))
    assert [len(b[k]) for k in ("training", "validation", "testing")] == [6, 2, 2]
    assert [p.rsplit("_", 1)[1] for p in b["testing"][0]["image"]] == [
        "flair.nii.gz",
        "t1.nii.gz",
        "t1ce.nii.gz",
        "t2.nii.gz",
    ]


def test_splits_layout_extra_splits_labels_and_leaks(tmp_path, capsys):
    """The prepared MoNuSeg / BUSI / chest X-ray layout: extra id lists (BUSI's lesion-free ``normal``) become keys of
    their own, a ``labels`` map travels with the datalist, an id in two splits is refused."""
    root = tmp_path / "cxr"
    for i in range(5):
        write_png(root / "images" / f"cxr_{i}.png", np.full((12, 10), 40 * i, np.uint8))
        write_png(root / "masks" / f"cxr_{i}.png", np.full((12, 10), i % 4, np.uint8))
    splits = {"source": "x", "train": ["cxr_0", "cxr_1"], "val": ["cxr_2"], "test": ["cxr_3"], "normal": ["cxr_4"]}
    splits["labels"] = {"left lung": 1, "right lung": 2, "heart": 3}
    (root / "splits.json").write_text(json.dumps(splits))
    out = tmp_path / "dl.json"
    main(["splits", str(root), "-o", str(out)])
    dl = json.loads(out.read_text())
    assert [len(dl[k]) for k in ("training", "validation", "testing", "normal")] == [2, 1, 1, 1]
    assert dl["normal"] == [{"image": "images/cxr_4.png", "label": "masks/cxr_4.png"}]
    assert dl["labels"] == {"left lung": 1, "right lung": 2, "heart": 3} and "source" not in dl
    assert "normal 1" in capsys.readouterr().out
    splits["test"].append("cxr_1")
    (root / "splits.json").write_text(json.dumps(splits))
    with pytest.raises(ValueError, match="'cxr_1' is in both 'train' and 'test'"):
        main(["splits", str(root), "-o", str(out)])


def test_a_labels_map_that_disagrees_with_the_bundle_is_refused(polyp_folder, tmp_path):
    """A datalist saying heart is 1 while the bundle trains "heart" on value 3 would teach or score one structure under
    another's name: refused naming both maps, from a dict and from a JSON file; a matching map, a datalist with none
    and a binary bundle (no label_values) pass."""
    dl = kvasir_datalist(polyp_folder)
    names, values = ["left lung", "right lung", "heart"], [1, 2, 3]
    ok = dict(dl, labels={"left lung": 1, "right lung": 2, "heart": 3})
    assert len(load_datalist(ok, polyp_folder, "training", label_names=names, label_values=values)) == 3
    assert load_datalist(dl, polyp_folder, "training", label_names=names, label_values=values)
    swapped = dict(dl, labels={"heart": 1, "left lung": 2, "right lung": 3})
    assert load_datalist(swapped, polyp_folder, "training", label_names=["polyp"], label_values=None)
    with pytest.raises(InputError, match="'heart' is 1 there and 3 in the bundle"):
        load_datalist(swapped, polyp_folder, "training", label_names=names, label_values=values)
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(dict(dl, labels={"lung": 1})))
    with pytest.raises(InputError, match=r"mine.json.*'left lung' is not in it"):
        load_datalist(str(path), polyp_folder, "testing", label_names=names, label_values=values)


PREPARED = [("busi", [453, 65, 129, 133]), ("cxr", [59, 10, 29]), ("monuseg", [25, 5, 14])]


@pytest.mark.integration
@pytest.mark.parametrize("name,counts", PREPARED)
def test_prepared_more_layouts(name, counts):
    """The folders ``../shared/data/more/prepare.py`` writes, found through ``MONAI_SAM_MORE_DATA`` (default
    ``~/data``); skipped with the reason when a folder is absent."""
    root = prepared_path(name)
    dl = splits_datalist(root)
    keys = ["training", "validation", "testing", "normal"][: len(counts)]
    assert [len(dl[k]) for k in keys] == counts
    if name == "cxr":
        assert dl["labels"] == {"left lung": 1, "right lung": 2, "heart": 3}
