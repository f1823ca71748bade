"""Metric helpers for MONAI engines: one metric per label channel of a multi-label output, and what a model draws on
images that have nothing to find (lesion-free images)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.handlers import IgniteMetricHandler
from monai.metrics import CumulativeIterationMetric

__all__ = ["FalsePositiveImages", "FalsePositiveMetric", "from_engine_channel", "label_metrics"]


def label_metrics(label_names: Sequence[str], pred_key: str = "pred", label_key: str = "label") -> dict:
    """Per label channel, MONAI's ``MeanDice`` and 95th-percentile ``HausdorffDistance`` handlers, named
    ``val_dice_<label>`` and ``val_hd95_<label>`` (non-alphanumerics as ``_``), for a bundle's ``additional_metrics``
    (BraTS reports both per region); empty for a single label, whose metrics are the bundle's own already."""
    import re

    from monai.handlers import HausdorffDistance, MeanDice

    names = list(label_names)
    if len(names) < 2:
        return {}
    out = {}
    for i, n in enumerate(names):
        name = re.sub(r"[^0-9A-Za-z]+", "_", n).strip("_")
        pick = from_engine_channel([pred_key, label_key], i)
        out[f"val_dice_{name}"] = MeanDice(include_background=True, output_transform=pick)
        out[f"val_hd95_{name}"] = HausdorffDistance(include_background=True, percentile=95, output_transform=pick)
    return out


def from_engine_channel(keys: Sequence[str] = ("pred", "label"), channel: int = 0):
    """``monai.handlers.from_engine`` restricted to one channel of each item: a metric per label
    (``"output_transform": "$monai_sam_adapt.engines.from_engine_channel(['pred', 'label'], 1)"``)."""
    from monai.handlers import from_engine

    get = from_engine(list(keys))

    def _transform(output):
        return tuple([x[channel : channel + 1] for x in items] for items in get(output))

    return _transform


class FalsePositiveMetric(CumulativeIterationMetric):
    """What a segmenter draws where the label is empty (BUSI's lesion-free ``normal`` images): a model that finds a
    lesion on every image is not usable however well it outlines real ones, and Dice cannot say so (it is undefined
    on an empty label).

    Per image: the predicted foreground as a fraction of the image where the label is empty, NaN where the label has
    foreground (those images are Dice's job). ``reduction``: ``"rate"`` aggregates to the fraction of empty-label
    images with any predicted foreground, ``"area"`` to the mean predicted fraction over those images (0 when there is
    none). Both are NaN when no image has an empty label.

    Args:
        reduction: ``"rate"`` or ``"area"``. Default ``"rate"``.
    """

    def __init__(self, reduction: str = "rate") -> None:
        super().__init__()
        if reduction not in ("rate", "area"):
            raise ValueError(f"reduction must be 'rate' or 'area', got {reduction!r}.")
        self.reduction = reduction

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if y is None:
            raise ValueError("FalsePositiveMetric needs the label (y) to know which images are empty.")
        dims = tuple(range(1, y_pred.ndim))
        area = (y_pred > 0).float().mean(dim=dims)
        empty = (y > 0).sum(dim=dims) == 0
        return torch.where(empty, area, torch.full_like(area, math.nan))[:, None]

    def aggregate(self) -> torch.Tensor:
        values = self.get_buffer()
        values = values[~torch.isnan(values)] if isinstance(values, torch.Tensor) else torch.zeros(0)
        if values.numel() == 0:
            return torch.tensor(math.nan)
        hit = values[values > 0]
        if self.reduction == "rate":
            return torch.tensor(hit.numel() / values.numel())
        return hit.mean() if hit.numel() else torch.tensor(0.0)


class FalsePositiveImages(IgniteMetricHandler):
    """:class:`FalsePositiveMetric` as an ignite handler for a bundle's ``additional_metrics`` (per-image values go
    to ``MetricsSaver``'s details like any MONAI metric)::

        "val_false_positive_images": {"_target_": "monai_sam_adapt.engines.FalsePositiveImages", "reduction": "rate",
                                      "output_transform": "$monai.handlers.from_engine(['pred', 'label'])"}
    """

    def __init__(self, reduction: str = "rate", output_transform=lambda x: x, save_details: bool = True) -> None:
        super().__init__(
            metric_fn=FalsePositiveMetric(reduction), output_transform=output_transform, save_details=save_details
        )
