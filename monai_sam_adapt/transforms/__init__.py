"""MONAI transforms for SAM: array/dictionary pairs (``X`` and ``Xd``, with ``XD``/``XDict`` aliases)."""

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
)
from .dictionary import *  # noqa: F401,F403
from .dictionary import __all__ as _dict_all

__all__ = [
    "CT_WINDOWS",
    "AssembleLabels",
    "BoxFromLabel",
    "CTWindow",
    "EnsureThreeChannels",
    "SAMPreprocess",
    "SAMResizeLongest",
    "SelectLabels",
    "sam_intensity",
    *_dict_all,
]
