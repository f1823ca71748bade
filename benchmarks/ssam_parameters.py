"""Trainable-parameter report of S-SAM, LoRA and full fine-tuning for every backbone of the registry.

    python benchmarks/ssam_parameters.py [--image_size 256] [--clip_dim 512] [--text_rank 4]

SAM ViTs are built on PyTorch's ``meta`` device (shapes only, no weights, no memory), so ViT-H counts in seconds.
SAM ViT backbones are counted at S-SAM's working size (``--image_size``, positional embedding resampled to it) and at
their native 1024; the Text Affine Layer is counted for the label-index encoder (one label), for the default MiniLM
text feature (384-d: the paper's full affine map, and factorised at ``--text_rank``, the bundles' ``text_rank``) and
for a CLIP text feature of ``--clip_dim`` (ViT-B-32: 512). Shares are of all of SAM (encoder, prompt encoder, mask
decoder) plus the Text Affine Layer counted.
"""

from __future__ import annotations

import argparse
import json

import torch

from monai_sam_adapt.networks import METHODS, SSAM
from monai_sam_adapt.sam import BACKBONES

MINILM_DIM = 384


def count(backbone: str, method: str, image_size: int | None, clip_dim: int, text_rank: int) -> dict:
    device = "cpu" if backbone == "lite_medsam" else "meta"  # TinyViT calls .item() while building; it is small
    with torch.device(device):
        net = SSAM(
            backbone,
            checkpoint=None,
            label_names=["gland"],
            text_encoder="label_index",
            method=method,
            image_size=image_size,
        )
    c = net.count_parameters()
    tal_offline = sum(p.numel() for p in net.text_affine.parameters())
    base_trainable, base_total = c["trainable"] - tal_offline, c["total"] - tal_offline
    embed = net.sam.embed_dim
    tals = {
        "label_index": tal_offline,
        "minilm_full": MINILM_DIM * embed + embed,
        f"minilm_rank{text_rank}": MINILM_DIM * text_rank + text_rank * embed + embed,
        "clip_full": clip_dim * embed + embed,
    }
    row = {"backbone": backbone, "image_size": net.sam.image_size, "method": method, "total_sam": base_total}
    for name, tal in tals.items():
        row[f"trainable_{name}"] = base_trainable + tal
        row[f"percent_{name}"] = round(100 * (base_trainable + tal) / (base_total + tal), 3)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--image_size", type=int, default=256)
    ap.add_argument("--clip_dim", type=int, default=512)
    ap.add_argument("--text_rank", type=int, default=4)
    a = ap.parse_args()
    rows = []
    for name in BACKBONES:
        sizes = [None] if name == "lite_medsam" else [a.image_size, None]
        for size in sizes:
            for method in METHODS:
                rows.append(count(name, method, size, a.clip_dim, a.text_rank))
                print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
