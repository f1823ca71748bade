"""Decathlon-style datalists (``training`` / ``validation`` / ``testing``) for the dataset layouts we support.

Entries are ``{"image": ..., "label": ...}`` with paths relative to the dataset folder, as MONAI's
``load_decathlon_datalist(..., base_dir=dataset_dir)`` expects. Splits never put one patient on two sides.

Command line::

    python -m monai_sam_adapt.data kvasir ../shared/data/kvasir_seg -o kvasir.json
    python -m monai_sam_adapt.data splits DIR -o mine.json       # images/ + masks/ + splits.json (any dataset)
    python -m monai_sam_adapt.data glas   ../shared/data/glas -o glas.json
    python -m monai_sam_adapt.data brats  ../shared/data/brats2018 -o brats.json
    python -m monai_sam_adapt.data lits   /data/LiTS -o lits.json
    python -m monai_sam_adapt.data folder DIR --images images --masks masks -o mine.json
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections.abc import Sequence
from pathlib import Path

from ..io import IMAGE_SUFFIXES, atomic_write
from ..io import image_stem as _stem

__all__ = [
    "BRATS_MODALITIES",
    "IMAGE_SUFFIXES",
    "brats_datalist",
    "folder_datalist",
    "glas_datalist",
    "kvasir_datalist",
    "lits_datalist",
    "main",
    "splits_datalist",
    "split_by_case",
    "write_datalist",
]


def _need_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{what} folder {str(path)!r} does not exist.")
    return path


def split_by_case(cases: Sequence[str], val_fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """Deterministic split of case ids (patients, not slices) into training and validation."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    cases = sorted(cases)
    rng = random.Random(seed)
    shuffled = cases[:]
    rng.shuffle(shuffled)
    n_val = int(round(len(cases) * val_fraction))
    if val_fraction > 0 and len(cases) > 1:
        n_val = max(1, n_val)  # a small dataset still gets one held-out case
    val = sorted(shuffled[:n_val])
    return [c for c in cases if c not in set(val)], val


