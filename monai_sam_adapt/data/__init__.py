"""Datalists: made from known dataset layouts (Kvasir-SEG, GlaS, BRATS, LiTS, any image/mask folder; also the
``python -m monai_sam_adapt.data`` command) and read by the bundles (:func:`load_datalist`, checked before a run).

Not here: loading images (:mod:`monai_sam_adapt.transforms.io`), the committed datalists (``bundles/source/datalists``).
"""

from .datalists import (
    BRATS_MODALITIES,
    IMAGE_SUFFIXES,
    brats_datalist,
    folder_datalist,
    glas_datalist,
    kvasir_datalist,
    lits_datalist,
    main,
    split_by_case,
    splits_datalist,
    write_datalist,
)
from .loading import LAYOUTS, check_datalist, load_datalist

__all__ = [
    "IMAGE_SUFFIXES",
    "LAYOUTS",
    "check_datalist",
    "load_datalist",
    "BRATS_MODALITIES",
    "brats_datalist",
    "folder_datalist",
    "glas_datalist",
    "kvasir_datalist",
    "lits_datalist",
    "main",
    "split_by_case",
    "splits_datalist",
    "write_datalist",
]
