"""Metric helpers for MONAI engines: one metric per label channel of a multi-label output."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["from_engine_channel", "label_metrics"]


def label_metrics(label_names: Sequence[str], pred_key: str = "pred", label_key: str = "label") -> dict:
    """One MONAI ``MeanDice`` handler per label channel, named ``val_dice_<label>`` (non-alphanumerics as ``_``), for a
    bundle's ``additional_metrics``; empty for a single label, whose Dice is the bundle's mean Dice already."""
    import re

    from monai.handlers import MeanDice

    names = list(label_names)
    if len(names) < 2:
        return {}
    return {
        f"val_dice_{re.sub(r'[^0-9A-Za-z]+', '_', n).strip('_')}": MeanDice(
            include_background=True, output_transform=from_engine_channel([pred_key, label_key], i)
        )
        for i, n in enumerate(names)
    }


def from_engine_channel(keys: Sequence[str] = ("pred", "label"), channel: int = 0):
    """``monai.handlers.from_engine`` restricted to one channel of each item: a metric per label
    (``"output_transform": "$monai_sam_adapt.engines.from_engine_channel(['pred', 'label'], 1)"``)."""
    from monai.handlers import from_engine

    get = from_engine(list(keys))

    def _transform(output):
        return tuple([x[channel : channel + 1] for x in items] for items in get(output))

    return _transform
