"""End-to-end speed of every shipped bundle in each runtime, run as a user runs it, on this CPU.

    python benchmarks/runtimes.py --data ../shared/data --out benchmarks/results/runtimes.json

For each bundle with a shipped model (``unet_kvasir``, ``autosam_kvasir``, ``boxsam_kvasir``, ``autosam_glas``,
``ssam_glas``, ``ssam_brats``, ``boxsam_ct``) and runtime (``torch`` eager fp32, ``openvino``, ``openvino-bf16``,
``openvino-int8``) this runs, each in a fresh process with the export cache in ``--work``:

1. ``python -m monai.bundle run --config_file bundles/<b>/configs/evaluate.json --runtime <r>`` (``inference.json``
   for ``boxsam_ct``, which has no evaluation) on the first ``--limit`` test items, with the bundle's own defaults
   (data-loading workers, test-time symmetries, metrics), the export cache warm: the evaluator's epoch time from its
   log, the process's peak memory, and the mean Dice (from the evaluation's ``metrics.csv``);
2. the same bundle's ``inference.json`` on one test image, twice: first with an empty export cache (export and compile
   included), then with the cache warm: the process's wall time, i.e. how long a user waits for the first mask;
3. for ``openvino-int8``, first ``python -m monai_sam_adapt.runtime quantize`` (calibrated on training items only),
   whose time is reported, and the Dice on the validation split with ``openvino`` and ``openvino-int8``: int8 is
   offered for a bundle when it stays within 0.005 of fp32 there.

Writes one JSON with every run, each run's speed-up and Dice change against ``torch``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import report  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
#: bundle -> (data folder under --data, config run end to end, default number of test items)
BUNDLES = {
    "unet_kvasir": ("kvasir_seg", "evaluate.json", 30),
    "autosam_kvasir": ("kvasir_seg", "evaluate.json", 30),
    "boxsam_kvasir": ("kvasir_seg", "evaluate.json", 30),
    "autosam_glas": ("glas", "evaluate.json", 5),  # 8 test-time symmetries per image
    "ssam_glas": ("glas", "evaluate.json", 5),
    "ssam_brats": ("brats2018", "evaluate.json", 1),  # one volume: every axial slice
    "boxsam_ct": (None, "inference.json", 30),  # its sample CT slice and box, 30 times
}
RUNTIMES = ("torch", "openvino", "openvino-bf16", "openvino-int8")
#: Runs ``python -m monai.bundle`` and reports the process's peak resident memory when it exits.
PEAK = (
    "import resource, runpy, sys, atexit\n"
    "atexit.register(lambda: print('PEAK_RSS_MB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, "
    "file=sys.stderr, flush=True))\n"
    "sys.argv = ['monai.bundle'] + sys.argv[1:]\n"
    "runpy.run_module('monai.bundle', run_name='__main__')\n"
)


def bundle_run(config: Path, args: dict, cache: Path, log: Path) -> dict:
    """``python -m monai.bundle run --config_file config --k v ...`` in a fresh process (wrapped to report its peak
    memory); wall time, the evaluator's epoch time and peak memory from its log."""
    cmd = [sys.executable, "-c", PEAK, "run", "--config_file", str(config)]
    for k, v in args.items():
        cmd += [f"--{k}", v if isinstance(v, str) else json.dumps(v)]
    env = {**os.environ, "MONAI_SAM_CACHE": str(cache)}
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(REPO))
    wall = time.perf_counter() - t0
    log.write_text(p.stdout + p.stderr)
    if p.returncode:
        raise RuntimeError(f"{' '.join(cmd[3:])} failed (log: {log}):\n{p.stderr[-3000:]}")
    epoch = re.findall(r"Epoch\[1\] Complete\. Time taken: (\d+):(\d+):([\d.]+)", p.stderr + p.stdout)
    peak = re.findall(r"PEAK_RSS_MB (\d+)", p.stderr)
    out = {"wall_s": round(wall, 2), "peak_rss_mb": int(peak[-1]) if peak else None}
    if epoch:
        h, m, s = epoch[-1]
        out["epoch_s"] = round(int(h) * 3600 + int(m) * 60 + float(s), 2)
    return out


