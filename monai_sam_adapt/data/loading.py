"""A bundle's datalist as the list of items a workflow runs on: read, resolved against ``dataset_dir`` and checked
before any time is spent on the network."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from monai.data import load_decathlon_datalist
from monai.utils import ensure_tuple

from ..errors import InputError

__all__ = ["LAYOUTS", "check_datalist", "check_label_map", "load_datalist"]

#: Dataset layouts a bundle's ``datalist`` may name instead of a JSON file: the datalist is then made from
#: ``dataset_dir`` by the matching :mod:`monai_sam_adapt.data` function (LiTS and BRATS folders, split by case; an
#: ``images/`` + ``masks/`` folder split by its ``splits.json``).
LAYOUTS = ("lits", "brats", "splits")


def check_label_map(
    labels: Mapping | None, label_names: Sequence[str] | None, label_values: Sequence | None, source: str
) -> None:
    """A datalist that says which mask value is which structure (``"labels": {"left lung": 1, ...}``) must agree
    with the bundle's ``label_names`` and ``label_values``: otherwise a model would learn, or be scored on, one
    structure under another's name. Nothing to check when either side says nothing (binary bundles, datalists
    without a ``labels`` map)."""
    if not isinstance(labels, Mapping) or not label_names or label_values is None:
        return
    wrong = []
    for name, value in zip(label_names, label_values):
        if name not in labels:
            wrong.append(f"{name!r} is not in it")
        elif labels[name] != value:
            wrong.append(f"{name!r} is {labels[name]!r} there and {value!r} in the bundle")
    if wrong:
        raise InputError(
            f"{source} maps its mask values to the labels {dict(labels)}, which disagrees with the bundle's "
            f"label_names {list(label_names)} and label_values {list(label_values)}: {'; '.join(wrong)}. Pass "
            "--label_names and --label_values that match the masks, or fix the datalist's 'labels'."
        )


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
    label_names: Sequence[str] | None = None,
    label_values: Sequence | None = None,
) -> list[dict]:
    """``monai.data.load_decathlon_datalist`` with paths resolved against ``dataset_dir`` and checked. ``datalist`` is a
    JSON file, the same content as a dict (what ``monai_sam_adapt.data`` layouts return, e.g. ``lits_datalist``), or
    the name of a layout in :data:`LAYOUTS` (``"lits"``), made from ``dataset_dir``. With ``label_names`` and
    ``label_values``, a ``labels`` map in the datalist is checked against them (:func:`check_label_map`)."""
    if not Path(dataset_dir).is_dir():
        raise InputError(f"dataset_dir {str(dataset_dir)!r} does not exist.")
    if isinstance(datalist, str) and datalist in LAYOUTS and not Path(datalist).is_file():
        from . import datalists

        datalist = getattr(datalists, f"{datalist}_datalist")(dataset_dir)
    if isinstance(datalist, dict):
        check_label_map(datalist.get("labels"), label_names, label_values, f"the datalist of {str(dataset_dir)!r}")
        if key not in datalist:
            raise InputError(f"datalist has no {key!r} list (it has {sorted(datalist)}).")

        def resolve(k: str, v):
            if k not in keys:
                return v
            return [os.path.join(dataset_dir, f) for f in v] if isinstance(v, list) else os.path.join(dataset_dir, v)

        entries = datalist[key]
        bad = [e for e in (entries if isinstance(entries, list) else [entries]) if not isinstance(e, dict)]
        if not isinstance(entries, list) or bad:
            raise InputError(
                f"datalist {key!r} must be a list of entries like {{'image': ..., 'label': ...}}; "
                f"got {bad[:1] or entries!r}."
            )
        data = [{k: resolve(k, v) for k, v in item.items()} for item in entries]
        return check_datalist(data, keys, required, source=f"{key} list of the datalist of {str(dataset_dir)!r}")
    if not Path(datalist).is_file():
        raise InputError(f"datalist {str(datalist)!r} does not exist.")
    if label_names:
        try:
            labels = json.loads(Path(datalist).read_text()).get("labels")
        except (ValueError, AttributeError) as e:
            raise InputError(f"datalist {str(datalist)!r} is not a JSON object: {e}") from e
        check_label_map(labels, label_names, label_values, f"datalist {str(datalist)!r}")
    try:
        data = load_decathlon_datalist(
            str(datalist), is_segmentation=True, data_list_key=key, base_dir=str(dataset_dir)
        )
    except (ValueError, KeyError) as e:
        raise InputError(f"datalist {str(datalist)!r}: {e}") from e
    except (TypeError, AttributeError) as e:
        raise InputError(
            f'datalist {str(datalist)!r}: its {key!r} list must hold entries like {{"image": ..., "label": ...}} '
            f"({type(e).__name__}: {e})."
        ) from e
    return check_datalist(data, keys, required, source=f"datalist {str(datalist)!r} [{key}]")
