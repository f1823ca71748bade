"""Metric helpers for MONAI engines: one metric per label channel of a multi-label output."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["from_engine_channel", "label_metrics"]


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
