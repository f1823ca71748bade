"""Clicks on one CT slice through the running MONAI Label server, as OHIF sends them: how long the first request on a
slice takes (it encodes the slice) and the next three (decoder only: the slice's embedding is reused), and the
server's peak memory. One run per ``--runtime``.

    python benchmarks/interactive_latency.py --series ../shared/data/ct_liver_dicom/ct-3slice \
        --label ../shared/data/ct_liver_dicom/liver_seg.nrrd --runtime torch openvino --out benchmarks/results

Starts Orthanc (loopback) with the series and ``python -m monai_sam_adapt.serving`` (``--conf runtime R``); on the
slice with the largest expert region sends a box (the expert mask's bounding box, as a radiologist drags it), then
three foreground clicks inside the region refining that result (``label_in``), each through ``MONAILabelClient``.
Writes ``interactive_latency.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def peak_rss(pid: int, stop: threading.Event, out: list[int]) -> None:
    import psutil

    proc = psutil.Process(pid)
    peak = 0
    while not stop.is_set():
        try:
            rss = proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
        except psutil.Error:
            break
        peak = max(peak, rss)
        time.sleep(0.05)
    out.append(peak)


def run_once(args, runtime: str, files, expert, series_dir) -> dict:
    from monailabel.client import MONAILabelClient

    from monai_sam_adapt.serving.demo import served_series

    k = int(np.argmax(expert.reshape(len(expert), -1).sum(1)))  # the slice with the most liver
    rows, cols = np.nonzero(expert[k])
    box = [int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max()), k]
    rng = np.random.default_rng(0)
    inside = rng.choice(len(rows), 3, replace=False)
    clicks = [[int(cols[i]), int(rows[i]), k] for i in inside]
    with (
        tempfile.TemporaryDirectory() as tmp,
        served_series(files, tmp, models="sam_interactive", conf={"runtime": runtime}) as (
            series,
            url,
            _,
            server,
            startup,
        ),
    ):
        stop, peak = threading.Event(), []
        watcher = threading.Thread(target=peak_rss, args=(server.pid, stop, peak))
        watcher.start()
        client = MONAILabelClient(url, tmpdir=str(Path(tmp) / "client"))
        params = {"ct_window": "abdomen"}
        times = []
        t = time.time()
        label, _ = client.infer("sam_interactive", series, {**params, "box": box})
        times.append(time.time() - t)
        for c in clicks:
            t = time.time()
            label, _ = client.infer("sam_interactive", series, {**params, "foreground": [c]}, label_in=label)
            times.append(time.time() - t)
        other = (k + 1) % len(expert)  # a slice not seen yet: encoded (the runtime is ready by now)
        t = time.time()
        client.infer("sam_interactive", series, {**params, "box": [*box[:4], other]})
        times.append(time.time() - t)
        stop.set()
        watcher.join()
    return {
        "runtime": runtime,
        "slice": k,
        "server_startup_s": round(startup, 1),
        "first_request_s": round(times[0], 3),
        "next_clicks_same_slice_s": [round(x, 3) for x in times[1:-1]],
        "first_request_on_another_slice_s": round(times[-1], 3),
        "server_peak_rss_mb": round(peak[0] / 2**20) if peak else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--series", required=True)
    p.add_argument("--label", required=True)
    p.add_argument("--runtime", nargs="+", default=["torch", "openvino"])
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args()
    import torch

    from monai_sam_adapt.dicom_seg import label_frames, read_dicom_series
    from monai_sam_adapt.transforms import LoadMedicalImaged

    files = sorted(f for f in Path(args.series).iterdir() if f.is_file())
    expert = label_frames(LoadMedicalImaged("x")({"x": args.label})["x"], read_dicom_series(args.series)) > 0
    results = {
        "machine": f"{torch.get_num_threads()} threads, CPU only",
        "series": args.series,
        "runs": [run_once(args, r, files, expert, args.series) for r in args.runtime],
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "interactive_latency.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