def splits_datalist(root: str | Path, splits: str | Path | None = None) -> dict:
    """A folder of ``images/<id>.<ext>`` with ``masks/<id>.<ext>`` (the same file names) split by a ``splits.json``
    (Kvasir-SEG's layout, and that of the prepared MoNuSeg, BUSI and chest X-ray folders).

    ``splits.json`` holds ``train`` / ``val`` / ``test`` lists of ids (-> ``training`` / ``validation`` /
    ``testing``); any other list (BUSI's lesion-free ``normal`` images) becomes a datalist key of its own, for
    ``--datalist_key``. A ``labels`` map of name -> mask value (several structures in one label map) is kept in the
    datalist as it is. An id in two splits, an id with no image, an image with no mask or a split missing is refused
    naming the file. Without a ``splits.json`` every pair goes under ``testing``."""
    root = Path(root)
    images, masks = _need_dir(root / "images", "images"), _need_dir(root / "masks", "masks")
    by_id = {_stem(p): p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    splits = Path(splits) if splits else root / "splits.json"

    def entry(case: str) -> dict:
        if case not in by_id:
            raise FileNotFoundError(f"{splits}: image {case!r} is not in {images}.")
        img = by_id[case]
        mask = masks / img.name
        if not mask.exists():
            raise FileNotFoundError(f"image {img} has no mask {mask}.")
        return {"image": str(img.relative_to(root)), "label": str(mask.relative_to(root))}

    if not splits.exists():
        return {"training": [], "validation": [], "testing": [entry(c) for c in sorted(by_id)]}
    s = json.loads(splits.read_text())
    names = {"train": "training", "val": "validation", "test": "testing"}
    missing = [k for k in names if k not in s]
    if missing:
        raise ValueError(f"{splits} lacks the split(s) {missing}; expected keys 'train', 'val', 'test'.")
    lists = {k: v for k, v in s.items() if isinstance(v, list)}
    seen: dict[str, str] = {}
    for split, ids in lists.items():
        for case in ids:
            if case in seen:
                raise ValueError(f"{splits}: {case!r} is in both {seen[case]!r} and {split!r}.")
            seen[case] = split
    out: dict = {names.get(k, k): [entry(c) for c in ids] for k, ids in lists.items()}
    if isinstance(s.get("labels"), dict):
        out["labels"] = s["labels"]
    return out


#: Kvasir-SEG (``images/<id>.jpg``, ``masks/<id>.jpg``, ``splits.json``) is this layout.
kvasir_datalist = splits_datalist


def glas_datalist(root: str | Path, val_fraction: float = 0.15, seed: int = 0) -> dict[str, list[dict]]:
    """GlaS (Warwick-QU): ``train_N`` for training (a fixed ``val_fraction`` of them held out for validation, chosen
    by ``seed``), ``testA_N`` + ``testB_N`` for testing; masks are ``<name>_anno.<ext>``."""
    root = _need_dir(Path(root), "GlaS")
    pairs: dict[str, dict] = {}
    for p in sorted(root.iterdir()):
        m = re.fullmatch(r"((?:train|testA|testB)_\d+)(_anno)?", _stem(p))
        if m and p.suffix.lower() in IMAGE_SUFFIXES:
            pairs.setdefault(m.group(1), {})["label" if m.group(2) else "image"] = str(p.relative_to(root))
    incomplete = sorted(k for k, v in pairs.items() if set(v) != {"image", "label"})
    if incomplete:
        raise FileNotFoundError(f"GlaS folder {root}: image or annotation missing for {incomplete[:5]}.")
    if not pairs:
        raise FileNotFoundError(f"GlaS folder {root} holds no train_N / testA_N / testB_N images.")
    order = sorted(pairs, key=lambda k: (k.split("_")[0], int(k.split("_")[1])))
    train_ids = [k for k in order if k.startswith("train_")]
    tr, va = split_by_case(train_ids, val_fraction, seed)
    return {
        "training": [pairs[k] for k in order if k in set(tr)],
        "validation": [pairs[k] for k in order if k in set(va)],
        "testing": [pairs[k] for k in order if k.startswith("test")],
    }


#: BraTS 2018+ modalities in the challenge's file names, and the label file's suffix.
BRATS_MODALITIES = ("flair", "t1", "t1ce", "t2")


def brats_datalist(
    root: str | Path,
    modalities: Sequence[str] | None = None,
    label: str | None = None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> dict[str, list[dict]]:
    """BraTS datalists, two layouts; the image entry lists one file per modality (stacked as channels by MONAI's
    ``LoadImaged``), in ``modalities`` order.

    - BraTS 2018 and later (the challenge's own): ``<root>/<case>/<case>_{flair,t1,t1ce,t2,seg}.nii[.gz]``, no split
      folders. Cases are split by case (never by slice): ``test_fraction`` of them for testing, then
      ``val_fraction`` (of all) for validation, seeded. Defaults: all four modalities, label ``seg``.
    - BRATS 2015 style: ``{train,validation,test}/<case>/<Modality>*.nii.gz`` with ``<label>*.nii.gz``; the folders
      are the split. Defaults: ``Flair``, ``T1c``, label ``OTMultiClass``.
    """
    root = _need_dir(Path(root), "BraTS")
    if not any((root / split).is_dir() for split in ("train", "validation", "test")):
        return _brats2018_datalist(
            root, modalities or BRATS_MODALITIES, label or "seg", val_fraction, test_fraction, seed
        )
    modalities, label = modalities or ("Flair", "T1c"), label or "OTMultiClass"
    out: dict[str, list[dict]] = {}
    for split, key in (("train", "training"), ("validation", "validation"), ("test", "testing")):
        out[key] = []
        if not (root / split).is_dir():
            continue
        for case in sorted(p for p in (root / split).iterdir() if p.is_dir()):

            def find(prefix: str, case: Path = case) -> str:
                hits = sorted(f for f in case.iterdir() if f.name.startswith(prefix) and ".nii" in f.name)
                if not hits:
                    raise FileNotFoundError(f"BRATS case {case} has no {prefix}*.nii(.gz) file.")
                return str(hits[0].relative_to(root))

            out[key].append({"image": [find(m) for m in modalities], "label": find(label), "case": case.name})
    if not any(out.values()):
        raise FileNotFoundError(f"BRATS folder {root} holds no train/validation/test case folders.")
    return out


def _brats2018_datalist(
    root: Path, modalities: Sequence[str], label: str, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[dict]]:
    cases = {}
    for case in sorted(p for p in root.iterdir() if p.is_dir()):

        def find(suffix: str, case: Path = case) -> str:
            for ext in (".nii.gz", ".nii"):
                f = case / f"{case.name}_{suffix}{ext}"
                if f.is_file():
                    return str(f.relative_to(root))
            raise FileNotFoundError(f"BraTS case {str(case)!r} has no {case.name}_{suffix}.nii(.gz) file.")

        if any(case.glob(f"{case.name}_*.nii*")):
            cases[case.name] = {"image": [find(m) for m in modalities], "label": find(label), "case": case.name}
    if not cases:
        raise FileNotFoundError(
            f"BraTS folder {str(root)!r} holds neither <case>/<case>_{{flair,t1,t1ce,t2,seg}}.nii.gz case folders "
            "(BraTS 2018+) nor train/validation/test folders (BRATS 2015)."
        )
    rest, test = split_by_case(list(cases), test_fraction, seed)
    train, val = split_by_case(rest, val_fraction / max(1e-9, 1 - test_fraction), seed + 1)
    return {k: [cases[c] for c in ids] for k, ids in (("training", train), ("validation", val), ("testing", test))}


def lits_datalist(
    root: str | Path, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0
) -> dict[str, list[dict]]:
    """LiTS layout: ``volume-N.nii[.gz]`` with ``segmentation-N.nii[.gz]`` (anywhere below ``root``). One volume is
    one patient; splits are by patient, never by slice."""
    root = _need_dir(Path(root), "LiTS")
    vols = {int(m.group(1)): p for p in root.rglob("volume-*.nii*") if (m := re.match(r"volume-(\d+)\.nii", p.name))}
    segs = {
        int(m.group(1)): p
        for p in root.rglob("segmentation-*.nii*")
        if (m := re.match(r"segmentation-(\d+)\.nii", p.name))
    }
    if not vols:
        raise FileNotFoundError(f"LiTS folder {root} holds no volume-N.nii files.")
    unlabeled = sorted(set(vols) - set(segs))
    if unlabeled:
        raise FileNotFoundError(f"LiTS volumes without segmentation-N.nii: {[str(vols[i]) for i in unlabeled[:5]]}.")
    ids = [str(i) for i in sorted(vols)]
    rest, test = split_by_case(ids, test_fraction, seed)
    train, val = split_by_case(rest, val_fraction / max(1e-9, 1 - test_fraction), seed + 1)

    def entries(keys: list[str]) -> list[dict]:
        return [
            {
                "image": str(vols[int(k)].relative_to(root)),
                "label": str(segs[int(k)].relative_to(root)),
                "case": f"volume-{k}",
            }
            for k in sorted(keys, key=int)
        ]

    return {"training": entries(train), "validation": entries(val), "testing": entries(test)}


def folder_datalist(
    root: str | Path, images: str = "images", masks: str | None = "masks", mask_suffix: str = "", split: str = "testing"
) -> dict[str, list[dict]]:
    """Any folder of images with masks of the same stem (``<stem><mask_suffix>.<ext>`` in ``masks``): all under
    ``split``. With ``masks=None``, images only (for inference)."""
    root = Path(root)
    img_dir = _need_dir(root / images, "images")
    mask_dir = _need_dir(root / masks, "masks") if masks else None
    mask_by_stem = {}
    if mask_dir is not None:
        mask_by_stem = {_stem(p): p for p in mask_dir.iterdir() if p.name.lower().endswith(IMAGE_SUFFIXES)}
    entries = []
    for p in sorted(img_dir.iterdir()):
        if not p.name.lower().endswith(IMAGE_SUFFIXES):
            continue
        e = {"image": str(p.relative_to(root))}
        if mask_dir is not None:
            m = mask_by_stem.get(_stem(p) + mask_suffix)
            if m is None:
                raise FileNotFoundError(f"image {p} has no mask named {_stem(p) + mask_suffix}.* in {mask_dir}.")
            e["label"] = str(m.relative_to(root))
        entries.append(e)
    if not entries:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {img_dir}.")
    out: dict[str, list[dict]] = {"training": [], "validation": [], "testing": []}
    out[split] = entries
    return out


def write_datalist(datalist: dict, path: str | Path) -> Path:
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(datalist, indent=1))
    return Path(path)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m monai_sam_adapt.data", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="layout", required=True)
    for name in ("kvasir", "splits", "glas", "brats", "lits", "folder"):
        p = sub.add_parser(name)
        p.add_argument("root")
        p.add_argument("-o", "--output", required=True, help="datalist JSON to write")
        if name in ("kvasir", "splits"):
            p.add_argument("--splits", default=None, help="splits.json (default: ROOT/splits.json)")
        if name in ("glas", "lits", "brats"):
            p.add_argument("--val-fraction", type=float, default={"glas": 0.15, "lits": 0.1, "brats": 0.2}[name])
            p.add_argument("--seed", type=int, default=0)
        if name == "brats":
            p.add_argument("--modalities", nargs="+", help="default: flair t1 t1ce t2 (2018+), Flair T1c (2015)")
            p.add_argument("--test-fraction", type=float, default=0.2, help="BraTS 2018+ layout (no split folders)")
        if name == "folder":
            p.add_argument("--images", default="images")
            p.add_argument("--masks", default="masks", help="'' for images only")
            p.add_argument("--mask-suffix", default="")
            p.add_argument("--split", default="testing", choices=["training", "validation", "testing"])
    a = ap.parse_args(argv)
    if a.layout in ("kvasir", "splits"):
        dl = splits_datalist(a.root, a.splits)
    elif a.layout == "glas":
        dl = glas_datalist(a.root, a.val_fraction, a.seed)
    elif a.layout == "brats":
        dl = brats_datalist(
            a.root, a.modalities, val_fraction=a.val_fraction, test_fraction=a.test_fraction, seed=a.seed
        )
    elif a.layout == "lits":
        dl = lits_datalist(a.root, a.val_fraction, seed=a.seed)
    else:
        dl = folder_datalist(a.root, a.images, a.masks or None, a.mask_suffix, a.split)
    out = write_datalist(dl, a.output)
    print(f"wrote {out}: " + ", ".join(f"{k} {len(v)}" for k, v in dl.items() if isinstance(v, list)))
