"""Free-text label names: the Dice of an S-SAM model prompted with names other than the one it was trained on.

    python benchmarks/label_names.py --bundle ssam_glas --model_path bundles/ssam_glas/models/model.pt \
        --data ../shared/data/glas --out benchmarks/results/label_names_ssam_glas.json

For each name in ``--names`` this runs the bundle's own ``evaluate.json`` with ``prompt_names=[name]`` on the
validation split (where the acceptance threshold is chosen) and on the test split, and records its cosine similarity
to the trained name (the bundle's text encoder) and the mean Dice, or the refusal message for a name below the
threshold. The trained name itself is the reference row. ``--prompt_threshold 0`` evaluates every name, which is how
the threshold is chosen: the lowest similarity at which validation Dice stays within 0.02 of the trained name's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _results import report

REPO = Path(__file__).resolve().parents[1]
NAMES = [
    "gland",
    "glands",
    "colon gland",
    "glandular epithelium",
    "intestinal gland",
    "colonic crypt",
    "epithelial gland",
    "tissue",
    "liver",
    "polyp",
    "brain tumor",
]


def evaluate(a: argparse.Namespace, name: str, split: str) -> dict:
    from monai_sam_adapt.bundle import bundle_workflow
    from monai_sam_adapt.errors import UnknownLabelError, find_error

    out = Path(a.work) / split / name.replace(" ", "_")
    try:
        wf = bundle_workflow(
            REPO / "bundles" / a.bundle,
            "evaluate.json",
            dataset_dir=a.data,
            output_dir=str(out),
            model_path=a.model_path,
            text_encoder=a.text_encoder,
            text_rank=a.text_rank,
            prompt_names=[name],
            prompt_threshold=a.prompt_threshold,
            datalist_key=split,
            runtime=a.runtime,
            symmetries=a.symmetries,
            num_workers=0,
            overlay_titles=[],
        )
        wf.initialize()
        evaluator = wf.parser.get_parsed_content("evaluator")
        wf.run()
        wf.finalize()
    except Exception as e:  # noqa: BLE001 - a refused name is a result
        err = find_error(e)
        if isinstance(err, UnknownLabelError):
            return {"name": name, "split": split, "refused": str(err).strip("\"'")}
        raise
    return {"name": name, "split": split, "dice": round(float(evaluator.state.metrics["val_mean_dice"]), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="ssam_glas")
    ap.add_argument("--model_path", required=True)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "glas"))
    ap.add_argument("--text_encoder", default="minilm")
    ap.add_argument("--text_rank", type=int, default=4)
    ap.add_argument("--runtime", default="openvino")
    ap.add_argument(
        "--symmetries",
        default="none",
        help="test-time averaging (a 2D bundle's `symmetries`); off by default: the names are compared with each other",
    )
    ap.add_argument("--prompt_threshold", type=float, help="override the acceptance threshold (0: measure every name)")
    ap.add_argument("--names", nargs="+", default=NAMES)
    ap.add_argument("--splits", nargs="+", default=["validation", "testing"])
    ap.add_argument("--work", default="/tmp/label_names", help="evaluation outputs (outside the repository)")
    ap.add_argument("--out")
    a = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from monai_sam_adapt.networks import build_text_encoder

    trained = json.loads((REPO / "bundles" / a.bundle / "configs" / "evaluate.json").read_text())["label_names"]
    enc = build_text_encoder(trained, a.text_encoder)
    feats = enc(trained + a.names)
    sims = (feats[len(trained) :] @ feats[: len(trained)].T).max(1).values.tolist()
    rows = []
    for split in a.splits:
        for name, sim in zip(a.names, sims):
            rows.append({**evaluate(a, name, split), "similarity_to_trained": round(sim, 3)})
            print(json.dumps(rows[-1]), flush=True)
    result = {
        "trained_names": trained,
        "text_encoder": enc.fingerprint,
        "symmetries": a.symmetries,
        "rows": rows,
    }
    report(result, a.out)


if __name__ == "__main__":
    main()
