"""Per-image latency and test Dice of the automatic bundles in every runtime of the frozen image encoder, on this CPU.

    python benchmarks/runtimes.py --data ../shared/data --out benchmarks/results/runtimes.json

For each bundle (``autosam_kvasir``, ``ssam_glas``, ``boxsam_kvasir``) and runtime (``torch`` fp32 eager,
``torch-bf16``, ``onnxruntime``, ``openvino``, ``openvino-bf16``) this runs the bundle's own ``evaluate.json`` on its
whole test split with ``runtime=R`` (one run each, ``num_workers=0``, one image per iteration, ``symmetries=none``:
one network pass per image, no test-time averaging) and records the mean
Dice and the time of each iteration (network + post-processing, data loading excluded; ignite's ``Timer``). The first
iteration of a non-torch runtime includes exporting the encoder to ONNX (cached afterwards) and compiling it: it is
reported apart, and the median is over the others. Writes one JSON with every run and the speed-up and Dice change
against ``torch``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLES = {"autosam_kvasir": "kvasir_seg", "autosam_glas": "glas", "ssam_glas": "glas", "boxsam_kvasir": "kvasir_seg"}
RUNTIMES = ("torch", "torch-bf16", "onnxruntime", "openvino", "openvino-bf16")


def run(bundle: str, runtime: str, data: Path, out: Path, datalist: str | None) -> dict:
    from ignite.engine import Events

    from monai_sam_adapt.bundle import bundle_workflow

    override = dict(
        dataset_dir=str(data / BUNDLES[bundle]),
        output_dir=str(out),
        runtime=runtime,
        num_workers=0,
        overlay_titles=[],
        symmetries="none",  # one network pass per image: the runtimes are compared, not test-time averaging
    )
    if datalist:
        override["datalist"] = datalist
    wf = bundle_workflow(REPO / "bundles" / bundle, "evaluate.json", **override)
    wf.initialize()
    evaluator = wf.parser.get_parsed_content("evaluator")
    times: list[float] = []
    start: list[float] = []
    evaluator.add_event_handler(Events.ITERATION_STARTED, lambda e: start.append(time.perf_counter()))
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda e: times.append(time.perf_counter() - start[-1]))
    t0 = time.time()
    wf.run()
    wall = time.time() - t0
    wf.finalize()
    metrics = evaluator.state.metrics
    return {
        "bundle": bundle,
        "runtime": runtime,
        "images": len(times),
        "dice": float(metrics["val_mean_dice"]),
        "first_iteration_s": round(times[0], 3),
        "median_iteration_s": round(statistics.median(times[1:]), 4),
        "mean_iteration_s": round(statistics.fmean(times[1:]), 4),
        "wall_s": round(wall, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "runtimes.json"))
    p.add_argument("--bundles", nargs="+", default=list(BUNDLES))
    p.add_argument("--runtimes", nargs="+", default=list(RUNTIMES))
    p.add_argument("--work", default="/tmp/runtimes_benchmark", help="evaluation outputs (outside the repository)")
    p.add_argument("--limit", type=int, default=0, help="first N test images only (a smoke run; 0: all)")
    args = p.parse_args()
    sys.path.insert(0, str(REPO))
    import torch

    from monai_sam_adapt.data import kvasir_datalist, write_datalist

    data, work = Path(args.data), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    lists = {
        "kvasir_seg": json.loads((REPO / "bundles/source/datalists/kvasir_seg.json").read_text()),
        "glas": json.loads((REPO / "bundles/source/datalists/glas.json").read_text()),
        "boxes": kvasir_datalist(data / "kvasir_seg"),
    }
    if args.limit:
        lists = {k: {**v, "testing": v["testing"][: args.limit]} for k, v in lists.items()}
    files = {k: str(write_datalist(v, work / f"{k}.json")) for k, v in lists.items()}
    runs = []
    for bundle in args.bundles:
        for runtime in args.runtimes:
            out = work / f"{bundle}-{runtime}"
            datalist = files["boxes"] if bundle.startswith("boxsam") else files[BUNDLES[bundle]]
            r = run(bundle, runtime, data, out, datalist)
            runs.append(r)
            print(json.dumps(r), flush=True)
    for r in runs:
        ref = next((x for x in runs if x["bundle"] == r["bundle"] and x["runtime"] == "torch"), None)
        if ref:
            r["speedup_vs_torch"] = round(ref["median_iteration_s"] / r["median_iteration_s"], 2)
            r["dice_change_vs_torch"] = round(r["dice"] - ref["dice"], 5)
    result = {
        "machine": f"{torch.get_num_threads()} torch threads, CPU only",
        "command": "python benchmarks/runtimes.py " + " ".join(sys.argv[1:]),
        "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
