"""Per-image Dice of one or more evaluations, grouped by how much of the image the expert's mask covers, and each
evaluation paired with the first one over the same images.

    python benchmarks/dice_by_size.py --data ../shared/data/kvasir_seg \
        --run 256px=EVAL_DIR_A --run 512px=EVAL_DIR_B --out benchmarks/results/dice_by_size_autosam_kvasir.json

Each ``EVAL_DIR`` is the ``--output_dir`` of a bundle's ``evaluate.json`` (its ``val_mean_dice_raw.csv``: one row per
image, the image's path first). The expert mask of each image is found beside it (Kvasir-SEG: ``images/`` ->
``masks/``; GlaS: ``<name>.png`` -> ``<name>_anno.png``) and binarised at 127, as the bundles do. Bins are of the mask's
area over the image's area; per bin: images, mean Dice per run, images below Dice 0.5 per run. Where AutoSAM misses on
Kvasir-SEG it misses small polyps, which is what reading g at a larger side is for.

``paired``: every run after the first against the first, per image (``_results.paired_gain``: mean difference, its
standard error, images gaining / losing more than 0.05).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from _results import paired_gain, report
from PIL import Image

BINS = (0.0, 0.03, 0.08, 0.2, 1.01)


def read_dice(run_dir: Path) -> dict[str, float]:
    with open(run_dir / "val_mean_dice_raw.csv") as f:
        rows = list(csv.reader(f))[1:]
    return {Path(r[0]).name: float(r[1]) for r in rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="the dataset folder the evaluations read")
    ap.add_argument("--run", action="append", required=True, help="NAME=EVAL_DIR (repeat)")
    ap.add_argument("--out", help="write the JSON result here too")
    a = ap.parse_args()
    data = Path(a.data)
    runs = {}
    for spec in a.run:
        name, _, folder = spec.partition("=")
        if not folder:
            raise SystemExit(f"--run {spec!r}: expected NAME=EVAL_DIR")
        runs[name] = read_dice(Path(folder))
    images = sorted(set.intersection(*(set(d) for d in runs.values())))
    if not images:
        raise SystemExit("the evaluations share no image")
    fraction = {}
    for name in images:
        path = data / "masks" / name if (data / "masks").is_dir() else data / (Path(name).stem + "_anno.png")
        if not path.exists():
            raise SystemExit(f"no expert mask for {name}: looked for {path}")
        fraction[name] = float((np.asarray(Image.open(path).convert("L")) > 127).mean())
    bins = []
    for lo, hi in zip(BINS[:-1], BINS[1:]):
        members = [n for n in images if lo <= fraction[n] < hi]
        row = {"mask_fraction": [lo, min(hi, 1.0)], "images": len(members)}
        for run, dice in runs.items():
            values = np.array([dice[n] for n in members])
            row[run] = {
                "mean_dice": round(float(values.mean()), 4) if len(values) else None,
                "below_0.5": int((values < 0.5).sum()),
            }
        bins.append(row)
    first = next(iter(runs))
    paired = {
        f"{run} - {first}": paired_gain([dice[n] for n in images], [runs[first][n] for n in images])
        for run, dice in list(runs.items())[1:]
    }
    result = {
        "images": len(images),
        "mean_dice": {run: round(float(np.mean([d[n] for n in images])), 4) for run, d in runs.items()},
        "paired": paired,
        "bins": bins,
    }
    report(result, a.out)


if __name__ == "__main__":
    main()
