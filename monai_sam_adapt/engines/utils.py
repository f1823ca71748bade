"""Datalist checks run before a workflow spends time on the network."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from monai.data import load_decathlon_datalist
from monai.utils import ensure_tuple

from ..transforms.dictionary import InputError

__all__ = ["LAYOUTS", "attach_resume", "check_datalist", "from_engine_channel", "label_metrics", "load_datalist"]

#: Dataset layouts a bundle's ``datalist`` may name instead of a JSON file: the datalist is then made from
#: ``dataset_dir`` by the matching :mod:`monai_sam_adapt.data` function (LiTS and BRATS folders, split by case).
LAYOUTS = ("lits", "brats")


def check_datalist(
    data: Sequence[dict],
    keys: Sequence[str] = ("image", "label"),
    required: Sequence[str] = ("image",),
    source: str = "datalist",
) -> list[dict]:
    """Fail fast, before any output is written: every entry has its ``required`` keys and every file named under
    ``keys`` exists. The error lists the offending entries and files."""
    if not data:
        raise InputError(f"{source} holds no entries.")
    problems = []
    for i, item in enumerate(data):
        for k in required:
            if k not in item:
                problems.append(f"entry {i} has no {k!r}")
        for k in keys:
            for f in ensure_tuple(item.get(k, ())):
                if isinstance(f, (str, os.PathLike)) and not os.path.exists(f):
                    problems.append(f"entry {i} {k}: {str(f)!r} does not exist")
    if problems:
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise InputError(f"{source}: " + "; ".join(problems[:10]) + more)
    return list(data)


def load_datalist(
    datalist: str | os.PathLike | dict,
    dataset_dir: str | os.PathLike,
    key: str,
    keys: Sequence[str] = ("image", "label"),
    required: Sequence[str] = ("image",),
) -> list[dict]:
    """``monai.data.load_decathlon_datalist`` with paths resolved against ``dataset_dir`` and checked. ``datalist`` is a
    JSON file, the same content as a dict (what ``monai_sam_adapt.data`` layouts return, e.g. ``lits_datalist``), or
    the name of a layout in :data:`LAYOUTS` (``"lits"``), made from ``dataset_dir``."""
    if not Path(dataset_dir).is_dir():
        raise InputError(f"dataset_dir {str(dataset_dir)!r} does not exist.")
    if isinstance(datalist, str) and datalist in LAYOUTS and not Path(datalist).is_file():
        from .. import data

        datalist = getattr(data, f"{datalist}_datalist")(dataset_dir)
    if isinstance(datalist, dict):
        if key not in datalist:
            raise InputError(f"datalist has no {key!r} list (it has {sorted(datalist)}).")

        def resolve(k: str, v):
            if k not in keys:
                return v
            return [os.path.join(dataset_dir, f) for f in v] if isinstance(v, list) else os.path.join(dataset_dir, v)

        data = [{k: resolve(k, v) for k, v in item.items()} for item in datalist[key]]
        return check_datalist(data, keys, required, source=f"{key} list of the datalist of {str(dataset_dir)!r}")
    if not Path(datalist).is_file():
        raise InputError(f"datalist {str(datalist)!r} does not exist.")
    try:
        data = load_decathlon_datalist(
            str(datalist), is_segmentation=True, data_list_key=key, base_dir=str(dataset_dir)
        )
    except (ValueError, KeyError) as e:
        raise InputError(f"datalist {str(datalist)!r}: {e}") from e
    return check_datalist(data, keys, required, source=f"datalist {str(datalist)!r} [{key}]")


def attach_resume(engine, checkpoint: str | os.PathLike | None, load_dict: dict, map_location=None) -> None:
    """Resume ``engine`` from ``checkpoint`` (MONAI ``CheckpointLoader``) when a path is given; do nothing for ``None``
    or ``""``, so a bundle's ``resume_from`` can default to ``null``."""
    if not checkpoint:
        return
    if not Path(checkpoint).is_file():
        raise InputError(f"resume_from checkpoint {str(checkpoint)!r} does not exist.")
    from monai.handlers import CheckpointLoader

    CheckpointLoader(str(checkpoint), load_dict, map_location=map_location).attach(engine)


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
