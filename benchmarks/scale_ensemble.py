"""Averaging the probability maps of AutoSAM models that read the image at different sides (a scale ensemble).

    python benchmarks/scale_ensemble.py --bundle autosam_kvasir --data ../shared/data/kvasir_seg \
        --member 256=bundles/autosam_kvasir/models/model.pt --member 512=RUN/models/model.pt \
        --splits validation --out benchmarks/results/scale_ensemble_autosam_kvasir.json

Each ``--member SIDE=MODEL`` runs the bundle's own ``evaluate.json`` with ``--image_size SIDE`` (one pass per image,
the bundle's runtime as given) and keeps each image's AutoSAM probability map on the image's own grid (the machinery
of ``postprocessing.py``); then every member alone and the mean of all members' maps are thresholded at 0.5 and scored
with MONAI's Dice and HD95. Choose on ``validation``; ``testing`` is for reporting a choice once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from _results import report
from postprocessing import REPO, probabilities, score


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="autosam_kvasir")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "kvasir_seg"))
    ap.add_argument("--member", action="append", required=True, help="SIDE=MODEL_PATH (repeat)")
    ap.add_argument("--runtime", default="openvino")
    ap.add_argument("--splits", nargs="+", default=["validation"])
    ap.add_argument("--work", default="/tmp/scale_ensemble", help="evaluation outputs (outside the repository)")
    ap.add_argument("--out")
    a = ap.parse_args()
    sys.path.insert(0, str(REPO))
    members = []
    for spec in a.member:
        side, _, model = spec.partition("=")
        if not model or not side.isdigit():
            raise SystemExit(f"--member {spec!r}: expected SIDE=MODEL_PATH")
        members.append((int(side), model))
    result: dict = {"bundle": a.bundle, "members": [f"{s}={m}" for s, m in members], "splits": {}}
    for split in a.splits:
        maps = {}
        for side, model in members:
            ns = argparse.Namespace(
                bundle=a.bundle,
                data=a.data,
                work=str(Path(a.work) / str(side)),
                model_path=model,
                runtime=a.runtime,
                symmetries="none",
                image_size=side,
            )
            maps[side] = probabilities(ns, split)
        first = next(iter(maps.values()))
        for side, m in maps.items():  # the same images in the same order
            if len(m) != len(first) or any(not (a_[1] == b_[1]).all() for a_, b_ in zip(m, first)):
                raise SystemExit(f"the evaluation at side {side} did not see the same images and labels")
        rows = {f"{side} alone": score(m, 0.5, 0) for side, m in maps.items()}
        mean = [(sum(m[i][0] for m in maps.values()) / len(maps), label) for i, (_, label) in enumerate(first)]
        rows["mean of " + " + ".join(str(s) for s in maps)] = score(mean, 0.5, 0)
        result["splits"][split] = {"images": len(mean), "rows": rows}
        print(split, rows, flush=True)
    report(result, a.out)


if __name__ == "__main__":
    main()
