"""Datalists for known dataset layouts (Kvasir-SEG, GlaS, BRATS, LiTS, any image/mask folder)."""

from .datalists import (
    IMAGE_SUFFIXES,
    brats_datalist,
    folder_datalist,
    glas_datalist,
    kvasir_datalist,
    lits_datalist,
    main,
    split_by_case,
    write_datalist,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "brats_datalist",
    "folder_datalist",
    "glas_datalist",
    "kvasir_datalist",
    "lits_datalist",
    "main",
    "split_by_case",
    "write_datalist",
]
