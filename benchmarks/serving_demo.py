"""The radiologist's loop on the real liver CT, measured:
archive -> MONAI Label -> interactive SAM -> DICOM SEG -> OHIF.

    python benchmarks/serving_demo.py --series ../shared/data/ct_liver_dicom/ct-3slice \
        --label ../shared/data/ct_liver_dicom/liver_seg.nrrd --out benchmarks/results

1. starts Orthanc (loopback, remote access refused) and uploads the series;
2. starts ``monailabel start_server`` with our app (every trained bundle + ``sam_interactive``);
3. on every slice the expert labelled, sends one box (the expert mask's bounding box, as a radiologist would drag it)
   to ``sam_interactive`` through ``MONAILabelClient``, accumulating the slices in one label;
4. saves the label as final: MONAI Label stores it in Orthanc as a DICOM SEG; reads it back and measures Dice against
   the expert label on the DICOM grid, and the request times;
5. opens OHIF in headless Chromium on the study, shows the SEG, and saves the screenshots.

Writes ``serving_demo.json`` and ``ohif_liver-{plain,seg}.png`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--series", required=True, help="DICOM series folder")
    p.add_argument("--label", required=True, help="expert label of the series (NRRD/NIfTI), any grid")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--name", default="liver", help="segment name")
    args = p.parse_args()

    import pydicom
    from monailabel.client import MONAILabelClient

    from monai_sam_adapt.dicom_seg import label_frames, read_dicom_series
    from monai_sam_adapt.serving.demo import screenshot_study, served_series
    from monai_sam_adapt.transforms import LoadMedicalImaged

    out = Path(args.out)
    files = sorted(f for f in Path(args.series).iterdir() if f.is_file())
    datasets = read_dicom_series(args.series)
    expert = label_frames(LoadMedicalImaged("x")({"x": args.label})["x"], datasets) > 0  # (slices, rows, cols)
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    with tempfile.TemporaryDirectory() as tmp, served_series(files, tmp) as (series, url, orthanc, _, startup):
        tmp = Path(tmp)
        client = MONAILabelClient(url, tmpdir=str(tmp / "client"))
        models = sorted(client.info()["models"])
        times, label = [], None
        for k, frame in enumerate(expert):
            if not frame.any():
                continue
            rows, cols = np.nonzero(frame)
            box = [int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max()), k]  # [x0, y0, x1, y1, z]
            t = time.time()
            label, _ = client.infer("sam_interactive", series, {"box": box, "ct_window": "abdomen"}, label_in=label)
            times.append(time.time() - t)
        pred = label_frames(LoadMedicalImaged("x")({"x": label})["x"], datasets) > 0
        t = time.time()
        client.save_label(series, label, tag="final", params={"label_names": {args.name: 1}})
        save_s = time.time() - t
        import highdicom as hd
        from dicomweb_client import DICOMwebClient

        dw = DICOMwebClient(f"{orthanc}/dicom-web")
        seg_series = [pydicom.Dataset.from_json(s) for s in dw.search_for_series(search_filters={"Modality": "SEG"})]
        seg = hd.seg.Segmentation.from_dataset(
            dw.retrieve_series(seg_series[0].StudyInstanceUID, seg_series[0].SeriesInstanceUID)[0]
        )
        back = seg.get_pixels_by_source_instance([d.SOPInstanceUID for d in datasets], combine_segments=True) > 0
        plain, shown = screenshot_study(url, study, out / "ohif_liver.png")

    def dice(a, b):
        return float(2 * (a & b).sum() / (a.sum() + b.sum()))

    result = {
        "series": args.series,
        "slices_segmented": len(times),
        "models_listed": models,
        "server_startup_s": round(startup, 1),
        "interactive_request_s": [round(x, 2) for x in times],
        "save_label_to_orthanc_s": round(save_s, 2),
        "dice_interactive_vs_expert": round(dice(pred, expert), 4),
        "dice_seg_from_orthanc_vs_expert": round(dice(back, expert), 4),
        "seg_equals_label_voxel_for_voxel": bool((back == pred).all()),
        "screenshots": [str(plain), str(shown)],
    }
    (out / "serving_demo.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
