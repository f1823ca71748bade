"""MONAI transforms for SAM: array/dictionary pairs (``X`` and ``Xd``, with ``XD``/``XDict`` aliases): CT windowing,
labels, SAM's resize-and-pad with its inverse, box prompts, slice sampling, and loading (:mod:`.io`).

Not here: datalists (:mod:`monai_sam_adapt.data`), writers (:mod:`monai_sam_adapt.io`), errors
(:mod:`monai_sam_adapt.errors`).
"""

from .array import (
    CT_WINDOWS,
    AssembleLabels,
    BoxFromLabel,
    CTWindow,
    EnsureThreeChannels,
    SAMPreprocess,
    SAMResizeLongest,
    SelectLabels,
    sam_intensity,
    written_label_values,
)
from .dictionary import *  # noqa: F401,F403
from .dictionary import __all__ as _dict_all
from .io import LoadMedicalImage, LoadMedicalImageD, LoadMedicalImaged, LoadMedicalImageDict

__all__ = [
    "CT_WINDOWS",
    "AssembleLabels",
    "BoxFromLabel",
    "CTWindow",
    "EnsureThreeChannels",
    "LoadMedicalImage",
    "LoadMedicalImageD",
    "LoadMedicalImageDict",
    "LoadMedicalImaged",
    "SAMPreprocess",
    "SAMResizeLongest",
    "SelectLabels",
    "sam_intensity",
    "written_label_values",
    *_dict_all,
]
