"""How far can a prompt encoder g over the *frozen* LiteMedSAM embedding go on Kvasir-SEG? A quick probe.

    python benchmarks/autosam_head_probe.py --dataset_dir ../shared/data/kvasir_seg \
        --datalist bundles/source/datalists/kvasir_seg.json \
        --cache_dir <the training run's output_dir>/embedding_cache --head base --epochs 3

Reads the embeddings that `autosam_kvasir/configs/train.json` cached (computing missing ones), then trains g and the
surrogate decoder h together on the h path only (no SAM decoder, so an epoch takes minutes on CPU) and prints
validation Dice per epoch and training Dice at the end. ``--head base`` is the bundle's head (2 conv blocks, 476 k
parameters); ``--head unet`` a MONAI UNet over the embedding grid (3.5 M parameters, receptive field of the whole
grid). Training Dice close to validation Dice means the frozen features, not over-fitting, limit the result.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from monai.networks.blocks import Convolution
from monai.networks.nets import UNet
from torch import nn

from monai_sam_adapt.data import load_datalist
from monai_sam_adapt.networks import EmbeddingHeadPromptEncoder, SurrogateDecoder
from monai_sam_adapt.sam import EmbeddingCache, FrozenSAM
from monai_sam_adapt.transforms import CheckImageLabeld, LoadMedicalImaged, SAMPreprocessd, SelectLabelsd


class UNetHead(nn.Module):
    def __init__(self, dim: int = 256, channels: tuple[int, ...] = (128, 192, 256)) -> None:
        super().__init__()
        self.inp = Convolution(2, dim, channels[0], kernel_size=1, act="GELU", norm=("group", {"num_groups": 8}))
        self.unet = UNet(
            2,
            channels[0],
            channels[0],
            channels=channels,
            strides=(2,) * (len(channels) - 1),
            num_res_units=2,
            norm=("group", {"num_groups": 8}),
            act="GELU",
        )
        self.out = nn.Conv2d(channels[0], dim, 1)

    def forward(self, image, embedding):
        return self.out(self.unet(self.inp(embedding)))


def load_split(split, a, sam, cache):
    from monai.transforms import Compose

    pre = Compose(
        [
            LoadMedicalImaged(["image", "label"]),
            SelectLabelsd("label", threshold=127),
            CheckImageLabeld(["image", "label"]),
            SAMPreprocessd("image", label_keys="label"),
        ]
    )
    emb, lab = [], []
    for d in load_datalist(a.datalist, a.dataset_dir, split, required=["image", "label"]):
        o = pre(d)
        emb.append(cache(o["image"].as_tensor()[None], sam.encode)[0].half())
        lab.append(o["label"].as_tensor().bool())
    return torch.stack(emb), torch.stack(lab)


def dice(g, h, emb, lab):
    g.eval(), h.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(emb), 16):
            p = F.interpolate(h(g(None, emb[i : i + 16].float())), size=lab.shape[-1], mode="bilinear") > 0
            t = lab[i : i + 16]
            inter = (p & t).flatten(1).sum(1).float()
            out += (2 * inter / (p.flatten(1).sum(1) + t.flatten(1).sum(1)).clamp(min=1)).tolist()
    g.train(), h.train()
    return sum(out) / len(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset_dir", required=True)
    ap.add_argument("--datalist", required=True)
    ap.add_argument("--cache_dir", required=True)
    ap.add_argument("--head", choices=["base", "unet"], default="base")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-4)
    a = ap.parse_args()
    torch.manual_seed(0)
    sam = FrozenSAM("lite_medsam")
    cache = EmbeddingCache(a.cache_dir, fingerprint=sam.fingerprint)
    tr_e, tr_l = load_split("training", a, sam, cache)
    va_e, va_l = load_split("validation", a, sam, cache)
    g = EmbeddingHeadPromptEncoder(sam.embed_dim) if a.head == "base" else UNetHead(sam.embed_dim)
    h = SurrogateDecoder(sam.embed_dim)
    print(f"head {a.head}: g {sum(p.numel() for p in g.parameters()):,} parameters", flush=True)
    opt = torch.optim.AdamW([*g.parameters(), *h.parameters()], a.lr, weight_decay=1e-4)
    n, bs = len(tr_e), a.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, a.lr, total_steps=a.epochs * (n // bs), pct_start=0.1)
    loss_dice = DiceLoss(sigmoid=True)
    for ep in range(a.epochs):
        t, perm = time.time(), torch.randperm(n)
        for i in range(0, n - bs + 1, bs):
            idx = perm[i : i + bs]
            y = tr_l[idx].float()
            o = F.interpolate(h(g(None, tr_e[idx].float())), size=y.shape[-1], mode="bilinear")
            loss = loss_dice(o, y) + F.binary_cross_entropy_with_logits(o, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {ep + 1}: {time.time() - t:.0f} s, validation Dice {dice(g, h, va_e, va_l):.4f}", flush=True)
    print(f"training Dice (first 200 images) {dice(g, h, tr_e[:200], tr_l[:200]):.4f}")


if __name__ == "__main__":
    main()
