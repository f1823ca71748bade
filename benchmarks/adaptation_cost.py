"""S-SAM vs LoRA vs full image-encoder fine-tuning in one run: trainable parameters, training step time, peak memory
and checkpoint size, on the same backbone, batch and images.

    python benchmarks/adaptation_cost.py --backbone lite_medsam --batch_size 2 --steps 3

Each method runs in its own fresh process (so peak memory is its own): one warm-up step, then the median of ``--steps``
timed steps (forward + DiceCE loss + backward + AdamW step). Peak memory is ``torch.cuda.max_memory_allocated`` on GPU
and the growth of the process's peak resident memory over the model's own on CPU. The checkpoint is what the bundles
save (``network.state_dict()``: trained tensors and the backbone fingerprint only). Prints a JSON table and ratios
to S-SAM.
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

import torch


def measure(
    method: str, backbone: str, checkpoint: str, image_size: int | None, batch: int, steps: int, device: str
) -> dict:
    from monai.losses import DiceCELoss

    from monai_sam_adapt.networks import SSAM

    torch.manual_seed(0)
    dev = torch.device(device)
    net = SSAM(backbone, checkpoint=checkpoint, label_names=["gland"], method=method, image_size=image_size).to(dev)
    net.train()
    counts = net.count_parameters()
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    loss_fn = DiceCELoss(sigmoid=True)
    s = net.sam.image_size
    x = torch.rand(batch, 3, s, s, device=dev)
    y = (torch.rand(batch, 1, s, s, device=dev) > 0.5).float()
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times = []
    for i in range(steps + 1):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t = time.perf_counter()
        opt.zero_grad()
        loss_fn(net(x), y).backward()
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
        "trainable": counts["trainable"],
        "total": counts["total"],
        "percent": round(counts["percent"], 4),
        "step_s": round(statistics.median(times), 3),
        "peak_mem_MiB": round(peak / 2**20, 1),
        "checkpoint_MiB": round(buf.tell() / 2**20, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="lite_medsam")
    ap.add_argument("--checkpoint", default="default")
    ap.add_argument("--image_size", type=int, default=None)
    ap.add_argument("--batch_size", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--methods", default="svd,lora,full")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(measure(a.one, a.backbone, a.checkpoint, a.image_size, a.batch_size, a.steps, a.device)))
        return
    rows = []
    for m in a.methods.split(","):
        cmd = [
            sys.executable,
            __file__,
            "--one",
            m,
            "--backbone",
            a.backbone,
            "--checkpoint",
            a.checkpoint,
            "--batch_size",
            str(a.batch_size),
            "--steps",
            str(a.steps),
            "--device",
            a.device,
        ]
        if a.image_size:
            cmd += ["--image_size", str(a.image_size)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    ref = rows[0]
    for r in rows:
        r["ratios_to_" + ref["method"]] = {
            k: round(r[k] / ref[k], 2) if ref[k] else None
            for k in ("trainable", "step_s", "peak_mem_MiB", "checkpoint_MiB")
        }
    print(
        json.dumps(
            {
                "device": a.device,
                "host": platform.processor() or platform.machine(),
                "threads": torch.get_num_threads(),
                "backbone": a.backbone,
                "batch_size": a.batch_size,
                "rows": rows,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
