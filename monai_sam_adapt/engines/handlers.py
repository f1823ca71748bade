"""Ignite handlers: pictures of the per-image metrics that MONAI's ``MetricsSaver`` writes as CSV."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.utils import min_version, optional_import

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")

__all__ = ["MetricPlots"]


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
            fig.suptitle(f"{name}: {finite.size} images" + (f" ({per_image.size - finite.size} not finite)"
                                                            if finite.size < per_image.size else ""))
            fig.tight_layout()
            tmp = self.save_dir / f".partial-{name}_distribution.png"
            fig.savefig(tmp, dpi=100)
            plt.close(fig)
            os.replace(tmp, self.save_dir / f"{name}_distribution.png")
