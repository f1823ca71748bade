"""AutoSAM training with geometric augmentation: epoch time with every augmented variant's embedding cached, against
no cache, and the one-time cost of encoding the variants, in one run.

    python benchmarks/autosam_cache.py --data ../shared/data/kvasir_seg --limit 48 \
        --out benchmarks/results/autosam_cache_kvasir.json

On the first ``--limit`` training images of ``autosam_kvasir``'s datalist, with the bundle's training command of the
pretrained g (``--prompt_encoder efficientnet``, flips and 90-degree rotations on both encoders' inputs, photometric
augmentation on g's only, ``--runtime`` for the frozen encoder):

1. ``no cache``: one training epoch with the embedding cache off (every step encodes its augmented batch);
2. ``one-time encoding``: each image's 8 dihedral variants (4 rotations x flip) pre-processed as the bundle does and
   encoded once into an empty on-disk cache (the same ``EmbeddingCache`` keys the training uses);
3. ``all cached``: one training epoch on that cache; it must make no cache miss (every random flip/rotation of the
   epoch is one of the 8 variants already there).

Times are per epoch of ``--limit`` images and scaled to the full training split in the output.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from _results import report

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "autosam_kvasir"


def workflow(a: argparse.Namespace, datalist: Path, out: Path, cache_dir: str | None):
    from monai_sam_adapt.bundle import bundle_workflow

    wf = bundle_workflow(
        BUNDLE,
        "train.json",
        dataset_dir=a.data,
        datalist=str(datalist),
        output_dir=str(out),
        ckpt_dir=str(out / "models"),
        prompt_encoder="efficientnet",
        augmentation="%bundles/source/base/data_2d.json#dihedral_photometric_g",
        train_prepare_batch="%bundles/source/base/autosam.json#g_prepare_batch",
        runtime=a.runtime,
        cache_dir=cache_dir,
        max_epochs=1,
        val_interval=1000,
        num_workers=0,
    )
    wf.initialize()
    return wf


def train_epoch(a: argparse.Namespace, datalist: Path, out: Path, cache_dir: str | None) -> dict:
    wf = workflow(a, datalist, out, cache_dir)
    net = wf.parser.get_parsed_content("network")
    t0 = time.perf_counter()
    wf.run()
    seconds = time.perf_counter() - t0
    wf.finalize()
    cache = getattr(net, "cache", None)
    return {
        "epoch_s": round(seconds, 1),
        "cache_hits": cache.hits if cache else None,
        "cache_misses": cache.misses if cache else None,
    }


def encode_variants(a: argparse.Namespace, datalist: Path, out: Path, cache_dir: str) -> dict:
    import torch

    wf = workflow(a, datalist, out, cache_dir)
    net = wf.parser.get_parsed_content("network")
    pre = wf.parser.get_parsed_content("train_preprocessing")
    items = wf.parser.get_parsed_content("train_data")
    t0 = time.perf_counter()
    n = 0
    for item in items:
        x = pre(dict(item))["image"].as_tensor()
        variants = [torch.rot90(v, k, dims=(-2, -1)) for v in (x, x.flip(-1)) for k in range(4)]
        for v in variants:
            net.embed(v[None].contiguous())
            n += 1
    seconds = time.perf_counter() - t0
    return {"variants_encoded": n, "encoding_s": round(seconds, 1), "per_variant_s": round(seconds / max(n, 1), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "kvasir_seg"))
    ap.add_argument("--limit", type=int, default=48)
    ap.add_argument("--runtime", default="openvino")
    ap.add_argument("--work", default="/tmp/autosam_cache_benchmark", help="outputs and cache (outside the repository)")
    ap.add_argument("--out")
    a = ap.parse_args()
    sys.path.insert(0, str(REPO))
    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    full = json.loads((REPO / "bundles/source/datalists/kvasir_seg.json").read_text())
    sub = {"training": full["training"][: a.limit], "validation": full["validation"][:1]}
    datalist = work / "datalist.json"
    datalist.write_text(json.dumps(sub))
    scale = len(full["training"]) / len(sub["training"])
    cache_dir = str(work / "cache")
    no_cache = train_epoch(a, datalist, work / "no_cache", None)
    print(json.dumps({"no_cache": no_cache}), flush=True)
    once = encode_variants(a, datalist, work / "encode", cache_dir)
    print(json.dumps({"one_time": once}), flush=True)
    cached = train_epoch(a, datalist, work / "cached", cache_dir)
    print(json.dumps({"all_cached": cached}), flush=True)
    result = {
        "images": len(sub["training"]),
        "runtime": a.runtime,
        "no_cache": no_cache,
        "one_time_encoding": once,
        "all_cached": cached,
        "speedup_per_epoch": round(no_cache["epoch_s"] / cached["epoch_s"], 2),
        "full_training_split": {
            "images": len(full["training"]),
            "epoch_s_no_cache": round(no_cache["epoch_s"] * scale),
            "epoch_s_all_cached": round(cached["epoch_s"] * scale),
            "one_time_encoding_s": round(once["encoding_s"] * scale),
        },
    }
    report(result, a.out)


if __name__ == "__main__":
    main()
