"""Bridges between MONAI Label 0.8.5's dependencies and the versions this project runs with."""

from __future__ import annotations

import sys
import types

__all__ = ["install_pydicom_bridge"]

_OLD = "pydicom._storage_sopclass_uids"


def install_pydicom_bridge() -> bool:
    """Make ``pydicom._storage_sopclass_uids`` importable under pydicom 3.

    ``pydicom-seg`` 0.4.1, which MONAI Label imports at start, reads ``SegmentationStorage`` from that private module;
    pydicom 3 removed it and keeps every storage SOP class UID in ``pydicom.uid``, while ``dicomweb-client`` needs
    pydicom 3. The bridge registers a module of that name holding ``pydicom.uid``'s UIDs. Returns ``True`` when it was
    needed (``False`` under pydicom 2, where the module still exists).
    """
    if _OLD in sys.modules:
        return False
    try:
        __import__(_OLD)
        return False
    except ModuleNotFoundError:
        pass
    import pydicom.uid

    module = types.ModuleType(_OLD, "pydicom 2's storage SOP class UIDs, from pydicom.uid (monai_sam_adapt bridge).")
    module.__dict__.update({k: v for k, v in vars(pydicom.uid).items() if isinstance(v, pydicom.uid.UID)})
    sys.modules[_OLD] = module
    return True
