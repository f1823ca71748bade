"""Trainable-parameter report of S-SAM, LoRA and full fine-tuning for every backbone of the registry.

    python benchmarks/ssam_parameters.py [--image_size 256] [--clip_dim 512]

SAM ViTs are built on PyTorch's ``meta`` device (shapes only, no weights, no memory), so ViT-H counts in seconds.
SAM ViT backbones are counted at S-SAM's working size (``--image_size``, positional embedding resampled to it) and at
their native 1024; the Text Affine Layer is counted for the offline label-index encoder (one label) and for a CLIP
text feature of ``--clip_dim`` (ViT-B-32: 512). Shares are of all of SAM (encoder, prompt encoder, mask decoder).
"""

from __future__ import annotations

import argparse
import json

import torch

from monai_sam_adapt.networks import METHODS, SSAM
from monai_sam_adapt.sam import BACKBONES


def count(backbone: str, method: str, image_size: int | None, clip_dim: int) -> dict:
    device = "cpu" if backbone == "lite_medsam" else "meta"  # TinyViT calls .item() while building; it is small
    with torch.device(device):
        net = SSAM(backbone, checkpoint=None, label_names=["gland"], method=method, image_size=image_size)
    c = net.count_parameters()
    tal_offline = sum(p.numel() for p in net.text_affine.parameters())
    tal_clip = clip_dim * net.sam.embed_dim + net.sam.embed_dim
    total = c["total"]
    return {
        "backbone": backbone,
        "image_size": net.sam.image_size,
        "method": method,
        "total": total,
        "trainable_offline_text": c["trainable"],
        "percent_offline_text": round(100 * c["trainable"] / total, 3),
        "trainable_clip_text": c["trainable"] - tal_offline + tal_clip,
        "percent_clip_text": round(100 * (c["trainable"] - tal_offline + tal_clip) / total, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--image_size", type=int, default=256)
    ap.add_argument("--clip_dim", type=int, default=512)
    a = ap.parse_args()
    rows = []
    for name in BACKBONES:
        sizes = [None] if name == "lite_medsam" else [a.image_size, None]
        for size in sizes:
            for method in METHODS:
                rows.append(count(name, method, size, a.clip_dim))
                print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
