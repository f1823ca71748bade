"""Draw the two methods side by side: which parts of SAM stay frozen, which are trained, and what the prompt is.

python docs/figures/methods.py            # writes docs/figures/methods.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

FROZEN, TRAINED, DATA = "#d9dde3", "#f6b26b", "#ffffff"


def box(ax, x, y, w, h, text, color, bold=False):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08", fc=color, ec="#333333"))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=8.5, weight="bold" if bold else "normal")
    return (x, y, w, h)


def arrow(ax, start, end, text=None):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=10, lw=1.1, color="#333333"))
    if text:
        middle = ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.12)
        ax.text(*middle, text, ha="center", fontsize=7.5, style="italic")


def right(b):
    return (b[0] + b[2], b[1] + b[3] / 2)


def left(b):
    return (b[0], b[1] + b[3] / 2)


def top(b):
    return (b[0] + b[2] / 2, b[1] + b[3])


def bottom(b):
    return (b[0] + b[2] / 2, b[1])


def autosam(ax):
    ax.set_title("AutoSAM: an image-conditioned prompt replaces the click or box", fontsize=10)
    img = box(ax, 0.1, 2.2, 1.2, 0.9, "image", DATA)
    enc = box(ax, 1.9, 3.2, 2.6, 0.9, "SAM image encoder\n(frozen; cached)", FROZEN)
    g = box(ax, 1.9, 1.2, 2.6, 0.9, "g: prompt encoder\n(EfficientNet-Lite0 + FPN)", TRAINED, bold=True)
    dec = box(ax, 5.2, 2.2, 2.0, 0.9, "SAM mask decoder\n(frozen)", FROZEN)
    h = box(ax, 5.2, 0.2, 2.0, 0.8, "h: surrogate decoder", TRAINED, bold=True)
    out = box(ax, 8.0, 2.2, 1.3, 0.9, "mask", DATA)
    out_h = box(ax, 8.0, 0.15, 1.3, 0.9, "mask (h)", DATA)
    arrow(ax, right(img), left(enc))
    arrow(ax, right(img), left(g))
    arrow(ax, right(enc), (5.2, 2.9), "embedding")
    arrow(ax, right(g), (5.2, 2.4), "dense prompt")
    arrow(ax, (3.2, 1.2), left(h))
    arrow(ax, right(dec), left(out))
    arrow(ax, right(h), left(out_h))
    ax.text(4.7, 4.35, "trained: g and h, Dice + BCE through the frozen decoder", ha="center", fontsize=8)


def ssam(ax):
    ax.set_title("S-SAM: the encoder's singular values adapt; the label name is the prompt", fontsize=10)
    img = box(ax, 0.1, 2.9, 1.2, 0.9, "image", DATA)
    svd = "SAM image encoder:\neach W = U diag(s) V^T becomes\nU diag(ReLU(A*s + B)) V^T"
    enc = box(ax, 1.8, 2.7, 3.0, 1.3, svd, FROZEN)
    box(ax, 2.65, 2.25, 1.3, 0.38, "A, B, norms", TRAINED, bold=True)
    name = box(ax, 0.1, 0.7, 1.2, 0.9, '"gland"', DATA)
    txt = box(ax, 1.8, 0.7, 1.6, 0.9, "text encoder\n(MiniLM, frozen)", FROZEN)
    tal = box(ax, 3.8, 0.7, 1.1, 0.9, "Text Affine\nLayer", TRAINED, bold=True)
    dec = box(ax, 5.7, 2.0, 1.9, 0.9, "SAM mask decoder\n(frozen)", FROZEN)
    out = box(ax, 8.0, 2.0, 1.3, 0.9, "mask\nper name", DATA)
    arrow(ax, right(img), left(enc))
    arrow(ax, right(name), left(txt))
    arrow(ax, right(txt), left(tal))
    arrow(ax, right(enc), (5.7, 2.7), "embedding")
    arrow(ax, right(tal), (5.7, 2.15), "sparse prompt")
    arrow(ax, right(dec), left(out))
    ax.text(4.7, 4.35, "trained: about 0.5% of the backbone's parameters", ha="center", fontsize=8)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(Path(__file__).with_name("methods.png")))
    args = p.parse_args()
    fig, axes = plt.subplots(1, 2, figsize=(14, 3.6))
    for ax, draw in zip(axes, (autosam, ssam)):
        ax.set_xlim(0, 9.4)
        ax.set_ylim(0, 4.6)
        ax.axis("off")
        draw(ax)
    handles = [
        FancyBboxPatch((0, 0), 1, 1, fc=FROZEN, ec="#333333", label="frozen (SAM / LiteMedSAM, text encoder)"),
        FancyBboxPatch((0, 0), 1, 1, fc=TRAINED, ec="#333333", label="trained"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=8.5, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(args.out, dpi=130)
    print(args.out)


if __name__ == "__main__":
    main()
