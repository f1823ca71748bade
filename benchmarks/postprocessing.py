"""Post-processing of a 2D bundle's masks, chosen on validation: probability threshold x smallest kept object.

    python benchmarks/postprocessing.py --bundle ssam_glas --data ../shared/data/glas --splits validation \
        --out benchmarks/results/postprocessing_ssam_glas.json

The bundle's own ``evaluate.json`` runs once per split (its inferer, symmetries and runtime as configured, or as
overridden here) with the thresholding left out, so each image's probability map on its own grid is kept; then every
(threshold, min_object_size) pair is applied to the same maps with MONAI's ``AsDiscrete`` and ``RemoveSmallObjects``
(connected components smaller than ``min_object_size`` pixels of the original grid are dropped) and scored with
MONAI's Dice and 95% Hausdorff distance (the HD95 mean is over images with a finite distance). Choose on
``validation``; ``testing`` is for reporting the chosen pair once. The bundles ship no such step: on ``ssam_glas``'s
validation images it did not pay (``benchmarks/results/postprocessing_ssam_glas.json``). Each row's ``vs_shipped``: its
per-image Dice against the shipped 0.5 / no removal (``_results.paired_gain``: mean gain, its standard error, images
gaining / losing more than 0.05); a grid of 30 pairs chosen on the same images needs more than one standard error to
mean anything.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

from _results import paired_gain, report

REPO = Path(__file__).resolve().parents[1]


def probabilities(a: argparse.Namespace, split: str) -> list[tuple]:
    """(probability map, label) of every image of ``split``, on the image's own grid."""
    from ignite.engine import Events

    from monai_sam_adapt.bundle import bundle_workflow

    wf = bundle_workflow(
        REPO / "bundles" / a.bundle,
        "evaluate.json",
        dataset_dir=a.data,
        output_dir=str(Path(a.work) / split),
        model_path=a.model_path,
        datalist_key=split,
        runtime=a.runtime,
        num_workers=0,
        overlay_titles=[],
        metric_handlers=[],
        additional_metrics={},
        postprocessing={
            "_target_": "Compose",
            "transforms": [
                "@invert",
                "@split_outputs",
                {"_target_": "Activationsd", "keys": "@pred_keys", "sigmoid": True},
            ],
        },
        **({"symmetries": a.symmetries} if a.symmetries else {}),
        **({"image_size": a.image_size} if getattr(a, "image_size", None) else {}),
    )
    wf.initialize()
    evaluator = wf.parser.get_parsed_content("evaluator")
    key = wf.parser.get_parsed_content("pred_key")  # AutoSAM: "pred_sam" (its "pred" holds h's channel too)
    kept: list[tuple] = []

    @evaluator.on(Events.ITERATION_COMPLETED)
    def _keep(engine) -> None:
        for item in engine.state.output:
            kept.append((item[key].detach().cpu().as_tensor(), item["label"].detach().cpu().as_tensor()))

    wf.run()
    wf.finalize()
    return kept


def score(maps: list[tuple], threshold: float, min_size: int) -> dict:
    import torch
    from monai.metrics import compute_dice, compute_hausdorff_distance
    from monai.transforms import AsDiscrete, RemoveSmallObjects

    binarise, clean = AsDiscrete(threshold=threshold), RemoveSmallObjects(min_size=min_size)
    dice, hd95 = [], []
    for prob, label in maps:
        pred = binarise(prob)
        if min_size:
            pred = clean(pred)
        pred, label = torch.as_tensor(pred)[None].float(), label[None].float()
        dice.append(compute_dice(pred, label, include_background=True).item())
        hd95.append(compute_hausdorff_distance(pred, label, include_background=True, percentile=95).item())
    finite = [h for h in hd95 if h == h and h != float("inf")]
    return {
        "threshold": threshold,
        "min_object_size": min_size,
        "dice": round(sum(dice) / len(dice), 4),
        "median_dice": round(float(torch.tensor(dice).median()), 4),
        "hd95": round(sum(finite) / max(len(finite), 1), 2),
        "per_image_dice": dice,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="ssam_glas")
    ap.add_argument("--model_path", help="default: the bundle's models/model.pt")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "glas"))
    ap.add_argument("--runtime", default="openvino")
    ap.add_argument("--symmetries", help="override the bundle's test-time averaging (default: as the bundle ships)")
    ap.add_argument("--thresholds", nargs="+", type=float, default=[0.3, 0.4, 0.5, 0.6, 0.7])
    ap.add_argument("--min_sizes", nargs="+", type=int, default=[0, 100, 250, 500, 1000, 2000])
    ap.add_argument("--splits", nargs="+", default=["validation"])
    ap.add_argument("--work", default="/tmp/postprocessing", help="evaluation outputs (outside the repository)")
    ap.add_argument("--out")
    a = ap.parse_args()
    sys.path.insert(0, str(REPO))
    a.model_path = a.model_path or str(REPO / "bundles" / a.bundle / "models" / "model.pt")
    result: dict = {"bundle": a.bundle, "symmetries": a.symmetries or "as shipped", "splits": {}}
    for split in a.splits:
        maps = probabilities(a, split)
        rows = [score(maps, t, m) for t, m in itertools.product(a.thresholds, a.min_sizes)]
        shipped = score(maps, 0.5, 0)["per_image_dice"]
        for r in rows:
            r["vs_shipped"] = paired_gain(r.pop("per_image_dice"), shipped)
        best = max(rows, key=lambda r: (r["dice"], -abs(r["threshold"] - 0.5), -r["min_object_size"]))
        result["splits"][split] = {"images": len(maps), "best": best, "rows": rows}
        print(split, best, flush=True)
    report(result, a.out)


if __name__ == "__main__":
    main()
