"""Per-image inference time of the box-prompted baseline, AutoSAM and AutoSAM's surrogate decoder h, in one run.

    python benchmarks/inference_time.py --dataset_dir ../shared/data/kvasir_seg \
        --datalist bundles/source/datalists/kvasir_seg.json --model bundles/autosam_kvasir/models/model.pt

Same images, same pre-processing, same process, batch 1; medians over images x repeats after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from monai.transforms import Compose

from monai_sam_adapt.data import load_datalist
from monai_sam_adapt.networks import AutoSAM, PromptedSAM
from monai_sam_adapt.transforms import BoxFromLabeld, LoadMedicalImaged, SAMPreprocessd, SelectLabelsd


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset_dir", required=True)
    ap.add_argument("--datalist", required=True)
    ap.add_argument("--model", required=True, help="AutoSAM models/model.pt")
    ap.add_argument("--prompt_encoder", default="head")
    ap.add_argument("--images", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    dev = torch.device(a.device)
    data = load_datalist(a.datalist, a.dataset_dir, "testing", required=["image", "label"])[: a.images]
    pre = Compose(
        [
            LoadMedicalImaged(["image", "label"]),
            SelectLabelsd("label", threshold=127),
            SAMPreprocessd("image", label_keys="label"),
            BoxFromLabeld("label"),
        ]
    )
    items = [pre(d) for d in data]
    box = PromptedSAM().to(dev).eval()
    auto = AutoSAM(box.sam, prompt_encoder=a.prompt_encoder, output="sam").to(dev).eval()
    auto.load_state_dict(torch.load(a.model, map_location=dev, weights_only=True))
    runs = {
        "box-prompted LiteMedSAM": lambda it: box(it["image"][None].to(dev), boxes=it["box"][None].to(dev)),
        "AutoSAM (g + frozen SAM decoder)": lambda it: auto(it["image"][None].to(dev)),
    }

    def h_only(it):
        x = it["image"][None].to(dev)
        auto.output = "h"
        try:
            return auto(x)
        finally:
            auto.output = "sam"

    runs["AutoSAM surrogate h alone"] = h_only
    times: dict[str, list[float]] = {k: [] for k in runs}
    with torch.no_grad():
        for name, fn in runs.items():
            fn(items[0])  # warm-up
            for _ in range(a.repeats):
                for it in items:
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                    t = time.perf_counter()
                    fn(it)
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                    times[name].append(time.perf_counter() - t)
    base = statistics.median(times["box-prompted LiteMedSAM"])
    result = {
        "device": str(dev),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "images": len(items),
        "repeats": a.repeats,
        "median_seconds": {k: round(statistics.median(v), 4) for k, v in times.items()},
        "ratio_to_box": {k: round(statistics.median(v) / base, 3) for k, v in times.items()},
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
