"""Ignite handlers: pictures of the per-image metrics that MONAI's ``MetricsSaver`` writes as CSV, and the count of
cases behind each mean."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.utils import min_version, optional_import

from ..io import atomic_write

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")

__all__ = ["EvaluationSummary", "MetricPlots", "OverlayGrid"]

#: Outline colours of labels 1, 2, ... when an image has several (matplotlib's ``tab:`` palette).
LABEL_COLOURS = ("blue", "orange", "green", "purple", "brown", "pink", "olive", "cyan")


def per_case(details) -> np.ndarray:
    """A metric's per-case details (``engine.state.metric_details[name]``) as a float array ``(cases, labels)``."""
    v = details.float().cpu().numpy() if isinstance(details, torch.Tensor) else np.asarray(details, dtype=float)
    return v.reshape(v.shape[0], -1)


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
            per_image = np.nanmean(per_case(details[name]), axis=1)
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


def _dice(pred: np.ndarray, label: np.ndarray) -> float:
    """Dice of two boolean masks; 1 when both are empty (nothing to find, nothing drawn)."""
    total = pred.sum() + label.sum()
    return 1.0 if total == 0 else float(2 * (pred & label).sum() / total)


class OverlayGrid:
    """Save a picture of the first ``num_images`` results: each image with its ground truth (green) and prediction
    (red) outlines and the image's Dice, as ``<save_dir>/<filename>``. With several labels (channels) each label has
    its own colour, ground truth dashed and prediction solid, and the Dice is the mean over the labels.

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
                    "label": lab.numpy() > 0.5,
                    "preds": [p.numpy() > 0.5 for p in preds],
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
            lab = it["label"]
            for c, (pred, title) in enumerate(zip(it["preds"], self.titles)):
                ax = axes[r, c]
                ax.imshow(im, cmap="gray")
                for ch in range(lab.shape[0]):
                    colour = LABEL_COLOURS[ch % len(LABEL_COLOURS)]
                    gt_colour, pred_colour = ("lime", "red") if lab.shape[0] == 1 else (f"tab:{colour}",) * 2
                    if lab[ch].any():
                        ls = "solid" if lab.shape[0] == 1 else "dashed"
                        ax.contour(lab[ch], levels=[0.5], colors=gt_colour, linewidths=1.2, linestyles=ls)
                    if pred[ch].any():
                        ax.contour(pred[ch], levels=[0.5], colors=pred_colour, linewidths=1.2)
                dice = float(np.mean([_dice(p, g) for p, g in zip(pred, lab)]))
                ax.set_title(f"{title}: Dice {dice:.3f}" + (f"\n{it['name']}" if c == 0 else ""), fontsize=8)
                ax.axis("off")
        n_labels = self.items[0]["label"].shape[0]
        colours = ", ".join(f"{i + 1} {LABEL_COLOURS[i % len(LABEL_COLOURS)]}" for i in range(n_labels))
        legend = f"labels {colours}\nground truth dashed, prediction solid"
        fig.suptitle(legend if n_labels > 1 else "ground truth (green), prediction (red)", fontsize=8)
        strip = 0.5 if n_labels > 1 else 0.3  # inches: the suptitle's own strip
        fig.tight_layout(rect=(0, 0, 1, 1 - strip / (3.2 * n)))
        self.save_dir.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.save_dir / self.filename) as tmp:
            fig.savefig(tmp, dpi=90)
        plt.close(fig)


class EvaluationSummary:
    """Say over how many cases each mean is, and which cases are not in it: MONAI's metrics give ``nan`` for a case
    whose ground truth is empty (``ignore_empty``) and every summary skips it, so "mean Dice 0.80" could silently be
    over 98 of 100 cases. At the end of an evaluation this logs, per metric, ``mean over N of M cases`` (``N1/N2``
    per label for several labels) with the cases not in it (empty ground truth, or another non-finite value), warns
    about empty ground truths, and writes it all to ``<save_dir>/summary.json``; MONAI's ``MetricsSaver`` CSVs keep
    every case (``nan`` rows included). A metric whose value is not the mean of its per-case values (the share of
    lesion-free images with a drawn lesion, whose per-case values are areas) also gets its own ``value``, the number
    the evaluator reports.

    Args:
        save_dir: output folder.
        image_key / label_key: where to find the case's file name and its ground truth. Defaults ``"image"``,
            ``"label"``.
    """

    def __init__(self, save_dir: str | os.PathLike, image_key: str = "image", label_key: str = "label") -> None:
        self.save_dir, self.image_key, self.label_key = Path(save_dir), image_key, label_key
        self.cases: list[tuple[str, bool]] = []
        self.logger = logging.getLogger(__name__)

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda e: self.cases.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self)

    def collect(self, engine) -> None:
        out = engine.state.output
        for item in out if isinstance(out, list) else [out]:
            src = getattr(item.get(self.image_key), "meta", {}).get("filename_or_obj", f"case {len(self.cases)}")
            label = item.get(self.label_key)
            empty = label is not None and not bool(torch.as_tensor(label).detach().gt(0.5).any())
            self.cases.append((str(src), empty))

    def __call__(self, engine) -> None:
        details = getattr(engine.state, "metric_details", {}) or {}
        names = [n for n, _ in self.cases]
        report: dict = {"cases": len(self.cases), "empty_ground_truth": [n for n, e in self.cases if e]}
        for metric, v in details.items():
            values_by_case = per_case(v)
            ok = np.isfinite(values_by_case)
            left_out = [names[i] if i < len(names) else f"case {i}" for i in np.flatnonzero(~ok.all(axis=1))]
            values = values_by_case[ok]  # as MONAI's mean: every finite (case, label) value
            report[metric] = {
                "mean": float(values.mean()) if values.size else None,
                "median": float(np.median(values)) if values.size else None,
                "cases": int(values_by_case.shape[0]),
                "cases_in_mean_per_label": ok.sum(axis=0).astype(int).tolist(),
                "left_out": left_out,
            }
            value = (getattr(engine.state, "metrics", {}) or {}).get(metric)
            own = value is not None and values.size > 0 and np.isfinite(float(value))
            own = own and not np.isclose(float(value), values.mean(), atol=1e-6)
            if own:
                report[metric]["value"] = float(value)
            mean = f"{values.mean():.4f}" if values.size else "undefined"
            counts = "/".join(str(int(c)) for c in ok.sum(axis=0))
            why = (
                f"; not in it (empty ground truth or not finite): {', '.join(map(_short, left_out))}"
                if left_out
                else ""
            )
            head = f"{float(value):.4f}; per-case mean" if own else "mean"
            self.logger.info(f"{metric}: {head} {mean} over {counts} of {values_by_case.shape[0]} cases{why}")
        if report["empty_ground_truth"]:
            self.logger.warning(
                f"{len(report['empty_ground_truth'])} of {len(self.cases)} cases have an empty ground truth: "
                + ", ".join(map(_short, report["empty_ground_truth"]))
            )
        self.save_dir.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.save_dir / "summary.json") as tmp:
            tmp.write_text(json.dumps(report, indent=1))


def _short(path: str) -> str:
    return Path(path).name