def mean_dice(folder: Path) -> float | None:
    """The evaluation's mean Dice at full precision (``MetricsSaver``'s ``metrics.csv``)."""
    f = folder / "metrics.csv"
    if not f.is_file():
        return None
    for row in csv.reader(f.open()):
        if row and row[0] == "val_mean_dice":
            return float(row[1])
    return None


def datalists(bundle: str, data: Path, work: Path, limit: int) -> dict:
    """``{"test": file, "one": file, "val": file}``: the first ``limit`` test items, the first one, the validation
    split (where there is one)."""
    from monai_sam_adapt.bundle import config_parser
    from monai_sam_adapt.data import load_datalist

    folder, _, _ = BUNDLES[bundle]
    parser = config_parser(REPO / "bundles" / bundle, "inference.json")
    if folder is None:  # boxsam_ct: the bundle's own sample datalist
        test = parser.get("datalist")["testing"] * limit
        val = None
    else:
        source = parser.get_parsed_content("datalist") if bundle != "ssam_brats" else "brats"
        if isinstance(source, str) and source not in ("brats",):
            lists = json.loads(Path(source).read_text())
            test, val = lists["testing"], lists.get("validation")
        else:
            test = load_datalist(source, data / folder, "testing", keys=["image"], required=["image"])
            val = load_datalist(source, data / folder, "validation", keys=["image"], required=["image"])
    files = {}
    for name, items in (("test", test[:limit]), ("one", test[:1]), ("val", val)):
        if items:
            files[name] = work / f"{bundle}-{name}.json"
            files[name].write_text(json.dumps({"testing": items, "training": []}))
    return files


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--out", default=None, help="results JSON (e.g. benchmarks/results/runtimes.json)")
    p.add_argument("--bundles", nargs="+", default=list(BUNDLES))
    p.add_argument("--runtimes", nargs="+", default=list(RUNTIMES))
    p.add_argument("--work", default="/tmp/runtimes_benchmark", help="outputs and export cache (outside the repo)")
    p.add_argument("--limit", type=int, default=0, help="test items per bundle (0: each bundle's default above)")
    p.add_argument("--update", action="store_true", help="keep --out's other runs, replace those measured again")
    args = p.parse_args()
    import torch

    data, work = Path(args.data).resolve(), Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    runs = []
    for bundle in args.bundles:
        folder, config, default_limit = BUNDLES[bundle]
        files = datalists(bundle, data, work, args.limit or default_limit)
        cfg = REPO / "bundles" / bundle / "configs"
        common = {"dataset_dir": str(data / folder)} if folder else {"overwrite": True}  # one sample, N times
        for runtime in args.runtimes:
            items = args.limit or default_limit
            r = {"bundle": bundle, "runtime": runtime, "config": config, "test_items": items}
            bcache = work / "cache" / f"{bundle}-{runtime}"
            if runtime == "openvino-int8":
                t0 = time.perf_counter()
                q = subprocess.run(
                    [sys.executable, "-m", "monai_sam_adapt.runtime", "quantize", str(REPO / "bundles" / bundle)]
                    + [f"--config={config}"]
                    + ([f"--dataset_dir={data / folder}"] if folder else []),
                    env={**os.environ, "MONAI_SAM_CACHE": str(bcache)},
                    capture_output=True,
                    text=True,
                    cwd=str(REPO),
                )
                (work / f"{bundle}-quantize.log").write_text(q.stdout + q.stderr)
                if q.returncode:
                    r["error"] = q.stderr[-2000:]
                    runs.append(r)
                    print(json.dumps(r), flush=True)
                    continue
                r["quantize_s"] = round(time.perf_counter() - t0, 1)
            one = {**common, "datalist": str(files["one"]), "runtime": runtime, "num_workers": 0}
            if runtime != "openvino-int8":  # int8's export and calibration come from the quantize run above
                shutil.rmtree(bcache, ignore_errors=True)  # cold: the export and compile are part of the wait
                tags = ["cold"] if runtime == "torch" or items == 1 else ["cold", "warm"]
                for tag in tags:
                    res = bundle_run(
                        cfg / "inference.json",
                        {**one, "output_dir": str(work / f"{bundle}-{runtime}-one-{tag}")},
                        bcache,
                        work / f"{bundle}-{runtime}-one-{tag}.log",
                    )
                    r[f"first_image_{tag}_cache_s"] = res["wall_s"]
                if config != "inference.json" and runtime != "torch" and items > 1:  # AutoSAM's h: another graph
                    bundle_run(
                        cfg / config,
                        {**one, "output_dir": str(work / f"{bundle}-{runtime}-warmup")},
                        bcache,
                        work / f"{bundle}-{runtime}-warmup.log",
                    )
            out = work / f"{bundle}-{runtime}"
            res = bundle_run(
                cfg / config,
                {**common, "datalist": str(files["test"]), "runtime": runtime, "output_dir": str(out)},
                bcache,
                work / f"{bundle}-{runtime}.log",
            )
            r.update(res)
            if runtime == "torch":
                r["first_image_warm_cache_s"] = r["first_image_cold_cache_s"]  # nothing is exported
            elif items == 1 and runtime != "openvino-int8":  # the test run is one item, on a warm cache
                r["first_image_warm_cache_s"] = res["wall_s"]
            r["dice"] = mean_dice(out)
            if runtime in ("openvino", "openvino-int8") and "val" in files and config == "evaluate.json":
                vout = work / f"{bundle}-{runtime}-val"
                bundle_run(
                    cfg / config,
                    {**common, "datalist": str(files["val"]), "runtime": runtime, "output_dir": str(vout)},
                    bcache,
                    work / f"{bundle}-{runtime}-val.log",
                )
                r["val_dice"] = mean_dice(vout)
            runs.append(r)
            print(json.dumps(r), flush=True)
    earlier = []
    if args.update and args.out and Path(args.out).is_file():
        done = {(r["bundle"], r["runtime"]) for r in runs}
        previous = json.loads(Path(args.out).read_text())
        earlier = previous.get("earlier_commands", []) + [previous["command"]]
        old = [r for r in previous["runs"] if (r["bundle"], r["runtime"]) not in done]
        order = list(BUNDLES)
        runs = sorted(old + runs, key=lambda r: (order.index(r["bundle"]), RUNTIMES.index(r["runtime"])))
    for r in runs:
        ref = next((x for x in runs if x["bundle"] == r["bundle"] and x["runtime"] == "torch"), None)
        if ref and "epoch_s" in r and "epoch_s" in ref:
            r["speedup_vs_torch"] = round(ref["epoch_s"] / r["epoch_s"], 2)
        if ref and r.get("dice") is not None and ref.get("dice") is not None:
            r["dice_change_vs_torch"] = round(r["dice"] - ref["dice"], 5)
        fp32 = next((x for x in runs if x["bundle"] == r["bundle"] and x["runtime"] == "openvino"), None)
        if r["runtime"] == "openvino-int8" and fp32 and r.get("val_dice") is not None and fp32.get("val_dice"):
            r["val_dice_change_vs_openvino"] = round(r["val_dice"] - fp32["val_dice"], 5)
            r["int8_holds"] = abs(r["val_dice_change_vs_openvino"]) <= 0.005
    machine = f"{os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads, no GPU"
    report(
        {"earlier_commands": earlier, "machine": machine, "runs": runs}
        if earlier
        else {"machine": machine, "runs": runs},
        args.out,
    )


if __name__ == "__main__":
    main()
