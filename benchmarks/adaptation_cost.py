"""S-SAM vs LoRA vs full image-encoder fine-tuning in one run, in fp32 and in bf16: trainable parameters, training step
time, peak memory and checkpoint size on the same backbone, batch and images; then the validation Dice of a short,
identical ``ssam_glas`` training run in each precision.

    python benchmarks/adaptation_cost.py --backbone lite_medsam --batch_size 2 --steps 3 \\
        --short_epochs 2 --data ../shared/data/glas --out benchmarks/results/adaptation_cost_lite_medsam_cpu.json

Each (method, precision) runs in its own fresh process (so peak memory is its own): one warm-up step, then the median
of ``--steps`` timed steps (forward + loss + backward + AdamW step) through the bundles' training inferer
(:class:`monai_sam_adapt.engines.AutocastInferer`: ``bf16`` is autocast where the device has bf16 arithmetic, else
fp32, and the row says which ran). Peak memory is ``torch.cuda.max_memory_allocated`` on GPU and the growth of the
process's peak resident memory over the model's own on CPU. The checkpoint is what the bundles save
(``network.state_dict()``: trained tensors and the backbone fingerprint only). The label prompt goes through the
default MiniLM text encoder and a rank-``--text_rank`` Text Affine Layer, as in the bundles.

``--short_epochs N`` (with ``--data``, the GlaS folder) also runs ``bundles/ssam_glas/configs/train.json`` for N epochs
per precision (same seed, same data order, validation after every epoch, each in its own process) and records the
validation Dice after each epoch and the epoch times: bf16 must not cost accuracy.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from _results import report

REPO = Path(__file__).resolve().parents[1]


def measure(a: argparse.Namespace, method: str, precision: str) -> dict:
    from monai.losses import DiceFocalLoss

    from monai_sam_adapt.engines import AutocastInferer
    from monai_sam_adapt.networks import SSAM

    torch.manual_seed(0)
    dev = torch.device(a.device)
    net = SSAM(
        a.backbone,
        checkpoint=a.checkpoint,
        label_names=["gland"],
        text_encoder=a.text_encoder,
        text_rank=a.text_rank,
        method=method,
        image_size=a.image_size,
    ).to(dev)
    net.train()
    inferer = AutocastInferer(precision, channels_last=a.channels_last)  # the bundles' training inferer
    counts = net.count_parameters()
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    loss_fn = DiceFocalLoss(sigmoid=True, gamma=0.0)  # the bundles' loss
    s = net.sam.image_size
    x = torch.rand(a.batch_size, 3, s, s, device=dev)
    y = (torch.rand(a.batch_size, 1, s, s, device=dev) > 0.5).float()
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for i in range(a.steps + 1):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t = time.perf_counter()
        opt.zero_grad()
        loss_fn(inferer(x, net), y).backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        if i:
            times.append(time.perf_counter() - t)
    peak = (
        torch.cuda.max_memory_allocated(dev)
        if dev.type == "cuda"
        else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) * 1024
    )
    return {
        "method": method,
        "precision": precision,
        "ran_as": str(inferer.dtype(dev) or "torch.float32"),
        "channels_last": a.channels_last,
        "trainable": counts["trainable"],
        "total": counts["total"],
        "percent": round(counts["percent"], 4),
        "step_s": round(statistics.median(times), 3),
        "peak_mem_MiB": round(peak / 2**20, 1),
        "checkpoint_MiB": round(buf.tell() / 2**20, 3),
    }


def short_run(a: argparse.Namespace, precision: str) -> dict:
    """``ssam_glas``'s own training for ``a.short_epochs`` epochs at ``precision``; Dice after each epoch."""
    from ignite.engine import Events

    from monai_sam_adapt.bundle import bundle_workflow

    work = Path(a.work) / f"short-{precision}"
    wf = bundle_workflow(
        REPO / "bundles" / "ssam_glas",
        "train.json",
        dataset_dir=a.data,
        output_dir=str(work),
        ckpt_dir=str(work / "models"),
        precision=precision,
        text_encoder=a.text_encoder,
        text_rank=a.text_rank,
        max_epochs=a.short_epochs,
        val_interval=1,
        num_workers=0,
    )
    wf.initialize()
    trainer = wf.parser.get_parsed_content("train#trainer")
    evaluator = wf.parser.get_parsed_content("validate#evaluator")
    epoch_s, dice, start = [], [], []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: start.append(time.perf_counter()))
    # attached after the ValidationHandler: an epoch's time includes its validation
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: epoch_s.append(round(time.perf_counter() - start[-1])))
    evaluator.add_event_handler(Events.COMPLETED, lambda e: dice.append(round(e.state.metrics["val_mean_dice"], 4)))
    wf.run()
    wf.finalize()
    return {
        "short_run": "ssam_glas train.json",
        "precision": precision,
        "ran_as": str(wf.parser.get_parsed_content("train#inferer").dtype(a.device) or "torch.float32"),
        "epochs": a.short_epochs,
        "val_dice_per_epoch": dice,
        "epoch_s_with_validation": epoch_s,
        "peak_rss_MiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def child(argv: list[str], spec: str) -> dict:
    out = subprocess.run([sys.executable, __file__, *argv, "--one", spec], capture_output=True, text=True, cwd=REPO)
    if out.returncode:
        sys.stderr.write(out.stderr[-4000:])
        raise SystemExit(f"measurement {spec} failed")
    row = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="lite_medsam")
    ap.add_argument("--checkpoint", default="default")
    ap.add_argument("--image_size", type=int, default=None)
    ap.add_argument("--batch_size", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--methods", default="svd,lora,full")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--text_encoder", default="minilm")
    ap.add_argument("--text_rank", type=int, default=4)
    ap.add_argument("--channels_last", action="store_true", help="also time S-SAM in channels-last memory format")
    ap.add_argument("--only_channels_last", action="store_true", help="time only the channels-last S-SAM rows")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--short_epochs", type=int, default=0)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "glas"))
    ap.add_argument("--work", default="/tmp/adaptation_cost", help="short-run outputs (outside the repository)")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    sys.path.insert(0, str(REPO))
    if a.one:
        kind, *rest = a.one.split(":")
        row = measure(a, *rest) if kind == "step" else short_run(a, *rest)
        print(json.dumps(row))
        return
    argv = [
        f"--{k}={v}"
        for k, v in vars(a).items()
        if k not in ("one", "out", "channels_last", "only_channels_last", "methods", "precisions") and v is not None
    ]
    precisions = a.precisions.split(",")
    methods = [] if a.only_channels_last else a.methods.split(",")
    rows = [child(argv, f"step:{m}:{p}") for m in methods for p in precisions]
    if a.channels_last or a.only_channels_last:
        rows += [child([*argv, "--channels_last"], f"step:svd:{p}") for p in precisions]
    ref = rows[0]
    for r in rows:
        r["ratios_to_" + ref["method"] + "_" + ref["precision"]] = {
            k: round(r[k] / ref[k], 2) if ref[k] else None
            for k in ("trainable", "step_s", "peak_mem_MiB", "checkpoint_MiB")
        }
    step = {(r["method"], r["precision"], r["channels_last"]): r["step_s"] for r in rows}
    speedup = {
        m: round(step[(m, "fp32", False)] / step[(m, "bf16", False)], 2)
        for m in a.methods.split(",")
        if (m, "fp32", False) in step and (m, "bf16", False) in step
    }
    short = [child(argv, f"short:{p}") for p in precisions] if a.short_epochs else []
    result = {
        "device": a.device,
        "host": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "backbone": a.backbone,
        "batch_size": a.batch_size,
        "bf16_step_speedup": speedup,
        "rows": rows,
        "short_runs": short,
    }
    report(result, a.out)


if __name__ == "__main__":
    main()
