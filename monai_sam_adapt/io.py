"""Writing files that are never left half-written (:func:`atomic_write`, the one place that does it), and image
writers built on it that read PNG masks in the orientation we load them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from monai.data import ITKWriter, NibabelWriter, PILWriter

__all__ = ["AtomicITKWriter", "AtomicNibabelWriter", "PILMaskWriter", "atomic_write"]


@contextmanager
def atomic_write(filename: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary path beside ``filename`` (same extensions, so writers pick the same format) to write
    to; on success it replaces ``filename`` in one rename, on any error it is removed: a crash never leaves a
    truncated or partial output. Parent folders are created.

    Example::

        with atomic_write("out/overlays.png") as tmp:
            fig.savefig(tmp)
    """
    out = Path(filename)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".partial-{os.getpid()}-{out.name}")
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()


class _AtomicWriteMixin:
    """A MONAI image writer whose ``write`` goes through :func:`atomic_write`."""

    def write(self, filename, verbose: bool = False, **kwargs):
        with atomic_write(filename) as tmp:
            super().write(str(tmp), verbose=verbose, **kwargs)  # type: ignore[misc]


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
