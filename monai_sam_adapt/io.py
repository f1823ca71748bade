"""Image writers that never leave a half-written file, and read PNG masks in the orientation we load them."""

from __future__ import annotations

import os
from pathlib import Path

from monai.data import ITKWriter, NibabelWriter, PILWriter

__all__ = ["AtomicITKWriter", "AtomicNibabelWriter", "PILMaskWriter", "atomic_replace_path"]


def atomic_replace_path(filename: str | os.PathLike) -> Path:
    """A hidden temporary path beside ``filename`` with the same extension(s)."""
    p = Path(filename)
    return p.with_name(f".partial-{os.getpid()}-{p.name}")


class _AtomicWriteMixin:
    """Write to a temporary file beside the target, then rename: a crash never leaves a truncated output."""

    def write(self, filename, verbose: bool = False, **kwargs):
        tmp = atomic_replace_path(filename)
        Path(filename).parent.mkdir(parents=True, exist_ok=True)
        try:
            super().write(str(tmp), verbose=verbose, **kwargs)  # type: ignore[misc]
            os.replace(tmp, filename)
        finally:
            if tmp.exists():
                tmp.unlink()


class PILMaskWriter(_AtomicWriteMixin, PILWriter):
    """MONAI's ``PILWriter`` for ``(H, W)`` arrays loaded by :class:`~monai_sam_adapt.transforms.LoadMedicalImaged`
    (rows first, no axis swap), written atomically."""

    def write(self, filename, verbose: bool = False, **kwargs):
        kwargs.setdefault("reverse_indexing", False)
        return super().write(filename, verbose=verbose, **kwargs)


class AtomicNibabelWriter(_AtomicWriteMixin, NibabelWriter):
    """MONAI's ``NibabelWriter`` (NIfTI), written atomically."""


class AtomicITKWriter(_AtomicWriteMixin, ITKWriter):
    """MONAI's ``ITKWriter`` (NRRD, MHA, ... when ``itk`` is installed), written atomically."""
