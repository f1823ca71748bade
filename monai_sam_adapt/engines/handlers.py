"""Ignite handlers: pictures of the per-image metrics that MONAI's ``MetricsSaver`` writes as CSV."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.utils import min_version, optional_import

from ..io import atomic_write

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")

__all__ = ["MetricPlots", "OverlayGrid"]


class MetricPlots:
    """At the end of an evaluation, draw each metric's per-image distribution (histogram + box plot) as a PNG.

    Reads ``engine.state.metric_details`` (filled by MONAI metric handlers with ``save_details=True``) and writes
    ``<save_dir>/<metric>_distribution.png``.

    Args:
        save_dir: output folder.
        metrics: metric names, or ``"*"`` for every metric with details. Default ``"*"``.
    """

    def __init__(self, save_dir: str | os.PathLike, metrics: str | Sequence[str] = "*") -> None:
        self.save_dir = Path(save_dir)
        self.metrics = metrics

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        details = getattr(engine.state, "metric_details", {}) or {}
        names = list(details) if self.metrics == "*" else list(self.metrics)
        self.save_dir.mkdir(parents=True, exist_ok=True)
        for name in names:
            if name not in details:
                continue
            v = details[name]
            v = v.float().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v, dtype=float)
            per_image = np.nanmean(v.reshape(v.shape[0], -1), axis=1) if v.ndim > 1 else v
            finite = per_image[np.isfinite(per_image)]
            if finite.size == 0:
                continue
            fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2), gridspec_kw={"width_ratios": [3, 1]})
            ax1.hist(finite, bins=min(30, max(5, finite.size // 3)), color="#3b7dd8")
            ax1.axvline(finite.mean(), color="k", ls="--", label=f"mean {finite.mean():.4f}")
            ax1.axvline(np.median(finite), color="r", ls=":", label=f"median {np.median(finite):.4f}")
            ax1.set_xlabel(name)
            ax1.set_ylabel("images")
            ax1.legend(fontsize=8)
            ax2.boxplot(finite, vert=True)
            ax2.set_xticks([])
            fig.suptitle(
                f"{name}: {finite.size} images"
                + (f" ({per_image.size - finite.size} not finite)" if finite.size < per_image.size else "")
            )
            fig.tight_layout()
            with atomic_write(self.save_dir / f"{name}_distribution.png") as tmp:
                fig.savefig(tmp, dpi=100)
            plt.close(fig)


class OverlayGrid:
    """Save a picture of the first ``num_images`` results: each image with its ground truth (green) and prediction
    (red) outlines and the image's Dice, as ``<save_dir>/<filename>``.

    The image is re-read from its source file (the network saw a resized, normalised copy) so the outlines lie on the
    original pixels. 3D items show the slice with the most ground-truth foreground.

    Args:
        save_dir: output folder.
        num_images: how many results to draw. Default 8.
        filename: output name. Default ``"overlays.png"``.
        pred_keys: prediction keys, one column each (e.g. ``["pred", "pred_h"]``). Default ``"pred"``.
        titles: column titles for ``pred_keys``. Default the keys.
        image_key / label_key: where to find the source file name and the ground truth. Defaults ``"image"``,
            ``"label"``.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        num_images: int = 8,
        filename: str = "overlays.png",
        pred_keys: str | Sequence[str] = "pred",
        titles: Sequence[str] | None = None,
        image_key: str = "image",
        label_key: str = "label",
    ) -> None:
        self.save_dir, self.num_images, self.filename = Path(save_dir), int(num_images), filename
        self.pred_keys = [pred_keys] if isinstance(pred_keys, str) else list(pred_keys)
        self.titles = list(titles) if titles else self.pred_keys
        self.image_key, self.label_key = image_key, label_key
        self.items: list[dict] = []

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda e: self.items.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.draw)

    def collect(self, engine) -> None:
        from ..transforms import LoadMedicalImaged

        out = engine.state.output
        for item in out if isinstance(out, list) else [out]:
            if len(self.items) >= self.num_images or self.label_key not in item:
                continue
            src = getattr(item[self.image_key], "meta", {}).get("filename_or_obj")
            if not src:
                continue
            img = LoadMedicalImaged("image")({"image": src})["image"]
            lab = item[self.label_key].detach().cpu().float()
            preds = [item[k].detach().cpu().float() for k in self.pred_keys]
            if img.ndim == 4:  # 3D: the slice with the most foreground
                z = int(lab.sum(dim=tuple(range(lab.ndim - 1))).argmax())
                img, lab, preds = img[..., z], lab[..., z], [p[..., z] for p in preds]
            self.items.append(
                {
                    "name": Path(str(src)).name,
                    "image": img.float().numpy(),
                    "label": lab[0].numpy() > 0.5,
                    "preds": [p[0].numpy() > 0.5 for p in preds],
                }
            )

    def draw(self, engine) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        if not self.items:
            return
        n, cols = len(self.items), len(self.pred_keys)
        fig, axes = plt.subplots(n, cols, figsize=(3.2 * cols, 3.2 * n), squeeze=False)
        for r, it in enumerate(self.items):
            im = it["image"]
            im = np.moveaxis(im[:3], 0, -1) if im.shape[0] >= 3 else im[0]
            im = (im - im.min()) / max(float(im.max() - im.min()), 1e-8)
            for c, (pred, title) in enumerate(zip(it["preds"], self.titles)):
                ax = axes[r, c]
                ax.imshow(im, cmap="gray")
                if it["label"].any():
                    ax.contour(it["label"], levels=[0.5], colors="lime", linewidths=1.2)
                if pred.any():
                    ax.contour(pred, levels=[0.5], colors="red", linewidths=1.2)
                inter = (pred & it["label"]).sum()
                dice = 2 * inter / max(pred.sum() + it["label"].sum(), 1)
                ax.set_title(f"{title}: Dice {dice:.3f}" + (f"\n{it['name']}" if c == 0 else ""), fontsize=8)
                ax.axis("off")
        fig.suptitle("ground truth (green), prediction (red)", fontsize=9)
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / (3.2 * n)))  # leave the suptitle its own strip
        self.save_dir.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.save_dir / self.filename) as tmp:
            fig.savefig(tmp, dpi=90)
        plt.close(fig)
