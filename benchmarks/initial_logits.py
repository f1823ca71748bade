"""Where a bundle's untrained (or given) network starts on real training samples: logits, largest probability, Dice.

    python benchmarks/initial_logits.py --config bundles/ssam_brats/configs/train.json \
        --dataset_dir ../shared/data/brats2018
    python benchmarks/initial_logits.py --config bundles/ssam_glas/configs/train.json --dataset_dir ../shared/data/glas
    python benchmarks/initial_logits.py ... --weights runs/checkpoints/checkpoint_epoch=43.pt   # a training checkpoint

A saturated start (logits far below 0 everywhere) needs many optimizer steps before any foreground appears; run this
before a long CPU training to see where it begins.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="a bundle's configs/train.json")
    p.add_argument("--dataset_dir", required=True)
    p.add_argument("--weights", default=None, help="model.pt or a resumable checkpoint (its 'network' entry)")
    p.add_argument("--n", type=int, default=3, help="training samples to look at")
    args = p.parse_args()

    from monai_sam_adapt.bundle import bundle_workflow

    cfg = Path(args.config)
    wf = bundle_workflow(
        cfg.resolve().parents[1], cfg.name, dataset_dir=args.dataset_dir, num_workers=0, device="$torch.device('cpu')"
    )
    parser = wf.parser
    net = parser.get_parsed_content("network")
    if args.weights:
        state = torch.load(args.weights, map_location="cpu", weights_only=True)
        net.load_state_dict(state.get("network", state.get("model", state)))
    net.eval()
    dataset = parser.get_parsed_content("train#dataset")
    for i in range(args.n):
        d = dataset[i]
        d = d[0] if isinstance(d, list) else d  # RandSliced returns several slices per volume
        x, y = d["image"], d["label"] > 0
        with torch.no_grad():
            logits = net(x[None])[0]
        prob = torch.sigmoid(logits)
        fg = prob > 0.5
        dice = [round(float(2 * (f & t).sum() / max(int(f.sum() + t.sum()), 1)), 3) for f, t in zip(fg, y)]
        print(
            f"sample {i}: label pixels {y.flatten(1).sum(1).tolist()}, mean logit {logits.mean():.2f}, "
            f"largest probability {[f'{v:.2g}' for v in prob.flatten(1).amax(1).tolist()]}, Dice {dice}"
        )


if __name__ == "__main__":
    main()
